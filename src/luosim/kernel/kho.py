"""Kexec HandOver: models kernel/liveupdate/kexec_handover.c.

Outgoing side: preserved memory is tracked per (pfn, order) as the radix
tree does; at kexec the tree is written into freshly allocated pages in the
kernel's exact format (``kho-v2``), the root FDT is placed in a preserved
page, and ``kho_data`` (the x86 setup_data) is handed to the machine.

Incoming side: ``early_init`` reads ``kho_data`` from the boot parameters,
validates the root FDT (a mismatch means "not a KHO boot", as
``kho_populate()`` does), walks the radix tree and reserves every preserved
block in the new page allocator, tagging each head page the way
``kho_preserved_memory_reserve()`` writes KHO_PAGE_MAGIC.  Restores consume
those tags; anything never restored is reported as leaked.
"""

from __future__ import annotations

import errno
import struct
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from luosim.abi.errors import DecodeError
from luosim.abi.kho import (
    KHO_BITMAP_SIZE_LOG2,
    KHO_TREE_MAX_DEPTH,
    MAX_PAGE_ORDER,
    KhoData,
    KhoScratch,
    bitmap_index,
    decode_root_fdt,
    encode_key,
    encode_root_fdt,
    table_index,
    walk_radix_tree,
)
from luosim.errors import KernelError
from luosim.faults import point
from luosim.faults.mutator import corrupt_radix_root
from luosim.hw.memory import PAGE_SHIFT, PAGE_SIZE
from luosim.kernel.mm.page_alloc import order_for

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel

FP_PRESERVE = point("kho.preserve", ("ENOMEM",),
                    "kho_radix_add_page(): allocating a radix node fails")
FP_ALLOC_PRESERVE = point("kho.alloc_preserve", ("ENOMEM",),
                          "kho_alloc_preserve(): folio_alloc() fails")
FP_RESTORE = point("kho.restore", ("EINVAL",),
                   "kho_restore_page(): the page's KHO magic is missing (returns NULL)")
FP_HANDOVER = point("kho.handover", ("corrupt:root-compatible", "corrupt:mem-map",
                                     "corrupt:radix-node"),
                    "the hand-over FDT or radix tree is corrupted in memory before kexec")


def _caller_module() -> str:
    """The first kernel module up the stack that is not KHO itself."""
    frame = sys._getframe(2)
    while frame is not None:
        mod = frame.f_globals.get("__name__", "")
        if mod != __name__:
            return str(mod).removeprefix("luosim.kernel.")
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


def blocks(pfn: int, end_pfn: int) -> Iterator[tuple[int, int]]:
    """Split [pfn, end_pfn) the way ``kho_preserve_pages()`` does."""
    while pfn < end_pfn:
        tz = (pfn & -pfn).bit_length() - 1 if pfn else 63
        order = min(tz, (end_pfn - pfn).bit_length() - 1)
        yield pfn, order
        pfn += 1 << order


