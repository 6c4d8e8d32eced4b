"""A VMM model: VMs with memfd guest RAM, an iommufd and vfio-pci devices.

Everything goes through the kernel's uAPI objects (files), never through
kernel internals, so the same code runs against any profile.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from luosim.abi.hugetlb import MFD_HUGE_1GB, MFD_HUGE_2MB, MFD_HUGETLB
from luosim.abi.memfd import F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK

if TYPE_CHECKING:
    from luosim.kernel.iommu.iommufd import IommufdFile
    from luosim.kernel.kernel import Kernel
    from luosim.kernel.mm.memfd import MemfdFile
    from luosim.kernel.vfio.pci import VfioDeviceFile

GUEST_IOVA_BASE = 4 << 30  # guest RAM mapped at IOVA 4 GiB, as the vfio selftest does


#: memfd_create() flags of a scenario's ``ram_backing``
RAM_BACKING_FLAGS = {"memfd": 0, "hugetlb-2M": MFD_HUGETLB | MFD_HUGE_2MB,
                     "hugetlb-1G": MFD_HUGETLB | MFD_HUGE_1GB}


@dataclass
class DeviceAssignment:
    name: str  # hardware name from the scenario
    bdf: str  # BDF the old kernel enumerated it at
    file: VfioDeviceFile | None = None
    dev_id: int = 0
    dma_started: bool = False


@dataclass
class Vm:
    name: str
    memory: int
    folio_order: int
    ram: MemfdFile | None = None
    iommufd: IommufdFile | None = None
    ioas_id: int = 0
    hwpt_id: int = 0
    hwpt_token: int = 0
    devices: list[DeviceAssignment] = field(default_factory=list)
    dma: dict[str, Any] | None = None

    def dma_window(self) -> tuple[int, int]:
        """IOVA range each device of this VM writes to: its slice of guest RAM."""
        length = int(self.dma["length"]) if self.dma else 1 << 20
        return GUEST_IOVA_BASE, min(length, self.memory)


class Vmm:
    """Creates VMs on the running kernel and restarts them on the next one."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.vms: list[Vm] = []

    def create_vm(self, name: str, memory: int, folio_order: int, devices: list[tuple[str, str]],
                  dma: dict[str, Any] | None, seed: int, ram_backing: str = "memfd") -> Vm:
        """Guest RAM memfd, iommufd IOAS mapping it at 4 GiB, devices attached to a
        HWPT marked for preservation, DMA engines started."""
        k = self.kernel
        vm = Vm(name, memory, folio_order, dma=dma)
        vm.ram = k.memfd_create(f"{name}-ram", memory, folio_order=folio_order,
                                flags=RAM_BACKING_FLAGS[ram_backing])
        vm.ram.fill(0, memory, seed)
        # guest RAM never changes size; iommufd preservation requires the seals
        vm.ram.add_seals(F_SEAL_SEAL | F_SEAL_GROW | F_SEAL_SHRINK)
        if devices:
            vm.iommufd = k.iommufd_mod.open()
            vm.ioas_id = vm.iommufd.ioas_alloc()
            vm.iommufd.ioas_map_file(vm.ioas_id, vm.ram, 0, memory, GUEST_IOVA_BASE)
        for dev_name, bdf in devices:
            assign = DeviceAssignment(dev_name, bdf)
            assign.file = k.vfio.open_device(bdf)
            assert vm.iommufd is not None
            assign.dev_id = assign.file.bind_iommufd(vm.iommufd)
            if not vm.hwpt_id:
                vm.hwpt_id = vm.iommufd.hwpt_alloc(assign.dev_id, vm.ioas_id)
            assign.file.attach_hwpt(vm.hwpt_id)
            assign.file.set_irqs(True)  # the guest driver uses MSI-X
            vm.devices.append(assign)
        if vm.hwpt_id and vm.iommufd is not None:
            vm.hwpt_token = 0x1000 + len(self.vms)
            vm.iommufd.hwpt_set_preserve(vm.hwpt_id, vm.hwpt_token)
        self.vms.append(vm)
        self.start_dma(vm)
        return vm

    def restore_iommu(self, vm: Vm) -> None:
        """After a live update: put the retrieved devices under a fresh HWPT.

        With a retrieved iommufd (IOMMU phase 2, iommufd_liveupdate.c
        selftest): bind every device (the iommufd takes their DMA ownership
        over with the restored domain attached), IOMMU_HWPT_LU_RESTORE the
        preserved HWPT, build a new IOAS mapping the retrieved guest RAM at
        the same IOVA and a new HWPT, move every device to it (the context
        entry is replaced in place: DMA keeps translating), mark it for the
        next update and destroy the restored HWPT.  Without a preserved
        iommufd (CONFIG_IOMMU_LIVEUPDATE=n) the devices get a new iommufd as
        at creation.
        """
        if not vm.devices or vm.ram is None:
            return
        fresh = vm.iommufd is None
        if fresh:
            vm.iommufd = self.kernel.iommufd_mod.open()
        ictx = vm.iommufd
        assert ictx is not None
        for d in vm.devices:
            assert d.file is not None
            d.dev_id = d.file.bind_iommufd(ictx)
        restored = 0 if fresh else ictx.hwpt_lu_restore(vm.hwpt_token)
        vm.ioas_id = ictx.ioas_alloc()
        ictx.ioas_map_file(vm.ioas_id, vm.ram, 0, vm.memory, GUEST_IOVA_BASE)
        vm.hwpt_id = ictx.hwpt_alloc(vm.devices[0].dev_id, vm.ioas_id)
        for d in vm.devices:
            assert d.file is not None
            d.file.attach_hwpt(vm.hwpt_id)
        if restored:
            ictx.hwpt_destroy(restored)
        if not vm.hwpt_token:
            vm.hwpt_token = 0x1000 + self.vms.index(vm)
        ictx.hwpt_set_preserve(vm.hwpt_id, vm.hwpt_token)

    def start_dma(self, vm: Vm) -> None:
        if not vm.dma or not vm.dma.get("rate_per_ms"):
            return
        base, length = vm.dma_window()
        for i, d in enumerate(vm.devices):
            if d.file is None:
                continue
            # each device writes its own slice, so the checker can attribute bytes
            slice_len = max(4096, length // max(1, len(vm.devices)) // 4096 * 4096)
            d.file.start_dma(base + i * slice_len, slice_len, float(vm.dma["rate_per_ms"]),
                             seed=zlib.crc32(f"{vm.name}/{d.name}".encode()) & 0xFFFF)
            d.dma_started = True

    def quiesce_for_update(self) -> None:
        """What the VMM does before reboot(KEXEC): mask MSI-X (vfio freeze
        refuses devices with interrupts on, spec pci.md §6.2)."""
        for vm in self.vms:
            for d in vm.devices:
                if d.file is not None:
                    d.file.set_irqs(False)
