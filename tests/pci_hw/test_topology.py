"""PCI hardware model: topology parsing, firmware numbering, config routing.

Spec references are to /work/shared/spec/pci.md.
"""

from __future__ import annotations

from typing import Any

import pytest

from luosim.hw.pci import (
    ACS_PORT_CAP_DEFAULT,
    CMD_BME,
    CMD_MEM,
    PciFunction,
    PciHardware,
)

BRIEF_EXAMPLE: dict[str, Any] = {"segments": [{
    "segment": 0, "root_bus": 0, "firmware_numbering": "dfs", "iommu": True,
    "devices": [
        {"slot": 1, "kind": "root-port", "name": "rp1", "vendor": "0x8086", "device": 0x1234,
         "children": [{"slot": 0, "name": "nic0", "vendor": 0x15b3, "device": 0x101b}]},
        {"slot": 2, "kind": "switch", "name": "sw0", "ports": [
            {"slot": 0, "name": "dp0", "hotplug": True,
             "children": [{"slot": 0, "kind": "endpoint", "vendor": 0x8086,
                           "device": 0x0b25, "name": "dsa0"}]},
            {"slot": 1, "name": "dp1",
             "children": [{"slot": 0, "name": "nvme0", "device": "0x0a54"}]}]},
        {"slot": 3, "kind": "endpoint", "name": "mf", "functions": [0, 1],
         "sriov": {"total_vfs": 4, "vf_offset": 8, "vf_stride": 1}},
    ]}]}


def hw_of(topo: dict[str, Any]) -> PciHardware:
    return PciHardware.from_topology(topo, None)


def regs(hw: PciHardware) -> dict[str, tuple[int, int, int]]:
    return {f.hw_id: (f.primary, f.secondary, f.subordinate)
            for f in hw.functions() if f.is_bridge}


def two_rp_tree(numbering: str, **seg: Any) -> dict[str, Any]:
    """rp1 -> sw0 -> {dp0 -> ep, dp1 -> ep}; rp2 -> br -> ep; rp3 -> ep."""
    return {"segments": [{"segment": 0, "firmware_numbering": numbering, **seg, "devices": [
        {"slot": 1, "kind": "root-port", "name": "rp1", "children": [
            {"slot": 0, "kind": "switch", "name": "sw0", "ports": [
                {"slot": 0, "name": "dp0", "children": [{"slot": 0, "name": "ep0"}]},
                {"slot": 1, "name": "dp1", "children": [{"slot": 0, "name": "ep1"}]}]}]},
        {"slot": 2, "kind": "root-port", "name": "rp2", "children": [
            {"slot": 0, "kind": "bridge", "name": "br", "children": [
                {"slot": 5, "name": "legacy"}]}]},
        {"slot": 3, "kind": "root-port", "name": "rp3", "children": [
            {"slot": 0, "name": "ep3"}]},
    ]}]}


# -- parsing -------------------------------------------------------------------------
def test_empty_topology_has_one_root_bus_and_no_functions() -> None:
    """DESIGN.md: ``{}`` = no PCI devices; one host bridge (segment 0, bus 0)."""
    hw = hw_of({})
    assert list(hw.roots) == [0]
    assert hw.roots[0].root_bus == 0
    assert list(hw.functions()) == []
    assert hw.config_read(0, 0, 0) is None


def test_brief_example_parses_with_ids_kinds_and_defaults() -> None:
    """Topology schema of the brief; hex strings accepted for ids."""
    hw = hw_of(BRIEF_EXAMPLE)
    rp1 = hw.find("rp1")
    assert (rp1.vendor, rp1.device, rp1.kind, rp1.pcie_type) == (0x8086, 0x1234,
                                                                  "root-port", "root_port")
    assert rp1.is_bridge and rp1.parent_port is None
    assert rp1.acs_cap == ACS_PORT_CAP_DEFAULT  # ports default to ACS
    nic = hw.find("nic0")
    assert nic.parent_port is rp1 and nic.pcie_type == "endpoint" and nic.acs_cap == 0
    dp0 = hw.find("dp0")
    assert dp0.kind == "downstream-port" and dp0.hotplug and dp0.parent_port is hw.find("sw0")
    assert hw.find("sw0").pcie_type == "upstream"
    assert hw.find("nvme0").device == 0x0A54
    mf0, mf1 = hw.find("mf"), hw.find("mf.f1")
    assert mf0.multifunction and mf1.multifunction and mf0.card == [mf0, mf1]
    assert mf0.pcie_type == "rc_endpoint" and mf0.total_vfs == 4 and mf0.num_vfs == 0


