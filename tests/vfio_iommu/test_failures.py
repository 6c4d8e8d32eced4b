"""Failure semantics (spec pci.md §9): freeze refusal, corrupt IOMMU hand-over,
domain restore failure, vfio retrieve failure."""

from __future__ import annotations

import errno

import pytest

from luosim.errors import KernelBug, KernelError, KernelPanic
from luosim.faults import Fault
from luosim.hw.iommu import REASON_CONTEXT
from luosim.kernel.kernel import Kernel

from .conftest import DSA0, boot, make_vm, pdev


def preserve(k: Kernel) -> None:
    vm = make_vm(k)
    s = k.open_liveupdate().create_session("vm")
    for tok, f in ((1, vm.ram), (2, vm.iommufd), (3, vm.dev)):
        s.preserve_fd(f, tok)


def test_freeze_with_irqs_on_fails_reboot(k: Kernel) -> None:
    vm = make_vm(k)
    vm.dev.set_irqs(True)
    s = k.open_liveupdate().create_session("vm")
    for tok, f in ((1, vm.ram), (2, vm.iommufd), (3, vm.dev)):
        s.preserve_fd(f, tok)
    with pytest.raises(KernelError) as e:
        k.kexec("v6")
    assert e.value.errno == errno.EINVAL
    assert k.alive and k.machine.iommu.units[0].translation_enabled
    with pytest.raises(KernelError) as e:
        vm.dev.set_irqs(False)
    assert e.value.errno == errno.EIO


def test_freeze_not_d0(k: Kernel) -> None:
    dev = k.vfio.open_device(DSA0)
    dev.set_power("D3hot")
    k.open_liveupdate().create_session("s").preserve_fd(dev, 1)
    with pytest.raises(KernelError) as e:
        k.kexec("v6")
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("effect", ["ENOMEM", "EINVAL", "corrupt:version"])
def test_iommu_flb_retrieve_failure_panics(effect: str) -> None:
    k = boot(faults=(Fault.parse(f"iommu.flb.retrieve#1={effect}"),))
    preserve(k)
    with pytest.raises(KernelPanic) as e:
        k.kexec("v6")
    assert "iommu" in e.value.message
    assert e.value.kernel is not None and not e.value.kernel.alive


def test_missing_root_table_is_bug(k: Kernel) -> None:
    preserve(k)
    out = k.iommu.lu_out()
    assert out is not None
    root = k.machine.iommu.units[0].rtaddr
    k.kho.unpreserve_pages(root, 1)  # the hand-over lost the root table
    with pytest.raises(KernelBug):
        k.kexec("v6")


def test_restore_domain_failure_falls_back() -> None:
    k = boot(faults=(Fault.parse("iommu.restore_domain#1=ENOMEM"),))
    preserve(k)
    k2 = k.kexec("v6")
    assert any("failed to restore preserved domain" in msg for _l, _s, msg in k2.dmesg)
    dev = k2.iommu.device_by_name(DSA0)
    assert dev.group.owner is None  # not owned: the DMA-API driver may bind
    unit = k2.machine.iommu.units[0]
    res = k2.machine.iommu.resolve(0, dev.rid, 4 << 30, True)
    assert res.reason == REASON_CONTEXT  # fell back to blocked: DMA faults, never strays
    k2.iommu.bind_dma_api_driver(DSA0)
    assert unit.translation_enabled


def test_vfio_retrieve_enodev_blocks_finish() -> None:
    k = boot(faults=(Fault.parse("vfio.retrieve#1=ENODEV"),))
    dev = k.vfio.open_device(DSA0)
    s = k.open_liveupdate().create_session("s")
    s.preserve_fd(dev, 1)
    k2 = k.kexec("v6")
    s2 = k2.open_liveupdate().retrieve_session("s")
    for _ in range(2):
        with pytest.raises(KernelError) as e:
            s2.retrieve_fd(1)
        assert e.value.errno == errno.ENODEV
    with pytest.raises(KernelError) as e:
        s2.finish()
    assert e.value.errno == errno.EBUSY
    assert pdev(k2, DSA0).is_incoming


def test_vfio_freeze_fault(k: Kernel) -> None:
    k2 = boot(faults=(Fault.parse("vfio.freeze#1=EINVAL"),))
    dev = k2.vfio.open_device(DSA0)
    k2.open_liveupdate().create_session("s").preserve_fd(dev, 1)
    with pytest.raises(KernelError) as e:
        k2.kexec("v6")
    assert e.value.errno == errno.EINVAL and k2.alive
