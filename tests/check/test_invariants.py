"""Each invariant can fail: provoke every one and check the checker says so
(spec pci.md §10, luo.md §7, kho.md; DESIGN.md "Outcomes")."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from luosim.check.invariants import REGISTRY, CheckContext
from luosim.hw.machine import Machine
from luosim.scenario.result import RunResult
from luosim.scenario.runner import Run
from luosim.scenario.schema import load_scenario

EX = Path(__file__).resolve().parents[2] / "examples"
WARN = {"pci.retrieve_failure": "warn"}


def rule(name: str) -> Any:
    import luosim.scenario.runner  # noqa: F401  (loads every rule)
    return next(i for i in REGISTRY if i.id == name).fn


def broken(res: RunResult) -> set[str]:
    return {i.id for i in res.broken}


def run_with_jump_hook(name: str, hook: Any, policy: dict[str, str] | None = None) -> RunResult:
    r = Run(load_scenario(EX / name), (), policy, None)

    def at(stage: str) -> None:
        if stage == "kexec-jump":
            hook(r)
    r.machine.stage_hooks.append(at)
    return r.execute()


def test_every_invariant_has_id_description_and_spec() -> None:
    rule("KHO-1")
    ids = [i.id for i in REGISTRY]
    assert len(ids) == len(set(ids)) >= 12
    assert all(i.description and i.spec for i in REGISTRY)


def test_seed_warn_breaks_bdf_identity_dma_and_exclusivity() -> None:
    """pci.md §9 row 1 with the v6-as-posted policy: unsafe, not just wrong."""
    res = Run(load_scenario(EX / "seed-flb-retrieve-failure.yaml"), (), WARN, None).execute()
    assert res.outcome == "unsafe"
    assert {"PCI-1", "DMA-1", "VFIO-8"} <= broken(res)


def test_use_after_free_of_incoming_pci_ser_breaks_pci3() -> None:
    """Without page poisoning the luo-v1 retry reads the freed pci_ser (pci.md §1)."""
    sc = load_scenario(EX / "seed-flb-retrieve-failure.yaml")
    after = sc.kernels.after[0].model_copy(update={"cmdline": "pci=assign-busses "
                                                              "init_on_free=0"})
    sc = sc.model_copy(update={"kernels": sc.kernels.model_copy(update={"after": [after]})})
    res = Run(sc, (), WARN, None).execute()
    assert "PCI-3" in broken(res), [i.detail for i in res.broken]


def test_memory_overwritten_during_the_jump_breaks_kho1() -> None:
    def clobber(r: Run) -> None:
        # a stray write into the middle of preserved guest RAM before the new kernel runs
        _idx, pa, order, _n = r.ctx.ram_layout["vm0"][0]  # runs of folios
        r.machine.memory.write(pa + (5 << (order + 12)) + 100, b"stray")
    res = run_with_jump_hook("reference-host.yaml", clobber)
    assert "KHO-1" in broken(res)


def test_extra_context_entry_at_handover_breaks_iommu7() -> None:
    def stale(r: Run) -> None:
        unit = r.machine.iommu.units[0]
        # a RequesterID nobody preserved, on a bus whose context table is handed over
        r.machine.iommu.write_context_entry(unit, 0x03, 0x08, 0x100000, 77)
    res = run_with_jump_hook("reference-host.yaml", stale)
    assert "IOMMU-7" in broken(res)


def test_acs_changed_breaks_pci6() -> None:
    r = Run(load_scenario(EX / "reference-host.yaml"), (), None, None)

    def at(stage: str) -> None:
        if stage == "iommu-ready":
            f = r.machine.pci.find("sw0-dp0")
            f.acs_ctrl ^= 0x1
    r.machine.stage_hooks.append(at)
    assert "PCI-6" in broken(r.execute())


def ctx(**kw: Any) -> CheckContext:
    c = CheckContext(Machine.from_topology({}))
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_liveupdate_number_must_rise_by_one() -> None:
    assert rule("LUO-2")(ctx(liveupdate_numbers=[0, 1, 2])) is None
    assert "0 -> 2" in rule("LUO-2")(ctx(liveupdate_numbers=[0, 2]))


def test_token_retrievable_after_finish_breaks_luo1() -> None:
    assert rule("LUO-1")(ctx(retrieved_tokens={("vm2", 1): 1})) is None
    assert "after FINISH" in rule("LUO-1")(ctx(retrieved_tokens={("vm2", 1): -1}))


def test_unclaimed_memfd_memory_after_finish_breaks_kho2() -> None:
    kernel = SimpleNamespace(alive=True, kho=SimpleNamespace(unclaimed=lambda: [(0x200000, 9)]))
    c = ctx(kernel=kernel, phase="finished")
    c.extra["owners"] = {(0x200, 9): "mm.memfd"}
    assert "mm.memfd" in rule("KHO-2")(c)
    c.extra["owners"] = {(0x200, 9): "kho"}
    assert rule("KHO-2")(c) is None


def test_bme_kept_on_unpreserved_device_breaks_pci5() -> None:
    c = ctx()
    c.extra["bme_at_jump"] = {"nic0": (False, True, False)}
    assert "nic0" in rule("PCI-5")(c)
    c = ctx()
    c.extra["bme_at_jump"] = {"sw0": (True, False, True)}
    assert "lost Bus Master Enable" in rule("PCI-5")(c)


@pytest.mark.parametrize("field", ["nr", "refcount"])
def test_outgoing_accounting_breaks_pci2(field: str) -> None:
    """Corrupt the outgoing pci_ser in memory after preserve: PCI-2 sees it."""
    r = Run(load_scenario(EX / "reference-host.yaml"), (), None, None)
    seen: dict[str, str | None] = {}
    orig = r.checker.check

    def check(step: str) -> list[Any]:
        if step == "preserve" and not seen:
            k = r.kernel
            assert k is not None
            lu = k.pci_lu
            ser = lu._out.ser_pa  # type: ignore[union-attr]
            if field == "nr":
                k.machine.memory.write(ser, (99).to_bytes(4, "little"))
            else:
                slot = lu._out.slots[0]  # type: ignore[union-attr]
                k.machine.memory.write(slot + 6, (7).to_bytes(2, "little"))
            r.ctx.phase = "preserved"
            seen["detail"] = rule("PCI-2")(r.ctx)
        return orig(step)
    r.checker.check = check  # type: ignore[method-assign]
    r.execute()
    assert seen["detail"] is not None
