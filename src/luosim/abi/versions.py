"""Every hand-over ABI version luosim has a codec for, per layer, with its source.

The one place profiles (``luosim.kernel.profiles``) take their layer
versions and citations from: each entry is read off the codec registries
themselves — the KHO root versions of :mod:`luosim.abi.kho`, the LUO and
memfd codecs, the PCI ``pci_ser`` codecs, :data:`luosim.abi.vfio.VFIO_LAYOUTS`,
:data:`luosim.abi.iommu.IOMMU_ABIS` — and the source is the codec's
``SOURCE`` (the tree, commit and header its C declaration follows).  A new
codec added to one of those registries appears here without an edit, and
``tests/profiles`` then fails until some profile reaches it.

Layers whose wire format is an FDT or has no ``CStruct`` (KHO root,
kexec-metadata, memblock, iommufd) name their source here.
"""

from __future__ import annotations

from luosim.abi import iommu, kho, luo, memfd, pci, vfio
from luosim.abi.memblock import MEMBLOCK_KHO_NODE_COMPATIBLE

#: KHO root FDT compatible -> where that version is read (no CStruct: an FDT).
KHO_ROOT_SOURCES: dict[str, str] = {
    "kho-v2": "torvalds/linux@3f2ad900 include/linux/kho/abi/kexec_handover.h",
    "kho-v3": "gregkh/linux@9d87d0fc include/linux/kho/abi/kexec_handover.h",
    "kho-v4": ("LUO linked-block series v7 07/13 (kexec_handover.h kho-v3 -> kho-v4 with "
               "block.h, torvalds/linux@637315cb include/linux/kho/abi/block.h)"),
}
assert tuple(KHO_ROOT_SOURCES) == kho.KHO_ROOT_VERSIONS

KEXEC_METADATA_H = "torvalds/linux@40735a68 include/linux/kho/abi/kexec_metadata.h"
MEMBLOCK_H = "torvalds/linux@c17ee635 include/linux/kho/abi/memblock.h"


def _luo() -> dict[str, str]:
    # luo-v1: the FDT + session/file records of cc4adab1, with the FLB node of the FLB series
    return {luo.LUO_FDT_COMPATIBLE: f"{luo.LuoSessionSer.SOURCE}; FLB: {luo.LuoFlbSer.SOURCE}",
            luo.LUO_V5_COMPATIBLE: luo.LuoSer.SOURCE}


def _pci() -> dict[str, str]:
    # PciSerV6 wraps the header codec (variable length): its SOURCE is pci.PCI_V6
    return {"v6": pci.PCI_V6, "v7": pci.PciSerV7.SOURCE, "v9": pci.PciSerV9.SOURCE}


#: layer -> ABI version -> source (tree, commit, header), in the order of
#: ``luosim.kernel.profiles.LAYERS``.
ABI_VERSIONS: dict[str, dict[str, str]] = {
    "kho": dict(KHO_ROOT_SOURCES),
    "luo": _luo(),
    "memfd": {memfd.MEMFD_LUO_FH_COMPATIBLE_V1: memfd.MemfdLuoSerV1.SOURCE,
              memfd.MEMFD_LUO_FH_COMPATIBLE_V2: memfd.MemfdLuoSerV2.SOURCE},
    "pci": _pci(),
    "vfio": {name: cls.SOURCE for name, cls in vfio.VFIO_LAYOUTS.items()},
    "iommu": {compat: abi.source for compat, abi in iommu.IOMMU_ABIS.items()},
    "iommufd": {iommu.IOMMUFD_LUO_FH_COMPATIBLE: iommu.IOMMUFD_H},
    "kexec-metadata": {"v1": KEXEC_METADATA_H},
    "memblock": {MEMBLOCK_KHO_NODE_COMPATIBLE: MEMBLOCK_H},
}


def source_of(layer: str, version: str) -> str:
    """The citation of ``version`` of ``layer`` (KeyError: no codec for it)."""
    return ABI_VERSIONS[layer][version]
