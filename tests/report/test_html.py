"""`luosim report`: a static page for run, explore and matrix results, checked
in headless Chromium: no console message, JavaScript ran, key elements are
there, and a screenshot is taken (kept in tests/report/screenshots/ when
LUOSIM_KEEP_SCREENSHOTS is set)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from luosim.cli import app
from luosim.report.html import ReportError, kind_of, render_html
from tests.report.browser import load

runner = CliRunner()
EX = Path(__file__).resolve().parents[2] / "examples"
KEEP = Path(__file__).with_name("screenshots")


def _shot(tmp_path: Path, name: str) -> Path:
    if os.environ.get("LUOSIM_KEEP_SCREENSHOTS"):
        KEEP.mkdir(exist_ok=True)
        return KEEP / name
    return tmp_path / name


def _report(tmp_path: Path, data: object, name: str) -> Path:
    src = tmp_path / f"{name}.json"
    src.write_text(json.dumps(data))
    out = tmp_path / f"{name}.html"
    res = runner.invoke(app, ["report", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    # self-contained: no URL, no external script/style/image
    assert not re.search(r"https?://|//cdn|<script[^>]+src=|<link[^>]+stylesheet", page)
    return out


def test_run_report_in_chromium(tmp_path: Path) -> None:
    res = runner.invoke(app, ["run", str(EX / "cross-version-v6-v7.yaml"), "--json"])
    data = json.loads(res.output)
    assert data["outcome"] == "unsafe"
    moved = [d["name"] for d in data["devices"]
             if d["preserved"] and d["bdf_after"] and d["bdf_after"] != d["bdf_before"]]
    assert moved, "the cross-version example renumbers a preserved device"
    page = load(_report(tmp_path, data, "run"), _shot(tmp_path, "run.png"))
    assert page.console == []
    dom = page.dom
    assert 'data-ready="yes"' in dom  # the inline script ran
    assert 'data-kind="run"' in dom and 'data-outcome="unsafe"' in dom
    for ident in ("pci-before", "pci-after", "timeline", "blackout-ms"):
        assert f'id="{ident}"' in dom
    after = dom[dom.index('id="pci-after"'):]
    for name in moved:
        assert re.search(rf'<li class="[^"]*moved[^"]*" data-dev="{name}"', after), name
    assert dom.count('class="fail"') == sum(not i["ok"] for i in data["invariants"]) > 0
    assert page.size == (1280, 1600)
    assert len(page.png) > 20_000  # a rendered page, not a blank one


def test_matrix_report_in_chromium(tmp_path: Path) -> None:
    res = runner.invoke(app, ["matrix", str(EX / "small-host.yaml"), "--json"])
    rows = json.loads(res.output)
    page = load(_report(tmp_path, rows, "matrix"))
    assert page.console == []
    cells = re.findall(r'<td class="o-(\w+)" data-pair="([\w.-]+) → ([\w.-]+)"', page.dom)
    assert sorted((f, t, o) for o, f, t in cells) == sorted(
        (r["from"], r["to"], r["outcome"]) for r in rows)


def test_explore_report_in_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import luosim.explore.cli as ecli
    from tests.explore import toy
    monkeypatch.setenv(ecli.BACKEND_ENV, "tests.explore.toy")
    toy.register()  # the toy's fault points, as tests/explore/conftest.py does
    try:
        _explore_report(tmp_path, ecli, toy)
    finally:
        toy.unregister()


def _explore_report(tmp_path: Path, ecli: Any, toy: Any) -> None:
    scen = tmp_path / "toy.json"
    scen.write_text(json.dumps(toy.SCENARIO))
    res = runner.invoke(ecli.app, ["explore", str(scen), "--depth", "2", "--json", "--traces",
                                   str(tmp_path / "traces")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    unsafe = [g for g in data["groups"] if g["outcome"] == "unsafe"]
    assert unsafe and all(Path(g["trace_file"]).is_file() for g in unsafe)
    page = load(_report(tmp_path, data, "explore"))
    assert page.console == []
    groups = page.dom[page.dom.index('class="groups"'):]
    assert groups.count("<tr>") == 1 + len(data["groups"])  # the header row, one per group
    for g in unsafe:
        assert f"luosim replay {g['trace_file']}" in page.dom


def test_console_errors_are_caught(tmp_path: Path) -> None:
    """The console capture itself: a page that logs and throws is seen as such."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><head><link rel='icon' href='data:,'><script>"
                   "console.error('boom'); nosuch();</script></head><body>x</body></html>")
    page = load(bad)
    assert any("boom" in m for m in page.console)
    assert any("Uncaught ReferenceError" in m for m in page.console)


def test_report_bad_input_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text("{nope")
    res = runner.invoke(app, ["report", str(f), "-o", str(tmp_path / "o.html")])
    assert res.exit_code == 2 and "not JSON" in res.output and "Traceback" not in res.output
    f.write_text(json.dumps({"hello": 1}))
    res = runner.invoke(app, ["report", str(f)])
    assert res.exit_code == 2 and "not a run, explore or matrix result" in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "cannot read" in res.output
    with pytest.raises(ReportError):
        render_html({"outcome": "ok", "invariants": [{"id": 1}]})
    assert kind_of([{"from": "v6", "to": "v7", "outcome": "ok"}]) == "matrix"
