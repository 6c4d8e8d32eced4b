"""The CLI's machine-readable surfaces (DESIGN.md "CLI JSON shapes") and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from luosim.cli import app
from luosim.kernel.profiles import PROFILES

runner = CliRunner()
EX = Path(__file__).resolve().parents[2] / "examples"


def test_run_json_shape_and_exit_0() -> None:
    res = runner.invoke(app, ["run", str(EX / "small-host.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert set(data) >= {"outcome", "panic", "invariants", "events", "devices"}
    assert data["outcome"] == "ok" and data["panic"] is None
    assert all(set(i) == {"id", "ok", "detail"} for i in data["invariants"])
    assert all(set(d) >= {"bdf_before", "bdf_after", "preserved"} for d in data["devices"])
    assert {"seq", "time_ns", "step", "kernel", "subsystem", "kind", "detail"} <= \
        set(data["events"][0])


def test_run_with_a_fault_prints_the_panic_and_exits_1() -> None:
    res = runner.invoke(app, ["run", str(EX / "small-host.yaml"),
                              "--fault", "pci.flb.retrieve#1=ENOMEM"])
    assert res.exit_code == 1
    assert "outcome: panic" in res.output
    assert "Failed to retrieve incoming FLB data (-ENOMEM)" in res.output


def test_faults_catalog() -> None:
    res = runner.invoke(app, ["faults", "--json"])
    assert res.exit_code == 0
    rows = {r["point"]: r for r in json.loads(res.output)}
    assert "ENOMEM" in rows["pci.flb.retrieve"]["effects"]
    assert rows["hw.device_missing"]["effects"] == ["corrupt:unplugged"]
    assert len(rows) >= 25


def test_matrix_small_host() -> None:
    res = runner.invoke(app, ["matrix", str(EX / "small-host.yaml"), "--json"])
    assert res.exit_code == 1, res.output  # unsafe and panicking pairs (issue 14)
    rows = {(r["from"], r["to"]): r for r in json.loads(res.output)}
    assert len(rows) == len(PROFILES) ** 2
    for p in ("v6", "v7", "v9"):
        assert rows[(p, p)]["outcome"] == "ok"
    # kho-v2 root read by a kho-v3 kernel: kho_populate() refuses it, no hand-over at all
    assert rows[("v7", "v9")]["outcome"] == "unsafe"
    assert rows[("v6", "v7")]["outcome"] == "unsafe"  # pci-v3 vs pci-v2: ENOENT, renumbered
