"""vfio-pci and its live-update file handler (drivers/vfio/pci/vfio_pci_liveupdate.c).

:class:`VfioPci` is the module (``kernel.vfio``).  ``init()`` registers the
LUO file handler ``"vfio-pci-v1"`` and links the PCI FLB to it with
``pci_liveupdate_register_flb()``; EOPNOTSUPP from either is swallowed, any
other FLB error unregisters the handler (pci.md §6).

Device files (pci.md §6.2, §10 inv. 8):

* :meth:`VfioPci.open_device` is ``open("/dev/vfio/devices/vfioX")`` (the
  cdev); :meth:`VfioPci.open_group` + :meth:`VfioGroupFile.get_device_fd`
  is the legacy ``VFIO_GROUP_GET_DEVICE_FD``.  Both fail with EBUSY while
  the device is still incoming (``pci_liveupdate_is_incoming``): only
  RETRIEVE_FD gets it.  Unknown BDF or a bridge: ENODEV.  vfio-pci binds
  to a device on first use (binding the right driver is the user's job,
  §5.6).
* :class:`VfioDeviceFile`: ``bind_iommufd`` (EPERM for a device whose DMA
  is still owned by a preserved iommufd, §7.4.4), ``attach_hwpt`` (EBUSY
  while the device is preserved, §7.3 UNCONFIRMED), ``set_irqs`` (MSI-X
  on/off), ``set_power``, ``start_dma`` (the guest driver programs the
  device: vfio enables it, Memory Space + Bus Master Enable, and a
  :class:`~luosim.hw.dma.DmaEngine` starts).  After any freeze attempt
  every operation fails with EIO.  A fresh cdev needs ``bind_iommufd``
  before ``start_dma`` (EINVAL); a **retrieved** file may restart DMA
  without a bind (model shortcut: the VMM re-enables the device it got
  back; its translation is the restored preserved domain).

Handler callbacks (v5 semantics with the IOMMU series, §6.2, §7.3; order
as in samikhawaja/linux vfio_pci_liveupdate.c):

* ``can_preserve``: a vfio-pci device file opened through the cdev, not a VF.
  A group-opened file is refused, so LUO returns ENOENT.
* ``preserve``: when attached through an iommufd (``iommufd_attached``),
  ``iommufd_device_preserve()`` first (ENOENT no RID attachment / iommufd
  not preserved, EINVAL HWPT not marked); a device bound but not attached
  skips this step, as in the source; then
  ``pci_liveupdate_preserve()``, then a KHO-allocated 6-byte
  ``vfio_pci_core_device_ser`` {u32 domain, u16 bdf}; every failure undoes
  the earlier steps.
* ``freeze``: IRQs still enabled or not in D0 -> EINVAL (the reboot fails,
  this kernel keeps running, the fd is EIO from now on).  Policy
  ``dma.mode`` ``reset-at-freeze`` (vfio v4/v5): function reset, COMMAND =
  INTx-disable only (BME and memory cleared), the DMA engine stops.
  ``continuous`` (future phases): BME and DMA left running.
* ``retrieve``: the device at (domain, bdf) now; none -> ENODEV; a file
  like a fresh cdev.  ``can_finish``: retrieve succeeded **and** the
  retrieved file is bound to an iommufd (shvipin/linux
  4036b3b3b246d4c088c0a5fb5b62c25d547a194c
  tools/testing/selftests/vfio/vfio_pci_liveupdate_kexec_test.c: "Finishing
  the session before binding to iommufd (should fail)").  ``finish``:
  ``pci_liveupdate_finish()``, ser freed.

Kernel config (``luosim.kernel.config``): ``CONFIG_VFIO_PCI_LIVEUPDATE=n``
registers no handler; ``CONFIG_IOMMU_LIVEUPDATE=n`` preserves the device
without ``iommufd_device_preserve()`` (the vfio-only series).  Containers:
:meth:`VfioPci.open_container` is ``open("/dev/vfio/vfio")``, served by the
legacy type1 container or by iommufd's compat container; no handler
accepts either, so preserving one is ENOENT
(vfio_pci_liveupdate_uapi_test.c ``preserve_container_fails``, samikhawaja/linux
b7f60a74f7ee341494c3fc00f3370075ac60cf49).  The real compat container is an
iommufd file; whether the iommufd handler would then accept it is
UNCONFIRMED - the model follows the selftest.

Fault points: ``vfio.retrieve`` (ENODEV, ENOMEM), ``vfio.freeze`` (EINVAL).
"""

