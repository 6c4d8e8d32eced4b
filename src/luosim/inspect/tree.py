"""``luosim inspect DIR``: a whole ``--dump-handover`` folder as one tree.

Walks the files :func:`luosim.inspect.dump.dump_handover` writes (one
``kexecN/`` folder per kexec, laid out like debugfs ``kho/out``), picks each
file's decoder from its path, and adds the ABI version and findings: a
pointer or count that disagrees with another file, a compatible that only
some kernels read, a file nobody would read.  Addresses are hex throughout.

Paths and what they hold (see dump.py):

==============================  =============================================
``kho_data``                    x86 ``struct kho_data`` (setup_data)
``kho/out/fdt``                 KHO root FDT (``kho-v2``/``kho-v3``/``kho-v4``)
``kho/out/scratch``             ``struct kho_scratch[]``
``kho/out/sub_fdts/LUO``        LUO FDT (``luo-v1``) or ``struct luo_ser`` (``luo-v5``)
``kho/out/sub_fdts/kexec-metadata``  ``struct kho_kexec_metadata`` (kho-v3+ builds)
``kho/out/sub_fdts/memblock``   memblock FDT (``memblock-v1``, with ``reserve_mem=``)
``luo/sessions``                session block (v1) / first session KHO block (v5)
``luo/session/S/files``         session S's file array / first file block
``luo/session/S/TOKEN.COMPAT``  first page of a file's serialized data
``luo/flb-block``               ``luo_flb_header_ser`` + ``luo_flb_ser[]``
``luo/flb/NAME``                the FLB's data page (``pci-v*``, ``pci``,
                                ``iommu-liveupdate``, ``iommu-liveupdate-v1``)
``luo/flb/NAME.d/PART``         the first page an FLB points at
==============================  =============================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luosim.abi import iommu as iommu_abi
from luosim.abi import kexec_metadata as kexec_metadata_abi
from luosim.abi import kho as kho_abi
from luosim.abi import luo as luo_abi
from luosim.abi import memblock as memblock_abi
from luosim.abi import memfd as memfd_abi
from luosim.abi import pci as pci_abi
from luosim.abi import vfio as vfio_abi
from luosim.abi.block import decode_block
from luosim.abi.errors import DecodeError

FDT_MAGIC = b"\xd0\x0d\xfe\xed"
PAGE_SIZE = 4096
# which kernel profile reads which PCI FLB compatible (kernel/profiles.py)
PCI_READERS = {"pci-v1": "v6 with pci.v6_compat=pci-v1",
               "pci-v2": "v7, and v6 with pci.v6_compat=pci-v2",
               "pci-v3": "v6 (default pci.v6_compat)", "pci": "v9"}
_POINTER_WORDS = {"addr", "pa", "phys", "next", "data", "files", "devices", "table", "token",
                  "first", "bitmap", "iova"}
_POINTER_NAMES = {"restored_domain", "sessions_pa", "flbs_pa"}


class TreeError(Exception):
    """DIR is not a dump folder (one line)."""


@dataclass
class Node:
    """One file (or folder) of the dump, decoded."""

    path: str
    kind: str
    abi: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "abi": self.abi, "fields": self.fields,
                "findings": self.findings, "children": [c.as_json() for c in self.children]}


def _is_pointer(name: str) -> bool:
    words = set(name.lower().split("_"))
    if words & {"nr", "count", "max"}:
        return False
    return bool(words & _POINTER_WORDS) or name in _POINTER_NAMES


def hexify(name: str, value: Any) -> Any:
    """Addresses (by field name) as hex strings; counts and versions stay numbers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: hexify(f.name, getattr(value, f.name))
                for f in dataclasses.fields(value)}
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return hex(value) if _is_pointer(name) else value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [hexify(name, v) for v in value]
    return value


# -- one decoder per file kind ------------------------------------------------

