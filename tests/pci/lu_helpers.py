"""Helpers for the PCI live-update tests (spec pci.md §1-§5, §9, §10).

A minimal driver stands in for vfio-pci: :class:`PciDevFile` is a file
that wraps a ``pci_dev``; :class:`PciTestHandler` preserves such files by
calling the PCI core's live-update API (``pci_liveupdate_preserve`` /
``unpreserve`` / ``finish``) and linking the PCI FLB with
``pci_liveupdate_register_flb``.  Its serialized state is one KHO-preserved
``{u32 domain; u16 bdf}`` per file, so the next kernel finds the device by
its address, from memory only.  :class:`MarkerFlb` is "another subsystem's
FLB" (a u64 in a preserved page) linked to the same handler.
"""

from __future__ import annotations

import errno
import struct
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import pytest

from luosim.errors import KernelError
from luosim.faults import Fault
from luosim.hw.machine import Machine
from luosim.kernel.kernel import Kernel
from luosim.kernel.liveupdate.file import FileHandler, FileOpArgs
from luosim.kernel.liveupdate.flb import Flb, FlbOpArgs
from luosim.kernel.liveupdate.uapi import LiveupdateDevice, Session
from luosim.kernel.pci.probe import PciDev
from luosim.kernel.vfs import File

PROFILES = ("v6", "v7", "v9")
TEST_FH = "luosim-pci-test-v1"
MARKER_FLB = "luosim-marker-flb-v1"
MARKER_VALUE = 0x0DDBA11C0FFEE123
SESSION = "pci"
_DEV_ST = struct.Struct("<IH")


