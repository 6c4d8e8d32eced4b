"""iommufd and its live-update file handler (drivers/iommu/iommufd/{main,device,liveupdate}.c).

:class:`Iommufd` is the module (``kernel.iommufd_mod``): ``init()`` registers
the LUO file handler ``"iommufd-v1"`` and links the IOMMU FLB to it
(``iommufd_liveupdate_register``, pci.md §7.1); ``open()`` is
``open("/dev/iommu")`` and returns an :class:`IommufdFile` (one
``iommufd_ctx``) with the ioctls the VMM uses: IOAS allocation, mapping a
memfd range (``IOMMU_IOAS_MAP_FILE``: the folios are pinned and mapped into
every HWPT of the IOAS), paging HWPT allocation and
``IOMMU_HWPT_LU_SET_PRESERVE`` (:meth:`IommufdFile.hwpt_set_preserve`,
EADDRINUSE for a token already used by another marked HWPT).

vfio uses the device side: :meth:`IommufdFile.bind_device` (claims DMA
ownership; EPERM for a device still owned by a preserved iommufd after
kexec, pci.md §7.4.4), :meth:`attach_device`, and
:meth:`device_preserve` (``iommufd_device_preserve()``: no RID attachment
-> ENOENT; attached HWPT not paging or not marked -> EINVAL; the iommufd
not preserved in LUO -> ENOENT from ``liveupdate_get_token_outgoing``;
then ``iommu_preserve_device()``).

Live-update handler (samikhawaja/linux drivers/iommu/iommufd/liveupdate.c,
the version with ``check_iopt_pages_preserved()``; spec pci.md §7.3, §11):

* ``preserve``: ``kho_alloc_preserve`` of ``struct iommufd_ser`` then, per
  marked HWPT: a HWPT without a domain is EINVAL; every area of its IOAS
  must be a file mapping whose file is already preserved in LUO -
  ``liveupdate_get_token_outgoing()`` returns **ENOENT** ("the file is not
  preserved in this session", include/linux/liveupdate.h and
  kernel/liveupdate/luo_file.c of that tree) - then
  ``iommu_domain_preserve()``.  Hence memfd before iommufd, iommufd before
  the vfio cdev.
* ``retrieve``: phase 1 (profiles v6, v7: ``Profile.iommufd_lu``) returns
  **EOPNOTSUPP** (the iommufd cannot be retrieved) and ``can_finish`` is
  always false.

Phase 2 (profile v9; samikhawaja/linux 039a26321a59d6f6b6d7276644538a8a4ace4941
drivers/iommu/iommufd/liveupdate.c, selftests iommufd_liveupdate.c at
96e9fd428c8824dfd747a500c7b8a694ab9a67f9 and iommufd_liveupdate_duo.c at
6f0175807b28595ce528b31b46889f5d8b8f4a7f):

* ``retrieve`` restores the ``iommufd_ser`` folio (EFAULT if it cannot be
  restored) and returns a new iommufd whose ``lu`` holds the records;
* binding a device whose DMA is owned by the preserved iommufd to that
  retrieved iommufd takes the ownership over with the restored domain
  still attached (a fresh iommufd is still refused with EPERM);
* ``IOMMU_HWPT_LU_RESTORE`` (:meth:`IommufdFile.hwpt_lu_restore`): ENOTTY on
  an iommufd that was not retrieved, ENOENT for an unknown or reclaimed
  token or a domain the IOMMU did not restore, ENODEV while a device
  attached to the domain is not bound to this iommufd (duo selftest); it
  wraps the restored domain in a new HWPT and marks the record reclaimed;
* ``can_finish``: every record reclaimed and no restored HWPT has an
  attachment left (devices moved to new HWPTs); ``finish`` frees the folio.

The memfd (and, for the cdev, the iommufd) is looked up **in the same
session** (``args.file_set``, the kernel's ``args->session``), and the memfd
must be sealed against resizing (F_SEAL_SEAL|GROW|SHRINK, else EINVAL), as
``check_iopt_pages_preserved()`` requires.  Mapping changes on an IOAS
whose HWPT is preserved are refused with EBUSY (the series makes the IOAS
immutable; errno UNCONFIRMED).

``struct iommufd_ser`` (include/linux/kho/abi/iommufd.h, packed):
``u64 nr_hwpts`` then ``nr_hwpts`` x ``{u64 domain_data; u64 token;
u8 reclaimed; u8 padding[7]}`` (24 B); encoded here because ``abi/`` has no
codec for it yet.
"""

