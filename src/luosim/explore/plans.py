"""Fault plan generation.

Depth 1: one run with no faults gives ``reached`` (point -> hits); every
(point, occurrence <= hits, effect accepted by the point and selected by the
effects filter) is a one-fault plan.

Depth 2: a fault changes what is reached afterwards, so for every depth-1
plan ``f1`` the ``reached`` of f1's *own* run gives the candidates ``f2``
(any fault at a different point or occurrence).  The injector matches faults
by (point, occurrence), not by their order in the plan, so (f1, f2) and
(f2, f1) are the same plan: pairs are kept sorted and deduplicated.

Plans are tuples of :class:`~luosim.faults.Fault` sorted by (point,
occurrence, effect); lists of plans are sorted by (size, faults).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from luosim.faults import REGISTRY, Fault, FaultPoint

Plan = tuple[Fault, ...]
EFFECT_FILTERS = ("errno", "corrupt", "all")


def check_effects(effects: str) -> str:
    if effects not in EFFECT_FILTERS:
        raise ValueError(f"--effects must be one of {', '.join(EFFECT_FILTERS)}, got {effects!r}")
    return effects


def effect_selected(effect: str, effects: str) -> bool:
    """Is ``effect`` (an errno name or ``corrupt:<how>``) selected by the filter?"""
    corrupt = effect.startswith("corrupt:")
    if effects == "all":
        return True
    return corrupt if effects == "corrupt" else not corrupt


Reached = Mapping[str, "int | tuple[int, ...]"]


def single_faults(reached: Reached, effects: str = "all",
                  registry: Mapping[str, FaultPoint] | None = None) -> list[Fault]:
    """Every one-fault injection possible in a run that reached ``reached``.

    A value is either the number of hits (every occurrence is tried) or the
    tuple of representative occurrences the runner chose by call site.
    """
    check_effects(effects)
    reg = REGISTRY if registry is None else registry
    out: list[Fault] = []
    for name in sorted(reached):
        fp = reg.get(name)
        if fp is None:
            continue
        chosen = sorted(e for e in set(fp.effects) if effect_selected(e, effects))
        hits = reached[name]
        occurrences = hits if isinstance(hits, tuple) else range(1, int(hits) + 1)
        for occurrence in occurrences:
            out.extend(Fault(name, occurrence, e) for e in chosen)
    return out


def canonical(plan: Iterable[Fault]) -> Plan:
    return tuple(sorted(plan))


def plan_order(plan: Plan) -> tuple[int, Plan]:
    """Execution / report order of plans: fewer faults first, then by faults."""
    return (len(plan), plan)


def shortest_order(plan: Plan) -> tuple[int, tuple[str, ...]]:
    """Which plan of a group is "shortest": fewest faults, then lexicographic labels."""
    return (len(plan), tuple(f.label() for f in plan))


def plan_labels(plan: Plan) -> list[str]:
    return [f.label() for f in plan]


def format_plan(plan: Plan) -> str:
    return " + ".join(plan_labels(plan)) if plan else "(no faults)"


def depth1_plans(reached: Reached, effects: str = "all",
                 registry: Mapping[str, FaultPoint] | None = None) -> list[Plan]:
    """One-fault plans from the fault-free run's ``reached``."""
    return [(f,) for f in single_faults(reached, effects, registry)]


def depth2_plans(followups: Iterable[tuple[Fault, Reached]], effects: str = "all",
                 registry: Mapping[str, FaultPoint] | None = None) -> list[Plan]:
    """Two-fault plans: for each (f1, reached of f1's run), every f2 at another hit."""
    pairs: set[Plan] = set()
    for f1, reached in followups:
        for f2 in single_faults(reached, effects, registry):
            if (f2.point, f2.occurrence) != (f1.point, f1.occurrence):
                pairs.add(canonical((f1, f2)))
    return sorted(pairs, key=plan_order)


def check_depth(depth: int) -> int:
    if depth not in (1, 2):
        raise ValueError(f"--depth must be 1 or 2, got {depth}")
    return depth
