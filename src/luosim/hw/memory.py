"""Physical memory: sparse 4 KiB pages over extents of synthetic folios.

Two kinds of content coexist:

* byte pages (``write``/``read``), materialised on first write;
* extents (:class:`Run`): a physically contiguous run of ``count``
  naturally aligned folios of one ``order`` whose content is a deterministic
  function of a 64-bit seed - either one seed for every folio, or a *seed
  family* where folio ``k`` has ``derive_seed(seed, index0 + (k << order))``
  (a memfd filled in bulk).  A run is described once whatever its size, so a
  TiB of guest RAM costs O(runs); a run is split only where something drops
  or scrubs part of it.  Writing bytes into a folio of a run overlays those
  pages and folds the write into that folio's fingerprint, so fingerprints
  still change whenever content changes.

Memory that was never written reads as zero until the first kexec; after a
:meth:`scrub` everything that was not kept reads as the poison byte, the way
stale DRAM would look to a buggy kernel that used it without restoring it.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
POISON_BYTE = 0x6B  # slab's POISON_FREE: recognisable in hex dumps
MAX_FOLIO_ORDER = 18  # 1 GiB with 4 KiB pages (PUD)

_POISON_PAGE = bytes([POISON_BYTE]) * PAGE_SIZE
_ZERO_PAGE = bytes(PAGE_SIZE)


class MemoryAccessError(Exception):
    """An access outside installed RAM (a machine check on hardware)."""


def _mix(*parts: int | bytes) -> int:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.to_bytes(8, "little", signed=False))
    return int.from_bytes(h.digest(), "little")


ZERO_SEED = (1 << 64) - 1  # synthetic folio of zero bytes (cheap zeroed allocations)
POISON_SEED = (1 << 64) - 2  # synthetic folio of poison bytes (freed memory)
_UNIFORM = (ZERO_SEED, POISON_SEED)


def derive_seed(seed: int, index: int) -> int:
    """Seed of the folio at page ``index`` of a seed family (never the zero seed)."""
    h = hashlib.blake2b(seed.to_bytes(8, "little") + index.to_bytes(8, "little"),
                        digest_size=8)
    val = int.from_bytes(h.digest(), "little")
    return val ^ 1 if val == ZERO_SEED else val


def synthetic_page(seed: int, index: int) -> bytes:
    """Content of page ``index`` of a synthetic folio with ``seed``."""
    if seed == ZERO_SEED:
        return _ZERO_PAGE
    if seed == POISON_SEED:
        return _POISON_PAGE
    word = struct.pack("<QQ", seed, index)
    return word * (PAGE_SIZE // len(word))


@dataclass(slots=True)
class Run:
    """``count`` folios of ``order`` from head pfn ``start``, content by seed.

    ``family``: folio ``k`` has seed ``derive_seed(seed, index0 + (k << order))``;
    else every folio has ``seed`` (ZERO_SEED / POISON_SEED: uniform content,
    kept as order 0).
    """

    start: int
    count: int
    order: int
    seed: int
    family: bool = False
    index0: int = 0

    @property
    def end(self) -> int:
        return self.start + (self.count << self.order)

    def folio_seed(self, k: int) -> int:
        return derive_seed(self.seed, self.index0 + (k << self.order)) if self.family else self.seed

    def part(self, k0: int, k1: int) -> Run:
        """Folios ``[k0, k1)`` of this run as a run of their own."""
        return Run(self.start + (k0 << self.order), k1 - k0, self.order, self.seed, self.family,
                   self.index0 + (k0 << self.order) if self.family else 0)


def merge_ranges(starts: Any, ends: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, merged [start, end) ranges of int64 arrays (touching ranges merge)."""
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    if not s.size:
        return s, e
    idx = np.argsort(s, kind="stable")
    s, e = s[idx], e[idx]
    run_max = np.maximum.accumulate(e)
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] > run_max[:-1]
    firsts = np.flatnonzero(new)
    lasts = np.append(firsts[1:], s.size) - 1
    return s[firsts], run_max[lasts]


