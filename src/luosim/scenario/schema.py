"""Scenario files: the pydantic schema and the loader.

A scenario describes a host (``machine``), the kernels it runs (``kernels``),
what runs on it (``workload``), how the update goes (``update``), optional
``faults`` and the documented ``expect``-ed outcome.  Bad files are reported
one line per problem, each naming the YAML path::

    machine.segments[0].devices[1].slot: expected an integer, got 'x'

Every limit a run would hit is checked here, so a bad file never reaches
the run (exit 2, not a traceback): machine memory in
[:data:`MIN_MEMORY`, :data:`MAX_MEMORY`], guest RAM that fits the machine,
bounded work (:data:`MAX_FOLIOS` guest folios, :data:`MAX_DMA_WRITES` DMA
writes), tree depth and counts, and the PCI topology itself, built once
by the hardware model (bus numbers, function 0, slot 0 below a PCIe
downstream port, SR-IOV routing IDs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from luosim.faults import Fault
from luosim.hw.machine import SCRATCH_BASE, parse_size
from luosim.hw.pci import PciHardware
from luosim.inputs import MAX_NESTING, InputError, data_depth, load_yaml_file
from luosim.kernel.profiles import PROFILES, check_policy
from luosim.scenario.descriptions import describe


class ScenarioError(InputError):
    """A scenario that cannot be used; ``problems`` holds one line each."""


# -- limits (bad input, exit 2) ---------------------------------------------------
MIN_MEMORY = 256 << 20
"""hw.machine.Machine refuses less (scratch at 16 MiB plus a kernel)."""
MAX_MEMORY = 64 << 40
"""64 TiB: above the largest x86 hosts shipped with 4-level paging."""
MAX_FOLIOS = 1 << 23
"""Guest-RAM folios per run: a bound on work, not on realistic sizes.  Guest
RAM is extents (runs of folios), but every folio still has its 16-byte record
in the memfd folio array and, unless IOVA and physical runs line up for
superpages, its own IOMMU PTE: 2^23 folios (32 GiB of 4 KiB folios, 16 TiB of
2 MiB ones) stay within seconds and a few hundred MB."""
MAX_DMA_WRITES = 4_000_000
"""Simulated DMA writes per run (~1 us each): rate_per_ms x simulated ms."""
KERNEL_HEADROOM = 128 << 20
"""Memory the kernels need besides the scratch area and guest RAM."""
MAX_BRIDGE_DEPTH = 32
MAX_SEGMENTS = 16
MAX_FUNCTIONS = 4096
MAX_VMS = 512
MAX_KEXECS = 16
MAX_FAULTS = 64
# the runner's simulated time per update besides the blackout (scenario/runner.py:
# 10 ms guest running, REBOOT_NS 2 ms, DRIVER_INIT_NS 20 ms, 10 ms guest running after)
_UPDATE_MS = 42.0
_ENUM_MS_PER_FUNCTION = 0.05


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=describe)


HexInt = int | str


def _hex(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise ValueError(f"expected an integer {what}, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            pass
    raise ValueError(f"expected an integer {what} (e.g. 0x8086), got {v!r}")


class SriovSpec(_Model):
    # hw/pci.py: a PF's VFs stay on its bus, so routing IDs end at devfn 0xff
    total_vfs: int = Field(ge=1, le=255)
    vf_offset: int = Field(default=1, ge=1, le=255)
    vf_stride: int = Field(default=1, ge=1, le=255)


class BusRegs(_Model):
    primary: int = Field(ge=0, le=255)
    secondary: int = Field(ge=0, le=255)
    subordinate: int = Field(ge=0, le=255)


class _Function(_Model):
    """What every PCI function in a topology has: a slot, a name and ids."""

    slot: int = Field(ge=0, le=31)
    name: str | None = Field(default=None, min_length=1, max_length=48,
                             pattern=r"^[A-Za-z0-9_.-]+$")
    vendor: HexInt = 0x8086
    device: HexInt = 0x0000

    @field_validator("vendor", "device")
    @classmethod
    def _ids(cls, v: HexInt) -> int:
        val = _hex(v, "id")
        if not 0 <= val <= 0xFFFF:
            raise ValueError(f"expected a 16-bit id, got {v!r}")
        return val


class PortSpec(_Function):
    """A switch downstream port: a bridge on the switch's internal bus."""

    acs: bool | None = None
    ari: bool = False
    hotplug: bool = False
    present: bool = True
    firmware_bus: BusRegs | None = None
    children: list[DeviceSpec] = Field(default_factory=list)


    @model_validator(mode="after")
    def _bus(self) -> PortSpec:
        _check_bus("children", self.children)
        return self


