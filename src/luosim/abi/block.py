"""KHO block-set ABI: ``struct kho_block_header_ser`` and the chain walk.

Models include/linux/kho/abi/block.h (torvalds/linux 637315cb) and the chain
walk of kernel/liveupdate/kho_block.c (spec luo.md §5.2, pci.md §3.2): a
block is one preserved page (``KHO_BLOCK_SIZE`` = ``PAGE_SIZE`` = 4096) that
starts with a 16-byte header ``{u64 next; u64 count}`` followed by ``count``
fixed-size entries; ``next`` is the physical address of the next block
header, 0 at the end of the chain.  The merged header defines no compatible
string ("kho-block-v1" existed only in review rounds; spec kho.md
"Corrections"): its layout is covered by the KHO root compatible
(``KHO_FDT_COMPATIBLE``, per the header's own DOC comment) and by each user's
compatible.

Incoming rules (spec luo.md §5.2): a block with ``count == 0`` or ``count``
above the per-block capacity is invalid; a cyclic chain or a chain longer than
``KHO_BLOCK_MAX`` blocks is invalid.  All of them are ``-EINVAL`` in the
kernel; here they raise :class:`DecodeError`.

:func:`check_uint`, :func:`check_int` and :func:`unpack_fields` are
re-exported for callers of the former hand-written codecs.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from luosim.abi.cdecl import CStruct, check_int, check_uint, codec, declare
from luosim.abi.errors import DecodeError, need

__all__ = ["KHO_BLOCK_MAX", "KHO_BLOCK_SIZE", "FieldSpec", "KhoBlockHeaderSer",
           "block_capacity", "check_int", "check_uint", "decode_block", "encode_block",
           "encode_chain", "pack_page", "unpack_fields", "walk_chain", "walk_pages"]

BLOCK_H = "torvalds/linux@637315cb include/linux/kho/abi/block.h"

KHO_BLOCK_SIZE = 4096
#: Longest chain a reader accepts (spec luo.md §5.2: 10000 blocks; the value is the
#: reader's, block.h @637315cb defines only KHO_BLOCK_SIZE and the header).
KHO_BLOCK_MAX = 10000

FieldSpec = tuple[str, int, int]
"""``(field name, offset inside the struct, size)``."""


def unpack_fields(what: str, st: struct.Struct, buf: bytes, offset: int,
                  fields: Sequence[FieldSpec], struct_name: str) -> tuple[Any, ...]:
    """``st.unpack_from(buf, offset)``, raising ``truncated`` naming the first missing field."""
    if offset < 0 or offset + st.size > len(buf):
        for name, foff, fsize in fields:
            need(what, buf, offset + foff, fsize, f"{struct_name}.{name}")
        need(what, buf, offset, st.size, struct_name)
    return st.unpack_from(buf, offset)


declare("""
struct kho_block_header_ser {
    u64 next;
    u64 count;
} __packed;
""")


@codec("kho_block_header_ser", BLOCK_H, what="kho block")
@dataclass(frozen=True)
class KhoBlockHeaderSer(CStruct):
    """``struct kho_block_header_ser``: next block header phys (0 = end), entries in this block."""

    next: int
    count: int


def block_capacity(entry_size: int) -> int:
    """Entries per block: ``(KHO_BLOCK_SIZE - 16) // entry_size`` (51 sessions, 63 files)."""
    if entry_size <= 0:
        raise ValueError(f"entry_size {entry_size} must be positive")
    return (KHO_BLOCK_SIZE - KhoBlockHeaderSer.SIZE) // entry_size


def encode_block(entries_bytes: Sequence[bytes], entry_size: int, next_pa: int) -> bytes:
    """One 4096-byte block: header ``{next_pa, len(entries)}``, the entries, zero fill.

    An empty block is encodable (an outgoing set can hold one transiently);
    readers reject it.  ``ValueError`` if an entry has the wrong size or the
    block would overflow.
    """
    return pack_page(KhoBlockHeaderSer(next_pa, len(entries_bytes)).encode(), entries_bytes,
                     entry_size, "block")


def pack_page(header: bytes, entries: Sequence[bytes], entry_size: int, unit: str) -> bytes:
    """A 4096-byte page: ``header``, fixed-size ``entries``, zero fill (``ValueError`` if an
    entry has the wrong size or they do not fit)."""
    cap = (KHO_BLOCK_SIZE - len(header)) // entry_size
    if len(entries) > cap:
        raise ValueError(f"{len(entries)} entries exceed the {unit} capacity {cap}")
    for i, e in enumerate(entries):
        if len(e) != entry_size:
            raise ValueError(f"entry {i} is {len(e)} bytes, expected {entry_size}")
    return (header + b"".join(entries)).ljust(KHO_BLOCK_SIZE, b"\0")


