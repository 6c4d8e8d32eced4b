"""PCI hardware: functions, bridges and the config-space state that outlives kernels.

This module is hardware only: it knows which function sits behind which
bridge (the physical wiring, fixed by the topology), and it holds the
registers a kernel programs (command bits, bridge bus-number registers, ACS
Control, ARI Forwarding Enable, SR-IOV enable).  Those registers persist
across kexec, because nothing resets the hardware on a kexec jump; a cold
``power_on()`` makes "firmware" program the bridge bus numbers again.

Routing follows the registers, not the wiring: a configuration cycle for bus
``N`` reaches a function only if every bridge on the way claims ``N`` with
its *current* secondary/subordinate window (spec pci.md §5.2, §7.5: stable
bus numbers are what keep a device's RequesterID stable).  The IOMMU/DMA
model relies on three calls here: :meth:`PciHardware.config_read`,
:meth:`PciHardware.requester_id` and :meth:`PciHardware.dma_path_enabled`.

Topology (the ``machine:`` mapping of a scenario, all keys optional)::

    segments:
      - segment: 0                 # PCI domain (default: position in the list)
        root_bus: 0                # number of the root bus
        firmware_numbering: dfs    # dfs | bfs | sparse
        firmware_bus_gap: 4        # sparse: spare numbers at the end of each window
        iommu: true                # read by the IOMMU model
        devices: [...]             # functions on the root bus

    device keys: slot, kind (endpoint|root-port|bridge|switch), name, vendor,
    device, acs, ari, hotplug, present, functions, sriov {total_vfs,
    vf_offset, vf_stride, vf_device}, firmware_bus {primary, secondary,
    subordinate}, needs_acs_quirk, children (root-port/bridge), ports
    (switch: its downstream ports, each with slot, name, vendor, device, acs,
    ari, hotplug, present, firmware_bus, needs_acs_quirk, children).

``{}`` gives one segment (0) with a root bus and no functions: the host
bridge is modelled by :class:`PciRootComplex`, not as a config-space function.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class EventSink(Protocol):
    """Where hardware events go (the Machine); typed structurally so hw.pci does
    not import hw.machine, which imports hw.pci."""

    def emit(self, kernel: str, subsystem: str, kind: str, detail: str,
             level: str = ..., **data: Any) -> Any: ...

# -- register bits ---------------------------------------------------------------
CMD_MEM = 1 << 1
"""Command register: Memory Space Enable."""
CMD_BME = 1 << 2
"""Command register: Bus Master Enable (a bridge forwards upstream memory only with it)."""
CMD_INTX_DISABLE = 1 << 10
"""Command register: INTx Emulation Disable."""

ACS_SV = 0x01
ACS_TB = 0x02
ACS_RR = 0x04
ACS_CR = 0x08
ACS_UF = 0x10
ACS_EC = 0x20
ACS_DT = 0x40
ACS_PORT_CAP_DEFAULT = ACS_SV | ACS_TB | ACS_RR | ACS_CR | ACS_UF
ACS_ENDPOINT_CAP_DEFAULT = ACS_SV | ACS_RR | ACS_CR | ACS_UF

POWER_STATES = ("D0", "D1", "D2", "D3hot", "D3cold")
"""Device power states, shallowest first (``POWER_STATES.index`` orders them)."""

KINDS = ("endpoint", "root-port", "bridge", "switch")
"""Kinds a topology may name.  A switch's downstream ports get kind ``downstream-port``."""
BRIDGE_KINDS = frozenset({"root-port", "bridge", "switch", "downstream-port"})
_PCIE_DOWNSTREAM_KINDS = frozenset({"root-port", "downstream-port"})

FIRMWARE_NUMBERINGS = ("dfs", "bfs", "sparse")

DEFAULT_VENDOR = 0x8086
DEFAULT_DEVICE = 0x0000

SEGMENT_KEYS = {"segment", "id", "domain", "root_bus", "firmware_numbering",
                "firmware_bus_gap", "iommu", "iommu_reg_base", "devices"}
"""Keys a segment mapping may carry (``iommu*`` keys belong to the IOMMU model).
Other hardware models may add theirs to this set."""
DEVICE_KEYS = {"slot", "kind", "name", "vendor", "device", "acs", "ari", "hotplug",
               "present", "functions", "sriov", "firmware_bus", "needs_acs_quirk",
               "children", "ports"}
"""Keys a device mapping may carry; other hardware models may add theirs."""
PORT_KEYS = {"slot", "kind", "name", "vendor", "device", "acs", "ari", "hotplug",
             "present", "firmware_bus", "needs_acs_quirk", "children",
             "functions", "ports", "sriov"}
