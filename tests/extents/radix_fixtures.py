"""Radix trees the extents tests share."""

from __future__ import annotations

from collections.abc import Callable

from luosim.hw.machine import Machine
from luosim.hw.memory import PAGE_SIZE, PhysicalMemory

LEAF_KEYS = 1 << 15  # keys per KHO radix leaf (a 4 KiB bitmap)


def page_reader(memory: PhysicalMemory) -> Callable[[int], bytes]:
    """The walkers' ``read(pa)``: one page of ``memory``."""
    return lambda pa: memory.read(pa, PAGE_SIZE)


def full_leaf_tree() -> tuple[Machine, int]:
    """A v7 kernel's tree over three full order-0 leaves, a full order-9 leaf
    and 5 blocks more, and one page: (machine, root)."""
    m = Machine.from_topology({"memory": "256GiB"})
    k = m.boot("v7")
    k.kho.preserved.add_run(1 << 21, 0, 3 * LEAF_KEYS, "t")
    k.kho.preserved.add_run(1 << 24, 9, LEAF_KEYS + 5, "t")
    k.kho.preserved.add((7, 0), "t")
    return m, k.kho._write_radix_tree()