from __future__ import annotations

import errno
import itertools
from typing import TYPE_CHECKING, Any, cast

from luosim.abi.errors import DecodeError
from luosim.abi.vfio import (
    VFIO_LAYOUTS,
    VfioPciCoreDeviceSer,
    VfioPciCoreDeviceSerIommuV1,
    VfioPciCoreDeviceSerV2,
)
from luosim.errors import KernelError
from luosim.faults import point
from luosim.hw.dma import DmaController, DmaEngine
from luosim.hw.pci import CMD_INTX_DISABLE, POWER_STATES
from luosim.kernel.liveupdate.file import FileHandler, FileOpArgs
from luosim.kernel.vfs import File, check_alive

if TYPE_CHECKING:
    from luosim.kernel.iommu.iommufd import IommufdFile
    from luosim.kernel.kernel import Kernel
    from luosim.kernel.pci.probe import PciDev

FP_RETRIEVE = point("vfio.retrieve", ("ENODEV", "ENOMEM"),
                    "vfio_pci_liveupdate_retrieve() fails: no matching device, or the file "
                    "cannot be created")
FP_FREEZE = point("vfio.freeze", ("EINVAL",),
                  "vfio_pci_liveupdate_freeze() refuses the device (as with IRQs enabled)")


class VfioPciDevice:
    """``struct vfio_pci_core_device`` of one PCI function bound to vfio-pci."""

    def __init__(self, mod: VfioPci, pdev: PciDev) -> None:
        self.mod = mod
        self.pdev = pdev
        self.irqs = False  # irq_type != VFIO_PCI_NUM_IRQS
        self.files: list[VfioDeviceFile] = []
        self.incoming_ser = 0  # liveupdate_incoming_state (phys of the ser)

    @property
    def name(self) -> str:
        return self.pdev.name


