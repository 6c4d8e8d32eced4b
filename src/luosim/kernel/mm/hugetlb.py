"""HugeTLB pools, hugetlb memfds and their live update: mm/hugetlb.c + mm/hugetlb_luo.c.

Follows the hugetlb live-update series "[RFC PATCH 00/10] liveupdate:
hugetlb support" (Pratyush Yadav, 2025-12-07,
<20251206230222.853493-1-pratyush@kernel.org>, base 55b7d75112c2), as stored
in prati0100/linux (include/linux/kho/abi/hugetlb.h at 23652ff7960d,
mm/hugetlb_luo.c FLB at 18ae0a38140c; ABI in :mod:`luosim.abi.hugetlb`):

* Pools.  x86-64 has two hstates, 2 MiB (order 9) and 1 GiB (order 18).
  ``hugepagesz=SIZE hugepages=N`` (``hugepages=`` before any ``hugepagesz=``
  means the default size, ``default_hugepagesz=`` or 2 MiB) fills a pool at
  boot from memory outside KHO scratch; a short allocation is logged and the
  pool keeps what it got (``hugetlb_hstate_alloc_pages()``).  On a
  live-update boot the pages the previous kernel preserved count towards
  ``N``: ``hstate_liveupdate_pages()`` reads the ``hugetlb-v1`` FLB record in
  early boot and only the rest is allocated (series patch 7).
* Files.  ``memfd_create(MFD_HUGETLB | MFD_HUGE_2MB/1GB)`` makes a
  :class:`HugetlbMemfdFile`: sizes in whole huge pages (EINVAL), pages taken
  from the pool on first touch (ENOMEM when the pool is empty:
  ``memfd_alloc_folio()``; ``fallocate()`` reports ENOSPC like
  ``alloc_hugetlb_folio()``), freed pages go back to the pool.
* Live update.  The ``huge-memfd-v1`` file handler (``hugemfd_*``) freezes
  the inode (``hugetlb_i_freeze()``: truncate and fallocate → EPERM), pins
  every page (allocating holes, ENOMEM when the pool is short), preserves
  each folio with KHO and counts it in the ``hugetlb-v1`` FLB, then
  preserves the ``hugemfd_folio_ser`` array with ``kho_preserve_vmalloc()``.
  Retrieve rebuilds the file from those pages (they join the new kernel's
  pool, in use); FINISH of a never-retrieved file returns its pages to the
  pool as free pages.  KHO restores folios above order 10 only with the
  series' patch 1 ("kho: drop restriction on maximum page order").

Plain hugetlbfs facts (torvalds/linux 0cce284537fb fs/hugetlbfs/inode.c):
``hugetlb_file_setup()`` fails with ENODEV for a page size without an
hstate, ``hugetlbfs_setattr()`` with EINVAL for a size that is not a whole
number of huge pages, and a fresh hugetlbfs inode carries ``F_SEAL_SEAL``
(so a retrieved file, whose ``hugemfd_ser`` has no seals, is sealed shut).

Profiles: the series needs LUO with FLBs in early boot, i.e. the luo-v5
profile (v9).  On luo-v1 profiles (v6, v7) no handler accepts a hugetlb
memfd (memfd_luo_can_preserve() refuses hugetlb), so PRESERVE_FD fails with
ENOENT like any unsupported file.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from luosim.abi.errors import DecodeError
from luosim.abi.hugetlb import (
    HUGE_MEMFD_COMPATIBLE,
    HUGETLB_FLB_COMPATIBLE,
    MFD_ALL_FLAGS,
    MFD_HUGE_MASK,
    MFD_HUGE_SHIFT,
    MFD_HUGETLB,
    HugemfdSer,
    HugetlbHstateSer,
    HugetlbSer,
    mfd_huge_log,
)
from luosim.abi.kho import KHO_ORDER_0_LOG2
from luosim.abi.memfd import (
    F_SEAL_SEAL,
    KhoVmalloc,
    decode_folio_pieces,
    folio_records,
)
from luosim.errors import KernelError
from luosim.faults import point
from luosim.hw.memory import PAGE_SHIFT, PAGE_SIZE, ZERO_SEED, MemoryAccessError
from luosim.kernel.kho import FP_RESTORE
from luosim.kernel.liveupdate.file import FileHandler, FileOpArgs
from luosim.kernel.liveupdate.flb import Flb, FlbOpArgs
from luosim.kernel.mm.memfd import MemfdFile, PreservedFolios, _Recs, folio_seed
from luosim.kernel.vfs import File, check_alive

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel

FP_PRESERVE = point("hugetlb.preserve", ("ENOMEM",),
                    "hugemfd_preserve() fails (allocation)")

#: x86-64 hstates (arch/x86/mm/hugetlbpage.c): PMD and, with GBPAGES, PUD.
HSTATE_ORDERS = (9, 18)
DEFAULT_HSTATE_ORDER = 9
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_MASK64 = (1 << 64) - 1


def hugetlb_luo_supported(kernel: Kernel) -> bool:
    """Whether this kernel build carries the hugetlb live-update series (luo-v5 profiles)."""
    return kernel.profile.luo_abi == "luo-v5"


def parse_size(text: str) -> int | None:
    """``memparse()`` of ``2M``/``1G``/``2048K``/bytes; None when malformed."""
    units = {"k": 10, "m": 20, "g": 30}
    t = text.strip().lower()
    shift = units.get(t[-1:], 0)
    digits = t[:-1] if shift else t
    return int(digits) << shift if digits.isdigit() else None


class HugeFreeList:
    """``h->hugepage_freelists[nid]`` of one hstate, as runs in list order.

    A run ``[pa, count, step]`` is ``count`` pages at ``pa, pa + step, ...``
    (``step`` is +/- the page size) that follow each other on the list; the
    head of the list is the first page of the first run.  Pages are taken
    from the head (``dequeue_hugetlb_folio_node_exact()``: list_for_each_entry
    from the head) and freed pages go back to the head (``enqueue_hugetlb_folio()``:
    ``list_move()`` to the head), so the list is LIFO; two neighbours on the
    list join a run only when they are physically adjacent, in the run's
    direction.  Cost per run, not per page.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.runs: deque[list[int]] = deque()
        self.nr = 0

    def __len__(self) -> int:
        return self.nr

    def __iter__(self) -> Iterator[int]:
        """Pages from the head (list order)."""
        for pa, count, step in self.runs:
            for k in range(count):
                yield pa + k * step

    def push_run(self, pa: int, count: int, step: int) -> None:
        """Put ``count`` pages at the head so that the list reads ``pa, pa + step, ...``."""
        if count <= 0:
            return
        self.nr += count
        if count == 1:
            step = self.size
        if self.runs:
            head = self.runs[0]
            nxt = pa + count * step
            if head[0] == nxt and (head[1] == 1 or head[2] == step):
                head[0], head[1], head[2] = pa, head[1] + count, step
                return
            if count == 1 and head[0] == pa - self.size and (head[1] == 1
                                                             or head[2] == -self.size):
                head[0], head[1], head[2] = pa, head[1] + 1, -self.size
                return
        self.runs.appendleft([pa, count, step])

    def push(self, pa: int) -> None:
        """``enqueue_hugetlb_folio()``: one page to the head."""
        self.push_run(pa, 1, self.size)

    def free_in_order(self, pa: int, count: int, step: int) -> None:
        """Enqueue ``count`` pages one after the other, ``pa`` first: the last
        one ends up at the head, so the list reads them backwards."""
        if count > 0:
            self.push_run(pa + (count - 1) * step, count, -step)

    def pop(self) -> int:
        """Dequeue the head page (IndexError when empty)."""
        return self.take(1)[0][0]

    def take(self, n: int) -> list[tuple[int, int, int]]:
        """Dequeue ``n`` pages from the head, as (pa, count, step) runs in list order."""
        if n > self.nr:
            raise IndexError(f"{n} pages asked of a free list of {self.nr}")
        out: list[tuple[int, int, int]] = []
        while n:
            head = self.runs[0]
            k = min(n, head[1])
            out.append((head[0], k, head[2]))
            if k == head[1]:
                self.runs.popleft()
            else:
                head[0] += k * head[2]
                head[1] -= k
            n -= k
            self.nr -= k
        return out


