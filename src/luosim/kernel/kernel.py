"""One booted kernel.

A :class:`Kernel` is created by :meth:`Machine.boot` (cold boot) or by
:meth:`Kernel.kexec` (live update).  It learns about the past only from the
machine: physical memory, hardware registers and the ``kho_data`` boot
parameter.  Its boot runs the initcalls that matter to live update in the
kernel's order:

early   kho_populate/kho_memory_init, liveupdate_early_init (may panic)
fs      kho_init (outgoing KHO state)
subsys  PCI enumeration (retrieves the PCI FLB on first device setup)
        IOMMU init (adopts preserved tables), device probe
device  vfio-pci module init (file handler + PCI FLB), iommufd handler
late    memfd LUO handler, luo_late_startup, /dev/liveupdate
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from luosim.errors import DeadKernelError, KernelPanic
from luosim.kernel.kho import Kho
from luosim.kernel.mm.memblock import ReserveMemRegions
from luosim.kernel.mm.page_alloc import PageAllocator
from luosim.kernel.profiles import Profile, get_profile

if TYPE_CHECKING:
    from luosim.hw.machine import Machine
    from luosim.kernel.iommu.core import IommuSubsystem
    from luosim.kernel.liveupdate.core import LuoCore
    from luosim.kernel.liveupdate.uapi import LiveupdateDevice
    from luosim.kernel.mm.hugetlb import HugetlbSubsystem
    from luosim.kernel.mm.memfd import MemfdFile, MemfdSubsystem
    from luosim.kernel.pci.probe import PciSubsystem
    from luosim.kernel.vfio.pci import VfioPci


class Cmdline:
    """The kernel command line: ``key=value`` and bare flags, in order."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        self.words = self.text.split()

    def has(self, flag: str) -> bool:
        """``pci=assign-busses`` matches the word or one comma-separated option."""
        key, _, val = flag.partition("=")
        for w in self.words:
            if w == flag:
                return True
            wk, _, wv = w.partition("=")
            if val and wk == key and val in wv.split(","):
                return True
        return False

    def value(self, key: str) -> str | None:
        """Last value of ``key=...``; ``pci=hpbussize`` looks inside ``pci=a,hpbussize=2``."""
        top, _, sub = key.partition("=")
        found: str | None = None
        for w in self.words:
            wk, _, wv = w.partition("=")
            if wk != top:
                continue
            if not sub:
                found = wv
                continue
            for opt in wv.split(","):
                ok, _, ov = opt.partition("=")
                if ok == sub:
                    found = ov
        return found


