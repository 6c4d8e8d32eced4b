"""KHO metadata as generated pages: vmalloc chunk pages and full radix leaves.

The writers lay these pages out as descriptors (hw.memory.Records) and the
readers decode them per descriptor; every check here compares the
descriptor path with decoding the plain bytes, also after something wrote
into a chunk page or a leaf (a corrupt:* mutation, DMA), which must turn the
page back into bytes that the readers then see.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from luosim.abi.kho import (
    KHO_BITMAP_SIZE_LOG2,
    KHO_ORDER_0_LOG2,
    KHO_TABLE_SIZE_LOG2,
    KHO_TREE_MAX_DEPTH,
    walk_radix_tree,
)
from luosim.abi.kho_radix import walk_radix_arrays
from luosim.errors import KernelError
from luosim.hw.machine import Machine
from luosim.hw.memory import PAGE_SIZE, Field, PhysicalMemory, Records, is_ones, ones_records
from luosim.kernel.kho import address_runs, page_spans, runs_array
from tests.extents.radix_fixtures import full_leaf_tree, page_reader

U64 = (1 << 64) - 1


def words_of(runs: list[tuple[int, int, int, int]], nwords: int) -> np.ndarray:
    out = np.zeros(nwords, dtype=np.uint64)
    for w, n, first, step in runs:
        out[w:w + n] = [first + e * step for e in range(n)]
    return out


@st.composite
def word_records_st(draw: st.DrawFn) -> Records:
    size = draw(st.sampled_from([8, 16, 24, 4096]))
    fields = []
    for _ in range(draw(st.integers(0, 3))):
        count = draw(st.integers(1, max(1, min(size // 8, 600))))
        if count * 8 > size:
            continue
        word = draw(st.integers(0, size // 8 - count))
        big = draw(st.booleans())
        fields.append(Field(8 * word, 8, draw(st.integers(0, U64 if big else 1 << 40)),
                            draw(st.integers(0, U64 if big else 1 << 30)), count,
                            draw(st.integers(0, 1 << 20))))
    return Records(size, draw(st.integers(0, 40)), tuple(fields))


@given(rec=word_records_st(), r0=st.integers(0, 50), nr=st.integers(0, 5))
@settings(max_examples=300, deadline=None)
def test_u64_words_are_the_bytes(rec: Records, r0: int, nr: int) -> None:
    off, n = r0 * rec.size, nr * rec.size
    runs = rec.u64_words(off, n)
    if runs is None:  # wraps or overlapping fields: the readers read bytes
        return
    want = np.frombuffer(rec.materialise(off, n), dtype="<u8")
    assert (words_of(runs, n // 8) == want).all()
    assert [w for w, *_ in runs] == sorted(w for w, *_ in runs)


def test_u64_words_refuses_what_it_cannot_describe() -> None:
    assert Records(16, 4, (Field(0, 4, 1),)).u64_words(0, 64) is None  # a 4-byte field
    assert Records(16, 4, (Field(0, 8, 1),)).u64_words(8, 16) is None  # not on a record
    assert Records(8, 4, (Field(0, 8, U64, 1),)).u64_words(0, 32) is None  # wraps
    assert Records(16, 1, (Field(0, 8, 1, 0, 2), Field(8, 8, 5))).u64_words(0, 16) is None


def test_ones_pages_are_all_ones_and_recognised() -> None:
    mem = PhysicalMemory(1 << 20)
    mem.fill_records(0x3000, 3, ones_records(3))
    assert mem.read(0x3000, 3 * PAGE_SIZE) == b"\xff" * (3 * PAGE_SIZE)
    assert [mem.is_ones_page(pa) for pa in range(0x2000, 0x7000, PAGE_SIZE)] == \
        [False, True, True, True, False]
    g = mem.gen_page(0x4000)
    assert g is not None and is_ones(g) and g.materialise() == b"\xff" * PAGE_SIZE
    mem.write(0x4000 + 100, b"\xfe")  # a write makes it bytes again
    assert not mem.is_ones_page(0x4000) and mem.is_ones_page(0x5000)
    assert mem.read(0x4000 + 99, 3) == b"\xff\xfe\xff"
    mem.scrub([(0x5000, PAGE_SIZE)])
    assert mem.is_ones_page(0x5000) and not mem.is_ones_page(0x3000)


def test_address_runs_and_page_spans() -> None:
    addrs = np.array([0x1000, 0x2000, 0x3000, 0x9000, 0x8000, 0x9000 - 1, U64 - 0xFFF, 0x1000],
                     dtype=np.uint64)
    runs = address_runs(addrs)
    assert (runs_array(runs) == addrs).all()
    assert runs[0] == (0x1000, 3, PAGE_SIZE)
    assert page_spans(runs) is None  # an address inside a page
    assert page_spans([(0x1000, 3, PAGE_SIZE), (0x4000, 2, PAGE_SIZE), (0x9000, 1, 0)]) == \
        [(1, 5), (9, 1)]
    assert page_spans([(0x1000, 3, PAGE_SIZE), (0x2000, 1, 0)]) is None  # listed twice
    assert page_spans([(0x1000, 2, 0)]) is None


# -- kho_vmalloc chunk pages ------------------------------------------------------------


def longest_descriptor(mem: PhysicalMemory, chunks: list[int]) -> int:
    """Most chunk pages one descriptor lays out (joined full chunks)."""
    runs = [mem.gen_run(c) for c in chunks]
    return max((g.length // PAGE_SIZE for g in runs if g is not None), default=0)


def ref_chain(mem: PhysicalMemory, first: int) -> tuple[list[int], list[int]]:
    """The chunk chain decoded from plain bytes: (data pages, chunk pages)."""
    pages: list[int] = []
    chunks: list[int] = []
    cpa = first
    while cpa:
        chunks.append(cpa)
        words = np.frombuffer(mem.read(cpa, PAGE_SIZE), dtype="<u8").tolist()
        for w in words[1:]:
            if not w:
                break
            pages.append(w)
        cpa = words[0]
    return pages, chunks


def _kernel_with_holes(seed: int):  # type: ignore[no-untyped-def]
    m = Machine.from_topology({})
    k = m.boot("v7")
    rng = random.Random(seed)
    held = [k.mm.alloc_pages(0) for _ in range(rng.randint(0, 3000) if seed < 8 else 0)]
    for pa in held:  # free some: the area and its chunks land in several runs
        if rng.random() < 0.3:
            k.mm.free_pages(pa, 0)
    return m, k, rng


@pytest.mark.parametrize("seed", range(10))
def test_vmalloc_chunks_per_descriptor_equal_the_bytes(seed: int) -> None:
    m, k, rng = _kernel_with_holes(seed)
    nr = rng.choice([1, 2, 510, 511, 512, 1022, 1023, 1500, 2600]) if seed < 8 else 5000
    data = rng.randbytes(nr * PAGE_SIZE - rng.randrange(PAGE_SIZE))
    desc = k.kho.preserve_vmalloc(data)
    first = int.from_bytes(desc[:8], "little")
    pages, chunks = ref_chain(m.memory, first)
    assert len(pages) == nr and len(set(pages)) == nr
    assert all(m.memory.gen_page(c) is not None for c in chunks)  # laid out as descriptors
    if seed >= 8:  # no holes: full chunks listing pages that follow on are one descriptor
        assert longest_descriptor(m.memory, chunks) >= 4
    assert b"".join(m.memory.read(p, PAGE_SIZE) for p in pages)[:len(data)] == data
    got, got_chunks = k.kho._vmalloc_page_array(desc)
    assert got.tolist() == pages and got_chunks == chunks
    # a write into a chunk page (a mutation, DMA): read back as bytes, same result
    for _ in range(3):
        victim = rng.choice(chunks)
        word = rng.choice([0, 1, 2, rng.randrange(512), 511])
        value = rng.choice([0, pages[0], pages[-1] + PAGE_SIZE, rng.getrandbits(64)])
        m.memory.write(victim + 8 * word, value.to_bytes(8, "little"))
        assert m.memory.gen_page(victim) is None
        ref_pages: list[int] | None = None
        try:
            ref_pages, ref_chunks = ref_chain_checked(m.memory, desc)
        except ValueError:
            pass
        try:
            got, got_chunks = k.kho._vmalloc_page_array(desc)
        except KernelError:  # the reference must fail too
            assert ref_pages is None
            continue
        assert ref_pages is not None
        assert got.tolist() == ref_pages and got_chunks == ref_chunks


def ref_chain_checked(mem: PhysicalMemory, desc: bytes) -> tuple[list[int], list[int]]:
    """:func:`ref_chain` with the checks ``kho_restore_vmalloc()`` makes (ValueError)."""
    first = int.from_bytes(desc[:8], "little")
    total = int.from_bytes(desc[8:12], "little")
    pages: list[int] = []
    chunks: list[int] = []
    cpa = first
    while cpa:
        if cpa % PAGE_SIZE or cpa + PAGE_SIZE > mem.size or len(chunks) > total + 1:
            raise ValueError("bad chunk")
        chunks.append(cpa)
        words = np.frombuffer(mem.read(cpa, PAGE_SIZE), dtype="<u8").tolist()
        for w in words[1:]:
            if not w:
                break
            pages.append(w)
        cpa = words[0]
    if len(pages) != total:
        raise ValueError("count")
    return pages, chunks


def test_generated_folio_array_chunks_restore_after_kexec() -> None:
    """A memfd of 4 KiB folios: its folio array's chunks are descriptors and the
    next kernel restores the file from them (and from bytes after a write)."""
    for corrupt in (False, True):
        m = Machine.from_topology({"memory": "8GiB"})
        k = m.boot("v7")
        s = k.open_liveupdate().create_session("vm0")
        f = k.memfd_create("ram", size=4 << 30)
        f.fill(0, 4 << 30, 7)
        s.preserve_fd(f, token=1)
        fp = f.fingerprint()
        # the chunk pages: generated pages of one 4 KiB record each
        chunks = [pa for start, o, n in k.kho.preserved.runs() if o == 0
                  for pa in range(start << 12, (start + n) << 12, PAGE_SIZE)
                  if (g := m.memory.gen_page(pa)) is not None and g.records.size == PAGE_SIZE]
        assert len(chunks) == 9  # 4096 folio-array pages, 511 per chunk
        # full chunks listing pages that follow on: one descriptor
        assert longest_descriptor(m.memory, chunks) >= 4
        if corrupt:  # rewrite a chunk word with its own value: bytes, same content
            m.memory.write(chunks[1] + 16, m.memory.read(chunks[1] + 16, 8))
            assert m.memory.gen_page(chunks[1]) is None
        k2 = k.kexec("v7")
        f2 = k2.open_liveupdate().retrieve_session("vm0").retrieve_fd(1)
        assert f2.fingerprint() == fp and f2.folio_runs() == f.folio_runs()


# -- full radix leaves ----------------------------------------------------------------


def test_full_leaves_are_generated_and_walk_as_their_bytes() -> None:
    m, root = full_leaf_tree()
    read = page_reader(m.memory)

    nodes: list[int] = []
    want = list(walk_radix_tree(read, root, m.memory.size, on_node=nodes.append))
    full = [n for n in nodes if m.memory.is_ones_page(n)]
    assert len(full) == 4
    assert all(read(n) == b"\xff" * PAGE_SIZE for n in full)
    for victim, data in ((None, b""), (full[1], b"\x7f"), (full[3], b"\x00" * 8),
                         (full[0], b"\xff")):
        if victim is not None:  # a mutation of a generated leaf: bytes from now on
            m.memory.write(victim + 4000, data)
            assert not m.memory.is_ones_page(victim)
            want = list(walk_radix_tree(read, root, m.memory.size))
        by_bytes = walk_radix_arrays(read, root, m.memory.size)
        by_desc = walk_radix_arrays(read, root, m.memory.size, full_leaves=m.memory.ones_pages)
        assert by_desc.error is None and by_desc.nodes == nodes == by_bytes.nodes
        assert by_desc.blocks() == by_bytes.blocks() == want
        for a, b in ((by_desc.pa, by_bytes.pa), (by_desc.order, by_bytes.order),
                     (by_desc.count, by_bytes.count)):
            assert a.tolist() == b.tolist()
        for limit in (2, 4, 5, len(nodes) - 1):  # the node limit stops both at one node
            cut_b = walk_radix_arrays(read, root, m.memory.size, max_nodes=limit)
            cut_d = walk_radix_arrays(read, root, m.memory.size, max_nodes=limit,
                                      full_leaves=m.memory.ones_pages)
            assert cut_d.nodes == cut_b.nodes and cut_d.blocks() == cut_b.blocks()
            assert str(cut_d.error) == str(cut_b.error) and cut_b.error is not None


def test_full_leaves_never_read_when_generated() -> None:
    m = Machine.from_topology({"memory": "64GiB"})
    k = m.boot("v7")
    k.kho.preserved.add_run(1 << 21, 0, 4 << 15, "t")
    root = k.kho._write_radix_tree()
    read_pages: list[int] = []

    def read(pa: int) -> bytes:
        read_pages.append(pa)
        return m.memory.read(pa, PAGE_SIZE)

    got = walk_radix_arrays(read, root, m.memory.size, full_leaves=m.memory.ones_pages)
    runs = list(zip(got.pa.tolist(), got.order.tolist(), got.count.tolist()))
    assert got.error is None and (1 << 33, 0, 4 << 15) in runs
    full = [n for n in got.nodes if m.memory.is_ones_page(n)]
    assert len(full) == 4 and sorted(read_pages) == sorted(set(got.nodes) - set(full))


def ref_node_order(runs: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """(level, prefix) of every radix node in ``kho_radix_add_page()`` allocation
    order, node by node: by the first block needing it, then top down."""
    top = KHO_TREE_MAX_DEPTH - 1
    first_use: dict[tuple[int, int], tuple[int, int]] = {}
    for start, o, n in runs:
        k0 = (1 << (KHO_ORDER_0_LOG2 - o)) | (start >> o)
        k1 = k0 + n
        for level in range(top):
            shift = level * KHO_TABLE_SIZE_LOG2 + KHO_BITMAP_SIZE_LOG2
            for prefix in range(k0 >> shift, ((k1 - 1) >> shift) + 1):
                first = (start + ((max(k0, prefix << shift) - k0) << o), o)
                if first < first_use.get((level, prefix), (1 << 64, 0)):
                    first_use[(level, prefix)] = first
    return [(top, 0)] + [(-nl, p) for _f, nl, p in
                         sorted((f, -lv, p) for (lv, p), f in first_use.items())]


@pytest.mark.parametrize("seed", range(6))
def test_radix_writer_by_leaf_ranges_allocates_like_node_by_node(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Full leaves are allocated and linked as ranges: the same nodes in the same
    order at the same addresses as node by node, runs crossing level-1 tables
    (512 leaves), sharing leaves, of several orders."""
    rng = random.Random(seed)
    m = Machine.from_topology({"memory": "256GiB"})
    k = m.boot("v7")
    leaf = 1 << 15
    base = rng.choice([1 << 24, 3 << 24]) - rng.randrange(3 * leaf)
    n0 = rng.randrange(leaf, 700 * leaf)
    k.kho.preserved.add_run(base, 0, n0, "t")  # crosses 2^24
    k.kho.preserved.add((base + n0 + 7, 0), "t")  # in the run's last leaf, or the next
    k.kho.preserved.add((base - 3, 0), "t")  # in its first leaf, or the one before
    k.kho.preserved.add_run(base - 5 * leaf, 0, 2 * leaf + rng.randrange(leaf), "t")
    k.kho.preserved.add_run(1 << 27, 9, rng.randrange(1, 3 * leaf), "t")
    k.kho.preserved.add_run((1 << 27) + (4 * leaf << 9), 9, leaf, "t")
    for _ in range(rng.randint(0, 20)):  # small ones here and there, some in shared leaves
        k.kho.preserved.add((rng.randrange(1 << 30, 1 << 31), 0), "t")
    got_runs: list[tuple[int, int]] = []
    real = k.mm.alloc_pages_bulk

    def spy(order: int, count: int, **kw: int) -> list[tuple[int, int]]:
        out = real(order, count, **kw)
        got_runs.extend(out)
        return out

    monkeypatch.setattr(k.mm, "alloc_pages_bulk", spy)
    runs = k.kho.preserved.runs()
    root = k.kho._write_radix_tree()
    allocated = [pa + i * PAGE_SIZE for pa, n in got_runs for i in range(n)]
    assert allocated[0] == root
    # the tree as written: (level, prefix) of every node, by walking it
    top = KHO_TREE_MAX_DEPTH - 1
    where: dict[int, tuple[int, int]] = {root: (top, 0)}

    def walk(pa: int, level: int, prefix: int) -> None:
        if level == 0:
            return
        table = np.frombuffer(m.memory.read(pa, PAGE_SIZE), dtype="<u8")
        for i in np.flatnonzero(table).tolist():
            child = int(table[i])
            where[child] = (level - 1, (prefix << 9) | i)
            walk(child, level - 1, (prefix << 9) | i)

    walk(root, top, 0)
    assert [where[pa] for pa in allocated] == ref_node_order(runs)

    def read(pa: int) -> bytes:
        return m.memory.read(pa, PAGE_SIZE)

    want = list(walk_radix_tree(read, root, m.memory.size))
    got = walk_radix_arrays(read, root, m.memory.size, full_leaves=m.memory.ones_pages)
    assert got.error is None and got.blocks() == want


