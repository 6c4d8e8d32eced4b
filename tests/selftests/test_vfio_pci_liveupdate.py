"""The vfio-pci live-update selftests of the series trees, re-expressed on luosim.

One Python test per C test (TEST_F, or ``main()`` of a kexec test), every
assertion kept; multi-stage tests run stage 1, kexec, stage 2 in one function.
The kernels are built as the vfio series builds them: without
CONFIG_IOMMU_LIVEUPDATE (``vfio_iommu_lib.VFIO_ONLY``).
"""

from __future__ import annotations

import errno

import pytest

from luosim.errors import KernelError
from luosim.kernel.kernel import Kernel
from luosim.kernel.vfio.pci import VfioDeviceFile

from .vfio_iommu_lib import (
    BDF,
    IOMMU_MODES,
    SZ_1M,
    SZ_4G,
    VFIO_ONLY,
    Device,
    boot,
    config_for,
    create_state_file,
    device_init,
    iommu_init,
    restore_and_read_stage,
)

UAPI = "samikhawaja/linux b7f60a74f7ee341494c3fc00f3370075ac60cf49 " \
    "tools/testing/selftests/vfio/vfio_pci_liveupdate_uapi_test.c"
MODES = list(IOMMU_MODES)


def errno_of(fn: object, *args: object) -> int:
    with pytest.raises(KernelError) as e:
        fn(*args)  # type: ignore[operator]
    return e.value.errno or 0


class UapiFixture:
    """FIXTURE(vfio_pci_liveupdate_uapi_test) with FIXTURE_SETUP."""

    def __init__(self, mode: str) -> None:
        self.k = boot(config=config_for(mode))
        self.luo = self.k.open_liveupdate()
        self.session = self.luo.create_session("session")
        self.iommu = iommu_init(self.k, mode)
        self.device: Device = device_init(self.k, BDF, self.iommu)


@pytest.mark.parametrize("mode", MODES)
def test_uapi_preserve_device(mode: str) -> None:
    """TEST_F(vfio_pci_liveupdate_uapi_test, preserve_device), UAPI file above:
    preservation only for VFIO cdev files (0 in iommufd mode, else -ENOENT)."""
    self = UapiFixture(mode)
    try:
        self.session.preserve_fd(self.device.fd, 0)
        ret = 0
    except KernelError as exc:
        ret = -(exc.errno or 0)
    assert ret == (0 if self.iommu.iommufd is not None else -errno.ENOENT)


@pytest.mark.parametrize("mode", MODES)
def test_uapi_preserve_group_fails(mode: str) -> None:
    """TEST_F(vfio_pci_liveupdate_uapi_test, preserve_group_fails) (UAPI file)."""
    self = UapiFixture(mode)
    if self.iommu.iommufd is not None:
        return
    assert self.device.group_fd is not None
    assert errno_of(self.session.preserve_fd, self.device.group_fd, 0) == errno.ENOENT


@pytest.mark.parametrize("mode", MODES)
def test_uapi_preserve_container_fails(mode: str) -> None:
    """TEST_F(vfio_pci_liveupdate_uapi_test, preserve_container_fails) (UAPI file):
    a legacy type1 container or iommufd's compat container is refused with ENOENT."""
    self = UapiFixture(mode)
    if self.iommu.iommufd is not None:
        return
    assert self.iommu.container is not None
    assert self.iommu.container.kind == ("iommufd-compat" if mode.startswith("iommufd_compat")
                                         else "type1")
    assert errno_of(self.session.preserve_fd, self.iommu.container, 0) == errno.ENOENT


STATE_SESSION = "567e1b8d-daf1-4a4a-ac13-35d6d275f646"
DEVICE_SESSION = "751ad95f-1621-4d68-8b5a-f9c2e460425f"
STATE_TOKEN, DEVICE_TOKEN, MEMFD_TOKEN = 0, 1, 2


def _stage1_device(k: Kernel, device_session: str) -> tuple[Device, object]:
    """before_kexec(): iommufd device, state file, device preserved in its session."""
    iommu = iommu_init(k, "iommufd")
    device = device_init(k, BDF, iommu)
    luo = k.open_liveupdate()
    create_state_file(luo, STATE_SESSION, STATE_TOKEN, next_stage=2)
    session = luo.create_session(device_session)
    session.preserve_fd(device.fd, DEVICE_TOKEN)  # VFIO_ASSERT_EQ(ret, 0)
    return device, (luo, session)


def _check_open_vfio_device_fails(k: Kernel) -> None:
    """check_open_vfio_device_fails(): the cdev and every container mode's
    VFIO_GROUP_GET_DEVICE_FD are EBUSY until the device is retrieved."""
    assert errno_of(k.vfio.open_device, BDF) == errno.EBUSY
    for mode, container in IOMMU_MODES.items():
        if container is None:
            continue
        iommu = iommu_init(k, mode)
        assert iommu.container is not None
        group = k.vfio.open_group(BDF)
        assert errno_of(group.get_device_fd, BDF) == errno.EBUSY
        group.close()
        iommu.container.close()