class _Dump:
    """The files of one ``kexecN`` folder, read once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = {p.relative_to(root).as_posix(): p.read_bytes()
                      for p in sorted(root.rglob("*")) if p.is_file()}
        self.used: set[str] = set()

    def get(self, rel: str) -> bytes | None:
        data = self.files.get(rel)
        if data is not None:
            self.used.add(rel)
        return data


def _guard(node: Node, fn: Callable[[], None]) -> Node:
    try:
        fn()
    except DecodeError as exc:
        node.findings.append(f"cannot decode ({exc.kind}): {exc}")
    except (ValueError, KeyError, IndexError) as exc:  # a short or foreign blob
        node.findings.append(f"cannot decode: {exc}")
    return node


def _kho(d: _Dump) -> Node:
    top = Node("kho", "KHO hand-over")
    raw = d.get("kho_data")
    kd: kho_abi.KhoData | None = None
    if raw is not None:
        n = Node("kho_data", "struct kho_data", "x86 setup_data SETUP_KEXEC_KHO")

        def data() -> None:
            nonlocal kd
            kd = kho_abi.KhoData.decode(raw)
            n.fields = hexify("", kd)
            fdt = d.files.get("kho/out/fdt")
            if fdt is not None and len(fdt) != kd.fdt_size:
                n.findings.append(f"fdt_size {kd.fdt_size} but kho/out/fdt is {len(fdt)} bytes")
        top.children.append(_guard(n, data))
    fdt = d.get("kho/out/fdt")
    if fdt is not None:
        n = Node("kho/out/fdt", "KHO root FDT")

        def root() -> None:
            r = kho_abi.decode_root_fdt(fdt)
            n.abi = top.abi = r.compatible
            n.fields = {"compatible": r.compatible,
                        "preserved-memory-map": hex(r.mem_map_pa),
                        "subtrees": {k: hex(v) for k, v in r.subtrees.items()}}
            if r.sizes:  # kho-v3+: blob-size per subtree
                n.fields["blob-sizes"] = dict(r.sizes)
            for name in r.subtrees:
                if name != "LUO":
                    n.children.append(_subtree(d, name, r.sizes.get(name)))
            for name, pa in r.subtrees.items():
                if pa < 0:
                    n.findings.append(f"sub-tree {name}: no 8-byte preserved-data property")
                elif f"kho/out/sub_fdts/{name}" not in d.files:
                    n.findings.append(f"sub-tree {name} at {pa:#x} was not dumped")
        top.children.append(_guard(n, root))
    if fdt is not None:
        top.children.append(_mem_map(d, fdt))
    scratch = d.get("kho/out/scratch")
    if scratch is not None:
        n = Node("kho/out/scratch", "struct kho_scratch[]", "kho-v2")

        def areas() -> None:
            arr = kho_abi.KhoScratch.decode_array(scratch)
            n.fields = {"areas": [{"addr": hex(a.addr), "size": hex(a.size)} for a in arr],
                        "total": hex(sum(a.size for a in arr))}
            if kd is not None and len(scratch) != kd.scratch_size:
                n.findings.append(f"kho_data.scratch_size {kd.scratch_size} but the array "
                                  f"is {len(scratch)} bytes")
            if not arr:
                n.findings.append("no scratch area: the next kernel has nowhere to boot")
        top.children.append(_guard(n, areas))
    return top


def _subtree(d: _Dump, name: str, size: int | None) -> Node:
    """A KHO subtree other than LUO's: kexec-metadata (``kho_in_kexec_metadata()``'s
    checks) or memblock's reserve_mem FDT."""
    rel = f"kho/out/sub_fdts/{name}"
    n = Node(rel, f"KHO subtree {name!r}")
    raw = d.get(rel)
    if raw is None:
        return n  # the root node already reports it as not dumped

    def decode() -> None:
        if name == kexec_metadata_abi.KHO_METADATA_NODE_NAME:
            n.kind, n.abi = "struct kho_kexec_metadata", f"v{int.from_bytes(raw[:4], 'little')}"
            if size is None:
                n.findings.append("no blob-size (kho-v2 root): a kernel that reads "
                                  "kexec-metadata never finds it")
            meta = kexec_metadata_abi.read_incoming(raw, len(raw) if size is None else size)
            n.fields = hexify("", meta)
        elif raw[:4] == FDT_MAGIC and name == "memblock":
            n.kind, n.abi = "memblock FDT", memblock_abi.MEMBLOCK_KHO_NODE_COMPATIBLE
            regions = memblock_abi.decode_memblock_fdt(raw)
            n.fields = {"reserve_mem": {k: {"start": hex(r.start), "size": hex(r.size)}
                                        for k, r in regions.items()}}
        else:
            n.fields["head"] = raw[:32].hex()
            n.findings.append(f"no luosim decoder for KHO subtree {name!r}")
    return _guard(n, decode)


