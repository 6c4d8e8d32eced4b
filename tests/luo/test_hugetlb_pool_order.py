"""Order of the hugetlb free list (kernel/mm/hugetlb.py :class:`HugeFreeList`).

Kernel facts (mainline mm/hugetlb.c; torvalds/linux 0010b838db9f for
``enqueue``/``dequeue``, a 2025 mainline copy for the bootmem path): boot-time
gigantic pages come from memblock top-down and are ``list_add()``ed three
times (``__alloc_bootmem_huge_page()``, ``gather_bootmem_prealloc_node()``,
``enqueue_hugetlb_folio()``), so the free list's head is the lowest page;
``dequeue_hugetlb_folio_node_exact()`` takes from the head and
``enqueue_hugetlb_folio()`` puts freed pages back at the head (LIFO).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from luosim.abi.hugetlb import MFD_HUGE_1GB, MFD_HUGETLB
from luosim.kernel.mm.hugetlb import HugeFreeList
from tests.luo.luo_testlib import boot

H1G = MFD_HUGETLB | MFD_HUGE_1GB
GIB = 1 << 30


def test_fresh_pool_hands_out_ascending_contiguous_pages() -> None:
    k = boot("v9", cmdline="hugepagesz=1G hugepages=4", memory="8GiB")
    h = k.hugetlb.hstates[18]
    pool = list(h.free)
    assert pool == sorted(pool) and len(pool) == 4
    f = k.hugetlb.memfd_create("ram", 4 * GIB, H1G)
    f.populate()
    got = [pa for _i, pa, _o in f.folios()]
    assert got == pool


def test_freed_pages_come_back_lifo() -> None:
    k = boot("v9", cmdline="hugepagesz=1G hugepages=4", memory="8GiB")
    h = k.hugetlb.hstates[18]
    pool = list(h.free)
    f = k.hugetlb.memfd_create("ram", 4 * GIB, H1G)
    f.populate()
    f.truncate(0)  # frees pages by index: the last freed is at the head
    assert list(h.free) == pool[::-1]
    g = k.hugetlb.memfd_create("again", 2 * GIB, H1G)
    g.populate()
    assert [pa for _i, pa, _o in g.folios()] == pool[::-1][:2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 15), st.integers(1, 4)), max_size=40))
def test_free_list_runs_match_a_plain_lifo_list(ops: list[tuple[bool, int, int]]) -> None:
    """Runs or not, the list reads like a Python list with head at index 0."""
    size = 1 << 12
    fl = HugeFreeList(size)
    ref: list[int] = []
    free = set(range(16))
    for is_free, page, n in ops:
        if is_free:
            pages = [p for p in range(page, page + n) if p in free]
            for p in pages:
                free.discard(p)
            # enqueue one by one, ascending or (odd page) descending
            seq = pages if page % 2 == 0 else pages[::-1]
            i = 0
            while i < len(seq):
                j = i + 1
                step = seq[i + 1] - seq[i] if j < len(seq) else 1
                while j < len(seq) and seq[j] - seq[j - 1] == step and abs(step) == 1:
                    j += 1
                fl.free_in_order(seq[i] * size, j - i, step * size)
                for p in seq[i:j]:
                    ref.insert(0, p * size)
                i = j
        else:
            n = min(n, len(ref))
            taken = [pa for pa, c, s in fl.take(n) for pa in range(pa, pa + c * s, s)]
            assert taken == ref[:n]
            del ref[:n]
            free.update(pa // size for pa in taken)
        assert list(fl) == ref and len(fl) == len(ref)
