"""memfd files and their live-update handler: models mm/memfd.c + mm/memfd_luo.c.

A :class:`MemfdFile` is a shmem file without links: its content lives in
folios (``index`` = page offset of the folio's head, ``pa``, ``order``)
allocated from the kernel's page allocator, naturally aligned, of the
file's folio order (0 for small pages, up to 9 for PMD-sized THP; an 8 GiB
memfd of order 9 is 4096 folios).  The file keeps them as runs of folios
contiguous in the file and in physical memory, so every operation costs per
run, not per folio.  Byte content goes through
:meth:`MemfdFile.write`/:meth:`read`; bulk synthetic content through
:meth:`fill` (whole folios, one extent per run:
:meth:`PhysicalMemory.fill_run`), compared with :meth:`fingerprint`.

:class:`MemfdLuoHandler` is the LUO file handler (spec luo.md §5.3):
``memfd-v1`` or ``memfd-v2`` (with seals), as the profile's memfd layer says.
Everything it hands over is in physical memory: the ``memfd_luo_ser``
record (``kho_alloc_preserve``), the folio array (``kho_preserve_vmalloc``)
and the folios themselves (``kho_preserve_folio``, per run); the next
kernel rebuilds the file from those bytes alone.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np

from luosim.abi.errors import DecodeError
from luosim.abi.hugetlb import MFD_ALL_FLAGS, MFD_HUGETLB
from luosim.abi.memfd import (
    F_SEAL_FUTURE_WRITE,
    F_SEAL_GROW,
    F_SEAL_SEAL,
    F_SEAL_SHRINK,
    F_SEAL_WRITE,
    MEMFD_LUO_ALL_SEALS,
    MEMFD_LUO_FH_COMPATIBLE_V1,
    MEMFD_LUO_FH_COMPATIBLE_V2,
    MEMFD_LUO_FOLIO_DIRTY,
    MEMFD_LUO_FOLIO_UPTODATE,
    FolioSegments,
    KhoVmalloc,
    MemfdLuoSerV1,
    MemfdLuoSerV2,
    decode_folio_pieces,
    folio_records,
)
from luosim.errors import KernelError
from luosim.faults import point
from luosim.hw.memory import PAGE_SHIFT, PAGE_SIZE, ZERO_SEED, derive_seed
from luosim.kernel.liveupdate.file import FileHandler, FileOpArgs
from luosim.kernel.vfs import File, check_alive

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel

FP_PRESERVE = point("memfd.preserve", ("ENOMEM", "EFBIG"),
                    "memfd_luo_preserve() fails (allocation, or more than UINT_MAX pages)")
FP_RETRIEVE = point("memfd.retrieve", ("ENOMEM", "EIO"),
                    "memfd_luo_retrieve() fails (allocation, or a folio cannot be restored)")

#: Largest folio order a memfd uses (PMD-sized THP with 4 KiB pages).
MAX_MEMFD_FOLIO_ORDER = 9
UINT_MAX = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
_SEALS_KNOWN = MEMFD_LUO_ALL_SEALS


#: Alignments (page orders) large file allocations ask of the page allocator:
#: the IOMMU's 1 GiB and 2 MiB page sizes (PUD and PMD orders).
PUD_ORDER = 18
PMD_ORDER = 9


def bulk_align(index: int, npages: int) -> int:
    """Page order a bulk allocation of ``npages`` at file page ``index`` is placed on.

    Modelling choice (see :meth:`PageAllocator.alloc_pages_bulk`): a
    buddy allocator serves a large allocation from whole naturally aligned
    free blocks, so guest RAM of at least 1 GiB (2 MiB) lands on 1 GiB
    (2 MiB) boundaries - where its file offset is so aligned - and iommufd
    maps it with the largest IOMMU pages, as ``iommu_map()`` does for
    physically contiguous, aligned pfn batches.  Smaller allocations keep
    plain first fit.
    """
    for order in (PUD_ORDER, PMD_ORDER):
        if npages >= 1 << order and not index & ((1 << order) - 1):
            return order
    return 0


def folio_seed(seed: int, index: int) -> int:
    """Per-folio seed of :meth:`MemfdFile.fill` (never the zero seed)."""
    return derive_seed(seed, index)


class MemfdFile(File):
    """A memfd: shmem file with folios, seals and live-update freezing."""

    def __init__(self, subsys: MemfdSubsystem, name: str, *, folio_order: int = 0,
                 install_fd: bool = True) -> None:
        if not 0 <= folio_order <= MAX_MEMFD_FOLIO_ORDER:
            raise KernelError(errno.EINVAL, f"folio order {folio_order} not in 0..9")
        super().__init__(subsys.kernel, f"memfd:{name}", install_fd=install_fd)
        self.subsys = subsys
        self.mem = subsys.kernel.machine.memory
        self.folio_order = folio_order
        self.size = 0
        self.pos = 0
        self.seals = 0
        # folios as runs [index, pa, order, count]: ``count`` folios of ``order``
        # contiguous in the file and in physical memory, sorted by index
        self._fidx: list[int] = []
        self._fruns: list[list[int]] = []
        self._nfolios = 0
        self.frozen = False  # preserved by LUO: size changes refused (EPERM)
        self.hugetlb = False
        self.nlink = 0
        self.inode = object()  # identity for LUO's get_id

    # ------------------------------------------------------------------ folios
    def _find(self, page: int) -> tuple[int, int, int] | None:
        """(head index, pa, order) of the folio holding page ``page``."""
        i = bisect.bisect_right(self._fidx, page) - 1
        if i < 0:
            return None
        index, pa, order, count = self._fruns[i]
        k = (page - index) >> order
        if k >= count:
            return None
        return index + (k << order), pa + (k << (order + PAGE_SHIFT)), order

    def _add_run(self, index: int, pa: int, order: int, count: int) -> None:
        """Folios ``index + k << order`` at ``pa + k << order`` pages (k < count)."""
        if count <= 0:
            return
        i = bisect.bisect_left(self._fidx, index)
        self._nfolios += count
        if i > 0:  # continue the run before when file and physical addresses follow on
            prev = self._fruns[i - 1]
            if (prev[2] == order and prev[0] + (prev[3] << order) == index
                    and prev[1] + (prev[3] << (order + PAGE_SHIFT)) == pa):
                prev[3] += count
                if i < len(self._fruns):
                    nxt = self._fruns[i]
                    if (nxt[2] == order and index + (count << order) == nxt[0]
                            and pa + (count << (order + PAGE_SHIFT)) == nxt[1]):
                        prev[3] += nxt[3]
                        del self._fidx[i], self._fruns[i]
                return
        if i < len(self._fruns):  # or prepend to the run after
            nxt = self._fruns[i]
            if (nxt[2] == order and index + (count << order) == nxt[0]
                    and pa + (count << (order + PAGE_SHIFT)) == nxt[1]):
                nxt[0], nxt[1], nxt[3] = index, pa, nxt[3] + count
                self._fidx[i] = index
                return
        self._fidx.insert(i, index)
        self._fruns.insert(i, [index, pa, order, count])

    def _alloc_range(self, first: int, nfolios: int, seed: int = ZERO_SEED,
                     family: bool = False) -> None:
        """``shmem_get_folio()`` of ``nfolios`` new folios of the file's order from
        page ``first`` (a hole), first fit as one allocation per folio would be.

        Content zero, or synthetic: folio at page ``p`` gets ``folio_seed(seed, p)``.
        """
        order = self.folio_order
        index = first
        for pa, n in self.kernel.mm.alloc_pages_bulk(order, nfolios,
                                                     align=bulk_align(index, nfolios << order)):
            self.mem.fill_run(pa, order, n, seed, family=family, index0=index)
            self._add_run(index, pa, order, n)
            index += n << order

    def _alloc(self, page: int, seed: int = ZERO_SEED) -> tuple[int, int, int]:
        """``shmem_get_folio()``: a new folio of the file's order holding ``page``.

        Its content is zero, or the synthetic content of ``seed``.
        """
        order = self.folio_order
        head = page & ~((1 << order) - 1)
        pa = self.kernel.mm.alloc_pages(order)
        self.mem.fill_folio(pa, order, seed)
        self._add_folio(head, pa, order)
        return head, pa, order

    def _add_folio(self, head: int, pa: int, order: int) -> None:
        self._add_run(head, pa, order, 1)

    def _get(self, page: int) -> tuple[int, int, int]:
        hit = self._find(page)
        return hit if hit is not None else self._alloc(page)

    def _holes(self, first: int, end: int) -> list[tuple[int, int]]:
        """Folio-aligned (page, folios) stretches of ``[first, end)`` with no folio."""
        size = 1 << self.folio_order
        out: list[tuple[int, int]] = []
        pos = first & ~(size - 1)
        i = max(0, bisect.bisect_right(self._fidx, pos) - 1)
        for index, _pa, order, count in self._fruns[i:]:
            if index >= end:
                break
            run_end = index + (count << order)
            if run_end <= pos:
                continue
            if index > pos:
                out.append((pos, -(-(index - pos) // size)))
            pos = max(pos, -(-run_end // size) * size)
        if pos < end:
            out.append((pos, -(-(end - pos) // size)))
        return [(p, n) for p, n in out if n > 0]

    def populate(self) -> int:
        """Allocate every hole in ``[0, size)`` (``memfd_pin_folios()``); return folios."""
        for page, n in self._holes(0, -(-self.size // PAGE_SIZE)):
            self._alloc_range(page, n)
        return self._nfolios

    def folio_runs(self) -> list[tuple[int, int, int, int]]:
        """(index, pa, order, count) runs of folios contiguous in file and memory."""
        return [(i, pa, o, n) for i, pa, o, n in self._fruns]

    def folio_spans(self) -> list[tuple[int, int, int]]:
        """(index, pa, pages) of every run: what a mapping of the file needs."""
        return [(i, pa, n << o) for i, pa, o, n in self._fruns]

    def folios(self) -> list[tuple[int, int, int]]:
        """(index, pa, order) of every folio, by index (index = page offset of its head)."""
        return [(i + (k << o), pa + (k << (o + PAGE_SHIFT)), o)
                for i, pa, o, n in self._fruns for k in range(n)]

    folio_list = folios

    @property
    def nr_folios(self) -> int:
        return self._nfolios

    def _free_folios_from(self, page: int) -> None:
        """Free every folio whose head is at or after ``page`` (one free per run)."""
        mm = self.kernel.mm
        kept: list[list[int]] = []
        for index, pa, order, count in self._fruns:
            k = 0 if index >= page else min(count, -(-(page - index) >> order))
            if k:
                kept.append([index, pa, order, k])
            if k < count:
                mm.free_run(pa + (k << (order + PAGE_SHIFT)), order, count - k)
                self._nfolios -= count - k
        self._fruns = kept
        self._fidx = [r[0] for r in kept]

    # ------------------------------------------------------------------ size & seals
    def _check_resize(self, new_size: int) -> None:
        if new_size == self.size:
            return
        if self.frozen:
            raise KernelError(errno.EPERM, f"{self.name} is preserved for live update")
        if new_size > self.size and self.seals & F_SEAL_GROW:
            raise KernelError(errno.EPERM, f"{self.name} is sealed against growth")
        if new_size < self.size and self.seals & F_SEAL_SHRINK:
            raise KernelError(errno.EPERM, f"{self.name} is sealed against shrinking")

    def truncate(self, size: int) -> None:
        """``ftruncate()``: EPERM while preserved or against GROW/SHRINK seals."""
        self.check_open()
        if size < 0:
            raise KernelError(errno.EINVAL, "negative size")
        self._check_resize(size)
        if size < self.size:
            hit = self._find(size // PAGE_SIZE)
            if hit is not None and hit[0] * PAGE_SIZE < size:
                # the folio straddling the new end keeps its head; zero its tail
                head, pa, order = hit
                end = min(self.size, (head + (1 << order)) * PAGE_SIZE)
                self.mem.write(pa + size - head * PAGE_SIZE, bytes(end - size))
            self._free_folios_from(-(-size // PAGE_SIZE))
        self.size = size

    def add_seals(self, seals: int) -> None:
        """``fcntl(F_ADD_SEALS)``: EINVAL unknown bits, EPERM once F_SEAL_SEAL is set."""
        self.check_open()
        if seals & ~_SEALS_KNOWN:
            raise KernelError(errno.EINVAL, f"unknown seals {seals:#x}")
        if self.seals & F_SEAL_SEAL:
            raise KernelError(errno.EPERM, f"{self.name} is sealed")
        self.seals |= seals

    def _check_store(self, offset: int, length: int) -> None:
        """What any store checks: the range, and the write seals."""
        if offset < 0 or length < 0:
            raise KernelError(errno.EINVAL, "negative offset or length")
        if length and self.seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
            raise KernelError(errno.EPERM, f"{self.name} is sealed against writes")

    def _check_write(self, offset: int, length: int) -> None:
        self._check_store(offset, length)
        if offset + length > self.size:
            self._check_resize(offset + length)

    # ------------------------------------------------------------------ content
    def write(self, offset: int, data: bytes) -> int:
        """``pwrite()``: grows the file (EPERM while preserved); returns bytes written."""
        self.check_open()
        self._check_write(offset, len(data))
        pos = 0
        while pos < len(data):
            at = offset + pos
            head, pa, order = self._get(at // PAGE_SIZE)
            folio_end = (head + (1 << order)) * PAGE_SIZE
            n = min(len(data) - pos, folio_end - at)
            self.mem.write(pa + at - head * PAGE_SIZE, bytes(data[pos:pos + n]))
            pos += n
        self.size = max(self.size, offset + len(data))
        return len(data)

    def read(self, offset: int, n: int) -> bytes:
        """``pread()``: at most up to the file size; holes read as zeros."""
        self.check_open()
        if offset < 0 or n < 0:
            raise KernelError(errno.EINVAL, "negative offset or length")
        end = min(self.size, offset + n)
        out = bytearray()
        at = offset
        while at < end:
            page = at // PAGE_SIZE
            hit = self._find(page)
            if hit is None:  # a hole: folios are naturally aligned, of the file's order
                nxt = min(end, (((page >> self.folio_order) + 1) << self.folio_order)
                          * PAGE_SIZE)
                out += bytes(nxt - at)
                at = nxt
                continue
            head, pa, order = hit
            nxt = min(end, (head + (1 << order)) * PAGE_SIZE)
            out += self.mem.read(pa + at - head * PAGE_SIZE, nxt - at)
            at = nxt
        return bytes(out)

    def fill(self, offset: int, length: int, seed: int) -> None:
        """Synthetic content in whole folios: ``[offset, offset+length)`` folio aligned.

        Each folio gets content derived from ``seed`` and its index; grows
        the file like a write.
        """
        self.check_open()
        fsize = PAGE_SIZE << self.folio_order
        if offset % fsize or length % fsize:
            raise KernelError(errno.EINVAL, f"fill range not aligned to {fsize:#x}-byte folios")
        self._check_write(offset, length)
        seed &= _MASK64
        first, end = offset // PAGE_SIZE, (offset + length) // PAGE_SIZE
        lo = max(0, bisect.bisect_right(self._fidx, first) - 1)
        present: list[tuple[int, int, int, int]] = []  # parts of runs inside the range
        for index, pa, order, count in self._fruns[lo:]:
            if index >= end:
                break
            a, b = max(first, index), min(end, index + (count << order))
            if a >= b:
                continue
            if order != self.folio_order or (a - index) % (1 << order):
                raise KernelError(errno.EINVAL, "fill over a folio of another order")
            k0, k1 = (a - index) >> order, -(-(b - index) >> order)
            present.append((index + (k0 << order), pa + (k0 << (order + PAGE_SHIFT)), order,
                            k1 - k0))
        for page, n in self._holes(first, end):
            self._alloc_range(page, n, seed, family=True)
        for index, pa, order, n in present:
            self.mem.fill_run(pa, order, n, seed, family=True, index0=index)
        self.size = max(self.size, offset + length)

    def fingerprint(self) -> int:
        """Content identity over all folios (holes and untouched zero folios ignored).

        Built from :meth:`PhysicalMemory.describe` of each run: O(runs + writes).
        """
        self.check_open()
        h = hashlib.blake2b(digest_size=8)
        h.update(self.size.to_bytes(8, "little"))
        for index, pa, order, count in self.folio_runs():  # hugetlb: its own pages
            for tok in self.mem.describe(pa >> PAGE_SHIFT, count << order):
                if tok[1] == "uni" and tok[2] == ZERO_SEED:
                    continue
                h.update(repr((index + tok[0], *tok[1:])).encode())
        return int.from_bytes(h.digest(), "little")

    # ------------------------------------------------------------------ lifetime
    def release(self) -> None:
        """Last reference: the inode goes away and its folios are freed."""
        self._free_folios_from(0)

    def __repr__(self) -> str:
        return (f"<MemfdFile {self.name!r} size={self.size:#x} folios={self._nfolios} "
                f"order={self.folio_order} fds={self.fds} ref={self.refcount}>")


@dataclass
class PreservedFolios:
    """private_data of a preserved memfd or hugetlb memfd: what unpreserve must undo."""

    ser_pa: int
    desc: KhoVmalloc
    folios: list[tuple[int, int, int, int]]  # runs (index, pa, order, count)


class MemfdLuoHandler(FileHandler):
    """Models the memfd LUO file handler of mm/memfd_luo.c (spec luo.md §5.3)."""

    def __init__(self, subsys: MemfdSubsystem) -> None:
        super().__init__(subsys.compatible)
        self.subsys = subsys
        self.kernel = subsys.kernel
        self.v2 = subsys.compatible == MEMFD_LUO_FH_COMPATIBLE_V2

    @property
    def ser_size(self) -> int:
        return MemfdLuoSerV2.SIZE if self.v2 else MemfdLuoSerV1.SIZE

    def _encode(self, pos: int, size: int, seals: int, nr: int, desc: KhoVmalloc) -> bytes:
        if self.v2:
            return MemfdLuoSerV2(pos, size, seals, 0, nr, desc).encode()
        return MemfdLuoSerV1(pos, size, nr, desc).encode()

    def can_preserve(self, file: File) -> bool:
        """Models memfd_luo_can_preserve(): a shmem file with no links, not hugetlb."""
        return isinstance(file, MemfdFile) and not file.hugetlb and file.nlink == 0

    def get_id(self, file: File) -> object:
        """Models memfd_luo_get_id(): the inode."""
        return cast(MemfdFile, file).inode

    def preserve(self, args: FileOpArgs) -> None:
        """Models memfd_luo_preserve(): freeze the inode, preserve record, folios, array."""
        file = cast(MemfdFile, args.file)
        k = self.kernel
        kho = k.kho
        k.machine.faults.check(FP_PRESERVE, file.name)
        if self.v2 and file.seals & ~MEMFD_LUO_ALL_SEALS:
            raise KernelError(errno.EOPNOTSUPP, f"unknown seals {file.seals:#x}")
        if -(-file.size // PAGE_SIZE) > UINT_MAX:
            raise KernelError(errno.EFBIG, f"{file.name}: more than UINT_MAX pages")
        was_frozen = file.frozen
        file.frozen = True
        ser_pa = 0
        done: list[tuple[int, int, int, int]] = []
        try:
            ser_pa = kho.alloc_preserve(self.ser_size)
            file.populate()
            folios = file.folio_runs()
            for run in folios:
                kho.preserve_folio_run(run[1], run[2], run[3])
                done.append(run)
            nr = file.nr_folios
            # the array is generated pages: one descriptor per run of folios
            desc = (KhoVmalloc.decode(kho.preserve_vmalloc(folio_records(
                folios, MEMFD_LUO_FOLIO_DIRTY | MEMFD_LUO_FOLIO_UPTODATE))) if nr else KhoVmalloc())
        except KernelError:
            for _index, pa, order, count in reversed(done):
                kho.unpreserve_folio_run(pa, order, count)
            if ser_pa:
                kho.unpreserve_free(ser_pa)
            file.frozen = was_frozen
            raise
        k.machine.memory.write(ser_pa, self._encode(file.pos, file.size, file.seals,
                                                    nr, desc))
        args.serialized_data = ser_pa
        args.private_data = PreservedFolios(ser_pa, desc, folios)

    def freeze(self, args: FileOpArgs) -> None:
        """Models memfd_luo_freeze(): refresh ``pos`` only."""
        file = cast(MemfdFile, args.file)
        self.kernel.machine.memory.write_u64(args.serialized_data, file.pos)

    def unpreserve(self, args: FileOpArgs) -> None:
        """Models memfd_luo_unpreserve(): unfreeze, unpreserve array and folios, free record."""
        file = cast(MemfdFile, args.file)
        priv = cast(PreservedFolios, args.private_data)
        kho = self.kernel.kho
        file.frozen = False
        if priv.desc.first:
            kho.unpreserve_vmalloc(priv.desc.encode())
        for _index, pa, order, count in reversed(priv.folios):
            kho.unpreserve_folio_run(pa, order, count)
        kho.unpreserve_free(priv.ser_pa)

    # ------------------------------------------------------------------ new kernel
    def _read_record(self, ser_pa: int) -> MemfdLuoSerV1 | MemfdLuoSerV2:
        raw = self.kernel.machine.memory.read(ser_pa, self.ser_size)
        try:
            if self.v2:
                return MemfdLuoSerV2.decode(raw)
            return MemfdLuoSerV1.decode(raw)
        except DecodeError as exc:  # pragma: no cover - fixed-size read
            raise KernelError(errno.EINVAL, str(exc)) from None

    def _read_folios(self, ser: MemfdLuoSerV1 | MemfdLuoSerV2) -> _Recs:
        """Restore the vmalloc'ed folio array (``kho_restore_vmalloc()`` + ``vfree()``)."""
        if not ser.nr_folios:
            return _Recs.empty()
        k = self.kernel
        view = k.kho.restore_vmalloc_and_free(ser.folios.encode())
        if view is None:
            raise KernelError(errno.EINVAL, "cannot restore the memfd folio array")
        try:
            segs = decode_folio_pieces(view, ser.nr_folios)
        except DecodeError as exc:
            raise KernelError(errno.EINVAL, str(exc)) from None
        return _Recs(segs)

    def _restore_runs(self, recs: _Recs, start: int) -> tuple[int, list[tuple[int, int, int,
                                                                                int]]]:
        """``kho_restore_folio()`` of records ``start..`` in order, by runs.

        Returns (records restored before the first failure, the restored
        (index, pa, order, count) runs); stops at the first failure.
        """
        kho = self.kernel.kho
        restored = 0
        runs: list[tuple[int, int, int, int]] = []
        groups = list(recs.runs(start))
        while groups:
            i0, n = groups.pop(0)
            pa = recs.pfn_at(i0) << PAGE_SHIFT
            order = kho.in_magic.get(pa >> PAGE_SHIFT)
            if order is None:  # no magic: kho_restore_folio() warns and fails
                kho.restore_folio(pa)
                return restored, runs
            if n > 1 and recs.pfn_at(i0 + 1) - recs.pfn_at(i0) != 1 << order:
                # records that do not step by this folio's size: one at a time
                groups[:0] = [(i0 + j, 1) for j in range(1, n)]
                n = 1
            got = kho.restore_folio_run(pa, order, n)
            if got:
                runs.append((recs.index_at(i0), pa, order, got))
            restored += got
            if got < n:
                return restored, runs
        return restored, runs

    def retrieve(self, args: FileOpArgs) -> None:
        """Models memfd_luo_retrieve(): a new memfd made of the restored folios.

        The record is freed on success and on failure; a folio that cannot
        be restored is EIO (the rest are restored and dropped).  ``memfd-v2``
        re-applies the seals (unknown seals → EOPNOTSUPP); FD_CLOEXEC is not
        preserved.
        """
        k = self.kernel
        kho = k.kho
        ser_pa = args.serialized_data
        k.machine.faults.check(FP_RETRIEVE, f"{ser_pa:#x}")
        if kho.restore_folio(ser_pa) is None:
            raise KernelError(errno.EINVAL, f"memfd record {ser_pa:#x} was not preserved")
        file: MemfdFile | None = None
        recs = _Recs.empty()
        restored = 0
        try:
            ser = self._read_record(ser_pa)
            if isinstance(ser, MemfdLuoSerV2) and ser.unknown_seals:
                raise KernelError(errno.EOPNOTSUPP, f"unknown seals {ser.seals:#x}")
            recs = self._read_folios(ser)
            file = MemfdFile(self.subsys, "luo", install_fd=False)
            restored, runs = self._restore_runs(recs, 0)
            for index, pa, order, count in runs:
                if not file.nr_folios:
                    file.folio_order = min(order, MAX_MEMFD_FOLIO_ORDER)
                file._add_run(index, pa, order, count)
            if restored < len(recs):
                pa = recs.pfn_at(restored) << PAGE_SHIFT
                raise KernelError(errno.EIO, f"folio {pa:#x} could not be restored")
            file.size = ser.size
            file.pos = ser.pos
            file.seals = ser.seals if isinstance(ser, MemfdLuoSerV2) else F_SEAL_SEAL
        except KernelError:
            if file is not None:
                file.put()  # frees the folios restored so far
            self._restore_and_free(recs, restored + 1)
            raise
        finally:
            k.mm.free_pages(ser_pa)
        args.file = file

    def _restore_and_free(self, recs: _Recs, start: int) -> None:
        """Restore every record from ``start`` that still can be, and free it."""
        mm = self.kernel.mm
        while start < len(recs):
            got, runs = self._restore_runs(recs, start)
            for _index, pa, order, count in runs:
                mm.free_run(pa, order, count)
            start += got + 1  # past the one that failed

    def finish(self, args: FileOpArgs) -> None:
        """Models memfd_luo_finish(): never retrieved → restore and free everything."""
        if args.retrieve_status != 0:
            return
        k = self.kernel
        kho = k.kho
        ser_pa = args.serialized_data
        if kho.restore_folio(ser_pa) is None:
            k.warn("memfd", f"memfd record {ser_pa:#x} not restorable at finish")
            return
        try:
            ser = self._read_record(ser_pa)
            recs = self._read_folios(ser)
        except KernelError as exc:
            k.warn("memfd", f"memfd finish: {exc}")
            recs = _Recs.empty()
        self._restore_and_free(recs, 0)
        k.mm.free_pages(ser_pa)


