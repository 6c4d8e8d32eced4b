"""Rich console report of one run: PCI trees, preserved objects, blackout
timeline, invariants, outcome.  Reads only a :class:`RunResult`.

Everything from the model goes in as :class:`~rich.text.Text`, never as a
markup string: a panic ``BUG: DMAR...`` or a name with ``[...]`` prints as
written (no markup, no ``:emoji:`` codes) whatever console renders it.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from luosim.scenario.result import RunResult

_OUTCOME_STYLE = {"ok": "bold green", "refused": "bold yellow", "panic": "bold red",
                  "unsafe": "bold white on red"}


def pci_tree(title: str, nodes: list[dict[str, Any]], moved: set[str]) -> Tree:
    """``nodes``: dicts with name, bdf, kind, parent (name or None), preserved."""
    tree = Tree(Text(title, style="bold"))
    branches: dict[str | None, Tree] = {None: tree}
    for n in nodes:
        parent = branches.get(n.get("parent"), tree)
        style = "bold cyan" if n.get("preserved") else ("cyan" if n.get("auto") else "")
        if n["name"] in moved:
            style = "bold red"
        label = Text(f"{n['bdf']}  ", style=style)
        label.append(f"{n['name']} ({n['kind']})", style=style or "dim")
        if n.get("preserved"):
            label.append("  preserved", style="cyan")
        elif n.get("auto"):
            label.append("  auto-preserved bridge", style="cyan")
        if n["name"] in moved:
            label.append("  MOVED", style="bold red")
        branches[n["name"]] = parent.add(label)
    return tree


def render(result: RunResult, console: Console, *, title: str = "") -> None:
    moved = {d.name for d in result.devices
             if d.preserved and d.bdf_after is not None and d.bdf_before != d.bdf_after}
    if result.pci_before or result.pci_after:
        console.print(Panel(Group(pci_tree("before (old kernel)", result.pci_before, set()),
                                  pci_tree("after (new kernel)", result.pci_after, moved)),
                            title="PCI topology", border_style="blue"))
    if result.preserved_objects:
        t = Table(title="Preserved objects", show_lines=False)
        for col in ("session", "token", "kind", "object", "state"):
            t.add_column(col)
        for o in result.preserved_objects:
            t.add_row(*(Text(str(o.get(k, ""))) for k in
                        ("session", "token", "kind", "object", "state")))
        console.print(t)
    if result.devices:
        t = Table(title="Devices")
        for col in ("device", "BDF before", "BDF after", "preserved"):
            t.add_column(col)
        for d in result.devices:
            style = "red" if d.name in moved else ""
            t.add_row(Text(d.name), Text(d.bdf_before or "-"), Text(d.bdf_after or "-"),
                      "yes" if d.preserved else "auto (bridge)" if d.auto_preserved else "no",
                      style=style)
        console.print(t)
    if result.phases:
        t = Table(title="Timeline (simulated time; DMA keeps running through it)")
        t.add_column("phase")
        t.add_column("duration", justify="right")
        t.add_column("", min_width=20)
        total = sum(ns for _p, ns in result.phases) or 1
        for phase, ns in result.phases:
            bar = "█" * max(1, round(30 * ns / total)) if ns else ""
            t.add_row(Text(phase), f"{ns / 1e6:.1f} ms", Text(bar, style="magenta"))
        console.print(t)
    if result.invariants:
        t = Table(title="Invariants")
        for col in ("id", "result", "detail"):
            t.add_column(col)
        for inv in result.invariants:
            t.add_row(Text(inv.id),
                      Text("pass", style="green") if inv.ok else Text("FAIL", style="red"),
                      Text(inv.detail))
        console.print(t)
    line = Text("outcome: ", style="bold")
    line.append(result.outcome, style=_OUTCOME_STYLE.get(result.outcome, ""))
    if title:
        line.append(f"  ({title})", style="dim")
    console.print(line)
    if result.panic:
        console.print(Text(f"Kernel panic - not syncing: {result.panic}", style="bold red"))
    if result.error:
        console.print(Text(f"failed: {result.error}", style="yellow"))
    for warning in result.warnings:
        console.print(Text(f"warning: {warning}", style="yellow"))
