"""`luosim run/demo/replay --trace`: the Perfetto protobuf parsed back with the
perfetto package's own protos (no trace processor)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from typer.testing import CliRunner

from luosim.cli import app
from luosim.report.trace import TS_BASE_NS

runner = CliRunner()
EX = Path(__file__).resolve().parents[2] / "examples"
TE = pb.TrackEvent


def _parse(path: Path) -> tuple[dict[int, Any], list[Any]]:
    trace = pb.Trace()
    trace.ParseFromString(path.read_bytes())
    tracks = {p.track_descriptor.uuid: p.track_descriptor for p in trace.packet
              if p.HasField("track_descriptor")}
    events = [p for p in trace.packet if p.HasField("track_event")]
    return tracks, events


def _path(tracks: dict[int, Any], uuid: int) -> tuple[str, ...]:
    names: list[str] = []
    while uuid:
        names.append(tracks[uuid].name)
        uuid = tracks[uuid].parent_uuid
    return tuple(reversed(names))


def test_demo_trace_tracks_slices_and_counters(tmp_path: Path) -> None:
    out = tmp_path / "demo.pftrace"
    res = runner.invoke(app, ["demo", "--json", "--trace", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    tracks, events = _parse(out)
    paths = {_path(tracks, u) for u in tracks}

    # every packet is on one trusted sequence; events only on declared tracks
    trace = pb.Trace()
    trace.ParseFromString(out.read_bytes())
    assert {p.trusted_packet_sequence_id for p in trace.packet} == {0x1D05}
    assert trace.packet[0].sequence_flags == pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    assert all(e.track_event.track_uuid in tracks for e in events)

    # a track per kernel (both kernels of the update), per subsystem under it
    kernels = {e["kernel"] for e in result["events"]}
    assert {"k1:v7", "k2:v7"} <= kernels
    for e in result["events"]:
        assert (_root(paths), e["kernel"], e["subsystem"]) in paths
    # a track per VM with a child per DMA engine, and counter tracks
    vms = set(result["device_vm"].values())
    assert vms == {"vm0", "vm1"}
    for dev, vm in result["device_vm"].items():
        assert (_root(paths), vm, f"dma {dev}") in paths
        writes = [u for u in tracks if _path(tracks, u) == (_root(paths), vm, f"dma {dev} writes")]
        assert len(writes) == 1 and tracks[writes[0]].HasField("counter")

    # instants: one per luosim event, at the event's simulated time
    instants = [e for e in events if e.track_event.type == TE.TYPE_INSTANT]  # outcome ok
    assert len(instants) == len(result["events"])
    for pkt, ev in zip(instants, result["events"]):
        assert pkt.timestamp == TS_BASE_NS + ev["time_ns"]
        assert pkt.track_event.name == ev["kind"]
        ann = {a.name: a for a in pkt.track_event.debug_annotations}
        assert ann["detail"].string_value == ev["detail"]

    # slices nest on each track: END closes the innermost open BEGIN, never earlier
    stacks: dict[int, list[tuple[str, int]]] = defaultdict(list)
    spans: dict[int, list[tuple[str, int, int, int]]] = defaultdict(list)
    for pkt in events:
        te = pkt.track_event
        if te.type == TE.TYPE_SLICE_BEGIN:
            stacks[te.track_uuid].append((te.name, pkt.timestamp))
        elif te.type == TE.TYPE_SLICE_END:
            name, start = stacks[te.track_uuid].pop()
            assert pkt.timestamp >= start, name
            spans[te.track_uuid].append((name, start, pkt.timestamp,
                                         len(stacks[te.track_uuid])))
    assert all(not s for s in stacks.values())

    # the runner's phases, with their durations, inside one blackout slice
    lu = next(u for u in tracks if _path(tracks, u) == (_root(paths), "live update"))
    phases = [(n, e - s) for n, s, e, depth in spans[lu] if n != "blackout"]
    assert sorted(phases) == sorted((p["phase"], p["duration_ns"]) for p in result["phases"])
    (blackout,) = [(s, e) for n, s, e, d in spans[lu] if n == "blackout"]
    inner = {n for n, s, e, d in spans[lu] if d == 1}
    assert {"jump + early boot", "PCI enumeration", "IOMMU, drivers, late init"} <= inner
    assert "start VMs" not in inner
    jump = next(s for n, s, e, d in spans[lu] if n == "jump + early boot")
    assert blackout[0] < jump < blackout[1]
    names = [p["phase"] for p in result["phases"]]
    first = next(i for i, n in enumerate(names) if n.startswith("reboot(KEXEC)"))
    last = names.index("userspace: retrieve + finish")
    # freeze .. retrieve + finish
    assert blackout[1] - blackout[0] == sum(p["duration_ns"]
                                            for p in result["phases"][first:last + 1])

    # DMA write counters only go up and end at the records' total
    for dev in result["device_vm"]:
        vm = result["device_vm"][dev]
        u = next(u for u in tracks if _path(tracks, u) == (_root(paths), vm, f"dma {dev} writes"))
        values = [e.track_event.counter_value for e in events
                  if e.track_event.track_uuid == u and e.track_event.type == TE.TYPE_COUNTER]
        assert values == sorted(values) and values[-1] == sum(
            r["count"] for r in result["dma"] if r["hw_id"] == dev
            and r["outcome"] in ("translated", "untranslated"))
        assert values[-1] > 0


def _root(paths: set[tuple[str, ...]]) -> str:
    (root,) = {p for p in paths if len(p) == 1}
    return root[0]


def test_trace_of_a_panicking_run_and_a_replay(tmp_path: Path) -> None:
    out = tmp_path / "panic.pftrace"
    res = runner.invoke(app, ["run", str(EX / "small-host.yaml"), "--trace", str(out),
                              "--fault", "pci.flb.retrieve#1=ENOMEM"])
    assert res.exit_code == 1
    tracks, events = _parse(out)
    opened = closed = 0
    for pkt in events:
        opened += pkt.track_event.type == TE.TYPE_SLICE_BEGIN
        closed += pkt.track_event.type == TE.TYPE_SLICE_END
    assert opened == closed > 0
    assert any("outcome: panic" in t.description for t in tracks.values())


def test_replay_writes_a_trace(tmp_path: Path) -> None:
    import yaml

    from luosim.explore.trace import Trace, save_trace
    from luosim.faults import Fault
    from luosim.scenario.runner import run
    from luosim.scenario.schema import load_scenario
    faults = (Fault.parse("pci.flb.retrieve#1=ENOMEM"),)
    result = run(load_scenario(EX / "small-host.yaml"), faults=faults)
    doc = yaml.safe_load((EX / "small-host.yaml").read_text())
    saved = save_trace(Trace.from_result(doc, {}, faults, result), tmp_path / "t.json")
    out = tmp_path / "replay.pftrace"
    res = runner.invoke(app, ["replay", str(saved), "--trace", str(out)])
    assert res.exit_code == 0, res.output
    tracks, events = _parse(out)
    names = {t.name for t in tracks.values()}
    assert {"live update", "pci", "luo"} <= names
    (panic,) = [e for e in events if e.track_event.type == TE.TYPE_INSTANT
                and e.track_event.name == "panic"]
    assert panic.track_event.debug_annotations[0].string_value.startswith(
        "Failed to retrieve incoming FLB data (-ENOMEM)")
    assert _path(tracks, panic.track_event.track_uuid)[-1] == "live update"


def test_trace_unwritable_is_a_host_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["run", str(EX / "small-host.yaml"), "--trace",
                              str(tmp_path / "no" / "such" / "dir" / "t.pftrace")])
    assert res.exit_code == 4
    assert "--trace" in res.output and "Traceback" not in res.output
