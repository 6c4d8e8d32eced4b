"""DMA engines (luosim.hw.dma) through PCI bus mastering and VT-d translation.

The safety property of pci.md §7.5 / §10 invariant 7: the IOMMU looks a
request up by the RequesterID the device has *now*; if the bus above a live
device is renumbered, its DMA goes through another device's context entry
(landing in that device's memory) or faults.  Also §10 invariant 5 (BME) and
the vfio v4/v5 freeze reset (pci.md §6.2, §8).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from luosim.hw.clock import SimClock
from luosim.hw.dma import (
    DmaController,
    DmaEngine,
    pattern_page,
    pattern_word,
)
from luosim.hw.iommu import DmaFault, IommuHardware, PageTableWriter, VtdUnit
from luosim.hw.memory import PAGE_SIZE, PhysicalMemory

MIB = 1 << 20
MS = 1_000_000


@dataclass
class Func:
    hw_id: str
    segment: int = 0
    command: int = 0x6  # MEM | BME


class FakePci:
    """The two PCI-hardware queries a DMA engine makes."""

    def __init__(self) -> None:
        self.rids: dict[str, int | None] = {}
        self.bme: dict[str, bool] = {}

    def requester_id(self, func: Any, /) -> tuple[int, int] | None:
        r = self.rids.get(func.hw_id)
        return None if r is None else (func.segment, r)

    def dma_path_enabled(self, func: Any, /) -> bool:
        return self.bme.get(func.hw_id, True)


class FakeMachine:
    def __init__(self) -> None:
        self.memory = PhysicalMemory(256 * MIB)
        self.clock = SimClock()
        self.events: list[tuple[str, str, str]] = []
        self.pci = FakePci()
        self.iommu = IommuHardware.from_topology({}, self)
        self._next = 64 * MIB

    def emit(self, kernel: str, subsystem: str, kind: str, detail: str,
             level: str = "info", **data: Any) -> None:
        self.events.append((subsystem, kind, level))

    def alloc(self) -> int:
        pa = self._next
        self._next += PAGE_SIZE
        return pa


def rid(bus: int, dev: int = 0, fn: int = 0) -> int:
    return bus << 8 | dev << 3 | fn


def setup() -> tuple[FakeMachine, VtdUnit, PageTableWriter]:
    m = FakeMachine()
    unit = m.iommu.units[0]
    rt = m.alloc()
    m.memory.zero(rt, PAGE_SIZE)
    m.iommu.set_root_table(unit, rt)
    return m, unit, PageTableWriter(m.memory, m.alloc)


def attach(m: FakeMachine, unit: VtdUnit, w: PageTableWriter, r: int, did: int) -> int:
    bus, devfn = r >> 8, r & 0xFF
    if m.iommu.read_root_entry(unit, bus) is None:
        m.iommu.write_root_entry(unit, bus, w.new_table())
    pgd = w.new_table()
    m.iommu.write_context_entry(unit, bus, devfn, pgd, did)
    return pgd


def device(m: FakeMachine, hw_id: str, r: int | None, **kw: Any) -> DmaEngine:
    f = Func(hw_id)
    m.pci.rids[hw_id] = r
    args: dict[str, Any] = {"iova_base": 0x100000, "length": 4 * PAGE_SIZE,
                            "rate_per_ms": 100.0, "pattern_seed": 7}
    args.update(kw)
    return DmaController.of(m).add(DmaEngine(m, f, **args))


def expected(engine: DmaEngine, total: int) -> dict[int, bytes]:
    """iova -> content of the last write to it after ``total`` writes."""
    out: dict[int, bytes] = {}
    for seq in range(max(0, total - engine.slots), total):
        out[engine.iova_of(seq)] = engine.content(seq)
    return out


def test_translated_writes_land_through_the_iommu() -> None:
    m, unit, w = setup()
    pgd = attach(m, unit, w, rid(3), did=1)
    w.map(pgd, 0x100000, 0x1000000, 4 * PAGE_SIZE)
    m.iommu.enable_translation(unit)
    e = device(m, "nic", rid(3), length=PAGE_SIZE)  # 512 slots: 1000 writes wrap
    ctl = DmaController.of(m)
    assert ctl is m.dma and DmaController.of(m) is ctl  # type: ignore[attr-defined]
    assert ctl.run(10 * MS) == 1000
    for iova, data in expected(e, 1000).items():
        assert m.memory.read(iova - 0x100000 + 0x1000000, 8) == data
    assert m.memory.read(0x1000000, 8) == pattern_word(7, 512).to_bytes(8, "little")
    [rec] = ctl.records
    assert (rec.outcome, rec.count, rec.rid, rec.pa) == ("translated", 1000, rid(3), 0x1000000)
    assert set(ctl.landed) == {0x1000000 >> 12}
    assert unit.fault_log == []


def test_bme_clear_blocks_and_unroutable_drops() -> None:
    """pci.md §10 inv. 5: without BME on the path nothing leaves the device."""
    m, _, _ = setup()
    e = device(m, "nic", rid(3))
    m.pci.bme["nic"] = False
    ctl = DmaController.of(m)
    ctl.run(5 * MS)
    m.pci.rids["nic"] = None
    m.pci.bme["nic"] = True
    ctl.run(5 * MS)
    assert [(r.outcome, r.count) for r in ctl.records] == [("blocked-bme", 500),
                                                          ("unroutable", 500)]
    assert ctl.landed == {} and e.issued == 1000
    assert m.memory.read(0x100000, 4 * PAGE_SIZE) == bytes(4 * PAGE_SIZE)


def test_translation_disabled_writes_to_iova_as_physical() -> None:
    m, unit, _ = setup()
    e = device(m, "nic", rid(3), write_size=PAGE_SIZE, rate_per_ms=1.0)
    ctl = DmaController.of(m)
    ctl.run(6 * MS)
    assert m.memory.read(0x100000, PAGE_SIZE) == pattern_page(7, 4)  # seq 4 wrapped to slot 0
    assert m.memory.read(0x101000, PAGE_SIZE) == pattern_page(7, 5)
    assert [(r.outcome, r.count, r.pa) for r in ctl.records] == [("untranslated", 6, 0x100000)]
    assert unit.fault_log[0].reason == "translation-disabled-passthrough"
    assert unit.fault_log[0].count == 6 and e.issued == 6


def test_faulting_dma_writes_nothing_and_is_logged() -> None:
    m, unit, w = setup()
    pgd = attach(m, unit, w, rid(3), did=1)
    w.map(pgd, 0x100000, 0x1000000, 2 * PAGE_SIZE)  # only half the range mapped
    w.map(pgd, 0x102000, 0x1002000, 2 * PAGE_SIZE, write=False)
    m.iommu.enable_translation(unit)
    device(m, "nic", rid(3), length=4 * PAGE_SIZE, rate_per_ms=2048.0)  # one cycle per ms
    ctl = DmaController.of(m)
    ctl.run(3 * MS)
    assert ctl.totals() == {"translated": 3 * 1024, "write-to-readonly": 3 * 1024}
    assert len(ctl.records) == 2  # steady state: one record per outcome
    assert m.memory.read(0x1002000, 2 * PAGE_SIZE) == bytes(2 * PAGE_SIZE)
    assert sum(f.count for f in unit.faults()) == 3 * 1024


def test_one_second_blackout_stays_small_and_cheap() -> None:
    """1000 writes/ms for 1 s: a single aggregated record per outcome."""
    m, unit, w = setup()
    pgd = attach(m, unit, w, rid(3), did=1)
    w.map(pgd, 0, 0x1000000, 64 * MIB)
    m.iommu.enable_translation(unit)
    e = device(m, "nic", rid(3), iova_base=0, length=64 * MIB, rate_per_ms=1000.0)
    blocked = device(m, "gpu", rid(4), rate_per_ms=1000.0)
    m.pci.bme["gpu"] = False
    ctl = DmaController.of(m)
    t = time.perf_counter()
    ctl.run(1000 * MS)
    assert time.perf_counter() - t < 10
    assert ctl.totals("nic") == {"translated": 1_000_000}
    assert ctl.totals("gpu") == {"blocked-bme": 1_000_000}
    assert len(ctl.records) == 2 and m.clock.now_ns == 1000 * MS
    last = pattern_word(7, 999_999).to_bytes(8, "little")
    assert m.memory.read(0x1000000 + 8 * 999_999, 8) == last
    assert e.issued == 1_000_000 and blocked.issued == 1_000_000


def snapshot(m: FakeMachine) -> dict[int, bytes]:
    """Every page-table page allocated so far."""
    return {pa: m.memory.read(pa, PAGE_SIZE) for pa in range(64 * MIB, m._next, PAGE_SIZE)}


def _reference(m: FakeMachine, tables: dict[int, bytes], e: DmaEngine, total: int,
               r: int) -> PhysicalMemory:
    """Naive model: translate and write every single write in order, starting
    from the tables as they were before the run."""
    ref = PhysicalMemory(m.memory.size)
    for pa, data in tables.items():
        ref.write(pa, data)
    hw = IommuHardware(ref, [VtdUnit(0, 0, 0)])
    unit = hw.units[0]
    hw.set_root_table(unit, m.iommu.units[0].rtaddr)
    hw.enable_translation(unit)
    for seq in range(total):
        try:
            pa = hw.translate(0, r, e.iova_of(seq), True, e.write_size)
        except DmaFault:
            continue
        ref.write(pa, e.content(seq))
    return ref


@settings(max_examples=40, deadline=None)
@given(npages=st.integers(1, 6), ws=st.sampled_from([8, PAGE_SIZE]),
       rate=st.floats(0.5, 3000.0), steps=st.lists(st.integers(1, 3 * MS), min_size=1,
                                                  max_size=5),
       holes=st.sets(st.integers(0, 5)), alias=st.booleans())
def test_bulk_steps_equal_write_by_write(npages: int, ws: int, rate: float, steps: list[int],
                                         holes: set[int], alias: bool) -> None:
    """The bulk step (one walk per page, last write per address) leaves the
    same memory and counts as translating and writing every write in order;
    including aliased IOVA pages (two IOVAs -> one physical page)."""
    m, unit, w = setup()
    pgd = attach(m, unit, w, rid(3), did=1)
    for i in range(npages):
        if i not in holes:
            target = 0x1000000 if alias and i % 2 else 0x1000000 + i * PAGE_SIZE
            w.map(pgd, 0x100000 + i * PAGE_SIZE, target, PAGE_SIZE)
    m.iommu.enable_translation(unit)
    e = device(m, "nic", rid(3), length=npages * PAGE_SIZE, rate_per_ms=rate, write_size=ws)
    ctl = DmaController.of(m)
    tables = snapshot(m)
    for s in steps:
        ctl.run(s, step_ns=s)
    ref = _reference(m, tables, e, e.issued, rid(3))
    span = (0x1000000, npages * PAGE_SIZE)
    assert m.memory.read(*span) == ref.read(*span)
    assert sum(ctl.totals().values()) == e.issued


def test_dma_corrupting_its_own_page_table_is_exact() -> None:
    """A device whose IOVA maps onto its own leaf page table: every write
    changes the next walk; the step is replayed write by write."""
    m, unit, w = setup()
    pgd = attach(m, unit, w, rid(3), did=1)
    w.map(pgd, 0x100000, 0x1000000, PAGE_SIZE)
    leaf = w.table_pages(pgd)[-1]
    w.map(pgd, 0x101000, leaf, PAGE_SIZE)  # second IOVA page aliases the leaf table
    m.iommu.enable_translation(unit)
    e = device(m, "nic", rid(3), length=2 * PAGE_SIZE, rate_per_ms=700.0)
    tables = snapshot(m)
    ctl = DmaController.of(m)
    ctl.run(2 * MS)
    ref = _reference(m, tables, e, e.issued, rid(3))
    for pa in (0x1000000, leaf):
        assert m.memory.read(pa, PAGE_SIZE) == ref.read(pa, PAGE_SIZE)
    assert m.memory.read(leaf, 8) != tables[leaf][:8]  # the walk really changed
    assert sum(ctl.totals().values()) == e.issued == 1400


def test_renumbered_bus_dma_lands_in_other_device_memory_or_faults() -> None:
    """pci.md §7.5 / §10 invariant 7: A's bus renumbered to B's bus number.
    Case 1: B's context entry exists -> A's DMA lands in B's memory.
    Case 2: no context entry for A's new RequesterID -> A's DMA faults."""
    m, unit, w = setup()
    pgd_a = attach(m, unit, w, rid(3), did=1)
    pgd_b = attach(m, unit, w, rid(4), did=2)
    w.map(pgd_a, 0x100000, 0x1000000, 4 * PAGE_SIZE)  # A's buffer
    w.map(pgd_b, 0x100000, 0x2000000, 4 * PAGE_SIZE)  # B's buffer
    m.iommu.enable_translation(unit)
    device(m, "A", rid(3), rate_per_ms=10.0)
    ctl = DmaController.of(m)
    ctl.run(1 * MS)
    assert ctl.landed and all(0x1000 <= pfn < 0x1004 for pfn in ctl.landed)
    b_before = m.memory.read(0x2000000, 4 * PAGE_SIZE)
    assert b_before == bytes(4 * PAGE_SIZE)

    m.pci.rids["A"] = rid(4)  # bus renumbered under A: it now presents B's RID
    ctl.run(1 * MS)
    assert m.memory.read(0x2000000, 4 * PAGE_SIZE) != b_before  # corrupted B's memory
    assert m.memory.read(0x2000000 + 10 * 8, 8) == pattern_word(7, 10).to_bytes(8, "little")
    assert ctl.records[-1].rid == rid(4) and ctl.records[-1].pa == 0x2000000 + 80
    assert ctl.landed[0x2000].hw_id == "A"

    m.pci.rids["A"] = rid(4, 1)  # renumbered onto a devfn without a context entry
    ctl.run(1 * MS)
    assert ctl.records[-1].outcome == "context-not-present"
    m.pci.rids["A"] = rid(9)  # onto a bus without a root entry
    ctl.run(1 * MS)
    assert ctl.records[-1].outcome == "root-not-present"
    assert [f.reason for f in unit.faults()] == ["context-not-present", "root-not-present"]
    assert ctl.totals("A") == {"translated": 20, "context-not-present": 10,
                               "root-not-present": 10}


def test_reset_freeze_modes_and_controller_lifecycle() -> None:
    """vfio v4/v5 freeze resets the device (engine stops); ``continuous``
    models future phases where DMA runs through kexec."""
    m, _, _ = setup()
    a = device(m, "A", rid(3))
    b = device(m, "B", rid(4))
    ctl = DmaController.of(m)
    assert ctl.mode == "reset-at-freeze"
    assert ctl.freeze_device("A") and not a.running
    ctl.mode = "continuous"
    assert not ctl.freeze_device("B") and b.running
    assert ctl.reset_device("B") and not ctl.reset_device("B")
    assert ctl.run(5 * MS) == 0 and m.clock.now_ns == 5 * MS
    b.start()
    assert ctl.run(1 * MS) == 100
    ctl.stop_all()
    assert not b.running
    assert ctl.remove("A") is a and ctl.engine("A") is None
    with pytest.raises(ValueError):
        ctl.mode = "sometimes"
    with pytest.raises(ValueError):
        ctl.add(DmaEngine(m, Func("B"), iova_base=0, length=8, rate_per_ms=1,
                          pattern_seed=0))
    with pytest.raises(ValueError):
        DmaEngine(m, Func("C"), iova_base=4, length=8, rate_per_ms=1, pattern_seed=0)


def _world(engines: list[tuple[int, float, int, int, str]], shared_pa: bool,
           onto_table: bool) -> tuple[FakeMachine, VtdUnit, list[DmaEngine]]:
    """Up to three devices, each with its own domain; ``kind`` per device:
    mapped / holes / readonly / no-bme / unroutable.  ``onto_table``: the last
    device's last page maps onto the first device's leaf page table."""
    m, unit, w = setup()
    out = []
    pgds: list[int] = []
    for i, (npages, rate, ws, seed, kind) in enumerate(engines):
        r = rid(3 + i)
        pgd = attach(m, unit, w, r, did=1 + i)
        pgds.append(pgd)
        base = 0x1000000 if shared_pa else 0x1000000 + i * 0x100000
        for p in range(npages):
            if kind == "holes" and p % 2:
                continue
            target = base + p * PAGE_SIZE
            if onto_table and i == len(engines) - 1 and p == npages - 1 and pgds[0] != pgd:
                target = w.table_pages(pgds[0])[-1]  # a table the first device walks
            w.map(pgd, 0x100000 + p * PAGE_SIZE, target, PAGE_SIZE,
                  write=kind != "readonly")
        e = device(m, f"dev{i}", None if kind == "unroutable" else r,
                   length=npages * PAGE_SIZE, rate_per_ms=rate, write_size=ws,
                   pattern_seed=seed)
        if kind == "no-bme":
            m.pci.bme[e.hw_id] = False
        out.append(e)
    m.iommu.enable_translation(unit)
    return m, unit, out


_KINDS = st.sampled_from(["mapped", "mapped", "holes", "readonly", "no-bme", "unroutable"])


_RATES = st.one_of(st.floats(0.3, 3.0), st.floats(3.0, 5000.0))


@settings(max_examples=80, deadline=None)
@example(engines=[(4, 0.3, PAGE_SIZE, 1, "mapped")], runs=[(40 * MS, MS)], shared_pa=False,
         onto_table=False)  # pages last written in different steps
@example(engines=[(1, 900.0, 8, 1, "mapped"), (2, 700.0, 8, 2, "mapped")],
         runs=[(5 * MS, MS)], shared_pa=False, onto_table=True)  # DMA rewrites a walk
@example(engines=[(2, 0.2, 8, 1, "mapped"), (1, 0.5, 8, 2, "no-bme")],
         runs=[(30 * MS, MS), (9 * MS, MS)], shared_pa=False, onto_table=False)
@given(engines=st.lists(st.tuples(st.integers(1, 4), _RATES,
                                  st.sampled_from([8, PAGE_SIZE]), st.integers(0, 99), _KINDS),
                        min_size=1, max_size=3),
       runs=st.lists(st.tuples(st.integers(1, 40 * MS), st.sampled_from([MS, MS // 3, 7 * MS])),
                     min_size=1, max_size=4),
       shared_pa=st.booleans(), onto_table=st.booleans())
def test_coalesced_run_equals_stepping(engines: list[tuple[int, float, int, int, str]],
                                       runs: list[tuple[int, int]], shared_pa: bool,
                                       onto_table: bool) -> None:
    """``DmaController.run`` computing all steps at once (when it may) leaves
    exactly what stepping leaves: records, landing map with times, fault log,
    events, clock, engine counters and memory."""
    def play(coalesce: bool) -> tuple[Any, ...]:
        m, unit, es = _world(engines, shared_pa, onto_table)
        times: list[int] = []
        plain = m.emit
        m.emit = lambda *a, **k: (times.append(m.clock.now_ns), plain(*a, **k))[1]  # type: ignore[method-assign]
        ctl = DmaController.of(m)
        ctl.coalesce = coalesce
        for duration, step in runs:
            ctl.run(duration, step)
        mem = m.memory.read(0x1000000, 0x400000) + m.memory.read(64 * MIB, m._next - 64 * MIB)
        return ([r.as_dict() for r in ctl.records], sorted(ctl.landed.items()),
                [vars(f) for f in unit.fault_log], m.events, times, m.clock.now_ns,
                [(e.issued, e.active_ns) for e in es], mem)

    assert play(True) == play(False)
