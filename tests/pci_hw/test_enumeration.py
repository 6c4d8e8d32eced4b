"""Kernel PCI enumeration (models drivers/pci/probe.c) on the PCI hardware model.

Spec references are to /work/shared/spec/pci.md.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from luosim.faults import Fault, FaultInjector
from luosim.hw.pci import ACS_CR, ACS_RR, ACS_SV, ACS_UF, CMD_BME, PciHardware
from luosim.kernel.pci.probe import (
    NullHooks,
    PciBus,
    PciDev,
    PciLiveupdateState,
    PciSubsystem,
    needs_acs_enable_quirk,
)


# -- fakes -------------------------------------------------------------------------------
class FakeMachine:
    """Just the parts of Machine the PCI core touches."""

    def __init__(self, topology: dict[str, Any], faults: tuple[Fault, ...] = ()) -> None:
        self.faults = FaultInjector(plan=faults)
        self.events: list[tuple[Any, ...]] = []
        self.pci = PciHardware.from_topology(topology, self)  # type: ignore[arg-type]

    def emit(self, *args: Any, **data: Any) -> None:
        self.events.append(args)


class FakeKernel:
    """Kernel stand-in: cmdline (``pci=a,b`` options), printk log, profile."""

    def __init__(self, machine: FakeMachine, cmdline: str = "", bus_rule: str = "v6") -> None:
        self.machine = machine
        self.name = "k1:test"
        self.profile = SimpleNamespace(name="v6" if bus_rule == "v6" else "v9",
                                       pci_bus_rule=bus_rule)
        self.words = cmdline.split()
        self.log: list[tuple[str, str]] = []

    def _opts(self, key: str) -> list[str]:
        return [o for w in self.words if w.startswith(key + "=")
                for o in w.split("=", 1)[1].split(",")]

    def cmdline_has(self, flag: str) -> bool:
        key, _, val = flag.partition("=")
        return flag in self.words or (bool(val) and val in self._opts(key))

    def cmdline_value(self, key: str) -> str | None:
        top, _, sub = key.partition("=")
        found = None
        for opt in self._opts(top):
            k, _, v = opt.partition("=")
            if k == sub:
                found = v
        return found

    def printk(self, level: str, subsystem: str, message: str, **data: Any) -> None:
        self.log.append((level, message))

    def warn(self, subsystem: str, message: str) -> None:
        self.log.append(("warn", message))

    def warn_once(self, subsystem: str, key: str, message: str) -> None:
        self.log.append(("warn", message))

    def panic(self, message: str) -> None:
        raise AssertionError(f"panic: {message}")

    def messages(self, level: str | None = None) -> list[str]:
        return [m for lv, m in self.log if level is None or lv == level]


class RecordingHooks(NullHooks):
    """Live-update hooks that record calls; ``inherit`` is what scan_bridge_begin says."""

    def __init__(self, inherit: bool = False, outgoing: set[str] | None = None,
                 refuse: set[str] | None = None) -> None:
        self.inherit = inherit
        self.outgoing = outgoing or set()
        self.refuse = refuse or set()
        self.calls: list[tuple[str, str]] = []
        self.handle_acs = False
        self.handle_ari = False

    def setup_device(self, dev: PciDev) -> None:
        self.calls.append(("setup", dev.hw.hw_id))

    def cleanup_device(self, dev: PciDev) -> None:
        self.calls.append(("cleanup", dev.hw.hw_id))

    def scan_bridge_begin(self, bus: PciBus, bridge_dev: PciDev, pass_: int) -> bool:
        self.calls.append((f"begin{pass_}", bridge_dev.hw.hw_id))
        return self.inherit

    def scan_bridge_end(self, bridge_dev: PciDev, pass_: int) -> None:
        self.calls.append((f"end{pass_}", bridge_dev.hw.hw_id))

    def init_acs(self, dev: PciDev) -> None:
        self.calls.append(("init_acs", dev.hw.hw_id))
        dev.lu.acs_ctrl = dev.hw.acs_ctrl

    def enable_acs(self, dev: PciDev) -> bool:
        self.calls.append(("enable_acs", dev.hw.hw_id))
        if self.handle_acs:
            dev.hw.acs_ctrl = dev.lu.acs_ctrl
        return self.handle_acs

    def configure_ari(self, bridge_dev: PciDev) -> bool:
        self.calls.append(("configure_ari", bridge_dev.hw.hw_id))
        if self.handle_ari:
            bridge_dev.ari_enabled = bridge_dev.hw.devctl2_ari_fwd
        return self.handle_ari

    def refuse_bus_numbers(self, bus: PciBus, dev: PciDev) -> bool:
        return dev.hw.hw_id in self.refuse

    def is_outgoing(self, dev: PciDev) -> bool:
        self.calls.append(("is_outgoing", dev.hw.hw_id))
        return dev.hw.hw_id in self.outgoing

    def freeze(self, dev: PciDev) -> None:
        self.calls.append(("freeze", dev.hw.hw_id))
        dev.lu.frozen = True


def tree(numbering: str = "dfs", **seg: Any) -> dict[str, Any]:
    """rp1 -> sw0 -> {dp0 (hot-plug) -> ep0, dp1 -> ep1}; rp2 -> br -> legacy (slot 5);
    rp3 -> ep3."""
    return {"segments": [{"segment": 0, "firmware_numbering": numbering, **seg, "devices": [
        {"slot": 1, "kind": "root-port", "name": "rp1", "children": [
            {"slot": 0, "kind": "switch", "name": "sw0", "ports": [
                {"slot": 0, "name": "dp0", "hotplug": True,
                 "children": [{"slot": 0, "name": "ep0"}]},
                {"slot": 1, "name": "dp1", "children": [{"slot": 0, "name": "ep1"}]}]}]},
        {"slot": 2, "kind": "root-port", "name": "rp2", "children": [
            {"slot": 0, "kind": "bridge", "name": "br", "children": [
                {"slot": 5, "name": "legacy"}]}]},
        {"slot": 3, "kind": "root-port", "name": "rp3", "children": [
            {"slot": 0, "name": "ep3"}]},
    ]}]}


def boot(topo: dict[str, Any], cmdline: str = "", hooks: Any = None,
         bus_rule: str = "v6", machine: FakeMachine | None = None,
         ) -> tuple[FakeMachine, FakeKernel, PciSubsystem]:
    m = machine or FakeMachine(topo)
    k = FakeKernel(m, cmdline, bus_rule)
    pci = PciSubsystem(k)
    if hooks is not None:
        pci.hooks = hooks
    pci.enumerate()
    return m, k, pci


def regs(m: FakeMachine) -> dict[str, tuple[int, int, int]]:
    return {f.hw_id: (f.primary, f.secondary, f.subordinate)
            for f in m.pci.functions() if f.is_bridge}


def where(pci: PciSubsystem) -> dict[str, str]:
    return {d.hw.hw_id: d.name for d in pci.devices()}


LINUX_NUMBERS = {"rp1": (0, 1, 5), "sw0": (1, 2, 5), "dp0": (2, 3, 4), "dp1": (2, 5, 5),
                 "rp2": (0, 6, 7), "br": (6, 7, 7), "rp3": (0, 8, 8)}
LINUX_NAMES = {"ep0": "0000:03:00.0", "ep1": "0000:05:00.0", "legacy": "0000:07:05.0",
               "ep3": "0000:08:00.0", "sw0": "0000:01:00.0", "dp1": "0000:02:01.0"}
FIRMWARE = {
    "dfs": {"rp1": (0, 1, 4), "sw0": (1, 2, 4), "dp0": (2, 3, 3), "dp1": (2, 4, 4),
            "rp2": (0, 5, 6), "br": (5, 6, 6), "rp3": (0, 7, 7)},
    "bfs": {"rp1": (0, 1, 7), "rp2": (0, 2, 5), "rp3": (0, 3, 3), "sw0": (1, 4, 7),
            "br": (2, 5, 5), "dp0": (4, 6, 6), "dp1": (4, 7, 7)},
    "sparse": {"rp1": (0, 1, 20), "sw0": (1, 2, 16), "dp0": (2, 3, 7), "dp1": (2, 8, 12),
               "rp2": (0, 21, 30), "br": (21, 22, 26), "rp3": (0, 31, 35)},
}
KEPT_NAMES = {
    "dfs": {"ep0": "0000:03:00.0", "ep1": "0000:04:00.0", "legacy": "0000:06:05.0",
            "ep3": "0000:07:00.0", "sw0": "0000:01:00.0", "dp1": "0000:02:01.0"},
    # rp1's window [01-07] swallows buses 2 and 3: rp2's and rp3's subtrees vanish
    "bfs": {"ep0": "0000:06:00.0", "ep1": "0000:07:00.0", "sw0": "0000:01:00.0",
            "dp1": "0000:04:01.0"},
    "sparse": {"ep0": "0000:03:00.0", "ep1": "0000:08:00.0", "legacy": "0000:16:05.0",
               "ep3": "0000:1f:00.0", "sw0": "0000:01:00.0", "dp1": "0000:02:01.0"},
}


# -- cold boot ------------------------------------------------------------------------------
@pytest.mark.parametrize("numbering", ["dfs", "bfs", "sparse"])
def test_cold_boot_keeps_firmware_numbers(numbering: str) -> None:
    """spec pci.md §5.1: without pci=assign-busses, pass 0 keeps every bridge that is
    not broken — even bfs's overlapping windows (the 'broken' test does not see
    overlaps), which hide rp2's and rp3's subtrees."""
    m, k, pci = boot(tree(numbering))
    assert regs(m) == FIRMWARE[numbering]
    names = where(pci)
    for hw_id, name in KEPT_NAMES[numbering].items():
        assert names[hw_id] == name
    hidden = {"br", "legacy", "ep3"} if numbering == "bfs" else set()
    assert set(names) == (set(regs(m)) | {"ep0", "ep1", "legacy", "ep3"}) - hidden
    assert not [m for m in k.messages() if "invalid" in m]


@pytest.mark.parametrize("numbering", ["dfs", "bfs", "sparse"])
def test_cold_boot_assign_busses_renumbers_depth_first(numbering: str) -> None:
    """spec pci.md §5.1: pci=assign-busses clears every bridge on pass 0 and numbers
    depth-first on pass 1, reserving hpbussize-1 (default 1) extra bus below the
    hot-plug port dp0 — whatever the firmware did."""
    m, _k, pci = boot(tree(numbering), "pci=assign-busses")
    assert regs(m) == LINUX_NUMBERS
    names = where(pci)
    for hw_id, name in LINUX_NAMES.items():
        assert names[hw_id] == name
    assert len(names) == 11
    bus = pci.find_bus(0, 3)
    assert bus is not None and (bus.number, bus.end) == (3, 4)
    assert bus.self_dev is pci.find_hw("dp0") and bus.parent is pci.find_bus(0, 2)


def test_hpbussize_and_comma_options() -> None:
    """pci=hpbussize=N reserves N buses (incl. the secondary) below hot-plug ports."""
    m, _, _pci = boot(tree(), "pci=assign-busses,hpbussize=4")
    assert regs(m)["dp0"] == (2, 3, 6)
    assert regs(m)["rp3"] == (0, 10, 10)
    m, _, _ = boot(tree(), "pci=assign-busses pci=hpbussize=1")
    assert regs(m)["dp0"] == (2, 3, 3)  # Linux's own default: no extra bus


def test_lookup_by_name_hw_id_and_bdf() -> None:
    """find("0000:03:00.0"), find_hw, bdf and the per-device live-update state."""
    _, _, pci = boot(tree())
    ep0 = pci.find("0000:03:00.0")
    assert ep0 is not None and ep0.hw.hw_id == "ep0" and pci.find_hw("ep0") is ep0
    assert ep0.bdf == 0x0300 and ep0.domain == 0 and ep0.bus.number == 3
    assert ep0.lu == PciLiveupdateState() and not ep0.is_incoming
    assert pci.find("0000:99:00.0") is None and pci.find("garbage") is None
    assert pci.find_bdf(0, 0x0700) is pci.find_hw("ep3")
    sw0 = pci.find_hw("sw0")
    assert sw0 is not None and sw0.subordinate is pci.find_bus(0, 2)
    assert ep0.upstream_bridge is pci.find_hw("dp0")


def test_multi_function_and_root_bus_number() -> None:
    """Function 0's multi-function bit makes pci_scan_slot probe functions 1..7."""
    topo = {"segments": [{"segment": 1, "root_bus": 0x80, "devices": [
        {"slot": 4, "name": "mf", "functions": [0, 2, 7]},
        {"slot": 5, "name": "single"}]}]}
    _, _, pci = boot(topo)
    assert [d.name for d in pci.devices()] == ["0001:80:04.0", "0001:80:04.2",
                                               "0001:80:04.7", "0001:80:05.0"]
    assert all(d.multifunction for d in pci.devices()[:3])
    assert not pci.devices()[3].multifunction


