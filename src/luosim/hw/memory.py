"""Physical memory: sparse 4 KiB pages plus fingerprinted folios.

Two kinds of content coexist:

* byte pages (``write``/``read``), materialised on first write;
* synthetic folios (``fill_folio``): a naturally aligned block of
  ``2**order`` pages whose content is a deterministic function of a 64-bit
  seed.  They let a TiB of guest RAM cost O(folios).  Writing bytes into a
  synthetic folio overlays those pages and folds the write into the folio's
  fingerprint, so fingerprints still change whenever content changes.

Memory that was never written reads as zero until the first kexec; after a
:meth:`scrub` everything that was not kept reads as the poison byte, the way
stale DRAM would look to a buggy kernel that used it without restoring it.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Iterable, Iterator

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


def synthetic_page(seed: int, index: int) -> bytes:
    """Content of page ``index`` of a synthetic folio with ``seed``."""
    if seed == ZERO_SEED:
        return _ZERO_PAGE
    if seed == POISON_SEED:
        return _POISON_PAGE
    word = struct.pack("<QQ", seed, index)
    return word * (PAGE_SIZE // len(word))


class PhysicalMemory:
    """Byte-addressable RAM of ``size`` bytes starting at physical address 0."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"memory size {size:#x} is not a positive multiple of {PAGE_SIZE}")
        self.size = size
        self._pages: dict[int, bytearray] = {}
        # head pfn -> (order, seed, fingerprint) per order; seed fixes base content
        self._folios: list[dict[int, tuple[int, int]]] = [{} for _ in range(MAX_FOLIO_ORDER + 1)]
        self.poisoned = False
        self.scrub_count = 0

    # -- geometry -----------------------------------------------------------
    @property
    def nr_pages(self) -> int:
        return self.size >> PAGE_SHIFT

    def check_range(self, pa: int, length: int) -> None:
        if pa < 0 or length < 0 or pa + length > self.size:
            raise MemoryAccessError(
                f"physical access [{pa:#x}, {pa + length:#x}) outside RAM [0, {self.size:#x})")

    # -- folios -------------------------------------------------------------
    def _folio_of(self, pfn: int) -> tuple[int, int, int, int] | None:
        """(head pfn, order, seed, fingerprint) of the synthetic folio holding ``pfn``."""
        for order, table in enumerate(self._folios):
            if not table:
                continue
            head = pfn & ~((1 << order) - 1)
            hit = table.get(head)
            if hit is not None:
                return head, order, hit[0], hit[1]
        return None

    def fill_folio(self, pa: int, order: int, seed: int) -> None:
        """Make ``[pa, pa + PAGE_SIZE << order)`` a synthetic folio with ``seed``.

        Replaces whatever was there (byte pages and smaller folios).
        """
        if not 0 <= order <= MAX_FOLIO_ORDER:
            raise ValueError(f"folio order {order} outside 0..{MAX_FOLIO_ORDER}")
        npages = 1 << order
        if pa % (PAGE_SIZE * npages):
            raise ValueError(f"folio {pa:#x} order {order} is not naturally aligned")
        self.check_range(pa, PAGE_SIZE * npages)
        self._drop_range(pa >> PAGE_SHIFT, npages)
        self._folios[order][pa >> PAGE_SHIFT] = (seed, _mix(seed, order))

    def folio_fingerprint(self, pa: int, order: int) -> int:
        """Fingerprint of the content of the aligned block at ``pa`` of ``order``.

        Equal content gives equal fingerprints, whichever way it was made
        (a synthetic folio of the same seed and writes, or byte pages).
        """
        pfn = pa >> PAGE_SHIFT
        hit = self._folios[order].get(pfn) if order <= MAX_FOLIO_ORDER else None
        if hit is not None:
            return hit[1]
        return _mix(b"pages", *(self.page_digest(p) for p in range(pfn, pfn + (1 << order))))

    def page_digest(self, pfn: int) -> int:
        page = self._pages.get(pfn)
        if page is not None:
            return _mix(bytes(page))
        folio = self._folio_of(pfn)
        if folio is not None:
            head, _order, seed, _fp = folio
            return _mix(b"syn", seed, pfn - head)
        return _mix(b"poison" if self.poisoned else b"zero")

    # -- bytes --------------------------------------------------------------
    def _page_bytes(self, pfn: int) -> bytes:
        page = self._pages.get(pfn)
        if page is not None:
            return bytes(page)
        folio = self._folio_of(pfn)
        if folio is not None:
            head, _order, seed, _fp = folio
            return synthetic_page(seed, pfn - head)
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
            folio = self._folio_of(pfn)
            if folio is not None:
                head, order, seed, fp = folio
                self._folios[order][head] = (seed, _mix(fp, pfn, bytes(page)))
            pos += n

    def read_u64(self, pa: int) -> int:
        return int.from_bytes(self.read(pa, 8), "little")

    def write_u64(self, pa: int, value: int) -> None:
        self.write(pa, value.to_bytes(8, "little"))

    def zero(self, pa: int, length: int) -> None:
        """Zero a page-aligned range cheaply (a zero folio per aligned block)."""
        if pa % PAGE_SIZE or length % PAGE_SIZE:
            self.write(pa, bytes(length))
            return
        self.check_range(pa, length)
        self._drop_range(pa >> PAGE_SHIFT, length >> PAGE_SHIFT)
        if not self.poisoned:
            return  # absent pages already read as zero
        for head, order in split_aligned(pa >> PAGE_SHIFT, length >> PAGE_SHIFT):
            self._folios[order][head] = (ZERO_SEED, _mix(ZERO_SEED, order))

    def poison(self, pa: int, length: int) -> None:
        """Overwrite a page-aligned range with the poison byte (O(blocks))."""
        self.check_range(pa, length)
        self._drop_range(pa >> PAGE_SHIFT, length >> PAGE_SHIFT)
        for head, order in split_aligned(pa >> PAGE_SHIFT, length >> PAGE_SHIFT):
            self._folios[order][head] = (POISON_SEED, _mix(POISON_SEED, order))

    # -- kexec --------------------------------------------------------------
    def _drop_range(self, pfn: int, npages: int) -> None:
        end = pfn + npages
        if npages < len(self._pages):
            for p in range(pfn, end):
                self._pages.pop(p, None)
        else:
            for p in [p for p in self._pages if pfn <= p < end]:
                del self._pages[p]
        for order, table in enumerate(self._folios):
            if not table:
                continue
            size = 1 << order
            first = pfn & ~(size - 1)
            candidates = (end - first + size - 1) >> order
            if candidates <= len(table):  # probe the aligned heads that can overlap
                heads = [h for h in range(first, end, size) if h in table]
            else:
                heads = [h for h in table if h < end and h + size > pfn]
            for head in heads:
                if head >= pfn and head + size <= end:
                    del table[head]
                else:
                    self._split_out(order, head, pfn, end)

    def _split_out(self, order: int, head: int, pfn: int, end: int) -> None:
        """Remove pages ``[pfn, end)`` from a folio that straddles the range."""
        seed, _fp = self._folios[order].pop(head)
        # the parts outside the range become byte pages (rare: partial overlaps)
        for p in range(head, head + (1 << order)):
            if not pfn <= p < end and p not in self._pages:
                self._pages[p] = bytearray(synthetic_page(seed, p - head))

    def scrub(self, keep: Iterable[tuple[int, int]]) -> int:
        """Poison everything except ``keep`` = [(pa, length)]; return pages kept.

        Models what a buggy new kernel would find in memory it never restored.
        """
        keep_pfns: list[tuple[int, int]] = []
        for pa, length in keep:
            first = pa >> PAGE_SHIFT
            last = (pa + length + PAGE_SIZE - 1) >> PAGE_SHIFT
            keep_pfns.append((first, last))
        keep_pfns.sort()
        merged: list[tuple[int, int]] = []
        for a, b in keep_pfns:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))

        def kept(first: int, count: int) -> bool:
            i = bisect.bisect_right(merged, (first, 1 << 62)) - 1
            return i >= 0 and merged[i][0] <= first and first + count <= merged[i][1]

        new_pages = {p: v for p, v in self._pages.items() if kept(p, 1)}
        new_folios: list[dict[int, tuple[int, int]]] = [{} for _ in range(MAX_FOLIO_ORDER + 1)]
        for order, table in enumerate(self._folios):
            for head, val in table.items():
                if kept(head, 1 << order):
                    new_folios[order][head] = val
                else:
                    # partially kept folios keep their kept pages as bytes
                    for p in range(head, head + (1 << order)):
                        if kept(p, 1) and p not in new_pages:
                            new_pages[p] = bytearray(synthetic_page(val[0], p - head))
        self._pages = new_pages
        self._folios = new_folios
        self.poisoned = True
        self.scrub_count += 1
        return sum(b - a for a, b in merged)

    # -- introspection ------------------------------------------------------
    def resident_pages(self) -> int:
        """Pages that hold content (bytes or synthetic), for scale reporting."""
        return len(self._pages) + sum(len(t) << o for o, t in enumerate(self._folios))

    def folios(self) -> Iterator[tuple[int, int]]:
        """(pa, order) of every synthetic folio."""
        for order, table in enumerate(self._folios):
            for head in table:
                yield head << PAGE_SHIFT, order


def split_aligned(pfn: int, npages: int) -> Iterator[tuple[int, int]]:
    """Split ``[pfn, pfn + npages)`` into naturally aligned (head, order) blocks."""
    end = pfn + npages
    while pfn < end:
        order = min((pfn & -pfn).bit_length() - 1 if pfn else MAX_FOLIO_ORDER, MAX_FOLIO_ORDER)
        while pfn + (1 << order) > end:
            order -= 1
        yield pfn, order
        pfn += 1 << order
