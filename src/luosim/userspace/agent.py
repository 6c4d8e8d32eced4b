"""The live-update agent: the single owner of /dev/liveupdate.

Before kexec it creates one session per VM and preserves the VM's files in
the order the kernel requires (memfd, then iommufd, then vfio cdevs, each
found by the next in the same session: spec pci.md §7.3 and §8), keeps the
session fds open through reboot(KEXEC), and after kexec retrieves them.
IOMMU live update phase 1 cannot retrieve an iommufd (EOPNOTSUPP), so a
session holding one cannot be finished (pci.md §7.4.4): the agent leaves it
retrieved and unfinished, by design, and the devices stay owned by the
preserved token.  Phase 2 kernels return the iommufd: the VMM rebinds the
devices, restores the preserved HWPT and moves the devices to a new one
(:meth:`Vmm.restore_iommu`), and every session is finished - so the next
update can preserve everything again (:meth:`Agent.carry_forward`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from luosim.faults import point
from luosim.userspace.vmm import Vm, Vmm

FP_NEVER_RETRIEVED = point("userspace.session_never_retrieved", ("corrupt:skipped",),
                           "the agent never retrieves a session after the kexec "
                           "(crashed, misconfigured): luo.md §1.3 unreclaimed session")

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel
    from luosim.kernel.liveupdate.uapi import LiveupdateDevice, Session

TOKEN_RAM = 1
TOKEN_IOMMUFD = 2
TOKEN_DEVICE_BASE = 0x100


@dataclass
class Preserved:
    """One preserved object as the agent tracks it (for reports and checks)."""

    session: str
    token: int
    kind: str  # memfd | iommufd | vfio
    obj: str  # VM RAM name or device name
    vm: str
    state: str = "preserved"

    def as_dict(self) -> dict[str, Any]:
        return {"session": self.session, "token": f"{self.token:#x}", "kind": self.kind,
                "object": self.obj, "state": self.state}


@dataclass
class Agent:
    kernel: Kernel
    sessions_mode: str = "per-vm"
    preserve_mode: str = "all"
    preserved: list[Preserved] = field(default_factory=list)
    _sessions: dict[str, Session] = field(default_factory=dict)
    _dev: LiveupdateDevice | None = None

    def _emit(self, kind: str, detail: str, level: str = "info", **data: Any) -> None:
        self.kernel.machine.emit(self.kernel.name, "agent", kind, detail, level, **data)

    def _session(self, name: str) -> Session:
        s = self._sessions.get(name)
        if s is None:
            assert self._dev is not None
            s = self._dev.create_session(name)
            self._sessions[name] = s
            self._emit("create-session", f"created session {name!r}")
        return s

    def session(self, name: str) -> Session | None:
        """The open session fd of ``name`` (outgoing or retrieved)."""
        return self._sessions.get(name)

    def _token(self, vmm: Vmm, vm: Vm, base: int) -> int:
        """Tokens are unique per session; one shared session adds the VM index."""
        return base if self.sessions_mode == "per-vm" else base + (vmm.vms.index(vm) << 16)

    def _name(self, vm: Vm) -> str:
        return "luosim" if self.sessions_mode == "single" else vm.name

    def preserve(self, vmm: Vmm) -> None:
        """Open /dev/liveupdate and preserve every VM in dependency order."""
        if self.preserve_mode == "none":
            return
        self._dev = self.kernel.open_liveupdate()
        for vm in vmm.vms:
            main = self._name(vm)
            s = self._session(main)
            assert vm.ram is not None
            token = self._token(vmm, vm, TOKEN_RAM)
            s.preserve_fd(vm.ram, token)
            self.preserved.append(Preserved(main, token, "memfd", f"{vm.name}-ram", vm.name))
            self._emit("preserve", f"{vm.name}: guest RAM memfd ({vm.memory >> 20} MiB) "
                       f"in session {main!r}")
            if self.preserve_mode != "all" or not vm.devices:
                continue
            # a kernel without CONFIG_IOMMU_LIVEUPDATE cannot preserve an iommufd:
            # the devices go alone (vfio series without IOMMU preservation)
            if vm.iommufd is not None and self.kernel.configured("CONFIG_IOMMU_LIVEUPDATE"):
                token = self._token(vmm, vm, TOKEN_IOMMUFD)
                s.preserve_fd(vm.iommufd, token)
                self.preserved.append(Preserved(main, token, "iommufd", f"{vm.name}-iommufd",
                                                vm.name))
                self._emit("preserve", f"{vm.name}: iommufd (HWPT token {vm.hwpt_token:#x}) "
                           f"in session {main!r}")
            # without a preserved iommufd the kernel refuses the cdev: let it say how
            for i, d in enumerate(vm.devices):
                assert d.file is not None
                token = self._token(vmm, vm, TOKEN_DEVICE_BASE + i)
                s.preserve_fd(d.file, token)
                self.preserved.append(Preserved(main, token, "vfio", d.name, vm.name))
                self._emit("preserve", f"{vm.name}: vfio device {d.name} at {d.bdf}")
        # the agent closes /dev/liveupdate but keeps the session fds (selftest daemon)
        self._dev.close()
        self._dev = None

    def retrieve_and_finish(self, kernel: Kernel, vmm_old: Vmm, finish: bool) -> Vmm:
        """In the new kernel: retrieve every session, the guest RAM and the devices,
        restart DMA, then FINISH the sessions that can be finished."""
        from luosim.userspace.vmm import DeviceAssignment
        self.kernel = kernel
        new = Vmm(kernel)
        dev = kernel.open_liveupdate()
        if self.preserve_mode == "none":
            # the agent still looks for sessions: the first open is what claims
            # LUO's own incoming memory (else KHO-2 counts it as leaked)
            dev.close()
            return new
        by_session: dict[str, list[Preserved]] = {}
        for p in self.preserved:
            by_session.setdefault(p.session, []).append(p)
        vms: dict[str, Vm] = {}
        pending: set[str] = set()  # VMs whose iommufd stays preserved (phase 1)
        for name, items in list(by_session.items()):
            if kernel.machine.faults.hit(FP_NEVER_RETRIEVED, name):
                for p in items:
                    p.state = "never retrieved"
                del by_session[name]
                self._emit("skip-session", f"session {name!r} is never retrieved", "warn")
                continue
            s = dev.retrieve_session(name)
            self._sessions[name] = s
            self._emit("retrieve-session", f"retrieved session {name!r}")
            for p in items:
                old = next(v for v in vmm_old.vms if v.name == p.vm)
                vm = vms.setdefault(p.vm, Vm(old.name, old.memory, old.folio_order, dma=old.dma,
                                             hwpt_token=old.hwpt_token))
                if p.kind == "iommufd":
                    try:
                        vm.iommufd = s.retrieve_fd(p.token)  # type: ignore[assignment]
                    except OSError as exc:
                        if exc.errno != errno.EOPNOTSUPP:
                            raise
                        p.state = "left preserved (IOMMU phase 1: not retrievable)"
                        pending.add(p.vm)
                        self._emit("leave-pending", f"{p.vm}: iommufd stays with the IOMMU "
                                   "FLB; the devices' DMA ownership stays with its token")
                        continue
                    p.state = "retrieved"
                    self._emit("retrieve", f"{p.vm}: iommufd back (HWPT token "
                               f"{vm.hwpt_token:#x})")
                    continue
                f = s.retrieve_fd(p.token)
                p.state = "retrieved"
                if p.kind == "memfd":
                    vm.ram = f  # type: ignore[assignment]
                    self._emit("retrieve", f"{p.vm}: guest RAM memfd back "
                               f"({vm.memory >> 20} MiB)")
                elif p.kind == "vfio":
                    assign = next(d for d in old.devices if d.name == p.obj)
                    vm.devices.append(DeviceAssignment(p.obj, assign.bdf, f))  # type: ignore[arg-type]
                    self._emit("retrieve", f"{p.vm}: vfio device {p.obj}")
        new.vms = list(vms.values())
        for vm in new.vms:
            if vm.name not in pending:
                new.restore_iommu(vm)
                if vm.devices:
                    self._emit("restore-iommu", f"{vm.name}: devices bound, preserved HWPT "
                               f"restored, moved to HWPT {vm.hwpt_id}")
            new.start_dma(vm)
        if finish:
            for name, items in by_session.items():
                if any(p.vm in pending for p in items):
                    self._emit("leave-unfinished", f"session {name!r} not finished: it holds "
                               "an iommufd, which IOMMU phase 1 cannot finish (pci.md §7.4.4)")
                    continue
                self._sessions[name].finish()
                for p in items:
                    p.state = "finished"
                self._emit("finish", f"finished session {name!r}")
        dev.close()
        return new

    def unfinished(self) -> list[Preserved]:
        """Objects of sessions deliberately left unfinished in the new kernel."""
        return [p for p in self.preserved if p.state != "finished"]

    def carry_forward(self, vmm: Vmm) -> None:
        """Before a further kexec: preserve the retrieved (finished) files again in
        new outgoing sessions (spec luo.md §1.3: nothing is carried automatically)."""
        self.preserved = []
        self._sessions = {}
        self.preserve(vmm)