"""Keys of a switch downstream port (``kind``/``functions``/``ports``/``sriov`` only
as the schema's empty defaults)."""
SRIOV_KEYS = {"total_vfs", "vf_offset", "vf_stride", "vf_device"}
BUS_KEYS = ("primary", "secondary", "subordinate")


# -- the hardware objects --------------------------------------------------------
@dataclass
class PciWire:
    """One physical bus segment: the functions wired to a root complex or to a
    bridge's secondary side.  It has no number of its own: the number is
    whatever the owning bridge's secondary register says."""

    owner: PciFunction | None
    """The bridge whose secondary side this is, or None for a root bus."""
    segment: int
    functions: dict[int, PciFunction] = field(default_factory=dict)
    """devfn -> function (VFs are added while SR-IOV is enabled)."""
    bridges: list[PciFunction] = field(default_factory=list)
    """Bridges on this wire in devfn order (static wiring)."""

    @property
    def pcie_downstream(self) -> bool:
        """Below a root port / switch downstream port only device 0 exists,
        and functions 8..255 are reachable only with ARI Forwarding enabled."""
        return self.owner is not None and self.owner.kind in _PCIE_DOWNSTREAM_KINDS

    @property
    def conventional(self) -> bool:
        """The secondary side of a PCIe-to-PCI bridge (conventional PCI)."""
        return self.owner is not None and self.owner.kind == "bridge"


@dataclass(eq=False)
class PciFunction:
    """One hardware function with its config-space-like state.

    Identity fields are fixed by the topology; the rest are registers that
    kernels program and that survive kexec (only ``PciHardware.power_on``,
    resets and hot-plug change them behind a kernel's back).
    """

    hw_id: str
    segment: int
    slot: int
    function: int
    kind: str
    vendor: int
    device: int
    pcie_type: str
    """root_port | upstream | downstream | pci_bridge | endpoint | rc_endpoint | pci."""
    parent_port: PciFunction | None
    wire: PciWire
    devfn: int
    multifunction: bool = False
    acs_cap: int = 0
    ari_cap: bool = False
    """Endpoint: ARI capability present.  Port: ARI Forwarding supported (DEVCAP2)."""
    ari_next_fn: int = 0
    """ARI capability's Next Function Number (0 = last)."""
    hotplug: bool = False
    needs_acs_quirk: bool = False
    is_virtfn: bool = False
    physfn: PciFunction | None = None
    vf_index: int = -1
    card: list[PciFunction] = field(default_factory=list)
    """Every physical function of the same device (hot-plugged together)."""
    secondary_wire: PciWire | None = None
    firmware_bus: dict[str, int] | None = None
    topo_path: str = ""
    # -- registers (persist across kexec) --
    present: bool = True
    command: int = 0
    primary: int = 0
    secondary: int = 0
    subordinate: int = 0
    acs_ctrl: int = 0
    devctl2_ari_fwd: bool = False
    power_state: str = "D0"
    irq_enabled: bool = False
    # -- SR-IOV --
    total_vfs: int = 0
    vf_offset: int = 0
    vf_stride: int = 0
    vf_device: int = 0
    num_vfs: int = 0
    vfs: list[PciFunction] = field(default_factory=list)

    # -- identity helpers --
    @property
    def is_bridge(self) -> bool:
        return self.kind in BRIDGE_KINDS

    @property
    def is_pcie(self) -> bool:
        return self.pcie_type != "pci"

    @property
    def name(self) -> str:
        return self.hw_id

    def write_bus_numbers(self, primary: int, secondary: int, subordinate: int) -> None:
        """One dword write of PCI_PRIMARY_BUS: primary, secondary, subordinate bytes."""
        self.primary, self.secondary, self.subordinate = (
            primary & 0xFF, secondary & 0xFF, subordinate & 0xFF)

    def forwards(self, bus: int) -> bool:
        """Does this bridge claim type-1 config cycles for ``bus``?"""
        return (self.secondary != 0 and self.secondary <= bus <= self.subordinate
                and self.power_state != "D3cold")

    def power_on_defaults(self) -> None:
        """Registers as after a conventional reset (power-on, hot-add)."""
        self.command = 0
        self.primary = self.secondary = self.subordinate = 0
        self.acs_ctrl = 0
        self.devctl2_ari_fwd = False
        self.power_state = "D0"
        self.irq_enabled = False

    def __repr__(self) -> str:
        regs = (f" [{self.primary:02x}/{self.secondary:02x}-{self.subordinate:02x}]"
                if self.is_bridge else "")
        return (f"<PciFunction {self.hw_id} seg{self.segment} devfn={self.devfn:#04x} "
                f"{self.kind}{regs} cmd={self.command:#x}{'' if self.present else ' absent'}>")


