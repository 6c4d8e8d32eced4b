"""Errors of pci_liveupdate_preserve() and their order (spec pci.md §4.2, §4.3, §5.5,
§5.8, §9; §10 inv. 2 and 4: a failed preserve changes nothing).

VF -> EINVAL first (v9: after the FLB lookup, per path element, with a
warning); LU off -> EOPNOTSUPP; nothing preserved yet -> ENOENT; frozen ->
EINVAL; endpoint already preserved -> EBUSY; device needing an ACS quirk ->
EINVAL; v6 table full -> ENOSPC; an error part-way up the path undoes the
entries made below it.
"""

from __future__ import annotations

import errno

import pytest

from luosim.faults import Fault
from luosim.hw.machine import Machine
from luosim.kernel.kernel import Kernel
from tests.pci.lu_helpers import (
    PROFILES,
    Driver,
    PciTestHandler,
    boot,
    dev,
    logs,
    lu_device,
    preserve,
    raises_errno,
    switch_topology,
)

EXTRA_PORTS = [{"slot": 3, "name": "dp3", "hotplug": True,
                "children": [{"slot": 0, "name": "hpcard", "present": False}]}]
ROOT_EXTRA = [
    {"slot": 3, "kind": "root-port", "name": "rpq", "vendor": 0x8086, "device": 0xA110,
     "children": [{"slot": 0, "name": "qdev"}]},  # Intel PCH root port: ACS via quirk
    {"slot": 4, "kind": "root-port", "name": "rp4",
     "children": [{"slot": 0, "name": "pf", "sriov": {"total_vfs": 4}}]},
]


def topo() -> dict[str, object]:
    return switch_topology(extra_ports=EXTRA_PORTS, root_extra=ROOT_EXTRA)


def snapshot(k: Kernel) -> tuple[object, ...]:
    lu = k.pci_lu
    return (tuple(lu.outgoing_entries()), lu.outgoing_nr_devices(),
            tuple(d.lu.outgoing for d in k.pci.devices()))


@pytest.mark.parametrize("profile", PROFILES)
def test_enoent_before_any_file(profile: str) -> None:
    k, _ = boot(topo(), profile)
    with raises_errno(errno.ENOENT):
        k.pci_lu.preserve(dev(k, "nvme0"))
    k.pci_lu.unpreserve(dev(k, "nvme0"))  # void: a warning only
    assert logs(k, "Cannot unpreserve device without outgoing Live Update state")


@pytest.mark.parametrize("profile", PROFILES)
def test_eopnotsupp_when_liveupdate_off(profile: str) -> None:
    k = Machine.from_topology(topo()).boot(profile, cmdline="liveupdate=off")
    with raises_errno(errno.EOPNOTSUPP):
        k.pci_lu.preserve(dev(k, "nvme0"))
    with raises_errno(errno.EOPNOTSUPP):
        Driver(k)  # handler registration already fails
    with raises_errno(errno.EOPNOTSUPP):
        k.pci_lu.register_flb(PciTestHandler(k))


@pytest.mark.parametrize("profile", PROFILES)
def test_vf_is_einval(profile: str) -> None:
    k, drv = boot(topo(), profile)
    vfs = k.pci.enable_sriov(dev(k, "pf"), 2)
    vf = vfs[0]
    assert vf.is_virtfn
    # before any file is preserved: v6/v7 test the VF first, v9 looks the FLB up first
    with raises_errno(errno.ENOENT if profile == "v9" else errno.EINVAL):
        k.pci_lu.preserve(vf)
    s, _ = preserve(k, drv, ["nvme0"])
    before = snapshot(k)
    with raises_errno(errno.EINVAL):
        k.pci_lu.preserve(vf)
    assert snapshot(k) == before
    assert bool(logs(k, "Virtual Functions cannot be preserved")) is (profile == "v9")
    with raises_errno(errno.EINVAL):  # through LUO: the handler's error reaches userspace
        s.preserve_fd(drv.open(vf.hw.hw_id), 7)
    assert snapshot(k) == before


@pytest.mark.parametrize("profile", PROFILES)
def test_ebusy_double_preserve_endpoint(profile: str) -> None:
    k, drv = boot(topo(), profile)
    s, _ = preserve(k, drv, ["nvme0"])
    before = snapshot(k)
    with raises_errno(errno.EBUSY):
        k.pci_lu.preserve(dev(k, "nvme0"))
    with raises_errno(errno.EBUSY):  # a second file for the same device
        s.preserve_fd(drv.open("nvme0"), 2)
    assert snapshot(k) == before
    k.pci_lu.preserve(dev(k, "dp0"))  # a bridge only gains a reference
    assert dict(((b, rc) for _d, b, rc in k.pci_lu.outgoing_entries()))[0x0200] == 2


