"""A run as a Perfetto trace (native protobuf, ``luosim run --trace FILE``).

Built with the ``perfetto`` package's ``TraceProtoBuilder`` and its
``perfetto_trace_pb2`` protos: one ``TrackDescriptor`` per track and
``TrackEvent`` packets on them (the SDK-less "synthetic track event" format
Perfetto documents for converters).  Timestamps are luosim's simulated
nanoseconds.  Tracks, top down:

- ``live update``: the runner's phases as slices, the blackout (freeze to
  guests running again) as the slice that encloses its phases;
- one track per kernel (``k1:v6``, ``machine`` for the hardware between
  kernels) with a child track per subsystem (``pci``, ``luo``, ``iommu``
  ...): every event an instant, its detail as a debug annotation;
- one track per VM (``running`` / ``paused`` slices) with a child track per
  DMA engine of that VM: each DMA record a slice named by its outcome, plus
  counter tracks of the writes and of the faults so far.

Only the trace file is written; nothing here needs the trace processor
(which would download a binary at run time).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from perfetto.trace_builder.proto_builder import TraceProtoBuilder

from luosim.hw.dma import OUTCOME_BLOCKED_BME, OUTCOME_UNROUTABLE, WRITTEN_OUTCOMES
from luosim.scenario.result import RunResult

SEQUENCE_ID = 0x1D05  # any nonzero id: every packet comes from this one writer
BLACKOUT_FIRST = "reboot(KEXEC)"  # the phase where the VMs are frozen
BLACKOUT_LAST = "userspace: retrieve + finish"  # guests run again after it
TS_BASE_NS = 1_000  # a small offset so that no event sits at timestamp 0


def track_uuid(*path: str) -> int:
    """Stable 63-bit id of a track from its path (same run -> same file)."""
    digest = hashlib.blake2b("/".join(path).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1 or 1


@dataclass
class _Writer:
    builder: TraceProtoBuilder = field(default_factory=TraceProtoBuilder)
    tracks: set[int] = field(default_factory=set)
    first: bool = True

    def _packet(self) -> Any:
        p = self.builder.add_packet()
        p.trusted_packet_sequence_id = SEQUENCE_ID
        if self.first:
            p.sequence_flags = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
            self.first = False
        return p

    def track(self, path: tuple[str, ...], *, counter: str | None = None,
              description: str = "") -> int:
        uuid = track_uuid(*path)
        if uuid in self.tracks:
            return uuid
        self.tracks.add(uuid)
        p = self._packet()
        d = p.track_descriptor
        d.uuid = uuid
        d.name = path[-1]
        if len(path) > 1:
            d.parent_uuid = self.track(path[:-1])
        if description:
            d.description = description
        if counter is not None:
            d.counter.unit_name = counter
        return uuid

    def event(self, ts: int, track: int, kind: Any, name: str = "",
              args: Iterable[tuple[str, Any]] = (), categories: Iterable[str] = ()) -> Any:
        p = self._packet()
        p.timestamp = TS_BASE_NS + ts
        e = p.track_event
        e.type = kind
        e.track_uuid = track
        if name:
            e.name = name
        e.categories.extend(categories)
        for key, value in args:
            a = e.debug_annotations.add()
            a.name = key
            if isinstance(value, bool):
                a.bool_value = value
            elif isinstance(value, int):
                a.int_value = value
            else:
                a.string_value = str(value)
        return e

    def slice(self, track: int, start: int, end: int, name: str,
              args: Iterable[tuple[str, Any]] = (), categories: Iterable[str] = ()) -> None:
        self.event(start, track, pb.TrackEvent.TYPE_SLICE_BEGIN, name, args, categories)
        self.event(end, track, pb.TrackEvent.TYPE_SLICE_END)

    def counter(self, track: int, ts: int, value: int) -> None:
        e = self.event(ts, track, pb.TrackEvent.TYPE_COUNTER)
        e.counter_value = value


def phase_spans(result: RunResult) -> list[tuple[str, int, int]]:
    """(phase, start_ns, end_ns): the phases are contiguous from time 0."""
    spans: list[tuple[str, int, int]] = []
    t = 0
    for name, ns in result.phases:
        spans.append((name, t, t + ns))
        t += ns
    return spans


def blackouts(spans: list[tuple[str, int, int]]) -> list[tuple[int, int, int, int]]:
    """(start, end, first phase index, last phase index) of each blackout."""
    out: list[tuple[int, int, int, int]] = []
    first: int | None = None
    for i, (name, _s, _e) in enumerate(spans):
        if name.startswith(BLACKOUT_FIRST):
            first = i
        elif name == BLACKOUT_LAST and first is not None:
            out.append((spans[first][1], spans[i][2], first, i))
            first = None
    if first is not None:  # the run stopped inside the blackout
        out.append((spans[first][1], spans[-1][2], first, len(spans) - 1))
    return out


def build_trace(result: RunResult, title: str = "luosim run") -> bytes:
    """Serialize ``result`` as a Perfetto ``Trace`` protobuf."""
    w = _Writer()
    root = (title,)
    w.track(root, description=f"outcome: {result.outcome}")
    spans = phase_spans(result)
    end_ns = spans[-1][2] if spans else 0
    end_ns = max([end_ns, *(e["time_ns"] for e in result.events)])

    # runner phases; the blackout slice encloses its phases (slices on a track nest)
    lu = w.track((*root, "live update"), description="runner phases; blackout = VMs frozen")
    outer = {b[2]: b for b in blackouts(spans)}
    inside_until = -1
    for i, (name, start, end) in enumerate(spans):
        if i in outer:
            b_start, b_end, _f, last = outer[i]
            w.event(b_start, lu, pb.TrackEvent.TYPE_SLICE_BEGIN, "blackout",
                    [("duration_ns", b_end - b_start)], ["blackout"])
            inside_until = last
        w.slice(lu, start, end, name, [("duration_ns", end - start)], ["phase"])
        if i == inside_until:
            w.event(end, lu, pb.TrackEvent.TYPE_SLICE_END)
            inside_until = -1

    if result.outcome != "ok":  # what ended the run, where it ended
        why = result.panic or result.error or "; ".join(
            f"{i.id}: {i.detail}" for i in result.broken)
        w.event(end_ns, lu, pb.TrackEvent.TYPE_INSTANT, result.outcome,
                [("detail", why)], ["outcome"])

    # kernels and their subsystems: events as instants
    for ev in result.events:
        kernel, sub = str(ev["kernel"]), str(ev["subsystem"])
        t = w.track((*root, kernel, sub))
        args: list[tuple[str, Any]] = [("detail", ev["detail"]), ("seq", ev["seq"]),
                                       ("step", ev.get("step", ""))]
        if ev.get("level", "info") != "info":
            args.append(("level", ev["level"]))
        w.event(int(ev["time_ns"]), t, pb.TrackEvent.TYPE_INSTANT, str(ev["kind"]), args,
                [sub])

    # VMs: running/paused; their DMA engines: records as slices, counters
    vms = sorted(set(result.device_vm.values()))
    for vm in vms:
        vt = w.track((*root, vm), description="guest state")
        state, t0 = "running", 0
        for b_start, b_end, _f, _l in blackouts(spans):
            w.slice(vt, t0, b_start, state)
            w.slice(vt, b_start, b_end, "paused (blackout)")
            t0 = b_end
        w.slice(vt, t0, end_ns, state)
    totals: dict[str, int] = {}
    faults = 0
    fault_track = w.track((*root, "DMA faults"), counter="faults")
    w.counter(fault_track, 0, 0)
    for rec in sorted(result.dma, key=lambda r: (r["time_ns"], r["hw_id"])):
        hw = str(rec["hw_id"])
        vm = result.device_vm.get(hw, "unassigned")
        et = w.track((*root, vm, f"dma {hw}"))
        ct = w.track((*root, vm, f"dma {hw} writes"), counter="writes")
        if hw not in totals:
            totals[hw] = 0
            w.counter(ct, 0, 0)
        start, last = int(rec["time_ns"]), int(rec["last_time_ns"] or rec["time_ns"])
        w.slice(et, start, max(start, last), str(rec["outcome"]),
                [("count", rec["count"]), ("iova", hex(rec["iova"])),
                 ("pa", hex(rec["pa"]) if rec["pa"] is not None else "none")], ["dma"])
        if rec["outcome"] in WRITTEN_OUTCOMES:
            totals[hw] += int(rec["count"])
            w.counter(ct, max(start, last), totals[hw])
        elif rec["outcome"] not in (OUTCOME_BLOCKED_BME, OUTCOME_UNROUTABLE):  # as is_fault
            faults += int(rec["count"])
            w.counter(fault_track, max(start, last), faults)
    data: bytes = w.builder.serialize()
    return data


def write_trace(result: RunResult, path: Any, title: str = "luosim run") -> int:
    """Write the trace to ``path``; return its size in bytes."""
    from pathlib import Path
    data = build_trace(result, title)
    Path(path).write_bytes(data)
    return len(data)