@dataclass(eq=False)
class PciRootComplex:
    """A host bridge: one PCI segment (domain) and its root bus."""

    segment: int
    root_bus: int
    firmware_numbering: str
    firmware_bus_gap: int
    wire: PciWire
    iommu: Any = True
    where: str = ""


# -- topology parsing --------------------------------------------------------------
def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        val = value
    elif isinstance(value, str):
        try:
            val = int(value.strip(), 0)
        except ValueError:
            raise ValueError(f"{where}: expected an integer, got {value!r}") from None
    else:
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if not lo <= val <= hi:
        shown = f"{lo:#x}..{hi:#x}" if hi > 0xFF else f"{lo}..{hi}"
        raise ValueError(f"{where}: expected {shown}, got {value!r}")
    return val


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {value!r}")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where}: expected a list, got {value!r}")
    return value


def _check_keys(spec: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in spec if k not in allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} "
                         f"(known: {', '.join(sorted(allowed))})")


class _Builder:
    """Turns the topology mapping into wires and functions, validating as it goes."""

    def __init__(self) -> None:
        self.by_id: dict[str, PciFunction] = {}
        self.where_of: dict[str, str] = {}

    def segment(self, spec: Any, index: int) -> PciRootComplex:
        where = f"machine.segments[{index}]"
        if isinstance(spec, int) and not isinstance(spec, bool):
            spec = {"segment": spec}
        spec = _mapping(spec, where)
        _check_keys(spec, SEGMENT_KEYS, where)
        seg_key = next((k for k in ("segment", "id", "domain") if k in spec), None)
        seg = (_int(spec[seg_key], f"{where}.{seg_key}", 0, 0xFFFF)
               if seg_key else index)
        root_bus = _int(spec.get("root_bus", 0), f"{where}.root_bus", 0, 255)
        numbering = spec.get("firmware_numbering", "dfs")
        if numbering not in FIRMWARE_NUMBERINGS:
            raise ValueError(f"{where}.firmware_numbering: expected one of "
                             f"{', '.join(FIRMWARE_NUMBERINGS)}, got {numbering!r}")
        gap = _int(spec.get("firmware_bus_gap", 4), f"{where}.firmware_bus_gap", 0, 255)
        wire = PciWire(owner=None, segment=seg)
        rc = PciRootComplex(seg, root_bus, str(numbering), gap, wire,
                            spec.get("iommu", True), where)
        self.bus(wire, _list(spec.get("devices"), f"{where}.devices"), f"{where}.devices",
                 parent_id=f"seg{seg}")
        return rc

    def bus(self, wire: PciWire, devices: Sequence[Any], where: str, parent_id: str) -> None:
        used: dict[int, str] = {}
        for i, dspec in enumerate(devices):
            self.device(wire, dspec, f"{where}[{i}]", parent_id, used)
        wire.bridges = sorted((f for f in wire.functions.values() if f.is_bridge),
                              key=lambda f: f.devfn)
        # VF routing IDs must not collide with physical functions or other VFs
        vf_users: dict[int, str] = {}
        for f in list(wire.functions.values()):
            for i in range(f.total_vfs):
                devfn = f.devfn + f.vf_offset + i * f.vf_stride
                other = (self.where_of[wire.functions[devfn].hw_id]
                         if devfn in wire.functions else vf_users.get(devfn))
                if other is not None:
                    raise ValueError(
                        f"{self.where_of[f.hw_id]}.sriov: VF {i} would use devfn {devfn:#04x}, "
                        f"which {other} already uses")
                vf_users[devfn] = f"the VFs of {self.where_of[f.hw_id]}"

    def device(self, wire: PciWire, spec_in: Any, where: str, parent_id: str,
               used: dict[int, str], port: bool = False) -> None:
        spec = _mapping(spec_in, where)
        _check_keys(spec, PORT_KEYS if port else DEVICE_KEYS, where)
        if "slot" not in spec:
            raise ValueError(f"{where}.slot: required")
        slot = _int(spec["slot"], f"{where}.slot", 0, 31)
        owner = wire.owner
        if port:
            # a port is always a downstream port; tolerate what schema defaults write
            kind_raw = spec.get("kind", "downstream-port")
            if kind_raw not in ("downstream-port", "endpoint", "bridge", "root-port"):
                raise ValueError(f"{where}.kind: a switch port is a downstream port, "
                                 f"got {kind_raw!r}")
            for key in ("ports", "functions", "sriov"):
                val = spec.get(key)
                if val not in (None, [], [0]):
                    raise ValueError(f"{where}.{key}: not allowed on a switch downstream port")
            kind = "downstream-port"
        else:
            kind_raw = spec.get("kind", "endpoint")
            if kind_raw not in KINDS:
                raise ValueError(f"{where}.kind: expected one of {', '.join(KINDS)}, "
                                 f"got {kind_raw!r}")
            kind = str(kind_raw)
        children = _list(spec.get("children"), f"{where}.children")
        ports = _list(spec.get("ports"), f"{where}.ports")
        if kind == "endpoint" and children:
            raise ValueError(f"{where}.children: an endpoint cannot have children")
        if kind == "endpoint" and ports:
            raise ValueError(f"{where}.ports: only a switch has ports")
        if kind in ("root-port", "bridge") and ports:
            raise ValueError(f"{where}.ports: only a switch has ports (kind is {kind})")
        if kind == "switch" and children:
            raise ValueError(f"{where}.children: a switch's devices go below its ports:, "
                             "not children:")
        if kind == "root-port" and owner is not None:
            raise ValueError(f"{where}.kind: a root port must be on a root bus")
        if wire.conventional and kind not in ("endpoint", "bridge"):
            raise ValueError(f"{where}.kind: a {kind} cannot sit below a conventional "
                             "PCI bridge")
        if wire.pcie_downstream and slot != 0:
            raise ValueError(f"{where}.slot: expected 0 below a PCIe downstream port "
                             f"(only device 0 exists on its link), got {spec['slot']!r}")
        is_bridge = kind in BRIDGE_KINDS
        ari = _bool(spec.get("ari", False), f"{where}.ari")
        # functions
        fn_list_raw = spec.get("functions")
        if fn_list_raw is None:
            fns = [0]
        else:
            raw = _list(fn_list_raw, f"{where}.functions")
            if not raw:
                raise ValueError(f"{where}.functions: expected at least function 0")
            ari_fns = ari and not is_bridge and wire.pcie_downstream
            hi = 255 if ari_fns else 7
            fns = [_int(v, f"{where}.functions[{j}]", 0, hi) for j, v in enumerate(raw)]
            if len(set(fns)) != len(fns):
                raise ValueError(f"{where}.functions: duplicate function numbers in {raw!r}")
            if 0 not in fns:
                raise ValueError(f"{where}.functions: function 0 is required, got {raw!r}")
            if is_bridge and fns != [0]:
                raise ValueError(f"{where}.functions: a {kind} is modelled as a single "
                                 "function, expected [0]")
            fns.sort()
        for fn in fns:
            devfn = slot * 8 + fn
            if devfn in used:
                raise ValueError(f"{where}.slot: slot {slot} function {fn} is already used "
                                 f"by {used[devfn]}")
        vendor = _int(spec.get("vendor", DEFAULT_VENDOR), f"{where}.vendor", 0, 0xFFFF)
        device = _int(spec.get("device", DEFAULT_DEVICE), f"{where}.device", 0, 0xFFFF)
        if vendor == 0xFFFF:
            raise ValueError(f"{where}.vendor: 0xffff is what an empty slot reads")
        acs_raw = spec.get("acs")
        if acs_raw is None:
            acs_cap = ACS_PORT_CAP_DEFAULT if is_bridge and kind != "bridge" else 0
        elif isinstance(acs_raw, bool):
            acs_cap = 0 if not acs_raw else (
                ACS_PORT_CAP_DEFAULT if is_bridge else ACS_ENDPOINT_CAP_DEFAULT)
        else:
            acs_cap = _int(acs_raw, f"{where}.acs", 0, 0x7F)
        hotplug = _bool(spec.get("hotplug", False), f"{where}.hotplug")
        if hotplug and kind not in _PCIE_DOWNSTREAM_KINDS:
            raise ValueError(f"{where}.hotplug: only root ports and switch downstream "
                             f"ports have hot-plug slots (kind is {kind})")
        present = _bool(spec.get("present", True), f"{where}.present")
        quirk = _bool(spec.get("needs_acs_quirk", False), f"{where}.needs_acs_quirk")
        fw_bus: dict[str, int] | None = None
        if spec.get("firmware_bus") is not None:
            if not is_bridge:
                raise ValueError(f"{where}.firmware_bus: only bridges have bus registers")
            fb = _mapping(spec["firmware_bus"], f"{where}.firmware_bus")
            _check_keys(fb, set(BUS_KEYS), f"{where}.firmware_bus")
            fw_bus = {k: _int(fb[k], f"{where}.firmware_bus.{k}", 0, 255)
                      for k in BUS_KEYS if k in fb}
        sriov = spec.get("sriov")
        total_vfs = offset = stride = vf_device = 0
        if sriov is not None:
            if kind != "endpoint":
                raise ValueError(f"{where}.sriov: only an endpoint can have SR-IOV")
            sr = _mapping(sriov, f"{where}.sriov")
            _check_keys(sr, SRIOV_KEYS, f"{where}.sriov")
            if "total_vfs" not in sr:
                raise ValueError(f"{where}.sriov.total_vfs: required")
            total_vfs = _int(sr["total_vfs"], f"{where}.sriov.total_vfs", 0, 255)
            offset = _int(sr.get("vf_offset", 1), f"{where}.sriov.vf_offset", 1, 255)
            stride = _int(sr.get("vf_stride", 1), f"{where}.sriov.vf_stride", 1, 255)
            vf_device = _int(sr.get("vf_device", device), f"{where}.sriov.vf_device",
                             0, 0xFFFF)
            last = slot * 8 + offset + stride * max(total_vfs - 1, 0)
            if total_vfs and last > 255:
                raise ValueError(f"{where}.sriov: VF {total_vfs - 1} would need devfn "
                                 f"{last:#x}; luosim keeps VFs on the PF's bus (devfn <= 0xff)")
        name = spec.get("name")
        if name is not None and (not isinstance(name, str) or not name
                                 or any(c in name for c in " /")):
            raise ValueError(f"{where}.name: expected a non-empty name without spaces or '/', "
                             f"got {name!r}")
        pcie_type = {"root-port": "root_port", "switch": "upstream",
                     "downstream-port": "downstream", "bridge": "pci_bridge"}.get(kind, "")
        if wire.conventional:
            pcie_type = "pci"
        elif kind == "endpoint":
            pcie_type = "rc_endpoint" if owner is None else "endpoint"
        card: list[PciFunction] = []
        for k, fn in enumerate(fns):
            if name is not None:
                hw_id = name if fn == 0 else f"{name}.f{fn}"
            else:
                hw_id = f"{parent_id}/{slot:02x}.{fn}"
            if hw_id in self.by_id:
                raise ValueError(f"{where}.name: {hw_id!r} is already used by "
                                 f"{self.where_of[hw_id]}")
            f = PciFunction(
                hw_id=hw_id, segment=wire.segment, slot=slot, function=fn, kind=kind,
                vendor=vendor, device=device, pcie_type=pcie_type, parent_port=owner,
                wire=wire, devfn=slot * 8 + fn, multifunction=len(fns) > 1,
                acs_cap=acs_cap, ari_cap=ari,
                ari_next_fn=fns[k + 1] if k + 1 < len(fns) else 0,
                hotplug=hotplug, needs_acs_quirk=quirk, present=present,
                firmware_bus=fw_bus, topo_path=where, card=card,
                total_vfs=total_vfs if fn == 0 else 0, vf_offset=offset, vf_stride=stride,
                vf_device=vf_device)
            card.append(f)
            self.by_id[hw_id] = f
            self.where_of[hw_id] = where
            wire.functions[f.devfn] = f
            used[f.devfn] = where
        head = card[0]
        if is_bridge:
            head.secondary_wire = PciWire(owner=head, segment=wire.segment)
            if kind == "switch":
                self.bus_ports(head.secondary_wire, ports, f"{where}.ports", head.hw_id)
            else:
                self.bus(head.secondary_wire, children, f"{where}.children", head.hw_id)

    def bus_ports(self, wire: PciWire, ports: Sequence[Any], where: str,
                  parent_id: str) -> None:
        used: dict[int, str] = {}
        for i, pspec in enumerate(ports):
            self.device(wire, pspec, f"{where}[{i}]", parent_id, used, port=True)
        wire.bridges = sorted(wire.functions.values(), key=lambda f: f.devfn)


