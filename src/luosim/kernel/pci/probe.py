"""The kernel's PCI enumeration and device lifetime (models drivers/pci/probe.c).

One :class:`PciSubsystem` per booted kernel.  It walks the hardware with
config reads exactly where Linux does (``pci_scan_root_bus`` ->
``pci_scan_child_bus_extend`` -> ``pci_scan_slot`` / two-pass
``pci_scan_bridge_extend``), builds :class:`PciBus` / :class:`PciDev`
objects and programs bridge bus numbers, ARI Forwarding and ACS Control in
hardware.  Live update changes enumeration only through the hook object
``PciSubsystem.hooks`` (:class:`PciLiveupdateHooks`), called at the points
named in spec pci.md §4.6 and §5.1–§5.4, §5.8; with :class:`NullHooks`
(``CONFIG_PCI_LIVEUPDATE=n``) this is plain Linux.

Bus numbering rules (pci.md §5.1, as the v6 hooks expect them):

* pass 0 keeps a bridge's numbers when it has some, they are not "broken"
  (primary != parent bus, secondary <= parent bus, or secondary >
  subordinate) and ``pci=assign-busses`` is off — or the hooks said
  *inherit*, which overrides ``pci=assign-busses``;
* pass 0 zeroes the bus bytes of broken bridges (and of every bridge with
  assign-busses and no inheritance);
* pass 1 gives bridges without numbers ``max + 1``, a temporary subordinate
  of the parent's end, scans below, then writes the real subordinate.  With
  inheritance and a ``pci_bus_rule == "v6"`` profile such a bridge is
  skipped instead ("cannot reconfigure bridge during Live Update") and
  nothing below it is enumerated; with ``"v9"`` it is numbered unless
  ``hooks.refuse_bus_numbers(bus, dev)`` says no.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from luosim.faults import point
from luosim.hw.pci import (
    ACS_CR,
    ACS_RR,
    ACS_SV,
    ACS_UF,
    CMD_BME,
    CMD_MEM,
    POWER_STATES,
    PciFunction,
    PciHardware,
    PciRootComplex,
)

if TYPE_CHECKING:
    from luosim.hw.machine import Machine

FP_SETUP_HEADER = point(
    "pci.probe.header", ("corrupt:header",),
    "pci_setup_device() reads an unknown header type: the device is dropped and "
    "pci_liveupdate_cleanup_device() runs on the error path (pci.md §2 patch 3)")

DEFAULT_HOTPLUG_BUS_SIZE = 2
"""Buses reserved below a hot-plug bridge (``pci=hpbussize=N``), counting its own
secondary bus.  Linux's default is 1 (no extra bus); luosim reserves one extra
bus by default so a hot-added bridge fits below a hot-plug port."""

_PORT_TYPES = frozenset({"root_port", "upstream", "downstream"})
_D3HOT = POWER_STATES.index("D3hot")

# Device IDs of Intel PCH root ports whose ACS is enabled through a
# device-specific quirk instead of the standard capability (facts about
# hardware, as listed by the kernel's pci_dev_acs_ops table).
_INTEL_ACS_QUIRK_RANGES = (
    (0x3B42, 0x3B51), (0x1C10, 0x1C1F), (0x1E10, 0x1E1F), (0x8C10, 0x8C1F),
    (0x8D10, 0x8D1F), (0x9C10, 0x9C1F), (0x9C90, 0x9C9F), (0x9CB0, 0x9CBF),
    (0xA110, 0xA11F), (0xA167, 0xA16A), (0xA290, 0xA29F), (0xA2E7, 0xA2EE),
)

_NAME_RE = re.compile(r"^([0-9a-fA-F]{4,}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


# -- kernel-facing protocol --------------------------------------------------------
class PciKernel(Protocol):
    """What the PCI core needs from its kernel (``luosim.kernel.kernel.Kernel``)."""

    @property
    def machine(self) -> Machine: ...

    @property
    def name(self) -> str: ...

    @property
    def profile(self) -> Any: ...

    def cmdline_has(self, flag: str) -> bool: ...

    def cmdline_value(self, key: str) -> str | None: ...

    def printk(self, level: str, subsystem: str, message: str, **data: Any) -> None: ...

    def warn(self, subsystem: str, message: str) -> None: ...

    def warn_once(self, subsystem: str, key: str, message: str) -> None: ...


# -- kernel objects ------------------------------------------------------------------
@dataclass
class PciLiveupdateState:
    """``struct pci_liveupdate`` embedded in every ``pci_dev`` (pci.md §4).

    ``outgoing``/``incoming`` hold the serialized slot (any object; ``None`` =
    not preserved), ``acs_ctrl`` the ACS Control snapshot (§5.3),
    ``inherit_buses`` the per-bridge scan decision (§5.1), ``was_preserved``
    (v9: ``was_incoming``) stays true for the pci_dev's lifetime, ``frozen``
    is set at shutdown (§5.8).
    """

    outgoing: Any = None
    incoming: Any = None
    acs_ctrl: int = 0
    inherit_buses: bool = False
    was_preserved: bool = False
    frozen: bool = False


@dataclass(eq=False)
class PciBus:
    """``struct pci_bus``: a bus number the kernel has claimed and the devices on it."""

    domain: int
    number: int
    primary: int
    end: int
    """``busn_res.end``: the highest bus number below this bus."""
    self_dev: PciDev | None = None
    parent: PciBus | None = None
    devices: list[PciDev] = field(default_factory=list)
    children: list[PciBus] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.number

    @property
    def name(self) -> str:
        return f"{self.domain:04x}:{self.number:02x}"

    def __repr__(self) -> str:
        return f"<PciBus {self.name} [bus {self.number:02x}-{self.end:02x}]>"


@dataclass(eq=False)
class PciDev:
    """``struct pci_dev``: the kernel's view of one hardware function."""

    hw: PciFunction
    bus: PciBus
    devfn: int
    lu: PciLiveupdateState = field(default_factory=PciLiveupdateState)
    subordinate: PciBus | None = None
    is_virtfn: bool = False
    physfn: PciDev | None = None
    vfs: list[PciDev] = field(default_factory=list)
    vendor: int = 0
    device: int = 0
    pcie_type: str = ""
    is_bridge: bool = False
    is_hotplug_bridge: bool = False
    multifunction: bool = False
    ari_enabled: bool = False
    """On a bridge: the kernel believes ARI Forwarding is enabled (``bridge->ari_enabled``)."""
    acs_cap: int = 0
    """ACS Capability bits read at ``pci_acs_init`` (0: no ACS capability)."""
    is_enabled: bool = False
    is_busmaster: bool = False
    is_added: bool = False
    removed: bool = False
    driver: Any = None
    """The bound driver object (set by drivers such as vfio-pci); the PCI core ignores it."""

    @property
    def domain(self) -> int:
        return self.bus.domain

    @property
    def bdf(self) -> int:
        return (self.bus.number << 8) | self.devfn

    @property
    def slot(self) -> int:
        return self.devfn >> 3

    @property
    def func(self) -> int:
        return self.devfn & 7

    @property
    def name(self) -> str:
        """``pci_name()``: ``"0000:03:00.0"``."""
        return f"{self.bus.domain:04x}:{self.bus.number:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"

    @property
    def is_incoming(self) -> bool:
        """``pci_liveupdate_is_incoming()`` (pci.md §4.5)."""
        return self.lu.incoming is not None

    @property
    def current_state(self) -> str:
        return self.hw.power_state

    @property
    def upstream_bridge(self) -> PciDev | None:
        """``pci_upstream_bridge()``: the bridge above (None on a root bus or for a VF's PF)."""
        return self.bus.self_dev

    def __repr__(self) -> str:
        return f"<PciDev {self.name} {self.hw.hw_id}{' removed' if self.removed else ''}>"


