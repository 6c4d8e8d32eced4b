"""IOMMU live update phase 2 (profile v9): RETRIEVE_FD of an iommufd, IOMMU_HWPT_LU_RESTORE,
takeover of the restored devices, FINISH, and preserving everything again; kernel config
switches as boot options (issue #11 items 1 and 3)."""

from __future__ import annotations

import errno

import pytest

from luosim.errors import KernelError
from luosim.hw.machine import Machine
from luosim.kernel.iommu.iommufd import IOMMUFD_HWPT_SER, IOMMUFD_SER_HDR, IommufdFile
from luosim.kernel.kernel import Kernel
from luosim.kernel.liveupdate.uapi import Session
from luosim.kernel.vfio.pci import VfioDeviceFile

from .conftest import DSA0, DSA1, HWPT_TOKEN, IOVA, RAM, SEALS, TOPO


def errno_of(fn: object, *args: object) -> int:
    with pytest.raises(KernelError) as e:
        fn(*args)  # type: ignore[operator]
    return e.value.errno or 0


def stage1(k: Kernel) -> Session:
    """Guest RAM, one iommufd, two devices on one marked HWPT, all preserved."""
    ram = k.memfd_create("ram", RAM)
    ram.add_seals(SEALS)
    ictx = k.iommufd_mod.open()
    ioas = ictx.ioas_alloc()
    ictx.ioas_map_file(ioas, ram, 0, RAM, IOVA)
    devs = [k.vfio.open_device(b) for b in (DSA0, DSA1)]
    ids = [d.bind_iommufd(ictx) for d in devs]
    hwpt = ictx.hwpt_alloc(ids[0], ioas)
    for d in devs:
        d.attach_hwpt(hwpt)
    ictx.hwpt_set_preserve(hwpt, HWPT_TOKEN)
    s = k.open_liveupdate().create_session("vm")
    s.preserve_fd(ram, 1)
    s.preserve_fd(ictx, 2)
    s.preserve_fd(devs[0], 3)
    s.preserve_fd(devs[1], 4)
    return s


def test_restore_rebind_finish_and_preserve_again() -> None:
    k = Machine.from_topology(TOPO).boot("v9")
    stage1(k)
    k2 = k.kexec("v9")
    lu2 = k2.open_liveupdate()
    s = lu2.retrieve_session("vm")
    ram = s.retrieve_fd(1)
    ictx = s.retrieve_fd(2)
    assert isinstance(ictx, IommufdFile) and ictx.lu is not None
    assert [(r.token, r.reclaimed) for r in ictx.lu] == [(HWPT_TOKEN, False)]
    d0, d1 = s.retrieve_fd(3), s.retrieve_fd(4)
    assert isinstance(d0, VfioDeviceFile) and isinstance(d1, VfioDeviceFile)
    # a fresh iommufd still cannot take the devices; IOMMU_HWPT_LU_RESTORE needs ictx->lu
    fresh = k2.iommufd_mod.open()
    assert errno_of(d0.bind_iommufd, fresh) == errno.EPERM
    assert errno_of(fresh.hwpt_lu_restore, HWPT_TOKEN) == errno.ENOTTY
    fresh.close()
    n0 = d0.bind_iommufd(ictx)
    # the other device on the preserved HWPT is not bound yet (duo selftest): ENODEV
    assert errno_of(ictx.hwpt_lu_restore, HWPT_TOKEN) == errno.ENODEV
    d1.bind_iommufd(ictx)
    assert errno_of(ictx.hwpt_lu_restore, 0xBAD) == errno.ENOENT
    restored = ictx.hwpt_lu_restore(HWPT_TOKEN)
    assert errno_of(ictx.hwpt_lu_restore, HWPT_TOKEN) == errno.ENOENT  # reclaimed
    rec = ictx.lu[0]
    assert rec.reclaimed
    mem = k2.machine.memory
    assert mem.read(ictx.lu_ser_pa + IOMMUFD_SER_HDR.size + 16, 1) == b"\x01"
    assert IOMMUFD_HWPT_SER.size == 24  # include/linux/kho/abi/iommufd.h (packed)
    dom = ictx.hwpts[restored].domain
    assert dom.restored and len(dom.devices) == 2  # DMA still translated by it
    # FINISH refuses while the restored HWPT has attachments
    assert errno_of(s.finish) == errno.EBUSY
    ioas = ictx.ioas_alloc()
    ictx.ioas_map_file(ioas, ram, 0, RAM, IOVA)  # type: ignore[arg-type]
    new = ictx.hwpt_alloc(n0, ioas)
    d0.attach_hwpt(new)
    d1.attach_hwpt(new)
    assert not dom.devices
    ictx.hwpt_destroy(restored)
    ictx.hwpt_set_preserve(new, HWPT_TOKEN)
    s.finish()
    assert ictx.lu is None
    assert k2.liveupdate.flbs.incoming_state("iommu-liveupdate")["finished"]
    # the same files can be preserved again, in the same order
    s2 = lu2.create_session("vm")
    for tok, f in ((1, ram), (2, ictx), (3, d0), (4, d1)):
        s2.preserve_fd(f, tok)
    k3 = k2.kexec("v9")
    assert k3.liveupdate.liveupdate_number_in == 2
    ictx3 = k3.open_liveupdate().retrieve_session("vm").retrieve_fd(2)
    assert isinstance(ictx3, IommufdFile) and ictx3.lu is not None


