"""Bulk (numpy) paths over the ``kho-v2`` radix memory map.

Same format and same errors as :func:`luosim.abi.kho.walk_radix_tree`, for
hand-overs of millions of blocks: the intermediate nodes (a few per GiB of
preserved memory) are walked in Python, every leaf bitmap is decoded at once
with numpy.  Layout per include/linux/kho/abi/kexec_handover.h
(torvalds/linux, "kho: radix tree" series): key
``(1 << (52 - order)) | (pa >> (12 + order))``, leaves of 32768 bits,
intermediate tables of 512 u64 physical addresses.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from luosim.abi.errors import DecodeError
from luosim.abi.kho import (
    KHO_BITMAP_SIZE_LOG2,
    KHO_FDT_MEMORY_MAP_PROP_NAME,
    KHO_ORDER_0_LOG2,
    KHO_TABLE_SIZE_LOG2,
    KHO_TREE_MAX_DEPTH,
    PAGE_SHIFT,
    PAGE_SIZE,
    check_node_ptr,
    leaf_blocks,
)

_SAFE_KEY = 1 << (KHO_ORDER_0_LOG2 + 1)  # keys below decode exactly in int64 arithmetic


@dataclass
class RadixWalk:
    """Preserved blocks in walk order as runs (``count`` blocks of ``order`` from
    ``pa``, consecutive keys), the nodes visited, and the error that stopped
    the walk (None when it completed)."""

    pa: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    nodes: list[int] = field(default_factory=list)
    error: DecodeError | None = None

    @property
    def nr_blocks(self) -> int:
        return int(self.count.sum())

    def blocks(self) -> list[tuple[int, int]]:
        """Every (pa, order), as the generator yields them (tests, small walks)."""
        return [(pa + (k << (PAGE_SHIFT + o)), o)
                for pa, o, n in zip(self.pa.tolist(), self.order.tolist(), self.count.tolist())
                for k in range(n)]


def decode_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``kho_radix_decode_key()`` of int64 keys in [1, 2**53): (pa uint64, order int64)."""
    _m, exp = np.frexp(keys.astype(np.float64))  # exact: keys < 2**53
    order = (KHO_ORDER_0_LOG2 + 1 - exp).astype(np.int64)
    low = keys & ~np.left_shift(np.int64(1), KHO_ORDER_0_LOG2 - order)
    pa = np.left_shift(low.astype(np.uint64), (PAGE_SHIFT + order).astype(np.uint64))
    return pa, order


_FULL_LEAF = b"\xff" * (1 << (KHO_BITMAP_SIZE_LOG2 - 3))


