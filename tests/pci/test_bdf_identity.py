"""Invariant 1, BDF identity (spec pci.md §5.1, §5.2, §10 inv. 1).

Two endpoints behind a switch are preserved through a small driver's file
handler linked to the PCI FLB.  The firmware numbers buses sparsely, so
Linux's own numbering (``pci=assign-busses``) would move them; across the
kexec every bridge inherits its numbers instead, with and without
``pci=assign-busses``, in every profile.  The new kernel marks the devices
and their upstream bridges incoming; finishing the session clears the marks
and frees the incoming FLB.
"""

from __future__ import annotations

import pytest

from tests.pci.lu_helpers import (
    PROFILES,
    boot,
    dev,
    kexec,
    names,
    preserve,
    retrieve,
    switch_topology,
)

PRESERVED = ["nvme1", "nic"]
PATH = ["nvme1", "dp1", "nic", "dp2", "sw", "rp1"]  # the devices and every bridge above them


def test_firmware_numbering_differs_from_linux() -> None:
    """Precondition: without inheritance these devices would be renumbered."""
    k, _ = boot(switch_topology(), "v6")
    cold, _ = boot(switch_topology(), "v6", cmdline="pci=assign-busses")
    fw, linux = names(k), names(cold)
    assert (fw["nvme1"], fw["nic"]) == ("0000:06:00.0", "0000:09:00.0")
    assert (linux["nvme1"], linux["nic"]) == ("0000:04:00.0", "0000:05:00.0")


@pytest.mark.parametrize("cmdline", ["", "pci=assign-busses"])
@pytest.mark.parametrize("profile", PROFILES)
def test_bdfs_survive_kexec(profile: str, cmdline: str) -> None:
    k, drv = boot(switch_topology(), profile)
    before = names(k)
    preserve(k, drv, PRESERVED)
    k2, _ = kexec(k, profile, cmdline=cmdline)
    after = names(k2)
    assert after == before  # inheritance is global: every bridge keeps its numbers
    lu = k2.pci_lu
    incoming = sorted(d.hw.hw_id for d in k2.pci.devices() if lu.is_incoming(d))
    assert incoming == sorted(PATH)
    assert all(dev(k2, h).lu.was_preserved for h in PATH)
    assert lu.had_incoming
    assert lu.pending_incoming() == sorted(before[h] for h in PATH)
    s, files = retrieve(k2, 2)
    assert [f.dev.name for f in files] == [before[h] for h in PRESERVED]  # type: ignore[attr-defined]
    s.finish()
    assert not any(lu.is_incoming(d) for d in k2.pci.devices())
    assert all(dev(k2, h).lu.was_preserved for h in PATH)  # never cleared (§5.3)
    assert lu.incoming_finished and lu.incoming_nr_devices() is None
    assert lu.pending_incoming() == []


@pytest.mark.parametrize("profile", PROFILES)
def test_cold_boot_after_preservation_renumbers(profile: str) -> None:
    """Contrast: a cold boot (no hand-over) with assign-busses uses Linux's numbering."""
    k, drv = boot(switch_topology(), profile)
    preserve(k, drv, PRESERVED)
    m = k.machine
    k.alive = False  # power cut: the kernel is gone without kexec
    m.pci.power_on()
    k2 = m.boot(profile, cmdline="pci=assign-busses")
    assert not k2.pci_lu.had_incoming
    got = names(k2)
    assert (got["nvme1"], got["nic"]) == ("0000:04:00.0", "0000:05:00.0")


@pytest.mark.parametrize("profile", ["v6", "v7"])
def test_v6_rule_normal_numbering_after_finish(profile: str) -> None:
    """§5.1: once every incoming device finished (nr_devices == 0), later scans use
    normal rules again: a bridge that lost its numbers is renumbered on rescan."""
    k, drv = boot(switch_topology(), profile)
    preserve(k, drv, PRESERVED)
    k2, _ = kexec(k, profile, cmdline="pci=assign-busses")
    s, _ = retrieve(k2, 2)
    s.finish()
    assert k2.pci_lu.incoming_nr_devices() is None  # FLB finished: get_incoming -> ENODATA
    k2.pci.stop_and_remove(dev(k2, "dp0"))
    k2.machine.pci.lose_bus_config(k2.machine.pci.find("dp0"))
    new = {d.hw.hw_id: d.name for d in k2.pci.rescan()}
    assert new["dp0"] == "0000:02:00.0" and new["nvme0"] != "0000:03:00.0"