def test_mutations_of_generated_leaves_happen_and_are_seen() -> None:
    """corrupt:*-style edits (faults/mutator.py) of full leaves laid out as
    generated pages: the edit lands (the page reads the new bytes, it is no
    longer a generated page) and both walkers see what the byte walk sees."""
    from luosim.abi.kho import KhoData, decode_root_fdt
    from luosim.faults.mutator import field_mutants, handover_targets

    m = Machine.from_topology({"memory": "8GiB"})
    k = m.boot("v7")
    k.kho.preserved.add_run(1 << 20, 0, 8 << 15, "t")  # eight full leaves
    kd = k.kho.handover()
    assert kd is not None
    root = decode_root_fdt(m.memory.read(KhoData.decode(kd).fdt_addr,
                                         KhoData.decode(kd).fdt_size)).mem_map_pa
    leaves = [t for t in handover_targets(m.memory, kd)
              if t.layer == "kho-radix" and m.memory.is_ones_page(t.pa)]
    assert len(leaves) == 8
    rng = random.Random(3)

    def read(pa: int) -> bytes:
        return m.memory.read(pa, PAGE_SIZE)

    for t in leaves[1::2]:
        before = read(t.pa)
        _layer, label, apply = rng.choice(list(field_mutants(m.memory, t, kd, rng)))
        apply(m.memory, bytearray(kd))
        assert read(t.pa) != before, label
        assert not m.memory.is_ones_page(t.pa)
        by_bytes = walk_radix_arrays(read, root, m.memory.size)
        by_desc = walk_radix_arrays(read, root, m.memory.size, full_leaves=m.memory.ones_pages)
        assert by_desc.nodes == by_bytes.nodes and by_desc.blocks() == by_bytes.blocks()
        assert str(by_desc.error) == str(by_bytes.error)
    assert sum(m.memory.is_ones_page(t.pa) for t in leaves) == 4
