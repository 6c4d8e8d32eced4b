"""Every codec's size and field offsets against the figures of the kernel header it cites.

The expected numbers are read off the C declarations in the headers (and, for
the ones the issue measured, the sizes printed by compiling them), never taken
from luosim's encoder or layout engine:

* torvalds/linux 637315cb include/linux/kho/abi/block.h
* torvalds/linux cc4adab1 include/linux/kho/abi/luo.h (luo-v1 sessions and files); the
  FLB structs from the LUO FLB series, luo_ser from the LUO linked-block series (luo-v5)
* torvalds/linux 16cec0d2 include/uapi/linux/liveupdate.h
* torvalds/linux ac2d8102 include/linux/kho/abi/memfd.h, c17ee635 kexec_handover.h
* samikhawaja/linux ef754267 and 07a49313 include/linux/kho/abi/iommu.h
* pran005/linux 22fa8f30 include/linux/kho/abi/iommu.h
* jackYoung0915/anolis-cloud-kernel 5a52741a include/linux/kho/abi/vfio_pci.h
* samikhawaja/linux d835969e include/linux/kho/abi/vfio_pci.h (+ IOMMU v1 token)
* linux-mm/linux-mm 3bb8a42d include/linux/kho/abi/pci.h (v6 layout, "pci-v2")
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from luosim.abi import block, cdecl, iommu, kho, luo, memfd, pci, vfio
from luosim.abi.errors import DecodeError

HDR = {"hdr.ref_count": 0, "hdr.flags": 4}

LAYOUTS: list[tuple[type, int, dict[str, int]]] = [
    # block.h @637315cb
    (block.KhoBlockHeaderSer, 16, {"next": 0, "count": 8}),
    # luo.h @cc4adab1 (FLB records: LUO FLB series)
    (luo.LuoSessionHeaderSer, 8, {"count": 0}),
    (luo.LuoFileSetSer, 16, {"files": 0, "count": 8}),
    (luo.LuoSessionSer, 80, {"name": 0, "file_set_ser.files": 64, "file_set_ser.count": 72}),
    (luo.LuoFileSer, 64, {"compatible": 0, "data": 48, "token": 56}),
    (luo.LuoFlbHeaderSer, 16, {"pgcnt": 0, "count": 8}),
    (luo.LuoFlbSer, 64, {"name": 0, "data": 48, "count": 56}),
    (luo.LuoSer, 32, {"compatible": 0, "liveupdate_num": 8, "sessions_pa": 16, "flbs_pa": 24}),
    # uapi/linux/liveupdate.h @16cec0d2 (natural alignment)
    (luo.LiveupdateIoctlCreateSession, 72, {"size": 0, "fd": 4, "name": 8}),
    (luo.LiveupdateSessionPreserveFd, 16, {"size": 0, "fd": 4, "token": 8}),
    (luo.LiveupdateSessionFinish, 8, {"size": 0, "reserved": 4}),
    (luo.LiveupdateSessionGetName, 72, {"size": 0, "reserved": 4, "name": 8}),
    # kexec_handover.h @c17ee635 / memfd.h @ac2d8102
    (memfd.KhoVmalloc, 16, {"first": 0, "total_pages": 8, "flags": 12, "order": 14}),
    (memfd.KhoVmallocChunk, 4096, {"next": 0, "phys": 8}),
    (memfd.MemfdLuoFolioSer, 16, {"pfn": 0, "flags": 0, "index": 8}),
    (memfd.MemfdLuoSerV1, 40, {"pos": 0, "size": 8, "nr_folios": 16, "folios.first": 24,
                               "folios.total_pages": 32, "folios.flags": 36,
                               "folios.order": 38}),
    (memfd.MemfdLuoSerV2, 48, {"pos": 0, "size": 8, "seals": 16, "flags": 20, "nr_folios": 24,
                               "folios.first": 32, "folios.total_pages": 40,
                               "folios.flags": 44, "folios.order": 46}),
    (kho.KhoData, 32, {"fdt_addr": 0, "fdt_size": 8, "scratch_addr": 16, "scratch_size": 24}),
    (kho.KhoScratch, 16, {"addr": 0, "size": 8}),
    # pci.h: v6 layout linux-mm/linux-mm 3bb8a42d; v7/v9 from the series mails
    (pci.PciDevSer, 8, {"domain": 0, "bdf": 4, "refcount": 6}),
    (pci.PciV6SerHeader, 8, {"max_nr_devices": 0, "nr_devices": 4}),
    (pci.PciSerV7, 12, {"nr_devices": 0, "devices": 4}),
    (pci.PciSerV9, 16, {"version": 0, "nr_devices": 4, "devices": 8}),
    # vfio_pci.h
    (vfio.VfioPciCoreDeviceSer, 6, {"domain": 0, "bdf": 4}),
    (vfio.VfioPciCoreDeviceSerV2, 11, {"domain": 0, "bdf": 4, "reset_works": 6,
                                       "iommufd_ser.token": 7}),
    (vfio.VfioPciCoreDeviceSerIommuV1, 9, {"bdf": 0, "domain": 2, "reset_works": 4,
                                           "iommufd_ser.token": 5}),
    # iommu.h @ef754267
    (iommu.IommuFlbSerV1, 24, {"iommu_array_phys": 0, "iommu_domain_array_phys": 8,
                               "device_array_phys": 16}),
    (iommu.IommuDomainSer, 37, {**HDR, "top_table_phys": 8, "top_level": 16, "vasz": 24,
                                "sign_extend": 28, "restored_domain": 29}),
    (iommu.IommuDeviceSer, 56, {**HDR, "devid": 8, "pci_domain_nr": 12,
                                "domain_iommu_ser.attachment_id": 16,
                                "domain_iommu_ser.domain_phys": 24,
                                "domain_iommu_ser.iommu_phys": 32, "intel.pasid_table": 40,
                                "intel.max_pasid": 48}),
    (iommu.IommuHwSer, 112, {**HDR, "token": 8, "type": 16, "intel.restored": 24,
                             "intel.padding": 25, "intel.phys_addr": 32,
                             "intel.root_table": 40, "intel.context_tables_bitmap": 48}),
    (iommu.IommuArrayHdrSer, 16, {"next_array_phys": 0, "nr_objects": 8}),
    (iommu.IommuHdrSer, 8, {"ref_count": 0, "flags": 4}),
    # iommu.h @07a49313
    (iommu.IommuFlbSer, 32, {"version": 0, "iommu_array_phys": 8, "iommu_domain_array_phys": 16,
                             "device_array_phys": 24}),
    (iommu.IommuDeviceSerGeneric, 40, {**HDR, "devid": 8, "pci_domain_nr": 12,
                                       "domain_iommu_ser.attachment_id": 16,
                                       "domain_iommu_ser.domain_phys": 24,
                                       "domain_iommu_ser.iommu_phys": 32}),
    (iommu.IommuHwSerGeneric, 24, {**HDR, "token": 8, "type": 16}),
    # iommu.h @22fa8f30 (pran005)
    (iommu.IommuDomainSerPran, 40, {**HDR, "top_table_phys": 8, "top_level": 16, "vasz": 24,
                                    "sign_extend": 28, "padding": 29, "restored_domain": 32}),
    (iommu.IommuDeviceSerPran, 72, {**HDR, "devid": 8, "pci_domain_nr": 12,
                                    "dma_owner_token": 16,
                                    "domain_iommu_ser.attachment_id": 24,
                                    "domain_iommu_ser.domain_phys": 32,
                                    "domain_iommu_ser.iommu_phys": 40, "intel.restored": 48,
                                    "intel.padding": 49, "intel.pasid_table": 56,
                                    "intel.max_pasid": 64}),
]


@pytest.mark.parametrize(("cls", "size", "offsets"), LAYOUTS,
                         ids=[c.__name__ for c, _, _ in LAYOUTS])
def test_layout_matches_header(cls: type, size: int, offsets: dict[str, int]) -> None:
    assert size == cls.SIZE  # type: ignore[attr-defined]
    assert offsets == cls.OFFSETS  # type: ignore[attr-defined]
    assert cls.SOURCE  # type: ignore[attr-defined]  # every codec names its source


def test_pran_hw_union_has_the_intel_bytes_of_ef754267() -> None:
    """22fa8f30 adds an SMMUv3 member to the hw union; its Intel view is ef754267's."""
    pran = cdecl.layout("iommu_hw_ser__pran")
    assert pran.size == 112 and pran.offsets == iommu.IommuHwSer.OFFSETS


