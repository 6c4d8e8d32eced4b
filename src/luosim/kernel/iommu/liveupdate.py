"""The IOMMU live-update FLB: models drivers/iommu/liveupdate.c (IOMMU series).

One File-Lifecycle-Bound object, compatible ``kernel.profile.iommu_flb_compat``
(``"iommu-liveupdate"`` + ``IOMMU_LUO_FLB_VERSION`` 1; ``"iommu-liveupdate-v1"``
without the version word is accepted as well), linked to the **iommufd**
file handler (spec pci.md §7.1).  Its hand-over is, all in KHO-preserved
pages (pci.md §7.2, ``luosim.abi.iommu``):

* ``struct iommu_flb_ser``: the physical addresses of three array chains
  (and, for ``"iommu-liveupdate"``, a version word), all allocated at FLB
  preserve even when empty (``iommu_liveupdate_flb_preserve()``);
* the HW-unit array (``iommu_hw_ser`` with the VT-d union: DRHD register
  base as token, root table, bitmap of preserved context tables), the
  domain array (``iommu_domain_ser``: top table, level, VA size) and the
  device array (``iommu_device_ser``: (segment, RID), DID as
  ``attachment_id``, pointers to its domain and HW records).

Every record follows one whole version of include/linux/kho/abi/iommu.h,
picked by the FLB compatible (``luosim.abi.iommu.IOMMU_ABIS``):
``"iommu-liveupdate-v1"`` is samikhawaja/linux ef754267 (37-byte domains,
56-byte devices), ``"iommu-liveupdate"`` is pran005/linux 22fa8f30 (40-byte
domains, 72-byte devices with ``dma_owner_token``).

Objects are append-only; an unpreserved one keeps its slot with
``IOMMU_SER_FLAG_DELETED``.  Outgoing API (old kernel, called by iommufd
and vfio; pci.md §7.3): :meth:`IommuFlbOut.preserve_domain`
(``iommu_domain_preserve``), :meth:`IommuFlbOut.preserve_device`
(``iommu_preserve_device``) and their unpreserve counterparts.  The first
preserved device on a unit preserves the unit (root table and context
tables, refcounted by devices).  Page-table pages of a preserved domain
are KHO-preserved as they are (Generic Page Table preserve ops).

Incoming (new kernel): :meth:`IommuFlb.retrieve` restores every array page
(failure is ``BUG()``: translations were left on, so memory mapped into
preserved domains may already be written, ``iommu_liveupdate_restore_array``)
and decodes the records into an :class:`IommuFlbIn` built from memory only.
A version mismatch or a missing array makes retrieve fail with EINVAL; the
VT-d init panics on that (pci.md §7.4.5, implemented in
``luosim.kernel.iommu.core``).

Fault points: ``iommu.flb.retrieve`` (ENOMEM: the retrieve allocation
fails; EINVAL: bad data; ``corrupt:version``: the version word in memory
is corrupted before decoding), ``iommu.restore_domain`` (ENOMEM, checked by
the core when it rebuilds a preserved domain).
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from luosim.abi.errors import DecodeError
from luosim.abi.iommu import (
    IOMMU_INTEL,
    IOMMU_SER_FLAG_DELETED,
    IOMMU_SER_FLAG_INCOMING,
    VTD_CONTEXT_BITMAP_WORDS,
    IommuDeviceSer,
    IommuDeviceSerPran,
    IommuDomainSer,
    IommuDomainSerPran,
    IommuFlbSer,
    IommuFlbSerV1,
    IommuHdrSer,
    IommuHwSer,
    decode_array_page,
    encode_array_page,
    iommu_abi,
    objs_per_page,
    walk_arrays,
)
from luosim.abi.iommu import PAGE_SIZE as ABI_PAGE_SIZE
from luosim.errors import KernelBug, KernelError
from luosim.faults import point
from luosim.faults.mutator import corrupt_iommu_version
from luosim.hw.memory import PAGE_SIZE
from luosim.kernel.liveupdate.flb import Flb, FlbOpArgs

if TYPE_CHECKING:
    from luosim.hw.iommu import VtdUnit
    from luosim.kernel.iommu.core import IommuDevice, IommuDomain
    from luosim.kernel.kernel import Kernel

assert ABI_PAGE_SIZE == PAGE_SIZE

FP_FLB_RETRIEVE = point(
    "iommu.flb.retrieve", ("ENOMEM", "EINVAL", "corrupt:version"),
    "iommu_liveupdate_flb_retrieve(): allocation fails (ENOMEM), the data is rejected "
    "(EINVAL), or the iommu_flb_ser version word is corrupted in memory; the VT-d init "
    "panics on any of them (pci.md §7.4.5)")
FP_RESTORE_DOMAIN = point(
    "iommu.restore_domain", ("ENOMEM",),
    "restoring a preserved domain from its page tables fails at device probe: WARN and "
    "fall back to the default domain (IOMMU v1 behaviour, pci.md §7.4.3, UNCONFIRMED later)")

#: Generic Page Table numbers levels from 0 (the leaf tables): a 4-level
#: VT-d table has ``top_level`` 3.  UNCONFIRMED against generic_pt sources.
LEVEL_BASE = 1


def kernel_bug(kernel: Kernel, message: str) -> NoReturn:
    """``BUG()``: the kernel stops; modelled as :class:`KernelBug` (a panic)."""
    kernel.alive = False
    kernel.panic_message = f"BUG: {message}"
    kernel.printk("emerg", "panic", f"kernel BUG: {message}")
    raise KernelBug(message, kernel)


# ----------------------------------------------------------------------------- arrays
class _ArrayChain:
    """One outgoing array (``iommu_*_array_ser`` chain): KHO pages + object bytes."""

    def __init__(self, kernel: Kernel, obj_size: int, what: str) -> None:
        self.kernel = kernel
        self.obj_size = obj_size
        self.what = what
        self.cap = objs_per_page(obj_size)
        self.pages: list[int] = []
        self.objs: list[bytes] = []

    @property
    def head(self) -> int:
        return self.pages[0] if self.pages else 0

    def grow(self) -> None:
        """Add one KHO-preserved page (``kho_alloc_preserve(PAGE_SIZE)``)."""
        pa = self.kernel.kho.alloc_preserve(PAGE_SIZE)
        if self.pages:
            self.pages.append(pa)
            self._write_page(len(self.pages) - 2)  # relink the previous tail
        else:
            self.pages.append(pa)
        self._write_page(len(self.pages) - 1)

    def _write_page(self, n: int) -> None:
        objs = self.objs[n * self.cap:(n + 1) * self.cap]
        nxt = self.pages[n + 1] if n + 1 < len(self.pages) else 0
        self.kernel.machine.memory.write(self.pages[n],
                                         encode_array_page(objs, self.obj_size, nxt))

    def phys_of(self, index: int) -> int:
        """Physical address of object ``index`` (header is 16 bytes)."""
        page, slot = divmod(index, self.cap)
        return self.pages[page] + 16 + slot * self.obj_size

    def add(self, raw: bytes) -> int:
        if len(self.objs) == len(self.pages) * self.cap:
            self.grow()
        self.objs.append(raw)
        index = len(self.objs) - 1
        self._write_page(index // self.cap)
        return index

    def set(self, index: int, raw: bytes) -> None:
        self.objs[index] = raw
        self._write_page(index // self.cap)

    def free(self) -> None:
        for pa in self.pages:
            self.kernel.kho.unpreserve_free(pa)
        self.pages.clear()
        self.objs.clear()


# ----------------------------------------------------------------------------- outgoing
@dataclass(eq=False)
class _HwEntry:
    index: int
    unit: VtdUnit
    root: int
    ctx_tables: dict[int, int] = field(default_factory=dict)  # bus -> page (preserved)
    refcount: int = 0


@dataclass(eq=False)
class _DomEntry:
    index: int
    domain: IommuDomain
    pages: list[int]
    devices: int = 0


@dataclass(eq=False)
class _DevEntry:
    index: int
    dev: IommuDevice
    domain: IommuDomain
    hw: _HwEntry
    token: int


class IommuFlbOut:
    """The outgoing FLB object (``struct iommu_flb_obj``): live in the old kernel only."""

    def __init__(self, flb: IommuFlb) -> None:
        self.flb = flb
        self.kernel = flb.kernel
        self.ser_pa = 0
        self.abi = flb.abi
        self.hw = _ArrayChain(self.kernel, self.abi.hw.SIZE, "iommu hw array")
        self.domains = _ArrayChain(self.kernel, self.abi.domain.SIZE, "iommu domain array")
        self.devices = _ArrayChain(self.kernel, self.abi.device.SIZE, "iommu device array")
        self.hw_by_token: dict[int, _HwEntry] = {}
        self.dom_entries: dict[IommuDomain, _DomEntry] = {}
        self.dev_entries: dict[tuple[int, int], _DevEntry] = {}

    # -- setup / teardown --
    def setup(self) -> None:
        """``iommu_liveupdate_flb_preserve()``: ser + three one-page arrays."""
        kho = self.kernel.kho
        try:
            self.ser_pa = kho.alloc_preserve(self.abi.flb.SIZE)
            self.domains.grow()
            self.devices.grow()
            self.hw.grow()
        except KernelError:
            self.teardown()
            raise
        self._write_ser()

    def _write_ser(self) -> None:
        if self.abi.version is None:
            raw = IommuFlbSerV1(self.hw.head, self.domains.head, self.devices.head).encode()
        else:
            raw = IommuFlbSer(self.abi.version, self.hw.head, self.domains.head,
                              self.devices.head).encode()
        self.kernel.machine.memory.write(self.ser_pa, raw)

    def teardown(self) -> None:
        """``iommu_liveupdate_flb_free()``: arrays and ser unpreserved and freed."""
        for dev in list(self.dev_entries.values()):
            self.kernel.warn("iommu", f"WARNING: FLB freed with {dev.dev.name} preserved")
            self.unpreserve_device(dev.dev)
        for dom in list(self.dom_entries.values()):
            self.unpreserve_domain(dom.domain)
        self.domains.free()
        self.devices.free()
        self.hw.free()
        if self.ser_pa:
            self.kernel.kho.unpreserve_free(self.ser_pa)
            self.ser_pa = 0

    # -- domains (iommu_domain_preserve / iommu_domain_unpreserve) --
    def domain_preserved(self, domain: IommuDomain) -> bool:
        return domain in self.dom_entries

    def domain_ser_phys(self, domain: IommuDomain) -> int:
        return self.domains.phys_of(self.dom_entries[domain].index)

    def preserve_domain(self, domain: IommuDomain) -> int:
        """``iommu_domain_preserve()`` -> phys of its ``iommu_domain_ser``.

        EOPNOTSUPP: not a paging (generic-PT) domain; EBUSY: already
        preserved; a KHO error while preserving the page-table pages is
        returned after the object is marked deleted (pci.md §7.3).
        """
        if domain.kind != "paging":
            raise KernelError(errno.EOPNOTSUPP, f"{domain!r} has no preserve ops")
        if domain in self.dom_entries:
            raise KernelError(errno.EBUSY, f"{domain!r} is already preserved")
        pages = domain.table_pages()
        dom_ser = self.abi.domain
        rec = dom_ser(IommuHdrSer(1, 0), domain.root, domain.levels - LEVEL_BASE,
                      domain.vasz, False, 0)
        index = self.domains.add(rec.encode())
        kho = self.kernel.kho
        done: list[int] = []
        try:
            for pa in pages:
                kho.preserve_pages(pa, 1)
                done.append(pa)
        except KernelError:
            for pa in done:
                kho.unpreserve_pages(pa, 1)
            self.domains.set(index, dom_ser(
                IommuHdrSer(0, IOMMU_SER_FLAG_DELETED), rec.top_table_phys, rec.top_level,
                rec.vasz).encode())
            raise
        self.dom_entries[domain] = _DomEntry(index, domain, pages)
        self.kernel.printk("info", "iommu", f"liveupdate: preserved domain {domain.label} "
                           f"({len(pages)} table pages, root {domain.root:#x})")
        return self.domains.phys_of(index)

    def unpreserve_domain(self, domain: IommuDomain) -> None:
        """``iommu_domain_unpreserve()``: pages unpreserved, record marked deleted."""
        ent = self.dom_entries.pop(domain, None)
        if ent is None:
            self.kernel.warn("iommu", f"WARNING: unpreserving {domain!r} that is not preserved")
            return
        if ent.devices:
            self.kernel.warn("iommu", f"WARNING: {domain.label} unpreserved while "
                             f"{ent.devices} preserved devices use it")
        for pa in ent.pages:
            self.kernel.kho.unpreserve_pages(pa, 1)
        old = self.abi.domain.decode(ent_bytes(self.domains, ent.index))
        self.domains.set(ent.index, self.abi.domain(
            IommuHdrSer(0, old.hdr.flags | IOMMU_SER_FLAG_DELETED), old.top_table_phys,
            old.top_level, old.vasz, old.sign_extend).encode())

    # -- HW units --
    def _hw_record(self, ent: _HwEntry, deleted: bool = False) -> bytes:
        words = [0] * VTD_CONTEXT_BITMAP_WORDS
        for bus in ent.ctx_tables:
            words[bus // 64] |= 1 << (bus % 64)
        hdr = IommuHdrSer(ent.refcount, IOMMU_SER_FLAG_DELETED if deleted else 0)
        return IommuHwSer(hdr, ent.unit.reg_base, IOMMU_INTEL, 0, ent.unit.reg_base,
                          ent.root, tuple(words)).encode()

    def _preserve_unit(self, unit: VtdUnit) -> _HwEntry:
        """First device on a unit: preserve root table and every present context table."""
        ent = self.hw_by_token.get(unit.reg_base)
        if ent is not None:
            return ent
        hwio = self.kernel.machine.iommu
        kho = self.kernel.kho
        root = unit.rtaddr
        kho.preserve_pages(root, 1)
        ent = _HwEntry(-1, unit, root)
        try:
            for bus, ct in hwio.context_tables(unit).items():
                kho.preserve_pages(ct, 1)
                ent.ctx_tables[bus] = ct
        except KernelError:
            for ct in ent.ctx_tables.values():
                kho.unpreserve_pages(ct, 1)
            kho.unpreserve_pages(root, 1)
            raise
        ent.index = self.hw.add(self._hw_record(ent))
        self.hw_by_token[unit.reg_base] = ent
        self.kernel.printk("info", "iommu", f"liveupdate: preserved DMAR unit "
                           f"{unit.reg_base:#x} (root table {root:#x}, "
                           f"{len(ent.ctx_tables)} context tables)")
        return ent

    def _unpreserve_unit(self, ent: _HwEntry) -> None:
        kho = self.kernel.kho
        for ct in ent.ctx_tables.values():
            kho.unpreserve_pages(ct, 1)
        kho.unpreserve_pages(ent.root, 1)
        self.hw.set(ent.index, self._hw_record(ent, deleted=True))
        del self.hw_by_token[ent.unit.reg_base]

    def _ensure_ctx_table(self, ent: _HwEntry, bus: int) -> None:
        """A context table created after the unit was preserved is preserved too."""
        if bus in ent.ctx_tables:
            return
        ct = self.kernel.machine.iommu.read_root_entry(ent.unit, bus)
        if ct is None:
            return
        self.kernel.kho.preserve_pages(ct, 1)
        ent.ctx_tables[bus] = ct
        self.hw.set(ent.index, self._hw_record(ent))

    def prune_unit(self, unit: VtdUnit, keep_buses: Iterable[int]) -> None:
        """Shutdown (pci.md §7.3): drop context tables whose root entry was cleared."""
        ent = self.hw_by_token.get(unit.reg_base)
        if ent is None:
            return
        keep = set(keep_buses)
        for bus in [b for b in ent.ctx_tables if b not in keep]:
            self.kernel.kho.unpreserve_pages(ent.ctx_tables.pop(bus), 1)
        self.hw.set(ent.index, self._hw_record(ent))

    def unit_preserved(self, unit: VtdUnit) -> bool:
        return unit.reg_base in self.hw_by_token

    def preserved_rids(self, unit: VtdUnit) -> set[int]:
        """RequesterIDs (bus << 8 | devfn) of the devices preserved on ``unit``."""
        return {rid for (_seg, rid), d in self.dev_entries.items() if d.hw.unit is unit}

    # -- devices (iommu_preserve_device / iommu_unpreserve_device) --
    def device_preserved(self, dev: IommuDevice) -> bool:
        return (dev.segment, dev.rid) in self.dev_entries

    def preserve_device(self, domain: IommuDomain, dev: IommuDevice, token: int) -> None:
        """``iommu_preserve_device(domain, dev, token)`` (pci.md §7.3).

        EOPNOTSUPP: not a PCI device; EINVAL: group DMA ownership not
        claimed, or ``domain`` not preserved; EBUSY: device already
        preserved; EOPNOTSUPP: group not a singleton.  The first device of
        a unit preserves the unit; each device holds one unit reference.
        """
        if dev.pdev is None:
            raise KernelError(errno.EOPNOTSUPP, "only PCI devices can be preserved")
        if dev.group.owner is None:
            raise KernelError(errno.EINVAL, f"{dev.name}: DMA ownership not claimed")
        dom = self.dom_entries.get(domain)
        if dom is None:
            raise KernelError(errno.EINVAL, f"{dev.name}: {domain.label} is not preserved")
        key = (dev.segment, dev.rid)
        if key in self.dev_entries:
            raise KernelError(errno.EBUSY, f"{dev.name} is already preserved")
        did = domain.dids.get(dev.unit.index)
        if did is None or dev.group.domain is not domain:
            raise KernelError(errno.EINVAL, f"{dev.name} is not attached to {domain.label}")
        if len(dev.group.devices) != 1:
            raise KernelError(errno.EOPNOTSUPP, f"{dev.name}: group is not a singleton")
        hw = self._preserve_unit(dev.unit)
        try:
            self._ensure_ctx_table(hw, dev.rid >> 8)
        except KernelError:
            if hw.refcount == 0:
                self._unpreserve_unit(hw)
            raise
        hw.refcount += 1
        self.hw.set(hw.index, self._hw_record(hw))
        hdr1 = IommuHdrSer(1, 0)
        dom_pa, hw_pa = self.domains.phys_of(dom.index), self.hw.phys_of(hw.index)
        rec: IommuDeviceSer | IommuDeviceSerPran
        if self.abi.device is IommuDeviceSerPran:  # 22fa8f30 records the DMA owner
            rec = IommuDeviceSerPran(hdr1, dev.rid, dev.segment, did, dom_pa, hw_pa,
                                     dma_owner_token=token)
        else:
            rec = IommuDeviceSer(hdr1, dev.rid, dev.segment, did, dom_pa, hw_pa)
        index = self.devices.add(rec.encode())
        self.dev_entries[key] = _DevEntry(index, dev, domain, hw, token)
        dom.devices += 1
        self.kernel.printk("info", "iommu", f"liveupdate: preserved {dev.name} "
                           f"(DID {did}, owner token {token:#x})")

    def unpreserve_device(self, dev: IommuDevice) -> None:
        """``iommu_unpreserve_device()``: record deleted, unit reference dropped."""
        ent = self.dev_entries.pop((dev.segment, dev.rid), None)
        if ent is None:
            self.kernel.warn("iommu", f"WARNING: {dev.name} is not preserved")
            return
        old = self.abi.device.decode(ent_bytes(self.devices, ent.index))
        self.devices.set(ent.index, dataclasses.replace(
            old, hdr=IommuHdrSer(0, IOMMU_SER_FLAG_DELETED)).encode())
        dom = self.dom_entries.get(ent.domain)
        if dom is not None:
            dom.devices -= 1
        ent.hw.refcount -= 1
        if ent.hw.refcount == 0:
            self._unpreserve_unit(ent.hw)
        else:
            self.hw.set(ent.hw.index, self._hw_record(ent.hw))


def ent_bytes(chain: _ArrayChain, index: int) -> bytes:
    return chain.objs[index]


# ----------------------------------------------------------------------------- incoming
@dataclass(frozen=True)
class HwRecord:
    phys: int
    ser: IommuHwSer

    def context_buses(self) -> list[int]:
        return [b for b in range(256) if self.ser.context_table_preserved(b)]


@dataclass(frozen=True)
class DomainRecord:
    phys: int
    ser: IommuDomainSer | IommuDomainSerPran


@dataclass(frozen=True)
class DeviceRecord:
    phys: int
    ser: IommuDeviceSer | IommuDeviceSerPran

    @property
    def key(self) -> tuple[int, int]:
        return self.ser.pci_domain_nr, self.ser.devid


@dataclass
class IommuFlbIn:
    """The incoming FLB object: records decoded from physical memory only."""

    ser_pa: int
    pages: list[int]
    hw: list[HwRecord]
    domains: dict[int, DomainRecord]
    devices: list[DeviceRecord]

    def hw_for(self, token: int, type_: int = IOMMU_INTEL) -> HwRecord | None:
        for r in self.hw:
            if r.ser.token == token and r.ser.type == type_ and not r.ser.hdr.deleted:
                return r
        return None

    def devices_on(self, hw: HwRecord) -> list[DeviceRecord]:
        return [d for d in self.devices if not d.ser.hdr.deleted and d.ser.iommu_phys == hw.phys]

    def device(self, segment: int, rid: int) -> DeviceRecord | None:
        for d in self.devices:
            if not d.ser.hdr.deleted and d.key == (segment, rid):
                return d
        return None


# ----------------------------------------------------------------------------- the FLB
class IommuFlb(Flb):
    """``iommu_flb``: the FLB object of one kernel (ops per drivers/iommu/liveupdate.c)."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel.profile.iommu_flb_compat)
        self.kernel = kernel
        self.abi = iommu_abi(self.compatible)

    # -- outgoing --
    def preserve(self, args: FlbOpArgs) -> None:
        """``iommu_liveupdate_flb_preserve()``: first iommufd file preserved."""
        obj = IommuFlbOut(self)
        obj.setup()
        args.obj = obj
        args.data = obj.ser_pa

    def unpreserve(self, args: FlbOpArgs) -> None:
        """``iommu_liveupdate_flb_unpreserve()``: last iommufd file unpreserved."""
        obj = args.obj
        if isinstance(obj, IommuFlbOut):
            obj.teardown()

    # -- incoming --
    def retrieve(self, args: FlbOpArgs) -> None:
        """``iommu_liveupdate_flb_retrieve()``: restore the ser and every array page.

        ENOMEM before anything is claimed; the ser page or an array page
        that cannot be restored is ``BUG()``; version mismatch, a missing
        array or an undecodable chain is EINVAL (the caller panics).
        """
        k = self.kernel
        mem = k.machine.memory
        effect = k.machine.faults.check(FP_FLB_RETRIEVE, self.compatible)
        pa = args.data
        if k.kho.restore_folio(pa) is None:
            kernel_bug(k, f"iommu: liveupdate: FLB data {pa:#x} was not preserved")
        abi = self.abi
        v1 = abi.version is None
        if effect == "corrupt:version" and not v1:
            corrupt_iommu_version(mem, pa)
        try:
            if v1:
                s1 = IommuFlbSerV1.decode(mem.read(pa, IommuFlbSerV1.SIZE))
                heads = (s1.iommu_array_phys, s1.iommu_domain_array_phys, s1.device_array_phys)
            else:
                ser = IommuFlbSer.decode(mem.read(pa, IommuFlbSer.SIZE))
                if ser.version != abi.version:
                    raise KernelError(errno.EINVAL, f"iommu_flb_ser version {ser.version}, "
                                      f"expected {abi.version}")
                heads = (ser.iommu_array_phys, ser.iommu_domain_array_phys,
                         ser.device_array_phys)
        except DecodeError as exc:
            raise KernelError(errno.EINVAL, str(exc)) from None
        if not all(heads):
            raise KernelError(errno.EINVAL, f"iommu_flb_ser has a missing array {heads}")
        pages: list[int] = []

        def reader(p: int) -> bytes:
            if k.kho.restore_folio(p) is None:
                kernel_bug(k, f"iommu: liveupdate: array page {p:#x} was not preserved")
            pages.append(p)
            return mem.read(p, PAGE_SIZE)

        try:
            raw_hw = self._walk(reader, heads[0], IommuHwSer.SIZE, "iommu hw array")
            raw_dom = self._walk(reader, heads[1], abi.domain.SIZE, "iommu domain array")
            raw_dev = self._walk(reader, heads[2], abi.device.SIZE, "iommu device array")
            hw = [HwRecord(p, IommuHwSer.decode(b)) for p, b in raw_hw]
            dom = {p: DomainRecord(p, _dom_ser(abi.domain.decode(b))) for p, b in raw_dom}
            dev = [DeviceRecord(p, _dev_ser(abi.device.decode(b))) for p, b in raw_dev]
        except DecodeError as exc:
            raise KernelError(errno.EINVAL, str(exc)) from None
        args.obj = IommuFlbIn(pa, pages, hw, dom, dev)
        k.printk("info", "iommu", f"liveupdate: retrieved {len(hw)} units, {len(dom)} "
                 f"domains, {len(dev)} devices")

    @staticmethod
    def _walk(reader: Callable[[int], bytes], head: int, size: int,
              what: str) -> list[tuple[int, bytes]]:
        """Every object of a chain with its physical address (deleted ones included)."""
        seen: list[tuple[int, bytes]] = []

        def rd(p: int) -> bytes:
            page = reader(p)
            seen.append((p, page))
            return page

        walk_arrays(rd, head, size, what)
        out: list[tuple[int, bytes]] = []
        for pa, page in seen:
            _nxt, objs = decode_array_page(page, size, what, base=pa)
            out.extend((pa + 16 + j * size, o) for j, o in enumerate(objs))
        return out

    def finish(self, args: FlbOpArgs) -> None:
        """``iommu_liveupdate_flb_finish()``: array pages and ser freed."""
        obj = args.obj
        if not isinstance(obj, IommuFlbIn):
            return
        mm = self.kernel.mm
        for pa in obj.pages:
            mm.free_pages(pa)
        mm.free_pages(obj.ser_pa)


