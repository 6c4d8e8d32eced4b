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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

from luosim.abi.cdecl import CStruct, codec, declare

KHO_H = "torvalds/linux@c17ee635 include/linux/kho/abi/kexec_handover.h"
KHO_C = "torvalds/linux@c17ee635 kernel/liveupdate/kexec_handover.c"
MEMFD_H = "torvalds/linux@ac2d8102 include/linux/kho/abi/memfd.h"
MEMFD_H_V2 = ("include/linux/kho/abi/memfd.h, memfd-v2 revision with seals and flags (LUO series, "
              "spec luo.md §5.3; layout checked against a stored copy of that header)")

PAGE_SIZE = 4096

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


declare("""
struct kho_vmalloc {
    u64 first;              /* DECLARE_KHOSER_PTR(first, struct kho_vmalloc_chunk *) */
    unsigned int total_pages;
    unsigned short flags;
    unsigned short order;
};
""")
declare("""
struct memfd_luo_folio_ser {
    u64 pfn:52;
    u64 flags:12;
    u64 index;
} __packed;
struct memfd_luo_ser {
    u64 pos;
    u64 size;
    u64 nr_folios;
    struct kho_vmalloc folios;
} __packed;
struct memfd_luo_ser__v2 {
    u64 pos;
    u64 size;
    u32 seals;
    u32 flags;
    u64 nr_folios;
    struct kho_vmalloc folios;
} __packed;
struct kho_vmalloc_chunk {
    u64 next;               /* struct kho_vmalloc_hdr hdr */
    u64 phys[511];
} __packed;
""")


@codec("kho_vmalloc", KHO_H)
@dataclass(frozen=True)
class KhoVmalloc(CStruct):
    """Vmalloc descriptor (naturally aligned, 16 bytes): first chunk phys (0 if none),
    ``total_pages``, ``flags`` (``KHO_VMALLOC_*``), ``order``."""

    first: int = 0
    total_pages: int = 0
    flags: int = 0
    order: int = 0


@codec("kho_vmalloc_chunk", KHO_C)
@dataclass(frozen=True)
class KhoVmallocChunk(CStruct):
    """One page of the chunk list: ``hdr.next`` (0 = last) then ``phys[511]``.

    ``phys`` here lists the used entries only; the list ends at the first
    zero entry (or when all 511 are used).
    """

    next: int
    phys: tuple[int, ...] = ()

    def encode(self) -> bytes:
        if len(self.phys) > KHO_VMALLOC_SIZE:
            raise ValueError(f"kho_vmalloc_chunk.phys: {len(self.phys)} entries exceed "
                             f"{KHO_VMALLOC_SIZE}")
        for i, p in enumerate(self.phys):
            if p == 0:
                raise ValueError(f"kho_vmalloc_chunk.phys[{i}]: 0 would end the list")
        full = self.phys + (0,) * (KHO_VMALLOC_SIZE - len(self.phys))
        return CStruct.encode(KhoVmallocChunk(self.next, full))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str | None = None) -> Self:
        raw = super().decode(buf, offset, what)
        phys = raw.phys
        end = phys.index(0) if 0 in phys else len(phys)
        return cls(raw.next, phys[:end])


@codec("memfd_luo_folio_ser", MEMFD_H, what="memfd folio")
@dataclass(frozen=True)
class MemfdLuoFolioSer(CStruct):
    """Folio record (16 bytes): ``pfn`` bits 0-51 and ``flags`` bits 52-63 of one u64
    (``MEMFD_LUO_FOLIO_DIRTY`` bit 0, ``..._UPTODATE`` bit 1), ``index`` (page offset)."""

    pfn: int
    flags: int
    index: int


@codec("memfd_luo_ser", MEMFD_H, what="memfd_luo_ser v1")
@dataclass(frozen=True)
class MemfdLuoSerV1(CStruct):
    """``memfd-v1`` record (40 bytes): ``pos``, ``size``, ``nr_folios``, ``folios`` @24."""

    pos: int
    size: int
    nr_folios: int
    folios: KhoVmalloc = field(default_factory=KhoVmalloc)

    COMPATIBLE: ClassVar[str] = MEMFD_LUO_FH_COMPATIBLE_V1


@codec("memfd_luo_ser__v2", MEMFD_H_V2, what="memfd_luo_ser v2")
@dataclass(frozen=True)
class MemfdLuoSerV2(CStruct):
    """``memfd-v2`` record (48 bytes): ``pos``, ``size``, ``seals`` @16, ``flags`` @20 (0),
    ``nr_folios`` @24, ``folios`` @32.  Unknown seals are not a decode error; the
    handler refuses them (``EOPNOTSUPP``) — see :attr:`unknown_seals`."""

    pos: int
    size: int
    seals: int
    flags: int
    nr_folios: int
    folios: KhoVmalloc = field(default_factory=KhoVmalloc)

    COMPATIBLE: ClassVar[str] = MEMFD_LUO_FH_COMPATIBLE_V2

    @property
    def unknown_seals(self) -> int:
        return self.seals & ~MEMFD_LUO_ALL_SEALS


def encode_folio_array(folios: Sequence[MemfdLuoFolioSer]) -> bytes:
    """The contiguous (vmalloc'ed) array of folio records, ``16 * len`` bytes."""
    return MemfdLuoFolioSer.encode_array(folios)


def decode_folio_array(buf: bytes, nr_folios: int,
                       what: str = "memfd folio array") -> list[MemfdLuoFolioSer]:
    """``nr_folios`` records from the start of ``buf`` (``truncated`` if it is too short)."""
    return MemfdLuoFolioSer.decode_array(buf, nr_folios, what)
