"""Counterexample traces: one run, saved so that it can be replayed exactly.

File format (JSON)::

    {"luosim_trace": 1, "scenario": {...full scenario...}, "policy": {...},
     "faults": ["POINT#N=EFFECT", ...], "outcome": "...", "signature": "...",
     "panic": str|null, "events": [...]}

A run is deterministic given (scenario, faults, policy), so replaying a trace
must give the same outcome, signature and event stream.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luosim.explore.executors import (
    Plan,
    Runner,
    ScenarioFactory,
    declare_fault_points,
    default_runner,
    default_scenario_factory,
)
from luosim.faults import REGISTRY, Fault
from luosim.inputs import InputError, parse_json, read_text_file
from luosim.scenario.result import RunResult

TRACE_VERSION = 1
TRACE_KEYS = ("luosim_trace", "scenario", "policy", "faults", "outcome", "signature", "panic",
              "events")


class TraceError(ValueError):
    """A trace file that cannot be used (one line, naming the file and the problem)."""


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray):
        return obj.hex()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def normalize_events(events: Any) -> list[dict[str, Any]]:
    """Events as they look after a JSON round trip (tuples -> lists, bytes -> hex)."""
    data = json.loads(json.dumps(list(events), default=_json_default))
    return list(data)


@dataclass(frozen=True)
class Trace:
    scenario: dict[str, Any]
    policy: dict[str, str]
    faults: Plan
    outcome: str
    signature: str
    panic: str | None
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_result(cls, scenario: Mapping[str, Any], policy: Mapping[str, str] | None,
                    faults: Plan, result: RunResult) -> Trace:
        return cls(dict(scenario), dict(sorted((policy or {}).items())), tuple(faults),
                   result.outcome, result.signature(), result.panic,
                   normalize_events(result.events))

    @property
    def labels(self) -> list[str]:
        return [f.label() for f in self.faults]

    def as_json(self) -> dict[str, Any]:
        return {"luosim_trace": TRACE_VERSION, "scenario": self.scenario,
                "policy": dict(sorted(self.policy.items())), "faults": self.labels,
                "outcome": self.outcome, "signature": self.signature, "panic": self.panic,
                "events": self.events}

    def dumps(self) -> str:
        return json.dumps(self.as_json(), indent=2, default=_json_default) + "\n"


def save_trace(trace: Trace, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(trace.dumps(), encoding="utf-8")
    return p


def parse_trace(data: Any, source: str = "<trace>") -> Trace:
    """Validate a decoded trace document (TraceError with one line on a problem)."""
    if not isinstance(data, dict):
        raise TraceError(f"{source}: not a luosim trace (top level is a "
                         f"{type(data).__name__}, expected an object)")
    for key in TRACE_KEYS:
        if key not in data:
            raise TraceError(f"{source}: missing key {key!r}")
    if data["luosim_trace"] != TRACE_VERSION or isinstance(data["luosim_trace"], bool):
        raise TraceError(f"{source}: unsupported luosim_trace version {data['luosim_trace']!r}"
                         f" (expected {TRACE_VERSION})")
    types: tuple[tuple[str, type | tuple[type, ...]], ...] = (
        ("scenario", dict), ("policy", dict), ("faults", list), ("outcome", str),
        ("signature", str), ("panic", (str, type(None))), ("events", list))
    for key, typ in types:
        if not isinstance(data[key], typ):
            raise TraceError(f"{source}: key {key!r} has the wrong type "
                             f"({type(data[key]).__name__})")
    policy = data["policy"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in policy.items()):
        raise TraceError(f"{source}: key 'policy' must map strings to strings")
    faults: list[Fault] = []
    for i, text in enumerate(data["faults"]):
        if not isinstance(text, str):
            raise TraceError(f"{source}: faults[{i}] is not a string")
        if text.partition("=")[0].partition("#")[0].strip() not in REGISTRY:
            declare_fault_points()
        try:
            faults.append(Fault.parse(text))
        except ValueError as exc:
            raise TraceError(f"{source}: faults[{i}]: {exc}") from None
    if not all(isinstance(e, dict) for e in data["events"]):
        raise TraceError(f"{source}: every entry of 'events' must be an object")
    return Trace(data["scenario"], dict(policy), tuple(faults), data["outcome"],
                 data["signature"], data["panic"], list(data["events"]))


def load_trace(path: str | Path) -> Trace:
    """Read a trace file; :class:`TraceError` (one line) names what is wrong."""
    p = Path(path)
    try:  # a regular file under the size cap, nesting bounded (luosim.inputs)
        data = parse_json(read_text_file(p), str(p))
    except InputError as exc:
        raise TraceError(str(exc).splitlines()[0]) from None
    return parse_trace(data, str(p))


def _event_line(event: Mapping[str, Any]) -> str:
    return json.dumps(event, sort_keys=True, default=_json_default)


def compare_runs(trace: Trace, result: RunResult) -> tuple[bool, str]:
    """Same outcome, signature and events?  Returns (same, human-readable diff)."""
    lines: list[str] = []
    if trace.outcome != result.outcome:
        lines.append(f"outcome: trace {trace.outcome!r}, replay {result.outcome!r}")
    if trace.signature != result.signature():
        lines.append(f"signature: trace {trace.signature!r}, replay {result.signature()!r}")
    old = [_event_line(e) for e in normalize_events(trace.events)]
    new = [_event_line(e) for e in normalize_events(result.events)]
    if old != new:
        first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b),
                     min(len(old), len(new)))
        lines.append(f"events: {len(old)} in trace, {len(new)} in replay; "
                     f"first difference at event {first}")
        diff = list(difflib.unified_diff(old, new, "trace", "replay", lineterm="", n=1))
        lines.extend(diff[:40])
        if len(diff) > 40:
            lines.append(f"... ({len(diff) - 40} more diff lines)")
    return not lines, "\n".join(lines)


def replay(trace: Trace, runner: Runner | None = None, *,
           scenario_factory: ScenarioFactory | None = None) -> tuple[RunResult, bool, str]:
    """Run the trace's scenario with its faults and policy; compare with the trace."""
    scenario = (scenario_factory or default_scenario_factory)(trace.scenario)
    result = (runner or default_runner)(scenario, faults=trace.faults,
                                        policy=dict(trace.policy))
    same, diff = compare_runs(trace, result)
    return result, same, diff
