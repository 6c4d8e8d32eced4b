"""A toy scenario backend for the explorer tests (stands in for luosim.scenario).

Fault points ``toy.a`` (ENOMEM, corrupt:flip), ``toy.b`` (EIO) and ``toy.c``
(ENOMEM, corrupt:zero).  A fault-free run hits a, b, a, c and is ``ok``:

- ``a#1=ENOMEM`` / ``a#2=ENOMEM`` refuse at "prepare" / "preserve";
- ``b#1=EIO`` refuses at "freeze";
- ``a#N=corrupt:flip`` makes retrieve re-check (a second hit of ``c``), then
  panics under policy ``toy.on_corrupt=panic`` (default) or goes on with bad
  data under ``toy.on_corrupt=warn`` (unsafe);
- ``c#1=ENOMEM`` panics at retrieve; ``c#1=corrupt:zero`` is caught (ok);
- a flip plus ``c#2=corrupt:zero`` (both copies bad) is unsafe under any policy.

It also provides the backend interface of ``luosim.explore.cli``
(``run``, ``load_scenario``, ``scenario_from_dict``, ``check_policy``,
``ScenarioError``); select it with ``LUOSIM_EXPLORE_BACKEND=tests.explore.toy``.
The fault points are registered by :func:`register` (see conftest.py).
Like FaultInjector.hit, a hit no plan targets asks the fork explorer's
branch hook (luosim.faults.branch).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from luosim.faults import REGISTRY, Fault, FaultPoint, branch
from luosim.scenario.result import InvariantResult, RunResult

POINTS = {
    "toy.a": FaultPoint("toy.a", ("ENOMEM", "corrupt:flip"), "toy point a"),
    "toy.b": FaultPoint("toy.b", ("EIO",), "toy point b"),
    "toy.c": FaultPoint("toy.c", ("ENOMEM", "corrupt:zero"), "toy point c"),
}
POLICIES = {"toy.on_corrupt": ("panic", "warn")}
SCENARIO: dict[str, Any] = {"name": "toy", "machine": {}, "policy": {}}


def register() -> None:
    REGISTRY.update(POINTS)


def unregister() -> None:
    for name in POINTS:
        REGISTRY.pop(name, None)


class ScenarioError(ValueError):
    pass


def check_policy(key: str, value: str) -> None:
    if key not in POLICIES:
        raise ValueError(f"unknown policy {key!r} (known: {', '.join(POLICIES)})")
    if value not in POLICIES[key]:
        raise ValueError(f"policy {key}: {value!r} is not one of {', '.join(POLICIES[key])}")


def scenario_from_dict(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ScenarioError("<scenario>: (top level): expected a mapping with a name")
    copy: dict[str, Any] = json.loads(json.dumps(data))
    return copy


def load_scenario(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{path}: cannot load: {exc}") from None
    return scenario_from_dict(data)


def run(scenario: Mapping[str, Any], *, faults: tuple[Fault, ...] = (),
        policy: Mapping[str, str] | None = None) -> RunResult:
    pol = {"toy.on_corrupt": "panic", **scenario.get("policy", {}), **(policy or {})}
    plan = {(f.point, f.occurrence): f for f in faults}
    reached: Counter[str] = Counter()
    fired: list[str] = []
    events: list[dict[str, Any]] = []

    def emit(kind: str, detail: str, **data: Any) -> None:
        events.append({"seq": len(events), "kind": kind, "detail": detail, **data})

    def hit(name: str) -> str | None:
        reached[name] += 1
        f = plan.get((name, reached[name])) or branch(name, reached[name])
        if f is not None:
            fired.append(f.label())
        emit("hit", name, n=reached[name], effect=f.effect if f else None)
        return f.effect if f else None

    def end(outcome: str, **kw: Any) -> RunResult:
        emit("end", outcome)
        return RunResult(outcome, events=events, reached=reached, fired=fired, **kw)

    def refuse(step: str, err: str) -> RunResult:
        return end("refused", error=f"{step}: {err}", failed_step=step)

    corrupted = False
    emit("step", "prepare")
    effect = hit("toy.a")
    if effect == "ENOMEM":
        return refuse("prepare", "ENOMEM")
    corrupted |= effect == "corrupt:flip"
    emit("step", "freeze")
    if hit("toy.b") == "EIO":
        return refuse("freeze", "EIO")
    emit("step", "preserve")
    effect = hit("toy.a")
    if effect == "ENOMEM":
        return refuse("preserve", "ENOMEM")
    corrupted |= effect == "corrupt:flip"
    emit("step", "retrieve")
    if hit("toy.c") == "ENOMEM":
        return end("panic", panic="toy: retrieve failed (-ENOMEM)")
    if corrupted:
        if hit("toy.c") == "corrupt:zero":
            return end("unsafe", invariants=[InvariantResult("toy.data-intact", False,
                                                             "both copies lost")])
        if pol["toy.on_corrupt"] == "panic":
            return end("panic", panic="toy: bad magic at 0x1000")
        return end("unsafe", invariants=[InvariantResult("toy.checksum", False,
                                                         "corrupt data used")])
    return end("ok", invariants=[InvariantResult("toy.data-intact", True, "")])


def bad_run(scenario: Mapping[str, Any], *, faults: tuple[Fault, ...] = (),
            policy: Mapping[str, str] | None = None) -> RunResult:
    """A runner with a modelling bug: crashes whenever toy.b fails (also when
    the fork explorer injected the failure, not only when it is planned)."""
    result = run(scenario, faults=faults, policy=policy)
    if any(label.startswith("toy.b") for label in result.fired):
        raise KeyError("oops")
    return result


_calls = {"n": 0}


def flaky_run(scenario: Mapping[str, Any], *, faults: tuple[Fault, ...] = (),
              policy: Mapping[str, str] | None = None) -> RunResult:
    """Non-deterministic for the fault-free plan (second call differs)."""
    if not faults:
        _calls["n"] += 1
        if _calls["n"] > 1:
            return RunResult("panic", panic="flaky", reached=Counter(), events=[])
    return run(scenario, faults=faults, policy=policy)
