"""VT-d-like remapping hardware (luosim.hw.iommu).

Covers the legacy-mode entry layouts (root entry, context entry,
second-level PTE) byte for byte, second-level translation, every fault
reason, tables living only in physical memory (pci.md §7.1: the root and
context pages are what KHO preserves), and the RequesterID-keyed lookup that
pci.md §7.5 and §10 invariant 7 depend on.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from luosim.hw.clock import SimClock
from luosim.hw.iommu import (
    DRHD_REG_BASE,
    FAULT_LOG_CAP,
    REASON_PASSTHROUGH,
    ContextEntry,
    DmaFault,
    IommuHardware,
    IommuProgrammingError,
    PageTableError,
    PageTableWriter,
    RootEntry,
    VtdUnit,
    encode_pte,
)
from luosim.hw.memory import PAGE_SIZE, PhysicalMemory

MIB = 1 << 20
RAM = 256 * MIB


class FakeMachine:
    """Just what the IOMMU hardware touches: memory, clock, events."""

    def __init__(self, topology: dict[str, Any] | None = None) -> None:
        self.memory = PhysicalMemory(RAM)
        self.clock = SimClock()
        self.events: list[tuple[str, str, str, str, str, dict[str, Any]]] = []
        self.topology = topology or {}
        self.iommu = IommuHardware.from_topology(self.topology, self)

    def emit(self, kernel: str, subsystem: str, kind: str, detail: str,
             level: str = "info", **data: Any) -> None:
        self.events.append((kernel, subsystem, kind, detail, level, data))


class Bump:
    """A trivial page allocator standing in for the kernel's."""

    def __init__(self, base: int = 64 * MIB) -> None:
        self.next = base
        self.pages: list[int] = []

    def __call__(self) -> int:
        pa = self.next
        self.next += PAGE_SIZE
        self.pages.append(pa)
        return pa


def rid(bus: int, dev: int, fn: int = 0) -> int:
    return bus << 8 | dev << 3 | fn


def setup_unit(m: FakeMachine, alloc: Bump) -> tuple[VtdUnit, PageTableWriter]:
    unit = m.iommu.units[0]
    m.iommu.set_root_table(unit, alloc())
    m.memory.zero(unit.rtaddr, PAGE_SIZE)
    return unit, PageTableWriter(m.memory, alloc)


def attach(m: FakeMachine, unit: VtdUnit, w: PageTableWriter, bus: int, devfn: int,
           did: int) -> int:
    """Context entry for (bus, devfn) pointing at a fresh domain; returns its root."""
    if m.iommu.read_root_entry(unit, bus) is None:
        m.iommu.write_root_entry(unit, bus, w.new_table())
    pgd = w.new_table()
    m.iommu.write_context_entry(unit, bus, devfn, pgd, did)
    return pgd


# -- golden bytes -----------------------------------------------------------------
def test_root_entry_golden_bytes() -> None:
    """Root entry: lo bit 0 present, bits 12-63 context-table pointer; hi zero."""
    raw = RootEntry(True, 0x12345000).encode()
    assert raw == bytes.fromhex("0150341200000000" "0000000000000000")
    assert RootEntry.decode(raw) == RootEntry(True, 0x12345000)
    assert RootEntry.decode(bytes(16)).present is False


def test_context_entry_golden_bytes() -> None:
    """Context entry: lo P | TT<<2 | SLPTPTR; hi AW | DID<<8."""
    e = ContextEntry(True, pgtable=0xABC000, domain_id=0x2A, aw=2)
    assert e.encode() == bytes.fromhex("01c0ab0000000000" "022a000000000000")
    pt = ContextEntry(True, pgtable=0xABC000, domain_id=0x1234, aw=3, translation_type=2)
    assert pt.encode() == bytes.fromhex("09c0ab0000000000" "0334120000000000")
    assert ContextEntry.decode(pt.encode()) == pt


