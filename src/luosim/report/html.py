"""``luosim report RESULT.json -o report.html``: one static page.

Reads the JSON that ``run``/``demo --json``, ``explore --json`` (also
``--compare``) and ``matrix --json`` print and renders it with inline CSS and
a few lines of inline JavaScript: no network access, no external file, so the
page can be kept as a CI artifact.  A run shows the PCI trees before and after
(moved devices marked), the blackout timeline, the invariants and the
preserved objects; an exploration its groups with their shortest plan and the
command that replays them; a matrix a grid coloured by outcome.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from luosim.report.trace import BLACKOUT_FIRST, BLACKOUT_LAST


class ReportError(ValueError):
    """The JSON is not a luosim result (one line, names the problem)."""


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d232a;
 background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;
 border-bottom:1px solid #d0d7de;padding-bottom:4px}
.sub{color:#57606a;margin-bottom:16px}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600;color:#fff}
.o-ok{background:#1a7f37}.o-refused{background:#bf8700}.o-panic{background:#8250df}
.o-unsafe{background:#cf222e}
table{border-collapse:collapse;font-size:13px;background:#fff}
td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f6}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.trees{display:flex;gap:32px;flex-wrap:wrap}
.tree{background:#fff;border:1px solid #d0d7de;padding:8px 16px;min-width:320px}
.tree ul{list-style:none;padding-left:18px;margin:0}
.tree li{font-family:ui-monospace,monospace;font-size:13px;line-height:1.6}
.preserved{color:#0969da;font-weight:600}.auto{color:#0969da}
.moved{color:#cf222e;font-weight:700}.tag{font-size:11px;margin-left:6px}
.timeline{display:flex;height:34px;border:1px solid #d0d7de;background:#fff;width:100%}
.timeline div{height:100%;min-width:3px;border-right:1px solid #fff;box-sizing:border-box}
.ph{background:#8c959f}.ph-blackout{background:#cf222e}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;
 vertical-align:middle}
.grid td{text-align:center;min-width:90px;font-weight:600;cursor:pointer}
.grid td.o-ok,.grid td.o-refused,.grid td.o-panic,.grid td.o-unsafe{color:#fff}
code,pre{font-family:ui-monospace,monospace;font-size:12px}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:8px;white-space:pre-wrap}
#why{margin-top:8px;min-height:20px;font-size:13px}
details{margin-top:8px}
"""

# A click on a matrix cell shows why; everything else is static.
JS = """
document.addEventListener('DOMContentLoaded', function () {
  var why = document.getElementById('why');
  document.querySelectorAll('.grid td[data-why]').forEach(function (td) {
    td.addEventListener('click', function () {
      why.textContent = td.dataset.pair + ': ' + td.dataset.why;
    });
  });
  document.body.dataset.ready = 'yes';
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def kind_of(data: Any) -> str:
    """run | explore | compare | matrix, from the JSON's shape (DESIGN.md)."""
    if isinstance(data, list):
        if all(isinstance(r, dict) and {"from", "to", "outcome"} <= set(r) for r in data):
            return "matrix"
        raise ReportError("a list that is not a matrix (rows need from, to, outcome)")
    if not isinstance(data, dict):
        raise ReportError(f"top level is a {type(data).__name__}, expected an object or list")
    if {"outcome", "invariants"} <= set(data):
        return "run"
    if {"summary", "groups"} <= set(data):
        return "explore"
    if {"summary_a", "summary_b", "rows"} <= set(data):
        return "compare"
    raise ReportError("not a run, explore or matrix result (keys: "
                      + ", ".join(sorted(map(str, data))[:8]) + ")")


