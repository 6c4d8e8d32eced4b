"""Profiles are kernel builds: every layer names its ABI version and source."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from luosim.cli import app
from luosim.kernel.profiles import LAYER_VERSIONS, LAYERS, PROFILES, get_profile

runner = CliRunner()


def test_every_codec_version_is_reachable_from_a_profile() -> None:
    """Issue #10: add profiles until every ABI version with a codec is reachable."""
    for layer, versions in LAYER_VERSIONS.items():
        have = {p.layer(layer) for p in PROFILES.values()}
        assert set(versions) <= have, (layer, set(versions) - have)


def test_every_present_layer_names_a_source_and_known_version() -> None:
    for p in PROFILES.values():
        for row in p.layers():
            if row["version"] is None:
                assert row["source"] is None
                continue
            assert row["version"] in LAYER_VERSIONS[str(row["layer"])], (p.name, row)
            assert row["source"], (p.name, row["layer"])


def test_mainline_profiles_have_no_pci_series() -> None:
    """Mainline LUO kernels: LUO + memfd, no PCI FLB, vfio, IOMMU or iommufd handler."""
    for name in ("mainline-7.0", "mainline-7.3", "mainline-block"):
        p = get_profile(name)
        assert [p.layer(x) for x in ("pci", "vfio", "iommu", "iommufd")] == [None] * 4
        assert p.layer("luo") and p.layer("memfd")


def test_luo_v5_kernels_write_a_blob_size_root() -> None:
    """spec kho.md "Corrections": a luo-v5 kernel with a kho-v2 root is no real build."""
    for p in PROFILES.values():
        if p.luo_abi == "luo-v5":
            assert p.kho_abi in ("kho-v3", "kho-v4"), p.name
            assert p.kexec_metadata == "v1"


def test_mainline_kernel_boots_without_pci_hooks() -> None:
    from luosim.hw.machine import Machine
    from luosim.kernel.pci.probe import NullHooks
    k = Machine(1 << 30).boot("mainline-7.3", cmdline="liveupdate=1")
    assert isinstance(k.pci.hooks, NullHooks)
    assert not k.vfio.registered and not k.iommufd_mod.registered
    assert k.memfd.compatible == "memfd-v2"


def test_profiles_cli_json_and_table() -> None:
    res = runner.invoke(app, ["profiles", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["name"] for r in rows] == list(PROFILES)
    v9 = next(r for r in rows if r["name"] == "v9")
    layers = {x["layer"]: x for x in v9["layers"]}
    assert list(layers) == list(LAYERS)
    assert layers["kho"]["version"] == "kho-v3" and "9d87d0fc" in layers["kho"]["source"]
    assert layers["pci"]["compatible"] == "pci"
    res = runner.invoke(app, ["profiles"], env={"COLUMNS": "250"})
    assert res.exit_code == 0
    assert "mainline-block" in res.output and "kho-v4" in res.output
