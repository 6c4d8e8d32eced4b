"""PCI FLB ABI through real kexec (spec pci.md §3, §4.6, §9 rows "incoming compatible
not found", "version mismatch", "retrieve fails"; §10 inv. 10).

Same-profile round trips decode the hand-over bytes with :mod:`luosim.abi.pci`
at the kexec jump and compare them with what the new kernel rebuilt from
memory.  Cross-version pairs never mis-decode silently: a different
compatible is ENOENT ("nothing preserved", logged once, no panic, devices
renumbered under ``pci=assign-busses``); the same compatible with another
layout (v6 ``pci-v2`` vs v7 ``pci-v2``) fails retrieve; corrupt hand-overs
(duplicate entry, v9 version, block chain) end in a panic under the panic
policy and in "nothing preserved" under the warn policy.
"""

from __future__ import annotations

import struct

import pytest

from luosim.abi.block import KHO_BLOCK_SIZE, walk_chain
from luosim.abi.pci import PciSerV6, PciSerV7, PciSerV9, decode_dev_entries, fmt_bdf
from luosim.errors import KernelPanic
from luosim.faults import Fault
from luosim.hw.machine import Machine
from tests.pci.lu_helpers import (
    PROFILES,
    boot,
    kexec,
    logs,
    names,
    preserve,
    retrieve,
    switch_topology,
)

EXPECTED = {("0000:06:00.0", 1), ("0000:02:01.0", 1), ("0000:09:00.0", 1),
            ("0000:02:02.0", 1), ("0000:01:00.0", 2), ("0000:00:01.0", 2)}


def decode_handover(m: Machine, abi: str, pa: int) -> tuple[int, set[tuple[str, int]]]:
    """(nr_devices, {(bdf, refcount)}) of the pci_ser at ``pa``, decoded from memory."""
    mem = m.memory
    if abi == "v6":
        mx = struct.unpack("<I", mem.read(pa, 4))[0]
        ser6 = PciSerV6.decode(mem.read(pa, 8 + 8 * mx))
        return ser6.nr_devices, {(fmt_bdf(d.domain, d.bdf), d.refcount) for d in ser6.used()}
    if abi == "v7":
        ser7 = PciSerV7.decode(mem.read(pa, PciSerV7.SIZE))
        nr, head = ser7.nr_devices, ser7.devices
    else:
        ser9 = PciSerV9.decode(mem.read(pa, PciSerV9.SIZE))
        assert ser9.version == 1
        nr, head = ser9.nr_devices, ser9.devices
    raw = walk_chain(lambda p: mem.read(p, KHO_BLOCK_SIZE), head, 8, "pci_ser devices")
    return nr, {(fmt_bdf(d.domain, d.bdf), d.refcount) for d in decode_dev_entries(raw)
                if d.refcount}


@pytest.mark.parametrize("profile", PROFILES)
def test_same_profile_round_trip(profile: str) -> None:
    k, drv = boot(switch_topology(), profile)
    preserve(k, drv, ["nvme1", "nic"])
    ser_pa = k.pci_lu.outgoing.ser_pa  # type: ignore[union-attr]
    [rec] = [r for r in k.liveupdate.flbs.serialize() if r.name == k.pci_lu.compatible]
    assert (rec.data, rec.count) == (ser_pa, 2)
    seen: dict[str, object] = {}

    def at_jump(m: Machine) -> None:
        seen["ser"] = decode_handover(m, profile, ser_pa)

    k2, _ = kexec(k, profile, cmdline="pci=assign-busses", at_jump=at_jump)
    assert seen["ser"] == (6, EXPECTED)
    lu = k2.pci_lu
    assert {(fmt_bdf(d, b), rc) for d, b, rc in lu.incoming_entries()} == EXPECTED
    assert lu.incoming_nr_devices() == 6
    assert lu.retrieve_attempts == 1
    assert not lu.incoming_ser_freed() and not lu.incoming_ser_is_free()
    s, _ = retrieve(k2, 2)
    s.finish()
    assert lu.incoming_finished
    # the pci_ser and its blocks were claimed from KHO, nothing PCI-owned leaks
    assert all(pa != ser_pa for pa, _o in k2.kho.unclaimed())


@pytest.mark.parametrize("src,dst", [("v6", "v7"), ("v7", "v6")])
def test_compatible_mismatch_is_nothing_preserved(src: str, dst: str) -> None:
    k, drv = boot(switch_topology(), src)
    before = names(k)
    preserve(k, drv, ["nvme1", "nic"])
    k2, _ = kexec(k, dst, cmdline="pci=assign-busses")
    compat = k2.pci_lu.compatible
    assert len(logs(k2, f"no incoming FLB matched {compat}")) == 1  # once, not per device
    assert not k2.pci_lu.had_incoming
    assert not any(k2.pci_lu.is_incoming(d) for d in k2.pci.devices())
    after = names(k2)
    assert (before["nvme1"], after["nvme1"]) == ("0000:06:00.0", "0000:04:00.0")
    assert (before["nic"], after["nic"]) == ("0000:09:00.0", "0000:05:00.0")