# -- the hardware ----------------------------------------------------------------
class PciHardware:
    """Every PCI segment of a machine: wiring plus registers.

    Built once per machine by :meth:`from_topology`, which also runs the
    firmware (:meth:`power_on`).  Kernels read and write the registers of the
    :class:`PciFunction` objects that :meth:`config_read` hands out.
    """

    def __init__(self, roots: Sequence[PciRootComplex], functions: Mapping[str, PciFunction],
                 machine: EventSink | None = None) -> None:
        self.roots: dict[int, PciRootComplex] = {}
        for rc in roots:
            if rc.segment in self.roots:
                raise ValueError(f"{rc.where}.segment: segment {rc.segment} is defined twice")
            self.roots[rc.segment] = rc
        self._by_id: dict[str, PciFunction] = dict(functions)
        self.machine = machine

    # -- construction --
    @classmethod
    def from_topology(cls, topology: Mapping[str, Any],
                      machine: EventSink | None = None) -> PciHardware:
        """Build the PCI hardware of ``topology`` (a scenario's ``machine:``) and power it on.

        Raises ``ValueError`` naming the YAML path of the first problem, e.g.
        ``machine.segments[0].devices[1].slot: expected 0..31, got 40``.
        """
        topo = _mapping(topology if topology is not None else {}, "machine")
        if "segments" in topo:
            seg_specs = _list(topo["segments"], "machine.segments")
        else:
            seg_specs = [{"segment": 0}]
        b = _Builder()
        roots = [b.segment(s, i) for i, s in enumerate(seg_specs)]
        hw = cls(roots, b.by_id, machine)
        hw.power_on()
        return hw

    # -- lookup --
    def functions(self) -> Iterator[PciFunction]:
        """Every function (physical ones in topology order, then enabled VFs)."""
        yield from self._by_id.values()

    def get(self, hw_id: str) -> PciFunction | None:
        return self._by_id.get(hw_id)

    def find(self, hw_id: str) -> PciFunction:
        """The function named ``hw_id``; ``KeyError`` listing a few known ids otherwise."""
        f = self._by_id.get(hw_id)
        if f is None:
            known = ", ".join(list(self._by_id)[:8])
            raise KeyError(f"no PCI function {hw_id!r} (known: {known}"
                           f"{', ...' if len(self._by_id) > 8 else ''})")
        return f

    def upstream_bridges(self, func: PciFunction) -> list[PciFunction]:
        """Bridges between ``func`` and its root bus, nearest first (physical wiring)."""
        out: list[PciFunction] = []
        p = func.parent_port
        while p is not None:
            out.append(p)
            p = p.parent_port
        return out

    # -- routing --
    def _wire_for_bus(self, segment: int, bus: int) -> PciWire | None:
        """Follow type-1 config routing from the root bus to the wire numbered ``bus``.

        At each level the first present bridge (in devfn order) whose current
        window claims ``bus`` takes the cycle; overlapping windows are a
        firmware/kernel bug and the lower devfn wins.
        """
        rc = self.roots.get(segment)
        if rc is None or not 0 <= bus <= 255:
            return None
        if bus == rc.root_bus:
            return rc.wire
        wire = rc.wire
        for _ in range(257):
            nxt: PciFunction | None = None
            for br in wire.bridges:
                if br.present and br.forwards(bus):
                    nxt = br
                    break
            if nxt is None or nxt.secondary_wire is None:
                return None
            if nxt.secondary == bus:
                return nxt.secondary_wire
            wire = nxt.secondary_wire
        return None

    def config_read(self, segment: int, bus: int, devfn: int) -> PciFunction | None:
        """Which function answers a config read of (segment, bus, devfn), or None
        (master abort: the read returns all-ones).

        Models the routing of the root complex and bridges: type-1 cycles are
        forwarded by the bridge whose [secondary, subordinate] window holds
        ``bus``; on a PCIe downstream link only device 0 answers, and function
        numbers 8..255 of device 0 only with ARI Forwarding Enable.  A VF
        answers (its Vendor ID reads 0xffff; that is the kernel's business).
        """
        wire = self._wire_for_bus(segment, bus)
        if wire is None or not 0 <= devfn <= 255:
            return None
        if wire.pcie_downstream and devfn >= 8 and not (
                wire.owner is not None and wire.owner.devctl2_ari_fwd):
            return None
        f = wire.functions.get(devfn)
        if f is None or not f.present or f.power_state == "D3cold":
            return None
        return f

    def bus_number_of(self, func: PciFunction) -> int | None:
        """The bus number ``func``'s wire currently has, None if not routable."""
        if func.parent_port is None:
            return self.roots[func.segment].root_bus
        bus = func.parent_port.secondary
        if bus == 0:
            return None
        return bus if self._wire_for_bus(func.segment, bus) is func.wire else None

    def requester_id(self, func: PciFunction) -> tuple[int, int] | None:
        """(segment, bus << 8 | devfn) that ``func`` puts in its requests, or None
        when the path to it is not configured (absent, or no bridge routes its bus).

        The bus is the secondary number currently programmed in the bridge
        above ``func`` (the root bus number for root-bus functions): renumber
        that bridge and the RequesterID changes under a live IOMMU (pci.md §7.5).
        """
        if not func.present or any(not p.present for p in self.upstream_bridges(func)):
            return None
        if func.is_virtfn and (func.physfn is None or not func.physfn.present):
            return None
        bus = self.bus_number_of(func)
        if bus is None:
            return None
        return func.segment, (bus << 8) | func.devfn

    def dma_path_enabled(self, func: PciFunction) -> bool:
        """``func`` has Bus Master Enable and so does every bridge above it
        (a bridge forwards upstream memory requests only with BME; pci.md §5.8)."""
        if not func.present or not func.command & CMD_BME:
            return False
        for p in self.upstream_bridges(func):
            if not p.present or not p.command & CMD_BME:
                return False
        return True

    # -- firmware --
    def power_on(self) -> None:
        """Cold power-on: every register to its reset value, then "firmware"
        programs bridge bus numbers per the segment's ``firmware_numbering``:

        * ``dfs`` — depth-first, sequential (what Linux itself would assign
          with ``pci=assign-busses`` and no hot-plug reservation);
        * ``bfs`` — secondary numbers handed out level by level, subordinate =
          highest secondary below.  Siblings that both have bridges below get
          overlapping windows, a firmware bug that ``pci=assign-busses`` repairs;
        * ``sparse`` — depth-first with ``firmware_bus_gap`` spare numbers at
          the end of every bridge window (room for hot-add).

        Absent cards are not numbered.  ``firmware_bus`` overrides are applied
        last (to model misconfigured firmware).  Called once by from_topology.
        """
        for f in list(self._by_id.values()):
            if f.is_virtfn:
                continue
            f.power_on_defaults()
            if f.num_vfs:
                self._set_vfs(f, 0)
        for rc in self.roots.values():
            if rc.firmware_numbering == "bfs":
                self._fw_bfs(rc)
            else:
                gap = rc.firmware_bus_gap if rc.firmware_numbering == "sparse" else 0
                self._fw_dfs(rc, rc.wire, rc.root_bus, rc.root_bus, gap)
        for f in self._by_id.values():
            if f.firmware_bus:
                f.primary = f.firmware_bus.get("primary", f.primary)
                f.secondary = f.firmware_bus.get("secondary", f.secondary)
                f.subordinate = f.firmware_bus.get("subordinate", f.subordinate)

    def _fw_dfs(self, rc: PciRootComplex, wire: PciWire, busnr: int, max_: int,
                gap: int) -> int:
        for br in wire.bridges:
            if not br.present or br.secondary_wire is None:
                continue
            max_ += 1
            if max_ > 255:
                raise ValueError(f"{rc.where}: firmware ran out of bus numbers numbering "
                                 f"{br.hw_id} ({rc.firmware_numbering})")
            br.write_bus_numbers(busnr, max_, 0xFF)
            max_ = self._fw_dfs(rc, br.secondary_wire, max_, max_, gap)
            max_ = min(max_ + gap, 255)
            br.subordinate = max_
        return max_

    def _fw_bfs(self, rc: PciRootComplex) -> None:
        queue: deque[tuple[PciWire, int]] = deque([(rc.wire, rc.root_bus)])
        nxt = rc.root_bus
        while queue:
            wire, busnr = queue.popleft()
            for br in wire.bridges:
                if not br.present or br.secondary_wire is None:
                    continue
                nxt += 1
                if nxt > 255:
                    raise ValueError(f"{rc.where}: firmware ran out of bus numbers numbering "
                                     f"{br.hw_id} (bfs)")
                br.write_bus_numbers(busnr, nxt, nxt)
                queue.append((br.secondary_wire, nxt))

        def fix(br: PciFunction) -> int:
            top = br.secondary
            assert br.secondary_wire is not None
            for c in br.secondary_wire.bridges:
                if c.present and c.secondary_wire is not None:
                    top = max(top, fix(c))
            br.subordinate = top
            return top

        for br in rc.wire.bridges:
            if br.present and br.secondary_wire is not None:
                fix(br)

    # -- physical events --
    def hot_add(self, hw_id: str) -> PciFunction:
        """Plug in the card holding ``hw_id`` (all its functions, reset to power-on
        values; firmware does not number hot-added bridges).  Returns function 0."""
        f = self.find(hw_id)
        if f.is_virtfn:
            raise ValueError(f"{hw_id}: a VF cannot be hot-added")
        if f.present:
            raise ValueError(f"{hw_id}: already present")
        for g in f.card:
            g.power_on_defaults()
            if g.num_vfs:
                self._set_vfs(g, 0)
            g.present = True
        self._emit("hot-add", f"{f.card[0].hw_id} inserted", hw_id=f.card[0].hw_id)
        return f.card[0]

    def hot_remove(self, hw_id: str) -> PciFunction:
        """Pull the card holding ``hw_id``: its functions (and everything wired
        below them) stop answering.  Returns function 0."""
        f = self.find(hw_id)
        if f.is_virtfn:
            raise ValueError(f"{hw_id}: a VF cannot be hot-removed")
        if not f.present:
            raise ValueError(f"{hw_id}: not present")
        for g in f.card:
            g.present = False
            if g.num_vfs:
                self._set_vfs(g, 0)
        self._emit("hot-remove", f"{f.card[0].hw_id} removed", hw_id=f.card[0].hw_id)
        return f.card[0]

    def reset_function(self, func: PciFunction) -> None:
        """Function-level reset: command bits cleared, interrupts off, D0, SR-IOV
        disabled.  A bridge keeps its bus-number registers (see ``lose_bus_config``)."""
        func.command = 0
        func.irq_enabled = False
        func.power_state = "D0"
        if func.num_vfs:
            self._set_vfs(func, 0)
        self._emit("reset", f"{func.hw_id} function reset", hw_id=func.hw_id)

    def secondary_bus_reset(self, bridge: PciFunction) -> None:
        """Hot reset of everything below ``bridge``: each function below returns to
        power-on values, so bridges below lose their bus numbers.  ``bridge``'s
        own registers are untouched."""
        if bridge.secondary_wire is None:
            raise ValueError(f"{bridge.hw_id}: not a bridge")
        stack = list(bridge.secondary_wire.functions.values())
        while stack:
            g = stack.pop()
            if g.is_virtfn:
                continue
            g.power_on_defaults()
            if g.num_vfs:
                self._set_vfs(g, 0)
            if g.secondary_wire is not None:
                stack.extend(g.secondary_wire.functions.values())
        self._emit("reset", f"{bridge.hw_id} secondary bus reset", hw_id=bridge.hw_id)

    def lose_bus_config(self, func: PciFunction) -> None:
        """Zero a bridge's primary/secondary/subordinate: it forwards nothing
        (models a bridge that lost its configuration across kexec)."""
        if not func.is_bridge:
            raise ValueError(f"{func.hw_id}: not a bridge")
        func.write_bus_numbers(0, 0, 0)
        self._emit("lose-bus-config", f"{func.hw_id} bus numbers zeroed", hw_id=func.hw_id)

    def enable_sriov(self, pf: PciFunction, n: int) -> list[PciFunction]:
        """Write NumVFs = ``n`` and VF Enable (n = 0 disables): VFs appear on the
        PF's wire at devfn = PF devfn + offset + i * stride.  Returns the VFs."""
        if pf.total_vfs == 0:
            raise ValueError(f"{pf.hw_id}: no SR-IOV capability")
        if not 0 <= n <= pf.total_vfs:
            raise ValueError(f"{pf.hw_id}: NumVFs {n} not in 0..{pf.total_vfs}")
        self._set_vfs(pf, n)
        return list(pf.vfs)

    def _set_vfs(self, pf: PciFunction, n: int) -> None:
        for vf in pf.vfs:
            pf.wire.functions.pop(vf.devfn, None)
            self._by_id.pop(vf.hw_id, None)
        pf.vfs = []
        pf.num_vfs = n
        for i in range(n):
            devfn = pf.devfn + pf.vf_offset + i * pf.vf_stride
            vf = PciFunction(
                hw_id=f"{pf.hw_id}.vf{i}", segment=pf.segment, slot=devfn >> 3,
                function=devfn & 7, kind="endpoint", vendor=pf.vendor, device=pf.vf_device,
                pcie_type=pf.pcie_type, parent_port=pf.parent_port, wire=pf.wire,
                devfn=devfn, acs_cap=0, is_virtfn=True, physfn=pf, vf_index=i,
                present=pf.present, topo_path=f"{pf.topo_path}.sriov")
            vf.card = [vf]
            pf.vfs.append(vf)
            pf.wire.functions[devfn] = vf
            self._by_id[vf.hw_id] = vf

    def _emit(self, kind: str, detail: str, **data: Any) -> None:
        if self.machine is not None:
            self.machine.emit("machine", "pci", kind, detail, **data)
