"""IOMMU live-update ABI (spec pci.md §7.2) and the Intel VT-d table formats.

Models include/linux/kho/abi/iommu.h of the IOMMU live-update series
(samikhawaja/linux: @07a49313 versioned ``"iommu-liveupdate"`` + version 1,
@ef754267 ``"iommu-liveupdate-v1"`` without the version word).  The FLB record's
``data`` is the physical address of ``struct iommu_flb_ser``, which points at
three chains of one-page arrays (HW units, domains, devices).  Each array page
is ``{u64 next_array_phys; u64 nr_objects}`` followed by fixed-size objects
that all start with ``struct iommu_hdr_ser``; objects are append-only and
deleted ones keep their slot with flag ``DELETED``.

The device and HW objects here include the Intel VT-d union members
(``iommu_device_intel_ser``, ``iommu_intel_ser``) as in @ef754267; the generic
parts alone are 40 bytes (device) and 24 bytes (HW).

VT-d hardware formats (Intel VT-d specification, legacy mode) used by the
hardware model: root table = 256 x 16-byte root entries indexed by bus;
context table = 256 x 16-byte context entries indexed by devfn; second-level
page tables of 512 x 8-byte entries.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

from luosim.abi.block import FieldSpec, check_uint, unpack_fields
from luosim.abi.errors import DecodeError

PAGE_SIZE = 4096

IOMMU_LUO_FLB_COMPATIBLE = "iommu-liveupdate"
IOMMU_LUO_FLB_VERSION = 1
#: Older FLB compatibles: IOMMU v1 series; IOMMU v2/v3 (24-byte flb_ser, no version).
IOMMU_LUO_FLB_COMPATIBLE_V1 = "iommu-v1"
IOMMU_LUO_FLB_COMPATIBLE_LU_V1 = "iommu-liveupdate-v1"
#: iommufd file handler (the IOMMU FLB is linked to it, not to vfio).
IOMMUFD_LUO_FH_COMPATIBLE = "iommufd-v1"

#: ``enum iommu_type_ser``: IOMMU_INVALID = 0, IOMMU_INTEL = 1 (read in
#: include/linux/kho/abi/iommu.h @ef754267; the later generic header lists only
#: IOMMU_INVALID and the VT-d patch adds IOMMU_INTEL, value assumed unchanged).
IOMMU_INVALID = 0
IOMMU_INTEL = 1

IOMMU_SER_FLAG_DELETED = 1 << 0
IOMMU_SER_FLAG_INCOMING = 1 << 1

#: Bits in ``iommu_intel_ser.context_tables_bitmap`` (u64[8]).
VTD_CONTEXT_BITMAP_WORDS = 8


def _u(name: str, value: int, bits: int = 64) -> int:
    check_uint(name, value, bits)
    return value


# ----------------------------------------------------------------- FLB top level


@dataclass(frozen=True)
class IommuFlbSer:
    """Models ``struct iommu_flb_ser`` (``"iommu-liveupdate"``, include/linux/kho/abi/iommu.h).

    Packed, 32 bytes: ``version`` u64 @0 (= 1), ``iommu_array_phys`` u64 @8,
    ``iommu_domain_array_phys`` u64 @16, ``device_array_phys`` u64 @24 (all
    three arrays are allocated at FLB preserve, even if empty).
    """

    version: int
    iommu_array_phys: int
    iommu_domain_array_phys: int
    device_array_phys: int

    SIZE: ClassVar[int] = 32
    _ST: ClassVar[struct.Struct] = struct.Struct("<QQQQ")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("version", 0, 8), ("iommu_array_phys", 8, 8), ("iommu_domain_array_phys", 16, 8),
        ("device_array_phys", 24, 8))

    def encode(self) -> bytes:
        return self._ST.pack(_u("iommu_flb_ser.version", self.version),
                             _u("iommu_flb_ser.iommu_array_phys", self.iommu_array_phys),
                             _u("iommu_flb_ser.iommu_domain_array_phys",
                                self.iommu_domain_array_phys),
                             _u("iommu_flb_ser.device_array_phys", self.device_array_phys))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "iommu_flb_ser") -> Self:
        v, hw, dom, dev = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS, "iommu_flb_ser")
        return cls(v, hw, dom, dev)


@dataclass(frozen=True)
class IommuFlbSerV1:
    """Models ``struct iommu_flb_ser`` of ``"iommu-liveupdate-v1"`` (iommu.h @ef754267).

    Packed, 24 bytes: ``iommu_array_phys`` u64 @0, ``iommu_domain_array_phys``
    u64 @8, ``device_array_phys`` u64 @16 (no version word).
    """

    iommu_array_phys: int
    iommu_domain_array_phys: int
    device_array_phys: int

    SIZE: ClassVar[int] = 24
    _ST: ClassVar[struct.Struct] = struct.Struct("<QQQ")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("iommu_array_phys", 0, 8), ("iommu_domain_array_phys", 8, 8),
        ("device_array_phys", 16, 8))

    def encode(self) -> bytes:
        return self._ST.pack(_u("iommu_flb_ser.iommu_array_phys", self.iommu_array_phys),
                             _u("iommu_flb_ser.iommu_domain_array_phys",
                                self.iommu_domain_array_phys),
                             _u("iommu_flb_ser.device_array_phys", self.device_array_phys))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "iommu_flb_ser") -> Self:
        hw, dom, dev = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS, "iommu_flb_ser")
        return cls(hw, dom, dev)


# ----------------------------------------------------------------- array pages


@dataclass(frozen=True)
class IommuArrayHdrSer:
    """Models ``struct iommu_array_hdr_ser`` from include/linux/kho/abi/iommu.h.

    Packed, 16 bytes: ``next_array_phys`` u64 @0 (0 = last page),
    ``nr_objects`` u64 @8 (objects used in this page, deleted ones included).
    """

    next_array_phys: int
    nr_objects: int

    SIZE: ClassVar[int] = 16
    _ST: ClassVar[struct.Struct] = struct.Struct("<QQ")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (("next_array_phys", 0, 8), ("nr_objects", 8, 8))

    def encode(self) -> bytes:
        return self._ST.pack(_u("iommu_array_hdr_ser.next_array_phys", self.next_array_phys),
                             _u("iommu_array_hdr_ser.nr_objects", self.nr_objects))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "iommu array") -> Self:
        nxt, nr = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS, "iommu_array_hdr_ser")
        return cls(nxt, nr)


@dataclass(frozen=True)
class IommuHdrSer:
    """Models ``struct iommu_hdr_ser`` from include/linux/kho/abi/iommu.h.

    Packed, 8 bytes: ``ref_count`` u32 @0, ``flags`` u32 @4
    (``IOMMU_SER_FLAG_DELETED`` bit 0, ``IOMMU_SER_FLAG_INCOMING`` bit 1).
    """

    ref_count: int = 0
    flags: int = 0

    SIZE: ClassVar[int] = 8
    _ST: ClassVar[struct.Struct] = struct.Struct("<II")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (("ref_count", 0, 4), ("flags", 4, 4))

    @property
    def deleted(self) -> bool:
        return bool(self.flags & IOMMU_SER_FLAG_DELETED)

    @property
    def incoming(self) -> bool:
        return bool(self.flags & IOMMU_SER_FLAG_INCOMING)

    def encode(self) -> bytes:
        return self._ST.pack(_u("iommu_hdr_ser.ref_count", self.ref_count, 32),
                             _u("iommu_hdr_ser.flags", self.flags, 32))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "iommu object") -> Self:
        ref, flags = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS, "iommu_hdr_ser")
        return cls(ref, flags)


@dataclass(frozen=True)
class IommuDomainSer:
    """Models ``struct iommu_domain_ser`` from include/linux/kho/abi/iommu.h.

    Packed, 40 bytes: ``hdr`` @0 (8), ``top_table_phys`` u64 @8,
    ``top_level`` u64 @16, ``vasz`` u32 @24, a u32 @28 whose bit 0 is
    ``sign_extend`` (other bits are bit-field padding: written 0, ignored on
    read), ``restored_domain`` @32 (an 8-byte kernel pointer, meaningful only
    in the new kernel; kept as an opaque integer).
    """

    hdr: IommuHdrSer
    top_table_phys: int
    top_level: int
    vasz: int
    sign_extend: bool = False
    restored_domain: int = 0

    SIZE: ClassVar[int] = 40
    _ST: ClassVar[struct.Struct] = struct.Struct("<8sQQIIQ")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("hdr", 0, 8), ("top_table_phys", 8, 8), ("top_level", 16, 8), ("vasz", 24, 4),
        ("sign_extend", 28, 4), ("restored_domain", 32, 8))

    def encode(self) -> bytes:
        return self._ST.pack(self.hdr.encode(),
                             _u("iommu_domain_ser.top_table_phys", self.top_table_phys),
                             _u("iommu_domain_ser.top_level", self.top_level),
                             _u("iommu_domain_ser.vasz", self.vasz, 32),
                             1 if self.sign_extend else 0,
                             _u("iommu_domain_ser.restored_domain", self.restored_domain))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "iommu_domain_ser") -> Self:
        _, top, level, vasz, se, restored = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS,
                                                          "iommu_domain_ser")
        return cls(IommuHdrSer.decode(buf, offset, what), top, level, vasz, bool(se & 1),
                   restored)


@dataclass(frozen=True)
class IommuDeviceSer:
    """Models ``struct iommu_device_ser`` (with the VT-d union) from include/linux/kho/abi/iommu.h.

    Packed, 56 bytes: ``hdr`` @0 (8), ``devid`` u32 @8 (``pci_dev_id``),
    ``pci_domain_nr`` u32 @12, ``domain_iommu_ser`` = {``attachment_id`` u64
    @16 (VT-d: domain id), ``domain_phys`` u64 @24, ``iommu_phys`` u64 @32},
    VT-d ``intel`` = {``pasid_table`` u64 @40, ``max_pasid`` u64 @48}.
    Without the VT-d union (generic header @07a49313) the object is 40 bytes.
    """

    hdr: IommuHdrSer
    devid: int
    pci_domain_nr: int
    attachment_id: int
    domain_phys: int
    iommu_phys: int
    pasid_table: int = 0
    max_pasid: int = 0

    SIZE: ClassVar[int] = 56
    _ST: ClassVar[struct.Struct] = struct.Struct("<8sIIQQQQQ")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("hdr", 0, 8), ("devid", 8, 4), ("pci_domain_nr", 12, 4),
        ("domain_iommu_ser.attachment_id", 16, 8), ("domain_iommu_ser.domain_phys", 24, 8),
        ("domain_iommu_ser.iommu_phys", 32, 8), ("intel.pasid_table", 40, 8),
        ("intel.max_pasid", 48, 8))

    def encode(self) -> bytes:
        n = "iommu_device_ser"
        return self._ST.pack(self.hdr.encode(), _u(f"{n}.devid", self.devid, 32),
                             _u(f"{n}.pci_domain_nr", self.pci_domain_nr, 32),
                             _u(f"{n}.attachment_id", self.attachment_id),
                             _u(f"{n}.domain_phys", self.domain_phys),
                             _u(f"{n}.iommu_phys", self.iommu_phys),
                             _u(f"{n}.intel.pasid_table", self.pasid_table),
                             _u(f"{n}.intel.max_pasid", self.max_pasid))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "iommu_device_ser") -> Self:
        _, devid, seg, att, dom, iommu, pasid, maxp = unpack_fields(
            what, cls._ST, buf, offset, cls._FIELDS, "iommu_device_ser")
        return cls(IommuHdrSer.decode(buf, offset, what), devid, seg, att, dom, iommu, pasid, maxp)


@dataclass(frozen=True)
class IommuHwSer:
    """Models ``struct iommu_hw_ser`` (with ``iommu_intel_ser``) from include/linux/kho/abi/iommu.h.

    Packed, 112 bytes: ``hdr`` @0 (8), ``token`` u64 @8 (VT-d: DRHD register
    base), ``type`` u64 @16 (``IOMMU_INTEL``), VT-d ``intel`` @24 =
    {``restored`` u8 @24, 7 padding bytes @25 (written 0, ignored on read),
    ``phys_addr`` (here ``reg_phys``) u64 @32, ``root_table`` u64 @40,
    ``context_tables_bitmap`` u64[8] @48 (bit b set = context table of bus b
    preserved)}.
    """

    hdr: IommuHdrSer
    token: int
    type: int
    restored: int = 0
    reg_phys: int = 0
    root_table: int = 0
    context_tables_bitmap: tuple[int, ...] = field(default=(0,) * VTD_CONTEXT_BITMAP_WORDS)

    SIZE: ClassVar[int] = 112
    _ST: ClassVar[struct.Struct] = struct.Struct("<8sQQB7xQQ8Q")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("hdr", 0, 8), ("token", 8, 8), ("type", 16, 8), ("intel.restored", 24, 1),
        ("intel.padding", 25, 7), ("intel.phys_addr", 32, 8), ("intel.root_table", 40, 8),
        ("intel.context_tables_bitmap", 48, 64))

    def context_table_preserved(self, bus: int) -> bool:
        _u("bus", bus, 9)
        return bool(self.context_tables_bitmap[bus // 64] >> (bus % 64) & 1)

    def encode(self) -> bytes:
        n = "iommu_hw_ser"
        if len(self.context_tables_bitmap) != VTD_CONTEXT_BITMAP_WORDS:
            raise ValueError(f"{n}.intel.context_tables_bitmap: need "
                             f"{VTD_CONTEXT_BITMAP_WORDS} words")
        words = [_u(f"{n}.intel.context_tables_bitmap[{i}]", w)
                 for i, w in enumerate(self.context_tables_bitmap)]
        return self._ST.pack(self.hdr.encode(), _u(f"{n}.token", self.token),
                             _u(f"{n}.type", self.type),
                             _u(f"{n}.intel.restored", self.restored, 8),
                             _u(f"{n}.intel.phys_addr", self.reg_phys),
                             _u(f"{n}.intel.root_table", self.root_table), *words)

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "iommu_hw_ser") -> Self:
        vals = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS, "iommu_hw_ser")
        return cls(IommuHdrSer.decode(buf, offset, what), vals[1], vals[2], vals[3], vals[4],
                   vals[5], tuple(vals[6:]))


assert struct.calcsize("<QQQQ") == IommuFlbSer.SIZE
assert struct.calcsize("<QQQ") == IommuFlbSerV1.SIZE
assert struct.calcsize("<QQ") == IommuArrayHdrSer.SIZE
assert struct.calcsize("<II") == IommuHdrSer.SIZE
assert struct.calcsize("<8sQQIIQ") == IommuDomainSer.SIZE
assert struct.calcsize("<8sIIQQQQQ") == IommuDeviceSer.SIZE
assert struct.calcsize("<8sQQB7xQQ8Q") == IommuHwSer.SIZE


def objs_per_page(obj_size: int) -> int:
    """``(PAGE_SIZE - 16) // obj_size``: 36 HW units, 102 domains, 72 devices."""
    if obj_size <= 0:
        raise ValueError("obj_size must be positive")
    return (PAGE_SIZE - IommuArrayHdrSer.SIZE) // obj_size