def test_ari_functions_and_noari() -> None:
    """spec pci.md §5.4: function 0 below an ARI-capable port enables ARI Forwarding
    and the ARI Next Function chain is followed; pci=noari leaves it off."""
    topo = {"segments": [{"devices": [
        {"slot": 1, "kind": "root-port", "name": "rp", "ari": True, "children": [
            {"slot": 0, "name": "ari", "ari": True, "functions": [0, 8, 9]}]}]}]}
    m, _, pci = boot(topo)
    assert [d.name for d in pci.devices()][1:] == ["0000:01:00.0", "0000:01:01.0",
                                                   "0000:01:01.1"]
    rp = pci.find_hw("rp")
    assert rp is not None and rp.ari_enabled and m.pci.find("rp").devctl2_ari_fwd
    m, _, pci = boot(topo, "pci=noari")
    assert [d.name for d in pci.devices()][1:] == ["0000:01:00.0"]
    # inherited ARI (hook handles it) wins over pci=noari
    m = FakeMachine(topo)
    m.pci.find("rp").devctl2_ari_fwd = True
    hooks = RecordingHooks()
    hooks.handle_ari = True
    _, _, pci = boot(topo, "pci=noari", hooks=hooks, machine=m)
    assert len(pci.devices()) == 4
    assert ("configure_ari", "rp") in hooks.calls


