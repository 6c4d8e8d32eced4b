"""A kernel's physical page allocator (the buddy allocator's contract only).

Each kernel builds its own from scratch at boot: free = all RAM minus what
firmware, scratch and the incoming KHO map reserve.  Allocation is
first-fit over naturally aligned blocks; fragmentation is not modelled.

Bulk paths (:meth:`PageAllocator.alloc_pages_bulk`, :meth:`free_run`,
:meth:`reserve_many`, :meth:`adopt_run`) give the same result as the
per-block calls they replace, at a cost per run of contiguous blocks rather
than per block: :class:`AllocMap` records allocations as runs.
"""

from __future__ import annotations

import bisect
import errno
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from luosim.errors import KernelError
from luosim.hw.memory import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from luosim.hw.memory import PhysicalMemory

LOW_RESERVED = 1 << 20  # legacy low memory never handed out


def order_for(size: int) -> int:
    """``get_order()``: smallest order whose block holds ``size`` bytes."""
    pages = max(1, -(-size // PAGE_SIZE))
    return (pages - 1).bit_length()


class AllocMap:
    """head pfn -> order of every allocated block, stored as runs.

    A run ``(start, order, count)`` stands for ``count`` contiguous blocks of
    ``order``; single blocks are runs of one.  Behaves like the dict it
    replaces for ``get``/``pop``/``[]=``/``in``/``len``/``items``.
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._runs: list[tuple[int, int, int]] = []  # (start, order, count)
        self._len = 0

    def _find(self, pfn: int) -> int | None:
        i = bisect.bisect_right(self._starts, pfn) - 1
        if i < 0:
            return None
        start, order, count = self._runs[i]
        off = pfn - start
        if off >= count << order or off & ((1 << order) - 1):
            return None
        return i

    def get(self, pfn: int, default: int | None = None) -> int | None:
        i = self._find(pfn)
        return default if i is None else self._runs[i][1]

    def __contains__(self, pfn: object) -> bool:
        return isinstance(pfn, int) and self._find(pfn) is not None

    def __getitem__(self, pfn: int) -> int:
        i = self._find(pfn)
        if i is None:
            raise KeyError(pfn)
        return self._runs[i][1]

    def __len__(self) -> int:
        return self._len

    def add_run(self, start: int, order: int, count: int) -> None:
        """Blocks ``start + k << order`` (k < count), none of them allocated yet."""
        if count <= 0:
            return
        i = bisect.bisect_left(self._starts, start)
        if i > 0:  # extend the run just before when it continues
            s, o, c = self._runs[i - 1]
            if o == order and s + (c << o) == start:
                self._runs[i - 1] = (s, o, c + count)
                self._len += count
                return
        self._starts.insert(i, start)
        self._runs.insert(i, (start, order, count))
        self._len += count

    def __setitem__(self, pfn: int, order: int) -> None:
        self.pop(pfn, None)
        self.add_run(pfn, order, 1)

    def pop(self, pfn: int, default: Any = None) -> Any:
        i = self._find(pfn)
        if i is None:
            return default
        start, order, count = self._runs[i]
        k = (pfn - start) >> order
        parts = [(start, order, k), (pfn + (1 << order), order, count - k - 1)]
        parts = [p for p in parts if p[2] > 0]
        self._starts[i:i + 1] = [p[0] for p in parts]
        self._runs[i:i + 1] = parts
        self._len -= 1
        return order

    def pop_run(self, start: int, order: int, count: int) -> bool:
        """Remove ``count`` blocks of ``order`` from ``start``; False (nothing
        removed) unless they are all allocated with that order in one run."""
        i = self._find(start)
        if i is None:
            return False
        s, o, c = self._runs[i]
        k = (start - s) >> o
        if o != order or k + count > c:
            return False
        parts = [(s, o, k), (start + (count << o), o, c - k - count)]
        parts = [p for p in parts if p[2] > 0]
        self._starts[i:i + 1] = [p[0] for p in parts]
        self._runs[i:i + 1] = parts
        self._len -= count
        return True

    def runs(self) -> list[tuple[int, int, int]]:
        return list(self._runs)

    def order0_spans(self, start: int, n: int) -> list[tuple[int, int]]:
        """[a, b) stretches of ``[start, start + n)`` whose pages are allocated
        order-0 blocks (what ``get(pfn) is not None`` says page by page for
        order-0 runs; blocks of higher order count by their head only)."""
        end = start + n
        out: list[tuple[int, int]] = []
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        while i < len(self._runs) and self._starts[i] < end:
            s, order, count = self._runs[i]
            i += 1
            e = s + (count << order)
            if e <= start:
                continue
            if order == 0:
                a, b = max(s, start), min(e, end)
                if out and out[-1][1] == a:
                    out[-1] = (out[-1][0], b)
                else:
                    out.append((a, b))
            else:
                first_head = s + (max(0, start - s) + (1 << order) - 1 >> order << order)
                for head in range(first_head, min(e, end), 1 << order):
                    out.append((head, head + 1))
        return out

    def items(self) -> Iterator[tuple[int, int]]:
        for start, order, count in self._runs:
            for k in range(count):
                yield start + (k << order), order

    def __iter__(self) -> Iterator[int]:
        for pfn, _order in self.items():
            yield pfn


class PageAllocator:
    """``memory`` given and ``poison_on_free``: freed blocks are poisoned at once,
    as with ``init_on_free=1``/page poisoning, so a use-after-free reads 0x6b
    instead of silently working."""

    def __init__(self, mem_size: int, memory: PhysicalMemory | None = None,
                 poison_on_free: bool = True) -> None:
        self.memory = memory
        self.poison_on_free = poison_on_free
        self._starts: list[int] = []  # sorted free extents [start, end) in pfns
        self._ends: list[int] = []
        self.total_pages = mem_size >> PAGE_SHIFT
        self.allocated = AllocMap()  # head pfn -> order
        self._add_free(LOW_RESERVED >> PAGE_SHIFT, self.total_pages)

    # -- extent bookkeeping -----------------------------------------------------
    def _add_free(self, start: int, end: int) -> None:
        i = bisect.bisect_left(self._starts, start)
        if i > 0 and self._ends[i - 1] >= start:
            i -= 1
            start = self._starts[i]
            end = max(end, self._ends[i])
            del self._starts[i], self._ends[i]
        while i < len(self._starts) and self._starts[i] <= end:
            end = max(end, self._ends[i])
            del self._starts[i], self._ends[i]
        self._starts.insert(i, start)
        self._ends.insert(i, end)

    def _take(self, start: int, end: int) -> None:
        """Remove [start, end) from the free extents (whatever overlaps)."""
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        while i < len(self._starts) and self._starts[i] < end:
            s, e = self._starts[i], self._ends[i]
            if e <= start:
                i += 1
                continue
            del self._starts[i], self._ends[i]
            if s < start:
                self._starts.insert(i, s)
                self._ends.insert(i, start)
                i += 1
            if e > end:
                self._starts.insert(i, end)
                self._ends.insert(i, e)
                i += 1

    # -- API ----------------------------------------------------------------------
    def reserve(self, pa: int, size: int) -> None:
        """``memblock_reserve()``: never hand out [pa, pa + size)."""
        self._take(pa >> PAGE_SHIFT, -(-(pa + size) // PAGE_SIZE))

    def reserve_many(self, starts: Any, ends: Any) -> None:
        """``memblock_reserve()`` of many pfn ranges [start, end) at once (arrays)."""
        from luosim.hw.memory import merge_ranges
        ms, me = merge_ranges(starts, ends)
        for a, b in zip(ms.tolist(), me.tolist()):
            self._take(a, b)

    def _bulk_plan(self, order: int, count: int, align: int) -> list[tuple[int, int]] | None:
        """(head pfn, blocks) runs for ``count`` blocks of ``order``, first fit,
        every run starting on a ``1 << align``-page boundary and every run but
        the last a whole number of such units; None if they do not all fit."""
        n = 1 << order
        unit = max(n, 1 << align)
        per_unit = unit // n
        plan: list[tuple[int, int]] = []
        left = count
        for s, e in zip(self._starts, self._ends):
            if not left:
                break
            head = -(-s // unit) * unit
            fit = max(0, (e - head) // n)
            if fit < left:
                fit -= fit % per_unit
            if fit:
                take = min(fit, left)
                plan.append((head, take))
                left -= take
        return None if left else plan

    def alloc_pages_bulk(self, order: int, count: int, *, align: int = 0
                         ) -> list[tuple[int, int]]:
        """``count`` blocks of ``order``, as ``count`` calls of :meth:`alloc_pages`
        would hand them out (first fit), returned as (pa, blocks) runs.

        ``align`` (a page order above ``order``) asks for runs that start on
        ``1 << align``-page boundaries and, but for the last, are whole such
        units, so that file offsets and physical addresses stay congruent
        modulo that size (the gaps skipped stay free).  This models where a
        buddy allocator puts a large allocation: it is served from whole
        free blocks of the highest orders, which are naturally aligned, not
        from the leftovers at the start of a first-fit extent.  When no such
        placement fits, the allocation falls back to plain first fit.

        ENOMEM (nothing taken) when they do not all fit.
        """
        plan = self._bulk_plan(order, count, align) if align > order else None
        if plan is None:
            plan = self._bulk_plan(order, count, order)
        if plan is None:
            raise KernelError(errno.ENOMEM, f"no room for {count} blocks of order {order}")
        for head, take in plan:
            self._take(head, head + (take << order))
            self.allocated.add_run(head, order, take)
        return [(head << PAGE_SHIFT, take) for head, take in plan]

    def free_run(self, pa: int, order: int, count: int) -> None:
        """``count`` :meth:`free_pages` of contiguous blocks of ``order`` from ``pa``."""
        head = pa >> PAGE_SHIFT
        if not self.allocated.pop_run(head, order, count):
            for k in range(count):
                self.free_pages(pa + (k << (order + PAGE_SHIFT)), order)
            return
        if self.memory is not None and self.poison_on_free:
            self.memory.poison(pa, (PAGE_SIZE << order) * count)
        self._add_free(head, head + (count << order))

    def adopt_run(self, pa: int, order: int, count: int) -> None:
        """:meth:`adopt` of ``count`` contiguous blocks of ``order``."""
        self.allocated.add_run(pa >> PAGE_SHIFT, order, count)

    def alloc_pages(self, order: int) -> int:
        """``alloc_pages()`` -> physical address; ENOMEM when nothing fits."""
        n = 1 << order
        for s, e in zip(self._starts, self._ends):
            head = -(-s // n) * n
            if head + n <= e:
                self._take(head, head + n)
                self.allocated[head] = order
                return head << PAGE_SHIFT
        raise KernelError(errno.ENOMEM, f"no free block of order {order}")

    def free_pages(self, pa: int, order: int | None = None) -> None:
        """``__free_pages()``; the order must match the allocation."""
        head = pa >> PAGE_SHIFT
        got = self.allocated.pop(head, None)
        if got is None:
            raise KernelError(errno.EINVAL, f"free of unallocated block {pa:#x}")
        if order is not None and order != got:
            raise KernelError(errno.EINVAL, f"free of {pa:#x} with order {order}, allocated {got}")
        if self.memory is not None and self.poison_on_free:
            self.memory.poison(pa, PAGE_SIZE << got)
        self._add_free(head, head + (1 << got))

    def adopt(self, pa: int, order: int) -> None:
        """Take ownership of a reserved block (KHO restore): it becomes allocated."""
        self.allocated[pa >> PAGE_SHIFT] = order

    def free_pages_count(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends))

    def is_free(self, pa: int) -> bool:
        pfn = pa >> PAGE_SHIFT
        i = bisect.bisect_right(self._starts, pfn) - 1
        return i >= 0 and self._starts[i] <= pfn < self._ends[i]
