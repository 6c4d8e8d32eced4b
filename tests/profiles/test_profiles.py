"""Profiles are kernel builds: every layer names its ABI version and source."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from luosim.cli import app
from luosim.kernel.profiles import LAYER_VERSIONS, LAYERS, PROFILES, get_profile

runner = CliRunner()


def _codec_versions() -> dict[str, set[str]]:
    """Every version luosim can write, read straight off the codec registries (not
    off profiles.LAYER_VERSIONS), so a new codec without a profile fails below."""
    from luosim.abi import iommu, kho, luo, memfd, pci, vfio
    from luosim.abi.kexec_metadata import KHO_KEXEC_METADATA_VERSION
    from luosim.abi.memblock import MEMBLOCK_KHO_NODE_COMPATIBLE
    from luosim.abi.versions import ABI_VERSIONS
    pci_versions = {name.removeprefix("PciSer").lower() for name in dir(pci)
                    if name.startswith("PciSerV")}
    found = {
        "kho": set(kho.KHO_ROOT_VERSIONS),
        "luo": {luo.LUO_FDT_COMPATIBLE, luo.LUO_V5_COMPATIBLE},
        "memfd": {getattr(memfd, n) for n in dir(memfd) if n.startswith("MEMFD_LUO_FH_COMPAT")},
        "pci": pci_versions,
        "vfio": set(vfio.VFIO_LAYOUTS),
        "iommu": set(iommu.IOMMU_ABIS),
        "iommufd": {iommu.IOMMUFD_LUO_FH_COMPATIBLE},
        "kexec-metadata": {f"v{KHO_KEXEC_METADATA_VERSION}"},
        "memblock": {MEMBLOCK_KHO_NODE_COMPATIBLE},
    }
    assert set(found) == set(LAYERS) == set(ABI_VERSIONS)
    for layer, versions in found.items():  # the sources table covers every codec
        assert versions == set(ABI_VERSIONS[layer]) == set(LAYER_VERSIONS[layer]), layer
    return found


def test_every_codec_version_is_reachable_from_a_profile() -> None:
    """Issue #10: add profiles until every ABI version with a codec is reachable."""
    found = _codec_versions()
    assert found["pci"] == {"v6", "v7", "v9"} and len(found["vfio"]) == 3
    for layer, versions in found.items():
        have = {p.layer(layer) for p in PROFILES.values()}
        assert versions <= have, (layer, versions - have)


def test_layer_sources_are_the_codecs_own() -> None:
    """One source of truth: a profile cites what its codec declares it follows."""
    from luosim.abi.iommu import IOMMU_ABIS
    from luosim.abi.vfio import VFIO_LAYOUTS
    for p in PROFILES.values():
        if p.iommu_abi is not None:
            assert p.source("iommu") == IOMMU_ABIS[p.iommu_abi].source
        if p.vfio_abi is not None:
            assert p.source("vfio") == VFIO_LAYOUTS[p.vfio_abi].SOURCE
            assert p.compatible("vfio") == VFIO_LAYOUTS[p.vfio_abi].COMPATIBLE
    # "iommu-liveupdate" writes pran005 22fa8f30, not samikhawaja 07a49313 (decode-only)
    assert "pran005/linux@22fa8f30" in str(get_profile("v9").source("iommu"))
    assert "anolis-cloud-kernel@5a52741a" in str(get_profile("anolis-iommu-v3").source("vfio"))
    assert "d835969e" in str(get_profile("iommu-v1").source("vfio"))
    assert "iommufd.h" in str(get_profile("v9").source("iommufd"))


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


def test_vfio_and_iommu_layouts_follow_the_layer_versions() -> None:
    """The kernel picks record layouts by layer version.  Expected sizes and token
    offsets from the headers: anolis-cloud-kernel 5a52741a vfio_pci.h {u32 domain; u16
    bdf; u8 reset_works; u32 token} __packed = 11 B, token @7; samikhawaja d835969e
    {u16 bdf; u16 domain; u8 reset_works} + the IOMMU v1 u32 token = 9 B, token @5;
    VFIO v5 {u32 domain; u16 bdf} = 6 B, no token."""
    from luosim.hw.machine import Machine
    want = {"anolis-iommu-v3": ("vfio-pci-v2", 11, 7), "iommu-v1": ("vfio-pci-v1", 9, 5),
            "v9": ("vfio-pci-v1", 6, None)}
    for name, (compat, size, token_at) in want.items():
        k = Machine(1 << 30).boot(name, cmdline="liveupdate=1")
        layout = k.vfio.handler.layout
        assert (k.vfio.handler.compatible, layout.SIZE) == (compat, size), name
        assert layout.OFFSETS.get("iommufd_ser.token") == token_at
        assert k.iommu.flb.abi.compatible == k.profile.iommu_abi


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
