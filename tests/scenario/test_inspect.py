"""`luosim inspect`: decodes hand-over blobs; a corrupt blob is classified, not a crash."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from luosim.abi.kho import KhoData, encode_root_fdt
from luosim.abi.luo import encode_luo_fdt
from luosim.cli import app

runner = CliRunner()


def test_kho_root_fdt(tmp_path: Path) -> None:
    f = tmp_path / "fdt"
    f.write_bytes(encode_root_fdt(0x12345000, [("LUO", 0x2000)]))
    res = runner.invoke(app, ["inspect", str(f), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["kind"] == "kho-fdt" and data["compatible"] == "kho-v2"
    assert data["subtrees"] == {"LUO": "0x2000"}


def test_luo_fdt_and_kho_data(tmp_path: Path) -> None:
    f = tmp_path / "LUO"
    f.write_bytes(encode_luo_fdt(3, 0x4000, 0x5000))
    res = runner.invoke(app, ["inspect", str(f), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["liveupdate_num"] == 3
    g = tmp_path / "kho_data"
    g.write_bytes(KhoData(0x1000, 0x200, 0x3000, 16).encode())
    res = runner.invoke(app, ["inspect", str(g), "--json"])
    assert json.loads(res.output)["kind"] == "kho-data"


def test_corrupt_blob_is_classified(tmp_path: Path) -> None:
    f = tmp_path / "fdt"
    f.write_bytes(encode_root_fdt(1, [])[:40])
    res = runner.invoke(app, ["inspect", str(f)])
    assert res.exit_code == 1
    assert "Traceback" not in res.output and ": truncated: " in res.output
    assert "offset 0x4, field fdt_header.totalsize" in res.output


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    res = runner.invoke(app, ["inspect", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such file" in res.output
    f = tmp_path / "x"
    f.write_bytes(b"\0" * 32)
    res = runner.invoke(app, ["inspect", str(f), "--as", "nonsense"])
    assert res.exit_code == 2 and "unknown kind" in res.output


def test_dump_handover_then_inspect_every_blob(tmp_path: Path) -> None:
    """`run --dump-handover` writes the kho/out layout; inspect decodes each file."""
    ex = Path(__file__).resolve().parents[2] / "examples" / "small-host.yaml"
    res = runner.invoke(app, ["run", str(ex), "--json", "--dump-handover", str(tmp_path)])
    assert res.exit_code == 0, res.output
    base = tmp_path / "kexec1"
    kinds = {"kho_data": "kho-data", "kho/out/fdt": "kho-fdt",
             "kho/out/sub_fdts/LUO": "luo-fdt"}
    for rel, kind in kinds.items():
        res = runner.invoke(app, ["inspect", str(base / rel), "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["kind"] == kind
    luo = json.loads(runner.invoke(app, ["inspect", str(base / "kho/out/sub_fdts/LUO"),
                                         "--json"]).output)
    assert luo["liveupdate_num"] == 1 and luo["flb_header_pa"] != "None"
    pci = json.loads(runner.invoke(app, ["inspect", str(base / "luo/flb/pci-v2"),
                                         "--as", "pci-v7", "--json"]).output)
    assert pci["nr_devices"] == 6  # 2 endpoints, 2 switch ports, the switch, the root port
