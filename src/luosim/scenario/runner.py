"""Run a scenario step by step: boot, workload, preserve, kexec(s), retrieve,
finish; check invariants after every step; classify the outcome.

Nothing here prints: progress goes to ``on_phase`` and everything else into
the returned :class:`RunResult`.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

# rules modules register their invariants when imported (rules_pci and
# rules_iommu come in with the snapshot helpers below)
import luosim.check.rules_core  # noqa: F401
from luosim.check.invariants import CheckContext, Checker, PfnRanges
from luosim.check.rules_iommu import snapshot_iommu_at_jump
from luosim.check.rules_pci import snapshot_at_jump
from luosim.errors import HostError, KernelError, KernelPanic, errname
from luosim.faults import Fault, point, unreached_warning
from luosim.hw.machine import Machine
from luosim.hw.memory import PAGE_SHIFT, MemoryAccessError
from luosim.scenario.result import DeviceResult, RunResult
from luosim.scenario.schema import Scenario
from luosim.userspace.agent import Agent
from luosim.userspace.vmm import Vmm

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel

# environment and userspace faults (issue "Fault explorer" §1): not kernel errnos,
# so they are "corrupt:" effects, hit once per preserved device/bridge/session
FP_DEVICE_MISSING = point("hw.device_missing", ("corrupt:unplugged",),
                          "a preserved device is gone after the kexec (pulled, dead link)")
FP_BRIDGE_LOST = point("hw.bridge_config_lost", ("corrupt:bus-numbers",),
                       "a bridge above a preserved device loses its bus numbers in the kexec")
FP_WRONG_DRIVER = point("userspace.wrong_driver", ("corrupt:dma-api-bind",),
                        "a DMA-API driver tries to bind a preserved device before vfio "
                        "retrieves it (the user's job per pci.md §5.6)")


class _Refused(Exception):
    def __init__(self, step: str, exc: OSError) -> None:
        super().__init__(step)
        self.step = step
        self.exc = exc


class Run:
    """State of one run (one fresh machine)."""

    def __init__(self, scenario: Scenario, faults: tuple[Fault, ...],
                 policy: Mapping[str, str] | None,
                 on_phase: Callable[[str], None] | None,
                 dump_handover: Path | None = None) -> None:
        self.dump_handover = dump_handover
        self.scenario = scenario
        self.policy = {**scenario.policy, **(policy or {})}
        plan = tuple(dict.fromkeys(scenario.fault_plan() + tuple(faults)))
        self.machine = Machine.from_topology(scenario.machine.topology(), faults=plan)
        self.on_phase = on_phase
        self.phases: list[tuple[str, int]] = []
        self.ctx = CheckContext(self.machine)
        self.checker = Checker(self.ctx)
        self.kernel: Kernel | None = None
        self.result = RunResult("ok")
        self._phase_start = 0
        self._phase_name: str | None = None
        self.blackout_ns = int(scenario.workload.blackout_ms * 1e6)

    # -- helpers --------------------------------------------------------------
    def phase(self, name: str) -> None:
        now = self.machine.clock.now_ns
        if self._phase_name is not None:
            self.phases.append((self._phase_name, now - self._phase_start))
        self._phase_name, self._phase_start = name, now
        self.machine.step = name
        self.machine.emit(self.kernel.name if self.kernel else "runner", "runner", "phase", name)
        if self.on_phase is not None:
            self.on_phase(name)

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one userspace/kernel operation; errno -> refused; check invariants."""
        try:
            value = fn()
        except OSError as exc:
            raise _Refused(name, exc) from None
        self.checker.check(name)
        return value

    def run_dma(self, ns: int) -> None:
        dma = getattr(self.machine, "dma", None)
        if dma is not None and ns > 0:
            dma.run(ns)
        else:
            self.machine.clock.advance(ns)

    def pci_snapshot(self, k: Kernel, preserved: set[str]) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = []
        for dev in k.pci.devices():
            parent = dev.bus.self_dev.hw.hw_id if dev.bus.self_dev is not None else None
            lu = dev.lu
            auto = dev.hw.hw_id not in preserved and (lu.outgoing is not None
                                                      or lu.incoming is not None)
            nodes.append({"name": dev.hw.hw_id, "bdf": dev.name, "kind": dev.hw.kind,
                          "parent": parent, "preserved": dev.hw.hw_id in preserved,
                          "auto": auto})
        return nodes

    # -- the run ----------------------------------------------------------------
    def execute(self) -> RunResult:
        sc = self.scenario
        try:
            self._execute(sc)
            self.result.outcome = "unsafe" if self.checker.broken else "ok"
        except (KernelPanic, MemoryAccessError) as p:
            # kernel code dereferencing a physical address outside RAM (a hand-over
            # pointer gone bad) takes a page fault in the direct map: an oops, fatal
            # here (the boot path, or panic_on_oops on a hypervisor host)
            message = p.message if isinstance(p, KernelPanic) else \
                f"BUG: unable to handle page fault: {p}"
            self.checker.check("panic")
            self.result.panic = message
            self.result.outcome = "unsafe" if self.checker.broken else "panic"
        except _Refused as r:
            self.checker.check(r.step)
            code = r.exc.errno or 0
            self.result.failed_step = r.step
            self.result.error = f"{r.step}: {errname(code)} ({r.exc.strerror or r.exc})"
            self.result.outcome = "unsafe" if self.checker.broken else "refused"
        self._summarize_devices()
        self.phase("done")
        self.result.phases = [(n, ns) for n, ns in self.phases if n != "done"]
        self.result.invariants = self.checker.results()
        self.result.events = [e.as_dict() for e in self.machine.events]
        self.result.reached = self.machine.faults.reached.copy()
        self.result.occurrences = self.machine.faults.representative_occurrences()
        self.result.fired = [f.label() for f, _ctx in self.machine.faults.fired]
        fired = {f for f, _ctx in self.machine.faults.fired}
        for f in self.machine.faults.plan:
            if f not in fired:  # say so: a silent no-op plan looks like a passed test
                self.result.warnings.append(
                    unreached_warning(f, self.machine.faults.reached[f.point]))
        dma = getattr(self.machine, "dma", None)
        if dma is not None:
            self.result.stats["dma_records"] = len(dma.records)
            self.result.dma = [r.as_dict() for r in dma.records]
        self.result.device_vm = dict(self.ctx.device_vm)
        return self.result

    def _execute(self, sc: Scenario) -> None:
        before = sc.kernels.before
        self.phase(f"boot {before.profile}")
        k = self.machine.boot(before.profile, before.cmdline, self.policy,
                              before.config or None)
        self.kernel = self.ctx.kernel = k
        self.ctx.liveupdate_numbers.append(k.liveupdate.liveupdate_number_in)
        self.checker.check("boot")
        for name in sc.workload.hot_add:
            self.phase(f"hot-add {name}")
            self.step(f"hot-add {name}", lambda n=name: k.pci.hot_add(n))  # type: ignore[misc]

        self.phase("start VMs")
        vmm = Vmm(k)
        for i, vm in enumerate(sc.workload.vms):
            devices = []
            for dname in vm.devices:
                dev = k.pci.find_hw(dname)
                if dev is None:
                    raise _Refused(f"start {vm.name}",
                                   KernelError(errno.ENODEV, f"{dname} not enumerated"))
                devices.append((dname, dev.name))
            dma = vm.dma.model_dump() if vm.dma else None
            self.step(f"start {vm.name}", lambda v=vm, d=devices, m=dma, s=i: vmm.create_vm(  # type: ignore[misc]
                v.name, v.memory, v.folio_order, d, m, seed=0x5EED0000 + s,
                ram_backing=v.ram_backing))
            self.ctx.device_vm.update({d: vm.name for d in vm.devices})
        self._track_ram(vmm)
        self.phase("guest running")
        self.run_dma(10_000_000)
        self.checker.check("guest running")

        agent = Agent(k, sc.update.sessions, sc.update.preserve)
        self.phase("preserve")
        self.step("preserve", lambda: agent.preserve(vmm))
        self.ctx.phase = "preserved"
        self._note_preserved(vmm, agent)
        self.result.pci_before = self.pci_snapshot(k, set(self.ctx.preserved_bdfs))
        self.agent = agent

        for n, after in enumerate(sc.kernels.after):
            self.phase(f"reboot(KEXEC) to {after.profile}: freeze, serialize, shutdown")
            self.step("quiesce VMs", vmm.quiesce_for_update)
            self.run_dma(self.REBOOT_NS)
            # KHO-1 follows guest RAM only when the agent preserved it
            self.ctx.extra["ram_before_jump"] = (self._ram_fingerprints()
                                                 if sc.update.preserve != "none" else None)
            hook = self._blackout_hook()
            self.machine.stage_hooks.append(hook)
            try:
                k2 = self.step(f"reboot(KEXEC) #{n + 1}",
                               lambda a=after, kk=k: kk.kexec(a.profile, a.cmdline,  # type: ignore[misc]
                                                              self.policy, a.config or None))
            finally:
                self.machine.stage_hooks.remove(hook)
            k = k2
            self.kernel = self.ctx.kernel = k
            self.ctx.kexecs += 1
            self.ctx.phase = "after-kexec"
            self.ctx.liveupdate_numbers.append(k.liveupdate.liveupdate_number_in)
            self.checker.check("boot after kexec")
            if k._devices:
                self._foreign_driver_probes(k)
                self.checker.check("driver probes")
            self.phase("userspace: retrieve + finish")
            vmm = self.step("retrieve", lambda kk=k, old=vmm: agent.retrieve_and_finish(  # type: ignore[misc]
                kk, old, sc.update.finish))
            for vm in vmm.vms:
                if (vm.name in self.ctx.ram_layout and vm.ram is not None
                        and vm.ram.folio_runs() != self.ctx.ram_layout[vm.name]):
                    self._ram_problem(vm.name, "retrieved memfd is not backed by the "
                                      "preserved folios")
            self.ctx.extra["unfinished_kinds"] = sorted({p.kind for p in agent.unfinished()})
            self._probe_finished_tokens(agent)
            self.ctx.phase = "finished" if sc.update.finish else "after-kexec"
            self.checker.check("finish")
            self.phase("guest running")
            self.run_dma(10_000_000)
            self.checker.check("guest running after update")
            if n + 1 < len(sc.kernels.after):
                self.phase("preserve again")
                self._track_ram(vmm)
                self.ctx.phase = "preserved"
                self.step("carry forward", lambda v=vmm: agent.carry_forward(v))  # type: ignore[misc]
                self._note_preserved(vmm, agent)

    def _note_preserved(self, vmm: Vmm, agent: Agent) -> None:
        """The checker's view of which devices are preserved (at every preserve)."""
        self.ctx.preserved_bdfs = {p.obj: next(d.bdf for v in vmm.vms for d in v.devices
                                               if d.name == p.obj)
                                   for p in agent.preserved if p.kind == "vfio"}

    def _environment_faults(self) -> None:
        """Hardware changes during the jump, as the explorer plans them."""
        faults = self.machine.faults
        pci = self.machine.pci
        bridges: list[str] = []
        for name in sorted(self.ctx.preserved_bdfs):
            if faults.hit(FP_DEVICE_MISSING, name):
                pci.hot_remove(name)
                self.machine.emit("machine", "pci", "device-missing",
                                  f"{name} is gone after the kexec")
            for b in pci.upstream_bridges(pci.find(name)):
                if b.hw_id not in bridges:
                    bridges.append(b.hw_id)
        for name in bridges:
            if faults.hit(FP_BRIDGE_LOST, name):
                self._lose_bridge(name)
        for name in self.scenario.update.reset_bridges:
            self._lose_bridge(name)

    def _lose_bridge(self, name: str) -> None:
        self.machine.pci.lose_bus_config(self.machine.pci.find(name))
        self.machine.emit("machine", "pci", "bridge-reset",
                          f"{name} lost its bus numbers during the kexec")

    def _foreign_driver_probes(self, k: Kernel) -> None:
        """A DMA-API driver tries each preserved device before the agent retrieves it:
        it must be refused (EBUSY, pci.md §7.4.4); if it binds, VFIO-8 breaks."""
        for name in sorted(self.ctx.preserved_bdfs):
            if not self.machine.faults.hit(FP_WRONG_DRIVER, name):
                continue
            dev = k.pci.find_hw(name)
            if dev is None:
                continue
            try:
                k.iommu.bind_dma_api_driver(dev.name)
            except OSError as exc:
                self.machine.emit(k.name, "userspace", "driver-refused",
                                  f"DMA-API driver bind of {name} refused: {exc.strerror}")
            else:
                self.ctx.extra.setdefault("foreign_bound", []).append(name)
                self.machine.emit(k.name, "userspace", "driver-bound",
                                  f"a DMA-API driver took preserved {name}", "error")

    def _probe_finished_tokens(self, agent: Agent) -> None:
        """LUO-1's probe: RETRIEVE_FD on a finished session must be ENOENT
        (luo.md §2.4); the call changes nothing when it fails as it should."""
        for p in agent.preserved:
            if p.state != "finished":
                continue
            session = agent.session(p.session)
            if session is None:
                continue
            try:
                session.retrieve_fd(p.token)
            except OSError as exc:
                ok = exc.errno == errno.ENOENT
            else:
                ok = False
            self.ctx.retrieved_tokens[(p.session, p.token)] = 1 if ok else -1

    def _summarize_devices(self) -> None:
        """PCI tree after, BDFs before/after: whatever point the run reached."""
        preserved = set(self.ctx.preserved_bdfs)
        k = self.kernel
        if k is not None and getattr(k, "booted", False) and self.ctx.kexecs:
            self.result.pci_after = self.pci_snapshot(k, preserved)
        before = {n["name"]: n["bdf"] for n in self.result.pci_before}
        after = {n["name"]: n["bdf"] for n in self.result.pci_after}
        auto = {n["name"] for n in self.result.pci_before + self.result.pci_after
                if n.get("auto")}
        self.result.devices = [DeviceResult(name, before.get(name), after.get(name),
                                            name in preserved, name in auto)
                               for name in sorted(set(before) | set(after))]
        agent = getattr(self, "agent", None)
        if agent is not None:
            self.result.preserved_objects = [p.as_dict() for p in agent.preserved]

    # simulated cost model of the blackout (orders of magnitude, not measurements):
    # the kexec jump and early boot take ``workload.blackout_ms``; enumeration
    # costs ~50 us of config cycles per function; IOMMU and driver init ~20 ms
    PCI_NS_PER_DEVICE = 50_000
    DRIVER_INIT_NS = 20_000_000
    REBOOT_NS = 2_000_000

    def _at_jump(self) -> None:
        """Between the kernels: dump, environment faults, the checker's snapshots."""
        if self.dump_handover is not None and self.machine.kho_data is not None:
            from luosim.inspect.dump import dump_handover
            out = self.dump_handover / f"kexec{self.ctx.kexecs + 1}"
            try:
                lines = dump_handover(self.machine.memory, self.machine.kho_data, out)
            except OSError as exc:  # the host's file system, not the model: exit 4
                raise HostError(f"--dump-handover {out}: {exc.strerror or exc}",
                                exc.errno) from None
            for line in lines:
                self.machine.emit("machine", "dump", "handover", f"{out}/{line}")
        self._environment_faults()
        old = self.machine.current  # still the old kernel: it just jumped
        if old is not None:  # observer's note of who preserved what
            self.ctx.extra["owners"] = old.kho.owner.copy()
            snapshot_at_jump(self.ctx, old)
            snapshot_iommu_at_jump(self.ctx)
        before = self.ctx.extra.get("ram_before_jump", {})
        if before is None:
            return
        for vm, fp in self._ram_fingerprints().items():
            if before.get(vm) != fp:
                self._ram_problem(vm, "content changed by the kexec itself (scrubbed "
                                  "or overwritten before the new kernel ran)")

    def _blackout_hook(self) -> Callable[[str], None]:
        def hook(stage: str) -> None:
            if stage == "kexec-jump":
                self._at_jump()
                self.phase("jump + early boot")
                self.run_dma(self.blackout_ns)
            elif stage == "pci-enumerated":
                self.phase("PCI enumeration")
                k = self.machine.current
                n = len(k.pci.devices()) if k is not None and k._devices else 0
                self.run_dma(n * self.PCI_NS_PER_DEVICE)
            elif stage == "iommu-ready":
                self.phase("IOMMU, drivers, late init")
                self.run_dma(self.DRIVER_INIT_NS)
            else:
                return
            self.checker.check(f"DMA during blackout ({stage})")
        return hook

    def _track_ram(self, vmm: Vmm) -> None:
        for vm in vmm.vms:
            if vm.ram is None:
                continue
            layout = vm.ram.folio_runs()  # runs (index, pa, order, count): O(extents)
            self.ctx.ram_layout[vm.name] = layout
            self.ctx.ram_pfns[vm.name] = PfnRanges(
                [(pa >> PAGE_SHIFT, (pa >> PAGE_SHIFT) + (n << order))
                 for _i, pa, order, n in layout])

    def _ram_fingerprints(self) -> dict[str, int]:
        mem = self.machine.memory
        return {vm: hash(tuple(tuple(mem.describe(pa >> PAGE_SHIFT, n << order))
                               for _i, pa, order, n in layout))
                for vm, layout in self.ctx.ram_layout.items()}

    def _ram_problem(self, vm: str, problem: str) -> None:
        self.ctx.ram_problems.setdefault(vm, problem)


def run(scenario: Scenario, *, faults: tuple[Fault, ...] = (),
        policy: Mapping[str, str] | None = None,
        on_phase: Callable[[str], None] | None = None,
        dump_handover: Path | None = None) -> RunResult:
    """Run ``scenario`` once on a fresh machine (deterministic).

    ``dump_handover``: write each kexec's hand-over blobs under this folder.
    """
    return Run(scenario, faults, policy, on_phase, dump_handover).execute()
