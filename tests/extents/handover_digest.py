"""Digest of what a run hands over at each kexec, read back through the ABI only.

Used to check that the extent/numpy model writes exactly the bytes the
per-folio model wrote (tests/extents/data/handover_golden.json was recorded
from main at 9dc9c4e, before the extent rewrite).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from luosim.abi.kho import KhoData, decode_root_fdt, walk_radix_tree
from luosim.hw.machine import Machine
from luosim.hw.memory import PAGE_SIZE
from luosim.scenario.runner import Run
from luosim.scenario.schema import load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def handover_digest(m: Machine, ram_bytes_up_to_order: int) -> str:
    """sha256 over kho_data, the radix nodes and preserved blocks, and their bytes.

    Blocks of order <= ``ram_bytes_up_to_order`` are hashed byte for byte;
    larger ones (guest RAM) by address and order only unless asked.
    """
    h = hashlib.sha256()
    kd_raw = m.kho_data
    assert kd_raw is not None
    h.update(kd_raw)
    kd = KhoData.decode(kd_raw)
    h.update(m.memory.read(kd.fdt_addr, kd.fdt_size))
    h.update(m.memory.read(kd.scratch_addr, kd.scratch_size))
    root = decode_root_fdt(m.memory.read(kd.fdt_addr, kd.fdt_size))
    nodes: list[int] = []
    blocks = list(walk_radix_tree(lambda pa: m.memory.read(pa, PAGE_SIZE), root.mem_map_pa,
                                  m.memory.size, on_node=nodes.append))
    for n in nodes:
        h.update(n.to_bytes(8, "little") + m.memory.read(n, PAGE_SIZE))
    for pa, order in blocks:
        h.update(pa.to_bytes(8, "little") + order.to_bytes(1, "little"))
        if order <= ram_bytes_up_to_order:
            h.update(m.memory.read(pa, PAGE_SIZE << order))
    return h.hexdigest()


def run_digests(example: str, ram_bytes_up_to_order: int) -> list[str]:
    """Digest at every kexec jump of ``example`` (a clean run, no faults)."""
    run = Run(load_scenario(EXAMPLES / example), (), None, None, None)
    out: list[str] = []

    def hook(stage: str) -> None:
        if stage == "kexec-jump":
            out.append(handover_digest(run.machine, ram_bytes_up_to_order))

    run.machine.stage_hooks.append(hook)
    res = run.execute()
    out.append(res.outcome)
    return out


def api_digests() -> list[str]:
    """Two memfds (order 0 and order 9, filled, written, truncated) through a kexec."""
    from luosim import Machine as M
    m = M.from_topology({"memory": "2GiB"})
    k = m.boot("v7")
    lu = k.open_liveupdate()
    s = lu.create_session("vm0")
    f0 = k.memfd_create("small", size=8 << 20)
    f0.fill(0, 4 << 20, 0xABC)
    f0.write(4097, b"hello small folios")
    f0.write((6 << 20) + 5, b"past the fill")
    f9 = k.memfd_create("thp", size=16 << 20, folio_order=9)
    f9.fill(0, 8 << 20, 0xDEF)
    f9.write((2 << 20) + 3, b"inside a THP")
    s.preserve_fd(f0, token=1)
    s.preserve_fd(f9, token=2)
    out: list[str] = []

    def hook(stage: str) -> None:
        if stage == "kexec-jump":
            out.append(handover_digest(m, 9))

    m.stage_hooks.append(hook)
    k2 = k.kexec("v7")
    s2 = k2.open_liveupdate().retrieve_session("vm0")
    g0, g9 = s2.retrieve_fd(1), s2.retrieve_fd(2)
    out.append(hashlib.sha256(g0.read(0, 8 << 20) + g9.read(0, 16 << 20)).hexdigest())
    return out