@dataclass
class Hstate:
    """One ``struct hstate``: a pool of huge pages of one order."""

    order: int
    free: HugeFreeList = field(init=False)  # the free list, head first
    nr_huge_pages: int = 0
    requested: int = 0  # hugepages= for this size

    def __post_init__(self) -> None:
        self.free = HugeFreeList(self.size)

    @property
    def size(self) -> int:
        return PAGE_SIZE << self.order

    @property
    def free_huge_pages(self) -> int:
        return len(self.free)

    @property
    def name(self) -> str:
        return f"{self.size >> 20}M" if self.size < 1 << 30 else f"{self.size >> 30}G"


class HugetlbSubsystem:
    """The hstates of one kernel, hugetlb memfd creation and the LUO handler + FLB."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.hstates = {o: Hstate(o) for o in HSTATE_ORDERS}
        self.default_order = DEFAULT_HSTATE_ORDER
        self.flb = HugetlbFlb(self)
        self.handler: HugemfdLuoHandler | None = None

    # ------------------------------------------------------------------ boot
    def _parse_cmdline(self) -> None:
        k = self.kernel
        current: Hstate | None = None
        valid = True  # hugepages_setup(): the preceding hugepagesz= was valid
        for word in k.cmdline.words:
            key, _, val = word.partition("=")
            if key == "default_hugepagesz":
                size = parse_size(val)
                order = (size.bit_length() - 1 - PAGE_SHIFT) if size else -1
                if order in self.hstates:
                    self.default_order = order
                else:
                    k.printk("err", "hugetlb", f"HugeTLB: unsupported default_hugepagesz={val}")
            elif key == "hugepagesz":
                size = parse_size(val)
                order = (size.bit_length() - 1 - PAGE_SHIFT) if size else -1
                current = self.hstates.get(order) if size == PAGE_SIZE << order else None
                valid = current is not None
                if current is None:
                    k.printk("err", "hugetlb", f"HugeTLB: unsupported hugepagesz={val}")
            elif key == "hugepages":
                if not valid:
                    k.printk("warn", "hugetlb", f"HugeTLB: hugepages={val} does not follow a "
                             "valid hugepagesz, ignoring")
                    continue
                if not val.isdigit():
                    k.printk("err", "hugetlb", f"HugeTLB: invalid hugepages={val}")
                    continue
                (current or self.hstates[self.default_order]).requested = int(val)

    def init(self) -> None:
        """Models hugetlb_init() + hugetlb_hstate_alloc_pages() (after KHO memory init)."""
        k = self.kernel
        if hugetlb_luo_supported(k):
            k.kho.max_restore_order = KHO_ORDER_0_LOG2  # series patch 1
        self._parse_cmdline()
        for h in self.hstates.values():
            preserved = self.hstate_liveupdate_pages(h)
            want = max(0, h.requested - preserved)
            got = self._alloc_boot_pages(h, want)
            if got < want:
                k.printk("warn", "hugetlb", f"HugeTLB: allocating {want} of page size {h.name} "
                         f"failed.  Only allocated {got} hugepages.")
            if h.requested or preserved:
                k.printk("info", "hugetlb", f"HugeTLB: {h.name} pool: {got} allocated, "
                         f"{preserved} preserved by the previous kernel")

    def _alloc_boot_pages(self, h: Hstate, want: int) -> int:
        """Fill the free list of ``h`` with up to ``want`` new pages; how many.

        Which pages: the model's first fit (:meth:`alloc_pages` per page).
        Their order on the free list is the kernel's for boot-time pools
        (gigantic pages; mainline mm/hugetlb.c, as stored in torvalds/linux
        0010b838db9f and in the index copy of a 2025 mainline mm/hugetlb.c):
        memblock allocates them top-down on x86, highest address first, and
        ``__alloc_bootmem_huge_page()`` ``list_add()``s each to the head of
        ``huge_boot_pages[nid]``; ``gather_bootmem_prealloc_node()`` walks that
        list and ``list_add()``s each folio to a local ``folio_list``;
        ``prep_and_add_bootmem_folios()`` walks ``folio_list`` and
        ``enqueue_hugetlb_folio()`` ``list_move()``s each to the head of
        ``h->hugepage_freelists[nid]``.  Three head insertions reverse the
        top-down order once: the head of the free list is the LOWEST page, and
        a fresh pool hands pages out in ascending physical order.
        """
        mm = self.kernel.mm
        try:
            runs = mm.alloc_pages_bulk(h.order, want) if want else []
        except KernelError:  # short: as many as one allocation per page gets
            runs = []
            for _ in range(want):
                try:
                    runs.append((mm.alloc_pages(h.order), 1))
                except KernelError:
                    break
        got = 0
        for pa, n in sorted(runs, reverse=True):  # the lowest page ends at the head
            h.free.push_run(pa, n, h.size)
            got += n
        h.nr_huge_pages += got
        return got

    def hstate_liveupdate_pages(self, h: Hstate) -> int:
        """Models hstate_liveupdate_pages(): preserved pages of ``h`` per the incoming FLB.

        Early boot (``liveupdate_flb_incoming_early()``): the record is read
        in place, not claimed; no FLB → 0.
        """
        k = self.kernel
        if not hugetlb_luo_supported(k):
            return 0
        lu = getattr(k, "liveupdate", None)
        records = lu.flbs.incoming_records if lu is not None and lu.enabled else None
        for rec in records or ():
            if rec.name == HUGETLB_FLB_COMPATIBLE:
                try:
                    ser = HugetlbSer.decode(k.machine.memory.read(rec.data, HugetlbSer.SIZE))
                except (DecodeError, MemoryAccessError):  # a bad pointer: no pages
                    return 0
                return ser.nr_pages(h.order)
        return 0

    def late_init(self) -> None:
        """Models hugetlb_luo_init(): register ``huge-memfd-v1`` and link ``hugetlb-v1``."""
        k = self.kernel
        if not hugetlb_luo_supported(k) or not k.liveupdate.enabled:
            return
        handler = HugemfdLuoHandler(self)
        try:
            k.liveupdate.register_file_handler(handler)
        except KernelError as exc:
            k.printk("err", "hugetlb", f"could not register file handler: {exc}")
            return
        try:
            k.liveupdate.register_flb(handler, self.flb)
        except KernelError as exc:
            k.printk("err", "hugetlb", f"could not register hugetlb FLB handler: {exc}")
            k.liveupdate.unregister_file_handler(handler)
            return
        self.handler = handler

    # ------------------------------------------------------------------ pool
    def hstate_for_log(self, log: int) -> Hstate:
        """``hstate_sizelog()``: 0 = default; an unknown size → ENODEV (hugetlb_file_setup)."""
        if log == 0:
            return self.hstates[self.default_order]
        h = self.hstates.get(log - PAGE_SHIFT)
        if h is None:
            raise KernelError(errno.ENODEV, f"no hstate for huge page size 2^{log}")
        return h

    def alloc_folio(self, h: Hstate, err: int = errno.ENOMEM, *, seed: int = ZERO_SEED) -> int:
        """Take a free huge page (zeroed at fault) or fail with ``err``.

        ``seed``: the content the caller stores into the whole page right
        away (:meth:`HugetlbMemfdFile.fill`), written instead of the zeros.
        """
        if not h.free:
            raise KernelError(err, f"hugetlb {h.name} pool is empty "
                              f"({h.nr_huge_pages} pages, none free)")
        pa = h.free.pop()
        self.kernel.machine.memory.fill_folio(pa, h.order, seed)
        return pa

    def free_folio(self, h: Hstate, pa: int) -> None:
        """``free_huge_folio()``: back onto the head of the pool's free list."""
        h.free.push(pa)

    def adopt_folio(self, h: Hstate, pa: int, *, in_use: bool) -> None:
        """A preserved folio joins the pool (``account_new_hugetlb_folio()``)."""
        h.nr_huge_pages += 1
        if not in_use:
            h.free.push(pa)

    def memfd_create(self, name: str, size: int = 0, flags: int = MFD_HUGETLB,
                     seals: int = 0) -> HugetlbMemfdFile:
        """``memfd_create(name, MFD_HUGETLB | MFD_HUGE_*)`` + ``ftruncate(size)`` + seals."""
        check_alive(self.kernel)
        if flags & ~(MFD_ALL_FLAGS | (MFD_HUGE_MASK << MFD_HUGE_SHIFT)):
            raise KernelError(errno.EINVAL, f"unknown memfd_create flags {flags:#x}")
        if not flags & MFD_HUGETLB:
            raise KernelError(errno.EINVAL, "huge page size without MFD_HUGETLB")
        h = self.hstate_for_log(mfd_huge_log(flags))
        f = HugetlbMemfdFile(self, name, h)
        try:
            if size:
                f.truncate(size)
            if seals:
                f.add_seals(seals)
        except KernelError:
            f.close()
            raise
        return f