def _badge(outcome: str) -> str:
    return f'<span class="badge o-{_e(outcome)}">{_e(outcome)}</span>'


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _tree(title: str, nodes: list[dict[str, Any]], moved: set[str], ident: str) -> str:
    names = {n["name"] for n in nodes}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for n in nodes:
        parent = n.get("parent") if n.get("parent") in names else None
        children.setdefault(parent, []).append(n)

    def branch(parent: str | None) -> str:
        items = []
        for n in children.get(parent, []):
            cls, tags = [], []
            if n.get("preserved"):
                cls.append("preserved")
                tags.append("preserved")
            elif n.get("auto"):
                cls.append("auto")
                tags.append("auto-preserved bridge")
            if n["name"] in moved:
                cls.append("moved")
                tags.append("MOVED")
            tag = "".join(f'<span class="tag">{_e(t)}</span>' for t in tags)
            items.append(f'<li class="{" ".join(cls)}" data-dev="{_e(n["name"])}">'
                         f'{_e(n["bdf"])} {_e(n["name"])} ({_e(n.get("kind", ""))}){tag}'
                         f'{branch(n["name"])}</li>')
        return f"<ul>{''.join(items)}</ul>" if items else ""

    body = branch(None) or "<p>(not reached)</p>"
    return f'<div class="tree" id="{ident}"><b>{_e(title)}</b>{body}</div>'


def _timeline(phases: list[dict[str, Any]]) -> str:
    total = sum(int(p["duration_ns"]) for p in phases) or 1
    bars, rows, t, dark = [], [], 0, False
    for p in phases:
        name, ns = str(p["phase"]), int(p["duration_ns"])
        if name.startswith(BLACKOUT_FIRST):
            dark = True
        cls = "ph-blackout" if dark else "ph"
        width = 100.0 * ns / total
        bars.append(f'<div class="{cls}" style="width:{width:.3f}%" '
                    f'title="{_e(name)}: {ns / 1e6:.3f} ms"></div>')
        rows.append((_e(name), f"{t / 1e6:.3f} ms", f"{ns / 1e6:.3f} ms",
                     "blackout" if dark else ""))
        if name == BLACKOUT_LAST:
            dark = False
        t += ns
    blackout = sum(int(p["duration_ns"]) for p, r in zip(phases, rows) if r[3])
    legend = ('<p class="legend"><span class="ph"></span>guests running'
              '<span class="ph-blackout"></span>blackout (VMs frozen): '
              f'<b id="blackout-ms">{blackout / 1e6:.3f} ms</b> of {total / 1e6:.3f} ms</p>')
    return (f'<div class="timeline" id="timeline">{"".join(bars)}</div>{legend}'
            + _table(("phase", "start", "duration", ""), rows))


def _run(data: dict[str, Any]) -> str:
    parts = []
    moved = {d["name"] for d in data.get("devices", []) if d.get("preserved")
             and d.get("bdf_after") and d.get("bdf_before") != d.get("bdf_after")
             and "name" in d}
    if data.get("pci_before") or data.get("pci_after"):
        parts.append("<h2>PCI topology</h2><div class='trees'>"
                     + _tree("before (old kernel)", data.get("pci_before", []), set(), "pci-before")
                     + _tree("after (new kernel)", data.get("pci_after", []), moved, "pci-after")
                     + "</div>")
    if data.get("devices"):
        parts.append("<h2>Devices</h2>" + _table(
            ("device", "BDF before", "BDF after", "preserved"),
            ((f'<span class="{"moved" if d.get("name") in moved else ""}">'
              f'{_e(d.get("name", "?"))}</span>', _e(d["bdf_before"] or "-"),
              _e(d["bdf_after"] or "-"), "yes" if d["preserved"] else "no")
             for d in data["devices"])))
    if data.get("phases"):
        parts.append("<h2>Blackout timeline (simulated time)</h2>" + _timeline(data["phases"]))
    parts.append("<h2>Invariants</h2>" + _table(
        ("id", "result", "detail"),
        ((_e(i["id"]), '<span class="pass">pass</span>' if i["ok"]
          else '<span class="fail">FAIL</span>', _e(i["detail"])) for i in data["invariants"]),
        "invariants"))
    if data.get("preserved_objects"):
        parts.append("<h2>Preserved objects</h2>" + _table(
            ("session", "token", "kind", "object", "state"),
            (tuple(_e(o.get(k, "")) for k in ("session", "token", "kind", "object", "state"))
             for o in data["preserved_objects"])))
    if data.get("events"):
        ev = data["events"]
        parts.append(f"<details><summary>{len(ev)} events</summary>" + _table(
            ("time", "kernel", "subsystem", "kind", "detail"),
            ((f'{int(e["time_ns"]) / 1e6:.3f} ms', _e(e["kernel"]), _e(e["subsystem"]),
              _e(e["kind"]), _e(e["detail"])) for e in ev)) + "</details>")
    return "".join(parts)