def test_iommu_abi_sets_follow_one_header_each() -> None:
    ef = iommu.iommu_abi("iommu-liveupdate-v1")
    assert (ef.flb.SIZE, ef.domain.SIZE, ef.device.SIZE, ef.hw.SIZE, ef.version) == (
        24, 37, 56, 112, None)
    pr = iommu.iommu_abi("iommu-liveupdate")
    assert (pr.flb.SIZE, pr.domain.SIZE, pr.device.SIZE, pr.hw.SIZE, pr.version) == (
        32, 40, 72, 112, 1)
    assert [iommu.objs_per_page(c.SIZE) for c in (ef.domain, ef.device, ef.hw)] == [110, 72, 36]
    assert {ef.source, pr.source} == {iommu.SAMI_EF75, iommu.PRAN_22FA}
    with pytest.raises(ValueError, match="iommu-v1"):
        iommu.iommu_abi("iommu-v1")


def test_sign_extend_is_one_bit_in_its_byte() -> None:
    """ef754267: other bits of byte 28 are bit-field padding: ignored on read, 0 on write."""
    ser = iommu.IommuDomainSer(iommu.IommuHdrSer(), 0, 0, 48, True, 0x1122334455667788)
    raw = bytearray(ser.encode())
    assert raw[28] == 1 and raw[29:37] == (0x1122334455667788).to_bytes(8, "little")
    raw[28] = 0xFE
    assert iommu.IommuDomainSer.decode(bytes(raw)).sign_extend is False


