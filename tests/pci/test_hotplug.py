"""Hot-remove and re-add of preserved devices (spec pci.md §4.6, §5.7, §9).

A pending incoming device that is removed and re-added: v6's cleanup
finishes it (and drops one reference on each ancestor), so the re-added
device is not incoming; v7's cleanup only drops the FLB reference and v9's
only warns, so the slot stays pending and the re-added device is incoming
again.  Removing an outgoing-preserved device: v6 unpreserves it, v7/v9
only warn (the slot would be handed over).
"""

from __future__ import annotations

import pytest

from luosim.kernel.kernel import Kernel
from tests.pci.lu_helpers import (
    PROFILES,
    boot,
    dev,
    kexec,
    lu_device,
    preserve,
    switch_topology,
)

EXPECT_INCOMING_AGAIN = {"v6": False, "v7": True, "v9": True}


def flb_count(k: Kernel) -> int:
    """LUO's incoming reference count of the PCI FLB."""
    return int(k.liveupdate.flbs.incoming_state(k.pci_lu.compatible)["count"])


@pytest.mark.parametrize("profile", PROFILES)
def test_remove_and_readd_pending_incoming(profile: str) -> None:
    k, drv = boot(switch_topology(), profile)
    preserve(k, drv, ["nvme0", "nvme1"])
    k2, _ = kexec(k, profile, cmdline="pci=assign-busses")
    lu = k2.pci_lu
    old = dev(k2, "nvme0")
    assert lu.is_incoming(old)
    refs = flb_count(k2)
    removed = k2.pci.hot_remove("nvme0")
    assert [d.hw.hw_id for d in removed] == ["nvme0"]
    assert any("Destroying incoming-preserved device" in m for _l, _s, m in k2.dmesg)
    pending = lu.pending_incoming()
    if profile == "v6":  # finished: nvme0 and dp0 drop to 0, sw and rp1 lose one each
        assert "0000:03:00.0" not in pending and "0000:02:00.0" not in pending
        assert lu.incoming_nr_devices() == 4
        assert flb_count(k2) == refs - 2  # the setup refs of nvme0 and dp0
    elif profile == "v7":  # the setup reference is dropped, the slot stays pending
        assert "0000:03:00.0" in pending and lu.incoming_nr_devices() == 6
        assert flb_count(k2) == refs - 1
    else:
        assert "0000:03:00.0" in pending and flb_count(k2) == refs
    new = k2.pci.hot_add("nvme0")
    assert [d.name for d in new] == ["0000:03:00.0"]
    assert lu.is_incoming(new[0]) is EXPECT_INCOMING_AGAIN[profile]
    assert new[0].lu.was_preserved is EXPECT_INCOMING_AGAIN[profile]


@pytest.mark.parametrize("profile", PROFILES)
def test_remove_outgoing_preserved(profile: str) -> None:
    k, drv = boot(switch_topology(), profile)
    preserve(k, drv, ["nvme0", "nvme1"])
    lu = k.pci_lu
    k.pci.hot_remove("nvme0")
    assert any("Destroying outgoing-preserved device" in m for _l, _s, m in k.dmesg)
    names = {f"{b >> 8:02x}:{(b >> 3) & 31:02x}.{b & 7}": rc for _d, b, rc in
             lu.outgoing_entries()}
    if profile == "v6":
        assert "03:00.0" not in names and "02:00.0" not in names
        assert names["01:00.0"] == 1 and lu.outgoing_nr_devices() == 4
    else:
        assert names["03:00.0"] == 1 and names["01:00.0"] == 2
        assert lu.outgoing_nr_devices() == 6


@pytest.mark.parametrize("profile", PROFILES)
def test_hot_added_after_finish_is_not_incoming(profile: str) -> None:
    """§5.7: after finish the slot is 0 (or the FLB is gone): a re-probe is a new device."""
    k, drv = boot(switch_topology(), profile)
    preserve(k, drv, ["nvme0"])
    k2, _ = kexec(k, profile)
    s = lu_device(k2).retrieve_session("pci")
    s.retrieve_fd(1)
    s.finish()
    k2.pci.hot_remove("nvme0")
    new = k2.pci.hot_add("nvme0")
    assert not k2.pci_lu.is_incoming(new[0])
    assert not any("Destroying" in m for _l, _s, m in k2.dmesg)