class _Recs:
    """The decoded folio array as segments of records with constant steps
    (:class:`FolioSegments`): cost per segment, not per folio."""

    def __init__(self, segs: FolioSegments) -> None:
        self.segs = segs
        counts = segs.count.astype(np.int64)
        self.first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64) \
            if counts.size else np.zeros(0, dtype=np.int64)
        self.total = int(counts.sum())

    @classmethod
    def empty(cls) -> _Recs:
        z = np.zeros(0, dtype=np.int64)
        return cls(FolioSegments(z, z, z, z, z, z))

    def __len__(self) -> int:
        return self.total

    def _at(self, i: int) -> tuple[int, int]:
        s = int(np.searchsorted(self.first, i, side="right")) - 1
        return s, i - int(self.first[s])

    def pfn_at(self, i: int) -> int:
        s, k = self._at(i)
        return (int(self.segs.pfn[s]) + k * int(self.segs.pfn_step[s])) & _MASK64

    def index_at(self, i: int) -> int:
        s, k = self._at(i)
        return (int(self.segs.index[s]) + k * int(self.segs.index_step[s])) & _MASK64

    def runs(self, start: int) -> Iterator[tuple[int, int]]:
        """(first record, records) from ``start``: records whose folios follow on
        in memory and in the file by one constant step; others one by one."""
        if start >= self.total:
            return
        s0, k0 = self._at(start)
        for s in range(s0, self.segs.count.size):
            first = int(self.first[s]) + (k0 if s == s0 else 0)
            n = int(self.segs.count[s]) - (k0 if s == s0 else 0)
            dp = int(self.segs.pfn_step[s]) & _MASK64
            di = int(self.segs.index_step[s]) & _MASK64
            if n > 1 and dp == di and 0 < dp < 1 << 63:
                yield first, n
            else:
                for i in range(first, first + n):
                    yield i, 1


