"""IOMMU core + Intel VT-d driver of one kernel (drivers/iommu/iommu.c, intel/iommu.c).

One model for what Linux splits in two: the VT-d driver programs the
remapping units of ``machine.iommu`` (root table, context entries, domain
IDs, second-level page tables written into physical memory with
:class:`~luosim.hw.iommu.PageTableWriter`), and the IOMMU core keeps the
groups, their DMA ownership and their domains.

Boot (``IommuSubsystem.init``, after PCI enumeration; pci.md §7.4, §8):

1. ``liveupdate_flb_get_incoming()`` of the IOMMU FLB (live-update boot):
   ENODATA / ENOENT / EOPNOTSUPP mean "nothing preserved"; any other error
   (version mismatch and missing arrays come back as EINVAL) is a
   ``panic()`` (§7.4.5, §9).
2. Per DRHD unit (``intel_iommu_init`` / ``init_dmars``): a HW record with
   (token = register base, type INTEL) means *adopt*: KHO-restore the root
   table and every context table of the record's bitmap (failure is
   ``BUG()``), keep translation on (the unit is not treated as
   "pre-enabled" and never disabled), then reserve every preserved domain
   ID of the unit **before** any allocation (§7.4.1, §10 inv. 7).  Without
   a record: translation left on by a previous kernel is switched off,
   a fresh zeroed root table is programmed and translation enabled.
3. Device probe of every PCI device (``iommu_probe_device`` +
   default-domain setup): a device record matching (segment, BDF) gets its
   domain restored from the preserved page tables (once, shared by every
   device of the domain), attached reusing the preserved domain ID
   **without rewriting the context entry**, and its group's DMA ownership
   is held by the preserved owner (§7.4.2-3).  A restore failure WARNs and
   falls back to the default domain (IOMMU v1; UNCONFIRMED later).

Default domain (model choice, documented): every other device starts in
the **blocking** domain - no context entry, its DMA faults - until a
driver attaches: a DMA-API driver (:meth:`IommuSubsystem.bind_dma_api_driver`)
gets a fresh paging DMA domain, vfio/iommufd claim DMA ownership and
attach their own paging domains.  Linux would give an identity or DMA
domain at probe; "blocked until a driver attaches" keeps untrusted DMA
out of memory and makes every installed translation attributable.

Groups are singletons (ACS is assumed; the IOMMU series refuses
non-singleton groups anyway, §7.3).

Shutdown at kexec (``intel_iommu_shutdown`` with the v3+ change, §7.3):
units with preserved devices keep translation on; context entries of
every other RequesterID are cleared, as are root entries of context
tables without a preserved device; units with nothing preserved have
translation disabled.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from luosim.errors import KernelError
from luosim.hw.iommu import (
    AW_LEVELS,
    NR_BUSES,
    IommuHardware,
    PageTableWriter,
    VtdUnit,
    level_shift,
)
from luosim.hw.memory import PAGE_SIZE
from luosim.kernel.iommu.liveupdate import (
    FP_RESTORE_DOMAIN,
    LEVEL_BASE,
    DeviceRecord,
    DomainRecord,
    HwRecord,
    IommuFlb,
    IommuFlbIn,
    IommuFlbOut,
    kernel_bug,
    mark_hw_restored,
    mark_incoming,
    write_restored_domain,
)

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel
    from luosim.kernel.pci.probe import PciDev

#: ``IDA_START_DID``: domain ID 0 is reserved by VT-d (caching mode) and 1 for
#: the first-level default; ``cap_ndoms`` of the modelled units is 65536.
FIRST_DID = 2
NR_DIDS = 1 << 16

_NOTHING = (errno.ENODATA, errno.ENOENT, errno.EOPNOTSUPP)


class DomainIdAllocator:
    """``iommu->domain_ida``: per-unit domain IDs, with a log for invariant checks."""

    def __init__(self) -> None:
        self.used: set[int] = set()
        self.reserved: set[int] = set()
        self.log: list[tuple[str, int]] = []  # ("reserve"|"alloc"|"free", did) in order

    def reserve(self, did: int) -> None:
        """Mark a DID handed over by the previous kernel as used (``ida_alloc_range(d, d)``).

        Devices sharing a preserved domain share its DID: reserving it again is a no-op.
        """
        if did in self.reserved:
            return
        if did in self.used:
            raise KernelError(errno.EBUSY, f"domain id {did} already allocated")
        self.used.add(did)
        self.reserved.add(did)
        self.log.append(("reserve", did))

    def alloc(self) -> int:
        for did in range(FIRST_DID, NR_DIDS):
            if did not in self.used:
                self.used.add(did)
                self.log.append(("alloc", did))
                return did
        raise KernelError(errno.ENOSPC, "no free domain id")

    def free(self, did: int) -> None:
        self.used.discard(did)
        self.reserved.discard(did)
        self.log.append(("free", did))


@dataclass(eq=False)
class UnitState:
    """The driver's ``struct intel_iommu`` for one DRHD unit."""

    unit: VtdUnit
    dids: DomainIdAllocator = field(default_factory=DomainIdAllocator)
    restored: bool = False  # adopted a preserved root table (live-update boot)
    record: HwRecord | None = None


