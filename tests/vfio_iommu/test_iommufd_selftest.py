"""``tools/testing/selftests/iommu/iommufd_liveupdate`` (spec pci.md §11, §7.3, §7.4).

Before kexec: the cdev before the iommufd fails (ENOENT: the iommufd has no
outgoing LUO token), the iommufd before the memfd fails (ENOENT: a mapped
file is not preserved), the right order succeeds, closing the session and
redoing it succeeds.  After kexec: the cdev is retrievable, the iommufd is
not (EOPNOTSUPP), binding a new iommufd to the retrieved cdev is EPERM,
FINISH is EBUSY, and a DMA-API driver bind is EBUSY.  Also: duplicate HWPT
token EADDRINUSE, changes refused while preserved.
"""

from __future__ import annotations

import errno

import pytest

from luosim.errors import KernelError
from luosim.kernel.kernel import Kernel
from luosim.kernel.vfio.pci import VfioDeviceFile

from .conftest import DSA0, DSA1, HWPT_TOKEN, IOVA, make_vm, pdev


def errno_of(fn: object, *args: object) -> int:
    with pytest.raises(KernelError) as e:
        fn(*args)  # type: ignore[operator]
    return e.value.errno or 0


def test_order_rules_and_redo(k: Kernel) -> None:
    vm = make_vm(k)
    vm.dev.set_irqs(False)
    lu = k.open_liveupdate()
    s = lu.create_session("iommufd")
    assert errno_of(s.preserve_fd, vm.dev, 3) == errno.ENOENT  # cdev before iommufd
    assert errno_of(s.preserve_fd, vm.iommufd, 2) == errno.ENOENT  # iommufd before memfd
    assert s.files == 0
    assert k.iommu.lu_out() is None  # every failure rolled the IOMMU FLB back
    s.preserve_fd(vm.ram, 1)
    s.preserve_fd(vm.iommufd, 2)
    s.preserve_fd(vm.dev, 3)
    assert k.iommu.device_preserved(k.iommu.device_by_name(DSA0))
    s.close()  # unpreserve everything
    assert k.iommu.lu_out() is None
    assert pdev(k, DSA0).lu.outgoing is None
    s = lu.create_session("iommufd")
    s.preserve_fd(vm.ram, 1)
    s.preserve_fd(vm.iommufd, 2)
    s.preserve_fd(vm.dev, 3)
    assert s.files == 3


def test_after_kexec(k: Kernel) -> None:
    vm = make_vm(k)
    s = k.open_liveupdate().create_session("iommufd")
    for tok, f in ((1, vm.ram), (2, vm.iommufd), (3, vm.dev)):
        s.preserve_fd(f, tok)
    k2 = k.kexec("v6")
    s2 = k2.open_liveupdate().retrieve_session("iommufd")
    d2 = s2.retrieve_fd(3)
    assert isinstance(d2, VfioDeviceFile)
    assert errno_of(s2.retrieve_fd, 2) == errno.EOPNOTSUPP
    assert errno_of(s2.retrieve_fd, 2) == errno.EOPNOTSUPP  # remembered
    fresh = k2.iommufd_mod.open()
    assert errno_of(d2.bind_iommufd, fresh) == errno.EPERM
    assert errno_of(s2.finish) == errno.EBUSY
    assert errno_of(k2.iommu.bind_dma_api_driver, DSA0) == errno.EBUSY
    k2.iommu.bind_dma_api_driver(DSA1)  # a device that was not preserved binds normally
    s2.retrieve_fd(1)
    assert errno_of(s2.finish) == errno.EBUSY  # the iommufd keeps the session pending


def test_duplicate_hwpt_token(k: Kernel) -> None:
    vm = make_vm(k)
    other = vm.iommufd.hwpt_alloc(vm.dev_id, vm.ioas)
    assert errno_of(vm.iommufd.hwpt_set_preserve, other, HWPT_TOKEN) == errno.EADDRINUSE
    vm.iommufd.hwpt_set_preserve(vm.hwpt, HWPT_TOKEN)  # re-marking itself is fine
    vm.iommufd.hwpt_set_preserve(other, HWPT_TOKEN + 1)


def test_unmarked_hwpt_and_unattached(k: Kernel) -> None:
    vm = make_vm(k, mark=False)
    s = k.open_liveupdate().create_session("s")
    s.preserve_fd(vm.ram, 1)
    s.preserve_fd(vm.iommufd, 2)
    assert errno_of(s.preserve_fd, vm.dev, 3) == errno.EINVAL  # HWPT not marked
    assert errno_of(vm.iommufd.device_preserve, 999) == errno.ENOENT
    dev2 = k.vfio.open_device(DSA1)
    dev_id = dev2.bind_iommufd(vm.iommufd)
    assert errno_of(vm.iommufd.device_preserve, dev_id) == errno.ENOENT  # no RID attachment


def test_changes_refused_while_preserved(k: Kernel) -> None:
    vm = make_vm(k)
    s = k.open_liveupdate().create_session("s")
    s.preserve_fd(vm.ram, 1)
    s.preserve_fd(vm.iommufd, 2)
    s.preserve_fd(vm.dev, 3)
    assert errno_of(vm.dev.attach_hwpt, vm.hwpt) == errno.EBUSY
    extra = k.memfd_create("extra", 1 << 20)
    assert errno_of(vm.iommufd.ioas_map_file, vm.ioas, extra, 0, 1 << 20,
                    IOVA + (1 << 30)) == errno.EBUSY
    assert errno_of(vm.iommufd.ioas_map_file, vm.ioas, extra, 0, 1 << 20, IOVA) == errno.EEXIST