def encode_array_page(objects: Sequence[bytes], obj_size: int, next_array_phys: int) -> bytes:
    """One array page: header then the objects, zero fill to 4096 bytes (may be empty)."""
    cap = objs_per_page(obj_size)
    if len(objects) > cap:
        raise ValueError(f"{len(objects)} objects exceed the page capacity {cap}")
    for i, o in enumerate(objects):
        if len(o) != obj_size:
            raise ValueError(f"object {i} is {len(o)} bytes, expected {obj_size}")
    out = IommuArrayHdrSer(next_array_phys, len(objects)).encode() + b"".join(objects)
    return out.ljust(PAGE_SIZE, b"\0")


def decode_array_page(buf: bytes, obj_size: int, what: str,
                      base: int = 0) -> tuple[int, list[bytes]]:
    """``(next_array_phys, [object bytes])``; ``nr_objects`` above capacity is ``bad-value``."""
    cap = objs_per_page(obj_size)
    try:
        hdr = IommuArrayHdrSer.decode(buf, 0, what)
    except DecodeError as exc:
        raise DecodeError(what, base + exc.offset, exc.field, exc.reason, exc.kind) from None
    if hdr.nr_objects > cap:
        raise DecodeError(what, base + 8, "iommu_array_hdr_ser.nr_objects",
                          f"nr_objects {hdr.nr_objects} exceeds page capacity {cap}")
    start = IommuArrayHdrSer.SIZE
    if start + hdr.nr_objects * obj_size > len(buf):
        raise DecodeError(what, base + start, "objects", f"{hdr.nr_objects} objects do not fit",
                          kind="truncated")
    return hdr.next_array_phys, [bytes(buf[start + i * obj_size:start + (i + 1) * obj_size])
                                 for i in range(hdr.nr_objects)]