def test_default_hw_ids_follow_the_path() -> None:
    """Unnamed functions get a stable path id: parent id / slot.function."""
    hw = hw_of({"segments": [{"devices": [
        {"slot": 1, "kind": "root-port", "children": [{"slot": 0, "functions": [0, 1]}]},
        {"slot": 4}]}]})
    ids = [f.hw_id for f in hw.functions()]
    assert ids == ["seg0/01.0", "seg0/01.0/00.0", "seg0/01.0/00.1", "seg0/04.0"]


@pytest.mark.parametrize(("patch", "message"), [
    ({"slot": 40}, "machine.segments[0].devices[1].slot: expected 0..31, got 40"),
    ({"slot": "x"}, "machine.segments[0].devices[1].slot: expected an integer, got 'x'"),
    ({"kind": "nic"}, "machine.segments[0].devices[1].kind: expected one of endpoint, "
                      "root-port, bridge, switch, got 'nic'"),
    ({"slot": 1}, "machine.segments[0].devices[1].slot: slot 1 function 0 is already used "
                  "by machine.segments[0].devices[0]"),
    ({"children": [{"slot": 0}]}, "machine.segments[0].devices[1].children: an endpoint "
                                  "cannot have children"),
    ({"vendor": "intel"}, "machine.segments[0].devices[1].vendor: expected an integer, "
                          "got 'intel'"),
    ({"vendor": 0x10000}, "machine.segments[0].devices[1].vendor: expected 0x0..0xffff"),
    ({"functions": [1, 2]}, "machine.segments[0].devices[1].functions: function 0 is "
                            "required"),
    ({"functions": [0, 9]}, "machine.segments[0].devices[1].functions[1]: expected 0..7, "
                            "got 9"),
    ({"hotplog": True}, "machine.segments[0].devices[1]: unknown key 'hotplog'"),
    ({"name": "rp1"}, "machine.segments[0].devices[1].name: 'rp1' is already used by "
                      "machine.segments[0].devices[0]"),
    ({"sriov": {"total_vfs": 2, "vf_offset": 0}},
     "machine.segments[0].devices[1].sriov.vf_offset: expected 1..255, got 0"),
    ({"kind": "switch", "children": [{"slot": 0}]},
     "machine.segments[0].devices[1].children: a switch's devices go below its ports:"),
    ({"present": "yes"}, "machine.segments[0].devices[1].present: expected true or false"),
])
def test_bad_topology_names_the_yaml_path(patch: dict[str, Any], message: str) -> None:
    """Validation errors carry the YAML-ish path of the offending value."""
    dev: dict[str, Any] = {"slot": 2, **patch}
    topo = {"segments": [{"segment": 0, "devices": [
        {"slot": 1, "kind": "root-port", "name": "rp1"}, dev]}]}
    with pytest.raises(ValueError) as exc:
        hw_of(topo)
    assert str(exc.value).startswith(message), str(exc.value)


@pytest.mark.parametrize(("topo", "message"), [
    ({"segments": [{"devices": [{"slot": 1, "kind": "root-port", "children": [
        {"slot": 2}]}]}]},
     "machine.segments[0].devices[0].children[0].slot: expected 0 below a PCIe downstream"),
    ({"segments": [{"devices": [{"slot": 1, "kind": "bridge", "children": [
        {"slot": 2, "kind": "root-port"}]}]}]},
     "machine.segments[0].devices[0].children[0].kind: a root port must be on a root bus"),
    ({"segments": [{"devices": [{"slot": 1, "kind": "switch", "ports": [
        {"slot": 3}, {"slot": 3}]}]}]},
     "machine.segments[0].devices[0].ports[1].slot: slot 3 function 0 is already used by "
     "machine.segments[0].devices[0].ports[0]"),
    ({"segments": [{"devices": [{"slot": 1, "kind": "switch", "ports": [
        {"slot": 0, "children": [{"slot": 0, "children": [{"slot": 0}]}]}]}]}]},
     "machine.segments[0].devices[0].ports[0].children[0].children: an endpoint cannot"),
    ({"segments": [{"devices": [{"slot": 1, "sriov": {"total_vfs": 9}},
                                {"slot": 2}]}]},
     "machine.segments[0].devices[0].sriov: VF 7 would use devfn 0x10, which "
     "machine.segments[0].devices[1] already uses"),
    ({"segments": [{"firmware_numbering": "random"}]},
     "machine.segments[0].firmware_numbering: expected one of dfs, bfs, sparse"),
    ({"segments": [{"segment": 1}, {"segment": 1}]},
     "machine.segments[1].segment: segment 1 is defined twice"),
    ({"segments": [{"devices": [{"slot": 1, "firmware_bus": {"primary": 0}}]}]},
     "machine.segments[0].devices[0].firmware_bus: only bridges have bus registers"),
    ({"segments": "x"}, "machine.segments: expected a list"),
])
def test_bad_nested_topology(topo: dict[str, Any], message: str) -> None:
    """Nested paths (children, ports, sriov) and segment-level errors."""
    with pytest.raises(ValueError) as exc:
        hw_of(topo)
    assert str(exc.value).startswith(message), str(exc.value)


