"""KTAP v1 output (``--format ktap``) as kselftest prints it.

The format (torvalds/linux 0e44d9fed546, Documentation/dev-tools/ktap.rst):
a ``KTAP version 1`` line, the plan ``1..N`` right after it, then one
``ok N - name`` or ``not ok N - name # reason`` line per test (a description
cannot contain '#'; what follows '#' is diagnostic data); ``# `` lines are
diagnostics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from luosim.scenario.result import RunResult


def _clean(text: str) -> str:
    """One line, no '#' (it would start a directive inside a test name)."""
    return " ".join(str(text).replace("#", "").split())


def ktap(tests: Sequence[tuple[str, bool, str]], diagnostics: Iterable[str] = ()) -> str:
    """``tests``: (name, ok, reason) in order; the reason is printed for failures."""
    lines = ["KTAP version 1", f"1..{len(tests)}", *(f"# {_clean(d)}" for d in diagnostics)]
    for n, (name, ok, reason) in enumerate(tests, 1):
        if ok:
            lines.append(f"ok {n} - {_clean(name)}")
        else:
            lines.append(f"not ok {n} - {_clean(name)}" + (f" # {_clean(reason)}" if reason
                                                           else ""))
    return "\n".join(lines) + "\n"


def run_ktap(result: RunResult, title: str) -> str:
    """One test per invariant, then the update itself (ok only when the outcome is ok)."""
    tests = [(f"{i.id}", i.ok, i.detail) for i in result.invariants]
    why = result.panic or result.error or "; ".join(f"{i.id}: {i.detail}" for i in result.broken)
    tests.append((f"live update {title}", result.outcome == "ok",
                  f"{result.outcome}: {why}" if why else result.outcome))
    return ktap(tests, [f"luosim run {title}: outcome {result.outcome}"])


def matrix_ktap(rows: Sequence[dict[str, str]]) -> str:
    """One test per profile path (from, [via,] to); refused, panic and unsafe pairs fail."""
    tests = [(" to ".join(r[k] for k in ("from", "via", "to") if r.get(k)),
              r["outcome"] == "ok", f"{r['outcome']}: {r['why']}") for r in rows]
    return ktap(tests, ["luosim matrix: every (old, new) kernel profile pair"])


def explore_ktap(data: dict[str, Any]) -> str:
    """One test per outcome group; only unsafe groups fail (a refusal or a panic
    is the kernel handling the fault as documented)."""
    tests: list[tuple[str, bool, str]] = []
    if "rows" in data:  # --compare: one test per plan whose outcome differs
        for r in data["rows"]:
            plan = " + ".join(r["plan"]) or "no fault"
            tests.append((plan, "unsafe" not in (r["a"], r["b"]), f"A {r['a']}, B {r['b']}"))
        return ktap(tests, [f"luosim explore --compare: {len(tests)} plans differ"])
    for g in data.get("groups", []):
        plan = " + ".join(g.get("shortest_plan") or []) or "no fault"
        tests.append((f"{g['signature']} ({g['runs']} runs, e.g. {plan})",
                      g["outcome"] != "unsafe", g["outcome"]))
    summary = data.get("summary", {})
    diag = ["luosim explore: " + ", ".join(f"{k} {v}" for k, v in summary.items())]
    return ktap(tests, diag)
