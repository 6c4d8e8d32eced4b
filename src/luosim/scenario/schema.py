"""Scenario files: the pydantic schema and the loader.

A scenario describes a host (``machine``), the kernels it runs (``kernels``),
what runs on it (``workload``), how the update goes (``update``), optional
``faults`` and the documented ``expect``-ed outcome.  Bad files are reported
one line per problem, each naming the YAML path::

    machine.segments[0].devices[1].slot: expected an integer, got 'x'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from luosim.faults import Fault
from luosim.hw.machine import parse_size
from luosim.kernel.profiles import PROFILES, check_policy
from luosim.scenario.descriptions import describe


class ScenarioError(ValueError):
    """A scenario that cannot be used; ``problems`` holds one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


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
    total_vfs: int = Field(ge=1, le=256)
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
    segments: list[SegmentSpec] = Field(default_factory=list)

    @field_validator("memory", "kho_scratch")
    @classmethod
    def _size(cls, v: int | str) -> int:
        return parse_size(v, "")

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
        return self

    def topology(self) -> dict[str, Any]:
        """The mapping ``Machine.from_topology`` takes."""
        return self.model_dump(mode="python", exclude_none=True)


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
    cmdline: str = ""
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
    after: list[KernelSpec] = Field(default_factory=lambda: [KernelSpec()], min_length=1)


class DmaSpec(_Model):
    rate_per_ms: float = Field(default=10.0, ge=0, le=100_000)
    length: int | str = 1 << 20

    @field_validator("length")
    @classmethod
    def _len(cls, v: int | str) -> int:
        return parse_size(v, "")


class VmSpec(_Model):
    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    memory: int | str = 1 << 30
    folio_order: int = Field(default=9, ge=0, le=10)
    devices: list[str] = Field(default_factory=list)
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


class WorkloadSpec(_Model):
    vms: list[VmSpec] = Field(default_factory=list)
    hot_add: list[str] = Field(default_factory=list)
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
    faults: list[str] = Field(default_factory=list)
    expect: list[ExpectSpec] = Field(default_factory=list)

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
        for dev in self.workload.hot_add:
            if dev not in known:
                raise ValueError(f"workload.hot_add: no device named {dev!r} in machine")
        bridges = {d.name for d in iter_devices(self.machine)
                   if d.name and (isinstance(d, PortSpec) or d.kind != "endpoint")}
        for dev in self.update.reset_bridges:
            if dev not in bridges:
                raise ValueError(f"update.reset_bridges: no bridge named {dev!r} in machine")
        return self

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
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors():
            where, msg = _loc(tuple(err["loc"])), _message(dict(err))
            # a model-level check that names its own path replaces the generic one
            line = msg if where == "(top level)" and ": " in msg and "." in msg.split(":")[0] \
                else f"{where}: {msg}"
            if line not in problems:
                problems.append(line)
        raise ScenarioError(source, problems) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a YAML scenario file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(str(p), ["no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(p), [f"cannot read: {exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(str(p), [f"{where}YAML syntax error: {problem}"]) from None
    return scenario_from_dict(data, str(p))


DeviceSpec.model_rebuild()
PortSpec.model_rebuild()