_cookies = itertools.count(0x1000)


class IommuDomain:
    """``struct iommu_domain`` (+ ``dmar_domain``): blocking or paging.

    A paging domain owns a 4-level second-level page table in physical
    memory (root ``root``); ``dids`` holds its domain ID on each unit it is
    attached to.  A restored domain adopts the preserved tables in place.
    """

    def __init__(self, subsys: IommuSubsystem, kind: str, label: str, *, root: int = 0,
                 levels: int = 4, restored: bool = False) -> None:
        if kind not in ("paging", "blocked"):
            raise ValueError(f"unknown domain kind {kind!r}")
        self.subsys = subsys
        self.kind = kind
        self.label = label
        self.levels = levels
        self.vasz = level_shift(levels + 1)
        self.restored = restored
        self.cookie = next(_cookies)
        self.dids: dict[int, int] = {}  # unit index -> DID
        self.devices: set[IommuDevice] = set()
        self.writer: PageTableWriter | None = None
        self.root = root
        if kind == "paging":
            mem = subsys.kernel.machine.memory
            self.writer = PageTableWriter(mem, subsys.alloc_table_page, levels=levels)
            if not root:
                self.root = self.writer.new_table()

    @property
    def aw(self) -> int:
        return next(aw for aw, lv in AW_LEVELS.items() if lv == self.levels)

    def _w(self) -> PageTableWriter:
        if self.writer is None:
            raise KernelError(errno.EINVAL, f"{self.label}: not a paging domain")
        return self.writer

    def map(self, iova: int, pa: int, size: int, write: bool = True) -> None:
        """``iommu_map()``: install ``[iova, iova+size) -> [pa, pa+size)``."""
        from luosim.hw.iommu import PageTableError
        try:
            self._w().map(self.root, iova, pa, size, write=write)
        except PageTableError as exc:
            raise KernelError(errno.EEXIST if "already" in str(exc) else errno.EINVAL,
                              str(exc)) from None

    def map_many(self, chunks: Sequence[tuple[int, int, int]], write: bool = True
                 ) -> tuple[int, KernelError | None]:
        """:meth:`map` of each (iova, pa, size) in order, in bulk where the tables
        allow: (chunks mapped, the error that stopped it or None)."""
        done, exc = self._w().map_many(self.root, chunks, write=write)
        if exc is None:
            return done, None
        return done, KernelError(errno.EEXIST if "already" in str(exc) else errno.EINVAL,
                                 str(exc))

    def unmap(self, iova: int, size: int) -> int:
        """``iommu_unmap()``: bytes unmapped."""
        return self._w().unmap(self.root, iova, size)

    def table_pages(self) -> list[int]:
        return self._w().table_pages(self.root)

    def mappings(self) -> Iterator[tuple[int, int, int, bool, bool]]:
        return self._w().mappings(self.root)

    def translate(self, iova: int) -> int | None:
        w = self._w().walk(self.root, iova)
        return None if w is None else w.pa

    def __repr__(self) -> str:
        return f"<IommuDomain {self.label} {self.kind} root={self.root:#x} dids={self.dids}>"


