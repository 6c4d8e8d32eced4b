"""Aligned bulk allocation (``alloc_pages_bulk(align=)``) and where memfds put guest RAM."""

from __future__ import annotations

import itertools
import random

import pytest

from luosim.errors import KernelError
from luosim.kernel.mm.memfd import PMD_ORDER, PUD_ORDER, bulk_align
from luosim.kernel.mm.page_alloc import PageAllocator

GIB_PAGES = 1 << 18


def _fragment(a: PageAllocator, rng: random.Random) -> None:
    for _ in range(40):
        pa = a.alloc_pages(rng.randint(0, 4))
        if rng.random() < 0.5:
            a.free_pages(pa)


@pytest.mark.parametrize("seed", range(6))
def test_aligned_runs_start_on_boundaries_and_keep_offsets_congruent(seed: int) -> None:
    rng = random.Random(seed)
    a = PageAllocator(8 << 30)
    _fragment(a, rng)
    order, align = rng.choice([(0, 9), (3, 9), (0, 18), (9, 18)])
    count = rng.randint(1, 5) * ((1 << align) >> order) + rng.randint(0, 7)
    free_before = a.free_pages_count()
    runs = a.alloc_pages_bulk(order, count, align=align)
    assert sum(n for _pa, n in runs) == count
    assert a.free_pages_count() == free_before - (count << order)
    offset = 0  # pages into the allocation
    for pa, n in runs:
        pfn = pa >> 12
        assert pfn % (1 << align) == 0 and offset % (1 << align) == 0
        for k in range(n):
            assert a.allocated.get(pfn + (k << order)) == order
        offset += n << order
    # no two runs overlap, and the skipped gaps are still free for others
    spans = sorted((pa >> 12, (pa >> 12) + (n << order)) for pa, n in runs)
    assert all(e <= s for (_s0, e), (s, _e1) in itertools.pairwise(spans))
    small = a.alloc_pages(0) >> 12
    assert small < spans[0][0]  # first fit still finds the gap below the aligned run


def test_align_falls_back_to_first_fit_and_enomem_takes_nothing() -> None:
    a = PageAllocator(1 << 30)  # 1 GiB: no 1 GiB-aligned room above the low reserve
    runs = a.alloc_pages_bulk(0, 1000, align=PUD_ORDER)
    b = PageAllocator(1 << 30)
    assert runs == b.alloc_pages_bulk(0, 1000)  # plain first fit
    free = a.free_pages_count()
    with pytest.raises(KernelError):
        a.alloc_pages_bulk(0, free + 1, align=PMD_ORDER)
    assert a.free_pages_count() == free


def test_bulk_align_picks_the_iommu_page_sizes() -> None:
    assert bulk_align(0, GIB_PAGES) == PUD_ORDER
    assert bulk_align(0, GIB_PAGES - 1) == PMD_ORDER
    assert bulk_align(512, GIB_PAGES) == PMD_ORDER  # file offset not 1 GiB aligned
    assert bulk_align(0, 511) == 0
    assert bulk_align(3, 4096) == 0