from __future__ import annotations

import errno
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from luosim.abi.iommu import IOMMUFD_LUO_FH_COMPATIBLE
from luosim.abi.memfd import F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK
from luosim.errors import KernelError
from luosim.hw.memory import PAGE_SHIFT, PAGE_SIZE
from luosim.kernel.liveupdate.file import FileHandler, FileOpArgs
from luosim.kernel.vfs import File, check_alive

if TYPE_CHECKING:
    from luosim.kernel.iommu.core import IommuDevice, IommuDomain
    from luosim.kernel.kernel import Kernel
    from luosim.kernel.pci.probe import PciDev

IOMMUFD_SER_HDR = struct.Struct("<Q")  # nr_hwpts
IOMMUFD_HWPT_SER = struct.Struct("<QQB7x")  # domain_data, token, reclaimed, padding
assert IOMMUFD_HWPT_SER.size == 24


def encode_iommufd_ser(hwpts: list[tuple[int, int]]) -> bytes:
    """``struct iommufd_ser`` for ``[(domain_data, token)]`` (reclaimed = 0)."""
    return IOMMUFD_SER_HDR.pack(len(hwpts)) + b"".join(
        IOMMUFD_HWPT_SER.pack(d, t, 0) for d, t in hwpts)


def decode_iommufd_ser(buf: bytes) -> list[tuple[int, int, int]]:
    """``[(domain_data, token, reclaimed)]`` of a ``struct iommufd_ser``."""
    (n,) = IOMMUFD_SER_HDR.unpack_from(buf, 0)
    return [IOMMUFD_HWPT_SER.unpack_from(buf, 8 + 24 * i) for i in range(n)]


class MemfdLike(Protocol):
    """What IOAS_MAP_FILE needs from a memfd (``luosim.kernel.mm.memfd.MemfdFile``)."""

    size: int
    name: str

    def populate(self) -> int: ...

    def folio_list(self) -> list[tuple[int, int, int]]: ...

    def get(self) -> File: ...

    def put(self) -> None: ...


@dataclass(eq=False)
class IoasArea:
    """``struct iopt_area`` of a file mapping: pinned folio runs (iova, pa, size)."""

    iova: int
    length: int
    file: MemfdLike
    offset: int
    runs: list[tuple[int, int, int]]


@dataclass(eq=False)
class Ioas:
    """``struct iommufd_ioas``."""

    id: int
    areas: list[IoasArea] = field(default_factory=list)
    hwpts: list[Hwpt] = field(default_factory=list)


@dataclass(eq=False)
class Hwpt:
    """``struct iommufd_hwpt_paging`` with its live-update mark."""

    id: int
    ioas: Ioas
    domain: IommuDomain
    lu_preserve: bool = False
    lu_token: int = 0
    lu_restored: bool = False  # made by IOMMU_HWPT_LU_RESTORE (phase 2)


@dataclass
class LuHwptRecord:
    """One ``iommufd_hwpt_lu`` of a retrieved iommufd (``ictx->lu``)."""

    index: int
    domain_data: int
    token: int
    reclaimed: bool


@dataclass(eq=False)
class IommufdDevice:
    """``struct iommufd_device`` (idev): a bound device and its RID attachment."""

    id: int
    pdev: PciDev
    dev: IommuDevice
    hwpt: Hwpt | None = None
    preserved: bool = False


_REQUIRED_SEALS = F_SEAL_SEAL | F_SEAL_GROW | F_SEAL_SHRINK