class Kho:
    """One kernel's KHO state (``kho_out`` and ``kho_in``)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.mem = kernel.machine.memory
        self.enabled = not kernel.cmdline_has("kho=off")
        # outgoing: the radix tree's content, (pfn, order) pairs
        self.preserved: set[tuple[int, int]] = set()
        # which kernel module preserved each block: an observer's annotation
        # (not part of the hand-over) so checks can tell pending from leaked
        self.owner: dict[tuple[int, int], str] = {}
        self.subtrees: dict[str, int] = {}  # name -> phys, in insertion order
        self.finalized = False
        # incoming
        self.in_fdt_pa = 0
        self.in_subtrees: dict[str, int] = {}
        self.in_magic: dict[int, int] = {}  # head pfn -> order (KHO_PAGE_MAGIC set)
        self.in_total_pages = 0
        self.scratch: list[KhoScratch] = list(kernel.machine.scratch)

    # ------------------------------------------------------------------ incoming
    @property
    def is_kho_boot(self) -> bool:
        """``is_kho_boot()``."""
        return self.in_fdt_pa != 0

    def early_init(self, kho_data: bytes | None) -> None:
        """``kho_populate()`` + ``kho_memory_init()``: parse and reserve."""
        k = self.kernel
        alloc = k.mm
        for s in self.scratch:
            alloc.reserve(s.addr, s.size)  # CMA: never holds unmovable kernel data
        if kho_data is None or not self.enabled:
            return
        try:
            kd = KhoData.decode(kho_data)
            self.mem.check_range(kd.fdt_addr, kd.fdt_size)
            root = decode_root_fdt(self.mem.read(kd.fdt_addr, kd.fdt_size))
            scratch = KhoScratch.decode_array(self.mem.read(kd.scratch_addr, kd.scratch_size))
        except Exception as exc:  # DecodeError, MemoryAccessError
            k.printk("warn", "kho", f"setup: handover FDT is invalid, booting without KHO: {exc}")
            return
        if root.mem_map_pa == 0:
            k.printk("err", "kho", "failed to get preserved memory map")
            return
        self.scratch = scratch
        magic: dict[int, int] = {}
        try:
            for pa, order in walk_radix_tree(lambda pa: self.mem.read(pa, PAGE_SIZE),
                                             root.mem_map_pa, self.mem.size):
                if pa + (PAGE_SIZE << order) > self.mem.size:
                    raise DecodeError("kho radix tree", 0, "bitmap",
                                      f"block {pa:#x} order {order} beyond RAM", kind="bad-value")
                magic[pa >> PAGE_SHIFT] = order
        except DecodeError as exc:
            # kho_mem_retrieve() failed: kho_in.fdt_phys = 0, nothing is preserved
            k.printk("err", "kho", f"failed to walk preserved memory map: {exc}")
            return
        for pfn, order in magic.items():
            alloc.reserve(pfn << PAGE_SHIFT, PAGE_SIZE << order)
        self.in_magic = magic
        self.in_total_pages = sum(1 << o for o in magic.values())
        self.in_fdt_pa = kd.fdt_addr
        self.in_subtrees = root.subtrees
        k.printk("info", "kho", f"found kexec handover data: {len(magic)} preserved blocks, "
                 f"{self.in_total_pages} pages, subtrees {sorted(root.subtrees)}")

    def retrieve_subtree(self, name: str) -> int:
        """``kho_retrieve_subtree()`` -> phys; ENOENT when absent, EINVAL when bad."""
        if not self.is_kho_boot:
            raise KernelError(errno.ENOENT, "not a KHO boot")
        pa = self.in_subtrees.get(name)
        if pa is None:
            raise KernelError(errno.ENOENT, f"no KHO subtree {name!r}")
        if pa < 0:
            raise KernelError(errno.EINVAL, f"KHO subtree {name!r} has no 8-byte preserved-data")
        return pa

    def _restore_page(self, pa: int) -> int | None:
        """``kho_restore_page()``: the block's order, or None (with a warning)."""
        k = self.kernel
        pfn = pa >> PAGE_SHIFT
        order = self.in_magic.get(pfn) if pa % PAGE_SIZE == 0 else None
        effect = k.machine.faults.hit(FP_RESTORE, f"{pa:#x}")
        if order is None or order > MAX_PAGE_ORDER or effect is not None:
            k.warn_once("kho", f"restore:{pa:#x}",
                        f"WARNING: kho_restore_page: {pa:#x} was not preserved (no KHO magic)")
            return None
        del self.in_magic[pfn]  # later restores of this page error out
        k.mm.adopt(pa, order)
        return order

    def restore_folio(self, pa: int) -> int | None:
        """``kho_restore_folio()`` -> the folio's order, None when not preserved."""
        return self._restore_page(pa)

    def restore_pages(self, pa: int, nr_pages: int) -> bool:
        """``kho_restore_pages()``: every block of the split must carry a magic."""
        start = pa >> PAGE_SHIFT
        for pfn, _order in blocks(start, start + nr_pages):
            if self._restore_page(pfn << PAGE_SHIFT) is None:
                return False
        return True

    def restore_free(self, pa: int) -> None:
        """``kho_restore_free()``: claim a kho_alloc_preserve() block and free it."""
        order = self.restore_folio(pa)
        if order is None:
            self.kernel.warn("kho", f"kho_restore_free: {pa:#x} not restorable")
            return
        self.kernel.mm.free_pages(pa, order)

    def unclaimed(self) -> list[tuple[int, int]]:
        """Preserved blocks the previous kernel handed over that nobody restored."""
        return sorted((pfn << PAGE_SHIFT, order) for pfn, order in self.in_magic.items())

    def report_unclaimed(self, when: str) -> int:
        pages = sum(1 << o for _pa, o in self.unclaimed())
        if pages:
            self.kernel.printk("warn", "kho",
                               f"{when}: {len(self.in_magic)} preserved blocks ({pages} pages) "
                               "not restored: leaked until the next reboot")
        return pages

    # ------------------------------------------------------------------ outgoing
    def _check_scratch(self, pa: int, size: int) -> None:
        for s in self.scratch:
            if pa < s.addr + s.size and s.addr < pa + size:
                self.kernel.warn("kho", f"WARNING: preserving scratch memory {pa:#x}+{size:#x}")
                raise KernelError(errno.EINVAL, f"{pa:#x}+{size:#x} overlaps KHO scratch")

    def _check_open(self) -> None:
        if not self.enabled:
            raise KernelError(errno.EOPNOTSUPP, "KHO is disabled")
        if self.finalized:
            raise KernelError(errno.EBUSY, "KHO state is finalized")

    def _add(self, pfn: int, order: int) -> None:
        self.kernel.machine.faults.check(FP_PRESERVE, f"pfn {pfn:#x} order {order}")
        self.preserved.add((pfn, order))
        self.owner[(pfn, order)] = _caller_module()

    def _del(self, pfn: int, order: int) -> None:
        if (pfn, order) not in self.preserved:
            self.kernel.warn("kho", f"WARNING: kho_radix_del_page: {pfn << PAGE_SHIFT:#x} "
                             f"order {order} was not preserved")
            return
        self.preserved.discard((pfn, order))

    def preserve_folio(self, pa: int, order: int) -> None:
        """``kho_preserve_folio()``: EINVAL on scratch overlap, ENOMEM on node alloc."""
        self._check_open()
        if pa % (PAGE_SIZE << order):
            raise KernelError(errno.EINVAL, f"folio {pa:#x} not aligned to order {order}")
        self._check_scratch(pa, PAGE_SIZE << order)
        self._add(pa >> PAGE_SHIFT, order)

    def unpreserve_folio(self, pa: int, order: int) -> None:
        """``kho_unpreserve_folio()`` (void)."""
        self._del(pa >> PAGE_SHIFT, order)

    def preserve_pages(self, pa: int, nr_pages: int) -> None:
        """``kho_preserve_pages()``: split into aligned blocks, undo on failure."""
        self._check_open()
        self._check_scratch(pa, nr_pages * PAGE_SIZE)
        done: list[tuple[int, int]] = []
        start = pa >> PAGE_SHIFT
        try:
            for pfn, order in blocks(start, start + nr_pages):
                self._add(pfn, order)
                done.append((pfn, order))
        except KernelError:
            for pfn, order in done:
                self._del(pfn, order)
            raise

    def unpreserve_pages(self, pa: int, nr_pages: int) -> None:
        start = pa >> PAGE_SHIFT
        for pfn, order in blocks(start, start + nr_pages):
            self._del(pfn, order)

    def alloc_preserve(self, size: int) -> int:
        """``kho_alloc_preserve()`` -> phys of zeroed, preserved memory."""
        if size <= 0:
            raise KernelError(errno.EINVAL, "kho_alloc_preserve of 0 bytes")
        order = order_for(size)
        if order > MAX_PAGE_ORDER:
            raise KernelError(errno.E2BIG, f"{size} bytes needs order {order}")
        self.kernel.machine.faults.check(FP_ALLOC_PRESERVE, f"{size} bytes")
        pa = self.kernel.mm.alloc_pages(order)
        self.mem.zero(pa, PAGE_SIZE << order)
        try:
            self.preserve_folio(pa, order)
        except KernelError:
            self.kernel.mm.free_pages(pa, order)
            raise
        return pa

    def unpreserve_free(self, pa: int) -> None:
        """``kho_unpreserve_free()``."""
        order = self.kernel.mm.allocated.get(pa >> PAGE_SHIFT)
        if order is None:
            self.kernel.warn("kho", f"kho_unpreserve_free: {pa:#x} is not allocated")
            return
        self.unpreserve_folio(pa, order)
        self.kernel.mm.free_pages(pa, order)

    def preserve_vmalloc(self, data: bytes) -> bytes:
        """``kho_preserve_vmalloc()`` of an area holding ``data`` (order-0 pages).

        Returns the 16-byte ``struct kho_vmalloc`` describing it.
        """
        self._check_open()
        nr = max(1, -(-len(data) // PAGE_SIZE))
        pages: list[int] = []
        chunks: list[int] = []
        try:
            for i in range(nr):
                pa = self.kernel.mm.alloc_pages(0)
                pages.append(pa)
                self.mem.write(pa, data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE].ljust(PAGE_SIZE,
                                                                               b"\0"))
                self.preserve_pages(pa, 1)
            per_chunk = PAGE_SIZE // 8 - 1
            groups = [pages[i:i + per_chunk] for i in range(0, len(pages), per_chunk)]
            for _ in groups:
                cpa = self.kernel.mm.alloc_pages(0)
                chunks.append(cpa)
                self.preserve_pages(cpa, 1)
        except KernelError:
            for pa in pages + chunks:
                if (pa >> PAGE_SHIFT, 0) in self.preserved:
                    self._del(pa >> PAGE_SHIFT, 0)
                self.kernel.mm.free_pages(pa, 0)
            raise
        for ci, (cpa, group) in enumerate(zip(chunks, groups)):
            nxt = chunks[ci + 1] if ci + 1 < len(chunks) else 0
            body = struct.pack(f"<Q{len(group)}Q", nxt, *group)
            self.mem.write(cpa, body.ljust(PAGE_SIZE, b"\0"))
        return struct.pack("<QIHH", chunks[0], nr, 0x0001, 0)  # flags: KHO_VMALLOC_ALLOC

    def _vmalloc_pages(self, desc: bytes) -> tuple[list[int], list[int]]:
        first, total, _flags, order = struct.unpack("<QIHH", desc)
        pages: list[int] = []
        chunks: list[int] = []
        cpa = first
        while cpa:
            if cpa % PAGE_SIZE or cpa + PAGE_SIZE > self.mem.size or len(chunks) > total + 1:
                raise KernelError(errno.EINVAL, f"kho_vmalloc chunk pointer {cpa:#x} is bad")
            chunks.append(cpa)
            words = struct.unpack("<512Q", self.mem.read(cpa, PAGE_SIZE))
            for w in words[1:]:
                if not w:
                    break
                pages.append(w)
            cpa = words[0]
        if len(pages) << order != total:
            raise KernelError(errno.EINVAL, f"kho_vmalloc lists {len(pages)} pages, "
                              f"header says {total}")
        return pages, chunks

    def unpreserve_vmalloc(self, desc: bytes) -> None:
        pages, chunks = self._vmalloc_pages(desc)
        for pa in pages + chunks:
            self._del(pa >> PAGE_SHIFT, 0)
            self.kernel.mm.free_pages(pa, 0)

    def restore_vmalloc(self, desc: bytes) -> bytes | None:
        """``kho_restore_vmalloc()`` -> the area's bytes, None on failure."""
        try:
            pages, chunks = self._vmalloc_pages(desc)
        except KernelError as exc:
            self.kernel.printk("err", "kho", f"kho_restore_vmalloc: {exc}")
            return None
        out = bytearray()
        for pa in pages:
            if not self.restore_pages(pa, 1):
                return None
            out += self.mem.read(pa, PAGE_SIZE)
        for cpa in chunks:
            if not self.restore_pages(cpa, 1):
                return None
            self.kernel.mm.free_pages(cpa, 0)
        return bytes(out)

    def add_subtree(self, name: str, pa: int) -> None:
        """``kho_add_subtree()``: EEXIST for a duplicate name."""
        if not self.enabled:
            raise KernelError(errno.EOPNOTSUPP, "KHO is disabled")
        if name in self.subtrees:
            raise KernelError(errno.EEXIST, f"KHO subtree {name!r} exists")
        self.subtrees[name] = pa

    def remove_subtree(self, pa: int) -> None:
        """``kho_remove_subtree()``: by physical address, silently if absent."""
        for name, val in list(self.subtrees.items()):
            if val == pa:
                del self.subtrees[name]
                return

    def finalize(self) -> None:
        """Freeze the preserved set (``kho_finalize()`` of LUO P0/P1 kernels)."""
        self.finalized = True

    # ------------------------------------------------------------------ hand-over
    def _write_radix_tree(self) -> int:
        """Materialise the radix tree in memory; return the root's phys."""
        k = self.kernel
        nodes: dict[tuple[int, int], int] = {}  # (level, key prefix) -> pa
        tables: dict[int, dict[int, int]] = {}  # node pa -> {index: child pa}
        leaves: dict[int, int] = {}  # leaf pa -> bitmap int

        def node(level: int, key: int) -> int:
            # keys sharing every bit above this node's index bits share the node
            prefix = key >> (level * 9 + KHO_BITMAP_SIZE_LOG2)
            pa = nodes.get((level, prefix))
            if pa is None:
                pa = k.mm.alloc_pages(0)
                nodes[(level, prefix)] = pa
                if level:
                    tables[pa] = {}
                else:
                    leaves[pa] = 0
            return pa

        root = node(KHO_TREE_MAX_DEPTH - 1, 0)
        for pfn, order in sorted(self.preserved):
            key = encode_key(pfn << PAGE_SHIFT, order)
            cur = root
            for level in range(KHO_TREE_MAX_DEPTH - 1, 0, -1):
                idx = table_index(key, level)
                child = tables[cur].get(idx)
                if child is None:
                    child = node(level - 1, key)
                    tables[cur][idx] = child
                cur = child
            leaves[cur] |= 1 << bitmap_index(key)
        for pa, table in tables.items():
            words = [0] * 512
            for idx, child in table.items():
                words[idx] = child
            self.mem.write(pa, struct.pack("<512Q", *words))
        for pa, bits in leaves.items():
            self.mem.write(pa, bits.to_bytes(PAGE_SIZE, "little"))
        return root

    def handover(self) -> bytes | None:
        """Write the KHO state for the next kernel; return ``kho_data``.

        Models what exists in memory at ``machine_kexec()``: the radix tree,
        the root FDT (a preserved page) and the scratch array.
        """
        k = self.kernel
        if not self.enabled:
            return None
        self.finalized = True
        fdt_pa = k.mm.alloc_pages(0)
        self.preserved.add((fdt_pa >> PAGE_SHIFT, 0))
        self.owner[(fdt_pa >> PAGE_SHIFT, 0)] = "kho"
        scratch_pa = k.mm.alloc_pages(0)
        scratch_blob = b"".join(s.encode() for s in self.scratch)
        self.mem.write(scratch_pa, scratch_blob)
        root = self._write_radix_tree()
        effect = k.machine.faults.hit(FP_HANDOVER, "kho hand-over")
        compatible = "kho-v2"
        if effect == "corrupt:root-compatible":
            compatible = "kho-v1"
        blob = encode_root_fdt(0 if effect == "corrupt:mem-map" else root,
                               list(self.subtrees.items()), compatible=compatible)
        self.mem.write(fdt_pa, blob)
        if effect == "corrupt:radix-node":
            corrupt_radix_root(self.mem, root)
        k.printk("info", "kho", f"hand-over: {len(self.preserved)} preserved blocks, "
                 f"subtrees {list(self.subtrees)}")
        return KhoData(fdt_pa, len(blob), scratch_pa, len(scratch_blob)).encode()
