"""Kexec HandOver ABI (``kho-v2``): root FDT, radix memory map, boot data.

Models include/linux/kho/abi/kexec_handover.h (torvalds/linux 3f2ad900:
"kho-v2", radix tree, ``preserved-memory-map``, subnode ``preserved-data``)
and the x86 ``kho_data`` setup_data.  The memory map is the radix tree of page-sized nodes keyed by
``(1 << (52 - order)) | (pa >> (12 + order))``; leaves are 32768-bit
bitmaps, intermediate nodes 512 physical addresses (6 levels in all).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import libfdt

from luosim.abi.cdecl import CStruct, codec, declare
from luosim.abi.errors import DecodeError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
KHO_FDT_COMPATIBLE = "kho-v2"
KHO_FDT_MEMORY_MAP_PROP_NAME = "preserved-memory-map"
KHO_FDT_SUB_TREE_PROP_NAME = "preserved-data"
MAX_PAGE_ORDER = 10  # x86-64 default: kho_restore_page() rejects larger orders

KHO_ORDER_0_LOG2 = 64 - PAGE_SHIFT  # 52
KHO_TABLE_SIZE_LOG2 = 9  # 512 u64 per node
KHO_BITMAP_SIZE_LOG2 = PAGE_SHIFT + 3  # 32768 bits per leaf
KHO_TREE_MAX_DEPTH = -(-(KHO_ORDER_0_LOG2 - KHO_BITMAP_SIZE_LOG2) // KHO_TABLE_SIZE_LOG2) + 1


def encode_key(pa: int, order: int) -> int:
    """``kho_radix_encode_key()``."""
    return (1 << (KHO_ORDER_0_LOG2 - order)) | (pa >> (PAGE_SHIFT + order))


def decode_key(key: int) -> tuple[int, int]:
    """``kho_radix_decode_key()`` -> (pa, order)."""
    order = KHO_ORDER_0_LOG2 - key.bit_length() + 1
    pa = (key << (PAGE_SHIFT + order)) & ((1 << 64) - 1)
    return pa, order


def table_index(key: int, level: int) -> int:
    """``kho_radix_get_table_index()`` for intermediate ``level`` >= 1."""
    shift = (level - 1) * KHO_TABLE_SIZE_LOG2 + KHO_BITMAP_SIZE_LOG2
    return (key >> shift) % (1 << KHO_TABLE_SIZE_LOG2)


def bitmap_index(key: int) -> int:
    return key % (1 << KHO_BITMAP_SIZE_LOG2)


def walk_radix_tree(read_page: Callable[[int], bytes], root_pa: int, mem_size: int,
                    on_node: Callable[[int], None] | None = None,
                    max_nodes: int = 1 << 20) -> Iterator[tuple[int, int]]:
    """Yield (pa, order) of every preserved block, like ``kho_radix_walk_tree()``.

    ``read_page(pa)`` returns 4096 bytes.  Node pointers outside RAM or not
    page-aligned raise :class:`DecodeError` (the kernel would fault).
    ``on_node`` sees the address of every tree node (they must survive
    until the new kernel has walked them).
    """
    seen = 0

    def check_ptr(pa: int, where: str) -> None:
        if pa % PAGE_SIZE or pa + PAGE_SIZE > mem_size:
            raise DecodeError("kho radix tree", 0, where,
                              f"node pointer {pa:#x} is not a page in RAM", kind="bad-pointer")

    def walk(node_pa: int, level: int, start: int) -> Iterator[tuple[int, int]]:
        nonlocal seen
        seen += 1
        if seen > max_nodes:
            raise DecodeError("kho radix tree", 0, "table", f"more than {max_nodes} nodes",
                              kind="cycle")
        if on_node is not None:
            on_node(node_pa)
        page = read_page(node_pa)
        if level == 0:
            bits = int.from_bytes(page, "little")
            while bits:
                low = bits & -bits
                i = low.bit_length() - 1
                bits ^= low
                pa, order = decode_key(start | i)
                if order < 0 or order > KHO_ORDER_0_LOG2:
                    raise DecodeError("kho radix tree", node_pa, "bitmap",
                                      f"key {start | i:#x} decodes to no order", kind="bad-value")
                yield pa, order
            return
        shift = (level - 1) * KHO_TABLE_SIZE_LOG2 + KHO_BITMAP_SIZE_LOG2
        for i, child in enumerate(struct.unpack("<512Q", page)):
            if child:
                check_ptr(child, f"level{level}.table[{i}]")
                yield from walk(child, level - 1, start | (i << shift))

    check_ptr(root_pa, KHO_FDT_MEMORY_MAP_PROP_NAME)
    yield from walk(root_pa, KHO_TREE_MAX_DEPTH - 1, 0)


# -- boot protocol ----------------------------------------------------------

declare("""
struct kho_data {
    __u64 fdt_addr;
    __u64 fdt_size;
    __u64 scratch_addr;
    __u64 scratch_size;
};
struct kho_scratch {
    phys_addr_t addr;
    phys_addr_t size;
};
""")


@codec("kho_data", "torvalds/linux arch/x86/include/uapi/asm/setup_data.h (commit not checked)")
@dataclass(frozen=True)
class KhoData(CStruct):
    """x86 ``struct kho_data`` (setup_data type SETUP_KEXEC_KHO), 32 bytes."""

    fdt_addr: int
    fdt_size: int
    scratch_addr: int
    scratch_size: int


@codec("kho_scratch", "torvalds/linux include/linux/kexec_handover.h (commit not checked)",
       what="kho_scratch[]")
@dataclass(frozen=True)
class KhoScratch(CStruct):
    """``struct kho_scratch``: {phys_addr_t addr; phys_addr_t size;}, 16 bytes."""

    addr: int
    size: int

    @classmethod
    def decode_array(cls, buf: bytes, count: int | None = None,
                     what: str | None = None) -> list[KhoScratch]:
        """The whole array (``count`` defaults to all of ``buf``, which must be whole records)."""
        if count is None:
            if len(buf) % cls.SIZE:
                raise DecodeError("kho_scratch[]", len(buf) - len(buf) % cls.SIZE, "addr",
                                  f"array length {len(buf)} is not a multiple of 16",
                                  kind="truncated")
            count = len(buf) // cls.SIZE
        return super().decode_array(buf, count, what)


# -- root FDT -----------------------------------------------------------------

def encode_root_fdt(mem_map_pa: int, subtrees: list[tuple[str, int]],
                    compatible: str = KHO_FDT_COMPATIBLE) -> bytes:
    """The root FDT as ``kho_out_fdt_setup()`` + ``kho_add_subtree()`` leave it."""
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    with sw.add_node(""):
        sw.property_string("compatible", compatible)
        sw.property(KHO_FDT_MEMORY_MAP_PROP_NAME, mem_map_pa.to_bytes(8, "little"))
        for name, pa in subtrees:
            with sw.add_node(name):
                sw.property(KHO_FDT_SUB_TREE_PROP_NAME, pa.to_bytes(8, "little"))
    fdt = sw.as_fdt()
    fdt.pack()
    out = bytes(fdt.as_bytearray())
    if len(out) > PAGE_SIZE:
        raise ValueError(f"KHO root FDT of {len(out)} bytes exceeds one page")
    return out


@dataclass(frozen=True)
class KhoRootFdt:
    compatible: str
    mem_map_pa: int
    subtrees: dict[str, int]


def decode_root_fdt(blob: bytes, *, expect_compatible: str = KHO_FDT_COMPATIBLE) -> KhoRootFdt:
    """Parse the root FDT as ``kho_populate()`` and ``kho_retrieve_subtree()`` do.

    A header or compatible mismatch raises ``DecodeError`` (the kernel then
    boots as if there were no hand-over).
    """
    what = "kho root fdt"
    try:
        fdt = libfdt.Fdt(blob)
    except Exception as exc:  # libfdt.FdtException, or TypeError on odd input
        raise DecodeError(what, 0, "header", f"fdt_check_header: {exc}", kind="bad-fdt") from None
    try:
        compat = fdt.getprop(0, "compatible", quiet=(libfdt.NOTFOUND,))
        if compat is -libfdt.NOTFOUND or isinstance(compat, int):
            raise DecodeError(what, 0, "/compatible", "property missing", kind="bad-compatible")
        compatible = bytes(compat).split(b"\0", 1)[0].decode("ascii", "replace")
        if compatible != expect_compatible:
            raise DecodeError(what, 0, "/compatible",
                              f"{compatible!r} is not {expect_compatible!r}",
                              kind="bad-compatible")
        mem = fdt.getprop(0, KHO_FDT_MEMORY_MAP_PROP_NAME, quiet=(libfdt.NOTFOUND,))
        if isinstance(mem, int) or len(mem) != 8:
            raise DecodeError(what, 0, f"/{KHO_FDT_MEMORY_MAP_PROP_NAME}",
                              "missing or not 8 bytes", kind="bad-value")
        mem_map_pa = int.from_bytes(bytes(mem), "little")
        subtrees: dict[str, int] = {}
        node = fdt.first_subnode(0, quiet=(libfdt.NOTFOUND,))
        while node >= 0:
            name = fdt.get_name(node)
            val = fdt.getprop(node, KHO_FDT_SUB_TREE_PROP_NAME, quiet=(libfdt.NOTFOUND,))
            if not isinstance(val, int) and len(val) == 8:
                subtrees[name] = int.from_bytes(bytes(val), "little")
            else:
                # kho_retrieve_subtree() answers -EINVAL for such a node
                subtrees[name] = -1
            node = fdt.next_subnode(node, quiet=(libfdt.NOTFOUND,))
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(what, 0, "structure", f"libfdt: {exc}", kind="bad-fdt") from None
    return KhoRootFdt(compatible, mem_map_pa, subtrees)
