from __future__ import annotations

import pytest

from luosim.explore.plans import (
    canonical,
    check_depth,
    depth1_plans,
    depth2_plans,
    format_plan,
    single_faults,
)
from luosim.faults import Fault
from tests.explore import toy

BASELINE = {"toy.a": 2, "toy.b": 1, "toy.c": 1}


def reached_of(plan: tuple[Fault, ...]) -> dict[str, int]:
    return dict(toy.run(toy.SCENARIO, faults=plan).reached)


def test_depth1_counts_per_effect_filter() -> None:
    # a: 2 hits x (ENOMEM, corrupt:flip); b: 1 x EIO; c: 1 x (ENOMEM, corrupt:zero)
    assert len(depth1_plans(BASELINE, "all")) == 7
    assert len(depth1_plans(BASELINE, "errno")) == 4
    assert len(depth1_plans(BASELINE, "corrupt")) == 3
    assert [format_plan(p) for p in depth1_plans(BASELINE, "errno")] == [
        "toy.a#1=ENOMEM", "toy.a#2=ENOMEM", "toy.b#1=EIO", "toy.c#1=ENOMEM"]


def test_depth1_uses_the_fault_free_run() -> None:
    assert dict(toy.run(toy.SCENARIO).reached) == BASELINE


def test_unknown_points_and_bad_filter() -> None:
    assert single_faults({"not.a.point": 3}) == []
    with pytest.raises(ValueError, match="--effects"):
        single_faults(BASELINE, "everything")
    with pytest.raises(ValueError, match="--depth"):
        check_depth(3)


def test_depth2_uses_each_first_faults_own_run() -> None:
    d1 = depth1_plans(BASELINE, "all")
    pairs = depth2_plans(((p[0], reached_of(p)) for p in d1), "all")
    # 29 ordered (f1, f2) candidates, 22 distinct plans once (f1, f2) == (f2, f1)
    assert len(pairs) == 22
    assert len(set(pairs)) == 22
    assert all(p == canonical(p) and len(p) == 2 for p in pairs)
    assert all((p[0].point, p[0].occurrence) != (p[1].point, p[1].occurrence) for p in pairs)
    # c#2 is reached only after a corrupt:flip, so it pairs only with a flip
    c2 = [p for p in pairs if any(f.point == "toy.c" and f.occurrence == 2 for f in p)]
    assert len(c2) == 4  # (a#1 or a#2 flip) x (c#2 ENOMEM or corrupt:zero)
    assert all(any(f.effect == "corrupt:flip" for f in p) for p in c2)
    # nothing follows a#1=ENOMEM in its own run, but the plan shows up from a#2's run
    assert (Fault("toy.a", 1, "ENOMEM"), Fault("toy.a", 2, "ENOMEM")) in pairs


def test_depth2_errno_only() -> None:
    d1 = depth1_plans(BASELINE, "errno")
    pairs = depth2_plans(((p[0], reached_of(p)) for p in d1), "errno")
    assert [format_plan(p) for p in pairs] == [
        "toy.a#1=ENOMEM + toy.a#2=ENOMEM",
        "toy.a#1=ENOMEM + toy.b#1=EIO",
        "toy.a#1=ENOMEM + toy.c#1=ENOMEM",
        "toy.a#2=ENOMEM + toy.b#1=EIO",
        "toy.a#2=ENOMEM + toy.c#1=ENOMEM",
        "toy.b#1=EIO + toy.c#1=ENOMEM",
    ]


def test_ordering_is_deterministic() -> None:
    shuffled = {"toy.c": 1, "toy.b": 1, "toy.a": 2}
    assert depth1_plans(shuffled) == depth1_plans(BASELINE)
    d1 = depth1_plans(BASELINE)
    fwd = depth2_plans((p[0], reached_of(p)) for p in d1)
    rev = depth2_plans((p[0], reached_of(p)) for p in reversed(d1))
    assert fwd == rev
