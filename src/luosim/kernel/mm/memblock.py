"""``reserve_mem=`` regions and their KHO preservation: models mm/memblock.c.

``reserve_mem=SIZE:ALIGN:NAME`` (Documentation/admin-guide/kernel-parameters)
sets aside a named region at boot (pstore/ftrace use them).  Kernels whose
memblock layer is ``memblock-v1`` (include/linux/kho/abi/memblock.h,
torvalds/linux c17ee635) hand the regions over: the outgoing side preserves
each region's pages and registers a ``"memblock"`` KHO subtree (an FDT, see
:mod:`luosim.abi.memblock`); the incoming side, ``reserve_mem_kho_revive()``,
takes a region back at the same address when the name, size and alignment
match, and otherwise allocates it afresh (its content is then gone).  The
incoming memblock FDT is copied and left reserved, as
``reserve_mem_kho_retrieve_fdt()`` does.

Deviation: a revived region's pages are claimed with ``kho_restore_pages()``
so the model's leak accounting sees them owned (the region is in use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from luosim.abi.errors import DecodeError
from luosim.abi.memblock import (
    MEMBLOCK_KHO_FDT,
    ReserveMem,
    decode_memblock_fdt,
    encode_memblock_fdt,
)
from luosim.errors import KernelError
from luosim.hw.memory import PAGE_SIZE
from luosim.kernel.mm.page_alloc import order_for

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel

_SUFFIX = {"K": 10, "M": 20, "G": 30, "T": 40}


def memparse(text: str) -> int:
    """``memparse()``: a number with an optional K/M/G/T suffix."""
    text = text.strip()
    shift = _SUFFIX.get(text[-1:].upper(), 0)
    digits = text[:-1] if shift else text
    return int(digits, 0) << shift


def parse_reserve_mem(words: list[str]) -> list[tuple[str, int, int]]:
    """Every ``reserve_mem=SIZE:ALIGN:NAME`` word -> (name, size, align); bad ones skipped
    (the kernel's ``reserve_mem()`` returns -EINVAL for them)."""
    out: list[tuple[str, int, int]] = []
    for w in words:
        key, sep, value = w.partition("=")
        if key != "reserve_mem" or not sep:
            continue
        parts = value.split(":")
        if len(parts) != 3 or not parts[2]:
            continue
        try:
            size, align = memparse(parts[0]), memparse(parts[1])
        except ValueError:
            continue
        if size <= 0 or align <= 0 or align & (align - 1):
            continue
        out.append((parts[2], size, align))
    return out


class ReserveMemRegions:
    """The ``reserve_mem`` regions of one kernel (``kernel.reserve_mem``)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.requests = parse_reserve_mem(kernel.cmdline.words)
        self.regions: dict[str, ReserveMem] = {}
        self.revived: set[str] = set()
        self.in_fdt_pa: int | None = None  # incoming memblock FDT, left reserved

    def init(self) -> None:
        """``reserve_mem()`` per request (revive or allocate), then the outgoing FDT."""
        k = self.kernel
        incoming = self._incoming()
        for name, size, align in self.requests:
            got = incoming.get(name)
            nr = -(-size // PAGE_SIZE)
            if got is not None and got.size == size and got.start % align == 0 \
                    and k.kho.restore_pages(got.start, nr):
                self.regions[name] = got
                self.revived.add(name)
                k.printk("info", "memblock", f"Revived memory reservation '{name}' from KHO")
                continue
            try:
                pa = k.mm.alloc_pages(order_for(max(nr * PAGE_SIZE, align)))
            except KernelError:
                k.printk("err", "memblock", f"reserve_mem: failed to allocate '{name}'")
                continue
            self.regions[name] = ReserveMem(name, pa, size)
        self._prepare_kho_fdt()

    def _incoming(self) -> dict[str, ReserveMem]:
        """``reserve_mem_kho_retrieve_fdt()``: the previous kernel's regions, if readable."""
        k = self.kernel
        if k.profile.memblock_abi is None or not self.requests or not k.kho.is_kho_boot:
            return {}
        try:
            pa, size = k.kho.retrieve_blob(MEMBLOCK_KHO_FDT)
        except KernelError:
            return {}
        try:
            head = k.machine.memory.read(pa, 8)
            length = size if size is not None else int.from_bytes(head[4:8], "big")
            regions = decode_memblock_fdt(k.machine.memory.read(pa, min(length, PAGE_SIZE * 16)))
        except DecodeError as exc:
            k.printk("warn", "memblock", f"KHO memblock FDT not usable: {exc.reason}")
            return {}
        self.in_fdt_pa = pa
        return regions

    def _prepare_kho_fdt(self) -> None:
        """``prepare_kho_fdt()``: preserve every region, register subtree "memblock"."""
        k = self.kernel
        if k.profile.memblock_abi is None or not self.regions or not k.kho.enabled:
            return
        kho = k.kho
        try:
            for r in self.regions.values():
                kho.preserve_pages(r.start, -(-r.size // PAGE_SIZE))
            blob = encode_memblock_fdt(list(self.regions.values()))
            pa = kho.alloc_preserve(len(blob))
            k.machine.memory.write(pa, blob)
            kho.add_subtree(MEMBLOCK_KHO_FDT, pa, len(blob))
        except KernelError as exc:
            k.printk("err", "memblock", f"failed to prepare memblock FDT for KHO: {exc}")