class Kernel:
    """A running kernel of one profile on one machine."""

    machine: Machine
    liveupdate: LuoCore
    memfd: MemfdSubsystem
    hugetlb: HugetlbSubsystem
    pci: PciSubsystem
    iommu: IommuSubsystem
    vfio: VfioPci
    iommufd_mod: Any

    def __init__(self, machine: Machine, profile: Profile, cmdline: str,
                 config: Mapping[str, object] | None = None) -> None:
        from luosim.kernel.config import resolve_config
        self.machine = machine
        self.profile = profile
        self.config = resolve_config(profile.config, config)
        self.cmdline = Cmdline(cmdline)
        machine.boot_count += 1
        self.generation = machine.boot_count
        self.name = f"k{self.generation}:{profile.name}"
        self.alive = True
        self.booted = False
        self.panic_message: str | None = None
        self.dmesg: list[tuple[str, str, str]] = []  # (level, subsystem, message)
        self._warned: set[str] = set()
        self._devices = False
        self.mm = PageAllocator(machine.memory.size, machine.memory,
                                poison_on_free=not self.cmdline.has("init_on_free=0"))
        self.kho = Kho(self)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, machine: Machine, profile: str | Profile, cmdline: str = "",
              policy: Mapping[str, str] | None = None,
              config: Mapping[str, object] | None = None) -> Kernel:
        """Boot a kernel on ``machine`` from its current hand-over state.

        ``config``: kernel config switches (``luosim.kernel.config``).
        """
        prof = profile.with_policy(policy) if isinstance(profile, Profile) \
            else get_profile(profile, policy)
        k = cls(machine, prof, cmdline, config)
        machine.current = k
        k.printk("info", "boot", f"Linux ({prof.name}) booting, cmdline: {cmdline!r}")
        k._boot(machine.kho_data)
        return k

    def _boot(self, kho_data: bytes | None) -> None:
        from luosim.kernel.liveupdate.core import LuoCore
        from luosim.kernel.mm.hugetlb import HugetlbSubsystem
        from luosim.kernel.mm.memfd import MemfdSubsystem

        # early
        self.kho.early_init(kho_data)
        self.liveupdate = LuoCore(self)
        self.liveupdate.early_init()
        self.hugetlb = HugetlbSubsystem(self)  # pools after KHO memory init (series patch 2)
        self.hugetlb.init()
        self._boot_devices()
        self.kho.init()  # fs_initcall kho_init(): kexec-metadata
        self.reserve_mem = ReserveMemRegions(self)
        self.reserve_mem.init()  # reserve_mem= regions, revived from KHO (memblock-v1)
        # late
        self.memfd = MemfdSubsystem(self)
        self.memfd.late_init()
        self.hugetlb.late_init()
        self.liveupdate.late_init()
        self.booted = True
        self.machine.stage("booted")
        self.kho.report_unclaimed("end of boot")
        self.printk("info", "boot", "boot complete")

    def _boot_devices(self) -> None:
        """subsys/device initcalls: PCI, IOMMU, iommufd, vfio-pci.

        ``_devices`` says they ran: a kernel that panicked in early boot has none.
        """
        from luosim.kernel.iommu.core import IommuSubsystem
        from luosim.kernel.iommu.iommufd import Iommufd
        from luosim.kernel.pci.liveupdate import PciLiveupdate
        from luosim.kernel.pci.probe import PciSubsystem
        from luosim.kernel.vfio.pci import VfioPci

        self._devices = True
        # subsys: PCI enumeration with the live-update hooks
        self.pci = PciSubsystem(self)
        self.pci_lu = PciLiveupdate(self)
        if self.profile.layer("pci") is not None:  # a build without the PCI series has no hooks
            self.pci.hooks = self.pci_lu
        self.pci.enumerate()
        self.machine.stage("pci-enumerated")
        # IOMMU driver init and device probe (adopts preserved tables first)
        self.iommu = IommuSubsystem(self)
        self.iommu.init()
        self.machine.stage("iommu-ready")
        # device: vfio-pci and iommufd register their file handlers and FLBs
        self.iommufd_mod = Iommufd(self)
        if self.profile.layer("iommufd") is not None:
            self.iommufd_mod.init()
        self.vfio = VfioPci(self)
        if self.profile.layer("vfio") is not None:
            self.vfio.init()

    def kexec(self, profile: str = "v6", cmdline: str = "",
              policy: Mapping[str, str] | None = None,
              config: Mapping[str, object] | None = None) -> Kernel:
        """``reboot(LINUX_REBOOT_CMD_KEXEC)``: freeze, shut down, jump, boot.

        A live-update freeze error makes the syscall fail (``KernelError``)
        and this kernel keeps running.  On success this kernel is dead and
        the new one is returned.
        """
        self._check_alive()
        from luosim.kernel.config import resolve_config
        next_profile = get_profile(profile, policy)  # validate before anything irreversible
        resolve_config(next_profile.config, config)
        self.printk("info", "kexec", f"reboot(KEXEC) to {next_profile.name}")
        self.liveupdate.reboot()  # liveupdate_reboot(): may fail, rolled back
        # kernel_restart_prepare(): device_shutdown()
        if self._devices:
            self.vfio.shutdown()
            self.pci.shutdown(kexec=True)
            self.iommu.shutdown()
        kho_data = self.kho.handover()
        self.alive = False
        self.printk("info", "kexec", "Starting new kernel")
        self.machine.kexec_jump(kho_data)
        return Kernel.start(self.machine, next_profile, cmdline, config=config)

    # ------------------------------------------------------------------ uAPI-ish
    def open_liveupdate(self) -> LiveupdateDevice:
        """``open("/dev/liveupdate")``; ENOENT when the device does not exist."""
        self._check_alive()
        return self.liveupdate.open_device()

    def memfd_create(self, name: str, size: int = 0, *, folio_order: int = 0,
                     seals: int = 0, flags: int = 0) -> MemfdFile:
        """``memfd_create(name, flags)`` + ``ftruncate(size)``; ``MFD_HUGETLB`` → hugetlbfs."""
        self._check_alive()
        return self.memfd.create(name, size, folio_order=folio_order, seals=seals, flags=flags)

    # ------------------------------------------------------------------ printk & co
    def printk(self, level: str, subsystem: str, message: str, **data: Any) -> None:
        self.dmesg.append((level, subsystem, message))
        self.machine.emit(self.name, subsystem, "log", message, level, **data)

    def warn(self, subsystem: str, message: str) -> None:
        """``WARN()``: logged with a backtrace on hardware; here a warn event."""
        self.printk("warn", subsystem, message)

    def warn_once(self, subsystem: str, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        self.warn(subsystem, message)

    def panic(self, message: str) -> NoReturn:
        """``panic()``: the kernel stops; the exception carries the message."""
        self.alive = False
        self.panic_message = message
        self.printk("emerg", "panic", f"Kernel panic - not syncing: {message}")
        raise KernelPanic(message, self)

    def cmdline_has(self, flag: str) -> bool:
        return self.cmdline.has(flag)

    def cmdline_value(self, key: str) -> str | None:
        return self.cmdline.value(key)

    def policy(self, name: str) -> str:
        return self.profile.policy(name)

    def configured(self, option: str) -> bool:
        """``IS_ENABLED(option)`` of this kernel's build (``luosim.kernel.config``)."""
        return self.config[option]

    def _check_alive(self) -> None:
        if not self.alive:
            raise DeadKernelError(f"kernel {self.name} is no longer running")

    def __repr__(self) -> str:
        state = "alive" if self.alive else ("panicked" if self.panic_message else "dead")
        return f"<Kernel {self.name} {state}>"

