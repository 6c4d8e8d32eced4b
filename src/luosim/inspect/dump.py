"""Dump a hand-over from physical memory as files, laid out like debugfs
``/sys/kernel/debug/kho/out`` (``fdt``, ``sub_fdts/<name>``) plus the boot
parameter and the LUO FLB data, so ``luosim inspect`` can decode them.

Reads memory only (what the next kernel would read); anything unreadable is
skipped and reported, never fatal.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from luosim.abi.block import KHO_BLOCK_SIZE, walk_chain
from luosim.abi.errors import DecodeError
from luosim.abi.iommu import IOMMU_ABIS
from luosim.abi.kho import KhoData, decode_root_fdt, walk_radix_tree
from luosim.abi.luo import (
    LUO_FILE_ARRAY_SIZE,
    LUO_FLB_BLOCK_SIZE,
    LUO_SESSION_BLOCK_SIZE,
    LuoFileSer,
    LuoSessionSer,
    decode_file_array_v1,
    decode_flb_block,
    decode_luo_fdt,
    decode_luo_v5,
    decode_session_block_v1,
)
from luosim.abi.pci import PciSerV7, PciSerV9
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
        try:  # the radix tree nodes of the preserved-memory map, one file per node page
            nodes: list[int] = []
            for _ in walk_radix_tree(lambda pa: mem.read(pa, PAGE_SIZE), root.mem_map_pa,
                                     mem.size, on_node=nodes.append):
                pass
            for pa in nodes:
                write(f"kho/out/mem_map/{pa:#x}", mem.read(pa, PAGE_SIZE))
        except (DecodeError, MemoryAccessError) as exc:
            lines.append(f"kho/out/mem_map: {exc}")
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
                    data = mem.read(rec.data, PAGE_SIZE)
                    write(f"luo/flb/{rec.name}", data)
                    _flb_pages(mem, rec.name, data, write)
            _sessions(mem, blob, write)
    except (DecodeError, MemoryAccessError) as exc:
        lines.append(f"stopped: {exc}")
    return lines


def _safe(name: str) -> str:
    """A session name or compatible as one path component."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name) or "_"


def _sessions(mem: PhysicalMemory, luo_blob: bytes,
              write: Callable[[str, bytes], None]) -> None:
    """Session block, each session's file array and each file's first data page
    (what luo_session_deserialize() and the file handlers' retrieve read)."""
    if luo_blob[:4] == b"\xd0\x0d\xfe\xed":
        sess_pa = decode_luo_fdt(luo_blob, require_flb=False).session_header_pa
        chained = False
    else:
        sess_pa, chained = decode_luo_v5(luo_blob).sessions_pa, True
    if not sess_pa:
        return

    def read(pa: int) -> bytes:
        return mem.read(pa, KHO_BLOCK_SIZE)

    if chained:  # luo-v5: a KHO block chain of luo_session_ser
        write("luo/sessions", read(sess_pa))
        records = [LuoSessionSer.decode(r, 0) for r in
                   walk_chain(read, sess_pa, LuoSessionSer.SIZE, "luo session blocks")]
    else:
        block = mem.read(sess_pa, LUO_SESSION_BLOCK_SIZE)
        write("luo/sessions", block)
        records = decode_session_block_v1(block)
    for sess in records:
        if not sess.files:
            continue
        base = f"luo/session/{_safe(sess.name)}"
        if chained:
            write(f"{base}/files", read(sess.files))
            files = [LuoFileSer.decode(r, 0) for r in
                     walk_chain(read, sess.files, LuoFileSer.SIZE, "luo file blocks")]
        else:
            array = mem.read(sess.files, LUO_FILE_ARRAY_SIZE)
            write(f"{base}/files", array)
            files = decode_file_array_v1(array, sess.count)
        for f in files:
            if f.data:
                write(f"{base}/{f.token:#x}.{_safe(f.compatible)}", mem.read(f.data, PAGE_SIZE))


def _flb_pages(mem: PhysicalMemory, name: str, data: bytes,
               write: Callable[[str, bytes], None]) -> None:
    """The first page each FLB points at: the PCI device block, the IOMMU arrays."""
    heads: list[tuple[str, int]] = []
    if name == "pci-v2":
        heads = [("devices", PciSerV7.decode(data).devices)]
    elif name == "pci":
        heads = [("devices", PciSerV9.decode(data).devices)]
    elif name in IOMMU_ABIS:  # each iommu.h version has the three array heads
        ser = IOMMU_ABIS[name].flb.decode(data)
        heads = [("iommus", ser.iommu_array_phys), ("domains", ser.iommu_domain_array_phys),
                 ("devices", ser.device_array_phys)]
    for part, pa in heads:
        if pa:
            write(f"luo/flb/{name}.d/{part}", mem.read(pa, PAGE_SIZE))