def needs_acs_enable_quirk(dev: PciDev) -> bool:
    """Does ``dev`` enable ACS through a device-specific quirk?

    Models the lookup helper over ``pci_dev_acs_ops`` (pci.md §2 patch 7):
    Intel PCH root ports listed in the kernel's table, or a function the
    topology marks ``needs_acs_quirk``.  Live update refuses to preserve such
    devices (§4.2) and falls back to normal ACS for incoming ones (§5.3).
    """
    hw = dev.hw
    if hw.needs_acs_quirk:
        return True
    if hw.vendor != 0x8086 or hw.pcie_type != "root_port":
        return False
    return any(lo <= hw.device <= hi for lo, hi in _INTEL_ACS_QUIRK_RANGES)


# -- live-update hooks ---------------------------------------------------------------
class PciLiveupdateHooks(Protocol):
    """Calls from the PCI core into PCI live update (drivers/pci/liveupdate.h, pci.md §4.6).

    The real implementation lives in ``luosim.kernel.pci.liveupdate``;
    :class:`NullHooks` are the ``CONFIG_PCI_LIVEUPDATE=n`` stubs.
    """

    def setup_device(self, dev: PciDev) -> None:
        """First thing in ``pci_setup_device()``: mark ``dev`` incoming if the
        previous kernel preserved its (domain, bdf); may retrieve the FLB."""

    def cleanup_device(self, dev: PciDev) -> None:
        """``pci_release_dev()`` and setup's error path: the pci_dev goes away."""

    def scan_bridge_begin(self, bus: PciBus, bridge_dev: PciDev, pass_: int) -> bool:
        """Start of ``pci_scan_bridge_extend(bus, bridge_dev, pass_)``.  True =
        inherit bus numbers: ``pci=assign-busses`` is ignored and, with a v6
        bus rule, a bridge without usable numbers is not renumbered on pass 1."""
        return False

    def scan_bridge_end(self, bridge_dev: PciDev, pass_: int) -> None:
        """End of every ``pci_scan_bridge_extend()`` (on every return path)."""

    def init_acs(self, dev: PciDev) -> None:
        """``pci_acs_init()``, after ``dev.acs_cap`` is read: snapshot ACS Control."""

    def enable_acs(self, dev: PciDev) -> bool:
        """Start of ``pci_enable_acs()``; True = handled (inherited), skip policy."""
        return False

    def configure_ari(self, bridge_dev: PciDev) -> bool:
        """In ``pci_configure_ari()`` for function 0 below an ARI-capable
        ``bridge_dev``, before ``pci=noari``; True = ``bridge_dev.ari_enabled``
        was set from hardware, skip the normal decision."""
        return False

    def refuse_bus_numbers(self, bus: PciBus, dev: PciDev) -> bool:
        """v9 rule on pass 1: True = do not give ``dev`` (on ``bus``) bus numbers."""
        return False

    def is_outgoing(self, dev: PciDev) -> bool:
        """``pci_liveupdate_is_outgoing()``, asked at shutdown (after ``freeze``)."""
        return False

    def freeze(self, dev: PciDev) -> None:
        """First thing in ``pci_device_shutdown()``: preservation status is final."""