def test_kexec_dmatlack() -> None:
    """dmatlack/linux f8cfdc17ddb378a22de0d4684f6202c03634f60e
    tools/testing/selftests/vfio/vfio_pci_liveupdate_kexec_test.c (main)."""
    k = boot(config=VFIO_ONLY)
    _stage1_device(k, DEVICE_SESSION)
    k2 = k.kexec("v9", config=VFIO_ONLY)
    luo = k2.open_liveupdate()
    assert restore_and_read_stage(luo, STATE_SESSION, STATE_TOKEN) == 2
    session = luo.retrieve_session(DEVICE_SESSION)
    assert errno_of(session.finish) != 0  # before retrieving the device
    device_fd = session.retrieve_fd(DEVICE_TOKEN)
    assert isinstance(device_fd, VfioDeviceFile)
    iommu = iommu_init(k2, "iommufd")
    device = device_init(k2, BDF, iommu, device_fd)
    session.finish()  # VFIO_ASSERT_EQ(luo_session_finish(session_fd), 0)
    device.fd.close()


def test_kexec_samikhawaja() -> None:
    """samikhawaja/linux 5438e9eeaa36e090abc5e96ba89927364dc1d91a
    tools/testing/selftests/vfio/vfio_pci_liveupdate_kexec_test.c (main): adds
    check_open_vfio_device_fails() before the state is read."""
    k = boot(config=VFIO_ONLY)
    _stage1_device(k, DEVICE_SESSION)
    k2 = k.kexec("v9", config=VFIO_ONLY)
    _check_open_vfio_device_fails(k2)
    luo = k2.open_liveupdate()
    assert restore_and_read_stage(luo, STATE_SESSION, STATE_TOKEN) == 2
    session = luo.retrieve_session(DEVICE_SESSION)
    assert errno_of(session.finish) != 0
    device_fd = session.retrieve_fd(DEVICE_TOKEN)
    assert isinstance(device_fd, VfioDeviceFile)
    device = device_init(k2, BDF, iommu_init(k2, "iommufd"), device_fd)
    session.finish()
    device.fd.close()


def test_kexec_shvipin() -> None:
    """shvipin/linux 4036b3b3b246d4c088c0a5fb5b62c25d547a194c
    tools/testing/selftests/vfio/vfio_pci_liveupdate_kexec_test.c (main): a memfd
    DMA buffer in the device session, and FINISH fails until the retrieved device
    is bound to an iommufd.  The selftest-driver memcpy (``device->driver.ops``)
    is skipped: luosim's devices have no selftest driver."""
    k = boot(config=VFIO_ONLY)
    device_session, state_session = f"device-{BDF}", f"state-{BDF}"
    iommu = iommu_init(k, "iommufd")
    device = device_init(k, BDF, iommu)
    luo = k.open_liveupdate()
    create_state_file(luo, state_session, STATE_TOKEN, next_stage=2)
    session = luo.create_session(device_session)
    session.preserve_fd(device.fd, DEVICE_TOKEN)
    # dma_memfd_setup(): memfd_create + fallocate, preserved, mapped at 4 GiB
    memfd = k.memfd_create("dma-buffer", 2 * SZ_1M)
    memfd.populate()
    session.preserve_fd(memfd, MEMFD_TOKEN)
    assert iommu.iommufd is not None
    iommu.iommufd.ioas_map_file(iommu.ioas_id, memfd, 0, 2 * SZ_1M, SZ_4G)
    device.fd.set_irqs(False)  # vfio_pci_msix_disable(): else freeze() fails

    k2 = k.kexec("v9", config=VFIO_ONLY)
    _check_open_vfio_device_fails(k2)
    luo2 = k2.open_liveupdate()
    assert restore_and_read_stage(luo2, state_session, STATE_TOKEN) == 2
    session2 = luo2.retrieve_session(device_session)
    memfd2 = session2.retrieve_fd(MEMFD_TOKEN)
    assert errno_of(session2.finish) != 0  # before retrieving the device
    device_fd = session2.retrieve_fd(DEVICE_TOKEN)
    assert isinstance(device_fd, VfioDeviceFile)
    assert errno_of(session2.finish) != 0  # before binding to iommufd
    iommu2 = iommu_init(k2, "iommufd")
    device2 = device_init(k2, BDF, iommu2, device_fd)
    assert iommu2.iommufd is not None
    iommu2.iommufd.ioas_map_file(iommu2.ioas_id, memfd2, 0, 2 * SZ_1M,  # type: ignore[arg-type]
                                 SZ_4G)
    session2.finish()
    device2.fd.close()