@dataclass(frozen=True)
class PreservedOwner:
    """DMA owner of a group restored from a preserved device record (pci.md §7.4.3).

    The ABI placement of the owner token is UNCONFIRMED (§7.1), so the new
    kernel only knows that the preserved iommufd owns the group; the
    attachment is identified by the preserved domain ID.
    """

    segment: int
    rid: int
    attachment_id: int


@dataclass(eq=False)
class IommuGroup:
    """``struct iommu_group`` (singleton) with DMA ownership (``owner``/``owner_cnt``)."""

    id: int
    devices: list[IommuDevice] = field(default_factory=list)
    domain: IommuDomain | None = None
    default_domain: IommuDomain | None = None  # the DMA-API domain once a driver binds
    owner: object | None = None
    owner_cnt: int = 0
    dma_api_bound: bool = False


@dataclass(eq=False)
class IommuDevice:
    """``dev->iommu`` of one PCI function."""

    pdev: PciDev
    unit: VtdUnit
    group: IommuGroup
    incoming: DeviceRecord | None = None
    restored_from: DeviceRecord | None = None

    @property
    def name(self) -> str:
        return self.pdev.name

    @property
    def segment(self) -> int:
        return self.pdev.domain

    @property
    def rid(self) -> int:
        return self.pdev.bdf


