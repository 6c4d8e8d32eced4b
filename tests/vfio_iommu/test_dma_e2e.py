"""End-to-end DMA across kexec through the preserved IOMMU state (pci.md §7, §10 inv. 5, 7).

A device doing DMA into its VM's memfd keeps writing only into that memfd's
pages: in ``continuous`` mode through the blackout (the preserved root,
context entry and page tables translate while no kernel runs), and in
``reset-at-freeze`` mode (vfio v4/v5) the engine stops at freeze and
restarts in the new kernel through the restored domain.
"""

from __future__ import annotations

import pytest

from luosim.hw.dma import OUTCOME_TRANSLATED, DmaController
from luosim.kernel.mm.memfd import MemfdFile

from .conftest import IOVA, RAM, boot, make_vm

MS = 1_000_000


def memfd_pfns(f: MemfdFile) -> set[int]:
    return {(pa >> 12) + i for _idx, pa, order in f.folio_list() for i in range(1 << order)}


@pytest.mark.parametrize("profile", ["v6", "v9"])
@pytest.mark.parametrize("mode", ["continuous", "reset-at-freeze"])
def test_dma_lands_only_in_vm_memory(profile: str, mode: str) -> None:
    k = boot(profile=profile, dma_mode=mode)
    m = k.machine
    vm = make_vm(k, folio_order=9)
    vm.dev.set_irqs(True)
    vm.dev.start_dma(IOVA, RAM, rate_per_ms=4096.0, seed=7)
    ctl = DmaController.of(m)
    ctl.run(5 * MS)
    s = k.open_liveupdate().create_session("vm")
    for tok, f in ((1, vm.ram), (2, vm.iommufd), (3, vm.dev)):
        s.preserve_fd(f, tok)
    vm.dev.set_irqs(False)

    def blackout(stage: str) -> None:
        ctl.run(2 * MS)  # devices keep running while no kernel does

    m.stage_hooks.append(blackout)
    hw_id = vm.dev.pdev.hw.hw_id
    k2 = k.kexec(profile, policy={"dma.mode": mode})
    engine = ctl.engine(hw_id)
    assert engine is not None
    assert engine.running == (mode == "continuous")
    s2 = k2.open_liveupdate().retrieve_session("vm")
    ram2 = s2.retrieve_fd(1)
    assert isinstance(ram2, MemfdFile)
    d2 = s2.retrieve_fd(3)
    if mode == "reset-at-freeze":
        d2.start_dma(IOVA, RAM, rate_per_ms=4096.0, seed=8)  # type: ignore[attr-defined]
    ctl.run(5 * MS)
    totals = ctl.totals(hw_id)
    assert set(totals) == {OUTCOME_TRANSLATED}, totals
    landed = {pfn for pfn, land in ctl.landed.items() if land.hw_id == hw_id}
    assert landed and landed <= memfd_pfns(ram2)
    assert memfd_pfns(ram2) == memfd_pfns(vm.ram)  # same physical guest RAM
    assert not m.iommu.units[0].faults()
