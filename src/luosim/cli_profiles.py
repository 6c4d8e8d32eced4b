"""``luosim profiles`` and ``luosim preflight``: kernel builds and their compatibility.

Registered on the main app by :func:`register` (called from ``luosim.cli``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the machine-readable result.")]
_STYLE = {"ok": "green", "unused": "dim", "lost": "yellow", "refused": "magenta",
          "panic": "bold red", "unsafe": "bold red"}


def profiles_cmd(as_json: JsonOpt = False) -> None:
    """List the kernel profiles: per layer, the ABI version and the tree+commit it follows."""
    from luosim.cli import out
    from luosim.kernel.profiles import LAYERS, PROFILES
    if as_json:
        rows = [{"name": p.name, "description": p.description, "layers": p.layers(),
                 "policies": dict(p.policies)} for p in PROFILES.values()]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.table import Table
    t = Table(title=f"{len(PROFILES)} kernel profiles x {len(LAYERS)} hand-over layers "
                    "(- = the build does not have it)")
    t.add_column("profile", style="bold")
    for layer in LAYERS:
        t.add_column(layer)
    for p in PROFILES.values():
        cells = [str(row["compatible"] or "-") if row["layer"] != "pci"
                 else f"{row['version']} ({row['compatible']})" if row["version"] else "-"
                 for row in p.layers()]
        t.add_row(p.name, *cells)
    out.print(t)
    src = Table(title="sources (tree, commit, header) per profile and layer", show_lines=False)
    for col in ("profile", "layer", "version", "source"):
        src.add_column(col)
    for p in PROFILES.values():
        for row in p.layers():
            if row["version"] is not None:
                src.add_row(p.name, str(row["layer"]), str(row["version"]), str(row["source"]))
    out.print(src)
    for p in PROFILES.values():
        out.print(f"[bold]{p.name}[/]: {p.description}", soft_wrap=True)


def preflight_cmd(
        old: Annotated[str, typer.Argument(metavar="FROM", help="Profile of the running kernel.")],
        new: Annotated[str, typer.Argument(metavar="TO", help="Profile of the next kernel.")],
        scenario: Annotated[Path | None, typer.Option(
            "--scenario", help="Scenario whose workload says which layers are used "
                               "(default: the reference host).")] = None,
        policy: Annotated[list[str] | None, typer.Option(
            "--policy", help="Override a policy of the new kernel, KEY=VALUE.")] = None,
        as_json: JsonOpt = False) -> None:
    """Without running: does kernel TO read what kernel FROM hands over, layer by layer?

    Exit 0 when the update would succeed, 1 when it would be refused, panic
    or lose state, 2 on bad input.
    """
    from luosim.cli import _load, _reference_scenario, fail, out, parse_policy
    from luosim.kernel.profiles import get_profile
    from luosim.scenario.preflight import preflight, uses_of
    pol = parse_policy(policy)
    try:
        p_old, p_new = get_profile(old), get_profile(new)
    except ValueError as exc:
        fail(str(exc))
    sc: Any = _reference_scenario() if scenario is None else _load(scenario)
    merged = {**sc.policy, **pol}
    verdict = preflight(p_old, p_new, uses_of(sc), merged)
    if as_json:
        sys.stdout.write(json.dumps(verdict.as_json(), indent=2) + "\n")
    else:
        from rich.table import Table
        t = Table(title=f"preflight {p_old.name} -> {p_new.name} ({sc.name})")
        for col in ("layer", p_old.name + " writes", p_new.name + " reads", "verdict", "detail"):
            t.add_column(col)
        for lv in verdict.layers:
            style = _STYLE.get(lv.status, "")
            t.add_row(lv.layer, lv.old or "-", lv.new or "-", f"[{style}]{lv.status}[/]",
                      lv.detail)
        out.print(t)
        style = _STYLE.get(verdict.outcome, "")
        out.print(f"expected outcome: [{style}]{verdict.outcome}[/] - {verdict.why}",
                  soft_wrap=True)
    raise typer.Exit(0 if verdict.outcome == "ok" else 1)


def register(app: typer.Typer) -> None:
    """Add ``profiles`` and ``preflight`` to the ``luosim`` app."""
    app.command("profiles")(profiles_cmd)
    app.command("preflight")(preflight_cmd)