def _mem_map(d: _Dump, fdt: bytes) -> Node:
    """Summary of the preserved-memory map: blocks per order, bytes, span."""
    n = Node("kho/out/mem_map", "preserved-memory map (radix tree)", "kho-v2")

    def summary() -> None:
        root_pa = kho_abi.decode_root_fdt(fdt).mem_map_pa
        n.fields["root"] = hex(root_pa)

        def read(pa: int) -> bytes:
            data = d.get(f"kho/out/mem_map/{pa:#x}")
            if data is None:
                raise DecodeError("kho radix tree", pa, "table",
                                  f"node page {pa:#x} was not dumped", kind="truncated")
            return data
        orders: dict[int, int] = {}
        lo, hi, total, nodes = None, 0, 0, 0

        def node(_pa: int) -> None:
            nonlocal nodes
            nodes += 1
        for pa, order in kho_abi.walk_radix_tree(read, root_pa, 1 << 52, on_node=node):
            orders[order] = orders.get(order, 0) + 1
            size = PAGE_SIZE << order
            total += size
            lo = pa if lo is None else min(lo, pa)
            hi = max(hi, pa + size)
        n.fields.update({"radix_nodes": nodes, "blocks": sum(orders.values()),
                         "bytes": hex(total), "span": f"{lo or 0:#x}-{hi:#x}",
                         "blocks_per_order": {str(o): c for o, c in sorted(orders.items())}})
    return _guard(n, summary)


def _luo(d: _Dump) -> tuple[Node, int | None]:
    """The LUO sub-tree; also returns the FLB header address it names."""
    blob = d.get("kho/out/sub_fdts/LUO")
    top = Node("kho/out/sub_fdts/LUO", "LUO")
    flb_pa: int | None = None
    if blob is None:
        top.findings.append("no LUO sub-tree: nothing was preserved through LUO")
        return top, None

    def decode() -> None:
        nonlocal flb_pa
        if blob[:4] == FDT_MAGIC:
            top.abi = luo_abi.LUO_FDT_COMPATIBLE
            try:
                fdt = luo_abi.decode_luo_fdt(blob, require_flb=True)
            except DecodeError:
                fdt = luo_abi.decode_luo_fdt(blob, require_flb=False)
                top.findings.append("no luo-flb node: a P0 hand-over (no FLBs); a P1 kernel "
                                    "panics on it (-ENOENT)")
            top.kind = "LUO FDT"
            top.fields = hexify("", fdt)
            flb_pa = fdt.flb_header_pa
        else:
            ser = luo_abi.decode_luo_v5(blob)
            top.abi = ser.compatible
            top.kind = "struct luo_ser"
            top.fields = hexify("", ser)
            flb_pa = ser.flbs_pa or None
    _guard(top, decode)
    chained = top.abi != luo_abi.LUO_FDT_COMPATIBLE
    top.children.append(_sessions(d, chained))
    return top, flb_pa


