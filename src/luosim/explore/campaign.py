"""Exploration campaigns: enumerate fault plans, run them, classify the outcomes.

``explore`` runs the fault-free plan, every depth-1 plan and (depth 2) every
two-fault plan, groups the runs by signature and re-runs each group's
shortest plan in full to attach a counterexample trace.  ``compare`` does the
same under two policies and lists the plans whose outcome class differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from luosim.explore.classify import Group, classify, summarize
from luosim.explore.executors import (
    Executor,
    LocalExecutor,
    Plan,
    Progress,
    Runner,
    RunRecord,
    RunSpec,
    ScenarioFactory,
    run_one,
)
from luosim.explore.plans import (
    check_depth,
    check_effects,
    depth1_plans,
    depth2_plans,
    plan_labels,
    plan_order,
)
from luosim.explore.trace import Trace


class ExploreError(RuntimeError):
    """The exploration itself went wrong (e.g. a run was not reproducible)."""


@dataclass
class Exploration:
    scenario_name: str
    depth: int
    effects: str
    policy: dict[str, str]
    groups: list[Group]
    records: list[RunRecord] = field(repr=False)

    @property
    def runs(self) -> int:
        return len(self.records)

    @property
    def summary(self) -> dict[str, int]:
        return summarize(self.groups, self.runs)

    @property
    def unsafe_groups(self) -> list[Group]:
        return [g for g in self.groups if g.outcome == "unsafe"]

    def record(self, plan: Plan) -> RunRecord | None:
        for rec in self.records:
            if rec.plan == plan:
                return rec
        return None

    def as_json(self) -> dict[str, Any]:
        """DESIGN.md's ``luosim explore --json`` shape."""
        return {"summary": self.summary, "groups": [g.as_json() for g in self.groups]}


@dataclass(frozen=True)
class CompareRow:
    plan: Plan
    outcome_a: str
    outcome_b: str
    signature_a: str
    signature_b: str

    def as_json(self) -> dict[str, Any]:
        return {"plan": plan_labels(self.plan), "a": self.outcome_a, "b": self.outcome_b,
                "signature_a": self.signature_a, "signature_b": self.signature_b}


@dataclass
class Comparison:
    """Both explorations run the same plan set: the union of both policies' plans."""

    policy_a: dict[str, str]
    policy_b: dict[str, str]
    a: Exploration
    b: Exploration
    rows: list[CompareRow]

    def as_json(self) -> dict[str, Any]:
        return {"policy_a": dict(sorted(self.policy_a.items())),
                "policy_b": dict(sorted(self.policy_b.items())),
                "summary_a": self.a.summary, "summary_b": self.b.summary,
                "rows": [r.as_json() for r in self.rows]}