class NullHooks:
    """``CONFIG_PCI_LIVEUPDATE=n``: every hook is a no-op / returns False."""

    def setup_device(self, dev: PciDev) -> None:
        return None

    def cleanup_device(self, dev: PciDev) -> None:
        return None

    def scan_bridge_begin(self, bus: PciBus, bridge_dev: PciDev, pass_: int) -> bool:
        return False

    def scan_bridge_end(self, bridge_dev: PciDev, pass_: int) -> None:
        return None

    def init_acs(self, dev: PciDev) -> None:
        return None

    def enable_acs(self, dev: PciDev) -> bool:
        return False

    def configure_ari(self, bridge_dev: PciDev) -> bool:
        return False

    def refuse_bus_numbers(self, bus: PciBus, dev: PciDev) -> bool:
        return False

    def is_outgoing(self, dev: PciDev) -> bool:
        return False

    def freeze(self, dev: PciDev) -> None:
        return None


# -- the subsystem -------------------------------------------------------------------
class PciSubsystem:
    """The PCI core of one kernel: enumeration, hot-plug, removal, shutdown."""

    def __init__(self, kernel: PciKernel) -> None:
        self.kernel = kernel
        self.hooks: PciLiveupdateHooks = NullHooks()
        self.acs_requested = True
        """``pci_request_acs()`` was called (an IOMMU is present): ACS is enabled
        on enumeration.  Set False to model a host without IOMMU."""
        self.root_buses: dict[int, PciBus] = {}
        self._buses: dict[tuple[int, int], PciBus] = {}
        self._devices: list[PciDev] = []
        self._by_addr: dict[tuple[int, int, int], PciDev] = {}
        self._by_hw: dict[str, PciDev] = {}
        self.enumerated = False

    # -- configuration --
    @property
    def hw(self) -> PciHardware:
        """The machine's PCI hardware."""
        return self.kernel.machine.pci

    @property
    def assign_busses(self) -> bool:
        """``pcibios_assign_all_busses()``: ``pci=assign-busses`` on the command line."""
        return self.kernel.cmdline_has("pci=assign-busses")

    @property
    def noari(self) -> bool:
        return self.kernel.cmdline_has("pci=noari")

    @property
    def hpbussize(self) -> int:
        """``pci_hotplug_bus_size`` (``pci=hpbussize=N``, clamped to 0xff)."""
        raw = self.kernel.cmdline_value("pci=hpbussize")
        if raw is None:
            return DEFAULT_HOTPLUG_BUS_SIZE
        try:
            val = int(raw, 0)
        except ValueError:
            self.kernel.warn_once("pci", "hpbussize", f"pci=hpbussize={raw}: not a number, "
                                  f"using {DEFAULT_HOTPLUG_BUS_SIZE}")
            return DEFAULT_HOTPLUG_BUS_SIZE
        return max(0, min(val, 0xFF))

    @property
    def bus_rule(self) -> str:
        """The profile's bus-number rule: "v6" (per-scan inheritance) or "v9"."""
        return str(getattr(self.kernel.profile, "pci_bus_rule", "v6"))

    def _log(self, level: str, msg: str) -> None:
        self.kernel.printk(level, "pci", msg)

    # -- lookup --
    def devices(self) -> list[PciDev]:
        """Every present ``pci_dev`` in enumeration (``pci_device_add``) order."""
        return list(self._devices)

    def __iter__(self) -> Iterator[PciDev]:
        return iter(list(self._devices))

    def find(self, name: str) -> PciDev | None:
        """``"0000:03:00.0"`` -> the pci_dev at that address, or None."""
        m = _NAME_RE.match(name.strip())
        if m is None:
            return None
        dom, bus, slot, fn = (int(m.group(i), 16) for i in range(1, 5))
        return self._by_addr.get((dom, bus, (slot << 3) | fn))

    def find_bdf(self, domain: int, bdf: int) -> PciDev | None:
        return self._by_addr.get((domain, bdf >> 8, bdf & 0xFF))

    def find_hw(self, hw_id: str) -> PciDev | None:
        """The pci_dev of hardware function ``hw_id``, if enumerated."""
        return self._by_hw.get(hw_id)

    def find_bus(self, domain: int, number: int) -> PciBus | None:
        """``pci_find_bus()``."""
        return self._buses.get((domain, number))

    def buses(self) -> list[PciBus]:
        return list(self._buses.values())

    # -- enumeration --
    def enumerate(self) -> list[PciDev]:
        """Boot-time enumeration of every segment (``pci_scan_root_bus`` per host
        bridge, then ``pci_bus_add_devices``).  Returns the devices found."""
        if self.enumerated:
            raise RuntimeError("PCI already enumerated; use rescan()")
        self.enumerated = True
        for rc in self.hw.roots.values():
            self._scan_root_bus(rc)
        self._bus_add_devices(self._devices)
        return self.devices()

    def _scan_root_bus(self, rc: PciRootComplex) -> PciBus:
        """Models pci_scan_root_bus(): the bus resource comes from firmware (ACPI
        _CRS: [bus root-ff]) so the root bus end stays 0xff."""
        root = PciBus(domain=rc.segment, number=rc.root_bus, primary=0, end=0xFF)
        self.root_buses[rc.segment] = root
        self._buses[(rc.segment, rc.root_bus)] = root
        self._log("info", f"PCI host bridge to bus {root.name}")
        self._log("info", f"pci_bus {root.name}: root bus resource "
                          f"[bus {root.number:02x}-{root.end:02x}]")
        self._scan_child_bus_extend(root, 0)
        return root

    def _only_one_child(self, bus: PciBus) -> bool:
        """Models only_one_child(): below a PCIe root/downstream port only device 0."""
        br = bus.self_dev
        return br is not None and br.pcie_type in ("root_port", "downstream")

    def _scan_child_bus_extend(self, bus: PciBus, available_buses: int) -> int:
        """Models pci_scan_child_bus_extend(): scan every slot, then the two bridge
        passes (pass 0 keeps configured bridges, pass 1 numbers the rest, sharing
        ``available_buses`` among hot-plug bridges), then the hot-plug reservation.
        Returns the highest bus number used below ``bus``."""
        start = bus.number
        max_ = start
        for devfn in range(0, 256, 8):
            if devfn and self._only_one_child(bus):
                break
            self._scan_slot(bus, devfn)
        bridges = [d for d in bus.devices if d.is_bridge]
        hotplug_bridges = sum(1 for d in bridges if d.is_hotplug_bridge)
        normal_bridges = len(bridges) - hotplug_bridges
        used_buses = 0
        for dev in bridges:
            cmax = max_
            max_ = self._scan_bridge_extend(bus, dev, max_, 0, 0)
            used_buses += 1
            if max_ - cmax > 1:
                used_buses += max_ - cmax - 1
        for dev in bridges:
            buses = 0
            if not hotplug_bridges and normal_bridges == 1:
                buses = available_buses
            elif dev.is_hotplug_bridge:
                buses = available_buses // hotplug_bridges
                buses = min(buses, (available_buses - used_buses + 1) & 0xFFFFFFFF)
            cmax = max_
            max_ = self._scan_bridge_extend(bus, dev, cmax, buses, 1)
            if max_ - cmax > 1:
                used_buses += max_ - cmax - 1
        if bus.self_dev is not None and bus.self_dev.is_hotplug_bridge:
            want = max(available_buses, self.hpbussize - 1)
            if max_ - start < want:
                max_ = min(start + want, bus.end)
        return max_

    def _scan_slot(self, bus: PciBus, devfn: int) -> int:
        """Models pci_scan_slot(): function 0, then further functions per the
        multi-function bit or, with ARI, the ARI Next Function chain."""
        if devfn and self._only_one_child(bus):
            return 0
        fn = 0
        nr = 0
        while True:
            existed = (bus.domain, bus.number, devfn + fn) in self._by_addr
            dev = self._scan_single_device(bus, devfn + fn)
            if dev is not None:
                if not existed:
                    nr += 1
                if fn > 0:
                    dev.multifunction = True
            elif fn == 0:
                break
            fn = self._next_fn(bus, dev, fn)
            if fn < 0:
                break
        return nr

    def _next_fn(self, bus: PciBus, dev: PciDev | None, fn: int) -> int:
        """Models next_fn() / next_ari_fn()."""
        if bus.self_dev is not None and bus.self_dev.ari_enabled:
            if dev is None or not dev.hw.ari_cap:
                return -1
            nxt = dev.hw.ari_next_fn
            return nxt if nxt > fn else -1
        if fn >= 7:
            return -1
        if dev is not None and not dev.multifunction:
            return -1
        return fn + 1

    def _scan_single_device(self, bus: PciBus, devfn: int) -> PciDev | None:
        """Models pci_scan_single_device() + pci_scan_device(): an existing pci_dev
        is returned as is; otherwise read the Vendor ID (a VF reads 0xffff),
        set the device up and add it."""
        existing = self._by_addr.get((bus.domain, bus.number, devfn))
        if existing is not None:
            return existing
        hwf = self.hw.config_read(bus.domain, bus.number, devfn)
        if hwf is None or hwf.is_virtfn:
            return None
        dev = PciDev(hw=hwf, bus=bus, devfn=devfn)
        if not self._setup_device(dev):
            return None
        self._device_add(dev)
        return dev

    def _setup_device(self, dev: PciDev) -> bool:
        """Models pci_setup_device(): the live-update hook first (pci.md §4.6),
        then header type and identity.  An unknown header type drops the
        device through cleanup_device (fault point ``pci.probe.header``)."""
        self.hooks.setup_device(dev)
        hw = dev.hw
        effect = self.kernel.machine.faults.hit(FP_SETUP_HEADER, dev.name)
        if effect == "corrupt:header":
            self._log("err", f"{dev.name}: unknown header type 7f, ignoring device")
            self.hooks.cleanup_device(dev)
            return False
        dev.vendor, dev.device = hw.vendor, hw.device
        dev.pcie_type = hw.pcie_type
        dev.is_bridge = hw.is_bridge
        dev.is_hotplug_bridge = hw.is_bridge and hw.hotplug
        dev.multifunction = hw.multifunction
        dev.is_virtfn = hw.is_virtfn
        self._log("info", f"{dev.name}: [{hw.vendor:04x}:{hw.device:04x}] type "
                          f"{1 if hw.is_bridge else 0:02x} {hw.kind}"
                          f"{' (VF)' if hw.is_virtfn else ''} ({hw.hw_id})")
        return True

    def _device_add(self, dev: PciDev) -> None:
        """Models pci_device_add(): capabilities (pci_init_capabilities: ARI,
        SR-IOV, ACS), then the device joins its bus and the global list."""
        self._configure_ari(dev)
        self._iov_init(dev)
        self._acs_init(dev)
        dev.bus.devices.append(dev)
        self._devices.append(dev)
        self._by_addr[(dev.bus.domain, dev.bus.number, dev.devfn)] = dev
        self._by_hw[dev.hw.hw_id] = dev

    def _configure_ari(self, dev: PciDev) -> None:
        """Models pci_configure_ari(): function 0 of a PCIe device below a bridge
        that supports ARI Forwarding decides the bridge's ARI setting.  The
        live-update hook runs before ``pci=noari`` so inheritance wins (§5.4)."""
        if dev.devfn != 0 or not dev.hw.is_pcie or dev.is_virtfn:
            return
        bridge = dev.bus.self_dev
        if bridge is None or not bridge.hw.ari_cap:
            return
        if self.hooks.configure_ari(bridge):
            return
        if self.noari:
            return
        bridge.hw.devctl2_ari_fwd = dev.hw.ari_cap
        bridge.ari_enabled = dev.hw.ari_cap

    def _iov_init(self, dev: PciDev) -> None:
        """Models pci_iov_init()/sriov_init(): VFs found enabled are disabled."""
        if dev.hw.total_vfs and dev.hw.num_vfs:
            self._log("info", f"{dev.name}: SR-IOV: {dev.hw.num_vfs} VFs left enabled, "
                              "disabling")
            self.hw.enable_sriov(dev.hw, 0)

    def _acs_init(self, dev: PciDev) -> None:
        """Models pci_acs_init(): read the ACS capability, let live update snapshot
        the control register (§5.3), then pci_enable_acs()."""
        dev.acs_cap = 0 if dev.is_virtfn else dev.hw.acs_cap
        self.hooks.init_acs(dev)
        self.enable_acs(dev)

    def enable_acs(self, dev: PciDev) -> None:
        """Models pci_enable_acs(): live update may rewrite an inherited value and
        stop (§5.3); otherwise, when ACS was requested, a device-specific quirk or
        the standard policy (Source Validation, Request/Completion Redirect,
        Upstream Forwarding as far as capable) is ORed into ACS Control."""
        if self.hooks.enable_acs(dev):
            return
        if not self.acs_requested:
            return
        if needs_acs_enable_quirk(dev):
            dev.hw.acs_ctrl |= ACS_SV | ACS_RR | ACS_CR | ACS_UF
            return
        if not dev.acs_cap:
            return
        dev.hw.acs_ctrl |= dev.acs_cap & (ACS_SV | ACS_RR | ACS_CR | ACS_UF)

    def _add_new_bus(self, parent: PciBus, bridge: PciDev, busnr: int) -> PciBus:
        """Models pci_add_new_bus(): the bridge's child bus object."""
        child = PciBus(domain=parent.domain, number=busnr, primary=parent.number,
                       end=0xFF, self_dev=bridge, parent=parent)
        parent.children.append(child)
        bridge.subordinate = child
        self._buses[(parent.domain, busnr)] = child
        return child

    def _scan_bridge_extend(self, bus: PciBus, dev: PciDev, max_: int,
                            available_buses: int, pass_: int) -> int:
        """Models pci_scan_bridge_extend() in drivers/pci/probe.c, with the v6
        live-update hooks around it (pci.md §5.1)."""
        inherit = bool(self.hooks.scan_bridge_begin(bus, dev, pass_))
        try:
            return self._scan_bridge_body(bus, dev, max_, available_buses, pass_, inherit)
        finally:
            self.hooks.scan_bridge_end(dev, pass_)

    def _scan_bridge_body(self, bus: PciBus, dev: PciDev, max_: int,
                          available_buses: int, pass_: int, inherit: bool) -> int:
        hw = dev.hw
        primary, secondary, subordinate = hw.primary, hw.secondary, hw.subordinate
        broken = False
        if pass_ == 0 and (primary != bus.number or secondary <= bus.number
                           or secondary > subordinate):
            self._log("info", f"{dev.name}: bridge configuration invalid "
                              f"([bus {secondary:02x}-{subordinate:02x}]), reconfiguring")
            broken = True
        assign_all = self.assign_busses and not inherit
        child: PciBus | None
        if (secondary or subordinate) and not assign_all and not broken:
            # configured by firmware (or the previous kernel): keep on pass 0
            if pass_:
                return max_
            child = self.find_bus(bus.domain, secondary)
            if child is None:
                child = self._add_new_bus(bus, dev, secondary)
                child.primary = primary
                child.end = subordinate
            self._log("info", f"{dev.name}: PCI bridge to [bus {secondary:02x}-"
                              f"{subordinate:02x}]")
            cmax = self._scan_child_bus_extend(child, subordinate - secondary)
            if cmax > subordinate:
                self._log("warn", f"{dev.name}: bridge has subordinate {subordinate:02x} "
                                  f"but max busn {cmax:02x}")
            max_ = max(max_, subordinate)
        else:
            if not pass_:
                if assign_all or broken:
                    # stop forwarding until pass 1 renumbers (no overlapping windows)
                    hw.write_bus_numbers(0, 0, 0)
                return max_
            if inherit and self.bus_rule == "v6":
                self._log("err", f"{dev.name}: cannot reconfigure bridge during Live Update")
                return max_
            if self.hooks.refuse_bus_numbers(bus, dev):
                self._log("err", f"{dev.name}: not assigning bus numbers during Live Update: "
                                 "a preserved bridge on this bus lost its configuration")
                return max_
            next_busnr = max_ + 1
            if next_busnr > bus.end or next_busnr > 0xFF:
                self._log("err", f"{dev.name}: no bus number available behind bridge "
                                 f"(next {next_busnr:#x}, bus {bus.name} ends at "
                                 f"{bus.end:02x})")
                return max_
            child = self.find_bus(bus.domain, next_busnr)
            if child is None:
                child = self._add_new_bus(bus, dev, next_busnr)
                child.end = bus.end
            max_ += 1
            if available_buses:
                available_buses -= 1
            hw.write_bus_numbers(child.primary, child.number, child.end)
            max_ = self._scan_child_bus_extend(child, available_buses)
            child.end = max_
            hw.subordinate = max_ & 0xFF
            self._log("info", f"{dev.name}: PCI bridge to [bus {child.number:02x}-"
                              f"{child.end:02x}] (assigned)")
        b: PciBus | None = bus
        while b is not None and b.parent is not None:
            if (child.end > b.end or child.number > b.end or child.number < b.number
                    or child.end < b.number):
                self._log("info", f"{dev.name}: devices behind bridge are unusable because "
                                  f"[bus {child.number:02x}-{child.end:02x}] cannot be "
                                  "assigned for them")
                break
            b = b.parent
        return max_

    def _bus_add_devices(self, devs: list[PciDev]) -> None:
        """Models pci_bus_add_devices(): devices become visible; PCIe ports get
        the port driver, which enables them and sets Bus Master."""
        for dev in list(devs):
            if dev.is_added or dev.removed:
                continue
            dev.is_added = True
            if dev.pcie_type in _PORT_TYPES:
                self.enable_device(dev)
                self.set_master(dev)

    # -- driver-facing helpers --
    def enable_device(self, dev: PciDev) -> None:
        """Models pci_enable_device(): upstream bridges first (pci_enable_bridge,
        which also sets their Bus Master), then Memory Space Enable."""
        br = dev.upstream_bridge
        if br is not None:
            self._enable_bridge(br)
        dev.hw.command |= CMD_MEM
        dev.is_enabled = True

    def _enable_bridge(self, dev: PciDev) -> None:
        br = dev.upstream_bridge
        if br is not None:
            self._enable_bridge(br)
        if not dev.is_enabled:
            dev.hw.command |= CMD_MEM
            dev.is_enabled = True
        self.set_master(dev)

    def set_master(self, dev: PciDev) -> None:
        """Models pci_set_master(): Bus Master Enable on."""
        dev.hw.command |= CMD_BME
        dev.is_busmaster = True

    def clear_master(self, dev: PciDev) -> None:
        """Models pci_clear_master(): Bus Master Enable off."""
        dev.hw.command &= ~CMD_BME
        dev.is_busmaster = False

    def enable_sriov(self, dev: PciDev, num_vfs: int) -> list[PciDev]:
        """Models pci_enable_sriov() (sriov_numvfs): enable VFs in hardware and add
        a pci_dev per VF on the PF's bus (pci_iov_add_virtfn)."""
        if dev.is_virtfn or not dev.hw.total_vfs:
            raise ValueError(f"{dev.name}: not an SR-IOV physical function")
        if dev.vfs:
            raise ValueError(f"{dev.name}: {len(dev.vfs)} VFs already enabled")
        vfs_hw = self.hw.enable_sriov(dev.hw, num_vfs)
        for vf_hw in vfs_hw:
            vf = PciDev(hw=vf_hw, bus=dev.bus, devfn=vf_hw.devfn, physfn=dev)
            if not self._setup_device(vf):
                continue
            vf.is_virtfn = True
            self._device_add(vf)
            dev.vfs.append(vf)
        self._bus_add_devices(dev.vfs)
        self._log("info", f"{dev.name}: enabled {num_vfs} VFs")
        return list(dev.vfs)

    def disable_sriov(self, dev: PciDev) -> None:
        """Models pci_disable_sriov(): remove the VF pci_devs, then clear VF Enable."""
        for vf in list(dev.vfs):
            self._remove_dev(vf)
        dev.vfs = []
        if dev.hw.num_vfs:
            self.hw.enable_sriov(dev.hw, 0)

    # -- hot-plug and rescan --
    def _parent_bus_of(self, hwf: PciFunction) -> PciBus | None:
        if hwf.parent_port is None:
            return self.root_buses.get(hwf.segment)
        parent = self._by_hw.get(hwf.parent_port.hw_id)
        return parent.subordinate if parent is not None else None

    def hot_add(self, hw_id: str) -> list[PciDev]:
        """Insert the card holding ``hw_id`` and enumerate it.

        Below a hot-plug port this models pciehp_configure_device():
        pci_scan_slot() on the port's bus and pci_hp_add_bridge() for bridges
        (first free bus number inside the port's window).  Elsewhere it is
        pci_rescan_bus() of the parent bus.  Returns the new pci_devs.
        """
        head = self.hw.hot_add(hw_id)
        parent = self._parent_bus_of(head)
        if parent is None:
            self._log("err", f"hot-add {hw_id}: the bridge above it is not enumerated")
            return []
        before = len(self._devices)
        if parent.self_dev is not None and parent.self_dev.is_hotplug_bridge:
            n = self._scan_slot(parent, head.devfn & ~7)
            if n == 0:
                self._log("err", f"{parent.self_dev.name}: No new device found")
            for dev in list(parent.devices):
                if dev.is_bridge:
                    self._hp_add_bridge(dev)
        else:
            self._scan_child_bus_extend(parent, 0)
        new = self._devices[before:]
        self._bus_add_devices(new)
        return list(new)

    def _hp_add_bridge(self, dev: PciDev) -> bool:
        """Models pci_hp_add_bridge(): number a hot-added bridge from the first bus
        number its parent bus does not use yet, within the parent's window."""
        parent = dev.bus
        busnr = parent.number
        while busnr <= parent.end and self.find_bus(parent.domain, busnr) is not None:
            busnr += 1
        if busnr > parent.end:
            self._log("err", f"{dev.name}: No bus number available for hot-added bridge")
            return False
        busnr -= 1
        busnr = self._scan_bridge_extend(parent, dev, busnr, 0, 0)
        available = parent.end - busnr
        self._scan_bridge_extend(parent, dev, busnr, available, 1)
        return dev.subordinate is not None

    def rescan(self) -> list[PciDev]:
        """Models pci_rescan_bus() on every root bus (sysfs ``/sys/bus/pci/rescan``).
        Returns the new pci_devs."""
        before = len(self._devices)
        for root in list(self.root_buses.values()):
            self._scan_child_bus_extend(root, 0)
        new = self._devices[before:]
        self._bus_add_devices(new)
        return list(new)

    def hot_remove(self, hw_id: str) -> list[PciDev]:
        """Remove the card holding ``hw_id``: pci_stop_and_remove_bus_device() for
        each of its functions (children first, cleanup_device hook on each),
        then the card leaves the slot.  Returns the removed pci_devs."""
        hwf = self.hw.find(hw_id)
        if not hwf.present:
            raise ValueError(f"{hw_id}: not present")
        removed: list[PciDev] = []
        for g in hwf.card:
            dev = self._by_hw.get(g.hw_id)
            if dev is not None:
                removed.extend(self.stop_and_remove(dev))
        self.hw.hot_remove(hw_id)
        return removed

    def stop_and_remove(self, dev: PciDev) -> list[PciDev]:
        """Models pci_stop_and_remove_bus_device(): VFs, then everything below a
        bridge (last added first), then the device itself; its child bus goes."""
        removed: list[PciDev] = []
        for vf in list(dev.vfs):
            removed.extend(self.stop_and_remove(vf))
        dev.vfs = []
        child = dev.subordinate
        if child is not None:
            for d in reversed(list(child.devices)):
                removed.extend(self.stop_and_remove(d))
            self._remove_bus(child)
            dev.subordinate = None
        self._remove_dev(dev)
        removed.append(dev)
        return removed

    def _remove_bus(self, bus: PciBus) -> None:
        for c in list(bus.children):
            self._remove_bus(c)
        if self._buses.get((bus.domain, bus.number)) is bus:
            del self._buses[(bus.domain, bus.number)]
        if bus.parent is not None and bus in bus.parent.children:
            bus.parent.children.remove(bus)

    def _remove_dev(self, dev: PciDev) -> None:
        """pci_destroy_dev() -> pci_release_dev(): the cleanup hook runs last."""
        if dev.removed:
            return
        if dev in dev.bus.devices:
            dev.bus.devices.remove(dev)
        if dev in self._devices:
            self._devices.remove(dev)
        key = (dev.bus.domain, dev.bus.number, dev.devfn)
        if self._by_addr.get(key) is dev:
            del self._by_addr[key]
        if self._by_hw.get(dev.hw.hw_id) is dev:
            del self._by_hw[dev.hw.hw_id]
        if dev.physfn is not None and dev in dev.physfn.vfs:
            dev.physfn.vfs.remove(dev)
        dev.removed = True
        dev.is_added = False
        self._log("info", f"{dev.name}: removed")
        self.hooks.cleanup_device(dev)

    # -- shutdown --
    def shutdown(self, kexec: bool) -> None:
        """Models pci_device_shutdown() for every device (children first): freeze
        the preservation status, then on kexec clear Bus Master Enable unless the
        device is outgoing-preserved or deeper than D3hot (pci.md §5.8, §10 inv. 5).
        Driver shutdown callbacks are run by their subsystems, not here."""
        for dev in reversed(self._devices):
            self.hooks.freeze(dev)
            if not kexec:
                continue
            if self.hooks.is_outgoing(dev):
                continue
            if POWER_STATES.index(dev.hw.power_state) > _D3HOT:
                continue
            self.clear_master(dev)