class DeviceSpec(_Function):
    """One PCI function (or multi-function device) on a bus."""

    kind: Literal["endpoint", "root-port", "bridge", "switch"] = "endpoint"
    acs: bool | None = None
    ari: bool = False
    hotplug: bool = False
    present: bool = True
    functions: list[int] | None = None
    sriov: SriovSpec | None = None
    firmware_bus: BusRegs | None = None
    children: list[DeviceSpec] = Field(default_factory=list)
    ports: list[PortSpec] = Field(default_factory=list)
    needs_acs_quirk: bool = False


    @field_validator("functions")
    @classmethod
    def _funcs(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v or any(not 0 <= f <= 7 for f in v) or len(set(v)) != len(v):
            raise ValueError(f"expected distinct function numbers 0..7, got {v!r}")
        return v

    @model_validator(mode="after")
    def _shape(self) -> DeviceSpec:
        if self.kind == "endpoint" and (self.children or self.ports):
            raise ValueError("an endpoint has no children or ports")
        if self.kind != "switch" and self.ports:
            raise ValueError(f"only a switch has ports (kind is {self.kind})")
        if self.kind == "switch" and self.children:
            raise ValueError("a switch's devices go below its ports, not in children")
        if self.sriov is not None and self.kind != "endpoint":
            raise ValueError("only an endpoint can have sriov")
        seen: set[int] = set()
        for i, p in enumerate(self.ports):
            if p.slot in seen:
                raise ValueError(f"ports[{i}]: duplicate slot {p.slot}")
            seen.add(p.slot)
        _check_bus("children", self.children)
        return self


def _check_bus(where: str, devices: list[DeviceSpec]) -> None:
    seen: dict[tuple[int, int], int] = {}
    for i, d in enumerate(devices):
        for fn in d.functions or [0]:
            if (d.slot, fn) in seen:
                raise ValueError(f"{where}[{i}]: slot {d.slot} function {fn} is already used "
                                 f"by {where}[{seen[(d.slot, fn)]}]")
            seen[(d.slot, fn)] = i


class SegmentSpec(_Model):
    segment: int = Field(default=0, ge=0, le=0xFFFF)
    root_bus: int = Field(default=0, ge=0, le=255)
    firmware_numbering: Literal["dfs", "bfs", "sparse"] = "dfs"
    firmware_bus_gap: int = Field(default=4, ge=0, le=64)
    iommu: bool = True
    devices: list[DeviceSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _bus(self) -> SegmentSpec:
        _check_bus("devices", self.devices)
        return self


class MachineSpec(_Model):
    memory: int | str = 16 << 30
    kho_scratch: int | str = 64 << 20
    segments: list[SegmentSpec] = Field(default_factory=list, max_length=MAX_SEGMENTS)

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int | str) -> int:
        size = parse_size(v, "")
        if not MIN_MEMORY <= size <= MAX_MEMORY:
            raise ValueError(f"expected 256MiB..64TiB, got {v!r}")
        return size

    @field_validator("kho_scratch")
    @classmethod
    def _scratch(cls, v: int | str) -> int:
        size = parse_size(v, "")
        if not 1 << 20 <= size <= 1 << 30:
            raise ValueError(f"expected 1MiB..1GiB, got {v!r}")
        return size

    @property
    def usable_memory(self) -> int:
        """What guest RAM may use: memory above the scratch area, less kernel headroom."""
        assert isinstance(self.memory, int) and isinstance(self.kho_scratch, int)
        return self.memory - SCRATCH_BASE - self.kho_scratch - KERNEL_HEADROOM

    @model_validator(mode="after")
    def _segments(self) -> MachineSpec:
        ids = [s.segment for s in self.segments]
        if len(ids) != len(set(ids)):
            raise ValueError(f"segment numbers must be unique, got {ids}")
        names: set[str] = set()
        for dev in iter_devices(self):
            if dev.name is not None:
                if dev.name in names:
                    raise ValueError(f"device name {dev.name!r} is used twice")
                names.add(dev.name)
        for i, seg in enumerate(self.segments):
            _check_depth(f"machine.segments[{i}].devices", seg.devices, 1)
        n = sum(len(d.functions or [0]) + (d.sriov.total_vfs if d.sriov else 0)
                if isinstance(d, DeviceSpec) else 1 for d in iter_devices(self))
        if n > MAX_FUNCTIONS:
            raise ValueError(f"machine.segments: {n} PCI functions, at most {MAX_FUNCTIONS}")
        # the hardware model checks the rest (bus numbers, function 0, slot 0 below
        # a downstream port, SR-IOV routing IDs) with path-named messages
        PciHardware.from_topology(self.topology())
        return self

    def topology(self) -> dict[str, Any]:
        """The mapping ``Machine.from_topology`` takes."""
        return self.model_dump(mode="python", exclude_none=True)


def _check_depth(where: str, devices: list[DeviceSpec] | list[PortSpec], depth: int) -> None:
    """Bridges nested at most MAX_BRIDGE_DEPTH deep (recursion bounded by the YAML nesting cap)."""
    if depth > MAX_BRIDGE_DEPTH:
        raise ValueError(f"{where}: bridges nested deeper than {MAX_BRIDGE_DEPTH} levels")
    for i, d in enumerate(devices):
        if isinstance(d, DeviceSpec | PortSpec):
            _check_depth(f"{where}[{i}].children", d.children, depth + 1)
        if isinstance(d, DeviceSpec):
            _check_depth(f"{where}[{i}].ports", d.ports, depth + 1)


def iter_devices(machine: MachineSpec) -> list[DeviceSpec | PortSpec]:
    out: list[DeviceSpec | PortSpec] = []

    def walk(devs: list[DeviceSpec] | list[PortSpec]) -> None:
        for d in devs:
            out.append(d)
            walk(d.children)
            if isinstance(d, DeviceSpec):
                walk(d.ports)

    for seg in machine.segments:
        walk(seg.devices)
    return out


class KernelSpec(_Model):
    profile: str = "v6"
    cmdline: str = Field(default="", max_length=4096)
    # kernel config switches (luosim.kernel.config), e.g. CONFIG_IOMMU_LIVEUPDATE: false
    config: dict[str, bool] = Field(default_factory=dict)

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        if v not in PROFILES:
            raise ValueError(f"unknown kernel profile {v!r} (known: {', '.join(PROFILES)})")
        return v

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, bool]) -> dict[str, bool]:
        from luosim.kernel.config import resolve_config
        resolve_config(None, v)  # unknown keys: one line naming the key
        return v