def _sessions(d: _Dump, chained: bool) -> Node:
    raw = d.get("luo/sessions")
    node = Node("luo/sessions", "LUO sessions",
                "KHO block chain (luo-v5)" if chained else "luo-session-v2 block")
    if raw is None:
        node.findings.append("not dumped (no session)")
        return node

    def decode() -> None:
        if chained:
            nxt, entries = decode_block(raw, luo_abi.LuoSessionSer.SIZE, "luo session block")
            sessions = [luo_abi.LuoSessionSer.decode(e, 0) for e in entries]
            node.fields = {"next": hex(nxt), "count": len(sessions)}
            if nxt:
                node.findings.append(f"more session blocks at {nxt:#x} (first block shown)")
        else:
            sessions = luo_abi.decode_session_block_v1(raw)
            node.fields = {"count": len(sessions)}
        for s in sessions:
            node.children.append(_session(d, s, chained))
    return _guard(node, decode)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name) or "_"


def _session(d: _Dump, s: luo_abi.LuoSessionSer, chained: bool) -> Node:
    base = f"luo/session/{_safe(s.name)}"
    node = Node(f"{base}/files", f"session {s.name!r}",
                fields={"files": hex(s.files), "count": s.count})
    raw = d.get(f"{base}/files")
    if raw is None:
        if s.count:
            node.findings.append(f"{s.count} files at {s.files:#x} were not dumped")
        return node

    def decode() -> None:
        if chained:
            _nxt, entries = decode_block(raw, luo_abi.LuoFileSer.SIZE, "luo file block")
            files = [luo_abi.LuoFileSer.decode(e, 0) for e in entries]
        else:
            files = luo_abi.decode_file_array_v1(raw, s.count)
        if len(files) != s.count and not chained:
            node.findings.append(f"session says {s.count} files, array holds {len(files)}")
        for f in files:
            node.children.append(_file(d, base, f))
    return _guard(node, decode)


def _file(d: _Dump, base: str, f: luo_abi.LuoFileSer) -> Node:
    rel = f"{base}/{f.token:#x}.{_safe(f.compatible)}"
    node = Node(rel, f"file token {f.token:#x}", f.compatible,
                {"compatible": f.compatible, "data": hex(f.data), "token": hex(f.token)})
    raw = d.get(rel)
    if raw is None:
        if f.data:
            node.findings.append(f"data at {f.data:#x} was not dumped")
        return node

    def decode() -> None:
        if f.compatible == memfd_abi.MEMFD_LUO_FH_COMPATIBLE_V2:
            node.fields["memfd_luo_ser"] = hexify("", memfd_abi.MemfdLuoSerV2.decode(raw))
        elif f.compatible == memfd_abi.MEMFD_LUO_FH_COMPATIBLE_V1:
            node.fields["memfd_luo_ser"] = hexify("", memfd_abi.MemfdLuoSerV1.decode(raw))
        elif f.compatible in (vfio_abi.VFIO_PCI_LUO_FH_COMPATIBLE,
                              vfio_abi.VFIO_PCI_LUO_FH_COMPATIBLE_V2):
            # vfio-pci-v1 also names d835969e's 9-byte record ({u16 bdf, u16 domain, ...});
            # a dumped page cannot tell them apart, so it is read as the v5 record
            ser: Any = (vfio_abi.VfioPciCoreDeviceSerV2.decode(raw)
                        if f.compatible == vfio_abi.VFIO_PCI_LUO_FH_COMPATIBLE_V2
                        else vfio_abi.VfioPciCoreDeviceSer.decode(raw))
            node.fields["vfio_pci_core_device_ser"] = {
                "domain": ser.domain, "bdf": hex(ser.bdf),
                "device": pci_abi.fmt_bdf(ser.domain, ser.bdf)}
        else:
            node.fields["head"] = raw[:32].hex()
            if f.compatible != iommu_abi.IOMMUFD_LUO_FH_COMPATIBLE:
                node.findings.append(f"no luosim decoder for file compatible {f.compatible!r}")
    return _guard(node, decode)


