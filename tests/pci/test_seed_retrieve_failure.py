"""The seed scenario: the PCI FLB retrieve fails in the new kernel while another
subsystem's FLB is fine (spec pci.md §1 incoming refcount/retry, §4.6
``setup_device``, §9 first row, §10 inv. 1 and 10; v6 03/12 review "Should
this be considered fatal?").

Fault ``pci.flb.retrieve#1=ENOMEM``: the first ``pci_flb_retrieve()`` of the
new kernel, run from the first ``pci_setup_device()``, cannot allocate.

* policy ``panic`` (v7+, agreed in the v6 review): the kernel panics with
  "Failed to retrieve incoming FLB data (-ENOMEM)" before any pci_dev exists.
* policy ``warn`` (v6 as posted) depends on LUO's retry semantics:
  - luo-v5 LUO (profile v9) remembers the failed retrieve: every later
    ``get_incoming`` fails, nothing is preserved, ``pci=assign-busses``
    renumbers: nvme1 0000:06:00.0 -> 0000:04:00.0, nic 0000:09:00.0 ->
    0000:05:00.0, and the gpu lands on nvme1's old BDF 0000:06:00.0, so the
    driver's retrieve by BDF binds the gpu;
  - luo-v1 LUO (profiles v6, v7) retries retrieve on the next device, which
    re-reads the ``pci_ser`` the failed attempt already freed: BDFs survive,
    the first device set up is not marked incoming, and the incoming state
    lives in a free page that the next allocation reuses.
  A persistent failure (``corrupt:duplicate-entry``) renumbers in v6 too.
"""

from __future__ import annotations

import errno

import pytest

from luosim.errors import KernelPanic
from luosim.faults import Fault
from tests.pci.lu_helpers import (
    MARKER_FLB,
    MARKER_VALUE,
    PROFILES,
    boot,
    dev,
    kexec,
    logs,
    lu_device,
    names,
    preserve,
    raises_errno,
    retrieve,
    switch_topology,
)

SEED = Fault.parse("pci.flb.retrieve#1=ENOMEM")
WARN = {"pci.retrieve_failure": "warn"}
PATH = ["nvme1", "dp1", "nic", "dp2", "sw", "rp1"]


@pytest.mark.parametrize("profile", PROFILES)
def test_panic_policy(profile: str) -> None:
    k, drv = boot(switch_topology(), profile, faults=(SEED,))
    preserve(k, drv, ["nvme1", "nic"])
    with pytest.raises(KernelPanic) as info:
        kexec(k, profile, cmdline="pci=assign-busses", policy={"pci.retrieve_failure": "panic"})
    assert info.value.message == "Failed to retrieve incoming FLB data (-ENOMEM)"
    k2 = info.value.kernel
    assert k2 is not None and not k2.alive
    assert k2.pci.devices() == []  # no pci_dev was set up
    # the rest of the hand-over was fine: LUO parsed it, the other FLB is intact
    assert k2.liveupdate.liveupdate_number_in == 1
    [rec] = [r for r in k2.liveupdate.flbs.incoming_records or [] if r.name == MARKER_FLB]
    assert k2.machine.memory.read_u64(rec.data) == MARKER_VALUE
    assert [f.label() for f, _ctx in k.machine.faults.fired] == ["pci.flb.retrieve#1=ENOMEM"]


def test_warn_policy_renumbers_when_failure_is_remembered() -> None:
    """v9 (luo-v5 remembers the failed retrieve) with the v6 WARN policy."""
    k, drv = boot(switch_topology(), "v9", faults=(SEED,))
    before = names(k)
    preserve(k, drv, ["nvme1", "nic"])
    k2, drv2 = kexec(k, "v9", cmdline="pci=assign-busses", policy=WARN)
    assert k2.alive
    assert len(logs(k2, "Failed to retrieve incoming FLB data: -ENOMEM")) == 1  # once
    after = names(k2)
    moved = {h: (before[h], after[h]) for h in ("nvme1", "nic") if before[h] != after[h]}
    assert moved == {"nvme1": ("0000:06:00.0", "0000:04:00.0"),
                     "nic": ("0000:09:00.0", "0000:05:00.0")}
    assert after["gpu"] == "0000:06:00.0"  # another device now has nvme1's old BDF
    assert not any(k2.pci_lu.is_incoming(d) for d in k2.pci.devices())
    # the other subsystem's FLB retrieves fine
    assert k2.liveupdate.flb_get_incoming(drv2.marker) == MARKER_VALUE
    # the driver looks its device up by the preserved BDF and gets the wrong one
    s = lu_device(k2).retrieve_session("pci")
    assert s.retrieve_fd(1).dev.hw.hw_id == "gpu"  # type: ignore[attr-defined]
    with raises_errno(errno.ENODEV):  # nothing answers at nic's old BDF
        s.retrieve_fd(2)