class KernelsSpec(_Model):
    before: KernelSpec = Field(default_factory=KernelSpec)
    after: list[KernelSpec] = Field(default_factory=lambda: [KernelSpec()], min_length=1,
                                    max_length=MAX_KEXECS)


class DmaSpec(_Model):
    rate_per_ms: float = Field(default=10.0, ge=0, le=100_000)
    length: int | str = 1 << 20

    @field_validator("length")
    @classmethod
    def _len(cls, v: int | str) -> int:
        size = parse_size(v, "")
        if size < 4096:
            raise ValueError(f"expected at least 4KiB, got {v!r}")
        return size


class VmSpec(_Model):
    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    memory: int | str = 1 << 30
    folio_order: int = Field(default=9, ge=0, le=10)
    devices: list[str] = Field(default_factory=list, max_length=32)
    dma: DmaSpec | None = None
    # guest RAM: a shmem memfd, or a hugetlb memfd (pool from hugepages= on the cmdline)
    ram_backing: Literal["memfd", "hugetlb-2M", "hugetlb-1G"] = "memfd"

    @field_validator("memory")
    @classmethod
    def _mem(cls, v: int | str) -> int:
        size = parse_size(v, "")
        if size <= 0 or size % (2 << 20):
            raise ValueError(f"VM memory must be a positive multiple of 2MiB, got {v!r}")
        return size

    @model_validator(mode="after")
    def _huge(self) -> VmSpec:
        if self.ram_backing == "hugetlb-1G" and int(self.memory) % (1 << 30):
            raise ValueError(f"hugetlb-1G guest RAM must be a multiple of 1GiB, "
                             f"got {int(self.memory) >> 20}MiB")
        return self

    def _dma_fits(self) -> VmSpec:
        assert isinstance(self.memory, int)
        if self.dma is not None and isinstance(self.dma.length, int) \
                and self.dma.length > self.memory:
            raise ValueError(f"dma.length: {self.dma.length} bytes is more than the VM's "
                             f"memory ({self.memory})")
        return self

    @property
    def folios(self) -> int:
        assert isinstance(self.memory, int)
        return self.memory >> (12 + self.folio_order)


