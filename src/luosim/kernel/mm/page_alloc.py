"""A kernel's physical page allocator (the buddy allocator's contract only).

Each kernel builds its own from scratch at boot: free = all RAM minus what
firmware, scratch and the incoming KHO map reserve.  Allocation is
first-fit over naturally aligned blocks; fragmentation is not modelled.
"""

from __future__ import annotations

import bisect
import errno
from typing import TYPE_CHECKING

from luosim.errors import KernelError
from luosim.hw.memory import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from luosim.hw.memory import PhysicalMemory

LOW_RESERVED = 1 << 20  # legacy low memory never handed out


def order_for(size: int) -> int:
    """``get_order()``: smallest order whose block holds ``size`` bytes."""
    pages = max(1, -(-size // PAGE_SIZE))
    return (pages - 1).bit_length()


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
        self.allocated: dict[int, int] = {}  # head pfn -> order
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
