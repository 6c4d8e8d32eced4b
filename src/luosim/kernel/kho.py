"""Kexec HandOver: models kernel/liveupdate/kexec_handover.c.

Outgoing side: preserved memory is tracked as (pfn, order) blocks, the
radix tree's content, held as runs of contiguous blocks so a TiB of folios
costs O(runs); at kexec the tree is written into freshly allocated pages in the
kernel's exact format, the root FDT of the profile's version (``kho-v2``, or
``kho-v3``/``kho-v4`` with a ``blob-size`` per subnode) is placed in a preserved
page, and ``kho_data`` (the x86 setup_data) is handed to the machine.

Incoming side: ``early_init`` reads ``kho_data`` from the boot parameters,
validates the root FDT (a mismatch means "not a KHO boot", as
``kho_populate()`` does), walks the radix tree and reserves every preserved
block in the new page allocator, tagging each head page the way
``kho_preserved_memory_reserve()`` writes KHO_PAGE_MAGIC.  Restores consume
those tags; anything never restored is reported as leaked.  A root of
another version is rejected as ``kho_populate()`` does (no KHO boot).

``init`` is the rest of ``kho_init()`` (fs_initcall): on kernels with
include/linux/kho/abi/kexec_metadata.h it reads the incoming
``kexec-metadata`` blob and registers the outgoing one (kexec count + 1).
"""

from __future__ import annotations

import bisect
import errno
import itertools
import struct
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from luosim.abi.errors import DecodeError
from luosim.abi.kexec_metadata import (
    KHO_KEXEC_METADATA_VERSION,
    KHO_METADATA_NODE_NAME,
    KexecMetadata,
    read_incoming,
)
from luosim.abi.kexec_metadata import SIZE as KEXEC_METADATA_SIZE
from luosim.abi.kho import (
    KHO_BITMAP_SIZE_LOG2,
    KHO_BLOB_SIZE_VERSIONS,
    KHO_ORDER_0_LOG2,
    KHO_TREE_MAX_DEPTH,
    MAX_PAGE_ORDER,
    KhoData,
    KhoScratch,
    Subtree,
    decode_root_fdt,
    encode_root_fdt,
)
from luosim.abi.kho_radix import walk_radix_arrays
from luosim.errors import KernelError
from luosim.faults import point
from luosim.faults.mutator import corrupt_kho_root, corrupt_radix_root
from luosim.hw.memory import (
    PAGE_SHIFT,
    PAGE_SIZE,
    BytePiece,
    Field,
    GenPiece,
    Piece,
    Records,
    ones_records,
)
from luosim.kernel.mm.page_alloc import order_for

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel

FP_PRESERVE = point("kho.preserve", ("ENOMEM",),
                    "kho_radix_add_page(): allocating a radix node fails")
FP_ALLOC_PRESERVE = point("kho.alloc_preserve", ("ENOMEM",),
                          "kho_alloc_preserve(): folio_alloc() fails")
FP_RESTORE = point("kho.restore", ("EINVAL",),
                   "kho_restore_page(): the page's KHO magic is missing (returns NULL)")
FP_HANDOVER = point("kho.handover", ("corrupt:root-compatible", "corrupt:mem-map",
                                     "corrupt:radix-node"),
                    "the hand-over FDT or radix tree is corrupted in memory before kexec")


def _caller_module() -> str:
    """The first kernel module up the stack that is not KHO itself."""
    frame = sys._getframe(2)
    while frame is not None:
        mod = frame.f_globals.get("__name__", "")
        if mod != __name__:
            return str(mod).removeprefix("luosim.kernel.")
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


def blocks(pfn: int, end_pfn: int) -> Iterator[tuple[int, int]]:
    """Split [pfn, end_pfn) the way ``kho_preserve_pages()`` does."""
    while pfn < end_pfn:
        tz = (pfn & -pfn).bit_length() - 1 if pfn else 63
        order = min(tz, (end_pfn - pfn).bit_length() - 1)
        yield pfn, order
        pfn += 1 << order


def contiguous_runs(pfns: np.ndarray) -> list[tuple[int, int]]:
    """(first pfn, pages) of the runs of consecutive pfns, in order."""
    if not pfns.size:
        return []
    brk = np.flatnonzero(pfns[1:] != pfns[:-1] + 1) + 1
    firsts = np.concatenate(([0], brk))
    lasts = np.concatenate((brk, [pfns.size]))
    return [(int(pfns[a]), int(b - a)) for a, b in zip(firsts.tolist(), lasts.tolist())]


AddrRun = tuple[int, int, int]  # (first address, entries, step): first + k * step, k < entries


def address_runs(addrs: np.ndarray) -> list[AddrRun]:
    """``addrs`` (u64) as runs of addresses one page apart (no wrap-around)."""
    if not addrs.size:
        return []
    a = addrs.astype(np.uint64)
    step = (a[1:] - a[:-1] == np.uint64(PAGE_SIZE)) & (a[1:] > a[:-1])
    brk = np.flatnonzero(~step) + 1
    firsts = [0, *brk.tolist()]
    lasts = [*brk.tolist(), int(a.size)]
    return [(int(a[f]), e - f, PAGE_SIZE) for f, e in zip(firsts, lasts)]


def runs_array(runs: Sequence[AddrRun]) -> np.ndarray:
    """Every address of ``runs``, in order (u64)."""
    if not runs:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return np.concatenate([np.uint64(first) + np.arange(n, dtype=np.uint64) * np.uint64(step)
                               for first, n, step in runs])


def page_spans(runs: Sequence[AddrRun]) -> list[tuple[int, int]] | None:
    """(first pfn, pages) of the runs of consecutive pages that ``runs`` list, in
    order, as :func:`contiguous_runs` of their pfns gives them; None unless every
    entry is a page address and no page is listed twice."""
    spans: list[list[int]] = []
    for first, n, step in runs:
        if first % PAGE_SIZE or (n > 1 and step != PAGE_SIZE):
            return None
        p = first >> PAGE_SHIFT
        if spans and spans[-1][0] + spans[-1][1] == p:
            spans[-1][1] += n
        else:
            spans.append([p, n])
    srt = sorted(spans)
    if any(a[0] + a[1] > b[0] for a, b in itertools.pairwise(srt)):
        return None
    return [(p, n) for p, n in spans]


