"""vfio-pci file-handler ABI (spec pci.md §6.1 and its "Corrections").

One KHO-preserved allocation per preserved cdev file holds ``struct
vfio_pci_core_device_ser`` (include/linux/kho/abi/vfio_pci.h); its physical
address is the LUO file record's ``data``.  Three layouts are modelled, each
from one source:

* ``vfio-pci-v1``, 6 bytes ``{u32 domain; u16 bdf}``: the VFIO series v5
  (lore <20260714151505.3466855-1-vipinsh@google.com>; no repository found).
  The PCI v6/v7/v9 profiles use it.
* ``vfio-pci-v1`` + token, 9 bytes ``{u16 bdf; u16 domain; u8 reset_works;
  struct vfio_iommufd_ser}``: samikhawaja/linux d835969e vfio_pci.h with the
  IOMMU v1 patch that appends ``vfio_iommufd_ser`` (lore
  <20260203220948.2176157-1-skhawaja@google.com>).
* ``vfio-pci-v2``, 11 bytes ``{u32 domain; u16 bdf; u8 reset_works; struct
  vfio_iommufd_ser}``: jackYoung0915/anolis-cloud-kernel 5a52741a — the one
  tree with a token in the record (token at 7).

The 10-byte ``vfio-pci-v1`` record with a token at 6 that luosim modelled
before exists in no tree and is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

from luosim.abi.cdecl import CStruct, codec, declare

VFIO_V5 = "VFIO series v5 (lore 20260714151505.3466855-1-vipinsh@google.com) vfio_pci.h"
VFIO_SAMI = ("samikhawaja/linux@d835969e include/linux/kho/abi/vfio_pci.h + IOMMU v1 "
             "vfio_iommufd_ser (lore 20260203220948.2176157-1-skhawaja@google.com)")
VFIO_ANOLIS = "jackYoung0915/anolis-cloud-kernel@5a52741a include/linux/kho/abi/vfio_pci.h"

#: The compatible of the v5 layout (and of the samikhawaja d835969e layout).
VFIO_PCI_LUO_FH_COMPATIBLE = "vfio-pci-v1"
VFIO_PCI_LUO_FH_COMPATIBLE_V2 = "vfio-pci-v2"

declare("""
struct vfio_iommufd_ser {
    u32 token;
} __packed;
struct vfio_pci_core_device_ser {
    u32 domain;
    u16 bdf;
} __packed;
struct vfio_pci_core_device_ser__iommu_v1 {
    u16 bdf;
    u16 domain;
    u8 reset_works;
    struct vfio_iommufd_ser iommufd_ser;
} __packed;
struct vfio_pci_core_device_ser__v2 {
    u32 domain;
    u16 bdf;
    u8 reset_works;
    struct vfio_iommufd_ser iommufd_ser;
} __packed;
""")


@codec("vfio_pci_core_device_ser", VFIO_V5)
@dataclass(frozen=True)
class VfioPciCoreDeviceSer(CStruct):
    """``vfio-pci-v1`` (VFIO v5): PCI segment, ``bus << 8 | devfn``."""

    domain: int
    bdf: int

    COMPATIBLE = VFIO_PCI_LUO_FH_COMPATIBLE


@codec("vfio_pci_core_device_ser__v2", VFIO_ANOLIS)
@dataclass(frozen=True)
class VfioPciCoreDeviceSerV2(CStruct):
    """``vfio-pci-v2``: segment, bdf, reset_works, iommufd token at 7 (11 bytes)."""

    domain: int
    bdf: int
    reset_works: int
    token: int

    COMPATIBLE = VFIO_PCI_LUO_FH_COMPATIBLE_V2


@codec("vfio_pci_core_device_ser__iommu_v1", VFIO_SAMI)
@dataclass(frozen=True)
class VfioPciCoreDeviceSerIommuV1(VfioPciCoreDeviceSerV2):
    """``vfio-pci-v1`` as extended by the IOMMU v1 series: bdf @0, domain u16 @2,
    reset_works @4, token (the iommufd's LUO token) @5; 9 bytes."""

    COMPATIBLE = VFIO_PCI_LUO_FH_COMPATIBLE


#: Layout a vfio-pci kernel writes and reads, by ABI name (a profile picks one).
VFIO_LAYOUTS: dict[str, type[VfioPciCoreDeviceSer] | type[VfioPciCoreDeviceSerV2]] = {
    "vfio-pci-v1": VfioPciCoreDeviceSer,
    "vfio-pci-v1-iommu": VfioPciCoreDeviceSerIommuV1,
    "vfio-pci-v2": VfioPciCoreDeviceSerV2,
}