def test_acs_policy_hooks_and_quirks() -> None:
    """spec pci.md §5.3: pci_acs_init -> init_acs hook -> pci_enable_acs; a hook
    returning True keeps the inherited value; otherwise SV|RR|CR|UF as capable."""
    m, _, pci = boot(tree())
    assert m.pci.find("rp1").acs_ctrl == ACS_SV | ACS_RR | ACS_CR | ACS_UF
    assert m.pci.find("ep0").acs_ctrl == 0
    m = FakeMachine(tree())
    m.pci.find("rp1").acs_ctrl = ACS_SV  # what the previous kernel left
    hooks = RecordingHooks()
    hooks.handle_acs = True
    _, _, pci = boot(tree(), hooks=hooks, machine=m)
    assert m.pci.find("rp1").acs_ctrl == ACS_SV
    i = hooks.calls.index(("init_acs", "rp1"))
    assert hooks.calls[i + 1] == ("enable_acs", "rp1")
    assert hooks.calls.index(("setup", "rp1")) < i
    m = FakeMachine(tree())
    k = FakeKernel(m)
    pci = PciSubsystem(k)
    pci.acs_requested = False
    pci.enumerate()
    assert m.pci.find("rp1").acs_ctrl == 0
    topo = {"segments": [{"devices": [
        {"slot": 0x1c, "kind": "root-port", "name": "pch", "vendor": 0x8086, "device": 0x1c10},
        {"slot": 1, "name": "q", "needs_acs_quirk": True}, {"slot": 2, "name": "n"}]}]}
    _, _, pci = boot(topo)
    assert {d.hw.hw_id for d in pci.devices() if needs_acs_enable_quirk(d)} == {"pch", "q"}