class PreservedBlocks:
    """The outgoing radix tree's content: (pfn, order) blocks, with their owner.

    Single blocks in a dict, runs of contiguous blocks of one order (a memfd's
    folios) as ``[start, count, owner]`` per order, so preserving a TiB of
    folios costs O(runs).  Iterates, compares and tests membership like the
    ``set[tuple[int, int]]`` it replaces.
    """

    def __init__(self) -> None:
        self._single: dict[tuple[int, int], str] = {}
        self._starts: dict[int, list[int]] = {}  # order -> sorted run starts
        self._runs: dict[int, list[list[Any]]] = {}  # order -> [[start, count, owner]]
        self._len = 0

    def _run_index(self, pfn: int, order: int) -> int | None:
        starts = self._starts.get(order)
        if not starts:
            return None
        i = bisect.bisect_right(starts, pfn) - 1
        if i < 0:
            return None
        start, count, _owner = self._runs[order][i]
        off = pfn - start
        if off >= count << order or off & ((1 << order) - 1):
            return None
        return i

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 2):
            return False
        pfn, order = key
        return key in self._single or self._run_index(pfn, order) is not None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[tuple[int, int]]:
        yield from self._single
        for order, runs in self._runs.items():
            for start, count, _owner in runs:
                for k in range(count):
                    yield start + (k << order), order

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PreservedBlocks):
            other = set(other)
        if isinstance(other, (set, frozenset)):
            return len(self) == len(other) and all(key in self for key in other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def add(self, key: tuple[int, int], owner: str = "?") -> None:
        if key not in self:
            self._single[key] = owner
            self._len += 1

    def add_run(self, start: int, order: int, count: int, owner: str) -> None:
        """``count`` blocks of ``order`` from pfn ``start``, none preserved yet."""
        if count <= 0:
            return
        starts = self._starts.setdefault(order, [])
        runs = self._runs.setdefault(order, [])
        i = bisect.bisect_left(starts, start)
        starts.insert(i, start)
        runs.insert(i, [start, count, owner])
        self._len += count

    def discard(self, key: tuple[int, int]) -> None:
        if self._single.pop(key, None) is not None:
            self._len -= 1
            return
        self.remove_run(key[0], key[1], 1)

    def remove_run(self, start: int, order: int, count: int) -> int:
        """Remove blocks ``start + k << order`` (k < count) held in runs; return how many."""
        removed = 0
        pfn, end = start, start + (count << order)
        while pfn < end:
            i = self._run_index(pfn, order)
            if i is None:
                if self._single.pop((pfn, order), None) is not None:
                    self._len -= 1
                    removed += 1
                pfn += 1 << order
                continue
            rs, rc, owner = self._runs[order][i]
            k0 = (pfn - rs) >> order
            k1 = min(rc, k0 + ((end - pfn) >> order))
            parts = [[rs, k0, owner], [rs + (k1 << order), rc - k1, owner]]
            parts = [q for q in parts if q[1] > 0]
            self._starts[order][i:i + 1] = [q[0] for q in parts]
            self._runs[order][i:i + 1] = parts
            self._len -= k1 - k0
            removed += k1 - k0
            pfn = rs + (k1 << order)
        return removed

    def set_owner(self, key: tuple[int, int], owner: str) -> None:
        """Relabel one preserved block (a run is split around it)."""
        if key in self._single:
            self._single[key] = owner
            return
        if key not in self:
            raise KeyError(key)
        self.discard(key)
        self.add(key, owner)

    def owner(self, key: tuple[int, int], default: str = "?") -> str:
        got = self._single.get(key)
        if got is not None:
            return got
        i = self._run_index(*key)
        return default if i is None else str(self._runs[key[1]][i][2])

    def runs(self) -> list[tuple[int, int, int]]:
        """(start pfn, order, count) of every run, singles as runs of one, sorted."""
        out = [(pfn, order, 1) for pfn, order in self._single]
        for order, runs in self._runs.items():
            out.extend((start, order, count) for start, count, _owner in runs)
        out.sort()
        return out

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(pfn, order) int64 arrays of every block, sorted by (pfn, order)."""
        pfns: list[np.ndarray] = [np.fromiter((k[0] for k in self._single), dtype=np.int64,
                                              count=len(self._single))]
        orders: list[np.ndarray] = [np.fromiter((k[1] for k in self._single), dtype=np.int64,
                                                count=len(self._single))]
        for order, runs in self._runs.items():
            for start, count, _owner in runs:
                pfns.append(start + (np.arange(count, dtype=np.int64) << order))
                orders.append(np.full(count, order, dtype=np.int64))
        pfn = np.concatenate(pfns)
        order_arr = np.concatenate(orders)
        # runs come sorted: a stable (tim)sort of the combined key is near linear
        idx = np.argsort((pfn << 6) | order_arr, kind="stable")
        return pfn[idx], order_arr[idx]


class Owners:
    """View ``(pfn, order) -> module`` of who preserved each block."""

    def __init__(self, blocks: PreservedBlocks) -> None:
        self._blocks = blocks

    def get(self, key: tuple[int, int], default: str = "?") -> str:
        return self._blocks.owner(key, default)

    def __getitem__(self, key: tuple[int, int]) -> str:
        if key not in self._blocks:
            raise KeyError(key)
        return self._blocks.owner(key)

    def __setitem__(self, key: tuple[int, int], owner: str) -> None:
        self._blocks.set_owner(key, owner)

    def copy(self) -> Owners:
        """A snapshot that stays valid after the preserving kernel is gone."""
        snap = PreservedBlocks()
        snap._single = dict(self._blocks._single)
        snap._starts = {o: list(v) for o, v in self._blocks._starts.items()}
        snap._runs = {o: [list(r) for r in v] for o, v in self._blocks._runs.items()}
        snap._len = len(self._blocks)
        return Owners(snap)


class IncomingBlocks:
    """``kho_in``: head pfn -> order of every block with KHO_PAGE_MAGIC set.

    Runs of blocks as the radix walk found them (sorted by pfn; ``count``
    blocks of ``order`` from ``pfn``), with the blocks restored so far as
    intervals of block numbers per run: restoring consumes the magic.
    """

    def __init__(self, pfn: np.ndarray | None = None, order: np.ndarray | None = None,
                 count: np.ndarray | None = None) -> None:
        self.pfn = np.zeros(0, dtype=np.int64) if pfn is None else pfn
        self.order = np.zeros(0, dtype=np.int64) if order is None else order
        self.count = np.ones(self.pfn.size, dtype=np.int64) if count is None else count
        self.end = self.pfn + (self.count << self.order)
        self._claimed: dict[int, list[list[int]]] = {}  # run -> sorted [first, end) blocks
        self._nclaimed = 0
        self._claimed_pages = 0
        self._total = int(self.count.sum())

    def _locate(self, pfn: int) -> tuple[int, int] | None:
        """(run, block number) of the head pfn ``pfn``."""
        i = int(np.searchsorted(self.pfn, pfn, side="right")) - 1
        if i < 0 or pfn >= int(self.end[i]):
            return None
        o = int(self.order[i])
        off = pfn - int(self.pfn[i])
        if off & ((1 << o) - 1):
            return None
        return i, off >> o

    def _is_claimed(self, i: int, k: int) -> bool:
        iv = self._claimed.get(i)
        if not iv:
            return False
        j = bisect.bisect_right(iv, [k, 1 << 62]) - 1
        return j >= 0 and iv[j][0] <= k < iv[j][1]

    def get(self, pfn: int) -> int | None:
        hit = self._locate(pfn)
        if hit is None or self._is_claimed(*hit):
            return None
        return int(self.order[hit[0]])

    def _claim_range(self, i: int, a: int, b: int) -> None:
        """Blocks [a, b) of run i (none claimed yet)."""
        iv = self._claimed.setdefault(i, [])
        bisect.insort(iv, [a, b])
        j = iv.index([a, b])
        if j + 1 < len(iv) and iv[j + 1][0] == b:  # merge with the neighbours
            iv[j][1] = iv.pop(j + 1)[1]
        if j > 0 and iv[j - 1][1] == a:
            iv[j - 1][1] = iv.pop(j)[1]
        self._nclaimed += b - a
        self._claimed_pages += (b - a) << int(self.order[i])

    def live_prefix(self, pfn: int, order: int, n: int) -> int:
        """How many of the blocks ``pfn + k << order`` (k < n), from the first,
        carry a magic of ``order``: O(runs crossed), not O(n)."""
        done = 0
        while done < n:
            hit = self._locate(pfn + (done << order))
            if hit is None or int(self.order[hit[0]]) != order:
                return done
            i, k = hit
            avail = min(n - done, int(self.count[i]) - k)
            for a, b in self._claimed.get(i, []):
                if b > k:
                    if a <= k:
                        return done
                    avail = min(avail, a - k)
                    break
            done += avail
            if k + avail < int(self.count[i]):
                return done
        return done

    def claim_blocks(self, pfn: int, order: int, n: int) -> None:
        """Claim ``n`` blocks of ``order`` from ``pfn`` (all live: see live_prefix)."""
        done = 0
        while done < n:
            hit = self._locate(pfn + (done << order))
            assert hit is not None
            i, k = hit
            take = min(n - done, int(self.count[i]) - k)
            self._claim_range(i, k, k + take)
            done += take

    def claim(self, pfn: int) -> None:
        hit = self._locate(pfn)
        if hit is not None and not self._is_claimed(*hit):
            self._claim_range(hit[0], hit[1], hit[1] + 1)

    def lookup(self, pfns: np.ndarray) -> np.ndarray:
        """Orders of ``pfns`` still carrying a magic, -1 where none."""
        if not self.pfn.size or not pfns.size:
            return np.full(pfns.size, -1, dtype=np.int64)
        i = np.searchsorted(self.pfn, pfns, side="right") - 1
        ic = np.maximum(i, 0)
        o = self.order[ic]
        off = pfns - self.pfn[ic]
        ok = (i >= 0) & (pfns < self.end[ic]) & ((off & ((1 << o) - 1)) == 0)
        out = np.where(ok, o, -1)
        hit = ic[ok]
        if not self._claimed or not hit.size:
            return out
        lo, hi = int(hit.min()), int(hit.max())
        for run, iv in self._claimed.items():
            if not (lo <= run <= hi and iv):
                continue
            sel = np.flatnonzero(ok & (ic == run))
            k = off[sel] >> o[sel]
            starts = np.array([x[0] for x in iv])
            ends = np.array([x[1] for x in iv])
            j = np.searchsorted(starts, k, side="right") - 1
            taken = (j >= 0) & (k < ends[np.maximum(j, 0)])
            out[sel[taken]] = -1
        return out

    def claim_many(self, pfns: np.ndarray) -> None:
        """Claim ``pfns`` (each carrying a magic, none claimed yet)."""
        if not pfns.size:
            return
        i = np.searchsorted(self.pfn, pfns, side="right") - 1
        k = (pfns - self.pfn[i]) >> self.order[i]
        brk = np.flatnonzero((i[1:] != i[:-1]) | (k[1:] != k[:-1] + 1)) + 1
        firsts = np.concatenate(([0], brk))
        lasts = np.concatenate((brk, [pfns.size]))
        for a, b in zip(firsts.tolist(), lasts.tolist()):
            self._claim_range(int(i[a]), int(k[a]), int(k[b - 1]) + 1)

    def __len__(self) -> int:
        return self._total - self._nclaimed

    def items(self) -> Iterator[tuple[int, int]]:
        """(head pfn, order) of every block not restored, by pfn."""
        for i, (p0, o, n) in enumerate(zip(self.pfn.tolist(), self.order.tolist(),
                                           self.count.tolist())):
            iv = self._claimed.get(i, [])
            pos = 0
            for a, b in [*iv, [n, n]]:
                for k in range(pos, a):
                    yield p0 + (k << o), o
                pos = b

    def pages(self) -> int:
        return int((self.count << self.order).sum()) - self._claimed_pages


class Kho:
    """One kernel's KHO state (``kho_out`` and ``kho_in``)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        # kho_restore_page() order limit; the hugetlb series (patch 1) drops it
        self.max_restore_order = MAX_PAGE_ORDER
        self.mem = kernel.machine.memory
        self.enabled = not kernel.cmdline_has("kho=off")
        # outgoing: the radix tree's content, (pfn, order) pairs
        self.preserved = PreservedBlocks()
        # which kernel module preserved each block: an observer's annotation
        # (not part of the hand-over) so checks can tell pending from leaked
        self.owner = Owners(self.preserved)
        self.abi = kernel.profile.kho_abi  # root FDT version written and accepted
        self.subtrees: dict[str, int] = {}  # name -> phys, in insertion order
        self.sizes: dict[str, int] = {}  # name -> blob size given to kho_add_subtree()
        self.finalized = False
        # incoming
        self.in_fdt_pa = 0
        self.in_subtrees: dict[str, int] = {}
        self.in_sizes: dict[str, int] = {}  # kho-v3+: name -> blob-size, -1 when broken
        # kho_in.kexec_count / previous_release (0 and "" on a cold boot)
        self.kexec_count = 0
        self.previous_release = ""
        # incoming blobs KHO copies and leaves reserved (kho_in_kexec_metadata())
        self.in_kept: list[int] = []
        self.in_magic = IncomingBlocks()  # head pfn -> order (KHO_PAGE_MAGIC set)
        self.in_total_pages = 0
        self.scratch: list[KhoScratch] = list(kernel.machine.scratch)

    # ------------------------------------------------------------------ incoming
    @property
    def is_kho_boot(self) -> bool:
        """``is_kho_boot()``."""
        return self.in_fdt_pa != 0

    def early_init(self, kho_data: bytes | None) -> None:
        """``kho_populate()`` + ``kho_memory_init()``: parse and reserve."""
        k = self.kernel
        alloc = k.mm
        for s in self.scratch:
            alloc.reserve(s.addr, s.size)  # CMA: never holds unmovable kernel data
        if kho_data is None or not self.enabled:
            return
        try:
            kd = KhoData.decode(kho_data)
            self.mem.check_range(kd.fdt_addr, kd.fdt_size)
            root = decode_root_fdt(self.mem.read(kd.fdt_addr, kd.fdt_size),
                                   expect_compatible=self.abi)
            scratch = KhoScratch.decode_array(self.mem.read(kd.scratch_addr, kd.scratch_size))
        except Exception as exc:  # DecodeError, MemoryAccessError
            k.printk("warn", "kho", f"setup: handover FDT is invalid, booting without KHO: {exc}")
            return
        if root.mem_map_pa == 0:
            k.printk("err", "kho", "failed to get preserved memory map")
            return
        self.scratch = scratch
        walk = walk_radix_arrays(lambda pa: self.mem.read(pa, PAGE_SIZE), root.mem_map_pa,
                                 self.mem.size, full_leaves=self.mem.ones_pages)
        error = walk.error
        mem = self.mem.size
        for pa, o, n in zip(walk.pa.tolist(), walk.order.tolist(), walk.count.tolist()):
            size = PAGE_SIZE << o
            if pa + n * size > mem:  # the first block beyond RAM stops the walk
                nb = 0 if pa + size > mem else (mem - pa) // size
                error = DecodeError("kho radix tree", 0, "bitmap",
                                    f"block {pa + nb * size:#x} order {o} beyond RAM",
                                    kind="bad-value")
                break
        if error is not None:
            # kho_mem_retrieve() failed: kho_in.fdt_phys = 0, nothing is preserved
            k.printk("err", "kho", f"failed to walk preserved memory map: {error}")
            return
        pfn = (walk.pa >> np.uint64(PAGE_SHIFT)).astype(np.int64)
        idx = np.argsort(pfn, kind="stable")
        pfn, order, count = pfn[idx], walk.order[idx], walk.count[idx]
        alloc.reserve_many(pfn, pfn + (count << order))
        magic = IncomingBlocks(pfn, order, count)
        self.in_magic = magic
        self.in_total_pages = magic.pages()
        self.in_fdt_pa = kd.fdt_addr
        self.in_subtrees = root.subtrees
        self.in_sizes = root.sizes
        k.printk("info", "kho", f"found kexec handover data: {len(magic)} preserved blocks, "
                 f"{self.in_total_pages} pages, subtrees {sorted(root.subtrees)}")

    def retrieve_subtree(self, name: str) -> int:
        """``kho_retrieve_subtree()`` -> phys; ENOENT when absent, EINVAL when bad."""
        return self.retrieve_blob(name)[0]

    def retrieve_blob(self, name: str) -> tuple[int, int | None]:
        """``kho_retrieve_subtree(name, &phys, &size)`` -> (phys, size).

        kho-v3+ (gregkh/linux 9d87d0fc kernel/liveupdate/kexec_handover.c): a
        subnode without an 8-byte ``blob-size`` is EINVAL with a warning.  A
        kho-v2 root has no sizes (None).
        """
        if not self.is_kho_boot:
            raise KernelError(errno.ENOENT, "not a KHO boot")
        pa = self.in_subtrees.get(name)
        if pa is None:
            raise KernelError(errno.ENOENT, f"no KHO subtree {name!r}")
        if pa < 0:
            raise KernelError(errno.EINVAL, f"KHO subtree {name!r} has no 8-byte preserved-data")
        if self.abi not in KHO_BLOB_SIZE_VERSIONS:
            return pa, None
        size = self.in_sizes.get(name, -1)
        if size < 0:
            self.kernel.warn("kho", f"broken KHO subnode '{name}': missing or invalid "
                             "blob-size property")
            raise KernelError(errno.EINVAL, f"KHO subtree {name!r} has no 8-byte blob-size")
        return pa, size

    # ------------------------------------------------------------------ kho_init
    def init(self) -> None:
        """The kexec-metadata part of ``kho_init()`` (``kho_kexec_metadata_init()``).

        Kernels with include/linux/kho/abi/kexec_metadata.h (torvalds/linux
        40735a68) copy the incoming record (version and size checked, blob
        left reserved) and register an outgoing one with ``kexec_count`` one
        higher (0 on a cold boot).  A failure only warns.
        """
        if not self.enabled or self.kernel.profile.kexec_metadata is None:
            return
        if self.is_kho_boot:
            self._in_kexec_metadata()
        try:
            self._out_kexec_metadata()
        except KernelError as exc:
            self.kernel.printk("warn", "kho", "failed to initialize kexec-metadata subtree: "
                               f"{exc}")

    def _in_kexec_metadata(self) -> None:
        """``kho_in_kexec_metadata()``."""
        k = self.kernel
        try:
            pa, size = self.retrieve_blob(KHO_METADATA_NODE_NAME)
        except KernelError:
            return  # the previous kernel did not export metadata
        if size is None:
            return  # no blob-size (kho-v2): no kernel with metadata reads such a root
        try:
            meta = read_incoming(self.mem.read(pa, min(size, KEXEC_METADATA_SIZE)), size)
        except DecodeError as exc:
            k.printk("warn", "kho", f"kexec-metadata: {exc.reason}")
            return
        self.kexec_count = meta.kexec_count
        self.previous_release = meta.previous_release
        self.in_kept.append(pa)
        k.printk("info", "kho", f"exec from: {meta.previous_release} (count "
                 f"{meta.kexec_count})")

    def _out_kexec_metadata(self) -> None:
        """``kho_out_kexec_metadata()``: a 73-byte preserved blob, subtree "kexec-metadata"."""
        pa = self.alloc_preserve(KEXEC_METADATA_SIZE)
        self.owner[(pa >> PAGE_SHIFT, order_for(KEXEC_METADATA_SIZE))] = "kho"
        meta = KexecMetadata(KHO_KEXEC_METADATA_VERSION, self.kernel.profile.name,
                             self.kexec_count + 1)
        self.mem.write(pa, meta.encode())
        try:
            self.add_subtree(KHO_METADATA_NODE_NAME, pa, KEXEC_METADATA_SIZE)
        except KernelError:
            self.unpreserve_free(pa)
            raise

    def _restore_page(self, pa: int) -> int | None:
        """``kho_restore_page()``: the block's order, or None (with a warning)."""
        k = self.kernel
        pfn = pa >> PAGE_SHIFT
        order = self.in_magic.get(pfn) if pa % PAGE_SIZE == 0 else None
        effect = k.machine.faults.hit(FP_RESTORE, f"{pa:#x}")
        if order is None or order > self.max_restore_order or effect is not None:
            k.warn_once("kho", f"restore:{pa:#x}",
                        f"WARNING: kho_restore_page: {pa:#x} was not preserved (no KHO magic)")
            return None
        self.in_magic.claim(pfn)  # later restores of this page error out
        k.mm.adopt(pa, order)
        return order

    def restore_folio_run(self, pa: int, order: int, count: int) -> int:
        """:meth:`restore_folio` of ``count`` contiguous folios of ``order`` from ``pa``,
        stopping at the first that fails (warned about, not restored, as per
        folio); returns how many were restored.  O(1) Python in ``count``.
        """
        if count <= 0:
            return 0
        k = self.kernel
        size = PAGE_SIZE << order
        if k.machine.faults.pending(FP_RESTORE, count) or order > self.max_restore_order:
            for i in range(count):
                if self._restore_page(pa + i * size) != order:
                    return i
            return count
        ok = self.in_magic.live_prefix(pa >> PAGE_SHIFT, order, count)
        k.machine.faults.hit_many(FP_RESTORE, min(count, ok + 1), f"{pa:#x}")
        if ok:
            self.in_magic.claim_blocks(pa >> PAGE_SHIFT, order, ok)
            k.mm.adopt_run(pa, order, ok)
        if ok < count:
            bad_pa = pa + ok * size
            k.warn_once("kho", f"restore:{bad_pa:#x}",
                        f"WARNING: kho_restore_page: {bad_pa:#x} was not preserved (no KHO magic)")
        return ok

    def restore_folio(self, pa: int) -> int | None:
        """``kho_restore_folio()`` -> the folio's order, None when not preserved."""
        return self._restore_page(pa)

    def restore_pages(self, pa: int, nr_pages: int) -> bool:
        """``kho_restore_pages()``: every block of the split must carry a magic."""
        start = pa >> PAGE_SHIFT
        for pfn, _order in blocks(start, start + nr_pages):
            if self._restore_page(pfn << PAGE_SHIFT) is None:
                return False
        return True

    def restore_free(self, pa: int) -> None:
        """``kho_restore_free()``: claim a kho_alloc_preserve() block and free it."""
        order = self.restore_folio(pa)
        if order is None:
            self.kernel.warn("kho", f"kho_restore_free: {pa:#x} not restorable")
            return
        self.kernel.mm.free_pages(pa, order)

    def own_blocks(self) -> set[tuple[int, int]]:
        """Outgoing (pfn, order) blocks KHO preserved for itself (root FDT, kexec-metadata)."""
        return {b for b in self.preserved if self.owner.get(b) == "kho"}

    def unclaimed(self) -> list[tuple[int, int]]:
        """Preserved blocks the previous kernel handed over that nobody restored."""
        return [(pfn << PAGE_SHIFT, order) for pfn, order in self.in_magic.items()]

    def report_unclaimed(self, when: str) -> int:
        pages = self.in_magic.pages()
        if pages:
            self.kernel.printk("warn", "kho",
                               f"{when}: {len(self.in_magic)} preserved blocks ({pages} pages) "
                               "not restored: leaked until the next reboot")
        return pages

    # ------------------------------------------------------------------ outgoing
    def _check_scratch(self, pa: int, size: int) -> None:
        for s in self.scratch:
            if pa < s.addr + s.size and s.addr < pa + size:
                self.kernel.warn("kho", f"WARNING: preserving scratch memory {pa:#x}+{size:#x}")
                raise KernelError(errno.EINVAL, f"{pa:#x}+{size:#x} overlaps KHO scratch")

    def _check_open(self) -> None:
        if not self.enabled:
            raise KernelError(errno.EOPNOTSUPP, "KHO is disabled")
        if self.finalized:
            raise KernelError(errno.EBUSY, "KHO state is finalized")

    def _add(self, pfn: int, order: int) -> None:
        self.kernel.machine.faults.check(FP_PRESERVE, f"pfn {pfn:#x} order {order}")
        self.preserved.add((pfn, order), _caller_module())

    def _del(self, pfn: int, order: int) -> None:
        if (pfn, order) not in self.preserved:
            self.kernel.warn("kho", f"WARNING: kho_radix_del_page: {pfn << PAGE_SHIFT:#x} "
                             f"order {order} was not preserved")
            return
        self.preserved.discard((pfn, order))

    def preserve_folio(self, pa: int, order: int) -> None:
        """``kho_preserve_folio()``: EINVAL on scratch overlap, ENOMEM on node alloc."""
        self._check_open()
        if pa % (PAGE_SIZE << order):
            raise KernelError(errno.EINVAL, f"folio {pa:#x} not aligned to order {order}")
        self._check_scratch(pa, PAGE_SIZE << order)
        self._add(pa >> PAGE_SHIFT, order)

    def unpreserve_folio(self, pa: int, order: int) -> None:
        """``kho_unpreserve_folio()`` (void)."""
        self._del(pa >> PAGE_SHIFT, order)

    def preserve_folio_run(self, pa: int, order: int, count: int) -> None:
        """``count`` :meth:`preserve_folio` of contiguous folios of ``order`` from ``pa``.

        Same checks, fault occurrences and errors as the per-folio calls, O(1)
        in ``count``; on error nothing of the run stays preserved.
        """
        self._check_open()
        size = PAGE_SIZE << order
        faults = self.kernel.machine.faults
        scratch = any(pa < s.addr + s.size and s.addr < pa + size * count for s in self.scratch)
        if pa % size or scratch or faults.pending(FP_PRESERVE, count):
            done = 0
            try:  # the exact per-folio path: the error lands on its folio
                for k in range(count):
                    self.preserve_folio(pa + k * size, order)
                    done += 1
            except KernelError:
                self.preserved.remove_run(pa >> PAGE_SHIFT, order, done)
                raise
            return
        faults.hit_many(FP_PRESERVE, count, f"pfn {pa >> PAGE_SHIFT:#x} order {order}")
        self.preserved.add_run(pa >> PAGE_SHIFT, order, count, _caller_module())

    def unpreserve_folio_run(self, pa: int, order: int, count: int) -> None:
        """``count`` :meth:`unpreserve_folio` (warns for blocks not preserved)."""
        removed = self.preserved.remove_run(pa >> PAGE_SHIFT, order, count)
        if removed != count:
            self.kernel.warn("kho", f"WARNING: kho_radix_del_page: {count - removed} of "
                             f"{count} blocks from {pa:#x} order {order} were not preserved")

    def preserve_pages(self, pa: int, nr_pages: int) -> None:
        """``kho_preserve_pages()``: split into aligned blocks, undo on failure."""
        self._check_open()
        self._check_scratch(pa, nr_pages * PAGE_SIZE)
        done: list[tuple[int, int]] = []
        start = pa >> PAGE_SHIFT
        try:
            for pfn, order in blocks(start, start + nr_pages):
                self._add(pfn, order)
                done.append((pfn, order))
        except KernelError:
            for pfn, order in done:
                self._del(pfn, order)
            raise

    def unpreserve_pages(self, pa: int, nr_pages: int) -> None:
        start = pa >> PAGE_SHIFT
        for pfn, order in blocks(start, start + nr_pages):
            self._del(pfn, order)

    def alloc_preserve(self, size: int) -> int:
        """``kho_alloc_preserve()`` -> phys of zeroed, preserved memory."""
        if size <= 0:
            raise KernelError(errno.EINVAL, "kho_alloc_preserve of 0 bytes")
        order = order_for(size)
        if order > MAX_PAGE_ORDER:
            raise KernelError(errno.E2BIG, f"{size} bytes needs order {order}")
        self.kernel.machine.faults.check(FP_ALLOC_PRESERVE, f"{size} bytes")
        pa = self.kernel.mm.alloc_pages(order)
        self.mem.zero(pa, PAGE_SIZE << order)
        try:
            self.preserve_folio(pa, order)
        except KernelError:
            self.kernel.mm.free_pages(pa, order)
            raise
        return pa

    def unpreserve_free(self, pa: int) -> None:
        """``kho_unpreserve_free()``."""
        order = self.kernel.mm.allocated.get(pa >> PAGE_SHIFT)
        if order is None:
            self.kernel.warn("kho", f"kho_unpreserve_free: {pa:#x} is not allocated")
            return
        self.unpreserve_folio(pa, order)
        self.kernel.mm.free_pages(pa, order)

    def _preserve_vmalloc_bulk(self, data: bytes | Sequence[Records], nr: int, groups: int
                               ) -> bytes | None:
        """:meth:`preserve_vmalloc` by runs of pages: the same pages, bytes, blocks
        and fault occurrences; None (nothing done) when it must go page by page
        (a planned fault, not enough memory for all at once).

        Chunk layout per torvalds/linux c17ee635fd3a
        include/linux/kho/abi/kexec_handover.h: one page per
        ``kho_vmalloc_chunk``, ``hdr.next`` then a zero-terminated
        ``phys[KHO_VMALLOC_SIZE]`` (511 entries).

        ``data`` given as generated records (:class:`~luosim.hw.memory.Records`
        segments, one after the other) is laid out as generated pages: the
        same bytes, at a cost per segment and physical run.
        """
        k = self.kernel
        if k.machine.faults.pending(FP_PRESERVE, nr + groups):
            return None
        try:
            runs = k.mm.alloc_pages_bulk(0, nr)
        except KernelError:
            return None
        try:
            chunk_runs = k.mm.alloc_pages_bulk(0, groups)
        except KernelError:
            for pa, n in runs:
                k.mm.free_run(pa, 0, n)
            return None
        all_runs = runs + chunk_runs
        if any(pa < s.addr + s.size and s.addr < pa + n * PAGE_SIZE
               for pa, n in all_runs for s in self.scratch):
            for pa, n in all_runs:
                k.mm.free_run(pa, 0, n)
            return None
        pos = 0
        owner = _caller_module()
        if isinstance(data, bytes):
            padded = data.ljust(nr * PAGE_SIZE, b"\0")
            for pa, n in runs:
                self.mem.write_pages(pa, padded[pos:pos + n * PAGE_SIZE])
                pos += n * PAGE_SIZE
        else:
            for pa, n in runs:
                self.mem.write_stream(pa, data, pos, n)
                pos += n * PAGE_SIZE
        k.machine.faults.hit_many(FP_PRESERVE, nr + groups, "vmalloc")
        for pa, n in all_runs:
            self.preserved.add_run(pa >> PAGE_SHIFT, 0, n, owner)
        chunks = [pa + i * PAGE_SIZE for pa, n in chunk_runs for i in range(n)]
        per_chunk = PAGE_SIZE // 8 - 1
        entries: list[list[tuple[int, int]]] = [[] for _ in chunks]  # (first page, pages)
        ci = used = 0
        for pa, n in runs:
            while n:
                take = min(n, per_chunk - used)
                entries[ci].append((pa, take))
                pa += take * PAGE_SIZE
                n -= take
                used += take
                if used == per_chunk:
                    ci, used = ci + 1, 0
        self._write_vmalloc_chunks(chunks, entries)
        return struct.pack("<QIHH", chunks[0], nr, 0x0001, 0)  # flags: KHO_VMALLOC_ALLOC

    def _write_vmalloc_chunks(self, chunks: list[int],
                              entries: list[list[tuple[int, int]]]) -> None:
        """Write the ``kho_vmalloc_chunk`` pages as generated pages: ``hdr.next``,
        then the listed page addresses (runs of consecutive pages step by a
        page), zeros after.  Full chunks that follow on in memory and list
        pages that follow on are one descriptor; any other chunk one of its own."""
        per_chunk = PAGE_SIZE // 8 - 1

        def joins(j: int) -> bool:  # chunk j is full, of one run, and the next follows it
            return (j + 1 < len(chunks) and chunks[j + 1] == chunks[j] + PAGE_SIZE
                    and len(entries[j]) == 1 and entries[j][0][1] == per_chunk)

        i = 0
        while i < len(chunks):
            j = i
            while joins(j) and (j == i or entries[j][0][0]
                                == entries[j - 1][0][0] + per_chunk * PAGE_SIZE):
                j += 1
            if j > i:  # chunks [i, j): next and the first address step per chunk
                rec = Records(PAGE_SIZE, j - i, (
                    Field(0, 8, chunks[i] + PAGE_SIZE, PAGE_SIZE),
                    Field(8, 8, entries[i][0][0], per_chunk * PAGE_SIZE, per_chunk, PAGE_SIZE)))
                self.mem.fill_records(chunks[i], j - i, rec)
                i = j
                continue
            fields = [Field(0, 8, chunks[i + 1] if i + 1 < len(chunks) else 0)]
            w = 1
            for pa, n in entries[i]:
                fields.append(Field(8 * w, 8, pa, 0, n, PAGE_SIZE))
                w += n
            self.mem.fill_records(chunks[i], 1, Records(PAGE_SIZE, 1, tuple(fields)))
            i += 1

    def preserve_vmalloc(self, data: bytes | Sequence[Records]) -> bytes:
        """``kho_preserve_vmalloc()`` of an area holding ``data`` (order-0 pages):
        bytes, or the concatenation of generated record segments.

        Returns the 16-byte ``struct kho_vmalloc`` describing it.
        """
        self._check_open()
        size = len(data) if isinstance(data, bytes) else sum(r.nbytes for r in data)
        nr = max(1, -(-size // PAGE_SIZE))
        per_chunk = PAGE_SIZE // 8 - 1
        bulk = self._preserve_vmalloc_bulk(data, nr, -(-nr // per_chunk))
        if bulk is not None:
            return bulk
        if not isinstance(data, bytes):  # page by page: the bytes themselves
            data = b"".join(r.materialise(0, r.nbytes) for r in data)
        pages: list[int] = []
        chunks: list[int] = []
        try:
            for i in range(nr):
                pa = self.kernel.mm.alloc_pages(0)
                pages.append(pa)
                self.mem.write(pa, data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE].ljust(PAGE_SIZE,
                                                                               b"\0"))
                self.preserve_pages(pa, 1)
            per_chunk = PAGE_SIZE // 8 - 1
            groups = [pages[i:i + per_chunk] for i in range(0, len(pages), per_chunk)]
            for _ in groups:
                cpa = self.kernel.mm.alloc_pages(0)
                chunks.append(cpa)
                self.preserve_pages(cpa, 1)
        except KernelError:
            for pa in pages + chunks:
                if (pa >> PAGE_SHIFT, 0) in self.preserved:
                    self._del(pa >> PAGE_SHIFT, 0)
                self.kernel.mm.free_pages(pa, 0)
            raise
        for ci, (cpa, group) in enumerate(zip(chunks, groups)):
            nxt = chunks[ci + 1] if ci + 1 < len(chunks) else 0
            body = struct.pack(f"<Q{len(group)}Q", nxt, *group)
            self.mem.write(cpa, body.ljust(PAGE_SIZE, b"\0"))
        return struct.pack("<QIHH", chunks[0], nr, 0x0001, 0)  # flags: KHO_VMALLOC_ALLOC

    def _vmalloc_chunk(self, cpa: int) -> tuple[int, list[AddrRun]]:
        """(``hdr.next``, the entries before the zero terminator) of the chunk page
        at ``cpa``: per descriptor when it is a generated page nobody wrote
        into, else from its bytes (the same result)."""
        g = self.mem.gen_page(cpa)
        words = g.records.u64_words(g.off, PAGE_SIZE) if g is not None else None
        if words is None:
            arr = np.frombuffer(self.mem.read(cpa, PAGE_SIZE), dtype="<u8")
            zero = np.flatnonzero(arr[1:] == 0)
            used = arr[1:1 + int(zero[0])] if zero.size else arr[1:]
            return int(arr[0]), address_runs(used)
        nxt = 0
        out: list[AddrRun] = []
        pos = 1  # the next entry's word
        for w, n, first, step in words:  # by word, not overlapping; words between are zero
            if w == 0:
                nxt = first
                w, n, first = 1, n - 1, first + step
                if not n:
                    continue
            if w > pos or first == 0:  # a zero word: the terminator
                break
            out.append((first, n, step))
            pos = w + n
        return nxt, out

    def _joined_chunks(self, cpa: int, limit: int) -> tuple[int, list[AddrRun], int] | None:
        """Chunk pages from ``cpa`` that one descriptor lays out as full chunks
        each pointing at the next page (as :meth:`_write_vmalloc_chunks` joins
        them), up to ``limit`` of them: (``hdr.next`` of the last, the entries,
        how many chunks); None when fewer than two (read them one by one)."""
        g = self.mem.gen_run(cpa)
        if g is None or g.off % PAGE_SIZE:
            return None
        rec = g.records
        per = PAGE_SIZE // 8 - 1
        if rec.size != PAGE_SIZE or len(rec.fields) != 2:
            return None
        f0, f1 = rec.fields
        r = g.off // PAGE_SIZE
        m = min(g.length // PAGE_SIZE, rec.nrec - r, limit)
        if (m < 2 or (f0.offset, f0.width, f0.count, f0.step) != (0, 8, 1, PAGE_SIZE)
                or f0.base + (r - 1) * PAGE_SIZE != cpa  # record k's next: the page after it
                or (f1.offset, f1.width, f1.count, f1.elem_step) != (8, 8, per, PAGE_SIZE)):
            return None
        first = f1.base + r * f1.step
        if first == 0 or first + (m - 1) * f1.step + (per - 1) * PAGE_SIZE > (1 << 64) - 1:
            return None  # a zero entry (the terminator) or wrapping: by words
        if f1.step == per * PAGE_SIZE:  # the chunks list pages that follow on
            return cpa + m * PAGE_SIZE, [(first, per * m, PAGE_SIZE)], m
        return (cpa + m * PAGE_SIZE,
                [(first + k * f1.step, per, PAGE_SIZE) for k in range(m)], m)

    def _vmalloc_page_runs(self, desc: bytes) -> tuple[list[AddrRun], list[int]]:
        """(data page addresses as runs, chunk pages) of a ``kho_vmalloc``."""
        first, total, _flags, order = struct.unpack("<QIHH", desc)
        runs: list[AddrRun] = []
        listed = 0
        chunks: list[int] = []
        cpa = first
        while cpa:
            if cpa % PAGE_SIZE or cpa + PAGE_SIZE > self.mem.size or len(chunks) > total + 1:
                raise KernelError(errno.EINVAL, f"kho_vmalloc chunk pointer {cpa:#x} is bad")
            joined = self._joined_chunks(cpa, total + 2 - len(chunks))
            if joined is not None:
                nxt, entries, m = joined
                chunks.extend(range(cpa, cpa + m * PAGE_SIZE, PAGE_SIZE))
                cpa = nxt
            else:
                chunks.append(cpa)
                cpa, entries = self._vmalloc_chunk(cpa)
            runs += entries
            listed += sum(n for _first, n, _step in entries)
        if listed << order != total:
            raise KernelError(errno.EINVAL, f"kho_vmalloc lists {listed} pages, "
                              f"header says {total}")
        return runs, chunks

    def _vmalloc_page_array(self, desc: bytes) -> tuple[np.ndarray, list[int]]:
        """(data page addresses as a uint64 array, chunk pages) of a ``kho_vmalloc``."""
        runs, chunks = self._vmalloc_page_runs(desc)
        return runs_array(runs), chunks

    def vmalloc_spans(self, desc: bytes) -> list[tuple[int, int]]:
        """:func:`contiguous_runs` of the data pages' pfns of a ``kho_vmalloc``
        (empty when it cannot be read)."""
        try:
            runs, _chunks = self._vmalloc_page_runs(desc)
        except KernelError:
            return []
        spans = page_spans(runs)
        if spans is None:
            spans = contiguous_runs((runs_array(runs) >> np.uint64(PAGE_SHIFT)).astype(np.int64))
        return spans

    def unpreserve_vmalloc(self, desc: bytes) -> None:
        pages, chunks = self._vmalloc_page_array(desc)
        for pa in [int(p) for p in pages.tolist()] + chunks:
            self._del(pa >> PAGE_SHIFT, 0)
            self.kernel.mm.free_pages(pa, 0)

    def restore_vmalloc(self, desc: bytes) -> bytes | None:
        """``kho_restore_vmalloc()`` -> the area's bytes, None on failure."""
        view = self.restore_vmalloc_view(desc)
        if view is None:
            return None
        return b"".join(p.materialise() if isinstance(p, GenPiece) else p.data for p in view)

    def restore_vmalloc_and_free(self, desc: bytes) -> list[Piece] | None:
        """``kho_restore_vmalloc()`` of an area read once, then ``vfree()``: its
        content as :meth:`restore_vmalloc_view` pieces, its pages back to the
        allocator by runs; None (nothing freed) on failure."""
        spans = self.vmalloc_spans(desc)  # before the restore frees the chunk pages
        view = self.restore_vmalloc_view(desc)
        if view is None:
            return None
        mm = self.kernel.mm
        for first, n in spans:
            for a, b in mm.allocated.order0_spans(first, n):
                mm.free_run(a << PAGE_SHIFT, 0, b - a)
        return view

    def restore_vmalloc_view(self, desc: bytes) -> list[Piece] | None:
        """``kho_restore_vmalloc()`` -> the area's content as memory pieces in
        area order (:meth:`PhysicalMemory.view` of each physical run of its
        pages), None on failure.  Generated pages stay descriptors."""
        try:
            addr_runs, chunks = self._vmalloc_page_runs(desc)
        except KernelError as exc:
            self.kernel.printk("err", "kho", f"kho_restore_vmalloc: {exc}")
            return None
        faults = self.kernel.machine.faults
        total = sum(n for _first, n, _step in addr_runs)
        spans = page_spans(addr_runs)
        if (spans is not None and not faults.pending(FP_RESTORE, total)
                and all(self.in_magic.live_prefix(p, 0, n) == n for p, n in spans)):
            # distinct pages, every one with an order-0 magic: claimed by runs
            faults.hit_many(FP_RESTORE, total, "vmalloc")
            for first, n in spans:
                self.in_magic.claim_blocks(first, 0, n)
                self.kernel.mm.adopt_run(first << PAGE_SHIFT, 0, n)
            return self._vmalloc_view([], spans, chunks)
        pages_arr = runs_array(addr_runs)
        pfns = (pages_arr >> np.uint64(PAGE_SHIFT)).astype(np.int64)
        runs = contiguous_runs(pfns)
        if (not faults.pending(FP_RESTORE, len(pfns))
                and bool((self.in_magic.lookup(pfns) == 0).all())):
            # every page carries an order-0 magic: claim them all at once
            self.kernel.machine.faults.hit_many(FP_RESTORE, len(pfns), "vmalloc")
            self.in_magic.claim_many(pfns)
            for first, n in runs:
                self.kernel.mm.adopt_run(first << PAGE_SHIFT, 0, n)
        else:
            for pa in (int(p) for p in pages_arr.tolist()):
                if not self.restore_pages(pa, 1):
                    return None
        out: list[Piece] = []
        if (pages_arr % np.uint64(PAGE_SIZE)).any():  # a garbage entry inside a page: as listed
            out.append(BytePiece(0, b"".join(self.mem.read(int(pa), PAGE_SIZE)
                                             for pa in pages_arr.tolist())))
            runs = []
        return self._vmalloc_view(out, runs, chunks)

    def _vmalloc_view(self, out: list[Piece], runs: list[tuple[int, int]], chunks: list[int]
                      ) -> list[Piece] | None:
        """The restored area's pieces (``out``, then the views of the page ``runs``),
        after restoring and freeing the chunk pages."""
        for first, n in runs:
            for piece in self.mem.view(first << PAGE_SHIFT, n * PAGE_SIZE):
                last = out[-1] if out else None
                if (isinstance(piece, GenPiece) and isinstance(last, GenPiece)
                        and last.records == piece.records
                        and last.off + last.length == piece.off):  # the area continues it
                    out[-1] = GenPiece(last.pa, last.length + piece.length, last.records,
                                       last.off)
                elif isinstance(piece, BytePiece) and isinstance(last, BytePiece):
                    out[-1] = BytePiece(last.pa, last.data + piece.data)
                else:
                    out.append(piece)
        # the chunk pages: kho_restore_pages() and freed, one by one or by runs
        cspans = page_spans([(cpa, 1, 0) for cpa in chunks])
        faults = self.kernel.machine.faults
        if (cspans is not None and not faults.pending(FP_RESTORE, len(chunks))
                and all(self.in_magic.live_prefix(p, 0, n) == n for p, n in cspans)):
            faults.hit_many(FP_RESTORE, len(chunks), "vmalloc chunks")
            for p, n in cspans:
                self.in_magic.claim_blocks(p, 0, n)
                self.kernel.mm.adopt_run(p << PAGE_SHIFT, 0, n)
                self.kernel.mm.free_run(p << PAGE_SHIFT, 0, n)
            return out
        for cpa in chunks:
            if not self.restore_pages(cpa, 1):
                return None
            self.kernel.mm.free_pages(cpa, 0)
        return out

    def add_subtree(self, name: str, pa: int, size: int | None = None) -> None:
        """``kho_add_subtree()``: EEXIST for a duplicate name.

        ``size`` is the blob size (kho-v3+ ``blob-size``); None lets the
        hand-over take an FDT's ``totalsize`` or else the allocation's size.
        """
        if not self.enabled:
            raise KernelError(errno.EOPNOTSUPP, "KHO is disabled")
        if name in self.subtrees:
            raise KernelError(errno.EEXIST, f"KHO subtree {name!r} exists")
        self.subtrees[name] = pa
        if size is not None:
            self.sizes[name] = size

    def remove_subtree(self, pa: int) -> None:
        """``kho_remove_subtree()``: by physical address, silently if absent."""
        for name, val in list(self.subtrees.items()):
            if val == pa:
                del self.subtrees[name]
                self.sizes.pop(name, None)
                return

    def finalize(self) -> None:
        """Freeze the preserved set (``kho_finalize()`` of LUO P0/P1 kernels)."""
        self.finalized = True

    # ------------------------------------------------------------------ hand-over
    def _write_radix_tree(self) -> int:
        """Materialise the radix tree in memory; return the root's phys.

        Nodes are allocated in the order ``kho_radix_add_page()`` would create
        them inserting the blocks by (pfn, order): the root first, then for
        each block the missing nodes of its path, top down.  Keys, node
        membership and leaf bitmaps are computed with numpy, so the cost is
        per node, not per block.
        """
        k = self.kernel
        top = KHO_TREE_MAX_DEPTH - 1
        # A run of blocks has consecutive keys: per level it needs a range of
        # nodes, the first block needing each is found arithmetically, and its
        # leaf bits are slices - the cost is per run and node, not per block.
        first_use: dict[tuple[int, int], tuple[int, int]] = {}  # node -> first (pfn, order)
        leaves: dict[int, list[tuple[int, int]]] = {}  # leaf prefix -> set bit ranges
        # leaves [a, b) one run covers whole (all ones), under one level-1 node:
        # (a, b, first block's pfn, order) - guest RAM is mostly such leaves
        full_ranges: list[tuple[int, int, int, int]] = []
        merged: list[list[int]] = []  # runs that follow on joined (per-folio preserves)
        for start, o, n in self.preserved.runs():
            last = merged[-1] if merged else None
            if last is not None and last[1] == o and last[0] + (last[2] << o) == start:
                last[2] += n
            else:
                merged.append([start, o, n])
        for start, o, n in merged:
            k0 = (1 << (KHO_ORDER_0_LOG2 - o)) | (start >> o)
            k1 = k0 + n  # exclusive
            for level in range(top):
                shift = level * 9 + KHO_BITMAP_SIZE_LOG2
                prefixes: Sequence[int] = range(k0 >> shift, ((k1 - 1) >> shift) + 1)
                if level == 0:
                    a, b = -(-k0 >> shift), k1 >> shift  # the leaves this run fills
                    q = a
                    while q < b:
                        e = min(b, (q | 511) + 1)
                        full_ranges.append((q, e, start + (((q << shift) - k0) << o), o))
                        q = e
                    prefixes = sorted({p for p in (prefixes[0], prefixes[-1])
                                       if not a <= p < b})
                for prefix in prefixes:
                    lo = max(k0, prefix << shift)
                    first = (start + ((lo - k0) << o), o)
                    key = (level, prefix)
                    if key not in first_use or first < first_use[key]:
                        first_use[key] = first
                    if level == 0:
                        hi = min(k1, (prefix + 1) << shift)
                        leaves.setdefault(prefix, []).append(
                            (lo - (prefix << shift), hi - (prefix << shift)))
        # allocation order: by first block, then top down.  A range of full
        # leaves is one event: no other node's first block falls inside it
        # (its blocks are its run's alone, and it stops at level-1 boundaries,
        # where the nodes above it come first)
        events = sorted([(i, -level, prefix, 1) for (level, prefix), i in first_use.items()]
                        + [((pfn, o), 0, a, b - a) for a, b, pfn, o in full_ranges])
        total = 1 + sum(ev[3] for ev in events)
        # the nodes in allocation order, as that many alloc_pages(0) hand them out
        try:
            node_runs = k.mm.alloc_pages_bulk(0, total)
        except KernelError:  # out of memory: fail where the one-by-one allocation fails
            node_runs = [(k.mm.alloc_pages(0), 1) for _ in range(total)]
        node_arr = np.concatenate([pa + (np.arange(n, dtype=np.int64) << PAGE_SHIFT)
                                   for pa, n in node_runs])
        nodes: dict[tuple[int, int], int] = {(top, 0): int(node_arr[0])}
        range_at: list[tuple[int, int, int]] = []  # (first leaf, leaves, index in node_arr)
        idx = 1
        for _first, neg_level, prefix, count in events:
            if -neg_level == 0 and prefix not in leaves:
                range_at.append((prefix, count, idx))
            else:
                nodes[(-neg_level, prefix)] = int(node_arr[idx])
            idx += count
        root = nodes[(top, 0)]
        tables: dict[int, np.ndarray] = {}
        for (level, _prefix), pa in nodes.items():
            if level:
                tables[pa] = np.zeros(512, dtype="<u8")
        for (level, prefix), pa in nodes.items():
            if level < top:
                parent = nodes[(level + 1, prefix >> 9)]
                tables[parent][prefix & 511] = pa
        for a, count, i in range_at:
            tables[nodes[(1, a >> 9)]][a & 511:(a & 511) + count] = node_arr[i:i + count]
        for pa, table in tables.items():
            self.mem.write_pages(pa, table.tobytes())
        nbits = 1 << KHO_BITMAP_SIZE_LOG2
        for leaf, ranges in leaves.items():
            bitmap = np.zeros(nbits, dtype=np.uint8)
            for lo, hi in ranges:
                bitmap[lo:hi] = 1
            self.mem.write_pages(nodes[(0, leaf)], np.packbits(bitmap, bitorder="little").tobytes())
        # full leaves: generated all-ones pages, one descriptor per physical run
        if range_at:
            full = np.sort(np.concatenate([node_arr[i:i + count] for _a, count, i in range_at]))
            brk = np.flatnonzero(np.diff(full) != PAGE_SIZE) + 1
            bounds = [0, *brk.tolist(), int(full.size)]
            for f, e in itertools.pairwise(bounds):
                self.mem.fill_records(int(full[f]), e - f, ones_records(e - f))
        return root

    def _blob_size(self, name: str, pa: int) -> int:
        """The size ``kho_add_subtree()`` was given; for callers that gave none, an
        FDT's ``totalsize`` or the preserved allocation's size."""
        size = self.sizes.get(name)
        if size is not None:
            return size
        head = self.mem.read(pa, 8)
        if head[:4] == b"\xd0\x0d\xfe\xed":
            return int.from_bytes(head[4:8], "big")
        order = self.kernel.mm.allocated.get(pa >> PAGE_SHIFT) or 0
        return PAGE_SIZE << order

    def handover(self) -> bytes | None:
        """Write the KHO state for the next kernel; return ``kho_data``.

        Models what exists in memory at ``machine_kexec()``: the radix tree,
        the root FDT (a preserved page) and the scratch array.
        """
        k = self.kernel
        if not self.enabled:
            return None
        self.finalized = True
        fdt_pa = k.mm.alloc_pages(0)
        self.preserved.add((fdt_pa >> PAGE_SHIFT, 0), "kho")
        scratch_pa = k.mm.alloc_pages(0)
        scratch_blob = b"".join(s.encode() for s in self.scratch)
        self.mem.write(scratch_pa, scratch_blob)
        root = self._write_radix_tree()
        effect = k.machine.faults.hit(FP_HANDOVER, "kho hand-over")
        subtrees: list[Subtree] = [(name, pa, self._blob_size(name, pa))
                                   for name, pa in self.subtrees.items()]
        blob = encode_root_fdt(root, subtrees, compatible=self.abi)
        self.mem.write(fdt_pa, blob)
        kho_data = bytearray(KhoData(fdt_pa, len(blob), scratch_pa, len(scratch_blob)).encode())
        # corrupt:* effects edit the written hand-over in memory (faults/mutator.py)
        if effect in ("corrupt:root-compatible", "corrupt:mem-map"):
            corrupt_kho_root(self.mem, kho_data, effect)
        elif effect == "corrupt:radix-node":
            corrupt_radix_root(self.mem, root)
        k.printk("info", "kho", f"hand-over: {len(self.preserved)} preserved blocks, "
                 f"subtrees {list(self.subtrees)}")
        return bytes(kho_data)