def walk_arrays(read_page: Callable[[int], bytes], head_phys: int, obj_size: int, what: str,
                max_pages: int = 1 << 16) -> list[bytes]:
    """Every object (deleted ones included) of an array chain, in order.

    ``head_phys == 0`` is a missing array (the kernel panics on that for the
    FLB's three arrays; the caller decides).  Cycles → ``cycle``; unaligned or
    unreadable pages → ``bad-pointer``; more than ``max_pages`` → ``bad-value``.
    """
    out: list[bytes] = []
    seen: set[int] = set()
    pa = head_phys
    while pa:
        if pa % PAGE_SIZE:
            raise DecodeError(what, pa, "iommu_array_hdr_ser.next_array_phys",
                              f"array page {pa:#x} is not page aligned", kind="bad-pointer")
        if pa in seen:
            raise DecodeError(what, pa, "iommu_array_hdr_ser.next_array_phys",
                              f"cycle: array page {pa:#x} visited twice", kind="cycle")
        if len(seen) >= max_pages:
            raise DecodeError(what, pa, "iommu_array_hdr_ser.next_array_phys",
                              f"more than {max_pages} array pages")
        seen.add(pa)
        try:
            page = read_page(pa)
        except Exception as exc:  # memory model errors → typed decode error
            raise DecodeError(what, pa, "iommu_array_hdr_ser.next_array_phys",
                              f"cannot read array page at {pa:#x}: {exc!r}",
                              kind="bad-pointer") from exc
        nxt, objs = decode_array_page(page, obj_size, what, base=pa)
        out.extend(objs)
        pa = nxt
    return out


