"""Intel VT-d-like DMA remapping hardware (legacy-mode root/context tables).

What is modelled (VT-d architecture specification names):

* one **remapping unit** (DRHD) per PCI segment, with the registers that
  matter for live update: the root-table address (``RTADDR_REG`` latched by
  ``GCMD.SRTP``), translation enable (``GCMD.TE`` / ``GSTS.TES``) and the
  primary fault log.  Registers are plain attributes of :class:`VtdUnit`;
  the unit lives on the machine, so they survive kexec just as the hardware
  registers do (a kernel that does not disable translation leaves it on);
* the **root table** (one page, 256 x 16-byte root entries indexed by bus),
  the **context tables** (one page per bus, 256 x 16-byte context entries
  indexed by devfn) and **second-level translation** through 3/4/5-level
  page tables (512 x 8-byte entries per page; 4 KiB pages, 2 MiB / 1 GiB
  superpages via ``PS`` at levels 2 / 3).  All tables live in
  :class:`~luosim.hw.memory.PhysicalMemory`: every DMA walks them *in memory*
  and never through a Python-side cache, so a scrubbed (poisoned) or stale
  table behaves as on hardware - it faults, or translates to wherever the
  garbage points.

Entry layouts (legacy mode, little-endian, 128-bit entries as lo/hi u64):

* root entry: lo bit 0 ``P``, bits 12-63 context-table pointer (``CTP``); hi 0;
* context entry: lo bit 0 ``P``, bit 1 ``FPD``, bits 2-3 ``TT`` (0 =
  untranslated requests through second-level tables, 1 = also translated
  requests (ATS; same walk here), 2 = pass-through, 3 reserved), bits 12-63
  second-level page-table pointer (``SLPTPTR``); hi bits 0-2 ``AW`` (1/2/3 =
  3/4/5-level, 39/48/57-bit), bits 8-23 domain id (``DID``);
* second-level PTE: bit 0 ``R``, bit 1 ``W``, bit 7 ``PS`` (leaf at level 2
  or 3), bits 12-51 address of the next table or of the page.

Not modelled: IOTLB / context-cache (every DMA walks memory, as if the driver
invalidated after every change, so stale-IOTLB bugs cannot be expressed),
scalable mode / PASID tables, interrupt remapping, ATS, queued invalidation,
PTE reserved-bit checks (root and context entries with reserved bits set
do fault, ``entry-invalid``, so poisoned tables are usually caught), the MMIO
register file itself (``reg_base`` is only the unit's identity and
KHO token, never accessed through memory), fault-recording register count
(the log is a bounded list with an overflow counter, see :data:`FAULT_LOG_CAP`).

Spec: pci.md §7.1 (what is preserved: root table and context-table pages,
keyed by the DRHD register base), §7.3 (shutdown keeps translation on and
clears unpreserved entries), §7.5 (entries are indexed by bus/devfn, i.e. by
RequesterID: a renumbered bus hits another device's context entry), §10
invariant 7.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from luosim.hw.clock import SimClock
from luosim.hw.memory import PAGE_SIZE, PhysicalMemory

# -- geometry ------------------------------------------------------------------
ROOT_ENTRY_SIZE = 16
CONTEXT_ENTRY_SIZE = 16
PTE_SIZE = 8
ENTRIES_PER_TABLE: int = PAGE_SIZE // PTE_SIZE  # 512
NR_BUSES = 256
NR_DEVFNS = 256

DRHD_REG_BASE = 0xFED90000  # first unit's register base; unit i at + i * DRHD_REG_STRIDE
DRHD_REG_STRIDE = 0x1000

# root / context entry bits
ENTRY_PRESENT = 1 << 0
CTX_FPD = 1 << 1
CTX_TT_SHIFT = 2
CTX_TT_MASK = 0x3 << CTX_TT_SHIFT
CTX_DID_SHIFT = 8
CTX_DID_MASK = 0xFFFF << CTX_DID_SHIFT
CTX_AW_MASK = 0x7
PTR_MASK_12_63 = ~0xFFF & ((1 << 64) - 1)
ROOT_LO_RSVD = 0xFFE  # bits 1-11
ROOT_HI_RSVD = (1 << 64) - 1  # legacy mode: upper half reserved
CTX_LO_RSVD = 0xFF0  # bits 4-11
CTX_HI_RSVD = (((1 << 64) - 1) & ~((1 << 24) - 1)) | (1 << 7)  # bit 7, bits 24-63

TT_UNTRANSLATED = 0  # second-level translation of untranslated requests
TT_ALL = 1  # also translated requests / translation requests (ATS)
TT_PASSTHROUGH = 2
AW_3LEVEL, AW_4LEVEL, AW_5LEVEL = 1, 2, 3
AW_LEVELS = {AW_3LEVEL: 3, AW_4LEVEL: 4, AW_5LEVEL: 5}

# second-level PTE bits
PTE_R = 1 << 0
PTE_W = 1 << 1
PTE_PS = 1 << 7
PTE_ADDR_MASK = ((1 << 52) - 1) & ~0xFFF  # bits 12-51

# -- fault reasons ---------------------------------------------------------------
REASON_PASSTHROUGH = "translation-disabled-passthrough"
"""Model annotation, not a hardware fault: with ``TES`` clear the unit
forwards the request untranslated (iova used as physical address).  Hardware
logs nothing; the model logs it so checks can see untranslated DMA."""
REASON_ROOT = "root-not-present"
REASON_CONTEXT = "context-not-present"
REASON_PTE = "pte-not-present"
REASON_WRITE = "write-to-readonly"
REASON_READ = "read-not-permitted"
REASON_OUTSIDE_RAM = "outside-ram"
REASON_ADDR_WIDTH = "address-beyond-aw"
REASON_INVALID = "entry-invalid"

FAULT_REASONS: tuple[str, ...] = (
    REASON_ROOT, REASON_CONTEXT, REASON_PTE, REASON_WRITE, REASON_READ,
    REASON_OUTSIDE_RAM, REASON_ADDR_WIDTH, REASON_INVALID,
)
"""Reasons for which a DMA is blocked (nothing is read or written)."""

FAULT_LOG_CAP = 1024
"""Distinct fault records kept per unit; later ones only count in
``fault_overflow`` (like ``FSTS.PFO`` when the recording registers are full)."""


def bdf_str(segment: int, rid: int) -> str:
    """``0000:03:00.0`` for a (segment, RequesterID)."""
    return f"{segment:04x}:{rid >> 8:02x}:{(rid >> 3) & 0x1F:02x}.{rid & 7}"


class DmaFault(Exception):
    """A DMA request blocked by the remapping unit (a primary fault on VT-d)."""

    def __init__(self, reason: str, segment: int, rid: int, iova: int, detail: str = "") -> None:
        self.reason = reason
        self.segment = segment
        self.rid = rid
        self.iova = iova
        self.detail = detail
        msg = f"DMA fault {reason}: {bdf_str(segment, rid)} iova {iova:#x}"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class IommuProgrammingError(RuntimeError):
    """The driver programmed the unit in a way the hardware model refuses
    (e.g. a context entry under a non-present root entry, TE before SRTP)."""


class PageTableError(ValueError):
    """A page-table map/unmap request the writer cannot honour."""


# -- entry codecs ----------------------------------------------------------------
@dataclass(frozen=True)
class RootEntry:
    """A legacy-mode root entry (one per bus)."""

    present: bool
    context_table: int

    def encode(self) -> bytes:
        lo = (self.context_table & PTR_MASK_12_63) | (ENTRY_PRESENT if self.present else 0)
        return struct.pack("<QQ", lo, 0)

    @classmethod
    def decode(cls, raw: bytes) -> RootEntry:
        lo, _hi = struct.unpack("<QQ", raw)
        return cls(bool(lo & ENTRY_PRESENT), lo & PTR_MASK_12_63)


@dataclass(frozen=True)
class ContextEntry:
    """A legacy-mode context entry (one per devfn)."""

    present: bool
    pgtable: int  # SLPTPTR: second-level page-table root
    domain_id: int
    aw: int = AW_4LEVEL
    translation_type: int = TT_UNTRANSLATED
    fpd: bool = False

    def encode(self) -> bytes:
        lo = ((self.pgtable & PTR_MASK_12_63)
              | ((self.translation_type << CTX_TT_SHIFT) & CTX_TT_MASK)
              | (CTX_FPD if self.fpd else 0)
              | (ENTRY_PRESENT if self.present else 0))
        hi = (self.aw & CTX_AW_MASK) | ((self.domain_id << CTX_DID_SHIFT) & CTX_DID_MASK)
        return struct.pack("<QQ", lo, hi)

    @classmethod
    def decode(cls, raw: bytes) -> ContextEntry:
        lo, hi = struct.unpack("<QQ", raw)
        return cls(present=bool(lo & ENTRY_PRESENT), pgtable=lo & PTR_MASK_12_63,
                   domain_id=(hi & CTX_DID_MASK) >> CTX_DID_SHIFT, aw=hi & CTX_AW_MASK,
                   translation_type=(lo & CTX_TT_MASK) >> CTX_TT_SHIFT,
                   fpd=bool(lo & CTX_FPD))

    @property
    def levels(self) -> int | None:
        """Page-table levels for ``aw``; None if the AW value is reserved."""
        return AW_LEVELS.get(self.aw)


def encode_pte(pa: int, *, read: bool = True, write: bool = True,
               superpage: bool = False) -> int:
    """A second-level PTE value (``R``/``W``/``PS`` and bits 12-51 address)."""
    if pa & 0xFFF or pa & ~PTE_ADDR_MASK:
        raise PageTableError(f"PTE address {pa:#x} is not a 4 KiB aligned 52-bit address")
    return pa | (PTE_R if read else 0) | (PTE_W if write else 0) | (PTE_PS if superpage else 0)


def level_shift(level: int) -> int:
    """Address bits translated below ``level`` (1 = 4 KiB leaf: 12)."""
    return 12 + 9 * (level - 1)


def level_index(iova: int, level: int) -> int:
    return (iova >> level_shift(level)) & (ENTRIES_PER_TABLE - 1)


# -- second-level walk ---------------------------------------------------------------
@dataclass(frozen=True)
class PteWalk:
    """Result of a successful second-level walk for one IOVA."""

    iova: int
    pa: int  # translated address of ``iova`` (page base + offset)
    page_size: int
    read: bool  # effective permission (AND over all levels)
    write: bool
    level: int  # level of the leaf (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB)
    tables: tuple[int, ...]  # page-table pages read, root first


class _WalkFault(Exception):
    def __init__(self, reason: str, tables: tuple[int, ...], detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.tables = tables
        self.detail = detail


def _walk(memory: PhysicalMemory, root_pa: int, levels: int, iova: int) -> PteWalk:
    """Walk second-level tables from ``root_pa`` reading only physical memory."""
    if iova < 0 or iova >> level_shift(levels + 1):
        raise _WalkFault(REASON_ADDR_WIDTH, (), f"{levels}-level tables")
    table = root_pa
    tables: list[int] = []
    read = write = True
    for level in range(levels, 0, -1):
        slot = table + PTE_SIZE * level_index(iova, level)
        if table < 0 or slot + PTE_SIZE > memory.size:
            raise _WalkFault(REASON_OUTSIDE_RAM, tuple(tables),
                             f"level-{level} table {table:#x} outside RAM")
        tables.append(table)
        pte = memory.read_u64(slot)
        if not pte & (PTE_R | PTE_W):
            raise _WalkFault(REASON_PTE, tuple(tables), f"level {level}")
        read = read and bool(pte & PTE_R)
        write = write and bool(pte & PTE_W)
        addr = pte & PTE_ADDR_MASK
        if level == 1 or (pte & PTE_PS and level in (2, 3)):
            size = 1 << level_shift(level)
            if addr & (size - 1):
                raise _WalkFault(REASON_INVALID, tuple(tables),
                                 f"level-{level} superpage {addr:#x} misaligned")
            return PteWalk(iova, addr + (iova & (size - 1)), size, read, write, level,
                           tuple(tables))
        if pte & PTE_PS:
            raise _WalkFault(REASON_INVALID, tuple(tables), f"PS set at level {level}")
        table = addr
    raise AssertionError("unreachable")  # pragma: no cover


# -- registers ---------------------------------------------------------------------
@dataclass
class FaultRecord:
    """One entry of a unit's fault log (consecutive repeats coalesced in ``count``)."""

    time_ns: int
    segment: int
    rid: int
    iova: int  # first faulting address of the run
    write: bool
    reason: str
    count: int = 1
    last_time_ns: int = 0
    detail: str = ""

    @property
    def blocked(self) -> bool:
        """False for the untranslated pass-through annotation."""
        return self.reason != REASON_PASSTHROUGH

    @property
    def bdf(self) -> str:
        return bdf_str(self.segment, self.rid)


