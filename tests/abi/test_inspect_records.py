"""`luosim inspect --as KIND` decodes every IOMMU and vfio-pci record layout.

Input bytes are written by hand from the header figures (cited per case), not
by luosim's encoders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luosim.cli import app
from luosim.inspect.decode import RECORDS, decode_blob

runner = CliRunner()


def h(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts))


HDR1 = "01000000" "00000000"  # iommu_hdr_ser {ref_count 1, flags 0}

CASES: list[tuple[str, bytes, dict[str, object]]] = [
    # samikhawaja/linux ef754267 iommu.h: domain 37 B, sign_extend bit @28, restored @29
    ("iommu-domain", h(HDR1, "0000040000000000", "0300000000000000", "30000000", "01",
                       "0000000000000000"),
     {"top_table_phys": "0x40000", "top_level": 3, "vasz": 48, "sign_extend": True,
      "size": 37}),
    # pran005/linux 22fa8f30: u8 sign_extend, 3 pad, restored_domain @32
    ("iommu-domain-pran", h(HDR1, "0000040000000000", "0300000000000000", "30000000", "00",
                            "000000", "0800000000000000"),
     {"sign_extend": False, "restored_domain": "0x8", "size": 40}),
    # ef754267 device: devid 0x300, seg 0, attachment 5, domain/iommu phys, pasid, max_pasid
    ("iommu-device", h(HDR1, "00030000", "00000000", "0500000000000000", "0010000000000000",
                       "0020000000000000", "0000000000000000", "0000000000000000"),
     {"devid": 0x300, "attachment_id": 5, "domain_phys": "0x1000", "iommu_phys": "0x2000"}),
    # 22fa8f30 device: dma_owner_token @16
    ("iommu-device-pran", h(HDR1, "00030000", "00000000", "0900000000000000",
                            "0500000000000000", "0010000000000000", "0020000000000000",
                            "00" * 24),
     {"dma_owner_token": 9, "attachment_id": 5, "size": 72}),
    # 07a49313 generic device, 40 B
    ("iommu-device-generic", h(HDR1, "00030000", "00000000", "0500000000000000",
                               "0010000000000000", "0020000000000000"), {"devid": 0x300}),
    # ef754267 hw: token, type IOMMU_INTEL, intel{restored, pad, phys_addr, root, bitmap[8]}
    ("iommu-hw", h(HDR1, "0000d9fe00000000", "0100000000000000", "01", "00" * 7,
                   "0000d9fe00000000", "0000080000000000", "0100000000000000", "00" * 56),
     {"type": 1, "restored": 1, "reg_phys": "0xfed90000", "root_table": "0x80000"}),
    ("iommu-hw-generic", h(HDR1, "0000d9fe00000000", "0000000000000000"), {"type": 0}),
    ("iommu-flb", h("0100000000000000", "0010000000000000", "0020000000000000",
                    "0030000000000000"), {"version": 1, "device_array_phys": "0x3000"}),
    ("iommu-flb-v1", h("0010000000000000", "0020000000000000", "0030000000000000"),
     {"iommu_array_phys": "0x1000", "size": 24}),
    # VFIO v5: {u32 domain, u16 bdf}
    ("vfio-pci-v1", h("01000000", "1003"), {"domain": 1, "bdf": 0x310,
                                            "compatible": "vfio-pci-v1"}),
    # samikhawaja d835969e + IOMMU v1: {u16 bdf, u16 domain, u8 reset_works, u32 token}
    ("vfio-pci-v1-iommu", h("1003", "0100", "01", "05000000"), {"bdf": 0x310, "token": 5}),
    # anolis 5a52741a: {u32 domain, u16 bdf, u8 reset_works, u32 token @7}, "vfio-pci-v2"
    ("vfio-pci-v2", h("00000000", "0003", "01", "efbeadde"),
     {"bdf": 0x300, "reset_works": 1, "token": 0xDEADBEEF, "compatible": "vfio-pci-v2",
      "size": 11}),
]


@pytest.mark.parametrize(("kind", "blob", "expect"), CASES, ids=[c[0] for c in CASES])
def test_inspect_record(tmp_path: Path, kind: str, blob: bytes, expect: dict[str, object]) -> None:
    f = tmp_path / kind
    f.write_bytes(blob)
    res = runner.invoke(app, ["inspect", str(f), "--as", kind, "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["kind"] == kind and rep["size"] == len(blob) and rep["source"]
    for key, value in expect.items():
        assert rep[key] == value, key


def test_every_record_kind_is_covered() -> None:
    assert {c[0] for c in CASES} == set(RECORDS)


def test_short_record_is_classified(tmp_path: Path) -> None:
    f = tmp_path / "short"
    f.write_bytes(b"\0" * 10)
    res = runner.invoke(app, ["inspect", str(f), "--as", "vfio-pci-v2"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "truncated" in res.output and "iommufd_ser.token" in res.output


def test_rich_rendering_of_nested_header() -> None:
    rep = decode_blob(CASES[0][1], "iommu-domain")
    assert rep["hdr"] == {"ref_count": 1, "flags": 0}
    assert rep["struct"] == "iommu_domain_ser"