class MemfdSubsystem:
    """memfd_create() and the memfd LUO handler of one kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.compatible = (MEMFD_LUO_FH_COMPATIBLE_V2 if kernel.profile.memfd_abi == "memfd-v2"
                           else MEMFD_LUO_FH_COMPATIBLE_V1)
        self.handler: MemfdLuoHandler | None = None

    def late_init(self) -> None:
        """Models memfd_luo_init(): register the handler; EOPNOTSUPP (LUO off) is ignored."""
        handler = MemfdLuoHandler(self)
        try:
            self.kernel.liveupdate.register_file_handler(handler)
        except KernelError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                self.kernel.printk("err", "memfd", f"memfd LUO handler not registered: {exc}")
            return
        self.handler = handler

    def create(self, name: str, size: int = 0, folio_order: int = 0,
               seals: int = 0, flags: int = 0) -> MemfdFile:
        """``memfd_create(name, MFD_ALLOW_SEALING)`` + ``ftruncate(size)`` + seals.

        ``MFD_HUGETLB`` in ``flags`` makes a hugetlbfs file (kernel/mm/hugetlb.py).
        """
        check_alive(self.kernel)
        if flags & MFD_HUGETLB:
            return self.kernel.hugetlb.memfd_create(name, size, flags, seals)
        if flags & ~MFD_ALL_FLAGS:  # unknown bits, or a huge page size without MFD_HUGETLB
            raise KernelError(errno.EINVAL, f"bad memfd_create flags {flags:#x}")
        if seals & ~_SEALS_KNOWN:
            raise KernelError(errno.EINVAL, f"unknown seals {seals:#x}")
        f = MemfdFile(self, name, folio_order=folio_order)
        try:
            if size:
                f.truncate(size)
            if seals:
                f.add_seals(seals)
        except KernelError:
            f.close()
            raise
        return f
