"""`--format ktap` (KTAP v1 as kselftest prints it), `--version`, and the
matrix's exit code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luosim.cli import app
from luosim.kernel.profiles import PROFILES
from luosim.report.ktap import ktap

runner = CliRunner()
EX = Path(__file__).resolve().parents[2] / "examples"
RESULT = re.compile(r"^(ok|not ok) (\d+) - ([^#]+?)(?: # (.+))?$")


def parse_ktap(text: str) -> list[tuple[bool, int, str, str | None]]:
    """Strict reader of the subset we print: header, plan, results, diagnostics."""
    lines = text.splitlines()
    assert lines[0] == "KTAP version 1"
    plans = [ln for ln in lines if re.fullmatch(r"1\.\.\d+", ln)]
    assert len(plans) == 1 and lines[1] == plans[0]  # the plan follows the version line
    results = []
    for ln in lines[1:]:
        if ln.startswith("# ") or ln == plans[0]:
            continue
        m = RESULT.match(ln)
        assert m, f"not a KTAP line: {ln!r}"
        results.append((m.group(1) == "ok", int(m.group(2)), m.group(3), m.group(4)))
    assert [n for _ok, n, _name, _r in results] == list(range(1, int(plans[0][3:]) + 1))
    return results


def test_ktap_writer() -> None:
    text = ktap([("a", True, ""), ("b # c", False, "it broke\nhere")], ["hello"])
    assert text == ("KTAP version 1\n1..2\n# hello\nok 1 - a\n"
                    "not ok 2 - b c # it broke here\n")
    assert parse_ktap(text)[1] == (False, 2, "b c", "it broke here")


def test_matrix_ktap_and_exit_code() -> None:
    res = runner.invoke(app, ["matrix", str(EX / "small-host.yaml"), "--format", "ktap"])
    assert res.exit_code == 1  # v6->v7 and v7->v9 are unsafe
    results = parse_ktap(res.output)
    assert len(results) == len(PROFILES) ** 2
    by_name = {name: (ok, reason) for ok, _n, name, reason in results}
    assert by_name["v7 to v7"] == (True, None)
    # kho-v2 -> kho-v3: v9 refuses v7's KHO root and boots cold (prof10)
    ok, reason = by_name["v7 to v9"]
    assert not ok and reason is not None and reason.startswith("unsafe: LUO-2")
    assert by_name["v6 to v7"][1].startswith("unsafe: PCI-1")  # type: ignore[union-attr]
    # no iommufd live update in a mainline build: the VMM's preserve is refused
    ok, reason = by_name["mainline-7.3 to mainline-7.3"]
    assert not ok and reason is not None and reason.startswith("refused: preserve: ENOENT")


def test_matrix_exit_0_unless_unsafe_or_panic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Canned rows: refused is not a failure of the pair, a panic is (the real exit-0
    run, ``--profile v9``, is in tests/vfio_iommu/test_many_updates.py)."""
    import luosim.scenario.matrix as matrix
    rows = [{"from": "v6", "to": "v6", "outcome": "ok", "why": "-"},
            {"from": "v6", "to": "v7", "outcome": "refused", "why": "EBUSY"}]
    monkeypatch.setattr(matrix, "run_matrix", lambda *_a: rows)
    res = runner.invoke(app, ["matrix", str(EX / "small-host.yaml"), "--format", "ktap"])
    assert res.exit_code == 0, res.output
    assert [r[0] for r in parse_ktap(res.output)] == [True, False]
    rows.append({"from": "v7", "to": "v9", "outcome": "panic", "why": "x"})
    assert runner.invoke(app, ["matrix", str(EX / "small-host.yaml")]).exit_code == 1


def test_run_ktap_ok_and_not_ok() -> None:
    res = runner.invoke(app, ["run", str(EX / "small-host.yaml"), "--format", "ktap"])
    assert res.exit_code == 0
    results = parse_ktap(res.output)
    assert all(ok for ok, *_ in results)
    assert results[-1][2] == "live update small-host.yaml"
    res = runner.invoke(app, ["run", str(EX / "small-host.yaml"), "--format", "ktap",
                              "--fault", "pci.flb.retrieve#1=ENOMEM"])
    assert res.exit_code == 1
    last = parse_ktap(res.output)[-1]
    assert not last[0] and last[3] is not None and last[3].startswith(
        "panic: Failed to retrieve incoming FLB data (-ENOMEM)")


def test_bad_format_and_version() -> None:
    res = runner.invoke(app, ["run", str(EX / "small-host.yaml"), "--format", "tap"])
    assert res.exit_code == 2 and "--format 'tap'" in res.output
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and re.fullmatch(r"luosim \S+\n", res.output)
