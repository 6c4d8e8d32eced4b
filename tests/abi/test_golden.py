"""Golden byte tests for every ABI struct.

Expected bytes are written out by hand (hex literals, little endian, field by
field), never produced by the encoder under test.  Each test names the spec
section that fixes the layout.
"""

from __future__ import annotations

import struct

import pytest

from luosim.abi import block, iommu, luo, memfd, pci, vfio
from luosim.abi.errors import DecodeError


def h(*parts: str) -> bytes:
    """Concatenate hex chunks (spaces allowed) into bytes."""
    return bytes.fromhex("".join(parts).replace(" ", ""))


Z = "00"  # one zero byte, for padding runs


def roundtrip(obj: object, expected: bytes) -> None:
    enc = obj.encode()  # type: ignore[attr-defined]
    assert enc == expected, enc.hex()
    assert len(enc) == type(obj).SIZE  # type: ignore[attr-defined]
    assert type(obj).decode(expected) == obj  # type: ignore[attr-defined]
    # decode at a non-zero offset reads the same value
    assert type(obj).decode(b"\xee" * 5 + expected, 5) == obj  # type: ignore[attr-defined]


# ----------------------------------------------------------------- KHO block (luo.md §5.2)


def test_kho_block_header() -> None:
    """spec luo.md §5.2 / pci.md §3.2: kho_block_header_ser {next@0, count@8}, 16 bytes."""
    exp = h("0040230100000000", "0300000000000000")
    roundtrip(block.KhoBlockHeaderSer(next=0x1234000, count=3), exp)
    assert exp[0:8] == (0x1234000).to_bytes(8, "little")
    assert exp[8:16] == b"\x03" + b"\0" * 7
    assert luo.KhoBlockHeaderSer is block.KhoBlockHeaderSer
    # torvalds/linux 637315cb include/linux/kho/abi/block.h defines no compatible string
    assert not hasattr(block, "KHO_BLOCK_COMPATIBLE")
    assert block.KHO_BLOCK_SIZE == 4096 and block.KHO_BLOCK_MAX == 10000


def test_kho_block_image() -> None:
    """spec luo.md §5.2: a block is one page, header then entries, zero filled."""
    page = block.encode_block([b"\x11" * 8, b"\x22" * 8], 8, 0x3000)
    assert len(page) == 4096
    assert page[:32] == h("0030000000000000", "0200000000000000", "11" * 8, "22" * 8)
    assert page[32:] == bytes(4096 - 32)
    assert block.decode_block(page, 8, "t") == (0x3000, [b"\x11" * 8, b"\x22" * 8])
    assert block.block_capacity(80) == 51 and block.block_capacity(64) == 63
    assert block.block_capacity(8) == 510


# ----------------------------------------------------------------- LUO (luo.md §5.1, §5.2)


def test_luo_session_header_ser() -> None:
    """spec luo.md §5.1: luo_session_header_ser {count u64 @0}, 8 bytes."""
    roundtrip(luo.LuoSessionHeaderSer(count=2), h("0200000000000000"))


def test_luo_session_ser() -> None:
    """spec luo.md §5.1: luo_session_ser {name char[64] @0, files @64, count @72}, 80 bytes."""
    exp = h("766d30", Z * 61, "0050000000000000", "0200000000000000")
    roundtrip(luo.LuoSessionSer(name="vm0", files=0x5000, count=2), exp)
    assert exp[0:64] == b"vm0".ljust(64, b"\0")
    assert exp[64:72] == h("0050000000000000") and exp[72:80] == h("0200000000000000")
    assert luo.LuoSessionSer.decode(exp).file_set == luo.LuoFileSetSer(0x5000, 2)


def test_luo_file_set_ser() -> None:
    """spec luo.md §5.1: luo_file_set_ser {files @0, count @8}, 16 bytes."""
    roundtrip(luo.LuoFileSetSer(files=0xABC000, count=7), h("00c0ab0000000000", "0700000000000000"))


def test_luo_file_ser() -> None:
    """spec luo.md §5.1: luo_file_ser {compatible char[48] @0, data @48, token @56}, 64 bytes."""
    exp = h("6d656d66642d7631", Z * 40, "0000100000000000", "1a00000000000000")
    roundtrip(luo.LuoFileSer(compatible="memfd-v1", data=0x100000, token=0x1A), exp)
    assert exp[48:56] == (0x100000).to_bytes(8, "little")
    assert exp[56:64] == (0x1A).to_bytes(8, "little")