@pytest.mark.parametrize("profile", ["v6", "v7"])
def test_warn_policy_retry_reads_freed_pci_ser(profile: str) -> None:
    """luo-v1 LUO retries: the second setup_device re-runs retrieve on freed memory.
    Without page poisoning (``init_on_free=0``) the stale bytes are still there and
    the use-after-free silently "works"."""
    k, drv = boot(switch_topology(), profile, faults=(SEED,))
    before = names(k)
    preserve(k, drv, ["nvme1", "nic"])
    k2, drv2 = kexec(k, profile, cmdline="pci=assign-busses init_on_free=0", policy=WARN)
    lu = k2.pci_lu
    assert names(k2) == before  # the retry succeeded before any bridge was scanned
    assert lu.retrieve_attempts == 2
    assert sorted(d.hw.hw_id for d in k2.pci.devices() if lu.is_incoming(d)) == sorted(PATH)
    assert lu.incoming_ser_is_free()  # in use, yet free in the page allocator
    assert lu.incoming_ser_freed()
    assert k2.liveupdate.flb_get_incoming(drv2.marker) == MARKER_VALUE
    # the next allocation reuses that page: preserving a device for the next update
    # puts the new outgoing pci_ser where the incoming one is still being used
    in_pa = lu.incoming.ser_pa  # type: ignore[union-attr]
    preserve(k2, drv2, ["gpu"], session="next")
    assert lu.outgoing.ser_pa == in_pa  # type: ignore[union-attr]
    assert not lu.incoming_ser_is_free() and lu.incoming_ser_freed()
    gpu_entries = [(0, 0x1000, 1), (0, 0x0010, 1)]  # gpu 10:00.0 and rp2 00:02.0
    assert lu.outgoing_entries() == gpu_entries
    if profile == "v6":  # the incoming slots now are the new outgoing slots
        assert lu.incoming_entries()[:2] == gpu_entries
    else:  # v7: the slots live in the restored blocks; nr_devices is shared
        assert lu.incoming_nr_devices() == lu.outgoing_nr_devices() == 2
    s, _files = retrieve(k2, 2)
    s.finish()  # finishing the old devices corrupts the next hand-over
    if profile == "v6":
        assert logs(k2, "Preserved device has a corrupted refcount!")
        assert lu.outgoing_entries() == []  # gpu is no longer handed over ...
        assert dev(k2, "gpu").lu.outgoing is not None  # ... though it is still preserved
    else:
        assert lu.outgoing_nr_devices() == (2 - 6) & 0xFFFFFFFF  # decremented 6 times
        assert logs(k2, f"kho_restore_free: {in_pa:#x} not restorable")


def test_warn_policy_v6_first_device_preserved_is_lost() -> None:
    """When the device whose setup failed is itself preserved, it is never incoming
    (no ACS/ARI inheritance, vfio open not blocked); its finish only warns, and since
    it never held an FLB reference the FLB is freed with its slot still live."""
    k, drv = boot(switch_topology(), "v6", faults=(SEED,))
    preserve(k, drv, ["hostdev", "nic"])
    k2, _ = kexec(k, "v6", cmdline="init_on_free=0", policy=WARN)
    lu = k2.pci_lu
    assert not lu.is_incoming(dev(k2, "hostdev")) and lu.is_incoming(dev(k2, "nic"))
    assert k2.vfio.open_device("0000:00:00.0")  # not refused: it is not incoming
    s, _ = retrieve(k2, 2)
    assert lu.pending_incoming() == ["0000:00:00.0", "0000:00:01.0", "0000:01:00.0",
                                     "0000:02:02.0", "0000:09:00.0"]
    s.finish()
    assert logs(k2, "0000:00:00.0: Cannot finish preserving an unpreserved device")
    assert lu.incoming_finished  # freed with hostdev's slot still at refcount 1


def test_warn_policy_v6_persistent_corruption_renumbers() -> None:
    k, drv = boot(switch_topology(), "v6",
                  faults=(Fault.parse("pci.flb.retrieve#1=corrupt:duplicate-entry"),))
    before = names(k)
    preserve(k, drv, ["nvme1", "nic"])
    k2, _ = kexec(k, "v6", cmdline="pci=assign-busses", policy=WARN)
    after = names(k2)
    assert (before["nvme1"], after["nvme1"]) == ("0000:06:00.0", "0000:04:00.0")
    assert (before["nic"], after["nic"]) == ("0000:09:00.0", "0000:05:00.0")
    assert k2.pci_lu.retrieve_attempts > 2  # retried on every device, failing each time
    assert len(logs(k2, "Failed to retrieve incoming FLB data: -EBUSY")) == 1


@pytest.mark.parametrize("profile", ["v6", "v7"])
def test_warn_policy_with_page_poisoning_renumbers(profile: str) -> None:
    """With freed pages poisoned (the model's default, like ``init_on_free=1``) the
    luo-v1 retry reads 0x6b bytes, fails again on every device, and the kernel goes
    on as if nothing was preserved: pci=assign-busses moves the preserved devices
    (spec pci.md §9 first row, §10 inv. 1 broken; why v7 made it a panic)."""
    k, drv = boot(switch_topology(), profile, faults=(SEED,))
    before = dict(names(k))
    preserve(k, drv, ["nvme1", "nic"])
    k2, _ = kexec(k, profile, cmdline="pci=assign-busses", policy=WARN)
    after = dict(names(k2))
    assert k2.pci_lu.retrieve_attempts >= 2
    assert not any(k2.pci_lu.is_incoming(d) for d in k2.pci.devices())
    assert (before["nvme1"], after["nvme1"]) == ("0000:06:00.0", "0000:04:00.0")
    assert (before["nic"], after["nic"]) == ("0000:09:00.0", "0000:05:00.0")
    assert after["gpu"] == "0000:06:00.0"  # a different device on nvme1's preserved BDF