class HugetlbMemfdFile(MemfdFile):
    """A hugetlbfs memfd: pages of one hstate, indexed by huge page number.

    ``write``/``fill`` model stores through a MAP_SHARED mapping (hugetlbfs
    has no write()): they cannot grow the file (EFAULT, SIGBUS on hardware)
    and fault pages in from the pool (ENOMEM when it is empty).
    """

    def __init__(self, subsys: HugetlbSubsystem, name: str, h: Hstate, *,
                 install_fd: bool = True) -> None:
        super().__init__(subsys.kernel.memfd, name, install_fd=install_fd)
        self.hsubsys = subsys
        self.hstate = h
        self.folio_order = h.order
        self.hugetlb = True
        # pages as the base class's runs (index in base pages, pa, order, count):
        # pages taken in order from a fresh pool are ascending, so one run

    @property
    def hsize(self) -> int:
        return self.hstate.size

    # ------------------------------------------------------------------ pages
    def _page(self, hidx: int) -> int:
        o = self.hstate.order
        hit = self._find(hidx << o)
        if hit is not None:
            return hit[1]
        pa = self.hsubsys.alloc_folio(self.hstate)
        self._add_run(hidx << o, pa, o, 1)
        return pa

    def _fault_in(self, hidx: int, n: int, err: int = errno.ENOMEM,
                  seed: int | None = None) -> None:
        """Pages ``hidx..hidx+n-1`` (a hole) from the pool in index order, as ``n``
        :meth:`HugetlbSubsystem.alloc_folio` would take them; by runs of the
        free list.  ``seed``: the family seed stored into them at once (else zero).
        The pool short: what it has is taken, then ``err``."""
        h = self.hstate
        o = h.order
        avail = min(n, len(h.free))
        index = hidx << o
        for pa, count, step in h.free.take(avail):
            if step > 0:
                if seed is None:
                    self.mem.fill_run(pa, o, count, ZERO_SEED)
                else:
                    self.mem.fill_run(pa, o, count, seed, family=True, index0=index)
                self._add_run(index, pa, o, count)
                index += count << o
                continue
            for k in range(count):  # a run freed backwards: one page at a time
                ppa = pa + k * step
                self.mem.fill_folio(ppa, o, ZERO_SEED if seed is None
                                    else folio_seed(seed, index))
                self._add_run(index, ppa, o, 1)
                index += 1 << o
        if avail < n:
            self.hsubsys.alloc_folio(h, err)  # raises: the pool is empty

    def _fill_holes(self, first: int, end: int, err: int = errno.ENOMEM,
                    seed: int | None = None) -> None:
        o = self.hstate.order
        for page, n in self._holes(first << o, end << o):
            self._fault_in(page >> o, n, err, seed)

    def populate(self) -> int:
        """``memfd_pin_folios()`` over ``[0, size)``: fill every hole (ENOMEM when short)."""
        self._fill_holes(0, self.size // self.hsize)
        return self.nr_folios

    def _free_range(self, first: int, end: int) -> None:
        """Pages with index in ``[first, end)`` (huge page numbers) back to the pool,
        in index order (``remove_inode_hugepages()``), by runs."""
        o = self.hstate.order
        a0, b0 = first << o, end << o
        kept: list[list[int]] = []
        freed = 0
        for index, pa, order, count in self._fruns:
            k0 = max(0, min(count, -(-(a0 - index) >> o)))
            k1 = max(0, min(count, -(-(b0 - index) >> o)))
            if k0:
                kept.append([index, pa, order, k0])
            if k1 > k0:
                self.hstate.free.free_in_order(pa + k0 * self.hsize, k1 - k0, self.hsize)
                freed += k1 - k0
            if k1 < count:
                kept.append([index + (k1 << o), pa + k1 * self.hsize, order, count - k1])
        self._fruns = kept
        self._fidx = [r[0] for r in kept]
        self._nfolios -= freed

    def _free_from(self, hidx: int) -> None:
        self._free_range(hidx, 1 << 62)

    def _free_folios_from(self, page: int) -> None:
        self._free_from(-(-page >> self.hstate.order))

    # ------------------------------------------------------------------ size
    def truncate(self, size: int) -> None:
        """``ftruncate()``: whole huge pages (EINVAL); EPERM frozen or sealed."""
        self.check_open()
        if size < 0 or size % self.hsize:
            raise KernelError(errno.EINVAL, f"size {size:#x} is not a multiple of "
                              f"{self.hsize:#x}")
        self._check_resize(size)
        if size < self.size:
            self._free_from(size // self.hsize)
        self.size = size

    def fallocate(self, offset: int, length: int, mode: int = 0) -> None:
        """``hugetlbfs_fallocate()``: EPERM while frozen; pool short → ENOSPC."""
        self.check_open()
        if offset < 0 or length <= 0:
            raise KernelError(errno.EINVAL, "bad fallocate range")
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE):
            raise KernelError(errno.EOPNOTSUPP, f"fallocate mode {mode:#x}")
        if self.frozen:
            raise KernelError(errno.EPERM, f"{self.name} is preserved for live update")
        first = offset // self.hsize
        end = -(-(offset + length) // self.hsize)
        if mode & FALLOC_FL_PUNCH_HOLE:
            if not mode & FALLOC_FL_KEEP_SIZE:
                raise KernelError(errno.EOPNOTSUPP, "PUNCH_HOLE needs KEEP_SIZE")
            self._free_range(-(-offset // self.hsize), (offset + length) // self.hsize)
            return
        if not mode & FALLOC_FL_KEEP_SIZE and end * self.hsize > self.size:
            self._check_resize(end * self.hsize)
        self._fill_holes(first, end, errno.ENOSPC)
        if not mode & FALLOC_FL_KEEP_SIZE:
            self.size = max(self.size, offset + length)

    # ------------------------------------------------------------------ content
    def _alloc(self, page: int, seed: int = ZERO_SEED) -> tuple[int, int, int]:
        """A store faults the huge page holding ``page`` in from the pool (the
        base class's ``write`` calls it for a hole; pool pages hold what they
        hold, so ``seed`` is never given here)."""
        o = self.hstate.order
        return (page >> o) << o, self._page(page >> o), o

    def _check_write(self, offset: int, length: int) -> None:
        """As the base class, but a store cannot grow the file."""
        self._check_store(offset, length)
        if offset + length > self.size:
            raise KernelError(errno.EFAULT, f"{self.name}: store beyond i_size "
                              f"{self.size:#x} (SIGBUS)")

    def fill(self, offset: int, length: int, seed: int) -> None:
        """Synthetic content in whole huge pages (same seeds as :meth:`MemfdFile.fill`)."""
        self.check_open()
        if offset % self.hsize or length % self.hsize:
            raise KernelError(errno.EINVAL, f"fill range not aligned to {self.hsize:#x}")
        self._check_write(offset, length)
        seed &= _MASK64
        o = self.hstate.order
        first, end = offset // self.hsize, (offset + length) // self.hsize
        present = [(max(i, first << o), pa + ((max(i, first << o) - i) >> o) * self.hsize,
                    (min(end << o, i + (n << o)) - max(i, first << o)) >> o)
                   for i, pa, _o, n in self._fruns
                   if i < end << o and i + (n << o) > first << o]
        # pages faulted in and stored to at once: one fill, not two; in index
        # order, as the per-page stores take them from the pool
        pos = first
        for i, pa, n in [*present, (end << o, 0, 0)]:
            if (i >> o) > pos:
                self._fault_in(pos, (i >> o) - pos, seed=seed)
            if n:
                self.mem.fill_run(pa, o, n, seed, family=True, index0=i)
            pos = (i >> o) + n

    def release(self) -> None:
        """Last reference: the pages go back to the pool."""
        self._free_from(0)

    def __repr__(self) -> str:
        return (f"<HugetlbMemfdFile {self.name!r} size={self.size:#x} pages={self.nr_folios} "
                f"hstate={self.hstate.name} fds={self.fds} ref={self.refcount}>")


# ---------------------------------------------------------------------- FLB
class HugetlbFlb(Flb):
    """Models the ``hugetlb-v1`` FLB: per-hstate counts of preserved pages."""

    def __init__(self, subsys: HugetlbSubsystem) -> None:
        super().__init__(HUGETLB_FLB_COMPATIBLE)
        self.subsys = subsys

    def _write(self, ser_pa: int, counts: dict[int, int]) -> None:
        ser = HugetlbSer(tuple(HugetlbHstateSer(counts[o], o) for o in HSTATE_ORDERS))
        self.subsys.kernel.machine.memory.write(ser_pa, ser.encode())

    def preserve(self, args: FlbOpArgs) -> None:
        """hugetlb_flb_preserve(): a zeroed ``hugetlb_ser`` listing every hstate."""
        ser_pa = self.subsys.kernel.kho.alloc_preserve(HugetlbSer.SIZE)
        counts = {o: 0 for o in HSTATE_ORDERS}
        self._write(ser_pa, counts)
        args.data = ser_pa
        args.obj = counts

    def unpreserve(self, args: FlbOpArgs) -> None:
        """hugetlb_flb_unpreserve(): free the record."""
        self.subsys.kernel.kho.unpreserve_free(args.data)

    def retrieve(self, args: FlbOpArgs) -> None:
        """hugetlb_flb_retrieve(): the counts were used in early boot; free the record."""
        self.subsys.kernel.kho.restore_free(args.data)
        args.obj = "ZERO_SIZE_PTR"  # LUO needs an obj; there is no live state

    def finish(self, args: FlbOpArgs) -> None:
        """hugetlb_flb_finish(): no live state on the incoming side."""

    def add_folio(self, h: Hstate, delta: int) -> None:
        """hugetlb_flb_add_folio()/del_folio(): ENOENT without an outgoing FLB."""
        k = self.subsys.kernel
        counts = k.liveupdate.flb_get_outgoing(self)
        if counts is None or h.order not in counts:
            raise KernelError(errno.ENOENT, f"no outgoing hugetlb FLB for {h.name}")
        counts[h.order] += delta
        self._write(k.liveupdate.flbs.out[self].data, counts)


# ---------------------------------------------------------------------- handler
class HugemfdLuoHandler(FileHandler):
    """Models the ``huge-memfd-v1`` file handler (``hugemfd_luo_ops``)."""

    def __init__(self, subsys: HugetlbSubsystem) -> None:
        super().__init__(HUGE_MEMFD_COMPATIBLE)
        self.subsys = subsys
        self.kernel = subsys.kernel

    def can_preserve(self, file: File) -> bool:
        """hugemfd_can_preserve(): a hugetlbfs file without links."""
        return isinstance(file, HugetlbMemfdFile) and file.nlink == 0

    def get_id(self, file: File) -> object:
        return cast(HugetlbMemfdFile, file).inode

    def preserve(self, args: FileOpArgs) -> None:
        """hugemfd_preserve(): freeze, pin all pages, preserve them, count them, array."""
        file = cast(HugetlbMemfdFile, args.file)
        k = self.kernel
        kho = k.kho
        flb = self.subsys.flb
        h = file.hstate
        k.machine.faults.check(FP_PRESERVE, file.name)
        ser_pa = kho.alloc_preserve(HugemfdSer.SIZE)
        was_frozen = file.frozen
        file.frozen = True
        done: list[tuple[int, int]] = []  # preserved (pa, count) runs
        counted = 0  # folios added to the FLB count
        try:
            desc = KhoVmalloc()
            folios: list[tuple[int, int, int, int]] = []
            if file.size:
                file.populate()
                folios = file.folio_runs()
                for _index, pa, order, count in folios:
                    if not counted:  # hugetlb_flb_add_folio() fails on the first or never
                        kho.preserve_folio_run(pa, order, 1)
                        try:
                            flb.add_folio(h, +1)
                        except KernelError:
                            kho.unpreserve_folio(pa, order)
                            raise
                        counted = 1
                        done.append((pa, 1))
                        pa, count = pa + h.size, count - 1
                    kho.preserve_folio_run(pa, order, count)
                    done.append((pa, count))
                total = sum(n for _pa, n in done)
                if total > counted:  # the rest of the count in one FLB write
                    flb.add_folio(h, total - counted)
                    counted = total
                # one hugemfd_folio_ser {pfn:52, reserved:12; index} per folio,
                # the layout of memfd_luo_folio_ser with no flags: generated pages
                desc = KhoVmalloc.decode(kho.preserve_vmalloc(folio_records(folios, 0)))
        except KernelError:
            if counted:
                flb.add_folio(h, -counted)
            for pa, n in reversed(done):
                kho.unpreserve_folio_run(pa, h.order, n)
            file.frozen = was_frozen
            kho.unpreserve_free(ser_pa)
            raise
        k.machine.memory.write(ser_pa, HugemfdSer(file.size, file.pos, file.nr_folios, desc,
                                                  h.order).encode())
        args.serialized_data = ser_pa
        args.private_data = PreservedFolios(ser_pa, desc, folios)

    def unpreserve(self, args: FileOpArgs) -> None:
        """hugemfd_unpreserve(): unpreserve array and pages, uncount, unfreeze, free record."""
        file = cast(HugetlbMemfdFile, args.file)
        priv = cast(PreservedFolios, args.private_data)
        kho = self.kernel.kho
        if priv.folios:
            kho.unpreserve_vmalloc(priv.desc.encode())
        nr = sum(r[3] for r in priv.folios)
        if nr:
            self.subsys.flb.add_folio(file.hstate, -nr)
        for _index, pa, order, count in priv.folios:
            kho.unpreserve_folio_run(pa, order, count)
        file.frozen = False
        kho.unpreserve_free(priv.ser_pa)

    def freeze(self, args: FileOpArgs) -> None:
        """hugemfd_freeze(): refresh ``pos`` (u64 @8)."""
        file = cast(HugetlbMemfdFile, args.file)
        self.kernel.machine.memory.write_u64(args.serialized_data + 8, file.pos)

    # ------------------------------------------------------------------ new kernel
    def _record(self, ser_pa: int) -> HugemfdSer:
        try:
            return HugemfdSer.decode(self.kernel.machine.memory.read(ser_pa, HugemfdSer.SIZE))
        except DecodeError as exc:  # pragma: no cover - fixed-size read
            raise KernelError(errno.EINVAL, str(exc)) from None

    def _folios(self, ser: HugemfdSer) -> _Recs | None:
        """kho_restore_vmalloc() of the folio array, then vfree(); None on failure.

        The records as segments (:class:`_Recs`): cost per run of folios."""
        k = self.kernel
        view = k.kho.restore_vmalloc_and_free(ser.folios.encode())
        if view is None:
            return None
        try:
            return _Recs(decode_folio_pieces(view, ser.nr_folios, "hugemfd folio array"))
        except (DecodeError, ValueError):
            return None

    def _restore(self, recs: _Recs, order: int | None, *, strict: bool
                 ) -> Iterator[tuple[int, int, int]]:
        """``kho_restore_folio()`` of every record in order, by runs: yields the
        restored (index, pa, count) runs.  ``strict``: a record that does not
        restore to a folio of ``order`` raises EINVAL (after the ones before
        it are yielded); else only records that do not restore are skipped.
        ``order`` None: any order, one by one."""
        kho = self.kernel.kho
        faults = self.kernel.machine.faults
        for i0, n in recs.runs(0):
            pa = recs.pfn_at(i0) << PAGE_SHIFT
            index = recs.index_at(i0)
            if (order is not None and n > 1 and recs.pfn_at(i0 + 1) - recs.pfn_at(i0) == 1 << order
                    and order <= kho.max_restore_order and pa % (PAGE_SIZE << order) == 0
                    and not faults.pending(FP_RESTORE, n)
                    and kho.in_magic.live_prefix(pa >> PAGE_SHIFT, order, n) == n):
                kho.restore_folio_run(pa, order, n)  # all of them restore
                yield index, pa, n
                continue
            for i in range(i0, i0 + n):  # one by one, as the kernel loop does
                ipa = recs.pfn_at(i) << PAGE_SHIFT
                got = kho.restore_folio(ipa)
                if got is None or got != order:
                    if strict:
                        raise KernelError(errno.EINVAL, f"folio {ipa:#x} could not be restored")
                    if got is None:
                        continue
                yield recs.index_at(i), ipa, 1

    def retrieve(self, args: FileOpArgs) -> None:
        """hugemfd_retrieve(): a new hugetlb file made of the preserved pages.

        The record is freed on success and failure; a page that cannot be
        restored is EINVAL, an unreadable array ENOMEM, and the pages
        restored so far are leaked on purpose (devices may still DMA to them).
        """
        k = self.kernel
        ser_pa = args.serialized_data
        if k.kho.restore_folio(ser_pa) is None:
            raise KernelError(errno.EINVAL, f"hugemfd record {ser_pa:#x} was not preserved")
        try:
            ser = self._record(ser_pa)
            h = self.subsys.hstates.get(ser.order)
            if h is None:
                raise KernelError(errno.ENODEV, f"no hstate of order {ser.order}")
            file = HugetlbMemfdFile(self.subsys, "", h, install_fd=False)
            file.seals = F_SEAL_SEAL  # hugetlbfs_get_inode(): a fresh inode is sealed
            file.pos = ser.pos
            file.size = ser.size
            if ser.size and ser.nr_folios:
                recs = self._folios(ser)
                if recs is None:
                    raise KernelError(errno.ENOMEM, "cannot restore the hugemfd folio array")
                for index, pa, n in self._restore(recs, h.order, strict=True):
                    h.nr_huge_pages += n  # account_new_hugetlb_folio(), in use
                    file._add_run(index, pa, h.order, n)
        finally:
            k.mm.free_pages(ser_pa)
        args.file = file

    def finish(self, args: FileOpArgs) -> None:
        """hugemfd_finish(): never retrieved → the pages become free pool pages."""
        if args.retrieve_status == 1:
            return
        k = self.kernel
        ser_pa = args.serialized_data
        if k.kho.restore_folio(ser_pa) is None:
            k.warn("hugetlb", f"hugemfd record {ser_pa:#x} not restorable at finish")
            return
        ser = self._record(ser_pa)
        k.mm.free_pages(ser_pa)
        recs = self._folios(ser) if ser.nr_folios else _Recs.empty()
        if recs is None:
            k.warn("hugetlb", "WARNING: hugemfd_finish: folio array not restorable")
            return
        h = self.subsys.hstates.get(ser.order)
        if h is None:  # no hstate: give the memory back to the buddy allocator
            for _index, pa, _n in self._restore(recs, None, strict=False):
                k.mm.free_pages(pa)
            return
        for _index, pa, n in self._restore(recs, h.order, strict=False):
            h.nr_huge_pages += n  # each joins the pool as a free page, in record order
            h.free.free_in_order(pa, n, h.size)