def test_luo_flb_header_ser() -> None:
    """spec luo.md §5.1: luo_flb_header_ser {pgcnt @0, count @8}, 16 bytes."""
    roundtrip(luo.LuoFlbHeaderSer(pgcnt=1, count=2), h("0100000000000000", "0200000000000000"))


def test_luo_flb_ser() -> None:
    """spec luo.md §5.1: luo_flb_ser {name char[48] @0, data @48, count @56}, 64 bytes."""
    exp = h("7063692d7633", Z * 42, "0070000000000000", "0100000000000000")
    roundtrip(luo.LuoFlbSer(name="pci-v3", data=0x7000, count=1), exp)


def test_luo_ser_v5() -> None:
    """spec luo.md §5.2: luo_ser {compatible char[8], liveupdate_num, sessions_pa, flbs_pa}."""
    exp = h("6c756f2d76350000", "0500000000000000", "0020000000000000", "0030000000000000")
    roundtrip(luo.LuoSer("luo-v5", 5, 0x2000, 0x3000), exp)
    assert luo.encode_luo_v5(5, 0x2000, 0x3000) == exp
    assert luo.decode_luo_v5(exp + b"\xff" * 8) == luo.LuoSer("luo-v5", 5, 0x2000, 0x3000)


def test_luo_limits() -> None:
    """spec luo.md §5.1/§5.2: capacities derived from the struct sizes."""
    assert luo.LUO_SESSION_MAX == 819 and luo.LUO_FILE_MAX == 128 and luo.LUO_FLB_MAX == 63
    assert luo.LUO_SESSIONS_PER_BLOCK == 51 and luo.LUO_FILES_PER_BLOCK == 63
    assert luo.LUO_SESSION_NAME_LENGTH == 64 and luo.LIVEUPDATE_HNDL_COMPAT_LENGTH == 48
    assert luo.LUO_KHO_ENTRY_NAME == "LUO"
    assert (luo.LUO_FDT_COMPATIBLE, luo.LUO_SESSION_COMPATIBLE, luo.LUO_FLB_COMPATIBLE,
            luo.LUO_V5_COMPATIBLE) == ("luo-v1", "luo-session-v2", "luo-flb-v1", "luo-v5")


def test_luo_session_block_v1_image() -> None:
    """spec luo.md §5.1: session block = 16 pages, header count then 80-byte records."""
    img = luo.encode_session_block_v1([luo.LuoSessionSer("a", 0, 0), luo.LuoSessionSer("b", 0, 0)])
    assert len(img) == 65536
    assert img[:8] == h("0200000000000000")
    assert img[8:9] == b"a" and img[88:89] == b"b" and img[168:] == bytes(65536 - 168)
    assert [s.name for s in luo.decode_session_block_v1(img)] == ["a", "b"]


def test_luo_flb_block_image() -> None:
    """spec luo.md §5.1 / pci.md §1: FLB page {pgcnt=1, count} + 64-byte records."""
    img = luo.encode_flb_block([luo.LuoFlbSer("pci-v3", 0x7000, 1)])
    assert img[:16] == h("0100000000000000", "0100000000000000")
    assert img[16:80] == h("7063692d7633", Z * 42, "0070000000000000", "0100000000000000")
    assert luo.decode_flb_block(img) == [luo.LuoFlbSer("pci-v3", 0x7000, 1)]


def test_luo_fdt_golden() -> None:
    """spec luo.md §5.1: luo-v1 FDT bytes (libfdt sequential write, strings block reversed)."""
    header = h("d00dfeed", "0000012f", "00000038", "000000f0", "00000028", "00000011",
               "00000010", "00000000", "0000003f", "000000b8")
    rsvmap = bytes(16)
    struct_blk = b"".join([
        h("00000001", "00000000"),                                   # begin root ""
        h("00000003", "00000007", "00000034"), b"luo-v1\0\0",        # compatible
        h("00000003", "00000008", "00000022"), h("0100000000000000"),  # liveupdate-number = 1
        h("00000001"), b"luo-session\0",                             # begin luo-session
        h("00000003", "0000000f", "00000034"), b"luo-session-v2\0\0",
        h("00000003", "00000008", "0000000f"), h("0000100000000000"),  # header = 0x100000
        h("00000002"),                                               # end luo-session
        h("00000001"), b"luo-flb\0",                                 # begin luo-flb
        h("00000003", "0000000b", "00000034"), b"luo-flb-v1\0\0",
        h("00000003", "00000008", "00000000"), h("0000200000000000"),  # header = 0x200000
        h("00000002", "00000002", "00000009"),                       # end flb, end root, END
    ])
    strings = b"luo-flb-header\0luo-session-header\0liveupdate-number\0compatible\0"
    assert len(struct_blk) == 0xB8 and len(strings) == 0x3F
    exp = header + rsvmap + struct_blk + strings
    blob = luo.encode_luo_fdt(1, 0x100000, 0x200000)
    assert blob == exp
    assert luo.decode_luo_fdt(exp, require_flb=True) == luo.LuoFdt(1, 0x100000, 0x200000)
    assert luo.decode_luo_fdt(exp, require_flb=False) == luo.LuoFdt(1, 0x100000, None)


