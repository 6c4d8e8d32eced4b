"""What the vfio/iommufd live-update selftests get from their libraries, on luosim.

``libvfio`` (tools/testing/selftests/vfio/lib): ``iommu_init(mode)`` and
``vfio_pci_device_init(bdf, iommu)`` - a cdev bound to an iommufd and attached
to an IOAS (the kernel allocates a paging HWPT for it) in ``iommufd`` mode, or a
group fd + ``/dev/vfio/vfio`` container in the four type1 modes.
``libliveupdate``: ``create_state_file`` / ``restore_and_read_stage`` keep the
stage number in a memfd of its own session, so stage 2 knows it runs after kexec.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from luosim.hw.machine import Machine
from luosim.kernel.iommu.iommufd import IommufdFile
from luosim.kernel.kernel import Kernel
from luosim.kernel.liveupdate.uapi import LiveupdateDevice
from luosim.kernel.vfio.pci import VfioContainerFile, VfioDeviceFile, VfioGroupFile

TOPO: dict[str, Any] = {
    "memory": "4GiB",
    "segments": [{"segment": 0, "devices": [{"slot": 1, "kind": "root-port", "children": [
        {"slot": 0, "kind": "switch", "ports": [
            {"slot": 0, "children": [{"slot": 0, "kind": "endpoint", "name": "dsa0"}]},
            {"slot": 1, "children": [{"slot": 0, "kind": "endpoint", "name": "dsa1"}]},
        ]}]}]}],
}
BDF = "0000:03:00.0"
BDF2 = "0000:04:00.0"
SZ_1M = 1 << 20
SZ_4G = 4 << 30

#: FIXTURE_VARIANT_ADD_ALL_IOMMU_MODES() (libvfio iommu.c): mode -> container path
IOMMU_MODES: dict[str, str | None] = {
    "vfio_type1_iommu": "/dev/vfio/vfio",
    "vfio_type1v2_iommu": "/dev/vfio/vfio",
    "iommufd_compat_type1": "/dev/vfio/vfio",
    "iommufd_compat_type1v2": "/dev/vfio/vfio",
    "iommufd": None,
}

#: the vfio live-update selftests come from the vfio series, which preserves a
#: device without iommufd preservation: its kernels are built without
#: CONFIG_IOMMU_LIVEUPDATE (luosim.kernel.config)
VFIO_ONLY = {"CONFIG_IOMMU_LIVEUPDATE": False}


def boot(profile: str = "v9", config: dict[str, bool] | None = None) -> Kernel:
    return Machine.from_topology(TOPO).boot(profile, config=config)


def config_for(mode: str) -> dict[str, bool]:
    """``/dev/vfio/vfio`` served by iommufd in the compat modes."""
    return {**VFIO_ONLY, "CONFIG_IOMMUFD_VFIO_CONTAINER": mode.startswith("iommufd_compat")}


@dataclass
class Iommu:
    """libvfio ``struct iommu``."""

    mode: str
    iommufd: IommufdFile | None = None
    container: VfioContainerFile | None = None
    ioas_id: int = 0


@dataclass
class Device:
    """libvfio ``struct vfio_pci_device``."""

    fd: VfioDeviceFile
    iommu: Iommu
    group_fd: VfioGroupFile | None = None
    dev_id: int = 0
    hwpt_id: int = 0


def iommu_init(k: Kernel, mode: str) -> Iommu:
    if IOMMU_MODES[mode] is None:
        ictx = k.iommufd_mod.open()
        return Iommu(mode, iommufd=ictx, ioas_id=ictx.ioas_alloc())
    return Iommu(mode, container=k.vfio.open_container())


def device_init(k: Kernel, bdf: str, iommu: Iommu,
                device_fd: VfioDeviceFile | None = None) -> Device:
    """``vfio_pci_device_init()`` / ``__vfio_pci_device_init(bdf, iommu, device_fd)``."""
    if iommu.iommufd is None:
        group = k.vfio.open_group(bdf)
        return Device(group.get_device_fd(bdf), iommu, group_fd=group)
    fd = device_fd if device_fd is not None else k.vfio.open_device(bdf)
    dev = Device(fd, iommu)
    dev.dev_id = fd.bind_iommufd(iommu.iommufd)
    # VFIO_DEVICE_ATTACH_IOMMUFD_PT with an IOAS id: the kernel makes the HWPT
    dev.hwpt_id = iommu.iommufd.hwpt_alloc(dev.dev_id, iommu.ioas_id)
    fd.attach_hwpt(dev.hwpt_id)
    return dev


def create_state_file(lu: LiveupdateDevice, session: str, token: int, next_stage: int) -> None:
    """libliveupdate ``create_state_file()``: the stage in a preserved memfd."""
    k = lu.kernel
    mem = k.memfd_create("state", 4096)
    mem.write(0, struct.pack("<i", next_stage))
    lu.create_session(session).preserve_fd(mem, token)


def restore_and_read_stage(lu: LiveupdateDevice, session: str, token: int) -> int:
    s = lu.retrieve_session(session)
    mem = s.retrieve_fd(token)
    (stage,) = struct.unpack("<i", mem.read(0, 4))  # type: ignore[attr-defined]
    return int(stage)