def test_pte_golden_values() -> None:
    """Second-level PTE: R bit 0, W bit 1, PS bit 7, address bits 12-51."""
    assert struct.pack("<Q", encode_pte(0x7654000)) == bytes.fromhex("0340650700000000")
    assert encode_pte(0x7654000, write=False) == 0x7654001
    assert struct.pack("<Q", encode_pte(0x40000000, superpage=True)) == bytes.fromhex(
        "8300004000000000")
    with pytest.raises(PageTableError):
        encode_pte(0x7654001)


@given(present=st.booleans(), pgtable=st.integers(0, (1 << 52) - 1).map(lambda x: x << 12),
       did=st.integers(0, 0xFFFF), aw=st.integers(0, 7), tt=st.integers(0, 3),
       fpd=st.booleans())
def test_context_entry_roundtrip(present: bool, pgtable: int, did: int, aw: int, tt: int,
                                 fpd: bool) -> None:
    e = ContextEntry(present, pgtable, did, aw, tt, fpd)
    assert ContextEntry.decode(e.encode()) == e


def test_tables_written_in_memory_at_hand_computed_offsets() -> None:
    m = FakeMachine()
    alloc = Bump(0x4000000)
    unit, w = setup_unit(m, alloc)  # root table at 0x4000000
    ctx = w.new_table()  # 0x4001000
    m.iommu.write_root_entry(unit, 3, ctx)
    assert m.memory.read(0x4000000 + 3 * 16, 16) == bytes.fromhex("0110000400000000" + "00" * 8)
    pgd = w.new_table()  # 0x4002000
    m.iommu.write_context_entry(unit, 3, 0x08, pgd, domain_id=5)
    assert m.memory.read(ctx + 8 * 16, 16) == bytes.fromhex(
        "0120000400000000" "0205000000000000")
    w.map(pgd, 0x1000, 0x7654000, PAGE_SIZE)  # creates L3 0x4003000, L2 0x4004000, L1 0x4005000
    assert m.memory.read(pgd, 8) == bytes.fromhex("0330000400000000")
    assert m.memory.read(0x4005000 + 8, 8) == bytes.fromhex("0340650700000000")
    assert w.table_pages(pgd) == [0x4002000, 0x4003000, 0x4004000, 0x4005000]


# -- topology ---------------------------------------------------------------------------
def test_units_from_topology() -> None:
    assert [(u.segment, u.reg_base) for u in FakeMachine().iommu.units] == [(0, DRHD_REG_BASE)]
    m = FakeMachine({"segments": [{"segment": 0}, {"segment": 1, "iommu": False},
                                  {"segment": 2}]})
    assert [(u.segment, u.reg_base) for u in m.iommu.units] == [
        (0, DRHD_REG_BASE), (2, DRHD_REG_BASE + 0x2000)]
    assert m.iommu.unit_for_segment(1) is None
    assert m.iommu.unit_by_token(DRHD_REG_BASE + 0x2000) is m.iommu.units[1]


# -- translation ------------------------------------------------------------------------------
def test_translate_mapped_iova_4k_and_2m() -> None:
    m = FakeMachine()
    alloc = Bump()
    unit, w = setup_unit(m, alloc)
    pgd = attach(m, unit, w, 3, 0x08, did=5)
    w.map(pgd, 0x10000, 0x200000 + 0x5000, 2 * PAGE_SIZE)
    w.map(pgd, 0x40000000, 0x8000000, 2 * MIB)  # aligned: one 2 MiB leaf
    m.iommu.enable_translation(unit)
    assert m.iommu.translate(0, rid(3, 1), 0x10123, write=True) == 0x205123
    assert m.iommu.translate(0, rid(3, 1), 0x11FF8, write=False) == 0x206FF8
    assert m.iommu.translate(0, rid(3, 1), 0x40123456, write=True) == 0x8123456
    walk = w.walk(pgd, 0x40123456)
    assert walk is not None and walk.page_size == 2 * MIB and walk.level == 2
    assert unit.faults() == []
    assert list(w.mappings(pgd)) == [
        (0x10000, 0x205000, PAGE_SIZE, True, True), (0x11000, 0x206000, PAGE_SIZE, True, True),
        (0x40000000, 0x8000000, 2 * MIB, True, True)]


