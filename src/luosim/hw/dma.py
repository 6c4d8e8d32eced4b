"""Device DMA engines: bus-master writes that go through PCI and the IOMMU.

A :class:`DmaEngine` is the DMA side of one PCI function (a NIC ring, an
NVMe queue...): while it runs it issues memory writes by IOVA, cycling over
``[iova_base, iova_base + length)`` with deterministic content.  Each write
follows the hardware path:

1. the function and every upstream bridge must have Bus Master Enable set
   (``machine.pci.dma_path_enabled``), else the write never leaves the
   device: outcome ``blocked-bme``;
2. the request carries the RequesterID the function has *now*, from the
   current bridge bus-number registers (``machine.pci.requester_id``); no
   route: ``unroutable``;
3. the remapping unit of the segment translates it (pci.md §7.5: root entry
   by bus, context entry by devfn, second-level tables): ``translated``; a
   blocked request is logged in the unit's fault log and its outcome is the
   fault reason (``pte-not-present``, ...); translation disabled (or no unit
   on the segment): the write lands at ``pa = iova``, outcome
   ``untranslated``.

So a bus renumbered under a live device makes its writes use another
RequesterID's context entry - they land in the other device's memory or
fault, which is what pci.md §7.5 and §10 invariant 7 guard against.

Cost model: a step's writes are computed in bulk.  Within a step nothing but
DMA changes memory, so each IOVA page is translated once per step, only the
last write to each address is materialised (earlier ones in the same step
are overwritten anyway) and consecutive pages are written in one call.  If a
write lands on a page the walk itself read (DMA corrupting the IOMMU
tables), the step is replayed write by write instead, so the result is
exact either way.  Records aggregate: per engine, a :class:`DmaRecord`
counts every write with one (outcome, segment, RequesterID) since the
engine's mix of outcomes last changed, so a 1 s blackout at 1000 writes/ms
is one record.  :meth:`DmaController.run` computes all steps of a period at
once when no step can see another's effect (every write translated or never
leaving its device, no write on a walked table or on another engine's page):
a run's DMA then costs per engine and period, not per millisecond.  Where
writes actually landed is kept per physical page in
:attr:`DmaController.landed`.

Modes (:attr:`DmaController.mode`): ``reset-at-freeze`` (vfio v4/v5: freeze
resets the device, its engine stops; pci.md §10 inv. 5) and ``continuous``
(future phases: DMA keeps running through kexec).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from luosim.hw.clock import SimClock
from luosim.hw.iommu import (
    REASON_PASSTHROUGH,
    IommuHardware,
    Resolution,
    VtdUnit,
)
from luosim.hw.memory import PAGE_SIZE, PhysicalMemory

OUTCOME_TRANSLATED = "translated"
OUTCOME_UNTRANSLATED = "untranslated"
OUTCOME_BLOCKED_BME = "blocked-bme"
OUTCOME_UNROUTABLE = "unroutable"
WRITTEN_OUTCOMES = frozenset({OUTCOME_TRANSLATED, OUTCOME_UNTRANSLATED})
"""Outcomes whose writes reached memory; every other outcome wrote nothing."""

MODES = ("reset-at-freeze", "continuous")
DEFAULT_STEP_NS = 1_000_000  # 1 ms
WRITE_SIZES = (8, PAGE_SIZE)

_MASK64 = (1 << 64) - 1
_WORDS_PER_PAGE: int = PAGE_SIZE // 16
_ATTR = "dma"  # where DmaController.of() keeps the controller on the machine


class DmaFunction(Protocol):
    """The PCI function object the PCI hardware hands out."""

    @property
    def hw_id(self) -> str: ...

    @property
    def segment(self) -> int: ...


class PciDmaPath(Protocol):
    """What a DMA engine asks the PCI hardware about its function."""

    def requester_id(self, func: Any, /) -> tuple[int, int] | None: ...

    def dma_path_enabled(self, func: Any, /) -> bool: ...


class DmaMachine(Protocol):
    @property
    def memory(self) -> PhysicalMemory: ...

    @property
    def clock(self) -> SimClock: ...

    @property
    def pci(self) -> PciDmaPath: ...

    @property
    def iommu(self) -> IommuHardware: ...

    def emit(self, kernel: str, subsystem: str, kind: str, detail: str,
             level: str = "info", **data: Any) -> object: ...


@dataclass(slots=True)
class DmaRecord:
    """``count`` writes of one engine with one outcome (see module docstring).

    ``iova``/``pa`` are those of the first write (``pa`` None when nothing
    was written); ``iova_lo``/``iova_hi`` bound every IOVA covered.
    """

    time_ns: int
    hw_id: str
    segment: int
    rid: int | None
    iova: int
    pa: int | None
    outcome: str
    count: int = 1
    last_time_ns: int = 0
    iova_lo: int = 0
    iova_hi: int = 0  # exclusive

    @property
    def wrote(self) -> bool:
        return self.outcome in WRITTEN_OUTCOMES

    @property
    def is_fault(self) -> bool:
        return self.outcome not in WRITTEN_OUTCOMES and self.outcome not in (
            OUTCOME_BLOCKED_BME, OUTCOME_UNROUTABLE)

    def as_dict(self) -> dict[str, Any]:
        return {"time_ns": self.time_ns, "last_time_ns": self.last_time_ns,
                "hw_id": self.hw_id, "segment": self.segment, "rid": self.rid,
                "iova": self.iova, "pa": self.pa, "outcome": self.outcome,
                "count": self.count, "iova_lo": self.iova_lo, "iova_hi": self.iova_hi}


@dataclass(frozen=True)
class Landing:
    """Last DMA write that reached a physical page."""

    hw_id: str
    time_ns: int
    outcome: str


_Key = tuple[str, int, int | None]


@dataclass
class _Acc:
    iova: int
    pa: int | None
    count: int
    lo: int
    hi: int


@dataclass
class _Batch:
    """Per-step accumulation of outcomes, in first-seen order."""

    acc: dict[_Key, _Acc] = field(default_factory=dict)

    def add(self, key: _Key, iova: int, pa: int | None, count: int, lo: int, hi: int) -> None:
        if count <= 0:
            return
        a = self.acc.get(key)
        if a is None:
            self.acc[key] = _Acc(iova, pa, count, lo, hi)
        else:
            a.count += count
            a.lo = min(a.lo, lo)
            a.hi = max(a.hi, hi)


def pattern_word(seed: int, seq: int) -> int:
    """Content of the ``seq``-th 8-byte write of an engine with ``seed``."""
    return (((seed ^ 0x5DEECE66D) * 0x9E3779B97F4A7C15) + seq * 0xBF58476D1CE4E5B9) & _MASK64


def pattern_page(seed: int, seq: int) -> bytes:
    """Content of the ``seq``-th 4 KiB write of an engine with ``seed``."""
    return struct.pack("<QQ", seed & _MASK64, seq & _MASK64) * _WORDS_PER_PAGE


class DmaEngine:
    """The bus-master engine of one PCI function.

    ``rate_per_ms`` writes per simulated millisecond of running time, each
    ``write_size`` (8 or 4096) bytes; write ``seq`` goes to
    ``iova_base + (seq % slots) * write_size`` with content
    :func:`pattern_word` / :func:`pattern_page` of ``(pattern_seed, seq)``.
    """

    def __init__(self, machine: DmaMachine, func: DmaFunction, *, iova_base: int, length: int,
                 rate_per_ms: float, pattern_seed: int, write_size: int = 8) -> None:
        if write_size not in WRITE_SIZES:
            raise ValueError(f"write_size must be one of {WRITE_SIZES}")
        if length <= 0 or length % write_size or iova_base < 0 or iova_base % write_size:
            raise ValueError(f"iova range {iova_base:#x}+{length:#x} not {write_size}-aligned")
        if not (rate_per_ms >= 0 and math.isfinite(rate_per_ms)):
            raise ValueError(f"rate_per_ms {rate_per_ms!r} must be finite and >= 0")
        self.machine = machine
        self.func = func
        self.iova_base = iova_base
        self.length = length
        self.rate_per_ms = float(rate_per_ms)
        self.pattern_seed = pattern_seed
        self.write_size = write_size
        self.slots = length // write_size
        self.running = True
        self.active_ns = 0  # running time so far (writes due = rate * active time)
        self.issued = 0  # writes issued so far (next write's seq)
        self.controller: DmaController | None = None
        self._open: dict[_Key, DmaRecord] = {}
        self._reported: set[tuple[str, int, int | None]] = set()  # one event per kind
        self._memo: dict[int, Resolution] = {}  # page -> resolution, valid for _memo_key
        self._memo_key: object = None

    @property
    def hw_id(self) -> str:
        return self.func.hw_id

    def __repr__(self) -> str:
        return (f"DmaEngine({self.hw_id}, iova={self.iova_base:#x}+{self.length:#x}, "
                f"{self.rate_per_ms}/ms, {'running' if self.running else 'stopped'})")

    def iova_of(self, seq: int) -> int:
        return self.iova_base + (seq % self.slots) * self.write_size

    def content(self, seq: int, n: int = 1) -> bytes:
        """Bytes of writes ``seq .. seq+n-1`` concatenated."""
        if self.write_size == PAGE_SIZE:
            return b"".join(pattern_page(self.pattern_seed, s) for s in range(seq, seq + n))
        # pattern_word() for n writes at once: uint64 arithmetic wraps mod 2**64
        base = np.uint64(((self.pattern_seed ^ 0x5DEECE66D) * 0x9E3779B97F4A7C15) & _MASK64)
        seqs = np.arange(seq, seq + n, dtype=np.uint64)
        return (base + seqs * np.uint64(0xBF58476D1CE4E5B9)).astype("<u8").tobytes()

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        """Quiesce the engine (device reset); its open records are closed."""
        self.running = False
        self._open = {}

    # -- one step ----------------------------------------------------------------
    def route(self) -> tuple[tuple[int, int] | None, bool]:
        """(segment, RequesterID) the function has now, and whether its DMA path
        (BME up the hierarchy) is enabled: fixed while only DMA runs."""
        pci = self.machine.pci
        return pci.requester_id(self.func), pci.dma_path_enabled(self.func)

    def tick(self, t0: int, t1: int,
             route: tuple[tuple[int, int] | None, bool] | None = None) -> int:
        """Issue the writes due in ``[t0, t1)``; return how many were issued.

        ``route``: :meth:`route` computed by the caller for several steps."""
        ctl = self.controller
        if ctl is None:
            raise RuntimeError(f"{self.hw_id}: engine not added to a DmaController")
        if not self.running or t1 <= t0:
            return 0
        self.active_ns += t1 - t0
        due = math.floor(self.rate_per_ms * self.active_ns / 1_000_000) - self.issued
        if due <= 0:
            return 0
        seq0 = self.issued
        self.issued += due
        self._issue(ctl, route if route is not None else self.route(), seq0, due, t0, t1)
        return due

    def _issue(self, ctl: DmaController, route: tuple[tuple[int, int] | None, bool],
               seq0: int, due: int, t0: int, t1: int,
               landed_at: Callable[[int], int] | None = None) -> None:
        """Writes ``seq0 .. seq0+due-1`` of a step, or (``landed_at`` given) of
        several steps computed at once by DmaController._run_coalesced, which
        has checked that no write lands on a walked table."""
        batch = _Batch()
        routed, enabled = route
        seg, rid = routed if routed is not None else (self.func.segment, None)
        lo, hi = self._span(seq0, due)
        if not enabled:
            batch.add((OUTCOME_BLOCKED_BME, seg, rid), self.iova_of(seq0), None, due, lo, hi)
        elif routed is None:
            batch.add((OUTCOME_UNROUTABLE, seg, None), self.iova_of(seq0), None, due, lo, hi)
        else:
            assert rid is not None
            if not self._bulk(ctl, seg, rid, seq0, due, t1, batch, landed_at):
                if landed_at is not None:
                    raise AssertionError("coalesced DMA hit a table page")  # checked before
                batch = _Batch()
                self._exact(ctl, seg, rid, seq0, due, t1, batch)
        self._commit(ctl, batch, t0, t1)

    def _translated_pfns(self, seg: int, rid: int, seq0: int, due: int,
                         tables: set[int]) -> list[int] | None:
        """Physical pages writes ``seq0 .. seq0+due-1`` land on, if every one is
        translated (the walks' table pages added to ``tables``); else None."""
        lo, hi = self._span(seq0, due)
        pfns: list[int] = []
        for page in range(lo & ~(PAGE_SIZE - 1), hi, PAGE_SIZE):
            res = self._resolve(seg, rid, page)
            if res.reason is not None or res.pa is None:
                return None
            tables.update(res.tables)
            pfns.append(res.pa >> 12)
        return pfns

    def _span(self, seq0: int, n: int) -> tuple[int, int]:
        if n >= self.slots:
            return self.iova_base, self.iova_base + self.length
        a, b = self.iova_of(seq0), self.iova_of(seq0 + n - 1) + self.write_size
        return (a, b) if a < b else (self.iova_base, self.iova_base + self.length)

    def _resolve(self, seg: int, rid: int, page: int) -> Resolution:
        """``resolve()`` of one page, remembered across steps while nothing it
        depends on changed: the unit's registers, and (``watch_gen``) the
        table pages the walk read - resolve() has no other inputs."""
        mem = self.machine.memory
        unit = self.machine.iommu.unit_for_segment(seg)
        key = (mem.watch_gen, seg, rid, None if unit is None else
               (unit.rtaddr, unit.root_table_set, unit.translation_enabled))
        if key != self._memo_key:
            self._memo = {}
            self._memo_key = key
        res = self._memo.get(page)
        if res is None:
            res = self.machine.iommu.resolve(seg, rid, page, True, PAGE_SIZE)
            mem.watch(t >> 12 for t in res.tables)
            self._memo[page] = res
        return res

    @staticmethod
    def _outcome(res: Resolution) -> str:
        if res.reason is None:
            return OUTCOME_TRANSLATED
        if res.reason == REASON_PASSTHROUGH:
            return OUTCOME_UNTRANSLATED
        reason: str = res.reason
        return reason

    def _log(self, unit: VtdUnit | None, res: Resolution, rid: int, iova: int,
             count: int) -> None:
        if unit is not None and res.reason is not None and count > 0:
            self.machine.iommu.record_fault(unit, res.reason, rid, iova, True, count,
                                            res.detail)

    def _bulk(self, ctl: DmaController, seg: int, rid: int, seq0: int, due: int, t1: int,
              batch: _Batch, landed_at: Callable[[int], int] | None = None) -> bool:
        """Bulk step (see module docstring); False if it must be replayed exactly.

        ``landed_at(seq)``: end of the step that issued write ``seq``, when
        several steps are computed at once (default: ``t1``)."""
        slots, ws = self.slots, self.write_size
        q, rem = divmod(due, slots)
        npos = min(due, slots)
        # runs of consecutive positions j (write seq0 + j) in one IOVA page
        runs: list[tuple[int, int, int, int, Resolution]] = []  # (j, n, iova, page, res)
        memo: dict[int, Resolution] = {}
        tables: set[int] = set()
        j = 0
        while j < npos:
            slot = (seq0 + j) % slots
            iova = self.iova_base + slot * ws
            page = iova & ~(PAGE_SIZE - 1)
            n = min(npos - j, slots - slot, (page + PAGE_SIZE - iova) // ws)
            if j < rem < j + n:
                n = rem - j  # split at rem: positions below rem get one write more
            res = memo.get(page)
            if res is None:
                res = memo[page] = self._resolve(seg, rid, page)
                tables.update(res.tables)
            runs.append((j, n, iova, page, res))
            j += n
        table_pfns = {t >> 12 for t in tables}
        if any(r.pa is not None and r.pa >> 12 in table_pfns for r in memo.values()):
            return False  # a write would land on a table the walk reads
        unit = self.machine.iommu.unit_for_segment(seg)
        for j, n, iova, _page, res in runs:
            count = q * n + (n if j < rem else 0)
            pa = None if res.pa is None else res.pa + (iova & (PAGE_SIZE - 1))
            batch.add((self._outcome(res), seg, rid), iova, pa, count, iova, iova + n * ws)
            self._log(unit, res, rid, iova, count)
        # materialise the last write of every position, in seq order
        mem = self.machine.memory
        ordered = [r for r in runs if r[0] >= rem] + [r for r in runs if r[0] < rem]
        for j, n, iova, _page, res in ordered:
            if res.pa is None:
                continue
            last_seq = seq0 + j + slots * (q if j < rem else q - 1)
            pa = res.pa + (iova & (PAGE_SIZE - 1))
            mem.write(pa, self.content(last_seq, n))
            when = t1
            if landed_at is not None:  # runs never straddle rem: the last position is latest
                when = landed_at(last_seq + n - 1)
            ctl.landed[pa >> 12] = Landing(self.hw_id, when, self._outcome(res))
        return True

    def _exact(self, ctl: DmaController, seg: int, rid: int, seq0: int, due: int, t1: int,
               batch: _Batch) -> None:
        """Write-by-write step, re-walking whenever a write hits a table page."""
        unit = self.machine.iommu.unit_for_segment(seg)
        mem = self.machine.memory
        memo: dict[int, Resolution] = {}
        table_pfns: set[int] = set()
        for seq in range(seq0, seq0 + due):
            iova = self.iova_of(seq)
            page = iova & ~(PAGE_SIZE - 1)
            res = memo.get(page)
            if res is None:
                res = memo[page] = self._resolve(seg, rid, page)
                table_pfns.update(t >> 12 for t in res.tables)
            outcome = self._outcome(res)
            pa = None if res.pa is None else res.pa + (iova - page)
            batch.add((outcome, seg, rid), iova, pa, 1, iova, iova + self.write_size)
            self._log(unit, res, rid, iova, 1)
            if pa is not None:
                mem.write(pa, self.content(seq))
                ctl.landed[pa >> 12] = Landing(self.hw_id, t1, outcome)
                if pa >> 12 in table_pfns:
                    memo.clear()
                    table_pfns.clear()

    def _commit(self, ctl: DmaController, batch: _Batch, t0: int, t1: int) -> None:
        if all(k in self._open for k in batch.acc):
            for k, a in batch.acc.items():
                rec = self._open[k]
                rec.count += a.count
                rec.last_time_ns = t1
                rec.iova_lo = min(rec.iova_lo, a.lo)
                rec.iova_hi = max(rec.iova_hi, a.hi)
            return
        self._open = {}
        for (outcome, seg, rid), a in batch.acc.items():
            rec = DmaRecord(t0, self.hw_id, seg, rid, a.iova, a.pa, outcome, a.count, t1,
                            a.lo, a.hi)
            ctl.records.append(rec)
            self._open[(outcome, seg, rid)] = rec
            if outcome != OUTCOME_TRANSLATED and (outcome, seg, rid) not in self._reported:
                self._reported.add((outcome, seg, rid))
                level = "info" if outcome in (OUTCOME_BLOCKED_BME, OUTCOME_UNROUTABLE) else "warn"
                self.machine.emit("machine", "dma", outcome,
                                  f"{self.hw_id}: DMA {outcome} from iova {a.iova:#x}", level,
                                  hw_id=self.hw_id, segment=seg, rid=rid, iova=a.iova, pa=a.pa)


class DmaController:
    """Machine-wide owner of DMA engines, their records and landing map."""

    #: False: always step (the reference the equivalence tests compare with).
    coalesce = True

    def __init__(self, machine: DmaMachine, mode: str = "reset-at-freeze") -> None:
        self.machine = machine
        self.engines: dict[str, DmaEngine] = {}
        self.records: list[DmaRecord] = []
        self.landed: dict[int, Landing] = {}  # pfn -> last DMA write that reached it
        self._mode = ""
        self.mode = mode

    @classmethod
    def of(cls, machine: DmaMachine) -> DmaController:
        """The machine's controller, created and attached as ``machine.dma`` if absent."""
        ctl = getattr(machine, _ATTR, None)
        if isinstance(ctl, DmaController):
            return ctl
        ctl = cls(machine)
        setattr(machine, _ATTR, ctl)
        return ctl

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"DMA mode {value!r} not one of {MODES}")
        self._mode = value

    def add(self, engine: DmaEngine) -> DmaEngine:
        if engine.hw_id in self.engines:
            raise ValueError(f"{engine.hw_id} already has a DMA engine")
        if engine.machine is not self.machine:
            raise ValueError(f"{engine.hw_id}: engine belongs to another machine")
        engine.controller = self
        self.engines[engine.hw_id] = engine
        return engine

    def remove(self, hw_id: str) -> DmaEngine | None:
        engine = self.engines.pop(hw_id, None)
        if engine is not None:
            engine.stop()
        return engine

    def engine(self, hw_id: str) -> DmaEngine | None:
        return self.engines.get(hw_id)

    def run(self, duration_ns: int, step_ns: int = DEFAULT_STEP_NS) -> int:
        """Advance the clock by ``duration_ns`` in steps, ticking every running
        engine each step in hw_id order; return the number of writes issued."""
        if duration_ns < 0 or step_ns <= 0:
            raise ValueError("duration must be >= 0 and step > 0")
        coalesced = self._run_coalesced(duration_ns, step_ns) if self.coalesce else None
        if coalesced is not None:
            return coalesced
        clock = self.machine.clock
        issued = 0
        remaining = duration_ns
        # nothing but DMA runs until we return, and DMA writes memory only: PCI
        # routing and bus mastering stay as they are now
        routes: dict[str, tuple[tuple[int, int] | None, bool]] = {}
        while remaining > 0:
            order = [e for _, e in sorted(self.engines.items()) if e.running]
            dt = min(step_ns, remaining) if order else remaining
            t0 = clock.now_ns
            t1 = clock.advance(dt)
            remaining -= dt
            for e in order:
                route = routes.get(e.hw_id)
                if route is None:
                    route = routes[e.hw_id] = e.route()
                issued += e.tick(t0, t1, route)
        return issued

    def _run_coalesced(self, duration_ns: int, step_ns: int) -> int | None:
        """:meth:`run` with every step of every engine computed at once, or None
        when that could differ from stepping (the caller then steps).

        Exact when no step can see another's effect: every write is translated
        (no fault log, whose records carry times) or never leaves the device,
        each engine keeps one outcome (one record, opened at its first write),
        and no write lands on a page-table page any engine walks or on a page
        another engine writes.  Then a step's writes depend on nothing another
        step did; the records, the landing map (each page stamped with the end
        of the step of its last write), events and memory are those of stepping.
        """
        order = [e for _, e in sorted(self.engines.items()) if e.running]
        clock = self.machine.clock
        if not order:
            clock.advance(duration_ns)
            return 0
        t_start = clock.now_ns
        nsteps = -(-duration_ns // step_ns)
        ends = np.minimum(np.arange(1, nsteps + 1, dtype=np.int64) * step_ns, duration_ns)
        plans: list[tuple[DmaEngine, tuple[tuple[int, int] | None, bool], int, int,
                          np.ndarray]] = []
        tables: set[int] = set()
        written: dict[int, str] = {}  # pfn -> engine
        for e in order:
            route = e.route()
            # issued after each step, as tick() computes it (float for float)
            cum = np.floor(e.rate_per_ms * (e.active_ns + ends).astype(np.float64)
                           / 1_000_000).astype(np.int64)
            cum = np.maximum(cum, e.issued)
            due = int(cum[-1]) - e.issued
            if due > 0:
                routed, enabled = route
                if enabled and routed is not None:
                    pfns = e._translated_pfns(routed[0], routed[1], e.issued, due, tables)
                    if pfns is None:
                        return None
                    for pfn in pfns:
                        if written.setdefault(pfn, e.hw_id) != e.hw_id:
                            return None
            plans.append((e, route, e.issued, due, cum))
        if any(pfn in written for pfn in (t >> 12 for t in tables)):
            return None
        total = 0
        # commits in stepping order: (step of the engine's first write, engine order)
        firsts = []
        for i, (e, _route, seq0, due, cum) in enumerate(plans):
            e.active_ns += duration_ns
            if due <= 0:
                continue
            first = int(np.searchsorted(cum, seq0, side="right"))
            last = int(np.searchsorted(cum, seq0 + due - 1, side="right"))
            firsts.append((first, i, last))
        for first, i, last in sorted(firsts):
            e, route, seq0, due, cum = plans[i]
            t0 = t_start + (int(ends[first - 1]) if first else 0)
            t1 = t_start + int(ends[last])
            if clock.now_ns < t_start + int(ends[first]):
                clock.advance(t_start + int(ends[first]) - clock.now_ns)

            def landed_at(seq: int, cum: np.ndarray = cum) -> int:
                return t_start + int(ends[int(np.searchsorted(cum, seq, side="right"))])

            e.issued += due
            total += due
            e._issue(self, route, seq0, due, t0, t1, landed_at)
        clock.advance(t_start + duration_ns - clock.now_ns)
        return total

    def stop_all(self) -> None:
        for e in self.engines.values():
            e.stop()

    def reset_device(self, hw_id: str) -> bool:
        """A function-level reset quiesces the device's engine; True if one stopped."""
        e = self.engines.get(hw_id)
        if e is None or not e.running:
            return False
        e.stop()
        return True

    def freeze_device(self, hw_id: str) -> bool:
        """vfio freeze: resets the device in ``reset-at-freeze`` mode (vfio
        v4/v5), leaves DMA running in ``continuous`` mode; True if stopped."""
        if self.mode == "continuous":
            return False
        return self.reset_device(hw_id)

    def records_for(self, hw_id: str) -> list[DmaRecord]:
        return [r for r in self.records if r.hw_id == hw_id]

    def totals(self, hw_id: str | None = None) -> dict[str, int]:
        """Writes per outcome (optionally for one device)."""
        out: dict[str, int] = {}
        for r in self.records:
            if hw_id is None or r.hw_id == hw_id:
                out[r.outcome] = out.get(r.outcome, 0) + r.count
        return out