class _SortedDict(dict[int, Any]):
    """A dict of pfn keys that also keeps them sorted, for range queries."""

    def __init__(self, items: Iterable[tuple[int, Any]] = ()) -> None:
        super().__init__(items)
        self.order: list[int] = sorted(self)

    def __setitem__(self, key: int, value: Any) -> None:
        if key not in self:
            bisect.insort(self.order, key)
        super().__setitem__(key, value)

    def __delitem__(self, key: int) -> None:
        super().__delitem__(key)
        del self.order[bisect.bisect_left(self.order, key)]

    def pop(self, key: int, default: Any = None) -> Any:
        if key not in self:
            return default
        value = self[key]
        del self[key]
        return value

    def delete_range(self, a: int, b: int) -> None:
        """Remove every key in [a, b)."""
        i, j = bisect.bisect_left(self.order, a), bisect.bisect_left(self.order, b)
        for key in self.order[i:j]:
            super().__delitem__(key)
        del self.order[i:j]

    def in_range(self, a: int, b: int) -> list[int]:
        """Keys in [a, b), sorted."""
        return self.order[bisect.bisect_left(self.order, a):bisect.bisect_left(self.order, b)]


class PhysicalMemory:
    """Byte-addressable RAM of ``size`` bytes starting at physical address 0."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"memory size {size:#x} is not a positive multiple of {PAGE_SIZE}")
        self.size = size
        self._pages = _SortedDict()  # pfn -> bytearray
        self._starts: list[int] = []  # run start pfns, sorted; runs never overlap
        self._runs: list[Run] = []
        self._fp = _SortedDict()  # head pfn -> 1: a folio of a run with byte pages written
        self.poisoned = False
        self.scrub_count = 0
        # pages whose content others cache (IOMMU tables a DMA walk read):
        # any change to one of them bumps watch_gen
        self._watched = _SortedDict()
        self.watch_gen = 0

    # -- geometry -----------------------------------------------------------
    @property
    def nr_pages(self) -> int:
        return self.size >> PAGE_SHIFT

    def check_range(self, pa: int, length: int) -> None:
        if pa < 0 or length < 0 or pa + length > self.size:
            raise MemoryAccessError(
                f"physical access [{pa:#x}, {pa + length:#x}) outside RAM [0, {self.size:#x})")

    def watch(self, pfns: Iterable[int]) -> None:
        """Bump :attr:`watch_gen` whenever one of ``pfns`` changes from now on."""
        for p in pfns:
            if p not in self._watched:
                self._watched[p] = 1

    def _touch(self, pfn: int, end: int) -> None:
        if self._watched and self._watched.in_range(pfn, end):
            self.watch_gen += 1

    @property
    def _bg_seed(self) -> int:
        return POISON_SEED if self.poisoned else ZERO_SEED

    # -- runs ---------------------------------------------------------------
    def _run_at(self, pfn: int) -> tuple[Run, int] | None:
        """(run, folio number) of the run holding ``pfn``."""
        i = bisect.bisect_right(self._starts, pfn) - 1
        if i < 0:
            return None
        r = self._runs[i]
        if pfn >= r.end:
            return None
        return r, (pfn - r.start) >> r.order

    def _span(self, pfn: int, end: int) -> tuple[int, int]:
        """Indices [i, j) of the runs overlapping [pfn, end)."""
        i = bisect.bisect_right(self._starts, pfn) - 1
        if i < 0 or self._runs[i].end <= pfn:
            i += 1
        j = bisect.bisect_left(self._starts, end)
        return i, max(i, j)

    def _insert(self, run: Run) -> None:
        """Add a run over a range already dropped; merge uniform neighbours."""
        i = bisect.bisect_left(self._starts, run.start)
        if run.seed in _UNIFORM and not run.family:
            if i > 0:
                left = self._runs[i - 1]
                if left.seed == run.seed and not left.family and left.end == run.start:
                    left.count += run.count << run.order >> left.order
                    run = left
                    i -= 1
                    del self._starts[i], self._runs[i]
            if i < len(self._runs):
                right = self._runs[i]
                if right.seed == run.seed and not right.family and right.start == run.end:
                    run = Run(run.start, (run.count << run.order) + (right.count << right.order),
                              0, run.seed)
                    del self._starts[i], self._runs[i]
        self._starts.insert(i, run.start)
        self._runs.insert(i, run)

    def fill_folio(self, pa: int, order: int, seed: int) -> None:
        """Make ``[pa, pa + PAGE_SIZE << order)`` a synthetic folio with ``seed``.

        Replaces whatever was there (byte pages and other folios).
        """
        self.fill_run(pa, order, 1, seed)

    def fill_run(self, pa: int, order: int, count: int, seed: int, *,
                 family: bool = False, index0: int = 0) -> None:
        """``count`` contiguous synthetic folios of ``order`` from ``pa`` (one extent).

        ``family``: folio ``k`` gets ``derive_seed(seed, index0 + (k << order))``.
        """
        if not 0 <= order <= MAX_FOLIO_ORDER:
            raise ValueError(f"folio order {order} outside 0..{MAX_FOLIO_ORDER}")
        npages = count << order
        if pa % (PAGE_SIZE << order):
            raise ValueError(f"folio {pa:#x} order {order} is not naturally aligned")
        if count <= 0:
            return
        self.check_range(pa, PAGE_SIZE * npages)
        pfn = pa >> PAGE_SHIFT
        self._drop_range(pfn, npages)
        if seed in _UNIFORM and not family:
            self._insert(Run(pfn, npages, 0, seed))
        else:
            self._insert(Run(pfn, count, order, seed, family, index0 if family else 0))

    # -- fingerprints -------------------------------------------------------
    def _pages_in(self, pfn: int, end: int) -> list[int]:
        """Byte pages in [pfn, end), sorted."""
        return self._pages.in_range(pfn, end)

    def _fps_in(self, pfn: int, end: int) -> list[int]:
        """Written folios of runs with a head in [pfn, end), sorted."""
        return self._fp.in_range(pfn, end)

    def folio_fingerprint(self, pa: int, order: int) -> int:
        """Fingerprint of the content of the aligned block at ``pa`` of ``order``.

        A folio of a run: its seed (and the writes folded into it); a block
        of uniform content (zero, poison) without byte pages: the content's
        seed, so a poisoned TiB costs O(1); anything else page by page.
        """
        pfn = pa >> PAGE_SHIFT
        end = pfn + (1 << order)
        hit = self._run_at(pfn)
        if hit is not None:
            r, k = hit
            if r.order == order and r.start + (k << order) == pfn:
                return self._folio_fp(r, k)
            if r.seed in _UNIFORM and not r.family and end <= r.end and not self._pages_in(pfn,
                                                                                        end):
                return _mix(r.seed, order)
        elif not self._pages_in(pfn, end):
            i, j = self._span(pfn, end)
            if i == j:
                return _mix(self._bg_seed, order)
        return _mix(b"pages", *(self.page_digest(p) for p in range(pfn, end)))

    def _folio_fp(self, r: Run, k: int) -> int:
        """Fingerprint of folio ``k`` of ``r``: its seed, and its written pages if any.

        Computed when asked (writes only mark the folio), so a DMA write
        costs no hashing; equal content gives equal fingerprints whatever
        the order of the writes.
        """
        head = r.start + (k << r.order)
        if head not in self._fp:
            return _mix(r.folio_seed(k), r.order)
        parts: list[int | bytes] = [b"written", r.folio_seed(k), r.order]
        for p in self._pages.in_range(head, head + (1 << r.order)):
            parts += [p - head, bytes(self._pages[p])]
        return _mix(*parts)

    def page_digest(self, pfn: int) -> int:
        page = self._pages.get(pfn)
        if page is not None:
            return _mix(bytes(page))
        hit = self._run_at(pfn)
        if hit is not None:
            r, k = hit
            return _mix(b"syn", r.folio_seed(k), pfn - r.start - (k << r.order))
        return _mix(b"poison" if self.poisoned else b"zero")

    def describe(self, pfn: int, npages: int) -> list[tuple[Any, ...]]:
        """Canonical description of the content of ``[pfn, pfn + npages)``.

        Tokens ``(offset, kind, ...)`` with offsets relative to ``pfn``:
        ``uni`` (seed, pages) uniform content, ``fam`` (seed, first index,
        folios, order) a stretch of a seed family, ``folio`` (seed, order),
        ``fp`` (fingerprint) a written folio, ``page`` (digest).  Adjacent
        stretches of the same content merge, so equal content gives equal
        tokens however the extents happen to be split.  Cost O(runs + writes).
        """
        end = pfn + npages
        out: list[list[Any]] = []

        def add(off: int, kind: str, *data: Any) -> None:
            if out:
                last = out[-1]
                if kind == "uni" and last[1] == "uni" and last[2] == data[0] \
                        and last[0] + last[3] == off:
                    last[3] += data[1]
                    return
                if kind == "fam" and last[1] == "fam" and last[2] == data[0] \
                        and last[5] == data[3] and last[3] + (last[4] << last[5]) == data[1]:
                    last[4] += data[2]
                    return
            out.append([off, kind, *data])

        def gap(a: int, b: int) -> None:
            pos = a
            for p in self._pages_in(a, b):
                if p > pos:
                    add(pos - pfn, "uni", self._bg_seed, p - pos)
                add(p - pfn, "page", _mix(bytes(self._pages[p])))
                pos = p + 1
            if b > pos:
                add(pos - pfn, "uni", self._bg_seed, b - pos)

        pos = pfn
        i, j = self._span(pfn, end)
        for r in self._runs[i:j]:
            a, b = max(pfn, r.start), min(end, r.end)
            if a > pos:
                gap(pos, a)
            size = 1 << r.order
            k0 = (a - r.start) >> r.order
            k1 = (b - r.start + size - 1) >> r.order
            # folios to describe one by one: written ones and the (at most two) cut ones
            special = sorted({(h - r.start) >> r.order for h in
                              self._fps_in(r.start + (k0 << r.order), r.start + (k1 << r.order))}
                             | {kk for kk in (k0, k1 - 1)
                                if r.start + (kk << r.order) < a
                                or r.start + ((kk + 1) << r.order) > b})
            k = k0
            for stop in [*special, k1]:
                if stop > k:  # folios [k, stop) untouched: one token
                    head = r.start + (k << r.order)
                    if r.family:
                        add(head - pfn, "fam", r.seed, r.index0 + (k << r.order), stop - k,
                            r.order)
                    elif r.seed in _UNIFORM:
                        add(head - pfn, "uni", r.seed, (stop - k) << r.order)
                    else:
                        for kk in range(k, stop):
                            add(r.start + (kk << r.order) - pfn, "folio", r.seed, r.order)
                if stop == k1:
                    break
                head = r.start + (stop << r.order)
                if head < a or head + size > b:  # the range cuts this folio: its pages
                    for p in range(max(head, a), min(head + size, b)):
                        add(p - pfn, "page", self.page_digest(p))
                else:
                    add(head - pfn, "fp", self._folio_fp(r, stop))
                k = stop + 1
            pos = b
        if end > pos:
            gap(pos, end)
        return [tuple(t) for t in out]

    # -- bytes --------------------------------------------------------------
    def _page_bytes(self, pfn: int) -> bytes:
        page = self._pages.get(pfn)
        if page is not None:
            return bytes(page)
        hit = self._run_at(pfn)
        if hit is not None:
            r, k = hit
            return synthetic_page(r.folio_seed(k), pfn - r.start - (k << r.order))
        return _POISON_PAGE if self.poisoned else _ZERO_PAGE

    def read(self, pa: int, length: int) -> bytes:
        self.check_range(pa, length)
        pfn, off = divmod(pa, PAGE_SIZE)
        if off + length <= PAGE_SIZE:  # within one page: slice, don't copy the page
            page = self._pages.get(pfn)
            if page is not None:
                return bytes(page[off:off + length])
            return self._page_bytes(pfn)[off:off + length]
        out = bytearray()
        while length > 0:
            pfn, off = divmod(pa, PAGE_SIZE)
            n = min(length, PAGE_SIZE - off)
            out += self._page_bytes(pfn)[off:off + n]
            pa += n
            length -= n
        return bytes(out)

    def write(self, pa: int, data: bytes) -> None:
        self.check_range(pa, len(data))
        pos = 0
        while pos < len(data):
            pfn, off = divmod(pa + pos, PAGE_SIZE)
            n = min(len(data) - pos, PAGE_SIZE - off)
            page = self._pages.get(pfn)
            if page is None:
                page = bytearray(self._page_bytes(pfn))
                self._pages[pfn] = page
            page[off:off + n] = data[pos:pos + n]
            if pfn in self._watched:
                self.watch_gen += 1
            hit = self._run_at(pfn) if self._runs else None
            if hit is not None:
                r, k = hit
                head = r.start + (k << r.order)
                if head not in self._fp:  # its fingerprint now folds in its byte pages
                    self._fp[head] = 1
            pos += n

    def write_pages(self, pa: int, data: bytes) -> None:
        """Write whole pages (page-aligned ``pa``, ``len(data)`` a page multiple) in bulk.

        Same result as :meth:`write`, without the per-write folding into folio
        fingerprints when no run is underneath (kernel metadata pages).
        """
        if pa % PAGE_SIZE or len(data) % PAGE_SIZE:
            self.write(pa, data)
            return
        self.check_range(pa, len(data))
        pfn = pa >> PAGE_SHIFT
        n = len(data) >> PAGE_SHIFT
        i, j = self._span(pfn, pfn + n)
        if i != j:
            self.write(pa, data)
            return
        self._touch(pfn, pfn + n)
        mv = memoryview(data)
        pages = self._pages
        for k in range(n):
            page = pages.get(pfn + k)
            chunk = mv[k << PAGE_SHIFT:(k + 1) << PAGE_SHIFT]
            if page is None:
                pages[pfn + k] = bytearray(chunk)
            else:
                page[:] = chunk

    def read_u64(self, pa: int) -> int:
        return int.from_bytes(self.read(pa, 8), "little")

    def write_u64(self, pa: int, value: int) -> None:
        self.write(pa, value.to_bytes(8, "little"))

    def zero(self, pa: int, length: int) -> None:
        """Zero a page-aligned range cheaply (one extent)."""
        if pa % PAGE_SIZE or length % PAGE_SIZE:
            self.write(pa, bytes(length))
            return
        self.check_range(pa, length)
        self._drop_range(pa >> PAGE_SHIFT, length >> PAGE_SHIFT)
        if self.poisoned and length:  # absent pages read as zero before the first scrub
            self._insert(Run(pa >> PAGE_SHIFT, length >> PAGE_SHIFT, 0, ZERO_SEED))

    def poison(self, pa: int, length: int) -> None:
        """Overwrite a page-aligned range with the poison byte (one extent)."""
        self.check_range(pa, length)
        self._drop_range(pa >> PAGE_SHIFT, length >> PAGE_SHIFT)
        if not self.poisoned and length:  # after a scrub absent pages read as poison
            self._insert(Run(pa >> PAGE_SHIFT, length >> PAGE_SHIFT, 0, POISON_SEED))

    # -- dropping and scrubbing --------------------------------------------
    def _drop_range(self, pfn: int, npages: int) -> None:
        end = pfn + npages
        self._touch(pfn, end)
        self._pages.delete_range(pfn, end)
        self._fp.delete_range(pfn, end)
        i, j = self._span(pfn, end)
        if i == j:
            return
        keep: list[Run] = []
        for r in self._runs[i:j]:
            size = 1 << r.order
            k_left = (pfn - r.start) >> r.order if pfn > r.start else 0  # folios before pfn
            k_right = min(r.count, (end - r.start + size - 1) >> r.order)  # first after end
            if k_left:
                keep.append(r.part(0, k_left))
            for k in sorted({k_left, k_right - 1}):
                if not k_left <= k < k_right:
                    continue
                head = r.start + (k << r.order)
                if pfn <= head and head + size <= end:
                    continue
                # a folio straddling the range: its pages outside it become byte pages
                seed = r.folio_seed(k)
                self._fp.pop(head, None)
                for p in range(head, head + size):
                    if not pfn <= p < end and p not in self._pages:
                        self._pages[p] = bytearray(synthetic_page(seed, p - head))
            if k_right < r.count:
                keep.append(r.part(k_right, r.count))
        del self._starts[i:j], self._runs[i:j]
        self._starts[i:i] = [r.start for r in keep]
        self._runs[i:i] = keep

    def scrub(self, keep: Iterable[tuple[int, int]] | tuple[np.ndarray, np.ndarray]) -> int:
        """Poison everything except ``keep``; return pages kept.

        ``keep`` is [(pa, length)] or a pair of arrays (pa, length).  Models
        what a buggy new kernel would find in memory it never restored.
        """
        if isinstance(keep, tuple) and len(keep) == 2 and isinstance(keep[0], np.ndarray):
            pa_arr = np.asarray(keep[0], dtype=np.int64)
            len_arr = np.asarray(keep[1], dtype=np.int64)
        else:
            pairs = list(keep)
            pa_arr = np.array([p for p, _n in pairs], dtype=np.int64)
            len_arr = np.array([n for _p, n in pairs], dtype=np.int64)
        ms, me = merge_ranges(pa_arr >> PAGE_SHIFT,
                              (pa_arr + len_arr + PAGE_SIZE - 1) >> PAGE_SHIFT)
        starts: list[int] = ms.tolist()
        ends: list[int] = me.tolist()

        def kept_pfns(keys: Sequence[int]) -> list[bool]:
            if not keys or not starts:
                return [False] * len(keys)
            arr = np.fromiter(keys, dtype=np.int64, count=len(keys))
            i = np.searchsorted(ms, arr, side="right") - 1
            ok = (i >= 0) & (arr < me[np.maximum(i, 0)])
            return [bool(x) for x in ok]

        page_keys = list(self._pages)
        new_pages: dict[int, bytearray] = {
            p: self._pages[p] for p, ok in zip(page_keys, kept_pfns(page_keys)) if ok}
        new_runs: list[Run] = []
        new_fp: dict[int, int] = {}
        for r in self._runs:
            lo = bisect.bisect_right(ends, r.start)
            hi = bisect.bisect_left(starts, r.end)
            size = 1 << r.order
            for a, b in zip(starts[lo:hi], ends[lo:hi]):
                a, b = max(a, r.start), min(b, r.end)
                k0 = (a - r.start + size - 1) >> r.order  # first folio fully kept
                k1 = (b - r.start) >> r.order
                if k1 > k0:
                    new_runs.append(r.part(k0, k1))
                    for h in self._fps_in(r.start + (k0 << r.order), r.start + (k1 << r.order)):
                        new_fp[h] = self._fp[h]
                # partly kept folios keep their kept pages as bytes
                for k in sorted({(a - r.start) >> r.order, (b - 1 - r.start) >> r.order}):
                    if k0 <= k < k1:
                        continue
                    head = r.start + (k << r.order)
                    seed = r.folio_seed(k)
                    for p in range(max(a, head), min(b, head + size)):
                        if p not in new_pages:
                            new_pages[p] = bytearray(synthetic_page(seed, p - head))
        if not self.poisoned:
            # kept memory nobody wrote still reads as zero: the background turns to poison
            for a, b in zip(starts, ends):
                pos = a
                i, j = self._span(a, b)
                for r in self._runs[i:j]:
                    if r.start > pos:
                        new_runs.append(Run(pos, r.start - pos, 0, ZERO_SEED))
                    pos = max(pos, r.end)
                if b > pos:
                    new_runs.append(Run(pos, b - pos, 0, ZERO_SEED))
            new_runs.sort(key=lambda r: r.start)
        self._pages = _SortedDict(new_pages.items())
        self._runs = new_runs
        self._starts = [r.start for r in new_runs]
        self._fp = _SortedDict(new_fp.items())
        self.poisoned = True
        self.scrub_count += 1
        self.watch_gen += 1
        return int((me - ms).sum())

    # -- introspection ------------------------------------------------------
    def resident_pages(self) -> int:
        """Pages that hold content (bytes or synthetic), for scale reporting."""
        return len(self._pages) + sum(r.count << r.order for r in self._runs)

    def extents(self) -> list[Run]:
        """The runs (extents) of synthetic content, by address."""
        return list(self._runs)

    def folios(self) -> Iterator[tuple[int, int]]:
        """(pa, order) of every synthetic folio (uniform extents as order-0 pages)."""
        for r in self._runs:
            for k in range(r.count):
                yield (r.start + (k << r.order)) << PAGE_SHIFT, r.order


def split_aligned(pfn: int, npages: int) -> Iterator[tuple[int, int]]:
    """Split ``[pfn, pfn + npages)`` into naturally aligned (head, order) blocks."""
    end = pfn + npages
    while pfn < end:
        order = min((pfn & -pfn).bit_length() - 1 if pfn else MAX_FOLIO_ORDER, MAX_FOLIO_ORDER)
        while pfn + (1 << order) > end:
            order -= 1
        yield pfn, order
        pfn += 1 << order