def test_luo_fdt_p0_has_no_flb_node() -> None:
    """spec luo.md §5.1: P0 omits luo-flb; a P1 reader then fails (ENOENT → panic)."""
    blob = luo.encode_luo_fdt(7, 0x5000, None)
    assert b"luo-flb" not in blob
    assert luo.decode_luo_fdt(blob, require_flb=False) == luo.LuoFdt(7, 0x5000, None)
    with pytest.raises(DecodeError, match="missing node /luo-flb"):
        luo.decode_luo_fdt(blob, require_flb=True)


# ----------------------------------------------------------------- ioctls (luo.md §2.1, §2.2)


def test_ioctl_numbers() -> None:
    """spec luo.md §2.1: _IO(0xBA, nr) values."""
    assert luo.LIVEUPDATE_IOCTL_TYPE == 0xBA
    assert (luo.LIVEUPDATE_IOCTL_CREATE_SESSION, luo.LIVEUPDATE_IOCTL_RETRIEVE_SESSION) == (
        0xBA00, 0xBA01)
    assert (luo.LIVEUPDATE_SESSION_PRESERVE_FD, luo.LIVEUPDATE_SESSION_RETRIEVE_FD,
            luo.LIVEUPDATE_SESSION_FINISH, luo.LIVEUPDATE_SESSION_GET_NAME) == (
        0xBA40, 0xBA41, 0xBA42, 0xBA43)
    assert luo.IOCTL_BY_CMD[0xBA43].min_size == 16


def test_ioctl_create_and_retrieve_session() -> None:
    """spec luo.md §2.2: {size u32 @0, fd s32 @4, name u8[64] @8}, 72 bytes."""
    roundtrip(luo.LiveupdateIoctlCreateSession(size=72, fd=-1, name=b"vm0"),
              h("48000000", "ffffffff", "766d30", Z * 61))
    roundtrip(luo.LiveupdateIoctlRetrieveSession(size=72, fd=5, name=b"a"),
              h("48000000", "05000000", "61", Z * 63))
    full = luo.LiveupdateIoctlCreateSession.decode(h("48000000", "00000000") + b"X" * 64)
    assert full.name_len == 64 and full.name_text() == "X" * 64


def test_ioctl_fd_token_structs() -> None:
    """spec luo.md §2.2: preserve_fd / retrieve_fd {size, fd s32, token u64 @8}, 16 bytes."""
    roundtrip(luo.LiveupdateSessionPreserveFd(size=16, fd=3, token=0x1A),
              h("10000000", "03000000", "1a00000000000000"))
    roundtrip(luo.LiveupdateSessionRetrieveFd(size=16, fd=7, token=(1 << 64) - 1),
              h("10000000", "07000000", "ffffffffffffffff"))


def test_ioctl_finish_and_get_name() -> None:
    """spec luo.md §2.2: finish {size, reserved} 8 B; get_name {size, reserved, name[64]} 72 B."""
    roundtrip(luo.LiveupdateSessionFinish(size=8, reserved=0), h("08000000", "00000000"))
    roundtrip(luo.LiveupdateSessionGetName(size=72, reserved=0, name=b"vm0"),
              h("48000000", "00000000", "766d30", Z * 61))


# ----------------------------------------------------------------- memfd (luo.md §5.3)


def test_kho_vmalloc() -> None:
    """spec luo.md §5.3: kho_vmalloc {first u64, total_pages u32, flags u16, order u16}, 16 B."""
    roundtrip(memfd.KhoVmalloc(first=0x200000, total_pages=3, flags=1, order=0),
              h("0000200000000000", "03000000", "0100", "0000"))


