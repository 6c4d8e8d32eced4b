from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from luosim.explore.campaign import ExploreError, compare, explore
from luosim.explore.classify import classify, summarize
from luosim.explore.executors import LocalExecutor, RunCrash, RunRecord
from luosim.explore.plans import plan_labels
from luosim.faults import Fault
from tests.explore import toy


def run_toy(depth: int = 1, **kw: Any) -> Any:
    return explore(toy.SCENARIO, depth, runner=toy.run, scenario_factory=toy.scenario_from_dict,
                   **kw)


def test_depth1_groups_and_shortest_plan() -> None:
    ex = run_toy(1)
    assert ex.runs == 8  # fault-free run + 7 one-fault plans
    table = {g.signature: (g.outcome, g.runs, plan_labels(g.shortest_plan)) for g in ex.groups}
    assert table == {
        "ok": ("ok", 2, []),  # no faults, and c#1=corrupt:zero (caught)
        "panic:toy: bad magic at ADDR": ("panic", 2, ["toy.a#1=corrupt:flip"]),
        "panic:toy: retrieve failed (-ENOMEM)": ("panic", 1, ["toy.c#1=ENOMEM"]),
        "refused:freeze:freeze: EIO": ("refused", 1, ["toy.b#1=EIO"]),
        "refused:prepare:prepare: ENOMEM": ("refused", 1, ["toy.a#1=ENOMEM"]),
        "refused:preserve:preserve: ENOMEM": ("refused", 1, ["toy.a#2=ENOMEM"]),
    }
    # worst outcome first, then signature
    assert [g.outcome for g in ex.groups] == ["panic", "panic", "refused", "refused",
                                              "refused", "ok"]


def test_summary_counts_groups_not_runs() -> None:
    assert run_toy(1).summary == {"runs": 8, "ok": 1, "refused": 3, "panic": 2, "unsafe": 0}
    ex = run_toy(2)
    assert ex.summary == {"runs": 30, "ok": 1, "refused": 3, "panic": 2, "unsafe": 1}
    assert sum(g.runs for g in ex.groups) == 30


def test_depth2_finds_the_unsafe_pair() -> None:
    ex = run_toy(2)
    [unsafe] = ex.unsafe_groups
    assert unsafe.signature == "unsafe:toy.data-intact"
    assert unsafe.runs == 2
    assert plan_labels(unsafe.shortest_plan) == ["toy.a#1=corrupt:flip", "toy.c#2=corrupt:zero"]
    assert unsafe.trace is not None and unsafe.trace.outcome == "unsafe"
    assert unsafe.trace.labels == plan_labels(unsafe.shortest_plan)


def test_shortest_plan_is_fewest_faults_then_lexicographic() -> None:
    def rec(*labels: str) -> RunRecord:
        return RunRecord(tuple(Fault.parse(x) for x in labels), "panic", "panic:x", "x", (), ())

    groups = classify([rec("toy.a#2=ENOMEM", "toy.b#1=EIO"), rec("toy.a#2=ENOMEM"),
                       rec("toy.a#10=ENOMEM")])
    assert plan_labels(groups[0].shortest_plan) == ["toy.a#10=ENOMEM"]  # "#10" < "#2"
    assert summarize(groups, 3) == {"runs": 3, "ok": 0, "refused": 0, "panic": 1, "unsafe": 0}


def test_json_shape_and_determinism() -> None:
    doc = run_toy(2).as_json()
    assert list(doc) == ["summary", "groups"]
    assert list(doc["summary"]) == ["runs", "ok", "refused", "panic", "unsafe"]
    for g in doc["groups"]:
        assert list(g) == ["outcome", "signature", "runs", "shortest_plan", "trace"]
        assert list(g["trace"]) == ["luosim_trace", "scenario", "policy", "faults", "outcome",
                                    "signature", "panic", "events"]
        assert g["trace"]["faults"] == g["shortest_plan"]
        assert g["trace"]["signature"] == g["signature"]
    assert json.dumps(doc) == json.dumps(run_toy(2).as_json())


def test_progress_reports_cumulative_runs() -> None:
    seen: list[tuple[int, int]] = []
    ex = run_toy(2, progress=lambda d, t: seen.append((d, t)))
    dones = [d for d, _ in seen]
    assert dones == sorted(dones)
    assert seen[-1] == (30 + len(ex.groups), 30 + len(ex.groups))


def test_compare_rows() -> None:
    cmp = compare(toy.SCENARIO, {"toy.on_corrupt": "panic"}, {"toy.on_corrupt": "warn"},
                  runner=toy.run, scenario_factory=toy.scenario_from_dict)
    assert [(plan_labels(r.plan), r.outcome_a, r.outcome_b) for r in cmp.rows] == [
        (["toy.a#1=corrupt:flip"], "panic", "unsafe"),
        (["toy.a#2=corrupt:flip"], "panic", "unsafe"),
    ]
    doc = cmp.as_json()
    assert doc["rows"][0] == {"plan": ["toy.a#1=corrupt:flip"], "a": "panic", "b": "unsafe",
                              "signature_a": "panic:toy: bad magic at ADDR",
                              "signature_b": "unsafe:toy.checksum"}
    assert doc["summary_b"]["unsafe"] == 1 and doc["summary_a"]["unsafe"] == 0


def test_compare_depth2_runs_the_union_of_plans() -> None:
    cmp = compare(toy.SCENARIO, {}, {"toy.on_corrupt": "warn"}, depth=2, runner=toy.run,
                  scenario_factory=toy.scenario_from_dict)
    assert cmp.a.runs == cmp.b.runs == 30
    assert Counter((r.outcome_a, r.outcome_b) for r in cmp.rows) == {("panic", "unsafe"): 7}
    # every plan with a flip that neither stops earlier nor loses both copies
    assert [" + ".join(plan_labels(r.plan)) for r in cmp.rows] == [
        "toy.a#1=corrupt:flip",
        "toy.a#2=corrupt:flip",
        "toy.a#1=corrupt:flip + toy.a#2=corrupt:flip",
        "toy.a#1=corrupt:flip + toy.c#1=corrupt:zero",
        "toy.a#1=corrupt:flip + toy.c#2=ENOMEM",
        "toy.a#2=corrupt:flip + toy.c#1=corrupt:zero",
        "toy.a#2=corrupt:flip + toy.c#2=ENOMEM",
    ]


def test_local_jobs2_identical_to_inline() -> None:
    inline = run_toy(2)
    with LocalExecutor(2) as ex:
        pooled = run_toy(2, executor=ex)
    assert pooled.records == inline.records
    assert json.dumps(pooled.as_json()) == json.dumps(inline.as_json())


def test_local_spawn_workers_identical() -> None:
    inline = run_toy(1)
    with LocalExecutor(2, start_method="spawn") as ex:
        pooled = run_toy(1, executor=ex)
    assert json.dumps(pooled.as_json()) == json.dumps(inline.as_json())


def test_runner_crash_names_the_plan() -> None:
    for jobs in (1, 2):
        with LocalExecutor(jobs) as ex, pytest.raises(RunCrash, match=r"toy\.b#1=EIO raised"):
            explore(toy.SCENARIO, 1, runner=toy.bad_run, executor=ex,
                    scenario_factory=toy.scenario_from_dict)


def test_nondeterministic_runner_is_detected() -> None:
    toy._calls["n"] = 0
    with pytest.raises(ExploreError, match="not reproducible"):
        explore(toy.SCENARIO, 1, runner=toy.flaky_run, scenario_factory=toy.scenario_from_dict)
