"""Dump a hand-over from physical memory as files, laid out like debugfs
``/sys/kernel/debug/kho/out`` (``fdt``, ``sub_fdts/<name>``) plus the boot
parameter and the LUO FLB data, so ``luosim inspect`` can decode them.

Reads memory only (what the next kernel would read); anything unreadable is
skipped and reported, never fatal.
"""

from __future__ import annotations

import struct
from pathlib import Path

from luosim.abi.errors import DecodeError
from luosim.abi.kho import KhoData, decode_root_fdt
from luosim.abi.luo import LUO_FLB_BLOCK_SIZE, decode_flb_block, decode_luo_fdt, decode_luo_v5
from luosim.hw.memory import PAGE_SIZE, MemoryAccessError, PhysicalMemory


def _fdt_size(mem: PhysicalMemory, pa: int) -> int:
    magic, total = struct.unpack(">II", mem.read(pa, 8))
    if magic != 0xD00DFEED or not 0 < total <= PAGE_SIZE:
        raise DecodeError("fdt", pa, "fdt_header", "not an FDT", kind="bad-magic")
    return int(total)


def dump_handover(mem: PhysicalMemory, kho_data: bytes, out: Path) -> list[str]:
    """Write the hand-over under ``out``; return one line per file or problem."""
    lines: list[str] = []

    def write(rel: str, data: bytes) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        lines.append(f"{rel} ({len(data)} bytes)")

    write("kho_data", kho_data)
    try:
        kd = KhoData.decode(kho_data)
        fdt = mem.read(kd.fdt_addr, kd.fdt_size)
        write("kho/out/fdt", fdt)
        root = decode_root_fdt(fdt)
        write("kho/out/scratch", mem.read(kd.scratch_addr, kd.scratch_size))
        for name, pa in root.subtrees.items():
            if pa < 0:
                lines.append(f"kho/out/sub_fdts/{name}: no 8-byte preserved-data")
                continue
            if name != "LUO":
                size = root.sizes.get(name, -1)  # kho-v3+ blob-size, as debugfs shows it
                write(f"kho/out/sub_fdts/{name}", mem.read(pa, size if size > 0 else PAGE_SIZE))
                continue
            head = mem.read(pa, 8)
            if head[:4] == b"\xd0\x0d\xfe\xed":
                blob = mem.read(pa, _fdt_size(mem, pa))
                try:
                    flb_pa = decode_luo_fdt(blob, require_flb=True).flb_header_pa
                except DecodeError:  # a P0 hand-over has no luo-flb node
                    flb_pa = decode_luo_fdt(blob, require_flb=False).flb_header_pa
            else:
                blob = mem.read(pa, 32)
                flb_pa = decode_luo_v5(blob).flbs_pa or None
            write("kho/out/sub_fdts/LUO", blob)
            if flb_pa:
                block = mem.read(flb_pa, LUO_FLB_BLOCK_SIZE)
                write("luo/flb-block", block)
                for rec in decode_flb_block(block):
                    write(f"luo/flb/{rec.name}", mem.read(rec.data, PAGE_SIZE))
    except (DecodeError, MemoryAccessError) as exc:
        lines.append(f"stopped: {exc}")
    return lines
