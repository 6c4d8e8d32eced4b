"""The vfio live-update selftests (spec pci.md §11, §6.2, §10 inv. 8).

``vfio_pci_liveupdate_uapi_test``: preserving a cdev-opened device gives 0;
a device file from ``VFIO_GROUP_GET_DEVICE_FD`` (and the group file itself)
has no handler, so LUO returns ENOENT.  ``vfio_pci_liveupdate_kexec_test``
stage 2: cdev open and group GET_DEVICE_FD are EBUSY, the memfd is
retrievable, FINISH before the device is retrieved is EBUSY, the device
retrieve succeeds, then FINISH succeeds and the device is no longer incoming.
"""

from __future__ import annotations

import errno

import pytest

from luosim.errors import KernelError
from luosim.kernel.kernel import Kernel
from luosim.kernel.vfio.pci import VfioDeviceFile

from .conftest import DSA0, DSA1, IOVA, RAM, pdev


def test_uapi_preserve_device_cdev(k: Kernel) -> None:
    dev = k.vfio.open_device(DSA0)
    s = k.open_liveupdate().create_session("uapi")
    s.preserve_fd(dev, 1)  # returns 0
    assert s.files == 1
    assert pdev(k, DSA0).lu.outgoing is not None


def test_uapi_preserve_group_fails(k: Kernel) -> None:
    group = k.vfio.open_group(DSA0)
    dev = group.get_device_fd(DSA0)
    assert not dev.cdev
    s = k.open_liveupdate().create_session("uapi")
    with pytest.raises(KernelError) as e:
        s.preserve_fd(dev, 1)
    assert e.value.errno == errno.ENOENT
    with pytest.raises(KernelError) as e:
        s.preserve_fd(group, 2)  # the group fd itself (preserve_group_fails)
    assert e.value.errno == errno.ENOENT


def test_uapi_unknown_bdf_and_bridge(k: Kernel) -> None:
    for bdf in ("0000:09:00.0", "0000:00:01.0"):
        with pytest.raises(KernelError) as e:
            k.vfio.open_device(bdf)
        assert e.value.errno == errno.ENODEV


def test_kexec_stage2(k: Kernel) -> None:
    """Stage 1: device session + memfd, MSI-X off; stage 2 assertions."""
    ram = k.memfd_create("ram", RAM)
    ram.write(0, b"stage-1")
    dev = k.vfio.open_device(DSA0)
    dev.set_irqs(True)
    lu = k.open_liveupdate()
    s = lu.create_session("device")
    s.preserve_fd(ram, 1)
    s.preserve_fd(dev, 2)
    dev.set_irqs(False)  # else freeze fails
    k2 = k.kexec("v6")
    assert pdev(k2, DSA0).is_incoming
    with pytest.raises(KernelError) as e:
        k2.vfio.open_device(DSA0)
    assert e.value.errno == errno.EBUSY
    with pytest.raises(KernelError) as e:
        k2.vfio.open_group(DSA0).get_device_fd(DSA0)
    assert e.value.errno == errno.EBUSY
    s2 = k2.open_liveupdate().retrieve_session("device")
    ram2 = s2.retrieve_fd(1)
    assert ram2.read(0, 7) == b"stage-1"  # type: ignore[attr-defined]
    with pytest.raises(KernelError) as e:
        s2.finish()
    assert e.value.errno == errno.EBUSY
    d2 = s2.retrieve_fd(2)
    assert isinstance(d2, VfioDeviceFile) and d2.cdev and d2.bdf == DSA0
    with pytest.raises(KernelError) as e:
        s2.finish()  # retrieved but not bound to an iommufd yet
    assert e.value.errno == errno.EBUSY
    d2.bind_iommufd(k2.iommufd_mod.open())
    s2.finish()
    assert not pdev(k2, DSA0).is_incoming
    k2.vfio.open_device(DSA0).close()  # no longer exclusive to RETRIEVE_FD
    k2.vfio.open_device(DSA1).close()  # a never-preserved device was never blocked


def test_old_fd_is_eio_after_freeze_attempt(k: Kernel) -> None:
    """A freeze attempt makes the fd unusable even when the reboot aborts (§6.2)."""
    dev = k.vfio.open_device(DSA0)
    other = k.vfio.open_device(DSA1)
    other.set_irqs(True)
    s = k.open_liveupdate().create_session("s")
    s.preserve_fd(dev, 1)
    s.preserve_fd(other, 2)
    with pytest.raises(KernelError) as e:
        k.kexec("v6")
    assert e.value.errno == errno.EINVAL
    assert k.alive
    for f in (dev, other):
        with pytest.raises(KernelError) as e:
            f.set_irqs(False)
        assert e.value.errno == errno.EIO
    assert IOVA  # guest layout constant is shared with the other tests