def test_sriov_enable_and_vfs_left_enabled() -> None:
    """spec pci.md §5.5: VFs are created by enabling SR-IOV; VFs found enabled at
    enumeration are disabled (so VF BDFs are not stable across kexec)."""
    topo = {"segments": [{"devices": [
        {"slot": 3, "name": "pf", "sriov": {"total_vfs": 4, "vf_offset": 8, "vf_stride": 2}}]}]}
    hooks = RecordingHooks()
    m, _, pci = boot(topo, hooks=hooks)
    pf = pci.find_hw("pf")
    assert pf is not None and [d.hw.hw_id for d in pci.devices()] == ["pf"]
    vfs = pci.enable_sriov(pf, 3)
    assert [v.name for v in vfs] == ["0000:00:04.0", "0000:00:04.2", "0000:00:04.4"]
    assert all(v.is_virtfn and v.physfn is pf and v.is_added for v in vfs)
    assert ("setup", "pf.vf1") in hooks.calls
    assert m.pci.requester_id(vfs[1].hw) == (0, 0x22)
    pci.disable_sriov(pf)
    assert [d.hw.hw_id for d in pci.devices()] == ["pf"] and m.pci.find("pf").num_vfs == 0
    assert ("cleanup", "pf.vf2") in hooks.calls
    # a new kernel finds VF Enable set: sriov_init turns it off, no VF is enumerated
    m2 = FakeMachine(topo)
    m2.pci.enable_sriov(m2.pci.find("pf"), 4)
    _, k2, pci2 = boot(topo, machine=m2)
    assert [d.hw.hw_id for d in pci2.devices()] == ["pf"] and m2.pci.find("pf").num_vfs == 0
    assert any("left enabled" in s for s in k2.messages())