def test_memfd_folio_ser() -> None:
    """spec luo.md §5.3: folio word = pfn bits 0-51 | flags bits 52-63; index @8."""
    exp = h("4523010000003000", "0700000000000000")
    roundtrip(memfd.MemfdLuoFolioSer(pfn=0x12345, flags=3, index=7), exp)
    assert int.from_bytes(exp[:8], "little") == 0x0030_0000_0001_2345
    assert memfd.MEMFD_LUO_FOLIO_DIRTY == 1 and memfd.MEMFD_LUO_FOLIO_UPTODATE == 2


def test_memfd_ser_v1() -> None:
    """spec luo.md §5.3: memfd-v1 {pos, size, nr_folios, folios@24}, 40 bytes."""
    exp = h("0000000000000000", "0010000000000000", "0100000000000000",
            "0000200000000000", "01000000", "0100", "0000")
    roundtrip(memfd.MemfdLuoSerV1(0, 0x1000, 1, memfd.KhoVmalloc(0x200000, 1, 1, 0)), exp)
    assert exp[24:32] == (0x200000).to_bytes(8, "little")


def test_memfd_ser_v2() -> None:
    """spec luo.md §5.3: memfd-v2 {pos, size, seals@16, flags@20, nr@24, folios@32}, 48 B."""
    exp = h("1000000000000000", "0020000000000000", "09000000", "00000000", "0200000000000000",
            "0000300000000000", "01000000", "0100", "0000")
    obj = memfd.MemfdLuoSerV2(0x10, 0x2000, memfd.F_SEAL_SEAL | memfd.F_SEAL_WRITE, 0, 2,
                              memfd.KhoVmalloc(0x300000, 1, 1, 0))
    roundtrip(obj, exp)
    assert exp[16:20] == h("09000000") and exp[24:32] == h("0200000000000000")
    assert memfd.MEMFD_LUO_ALL_SEALS == 0x3F and obj.unknown_seals == 0
    assert memfd.MemfdLuoSerV2(0, 0, 0x40, 0, 0).unknown_seals == 0x40


def test_kho_vmalloc_chunk() -> None:
    """spec luo.md §5.3 (kho_vmalloc): chunk page = next u64 + phys[511], zero-terminated."""
    exp = h("0050000000000000", "0060000000000000", "0070000000000000") + bytes(4096 - 24)
    chunk = memfd.KhoVmallocChunk(next=0x5000, phys=(0x6000, 0x7000))
    assert chunk.encode() == exp and len(exp) == memfd.KhoVmallocChunk.SIZE == 4096
    assert memfd.KhoVmallocChunk.decode(exp) == chunk
    # entries after the first zero are ignored
    assert memfd.KhoVmallocChunk.decode(exp[:24] + bytes(8) + b"\x01" * 8 + bytes(4056)) == chunk
    assert memfd.KHO_VMALLOC_SIZE == 511


# ----------------------------------------------------------------- PCI (pci.md §3)


def test_pci_dev_ser() -> None:
    """spec pci.md §3.1: pci_dev_ser {domain u32 @0, bdf u16 @4, refcount u16 @6}, 8 bytes."""
    roundtrip(pci.PciDevSer(domain=0, bdf=0x0300, refcount=1), h("00000000", "0003", "0100"))
    roundtrip(pci.PciDevSer(domain=0x10, bdf=0xFFFF, refcount=0xFFFF),
              h("10000000", "ffff", "ffff"))


def test_pci_ser_v6() -> None:
    """spec pci.md §3.1: v6 pci_ser {max u32, nr u32} + devices[max] (holes allowed)."""
    exp = h("02000000", "01000000", "00000000", "0003", "0100", "0000000000000000")
    obj = pci.PciSerV6(2, 1, (pci.PciDevSer(0, 0x300, 1), pci.PciDevSer(0, 0, 0)))
    assert obj.encode() == exp and obj.encoded_size == len(exp) == 24
    assert pci.PciSerV6.decode(exp) == obj and pci.PciSerV6.SIZE == 8
    assert obj.used() == [pci.PciDevSer(0, 0x300, 1)]
    assert pci.PCI_V6_COMPATIBLES == ("pci-v1", "pci-v2", "pci-v3")