def test_schema_dump_shape_is_accepted() -> None:
    """The scenario schema dumps every default (empty children/ports, kind
    ``endpoint`` on switch ports, needs_acs_quirk) — all must parse."""
    dumped = {"memory": 1 << 34, "kho_scratch": 1 << 26, "segments": [{
        "segment": 0, "root_bus": 0, "firmware_numbering": "dfs", "firmware_bus_gap": 4,
        "iommu": True, "devices": [
            {"slot": 1, "kind": "switch", "name": "sw", "vendor": 0x8086, "device": 0,
             "ari": False, "hotplug": False, "present": True, "children": [],
             "needs_acs_quirk": False,
             "ports": [{"slot": 0, "kind": "endpoint", "vendor": 0x8086, "device": 0,
                        "ari": False, "hotplug": True, "present": True, "ports": [],
                        "needs_acs_quirk": False,
                        "children": [{"slot": 0, "kind": "endpoint", "name": "ep",
                                      "vendor": 0x8086, "device": 0, "ari": False,
                                      "hotplug": False, "present": True, "children": [],
                                      "ports": [], "needs_acs_quirk": True}]}]}]}]}
    hw = hw_of(dumped)
    assert hw.find("ep").needs_acs_quirk
    assert hw.find("sw/00.0").kind == "downstream-port"


def test_scenario_schema_round_trip() -> None:
    """MachineSpec.topology() (pydantic schema) is what from_topology receives."""
    schema = pytest.importorskip("luosim.scenario.schema")
    try:
        spec = schema.MachineSpec.model_validate(BRIEF_EXAMPLE)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        if "an endpoint has no children or ports" in str(exc):
            pytest.xfail("scenario schema: switch ports default to kind endpoint, "
                         "so a port with children is rejected")
        raise
    hw = hw_of(spec.topology())
    assert regs(hw) == regs(hw_of(BRIEF_EXAMPLE))


# -- firmware numbering ----------------------------------------------------------------
def test_firmware_dfs_numbering() -> None:
    """power_on(): depth-first sequential numbers (spec pci.md §5.1 'firmware')."""
    assert regs(hw_of(two_rp_tree("dfs"))) == {
        "rp1": (0, 1, 4), "sw0": (1, 2, 4), "dp0": (2, 3, 3), "dp1": (2, 4, 4),
        "rp2": (0, 5, 6), "br": (5, 6, 6), "rp3": (0, 7, 7)}


def test_firmware_bfs_numbering_overlaps_windows() -> None:
    """bfs: secondaries level by level; rp1's window swallows rp2's and rp3's
    buses (a firmware bug: their subtrees are unreachable until the kernel
    renumbers with pci=assign-busses)."""
    hw = hw_of(two_rp_tree("bfs"))
    assert regs(hw) == {
        "rp1": (0, 1, 7), "rp2": (0, 2, 5), "rp3": (0, 3, 3),
        "sw0": (1, 4, 7), "br": (2, 5, 5), "dp0": (4, 6, 6), "dp1": (4, 7, 7)}
    # buses 2 and 3 are claimed by rp1 first (lower devfn): rp2's and rp3's
    # subtrees never see a config cycle
    assert hw.config_read(0, 2, 0) is None
    assert hw.config_read(0, 3, 0) is None
    assert hw.requester_id(hw.find("ep3")) is None
    assert hw.config_read(0, 6, 0) is hw.find("ep0")
    assert hw.config_read(0, 7, 0) is hw.find("ep1")