def _dom_ser(ser: object) -> IommuDomainSer | IommuDomainSerPran:
    assert isinstance(ser, IommuDomainSer | IommuDomainSerPran)
    return ser


def _dev_ser(ser: object) -> IommuDeviceSer | IommuDeviceSerPran:
    assert isinstance(ser, IommuDeviceSer | IommuDeviceSerPran)  # the VT-d layouts only
    return ser


def mark_incoming(kernel: Kernel, rec: DeviceRecord) -> None:
    """Set ``IOMMU_SER_FLAG_INCOMING`` in a device record (probe matched it)."""
    mem = kernel.machine.memory
    hdr = IommuHdrSer.decode(mem.read(rec.phys, IommuHdrSer.SIZE))
    mem.write(rec.phys, IommuHdrSer(hdr.ref_count, hdr.flags | IOMMU_SER_FLAG_INCOMING).encode())


def write_restored_domain(kernel: Kernel, rec: DomainRecord, cookie: int) -> None:
    """Fill the ``restored_domain`` pointer slot (meaningful in this kernel only)."""
    off = type(rec.ser).OFFSETS["restored_domain"]  # 29 (ef754267) or 32 (22fa8f30)
    kernel.machine.memory.write_u64(rec.phys + off, cookie & ((1 << 64) - 1))


def mark_hw_restored(kernel: Kernel, rec: HwRecord) -> None:
    """Set ``intel.restored`` of a HW record once the unit adopted its tables."""
    kernel.machine.memory.write(rec.phys + IommuHwSer.OFFSETS["intel.restored"], b"\x01")


__all__ = ["FP_FLB_RETRIEVE", "FP_RESTORE_DOMAIN", "DeviceRecord", "DomainRecord", "HwRecord",
           "IommuFlb", "IommuFlbIn", "IommuFlbOut", "kernel_bug"]