def test_pci_ser_v7_v9() -> None:
    """spec pci.md §3.2/§3.3: v7 {nr u32, devices u64 @4} 12 B; v9 {version, nr, devices} 16 B."""
    roundtrip(pci.PciSerV7(nr_devices=1, devices=0x8000), h("01000000", "0080000000000000"))
    roundtrip(pci.PciSerV9(version=1, nr_devices=2, devices=0x9000),
              h("01000000", "02000000", "0090000000000000"))
    assert pci.PCI_V9_COMPATIBLE == "pci" and pci.PCI_V9_VERSION == 1
    assert pci.PCI_DEVS_PER_BLOCK == 510


def test_pci_bdf_helpers() -> None:
    """spec pci.md §3.1: bdf = bus<<8 | slot<<3 | fn; key = domain<<16 | bdf."""
    assert pci.bdf(3, 0, 0) == 0x300 and pci.bdf(0x03, 0x1F, 7) == 0x3FF
    assert pci.split_bdf(0x3FF) == (3, 0x1F, 7)
    assert pci.key(1, 0x300) == 0x1_0300
    assert pci.key(0xFFFF_FFFF, 0xFFFF) == 0xFFFF_FFFF_FFFF  # no truncation (v5 bug)
    assert pci.fmt_bdf(0x10, 0x0310) == "0010:03:02.0"
    assert pci.parse_bdf("0000:03:00.0") == (0, 0x300)
    for bad in ("0000:03:00", "03:00.0", "0000:03:20.0", "0000:03:00.8", "zz"):
        with pytest.raises(ValueError):
            pci.parse_bdf(bad)


# ----------------------------------------------------------------- vfio (pci.md §6.1)


def test_vfio_ser() -> None:
    """vfio_pci.h: v5 {domain u32, bdf u16} 6 B "vfio-pci-v1" (VFIO v5 series);
    samikhawaja/linux d835969e {bdf u16, domain u16, reset_works u8} + IOMMU v1 token, 9 B;
    jackYoung0915/anolis-cloud-kernel 5a52741a {domain u32, bdf u16, reset_works u8,
    token u32 @7}, 11 B "vfio-pci-v2"."""
    roundtrip(vfio.VfioPciCoreDeviceSer(domain=1, bdf=0x0310), h("01000000", "1003"))
    roundtrip(vfio.VfioPciCoreDeviceSerV2(domain=1, bdf=0x0310, reset_works=1, token=0xDEADBEEF),
              h("01000000", "1003", "01", "efbeadde"))
    roundtrip(vfio.VfioPciCoreDeviceSerIommuV1(bdf=0x0310, domain=1, reset_works=1, token=5),
              h("1003", "0100", "01", "05000000"))
    assert vfio.VFIO_PCI_LUO_FH_COMPATIBLE == "vfio-pci-v1"
    assert vfio.VFIO_PCI_LUO_FH_COMPATIBLE_V2 == "vfio-pci-v2"
    assert not hasattr(vfio, "VfioPciCoreDeviceSerIommu")  # the 10-byte record has no source


# ----------------------------------------------------------------- IOMMU (pci.md §7.2)


def test_iommu_flb_ser() -> None:
    """spec pci.md §7.2: iommu_flb_ser {version, iommu, domain, device array phys}, 32 B."""
    roundtrip(iommu.IommuFlbSer(1, 0x1000, 0x2000, 0x3000),
              h("0100000000000000", "0010000000000000", "0020000000000000", "0030000000000000"))
    roundtrip(iommu.IommuFlbSerV1(0x1000, 0x2000, 0x3000),
              h("0010000000000000", "0020000000000000", "0030000000000000"))
    assert (iommu.IOMMU_LUO_FLB_COMPATIBLE, iommu.IOMMU_LUO_FLB_VERSION) == ("iommu-liveupdate", 1)
    assert iommu.IOMMUFD_LUO_FH_COMPATIBLE == "iommufd-v1" and iommu.IOMMU_INTEL == 1


def test_iommu_headers() -> None:
    """spec pci.md §7.2: array header {next, nr_objects} 16 B; object header {ref, flags} 8 B."""
    roundtrip(iommu.IommuArrayHdrSer(0, 3), h("0000000000000000", "0300000000000000"))
    hdr = iommu.IommuHdrSer(2, 3)
    roundtrip(hdr, h("02000000", "03000000"))
    assert hdr.deleted and hdr.incoming