class VfioDeviceFile(File):
    """A vfio device fd: from the cdev, ``VFIO_GROUP_GET_DEVICE_FD`` or RETRIEVE_FD."""

    def __init__(self, vdev: VfioPciDevice, *, cdev: bool, retrieved: bool = False,
                 install_fd: bool = True) -> None:
        mod = vdev.mod
        super().__init__(mod.kernel, f"vfio:{vdev.name}#{next(mod.file_ids)}",
                         install_fd=install_fd)
        self.mod = mod
        self.vdev = vdev
        self.cdev = cdev
        self.retrieved = retrieved
        self.iommufd: IommufdFile | None = None
        self.dev_id = 0
        self.hwpt_id = 0
        self.freeze_attempted = False
        self.lu_preserved = False
        vdev.files.append(self)

    # -- identity --
    @property
    def pdev(self) -> PciDev:
        return self.vdev.pdev

    @property
    def bdf(self) -> str:
        return self.vdev.pdev.name

    def _check(self) -> None:
        self.check_open()
        if self.freeze_attempted:
            raise KernelError(errno.EIO, f"{self.name}: frozen for live update")

    # -- iommufd --
    def bind_iommufd(self, iommufd: IommufdFile) -> int:
        """``VFIO_DEVICE_BIND_IOMMUFD`` -> dev_id (EPERM: DMA owned by a preserved token)."""
        self._check()
        if self.iommufd is not None:
            raise KernelError(errno.EINVAL, f"{self.name}: already bound")
        self.dev_id = iommufd.bind_device(self.pdev)
        self.iommufd = iommufd
        iommufd.get()
        self.mod.core_enable(self.pdev)
        return self.dev_id

    def attach_hwpt(self, hwpt_id: int) -> None:
        """``VFIO_DEVICE_ATTACH_IOMMUFD_PT`` (EBUSY while preserved)."""
        self._check()
        if self.iommufd is None:
            raise KernelError(errno.EINVAL, f"{self.name}: not bound to an iommufd")
        if self.lu_preserved:
            raise KernelError(errno.EBUSY, f"{self.name}: preserved for live update")
        self.iommufd.attach_device(self.dev_id, hwpt_id)
        self.hwpt_id = hwpt_id

    def detach_hwpt(self) -> None:
        """``VFIO_DEVICE_DETACH_IOMMUFD_PT`` (EBUSY while preserved)."""
        self._check()
        if self.iommufd is None:
            raise KernelError(errno.EINVAL, f"{self.name}: not bound to an iommufd")
        if self.lu_preserved:
            raise KernelError(errno.EBUSY, f"{self.name}: preserved for live update")
        self.iommufd.detach_device(self.dev_id)
        self.hwpt_id = 0

    # -- device state --
    def set_irqs(self, on: bool) -> None:
        """``VFIO_DEVICE_SET_IRQS``: MSI-X enabled (``on``) or disabled."""
        self._check()
        self.vdev.irqs = bool(on)
        self.pdev.hw.irq_enabled = bool(on)

    def set_power(self, state: str) -> None:
        """Power state through the ``VFIO_DEVICE_FEATURE`` low-power entry/exit."""
        self._check()
        if state not in POWER_STATES:
            raise KernelError(errno.EINVAL, f"unknown power state {state!r}")
        self.pdev.hw.power_state = state

    def start_dma(self, iova: int, length: int, rate_per_ms: float, seed: int = 0) -> DmaEngine:
        """The guest driver starts the device's DMA engine at ``iova``.

        vfio enables the device (``pci_enable_device`` + ``pci_set_master``:
        Memory Space and Bus Master Enable, upstream bridges too); a running
        engine of the same function is replaced.
        """
        self._check()
        if self.iommufd is None and not self.retrieved:
            raise KernelError(errno.EINVAL, f"{self.name}: device not bound to an iommufd")
        k = self.mod.kernel
        k.pci.enable_device(self.pdev)
        k.pci.set_master(self.pdev)
        ctl = DmaController.of(k.machine)
        ctl.remove(self.pdev.hw.hw_id)
        try:
            engine = DmaEngine(k.machine, self.pdev.hw, iova_base=iova, length=length,
                               rate_per_ms=rate_per_ms, pattern_seed=seed)
        except ValueError as exc:
            raise KernelError(errno.EINVAL, str(exc)) from None
        return ctl.add(engine)

    def stop_dma(self) -> None:
        self._check()
        DmaController.of(self.mod.kernel.machine).remove(self.pdev.hw.hw_id)

    # -- lifetime --
    def release(self) -> None:
        """``vfio_df_device_last_close``: unbind iommufd, disable the device."""
        k = self.mod.kernel
        if self in self.vdev.files:
            self.vdev.files.remove(self)
        if not k.alive:
            return
        if self.iommufd is not None:
            self.iommufd.unbind_device(self.dev_id)
            self.iommufd.put()
            self.iommufd = None
        if not self.vdev.files and not self.freeze_attempted:
            DmaController.of(k.machine).remove(self.pdev.hw.hw_id)
            k.pci.clear_master(self.pdev)
            self.vdev.irqs = False
            self.pdev.hw.irq_enabled = False


