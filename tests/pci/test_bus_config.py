"""Misconfigured bridges during Live Update (spec pci.md §5.1, §9 "Bridge
misconfigured/unconfigured while incoming pending", §10 inv. 1).

Between the kernels a switch downstream port loses its bus registers
(``lose_bus_config``: primary/secondary/subordinate zeroed).  v6/v7 rule:
while anything is pending every bridge inherits, so such a bridge is not
renumbered ("cannot reconfigure bridge during Live Update") and nothing below
it is enumerated, whether or not it leads to a preserved device.  v9 rule: a
bridge without numbers is numbered normally, unless a preserved bridge on the
same bus lost its numbers, in which case no bridge on that bus is numbered.
Preserved devices that stay reachable keep their BDFs in every case.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from luosim.hw.machine import Machine
from luosim.kernel.kernel import Kernel
from tests.pci.lu_helpers import (
    PROFILES,
    boot,
    kexec,
    logs,
    lu_device,
    names,
    preserve,
    raises_errno,
    retrieve,
    switch_topology,
)

PENDING = ["0000:00:01.0", "0000:01:00.0", "0000:02:01.0", "0000:02:02.0", "0000:06:00.0",
           "0000:09:00.0"]


def lose(*hw_ids: str) -> Callable[[Machine], None]:
    def at_jump(m: Machine) -> None:
        for h in hw_ids:
            m.pci.lose_bus_config(m.pci.find(h))
    return at_jump


def run(profile: str, *lost: str) -> tuple[dict[str, str], dict[str, str], Kernel]:
    k, drv = boot(switch_topology(), profile)
    before = names(k)
    preserve(k, drv, ["nvme1", "nic"])
    k2, _ = kexec(k, profile, cmdline="pci=assign-busses", at_jump=lose(*lost))
    return before, names(k2), k2


@pytest.mark.parametrize("profile", PROFILES)
def test_preserved_bridge_lost_numbers(profile: str) -> None:
    before, after, k2 = run(profile, "dp1")
    assert "nvme1" not in after  # its subtree is not enumerated
    assert {h: b for h, b in before.items() if h != "nvme1"} == after
    msg = ("cannot reconfigure bridge during Live Update" if profile != "v9"
           else "not assigning bus numbers during Live Update")
    assert logs(k2, msg) and logs(k2, msg)[0].startswith("0000:02:01.0")
    # dp1 kept its (cleared) registers: nothing forwards to the old bus 06
    assert k2.machine.pci.find("dp1").secondary == 0
    assert k2.pci_lu.pending_incoming() == PENDING
    # the device is missing: its file cannot be retrieved (§9 "Device missing")
    s = lu_device(k2).retrieve_session("pci")
    s.retrieve_fd(2)
    with raises_errno(errno.ENODEV):
        s.retrieve_fd(1)


@pytest.mark.parametrize("profile", PROFILES)
def test_unpreserved_bridge_lost_numbers(profile: str) -> None:
    """v6/v7: global inheritance refuses it too; v9 numbers it above the claimed ranges."""
    before, after, k2 = run(profile, "dp0")
    if profile == "v9":
        assert after["nvme0"] == "0000:0c:00.0"  # renumbered: max + 1 after pass 0
        assert not logs(k2, "during Live Update")
    else:
        assert "nvme0" not in after
        assert logs(k2, "0000:02:00.0: cannot reconfigure bridge during Live Update")
    assert all(after[h] == before[h] for h in ("nvme1", "nic", "dp1", "dp2", "gpu"))
    s, _ = retrieve(k2, 2)
    s.finish()


def test_v9_refuses_every_bridge_next_to_a_lost_preserved_one() -> None:
    _before, after, k2 = run("v9", "dp0", "dp1")
    assert "nvme0" not in after and "nvme1" not in after
    refused = logs(k2, "not assigning bus numbers during Live Update")
    assert [m[:12] for m in refused] == ["0000:02:00.0", "0000:02:01.0"]
    assert after["nic"] == "0000:09:00.0"
