"""Issue 13: every limit a run would hit is a one-line, path-named error (exit 2)
found by the schema, in ``run``, ``explore`` and ``replay`` (traces) alike."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.bad_input.conftest import ROOT_PORT, assert_bad_input, invoke, scenario_text, write_trace


def _machine(**seg: Any) -> dict[str, Any]:
    return {"memory": "4GiB", "segments": [{"devices": [copy.deepcopy(ROOT_PORT)], **seg}]}


def _deep_bridges(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"slot": 0, "name": "leaf"}
    for _ in range(levels):
        node = {"slot": 0, "kind": "bridge", "children": [node]}
    return {"segments": [{"devices": [{"slot": 1, "kind": "root-port", "children": [node]}]}]}


def _wide(root_bus: int, n: int) -> dict[str, Any]:
    return {"segments": [{"root_bus": root_bus, "devices": [
        {"slot": s, "kind": "root-port", "children": [{"slot": 0}]} for s in range(1, n + 1)]}]}


CASES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "memory-below-256MiB": ({"machine": {"memory": "128MiB"}},
                           ("machine.memory", "256MiB")),
    "memory-2^70": ({"machine": {"memory": 1 << 70}}, ("machine.memory", "64TiB")),
    "vm-2^70": ({"workload": {"vms": [{"name": "vm0", "memory": 1 << 70}]}},
                ("workload.vms", "do not fit machine.memory")),
    "vm-larger-than-machine": ({"machine": {"memory": "1GiB"},
                                "workload": {"vms": [{"name": "vm0", "memory": "1GiB"}]}},
                               ("workload.vms", "do not fit")),
    # a bound on work, not on realistic sizes: 16 GiB of 4 KiB folios runs (see
    # test_16gib_vm_of_4kib_folios_runs); 64 GiB of them is past the bound
    "64GiB-of-4KiB-folios": ({"machine": {"memory": "80GiB"},
                              "workload": {"vms": [{"name": "vm0", "memory": "64GiB",
                                                    "folio_order": 0}]}},
                             ("workload.vms", "16777216 guest folios")),
    "dma-rate-x-blackout": ({"machine": _machine(), "policy": {"dma.mode": "continuous"},
                             "workload": {"blackout_ms": 60000, "vms": [
                                 {"name": "vm0", "memory": "64MiB", "devices": ["e0"],
                                  "dma": {"rate_per_ms": 100000}}]}},
                            ("workload", "DMA rate x time")),
    "bus-numbers-root-bus-255": ({"machine": _wide(255, 1)},
                                 ("machine.segments[0]", "ran out of bus numbers")),
    "bus-numbers-wide-tree": ({"machine": _wide(253, 4)},
                              ("machine.segments[0]", "ran out of bus numbers")),
    "function-0-missing": ({"machine": {"segments": [{"devices": [
        {"slot": 1, "functions": [1, 2]}]}]}},
        ("machine.segments[0].devices[0].functions", "function 0 is required")),
    "sriov-256": ({"machine": {"segments": [{"devices": [
        {"slot": 0, "sriov": {"total_vfs": 256}}]}]}},
        ("machine.segments[0].devices[0].sriov.total_vfs", "<= 255")),
    "slot-below-downstream-port": ({"machine": {"segments": [{"devices": [
        {"slot": 1, "kind": "root-port", "children": [{"slot": 3}]}]}]}},
        ("machine.segments[0].devices[0].children[0].slot", "expected 0 below a PCIe")),
    "hot-add-assigned": ({"machine": {"segments": [{"devices": [
        {"slot": 1, "kind": "root-port", "hotplug": True,
         "children": [{"slot": 0, "name": "e0", "present": False}]}]}]},
        "workload": {"hot_add": ["e0"], "vms": [{"name": "vm0", "memory": "64MiB",
                                                  "devices": ["e0"]}]}},
        ("workload.hot_add[0]", "assigned to vm0")),
    "hot-add-present": ({"machine": _machine(), "workload": {"hot_add": ["e0"]}},
                        ("workload.hot_add[0]", "present at boot")),
    "bridges-40-deep": ({"machine": _deep_bridges(40)}, ("nested deeper than 32",)),
    "too-many-vms": ({"workload": {"vms": [{"name": f"v{i}", "memory": "2MiB"}
                                           for i in range(513)]}}, ("workload.vms",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_refuses_in_the_schema(tmp_path: Path, case: str) -> None:
    data, needles = CASES[case]
    f = tmp_path / "s.yaml"
    f.write_text(scenario_text(**data))
    line = assert_bad_input(invoke(["run", f, "--json"]), *needles)
    assert line.startswith(f"luosim: {f}: ")


@pytest.mark.parametrize("case", ["bus-numbers-wide-tree", "function-0-missing", "sriov-256",
                                  "slot-below-downstream-port", "hot-add-assigned",
                                  "memory-below-256MiB", "dma-rate-x-blackout"])
def test_explore_calls_it_bad_input_not_model_crash(tmp_path: Path, case: str) -> None:
    data, needles = CASES[case]
    f = tmp_path / "s.yaml"
    f.write_text(scenario_text(**data))
    assert_bad_input(invoke(["explore", f, "--traces", tmp_path / "t"]), *needles)


@pytest.mark.parametrize("case", ["bus-numbers-wide-tree", "function-0-missing", "sriov-256",
                                  "slot-below-downstream-port", "hot-add-assigned",
                                  "memory-2^70", "bridges-40-deep"])
def test_replay_calls_it_bad_input_not_model_crash(tmp_path: Path, case: str) -> None:
    data, needles = CASES[case]
    trace = write_trace(tmp_path / "t.json", data)
    assert_bad_input(invoke(["replay", trace]), "scenario", *needles)


def test_nesting_of_300_levels_in_a_scenario(tmp_path: Path) -> None:
    """No RecursionError: the loader counts nesting on the event stream."""
    inner = "{slot: 0}"
    for _ in range(300):
        inner = f"{{slot: 0, kind: bridge, children: [{inner}]}}"
    f = tmp_path / "deep.yaml"
    f.write_text(f"machine:\n  segments:\n    - devices: [{{slot: 1, kind: root-port, "
                 f"children: [{inner}]}}]\n")
    for cmd in (["run", f], ["explore", f]):
        assert_bad_input(invoke(cmd), str(f), "nesting deeper than")


def test_nesting_of_300_levels_in_a_trace(tmp_path: Path) -> None:
    node: dict[str, Any] = {"slot": 0}
    for _ in range(300):
        node = {"slot": 0, "kind": "bridge", "children": [node]}
    trace = write_trace(tmp_path / "deep.json",
                        {"machine": {"segments": [{"devices": [node]}]}})
    assert_bad_input(invoke(["replay", trace]), "nesting deeper than")


def test_trace_with_a_bad_policy(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.json", {}, {"pci.retrieve_failure": "ignore"})
    assert_bad_input(invoke(["replay", trace]), "policy", "ignore")


def test_realistic_hosts_still_pass_the_schema() -> None:
    """The work bounds do not reject the shipped examples or a big realistic host."""
    from luosim.scenario.schema import load_scenario, scenario_from_dict
    for f in sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml")):
        load_scenario(f)
    scenario_from_dict({"machine": {"memory": "512GiB"},
                        "workload": {"vms": [{"name": f"vm{i}", "memory": "16GiB"}
                                             for i in range(16)]}})


def test_16gib_vm_of_4kib_folios_runs() -> None:
    """Issue #13 listed it among the inputs that hang or exhaust memory; with guest
    RAM as extents it is a legitimate host that runs (within seconds, see
    benchmarks/scaling.py) and ends ok, byte-exact folio array and all."""
    from luosim.scenario.runner import run
    from luosim.scenario.schema import scenario_from_dict
    sc = scenario_from_dict({"machine": {"memory": "32GiB"},
                             "kernels": {"before": {"profile": "v7"},
                                         "after": [{"profile": "v7"}]},
                             "workload": {"vms": [{"name": "vm0", "memory": "16GiB",
                                                   "folio_order": 0}]}})
    result = run(sc)
    assert result.outcome == "ok", result.error or result.broken