def _fault(m: FakeMachine, r: int, iova: int, write: bool = True) -> str:
    with pytest.raises(DmaFault) as exc:
        m.iommu.translate(0, r, iova, write)
    assert exc.value.rid == r and exc.value.iova == iova and exc.value.segment == 0
    return exc.value.reason


def test_each_fault_reason() -> None:
    m = FakeMachine()
    alloc = Bump()
    unit, w = setup_unit(m, alloc)
    # translation disabled: hardware forwards iova as physical, logged as untranslated
    assert m.iommu.translate(0, rid(3, 1), 0x5000, True) == 0x5000
    assert unit.fault_log[-1].reason == REASON_PASSTHROUGH
    assert not unit.fault_log[-1].blocked and unit.faults() == []
    assert _fault(m, rid(3, 1), RAM) == "outside-ram"  # TE off, beyond RAM

    pgd = attach(m, unit, w, 3, 0x08, did=5)
    w.map(pgd, 0x10000, 0x300000, PAGE_SIZE, write=False)
    w.map(pgd, 0x20000, 0x301000, PAGE_SIZE, write=True, read=False)
    w.map(pgd, 0x30000, RAM, PAGE_SIZE)  # points past the end of RAM
    m.iommu.enable_translation(unit)
    assert _fault(m, rid(4, 1), 0x10000) == "root-not-present"
    assert _fault(m, rid(3, 2), 0x10000) == "context-not-present"
    assert _fault(m, rid(3, 1), 0x50000) == "pte-not-present"
    assert _fault(m, rid(3, 1), 0x10000, write=True) == "write-to-readonly"
    assert m.iommu.translate(0, rid(3, 1), 0x10000, write=False) == 0x300000
    assert _fault(m, rid(3, 1), 0x20000, write=False) == "read-not-permitted"
    assert _fault(m, rid(3, 1), 0x30000) == "outside-ram"
    assert _fault(m, rid(3, 1), 1 << 48) == "address-beyond-aw"
    m.iommu.write_context_entry(unit, 3, 0x10, pgd, 6, translation_type=3)  # reserved TT
    assert _fault(m, rid(3, 2), 0x10000) == "entry-invalid"
    reasons = [f.reason for f in unit.faults()]
    assert reasons == ["outside-ram", "root-not-present", "context-not-present",
                       "pte-not-present", "write-to-readonly", "read-not-permitted",
                       "outside-ram", "address-beyond-aw", "entry-invalid"]
    assert any(e[2] == "dma-fault" for e in m.events)


def test_passthrough_context_entry() -> None:
    m = FakeMachine()
    unit, w = setup_unit(m, Bump())
    m.iommu.write_root_entry(unit, 0, w.new_table())
    m.iommu.write_context_entry(unit, 0, 0, 0, 1, translation_type=2)
    m.iommu.enable_translation(unit)
    assert m.iommu.translate(0, 0, 0x1234, True) == 0x1234


def test_fault_log_coalesces_and_is_bounded() -> None:
    m = FakeMachine()
    unit, _ = setup_unit(m, Bump())
    m.iommu.enable_translation(unit)
    for i in range(5):
        _fault(m, rid(1, 0), i * PAGE_SIZE)
    assert len(unit.fault_log) == 1 and unit.fault_log[0].count == 5
    for i in range(FAULT_LOG_CAP + 10):
        m.iommu.record_fault(unit, "root-not-present", i, 0, True)
    assert len(unit.fault_log) == FAULT_LOG_CAP and unit.fault_overflow == 11


def test_programming_errors() -> None:
    m = FakeMachine()
    unit = m.iommu.units[0]
    with pytest.raises(IommuProgrammingError):
        m.iommu.enable_translation(unit)  # TE before SRTP
    alloc = Bump()
    unit, w = setup_unit(m, alloc)
    with pytest.raises(IommuProgrammingError):
        m.iommu.write_context_entry(unit, 9, 0, w.new_table(), 1)  # no root entry for bus 9
    with pytest.raises(IommuProgrammingError):
        m.iommu.set_root_table(unit, 0x1001)