# ----------------------------------------------------------------- VT-d hardware formats

VTD_ROOT_ENTRIES = 256
VTD_CONTEXT_ENTRIES = 256
VTD_ENTRY_SIZE = 16
VTD_ADDR_MASK = ~0xFFF & ((1 << 64) - 1)

# Context-entry translation types (legacy mode).
VTD_TT_MULTILEVEL = 0      # untranslated requests through second-level tables
VTD_TT_DEV_IOTLB = 1       # as 0, device-TLB (ATS) allowed
VTD_TT_PASSTHROUGH = 2
# Context-entry address widths (AW): page-table levels = AW + 2.
VTD_AW_39 = 1
VTD_AW_48 = 2
VTD_AW_57 = 3


def _page_addr(name: str, value: int) -> int:
    _u(name, value)
    if value & 0xFFF:
        raise ValueError(f"{name}: {value:#x} is not 4 KiB aligned")
    return value


@dataclass(frozen=True)
class VtdRootEntry:
    """VT-d legacy root entry (16 bytes, Intel VT-d spec §9.1); one per bus.

    ``lo`` bit 0 present, bits 12-63 context-table pointer; ``hi`` is
    reserved in legacy mode (kept raw).  Reserved ``lo`` bits 1-11 are written
    0 and ignored on read.
    """

    present: bool
    context_table: int = 0
    hi: int = 0

    SIZE: ClassVar[int] = 16
    _ST: ClassVar[struct.Struct] = struct.Struct("<QQ")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (("lo", 0, 8), ("hi", 8, 8))

    def encode(self) -> bytes:
        lo = _page_addr("vtd_root_entry.context_table", self.context_table) | int(self.present)
        return self._ST.pack(lo, _u("vtd_root_entry.hi", self.hi))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "vt-d root entry") -> Self:
        lo, hi = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS, "vtd_root_entry")
        return cls(bool(lo & 1), lo & VTD_ADDR_MASK, hi)


