"""Grouping runs into outcome classes.

Runs with the same :meth:`RunResult.signature` are one group.  A group's
representative is its shortest plan (fewest faults, then lexicographic
labels); its trace is the full record of that plan's run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from luosim.explore.executors import Plan, RunRecord
from luosim.explore.plans import plan_labels, shortest_order
from luosim.explore.trace import Trace
from luosim.scenario.result import OUTCOMES

REPORT_ORDER = ("unsafe", "panic", "refused", "ok")
"""Groups are listed worst outcome first, then by signature."""


@dataclass
class Group:
    outcome: str
    signature: str
    runs: int
    shortest_plan: Plan
    plans: list[Plan] = field(default_factory=list, repr=False)
    trace: Trace | None = None

    def as_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "signature": self.signature, "runs": self.runs,
                "shortest_plan": plan_labels(self.shortest_plan),
                "trace": self.trace.as_json() if self.trace is not None else None}


def _order(group: Group) -> tuple[int, str]:
    rank = REPORT_ORDER.index(group.outcome) if group.outcome in REPORT_ORDER else 99
    return rank, group.signature


def classify(records: Iterable[RunRecord]) -> list[Group]:
    """Group records by signature; deterministic whatever the input order."""
    groups: dict[str, Group] = {}
    for rec in records:
        g = groups.get(rec.signature)
        if g is None:
            groups[rec.signature] = Group(rec.outcome, rec.signature, 1, rec.plan, [rec.plan])
            continue
        g.runs += 1
        g.plans.append(rec.plan)
        if shortest_order(rec.plan) < shortest_order(g.shortest_plan):
            g.shortest_plan = rec.plan
    out = sorted(groups.values(), key=_order)
    for g in out:
        g.plans.sort(key=shortest_order)
    return out


def summarize(groups: Iterable[Group], runs: int) -> dict[str, int]:
    """``{"runs": n, "ok": n, "refused": n, ...}``: classes count groups (DESIGN.md)."""
    summary = {"runs": runs, **{o: 0 for o in OUTCOMES}}
    for g in groups:
        summary[g.outcome] = summary.get(g.outcome, 0) + 1
    return summary