def test_encode_range_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"memfd_luo_folio_ser\.pfn: .* u52"):
        memfd.MemfdLuoFolioSer(1 << 52, 0, 0).encode()
    with pytest.raises(ValueError, match=r"memfd_luo_folio_ser\.flags: .* u12"):
        memfd.MemfdLuoFolioSer(0, 1 << 12, 0).encode()
    with pytest.raises(ValueError, match=r"vfio_pci_core_device_ser\.iommufd_ser\.token"):
        vfio.VfioPciCoreDeviceSerV2(0, 0, 1, 1 << 32).encode()
    with pytest.raises(ValueError, match=r"liveupdate_session_preserve_fd\.fd: .* s32"):
        luo.LiveupdateSessionPreserveFd(16, 1 << 31, 0).encode()
    with pytest.raises(ValueError, match=r"luo_session_ser\.name: .* char\[64\]"):
        luo.LuoSessionSer("x" * 64, 0, 0).encode()
    with pytest.raises(ValueError, match="not an integer"):
        pci.PciDevSer(0, True, 0).encode()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"context_tables_bitmap: need 8"):
        iommu.IommuHwSer(iommu.IommuHdrSer(), 0, 1, context_tables_bitmap=(0,)).encode()


def test_decode_errors_are_classified() -> None:
    raw = iommu.IommuDomainSer(iommu.IommuHdrSer(), 1, 2, 3).encode()
    with pytest.raises(DecodeError) as exc:
        iommu.IommuDomainSer.decode(raw[:30])
    assert exc.value.kind == "truncated" and exc.value.field == "iommu_domain_ser.restored_domain"
    with pytest.raises(DecodeError) as exc:
        vfio.VfioPciCoreDeviceSerV2.decode(b"\0" * 10, 0, "vfio blob")
    assert exc.value.field == "vfio_pci_core_device_ser.iommufd_ser.token"
    assert exc.value.what == "vfio blob"
    bad = bytearray(luo.LuoFileSer("memfd-v1", 1, 2).encode())
    bad[0:48] = b"\xff" * 48
    with pytest.raises(DecodeError) as exc:
        luo.LuoFileSer.decode(bytes(bad))
    assert exc.value.kind == "bad-value"
    with pytest.raises(DecodeError) as exc:
        memfd.MemfdLuoFolioSer.decode_array(b"\0" * 40, 3)
    assert exc.value.kind == "truncated"