@dataclass(frozen=True)
class VtdContextEntry:
    """VT-d legacy context entry (16 bytes, Intel VT-d spec §9.3); one per devfn.

    ``lo``: bit 0 present, bit 1 fault-processing disable, bits 2-3
    translation type, bits 12-63 second-level page-table pointer.
    ``hi``: bits 0-2 address width, bits 8-23 domain id.  Other bits are
    written 0 and ignored on read.
    """

    present: bool
    translation_type: int = VTD_TT_MULTILEVEL
    slptptr: int = 0
    address_width: int = VTD_AW_48
    domain_id: int = 0
    fpd: bool = False

    SIZE: ClassVar[int] = 16
    _ST: ClassVar[struct.Struct] = struct.Struct("<QQ")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (("lo", 0, 8), ("hi", 8, 8))

    @property
    def levels(self) -> int:
        """Second-level page-table levels implied by ``address_width`` (AW 2 → 4 levels)."""
        return self.address_width + 2

    def encode(self) -> bytes:
        n = "vtd_context_entry"
        lo = (_page_addr(f"{n}.slptptr", self.slptptr)
              | _u(f"{n}.translation_type", self.translation_type, 2) << 2
              | int(self.fpd) << 1 | int(self.present))
        hi = _u(f"{n}.address_width", self.address_width, 3) | _u(
            f"{n}.domain_id", self.domain_id, 16) << 8
        return self._ST.pack(lo, hi)

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "vt-d context entry") -> Self:
        lo, hi = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS, "vtd_context_entry")
        return cls(present=bool(lo & 1), translation_type=(lo >> 2) & 3,
                   slptptr=lo & VTD_ADDR_MASK, address_width=hi & 7,
                   domain_id=(hi >> 8) & 0xFFFF, fpd=bool(lo >> 1 & 1))