@dataclass
class VtdUnit:
    """One DMA remapping unit (DRHD) and the registers that outlive a kernel.

    ``reg_base`` is the DRHD register base from the ACPI DMAR table: stable
    across kexec and the unit's KHO token (pci.md §7.1).
    """

    index: int
    segment: int
    reg_base: int
    rtaddr: int = 0  # RTADDR_REG as latched by the last SRTP
    root_table_set: bool = False  # GSTS.RTPS
    translation_enabled: bool = False  # GSTS.TES
    fault_log: list[FaultRecord] = field(default_factory=list)
    fault_overflow: int = 0
    te_history: list[tuple[int, bool]] = field(default_factory=list)  # (time_ns, TES)

    @property
    def token(self) -> int:
        return self.reg_base

    def faults(self, *, blocked_only: bool = True) -> list[FaultRecord]:
        return [f for f in self.fault_log if f.blocked or not blocked_only]

    def power_on_reset(self) -> None:
        """Cold reset: registers back to zero (tables in memory untouched)."""
        self.rtaddr = 0
        self.root_table_set = False
        self.translation_enabled = False
        self.fault_log.clear()
        self.fault_overflow = 0


@dataclass(frozen=True)
class Resolution:
    """Side-effect-free outcome of presenting one request to the hardware.

    ``reason`` is None for a successful translation (or a pass-through
    context entry), :data:`REASON_PASSTHROUGH` when translation is disabled
    (``pa == iova``), else a fault reason and ``pa`` is None.
    """

    pa: int | None
    reason: str | None
    tables: tuple[int, ...] = ()  # root/context/page-table pages read
    page_size: int = PAGE_SIZE
    detail: str = ""

    @property
    def faulted(self) -> bool:
        return self.reason is not None and self.reason != REASON_PASSTHROUGH