@pytest.mark.parametrize("src,dst", [("v6", "v9"), ("v9", "v6"), ("v7", "v9")])
def test_luo_abi_mismatch_panics_in_luo(src: str, dst: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """v9 runs on the luo-v5 LUO ABI: LUO itself refuses the hand-over (luo_restore_fail).

    v9 gets the kho-v2 root here so the hand-over reaches LUO (the real v9
    kho-v3 root is refused by KHO first: tests/profiles)."""
    from dataclasses import replace

    from luosim.kernel.profiles import PROFILES
    monkeypatch.setitem(PROFILES, "v9", replace(PROFILES["v9"], kho_abi="kho-v2"))
    k, drv = boot(switch_topology(), src)
    preserve(k, drv, ["nvme1"])
    with pytest.raises(KernelPanic, match="luo: incoming hand-over is invalid"):
        kexec(k, dst)


@pytest.mark.parametrize("policy,outcome", [("panic", "panic"), ("warn", "renumbered")])
def test_same_compatible_other_layout_never_misdecodes(policy: str, outcome: str) -> None:
    """v6 built with compatible "pci-v2" and v7's "pci-v2" name different layouts: v7
    reads the v6 array as {nr_devices, devices} and fails on the bogus chain pointer."""
    k, drv = boot(switch_topology(), "v6", policy={"pci.v6_compat": "pci-v2"})
    preserve(k, drv, ["nvme1", "nic"])
    if outcome == "panic":
        with pytest.raises(KernelPanic, match=r"Failed to retrieve incoming FLB data \(-EINVAL\)"):
            kexec(k, "v7", cmdline="pci=assign-busses")
        return
    k2, _ = kexec(k, "v7", cmdline="pci=assign-busses", policy={"pci.retrieve_failure": "warn"})
    assert names(k2)["nvme1"] == "0000:04:00.0"
    assert logs(k2, "Failed to retrieve incoming FLB data: -EINVAL")


CORRUPTIONS = [
    ("v6", "corrupt:duplicate-entry", r"Failed to retrieve incoming FLB data \(-EBUSY\)"),
    ("v7", "corrupt:duplicate-entry", r"Failed to retrieve incoming FLB data \(-EBUSY\)"),
    ("v9", "corrupt:duplicate-entry", r"Failed to retrieve incoming FLB data \(-EBUSY\)"),
    ("v7", "corrupt:block-chain", r"Failed to retrieve incoming FLB data \(-EINVAL\)"),
    ("v9", "corrupt:block-chain", r"Failed to retrieve incoming FLB data \(-EINVAL\)"),
    ("v9", "corrupt:version", r"incoming pci_ser version 2 is not 1"),
    ("v9", "EINVAL", r"Failed to retrieve incoming FLB data \(-EINVAL\)"),
    ("v6", "EBUSY", r"Failed to retrieve incoming FLB data \(-EBUSY\)"),
]


@pytest.mark.parametrize("profile,effect,message", CORRUPTIONS)
def test_corrupt_handover_panics(profile: str, effect: str, message: str) -> None:
    k, drv = boot(switch_topology(), profile, faults=(Fault("pci.flb.retrieve", 1, effect),))
    preserve(k, drv, ["nvme1", "nic"])
    with pytest.raises(KernelPanic, match=message) as info:
        kexec(k, profile, cmdline="pci=assign-busses")
    assert info.value.kernel is not None
    assert info.value.kernel.pci.devices() == []  # before the first device was set up


@pytest.mark.parametrize("profile", PROFILES)
def test_v9_version_mismatch_panics_even_with_warn_policy(profile: str) -> None:
    k, drv = boot(switch_topology(), profile,
                  faults=(Fault("pci.flb.retrieve", 1, "corrupt:version"),))
    preserve(k, drv, ["nvme1"])
    if profile != "v9":  # no version field: the effect does not apply
        k2, _ = kexec(k, profile, policy={"pci.retrieve_failure": "warn"})
        assert k2.pci_lu.had_incoming and logs(k2, "has no version")
        return
    with pytest.raises(KernelPanic, match="version 2 is not 1"):
        kexec(k, profile, policy={"pci.retrieve_failure": "warn"})


@pytest.mark.parametrize("profile", ["v6", "v7"])
def test_corrupt_nr_devices_stops_v6_inheritance(profile: str) -> None:
    """The v6/v7 bus rule trusts ``nr_devices``: a hand-over claiming 0 pending devices
    lets ``pci=assign-busses`` renumber the preserved devices (inv. 1 breaks), while
    they are still marked incoming from their slots."""
    k, drv = boot(switch_topology(), profile,
                  faults=(Fault("pci.flb.retrieve", 1, "corrupt:nr-devices"),))
    preserve(k, drv, ["nvme1", "nic"])
    k2, _ = kexec(k, profile, cmdline="pci=assign-busses")
    assert k2.pci_lu.incoming_nr_devices() == 0
    got = {d.hw.hw_id: (d.name, d.is_incoming) for d in k2.pci.devices()}
    assert got["nvme1"] == ("0000:04:00.0", False)  # moved: its old BDF is not found
    assert got["rp1"] == ("0000:00:01.0", True)  # root bus numbers cannot move
    assert k2.pci_lu.pending_incoming() == sorted(b for b, _rc in EXPECTED)