class WorkloadSpec(_Model):
    vms: list[VmSpec] = Field(default_factory=list, max_length=MAX_VMS)
    hot_add: list[str] = Field(default_factory=list, max_length=256)
    blackout_ms: float = Field(default=50.0, ge=0, le=60_000)

    @model_validator(mode="after")
    def _unique(self) -> WorkloadSpec:
        names = [v.name for v in self.vms]
        if len(names) != len(set(names)):
            raise ValueError(f"VM names must be unique, got {names}")
        devs = [d for v in self.vms for d in v.devices]
        dup = sorted({d for d in devs if devs.count(d) > 1})
        if dup:
            raise ValueError(f"device(s) {', '.join(dup)} assigned to more than one VM")
        return self


class UpdateSpec(_Model):
    sessions: Literal["per-vm", "single"] = "per-vm"
    preserve: Literal["all", "memory-only", "none"] = "all"
    finish: bool = True
    # bridges whose bus registers are cleared during the kexec (lost configuration)
    reset_bridges: list[str] = Field(default_factory=list)


class ExpectSpec(_Model):
    outcome: Literal["ok", "refused", "panic", "unsafe"]
    note: str = ""
    policy: dict[str, str] = Field(default_factory=dict)


class Scenario(_Model):
    name: str = Field(default="scenario", min_length=1)
    description: str = ""
    machine: MachineSpec = Field(default_factory=MachineSpec)
    kernels: KernelsSpec = Field(default_factory=KernelsSpec)
    policy: dict[str, str] = Field(default_factory=dict)
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    update: UpdateSpec = Field(default_factory=UpdateSpec)
    faults: list[str] = Field(default_factory=list, max_length=MAX_FAULTS)
    expect: list[ExpectSpec] = Field(default_factory=list, max_length=64)

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            check_policy(key, value)
        return v

    @field_validator("faults")
    @classmethod
    def _faults(cls, v: list[str]) -> list[str]:
        for text in v:
            Fault.parse(text)
        return v

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        known = {d.name for d in iter_devices(self.machine) if d.name}
        endpoints = {d.name for d in iter_devices(self.machine)
                     if d.name and isinstance(d, DeviceSpec) and d.kind == "endpoint"}
        for i, vm in enumerate(self.workload.vms):
            for dev in vm.devices:
                if dev in known and dev not in endpoints:
                    raise ValueError(f"workload.vms[{i}].devices: {dev!r} is a bridge, "
                                     "not an endpoint that vfio-pci can own")
            for dev in vm.devices:
                if dev not in known:
                    raise ValueError(f"workload.vms[{i}].devices: no device named {dev!r} "
                                     f"in machine (known: {', '.join(sorted(known)) or 'none'})")
        assigned = {d: vm.name for vm in self.workload.vms for d in vm.devices}
        present = {d.name: d.present for d in iter_devices(self.machine) if d.name}
        for i, dev in enumerate(self.workload.hot_add):
            if dev not in known:
                raise ValueError(f"workload.hot_add: no device named {dev!r} in machine")
            if present[dev]:
                raise ValueError(f"workload.hot_add[{i}]: {dev!r} is present at boot "
                                 "(hot-add needs present: false)")
            if dev in assigned:
                # hot-added functions get no IOMMU group in this model, so vfio cannot own them
                raise ValueError(f"workload.hot_add[{i}]: {dev!r} is assigned to "
                                 f"{assigned[dev]}; luosim assigns only devices present at boot")
        if len(set(self.workload.hot_add)) != len(self.workload.hot_add):
            raise ValueError("workload.hot_add: a device is listed twice")
        self._check_work()
        bridges = {d.name for d in iter_devices(self.machine)
                   if d.name and (isinstance(d, PortSpec) or d.kind != "endpoint")}
        for dev in self.update.reset_bridges:
            if dev not in bridges:
                raise ValueError(f"update.reset_bridges: no bridge named {dev!r} in machine")
        return self

    def _check_work(self) -> None:
        """Guest RAM fits the machine; the run's work is bounded (seconds, not hours)."""
        vms = self.workload.vms
        total = sum(int(vm.memory) for vm in vms)
        usable = self.machine.usable_memory
        if total > usable:
            raise ValueError(f"workload.vms: {total} bytes of guest RAM do not fit machine.memory"
                             f" ({usable} usable after scratch and kernel headroom)")
        folios = sum(vm.folios for vm in vms)
        if folios > MAX_FOLIOS:
            raise ValueError(f"workload.vms: {folios} guest folios, at most {MAX_FOLIOS} per run "
                             "(raise folio_order)")
        functions = len(iter_devices(self.machine))
        sim_ms = 10.0 + len(self.kernels.after) * (
            self.workload.blackout_ms + _UPDATE_MS + functions * _ENUM_MS_PER_FUNCTION)
        writes = sum(vm.dma.rate_per_ms for vm in vms if vm.dma) * sim_ms
        if writes > MAX_DMA_WRITES:
            raise ValueError(f"workload: DMA rate x time is {writes:.0f} writes, at most "
                             f"{MAX_DMA_WRITES} per run (lower rate_per_ms or blackout_ms)")

    def fault_plan(self) -> tuple[Fault, ...]:
        return tuple(Fault.parse(t) for t in self.faults)