# -- tables only in memory ---------------------------------------------------------------------
def test_tables_survive_in_memory_for_a_fresh_hardware_object() -> None:
    """pci.md §7.1/§7.4: a new kernel adopts the preserved root table; only
    memory and the unit registers carry the translation across."""
    m = FakeMachine()
    alloc = Bump()
    unit, w = setup_unit(m, alloc)
    pgd = attach(m, unit, w, 3, 0x08, did=5)
    w.map(pgd, 0x10000, 0x200000, 4 * PAGE_SIZE)
    m.iommu.enable_translation(unit)
    rtaddr = unit.rtaddr

    fresh = IommuHardware.from_topology(m.topology, m)
    u2 = fresh.units[0]
    assert u2.reg_base == unit.reg_base  # the KHO token is stable
    fresh.set_root_table(u2, rtaddr)
    fresh.enable_translation(u2)
    assert fresh.translate(0, rid(3, 1), 0x12345, True) == 0x202345
    ctx = fresh.read_context_entry(u2, 3, 0x08)
    assert ctx is not None and (ctx.pgtable, ctx.domain_id, ctx.aw) == (pgd, 5, 2)
    assert fresh.context_tables(u2) == {3: alloc.pages[1]}
    assert [(b, d) for b, d, _ in fresh.context_entries(u2)] == [(3, 0x08)]

    # KHO keeps exactly the table pages: translation still works after the scrub
    keep = [(p, PAGE_SIZE) for p in [rtaddr, *fresh.context_tables(u2).values(),
                                     *w.table_pages(pgd)]]
    m.memory.scrub(keep)
    assert fresh.translate(0, rid(3, 1), 0x12345, True) == 0x202345

    # a context table that was not preserved reads as poison (0x6b..): present,
    # but with reserved bits set, so the hardware faults
    m.memory.scrub([(rtaddr, PAGE_SIZE)])
    with pytest.raises(DmaFault) as exc:
        fresh.translate(0, rid(3, 1), 0x12345, True)
    assert exc.value.reason == "entry-invalid"
    m.memory.scrub([])  # root table lost too
    with pytest.raises(DmaFault) as exc:
        fresh.translate(0, rid(3, 1), 0x12345, True)
    assert exc.value.reason == "entry-invalid"


def test_clear_entries_are_seen_immediately() -> None:
    """No context cache / IOTLB: clearing an entry takes effect on the next DMA."""
    m = FakeMachine()
    unit, w = setup_unit(m, Bump())
    pgd = attach(m, unit, w, 3, 0x08, did=5)
    w.map(pgd, 0, 0x200000, PAGE_SIZE)
    m.iommu.enable_translation(unit)
    assert m.iommu.translate(0, rid(3, 1), 0x10, True) == 0x200010
    assert w.unmap(pgd, 0, PAGE_SIZE) == PAGE_SIZE
    assert _fault(m, rid(3, 1), 0x10) == "pte-not-present"
    w.map(pgd, 0, 0x200000, PAGE_SIZE)
    m.iommu.clear_context_entry(unit, 3, 0x08)
    assert m.iommu.read_context_entry(unit, 3, 0x08) is None
    assert _fault(m, rid(3, 1), 0x10) == "context-not-present"
    m.iommu.clear_root_entry(unit, 3)
    assert _fault(m, rid(3, 1), 0x10) == "root-not-present"
    m.iommu.disable_translation(unit)
    assert [on for _, on in unit.te_history] == [True, False]


