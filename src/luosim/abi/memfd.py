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

import numpy as np

from luosim.abi.block import check_uint
from luosim.abi.cdecl import CStruct, codec, declare
from luosim.abi.errors import DecodeError
from luosim.hw.memory import BytePiece, Field, GenPiece, Records

KHO_H = "torvalds/linux@c17ee635 include/linux/kho/abi/kexec_handover.h"
KHO_C = "torvalds/linux@c17ee635 kernel/liveupdate/kexec_handover.c"
MEMFD_H = "torvalds/linux@ac2d8102 include/linux/kho/abi/memfd.h"
MEMFD_H_V2 = ("include/linux/kho/abi/memfd.h, memfd-v2 revision with seals and flags (LUO series, "
              "spec luo.md §5.3; layout checked against a stored copy of that header)")

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


# -- generated records (hw.memory.Records) -----------------------------------------
#: One ``memfd_luo_folio_ser`` per folio as generated-record fields: the
#: pfn:52/flags:12 word at 0 and ``index`` at 8, both stepping by the folio size.
_FOLIO_FIELDS = ((0, 8), (8, 8))


def folio_records(runs: Sequence[tuple[int, int, int, int]], flags: int) -> list[Records]:
    """The folio array of runs (index, pa, order, count) as generated records, one
    segment per run: the bytes :func:`encode_folio_runs` gives, at a cost per run."""
    check_uint("memfd_luo_folio_ser.flags", flags, FOLIO_FLAG_BITS)
    out: list[Records] = []
    for index, pa, order, count in runs:
        if count <= 0:
            continue
        step = 1 << order
        pfn0 = pa >> PAGE_SHIFT
        last = pfn0 + (count - 1) * step
        if last >> PFN_BITS:
            raise ValueError(f"memfd_luo_folio_ser.pfn: {last:#x} exceeds {PFN_BITS} bits")
        out.append(Records(MemfdLuoFolioSer.SIZE, count, (
            Field(0, 8, pfn0 | (flags << PFN_BITS), step),
            Field(8, 8, index, step))))
    return out