# ----------------------------------------------------------------------------- cdecl itself

cdecl.declare("""
struct t_cdecl_inner { u64 a; u32 b; u16 c; };
""")
cdecl.declare("""
struct t_cdecl_outer {
    u8 tag;
    struct t_cdecl_inner in;
    u16 lo:3;
    u16 mid:10;
    u8 after;
    union { struct t_cdecl_inner x; u8 raw[20]; };
    s32 sval;
} __packed;
""")


def test_gcc_packed_layout_rules() -> None:
    """Packed: no padding before the (aligned, 16-byte) nested struct; 13 bit-field bits take
    two bytes; the (not packed) union keeps its own size, 20 rounded up to its 8-byte
    alignment = 24, though it is placed without padding."""
    lay = cdecl.layout("t_cdecl_outer")
    assert lay.offsets == {"tag": 0, "in.a": 1, "in.b": 9, "in.c": 13, "lo": 17, "mid": 17,
                           "after": 19, "x.a": 20, "x.b": 28, "x.c": 32, "sval": 44}
    assert lay.size == 48
    inner = cdecl.layout("t_cdecl_inner")  # natural alignment: 8 + 4 + 2, padded to 16
    assert inner.offsets == {"a": 0, "b": 8, "c": 12} and inner.size == 16


def test_codec_binding_by_name_and_errors() -> None:
    @cdecl.codec("t_cdecl_outer", "test", renames={"x.a": "xa"})
    @dataclass(frozen=True)
    class Outer(cdecl.CStruct):
        tag: int
        lo: int
        mid: int
        after: int
        xa: int
        sval: int

    o = Outer(1, 5, 0x3FF, 2, 9, -3)
    raw = o.encode()
    assert raw[17:19] == (5 | 0x3FF << 3).to_bytes(2, "little")
    assert raw[44:48] == (-3).to_bytes(4, "little", signed=True)
    assert Outer.decode(raw) == o
    with pytest.raises(ValueError, match=r"t_cdecl_outer\.mid: .* u10"):
        Outer(1, 0, 1 << 10, 0, 0, 0).encode()
    with pytest.raises(AssertionError, match="map to no field"):
        @cdecl.codec("t_cdecl_outer", "test")
        @dataclass(frozen=True)
        class Bad(cdecl.CStruct):
            nope: int


def _bound_codecs() -> list[type[cdecl.CStruct]]:
    found = []
    for mod in (block, iommu, kho, luo, memfd, pci, vfio):
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, cdecl.CStruct) and "SOURCE" in vars(obj):
                found.append(obj)
    return found


def test_every_codec_cites_a_header_and_has_a_golden_layout() -> None:
    codecs = _bound_codecs()
    assert len(codecs) >= 35
    for cls in codecs:
        assert re.search(r"\.[hc]\b", cls.SOURCE), cls  # names the header (or .c) it follows
    # the retrieve-session / retrieve-fd twins share the create / preserve rows' layout
    twins = {luo.LiveupdateIoctlRetrieveSession: luo.LiveupdateIoctlCreateSession,
             luo.LiveupdateSessionRetrieveFd: luo.LiveupdateSessionPreserveFd}
    covered = {c for c, _, _ in LAYOUTS}
    for cls in codecs:
        ref = twins.get(cls, cls)
        assert ref in covered, f"{cls.__name__} has no golden layout row"
        assert cls.OFFSETS == ref.OFFSETS


def test_packed_attribute_spellings_and_unsupported_forms() -> None:
    cdecl.declare("""
struct t_cdecl_attr { u8 a; u32 b; } __attribute__((packed));
struct t_cdecl_nat { u8 a; u32 b; };
struct t_cdecl_natbits { u32 a:1; u32 b; };
""")
    assert cdecl.layout("t_cdecl_attr").offsets == {"a": 0, "b": 1}
    assert cdecl.layout("t_cdecl_nat").offsets == {"a": 0, "b": 4}
    assert cdecl.layout("t_cdecl_nat").size == 8
    with pytest.raises(NotImplementedError, match="bit-field"):
        cdecl.layout("t_cdecl_natbits")