def test_firmware_sparse_numbering_with_gap() -> None:
    """sparse: dfs with firmware_bus_gap spare numbers at the end of each window
    (nested windows each add their own gap)."""
    assert regs(hw_of(two_rp_tree("sparse", firmware_bus_gap=2))) == {
        "rp1": (0, 1, 12), "sw0": (1, 2, 10), "dp0": (2, 3, 5), "dp1": (2, 6, 8),
        "rp2": (0, 13, 18), "br": (13, 14, 16), "rp3": (0, 19, 21)}


def test_root_bus_number_and_override() -> None:
    """root_bus offsets numbering; firmware_bus overrides one bridge's registers."""
    topo = two_rp_tree("dfs", root_bus=0x40)
    topo["segments"][0]["devices"][2]["firmware_bus"] = {"primary": 0x40, "secondary": 0x41,
                                                         "subordinate": 0x41}
    r = regs(hw_of(topo))
    assert r["rp1"] == (0x40, 0x41, 0x44)
    assert r["rp3"] == (0x40, 0x41, 0x41)  # overlapping rp1: misconfigured on purpose


def test_absent_card_is_not_numbered() -> None:
    """present: false — firmware skips the card; it stays zero until hot-added."""
    topo = two_rp_tree("dfs")
    topo["segments"][0]["devices"][1]["children"][0]["present"] = False
    r = regs(hw_of(topo))
    assert r["br"] == (0, 0, 0)
    assert r["rp2"] == (0, 5, 5) and r["rp3"] == (0, 6, 6)


def test_firmware_runs_out_of_bus_numbers() -> None:
    """More than 255 bridges cannot be numbered: ValueError naming the segment."""
    chain: dict[str, Any] = {"slot": 0, "kind": "bridge"}
    root = chain
    for _ in range(300):
        nxt: dict[str, Any] = {"slot": 0, "kind": "bridge"}
        chain["children"] = [nxt]
        chain = nxt
    with pytest.raises(ValueError, match=r"machine.segments\[0\]: firmware ran out"):
        hw_of({"segments": [{"devices": [{**root, "slot": 1}]}]})


# -- routing ---------------------------------------------------------------------------
def test_config_routing_follows_bridge_registers() -> None:
    """config_read walks bridges by their CURRENT secondary/subordinate (pci.md §5.2)."""
    hw = hw_of(two_rp_tree("dfs"))
    ep0, ep1, legacy = hw.find("ep0"), hw.find("ep1"), hw.find("legacy")
    assert hw.config_read(0, 3, 0) is ep0
    assert hw.config_read(0, 4, 0) is ep1
    assert hw.config_read(0, 6, 5 << 3) is legacy
    assert hw.config_read(0, 0, 1 << 3) is hw.find("rp1")
    assert hw.config_read(0, 9, 0) is None
    assert hw.config_read(1, 0, 0) is None  # no such segment
    # renumber dp1 (and its parents' windows) by hand: the device moves with it
    hw.find("rp1").subordinate = 0x20
    hw.find("sw0").subordinate = 0x20
    hw.find("dp1").write_bus_numbers(2, 0x20, 0x20)
    assert hw.config_read(0, 4, 0) is None
    assert hw.config_read(0, 0x20, 0) is ep1
    # a bridge whose registers are zeroed forwards nothing
    hw.lose_bus_config(hw.find("sw0"))
    assert hw.config_read(0, 2, 0) is None and hw.config_read(0, 3, 0) is None


def test_downstream_link_has_only_device_zero_and_ari_needs_forwarding() -> None:
    """Below a PCIe downstream port only device 0 answers; functions >= 8 need ARI
    Forwarding Enable in the port (pci.md §5.4)."""
    hw = hw_of({"segments": [{"devices": [
        {"slot": 1, "kind": "root-port", "name": "rp", "ari": True, "children": [
            {"slot": 0, "name": "ari", "ari": True, "functions": [0, 1, 8, 17]}]}]}]})
    assert hw.config_read(0, 1, 1) is hw.find("ari.f1")
    assert hw.config_read(0, 1, 8) is None
    hw.find("rp").devctl2_ari_fwd = True
    assert hw.config_read(0, 1, 8) is hw.find("ari.f8")
    assert hw.config_read(0, 1, 17) is hw.find("ari.f17")
    assert hw.find("ari").ari_next_fn == 1 and hw.find("ari.f8").ari_next_fn == 17


