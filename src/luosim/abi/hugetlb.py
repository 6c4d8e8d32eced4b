"""hugetlb live-update ABI: the ``hugetlb-v1`` FLB and ``huge-memfd-v1`` files.

Models include/linux/kho/abi/hugetlb.h of the hugetlb live-update series
("[RFC PATCH 00/10] liveupdate: hugetlb support", Pratyush Yadav,
2025-12-07, <20251206230222.853493-1-pratyush@kernel.org>, base-commit
55b7d75112c2; tree prati0100/linux, header at commit 23652ff7960d and the
FLB code at 18ae0a38140c).  All structs are ``__packed``:

* ``struct hugetlb_hstate_ser`` (9 bytes): ``nr_pages`` u64 @0, ``order`` u8 @8;
* ``struct hugetlb_ser`` (37 bytes): ``hstates[HUGETLB_SER_MAX_HSTATES = 4]``
  @0, ``nr_hstates`` u8 @36 — the FLB's data, one per kernel;
* ``struct hugemfd_folio_ser`` (16 bytes): ``pfn:52`` + ``reserved:12`` in
  one u64 @0, ``index`` u64 @8 (page offset of the folio in the file, in
  base pages);
* ``struct hugemfd_ser`` (41 bytes): ``size`` u64 @0, ``pos`` u64 @8,
  ``nr_folios`` u64 @16, ``folios`` ``struct kho_vmalloc`` @24 (16 bytes),
  ``order`` u8 @40 — one per preserved file.

memfd_create(2) flags come from include/uapi/linux/memfd.h and
include/uapi/asm-generic/hugetlb_encode.h.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar, Self

from luosim.abi.block import FieldSpec, check_uint, unpack_fields
from luosim.abi.memfd import KhoVmalloc

HUGETLB_FLB_COMPATIBLE = "hugetlb-v1"
HUGE_MEMFD_COMPATIBLE = "huge-memfd-v1"
HUGETLB_SER_MAX_HSTATES = 4

# include/uapi/linux/memfd.h
MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
MFD_HUGETLB = 0x0004
MFD_NOEXEC_SEAL = 0x0008
MFD_EXEC = 0x0010
# include/uapi/asm-generic/hugetlb_encode.h: log2(page size) << 26
MFD_HUGE_SHIFT = 26
MFD_HUGE_MASK = 0x3F
MFD_HUGE_2MB = 21 << MFD_HUGE_SHIFT
MFD_HUGE_1GB = 30 << MFD_HUGE_SHIFT
#: memfd_create() rejects any other bit (mm/memfd.c MFD_ALL_FLAGS)
MFD_ALL_FLAGS = (MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | MFD_NOEXEC_SEAL | MFD_EXEC)

PFN_BITS = 52


def _u(name: str, value: int, bits: int = 64) -> int:
    check_uint(name, value, bits)
    return value


@dataclass(frozen=True)
class HugetlbHstateSer:
    """Models ``struct hugetlb_hstate_ser``: packed, 9 bytes."""

    nr_pages: int
    order: int

    SIZE: ClassVar[int] = 9
    _ST: ClassVar[struct.Struct] = struct.Struct("<QB")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (("nr_pages", 0, 8), ("order", 8, 1))

    def encode(self) -> bytes:
        return self._ST.pack(_u("hugetlb_hstate_ser.nr_pages", self.nr_pages),
                             _u("hugetlb_hstate_ser.order", self.order, 8))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "hugetlb_hstate_ser") -> Self:
        nr, order = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS, "hugetlb_hstate_ser")
        return cls(nr, order)


@dataclass(frozen=True)
class HugetlbSer:
    """Models ``struct hugetlb_ser``: packed, 37 bytes; unused hstate slots are zero."""

    hstates: tuple[HugetlbHstateSer, ...] = ()

    SIZE: ClassVar[int] = HUGETLB_SER_MAX_HSTATES * HugetlbHstateSer.SIZE + 1
    _ST: ClassVar[struct.Struct] = struct.Struct(f"<{HUGETLB_SER_MAX_HSTATES * 9}sB")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("hstates", 0, HUGETLB_SER_MAX_HSTATES * 9), ("nr_hstates", 36, 1))

    def encode(self) -> bytes:
        if len(self.hstates) > HUGETLB_SER_MAX_HSTATES:
            raise ValueError(f"hugetlb_ser.nr_hstates: {len(self.hstates)} > "
                             f"{HUGETLB_SER_MAX_HSTATES}")
        body = b"".join(h.encode() for h in self.hstates)
        return self._ST.pack(body.ljust(HUGETLB_SER_MAX_HSTATES * 9, b"\0"), len(self.hstates))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "hugetlb_ser") -> Self:
        _body, nr = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS, "hugetlb_ser")
        nr = min(nr, HUGETLB_SER_MAX_HSTATES)  # the kernel trusts it; never read past the array
        return cls(tuple(HugetlbHstateSer.decode(buf, offset + 9 * i, what) for i in range(nr)))

    def nr_pages(self, order: int) -> int:
        """``hugetlb_flb_get_hser()->nr_pages`` for ``order`` (0 when absent)."""
        for h in self.hstates:
            if h.order == order:
                return h.nr_pages
        return 0


@dataclass(frozen=True)
class HugemfdFolioSer:
    """Models ``struct hugemfd_folio_ser``: packed, 16 bytes (pfn:52, reserved:12, index)."""

    pfn: int
    index: int
    reserved: int = 0

    SIZE: ClassVar[int] = 16
    _ST: ClassVar[struct.Struct] = struct.Struct("<QQ")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (("pfn|reserved", 0, 8), ("index", 8, 8))

    def encode(self) -> bytes:
        word = (_u("hugemfd_folio_ser.pfn", self.pfn, PFN_BITS)
                | _u("hugemfd_folio_ser.reserved", self.reserved, 64 - PFN_BITS) << PFN_BITS)
        return self._ST.pack(word, _u("hugemfd_folio_ser.index", self.index))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "hugemfd_folio_ser") -> Self:
        word, index = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS, "hugemfd_folio_ser")
        return cls(word & ((1 << PFN_BITS) - 1), index, word >> PFN_BITS)


@dataclass(frozen=True)
class HugemfdSer:
    """Models ``struct hugemfd_ser``: packed, 41 bytes."""

    size: int
    pos: int
    nr_folios: int
    folios: KhoVmalloc = field(default_factory=KhoVmalloc)
    order: int = 0

    COMPATIBLE: ClassVar[str] = HUGE_MEMFD_COMPATIBLE
    SIZE: ClassVar[int] = 41
    _ST: ClassVar[struct.Struct] = struct.Struct("<QQQ16sB")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("size", 0, 8), ("pos", 8, 8), ("nr_folios", 16, 8), ("folios", 24, 16),
        ("order", 40, 1))

    def encode(self) -> bytes:
        return self._ST.pack(_u("hugemfd_ser.size", self.size), _u("hugemfd_ser.pos", self.pos),
                             _u("hugemfd_ser.nr_folios", self.nr_folios), self.folios.encode(),
                             _u("hugemfd_ser.order", self.order, 8))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "hugemfd_ser") -> Self:
        size, pos, nr, _desc, order = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS,
                                                    "hugemfd_ser")
        return cls(size, pos, nr, KhoVmalloc.decode(buf, offset + 24, what), order)


def encode_hugemfd_folios(folios: list[HugemfdFolioSer]) -> bytes:
    return b"".join(f.encode() for f in folios)


def decode_hugemfd_folios(buf: bytes, nr: int) -> list[HugemfdFolioSer]:
    """``nr`` records from the start of ``buf``; ValueError when it is too short."""
    if nr * HugemfdFolioSer.SIZE > len(buf):
        raise ValueError(f"{nr} hugemfd folios need {nr * 16} bytes, have {len(buf)}")
    return [HugemfdFolioSer.decode(buf, 16 * i) for i in range(nr)]


def mfd_huge_log(flags: int) -> int:
    """log2 of the huge page size encoded in ``flags`` (0: the default hstate)."""
    return (flags >> MFD_HUGE_SHIFT) & MFD_HUGE_MASK


assert struct.calcsize("<QB") == HugetlbHstateSer.SIZE
assert struct.calcsize(f"<{HUGETLB_SER_MAX_HSTATES * 9}sB") == HugetlbSer.SIZE
assert struct.calcsize("<QQQ16sB") == HugemfdSer.SIZE