def test_iommu_domain_ser() -> None:
    """samikhawaja/linux ef754267 include/linux/kho/abi/iommu.h: __packed with
    u32 sign_extend:1 (one byte @28), restored_domain @29, 37 bytes."""
    exp = h("01000000", "00000000", "0000040000000000", "0300000000000000", "30000000",
            "01", "0000000000000000")
    roundtrip(iommu.IommuDomainSer(iommu.IommuHdrSer(1, 0), 0x40000, 3, 48, True, 0), exp)
    assert len(exp) == 37


def test_iommu_domain_ser_pran() -> None:
    """pran005/linux 22fa8f30 iommu.h: u8 sign_extend @28, u8 padding[3], restored @32, 40 B."""
    exp = h("01000000", "00000000", "0000040000000000", "0300000000000000", "30000000",
            "01", "000000", "0800000000000000")
    roundtrip(iommu.IommuDomainSerPran(iommu.IommuHdrSer(1, 0), 0x40000, 3, 48, True, 8), exp)


def test_iommu_device_ser() -> None:
    """samikhawaja/linux ef754267 iommu.h: device {hdr, devid, seg, dev_map{attachment,
    domain, iommu}, intel{pasid_table, max_pasid}}, 56 B."""
    exp = h("01000000", "02000000", "00030000", "00000000", "0500000000000000",
            "1000050000000000", "2000060000000000", "0000070000000000", "0000100000000000")
    roundtrip(iommu.IommuDeviceSer(iommu.IommuHdrSer(1, 2), 0x300, 0, 5, 0x50010, 0x60020,
                                   0x70000, 0x100000), exp)
    assert exp[16:24] == (5).to_bytes(8, "little")


def test_iommu_device_ser_pran() -> None:
    """pran005/linux 22fa8f30 iommu.h: dma_owner_token @16, dev_map @24, intel{restored u8
    @48, 7 pad, pasid_table @56, max_pasid @64}, 72 B."""
    exp = h("01000000", "00000000", "00030000", "00000000", "0900000000000000",
            "0500000000000000", "1000050000000000", "2000060000000000",
            "01", Z * 7, "0000070000000000", "0000100000000000")
    roundtrip(iommu.IommuDeviceSerPran(iommu.IommuHdrSer(1, 0), 0x300, 0, 5, 0x50010, 0x60020,
                                       0x70000, 0x100000, dma_owner_token=9, restored=1), exp)


def test_iommu_generic_07a49313() -> None:
    """samikhawaja/linux 07a49313 iommu.h (no vendor part): device 40 B, hw 24 B."""
    roundtrip(iommu.IommuDeviceSerGeneric(iommu.IommuHdrSer(1, 0), 0x300, 0, 5, 0x1000, 0x2000),
              h("01000000", "00000000", "00030000", "00000000", "0500000000000000",
                "0010000000000000", "0020000000000000"))
    roundtrip(iommu.IommuHwSerGeneric(iommu.IommuHdrSer(1, 0), 0xFED90000, 0),
              h("01000000", "00000000", "0000d9fe00000000", "0000000000000000"))


def test_iommu_hw_ser() -> None:
    """spec pci.md §7.2: hw {hdr, token, type, VT-d {restored u8, 7 pad, reg, root, bitmap[8]}}."""
    exp = h("01000000", "00000000", "0000d9fe00000000", "0100000000000000", "00", Z * 7,
            "0000d9fe00000000", "0000080000000000", "0900000000000000", "0000000000000000" * 6,
            "0000000000000080")
    bitmap = (9, 0, 0, 0, 0, 0, 0, 1 << 63)
    obj = iommu.IommuHwSer(iommu.IommuHdrSer(1, 0), 0xFED90000, iommu.IOMMU_INTEL, 0,
                           0xFED90000, 0x80000, bitmap)
    roundtrip(obj, exp)
    assert len(exp) == 112
    assert obj.context_table_preserved(0) and obj.context_table_preserved(3)
    assert not obj.context_table_preserved(1) and obj.context_table_preserved(511)


def test_iommu_array_page() -> None:
    """spec pci.md §7.2: objects per page = (4096 - 16) / sizeof(obj)."""
    # ef754267: 36 HW, 110 domains (37 B), 72 devices; 22fa8f30: 102 domains, 56 devices
    assert [iommu.objs_per_page(s) for s in (112, 37, 56, 40, 72)] == [36, 110, 72, 102, 56]
    page = iommu.encode_array_page([b"\xaa" * 40], 40, 0x9000)
    assert page[:16] == h("0090000000000000", "0100000000000000") and len(page) == 4096
    assert iommu.decode_array_page(page, 40, "t") == (0x9000, [b"\xaa" * 40])


