"""Cross-version matrix: the same update for every (old, new) profile pair.

:func:`run_paths` does the same for multi-hop paths A -> B -> C (consecutive
live updates, each hop's ``after`` command line from the scenario's first
``after`` kernel).

Answers "can kernel X live-update to kernel Y, and what happens if not"
(DESIGN.md "Kernel profiles": incompatible pairs must end as the spec says,
ENOENT -> nothing preserved, or a panic, never a silent mis-decode).
Each row also carries ``preflight``: the outcome :mod:`luosim.scenario.preflight`
predicts for the pair without running (tests/profiles check they agree).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from luosim.kernel.profiles import PROFILES, get_profile
from luosim.scenario.preflight import preflight, uses_of
from luosim.scenario.runner import run
from luosim.scenario.schema import KernelSpec, KernelsSpec, Scenario


def why(result: Any) -> str:
    if result.outcome == "panic":
        return str(result.panic)
    if result.outcome == "refused":
        return str(result.error)
    if result.outcome == "unsafe":
        return "; ".join(f"{i.id}: {i.detail}" for i in result.broken)
    return "update completed, invariants hold"


def select_profiles(names: Sequence[str] | None = None) -> list[str]:
    """The profiles a matrix runs over: ``names`` in the given order (each checked,
    duplicates dropped), or every known profile."""
    if not names:
        return list(PROFILES)
    for name in names:
        get_profile(name)  # ValueError naming the unknown profile
    return list(dict.fromkeys(names))


def run_matrix(scenario: Scenario, policy: Mapping[str, str] | None = None,
               profiles: Sequence[str] | None = None) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    names = select_profiles(profiles)
    before = scenario.kernels.before
    after = scenario.kernels.after[0]
    uses = uses_of(scenario)
    merged = {**scenario.policy, **(policy or {})}
    for old in names:
        for new in names:
            kernels = KernelsSpec(before=KernelSpec(profile=old, cmdline=before.cmdline),
                                  after=[KernelSpec(profile=new, cmdline=after.cmdline)])
            sc = scenario.model_copy(update={"kernels": kernels})
            result = run(sc, policy=policy)
            predicted = preflight(get_profile(old), get_profile(new), uses, merged).outcome
            rows.append({"from": old, "to": new, "outcome": result.outcome, "why": why(result),
                         "preflight": predicted})
    return rows


def run_paths(scenario: Scenario, hops: int, policy: Mapping[str, str] | None = None,
              profiles: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Every profile path of ``hops`` consecutive updates: one row per path with
    ``from``, ``via`` (the kernels in between, "A -> B"), ``to``, outcome, why.

    ``profiles`` restricts the paths to those builds (len(profiles) ** (hops + 1) runs)."""
    if hops < 1:
        raise ValueError(f"hops must be at least 1, not {hops}")
    if hops == 1:
        return run_matrix(scenario, policy, profiles)
    before = scenario.kernels.before
    after = scenario.kernels.after[0]
    rows: list[dict[str, str]] = []
    names = select_profiles(profiles)
    for path in itertools.product(names, repeat=hops + 1):
        kernels = KernelsSpec(
            before=KernelSpec(profile=path[0], cmdline=before.cmdline),
            after=[KernelSpec(profile=p, cmdline=after.cmdline) for p in path[1:]])
        result = run(scenario.model_copy(update={"kernels": kernels}), policy=policy)
        rows.append({"from": path[0], "via": " -> ".join(path[1:-1]), "to": path[-1],
                     "outcome": result.outcome, "why": why(result)})
    return rows