# -- loading ------------------------------------------------------------------

def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "function-plain") or \
                (str(part).startswith(("int", "str", "bool", "float", "list", "dict")) and \
                "[" in str(part)):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: dict[str, Any]) -> str:
    typ = err.get("type", "")
    inp = err.get("input")
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if typ == "int_parsing" or typ == "int_type":
        return f"expected an integer, got {inp!r}"
    if typ == "extra_forbidden":
        return "unknown key"
    if typ == "missing":
        return "required key is missing"
    if typ in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        ctx = err.get("ctx") or {}
        bound = next(iter(ctx.values()), "?")
        rel = {"less_than_equal": "<=", "greater_than_equal": ">=", "less_than": "<",
               "greater_than": ">"}[typ]
        return f"expected a value {rel} {bound}, got {inp!r}"
    if typ == "literal_error":
        return f"{msg[0].lower()}{msg[1:]}, got {inp!r}"
    return msg


def scenario_from_dict(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate a parsed scenario; ``ScenarioError`` lists every problem."""
    if not isinstance(data, dict):
        raise ScenarioError(source, [f"(top level): expected a mapping, got {type(data).__name__}"])
    if data_depth(data) > MAX_NESTING:  # traces carry scenarios as JSON
        raise ScenarioError(source, [f"(top level): nesting deeper than {MAX_NESTING} levels"])
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors():
            where, msg = _loc(tuple(err["loc"])), _message(dict(err))
            # a model-level check that names its own path replaces the generic one
            head = msg.split(": ")[0] if ": " in msg else ""
            own = head.startswith(where) if where != "(top level)" else bool(head)
            line = msg if own and " " not in head else f"{where}: {msg}"
            if line not in problems:
                problems.append(line)
        raise ScenarioError(source, problems) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a YAML scenario file."""
    p = Path(path)
    try:
        data = load_yaml_file(p)
    except InputError as exc:
        raise ScenarioError(exc.source, exc.problems) from None
    return scenario_from_dict(data, str(p))


DeviceSpec.model_rebuild()
PortSpec.model_rebuild()
