"""KHO semantics (spec kho.md; kernel/liveupdate/kexec_handover.c)."""

from __future__ import annotations

import errno

import pytest

from luosim.errors import KernelError
from luosim.hw.machine import Machine
from luosim.hw.memory import PAGE_SIZE, POISON_BYTE
from luosim.kernel.kho import Kho
from tests.conftest import FakeKernel

GiB = 1 << 30


def _boot(machine: Machine, kho_data: bytes | None) -> tuple[FakeKernel, Kho]:
    k = FakeKernel(machine)
    kho = Kho(k)  # type: ignore[arg-type]
    kho.early_init(kho_data)
    return k, kho


def test_one_gib_of_folios_survives_kexec_and_unpreserved_page_is_scrubbed(
        machine: Machine) -> None:
    """spec kho.md "Memory API": preserved folios survive, everything else is scrubbed."""
    k, kho = _boot(machine, None)
    folios = []
    for i in range(GiB // (2 << 20)):  # 512 order-9 folios = 1 GiB
        pa = k.mm.alloc_pages(9)
        machine.memory.fill_folio(pa, 9, seed=1000 + i)
        kho.preserve_folio(pa, 9)
        folios.append(pa)
    machine.memory.write(folios[7] + 4096 * 3 + 5, b"guest data")
    before = [machine.memory.folio_fingerprint(pa, 9) for pa in folios]
    secret = k.mm.alloc_pages(0)
    machine.memory.write(secret, b"not preserved")

    kd = kho.handover()
    machine.kexec_jump(kd)
    _k2, kho2 = _boot(machine, kd)

    assert kho2.is_kho_boot
    assert all(kho2.restore_folio(pa) == 9 for pa in folios)
    assert [machine.memory.folio_fingerprint(pa, 9) for pa in folios] == before
    assert machine.memory.read(folios[7] + 4096 * 3 + 5, 10) == b"guest data"
    assert machine.memory.read(secret, 13) == bytes([POISON_BYTE]) * 13
    assert kho2.unclaimed() == [(kd_fdt(kd), 0)]


def kd_fdt(kd: bytes | None) -> int:
    from luosim.abi.kho import KhoData
    assert kd is not None
    return KhoData.decode(kd).fdt_addr


def test_restoring_memory_that_was_not_preserved_warns_and_fails(machine: Machine) -> None:
    """kho_restore_page(): no KHO magic -> WARN and NULL."""
    k, kho = _boot(machine, None)
    pa = k.mm.alloc_pages(0)
    kd = kho.handover()
    machine.kexec_jump(kd)
    k2, kho2 = _boot(machine, kd)
    assert kho2.restore_folio(pa) is None
    assert any("not preserved" in msg for _lvl, msg in k2.log)


def test_restore_twice_fails_the_second_time(machine: Machine) -> None:
    """kho_restore_page() clears page->private so a second restore errors out."""
    _k, kho = _boot(machine, None)
    pa = kho.alloc_preserve(3 * PAGE_SIZE)  # order 2
    kd = kho.handover()
    machine.kexec_jump(kd)
    _k2, kho2 = _boot(machine, kd)
    assert kho2.restore_folio(pa) == 2
    assert kho2.restore_folio(pa) is None


def test_preserve_scratch_is_einval(machine: Machine) -> None:
    """kho_preserve_folio(): WARN_ON(scratch overlap) -> -EINVAL."""
    _k, kho = _boot(machine, None)
    s = machine.scratch[0]
    with pytest.raises(KernelError) as ei:
        kho.preserve_folio(s.addr, 0)
    assert ei.value.errno == errno.EINVAL


def test_alloc_preserve_errors(machine: Machine) -> None:
    """kho_alloc_preserve(): 0 bytes -> EINVAL, above MAX_PAGE_ORDER -> E2BIG."""
    _k, kho = _boot(machine, None)
    with pytest.raises(KernelError) as ei:
        kho.alloc_preserve(0)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(KernelError) as ei:
        kho.alloc_preserve(8 << 20)  # order 11 > MAX_PAGE_ORDER (10)
    assert ei.value.errno == errno.E2BIG


def test_unpreserve_free_releases_memory_from_the_handover(machine: Machine) -> None:
    k, kho = _boot(machine, None)
    pa = kho.alloc_preserve(100)
    machine.memory.write(pa, b"gone")
    kho.unpreserve_free(pa)
    assert k.mm.alloc_pages(0) == pa  # reused by something not preserved
    kd = kho.handover()
    machine.kexec_jump(kd)
    _k2, kho2 = _boot(machine, kd)
    assert kho2.restore_folio(pa) is None
    assert machine.memory.read(pa, 4) == bytes([POISON_BYTE]) * 4


def test_preserve_pages_splits_into_aligned_blocks_and_restores(machine: Machine) -> None:
    """kho_preserve_pages(): blocks of min(ctz(pfn), ilog2(remaining))."""
    k, kho = _boot(machine, None)
    base = k.mm.alloc_pages(4) + 3 * PAGE_SIZE  # pfn with ctz 0
    kho.preserve_pages(base, 7)
    orders = sorted(o for _p, o in kho.preserved)
    assert orders == [0, 1, 2]  # pfn%16==3: 1 page, then 4 (pfn%16==4), then 2
    machine.memory.write(base, b"A" * 7 * PAGE_SIZE)
    kd = kho.handover()
    machine.kexec_jump(kd)
    _k2, kho2 = _boot(machine, kd)
    assert kho2.restore_pages(base, 7)
    assert machine.memory.read(base, 7 * PAGE_SIZE) == b"A" * 7 * PAGE_SIZE


def test_subtrees_add_remove_retrieve(machine: Machine) -> None:
    """kho_add_subtree(): EEXIST on duplicate; kho_retrieve_subtree(): ENOENT."""
    _k, kho = _boot(machine, None)
    a = kho.alloc_preserve(64)
    b = kho.alloc_preserve(64)
    kho.add_subtree("LUO", a)
    with pytest.raises(KernelError) as ei:
        kho.add_subtree("LUO", b)
    assert ei.value.errno == errno.EEXIST
    kho.add_subtree("OTHER", b)
    kho.remove_subtree(b)
    kd = kho.handover()
    machine.kexec_jump(kd)
    _k2, kho2 = _boot(machine, kd)
    assert kho2.retrieve_subtree("LUO") == a
    with pytest.raises(KernelError) as ei:
        kho2.retrieve_subtree("OTHER")
    assert ei.value.errno == errno.ENOENT


def test_preserve_after_finalize_is_ebusy(machine: Machine) -> None:
    _k, kho = _boot(machine, None)
    kho.finalize()
    with pytest.raises(KernelError) as ei:
        kho.alloc_preserve(10)
    assert ei.value.errno == errno.EBUSY


def test_corrupt_root_compatible_boots_as_non_kho(machine: Machine) -> None:
    """kho_populate(): an incompatible root FDT is ignored (no KHO boot)."""
    from luosim.faults import Fault
    machine.faults.plan = (Fault("kho.handover", 1, "corrupt:root-compatible"),)
    _k, kho = _boot(machine, None)
    pa = kho.alloc_preserve(64)
    machine.memory.write(pa, b"data")
    kd = kho.handover()
    machine.kexec_jump(kd)
    k2, kho2 = _boot(machine, kd)
    assert not kho2.is_kho_boot
    assert any("invalid" in m for _l, m in k2.log)


def test_corrupt_radix_pointer_is_classified_not_a_crash(machine: Machine) -> None:
    from luosim.faults import Fault
    machine.faults.plan = (Fault("kho.handover", 1, "corrupt:radix-node"),)
    _k, kho = _boot(machine, None)
    kho.alloc_preserve(64)
    kd = kho.handover()
    machine.kexec_jump(kd)
    k2, kho2 = _boot(machine, kd)
    assert not kho2.is_kho_boot
    assert any("preserved memory map" in m for _l, m in k2.log)
