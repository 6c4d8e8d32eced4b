"""Cross-version matrix: the same update for every (old, new) profile pair.

Answers "can kernel X live-update to kernel Y, and what happens if not"
(DESIGN.md "Kernel profiles": incompatible pairs must end as the spec says,
ENOENT -> nothing preserved, or a panic, never a silent mis-decode).
Each row also carries ``preflight``: the outcome :mod:`luosim.scenario.preflight`
predicts for the pair without running (tests/profiles check they agree).
"""

from __future__ import annotations

from collections.abc import Mapping
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


def run_matrix(scenario: Scenario, policy: Mapping[str, str] | None = None
               ) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    before = scenario.kernels.before
    after = scenario.kernels.after[0]
    uses = uses_of(scenario)
    merged = {**scenario.policy, **(policy or {})}
    for old in PROFILES:
        for new in PROFILES:
            kernels = KernelsSpec(before=KernelSpec(profile=old, cmdline=before.cmdline),
                                  after=[KernelSpec(profile=new, cmdline=after.cmdline)])
            sc = scenario.model_copy(update={"kernels": kernels})
            result = run(sc, policy=policy)
            predicted = preflight(get_profile(old), get_profile(new), uses, merged).outcome
            rows.append({"from": old, "to": new, "outcome": result.outcome, "why": why(result),
                         "preflight": predicted})
    return rows
