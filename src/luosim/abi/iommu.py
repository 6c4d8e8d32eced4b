"""IOMMU live-update ABI (spec pci.md §7.2 and "Corrections") and the Intel VT-d table formats.

``include/linux/kho/abi/iommu.h`` exists in three versions; each codec set
below follows one of them as a whole (:data:`IOMMU_ABIS`, chosen by the FLB
compatible):

* samikhawaja/linux ef754267 — ``"iommu-liveupdate-v1"``: 24-byte
  ``iommu_flb_ser`` (no version), 37-byte ``iommu_domain_ser`` (``__packed``
  with ``u32 sign_extend:1``: one byte, ``restored_domain`` at 29, 110 per
  page), 56-byte ``iommu_device_ser`` and 112-byte ``iommu_hw_ser`` with the
  VT-d unions.
* pran005/linux 22fa8f30 — ``"iommu-liveupdate"`` + version 1: 32-byte
  ``iommu_flb_ser``, 40-byte ``iommu_domain_ser`` (``u8 sign_extend`` + 3
  padding bytes), 72-byte ``iommu_device_ser`` with ``dma_owner_token`` at 16
  and the VT-d part {restored, pasid_table @56, max_pasid @64}, 112-byte
  ``iommu_hw_ser`` (same VT-d bytes as ef754267).
* samikhawaja/linux 07a49313 — ``"iommu-liveupdate"`` + version 1, generic
  part only (no VT-d): 40-byte device, 24-byte HW, 37-byte domain.  A VT-d
  kernel cannot write it (nowhere to keep root and context tables); it is
  decoded by ``luosim inspect``.

The FLB record's ``data`` is the physical address of ``struct
iommu_flb_ser``, which points at three chains of one-page arrays (HW units,
domains, devices).  Each array page is ``{u64 next_array_phys; u64
nr_objects}`` followed by fixed-size objects that all start with ``struct
iommu_hdr_ser``; objects are append-only and deleted ones keep their slot with
flag ``DELETED``.

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

from luosim.abi.block import FieldSpec, check_uint, pack_page, unpack_fields, walk_pages
from luosim.abi.cdecl import CStruct, codec, declare
from luosim.abi.errors import DecodeError

SAMI_EF75 = "samikhawaja/linux@ef754267 include/linux/kho/abi/iommu.h"
SAMI_07A4 = "samikhawaja/linux@07a49313 include/linux/kho/abi/iommu.h"
PRAN_22FA = "pran005/linux@22fa8f30 include/linux/kho/abi/iommu.h"

PAGE_SIZE = 4096

#: ``IOMMU_LUO_FLB_COMPATIBLE`` + ``IOMMU_LUO_FLB_VERSION`` (07a49313, 22fa8f30).
IOMMU_LUO_FLB_COMPATIBLE = "iommu-liveupdate"
IOMMU_LUO_FLB_VERSION = 1
#: ``IOMMU_LUO_FLB_COMPATIBLE`` of ef754267 (no version word).
IOMMU_LUO_FLB_COMPATIBLE_LU_V1 = "iommu-liveupdate-v1"
#: iommufd file handler (the IOMMU FLB is linked to it, not to vfio).
IOMMUFD_LUO_FH_COMPATIBLE = "iommufd-v1"

#: ``enum iommu_type_ser`` (ef754267; 22fa8f30 adds IOMMU_ARM_SMMUV3 = 2).
IOMMU_INVALID = 0
IOMMU_INTEL = 1
IOMMU_ARM_SMMUV3 = 2

IOMMU_SER_FLAG_DELETED = 1 << 0
IOMMU_SER_FLAG_INCOMING = 1 << 1

#: Words of ``iommu_intel_ser.context_tables_bitmap`` (512 context tables).
VTD_CONTEXT_BITMAP_WORDS = 8

# Identical in all three versions.
declare("""
struct iommu_hdr_ser {
    u32 ref_count;
    u32 flags;
} __packed;
struct iommu_array_hdr_ser {
    u64 next_array_phys;
    u64 nr_objects;
} __packed;
struct iommu_dev_map_ser {
    u64 attachment_id;
    u64 domain_phys;
    u64 iommu_phys;
} __packed;
struct iommu_domain_ser {
    struct iommu_hdr_ser hdr;
    u64 top_table_phys;
    u64 top_level;
    u32 vasz;
    u32 sign_extend:1;
    u64 restored_domain;    /* struct iommu_domain *: 8 bytes on x86-64 */
} __packed;
""")
# ef754267: iommu_intel_ser is not __packed (natural alignment, no holes).
declare("""
struct iommu_intel_ser {
    u8 restored;
    u8 padding[7];
    u64 phys_addr;
    u64 root_table;
    u64 context_tables_bitmap[8];
};
""")
declare("""
struct iommu_device_intel_ser {
    u64 pasid_table;
    u64 max_pasid;
} __packed;
struct iommu_device_ser {
    struct iommu_hdr_ser hdr;
    u32 devid;
    u32 pci_domain_nr;
    struct iommu_dev_map_ser domain_iommu_ser;
    union {
        struct iommu_device_intel_ser intel;
    };
} __packed;
struct iommu_hw_ser {
    struct iommu_hdr_ser hdr;
    u64 token;
    u64 type;
    union {
        struct iommu_intel_ser intel;
    };
} __packed;
struct iommu_flb_ser__v1 {
    u64 iommu_array_phys;
    u64 iommu_domain_array_phys;
    u64 device_array_phys;
} __packed;
""")
# 07a49313: the generic layout, no vendor part.
declare("""
struct iommu_device_ser__generic {
    struct iommu_hdr_ser hdr;
    u32 devid;
    u32 pci_domain_nr;
    struct iommu_dev_map_ser domain_iommu_ser;
} __packed;
struct iommu_hw_ser__generic {
    struct iommu_hdr_ser hdr;
    u64 token;
    u64 type;
} __packed;
struct iommu_flb_ser {
    u64 version;
    u64 iommu_array_phys;
    u64 iommu_domain_array_phys;
    u64 device_array_phys;
} __packed;
""")
# 22fa8f30: u8 sign_extend, dma_owner_token, VT-d and SMMUv3 union members.
declare("""
struct iommu_domain_ser__pran {
    struct iommu_hdr_ser hdr;
    u64 top_table_phys;
    u64 top_level;
    u32 vasz;
    u8 sign_extend;
    u8 padding[3];
    u64 restored_domain;    /* struct iommu_domain * */
} __packed;
struct iommu_device_intel_ser__pran {
    u8 restored;
    u8 padding[7];
    u64 pasid_table;
    u64 max_pasid;
} __packed;
struct iommu_master_smmuv3_ser {
    u64 l1_cdtab_lu_state;
    u32 num_l2_cdtables;
    u32 padding;
    u64 l2_cdtab_lu_states_phys;
} __packed;
struct iommu_device_ser__pran {
    struct iommu_hdr_ser hdr;
    u32 devid;
    u32 pci_domain_nr;
    u64 dma_owner_token;
    struct iommu_dev_map_ser domain_iommu_ser;
    union {
        struct iommu_device_intel_ser__pran intel;
        struct iommu_master_smmuv3_ser smmuv3;
    };
} __packed;
struct iommu_smmuv3_hw_ser {
    u64 phys_addr;
    u64 strtab_base_cfg;
    u64 l1_strtab_lu_state;
    u64 l2_strtab_lu_states_phys;
} __packed;
struct iommu_hw_ser__pran {
    struct iommu_hdr_ser hdr;
    u64 token;
    u64 type;
    union {
        struct iommu_intel_ser intel;
        struct iommu_smmuv3_hw_ser smmuv3;
    };
} __packed;
""")


def _u(name: str, value: int, bits: int = 64) -> int:
    check_uint(name, value, bits)
    return value


# ----------------------------------------------------------------- FLB top level


@codec("iommu_flb_ser", f"{SAMI_07A4}; {PRAN_22FA}")
@dataclass(frozen=True)
class IommuFlbSer(CStruct):
    """``"iommu-liveupdate"`` top level: version (= 1) and the three array heads (32 bytes)."""

    version: int
    iommu_array_phys: int
    iommu_domain_array_phys: int
    device_array_phys: int


@codec("iommu_flb_ser__v1", SAMI_EF75)
@dataclass(frozen=True)
class IommuFlbSerV1(CStruct):
    """``"iommu-liveupdate-v1"`` top level: the three array heads, no version (24 bytes)."""

    iommu_array_phys: int
    iommu_domain_array_phys: int
    device_array_phys: int


# ----------------------------------------------------------------- objects


@codec("iommu_array_hdr_ser", SAMI_EF75, what="iommu array")
@dataclass(frozen=True)
class IommuArrayHdrSer(CStruct):
    """Array page header: next page phys (0 = last), objects used (deleted ones included)."""

    next_array_phys: int
    nr_objects: int


@codec("iommu_hdr_ser", SAMI_EF75, what="iommu object")
@dataclass(frozen=True)
class IommuHdrSer(CStruct):
    """Common object header: ``ref_count``, ``IOMMU_SER_FLAG_*`` flags."""

    ref_count: int = 0
    flags: int = 0

    @property
    def deleted(self) -> bool:
        return bool(self.flags & IOMMU_SER_FLAG_DELETED)

    @property
    def incoming(self) -> bool:
        return bool(self.flags & IOMMU_SER_FLAG_INCOMING)


@codec("iommu_domain_ser", f"{SAMI_EF75}; {SAMI_07A4}")
@dataclass(frozen=True)
class IommuDomainSer(CStruct):
    """Domain object, 37 bytes: ``sign_extend`` is bit 0 of byte 28, ``restored_domain`` at 29.

    ``restored_domain`` is a kernel pointer meaningful only in the new
    kernel (kept as an opaque integer).
    """

    hdr: IommuHdrSer
    top_table_phys: int
    top_level: int
    vasz: int
    sign_extend: bool = False
    restored_domain: int = 0


@codec("iommu_domain_ser__pran", PRAN_22FA)
@dataclass(frozen=True)
class IommuDomainSerPran(IommuDomainSer):
    """Domain object of 22fa8f30, 40 bytes: ``u8 sign_extend`` at 28, ``restored_domain`` at 32."""


@codec("iommu_device_ser__generic", SAMI_07A4)
@dataclass(frozen=True)
class IommuDeviceSerGeneric(CStruct):
    """Device object of 07a49313 without a vendor part, 40 bytes."""

    hdr: IommuHdrSer
    devid: int
    pci_domain_nr: int
    attachment_id: int
    domain_phys: int
    iommu_phys: int


@codec("iommu_device_ser", SAMI_EF75)
@dataclass(frozen=True)
class IommuDeviceSer(IommuDeviceSerGeneric):
    """Device object with the VT-d union, 56 bytes (``attachment_id``: the VT-d domain id)."""

    pasid_table: int = 0
    max_pasid: int = 0


@codec("iommu_device_ser__pran", PRAN_22FA)
@dataclass(frozen=True)
class IommuDeviceSerPran(IommuDeviceSer):
    """Device object of 22fa8f30, 72 bytes: ``dma_owner_token`` at 16, VT-d part at 48."""

    dma_owner_token: int = 0
    restored: int = 0


@codec("iommu_hw_ser__generic", SAMI_07A4)
@dataclass(frozen=True)
class IommuHwSerGeneric(CStruct):
    """HW unit of 07a49313 without a vendor part, 24 bytes."""

    hdr: IommuHdrSer
    token: int
    type: int


@codec("iommu_hw_ser", f"{SAMI_EF75}; same bytes as {PRAN_22FA}",
       renames={"intel.phys_addr": "reg_phys"})
@dataclass(frozen=True)
class IommuHwSer(IommuHwSerGeneric):
    """HW unit with ``iommu_intel_ser``, 112 bytes.

    ``token`` (VT-d: DRHD register base), ``type`` (``IOMMU_INTEL``), then
    ``restored`` @24, 7 padding bytes, ``phys_addr`` (here ``reg_phys``) @32,
    ``root_table`` @40, ``context_tables_bitmap`` u64[8] @48 (bit b set =
    context table of bus b preserved).
    """

    restored: int = 0
    reg_phys: int = 0
    root_table: int = 0
    context_tables_bitmap: tuple[int, ...] = field(default=(0,) * VTD_CONTEXT_BITMAP_WORDS)

    def context_table_preserved(self, bus: int) -> bool:
        _u("bus", bus, 9)
        return bool(self.context_tables_bitmap[bus // 64] >> (bus % 64) & 1)


@dataclass(frozen=True)
class IommuAbi:
    """One version of iommu.h as a whole: the codecs a kernel built from it uses."""

    source: str
    compatible: str
    version: int | None  # the iommu_flb_ser version word, None if the struct has none
    flb: type[IommuFlbSer] | type[IommuFlbSerV1]
    hw: type[IommuHwSerGeneric]
    domain: type[IommuDomainSer]
    device: type[IommuDeviceSerGeneric]
    vtd: bool  # carries the VT-d union (root/context tables, PASID table)


IOMMU_ABI_SAMI_EF75 = IommuAbi(SAMI_EF75, IOMMU_LUO_FLB_COMPATIBLE_LU_V1, None, IommuFlbSerV1,
                               IommuHwSer, IommuDomainSer, IommuDeviceSer, True)
IOMMU_ABI_PRAN_22FA = IommuAbi(PRAN_22FA, IOMMU_LUO_FLB_COMPATIBLE, IOMMU_LUO_FLB_VERSION,
                               IommuFlbSer, IommuHwSer, IommuDomainSerPran, IommuDeviceSerPran,
                               True)
IOMMU_ABI_SAMI_07A4 = IommuAbi(SAMI_07A4, IOMMU_LUO_FLB_COMPATIBLE, IOMMU_LUO_FLB_VERSION,
                               IommuFlbSer, IommuHwSerGeneric, IommuDomainSer,
                               IommuDeviceSerGeneric, False)

#: The VT-d-capable header a kernel with this FLB compatible is built from.
IOMMU_ABIS: dict[str, IommuAbi] = {
    IOMMU_LUO_FLB_COMPATIBLE_LU_V1: IOMMU_ABI_SAMI_EF75,
    IOMMU_LUO_FLB_COMPATIBLE: IOMMU_ABI_PRAN_22FA,
}


def iommu_abi(compatible: str) -> IommuAbi:
    """The :class:`IommuAbi` of an FLB compatible (``ValueError`` if none is modelled)."""
    try:
        return IOMMU_ABIS[compatible]
    except KeyError:
        raise ValueError(f"no iommu.h layout for FLB compatible {compatible!r} "
                         f"(known: {', '.join(IOMMU_ABIS)})") from None


def objs_per_page(obj_size: int) -> int:
    """``(PAGE_SIZE - 16) // obj_size``: 36 HW units; 110 (ef754267) or 102 (22fa8f30) domains."""
    if obj_size <= 0:
        raise ValueError("obj_size must be positive")
    return (PAGE_SIZE - IommuArrayHdrSer.SIZE) // obj_size


def encode_array_page(objects: Sequence[bytes], obj_size: int, next_array_phys: int) -> bytes:
    """One array page: header then the objects, zero fill to 4096 bytes (may be empty)."""
    return pack_page(IommuArrayHdrSer(next_array_phys, len(objects)).encode(), objects,
                     obj_size, "array page")


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
    return walk_pages(read_page, head_phys, what, "iommu_array_hdr_ser.next_array_phys",
                      lambda page, pa: decode_array_page(page, obj_size, what, base=pa),
                      max_pages, "array page")


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
