"""Decode hand-over blobs: KHO root FDT, LUO FDT or struct, PCI FLB data,
memfd records, ``kho_data``, IOMMU FLB records (each iommu.h version) and
vfio-pci device records.  A corrupt blob is classified, never a crash.

Real kernels expose these under /sys/kernel/debug/kho/{in,out}/ (the root
``fdt`` and ``sub_fdts/*``); luosim writes the same bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from luosim.abi import iommu as iommu_abi
from luosim.abi import kexec_metadata as kexec_metadata_abi
from luosim.abi import kho as kho_abi
from luosim.abi import luo as luo_abi
from luosim.abi import memblock as memblock_abi
from luosim.abi import memfd as memfd_abi
from luosim.abi import pci as pci_abi
from luosim.abi import vfio as vfio_abi
from luosim.abi.errors import DecodeError

FDT_MAGIC = b"\xd0\x0d\xfe\xed"
#: Fixed-size records decoded by their codec (``--as KIND``); the codec names its header.
RECORDS: dict[str, Any] = {
    "iommu-flb": iommu_abi.IommuFlbSer,                  # 07a49313 / 22fa8f30, 32 B
    "iommu-flb-v1": iommu_abi.IommuFlbSerV1,             # ef754267, 24 B
    "iommu-domain": iommu_abi.IommuDomainSer,            # ef754267 / 07a49313, 37 B
    "iommu-domain-pran": iommu_abi.IommuDomainSerPran,   # 22fa8f30, 40 B
    "iommu-device": iommu_abi.IommuDeviceSer,            # ef754267, 56 B
    "iommu-device-pran": iommu_abi.IommuDeviceSerPran,   # 22fa8f30, 72 B
    "iommu-device-generic": iommu_abi.IommuDeviceSerGeneric,  # 07a49313, 40 B
    "iommu-hw": iommu_abi.IommuHwSer,                    # ef754267 / 22fa8f30, 112 B
    "iommu-hw-generic": iommu_abi.IommuHwSerGeneric,     # 07a49313, 24 B
    "vfio-pci-v1": vfio_abi.VfioPciCoreDeviceSer,        # VFIO v5, 6 B
    "vfio-pci-v1-iommu": vfio_abi.VfioPciCoreDeviceSerIommuV1,  # d835969e + token, 9 B
    "vfio-pci-v2": vfio_abi.VfioPciCoreDeviceSerV2,      # anolis 5a52741a, 11 B
}
KINDS = ("auto", "kho-fdt", "luo-fdt", "luo-ser", "pci-v6", "pci-v7", "pci-v9", "memfd",
         "kho-data", "kexec-metadata", "memblock", *RECORDS)


class InspectError(Exception):
    def __init__(self, classification: str, message: str) -> None:
        super().__init__(message)
        self.classification = classification


def _fields(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, int) and not isinstance(v, bool):
            pointer = f.name.endswith(("_pa", "_phys")) or f.name in (
                "files", "devices", "first", "next", "data", "reg_phys", "root_table",
                "pasid_table", "restored_domain")
            out[f.name] = hex(v) if pointer else v
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            out[f.name] = _fields(v)
        elif isinstance(v, bytes):
            out[f.name] = v.hex()
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            out[f.name] = _fields(v)
        elif isinstance(v, (list, tuple)):
            out[f.name] = [_fields(x) if dataclasses.is_dataclass(x) else x for x in v]
        else:
            out[f.name] = v
    return out


def _fdt_compatible(data: bytes) -> str:
    from luosim.abi.fdt import parse
    view = parse("fdt", data)
    try:
        return view.prop_str("/", "compatible")
    except DecodeError:
        return ""


def _kho_fdt(data: bytes) -> dict[str, Any]:
    root = kho_abi.decode_root_fdt(data)
    out: dict[str, Any] = {"kind": "kho-fdt", "compatible": root.compatible,
                           "preserved-memory-map": hex(root.mem_map_pa),
                           "subtrees": {k: hex(v) for k, v in root.subtrees.items()}}
    if root.compatible in kho_abi.KHO_BLOB_SIZE_VERSIONS:  # kho-v3+: -1 = missing
        out["blob-size"] = dict(root.sizes)
    return out


def _kexec_metadata(data: bytes) -> dict[str, Any]:
    meta = kexec_metadata_abi.read_incoming(data, len(data))
    return {"kind": "kexec-metadata", **_fields(meta)}


def _memblock(data: bytes) -> dict[str, Any]:
    regions = memblock_abi.decode_memblock_fdt(data)
    return {"kind": "memblock", "compatible": memblock_abi.MEMBLOCK_KHO_NODE_COMPATIBLE,
            "reserve_mem": {n: {"start": hex(r.start), "size": r.size}
                            for n, r in regions.items()}}


def _luo_fdt(data: bytes) -> dict[str, Any]:
    try:
        fdt = luo_abi.decode_luo_fdt(data, require_flb=True)
    except DecodeError:  # a P0 hand-over has no luo-flb node
        fdt = luo_abi.decode_luo_fdt(data, require_flb=False)
    out = {"kind": "luo-fdt", "compatible": luo_abi.LUO_FDT_COMPATIBLE}
    out.update(_fields(fdt))
    return out


def _luo_ser(data: bytes) -> dict[str, Any]:
    ser = luo_abi.decode_luo_v5(data)
    return {"kind": "luo-ser", **_fields(ser)}


def _pci(version: str) -> Callable[[bytes], dict[str, Any]]:
    def decode(data: bytes) -> dict[str, Any]:
        cls: Any = {"pci-v6": pci_abi.PciSerV6, "pci-v7": pci_abi.PciSerV7,
                    "pci-v9": pci_abi.PciSerV9}[version]
        ser = cls.decode(data)
        return {"kind": version, **_fields(ser)}
    return decode


def _memfd(data: bytes) -> dict[str, Any]:
    cls: Any = memfd_abi.MemfdLuoSerV2 if len(data) >= memfd_abi.MemfdLuoSerV2.SIZE \
        else memfd_abi.MemfdLuoSerV1
    ser = cls.decode(data)
    out = {"kind": "memfd", **_fields(ser)}
    findings = memfd_findings(ser)
    if findings:
        out["findings"] = findings
    return out


MAX_PAGE_ORDER = 10  # include/linux/mmzone.h (x86-64 default, CONFIG_ARCH_FORCE_MAX_ORDER unset)
FOLIO_SER_SIZE = 16  # struct memfd_luo_folio_ser, include/linux/kho/abi/memfd.h


def memfd_findings(ser: Any) -> list[str]:
    """What no kernel would have written into a ``memfd_luo_ser`` (each one line).

    The packed struct accepts any bytes, so a blob that is not a memfd
    hand-over decodes; these relations between its fields tell it apart.
    """
    out: list[str] = []
    page = memfd_abi.PAGE_SIZE
    if ser.pos > ser.size:
        out.append(f"pos {ser.pos} is beyond size {ser.size}")
    if ser.size > 1 << 46:
        out.append(f"size {ser.size} is larger than any memfd (2^46 bytes of address space)")
    pages = -(-ser.size // page)
    if ser.nr_folios > pages:
        out.append(f"nr_folios {ser.nr_folios} is more than the {pages} pages of size "
                   f"{ser.size}")
    vm = ser.folios
    if ser.nr_folios and not vm.first:
        out.append(f"nr_folios {ser.nr_folios} but folios.first is 0 (no folio array)")
    if vm.first % page:
        out.append(f"folios.first {vm.first:#x} is not page aligned")
    if vm.order > MAX_PAGE_ORDER:
        out.append(f"folios.order {vm.order} is above MAX_PAGE_ORDER {MAX_PAGE_ORDER}")
    need = -(-ser.nr_folios * FOLIO_SER_SIZE // page)
    if vm.total_pages < need:
        out.append(f"folios.total_pages {vm.total_pages} cannot hold {ser.nr_folios} folio "
                   f"records ({need} pages)")
    if isinstance(ser, memfd_abi.MemfdLuoSerV2):
        if ser.unknown_seals:
            out.append(f"seals {ser.seals:#x} has unknown bits {ser.unknown_seals:#x}")
        if ser.flags:
            out.append(f"flags {ser.flags:#x} must be 0")
    return out


def _kho_data(data: bytes) -> dict[str, Any]:
    return {"kind": "kho-data", **_fields(kho_abi.KhoData.decode(data))}


def _record(kind: str) -> Callable[[bytes], dict[str, Any]]:
    cls = RECORDS[kind]

    def decode(data: bytes) -> dict[str, Any]:
        ser = cls.decode(data, 0, kind)
        rep: dict[str, Any] = {"kind": kind, "struct": cls.C_NAME, "size": cls.SIZE,
                               "source": cls.SOURCE}
        compat = getattr(cls, "COMPATIBLE", None)
        if compat:
            rep["compatible"] = compat
        rep.update(_fields(ser))
        if len(data) > cls.SIZE:
            rep["trailing_bytes"] = len(data) - cls.SIZE
        return rep
    return decode


DECODERS: dict[str, Callable[[bytes], dict[str, Any]]] = {
    "kho-fdt": _kho_fdt, "luo-fdt": _luo_fdt, "luo-ser": _luo_ser, "pci-v6": _pci("pci-v6"),
    "pci-v7": _pci("pci-v7"), "pci-v9": _pci("pci-v9"), "memfd": _memfd, "kho-data": _kho_data,
    **{k: _record(k) for k in RECORDS},
    "kexec-metadata": _kexec_metadata, "memblock": _memblock,
}


def detect(data: bytes) -> str:
    """Guess a blob's kind from its magic or compatible string."""
    if data[:4] == FDT_MAGIC:
        compat = _fdt_compatible(data)
        if compat.startswith("kho-"):
            return "kho-fdt"
        if compat.startswith("luo-"):
            return "luo-fdt"
        if compat.startswith("memblock-"):
            return "memblock"
        raise InspectError("unknown-fdt", f"FDT with unknown root compatible {compat!r}")
    if data[:3] == b"luo":
        return "luo-ser"
    if len(data) == kho_abi.KhoData.SIZE:
        return "kho-data"
    if len(data) == kexec_metadata_abi.SIZE:  # the kexec-metadata blob (debugfs sub_fdts)
        return "kexec-metadata"
    raise InspectError("unknown", "not an FDT, LUO struct or kho_data: pass --as KIND "
                                  f"({', '.join(KINDS[1:])})")


def decode_blob(data: bytes, kind: str = "auto") -> dict[str, Any]:
    if kind not in KINDS:
        raise InspectError("bad-argument", f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    try:
        if kind == "auto":
            kind = detect(data)
        return DECODERS[kind](data)
    except DecodeError as exc:
        raise InspectError(exc.kind, str(exc)) from None


def render_report(report: dict[str, Any], console: Console) -> None:
    tree = Tree(f"[bold]{report.get('kind', 'blob')}[/]")

    def add(node: Tree, value: Any, label: str) -> None:
        if isinstance(value, dict):
            sub = node.add(escape(label))
            for k, v in value.items():
                add(sub, v, str(k))
        elif isinstance(value, list):
            sub = node.add(escape(f"{label} [{len(value)}]"))
            for i, v in enumerate(value):
                add(sub, v, f"[{i}]")
        else:
            node.add(escape(f"{label} = {value}"))

    for k, v in report.items():
        if k != "kind":
            add(tree, v, k)
    console.print(tree)
