"""The ``memblock`` KHO subtree: ``reserve_mem`` regions kept at the same address.

Models include/linux/kho/abi/memblock.h (torvalds/linux c17ee635): a KHO
entry named ``"memblock"`` (MEMBLOCK_KHO_FDT) holding an FDT whose root has
``compatible = "memblock-v1"`` (MEMBLOCK_KHO_NODE_COMPATIBLE) and one child
per ``reserve_mem`` region, named by the user, with ``compatible =
"reserve-mem-v1"`` (RESERVE_MEM_KHO_NODE_COMPATIBLE) and u64 ``start`` and
``size`` (CPU-native, little-endian on x86).  There is no C struct: the
layout is the FDT's, built and parsed through pylibfdt (``abi.fdt``).
"""

from __future__ import annotations

from dataclasses import dataclass

from luosim.abi.errors import DecodeError
from luosim.abi.fdt import FdtNode, build, parse

MEMBLOCK_KHO_FDT = "memblock"
MEMBLOCK_KHO_NODE_COMPATIBLE = "memblock-v1"
RESERVE_MEM_KHO_NODE_COMPATIBLE = "reserve-mem-v1"


@dataclass(frozen=True)
class ReserveMem:
    """One ``reserve_mem=SIZE:ALIGN:NAME`` region."""

    name: str
    start: int
    size: int


def encode_memblock_fdt(regions: list[ReserveMem]) -> bytes:
    """The memblock FDT: root compatible, then one node per region in order."""
    children = [FdtNode(r.name, [("compatible", RESERVE_MEM_KHO_NODE_COMPATIBLE),
                                 ("start", r.start.to_bytes(8, "little")),
                                 ("size", r.size.to_bytes(8, "little"))])
                for r in regions]
    return build(FdtNode("", [("compatible", MEMBLOCK_KHO_NODE_COMPATIBLE)], children))


def decode_memblock_fdt(blob: bytes) -> dict[str, ReserveMem]:
    """Regions by name, as ``reserve_mem_kho_revive()`` would find them.

    The root must be ``memblock-v1`` (else ``bad-compatible``: the kernel
    allocates every region afresh).  A child that is not ``reserve-mem-v1``
    or lacks an 8-byte ``start``/``size`` is skipped, as the reviver does.
    """
    view = parse("memblock fdt", blob)
    if not view.is_compatible("/", MEMBLOCK_KHO_NODE_COMPATIBLE):
        raise DecodeError("memblock fdt", 0, "/compatible",
                          f"not {MEMBLOCK_KHO_NODE_COMPATIBLE!r}", kind="bad-compatible")
    out: dict[str, ReserveMem] = {}
    for name in view.subnodes("/"):
        path = f"/{name}"
        if not view.is_compatible(path, RESERVE_MEM_KHO_NODE_COMPATIBLE):
            continue
        try:
            start = view.prop_u64(path, "start")
            size = view.prop_u64(path, "size")
        except DecodeError:
            continue
        out[name] = ReserveMem(name, start, size)
    return out
