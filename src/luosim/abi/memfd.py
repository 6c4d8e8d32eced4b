"""memfd file-handler ABI (``memfd-v1``, ``memfd-v2``) and the KHO vmalloc descriptor.

Models include/linux/kho/abi/memfd.h (``struct memfd_luo_ser``,
``struct memfd_luo_folio_ser``) and the vmalloc preservation format of
include/linux/kho/abi/kexec_handover.h / kernel/liveupdate/kexec_handover.c
(``struct kho_vmalloc``, ``struct kho_vmalloc_chunk``); spec luo.md §5.3.

The LUO file record's ``data`` is the physical address of the 40/48-byte
``memfd_luo_ser``; its ``folios`` descriptor points at a chain of
``kho_vmalloc_chunk`` pages listing the physical pages that hold the array of
16-byte ``memfd_luo_folio_ser`` records.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

import numpy as np

from luosim.abi.block import FieldSpec, check_uint, unpack_fields
from luosim.abi.errors import DecodeError

PAGE_SIZE = 4096
PAGE_SHIFT = 12

MEMFD_LUO_FH_COMPATIBLE_V1 = "memfd-v1"
MEMFD_LUO_FH_COMPATIBLE_V2 = "memfd-v2"

# Folio flags (bits of the 12-bit flags field).
MEMFD_LUO_FOLIO_DIRTY = 1 << 0
MEMFD_LUO_FOLIO_UPTODATE = 1 << 1

# Seals (include/uapi/linux/fcntl.h).
F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_WRITE = 0x0008
F_SEAL_FUTURE_WRITE = 0x0010
F_SEAL_EXEC = 0x0020
#: Seals memfd-v2 can preserve; anything else → EOPNOTSUPP (preserve and retrieve).
MEMFD_LUO_ALL_SEALS = (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
                       | F_SEAL_FUTURE_WRITE | F_SEAL_EXEC)

# kho_vmalloc.flags (KHO-internal translation of VM_* flags).
KHO_VMALLOC_ALLOC = 0x0001
KHO_VMALLOC_HUGE_VMAP = 0x0002

#: phys[] entries per chunk page: (4096 - 8) // 8.
KHO_VMALLOC_SIZE = 511

PFN_BITS = 52
FOLIO_FLAG_BITS = 12


def _u(field_name: str, value: int, bits: int = 64) -> int:
    check_uint(field_name, value, bits)
    return value


@dataclass(frozen=True)
class KhoVmalloc:
    """Models ``struct kho_vmalloc`` from include/linux/kho/abi/kexec_handover.h.

    Not packed but naturally aligned, 16 bytes: ``first`` u64 @0 (phys of the
    first ``kho_vmalloc_chunk``, 0 if none), ``total_pages`` u32 @8, ``flags``
    u16 @12 (``KHO_VMALLOC_*``), ``order`` u16 @14.
    """

    first: int = 0
    total_pages: int = 0
    flags: int = 0
    order: int = 0

    SIZE: ClassVar[int] = 16
    _ST: ClassVar[struct.Struct] = struct.Struct("<QIHH")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("first", 0, 8), ("total_pages", 8, 4), ("flags", 12, 2), ("order", 14, 2))

    def encode(self) -> bytes:
        return self._ST.pack(_u("kho_vmalloc.first", self.first),
                             _u("kho_vmalloc.total_pages", self.total_pages, 32),
                             _u("kho_vmalloc.flags", self.flags, 16),
                             _u("kho_vmalloc.order", self.order, 16))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "kho_vmalloc") -> Self:
        first, total, flags, order = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS,
                                                   "kho_vmalloc")
        return cls(first, total, flags, order)


@dataclass(frozen=True)
class KhoVmallocChunk:
    """Models ``struct kho_vmalloc_chunk`` (kernel/liveupdate/kexec_handover.c): one page.

    ``hdr.next`` u64 @0 (phys of the next chunk, 0 = last) then
    ``phys[511]`` u64 @8.. listing preserved pages; the list ends at the first
    zero entry (or when all 511 are used).
    """

    next: int
    phys: tuple[int, ...] = ()

    SIZE: ClassVar[int] = PAGE_SIZE
    _ST: ClassVar[struct.Struct] = struct.Struct(f"<Q{KHO_VMALLOC_SIZE}Q")

    def encode(self) -> bytes:
        if len(self.phys) > KHO_VMALLOC_SIZE:
            raise ValueError(f"kho_vmalloc_chunk.phys: {len(self.phys)} entries exceed "
                             f"{KHO_VMALLOC_SIZE}")
        for i, p in enumerate(self.phys):
            _u(f"kho_vmalloc_chunk.phys[{i}]", p)
            if p == 0:
                raise ValueError(f"kho_vmalloc_chunk.phys[{i}]: 0 would end the list")
        vals = list(self.phys) + [0] * (KHO_VMALLOC_SIZE - len(self.phys))
        return self._ST.pack(_u("kho_vmalloc_chunk.hdr.next", self.next), *vals)

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "kho_vmalloc_chunk") -> Self:
        fields = (("hdr.next", 0, 8), ("phys", 8, 8 * KHO_VMALLOC_SIZE))
        vals = unpack_fields(what, cls._ST, buf, offset, fields, "kho_vmalloc_chunk")
        phys: list[int] = []
        for p in vals[1:]:
            if p == 0:
                break
            phys.append(p)
        return cls(vals[0], tuple(phys))


@dataclass(frozen=True)
class MemfdLuoFolioSer:
    """Models ``struct memfd_luo_folio_ser`` from include/linux/kho/abi/memfd.h.

    Packed, 16 bytes: one u64 @0 holding ``pfn`` (bits 0-51) and ``flags``
    (bits 52-63; ``MEMFD_LUO_FOLIO_DIRTY`` bit 0, ``..._UPTODATE`` bit 1),
    then ``index`` u64 @8 (page offset of the folio in the file).
    """

    pfn: int
    flags: int
    index: int

    SIZE: ClassVar[int] = 16
    _ST: ClassVar[struct.Struct] = struct.Struct("<QQ")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (("pfn|flags", 0, 8), ("index", 8, 8))

    def encode(self) -> bytes:
        word = (_u("memfd_luo_folio_ser.pfn", self.pfn, PFN_BITS)
                | _u("memfd_luo_folio_ser.flags", self.flags, FOLIO_FLAG_BITS) << PFN_BITS)
        return self._ST.pack(word, _u("memfd_luo_folio_ser.index", self.index))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "memfd folio") -> Self:
        word, index = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS,
                                    "memfd_luo_folio_ser")
        return cls(word & ((1 << PFN_BITS) - 1), word >> PFN_BITS, index)


@dataclass(frozen=True)
class MemfdLuoSerV1:
    """Models ``struct memfd_luo_ser`` (``memfd-v1``) from include/linux/kho/abi/memfd.h.

    Packed, 40 bytes: ``pos`` u64 @0, ``size`` u64 @8, ``nr_folios`` u64 @16,
    ``folios`` ``kho_vmalloc`` @24 (16 bytes).
    """

    pos: int
    size: int
    nr_folios: int
    folios: KhoVmalloc = field(default_factory=KhoVmalloc)

    COMPATIBLE: ClassVar[str] = MEMFD_LUO_FH_COMPATIBLE_V1
    SIZE: ClassVar[int] = 40
    _ST: ClassVar[struct.Struct] = struct.Struct("<QQQ16s")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("pos", 0, 8), ("size", 8, 8), ("nr_folios", 16, 8), ("folios", 24, 16))

    def encode(self) -> bytes:
        return self._ST.pack(_u("memfd_luo_ser.pos", self.pos), _u("memfd_luo_ser.size", self.size),
                             _u("memfd_luo_ser.nr_folios", self.nr_folios), self.folios.encode())

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "memfd_luo_ser v1") -> Self:
        pos, size, nr, _ = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS, "memfd_luo_ser")
        return cls(pos, size, nr, KhoVmalloc.decode(buf, offset + 24, what))


@dataclass(frozen=True)
class MemfdLuoSerV2:
    """Models ``struct memfd_luo_ser`` (``memfd-v2``) from include/linux/kho/abi/memfd.h.

    Packed, 48 bytes: ``pos`` u64 @0, ``size`` u64 @8, ``seals`` u32 @16,
    ``flags`` u32 @20 (unused, must be 0), ``nr_folios`` u64 @24, ``folios``
    ``kho_vmalloc`` @32 (16 bytes).  Unknown seals are not a decode error; the
    handler refuses them (``EOPNOTSUPP``) — see :attr:`unknown_seals`.
    """

    pos: int
    size: int
    seals: int
    flags: int
    nr_folios: int
    folios: KhoVmalloc = field(default_factory=KhoVmalloc)

    COMPATIBLE: ClassVar[str] = MEMFD_LUO_FH_COMPATIBLE_V2
    SIZE: ClassVar[int] = 48
    _ST: ClassVar[struct.Struct] = struct.Struct("<QQIIQ16s")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("pos", 0, 8), ("size", 8, 8), ("seals", 16, 4), ("flags", 20, 4), ("nr_folios", 24, 8),
        ("folios", 32, 16))

    @property
    def unknown_seals(self) -> int:
        return self.seals & ~MEMFD_LUO_ALL_SEALS

    def encode(self) -> bytes:
        return self._ST.pack(_u("memfd_luo_ser.pos", self.pos), _u("memfd_luo_ser.size", self.size),
                             _u("memfd_luo_ser.seals", self.seals, 32),
                             _u("memfd_luo_ser.flags", self.flags, 32),
                             _u("memfd_luo_ser.nr_folios", self.nr_folios), self.folios.encode())

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "memfd_luo_ser v2") -> Self:
        pos, size, seals, flags, nr, _ = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS,
                                                       "memfd_luo_ser")
        return cls(pos, size, seals, flags, nr, KhoVmalloc.decode(buf, offset + 32, what))


assert struct.calcsize("<QIHH") == KhoVmalloc.SIZE
assert struct.calcsize(f"<Q{KHO_VMALLOC_SIZE}Q") == KhoVmallocChunk.SIZE
assert struct.calcsize("<QQ") == MemfdLuoFolioSer.SIZE
assert struct.calcsize("<QQQ16s") == MemfdLuoSerV1.SIZE
assert struct.calcsize("<QQIIQ16s") == MemfdLuoSerV2.SIZE


def encode_folio_array(folios: Sequence[MemfdLuoFolioSer]) -> bytes:
    """The contiguous (vmalloc'ed) array of folio records, ``16 * len`` bytes."""
    return b"".join(f.encode() for f in folios)


def decode_folio_array(buf: bytes, nr_folios: int,
                       what: str = "memfd folio array") -> list[MemfdLuoFolioSer]:
    """``nr_folios`` records from the start of ``buf`` (``truncated`` if it is too short)."""
    if nr_folios * MemfdLuoFolioSer.SIZE > len(buf):
        raise DecodeError(what, len(buf) - len(buf) % MemfdLuoFolioSer.SIZE,
                          "memfd_luo_folio_ser", f"{nr_folios} folios need "
                          f"{nr_folios * MemfdLuoFolioSer.SIZE} bytes, have {len(buf)}",
                          kind="truncated")
    return [MemfdLuoFolioSer.decode(buf, i * MemfdLuoFolioSer.SIZE, what)
            for i in range(nr_folios)]


# -- bulk paths (numpy) ---------------------------------------------------------
#: ``struct memfd_luo_folio_ser`` as a numpy dtype: packed, 16 bytes, the
#: pfn:52/flags:12 word at 0 and ``index`` at 8 (see MemfdLuoFolioSer).
FOLIO_SER_DTYPE = np.dtype([("pfn_flags", "<u8"), ("index", "<u8")])
assert FOLIO_SER_DTYPE.itemsize == MemfdLuoFolioSer.SIZE


def encode_folio_runs(runs: Sequence[tuple[int, int, int, int]], flags: int) -> bytes:
    """The folio array of runs (index, pa, order, count), as :func:`encode_folio_array`
    of one record per folio would encode it (``flags`` on every record)."""
    check_uint("memfd_luo_folio_ser.flags", flags, FOLIO_FLAG_BITS)
    total = sum(r[3] for r in runs)
    out = np.empty(total, dtype=FOLIO_SER_DTYPE)
    pos = 0
    for index, pa, order, count in runs:
        k = np.arange(count, dtype=np.uint64) << np.uint64(order)
        pfn = np.uint64(pa >> PAGE_SHIFT) + k
        if count and int(pfn[-1]) >> PFN_BITS:
            raise ValueError(f"memfd_luo_folio_ser.pfn: {int(pfn[-1]):#x} exceeds {PFN_BITS} bits")
        out["pfn_flags"][pos:pos + count] = pfn | np.uint64(flags << PFN_BITS)
        out["index"][pos:pos + count] = np.uint64(index) + k
        pos += count
    return out.tobytes()


def decode_folio_arrays(buf: bytes, nr_folios: int, what: str = "memfd folio array"
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`decode_folio_array` as arrays (pfn, flags, index), uint64."""
    if nr_folios * MemfdLuoFolioSer.SIZE > len(buf):
        raise DecodeError(what, len(buf) - len(buf) % MemfdLuoFolioSer.SIZE,
                          "memfd_luo_folio_ser", f"{nr_folios} folios need "
                          f"{nr_folios * MemfdLuoFolioSer.SIZE} bytes, have {len(buf)}",
                          kind="truncated")
    recs = np.frombuffer(buf, dtype=FOLIO_SER_DTYPE, count=nr_folios)
    word = recs["pfn_flags"]
    return (word & np.uint64((1 << PFN_BITS) - 1), word >> np.uint64(PFN_BITS),
            recs["index"].copy())
