"""Consecutive live updates (issue #11 item 2): every session retrieved, finished and
preserved again each time, DMA translated all along, liveupdate number +1 per update;
phase-1 kernels (v7) still refuse the second update."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from luosim.hw.dma import OUTCOME_TRANSLATED, DmaController
from luosim.kernel.profiles import PROFILES
from luosim.scenario.runner import Run
from luosim.scenario.schema import KernelSpec, load_scenario

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "five-updates.yaml"


def test_five_updates_keep_dma_running_and_finish_every_session() -> None:
    sc = load_scenario(EXAMPLE)
    assert len(sc.kernels.after) == 5
    run = Run(sc, (), None, None)
    result = run.execute()
    assert result.outcome == "ok", result.error or result.panic or result.broken
    assert run.ctx.liveupdate_numbers == [0, 1, 2, 3, 4, 5]
    finished = [e for e in result.events if e["kind"] == "finish"]
    assert len(finished) == 2 * 5  # two sessions, each finished after every update
    restored = [e for e in result.events if e["kind"] == "restore-iommu"]
    assert len(restored) == 2 * 5
    assert not [e for e in result.events if e["kind"] == "leave-unfinished"]
    # every device wrote translated DMA after the last kexec, and nothing faulted
    ctl = DmaController.of(run.machine)
    last_jump = max(e["time_ns"] for e in result.events if e["kind"] == "jump")
    for dev in ("dsa0", "dsa1", "nvme0"):
        recs = ctl.records_for(dev)
        assert recs and not [r for r in recs if r.is_fault], dev
        assert any(r.outcome == OUTCOME_TRANSLATED and r.last_time_ns > last_jump
                   for r in recs), dev
    # the last kernel holds the devices in HWPTs of its own iommufds
    k = run.kernel
    assert k is not None and k.liveupdate.liveupdate_number_in == 5
    for dev in ("dsa0", "dsa1", "nvme0"):
        pdev = k.pci.find_hw(dev)
        assert pdev is not None and not k.pci_lu.is_incoming(pdev)
        grp = k.iommu.device(pdev).group
        assert type(grp.owner).__name__ == "IommufdFile" and not grp.domain.restored


def test_phase1_kernels_refuse_the_second_update() -> None:
    sc = load_scenario(EXAMPLE)
    kernels = sc.kernels.model_copy(update={
        "before": KernelSpec(profile="v7"),
        "after": [KernelSpec(profile="v7"), KernelSpec(profile="v7")]})
    result = Run(sc.model_copy(update={"kernels": kernels}), (), None, None).execute()
    assert result.outcome == "refused"
    assert result.failed_step == "carry forward"
    assert "EBUSY" in (result.error or "")
    assert [e for e in result.events if e["kind"] == "leave-unfinished"]


def test_multi_hop_mixed_profiles_v9_v9_then_v7_downgrade_fails_loudly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """v9 -> v9 -> v9 ends ok. The hop back to v7 crosses the KHO root ABI first
    (kho-v3 -> kho-v2): v7's kho_populate() refuses the root and boots cold, so the
    update is unsafe (liveupdate number back to 0). On a test-only v7 build that
    reads kho-v3 the hop reaches the LUO ABI (luo-v5 -> luo-v1): a panic, never a
    silent decode."""
    sc = load_scenario(EXAMPLE)
    ok = sc.kernels.model_copy(update={"after": [KernelSpec(profile="v9")] * 2})
    assert Run(sc.model_copy(update={"kernels": ok}), (), None, None).execute().outcome == "ok"
    down = sc.kernels.model_copy(update={"after": [KernelSpec(profile="v9"),
                                                   KernelSpec(profile="v7")]})
    result = Run(sc.model_copy(update={"kernels": down}), (), None, None).execute()
    assert result.outcome == "unsafe", result.error or result.panic
    assert any(i.id == "LUO-2" and "-> 0" in i.detail for i in result.broken)
    monkeypatch.setitem(PROFILES, "v7-kho3", replace(PROFILES["v7"], name="v7-kho3",
                                                     kho_abi="kho-v3"))
    down = sc.kernels.model_copy(update={"after": [KernelSpec(profile="v9"),
                                                   KernelSpec(profile="v7-kho3")]})
    result = Run(sc.model_copy(update={"kernels": down}), (), None, None).execute()
    assert result.outcome == "panic", result.error or result.broken


def test_matrix_covers_multi_hop_paths() -> None:
    import json

    from typer.testing import CliRunner

    from luosim.cli import app
    small = EXAMPLE.parent / "small-host.yaml"
    res = CliRunner().invoke(app, ["matrix", str(small), "--hops", "2", "--json",
                                   "--profile", "v6", "--profile", "v7", "--profile", "v9"])
    assert res.exit_code == 1, res.output  # some paths end unsafe
    rows = json.loads(res.output)
    assert len(rows) == 27  # every A -> B -> C over v6, v7, v9
    by_path = {(r["from"], r["via"], r["to"]): r for r in rows}
    assert by_path[("v9", "v9", "v9")]["outcome"] == "ok"
    # phase 1 cannot finish the iommufd session, so the second update is refused
    assert by_path[("v7", "v7", "v7")]["outcome"] == "refused"
    assert "carry forward" in by_path[("v7", "v7", "v7")]["why"]
    # kho-v3 -> kho-v2: v7 refuses v9's KHO root and boots cold (prof10)
    assert by_path[("v9", "v7", "v7")]["outcome"] == "unsafe"
    assert "LUO-2" in by_path[("v9", "v7", "v7")]["why"]


def test_matrix_profile_subset_and_unknown_profile() -> None:
    from typer.testing import CliRunner

    from luosim.cli import app
    small = EXAMPLE.parent / "small-host.yaml"
    res = CliRunner().invoke(app, ["matrix", str(small), "--format", "json",
                                   "--profile", "v9"])
    assert res.exit_code == 0, res.output
    assert '"from": "v9"' in res.output and '"from": "v6"' not in res.output
    res = CliRunner().invoke(app, ["matrix", str(small), "--profile", "v99"])
    assert res.exit_code == 2 and "v99" in res.output and "Traceback" not in res.output


def test_scenario_kernel_config_without_iommu_liveupdate(tmp_path: Path) -> None:
    """``kernels.*.config``: without CONFIG_IOMMU_LIVEUPDATE the agent preserves the
    devices alone and the VMM gives them a new iommufd after each kexec, so every
    session finishes and three updates in a row end ok."""
    import yaml
    raw = yaml.safe_load((EXAMPLE.parent / "small-host.yaml").read_text())
    raw.pop("expect")
    cfg = {"CONFIG_IOMMU_LIVEUPDATE": False}
    raw["kernels"] = {"before": {"profile": "v9", "config": cfg},
                      "after": [{"profile": "v9", "config": cfg}] * 3}
    raw["policy"] = {"dma.mode": "reset-at-freeze"}
    p = tmp_path / "noiommu.yaml"
    p.write_text(yaml.safe_dump(raw))
    run = Run(load_scenario(p), (), None, None)
    result = run.execute()
    assert result.outcome == "ok", result.error or result.broken
    assert not [o for o in result.preserved_objects if o["kind"] == "iommufd"]
    assert {o["state"] for o in result.preserved_objects} == {"finished"}
    assert run.ctx.liveupdate_numbers == [0, 1, 2, 3]


def test_scenario_kernel_config_unknown_key_is_bad_input(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from luosim.cli import app
    text = (EXAMPLE.parent / "small-host.yaml").read_text().replace(
        'before: {profile: v7, cmdline: ""}',
        'before: {profile: v7, cmdline: "", config: {CONFIG_NOPE: true}}')
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    res = CliRunner().invoke(app, ["run", str(p)])
    assert res.exit_code == 2
    assert "CONFIG_NOPE" in res.output and "Traceback" not in res.output
