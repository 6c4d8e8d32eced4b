"""`luosim inspect DIR`: a whole --dump-handover folder as one tree."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from luosim.cli import app
from luosim.inspect.tree import _is_pointer

runner = CliRunner()
EX = Path(__file__).resolve().parents[2] / "examples"


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for c in node["children"]:
        yield from nodes(c)


def leaves(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from leaves(v, key)
    else:
        yield key, value


@pytest.fixture(scope="module", params=["v6", "v7", "v9"])
def dump(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[str, Path]:
    profile = request.param
    text = (EX / "small-host.yaml").read_text()
    text = re.sub(r"profile: v\d", f"profile: {profile}", text)
    src = tmp_path_factory.mktemp(profile) / "host.yaml"
    src.write_text(text)
    out = src.parent / "dump"
    res = runner.invoke(app, ["run", str(src), "--json", "--dump-handover", str(out)])
    assert res.exit_code == 0, res.output
    return profile, out


def test_every_dumped_file_is_decoded(dump: tuple[str, Path]) -> None:
    profile, out = dump
    res = runner.invoke(app, ["inspect", str(out), "--json"])
    assert res.exit_code == 0, res.output
    tree = json.loads(res.output)
    (kexec,) = tree["children"]
    assert kexec["path"] == "kexec1"
    all_nodes = list(nodes(tree))
    # nothing left over: each file the dump wrote has a decoder, none failed
    assert not [f for n in all_nodes for f in n["findings"]
                if "not a file luosim's dump writes" in f or "cannot decode" in f]
    paths = {n["path"] for n in all_nodes}
    files = {p.relative_to(out / "kexec1").as_posix() for p in (out / "kexec1").rglob("*")
             if p.is_file()}
    mem_map = {f for f in files if f.startswith("kho/out/mem_map/")}
    assert mem_map and (files - mem_map) <= paths
    by_path = {n["path"]: n for n in all_nodes}
    assert {"kho/out/scratch", "luo/flb-block", "luo/sessions"} <= paths
    pci = {"v6": "luo/flb/pci-v3", "v7": "luo/flb/pci-v2", "v9": "luo/flb/pci"}[profile]
    assert by_path[pci]["abi"] == pci.rsplit("/", 1)[1]
    assert any("read by:" in f for f in by_path[pci]["findings"])
    assert by_path["luo/flb/iommu-liveupdate"]["fields"]["iommu_flb_ser"]["version"] == 1
    luo = by_path["kho/out/sub_fdts/LUO"]
    assert luo["abi"] == ("luo-v5" if profile == "v9" else "luo-v1")
    assert by_path["kho/out/fdt"]["abi"] == ("kho-v3" if profile == "v9" else "kho-v2")
    if profile == "v9":  # kho-v3 + kexec-metadata (prof10), the first kexec of the run
        meta = by_path["kho/out/sub_fdts/kexec-metadata"]
        assert meta["fields"]["kexec_count"] == 1 and not meta["findings"]
    # the IOMMU records are read with the layout the FLB compatible names (22fa8f30:
    # 72-byte device with the iommufd's LUO token as dma_owner_token)
    (dev0, *_rest) = by_path["luo/flb/iommu-liveupdate.d/devices"]["fields"]["objects"]
    assert "dma_owner_token" in dev0
    # the memory map summary covers the preserved blocks
    mm = by_path["kho/out/mem_map"]["fields"]
    assert mm["blocks"] == sum(mm["blocks_per_order"].values()) > 0
    assert mm["radix_nodes"] == len(mem_map)
    # sessions -> files -> decoded file data: a vfio device and a memfd
    files_nodes = [n for n in all_nodes if n["kind"].startswith("file token")]
    vfio = [n for n in files_nodes if n["abi"] == "vfio-pci-v1"]
    assert vfio and all(re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]",
                                     n["fields"]["vfio_pci_core_device_ser"]["device"])
                        for n in vfio)
    assert any("memfd_luo_ser" in n["fields"] for n in files_nodes)
    # addresses in hex everywhere
    for n in all_nodes:
        for key, value in leaves(n["fields"]):
            if _is_pointer(key):
                assert isinstance(value, str) and value.startswith("0x"), (n["path"], key)


def test_rich_tree_and_one_kexec_folder(dump: tuple[str, Path]) -> None:
    _profile, out = dump
    res = runner.invoke(app, ["inspect", str(out / "kexec1")])
    assert res.exit_code == 0, res.output
    assert "kho/out/fdt" in res.output and "luo/flb-block" in res.output
    assert re.search(r"preserved-memory-map = 0x[0-9a-f]+", res.output)


def test_each_dumped_file_auto_detected_alone(dump: tuple[str, Path]) -> None:
    """`inspect FILE` without --as: blobs without a magic are known by their path."""
    _profile, out = dump
    base = out / "kexec1"
    for f in sorted(p for p in base.rglob("*") if p.is_file()):
        res = runner.invoke(app, ["inspect", str(f), "--json"])
        assert res.exit_code == 0, (f, res.output)
        doc = json.loads(res.output)
        rel = f.relative_to(base).as_posix()
        if "path" in doc:  # decoded through the dump tree
            assert doc["path"] == ("kho/out/mem_map" if rel.startswith("kho/out/mem_map/")
                                   else rel)
            assert not [x for x in doc["findings"] if "cannot decode" in x]
        elif rel == "kho/out/sub_fdts/kexec-metadata":  # v9 (prof10): known by its size
            assert doc["kind"] == "kexec-metadata" and doc["kexec_count"] == 1
        else:
            assert rel in ("kho_data", "kho/out/fdt", "kho/out/sub_fdts/LUO")


def test_findings_for_foreign_and_corrupt_files(tmp_path: Path) -> None:
    out = tmp_path / "dump"
    res = runner.invoke(app, ["run", str(EX / "small-host.yaml"), "--json",
                              "--dump-handover", str(out)])
    assert res.exit_code == 0
    base = out / "kexec1"
    (base / "luo" / "stray").write_bytes(b"hello")
    block = bytearray((base / "luo/flb-block").read_bytes())
    block[8:16] = (999).to_bytes(8, "little")  # count above LUO_FLB_MAX
    (base / "luo/flb-block").write_bytes(bytes(block))
    res = runner.invoke(app, ["inspect", str(out), "--json"])
    assert res.exit_code == 0, res.output
    findings = [f for n in nodes(json.loads(res.output)) for f in n["findings"]]
    assert any(f.startswith("luo/stray: not a file") for f in findings)
    assert any("cannot decode" in f and "LUO_FLB_MAX" in f for f in findings)


def test_not_a_dump_folder(tmp_path: Path) -> None:
    res = runner.invoke(app, ["inspect", str(tmp_path)])
    assert res.exit_code == 2
    assert "not a --dump-handover folder" in res.output and "Traceback" not in res.output