class _MachineLike(Protocol):
    @property
    def memory(self) -> PhysicalMemory: ...

    @property
    def clock(self) -> SimClock: ...

    def emit(self, kernel: str, subsystem: str, kind: str, detail: str,
             level: str = "info", **data: Any) -> object: ...


def _segment_specs(topology: Mapping[str, Any]) -> list[tuple[int, int, int | None]]:
    """(position, segment number, reg_base override) of segments with an IOMMU."""
    segs = topology.get("segments", []) or []
    if not segs:
        return [(0, 0, None)]
    out: list[tuple[int, int, int | None]] = []
    for i, spec in enumerate(segs):
        if isinstance(spec, int) and not isinstance(spec, bool):
            out.append((i, spec, None))
            continue
        if not isinstance(spec, Mapping):
            raise ValueError(f"machine.segments[{i}]: expected a mapping, got {spec!r}")
        if spec.get("iommu", True) is False:
            continue
        nr = spec.get("segment", spec.get("id", spec.get("domain", i)))
        base = spec.get("iommu_reg_base")
        out.append((i, int(nr), None if base is None else int(base)))
    return out


class IommuHardware:
    """All remapping units of the machine plus the driver-facing programming API.

    The ``write_*``/``clear_*``/``set_*`` methods are what a kernel IOMMU
    driver does to hardware: they write table bytes into physical memory or
    set unit registers.  They do not allocate memory; the driver owns table
    pages (and preserves them with KHO).
    """

    def __init__(self, memory: PhysicalMemory, units: Sequence[VtdUnit], *,
                 machine: _MachineLike | None = None) -> None:
        self.memory = memory
        self.units: list[VtdUnit] = list(units)
        self.machine = machine
        seen = set()
        for u in self.units:
            if u.segment in seen:
                raise ValueError(f"two IOMMU units for PCI segment {u.segment}")
            seen.add(u.segment)

    @classmethod
    def from_topology(cls, topology: Mapping[str, Any], machine: _MachineLike) -> IommuHardware:
        """One unit per ``topology["segments"]`` entry whose ``iommu`` is not
        false (default true), one unit for segment 0 when no segments are given."""
        units = [VtdUnit(index=n, segment=seg,
                         reg_base=base if base is not None
                         else DRHD_REG_BASE + DRHD_REG_STRIDE * pos)
                 for n, (pos, seg, base) in enumerate(_segment_specs(topology))]
        return cls(machine.memory, units, machine=machine)

    # -- lookup ------------------------------------------------------------------
    def unit_for_segment(self, segment: int) -> VtdUnit | None:
        for u in self.units:
            if u.segment == segment:
                return u
        return None

    def unit_by_token(self, reg_base: int) -> VtdUnit | None:
        for u in self.units:
            if u.reg_base == reg_base:
                return u
        return None

    def _now(self) -> int:
        return self.machine.clock.now_ns if self.machine is not None else 0

    def _emit(self, kind: str, detail: str, level: str = "info", **data: Any) -> None:
        if self.machine is not None:
            self.machine.emit("machine", "iommu", kind, detail, level, **data)

    # -- translation ---------------------------------------------------------------
    def resolve(self, segment: int, rid: int, iova: int, write: bool,
                size: int = 1) -> Resolution:
        """What the unit of ``segment`` does with a request, without logging.

        No unit for the segment: the request is not remapped (``pa == iova``,
        ``reason`` None).  The final address range ``[pa, pa + size)`` must
        lie in RAM, else ``outside-ram``.
        """
        unit = self.unit_for_segment(segment)
        if unit is None:
            res = Resolution(iova, None)
        elif not unit.translation_enabled:
            res = Resolution(iova, REASON_PASSTHROUGH)
        else:
            res = self._walk_unit(unit, rid, iova, write)
        if res.pa is not None and (res.pa < 0 or res.pa + size > self.memory.size):
            return Resolution(None, REASON_OUTSIDE_RAM, res.tables, res.page_size,
                              f"target {res.pa:#x} outside RAM")
        return res

    def _walk_unit(self, unit: VtdUnit, rid: int, iova: int, write: bool) -> Resolution:
        mem = self.memory
        bus, devfn = (rid >> 8) & 0xFF, rid & 0xFF
        rt = unit.rtaddr
        slot = rt + ROOT_ENTRY_SIZE * bus
        if rt < 0 or slot + ROOT_ENTRY_SIZE > mem.size:
            return Resolution(None, REASON_OUTSIDE_RAM, (), detail=f"root table {rt:#x}")
        raw = mem.read(slot, ROOT_ENTRY_SIZE)
        root = RootEntry.decode(raw)
        tables: tuple[int, ...] = (rt,)
        if not root.present:
            return Resolution(None, REASON_ROOT, tables)
        lo, hi = struct.unpack("<QQ", raw)
        if lo & ROOT_LO_RSVD or hi & ROOT_HI_RSVD:
            return Resolution(None, REASON_INVALID, tables,
                              detail=f"root entry of bus {bus:#04x}: reserved bits set")
        ct = root.context_table
        slot = ct + CONTEXT_ENTRY_SIZE * devfn
        if slot + CONTEXT_ENTRY_SIZE > mem.size:
            return Resolution(None, REASON_OUTSIDE_RAM, tables, detail=f"context table {ct:#x}")
        raw = mem.read(slot, CONTEXT_ENTRY_SIZE)
        ctx = ContextEntry.decode(raw)
        tables += (ct,)
        if not ctx.present:
            return Resolution(None, REASON_CONTEXT, tables)
        lo, hi = struct.unpack("<QQ", raw)
        if lo & CTX_LO_RSVD or hi & CTX_HI_RSVD:
            return Resolution(None, REASON_INVALID, tables,
                              detail=f"context entry {bdf_str(unit.segment, rid)}: "
                              "reserved bits set")
        if ctx.translation_type == TT_PASSTHROUGH:
            return Resolution(iova, None, tables)
        levels = ctx.levels
        if ctx.translation_type not in (TT_UNTRANSLATED, TT_ALL) or levels is None:
            return Resolution(None, REASON_INVALID, tables,
                              detail=f"TT={ctx.translation_type} AW={ctx.aw}")
        try:
            w = _walk(mem, ctx.pgtable, levels, iova)
        except _WalkFault as f:
            return Resolution(None, f.reason, tables + f.tables, detail=f.detail)
        tables += w.tables
        if write and not w.write:
            return Resolution(None, REASON_WRITE, tables, w.page_size)
        if not write and not w.read:
            return Resolution(None, REASON_READ, tables, w.page_size)
        return Resolution(w.pa, None, tables, w.page_size)

    def translate(self, segment: int, rid: int, iova: int, write: bool, size: int = 1) -> int:
        """Present one DMA request; return the physical address it reaches.

        Raises :class:`DmaFault` (and logs it) when the unit blocks it.  With
        translation disabled the request goes to ``iova`` as a physical
        address, as hardware does; the model logs a
        ``translation-disabled-passthrough`` annotation.
        """
        res = self.resolve(segment, rid, iova, write, size)
        unit = self.unit_for_segment(segment)
        if res.reason is not None and unit is not None:
            self.record_fault(unit, res.reason, rid, iova, write, detail=res.detail)
        if res.pa is None:
            raise DmaFault(res.reason or REASON_INVALID, segment, rid, iova, res.detail)
        return res.pa

    def record_fault(self, unit: VtdUnit, reason: str, rid: int, iova: int, write: bool,
                     count: int = 1, detail: str = "") -> FaultRecord | None:
        """Log ``count`` requests with ``reason``; repeats of the last record coalesce."""
        now = self._now()
        log = unit.fault_log
        if log:
            last = log[-1]
            if (last.reason, last.rid, last.write) == (reason, rid, write):
                last.count += count
                last.last_time_ns = now
                return last
        if len(log) >= FAULT_LOG_CAP:
            unit.fault_overflow += count
            return None
        rec = FaultRecord(now, unit.segment, rid, iova, write, reason, count, now, detail)
        log.append(rec)
        # the log keeps every record; the event stream reports each source and reason
        # once, so a device faulting for a whole blackout is one event, not thousands
        seen: set[tuple[int, str, int, bool]] = self.__dict__.setdefault("_fault_events", set())
        key = (unit.reg_base, reason, rid, write)
        if key in seen:
            return rec
        seen.add(key)
        if reason == REASON_PASSTHROUGH:
            self._emit("dma-untranslated",
                       f"{rec.bdf}: DMA to {iova:#x} not translated (TE off)", "warn",
                       segment=unit.segment, rid=rid, iova=iova)
        else:
            self._emit("dma-fault", f"{rec.bdf}: {reason} at iova {iova:#x}"
                       + (f" ({detail})" if detail else ""), "warn",
                       segment=unit.segment, rid=rid, iova=iova, reason=reason)
        return rec

    # -- registers -------------------------------------------------------------------
    def set_root_table(self, unit: VtdUnit, pa: int) -> None:
        """Write ``RTADDR_REG`` and latch it (``GCMD.SRTP``)."""
        if pa & 0xFFF or pa < 0 or pa + PAGE_SIZE > self.memory.size:
            raise IommuProgrammingError(f"root table {pa:#x} not a page in RAM")
        unit.rtaddr = pa
        unit.root_table_set = True
        self._emit("root-table", f"unit {unit.reg_base:#x}: root table at {pa:#x}",
                   unit=unit.reg_base, pa=pa)

    def enable_translation(self, unit: VtdUnit) -> None:
        """``GCMD.TE`` = 1 (requires a latched root table)."""
        if not unit.root_table_set:
            raise IommuProgrammingError(f"unit {unit.reg_base:#x}: TE set before SRTP")
        if not unit.translation_enabled:
            unit.translation_enabled = True
            unit.te_history.append((self._now(), True))
            self._emit("translation-enabled", f"unit {unit.reg_base:#x}: translation on",
                       unit=unit.reg_base)

    def disable_translation(self, unit: VtdUnit) -> None:
        """``GCMD.TE`` = 0: from now on DMA goes to iova as physical address."""
        if unit.translation_enabled:
            unit.translation_enabled = False
            unit.te_history.append((self._now(), False))
            self._emit("translation-disabled", f"unit {unit.reg_base:#x}: translation off",
                       "warn", unit=unit.reg_base)

    # -- root / context entries ----------------------------------------------------------
    def _root_slot(self, unit: VtdUnit, bus: int) -> int:
        if not 0 <= bus < NR_BUSES:
            raise ValueError(f"bus {bus} out of range")
        if not unit.root_table_set:
            raise IommuProgrammingError(f"unit {unit.reg_base:#x}: no root table set")
        return unit.rtaddr + ROOT_ENTRY_SIZE * bus

    def write_root_entry(self, unit: VtdUnit, bus: int, ctx_pa: int) -> None:
        """Point the root entry of ``bus`` at the context table page ``ctx_pa``."""
        if ctx_pa & 0xFFF or ctx_pa < 0 or ctx_pa + PAGE_SIZE > self.memory.size:
            raise IommuProgrammingError(f"context table {ctx_pa:#x} not a page in RAM")
        self.memory.write(self._root_slot(unit, bus), RootEntry(True, ctx_pa).encode())

    def clear_root_entry(self, unit: VtdUnit, bus: int) -> None:
        self.memory.write(self._root_slot(unit, bus), bytes(ROOT_ENTRY_SIZE))

    def read_root_entry(self, unit: VtdUnit, bus: int) -> int | None:
        """Context-table address of ``bus``, None if the root entry is not present."""
        e = RootEntry.decode(self.memory.read(self._root_slot(unit, bus), ROOT_ENTRY_SIZE))
        return e.context_table if e.present else None

    def _context_slot(self, unit: VtdUnit, bus: int, devfn: int) -> int | None:
        if not 0 <= devfn < NR_DEVFNS:
            raise ValueError(f"devfn {devfn} out of range")
        ct = self.read_root_entry(unit, bus)
        return None if ct is None else ct + CONTEXT_ENTRY_SIZE * devfn

    def write_context_entry(self, unit: VtdUnit, bus: int, devfn: int, pgtable_pa: int,
                            domain_id: int, aw: int = AW_4LEVEL,
                            translation_type: int = TT_UNTRANSLATED) -> None:
        """Install a present context entry for (bus, devfn) under a present root entry."""
        if not 0 <= domain_id <= 0xFFFF:
            raise ValueError(f"domain id {domain_id} out of range")
        if aw not in AW_LEVELS:
            raise ValueError(f"AW {aw} not supported")
        slot = self._context_slot(unit, bus, devfn)
        if slot is None:
            raise IommuProgrammingError(
                f"unit {unit.reg_base:#x}: root entry of bus {bus:#04x} not present")
        entry = ContextEntry(True, pgtable_pa, domain_id, aw, translation_type)
        self.memory.write(slot, entry.encode())

    def clear_context_entry(self, unit: VtdUnit, bus: int, devfn: int) -> None:
        slot = self._context_slot(unit, bus, devfn)
        if slot is not None:
            self.memory.write(slot, bytes(CONTEXT_ENTRY_SIZE))

    def read_context_entry(self, unit: VtdUnit, bus: int, devfn: int) -> ContextEntry | None:
        """The present context entry of (bus, devfn), else None."""
        slot = self._context_slot(unit, bus, devfn)
        if slot is None:
            return None
        e = ContextEntry.decode(self.memory.read(slot, CONTEXT_ENTRY_SIZE))
        return e if e.present else None

    def context_tables(self, unit: VtdUnit) -> dict[int, int]:
        """bus -> context-table page of every present root entry (for KHO).

        A root entry whose pointer leaves RAM (garbage in a scrubbed table) is
        skipped: the hardware would fault on it, there is no table to list.
        """
        root = unit.rtaddr
        if root % PAGE_SIZE or root + PAGE_SIZE > self.memory.size:
            return {}
        raw = self.memory.read(self._root_slot(unit, 0), PAGE_SIZE)
        lo = np.frombuffer(raw, dtype="<u8")[::2]  # the low words hold P and CTP
        out: dict[int, int] = {}
        for bus in np.flatnonzero(lo & np.uint64(ENTRY_PRESENT)).tolist():
            e = RootEntry.decode(raw[bus * ROOT_ENTRY_SIZE:(bus + 1) * ROOT_ENTRY_SIZE])
            if e.context_table + PAGE_SIZE <= self.memory.size:
                out[bus] = e.context_table
        return out

    def context_entries(self, unit: VtdUnit) -> Iterator[tuple[int, int, ContextEntry]]:
        """(bus, devfn, entry) of every present context entry (invariant 7 checks)."""
        for bus, ct in self.context_tables(unit).items():
            raw = self.memory.read(ct, PAGE_SIZE)
            lo = np.frombuffer(raw, dtype="<u8")[::2]  # the low words hold P
            for devfn in np.flatnonzero(lo & np.uint64(ENTRY_PRESENT)).tolist():
                off = devfn * CONTEXT_ENTRY_SIZE
                yield bus, devfn, ContextEntry.decode(raw[off:off + CONTEXT_ENTRY_SIZE])

    def reset(self) -> None:
        """Power-on reset of every unit (cold boot, not kexec)."""
        for u in self.units:
            u.power_on_reset()