def test_phase1_profiles_keep_eopnotsupp() -> None:
    k = Machine.from_topology(TOPO).boot("v7")
    stage1(k)
    k2 = k.kexec("v7")
    s = k2.open_liveupdate().retrieve_session("vm")
    assert errno_of(s.retrieve_fd, 2) == errno.EOPNOTSUPP
    assert k2.profile.iommufd_lu == "phase1"


def test_config_switches() -> None:
    with pytest.raises(ValueError, match="CONFIG_NOPE"):
        Machine.from_topology(TOPO).boot("v9", config={"CONFIG_NOPE": True})
    k = Machine.from_topology(TOPO).boot("v9")
    assert k.configured("CONFIG_IOMMU_LIVEUPDATE")
    with pytest.raises(ValueError, match="CONFIG_NOPE"):
        k.kexec("v9", config={"CONFIG_NOPE": False})
    assert k.alive  # refused before anything irreversible
    # no LUO: no /dev/liveupdate
    k0 = Machine.from_topology(TOPO).boot("v9", config={"CONFIG_LIVEUPDATE": False})
    assert errno_of(k0.open_liveupdate) == errno.ENOENT
    # no IOMMU live update: the iommufd has no handler (ENOENT), a device is
    # preserved without iommufd_device_preserve() and the next kernel ignores IOMMU state
    k1 = Machine.from_topology(TOPO).boot("v9", config={"CONFIG_IOMMU_LIVEUPDATE": False})
    ictx = k1.iommufd_mod.open()
    dev = k1.vfio.open_device(DSA0)
    n = dev.bind_iommufd(ictx)
    dev.attach_hwpt(ictx.hwpt_alloc(n, ictx.ioas_alloc()))
    s = k1.open_liveupdate().create_session("s")
    assert errno_of(s.preserve_fd, ictx, 1) == errno.ENOENT
    s.preserve_fd(dev, 2)
    assert not k1.iommu.device_preserved(k1.iommu.device_by_name(DSA0))
    k2 = k1.kexec("v9", config={"CONFIG_IOMMU_LIVEUPDATE": False})
    assert not k2.configured("CONFIG_IOMMU_LIVEUPDATE")
    d2 = k2.open_liveupdate().retrieve_session("s").retrieve_fd(2)
    assert isinstance(d2, VfioDeviceFile)
    d2.bind_iommufd(k2.iommufd_mod.open())  # no preserved owner: a fresh iommufd binds
    # no vfio live update: the cdev has no handler
    kv = Machine.from_topology(TOPO).boot("v9", config={"CONFIG_VFIO_PCI_LIVEUPDATE": False})
    sv = kv.open_liveupdate().create_session("s")
    assert errno_of(sv.preserve_fd, kv.vfio.open_device(DSA0), 1) == errno.ENOENT
    # /dev/vfio/vfio: type1 by default, iommufd compat, or absent
    assert k.vfio.open_container().kind == "type1"
    kc = Machine.from_topology(TOPO).boot("v9", config={"CONFIG_IOMMUFD_VFIO_CONTAINER": True})
    assert kc.vfio.open_container().kind == "iommufd-compat"
    kn = Machine.from_topology(TOPO).boot("v9", config={"CONFIG_VFIO_CONTAINER": False})
    assert errno_of(kn.vfio.open_container) == errno.ENOENT


def test_iommu7_exempts_only_devices_taken_over() -> None:
    """IOMMU-7 lets a preserved device leave its preserved context entry only after
    the retrieved iommufd has taken it over (bind); a device still held by the
    preserved owner, or bound to nothing, stays checked."""
    from luosim.check.rules_iommu import _taken_over
    k = Machine.from_topology(TOPO).boot("v9")
    stage1(k)
    k2 = k.kexec("v9")
    s = k2.open_liveupdate().retrieve_session("vm")
    ictx = s.retrieve_fd(2)
    d0 = s.retrieve_fd(3)
    assert isinstance(ictx, IommufdFile) and isinstance(d0, VfioDeviceFile)
    seg_rid = {(0, k2.pci.find(b).bdf): n for b, n in  # type: ignore[union-attr]
               ((DSA0, "dsa0"), (DSA1, "dsa1"))}
    assert _taken_over(k2, seg_rid) == set()
    d0.bind_iommufd(ictx)
    assert _taken_over(k2, seg_rid) == {"dsa0"}