class _Tracker:
    """Turns per-batch progress into one cumulative ``progress(done, total)``."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.done = 0
        self.total = 0

    def expect(self, n: int) -> None:
        self.total += n
        if self.progress:
            self.progress(self.done, self.total)

    def batch(self) -> Progress | None:
        if self.progress is None:
            return None
        base, report = self.done, self.progress

        def cb(done: int, _total: int) -> None:
            report(base + done, self.total)

        return cb

    def finish(self, n: int) -> None:
        self.done += n
        if self.progress:
            self.progress(self.done, self.total)


def _run_batch(executor: Executor, spec: RunSpec, plans: Sequence[Plan],
               tracker: _Tracker, *, full: bool = False) -> list[RunRecord]:
    out = executor.run(spec, plans, full=full, progress=tracker.batch())
    tracker.finish(len(plans))
    return out


def _enumerate(spec: RunSpec, depth: int, effects: str, executor: Executor,
               tracker: _Tracker) -> dict[Plan, RunRecord]:
    """Run the fault-free plan, then depth-1 (and depth-2) plans; records by plan."""
    tracker.expect(1)
    # Inline: it also imports the runner here, which declares the fault points.
    # Call sites are recorded only in runs whose reached map makes plans.
    baseline = run_one(replace(spec, sites=True), ())
    tracker.finish(1)
    records: dict[Plan, RunRecord] = {(): baseline}
    d1 = depth1_plans(baseline.reached_map, effects)
    tracker.expect(len(d1))
    for rec in _run_batch(executor, replace(spec, sites=depth >= 2), d1, tracker):
        records[rec.plan] = rec
    if depth >= 2:
        d2 = depth2_plans(((p[0], records[p].reached_map) for p in d1), effects)
        tracker.expect(len(d2))
        for rec in _run_batch(executor, spec, d2, tracker):
            records[rec.plan] = rec
    return records


def _build(spec: RunSpec, records: Mapping[Plan, RunRecord], depth: int, effects: str,
           executor: Executor, tracker: _Tracker) -> Exploration:
    ordered = [records[p] for p in sorted(records, key=plan_order)]
    groups = classify(ordered)
    tracker.expect(len(groups))
    full = _run_batch(executor, spec, [g.shortest_plan for g in groups], tracker, full=True)
    for g, rec in zip(groups, full):
        if rec.signature != g.signature or rec.result is None:
            raise ExploreError(f"run with {' + '.join(plan_labels(g.shortest_plan)) or 'no faults'}"
                               f" is not reproducible: {g.signature!r} then {rec.signature!r}")
        g.trace = Trace.from_result(spec.scenario, spec.policy_dict, g.shortest_plan, rec.result)
    return Exploration(str(spec.scenario.get("name", "scenario")), depth, effects,
                       spec.policy_dict, groups, ordered)


def explore(scenario: Any, depth: int = 1, effects: str = "all",
            policy: Mapping[str, str] | None = None, executor: Executor | None = None,
            runner: Runner | None = None, progress: Progress | None = None, *,
            scenario_factory: ScenarioFactory | None = None) -> Exploration:
    """Explore the fault space of ``scenario`` up to ``depth`` faults per run.

    ``runner`` defaults to ``luosim.scenario.runner.run`` and
    ``scenario_factory`` to ``luosim.scenario.schema.scenario_from_dict``
    (both must be module-level functions: workers receive them pickled).
    ``executor`` defaults to an inline ``LocalExecutor(1)``.
    """
    check_depth(depth)
    check_effects(effects)
    spec = RunSpec.build(scenario, runner=runner, scenario_factory=scenario_factory,
                         policy=policy)
    own = executor is None
    ex: Executor = executor if executor is not None else LocalExecutor(1)
    try:
        tracker = _Tracker(progress)
        records = _enumerate(spec, depth, effects, ex, tracker)
        return _build(spec, records, depth, effects, ex, tracker)
    finally:
        if own:
            ex.close()


def compare(scenario: Any, policy_a: Mapping[str, str], policy_b: Mapping[str, str],
            depth: int = 1, effects: str = "all", executor: Executor | None = None,
            runner: Runner | None = None, progress: Progress | None = None, *,
            scenario_factory: ScenarioFactory | None = None) -> Comparison:
    """Which fault plans change outcome class between ``policy_a`` and ``policy_b``?

    Plans are enumerated under each policy; every plan of the union is run
    under both, and rows list the plans whose outcome differs, in plan order.
    """
    check_depth(depth)
    check_effects(effects)
    spec_a = RunSpec.build(scenario, runner=runner, scenario_factory=scenario_factory,
                           policy=policy_a)
    spec_b = RunSpec.build(scenario, runner=runner, scenario_factory=scenario_factory,
                           policy=policy_b)
    own = executor is None
    ex: Executor = executor if executor is not None else LocalExecutor(1)
    try:
        tracker = _Tracker(progress)
        rec_a = _enumerate(spec_a, depth, effects, ex, tracker)
        rec_b = _enumerate(spec_b, depth, effects, ex, tracker)
        only_b = sorted(set(rec_b) - set(rec_a), key=plan_order)
        only_a = sorted(set(rec_a) - set(rec_b), key=plan_order)
        tracker.expect(len(only_a) + len(only_b))
        for rec in _run_batch(ex, spec_a, only_b, tracker):
            rec_a[rec.plan] = rec
        for rec in _run_batch(ex, spec_b, only_a, tracker):
            rec_b[rec.plan] = rec
        exp_a = _build(spec_a, rec_a, depth, effects, ex, tracker)
        exp_b = _build(spec_b, rec_b, depth, effects, ex, tracker)
    finally:
        if own:
            ex.close()
    rows = [CompareRow(p, rec_a[p].outcome, rec_b[p].outcome, rec_a[p].signature,
                       rec_b[p].signature)
            for p in sorted(rec_a, key=plan_order) if rec_a[p].outcome != rec_b[p].outcome]
    return Comparison(spec_a.policy_dict, spec_b.policy_dict, exp_a, exp_b, rows)