class VfioGroupFile(File):
    """``/dev/vfio/<group>`` (legacy group interface; singleton groups)."""

    def __init__(self, mod: VfioPci, pdev: PciDev) -> None:
        super().__init__(mod.kernel, f"vfio-group:{pdev.name}")
        self.mod = mod
        self.pdev_ = pdev

    def get_device_fd(self, bdf: str) -> VfioDeviceFile:
        """``VFIO_GROUP_GET_DEVICE_FD``: EBUSY for an incoming device (§6.2)."""
        self.check_open()
        pdev = self.mod.kernel.pci.find(bdf)
        if pdev is None or pdev is not self.pdev_:
            raise KernelError(errno.ENODEV, f"{bdf} is not in this group")
        if self.mod.kernel.pci_lu.is_incoming(pdev):
            raise KernelError(errno.EBUSY, f"{bdf} is preserved by the previous kernel")
        f = VfioDeviceFile(self.mod.bind(pdev), cdev=False)
        self.mod.core_enable(pdev)
        return f


class VfioContainerFile(File):
    """``/dev/vfio/vfio``: a type1 container (``kind`` "type1" or "iommufd-compat")."""

    def __init__(self, mod: VfioPci, kind: str) -> None:
        super().__init__(mod.kernel, f"vfio-container:{kind}#{next(mod.file_ids)}")
        self.kind = kind