# -- broken bridges --------------------------------------------------------------------------
def test_broken_bridge_is_cleared_and_renumbered() -> None:
    """spec pci.md §5.1: primary != parent bus is 'broken': pass 0 zeroes the bus
    bytes, pass 1 assigns max+1 above everything claimed on that bus."""
    topo = tree()
    topo["segments"][0]["devices"][2]["firmware_bus"] = {"primary": 3, "secondary": 7,
                                                         "subordinate": 7}
    m, k, pci = boot(topo)
    assert regs(m)["rp3"] == (0, 7, 7)
    assert where(pci)["ep3"] == "0000:07:00.0"
    assert "0000:00:03.0: bridge configuration invalid ([bus 07-07]), reconfiguring" \
        in k.messages()
    # a bridge that lost its registers is renumbered above the kept ranges
    m = FakeMachine(tree())
    m.pci.lose_bus_config(m.pci.find("rp2"))
    _, k, pci = boot(tree(), machine=m)
    assert regs(m)["rp2"] == (0, 8, 9) and regs(m)["br"] == (8, 9, 9)
    assert where(pci)["legacy"] == "0000:09:05.0"
    assert regs(m)["rp3"] == (0, 7, 7)


# -- live-update hooks -----------------------------------------------------------------------
def test_inherit_keeps_firmware_numbers_despite_assign_busses() -> None:
    """spec pci.md §5.1: scan_bridge_begin() -> True overrides pci=assign-busses."""
    hooks = RecordingHooks(inherit=True)
    m, _k, pci = boot(tree("sparse"), "pci=assign-busses", hooks=hooks)
    assert regs(m) == FIRMWARE["sparse"]
    assert where(pci)["ep3"] == "0000:1f:00.0"
    # every bridge scan is bracketed, pass 0 then pass 1
    for br in ("rp1", "sw0", "dp0", "dp1", "rp2", "br", "rp3"):
        seq = [c for c, h in hooks.calls if h == br and c[:3] in ("beg", "end")]
        assert seq == ["begin0", "end0", "begin1", "end1"], (br, seq)
    assert hooks.calls.index(("begin0", "sw0")) < hooks.calls.index(("end0", "rp1"))


def test_inherit_skips_a_bridge_without_numbers() -> None:
    """spec pci.md §5.1 (v6): pass 1 with inherit and no usable numbers -> error
    'cannot reconfigure bridge during Live Update'; nothing below is enumerated."""
    m = FakeMachine(tree())
    m.pci.lose_bus_config(m.pci.find("rp2"))
    hooks = RecordingHooks(inherit=True)
    _, k, pci = boot(tree(), "pci=assign-busses", hooks=hooks, machine=m)
    assert regs(m)["rp2"] == (0, 0, 0)
    names = where(pci)
    assert "rp2" in names and "br" not in names and "legacy" not in names
    assert names["ep3"] == "0000:07:00.0"
    assert "0000:00:02.0: cannot reconfigure bridge during Live Update" in k.messages("err")
    assert pci.find_hw("rp2") is not None and pci.find_hw("rp2").subordinate is None  # type: ignore[union-attr]


