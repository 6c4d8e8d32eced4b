"""The fork explorer gives exactly what fresh runs give (issue 12 item 2).

Every depth-1 plan of examples/small-host.yaml and a sample of its depth-2
plans run once from scratch and once in a fork tree; outcome, signature,
events, fired faults, reached counts and the counterexample trace must be
identical.
"""

from __future__ import annotations

import gc
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import luosim.faults as faults
from luosim.explore.campaign import explore
from luosim.explore.executors import LocalExecutor, RunCrash, RunRecord, RunSpec, run_one
from luosim.explore.forking import ForkExecutor, run_tree
from luosim.explore.plans import depth1_plans, depth2_plans
from luosim.explore.trace import Trace
from luosim.scenario.schema import load_scenario
from tests.explore import toy

SMALL_HOST = Path(__file__).resolve().parents[2] / "examples" / "small-host.yaml"
TOY: dict[str, Any] = {"runner": toy.run, "scenario_factory": toy.scenario_from_dict}


def _same(fork: RunRecord, fresh: RunRecord, spec: RunSpec) -> None:
    label = " + ".join(f.label() for f in fresh.plan)
    assert fork == fresh, label  # plan, outcome, signature, panic, reached, fired
    a, b = fork.result, fresh.result
    assert a is not None and b is not None
    assert json.dumps(a.as_json()) == json.dumps(b.as_json()), label  # events included
    assert (a.reached, a.occurrences, a.fired, a.phases) == \
        (b.reached, b.occurrences, b.fired, b.phases), label
    ta = Trace.from_result(spec.scenario, spec.policy_dict, fork.plan, a).as_json()
    tb = Trace.from_result(spec.scenario, spec.policy_dict, fresh.plan, b).as_json()
    assert ta == tb, label


@pytest.mark.parametrize("jobs", [1, 2, 3])
@pytest.mark.parametrize("depth", [1, 2])
def test_toy_fork_equals_fresh(depth: int, jobs: int) -> None:
    expected = explore(toy.SCENARIO, depth, executor=LocalExecutor(1), **TOY)
    got = explore(toy.SCENARIO, depth, executor=ForkExecutor(jobs), **TOY)
    assert got.records == expected.records
    assert json.dumps(got.as_json()) == json.dumps(expected.as_json())
    # the tree leaves no hook, no frozen heap and no child behind
    assert faults._branch_hook is None
    assert gc.get_freeze_count() == 0


def test_toy_fork_crash_is_reported() -> None:
    with pytest.raises(RunCrash, match=r"toy\.b#1=EIO raised KeyError"):
        explore(toy.SCENARIO, 1, executor=ForkExecutor(2), runner=toy.bad_run,
                scenario_factory=toy.scenario_from_dict)
    assert faults._branch_hook is None


def test_toy_third_fault_and_unreached_faults() -> None:
    """Deeper plans fork again; a fault never reached leaves the run as it was."""
    spec = RunSpec.build(toy.SCENARIO, **TOY)
    f = faults.Fault
    plans = [(f("toy.a", 1, "corrupt:flip"), f("toy.a", 2, "corrupt:flip"),
              f("toy.c", 2, "corrupt:zero")),
             (f("toy.a", 1, "corrupt:flip"), f("toy.c", 5, "ENOMEM")),
             (f("toy.b", 1, "EIO"), f("toy.c", 1, "ENOMEM")),
             (f("toy.a", 9, "ENOMEM"),), ()]
    got = run_tree(spec, plans, jobs=2)
    assert got == [run_one(spec, p) for p in plans]


@pytest.fixture(scope="module")
def small() -> tuple[RunSpec, list[tuple[faults.Fault, ...]], RunRecord]:
    spec = RunSpec.build(load_scenario(SMALL_HOST))
    base = run_one(replace(spec, sites=True), ())
    return spec, depth1_plans(base.reached_map), base


def test_small_host_depth1_fork_equals_fresh(small: Any) -> None:
    spec, d1, _base = small
    assert len(d1) > 100
    forked = run_tree(spec, d1, jobs=2, full=True)
    for fork, plan in zip(forked, d1, strict=True):
        _same(fork, run_one(spec, plan, full=True), spec)


def test_small_host_depth2_sample_fork_equals_fresh(small: Any) -> None:
    spec, d1, _base = small
    d1_spec = replace(spec, sites=True)
    firsts = d1[::16]  # points spread over the whole run
    d1_records = run_tree(d1_spec, firsts)
    # call sites (hence the representative occurrences that make plans) match too
    assert d1_records == [run_one(d1_spec, p) for p in firsts]
    followups = [(p[0], r.reached_map) for p, r in zip(firsts, d1_records)]
    d2 = depth2_plans(followups)
    sample = d2[::max(1, len(d2) // 40)]
    assert len(sample) >= 30
    forked = run_tree(spec, sample, jobs=2, full=True)
    for fork, plan in zip(forked, sample, strict=True):
        _same(fork, run_one(spec, plan, full=True), spec)


def test_sites_recorded_only_when_asked() -> None:
    spec = RunSpec.build(load_scenario(SMALL_HOST))
    plain = run_one(spec, (), full=True)
    asked = run_one(replace(spec, sites=True), (), full=True)
    assert plain.result is not None and asked.result is not None
    assert plain.result.occurrences == {}
    assert asked.result.occurrences
    assert plain.result.reached == asked.result.reached
    assert plain.signature == asked.signature