class VfioPciLuoHandler(FileHandler):
    """``vfio_pci_liveupdate_fh``: compatible and record layout of the profile's vfio_pci.h.

    ``"vfio-pci-v1"`` (6-byte v5 record, the default), ``"vfio-pci-v1-iommu"``
    (9 bytes, samikhawaja d835969e + IOMMU v1) or ``"vfio-pci-v2"`` (11 bytes
    with ``reset_works`` and the iommufd token; anolis 5a52741a), see
    :mod:`luosim.abi.vfio`.
    """

    def __init__(self, mod: VfioPci) -> None:
        # only registered where the build has a vfio layer (Kernel checks layer("vfio"))
        abi = mod.kernel.profile.vfio_abi or "vfio-pci-v1"
        self.layout = VFIO_LAYOUTS[abi]
        super().__init__(self.layout.COMPATIBLE)
        self.mod = mod

    def can_preserve(self, file: File) -> bool:
        """cdev-opened plain vfio-pci device of this kernel, not a VF (§6.2)."""
        return (isinstance(file, VfioDeviceFile) and file.cdev
                and file.kernel is self.mod.kernel and not file.pdev.is_virtfn)

    def preserve(self, args: FileOpArgs) -> None:
        """``vfio_pci_liveupdate_preserve()``: iommufd device, PCI, then the ser."""
        f = cast(VfioDeviceFile, args.file)
        k = self.mod.kernel
        iommufd_done = False
        token = 0
        if f.iommufd is not None and f.hwpt_id and k.configured("CONFIG_IOMMU_LIVEUPDATE"):
            # device->iommufd_attached (without CONFIG_IOMMU_LIVEUPDATE: the stub)
            token = f.iommufd.device_preserve(f.dev_id, args.file_set)
            iommufd_done = True
        try:
            k.pci_lu.preserve(f.pdev)
        except KernelError:
            if iommufd_done and f.iommufd is not None:
                f.iommufd.device_unpreserve(f.dev_id)
            raise
        try:
            ser_pa = k.kho.alloc_preserve(self.layout.SIZE)
        except KernelError:
            k.pci_lu.unpreserve(f.pdev)
            if iommufd_done and f.iommufd is not None:
                f.iommufd.device_unpreserve(f.dev_id)
            raise
        ser: VfioPciCoreDeviceSer | VfioPciCoreDeviceSerV2
        if issubclass(self.layout, VfioPciCoreDeviceSerV2):  # records carrying the token
            # C assignments truncate: the u64 LUO token into u32, and (IOMMU v1 layout)
            # the u32 segment into u16; every modelled function can be reset
            dom_mask = 0xFFFF if self.layout is VfioPciCoreDeviceSerIommuV1 else 0xFFFFFFFF
            ser = self.layout(f.pdev.domain & dom_mask, f.pdev.bdf, 1, token & 0xFFFFFFFF)
        else:
            ser = VfioPciCoreDeviceSer(f.pdev.domain, f.pdev.bdf)
        k.machine.memory.write(ser_pa, ser.encode())
        f.lu_preserved = True
        args.serialized_data = ser_pa
        args.private_data = f.vdev

    def unpreserve(self, args: FileOpArgs) -> None:
        """``vfio_pci_liveupdate_unpreserve()``."""
        f = cast(VfioDeviceFile, args.file)
        k = self.mod.kernel
        if f.iommufd is not None:
            f.iommufd.device_unpreserve(f.dev_id)
        k.pci_lu.unpreserve(f.pdev)
        if args.serialized_data:
            k.kho.unpreserve_free(args.serialized_data)
        f.lu_preserved = False

    def freeze(self, args: FileOpArgs) -> None:
        """``vfio_pci_liveupdate_freeze()`` (v5, §6.2): IRQ/D0 checks, then reset."""
        f = cast(VfioDeviceFile, args.file)
        k = self.mod.kernel
        f.freeze_attempted = True  # the fd is EIO from now on, even if the reboot aborts
        k.machine.faults.check(FP_FREEZE, f.name)
        if f.vdev.irqs:
            k.printk("err", "vfio", f"{f.bdf}: Freeze failed! Interrupts are still enabled.")
            raise KernelError(errno.EINVAL, f"{f.bdf}: interrupts are still enabled")
        if f.pdev.hw.power_state != "D0":
            raise KernelError(errno.EINVAL, f"{f.bdf}: not in D0 ({f.pdev.hw.power_state})")
        if k.policy("dma.mode") == "reset-at-freeze":
            hw = f.pdev.hw
            k.machine.pci.reset_function(hw)
            hw.command = CMD_INTX_DISABLE
            f.pdev.is_busmaster = False
            DmaController.of(k.machine).reset_device(hw.hw_id)

    def unfreeze(self, args: FileOpArgs) -> None:
        """The reboot aborted: nothing to undo (the fd stays unusable, §6.2)."""
        return None

    def retrieve(self, args: FileOpArgs) -> None:
        """``vfio_pci_liveupdate_retrieve()``: match (domain, bdf); ENODEV if absent."""
        k = self.mod.kernel
        k.machine.faults.check(FP_RETRIEVE, f"{args.serialized_data:#x}")
        try:
            ser = self.layout.decode(
                k.machine.memory.read(args.serialized_data, self.layout.SIZE))
        except (DecodeError, ValueError) as exc:
            raise KernelError(errno.EINVAL, str(exc)) from None
        pdev = k.pci.find_bdf(ser.domain, ser.bdf)
        if pdev is None or pdev.is_bridge:
            raise KernelError(errno.ENODEV, f"no vfio-pci device {ser.domain:04x}:"
                              f"{ser.bdf >> 8:02x}:{(ser.bdf >> 3) & 0x1F:02x}.{ser.bdf & 7}")
        vdev = self.mod.bind(pdev)
        vdev.incoming_ser = args.serialized_data
        args.file = VfioDeviceFile(vdev, cdev=True, retrieved=True, install_fd=False)
        args.private_data = vdev

    def can_finish(self, args: FileOpArgs) -> bool:
        """Retrieved (``retrieve_status > 0``) and bound to an iommufd since."""
        f = args.file
        return args.retrieve_status > 0 and isinstance(f, VfioDeviceFile) \
            and f.iommufd is not None

    def finish(self, args: FileOpArgs) -> None:
        """``vfio_pci_liveupdate_finish()``: PCI finish, ser freed."""
        k = self.mod.kernel
        if not isinstance(args.file, VfioDeviceFile):
            k.printk("err", "vfio", "finish of a vfio device that was never retrieved")
            return
        k.pci_lu.finish(args.file.pdev)
        args.file.vdev.incoming_ser = 0
        k.kho.restore_free(args.serialized_data)