class PageTableWriter:
    """Builds and walks second-level page tables in physical memory.

    ``alloc_page`` returns the physical address of a free page (the driver's
    allocator); the writer zeroes it.  Non-leaf entries carry ``R|W`` (VT-d
    ANDs permissions over all levels).  ``unmap`` clears leaves but never
    frees table pages.

    Leaf sizes follow ``iommu_map()``: for each chunk the largest page size
    of the domain's ``pgsize_bitmap`` to which iova, pa and the remaining
    size are all aligned (``iommu_pgsize()``, drivers/iommu/iommu.c).  The
    intel driver builds that bitmap in ``paging_domain_alloc()`` from
    ``iommu_superpage_capability()`` = ``fls(cap_super_page_val(cap))``
    (CAP_REG.SLLPS, bits 34-37) and ``domain_super_pgsize_bitmap()``: 1 ->
    ``SZ_2M``, 2 -> ``SZ_2M | SZ_1G`` (drivers/iommu/intel/iommu.c).  The
    modelled unit reports SLLPS = 0b11, so ``superpages`` (the default) makes
    2 MiB leaves (level 2, ``PS``) and, with ``gib_pages`` (default), 1 GiB
    leaves (level 3, ``PS``); ``superpages=False`` is ``intel_iommu=sp_off``.
    """

    def __init__(self, memory: PhysicalMemory, alloc_page: Callable[[], int], *,
                 levels: int = 4, superpages: bool = True, gib_pages: bool = True) -> None:
        if levels not in AW_LEVELS.values():
            raise ValueError(f"{levels}-level tables not supported")
        self.memory = memory
        self.alloc_page = alloc_page
        self.levels = levels
        self.superpages = superpages
        self.gib_pages = superpages and gib_pages

    @property
    def address_limit(self) -> int:
        return 1 << level_shift(self.levels + 1)

    def new_table(self) -> int:
        pa = self.alloc_page()
        if pa & 0xFFF or pa < 0 or pa + PAGE_SIZE > self.memory.size:
            raise PageTableError(f"allocator returned {pa:#x}, not a page in RAM")
        self.memory.zero(pa, PAGE_SIZE)
        return pa

    def _check_table(self, pa: int) -> None:
        if pa & 0xFFF or pa < 0 or pa + PAGE_SIZE > self.memory.size:
            raise PageTableError(f"page-table pointer {pa:#x} not a page in RAM")

    def _next(self, table: int, iova: int, level: int, create: bool) -> int | None:
        slot = table + PTE_SIZE * level_index(iova, level)
        pte: int = self.memory.read_u64(slot)
        if pte & (PTE_R | PTE_W):
            if pte & PTE_PS:
                raise PageTableError(f"iova {iova:#x}: inside a level-{level} superpage")
            nxt = pte & PTE_ADDR_MASK
            self._check_table(nxt)
            return nxt
        if not create:
            return None
        nxt = self.new_table()
        self.memory.write_u64(slot, encode_pte(nxt))
        return nxt

    def _table_for(self, root_pa: int, iova: int, level: int, create: bool) -> int | None:
        """The level-``level`` table covering ``iova`` (creating the path)."""
        table: int | None = root_pa
        for lv in range(self.levels, level, -1):
            assert table is not None
            table = self._next(table, iova, lv, create)
            if table is None:
                return None
        return table

    def _check_range(self, iova: int, size: int, pa: int | None = None) -> None:
        if size <= 0 or iova & 0xFFF or size & 0xFFF or (pa is not None and pa & 0xFFF):
            raise PageTableError(f"range iova={iova:#x} size={size:#x} not 4 KiB aligned")
        if iova < 0 or iova + size > self.address_limit:
            raise PageTableError(f"iova range beyond {self.levels}-level address width")

    def _leaf_level(self, iova: int, pa: int, left: int) -> int:
        """``iommu_pgsize()``: the largest leaf level whose page iova, pa and
        ``left`` allow (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB)."""
        top = 3 if self.gib_pages else 2 if self.superpages else 1
        for level in range(top, 1, -1):
            size = 1 << level_shift(level)
            if not (iova | pa) & (size - 1) and left >= size:
                return level
        return 1

    def map(self, root_pa: int, iova: int, pa: int, size: int, write: bool = True,
            read: bool = True) -> None:
        """Map ``[iova, iova+size)`` to ``[pa, pa+size)``; refuses overlaps.

        Each chunk takes the largest leaf :meth:`_leaf_level` allows, and
        every leaf of one size left in one table goes in one write, so the
        cost is per table written, not per page mapped.
        """
        self._check_range(iova, size, pa)
        if not (read or write):
            raise PageTableError("a mapping needs R or W")
        end = iova + size
        flags = (PTE_R if read else 0) | (PTE_W if write else 0)
        parent: tuple[int, int] | None = None  # (iova >> 30, its level-2 table)
        while iova < end:
            level = self._leaf_level(iova, pa, end - iova)
            page = 1 << level_shift(level)
            if level > 1:
                table = self._table_for(root_pa, iova, level, True)
            else:  # the level-2 table is the same for 1 GiB of iova: walk down to it once
                gib = iova >> level_shift(3)
                if parent is None or parent[0] != gib:
                    l2_table = self._table_for(root_pa, iova, 2, True)
                    assert l2_table is not None
                    parent = (gib, l2_table)
                table = self._next(parent[1], iova, 2, True)
            assert table is not None
            first = level_index(iova, level)
            n = min(ENTRIES_PER_TABLE - first, (end - iova) >> level_shift(level))
            if level < 3 and self.superpages:  # stop where a bigger leaf could start
                big = 1 << level_shift(level + 1)
                if level == 1 or self.gib_pages:
                    n = min(n, max(1, (big - iova % big) >> level_shift(level)))
            encode_pte(pa + (n - 1) * page)  # the whole run is addressable
            slot = table + PTE_SIZE * first
            cur = np.frombuffer(self.memory.read(slot, PTE_SIZE * n), dtype="<u8")
            busy = np.flatnonzero(cur & np.uint64(PTE_R | PTE_W))
            good = int(busy[0]) if busy.size else n
            if busy.size and level == 1:  # 4 KiB leaves: nothing written on overlap
                raise PageTableError(f"iova range at {iova:#x} already mapped")
            if good:
                leaf = flags | (PTE_PS if level > 1 else 0)
                ptes = (np.uint64(pa) + (np.arange(good, dtype=np.uint64)
                                         << np.uint64(level_shift(level)))) | np.uint64(leaf)
                self.memory.write(slot, ptes.astype("<u8").tobytes())
            if busy.size:
                raise PageTableError(f"iova {iova + good * page:#x} already mapped")
            iova += n * page
            pa += n * page

    def map_many(self, root_pa: int, chunks: Sequence[tuple[int, int, int]],
                 write: bool = True, read: bool = True) -> tuple[int, PageTableError | None]:
        """:meth:`map` of each (iova, pa, size) chunk in order; returns (chunks
        mapped, the error that stopped it or None), with the bytes :meth:`map`
        chunk by chunk would leave.

        Chunks that are each exactly one superpage leaf, at consecutive iovas
        of one table (a hugetlb file's 1 GiB pages, whatever their physical
        order), are written with one table write.
        """
        n = len(chunks)
        flags = (PTE_R if read else 0) | (PTE_W if write else 0) | PTE_PS
        i = 0
        while i < n:
            iova, pa, size = chunks[i]
            level = self._leaf_level(iova, pa, size) if size > 0 else 1
            page = 1 << level_shift(level)
            j = i + 1
            if level > 1 and size == page and iova >= 0:
                room = ENTRIES_PER_TABLE - level_index(iova, level)
                while (j < n and j - i < room and chunks[j][2] == page
                       and chunks[j][0] == iova + (j - i) * page and not chunks[j][1] % page):
                    j += 1
            if j - i > 1 and iova + (j - i) * page <= self.address_limit:
                pas = np.array([c[1] for c in chunks[i:j]], dtype=np.uint64)
                if not (pas & ~np.uint64(PTE_ADDR_MASK)).any():
                    try:
                        table = self._table_for(root_pa, iova, level, True)
                    except PageTableError as exc:
                        return i, exc
                    assert table is not None
                    slot = table + PTE_SIZE * level_index(iova, level)
                    cur = np.frombuffer(self.memory.read(slot, PTE_SIZE * (j - i)), dtype="<u8")
                    if not (cur & np.uint64(PTE_R | PTE_W)).any():
                        self.memory.write(slot, (pas | np.uint64(flags)).astype("<u8").tobytes())
                        i = j
                        continue
            for k in range(i, j):  # one chunk at a time (and where the batch would not do)
                try:
                    self.map(root_pa, *chunks[k], write=write, read=read)
                except PageTableError as exc:
                    return k, exc
            i = j
        return n, None

    def unmap(self, root_pa: int, iova: int, size: int) -> int:
        """Clear leaves in ``[iova, iova+size)``; return the bytes unmapped.

        Unmapping part of a superpage raises :class:`PageTableError`.
        """
        self._check_range(iova, size)
        end = iova + size
        done = 0
        while iova < end:
            w = self.walk(root_pa, iova)
            if w is None:
                iova += PAGE_SIZE
                continue
            base = iova & ~(w.page_size - 1)
            if base < iova or base + w.page_size > end:
                raise PageTableError(f"unmap of part of a {w.page_size:#x} page at {base:#x}")
            leaf_table = w.tables[-1]
            self.memory.write_u64(leaf_table + PTE_SIZE * level_index(iova, w.level), 0)
            done += w.page_size
            iova += w.page_size
        return done

    def walk(self, root_pa: int, iova: int) -> PteWalk | None:
        """Translate ``iova`` through the tables at ``root_pa``; None if not mapped."""
        try:
            return _walk(self.memory, root_pa, self.levels, iova)
        except _WalkFault as f:
            if f.reason in (REASON_PTE, REASON_ADDR_WIDTH):
                return None
            raise PageTableError(f"iova {iova:#x}: {f.reason} {f.detail}") from None

    def _entries(self, table: int) -> tuple[int, ...]:
        self._check_table(table)
        return struct.unpack(f"<{ENTRIES_PER_TABLE}Q", self.memory.read(table, PAGE_SIZE))

    def table_pages(self, root_pa: int) -> list[int]:
        """Every page-table page reachable from ``root_pa``, root first (for KHO)."""
        out: list[int] = []
        seen: set[int] = set()

        def visit(table: int, level: int) -> None:
            if table in seen:  # shared or cyclic pointer: list each page once
                return
            seen.add(table)
            out.append(table)
            if level == 1:
                return
            self._check_table(table)
            ptes = np.frombuffer(self.memory.read(table, PAGE_SIZE), dtype="<u8")
            present = (ptes & np.uint64(PTE_R | PTE_W)) != 0
            if level in (2, 3):  # superpage leaves point at memory, not tables
                present &= (ptes & np.uint64(PTE_PS)) == 0
            for child in (ptes[present] & np.uint64(PTE_ADDR_MASK)).tolist():
                visit(child, level - 1)

        visit(root_pa, self.levels)
        return out

    def mappings(self, root_pa: int) -> Iterator[tuple[int, int, int, bool, bool]]:
        """(iova, pa, size, read, write) of every leaf, in iova order."""

        def visit(table: int, level: int, base: int, rd: bool, wr: bool
                  ) -> Iterator[tuple[int, int, int, bool, bool]]:
            for i, pte in enumerate(self._entries(table)):
                if not pte & (PTE_R | PTE_W):
                    continue
                iova = base + (i << level_shift(level))
                r, w = rd and bool(pte & PTE_R), wr and bool(pte & PTE_W)
                if level == 1 or (pte & PTE_PS and level in (2, 3)):
                    yield iova, pte & PTE_ADDR_MASK, 1 << level_shift(level), r, w
                else:
                    yield from visit(pte & PTE_ADDR_MASK, level - 1, iova, r, w)

        yield from visit(root_pa, self.levels, 0, True, True)