def test_page_table_writer_errors_and_superpage_unmap() -> None:
    m = FakeMachine()
    w = PageTableWriter(m.memory, Bump())
    pgd = w.new_table()
    w.map(pgd, 0, 0x200000, 2 * MIB)
    with pytest.raises(PageTableError):
        w.map(pgd, 0x1000, 0x900000, PAGE_SIZE)  # inside the 2 MiB leaf
    with pytest.raises(PageTableError):
        w.unmap(pgd, 0, PAGE_SIZE)  # part of a superpage
    assert w.unmap(pgd, 0, 2 * MIB) == 2 * MIB
    w.map(pgd, 0x3000, 0x900000, PAGE_SIZE)
    with pytest.raises(PageTableError):
        w.map(pgd, 0x2000, 0xA00000, 2 * PAGE_SIZE)  # overlaps 0x3000
    with pytest.raises(PageTableError):
        w.map(pgd, 0x800, 0x900000, PAGE_SIZE)  # misaligned
    small = PageTableWriter(m.memory, Bump(128 * MIB), superpages=False)
    root = small.new_table()
    small.map(root, 0, 0x400000, 2 * MIB)
    assert len(small.table_pages(root)) == 4  # 512 4 KiB leaves in one L1 table
    assert small.walk(root, 0x1FF000) is not None and small.walk(root, 2 * MIB) is None


# -- RequesterID keyed lookup (pci.md §7.5, §10 invariant 7) -------------------------------
def test_renumbered_bus_uses_another_devices_context_entry() -> None:
    """pci.md §7.5: root entries are indexed by bus and context entries by
    devfn, so after a bus renumbering device A's requests carry B's
    RequesterID: they are translated through B's domain (landing in B's
    memory) or, where no context entry exists for the new RID, fault."""
    m = FakeMachine()
    unit, w = setup_unit(m, Bump())
    a_rid, b_rid = rid(3, 0), rid(4, 0)
    pgd_a = attach(m, unit, w, 3, 0x00, did=1)
    pgd_b = attach(m, unit, w, 4, 0x00, did=2)
    w.map(pgd_a, 0x100000, 0x1000000, 16 * PAGE_SIZE)  # A's memory
    w.map(pgd_b, 0x100000, 0x2000000, 16 * PAGE_SIZE)  # B's memory
    m.iommu.enable_translation(unit)
    assert m.iommu.translate(0, a_rid, 0x100040, True) == 0x1000040
    # bus under A renumbered 3 -> 4: A now presents B's RequesterID
    assert m.iommu.translate(0, b_rid, 0x100040, True) == 0x2000040  # in B's memory
    # renumbered to a bus with no root entry: the request faults instead
    with pytest.raises(DmaFault) as exc:
        m.iommu.translate(0, rid(5, 0), 0x100040, True)
    assert exc.value.reason == "root-not-present"


# -- 1 GiB leaves (iommu_pgsize() with SZ_1G in the intel pgsize_bitmap) -----------------
GIB = 1 << 30


def test_one_gib_leaves_golden_pte_bits_and_walk() -> None:
    """A 1 GiB-aligned chunk is one level-3 leaf: PS | W | R and address bits 30-51."""
    w = PageTableWriter(PhysicalMemory(8 * GIB), Bump())
    pgd = w.new_table()
    # iova 4 GiB -> pa 1 GiB, 2 GiB + 2 MiB + 4 KiB: two 1 GiB leaves, one 2 MiB, one 4 KiB
    w.map(pgd, 4 * GIB, 1 * GIB, 2 * GIB + 2 * MIB + PAGE_SIZE)
    pages = w.table_pages(pgd)
    assert len(pages) == 4  # PML4, PDPT, one PD (for the 2 MiB leaf), one PT
    pdpt = pages[1]
    assert w.memory.read(pdpt + 8 * 4, 16) == bytes.fromhex(
        "8300004000000000" "8300008000000000")  # pa 1 GiB and 2 GiB, PS|W|R
    assert w.memory.read(pdpt + 8 * 6, 8) != bytes(8)  # a table pointer: no PS
    assert w.memory.read_u64(pdpt + 8 * 6) & 0x80 == 0
    walk = w.walk(pgd, 5 * GIB + 0x123456)
    assert walk is not None and walk.level == 3 and walk.page_size == GIB
    assert walk.pa == 2 * GIB + 0x123456 and walk.tables == tuple(pages[:2])
    assert list(w.mappings(pgd)) == [
        (4 * GIB, 1 * GIB, GIB, True, True), (5 * GIB, 2 * GIB, GIB, True, True),
        (6 * GIB, 3 * GIB, 2 * MIB, True, True),
        (6 * GIB + 2 * MIB, 3 * GIB + 2 * MIB, PAGE_SIZE, True, True)]
    with pytest.raises(PageTableError):
        w.map(pgd, 4 * GIB + 2 * MIB, 0, 2 * MIB)  # inside the 1 GiB leaf
    with pytest.raises(PageTableError):
        w.unmap(pgd, 4 * GIB, 2 * MIB)  # part of a 1 GiB page
    assert w.unmap(pgd, 4 * GIB, GIB) == GIB
    assert w.walk(pgd, 4 * GIB) is None and w.walk(pgd, 5 * GIB) is not None