def _replay(group: dict[str, Any]) -> str:
    if group.get("trace_file"):
        return f"luosim replay {group['trace_file']}"
    flags = " ".join(f"--fault {f}" for f in group.get("shortest_plan") or [])
    return f"luosim run SCENARIO.yaml {flags}".rstrip()


def _summary(summary: dict[str, Any]) -> str:
    return _table(list(summary), [[_e(v) for v in summary.values()]], "summary")


def _explore(data: dict[str, Any]) -> str:
    rows = []
    for g in data["groups"]:
        plan = "<br>".join(_e(p) for p in g.get("shortest_plan") or []) or "(no fault)"
        rows.append((_badge(g["outcome"]), f"<code>{_e(g['signature'])}</code>",
                     _e(g["runs"]), plan, f"<code>{_e(_replay(g))}</code>"))
    return ("<h2>Summary</h2>" + _summary(data["summary"])
            + "<h2>Outcome groups</h2>"
            + _table(("outcome", "signature", "runs", "shortest plan", "replay"), rows,
                     "groups"))


def _compare(data: dict[str, Any]) -> str:
    rows = [("<br>".join(_e(p) for p in r["plan"]) or "(no fault)", _badge(r["a"]),
             _badge(r["b"])) for r in data["rows"]]
    return (f"<h2>Policy A</h2><code>{_e(data.get('policy_a'))}</code>"
            + _summary(data["summary_a"])
            + f"<h2>Policy B</h2><code>{_e(data.get('policy_b'))}</code>"
            + _summary(data["summary_b"])
            + "<h2>Plans whose outcome differs</h2>"
            + _table(("plan", "A", "B"), rows, "groups"))


def _matrix(rows: list[dict[str, Any]]) -> str:
    froms = list(dict.fromkeys(r["from"] for r in rows))
    tos = list(dict.fromkeys(r["to"] for r in rows))
    cell = {(r["from"], r["to"]): r for r in rows}
    body = []
    for f in froms:
        tds = []
        for t in tos:
            r = cell.get((f, t))
            if r is None:
                tds.append("<td>-</td>")
                continue
            tds.append(f'<td class="o-{_e(r["outcome"])}" data-pair="{_e(f)} → {_e(t)}" '
                       f'data-why="{_e(r.get("why", ""))}" title="{_e(r.get("why", ""))}">'
                       f'{_e(r["outcome"])}</td>')
        body.append(f"<tr><th>{_e(f)}</th>{''.join(tds)}</tr>")
    head = "".join(f"<th>to {_e(t)}</th>" for t in tos)
    grid = (f'<table class="grid" id="matrix"><thead><tr><th>from \\ to</th>{head}</tr>'
            f"</thead><tbody>{''.join(body)}</tbody></table><div id='why'></div>")
    detail = _table(("from", "to", "outcome", "why"),
                    ((_e(r["from"]), _e(r["to"]), _badge(r["outcome"]), _e(r.get("why", "")))
                     for r in rows))
    return "<h2>Cross-version matrix</h2>" + grid + "<h2>Why</h2>" + detail


def render_html(data: Any, title: str = "") -> str:
    """The page for ``data`` (a parsed result JSON); ReportError if it is none."""
    kind = kind_of(data)
    try:
        if kind == "run":
            body, outcome = _run(data), str(data["outcome"])
        elif kind == "explore":
            body = _explore(data)
            outcome = "unsafe" if data["summary"].get("unsafe") else "ok"
        elif kind == "compare":
            body, outcome = _compare(data), ""
        else:
            body = _matrix(data)
            worst = [r["outcome"] for r in data if r["outcome"] in ("unsafe", "panic")]
            outcome = worst[0] if worst else "ok"
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{kind} result: missing or bad field {exc}") from None
    heading = f"luosim {kind}" + (f": {title}" if title else "")
    badge = _badge(outcome) if outcome else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{_e(heading)}</title><link rel="icon" href="data:,">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style><script>{JS}</script></head>"
            f'<body><main id="luosim-report" data-kind="{kind}" data-outcome="{_e(outcome)}">'
            f"<h1>{_e(heading)} {badge}</h1>"
            f'<div class="sub">static report written by luosim; no network access</div>'
            f"{body}</main></body></html>\n")