def test_v9_rule_numbers_unnumbered_bridges_unless_refused() -> None:
    """spec pci.md §5.1 (v9): with inheritance, a bridge without numbers is numbered
    normally unless refuse_bus_numbers() says no."""
    m = FakeMachine(tree())
    m.pci.lose_bus_config(m.pci.find("rp2"))
    _, _, pci = boot(tree(), "pci=assign-busses", hooks=RecordingHooks(inherit=True),
                     bus_rule="v9", machine=m)
    assert regs(m)["rp2"] == (0, 8, 9) and regs(m)["rp1"] == FIRMWARE["dfs"]["rp1"]
    m = FakeMachine(tree())
    m.pci.lose_bus_config(m.pci.find("rp2"))
    _, k, pci = boot(tree(), hooks=RecordingHooks(inherit=True, refuse={"rp2"}),
                     bus_rule="v9", machine=m)
    assert regs(m)["rp2"] == (0, 0, 0) and "legacy" not in where(pci)
    assert any("not assigning bus numbers" in s for s in k.messages("err"))


def test_setup_fault_runs_cleanup() -> None:
    """spec pci.md §2 patch 3: the unknown-header-type error path calls cleanup_device."""
    m = FakeMachine(tree(), faults=(Fault("pci.probe.header", 2, "corrupt:header"),))
    hooks = RecordingHooks()
    _, _k, pci = boot(tree(), hooks=hooks, machine=m)
    assert "rp2" not in where(pci) and "legacy" not in where(pci)
    assert hooks.calls[:4] == [("setup", "rp1"), ("init_acs", "rp1"),
                               ("enable_acs", "rp1"), ("setup", "rp2")]
    assert hooks.calls[4] == ("cleanup", "rp2")


# -- hot-plug --------------------------------------------------------------------------------
def hotplug_topo(numbering: str = "dfs") -> dict[str, Any]:
    return {"segments": [{"firmware_numbering": numbering, "devices": [
        {"slot": 1, "kind": "root-port", "name": "hp", "hotplug": True, "children": [
            {"slot": 0, "kind": "bridge", "name": "card", "present": False, "children": [
                {"slot": 2, "name": "cardep"}]}]},
        {"slot": 2, "kind": "root-port", "name": "rp2", "children": [
            {"slot": 0, "name": "ep2"}]},
        {"slot": 4, "name": "later", "present": False}]}]}


def test_hot_add_bridge_gets_next_free_bus() -> None:
    """pciehp + pci_hp_add_bridge: a bridge hot-added below a hot-plug port takes the
    first free bus number inside the port's window (reserved by hpbussize)."""
    m, _k, pci = boot(hotplug_topo(), "pci=assign-busses")
    assert regs(m)["hp"] == (0, 1, 2) and regs(m)["rp2"] == (0, 3, 3)
    new = pci.hot_add("card")
    assert [d.name for d in new] == ["0000:01:00.0", "0000:02:02.0"]
    assert regs(m)["card"] == (1, 2, 2)
    assert m.pci.requester_id(m.pci.find("cardep")) == (0, 0x0210)
    # hot-add on the root bus: pci_rescan_bus of the parent
    assert [d.name for d in pci.hot_add("later")] == ["0000:00:04.0"]


def test_hot_add_without_reserved_bus_fails_cleanly() -> None:
    """With dfs firmware there is no spare bus in the port's window: the hot-added
    bridge shows up but gets no bus numbers."""
    m, k, pci = boot(hotplug_topo())
    assert regs(m)["hp"] == (0, 1, 1)
    new = pci.hot_add("card")
    assert [d.hw.hw_id for d in new] == ["card"]
    assert "0000:01:00.0: No bus number available for hot-added bridge" in k.messages("err")
    m, k, pci = boot(hotplug_topo("sparse"))
    assert [d.name for d in pci.hot_add("card")] == ["0000:01:00.0", "0000:02:02.0"]


