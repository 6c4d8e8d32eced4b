"""The hand-over mutator: every in-memory corruption of a hand-over, in one place.

A ``corrupt:*`` fault effect and the boot-path fuzzer (benchmarks/fuzz_boot.py)
both edit what the next kernel will read the same way: find a serialized
object in physical memory, decode it with its ABI codec class, change one
field, encode it and write it back.  No literal offsets: the codec classes
(``decode``/``encode``/``SIZE`` of luosim.abi) own the layout.

:func:`handover_targets` lists every object of a hand-over reachable from
the ``kho_data`` boot parameter (the KHO root FDT and its radix tree, the
LUO FDT or v5 blob, session/file/FLB records, and per FLB its data:
``pci_ser`` with its block chain, ``iommu_flb_ser``, memfd records), each
with the layer it belongs to.  :func:`field_mutants` gives the edits worth
trying on one of them.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from luosim.abi import pci as pci_abi
from luosim.abi.block import KhoBlockHeaderSer
from luosim.abi.errors import DecodeError
from luosim.abi.iommu import IommuFlbSer
from luosim.abi.kho import (
    PAGE_SIZE,
    KhoData,
    Subtree,
    decode_root_fdt,
    encode_root_fdt,
    walk_radix_tree,
)
from luosim.abi.luo import (
    LUO_FDT_SIZE,
    LUO_FLB_BLOCK_SIZE,
    LuoFileSer,
    LuoFlbHeaderSer,
    LuoFlbSer,
    LuoSer,
    LuoSessionHeaderSer,
    LuoSessionSer,
    decode_flb_block,
    decode_luo_fdt,
    decode_luo_v5,
    encode_luo_fdt,
    encode_luo_v5,
)
from luosim.abi.memfd import MemfdLuoSerV1, MemfdLuoSerV2

# the radix tree's nodes are plain u64 tables/bitmaps (kernel/liveupdate/kexec_handover.c)
_U64 = struct.Struct("<Q")
_FDT_MAGIC = b"\xd0\x0d\xfe\xed"


def read_obj(mem: Any, cls: Any, pa: int) -> Any:
    return cls.decode(mem.read(pa, cls.SIZE))


def write_obj(mem: Any, pa: int, obj: Any) -> None:
    mem.write(pa, obj.encode())


def edit(mem: Any, cls: Any, pa: int, **changes: Any) -> Any:
    """Decode ``cls`` at ``pa``, replace fields, encode it back; returns the new object."""
    new = dataclasses.replace(read_obj(mem, cls, pa), **changes)
    write_obj(mem, pa, new)
    return new


# -- the pci.flb.retrieve corrupt:* effects (kernel/pci/liveupdate.py calls these) ----------

PCI_SER: dict[str, Any] = {"v6": pci_abi.PciSerV6, "v7": pci_abi.PciSerV7, "v9": pci_abi.PciSerV9}
MAX_PCI_SER = PAGE_SIZE << 10  # largest kho_alloc_preserve() block (MAX_PAGE_ORDER 10)


def pci_ser_header(mem: Any, abi: str, pa: int) -> Any:
    """The fixed part of ``struct pci_ser`` (v6: without the slot array)."""
    if abi == "v6":  # the codec's own header layout (the slot array follows)
        hdr = read_obj(mem, pci_abi.PciV6SerHeader, pa)
        return hdr.max_nr_devices, hdr.nr_devices
    return read_obj(mem, PCI_SER[abi], pa)


def pci_block_chain(mem: Any, head: int, limit: int = 4096) -> list[int]:
    """Block addresses of a ``pci_dev_ser`` chain, stopping at a cycle or misalignment."""
    chain: list[int] = []
    blk = head
    while blk and blk not in chain and blk % PAGE_SIZE == 0 and len(chain) < limit \
            and blk + PAGE_SIZE <= mem.size:
        chain.append(blk)
        blk = read_obj(mem, KhoBlockHeaderSer, blk).next
    return chain


def pci_slots(mem: Any, abi: str, pa: int, append: bool = False) -> list[int]:
    """Addresses of every ``pci_dev_ser`` slot; ``append``: one more in the last block's room."""
    ent = pci_abi.PciDevSer.SIZE
    if abi == "v6":
        mx, _nr = pci_ser_header(mem, abi, pa)
        hdr = pci_abi.PciSerV6.HEADER_SIZE
        return [pa + hdr + ent * i for i in range(min(mx, MAX_PCI_SER // ent))]
    out: list[int] = []
    chain = pci_block_chain(mem, pci_ser_header(mem, abi, pa).devices)
    per_block = (PAGE_SIZE - KhoBlockHeaderSer.SIZE) // ent
    for blk in chain:
        count = min(read_obj(mem, KhoBlockHeaderSer, blk).count, per_block)
        out.extend(blk + KhoBlockHeaderSer.SIZE + ent * i for i in range(count))
    if append and chain:
        last = read_obj(mem, KhoBlockHeaderSer, chain[-1])
        if last.count < per_block:
            out.append(chain[-1] + KhoBlockHeaderSer.SIZE + ent * last.count)
            edit(mem, KhoBlockHeaderSer, chain[-1], count=last.count + 1)
    return out


def corrupt_pci_ser(mem: Any, abi: str, pa: int, what: str) -> str:
    """Apply ``corrupt:<what>`` of ``pci.flb.retrieve`` to the incoming ``pci_ser`` at ``pa``.

    Returns a log line saying what changed (or why nothing could).
    """
    if what == "nr-devices":
        if abi == "v6":
            _mx, nr = pci_ser_header(mem, abi, pa)
            edit(mem, pci_abi.PciV6SerHeader, pa, nr_devices=0 if nr else 1)
        else:
            hdr = read_obj(mem, PCI_SER[abi], pa)
            edit(mem, PCI_SER[abi], pa, nr_devices=0 if hdr.nr_devices else 1)
    elif what == "version":
        if abi != "v9":
            return f"the {abi} pci_ser has no version"
        hdr = read_obj(mem, pci_abi.PciSerV9, pa)
        edit(mem, pci_abi.PciSerV9, pa, version=hdr.version + 1)
    elif what == "block-chain":
        if abi == "v6":
            return "the v6 pci_ser has no block chain"
        head = read_obj(mem, PCI_SER[abi], pa).devices
        if head:  # the first block's next points at itself: a cycle
            edit(mem, KhoBlockHeaderSer, head, next=head)
    elif what == "duplicate-entry":
        slots = pci_slots(mem, abi, pa, append=abi != "v6")
        live = [s for s in slots if read_obj(mem, pci_abi.PciDevSer, s).refcount]
        if not live or len(slots) < 2:
            return "nothing to duplicate"
        target = next(s for s in reversed(slots) if s != live[0])
        write_obj(mem, target, read_obj(mem, pci_abi.PciDevSer, live[0]))
    else:
        raise ValueError(f"unknown pci_ser corruption {what!r}")
    return "incoming pci_ser corrupted in memory"


def corrupt_iommu_version(mem: Any, pa: int) -> None:
    """``iommu.flb.retrieve=corrupt:version``: a version word no kernel writes."""
    edit(mem, IommuFlbSer, pa, version=0xDEAD)


def corrupt_luo_session_count(mem: Any, pa: int, v5: bool) -> None:
    """``luo.handover=corrupt:session-count``: a session count no kernel writes.

    luo-v5: the count of the first KHO block of the session chain
    (``kho_block_header_ser``); luo-v1: ``luo_session_header_ser.count``.
    """
    if v5:
        edit(mem, KhoBlockHeaderSer, pa, count=0xFFFF)
    else:
        edit(mem, LuoSessionHeaderSer, pa, count=0xFFFF)


def corrupt_radix_root(mem: Any, root_pa: int) -> None:
    """``kho.handover=corrupt:radix-node``: the root table's first entry points past RAM.

    Radix-tree nodes are plain tables of u64 physical addresses (no struct).
    """
    mem.write(root_pa, _U64.pack((mem.size + PAGE_SIZE) & ~(PAGE_SIZE - 1)))


def _root_subtrees(root: Any) -> list[Subtree]:
    """A decoded root's subtrees as :func:`encode_root_fdt` takes them back: the blob
    lists them newest first, so oldest first here, each with its blob-size."""
    return [(name, pa, root.sizes.get(name, 0)) for name, pa in reversed(root.subtrees.items())]


def corrupt_kho_root(mem: Any, kho_data: bytearray, what: str) -> None:
    """``kho.handover=corrupt:root-compatible`` / ``corrupt:mem-map`` on the written root FDT.

    Re-encodes the root with ``compatible = "kho-v1"`` (a version the next kernel
    does not know) or a zero ``preserved-memory-map``; each subnode keeps its
    ``blob-size`` where the written compatible has one.  ``kho_data.fdt_size``
    follows the new blob; the rest of the old blob is zeroed.
    """
    kd = KhoData.decode(bytes(kho_data))
    root = decode_root_fdt(mem.read(kd.fdt_addr, kd.fdt_size))
    subs = _root_subtrees(root)
    if what == "corrupt:root-compatible":
        mm, compat = root.mem_map_pa, "kho-v1"
    elif what == "corrupt:mem-map":
        mm, compat = 0, root.compatible
    else:
        raise ValueError(f"unknown KHO root corruption {what!r}")
    mem.write(kd.fdt_addr, bytes(kd.fdt_size))
    _set_root_fdt(mem, kho_data, kd.fdt_addr, mm, subs, compat)


def corrupt_luo_blob(mem: Any, pa: int, what: str) -> None:
    """``luo.handover=corrupt:compatible`` / ``corrupt:missing-flb-node`` on the written
    LUO hand-over at ``pa``.

    luo-v1 (FDT): the root's compatible becomes ``"luo-v0"``, or the ``luo-flb``
    node is dropped.  luo-v5 (``struct luo_ser``): the compatible of an older
    struct ABI (``"luo-v4"``), or ``flbs_pa = 0`` (no FLB header).
    """
    if what not in ("corrupt:compatible", "corrupt:missing-flb-node"):
        raise ValueError(f"unknown LUO hand-over corruption {what!r}")
    if mem.read(pa, 4) != _FDT_MAGIC:
        if what == "corrupt:compatible":
            edit(mem, LuoSer, pa, compatible="luo-v4")
        else:
            edit(mem, LuoSer, pa, flbs_pa=0)
        return
    blob = mem.read(pa, LUO_FDT_SIZE)
    try:
        fdt = decode_luo_fdt(blob, require_flb=True)
    except DecodeError:  # written without a luo-flb node
        fdt = decode_luo_fdt(blob, require_flb=False)
    if what == "corrupt:compatible":
        blob = encode_luo_fdt(fdt.liveupdate_num, fdt.session_header_pa, fdt.flb_header_pa,
                              compatible="luo-v0")
    else:
        blob = encode_luo_fdt(fdt.liveupdate_num, fdt.session_header_pa, None)
    mem.write(pa, blob.ljust(LUO_FDT_SIZE, b"\0"))


# -- discovery of a whole hand-over (for the fuzzer) ----------------------------------------

@dataclass(frozen=True)
class Target:
    """One serialized object of a hand-over: ``cls`` at ``pa`` (``cls`` None: raw u64s)."""

    layer: str
    label: str
    pa: int
    cls: Any = None
    size: int = 8


def _fields(cls: Any) -> list[tuple[str, int]]:
    """(name, bits) of a codec's integer fields, from its declared layout: each
    dataclass attribute whose C field (same dotted path, or the unique leaf of that
    name) is a scalar or a bit-field, with the field's width."""
    layout = getattr(cls, "LAYOUT", None)
    if layout is None:
        return []
    by_name: dict[str, list[Any]] = {}
    for leaf in layout.leaves:
        by_name.setdefault(leaf.path, []).append(leaf)
        tail = leaf.path.rsplit(".", 1)[-1]
        if tail != leaf.path:
            by_name.setdefault(tail, []).append(leaf)
    out = []
    for f in dataclasses.fields(cls):
        leaves = by_name.get(f.name, [])
        if len(leaves) != 1 or leaves[0].kind not in ("int", "bits"):
            continue
        leaf = leaves[0]
        out.append((f.name, leaf.bits if leaf.kind == "bits" else leaf.size * 8))
    return out


def handover_targets(mem: Any, kho_data: bytes | None) -> list[Target]:
    """Every object reachable from ``kho_data``; unreadable parts are skipped."""
    out: list[Target] = []
    if kho_data is None:
        return out
    kd = KhoData.decode(kho_data)
    out.append(Target("kho_data", "kho_data", -1, KhoData, KhoData.SIZE))
    out.append(Target("kho-fdt", "root fdt", kd.fdt_addr, None, kd.fdt_size))
    try:
        root = decode_root_fdt(mem.read(kd.fdt_addr, kd.fdt_size))
    except (DecodeError, ValueError):
        return out
    nodes: list[int] = []
    try:
        for _pa, _order in walk_radix_tree(lambda p: mem.read(p, PAGE_SIZE), root.mem_map_pa,
                                           mem.size, on_node=nodes.append):
            pass
    except (DecodeError, ValueError):
        pass
    out.extend(Target("kho-radix", f"radix node {i}", n, None, PAGE_SIZE)
               for i, n in enumerate(nodes))
    luo_pa = root.subtrees.get("LUO")
    if luo_pa is None or luo_pa < 0:
        return out
    try:
        _luo_targets(mem, luo_pa, out)
    except (DecodeError, ValueError):
        pass
    return out


def _luo_targets(mem: Any, pa: int, out: list[Target]) -> None:
    head = mem.read(pa, 8)
    if head[:4] == _FDT_MAGIC:
        size = struct.unpack(">I", head[4:8])[0]
        blob = mem.read(pa, min(size, PAGE_SIZE))
        try:
            fdt = decode_luo_fdt(blob, require_flb=True)
        except DecodeError:
            fdt = decode_luo_fdt(blob, require_flb=False)
        out.append(Target("luo-fdt", "LUO fdt", pa, None, len(blob)))
        sessions_pa, flb_pa = fdt.session_header_pa, fdt.flb_header_pa
        if sessions_pa:
            out.append(Target("luo-session", "session header", sessions_pa,
                              LuoSessionHeaderSer, LuoSessionHeaderSer.SIZE))
            count = read_obj(mem, LuoSessionHeaderSer, sessions_pa).count
            for i in range(min(count, 64)):
                spa = sessions_pa + LuoSessionHeaderSer.SIZE + i * LuoSessionSer.SIZE
                out.append(Target("luo-session", f"session {i}", spa, LuoSessionSer,
                                  LuoSessionSer.SIZE))
                ses = read_obj(mem, LuoSessionSer, spa)
                for j in range(min(ses.count, 64)):
                    fpa = ses.files + j * LuoFileSer.SIZE
                    out.append(Target("luo-file", f"session {i} file {j}", fpa, LuoFileSer,
                                      LuoFileSer.SIZE))
                    _file_data(mem, read_obj(mem, LuoFileSer, fpa), out)
    else:
        ser = decode_luo_v5(mem.read(pa, 32))
        out.append(Target("luo-fdt", "LUO v5 blob", pa, None, 32))
        flb_pa = ser.flbs_pa or None
        # luo-v5: sessions, and each session's files, are KHO block chains
        for i, (_spa, ses) in enumerate(_chain_records(mem, ser.sessions_pa, LuoSessionSer,
                                                      "luo-session", "session", out)):
            recs = _chain_records(mem, ses.files, LuoFileSer, "luo-file", f"session {i} file",
                                  out)
            for fpa, rec in recs:
                out.append(Target("luo-file", f"session {i} file {rec.token}", fpa,
                                  LuoFileSer, LuoFileSer.SIZE))
                _file_data(mem, rec, out)
    if flb_pa:
        out.append(Target("luo-flb", "flb header", flb_pa, LuoFlbHeaderSer, LuoFlbHeaderSer.SIZE))
        for i, rec in enumerate(decode_flb_block(mem.read(flb_pa, LUO_FLB_BLOCK_SIZE))):
            rpa = flb_pa + LuoFlbHeaderSer.SIZE + i * LuoFlbSer.SIZE
            out.append(Target("luo-flb", f"flb {rec.name}", rpa, LuoFlbSer, LuoFlbSer.SIZE))
            _flb_data(mem, rec, out)


def _chain_records(mem: Any, head: int, cls: Any, layer: str, what: str,
                   out: list[Target]) -> list[tuple[int, Any]]:
    """Records of a KHO block chain (block headers become targets); (pa, record) each."""
    recs: list[tuple[int, Any]] = []
    per_block = (PAGE_SIZE - KhoBlockHeaderSer.SIZE) // cls.SIZE
    for j, blk in enumerate(pci_block_chain(mem, head)):
        out.append(Target(layer, f"{what} block {j}", blk, KhoBlockHeaderSer,
                          KhoBlockHeaderSer.SIZE))
        count = min(read_obj(mem, KhoBlockHeaderSer, blk).count, per_block)
        for k in range(count):
            rpa = blk + KhoBlockHeaderSer.SIZE + k * cls.SIZE
            recs.append((rpa, read_obj(mem, cls, rpa)))
    if cls is LuoSessionSer:
        out.extend(Target(layer, f"{what} {i}", rpa, cls, cls.SIZE)
                   for i, (rpa, _r) in enumerate(recs))
    return recs


def _file_data(mem: Any, rec: LuoFileSer, out: list[Target]) -> None:
    cls: Any = {MemfdLuoSerV1.COMPATIBLE: MemfdLuoSerV1,
                MemfdLuoSerV2.COMPATIBLE: MemfdLuoSerV2}.get(rec.compatible)
    if cls is not None and rec.data:
        out.append(Target("memfd", f"memfd {rec.token}", rec.data, cls, cls.SIZE))


def _flb_data(mem: Any, rec: LuoFlbSer, out: list[Target]) -> None:
    abi = {pci_abi.PCI_V6_COMPATIBLE: "v6", pci_abi.PCI_V7_COMPATIBLE: "v7",
           pci_abi.PCI_V9_COMPATIBLE: "v9"}.get(rec.name)
    if abi is not None and rec.data:
        if abi == "v6":
            out.append(Target("pci", "pci_ser v6 header", rec.data, None, 8))
        else:
            cls: Any = PCI_SER[abi]
            out.append(Target("pci", f"pci_ser {abi}", rec.data, cls, cls.SIZE))
            for i, blk in enumerate(pci_block_chain(mem, read_obj(mem, cls, rec.data).devices)):
                out.append(Target("pci-chain", f"block {i}", blk, KhoBlockHeaderSer,
                                  KhoBlockHeaderSer.SIZE))
        for i, spa in enumerate(pci_slots(mem, abi, rec.data)[:64]):
            out.append(Target("pci-dev", f"pci_dev_ser {i}", spa, pci_abi.PciDevSer,
                              pci_abi.PciDevSer.SIZE))
    elif rec.name.startswith("iommu") and rec.data:
        out.append(Target("iommu", rec.name, rec.data, IommuFlbSer, IommuFlbSer.SIZE))


# -- mutants --------------------------------------------------------------------------------

Mutant = tuple[str, str, Callable[[Any, bytearray], None]]
"""(layer, description, apply(mem, kho_data)) -- kho_data is edited in place."""


def _values(old: int, bits: int, rng: random.Random, mem_size: int) -> list[int]:
    top = (1 << bits) - 1
    cand = {0, 1, top, old ^ 1, (old + 1) & top, (old - 1) & top, old ^ (1 << (bits - 1)),
            rng.getrandbits(bits)}
    if bits >= 32:  # addresses: beyond memory, unaligned, one page off
        cand |= {min(mem_size, top), (old + PAGE_SIZE) & top, (old | 8) & top}
    cand.discard(old)
    return sorted(cand)


def _set_kho_data(m: Any, kd: bytearray, n: str, val: int) -> None:
    kd[:] = dataclasses.replace(KhoData.decode(bytes(kd)), **{n: val}).encode()


def _set_field(m: Any, kd: bytearray, c: Any, pa: int, n: str, val: Any) -> None:
    edit(m, c, pa, **{n: val})


def _set_v5(m: Any, kd: bytearray, pa: int, vv: dict[str, int]) -> None:
    m.write(pa, encode_luo_v5(vv["liveupdate_num"], vv["sessions_pa"], vv["flbs_pa"]))


def _set_u64(m: Any, kd: bytearray, pa: int, val: int) -> None:
    m.write(pa, _U64.pack(val))


def _set_byte(m: Any, kd: bytearray, pa: int, val: int) -> None:
    m.write(pa, bytes([val]))


def _set_root_fdt(m: Any, kd: bytearray, pa: int, mm: int, sb: list[Subtree],
                  compat: str) -> None:
    blob = encode_root_fdt(mm, sb, compatible=compat)
    m.write(pa, blob)
    kd[:] = dataclasses.replace(KhoData.decode(bytes(kd)), fdt_size=len(blob)).encode()


def _set_luo_fdt(m: Any, kd: bytearray, pa: int, new: dict[str, int]) -> None:
    out = encode_luo_fdt(new["liveupdate_num"], new["session_header_pa"],
                         new["flb_header_pa"] or None)
    if len(out) <= PAGE_SIZE:
        m.write(pa, out)


def field_mutants(mem: Any, t: Target, kho_data: bytes, rng: random.Random,
                  per_field: int = 0) -> Iterator[Mutant]:
    """Edits of one object: every integer field to boundary and random values
    (``per_field`` extra random ones), string fields, u64 words of raw objects,
    properties and bytes of FDTs."""
    if t.cls is KhoData:
        obj = KhoData.decode(kho_data)
        for name, bits in _fields(KhoData):
            for v in _values(getattr(obj, name), bits, rng, mem.size) + \
                    [rng.getrandbits(bits) for _ in range(per_field)]:
                yield t.layer, f"{t.label}.{name}={v:#x}", partial(_set_kho_data, n=name, val=v)
        return
    if t.cls is not None:
        obj = read_obj(mem, t.cls, t.pa)
        for name, bits in _fields(t.cls):
            old = getattr(obj, name)
            if not isinstance(old, int):
                continue
            for v in _values(old, bits, rng, mem.size) + \
                    [rng.getrandbits(bits) for _ in range(per_field)]:
                yield (t.layer, f"{t.label}.{name}={v:#x}",
                       partial(_set_field, c=t.cls, pa=t.pa, n=name, val=v))
        for name in ("name", "compatible"):
            old_s = getattr(obj, name, None)
            if isinstance(old_s, str):
                for sv in ("", old_s[:-1] + "X"):
                    yield (t.layer, f"{t.label}.{name}={sv!r}",
                           partial(_set_field, c=t.cls, pa=t.pa, n=name, val=sv))
        return
    if t.layer == "kho-fdt":
        yield from _kho_fdt_mutants(mem, t, rng)
        return
    if t.layer == "luo-fdt" and t.label == "LUO fdt":
        yield from _luo_fdt_mutants(mem, t, rng)
        return
    if t.layer == "luo-fdt":
        ser = decode_luo_v5(mem.read(t.pa, 32))
        for name in ("liveupdate_num", "sessions_pa", "flbs_pa"):
            for v in _values(getattr(ser, name), 64, rng, mem.size):
                vals = {"liveupdate_num": ser.liveupdate_num, "sessions_pa": ser.sessions_pa,
                        "flbs_pa": ser.flbs_pa, name: v}
                yield t.layer, f"{t.label}.{name}={v:#x}", partial(_set_v5, pa=t.pa, vv=vals)
    # raw: u64 words (radix-tree tables and bitmaps, the v6 pci_ser header)
    words = max(t.size // 8, 1)
    for i in sorted(rng.sample(range(words), min(words, max(4, per_field)))):
        old = _U64.unpack(mem.read(t.pa + 8 * i, 8))[0]
        for v in _values(old, 64, rng, mem.size)[:4]:
            yield t.layer, f"{t.label} u64[{i}]={v:#x}", partial(_set_u64, pa=t.pa + 8 * i, val=v)


def _byte_mutants(t: Target, rng: random.Random, n: int) -> Iterator[Mutant]:
    for _ in range(n):  # structure bytes: what pylibfdt must refuse cleanly
        off, val = rng.randrange(t.size), rng.randrange(256)
        yield t.layer, f"{t.label} byte[{off}]={val:#x}", partial(_set_byte, pa=t.pa + off, val=val)


def _kho_fdt_mutants(mem: Any, t: Target, rng: random.Random) -> Iterator[Mutant]:
    root = decode_root_fdt(mem.read(t.pa, t.size))
    subs = _root_subtrees(root)  # one edit each: order and blob-sizes kept
    variants: list[tuple[str, int, list[Subtree], str]] = [
        ("compatible='kho-v1'", root.mem_map_pa, subs, "kho-v1"),
        ("compatible=''", root.mem_map_pa, subs, ""),
        ("subtrees=[]", root.mem_map_pa, [], root.compatible)]
    for v in _values(root.mem_map_pa, 64, rng, mem.size):
        variants.append((f"preserved-memory-map={v:#x}", v, subs, root.compatible))
    for i, sub in enumerate(subs):
        name, pa, size = sub[0], sub[1], sub[2] if len(sub) > 2 else 0
        for v in _values(max(pa, 0), 64, rng, mem.size):
            s2 = list(subs)
            s2[i] = (name, v, size)
            variants.append((f"{name}.preserved-data={v:#x}", root.mem_map_pa, s2,
                             root.compatible))
        if name in root.sizes:
            for v in _values(max(size, 0), 64, rng, 1 << 32):
                s2 = list(subs)
                s2[i] = (name, pa, v)
                variants.append((f"{name}.blob-size={v:#x}", root.mem_map_pa, s2,
                                 root.compatible))
    for label, mm, sb, compat in variants:
        yield (t.layer, f"root fdt {label}",
               partial(_set_root_fdt, pa=t.pa, mm=mm, sb=sb, compat=compat))
    yield from _byte_mutants(t, rng, 8)


def _luo_fdt_mutants(mem: Any, t: Target, rng: random.Random) -> Iterator[Mutant]:
    blob = mem.read(t.pa, t.size)
    try:
        fdt = decode_luo_fdt(blob, require_flb=True)
    except DecodeError:
        fdt = decode_luo_fdt(blob, require_flb=False)
    vals = {"liveupdate_num": fdt.liveupdate_num, "session_header_pa": fdt.session_header_pa,
            "flb_header_pa": fdt.flb_header_pa or 0}
    for name, old in vals.items():
        for v in _values(old, 64, rng, mem.size):
            yield (t.layer, f"LUO fdt {name}={v:#x}",
                   partial(_set_luo_fdt, pa=t.pa, new=dict(vals, **{name: v})))
    yield from _byte_mutants(t, rng, 8)
