"""Shutdown and routing state across kexec (spec pci.md §5.3, §5.4, §5.8; §10 inv. 4,
5, 6).

Inv. 5: at kexec the PCI core freezes every device, then keeps Bus Master
Enable on outgoing-preserved devices and their auto-preserved bridges and
clears it elsewhere (D0-D3hot).  Inv. 6: an incoming device's ACS Control is
rewritten from the value read at its enumeration for the pci_dev's lifetime
(also after finish and resets), and an incoming bridge keeps the ARI
Forwarding Enable it has in hardware even with ``pci=noari``.
"""

from __future__ import annotations

import pytest

from luosim.hw.machine import Machine
from luosim.hw.pci import ACS_CR, ACS_RR, ACS_SV, ACS_UF, CMD_BME
from tests.pci.lu_helpers import (
    PROFILES,
    boot,
    dev,
    kexec,
    logs,
    preserve,
    retrieve,
    switch_topology,
)

KEPT = {"nvme1", "dp1", "sw", "rp1"}


@pytest.mark.parametrize("profile", PROFILES)
def test_bus_master_kept_only_on_outgoing_path(profile: str) -> None:
    k, drv = boot(switch_topology(), profile)
    for h in ("nvme1", "nic", "gpu", "hostdev"):  # drivers enabled DMA
        k.pci.set_master(dev(k, h))
    preserve(k, drv, ["nvme1"])
    k.machine.pci.find("hostdev").power_state = "D3cold"  # beyond D3hot: left alone
    old = k.pci.devices()
    seen: dict[str, bool] = {}

    def at_jump(m: Machine) -> None:
        seen.update({f.hw_id: bool(f.command & CMD_BME) for f in m.pci.functions()})

    kexec(k, profile, at_jump=at_jump)
    assert {h for h, bme in seen.items() if bme} == KEPT | {"hostdev"}
    assert all(d.lu.frozen for d in old)  # inv. 4: frozen before the BME decision
    assert not logs(k, "outgoing status read before freeze")


ACS_POLICY = ACS_SV | ACS_RR | ACS_CR | ACS_UF


@pytest.mark.parametrize("profile", PROFILES)
def test_acs_control_inherited(profile: str) -> None:
    k, drv = boot(switch_topology(), profile)
    for h in ("nvme1", "dp1", "nic", "dp2"):  # the old kernel left only Source Validation
        k.machine.pci.find(h).acs_ctrl = ACS_SV
    preserve(k, drv, ["nvme1"])
    k2, _ = kexec(k, profile)
    hw = k2.machine.pci
    assert hw.find("nvme1").acs_ctrl == ACS_SV and hw.find("dp1").acs_ctrl == ACS_SV
    assert dev(k2, "dp1").lu.acs_ctrl == ACS_SV
    assert hw.find("nic").acs_ctrl == ACS_POLICY and hw.find("dp2").acs_ctrl == ACS_POLICY
    s, _ = retrieve(k2, 1)
    s.finish()
    # after finish and a reset that lost the register, enable_acs restores the snapshot
    for h in ("nvme1", "nic"):
        hw.find(h).acs_ctrl = 0
        k2.pci.enable_acs(dev(k2, h))
    assert hw.find("nvme1").acs_ctrl == ACS_SV
    assert hw.find("nic").acs_ctrl == ACS_POLICY


def test_incoming_device_needing_acs_quirk_uses_normal_acs() -> None:
    k, drv = boot(switch_topology(), "v6")
    k.machine.pci.find("dp1").acs_ctrl = ACS_SV
    preserve(k, drv, ["nvme1"])

    def at_jump(m: Machine) -> None:
        m.pci.find("dp1").needs_acs_quirk = True

    k2, _ = kexec(k, "v6", at_jump=at_jump)
    assert k2.pci_lu.is_incoming(dev(k2, "dp1"))
    assert logs(k2, "0000:02:01.0: incoming device needs an ACS quirk")
    assert k2.machine.pci.find("dp1").acs_ctrl == ACS_POLICY


ARI_PORTS = [
    {"slot": 3, "name": "dpa", "ari": True,
     "children": [{"slot": 0, "name": "arid", "ari": True, "functions": [0, 1]}]},
    {"slot": 4, "name": "dpb", "ari": True,
     "children": [{"slot": 0, "name": "arie", "ari": True}]},
]


@pytest.mark.parametrize("profile", PROFILES)
def test_ari_forwarding_inherited_despite_noari(profile: str) -> None:
    k, drv = boot(switch_topology(extra_ports=ARI_PORTS), profile)
    assert dev(k, "dpa").ari_enabled and dev(k, "dpb").ari_enabled
    preserve(k, drv, ["arid"])
    k2, _ = kexec(k, profile, cmdline="pci=noari")
    assert dev(k2, "dpa").ari_enabled  # incoming bridge: taken from DEVCTL2
    assert not dev(k2, "dpb").ari_enabled  # normal path: pci=noari
    assert dev(k2, "arid").name == dev(k, "arid").name
    assert k2.pci.find_hw("arid.f1") is not None
