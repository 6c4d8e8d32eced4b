"""Kexec HandOver ABI (``kho-v2``/``v3``/``v4``): root FDT, radix memory map, boot data.

Models include/linux/kho/abi/kexec_handover.h and the x86 ``kho_data``
setup_data.  Root FDT versions (all share the radix memory map):

* ``kho-v2`` (torvalds/linux 3f2ad900): subnodes carry ``preserved-data``.
* ``kho-v3`` (gregkh/linux 9d87d0fc, openSUSE/kernel 42897b76): every subnode
  also carries a required u64 ``blob-size`` (KHO_SUB_TREE_SIZE_PROP_NAME);
  ``kho_retrieve_subtree()`` answers -EINVAL when it is missing or not 8 bytes.
* ``kho-v4`` (LUO linked-block series v7 07/13, with include/linux/kho/abi/block.h):
  the same layout under a new compatible.

``kho-v1`` (torvalds/linux c17ee635: bitmap chunks, subnode property ``fdt``)
has no codec here; a reader treats it as any unknown root.  The memory map
is the radix tree of page-sized nodes keyed by
``(1 << (52 - order)) | (pa >> (12 + order))``; leaves are 32768-bit
bitmaps, intermediate nodes 512 physical addresses (6 levels in all).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import libfdt

from luosim.abi.cdecl import CStruct, codec, declare
from luosim.abi.errors import DecodeError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
KHO_FDT_COMPATIBLE = "kho-v2"
KHO_FDT_MEMORY_MAP_PROP_NAME = "preserved-memory-map"
KHO_FDT_SUB_TREE_PROP_NAME = "preserved-data"
KHO_SUB_TREE_SIZE_PROP_NAME = "blob-size"  # kho-v3+ (gregkh/linux 9d87d0fc)
#: root compatibles with a codec here; those whose subnodes carry ``blob-size``
KHO_ROOT_VERSIONS = ("kho-v2", "kho-v3", "kho-v4")
KHO_BLOB_SIZE_VERSIONS = ("kho-v3", "kho-v4")
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


def check_node_ptr(pa: int, mem_size: int, where: str) -> None:
    """A radix-tree node pointer must be a page in RAM (the kernel would fault)."""
    if pa % PAGE_SIZE or pa + PAGE_SIZE > mem_size:
        raise DecodeError("kho radix tree", 0, where,
                          f"node pointer {pa:#x} is not a page in RAM", kind="bad-pointer")


def leaf_blocks(page: bytes, start: int, node_pa: int) -> Iterator[tuple[int, int]]:
    """(pa, order) of every set bit of the leaf bitmap ``page`` covering keys from
    ``start``, lowest first; a key that decodes to no order raises DecodeError."""
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
            yield from leaf_blocks(page, start, node_pa)
            return
        shift = (level - 1) * KHO_TABLE_SIZE_LOG2 + KHO_BITMAP_SIZE_LOG2
        for i, child in enumerate(struct.unpack("<512Q", page)):
            if child:
                check_node_ptr(child, mem_size, f"level{level}.table[{i}]")
                yield from walk(child, level - 1, start | (i << shift))

    check_node_ptr(root_pa, mem_size, KHO_FDT_MEMORY_MAP_PROP_NAME)
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

Subtree = tuple[str, int] | tuple[str, int, int]


def encode_root_fdt(mem_map_pa: int, subtrees: list[Subtree],
                    compatible: str = KHO_FDT_COMPATIBLE) -> bytes:
    """The root FDT as ``kho_out_fdt_setup()`` + ``kho_add_subtree()`` leave it.

    ``subtrees`` are ``(name, phys)`` or ``(name, phys, size)`` in the order
    they were added; a kho-v3/v4 root gives every subnode ``blob-size`` (the
    size, 0 when none is given).  The calls are the kernel's (gregkh/linux
    9d87d0fc kernel/liveupdate/kexec_handover.c): the root properties through
    the sequential writer, then per subtree ``fdt_open_into(PAGE_SIZE)``,
    ``fdt_add_subnode(root, 0, name)``, ``fdt_setprop(preserved-data)``,
    ``fdt_setprop(blob-size)``, ``fdt_pack()``.  libfdt inserts a new node
    right after the parent's properties and a new property first in its node,
    so the blob lists subtrees newest first and ``blob-size`` before
    ``preserved-data``.
    """
    with_size = compatible in KHO_BLOB_SIZE_VERSIONS
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    with sw.add_node(""):
        sw.property_string("compatible", compatible)
        sw.property(KHO_FDT_MEMORY_MAP_PROP_NAME, mem_map_pa.to_bytes(8, "little"))
    fdt = sw.as_fdt()
    fdt.pack()
    try:
        for sub in subtrees:
            name, pa = sub[0], sub[1]
            fdt.resize(PAGE_SIZE)  # fdt_open_into(root_fdt, root_fdt, PAGE_SIZE)
            off = fdt.add_subnode(0, name)
            fdt.setprop(off, KHO_FDT_SUB_TREE_PROP_NAME, pa.to_bytes(8, "little"))
            if with_size:
                size = sub[2] if len(sub) == 3 else 0
                fdt.setprop(off, KHO_SUB_TREE_SIZE_PROP_NAME, size.to_bytes(8, "little"))
            fdt.pack()
    except libfdt.FdtException as exc:
        raise ValueError(f"KHO root FDT does not fit in one page: {exc}") from None
    return bytes(fdt.as_bytearray())


@dataclass(frozen=True)
class KhoRootFdt:
    compatible: str
    mem_map_pa: int
    subtrees: dict[str, int]  # name -> phys; -1: no 8-byte preserved-data
    # name -> blob-size; -1: missing or not 8 bytes (kho-v3+); absent for kho-v2
    sizes: dict[str, int] = field(default_factory=dict)


def decode_root_fdt(blob: bytes, *, expect_compatible: str | None = None) -> KhoRootFdt:
    """Parse the root FDT as ``kho_populate()`` and ``kho_retrieve_subtree()`` do.

    ``expect_compatible`` is the one version the reading kernel knows
    (``fdt_node_check_compatible()``); None accepts any version with a codec
    here (tools: the machine, ``luosim inspect``).  A header or compatible
    mismatch raises ``DecodeError`` (the kernel then boots as if there were
    no hand-over).
    """
    what = "kho root fdt"
    try:
        fdt = libfdt.Fdt(blob)
    except Exception as exc:  # libfdt.FdtException, or TypeError on odd input
        raise DecodeError(what, 0, "header", f"fdt_check_header: {exc}", kind="bad-fdt") from None
    known = (expect_compatible,) if expect_compatible is not None else KHO_ROOT_VERSIONS
    try:
        compat = fdt.getprop(0, "compatible", quiet=(libfdt.NOTFOUND,))
        if compat is -libfdt.NOTFOUND or isinstance(compat, int):
            raise DecodeError(what, 0, "/compatible", "property missing", kind="bad-compatible")
        entries = bytes(compat).split(b"\0")[:bytes(compat).count(b"\0")]
        names = [e.decode("ascii", "replace") for e in entries]
        matched = [c for c in known if c in names]
        if not matched:
            shown = names[0] if names else ""
            raise DecodeError(what, 0, "/compatible",
                              f"{shown!r} is not {' or '.join(repr(k) for k in known)}",
                              kind="bad-compatible")
        compatible = matched[0]
        mem = fdt.getprop(0, KHO_FDT_MEMORY_MAP_PROP_NAME, quiet=(libfdt.NOTFOUND,))
        if isinstance(mem, int) or len(mem) != 8:
            raise DecodeError(what, 0, f"/{KHO_FDT_MEMORY_MAP_PROP_NAME}",
                              "missing or not 8 bytes", kind="bad-value")
        mem_map_pa = int.from_bytes(bytes(mem), "little")
        subtrees: dict[str, int] = {}
        sizes: dict[str, int] = {}
        node = fdt.first_subnode(0, quiet=(libfdt.NOTFOUND,))
        while node >= 0:
            name = fdt.get_name(node)
            val = fdt.getprop(node, KHO_FDT_SUB_TREE_PROP_NAME, quiet=(libfdt.NOTFOUND,))
            if not isinstance(val, int) and len(val) == 8:
                subtrees[name] = int.from_bytes(bytes(val), "little")
            else:
                # kho_retrieve_subtree() answers -EINVAL for such a node
                subtrees[name] = -1
            if compatible in KHO_BLOB_SIZE_VERSIONS:
                size = fdt.getprop(node, KHO_SUB_TREE_SIZE_PROP_NAME, quiet=(libfdt.NOTFOUND,))
                ok = not isinstance(size, int) and len(size) == 8
                sizes[name] = int.from_bytes(bytes(size), "little") if ok else -1
            node = fdt.next_subnode(node, quiet=(libfdt.NOTFOUND,))
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(what, 0, "structure", f"libfdt: {exc}", kind="bad-fdt") from None
    return KhoRootFdt(compatible, mem_map_pa, subtrees, sizes)
