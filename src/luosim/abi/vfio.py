"""vfio-pci file-handler ABI (spec pci.md §6.1).

Models ``struct vfio_pci_core_device_ser`` from include/linux/kho/abi/vfio_pci.h
as posted in the vfio/pci live-update series v5 (compatible ``vfio-pci-v1``),
and the variant of the IOMMU series that appends ``struct vfio_iommufd_ser
{u32 token}``.  One KHO-preserved allocation per preserved cdev file; its
physical address is the LUO file record's ``data``.

History (not modelled as codecs): v1/v2 ``{u16 bdf; u16 domain}``; v3
``{u32 domain; u16 bdf; u8 reset_works}`` under ``vfio-pci-v2``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from luosim.abi.block import FieldSpec, check_uint, unpack_fields

VFIO_PCI_LUO_FH_COMPATIBLE = "vfio-pci-v1"


def _u(field: str, value: int, bits: int) -> int:
    check_uint(field, value, bits)
    return value


@dataclass(frozen=True)
class VfioPciCoreDeviceSer:
    """Models ``struct vfio_pci_core_device_ser`` (vfio v5, include/linux/kho/abi/vfio_pci.h).

    Packed, 6 bytes: ``domain`` u32 @0 (PCI segment), ``bdf`` u16 @4.
    """

    domain: int
    bdf: int

    COMPATIBLE: ClassVar[str] = VFIO_PCI_LUO_FH_COMPATIBLE
    SIZE: ClassVar[int] = 6
    _ST: ClassVar[struct.Struct] = struct.Struct("<IH")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (("domain", 0, 4), ("bdf", 4, 2))

    def encode(self) -> bytes:
        return self._ST.pack(_u("vfio_pci_core_device_ser.domain", self.domain, 32),
                             _u("vfio_pci_core_device_ser.bdf", self.bdf, 16))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "vfio_pci_core_device_ser") -> Self:
        domain, bdf = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS,
                                    "vfio_pci_core_device_ser")
        return cls(domain, bdf)


@dataclass(frozen=True)
class VfioPciCoreDeviceSerIommu:
    """v5 ``struct vfio_pci_core_device_ser`` with ``struct vfio_iommufd_ser`` appended.

    Packed, 10 bytes: ``domain`` u32 @0, ``bdf`` u16 @4, ``iommufd_ser.token``
    u32 @6 (the iommufd's LUO token).  Model assumption: the IOMMU v1 patch
    appended ``vfio_iommufd_ser`` to the older vfio layout (see
    :class:`VfioPciCoreDeviceSerIommuV1`); its placement on top of the v5
    layout is UNCONFIRMED (spec pci.md §6.1).
    """

    domain: int
    bdf: int
    token: int

    COMPATIBLE: ClassVar[str] = VFIO_PCI_LUO_FH_COMPATIBLE
    SIZE: ClassVar[int] = 10
    _ST: ClassVar[struct.Struct] = struct.Struct("<IHI")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (("domain", 0, 4), ("bdf", 4, 2),
                                                 ("iommufd_ser.token", 6, 4))

    def encode(self) -> bytes:
        return self._ST.pack(_u("vfio_pci_core_device_ser.domain", self.domain, 32),
                             _u("vfio_pci_core_device_ser.bdf", self.bdf, 16),
                             _u("vfio_pci_core_device_ser.iommufd_ser.token", self.token, 32))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "vfio_pci_core_device_ser") -> Self:
        domain, bdf, token = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS,
                                           "vfio_pci_core_device_ser")
        return cls(domain, bdf, token)


@dataclass(frozen=True)
class VfioPciCoreDeviceSerIommuV1:
    """``struct vfio_pci_core_device_ser`` as extended by the IOMMU v1 series (Feb 2026).

    Packed, 9 bytes, on the vfio v3 layout (include/linux/kho/abi/vfio_pci.h
    at that time): ``bdf`` u16 @0, ``domain`` u16 @2, ``reset_works`` u8 @4,
    ``iommufd_ser.token`` u32 @5.
    """

    bdf: int
    domain: int
    reset_works: int
    token: int

    COMPATIBLE: ClassVar[str] = VFIO_PCI_LUO_FH_COMPATIBLE
    SIZE: ClassVar[int] = 9
    _ST: ClassVar[struct.Struct] = struct.Struct("<HHBI")
    _FIELDS: ClassVar[tuple[FieldSpec, ...]] = (("bdf", 0, 2), ("domain", 2, 2),
                                                 ("reset_works", 4, 1), ("iommufd_ser.token", 5, 4))

    def encode(self) -> bytes:
        return self._ST.pack(_u("vfio_pci_core_device_ser.bdf", self.bdf, 16),
                             _u("vfio_pci_core_device_ser.domain", self.domain, 16),
                             _u("vfio_pci_core_device_ser.reset_works", self.reset_works, 8),
                             _u("vfio_pci_core_device_ser.iommufd_ser.token", self.token, 32))

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "vfio_pci_core_device_ser") -> Self:
        bdf, domain, rw, token = unpack_fields(what, cls._ST, buf, offset, cls._FIELDS,
                                               "vfio_pci_core_device_ser")
        return cls(bdf, domain, rw, token)


assert struct.calcsize("<IH") == VfioPciCoreDeviceSer.SIZE
assert struct.calcsize("<IHI") == VfioPciCoreDeviceSerIommu.SIZE
assert struct.calcsize("<HHBI") == VfioPciCoreDeviceSerIommuV1.SIZE