def decode_block(buf: bytes, entry_size: int, what: str,
                 base: int = 0) -> tuple[int, list[bytes]]:
    """Decode one block: ``(next, [entry bytes, ...])``.

    ``base`` is only used in error offsets (e.g. the block's physical address).
    Raises ``DecodeError``: ``truncated`` if ``buf`` is shorter than the header
    plus ``count`` entries, ``bad-value`` for count 0 or count > capacity.
    """
    cap = block_capacity(entry_size)
    try:
        hdr = KhoBlockHeaderSer.decode(buf, 0, what)
    except DecodeError as exc:
        raise DecodeError(what, base + exc.offset, exc.field, exc.reason, exc.kind) from None
    if hdr.count == 0:
        raise DecodeError(what, base + 8, "kho_block_header_ser.count", "empty block (count 0)")
    if hdr.count > cap:
        raise DecodeError(what, base + 8, "kho_block_header_ser.count",
                          f"count {hdr.count} exceeds block capacity {cap}")
    start = KhoBlockHeaderSer.SIZE
    if start + hdr.count * entry_size > len(buf):
        raise DecodeError(what, base + start, "entries",
                          f"{hdr.count} entries of {entry_size} bytes do not fit in "
                          f"{len(buf)} bytes", kind="truncated")
    entries = [bytes(buf[start + i * entry_size:start + (i + 1) * entry_size])
               for i in range(hdr.count)]
    return hdr.next, entries


def walk_chain(read_page: Callable[[int], bytes], head_pa: int, entry_size: int, what: str,
               max_blocks: int = KHO_BLOCK_MAX) -> list[bytes]:
    """Follow a block chain from ``head_pa`` and return every entry in chain order.

    ``head_pa == 0`` is an empty set.  ``read_page(pa)`` returns the 4096
    bytes at physical address ``pa``; any exception it raises (missing or
    unreadable memory) becomes ``DecodeError(kind="bad-pointer")``.  A block
    address that is not page aligned is ``bad-pointer``; revisiting a block is
    ``cycle``; more than ``max_blocks`` blocks is ``bad-value``.
    """
    return walk_pages(read_page, head_pa, what, "kho_block_header_ser.next",
                      lambda page, pa: decode_block(page, entry_size, what, base=pa),
                      max_blocks, "block")


def walk_pages(read_page: Callable[[int], bytes], head_pa: int, what: str, next_field: str,
               decode_page: Callable[[bytes, int], tuple[int, list[bytes]]],
               max_pages: int, unit: str) -> list[bytes]:
    """Follow a chain of one-page records ``{next, ...}`` and collect their entries.

    Shared by KHO block sets and IOMMU object arrays: ``decode_page(page,
    pa)`` returns ``(next, entries)``.  Unaligned pointer or unreadable page:
    ``bad-pointer``; a page visited twice: ``cycle``; more than
    ``max_pages``: ``bad-value``.
    """
    entries: list[bytes] = []
    seen: set[int] = set()
    pa = head_pa
    while pa:
        if pa % KHO_BLOCK_SIZE:
            raise DecodeError(what, pa, next_field, f"{unit} address {pa:#x} is not page aligned",
                              kind="bad-pointer")
        if pa in seen:
            raise DecodeError(what, pa, next_field, f"cycle: {unit} {pa:#x} visited twice",
                              kind="cycle")
        if len(seen) >= max_pages:
            raise DecodeError(what, pa, next_field, f"chain longer than {max_pages} {unit}s")
        seen.add(pa)
        try:
            page = read_page(pa)
        except Exception as exc:  # memory model errors → typed decode error
            raise DecodeError(what, pa, next_field, f"cannot read {unit} at {pa:#x}: {exc!r}",
                              kind="bad-pointer") from exc
        nxt, page_entries = decode_page(page, pa)
        entries.extend(page_entries)
        pa = nxt
    return entries


def encode_chain(entries_bytes: Sequence[bytes], entry_size: int,
                 block_pas: Sequence[int]) -> list[bytes]:
    """Lay ``entries_bytes`` out over blocks at ``block_pas`` (one page each, linked in order).

    Returns the page images; block ``i`` holds entries
    ``[i*cap, (i+1)*cap)``.  ``ValueError`` unless exactly
    ``ceil(len / cap)`` addresses are given.
    """
    cap = block_capacity(entry_size)
    nblocks = -(-len(entries_bytes) // cap)
    if len(block_pas) != nblocks:
        raise ValueError(f"{len(entries_bytes)} entries need {nblocks} blocks, "
                         f"got {len(block_pas)} addresses")
    pages = []
    for i, _pa in enumerate(block_pas):
        nxt = block_pas[i + 1] if i + 1 < len(block_pas) else 0
        pages.append(encode_block(entries_bytes[i * cap:(i + 1) * cap], entry_size, nxt))
    return pages