@dataclass(frozen=True)
class FolioSegments:
    """Decoded folio records as segments: record ``first[s] + k`` (k < ``count[s]``)
    has pfn ``pfn[s] + k * pfn_step[s]``, flags ``flags[s]`` and index
    ``index[s] + k * index_step[s]`` (uint64 arithmetic; int64 arrays)."""

    pfn: np.ndarray
    flags: np.ndarray
    index: np.ndarray
    pfn_step: np.ndarray
    index_step: np.ndarray
    count: np.ndarray

    @property
    def nr(self) -> int:
        return int(self.count.sum())

    def expand(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pfn, flags, index) per record, as :func:`decode_folio_arrays` gives them."""
        n = self.nr
        seg = np.repeat(np.arange(self.count.size), self.count)
        first = np.concatenate(([0], np.cumsum(self.count)[:-1])) if self.count.size else \
            np.zeros(0, dtype=np.int64)
        k = (np.arange(n, dtype=np.int64) - first[seg]).astype(np.uint64)
        pfn = self.pfn.astype(np.uint64)[seg] + k * self.pfn_step.astype(np.uint64)[seg]
        idx = self.index.astype(np.uint64)[seg] + k * self.index_step.astype(np.uint64)[seg]
        return pfn, self.flags.astype(np.uint64)[seg], idx


def _linear_field(rec: Records, offset: int) -> Field | None:
    """The field at ``offset`` if it is the only one there (absent: zero)."""
    hits = [f for f in rec.fields
            if f.offset < offset + 8 and offset < f.offset + f.width * f.count]
    if not hits:
        return Field(offset, 8, 0, 0)
    if len(hits) == 1 and hits[0].offset == offset and hits[0].width == 8 and hits[0].count == 1:
        return hits[0]
    return None


def _gen_segment(rec: Records, k0: int, n: int) -> tuple[int, int, int, int, int] | None:
    """(pfn, flags, index, pfn step, index step) of records ``k0..k0+n`` of ``rec``
    when they decode linearly (no carry into the flags, no wrap), else None."""
    if rec.size != MemfdLuoFolioSer.SIZE or k0 + n > rec.nrec:
        return None
    word, idx = _linear_field(rec, 0), _linear_field(rec, 8)
    if word is None or idx is None:
        return None
    w0 = word.base + k0 * word.step
    i0 = idx.base + k0 * idx.step
    mask = (1 << PFN_BITS) - 1
    if (word.step >> PFN_BITS or (w0 & mask) + (n - 1) * word.step > mask
            or w0 + (n - 1) * word.step >> 64 or i0 + (n - 1) * idx.step >> 64):
        return None
    return w0 & mask, w0 >> PFN_BITS, i0, word.step, idx.step


def decode_folio_pieces(pieces: Sequence[BytePiece | GenPiece], nr_folios: int,
                        what: str = "memfd folio array") -> FolioSegments:
    """:func:`decode_folio_arrays` of the bytes of ``pieces`` (memory pieces in
    area order), as segments: generated pages whose records are folio records
    decode per descriptor, everything else byte by byte.  Same result and
    same errors as decoding the joined bytes."""
    size = MemfdLuoFolioSer.SIZE
    total = sum(p.length for p in pieces)
    if nr_folios * size > total:
        raise DecodeError(what, total - total % size, "memfd_luo_folio_ser",
                          f"{nr_folios} folios need {nr_folios * size} bytes, have {total}",
                          kind="truncated")
    segs: list[tuple[int, int, int, int, int, int]] = []  # pfn, flags, index, dp, di, n
    pending: list[bytes] = []
    pos = 0  # bytes of the area consumed (decoded or pending)
    done = 0  # records decoded

    def flush() -> None:
        nonlocal done
        raw = b"".join(pending)
        pending.clear()
        n = min(len(raw) // size, nr_folios - done)
        if n <= 0:
            return
        pfn, flags, index = decode_folio_arrays(raw, n, what)
        segs.extend(_byte_segments(pfn, flags, index))
        done += n

    for p in pieces:
        if pos >= nr_folios * size:
            break
        if isinstance(p, GenPiece) and pos % size == 0 and p.off % size == 0:
            k0 = p.off // size
            n = min(p.length // size, nr_folios - pos // size)
            lin = _gen_segment(p.records, k0, n) if n > 0 else None
            if lin is not None and p.length % size == 0:
                flush()
                segs.append((*lin, n))
                done += n
                pos += p.length
                continue
        pending.append(p.materialise() if isinstance(p, GenPiece) else p.data)
        pos += p.length
    flush()
    arr = np.array(segs, dtype=np.uint64).reshape(-1, 6)
    cols = [arr[:, c].astype(np.int64) for c in range(6)]
    return FolioSegments(*cols)


def _byte_segments(pfn: np.ndarray, flags: np.ndarray, index: np.ndarray
                   ) -> list[tuple[int, int, int, int, int, int]]:
    """Per-record arrays as maximal segments of constant steps and flags."""
    n = int(pfn.size)
    if not n:
        return []
    with np.errstate(over="ignore"):
        dp = np.diff(pfn)
        di = np.diff(index)
    # record j+1 continues record j's segment when the steps and flags stay the same
    same = np.ones(max(0, n - 1), dtype=bool)
    if n > 2:
        same[1:] = (dp[1:] == dp[:-1]) & (di[1:] == di[:-1])
    same &= flags[1:] == flags[:-1]
    out: list[tuple[int, int, int, int, int, int]] = []
    breaks = np.flatnonzero(~same).tolist()  # a segment ends after record b
    start = 0
    for b in [*breaks, n - 1]:
        # records start..b+1 share steps except that a break at b ends at b
        end = b + 1  # exclusive
        i = start
        cnt = end - i
        out.append((int(pfn[i]), int(flags[i]), int(index[i]),
                    int(dp[i]) if cnt > 1 else 0, int(di[i]) if cnt > 1 else 0, cnt))
        start = end
    return out
