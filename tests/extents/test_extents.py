"""Extents (issue #12): bulk paths give what the per-item paths gave, at a cost per run."""

from __future__ import annotations

import random

import numpy as np
import pytest

from luosim import Machine
from luosim.abi.kho import walk_radix_tree
from luosim.abi.kho_radix import walk_radix_arrays
from luosim.abi.memfd import (
    MEMFD_LUO_FOLIO_DIRTY,
    MEMFD_LUO_FOLIO_UPTODATE,
    MemfdLuoFolioSer,
    decode_folio_arrays,
    encode_folio_array,
    encode_folio_runs,
)
from luosim.errors import KernelError
from luosim.hw.memory import (
    PAGE_SIZE,
    POISON_BYTE,
    PhysicalMemory,
    derive_seed,
    synthetic_page,
)
from luosim.kernel.kho import PreservedBlocks
from luosim.kernel.mm.page_alloc import PageAllocator
from tests.extents.radix_fixtures import LEAF_KEYS, full_leaf_tree, page_reader

MiB = 1 << 20


class _NaiveMemory:
    """Every page as bytes: the reference the extent model must match."""

    def __init__(self, npages: int) -> None:
        self.pages = [bytes(PAGE_SIZE)] * npages
        self.poisoned = False

    def fill_run(self, pfn: int, order: int, count: int, seed: int, family: bool,
                 index0: int) -> None:
        for k in range(count):
            s = derive_seed(seed, index0 + (k << order)) if family else seed
            for i in range(1 << order):
                self.pages[pfn + (k << order) + i] = synthetic_page(s, i)

    def write(self, pa: int, data: bytes) -> None:
        buf = bytearray(b"".join(self.pages))
        buf[pa:pa + len(data)] = data
        self.pages = [bytes(buf[i:i + PAGE_SIZE]) for i in range(0, len(buf), PAGE_SIZE)]

    def fill_pages(self, pfn: int, n: int, byte: int) -> None:
        for p in range(pfn, pfn + n):
            self.pages[p] = bytes([byte]) * PAGE_SIZE

    def scrub(self, keep: list[tuple[int, int]]) -> None:
        kept: set[int] = set()
        for pa, n in keep:
            kept.update(range(pa // PAGE_SIZE, -(-(pa + n) // PAGE_SIZE)))
        for p in range(len(self.pages)):
            if p not in kept:
                self.pages[p] = bytes([POISON_BYTE]) * PAGE_SIZE
        self.poisoned = True


@pytest.mark.parametrize("seed", range(6))
def test_extent_memory_reads_like_a_page_array(seed: int) -> None:
    rng = random.Random(seed)
    npages = 1024  # 4 MiB: small enough for the naive model
    mem, ref = PhysicalMemory(npages * PAGE_SIZE), _NaiveMemory(npages)
    for _ in range(40):
        op = rng.choice(["fill", "fill", "write", "zero", "poison", "scrub"])
        if op == "fill":
            order = rng.choice([0, 1, 3, 4])
            count = rng.randint(1, 12)
            pfn = rng.randrange(0, npages - (count << order)) & ~((1 << order) - 1)
            fam = rng.random() < 0.7
            s, i0 = rng.getrandbits(64) >> 2, rng.randrange(0, 1 << 20) << order
            mem.fill_run(pfn * PAGE_SIZE, order, count, s, family=fam, index0=i0)
            ref.fill_run(pfn, order, count, s, fam, i0 if fam else 0)
        elif op == "write":
            pa = rng.randrange(0, npages * PAGE_SIZE - 9000)
            data = rng.randbytes(rng.randint(1, 9000))
            mem.write(pa, data)
            ref.write(pa, data)
        elif op in ("zero", "poison"):
            pfn = rng.randrange(0, npages - 64)
            n = rng.randint(1, 64)
            (mem.zero if op == "zero" else mem.poison)(pfn * PAGE_SIZE, n * PAGE_SIZE)
            ref.fill_pages(pfn, n, 0 if op == "zero" else POISON_BYTE)
        else:
            keep = [(rng.randrange(0, npages * PAGE_SIZE - 65536), rng.randint(1, 65536))
                    for _ in range(rng.randint(0, 6))]
            mem.scrub(keep)
            ref.scrub(keep)
        for _ in range(5):
            pa = rng.randrange(0, npages * PAGE_SIZE - 20000)
            n = rng.randint(1, 20000)
            want = b"".join(ref.pages)[pa:pa + n]
            assert mem.read(pa, n) == want, (op, pa, n)
    assert mem.read(0, npages * PAGE_SIZE) == b"".join(ref.pages)


def test_describe_is_canonical_however_the_extents_are_split() -> None:
    a, b = PhysicalMemory(64 * MiB), PhysicalMemory(64 * MiB)
    a.fill_run(2 * MiB, 9, 8, 77, family=True, index0=0)
    b.fill_run(2 * MiB, 9, 3, 77, family=True, index0=0)
    b.fill_run(8 * MiB, 9, 5, 77, family=True, index0=3 << 9)
    assert len(b.extents()) == 2
    assert a.describe(512, 8 << 9) == b.describe(512, 8 << 9)
    assert len(a.describe(512, 8 << 9)) == 1  # one token for 8 folios
    before = a.describe(512, 8 << 9)
    a.write(5 * MiB + 17, b"x")
    assert a.describe(512, 8 << 9) != before
    assert a.read(5 * MiB + 17, 1) == b"x"


def test_fingerprint_of_poisoned_memory_does_not_hash_pages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kho.handover corrupt:* plans: every VM folio poisoned, O(1) each."""
    mem = PhysicalMemory(1 << 30)
    mem.fill_run(0, 9, 512, 5, family=True)
    mem.scrub([])
    calls = []
    monkeypatch.setattr(mem, "page_digest", lambda p: calls.append(p) or 0)
    fps = {mem.folio_fingerprint(i * 2 * MiB, 9) for i in range(512)}
    assert len(fps) == 1 and not calls
    assert mem.describe(0, 1 << 18) == [(0, "uni", (1 << 64) - 2, 1 << 18)]


def test_a_tib_of_folios_is_one_extent() -> None:
    mem = PhysicalMemory(2 << 40)
    mem.fill_run(1 << 30, 9, (1 << 40) // (2 * MiB), 9, family=True)
    assert len(mem.extents()) == 1
    assert mem.resident_pages() == (1 << 40) // PAGE_SIZE
    last = (1 << 30) + (1 << 40) - PAGE_SIZE
    k = ((1 << 40) // (2 * MiB)) - 1
    assert mem.read(last, 16) == synthetic_page(derive_seed(9, k << 9), 511)[:16]


@pytest.mark.parametrize("seed", range(4))
def test_bulk_allocation_is_first_fit_like_one_block_at_a_time(seed: int) -> None:
    rng = random.Random(seed)
    a, b = PageAllocator(1 << 30), PageAllocator(1 << 30)
    for _ in range(30):  # fragment both the same way
        order = rng.randint(0, 4)
        pa = a.alloc_pages(order)
        assert b.alloc_pages(order) == pa
        if rng.random() < 0.5:
            a.free_pages(pa)
            b.free_pages(pa)
    order, count = rng.randint(0, 9), rng.randint(1, 300)
    one_by_one = [a.alloc_pages(order) for _ in range(count)]
    runs = b.alloc_pages_bulk(order, count)
    assert [pa + (k << (order + 12)) for pa, n in runs for k in range(n)] == one_by_one
    assert dict(a.allocated.items()) == dict(b.allocated.items())
    b.free_run(runs[0][0], order, runs[0][1])
    for k in range(runs[0][1]):
        a.free_pages(runs[0][0] + (k << (order + 12)))
    assert dict(a.allocated.items()) == dict(b.allocated.items())
    assert a.free_pages_count() == b.free_pages_count()


def test_preserved_blocks_behave_like_a_set() -> None:
    rng = random.Random(3)
    blocks, ref = PreservedBlocks(), set()
    for _ in range(300):
        order = rng.choice([0, 9])
        start = rng.randrange(0, 1 << 16) << order
        count = rng.randint(1, 20)
        keys = {(start + (k << order), order) for k in range(count)}
        op = rng.random()
        if op < 0.3 and not keys & ref:
            blocks.add_run(start, order, count, "t")
            ref |= keys
        elif op < 0.5:
            blocks.add((start, order))
            ref.add((start, order))
        elif op < 0.8:
            blocks.remove_run(start, order, count)
            ref -= keys
        else:
            blocks.discard((start, order))
            ref.discard((start, order))
        assert len(blocks) == len(ref)
    assert blocks == ref and set(blocks) == ref
    pfn, order_arr = blocks.arrays()
    assert list(zip(pfn.tolist(), order_arr.tolist())) == sorted(ref)


def test_folio_array_bulk_encoding_matches_per_record_encoding() -> None:
    """include/linux/kho/abi/memfd.h: 16-byte records, pfn:52 | flags:12, index."""
    runs = [(0, 0x40000000, 9, 3), (3 << 9, 0x80000000, 9, 2), (4096, 0x1000, 0, 5)]
    flags = MEMFD_LUO_FOLIO_DIRTY | MEMFD_LUO_FOLIO_UPTODATE
    recs = [MemfdLuoFolioSer((pa >> 12) + (k << o), flags, i + (k << o))
            for i, pa, o, n in runs for k in range(n)]
    raw = encode_folio_runs(runs, flags)
    assert raw == encode_folio_array(recs)
    pfn, fl, idx = decode_folio_arrays(raw, len(recs))
    assert [(int(p), int(f), int(i)) for p, f, i in zip(pfn, fl, idx)] == \
        [(r.pfn, r.flags, r.index) for r in recs]


def _tree(machine: Machine, blocks: list[tuple[int, int]]) -> int:
    k = machine.boot("v7")
    for pfn, order in blocks:
        k.kho.preserved.add((pfn, order), "t")
    return k.kho._write_radix_tree()


@pytest.mark.parametrize("seed", range(5))
def test_bulk_radix_walk_matches_the_generator(seed: int) -> None:
    rng = random.Random(seed)
    m = Machine.from_topology({"memory": "64GiB"})
    blocks = {(rng.randrange(1 << 10, 1 << 24) & ~((1 << o) - 1), o)
              for o in (0, 0, 1, 9, 10) for _ in range(rng.randint(1, 400))}
    root = _tree(m, sorted(blocks))

    def read(pa: int) -> bytes:
        return m.memory.read(pa, PAGE_SIZE)

    nodes: list[int] = []
    want = list(walk_radix_tree(read, root, m.memory.size, on_node=nodes.append))
    got = walk_radix_arrays(read, root, m.memory.size)
    assert got.error is None and got.nodes == nodes
    assert got.blocks() == want
    # corrupt a node: same blocks up to the same error
    victim = rng.choice(nodes[1:])
    m.memory.write(victim + 8 * rng.randrange(512), rng.randbytes(8))
    gen: list[tuple[int, int]] = []
    err = None
    try:
        for b in walk_radix_tree(read, root, m.memory.size):
            gen.append(b)
    except Exception as exc:  # DecodeError
        err = exc
    got = walk_radix_arrays(read, root, m.memory.size)
    assert got.blocks() == gen
    assert (got.error is None) == (err is None)
    if err is not None:
        assert str(got.error) == str(err)


def test_order0_memfd_of_a_gib_costs_a_handful_of_extents() -> None:
    """The README's first snippet: 262,144 folios of 4 KiB, described by runs."""
    m = Machine.from_topology({})
    k = m.boot("v7")
    s = k.open_liveupdate().create_session("vm0")
    f = k.memfd_create("ram", size=1 << 30)
    f.fill(0, 1 << 30, 42)
    s.preserve_fd(f, token=1)
    fp = f.fingerprint()
    assert f.nr_folios == 1 << 18
    assert len(f.folio_runs()) <= 4
    assert len(k.kho.preserved._single) < 600  # the folio array pages, not the folios
    assert len(m.memory.extents()) < 64
    k2 = k.kexec("v7")
    f2 = k2.open_liveupdate().retrieve_session("vm0").retrieve_fd(1)
    assert f2.nr_folios == 1 << 18 and f2.fingerprint() == fp
    assert f2.folio_runs() == f.folio_runs()
    assert f2.read((1 << 30) - 16, 16) == synthetic_page(derive_seed(42, (1 << 18) - 1), 0)[:16]


def test_preserve_fault_on_the_nth_folio_lands_on_that_folio() -> None:
    """Bulk preservation keeps fault occurrences: kho.preserve#N is the Nth block."""
    from luosim.faults import Fault
    m = Machine.from_topology({}, faults=(Fault.parse("kho.preserve#300=ENOMEM"),))
    k = m.boot("v7")
    s = k.open_liveupdate().create_session("vm0")
    f = k.memfd_create("ram", size=2 << 20)  # 512 order-0 folios
    before = set(k.kho.preserved)
    with pytest.raises(KernelError):
        s.preserve_fd(f, token=1)
    assert set(k.kho.preserved) == before  # the 298 before it were undone
    assert m.faults.fired and m.faults.fired[0][1].startswith("pfn ")
    assert m.faults.reached["kho.preserve"] == 300


def test_np_is_used_for_the_bulk_paths() -> None:
    assert np.__version__ >= "1.26"


def test_full_radix_leaves_are_one_run_and_match_the_generator() -> None:
    """Runs that fill whole leaves (guest RAM): the writer emits all-ones leaves,
    the bulk walker joins them into one run, and the blocks are the generator's."""
    m, root = full_leaf_tree()
    read = page_reader(m.memory)

    nodes: list[int] = []
    want = list(walk_radix_tree(read, root, m.memory.size, on_node=nodes.append))
    got = walk_radix_arrays(read, root, m.memory.size)
    assert got.error is None and got.nodes == nodes
    assert got.blocks() == want
    runs = list(zip(got.pa.tolist(), got.order.tolist(), got.count.tolist()))
    assert (1 << 33, 0, 3 * LEAF_KEYS) in runs  # three leaves, one run
    assert (1 << 36, 9, LEAF_KEYS) in runs
    assert (((1 << 24) + (LEAF_KEYS << 9)) << 12, 9, 5) in runs
    full = [n for n in nodes if m.memory.read(n, PAGE_SIZE) == b"\xff" * PAGE_SIZE]
    assert len(full) == 4