def switch_topology(*, numbering: str = "sparse", extra_ports: list[dict[str, Any]] | None = None,
                    root_extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Root port -> switch with three downstream ports (nvme0, nvme1, nic), a second
    root port with a gpu and a root-complex endpoint.  ``sparse`` firmware numbering
    leaves two spare bus numbers at the end of every window, so Linux's own
    numbering (``pci=assign-busses``) differs from it."""
    ports: list[dict[str, Any]] = [
        {"slot": 0, "name": "dp0", "children": [{"slot": 0, "name": "nvme0", "acs": True}]},
        {"slot": 1, "name": "dp1", "children": [{"slot": 0, "name": "nvme1", "acs": True}]},
        {"slot": 2, "name": "dp2", "children": [{"slot": 0, "name": "nic", "acs": True}]},
    ]
    ports += extra_ports or []
    devices: list[dict[str, Any]] = [
        {"slot": 0, "kind": "endpoint", "name": "hostdev"},
        {"slot": 1, "kind": "root-port", "name": "rp1", "children": [
            {"slot": 0, "kind": "switch", "name": "sw", "ports": ports}]},
        {"slot": 2, "kind": "root-port", "name": "rp2", "children": [
            {"slot": 0, "name": "gpu"}]},
    ]
    devices += root_extra or []
    return {"memory": "4GiB", "segments": [{"segment": 0, "firmware_numbering": numbering,
                                            "firmware_bus_gap": 2, "devices": devices}]}


class PciDevFile(File):
    """A file standing for one PCI device (what a vfio-pci cdev is to vfio)."""

    def __init__(self, kernel: Kernel, dev: PciDev, *, install_fd: bool = True) -> None:
        super().__init__(kernel, f"pcidev:{dev.name}", install_fd=install_fd)
        self.dev = dev


class PciTestHandler(FileHandler):
    """A minimal PCI driver's live-update file handler."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(TEST_FH)
        self.kernel = kernel
        self.skip_pci_finish = False
        """Model a driver that never calls pci_liveupdate_finish()."""

    def can_preserve(self, file: File) -> bool:
        return isinstance(file, PciDevFile) and file.kernel is self.kernel

    def preserve(self, args: FileOpArgs) -> None:
        f = cast(PciDevFile, args.file)
        k = self.kernel
        k.pci_lu.preserve(f.dev)
        try:
            pa = k.kho.alloc_preserve(_DEV_ST.size)
        except KernelError:
            k.pci_lu.unpreserve(f.dev)
            raise
        k.machine.memory.write(pa, _DEV_ST.pack(f.dev.domain, f.dev.bdf))
        args.serialized_data = pa

    def unpreserve(self, args: FileOpArgs) -> None:
        f = cast(PciDevFile, args.file)
        self.kernel.pci_lu.unpreserve(f.dev)
        self.kernel.kho.unpreserve_free(args.serialized_data)

    def retrieve(self, args: FileOpArgs) -> None:
        k = self.kernel
        domain, bdf = _DEV_ST.unpack(k.machine.memory.read(args.serialized_data, _DEV_ST.size))
        dev = k.pci.find_bdf(domain, bdf)
        if dev is None:
            raise KernelError(errno.ENODEV, f"no device {domain:04x}:{bdf:04x}")
        args.file = PciDevFile(k, dev, install_fd=False)

    def finish(self, args: FileOpArgs) -> None:
        k = self.kernel
        if isinstance(args.file, PciDevFile) and not self.skip_pci_finish:
            k.pci_lu.finish(args.file.dev)
        k.kho.restore_free(args.serialized_data)


class MarkerFlb(Flb):
    """Another subsystem's FLB: a u64 in a KHO-preserved page."""

    def __init__(self) -> None:
        super().__init__(MARKER_FLB)

    def preserve(self, args: FlbOpArgs) -> None:
        k = cast(Kernel, args.kernel)
        pa = k.kho.alloc_preserve(8)
        k.machine.memory.write_u64(pa, MARKER_VALUE)
        args.data, args.obj = pa, pa

    def unpreserve(self, args: FlbOpArgs) -> None:
        cast(Kernel, args.kernel).kho.unpreserve_free(args.data)

    def retrieve(self, args: FlbOpArgs) -> None:
        args.obj = cast(Kernel, args.kernel).machine.memory.read_u64(args.data)

    def finish(self, args: FlbOpArgs) -> None:
        cast(Kernel, args.kernel).kho.restore_free(args.data)


class Driver:
    """The test driver loaded into one kernel: handler + PCI FLB link + marker FLB."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.handler = PciTestHandler(kernel)
        self.marker = MarkerFlb()
        kernel.liveupdate.register_file_handler(self.handler)
        kernel.pci_lu.register_flb(self.handler)
        kernel.liveupdate.register_flb(self.handler, self.marker)

    def open(self, hw_id: str) -> PciDevFile:
        dev = self.kernel.pci.find_hw(hw_id)
        assert dev is not None, f"{hw_id} is not enumerated"
        return PciDevFile(self.kernel, dev)


def dev(k: Kernel, hw_id: str) -> PciDev:
    d = k.pci.find_hw(hw_id)
    assert d is not None, f"{hw_id} is not enumerated in {k.name}"
    return d


def names(k: Kernel) -> dict[str, str]:
    """hw_id -> BDF of every enumerated device."""
    return {d.hw.hw_id: d.name for d in k.pci.devices()}


def boot(topology: Mapping[str, Any], profile: str = "v6", cmdline: str = "",
         policy: Mapping[str, str] | None = None,
         faults: tuple[Fault, ...] = ()) -> tuple[Kernel, Driver]:
    m = Machine.from_topology(topology, faults=faults)
    k = m.boot(profile, cmdline=cmdline, policy=policy)
    return k, Driver(k)


_LU_DEVICES: weakref.WeakKeyDictionary[Kernel, LiveupdateDevice] = \
    weakref.WeakKeyDictionary()


def lu_device(k: Kernel) -> LiveupdateDevice:
    """The agent's /dev/liveupdate of ``k`` (opened once: the device is exclusive)."""
    d = _LU_DEVICES.get(k)
    if d is None:
        d = _LU_DEVICES[k] = k.open_liveupdate()
    return d


def preserve(k: Kernel, drv: Driver, hw_ids: list[str],
             session: str = SESSION) -> tuple[Session, list[PciDevFile]]:
    """Create ``session`` and preserve one file per device (tokens 1, 2, ...)."""
    s = lu_device(k).create_session(session)
    files = []
    for i, hw_id in enumerate(hw_ids, 1):
        f = drv.open(hw_id)
        s.preserve_fd(f, i)
        files.append(f)
    return s, files


def kexec(k: Kernel, profile: str, cmdline: str = "",
          policy: Mapping[str, str] | None = None,
          at_jump: Callable[[Machine], None] | None = None) -> tuple[Kernel, Driver]:
    """reboot(KEXEC) into ``profile``; ``at_jump`` runs on the machine between the
    kernels (after the old one shut down, before the new one enumerates)."""
    m = k.machine
    hook: Callable[[str], None] | None = None
    if at_jump is not None:
        fn = at_jump

        def hook(stage: str) -> None:
            if stage == "kexec-jump":
                fn(m)

        m.stage_hooks.append(hook)
    try:
        k2 = k.kexec(profile, cmdline=cmdline, policy=policy)
    finally:
        if hook is not None:
            m.stage_hooks.remove(hook)
    return k2, Driver(k2)


def retrieve(k: Kernel, n: int, session: str = SESSION) -> tuple[Session, list[File]]:
    s = lu_device(k).retrieve_session(session)
    return s, [s.retrieve_fd(i) for i in range(1, n + 1)]


@contextmanager
def raises_errno(err: int) -> Iterator[Any]:
    with pytest.raises(KernelError) as info:
        yield info
    assert info.value.errno == err, f"expected {errno.errorcode[err]}, got {info.value!r}"


def logs(k: Kernel, needle: str) -> list[str]:
    return [msg for _lvl, _sub, msg in k.dmesg if needle in msg]
