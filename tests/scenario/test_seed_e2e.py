"""The seed's safety argument end to end (spec pci.md §9 row 1, §7.5, §10 inv. 1, 7, 10):
with `warn` a renumbered preserved device behind a switch DMAs through a foreign
context entry (unsafe); with `panic` the boot stops and no byte is corrupted."""

from __future__ import annotations

from pathlib import Path

from luosim.hw.memory import PAGE_SHIFT
from luosim.scenario.runner import Run
from luosim.scenario.schema import load_scenario

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed-flb-retrieve-failure.yaml"


def foreign_writes(run: Run) -> list[str]:
    """DMA writes of preserved devices that landed outside their own VM's RAM."""
    out = []
    for pfn, landing in run.machine.dma.landed.items():
        vm = run.ctx.device_vm.get(landing.hw_id)
        if vm is not None and pfn not in run.ctx.ram_pfns[vm]:
            out.append(f"{landing.hw_id} -> pfn {pfn:#x}")
    return out


def test_panic_policy_stops_before_any_corruption() -> None:
    run = Run(load_scenario(SEED), (), {"pci.retrieve_failure": "panic"}, None)
    res = run.execute()
    assert res.outcome == "panic"
    assert res.panic == "Failed to retrieve incoming FLB data (-ENOMEM)"
    assert foreign_writes(run) == []
    assert all(i.ok for i in res.invariants)


def test_warn_policy_renumbers_and_dma_hits_another_vm() -> None:
    run = Run(load_scenario(SEED), (), {"pci.retrieve_failure": "warn"}, None)
    res = run.execute()
    assert res.outcome == "unsafe"
    moved = {d.name: (d.bdf_before, d.bdf_after) for d in res.devices
             if d.preserved and d.bdf_before != d.bdf_after}
    assert moved["dsa1"] == ("0000:08:00.0", "0000:04:00.0")
    bad = foreign_writes(run)
    assert bad and any(w.startswith("nvme1 ") for w in bad)
    # nvme1 belongs to vm0; its writes land in vm1's RAM through dsa1's old context
    vm1 = run.ctx.ram_pfns["vm1"]
    assert any(pfn in vm1 for pfn, land in run.machine.dma.landed.items()
               if land.hw_id == "nvme1")
    assert PAGE_SHIFT == 12