@pytest.mark.parametrize("profile", PROFILES)
def test_einval_after_freeze(profile: str) -> None:
    """§5.8 / inv. 4: after shutdown froze a device its outgoing status never changes."""
    k, drv = boot(topo(), profile)
    preserve(k, drv, ["nvme0"])
    lu = k.pci_lu
    lu.freeze(dev(k, "nvme1"))
    before = snapshot(k)
    with raises_errno(errno.EINVAL):
        lu.preserve(dev(k, "nvme1"))
    assert snapshot(k) == before
    # a frozen ancestor fails the walk; the entries made below it are undone
    lu.freeze(dev(k, "dp2"))
    with raises_errno(errno.EINVAL):
        lu.preserve(dev(k, "nic"))
    assert snapshot(k) == before
    lu.freeze(dev(k, "nvme0"))
    lu.unpreserve(dev(k, "nvme0"))  # refused with a warning
    assert snapshot(k) == before
    assert logs(k, "Cannot unpreserve device after it was frozen")


@pytest.mark.parametrize("profile", PROFILES)
def test_acs_quirk_device_refused_and_undone(profile: str) -> None:
    k, drv = boot(topo(), profile)
    preserve(k, drv, ["nvme0"])
    before = snapshot(k)
    with raises_errno(errno.EINVAL):  # qdev gets an entry, rpq (quirk) fails, qdev undone
        k.pci_lu.preserve(dev(k, "qdev"))
    assert logs(k, "requires an ACS quirk")
    assert dev(k, "qdev").lu.outgoing is None
    assert snapshot(k) == before
    if profile != "v6":  # the block set keeps the (zeroed) entry as a hole
        assert k.pci_lu.outgoing_slots()[-1] == (0, 0, 0)


def test_enospc_when_v6_table_is_full() -> None:
    """§3.1: capacity = devices present at FLB preserve (bridges and VFs included,
    later hot-plugged devices not): hot-added devices run out of slots."""
    extra = [{"slot": 4, "name": "dp4", "hotplug": True,
              "children": [{"slot": 0, "name": "late", "present": False}]}]
    k, drv = boot(switch_topology(extra_ports=EXTRA_PORTS + extra), "v6")
    s, _ = preserve(k, drv, ["hostdev", "nvme0", "nvme1", "nic", "gpu"])
    lu = k.pci_lu
    present = len(k.pci.devices())
    assert lu.outgoing_max_nr_devices() == present
    assert lu.outgoing_nr_devices() == present - 2  # the empty hot-plug ports dp3, dp4
    [late] = k.pci.hot_add("late")
    [hp] = k.pci.hot_add("hpcard")
    lu.preserve(late)  # late and dp4 take the last two slots
    assert lu.outgoing_nr_devices() == present
    full = snapshot(k)
    with raises_errno(errno.ENOSPC):
        lu.preserve(hp)
    assert snapshot(k) == full
    with raises_errno(errno.ENOSPC):  # through LUO: the file is not preserved either
        s.preserve_fd(drv.open("hpcard"), 9)
    assert s.files == 5
    assert snapshot(k) == full
    lu.unpreserve(dev(k, "gpu"))  # frees gpu and rp2
    lu.preserve(hp)  # hpcard and dp3 reuse them
    assert lu.outgoing_nr_devices() == present


@pytest.mark.parametrize("profile", ["v7", "v9"])
def test_blockset_has_no_capacity_limit(profile: str) -> None:
    k, drv = boot(topo(), profile)
    preserve(k, drv, ["nvme0"])
    [card] = k.pci.hot_add("hpcard")
    k.pci_lu.preserve(card)
    assert dev(k, "hpcard").lu.outgoing is not None


@pytest.mark.parametrize("profile", PROFILES)
def test_flb_preserve_enomem(profile: str) -> None:
    """Fault ``pci.flb.preserve``: the first PCI-linked file cannot be preserved; LUO
    rolls back, nothing is allocated, and the next attempt succeeds."""
    k, drv = boot(topo(), profile, faults=(Fault("pci.flb.preserve", 1, "ENOMEM"),))
    s = lu_device(k).create_session("pci")
    with raises_errno(errno.ENOMEM):
        s.preserve_fd(drv.open("nvme0"), 1)
    assert k.pci_lu.outgoing is None and dev(k, "nvme0").lu.outgoing is None
    s.preserve_fd(drv.open("nvme0"), 1)
    assert k.pci_lu.outgoing_nr_devices() == 4