class IommufdFile(File):
    """An open ``/dev/iommu`` (``struct iommufd_ctx``)."""

    def __init__(self, mod: Iommufd, *, install_fd: bool = True) -> None:
        super().__init__(mod.kernel, f"iommufd#{next(mod.ids)}", install_fd=install_fd)
        self.mod = mod
        self._ids = itertools.count(1)
        self.ioas: dict[int, Ioas] = {}
        self.hwpts: dict[int, Hwpt] = {}
        self.idevs: dict[int, IommufdDevice] = {}
        self.lu_preserved = False  # preserved in LUO (HWPTs immutable)
        self.lu: list[LuHwptRecord] | None = None  # retrieved (phase 2): ictx->lu
        self.retrieved = False  # made by the LUO retrieve (phase 2)
        self.lu_ser_pa = 0

    # -- helpers --
    def _check(self) -> None:
        self.check_open()

    def _ioas(self, ioas_id: int) -> Ioas:
        ioas = self.ioas.get(ioas_id)
        if ioas is None:
            raise KernelError(errno.ENOENT, f"{self.name}: no IOAS {ioas_id}")
        return ioas

    def _hwpt(self, hwpt_id: int) -> Hwpt:
        hwpt = self.hwpts.get(hwpt_id)
        if hwpt is None:
            raise KernelError(errno.ENOENT, f"{self.name}: no HWPT {hwpt_id}")
        return hwpt

    def _idev(self, dev_id: int) -> IommufdDevice:
        idev = self.idevs.get(dev_id)
        if idev is None:
            raise KernelError(errno.ENOENT, f"{self.name}: no device {dev_id}")
        return idev

    def _immutable(self, ioas: Ioas) -> bool:
        iommu = self.kernel.iommu
        return any(iommu.domain_preserved(h.domain) for h in ioas.hwpts)

    # -- IOAS --
    def ioas_alloc(self) -> int:
        """``IOMMU_IOAS_ALLOC`` -> ioas_id."""
        self._check()
        ioas = Ioas(next(self._ids))
        self.ioas[ioas.id] = ioas
        return ioas.id

    def ioas_map_file(self, ioas_id: int, memfd: MemfdLike, offset: int, length: int,
                      iova: int) -> None:
        """``IOMMU_IOAS_MAP_FILE``: pin ``memfd[offset, offset+length)`` at ``iova``.

        EINVAL: unaligned or beyond the file; ENOENT: no such IOAS; EEXIST:
        the IOVA range is in use; EBUSY: a HWPT of the IOAS is preserved.
        The folios are pinned (allocated) and mapped into every HWPT.
        """
        self._check()
        ioas = self._ioas(ioas_id)
        if (length <= 0 or (offset | length | iova) & (PAGE_SIZE - 1) or offset < 0
                or iova < 0 or offset + length > memfd.size):
            raise KernelError(errno.EINVAL, f"bad file mapping {offset:#x}+{length:#x} "
                              f"at iova {iova:#x}")
        for a in ioas.areas:
            if iova < a.iova + a.length and a.iova < iova + length:
                raise KernelError(errno.EEXIST, f"iova {iova:#x}+{length:#x} overlaps "
                                  f"{a.iova:#x}+{a.length:#x}")
        if self._immutable(ioas):
            raise KernelError(errno.EBUSY, f"IOAS {ioas_id} is preserved (immutable)")
        memfd.populate()
        spans = getattr(memfd, "folio_spans", None)  # runs of folios, when the file has them
        runs = list(_runs(spans() if spans is not None else
                          [(i, pa, 1 << o) for i, pa, o in memfd.folio_list()],
                          offset, length, iova))
        area = IoasArea(iova, length, memfd, offset, runs)
        done: list[Hwpt] = []
        try:
            for h in ioas.hwpts:
                _map_area(h.domain, area)
                done.append(h)
        except KernelError:
            for h in done:
                h.domain.unmap(area.iova, area.length)
            raise
        memfd.get()
        ioas.areas.append(area)

    def ioas_unmap(self, ioas_id: int, iova: int, length: int) -> None:
        """``IOMMU_IOAS_UNMAP`` of exactly one area (ENOENT otherwise)."""
        self._check()
        ioas = self._ioas(ioas_id)
        area = next((a for a in ioas.areas if a.iova == iova and a.length == length), None)
        if area is None:
            raise KernelError(errno.ENOENT, f"no area at {iova:#x}+{length:#x}")
        if self._immutable(ioas):
            raise KernelError(errno.EBUSY, f"IOAS {ioas_id} is preserved (immutable)")
        for h in ioas.hwpts:
            h.domain.unmap(iova, length)
        ioas.areas.remove(area)
        area.file.put()

    # -- HWPT --
    def hwpt_alloc(self, dev_id: int, ioas_id: int) -> int:
        """``IOMMU_HWPT_ALLOC`` (paging): a new domain holding every mapping of the IOAS."""
        self._check()
        self._idev(dev_id)
        ioas = self._ioas(ioas_id)
        domain = self.kernel.iommu.alloc_paging_domain(f"{self.name}/hwpt")
        try:
            for a in ioas.areas:
                _map_area(domain, a)
        except KernelError:
            self.kernel.iommu.free_domain(domain)
            raise
        hwpt = Hwpt(next(self._ids), ioas, domain)
        domain.label = f"{self.name}/hwpt{hwpt.id}"
        self.hwpts[hwpt.id] = hwpt
        ioas.hwpts.append(hwpt)
        return hwpt.id

    def hwpt_set_preserve(self, hwpt_id: int, token: int) -> None:
        """``IOMMU_HWPT_LU_SET_PRESERVE``: mark for preservation (EADDRINUSE duplicate token)."""
        self._check()
        target = self._hwpt(hwpt_id)
        for h in self.hwpts.values():
            if h is not target and h.lu_preserve and h.lu_token == token:
                raise KernelError(errno.EADDRINUSE, f"HWPT token {token:#x} already in use")
        target.lu_preserve = True
        target.lu_token = token

    def hwpt_destroy(self, hwpt_id: int) -> None:
        """``IOMMU_DESTROY`` of a HWPT: EBUSY while attached or preserved."""
        self._check()
        hwpt = self._hwpt(hwpt_id)
        if any(d.hwpt is hwpt for d in self.idevs.values()) or hwpt.domain.devices:
            raise KernelError(errno.EBUSY, f"HWPT {hwpt_id} has devices attached")
        self.kernel.iommu.free_domain(hwpt.domain)
        if hwpt in hwpt.ioas.hwpts:
            hwpt.ioas.hwpts.remove(hwpt)
        del self.hwpts[hwpt_id]

    # -- devices (called by vfio) --
    def bind_device(self, pdev: PciDev) -> int:
        """``iommufd_device_bind()``: claim DMA ownership -> dev_id (EPERM/EBUSY).

        Phase 2: a device restored from a record whose domain this retrieved
        iommufd preserved is taken over with its restored domain attached.
        """
        self._check()
        dev = self.kernel.iommu.device(pdev)
        if self._lu_owns(dev):
            self.kernel.iommu.adopt_preserved_owner(dev, self)
        else:
            self.kernel.iommu.claim_dma_owner(dev, self)
        idev = IommufdDevice(next(self._ids), pdev, dev)
        for h in self.hwpts.values():
            if h.lu_restored and dev.group.domain is h.domain:
                idev.hwpt = h
        self.idevs[idev.id] = idev
        return idev.id

    def _lu_owns(self, dev: IommuDevice) -> bool:
        if self.lu is None or dev.restored_from is None:
            return False
        restored = self.kernel.iommu.restored_domains
        return any(restored.get(r.domain_data) is dev.group.domain for r in self.lu)

    def hwpt_lu_restore(self, token: int) -> int:
        """``IOMMU_HWPT_LU_RESTORE`` (``iommufd_hwpt_lu_restore()``) -> the new HWPT id.

        ENOTTY: this iommufd was not retrieved; ENOENT: no unreclaimed record
        with ``token``, or its domain was not restored by the IOMMU driver;
        ENODEV: a device attached to that domain is not bound to this iommufd
        yet (iommufd_liveupdate_duo.c: "cannot restore an HWPT without
        already rebind all the attached devices").
        """
        self._check()
        if self.lu is None:
            raise KernelError(errno.ENOTTY, f"{self.name}: not a retrieved iommufd")
        rec = next((r for r in self.lu if not r.reclaimed and r.token == token), None)
        if rec is None:
            raise KernelError(errno.ENOENT, f"{self.name}: no preserved HWPT with token "
                              f"{token:#x}")
        domain = self.kernel.iommu.restored_domains.get(rec.domain_data)
        if domain is None:
            raise KernelError(errno.ENOENT, f"HWPT token {token:#x}: domain "
                              f"{rec.domain_data:#x} was not restored")
        for dev in domain.devices:
            if dev.group.owner is not self:
                raise KernelError(errno.ENODEV, f"{dev.name} is attached to the preserved "
                                  "HWPT but not bound to this iommufd")
        hwpt = Hwpt(next(self._ids), Ioas(0), domain, lu_restored=True)
        self.hwpts[hwpt.id] = hwpt
        for idev in self.idevs.values():
            if idev.dev.group.domain is domain:
                idev.hwpt = hwpt
        rec.reclaimed = True
        self.kernel.machine.memory.write(
            self.lu_ser_pa + IOMMUFD_SER_HDR.size + IOMMUFD_HWPT_SER.size * rec.index + 16,
            b"\x01")
        return hwpt.id

    def unbind_device(self, dev_id: int) -> None:
        """``iommufd_device_unbind()``: detach, release DMA ownership."""
        idev = self.idevs.pop(dev_id, None)
        if idev is None:
            return
        if idev.hwpt is not None:
            self.kernel.iommu.attach(idev.dev, self.kernel.iommu.blocked)
            idev.hwpt = None
        self.kernel.iommu.release_dma_owner(idev.dev, self)

    def attach_device(self, dev_id: int, pt_id: int) -> None:
        """``iommufd_device_attach()`` / ``_replace()`` of the RID to a HWPT."""
        idev = self._idev(dev_id)
        hwpt = self._hwpt(pt_id)
        if idev.preserved:
            raise KernelError(errno.EBUSY, f"{idev.pdev.name} is preserved")
        self.kernel.iommu.attach(idev.dev, hwpt.domain)
        idev.hwpt = hwpt

    def detach_device(self, dev_id: int) -> None:
        idev = self._idev(dev_id)
        if idev.preserved:
            raise KernelError(errno.EBUSY, f"{idev.pdev.name} is preserved")
        self.kernel.iommu.attach(idev.dev, self.kernel.iommu.blocked)
        idev.hwpt = None

    def outgoing_token(self, file_set: Any = None) -> int:
        """``liveupdate_get_token_outgoing()`` for this file: ENOENT if not preserved."""
        return self.mod.outgoing_token(self, file_set)

    def device_preserve(self, dev_id: int, file_set: Any = None) -> int:
        """``iommufd_device_preserve()`` -> the iommufd's LUO token (pci.md §7.3).

        ENOENT: no RID attachment; EINVAL: attached HWPT not paging or not
        marked; ENOENT: this iommufd is not preserved; then
        ``iommu_preserve_device()`` errors.
        """
        idev = self._idev(dev_id)
        if idev.hwpt is None:
            raise KernelError(errno.ENOENT, f"{idev.pdev.name}: no RID attachment")
        if idev.hwpt.domain.kind != "paging" or not idev.hwpt.lu_preserve:
            raise KernelError(errno.EINVAL, f"{idev.pdev.name}: HWPT {idev.hwpt.id} is not "
                              "marked for preservation")
        token = self.outgoing_token(file_set)
        self.kernel.iommu.preserve_device(idev.hwpt.domain, idev.dev, token)
        idev.preserved = True
        return token

    def device_unpreserve(self, dev_id: int) -> None:
        idev = self.idevs.get(dev_id)
        if idev is None or not idev.preserved:
            return
        self.kernel.iommu.unpreserve_device(idev.dev)
        idev.preserved = False

    # -- lifetime --
    def release(self) -> None:
        """Last ``fput()``: devices unbound, HWPTs and pins released."""
        if not self.kernel.alive:
            return
        for dev_id in list(self.idevs):
            self.unbind_device(dev_id)
        for hwpt in list(self.hwpts.values()):
            try:
                self.kernel.iommu.free_domain(hwpt.domain)
            except KernelError as exc:
                self.kernel.warn("iommufd", f"WARNING: {self.name}: {exc}")
        self.hwpts.clear()
        for ioas in self.ioas.values():
            for a in ioas.areas:
                a.file.put()
            ioas.areas.clear()