def _flbs(d: _Dump, flb_pa: int | None) -> Node:
    raw = d.get("luo/flb-block")
    node = Node("luo/flb-block", "LUO FLBs", luo_abi.LUO_FLB_COMPATIBLE)
    if flb_pa is not None:
        node.fields["address"] = hex(flb_pa)
    if raw is None:
        if flb_pa:
            node.findings.append(f"FLB header at {flb_pa:#x} was not dumped")
        return node

    def decode() -> None:
        hdr = luo_abi.LuoFlbHeaderSer.decode(raw)
        recs = luo_abi.decode_flb_block(raw)
        node.fields.update({"pgcnt": hdr.pgcnt, "count": hdr.count})
        for r in recs:
            node.children.append(_flb(d, r))
    return _guard(node, decode)


def _flb(d: _Dump, r: luo_abi.LuoFlbSer) -> Node:
    rel = f"luo/flb/{r.name}"
    node = Node(rel, f"FLB {r.name}", r.name,
                {"name": r.name, "data": hex(r.data), "count": r.count})
    raw = d.get(rel)
    if raw is None:
        node.findings.append(f"data at {r.data:#x} was not dumped")
        return node
    if r.name in PCI_READERS:
        node.findings.append(f"read by: {PCI_READERS[r.name]}; other profiles find no PCI FLB "
                             "(ENOENT) and do not know the devices are incoming")

    def decode() -> None:
        if r.name == "pci" or (r.name == "pci-v2" and f"{rel}.d/devices" in d.files):
            cls: Any = pci_abi.PciSerV9 if r.name == "pci" else pci_abi.PciSerV7
            ser = cls.decode(raw)
            node.fields["pci_ser"] = hexify("", ser)
            if r.name == "pci-v2":
                node.findings.append("pci-v2 names two layouts: the v6 fixed array and the v7 "
                                     "block set; decoded as the v7 block set")
            node.children.append(_pci_devices(d, f"{rel}.d/devices", ser.nr_devices))
        elif r.name in PCI_READERS:
            v6 = pci_abi.PciSerV6.decode(raw)
            used = v6.used()
            node.fields["pci_ser"] = {"max_nr_devices": v6.max_nr_devices,
                                      "nr_devices": v6.nr_devices,
                                      "devices": [_dev(x) for x in used]}
            if len(used) != v6.nr_devices:
                node.findings.append(f"nr_devices {v6.nr_devices} but {len(used)} slots in use")
        elif r.name in iommu_abi.IOMMU_ABIS:
            # the FLB compatible picks the iommu.h version (and so every record size)
            abi = iommu_abi.iommu_abi(r.name)
            ser = abi.flb.decode(raw)
            node.fields["iommu_flb_ser"] = hexify("", ser)
            node.fields["layout"] = abi.source
            version = getattr(ser, "version", None)  # ef754267 has no version word
            if abi.version is not None and version != abi.version:
                node.findings.append(f"version {version}, this ABI is {abi.version}")
            for part, cls2 in (("iommus", abi.hw), ("domains", abi.domain),
                               ("devices", abi.device)):
                node.children.append(_iommu_array(d, f"{rel}.d/{part}", cls2, r.name))
        else:
            node.fields["head"] = raw[:32].hex()
            node.findings.append(f"no luosim decoder for FLB {r.name!r}")
    return _guard(node, decode)


def _dev(x: pci_abi.PciDevSer) -> dict[str, Any]:
    return {"device": pci_abi.fmt_bdf(x.domain, x.bdf), "refcount": x.refcount}


def _pci_devices(d: _Dump, rel: str, nr: int) -> Node:
    node = Node(rel, "pci_dev_ser block", "kho-block-v1")
    raw = d.get(rel)
    if raw is None:
        if nr:
            node.findings.append(f"{nr} devices but the block was not dumped")
        return node

    def decode() -> None:
        nxt, entries = decode_block(raw, pci_abi.PciDevSer.SIZE, "pci_dev_ser block")
        devs = pci_abi.decode_dev_entries(entries)
        node.fields = {"next": hex(nxt), "devices": [_dev(x) for x in devs]}
        if not nxt and len(devs) != nr:
            node.findings.append(f"pci_ser.nr_devices {nr} but the chain holds {len(devs)}")
    return _guard(node, decode)


