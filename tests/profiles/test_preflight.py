"""Preflight (no run) agrees with the matrix (runs) pair by pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luosim.cli import app
from luosim.kernel.profiles import PROFILES, get_profile
from luosim.scenario.matrix import run_matrix
from luosim.scenario.preflight import preflight, uses_of
from luosim.scenario.schema import load_scenario

EX = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


@pytest.mark.parametrize("preserve", ["all", "memory-only"])
def test_preflight_agrees_with_matrix_on_every_pair(preserve: str) -> None:
    """Issue #10: every (old, new) profile pair on a small host; devices, or RAM only."""
    sc = load_scenario(EX / "small-host.yaml")
    sc = sc.model_copy(update={"update": sc.update.model_copy(update={"preserve": preserve})})
    rows = run_matrix(sc)
    assert len(rows) == len(PROFILES) ** 2
    uses = uses_of(sc)
    seen: set[str] = set()
    for row in rows:
        v = preflight(get_profile(row["from"]), get_profile(row["to"]), uses, sc.policy)
        assert v.outcome == row["outcome"] == row["preflight"], (row, v.why)
        seen.add(v.outcome)
    # the pairs exercise more than one kind of answer
    assert {"ok", "unsafe"} <= seen
    if preserve == "all":
        assert "refused" in seen  # mainline kernels cannot preserve vfio devices


def test_preflight_layers_for_known_pairs() -> None:
    all_layers = frozenset(("kho", "luo", "memfd", "pci", "vfio", "iommu", "iommufd"))
    by = {lv.layer: lv for lv in
          preflight(get_profile("v7"), get_profile("v9"), all_layers).layers}
    assert by["kho"].status == "lost" and "kho_populate" in by["kho"].detail
    assert by["luo"].status == "lost"
    by = {lv.layer: lv for lv in
          preflight(get_profile("v6"), get_profile("v7"), all_layers).layers}
    assert by["kho"].status == "ok" and by["luo"].status == "ok"
    assert by["pci"].status == "lost" and "ENOENT" in by["pci"].detail
    v = preflight(get_profile("v9"), get_profile("v9"), all_layers)
    assert v.outcome == "ok"
    assert {lv.layer: lv.status for lv in v.layers}["kexec-metadata"] == "ok"
    v = preflight(get_profile("mainline-7.3"), get_profile("v9"), all_layers)
    assert v.outcome == "refused" and v.why.startswith("iommufd:")


def test_preflight_luo_panic_when_only_luo_differs() -> None:
    """LUO layer alone (a test-only build: v9 on v6's root): luo_restore_fail panics."""
    from dataclasses import replace
    odd = replace(get_profile("v9"), kho_abi="kho-v2")
    v = preflight(get_profile("v6"), odd, frozenset(("kho", "luo", "memfd")))
    assert v.outcome == "panic" and "luo_restore_fail" in v.why


def test_same_compatible_other_layout_follows_the_policy() -> None:
    """pci.md §3.1: v6 built with "pci-v2" read by v7 ("pci-v2", block set): decode fails."""
    v6 = get_profile("v6", {"pci.v6_compat": "pci-v2"})
    uses = frozenset(("kho", "luo", "memfd", "pci", "vfio", "iommu", "iommufd"))
    assert preflight(v6, get_profile("v7"), uses).outcome == "panic"
    assert preflight(v6, get_profile("v7"), uses,
                     {"pci.retrieve_failure": "warn"}).outcome == "unsafe"


def test_preflight_cli(tmp_path: Path) -> None:
    res = runner.invoke(app, ["preflight", "v7", "v9", "--json"])
    assert res.exit_code == 1, res.output
    data = json.loads(res.output)
    assert data["outcome"] == "unsafe" and data["layers"][0]["layer"] == "kho"
    res = runner.invoke(app, ["preflight", "v9", "v9", "--scenario",
                              str(EX / "small-host.yaml")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "expected outcome: ok" in res.output
    res = runner.invoke(app, ["preflight", "v7", "v99"])
    assert res.exit_code == 2
    assert "unknown kernel profile 'v99'" in res.output


def test_memfd_mismatch_is_refused_at_retrieve(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test-only build (v9 with memfd-v1): no handler for the other memfd version,
    session deserialization fails with EIO; preflight and the run agree."""
    from dataclasses import replace

    from luosim.scenario.runner import run
    from luosim.scenario.schema import KernelSpec, KernelsSpec
    monkeypatch.setitem(PROFILES, "v9-memfd1",
                        replace(PROFILES["v9"], name="v9-memfd1", memfd_abi="memfd-v1"))
    sc = load_scenario(EX / "small-host.yaml")
    for old, new in (("v9", "v9-memfd1"), ("v9-memfd1", "v9")):
        kernels = KernelsSpec(before=KernelSpec(profile=old), after=[KernelSpec(profile=new)])
        result = run(sc.model_copy(update={"kernels": kernels}))
        v = preflight(get_profile(old), get_profile(new), uses_of(sc), sc.policy)
        assert result.outcome == v.outcome == "refused", (result.outcome, v.why)
        assert "EIO" in str(result.error) and v.why.startswith("memfd:")