def _runs(folios: list[tuple[int, int, int]], offset: int, length: int,
          iova: int) -> Iterator[tuple[int, int, int]]:
    """(iova, pa, size) runs of physically contiguous pinned pages of the range;
    ``folios`` are (index, pa, pages) spans."""
    first, end = offset >> PAGE_SHIFT, (offset + length) >> PAGE_SHIFT
    cur: list[int] | None = None
    for index, pa, npages in folios:
        lo, hi = max(index, first), min(index + npages, end)
        if lo >= hi:
            continue
        r_iova = iova + ((lo - first) << PAGE_SHIFT)
        r_pa = pa + ((lo - index) << PAGE_SHIFT)
        size = (hi - lo) << PAGE_SHIFT
        if cur is not None and cur[0] + cur[2] == r_iova and cur[1] + cur[2] == r_pa:
            cur[2] += size
            continue
        if cur is not None:
            yield cur[0], cur[1], cur[2]
        cur = [r_iova, r_pa, size]
    if cur is not None:
        yield cur[0], cur[1], cur[2]


def _map_area(domain: IommuDomain, area: IoasArea) -> None:
    covered = sum(r[2] for r in area.runs)
    if covered != area.length:
        raise KernelError(errno.EFAULT, f"{area.file.name}: {area.length - covered:#x} bytes "
                          "of the range are not backed")
    runs = list(area.runs)
    done, err = domain.map_many(runs)
    if err is not None:
        for r_iova, _r_pa, size in runs[:done]:
            domain.unmap(r_iova, size)
        raise err