def test_requester_id_changes_when_bridge_renumbered() -> None:
    """requester_id uses the parent bridge's current secondary (pci.md §7.5)."""
    hw = hw_of(two_rp_tree("dfs"))
    ep3 = hw.find("ep3")
    assert hw.requester_id(ep3) == (0, 0x0700)
    assert hw.requester_id(hw.find("rp3")) == (0, 0x0018)
    hw.find("rp3").write_bus_numbers(0, 9, 9)
    assert hw.requester_id(ep3) == (0, 0x0900)
    hw.lose_bus_config(hw.find("rp3"))
    assert hw.requester_id(ep3) is None
    # a parent whose own upstream no longer routes its bus: not configured
    hw.find("rp1").write_bus_numbers(0, 1, 1)
    assert hw.requester_id(hw.find("ep0")) is None


def test_dma_path_needs_bme_on_device_and_every_bridge() -> None:
    """dma_path_enabled: BME on the function and on each upstream bridge (pci.md §5.8)."""
    hw = hw_of(two_rp_tree("dfs"))
    ep0 = hw.find("ep0")
    assert not hw.dma_path_enabled(ep0)
    ep0.command |= CMD_BME | CMD_MEM
    assert not hw.dma_path_enabled(ep0)
    for p in hw.upstream_bridges(ep0):
        p.command |= CMD_BME
    assert [p.hw_id for p in hw.upstream_bridges(ep0)] == ["dp0", "sw0", "rp1"]
    assert hw.dma_path_enabled(ep0)
    hw.find("sw0").command &= ~CMD_BME
    assert not hw.dma_path_enabled(ep0)


def test_resets_and_hotplug_events() -> None:
    """reset_function keeps bus registers; secondary_bus_reset zeroes bridges below;
    hot_remove/hot_add flip presence and restore power-on registers."""
    hw = hw_of(two_rp_tree("dfs"))
    sw0 = hw.find("sw0")
    sw0.command = CMD_BME | CMD_MEM
    hw.reset_function(sw0)
    assert sw0.command == 0 and (sw0.secondary, sw0.subordinate) == (2, 4)
    hw.secondary_bus_reset(hw.find("rp1"))
    assert regs(hw)["sw0"] == (0, 0, 0) and regs(hw)["dp0"] == (0, 0, 0)
    assert regs(hw)["rp1"] == (0, 1, 4)
    hw = hw_of(two_rp_tree("dfs"))
    assert hw.hot_remove("ep3") is hw.find("ep3")
    assert hw.config_read(0, 7, 0) is None and hw.requester_id(hw.find("ep3")) is None
    hw.find("ep3").command = CMD_BME
    hw.hot_add("ep3")
    assert hw.config_read(0, 7, 0) is hw.find("ep3") and hw.find("ep3").command == 0
    with pytest.raises(KeyError, match="no PCI function 'nope'"):
        hw.hot_add("nope")
    with pytest.raises(ValueError, match="ep3: already present"):
        hw.hot_add("ep3")


def test_power_on_again_restores_firmware_state() -> None:
    """A cold power cycle: registers back to reset values, SR-IOV off, firmware
    numbers again (kexec, by contrast, leaves every register alone)."""
    hw = hw_of(BRIEF_EXAMPLE)
    before = regs(hw)
    hw.enable_sriov(hw.find("mf"), 2)
    hw.find("rp1").command = CMD_BME
    hw.lose_bus_config(hw.find("sw0"))
    hw.power_on()
    assert regs(hw) == before and hw.find("rp1").command == 0
    assert hw.find("mf").num_vfs == 0 and hw.get("mf.vf0") is None


def test_sriov_vfs_materialise_on_the_pf_bus() -> None:
    """enable_sriov(pf, n): VFs at PF devfn + offset + i*stride, answering config
    cycles as VFs; disabled again with n = 0 (pci.md §5.5)."""
    hw = hw_of(BRIEF_EXAMPLE)
    pf = hw.find("mf")
    vfs = hw.enable_sriov(pf, 3)
    assert [(v.hw_id, v.devfn) for v in vfs] == [("mf.vf0", 0x20), ("mf.vf1", 0x21),
                                                 ("mf.vf2", 0x22)]
    assert all(isinstance(v, PciFunction) and v.is_virtfn and v.physfn is pf for v in vfs)
    assert hw.config_read(0, 0, 0x21) is vfs[1]
    assert hw.requester_id(vfs[2]) == (0, 0x22)
    assert hw.get("mf.vf2") is vfs[2]
    with pytest.raises(ValueError, match=r"NumVFs 5 not in 0\.\.4"):
        hw.enable_sriov(pf, 5)
    hw.enable_sriov(pf, 0)
    assert pf.vfs == [] and hw.config_read(0, 0, 0x21) is None and hw.get("mf.vf2") is None