def test_one_gib_leaves_need_alignment_of_both_addresses() -> None:
    """pa 2 MiB- but not 1 GiB-aligned: 2 MiB leaves only; ``gib_pages=False``
    (SLLPS without 1 GiB) likewise; table counts show the leaf sizes."""
    mem = PhysicalMemory(8 * GIB)
    w = PageTableWriter(mem, Bump())
    pgd = w.new_table()
    w.map(pgd, 4 * GIB, GIB + 2 * MIB, GIB)
    assert {s for _i, _p, s, _r, _w in w.mappings(pgd)} == {2 * MIB}
    no_gib = PageTableWriter(mem, Bump(128 * MIB), gib_pages=False)
    root = no_gib.new_table()
    no_gib.map(root, 4 * GIB, GIB, 2 * GIB)
    assert len(no_gib.table_pages(root)) == 4  # PML4, PDPT, two PDs of 2 MiB leaves
    assert {s for _i, _p, s, _r, _w in no_gib.mappings(root)} == {2 * MIB}
    walk = no_gib.walk(root, 4 * GIB)
    assert walk is not None and walk.level == 2


@pytest.mark.parametrize("seed", range(4))
def test_map_many_leaves_the_bytes_of_chunk_by_chunk_maps(seed: int) -> None:
    """Descending 1 GiB pages (a hugetlb pool), 2 MiB and 4 KiB chunks, and an
    overlap: map_many writes what map() per chunk writes and stops at the same
    chunk with the same error."""
    import random
    rng = random.Random(seed)
    chunks: list[tuple[int, int, int]] = []
    iova = 4 * GIB
    top = 7 * GIB
    for _ in range(rng.randint(1, 6)):  # 1 GiB pages, physical order descending
        chunks.append((iova, top, GIB))
        iova += GIB
        top -= GIB
    for _ in range(rng.randint(0, 3)):
        size = rng.choice([2 * MIB, PAGE_SIZE, 3 * PAGE_SIZE])
        chunks.append((iova, rng.randrange(1, 64) * 2 * MIB, size))
        iova += size
    if rng.random() < 0.5:
        k = rng.randrange(len(chunks))
        chunks.append(chunks[k])  # mapped twice: EEXIST-like stop
    a, b = PhysicalMemory(8 * GIB), PhysicalMemory(8 * GIB)
    wa, wb = PageTableWriter(a, Bump()), PageTableWriter(b, Bump())
    ra, rb = wa.new_table(), wb.new_table()
    done_ref, err_ref = len(chunks), None
    for i, c in enumerate(chunks):
        try:
            wa.map(ra, *c)
        except PageTableError as exc:
            done_ref, err_ref = i, str(exc)
            break
    done, err = wb.map_many(rb, chunks)
    assert done == done_ref and (None if err is None else str(err)) == err_ref
    pages = wa.table_pages(ra)
    assert pages == wb.table_pages(rb)
    for p in pages:
        assert a.read(p, PAGE_SIZE) == b.read(p, PAGE_SIZE)
    assert list(wa.mappings(ra)) == list(wb.mappings(rb))