class IommufdFileHandler(FileHandler):
    """``iommufd_lu_handler`` (compatible ``"iommufd-v1"``)."""

    def __init__(self, mod: Iommufd) -> None:
        super().__init__(IOMMUFD_LUO_FH_COMPATIBLE)
        self.mod = mod

    def can_preserve(self, file: File) -> bool:
        """``iommufd_liveupdate_can_preserve()``: any iommufd file of this kernel."""
        return isinstance(file, IommufdFile) and file.kernel is self.mod.kernel

    def preserve(self, args: FileOpArgs) -> None:
        """``iommufd_liveupdate_preserve()`` (see module docstring for the order)."""
        f = cast(IommufdFile, args.file)
        k = self.mod.kernel
        marked = [h for h in f.hwpts.values() if h.lu_preserve]
        for h in marked:
            if h.domain.kind != "paging":
                raise KernelError(errno.EINVAL, f"HWPT {h.id} has no domain")
        ser_pa = k.kho.alloc_preserve(IOMMUFD_SER_HDR.size + IOMMUFD_HWPT_SER.size
                                      * max(1, len(marked)))
        done: list[Hwpt] = []
        recs: list[tuple[int, int]] = []
        visited: set[int] = set()
        try:
            for h in marked:
                if h.ioas.id not in visited:
                    for a in h.ioas.areas:
                        seals = int(getattr(a.file, "seals", 0))
                        if seals & _REQUIRED_SEALS != _REQUIRED_SEALS:
                            raise KernelError(errno.EINVAL, f"{a.file.name} mapped at "
                                              f"{a.iova:#x} is not sealed against resize")
                        if not self.mod.is_preserved(cast(File, a.file), args.file_set):
                            raise KernelError(errno.ENOENT, f"{a.file.name} mapped at "
                                              f"{a.iova:#x} is not preserved")
                    visited.add(h.ioas.id)
                recs.append((k.iommu.preserve_domain(h.domain), h.lu_token))
                done.append(h)
        except KernelError:
            for h in done:
                k.iommu.unpreserve_domain(h.domain)
            k.kho.unpreserve_free(ser_pa)
            raise
        k.machine.memory.write(ser_pa, encode_iommufd_ser(recs))
        f.lu_preserved = True
        args.serialized_data = ser_pa
        args.private_data = done

    def unpreserve(self, args: FileOpArgs) -> None:
        """``iommufd_liveupdate_unpreserve()``: domains unpreserved, ser freed."""
        k = self.mod.kernel
        hwpts = cast("list[Hwpt]", args.private_data or [])
        for h in hwpts:
            k.iommu.unpreserve_domain(h.domain)
        if args.serialized_data:
            k.kho.unpreserve_free(args.serialized_data)
        if isinstance(args.file, IommufdFile):
            args.file.lu_preserved = False

    def _phase2(self) -> bool:
        return self.mod.kernel.profile.iommufd_lu == "phase2"

    def retrieve(self, args: FileOpArgs) -> None:
        """``iommufd_liveupdate_retrieve()``.

        Phase 1: EOPNOTSUPP (pci.md §7.4.4).  Phase 2: the ``iommufd_ser``
        folio is restored (EFAULT otherwise) and a new iommufd carries its
        records (``ictx->lu``) for IOMMU_HWPT_LU_RESTORE.
        """
        if not self._phase2():
            raise KernelError(errno.EOPNOTSUPP, "iommufd retrieval is not supported (phase 1)")
        k = self.mod.kernel
        pa = args.serialized_data
        order = k.kho.restore_folio(pa)
        if order is None:
            raise KernelError(errno.EFAULT, f"iommufd_ser {pa:#x} cannot be restored")
        (n,) = IOMMUFD_SER_HDR.unpack(k.machine.memory.read(pa, IOMMUFD_SER_HDR.size))
        if IOMMUFD_SER_HDR.size + IOMMUFD_HWPT_SER.size * n > PAGE_SIZE << order:
            k.mm.free_pages(pa)
            raise KernelError(errno.EINVAL, f"iommufd_ser {pa:#x}: {n} HWPTs")
        raw = k.machine.memory.read(pa, IOMMUFD_SER_HDR.size + IOMMUFD_HWPT_SER.size * n)
        f = IommufdFile(self.mod, install_fd=False)
        f.lu = [LuHwptRecord(i, d, t, bool(r))
                for i, (d, t, r) in enumerate(decode_iommufd_ser(raw))]
        f.lu_ser_pa = pa
        f.retrieved = True
        args.file = f

    def can_finish(self, args: FileOpArgs) -> bool:
        """``iommufd_liveupdate_can_finish()``: never in phase 1; in phase 2 every
        record reclaimed and no restored HWPT still has an attachment."""
        f = args.file
        if not self._phase2() or args.retrieve_status <= 0 or not isinstance(f, IommufdFile) \
                or f.lu is None:
            return False
        if not all(r.reclaimed for r in f.lu):
            return False
        return not any(h.lu_restored and h.domain.devices for h in f.hwpts.values())

    def finish(self, args: FileOpArgs) -> None:
        """``iommufd_liveupdate_finish()``: ``ictx->lu`` dropped, the folio freed."""
        f = args.file
        if isinstance(f, IommufdFile) and f.lu is not None:
            f.lu = None
            self.mod.kernel.mm.free_pages(f.lu_ser_pa)
            f.lu_ser_pa = 0


