"""Issue 13: random valid topologies and workloads never crash the model; the
hand-over mutator's edits never crash the next kernel's boot path.

Small on purpose (CI); the campaign with >= 10^5 mutants is
benchmarks/fuzz_boot.py."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luosim.faults.mutator import corrupt_pci_ser, field_mutants, handover_targets
from luosim.scenario.result import OUTCOMES
from luosim.scenario.runner import Run, run
from luosim.scenario.schema import ScenarioError, scenario_from_dict
from tests.bad_input.conftest import SMALL


@st.composite
def hosts(draw: st.DrawFn) -> dict[str, Any]:
    """A segment of root ports, each with an endpoint, a switch or a bridge below it."""
    devices: list[dict[str, Any]] = []
    names: list[str] = []
    for rp in range(draw(st.integers(1, 3))):
        shape = draw(st.sampled_from(["endpoint", "switch", "bridge", "sriov"]))
        if shape == "switch":
            ports = [{"slot": p, "children": [{"slot": 0, "name": f"e{rp}{p}"}]}
                     for p in range(draw(st.integers(1, 2)))]
            names += [f"e{rp}{p}" for p in range(len(ports))]
            child: dict[str, Any] = {"slot": 0, "kind": "switch", "ports": ports}
        elif shape == "bridge":
            child = {"slot": 0, "kind": "bridge", "children": [{"slot": 1, "name": f"e{rp}"}]}
            names.append(f"e{rp}")
        elif shape == "sriov":
            child = {"slot": 0, "name": f"e{rp}", "sriov": {"total_vfs": draw(st.integers(1, 4))}}
            names.append(f"e{rp}")
        else:
            child = {"slot": 0, "name": f"e{rp}", "functions": [0, 1]}
            names.append(f"e{rp}")
        devices.append({"slot": rp + 1, "kind": "root-port", "children": [child]})
    n_vms = draw(st.integers(0, 2))
    assigned = draw(st.permutations(names))
    vms = []
    for i in range(n_vms):
        vm: dict[str, Any] = {"name": f"vm{i}", "memory": "8MiB",
                              "folio_order": draw(st.sampled_from([0, 9])),
                              "devices": list(assigned[i::n_vms][:2])}
        if vm["devices"] and draw(st.booleans()):
            vm["dma"] = {"rate_per_ms": draw(st.sampled_from([0, 1, 5])), "length": "1MiB"}
        vms.append(vm)
    profiles = st.sampled_from(["v6", "v7", "v9"])
    return {"machine": {"memory": "1GiB", "segments": [{
                "firmware_numbering": draw(st.sampled_from(["dfs", "bfs", "sparse"])),
                "devices": devices}]},
            "kernels": {"before": {"profile": draw(profiles)},
                        "after": [{"profile": draw(profiles),
                                   "cmdline": draw(st.sampled_from(["", "pci=assign-busses"]))}]},
            "policy": {"dma.mode": draw(st.sampled_from(["continuous", "reset-at-freeze"]))},
            "workload": {"blackout_ms": 5, "vms": vms},
            "update": {"sessions": draw(st.sampled_from(["per-vm", "single"])),
                       "preserve": draw(st.sampled_from(["all", "memory-only", "none"]))}}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hosts())
def test_random_valid_hosts_never_crash_the_model(data: dict[str, Any]) -> None:
    try:
        scenario = scenario_from_dict(data)
    except ScenarioError as exc:  # a bad combination is refused cleanly, never a traceback
        assert exc.problems
        return
    result = run(scenario)
    assert result.outcome in OUTCOMES


def test_mutated_handovers_never_crash_the_boot_path() -> None:
    """A few dozen mutants across every layer, in-process (the benchmark forks)."""
    from luosim.scenario.schema import load_scenario
    scenario = load_scenario(SMALL)
    first = Run(scenario, (), None, None)
    seen: dict[str, Any] = {}

    def grab(stage: str) -> None:
        if stage == "kexec-jump" and not seen:
            m = first.machine
            seen["targets"] = handover_targets(m.memory, m.kho_data)
            rng = random.Random(7)
            seen["mutants"] = [mu for t in seen["targets"]
                               for mu in list(field_mutants(m.memory, t, m.kho_data or b"",
                                                            rng))[:1]]
    first.machine.stage_hooks.append(grab)
    assert first.execute().outcome == "ok"
    layers = {t.layer for t in seen["targets"]}
    assert {"kho_data", "kho-fdt", "kho-radix", "luo-fdt", "luo-session", "luo-file",
            "luo-flb", "pci", "pci-chain", "pci-dev", "memfd", "iommu"} <= layers
    # every object gets edits of its fields (the mutator reads the codecs' declared layout)
    assert {mu[0] for mu in seen["mutants"]} == layers
    picked = random.Random(3).sample(seen["mutants"], min(16, len(seen["mutants"])))
    for _layer, label, apply in picked:
        r = Run(scenario, (), None, None)

        def mutate(stage: str, r: Run = r, apply: Any = apply) -> None:
            if stage == "kexec-jump" and r.machine.kexec_count == 1:
                kd = bytearray(r.machine.kho_data or b"")
                apply(r.machine.memory, kd)
                r.machine.kho_data = bytes(kd)
        r.machine.stage_hooks.insert(0, mutate)
        assert r.execute().outcome in OUTCOMES, label


def test_pci_corruptions_through_the_codecs() -> None:
    """corrupt_pci_ser edits the v9 pci_ser fields without literal offsets."""
    from luosim.abi.pci import PciSerV9

    class Mem:
        size = 1 << 20

        def __init__(self) -> None:
            self.buf = bytearray(self.size)

        def read(self, pa: int, n: int) -> bytes:
            return bytes(self.buf[pa:pa + n])

        def write(self, pa: int, data: bytes) -> None:
            self.buf[pa:pa + len(data)] = data

    mem = Mem()
    mem.write(0x1000, PciSerV9(1, 2, 0).encode())
    corrupt_pci_ser(mem, "v9", 0x1000, "version")
    assert PciSerV9.decode(mem.read(0x1000, 16)).version == 2
    corrupt_pci_ser(mem, "v9", 0x1000, "nr-devices")
    assert PciSerV9.decode(mem.read(0x1000, 16)).nr_devices == 0
    assert "no block chain" in corrupt_pci_ser(mem, "v6", 0x1000, "block-chain")