def _leaf_runs(page: bytes, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of set bits of a leaf whose keys all have one order (start >= 2**15)."""
    if page == _FULL_LEAF:  # every key (a TiB of guest RAM is mostly full leaves): one run
        pa, order = decode_keys(np.array([start], dtype=np.int64))
        return pa, order, np.array([1 << KHO_BITMAP_SIZE_LOG2], dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(page, dtype=np.uint8), bitorder="little").astype(np.int8)
    edges = np.diff(np.concatenate(([0], bits, [0])).astype(np.int8))
    first = np.flatnonzero(edges == 1)
    count = np.flatnonzero(edges == -1) - first
    pa, order = decode_keys(first.astype(np.int64) | np.int64(start))
    return pa, order, count.astype(np.int64)


def walk_radix_arrays(read_page: Callable[[int], bytes], root_pa: int, mem_size: int,
                      max_nodes: int = 1 << 20,
                      full_leaves: Callable[[int, int], int] | None = None) -> RadixWalk:
    """:func:`~luosim.abi.kho.walk_radix_tree` in bulk, as runs of blocks (cost per
    node and run, not per block); never raises DecodeError: the walk stops where
    the generator would have raised, keeping what it yielded.

    ``full_leaves(pa, n)``, when given, says how many of the ``n`` pages from
    ``pa`` (from the first) are known to be all ones without reading them
    (generated pages): such leaves are walked as those bytes, and a table's
    consecutive entries pointing at consecutive full leaves at once.  It must
    only count pages that read as all ones."""
    out = RadixWalk()
    pas: list[np.ndarray] = []
    orders: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    seen = 0

    full: list[int] = []  # [pa, order, count] of full leaves not yet appended

    def flush_full() -> None:
        if full:
            pas.append(np.array([full[0]], dtype=np.uint64))
            orders.append(np.array([full[1]], dtype=np.int64))
            counts.append(np.array([full[2]], dtype=np.int64))
            full.clear()

    def leaf(node_pa: int, page: bytes, start: int) -> None:
        safe = 0 < start < _SAFE_KEY and start + (1 << KHO_BITMAP_SIZE_LOG2) <= _SAFE_KEY
        if safe and page == _FULL_LEAF:
            # every key set (guest RAM is mostly full leaves): one run, joined
            # to the previous full leaf when the blocks follow on
            o = KHO_ORDER_0_LOG2 + 1 - start.bit_length()
            p = (start & ~(1 << (KHO_ORDER_0_LOG2 - o))) << (PAGE_SHIFT + o)
            n = 1 << KHO_BITMAP_SIZE_LOG2
            if full and full[1] == o and full[0] + (full[2] << (PAGE_SHIFT + o)) == p:
                full[2] += n
            else:
                flush_full()
                full.extend((p, o, n))
            return
        flush_full()
        if safe:
            pa, order, count = _leaf_runs(page, start)
            pas.append(pa)
            orders.append(order)
            counts.append(count)
            return
        # keys that do not fit the fast path: bit by bit, exactly as the generator
        got_pa: list[int] = []
        got_order: list[int] = []
        try:  # the blocks before a bad key count, as the generator yielded them
            for pa_i, order_i in leaf_blocks(page, start, node_pa):
                got_pa.append(pa_i)
                got_order.append(order_i)
        finally:
            pas.append(np.array(got_pa, dtype=np.uint64))
            orders.append(np.array(got_order, dtype=np.int64))
            counts.append(np.ones(len(got_pa), dtype=np.int64))

    def walk(node_pa: int, level: int, start: int) -> None:
        nonlocal seen
        seen += 1
        if seen > max_nodes:
            raise DecodeError("kho radix tree", 0, "table", f"more than {max_nodes} nodes",
                              kind="cycle")
        out.nodes.append(node_pa)
        if level == 0:
            leaf(node_pa, _FULL_LEAF if full_leaves is not None and full_leaves(node_pa, 1)
                 else read_page(node_pa), start)
            return
        page = read_page(node_pa)
        shift = (level - 1) * KHO_TABLE_SIZE_LOG2 + KHO_BITMAP_SIZE_LOG2
        table = np.frombuffer(page, dtype="<u8")
        nz = np.flatnonzero(table)
        idx: list[int] = nz.tolist()
        vals: list[int] = table[nz].tolist()
        ends: list[int] = []
        if level == 1 and full_leaves is not None and idx:
            # stretches of entries i, i+1, .. pointing at pages pa, pa + 4096, ..
            v = table[nz]
            brk = np.flatnonzero((np.diff(nz) != 1) | (v[1:] - v[:-1] != PAGE_SIZE)) + 1
            bounds = [0, *brk.tolist(), len(idx)]
            ends = [e for a, e in itertools.pairwise(bounds) for _ in range(a, e)]
        j = 0
        while j < len(idx):
            i, child = idx[j], vals[j]
            if ends:
                k = full_stretch(child, ends[j] - j, start | (i << shift))
                if k:
                    j += k
                    continue
            check_node_ptr(child, mem_size, f"level{level}.table[{i}]")
            walk(child, level - 1, start | (i << shift))
            j += 1

    def full_stretch(child: int, m: int, first: int) -> int:
        """Walk the full leaves among ``m`` leaves at consecutive pages from
        ``child`` with consecutive keys from ``first``, from the first, at once;
        how many (0: walk the first one by one)."""
        nonlocal seen
        last_end = first + (m << KHO_BITMAP_SIZE_LOG2)
        if (first <= 0 or last_end > _SAFE_KEY
                or first.bit_length() != (last_end - 1).bit_length()  # one order
                or child % PAGE_SIZE or child + m * PAGE_SIZE > mem_size):
            return 0
        assert full_leaves is not None
        k = min(full_leaves(child, m), max_nodes - seen)
        if k <= 0:
            return 0
        seen += k
        out.nodes.extend(range(child, child + k * PAGE_SIZE, PAGE_SIZE))
        o = KHO_ORDER_0_LOG2 + 1 - first.bit_length()
        p = (first & ~(1 << (KHO_ORDER_0_LOG2 - o))) << (PAGE_SHIFT + o)
        n = k << KHO_BITMAP_SIZE_LOG2
        if full and full[1] == o and full[0] + (full[2] << (PAGE_SHIFT + o)) == p:
            full[2] += n
        else:
            flush_full()
            full.extend((p, o, n))
        return k

    try:
        check_node_ptr(root_pa, mem_size, KHO_FDT_MEMORY_MAP_PROP_NAME)
        walk(root_pa, KHO_TREE_MAX_DEPTH - 1, 0)
    except DecodeError as exc:
        out.error = exc
    flush_full()
    if pas:
        out.pa = np.concatenate(pas)
        out.order = np.concatenate(orders)
        out.count = np.concatenate(counts)
    return out