class Iommufd:
    """The iommufd module of one kernel (``kernel.iommufd_mod``)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.handler = IommufdFileHandler(self)
        self.ids = itertools.count(0)
        self.registered = False

    def init(self) -> None:
        """``iommufd_liveupdate_register()``: handler, then the IOMMU FLB link.

        EOPNOTSUPP (live update disabled) is not an error for the module;
        a failing FLB link unregisters the handler.
        """
        lu = self.kernel.liveupdate
        if not self.kernel.configured("CONFIG_IOMMU_LIVEUPDATE"):
            return  # iommu_liveupdate_register_flb() is the EOPNOTSUPP stub
        try:
            lu.register_file_handler(self.handler)
        except KernelError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                self.kernel.printk("err", "iommufd", f"liveupdate registration failed: {exc}")
            return
        try:
            lu.register_flb(self.handler, self.kernel.iommu.flb)
        except KernelError as exc:
            lu.unregister_file_handler(self.handler)
            if exc.errno != errno.EOPNOTSUPP:
                self.kernel.printk("err", "iommufd", f"IOMMU FLB link failed: {exc}")
            return
        self.registered = True

    def open(self) -> IommufdFile:
        """``open("/dev/iommu")``."""
        check_alive(self.kernel)
        return IommufdFile(self)

    # -- LUO lookups (see the module docstring for the session deviation) --
    def _outgoing_files(self, file_set: Any = None) -> Iterator[tuple[int, File]]:
        """Preserved files of ``file_set`` (the session being preserved into), or of
        every outgoing session when called outside a preserve."""
        sets = [file_set] if file_set is not None else \
            [sess.files for sess in self.kernel.liveupdate.sessions.outgoing]
        for fs in sets:
            for lf in fs.files:
                if lf.file is not None:
                    yield lf.token, lf.file

    def is_preserved(self, file: File, file_set: Any = None) -> bool:
        return any(f is file for _t, f in self._outgoing_files(file_set))

    def outgoing_token(self, file: File, file_set: Any = None) -> int:
        """``liveupdate_get_token_outgoing()``: ENOENT when ``file`` is not preserved
        in the session (luo_file.c: "-ENOENT if the file is not preserved in this
        session")."""
        for token, f in self._outgoing_files(file_set):
            if f is file:
                return token
        raise KernelError(errno.ENOENT, f"{file.name} is not preserved in this session")