def test_hot_remove_cleans_up_everything_below() -> None:
    """pci_stop_and_remove_bus_device: children first, cleanup_device on each
    (pci.md §4.6, §5.7); child buses are released."""
    hooks = RecordingHooks()
    m, _k, pci = boot(tree(), hooks=hooks)
    removed = pci.hot_remove("sw0")
    assert [d.hw.hw_id for d in removed] == ["ep1", "dp1", "ep0", "dp0", "sw0"]
    assert [h for c, h in hooks.calls if c == "cleanup"] == ["ep1", "dp1", "ep0", "dp0",
                                                            "sw0"]
    assert all(d.removed for d in removed)
    assert pci.find("0000:03:00.0") is None and pci.find_bus(0, 2) is None
    assert m.pci.config_read(0, 1, 0) is None
    assert pci.rescan() == []


# -- shutdown --------------------------------------------------------------------------------
def test_shutdown_clears_bme_except_outgoing() -> None:
    """spec pci.md §5.8 / §10 inv. 5: freeze every device, then on kexec clear Bus
    Master Enable unless outgoing-preserved or deeper than D3hot."""
    hooks = RecordingHooks(outgoing={"ep0", "dp0", "sw0", "rp1"})
    m, _k, pci = boot(tree(), hooks=hooks)
    for d in pci.devices():
        pci.enable_device(d)
        pci.set_master(d)
    assert all(m.pci.dma_path_enabled(m.pci.find(h)) for h in ("ep0", "ep1", "ep3"))
    m.pci.find("ep3").power_state = "D3cold"
    hooks.calls.clear()
    pci.shutdown(kexec=True)
    bme = {f.hw_id: bool(f.command & CMD_BME) for f in m.pci.functions()}
    assert bme == {"rp1": True, "sw0": True, "dp0": True, "ep0": True, "dp1": False,
                   "ep1": False, "rp2": False, "br": False, "legacy": False, "rp3": False,
                   "ep3": True}
    assert m.pci.dma_path_enabled(m.pci.find("ep0"))
    assert not m.pci.dma_path_enabled(m.pci.find("ep1"))
    frozen = [h for c, h in hooks.calls if c == "freeze"]
    assert sorted(frozen) == sorted(where(pci)) and all(d.lu.frozen for d in pci.devices())
    first = hooks.calls[0][1]
    assert hooks.calls[:2] == [("freeze", first), ("is_outgoing", first)]
    # a normal reboot freezes but leaves Bus Master alone
    m, _k, pci = boot(tree())
    for d in pci.devices():
        pci.set_master(d)
    pci.shutdown(kexec=False)
    assert all(f.command & CMD_BME for f in m.pci.functions())


def test_port_driver_sets_bus_master_on_ports() -> None:
    """pci_bus_add_devices binds the PCIe port driver: ports get MEM + BME; a
    conventional PCI bridge is enabled only through pci_enable_bridge()."""
    m, _, pci = boot(tree())
    assert m.pci.find("rp1").command & CMD_BME and m.pci.find("dp1").command & CMD_BME
    assert not m.pci.find("br").command & CMD_BME and not m.pci.find("ep0").command
    legacy = pci.find_hw("legacy")
    assert legacy is not None
    pci.enable_device(legacy)
    assert m.pci.find("br").command & CMD_BME


def test_enumeration_is_fast_for_200_devices() -> None:
    """A host with 200 functions enumerates in well under 50 ms."""
    rps = [{"slot": i, "kind": "root-port", "children": [
        {"slot": 0, "kind": "switch", "ports": [
            {"slot": p, "hotplug": p == 0, "children": [{"slot": 0, "functions": [0, 1]}]}
            for p in range(4)]}]} for i in range(1, 15)]
    topo = {"segments": [{"devices": rps}]}
    m = FakeMachine(topo)
    assert len(list(m.pci.functions())) == 14 * (2 + 4 * 3)
    best = 1.0
    for _ in range(3):
        k = FakeKernel(m, "pci=assign-busses")
        pci = PciSubsystem(k)
        t0 = time.perf_counter()
        pci.enumerate()
        best = min(best, time.perf_counter() - t0)
        assert len(pci.devices()) == 196
    assert best < 0.05, best
