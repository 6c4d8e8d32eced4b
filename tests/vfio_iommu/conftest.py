"""Shared setup for the vfio-pci / iommufd / IOMMU live-update tests (spec pci.md §6-§11)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from luosim.abi.memfd import F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK
from luosim.hw.machine import Machine
from luosim.kernel.iommu.iommufd import IommufdFile
from luosim.kernel.kernel import Kernel
from luosim.kernel.mm.memfd import MemfdFile
from luosim.kernel.pci.probe import PciDev
from luosim.kernel.vfio.pci import VfioDeviceFile

TOPO: dict[str, Any] = {
    "memory": "8GiB",
    "segments": [{"segment": 0, "devices": [{"slot": 1, "kind": "root-port", "children": [
        {"slot": 0, "kind": "switch", "ports": [
            {"slot": 0, "children": [{"slot": 0, "kind": "endpoint", "name": "dsa0"}]},
            {"slot": 1, "children": [{"slot": 0, "kind": "endpoint", "name": "dsa1"}]},
        ]}]}]}],
}
DSA0 = "0000:03:00.0"
DSA1 = "0000:04:00.0"
IOVA = 4 << 30  # the vfio selftest maps guest RAM at 4 GiB
RAM = 32 << 20
HWPT_TOKEN = 0x1000


@dataclass
class Vm:
    """What a VMM holds for one guest with one assigned device."""

    ram: MemfdFile
    iommufd: IommufdFile
    ioas: int
    dev: VfioDeviceFile
    dev_id: int
    hwpt: int


SEALS = F_SEAL_SEAL | F_SEAL_GROW | F_SEAL_SHRINK


def make_vm(k: Kernel, bdf: str = DSA0, *, ram: int = RAM, mark: bool = True,
            folio_order: int = 0) -> Vm:
    """memfd guest RAM mapped at 4 GiB, device bound + attached to a paging HWPT."""
    mem = k.memfd_create("ram", ram, folio_order=folio_order)
    mem.add_seals(SEALS)  # iommufd preservation requires a memfd that cannot resize
    fd = k.iommufd_mod.open()
    ioas = fd.ioas_alloc()
    fd.ioas_map_file(ioas, mem, 0, ram, IOVA)
    dev = k.vfio.open_device(bdf)
    dev_id = dev.bind_iommufd(fd)
    hwpt = fd.hwpt_alloc(dev_id, ioas)
    dev.attach_hwpt(hwpt)
    if mark:
        fd.hwpt_set_preserve(hwpt, HWPT_TOKEN)
    return Vm(mem, fd, ioas, dev, dev_id, hwpt)


def boot(topo: dict[str, Any] | None = None, profile: str = "v6", faults: tuple[Any, ...] = (),
         **policy: str) -> Kernel:
    m = Machine.from_topology(topo or TOPO, faults=faults)
    return m.boot(profile, policy={k.replace("_", "."): v for k, v in policy.items()} or None)


@pytest.fixture
def k() -> Kernel:
    return boot()


def pdev(k: Kernel, bdf: str) -> PciDev:
    """The enumerated pci_dev at ``bdf`` (asserted present)."""
    dev = k.pci.find(bdf)
    assert dev is not None, bdf
    return dev