def _iommu_array(d: _Dump, rel: str, cls: Any, compatible: str) -> Node:
    node = Node(rel, f"{cls.__name__} array page", compatible)
    raw = d.get(rel)
    if raw is None:
        return node

    def decode() -> None:
        nxt, objs = iommu_abi.decode_array_page(raw, cls.SIZE, rel)
        items = [hexify("", cls.decode(o)) for o in objs]
        node.fields = {"next_array_phys": hex(nxt), "nr_objects": len(items), "objects": items}
    return _guard(node, decode)


def decode_kexec(folder: Path) -> Node:
    """One ``kexecN`` folder as a tree; files nobody reads become findings."""
    d = _Dump(folder)
    top = Node(folder.name, "hand-over")
    kho = _kho(d)
    luo, flb_pa = _luo(d)
    kho.children.append(luo)
    top.children.append(kho)
    top.children.append(_flbs(d, flb_pa))
    for rel in sorted(set(d.files) - d.used):
        top.findings.append(f"{rel}: not a file luosim's dump writes (not decoded)")
    return top


def inspect_dir(path: Path) -> Node:
    """A ``--dump-handover`` folder (``kexecN/`` children) or one ``kexecN`` folder."""
    if not path.is_dir():
        raise TreeError(f"{path}: not a directory")
    if (path / "kho_data").is_file():
        return decode_kexec(path)
    kexecs = sorted((p for p in path.iterdir() if p.is_dir() and (p / "kho_data").is_file()),
                    key=lambda p: (len(p.name), p.name))
    if not kexecs:
        raise TreeError(f"{path}: no kho_data here or in a sub-folder: not a "
                        "--dump-handover folder")
    top = Node(path.name or str(path), "dump")
    top.children = [decode_kexec(k) for k in kexecs]
    return top


def find_in_dump(file: Path) -> Node | None:
    """The decoded node of ``file`` when it lies in a dump folder (auto-detection
    by path, for blobs without a magic such as ``luo/flb/pci-v2``), else None."""
    file = file.resolve()
    for folder in file.parents:
        if (folder / "kho_data").is_file():
            rel = file.relative_to(folder).as_posix()
            if rel.startswith("kho/out/mem_map/"):  # one radix node: the map it belongs to
                rel = "kho/out/mem_map"
            stack = [decode_kexec(folder)]
            while stack:
                node = stack.pop()
                if node.path == rel:
                    return node
                stack.extend(node.children)
            return None
    return None


def count_findings(node: Node) -> int:
    return len(node.findings) + sum(count_findings(c) for c in node.children)


def render_tree(node: Node, console: Any) -> None:
    """Print like ``tree``: path, kind and ABI; fields; findings in yellow."""
    from rich.markup import escape
    from rich.tree import Tree

    def label(n: Node) -> str:
        abi = f" [dim]({escape(n.abi)})[/]" if n.abi else ""
        return f"[bold]{escape(n.path)}[/]  {escape(n.kind)}{abi}"

    def add_value(t: Any, key: str, value: Any) -> None:
        if isinstance(value, dict):
            sub = t.add(escape(key))
            for k, v in value.items():
                add_value(sub, str(k), v)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            sub = t.add(f"{escape(key)} [{len(value)}]")
            for i, v in enumerate(value):
                add_value(sub, f"[{i}]", v)
        else:
            t.add(f"{escape(key)} = {escape(str(value))}")

    def build(t: Any, n: Node) -> None:
        for k, v in n.fields.items():
            add_value(t, k, v)
        for f in n.findings:
            t.add(f"[yellow]finding:[/] {escape(f)}")
        for c in n.children:
            build(t.add(label(c)), c)

    root = Tree(label(node))
    build(root, node)
    console.print(root)