class IommuSubsystem:
    """IOMMU core + VT-d driver state of one kernel (``kernel.iommu``)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.hw: IommuHardware = kernel.machine.iommu
        self.units: list[UnitState] = [UnitState(u) for u in self.hw.units]
        self.devices: dict[tuple[int, int], IommuDevice] = {}
        self.flb = IommuFlb(kernel)
        self.incoming: IommuFlbIn | None = None
        self._incoming_ref = False
        self.restored_domains: dict[int, IommuDomain] = {}  # domain record phys -> domain
        self.blocked = IommuDomain(self, "blocked", "blocked")
        self._groups = itertools.count(0)
        self._domains = itertools.count(1)
        self.initialized = False

    # ----------------------------------------------------------------- helpers
    def _log(self, level: str, msg: str) -> None:
        self.kernel.printk(level, "iommu", msg)

    def alloc_table_page(self) -> int:
        """``iommu_alloc_pages()`` for table pages (zeroed by the writer)."""
        return self.kernel.mm.alloc_pages(0)

    def unit_state(self, unit: VtdUnit) -> UnitState:
        return self.units[self.hw.units.index(unit)]

    def state_for_segment(self, segment: int) -> UnitState | None:
        for us in self.units:
            if us.unit.segment == segment:
                return us
        return None

    # ----------------------------------------------------------------- boot
    def init(self) -> None:
        """``intel_iommu_init()`` then ``iommu_probe_device()`` for every PCI device."""
        self._get_incoming()
        for us in self.units:
            self._init_unit(us)
        self.initialized = True
        for pdev in self.kernel.pci.devices():
            self.probe_device(pdev)
        self._put_incoming_if_unused()

    def _put_incoming_if_unused(self) -> None:
        """Drop the core's incoming FLB reference once no device holds a restored owner."""
        if self.incoming is not None and self._incoming_ref and not any(
                d.restored_from is not None for d in self.devices.values()):
            self.kernel.liveupdate.flb_put_incoming(self.flb)
            self._incoming_ref = False

    def _get_incoming(self) -> None:
        """IOMMU FLB get-incoming: "nothing" errors ignored, anything else panics (§7.4.5)."""
        if not self.kernel.configured("CONFIG_IOMMU_LIVEUPDATE"):
            return  # drivers/iommu/liveupdate.c not built: incoming state ignored
        try:
            obj = self.kernel.liveupdate.flb_get_incoming(self.flb)
        except KernelError as exc:
            if exc.errno in _NOTHING:
                return
            self.kernel.panic(f"iommu: liveupdate: failed to retrieve incoming IOMMU state "
                              f"({exc.name}): {exc}")
        if not isinstance(obj, IommuFlbIn):
            self.kernel.panic("iommu: liveupdate: incoming IOMMU FLB object is invalid")
        self.incoming = obj
        self._incoming_ref = True

    def _init_unit(self, us: UnitState) -> None:
        unit = us.unit
        rec = self.incoming.hw_for(unit.reg_base) if self.incoming is not None else None
        if rec is not None:
            self._adopt_unit(us, rec)
            return
        if unit.translation_enabled:
            self._log("info", f"DMAR unit {unit.reg_base:#x}: translation pre-enabled, "
                      "disabling")
            self.hw.disable_translation(unit)
        root = self.alloc_table_page()
        self.kernel.machine.memory.zero(root, PAGE_SIZE)
        self.hw.set_root_table(unit, root)
        self.hw.enable_translation(unit)
        self._log("info", f"DMAR unit {unit.reg_base:#x} (segment {unit.segment}): root table "
                  f"{root:#x}, translation enabled")

    def _adopt_unit(self, us: UnitState, rec: HwRecord) -> None:
        """Live-update boot: adopt root/context tables, keep TE, reserve DIDs (§7.4.1)."""
        k = self.kernel
        unit = us.unit
        root = rec.ser.root_table
        if k.kho.restore_folio(root) is None:
            kernel_bug(k, f"DMAR unit {unit.reg_base:#x}: preserved root table {root:#x} "
                       "cannot be restored")
        for bus in rec.context_buses():
            ct = self._root_entry_in(root, bus)
            if ct is None or k.kho.restore_folio(ct) is None:
                kernel_bug(k, f"DMAR unit {unit.reg_base:#x}: preserved context table of "
                           f"bus {bus:#04x} cannot be restored")
        if unit.rtaddr != root or not unit.root_table_set:
            k.warn("iommu", f"DMAR unit {unit.reg_base:#x}: RTADDR {unit.rtaddr:#x} differs "
                   f"from the preserved root table {root:#x}")
            self.hw.set_root_table(unit, root)
        if not unit.translation_enabled:
            k.warn("iommu", f"DMAR unit {unit.reg_base:#x}: translation found off on a "
                   "preserved unit")
            self.hw.enable_translation(unit)
        us.restored = True
        us.record = rec
        assert self.incoming is not None
        for d in self.incoming.devices_on(rec):
            us.dids.reserve(d.ser.attachment_id)
        mark_hw_restored(k, rec)
        self._log("info", f"DMAR unit {unit.reg_base:#x}: adopted preserved root table "
                  f"{root:#x} ({len(rec.context_buses())} context tables), translation kept "
                  f"on, reserved DIDs {sorted(us.dids.reserved)}")

    def _root_entry_in(self, root: int, bus: int) -> int | None:
        lo = self.kernel.machine.memory.read_u64(root + 16 * bus)
        return lo & ~0xFFF & ((1 << 64) - 1) if lo & 1 else None

    # ----------------------------------------------------------------- probe
    def probe_device(self, pdev: PciDev) -> IommuDevice | None:
        """``iommu_probe_device()`` + default-domain setup (§7.4.2-3)."""
        us = self.state_for_segment(pdev.domain)
        if us is None:
            return None
        key = (pdev.domain, pdev.bdf)
        old = self.devices.get(key)
        if old is not None and old.pdev is pdev:
            return old
        group = IommuGroup(next(self._groups))
        dev = IommuDevice(pdev, us.unit, group)
        group.devices.append(dev)
        self.devices[key] = dev
        rec = self.incoming.device(pdev.domain, pdev.bdf) if self.incoming is not None else None
        if rec is not None and us.restored:
            dev.incoming = rec
            mark_incoming(self.kernel, rec)
            if self._restore_attach(dev, rec):
                return dev
        group.domain = self.blocked
        self._clear_context(dev)
        return dev

    def _restore_attach(self, dev: IommuDevice, rec: DeviceRecord) -> bool:
        """Restore the preserved domain and attach without touching the context entry."""
        k = self.kernel
        assert self.incoming is not None
        drec = self.incoming.domains.get(rec.ser.domain_phys)
        try:
            if drec is None or drec.ser.hdr.deleted:
                raise KernelError(errno.EINVAL, f"domain record {rec.ser.domain_phys:#x} "
                                  "missing or deleted")
            domain = self.restored_domains.get(drec.phys) or self._restore_domain(drec)
        except KernelError as exc:
            if k.policy("iommu.restore_failure") == "panic":
                k.panic(f"iommu: {dev.name}: failed to restore preserved domain ({exc})")
            k.warn("iommu", f"WARNING: {dev.name}: failed to restore preserved domain "
                   f"({exc}); using the default domain")
            dev.incoming = None
            return False
        did = rec.ser.attachment_id
        domain.dids[dev.unit.index] = did
        domain.devices.add(dev)
        dev.group.domain = domain
        dev.group.owner = PreservedOwner(dev.segment, dev.rid, did)
        dev.group.owner_cnt = 1
        dev.restored_from = rec
        dev.incoming = None  # consumed at attach
        ctx = self.hw.read_context_entry(dev.unit, dev.rid >> 8, dev.rid & 0xFF)
        if ctx is None or ctx.pgtable != domain.root or ctx.domain_id != did:
            k.warn("iommu", f"WARNING: {dev.name}: context entry {ctx} does not match the "
                   f"preserved attachment (root {domain.root:#x}, DID {did})")
        self._log("info", f"{dev.name}: restored preserved domain {domain.label} "
                  f"(root {domain.root:#x}, DID {did}); DMA owned by the preserved iommufd")
        return True

    def _restore_domain(self, drec: DomainRecord) -> IommuDomain:
        """Rebuild a paging domain from its preserved tables (Generic PT restore)."""
        k = self.kernel
        k.machine.faults.check(FP_RESTORE_DOMAIN, f"domain {drec.phys:#x}")
        levels = drec.ser.top_level + LEVEL_BASE
        if levels not in AW_LEVELS.values():
            raise KernelError(errno.EINVAL, f"top_level {drec.ser.top_level} unsupported")
        top = drec.ser.top_table_phys
        walker = PageTableWriter(k.machine.memory, self.alloc_table_page, levels=levels)
        from luosim.hw.iommu import PageTableError
        try:
            pages = walker.table_pages(top)
        except PageTableError as exc:
            raise KernelError(errno.EINVAL, str(exc)) from None
        for pa in pages:
            if k.kho.restore_folio(pa) is None:
                raise KernelError(errno.ENOMEM, f"page-table page {pa:#x} not preserved")
        domain = IommuDomain(self, "paging", f"restored@{drec.phys:#x}", root=top,
                             levels=levels, restored=True)
        self.restored_domains[drec.phys] = domain
        write_restored_domain(k, drec, domain.cookie)
        return domain

    # ----------------------------------------------------------------- lookup
    def device(self, pdev: PciDev) -> IommuDevice:
        dev = self.devices.get((pdev.domain, pdev.bdf))
        if dev is None or dev.pdev is not pdev:
            raise KernelError(errno.ENODEV, f"{pdev.name}: no IOMMU")
        return dev

    def device_by_name(self, bdf: str) -> IommuDevice:
        pdev = self.kernel.pci.find(bdf)
        if pdev is None:
            raise KernelError(errno.ENODEV, f"no PCI device {bdf}")
        return self.device(pdev)

    # ----------------------------------------------------------------- domains
    def alloc_paging_domain(self, label: str = "") -> IommuDomain:
        """``iommu_paging_domain_alloc()``: empty 4-level table (48-bit IOVA)."""
        return IommuDomain(self, "paging", label or f"domain{next(self._domains)}")

    def free_domain(self, domain: IommuDomain) -> None:
        """``iommu_domain_free()``: DIDs released; table pages freed unless preserved."""
        if domain.devices:
            raise KernelError(errno.EBUSY, f"{domain.label} still has devices attached")
        out = self.lu_out()
        if out is not None and out.domain_preserved(domain):
            raise KernelError(errno.EBUSY, f"{domain.label} is preserved")
        for ui, did in list(domain.dids.items()):
            self.units[ui].dids.free(did)
        domain.dids.clear()
        # a restored domain's tables were claimed with kho_restore_folio() at
        # restore, so they are this kernel's pages to free as well (phase 2
        # destroys the restored HWPT once its devices moved on)
        if domain.kind == "paging":
            for pa in domain.table_pages():
                self.kernel.mm.free_pages(pa)
            domain.writer = None
            domain.kind = "blocked"

    def _ctx_table(self, unit: VtdUnit, bus: int) -> int:
        ct = self.hw.read_root_entry(unit, bus)
        if ct is None:
            ct = self.alloc_table_page()
            self.kernel.machine.memory.zero(ct, PAGE_SIZE)
            self.hw.write_root_entry(unit, bus, ct)
        return ct

    def _clear_context(self, dev: IommuDevice) -> None:
        self.hw.clear_context_entry(dev.unit, dev.rid >> 8, dev.rid & 0xFF)

    def attach(self, dev: IommuDevice, domain: IommuDomain) -> None:
        """``iommu_attach_group()`` / VT-d ``domain_context_mapping()``.

        Allocates the domain's DID on the device's unit on first use and
        writes the context entry (RID -> page-table root, DID, 4-level AW).
        """
        cur = dev.group.domain
        if cur is domain:
            return
        if domain.kind == "blocked":
            self._detach(dev)
            dev.group.domain = self.blocked
            return
        us = self.unit_state(dev.unit)
        did = domain.dids.get(dev.unit.index)
        if did is None:
            did = us.dids.alloc()
            domain.dids[dev.unit.index] = did
        self._detach(dev)
        self._ctx_table(dev.unit, dev.rid >> 8)
        self.hw.write_context_entry(dev.unit, dev.rid >> 8, dev.rid & 0xFF, domain.root, did,
                                    aw=domain.aw)
        domain.devices.add(dev)
        dev.group.domain = domain

    def _detach(self, dev: IommuDevice) -> None:
        cur = dev.group.domain
        if cur is not None and cur.kind == "paging":
            cur.devices.discard(dev)
        self._clear_context(dev)

    # ----------------------------------------------------------------- DMA ownership
    def claim_dma_owner(self, dev: IommuDevice, owner: object) -> None:
        """``iommu_device_claim_dma_owner()`` as iommufd bind uses it.

        EBUSY: a DMA-API driver is bound, or another owner holds the group.
        EPERM: the group is owned by a preserved iommufd (restore token) -
        in phase 1 a new iommufd can never present it (pci.md §7.4.4).
        On success the group moves to the blocking domain.
        """
        g = dev.group
        if isinstance(g.owner, PreservedOwner):
            raise KernelError(errno.EPERM, f"{dev.name}: DMA owned by a preserved iommufd")
        if g.dma_api_bound:
            raise KernelError(errno.EBUSY, f"{dev.name}: a DMA-API driver is bound")
        if g.owner is not None and g.owner is not owner:
            raise KernelError(errno.EBUSY, f"{dev.name}: DMA already owned")
        g.owner = owner
        g.owner_cnt += 1
        if g.owner_cnt == 1:
            self.attach(dev, self.blocked)

    def adopt_preserved_owner(self, dev: IommuDevice, owner: object) -> None:
        """iommufd live update phase 2: the retrieved iommufd that preserved the
        device takes over its DMA ownership; the restored domain stays attached
        (no blocking step, so DMA keeps translating).  EINVAL when the group is
        not held by a preserved owner."""
        g = dev.group
        if not isinstance(g.owner, PreservedOwner):
            raise KernelError(errno.EINVAL, f"{dev.name}: not owned by a preserved iommufd")
        g.owner = owner
        g.owner_cnt = 1
        dev.restored_from = None
        self._put_incoming_if_unused()

    def release_dma_owner(self, dev: IommuDevice, owner: object) -> None:
        """``iommu_device_release_dma_owner()``: back to the blocking domain."""
        g = dev.group
        if g.owner is not owner or g.owner_cnt <= 0:
            self.kernel.warn("iommu", f"WARNING: {dev.name}: release by a non-owner")
            return
        g.owner_cnt -= 1
        if g.owner_cnt == 0:
            g.owner = None
            self.attach(dev, self.blocked)

    def bind_dma_api_driver(self, bdf: str) -> None:
        """A DMA-API driver probes the device (``iommu_device_use_default_domain``).

        EBUSY while the group's DMA is owned - in particular by a preserved
        token after kexec ("Device or resource busy", pci.md §7.4.4).
        Otherwise the default DMA domain is created and attached.
        """
        dev = self.device_by_name(bdf)
        g = dev.group
        if g.owner is not None:
            raise KernelError(errno.EBUSY, f"{dev.name}: DMA ownership is claimed")
        if g.dma_api_bound:
            raise KernelError(errno.EBUSY, f"{dev.name}: a driver is already bound")
        if g.default_domain is None:
            g.default_domain = self.alloc_paging_domain(f"dma:{dev.name}")
        self.attach(dev, g.default_domain)
        g.dma_api_bound = True

    def unbind_dma_api_driver(self, bdf: str) -> None:
        dev = self.device_by_name(bdf)
        g = dev.group
        if not g.dma_api_bound:
            return
        g.dma_api_bound = False
        self.attach(dev, self.blocked)

    # ----------------------------------------------------------------- live update
    def lu_out(self) -> IommuFlbOut | None:
        """The outgoing IOMMU FLB object (None when no iommufd file is preserved)."""
        try:
            obj: Any = self.kernel.liveupdate.flb_get_outgoing(self.flb)
        except KernelError:
            return None
        return obj if isinstance(obj, IommuFlbOut) else None

    def _need_out(self) -> IommuFlbOut:
        out = self.lu_out()
        if out is None:
            raise KernelError(errno.ENOENT, "no outgoing IOMMU FLB (no iommufd preserved)")
        return out

    def preserve_domain(self, domain: IommuDomain) -> int:
        """``iommu_domain_preserve()`` -> phys of the domain record."""
        return self._need_out().preserve_domain(domain)

    def unpreserve_domain(self, domain: IommuDomain) -> None:
        out = self.lu_out()
        if out is not None:
            out.unpreserve_domain(domain)

    def domain_preserved(self, domain: IommuDomain) -> bool:
        out = self.lu_out()
        return out is not None and out.domain_preserved(domain)

    def preserve_device(self, domain: IommuDomain, dev: IommuDevice, token: int) -> None:
        """``iommu_preserve_device(domain, dev, token)`` (§7.3)."""
        self._need_out().preserve_device(domain, dev, token)

    def unpreserve_device(self, dev: IommuDevice) -> None:
        out = self.lu_out()
        if out is not None:
            out.unpreserve_device(dev)

    def device_preserved(self, dev: IommuDevice) -> bool:
        out = self.lu_out()
        return out is not None and out.device_preserved(dev)

    # ----------------------------------------------------------------- shutdown
    def shutdown(self) -> None:
        """``intel_iommu_shutdown()`` at kexec (pci.md §7.3, §10 inv. 7)."""
        out = self.lu_out()
        for us in self.units:
            unit = us.unit
            keep = out.preserved_rids(unit) if out is not None else set()
            if not keep:
                if unit.translation_enabled:
                    self.hw.disable_translation(unit)
                continue
            if not unit.root_table_set:
                continue
            for bus, devfn, _e in list(self.hw.context_entries(unit)):
                if (bus << 8) | devfn not in keep:
                    self.hw.clear_context_entry(unit, bus, devfn)
            keep_buses = {rid >> 8 for rid in keep}
            for bus in range(NR_BUSES):
                if bus not in keep_buses and self.hw.read_root_entry(unit, bus) is not None:
                    self.hw.clear_root_entry(unit, bus)
            assert out is not None
            out.prune_unit(unit, keep_buses)
            self._log("info", f"DMAR unit {unit.reg_base:#x}: translation kept on for "
                      f"{len(keep)} preserved devices; other context entries cleared")

    # ----------------------------------------------------------------- introspection
    def context_rids(self, unit: VtdUnit) -> set[int]:
        """RequesterIDs with a present context entry on ``unit`` (for checks)."""
        return {(b << 8) | d for b, d, _e in self.hw.context_entries(unit)}
