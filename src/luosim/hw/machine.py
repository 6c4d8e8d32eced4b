"""The machine: everything that outlives a kernel.

A :class:`Machine` owns physical memory, PCI and IOMMU hardware, the
simulated clock, the event log and the fault injector.  Kernels are booted
on it; at kexec the only thing passed from one kernel to the next is the
``kho_data`` boot parameter (the x86 setup_data), exactly as on hardware.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from luosim.abi.errors import DecodeError
from luosim.abi.kho import KhoData, KhoScratch, decode_root_fdt
from luosim.abi.kho_radix import walk_radix_arrays
from luosim.faults import CATALOG_HOOKS, Fault, FaultInjector
from luosim.hw.clock import SimClock
from luosim.hw.iommu import IommuHardware
from luosim.hw.memory import PAGE_SIZE, PhysicalMemory
from luosim.hw.pci import PciHardware

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str, where: str = "size") -> int:
    """``"16GiB"`` / ``"512M"`` / ``4096`` -> bytes (ValueError naming ``where``)."""
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool):
        raise ValueError(f"{prefix}expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{prefix}negative size {value}")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{prefix}cannot parse size {value!r} (use e.g. 16GiB, 512MiB)")
    unit = (m.group(2) or "").upper()[:1] if m.group(2) and m.group(2).upper() != "B" else ""
    return int(m.group(1)) * _UNITS[unit]


@dataclass(frozen=True)
class Event:
    """One step of a run, as the report and the checker see it."""

    seq: int
    time_ns: int
    kernel: str
    subsystem: str
    kind: str
    detail: str
    level: str = "info"
    data: Mapping[str, Any] = field(default_factory=dict)
    step: str = ""  # the runner's phase when it happened

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time_ns": self.time_ns, "step": self.step,
                "kernel": self.kernel,
                "subsystem": self.subsystem, "kind": self.kind, "detail": self.detail,
                "level": self.level, **({"data": dict(self.data)} if self.data else {})}


DEFAULT_MEMORY = 16 << 30
DEFAULT_SCRATCH = 64 << 20
SCRATCH_BASE = 16 << 20  # low scratch above the legacy first MiBs


class Machine:
    """Hardware that survives kexec (memory contents too, until scrubbed)."""

    def __init__(self, memory_size: int = DEFAULT_MEMORY, *,
                 scratch_size: int = DEFAULT_SCRATCH,
                 topology: Mapping[str, Any] | None = None,
                 faults: tuple[Fault, ...] = ()) -> None:
        if memory_size < 256 << 20:
            raise ValueError(f"memory: {memory_size:#x} bytes is below the 256 MiB minimum")
        self.memory = PhysicalMemory(memory_size)
        self.clock = SimClock()
        self.faults = FaultInjector(plan=tuple(faults))
        self.events: list[Event] = []
        self.topology: Mapping[str, Any] = dict(topology or {})
        # scratch: reserved once by the first (cold-booted) kernel's memblock;
        # modelled as fixed so every kernel agrees where early boot may allocate
        self.scratch = [KhoScratch(SCRATCH_BASE, scratch_size)]
        self.kho_data: bytes | None = None  # setup_data handed to the next kernel
        self.current: Kernel | None = None
        self.boot_count = 0
        self.kexec_count = 0
        # observers of boot stages ("kexec-jump", "pci-enumerated", "iommu-ready",
        # "booted"): the runner lets devices run DMA through the blackout here
        self.stage_hooks: list[Callable[[str], None]] = []
        self.step = ""  # set by whoever drives the machine (the scenario runner)
        self.pci = PciHardware.from_topology(self.topology, self)
        self.iommu = IommuHardware.from_topology(self.topology, self)

    # -- construction ---------------------------------------------------------
    @classmethod
    def from_topology(cls, topology: Mapping[str, Any] | None = None, *,
                      faults: tuple[Fault, ...] = ()) -> Machine:
        """Build a machine from a scenario's ``machine:`` mapping ({} = defaults)."""
        topo = dict(topology or {})
        size = parse_size(topo.get("memory", DEFAULT_MEMORY), "machine.memory")
        scratch = parse_size(topo.get("kho_scratch", DEFAULT_SCRATCH), "machine.kho_scratch")
        return cls(size, scratch_size=scratch, topology=topo, faults=faults)

    # -- events ---------------------------------------------------------------
    def emit(self, kernel: str, subsystem: str, kind: str, detail: str,
             level: str = "info", **data: Any) -> Event:
        ev = Event(len(self.events), self.clock.now_ns, kernel, subsystem, kind, detail,
                   level, data, self.step)
        self.events.append(ev)
        return ev

    def stage(self, name: str) -> None:
        for hook in list(self.stage_hooks):
            hook(name)

    # -- kernels --------------------------------------------------------------
    def boot(self, profile: str = "v6", cmdline: str = "",
             policy: Mapping[str, str] | None = None,
             config: Mapping[str, object] | None = None) -> Kernel:
        """Cold boot (firmware path): no hand-over, memory as it is.

        ``config``: kernel config switches (``luosim.kernel.config``).
        """
        from luosim.kernel.kernel import Kernel
        if self.current is not None and self.current.alive:
            raise RuntimeError("a kernel is already running on this machine; use kexec")
        self.kho_data = None
        return Kernel.start(self, profile, cmdline, policy, config)

    def kexec_jump(self, kho_data: bytes | None) -> None:
        """The point of no return of ``machine_kexec()``.

        Scrubs every page that the hand-over does not describe as preserved,
        keeping the hand-over metadata itself (FDT, radix nodes, scratch
        array) and the scratch areas, then records ``kho_data`` as the next
        kernel's boot parameter.  Reads the hand-over from memory only.
        """
        keep: list[tuple[int, int]] = [(s.addr, s.size) for s in self.scratch]
        preserved_pages = 0
        if kho_data is not None:
            try:
                kd = KhoData.decode(kho_data)
                keep.append((kd.fdt_addr, max(kd.fdt_size, 1)))
                keep.append((kd.scratch_addr, max(kd.scratch_size, 1)))
                root = decode_root_fdt(self.memory.read(kd.fdt_addr, kd.fdt_size))
                walk = walk_radix_arrays(lambda pa: self.memory.read(pa, PAGE_SIZE),
                                         root.mem_map_pa, self.memory.size,
                                         full_leaves=self.memory.ones_pages)
                # runs of blocks: keep the blocks that lie inside RAM
                mem = self.memory.size
                size = [PAGE_SIZE << o for o in walk.order.tolist()]
                for pa, sz, n in zip(walk.pa.tolist(), size, walk.count.tolist()):
                    n_in = max(0, min(n, (mem - pa) // sz)) if pa < mem else 0
                    if n_in:
                        keep.append((pa, n_in * sz))
                        preserved_pages += (n_in * sz) >> 12
                if walk.error is not None:
                    raise walk.error
                keep.extend((n, PAGE_SIZE) for n in walk.nodes)
            except (DecodeError, ValueError) as exc:
                # the next kernel will find the same corruption and classify it
                self.emit("machine", "kexec", "handover-unreadable", str(exc), "warn")
        self.memory.scrub(keep)
        self.kho_data = kho_data
        self.kexec_count += 1
        self.emit("machine", "kexec", "jump",
                  f"kexec #{self.kexec_count}: {preserved_pages} preserved pages kept, "
                  "all other memory scrubbed", preserved_pages=preserved_pages)
        self.stage("kexec-jump")


def _declare_per_kernel_points() -> None:
    """Handlers and FLBs declare their per-op fault points when a kernel registers them."""
    Machine.from_topology({}).boot("v7")


CATALOG_HOOKS.append(_declare_per_kernel_points)