class VfioPci:
    """The vfio-pci module of one kernel (``kernel.vfio``)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.handler = VfioPciLuoHandler(self)
        self.devices: dict[tuple[int, int], VfioPciDevice] = {}
        self.file_ids = itertools.count(1)
        self.registered = False
        self.flb_linked = False

    def init(self) -> None:
        """``vfio_pci_liveupdate_init()``: handler, then ``pci_liveupdate_register_flb``."""
        k = self.kernel
        if not k.configured("CONFIG_VFIO_PCI_LIVEUPDATE"):
            return
        try:
            k.liveupdate.register_file_handler(self.handler)
        except KernelError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                k.printk("err", "vfio", f"liveupdate handler registration failed: {exc}")
            return
        self.registered = True
        try:
            k.pci_lu.register_flb(self.handler)
        except KernelError as exc:
            k.liveupdate.unregister_file_handler(self.handler)
            self.registered = False
            if exc.errno != errno.EOPNOTSUPP:
                k.printk("err", "vfio", f"PCI FLB registration failed: {exc}")
            return
        self.flb_linked = True

    def shutdown(self) -> None:
        """``device_shutdown()`` for vfio-pci: nothing beyond the PCI core's."""
        return None

    def bind(self, pdev: PciDev) -> VfioPciDevice:
        """vfio-pci probes ``pdev`` (``vfio_pci_probe``); ENODEV for bridges."""
        if pdev.is_bridge:
            raise KernelError(errno.ENODEV, f"{pdev.name} is a bridge")
        key = (pdev.domain, pdev.bdf)
        vdev = self.devices.get(key)
        if vdev is None or vdev.pdev is not pdev:
            vdev = VfioPciDevice(self, pdev)
            self.devices[key] = vdev
            pdev.driver = self
        return vdev

    def core_enable(self, pdev: PciDev) -> None:
        """``vfio_pci_core_enable()`` at first open (cdev: at BIND_IOMMUFD; group:
        at GET_DEVICE_FD): ``pci_enable_device()``, which enables the upstream
        bridges with Bus Master on (``pci_enable_bridge``).  Conventional
        PCI-PCI bridges have no port driver that would have done it at
        enumeration (issue #11 item 6: PCI-5 failed for ``kind: bridge``)."""
        self.kernel.pci.enable_device(pdev)

    def _lookup(self, bdf: str) -> PciDev:
        check_alive(self.kernel)
        pdev = self.kernel.pci.find(bdf)
        if pdev is None or pdev.is_bridge:
            raise KernelError(errno.ENODEV, f"no vfio-pci device {bdf}")
        return pdev

    def open_device(self, bdf: str) -> VfioDeviceFile:
        """``open("/dev/vfio/devices/vfioX")``: EBUSY while incoming, ENODEV unknown."""
        pdev = self._lookup(bdf)
        if self.kernel.pci_lu.is_incoming(pdev):
            raise KernelError(errno.EBUSY, f"{bdf} is preserved by the previous kernel")
        return VfioDeviceFile(self.bind(pdev), cdev=True)

    def open_group(self, bdf: str) -> VfioGroupFile:
        """``open("/dev/vfio/<group>")`` of the (singleton) group holding ``bdf``."""
        pdev = self._lookup(bdf)
        self.bind(pdev)
        return VfioGroupFile(self, pdev)

    def open_container(self) -> VfioContainerFile:
        """``open("/dev/vfio/vfio")``: the legacy container or iommufd's compat one.

        ENOENT when neither CONFIG_VFIO_CONTAINER nor
        CONFIG_IOMMUFD_VFIO_CONTAINER is built.
        """
        check_alive(self.kernel)
        k = self.kernel
        if k.configured("CONFIG_IOMMUFD_VFIO_CONTAINER"):
            return VfioContainerFile(self, "iommufd-compat")
        if k.configured("CONFIG_VFIO_CONTAINER"):
            return VfioContainerFile(self, "type1")
        raise KernelError(errno.ENOENT, "/dev/vfio/vfio does not exist")

    def summary(self) -> dict[str, Any]:
        return {"registered": self.registered, "flb_linked": self.flb_linked,
                "devices": [v.name for v in self.devices.values()]}