# Second-level page-table entries (8 bytes): bit 0 R, bit 1 W, bits 12-51 address.
VTD_PTE_READ = 1 << 0
VTD_PTE_WRITE = 1 << 1
VTD_PTE_ADDR_MASK = ((1 << 52) - 1) & ~0xFFF
VTD_PT_ENTRIES = 512
VTD_PTE_SIZE = 8


@dataclass(frozen=True)
class VtdPte:
    """A VT-d second-level page-table entry (8 bytes, Intel VT-d spec §9.8, 4 KiB leaves).

    Bit 0 read, bit 1 write, bits 12-51 address of the next-level table or
    of the page; an entry with neither R nor W is not present.
    """

    addr: int
    read: bool = True
    write: bool = True

    SIZE: ClassVar[int] = 8
    _ST: ClassVar[struct.Struct] = struct.Struct("<Q")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (("value", 0, 8),)

    @property
    def present(self) -> bool:
        return self.read or self.write

    @property
    def value(self) -> int:
        return pte_value(self.addr, self.read, self.write)

    def encode(self) -> bytes:
        return self._ST.pack(self.value)

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "vt-d pte") -> Self:
        (v,) = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS, "vtd_pte")
        addr, r, w = pte_fields(v)
        return cls(addr, r, w)


def pte_value(addr: int, read: bool, write: bool) -> int:
    """The u64 of a second-level entry (``ValueError`` if ``addr`` is unaligned or > 52 bits)."""
    _page_addr("vtd_pte.addr", addr)
    if addr & ~VTD_PTE_ADDR_MASK:
        raise ValueError(f"vtd_pte.addr: {addr:#x} above 52 bits")
    return addr | (VTD_PTE_WRITE if write else 0) | (VTD_PTE_READ if read else 0)


def pte_fields(value: int) -> tuple[int, bool, bool]:
    """``(addr, read, write)`` of a second-level entry value (other bits ignored)."""
    return value & VTD_PTE_ADDR_MASK, bool(value & VTD_PTE_READ), bool(value & VTD_PTE_WRITE)


def pt_index(iova: int, level: int) -> int:
    """Index into the level-``level`` table (1 = leaf) for ``iova``: 9 bits per level."""
    if level < 1:
        raise ValueError(f"level {level} < 1")
    return (iova >> (12 + 9 * (level - 1))) & 0x1FF
