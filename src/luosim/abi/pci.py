"""PCI FLB ABI for the three series profiles (spec pci.md §3).

Models include/linux/kho/abi/pci.h as posted in the PCI live-update series:

* **v6** (``pci-v1`` → ``pci-v2`` → ``pci-v3``): ``struct pci_ser`` is an
  8-byte header ``{u32 max_nr_devices; u32 nr_devices}`` followed by a fixed
  array of ``max_nr_devices`` 8-byte ``struct pci_dev_ser`` slots (holes have
  refcount 0; not sorted).
* **v7** (``pci-v1`` → ``pci-v2``): 12-byte packed ``{u32 nr_devices; u64
  devices}``; ``devices`` is the head of a KHO block chain of ``pci_dev_ser``
  (510 per block, see :mod:`luosim.abi.block`).
* **v9** (``pci`` + ``version`` 1): 16-byte ``{u32 version; u32 nr_devices;
  u64 devices}``.

The FLB record's ``data`` is the physical address of ``struct pci_ser``.
The same compatible string names different layouts in v6 and v7 (``pci-v1``,
``pci-v2``): a profile must pick the codec by its own version, never by the
string alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from luosim.abi.block import block_capacity, check_uint
from luosim.abi.cdecl import CStruct, codec, declare
from luosim.abi.errors import DecodeError

PCI_V6 = ("linux-mm/linux-mm@3bb8a42d include/linux/kho/abi/pci.h (the v6-series layout, "
          "\"pci-v2\"; PCI v6 lore 20260522202410.3104264-1-dmatlack@google.com)")
PCI_V7 = ("PCI series v7 include/linux/kho/abi/pci.h (lore "
          "20260710212616.1351130-1-dmatlack@google.com)")
PCI_V9 = "PCI v9-era include/linux/kho/abi/pci.h (lore 20260918200640.887030-1-dmatlack@google.com)"

PCI_V6_COMPATIBLES = ("pci-v1", "pci-v2", "pci-v3")
PCI_V6_COMPATIBLE = "pci-v3"  # after patch 6/12 (bridges auto-preserved)
PCI_V7_COMPATIBLES = ("pci-v1", "pci-v2")
PCI_V7_COMPATIBLE = "pci-v2"  # after the bridge patch
PCI_V9_COMPATIBLE = "pci"
PCI_V9_VERSION = 1

#: ``pci_dev_ser`` entries per 4 KiB KHO block: (4096 - 16) // 8.
PCI_DEVS_PER_BLOCK = 510


def _u(field: str, value: int, bits: int) -> int:
    check_uint(field, value, bits)
    return value


# ----------------------------------------------------------------- identity helpers


def bdf(bus: int, dev: int, fn: int) -> int:
    """``PCI_DEVID``-style 16-bit id: ``bus << 8 | dev << 3 | fn``."""
    _u("bus", bus, 8)
    _u("device", dev, 5)
    _u("function", fn, 3)
    return bus << 8 | dev << 3 | fn


def split_bdf(value: int) -> tuple[int, int, int]:
    """Inverse of :func:`bdf`: ``(bus, device, function)``."""
    _u("bdf", value, 16)
    return value >> 8, (value >> 3) & 0x1F, value & 0x7


def key(domain: int, bdf_: int) -> int:
    """Incoming lookup key ``(unsigned long)domain << 16 | bdf`` (64-bit kernels only)."""
    return _u("domain", domain, 32) << 16 | _u("bdf", bdf_, 16)


def fmt_bdf(domain: int, bdf_: int) -> str:
    """``"0000:03:00.0"`` (``pci_name()`` format)."""
    bus, dev, fn = split_bdf(bdf_)
    _u("domain", domain, 32)
    return f"{domain:04x}:{bus:02x}:{dev:02x}.{fn:x}"


_BDF_RE = re.compile(r"([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")


def parse_bdf(text: str) -> tuple[int, int]:
    """``"0000:03:00.0"`` → ``(domain, bdf)``; ``ValueError`` on malformed text."""
    m = _BDF_RE.fullmatch(text)
    if not m:
        raise ValueError(f"not a PCI address DDDD:BB:DD.F: {text!r}")
    domain, bus, dev, fn = (int(g, 16) for g in m.groups())
    if dev > 0x1F:
        raise ValueError(f"device number {dev:#x} > 0x1f in {text!r}")
    return domain, bdf(bus, dev, fn)


# ----------------------------------------------------------------- structs


declare("""
struct pci_dev_ser {
    u32 domain;
    u16 bdf;
    u16 refcount;
} __packed;
struct pci_ser__v6 {
    u32 max_nr_devices;
    u32 nr_devices;
    /* struct pci_dev_ser devices[max_nr_devices]; */
} __packed;
struct pci_ser__v7 {
    u32 nr_devices;
    u64 devices;
} __packed;
struct pci_ser {
    u32 version;
    u32 nr_devices;
    u64 devices;
} __packed;
""")


@codec("pci_dev_ser", f"{PCI_V6}; {PCI_V7}; {PCI_V9}")
@dataclass(frozen=True)
class PciDevSer(CStruct):
    """Device record (8 bytes, all profiles): PCI segment, ``bus << 8 | devfn``,
    ``refcount`` (0 = free slot; pci-v3 / v7 pci-v2: preserved devices at or below)."""

    domain: int
    bdf: int
    refcount: int

    @property
    def key(self) -> int:
        return key(self.domain, self.bdf)


@codec("pci_ser__v6", PCI_V6, what="pci_ser v6")
@dataclass(frozen=True)
class PciV6SerHeader(CStruct):
    max_nr_devices: int
    nr_devices: int


@dataclass(frozen=True)
class PciSerV6:
    """v6 ``struct pci_ser`` (pci-v1..v3): 8-byte header then ``devices[max_nr_devices]``.

    ``SIZE`` is the header; the encoded size is ``8 + 8 * max``.  Slots with
    refcount 0 are holes.  ``nr_devices`` is stored as given (a model may
    need to write an inconsistent value).
    """

    max_nr_devices: int
    nr_devices: int
    devices: tuple[PciDevSer, ...]

    SIZE: ClassVar[int] = PciV6SerHeader.SIZE
    HEADER_SIZE: ClassVar[int] = PciV6SerHeader.SIZE
    SOURCE: ClassVar[str] = PCI_V6

    @property
    def encoded_size(self) -> int:
        return self.HEADER_SIZE + PciDevSer.SIZE * self.max_nr_devices

    def encode(self) -> bytes:
        head = PciV6SerHeader(self.max_nr_devices, self.nr_devices).encode()
        if len(self.devices) != self.max_nr_devices:
            raise ValueError(f"pci_ser.devices: {len(self.devices)} slots, "
                             f"max_nr_devices is {self.max_nr_devices}")
        return head + PciDevSer.encode_array(self.devices)

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "pci_ser v6") -> Self:
        hdr = PciV6SerHeader.decode(buf, offset, what)
        mx = hdr.max_nr_devices
        start = offset + cls.HEADER_SIZE
        if start + mx * PciDevSer.SIZE > len(buf):
            raise DecodeError(what, start, "pci_ser.devices",
                              f"max_nr_devices {mx} needs {mx * PciDevSer.SIZE} bytes, blob has "
                              f"{max(0, len(buf) - start)}", kind="truncated")
        devs = PciDevSer.decode_array(bytes(buf[start:start + mx * PciDevSer.SIZE]), mx, what)
        return cls(mx, hdr.nr_devices, tuple(devs))

    def used(self) -> list[PciDevSer]:
        """Slots with refcount > 0, in slot order (readers must skip holes)."""
        return [d for d in self.devices if d.refcount]


@codec("pci_ser__v7", PCI_V7, what="pci_ser v7")
@dataclass(frozen=True)
class PciSerV7(CStruct):
    """v7 ``struct pci_ser`` (pci-v1/pci-v2, 12 bytes): ``nr_devices``, ``devices`` @4
    (first KHO block header of ``pci_dev_ser`` entries, 0 if never used)."""

    nr_devices: int
    devices: int


@codec("pci_ser", PCI_V9, what="pci_ser v9")
@dataclass(frozen=True)
class PciSerV9(CStruct):
    """v9-era ``struct pci_ser`` (``pci``, 16 bytes): ``version`` (= 1; never moves),
    ``nr_devices``, ``devices`` (block-chain head).  The version is decoded, not
    checked: a mismatch is a panic decided by the caller."""

    version: int
    nr_devices: int
    devices: int


assert block_capacity(PciDevSer.SIZE) == PCI_DEVS_PER_BLOCK


def decode_dev_entries(entries: Sequence[bytes], what: str = "pci_dev_ser") -> list[PciDevSer]:
    """Decode the raw entries returned by :func:`luosim.abi.block.walk_chain`."""
    return [PciDevSer.decode(e, 0, what) for e in entries]