def test_vtd_root_entry() -> None:
    """spec pci.md §7.5 (VT-d): root entry lo bit0 present, bits 12-63 context table."""
    roundtrip(iommu.VtdRootEntry(present=True, context_table=0x81000),
              h("0110080000000000", "0000000000000000"))


def test_vtd_context_entry() -> None:
    """spec pci.md §7.5 (VT-d): context lo {P, FPD, TT 2-3, SLPTPTR}, hi {AW 0-2, DID 8-23}."""
    roundtrip(iommu.VtdContextEntry(present=True, translation_type=0, slptptr=0x90000,
                                    address_width=2, domain_id=5),
              h("0100090000000000", "0205000000000000"))
    roundtrip(iommu.VtdContextEntry(present=True, translation_type=2, slptptr=0x90000,
                                    address_width=1, domain_id=0xFFFF, fpd=True),
              h("0b00090000000000", "01ffff0000000000"))


def test_vtd_pte() -> None:
    """spec pci.md §7.5 (VT-d): second-level PTE bit0 R, bit1 W, bits 12-51 address."""
    roundtrip(iommu.VtdPte(0xA000, True, True), h("03a0000000000000"))
    roundtrip(iommu.VtdPte(0xFFFFFFFFFF000, True, False), h("01f0ffffffff0f00"))
    assert iommu.pte_fields(0x8000_0000_0000_A002) == (0xA000, False, True)
    assert iommu.pt_index(0x1_0020_3000, 1) == 3 and iommu.pt_index(0x1_0020_3000, 2) == 1
    assert iommu.pt_index(0x1_0020_3000, 3) == 4


# ----------------------------------------------------------------- sizes vs struct.calcsize


@pytest.mark.parametrize(("cls", "size"), [
    (block.KhoBlockHeaderSer, 16), (luo.LuoSessionHeaderSer, 8), (luo.LuoSessionSer, 80),
    (luo.LuoFileSetSer, 16), (luo.LuoFileSer, 64), (luo.LuoFlbHeaderSer, 16),
    (luo.LuoFlbSer, 64), (luo.LuoSer, 32), (luo.LiveupdateIoctlCreateSession, 72),
    (luo.LiveupdateIoctlRetrieveSession, 72), (luo.LiveupdateSessionPreserveFd, 16),
    (luo.LiveupdateSessionRetrieveFd, 16), (luo.LiveupdateSessionFinish, 8),
    (luo.LiveupdateSessionGetName, 72), (memfd.KhoVmalloc, 16), (memfd.MemfdLuoFolioSer, 16),
    (memfd.MemfdLuoSerV1, 40), (memfd.MemfdLuoSerV2, 48), (memfd.KhoVmallocChunk, 4096),
    (pci.PciDevSer, 8), (pci.PciSerV6, 8), (pci.PciSerV7, 12), (pci.PciSerV9, 16),
    (vfio.VfioPciCoreDeviceSer, 6), (vfio.VfioPciCoreDeviceSerV2, 11),
    (vfio.VfioPciCoreDeviceSerIommuV1, 9), (iommu.IommuFlbSer, 32), (iommu.IommuFlbSerV1, 24),
    (iommu.IommuArrayHdrSer, 16), (iommu.IommuHdrSer, 8), (iommu.IommuDomainSer, 37),
    (iommu.IommuDomainSerPran, 40), (iommu.IommuDeviceSerPran, 72),
    (iommu.IommuDeviceSerGeneric, 40), (iommu.IommuHwSerGeneric, 24),
    (iommu.IommuDeviceSer, 56), (iommu.IommuHwSer, 112), (iommu.VtdRootEntry, 16),
    (iommu.VtdContextEntry, 16), (iommu.VtdPte, 8),
])
def test_sizes(cls: type, size: int) -> None:
    """spec luo.md §2.2/§5, pci.md §3/§6.1/§7.2: SIZE matches the packed layout."""
    assert size == cls.SIZE  # type: ignore[attr-defined]
    st = getattr(cls, "STRUCT", None) or getattr(cls, "_ST", None)
    if st is not None:  # PciSerV6 is a header codec plus a variable array
        assert st.size == size
        assert struct.calcsize(st.format) == size
