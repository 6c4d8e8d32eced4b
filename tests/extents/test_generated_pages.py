"""Generated pages (hw.memory.Records): bytes only where read, descriptors for decoders.

Every descriptor path is checked against the plain bytes: materialise against
a per-record encoding, write_stream against write_pages, view against read,
and the memfd folio-array decoder per descriptor against the byte decoder,
also after writes, scrubs and drops split the generated runs.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from luosim.abi.errors import DecodeError
from luosim.abi.memfd import (
    decode_folio_arrays,
    decode_folio_pieces,
    encode_folio_runs,
    folio_records,
)
from luosim.hw.memory import (
    PAGE_SIZE,
    BytePiece,
    Field,
    GenPiece,
    PhysicalMemory,
    Piece,
    Records,
)

MEM = 64 << 20


def naive(rec: Records) -> bytes:
    """The stream record by record, field by field."""
    out = bytearray(rec.size * rec.nrec)
    for r in range(rec.nrec):
        for f in rec.fields:
            for e in range(f.count):
                at = r * rec.size + f.offset + e * f.width
                out[at:at + f.width] = f.value(r, e).to_bytes(f.width, "little")
    return bytes(out)


def joined(pieces: list[Piece]) -> bytes:
    return b"".join(p.materialise() if isinstance(p, GenPiece) else p.data for p in pieces)


field_st = st.builds(lambda w, base, step, cnt, es: (w, base, step, cnt, es),
                     st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1),
                     st.integers(0, (1 << 64) - 1), st.integers(1, 3), st.integers(0, 1 << 40))


@st.composite
def records_st(draw: st.DrawFn) -> Records:
    size = draw(st.sampled_from([8, 16, 24, 40, 4096]))
    fields: list[Field] = []
    pos = 0
    for w, base, step, cnt, es in draw(st.lists(field_st, max_size=3)):
        if pos + w * cnt > size:
            break
        fields.append(Field(pos, w, base, step, cnt, es))
        pos += w * cnt + draw(st.integers(0, 4))
    return Records(size, draw(st.integers(0, 700)), tuple(fields))


@given(rec=records_st(), off=st.integers(0, 20000), n=st.integers(0, 9000))
@settings(max_examples=150, deadline=None)
def test_materialise_is_the_record_by_record_encoding(rec: Records, off: int, n: int) -> None:
    ref = naive(rec) + bytes(off + n + 64)
    assert rec.materialise(off, n) == ref[off:off + n]
    k = min(rec.nrec, off // rec.size)
    assert rec.skip(k).materialise(0, 64) == ref[k * rec.size:k * rec.size + 64]


def test_generated_fields_golden_bytes() -> None:
    """A memfd folio record as fields: pfn:52 | flags:12 << 52, then index."""
    rec = folio_records([(0x200, 0x40000000, 9, 2)], 3)
    assert len(rec) == 1
    assert rec[0].materialise(0, 32) == bytes.fromhex(
        "0000040000003000" "0002000000000000" "0002040000003000" "0004000000000000")


folio_run_st = st.tuples(st.integers(0, 1 << 20), st.integers(0, 1 << 18),
                         st.sampled_from([0, 3, 9]), st.integers(1, 600))


@st.composite
def layout_st(draw: st.DrawFn) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int]]]:
    """Folio runs (index, pa, order, count) and the physical page runs of the area."""
    runs = []
    index = draw(st.integers(0, 4096))
    for idx_gap, pfn, order, count in draw(st.lists(folio_run_st, min_size=1, max_size=5)):
        runs.append((index + idx_gap, (pfn << 12) << order, order, count))
        index += idx_gap + (count << order)
    nbytes = 16 * sum(r[3] for r in runs)
    npages = max(1, -(-nbytes // PAGE_SIZE))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, npages - 1)), max_size=3))))
    cuts = [c for c in cuts if 0 < c < npages]
    lengths = [b - a for a, b in zip([0, *cuts], [*cuts, npages])]
    page_runs = []
    base = 0x100000
    for n in lengths:
        base += draw(st.integers(0, 3)) * PAGE_SIZE
        page_runs.append((base, n))
        base += n * PAGE_SIZE
    return runs, page_runs


def _lay_out(mem: PhysicalMemory, segs: list[Records], page_runs: list[tuple[int, int]]) -> None:
    pos = 0
    for pa, n in page_runs:
        mem.write_stream(pa, segs, pos, n)
        pos += n * PAGE_SIZE


def _area(mem: PhysicalMemory, page_runs: list[tuple[int, int]]) -> list[Piece]:
    out: list[Piece] = []
    for pa, n in page_runs:
        out += mem.view(pa, n * PAGE_SIZE)
    return out


@given(layout=layout_st(), flags=st.integers(0, 0xFFF),
       writes=st.lists(st.tuples(st.integers(0, 1 << 30), st.binary(min_size=1, max_size=40)),
                       max_size=4),
       scrub=st.booleans(), trim=st.integers(0, 3))
@settings(max_examples=200, deadline=None)
def test_folio_array_descriptor_decode_equals_byte_decode(
        layout: tuple[list[tuple[int, int, int, int]], list[tuple[int, int]]], flags: int,
        writes: list[tuple[int, bytes]], scrub: bool, trim: int) -> None:
    runs, page_runs = layout
    segs = folio_records(runs, flags)
    raw = encode_folio_runs(runs, flags)
    mem = PhysicalMemory(MEM)
    _lay_out(mem, segs, page_runs)
    nr = sum(r[3] for r in runs)
    # what was laid out reads back as the byte encoding (zero padded)
    assert b"".join(mem.read(pa, n * PAGE_SIZE) for pa, n in page_runs)[:len(raw)] == raw
    area_pages = sum(n for _pa, n in page_runs)
    for where, data in writes:  # DMA / corruption into the area splits the generated runs
        page = where % area_pages
        for pa, n in page_runs:
            if page < n:
                at = pa + page * PAGE_SIZE + (where >> 12) % PAGE_SIZE
                mem.write(at, data[:max(1, pa + n * PAGE_SIZE - at)])
                break
            page -= n
    if scrub:  # keep all but the last page run's last page
        keep = [(pa, n * PAGE_SIZE) for pa, n in page_runs]
        keep[-1] = (keep[-1][0], keep[-1][1] - PAGE_SIZE)
        mem.scrub(keep)
    pieces = _area(mem, page_runs)
    assert joined(pieces) == b"".join(mem.read(pa, n * PAGE_SIZE) for pa, n in page_runs)
    want = max(0, nr - trim)
    try:
        ref = decode_folio_arrays(joined(pieces), want)
    except DecodeError as exc:  # pragma: no cover - the area always holds nr records
        with pytest.raises(DecodeError, match=str(exc)[:20]):
            decode_folio_pieces(pieces, want)
        return
    got = decode_folio_pieces(pieces, want).expand()
    for a, b in zip(got, ref):
        assert np.array_equal(a.astype(np.uint64), b.astype(np.uint64))
    if not writes and not scrub:  # untouched: a few segments per run and per page run
        assert decode_folio_pieces(pieces, want).count.size <= 4 * (len(runs) + len(page_runs))


def test_truncated_area_is_the_same_error() -> None:
    segs = folio_records([(0, 0x200000, 0, 100)], 3)
    mem = PhysicalMemory(MEM)
    mem.write_stream(0x100000, segs, 0, 1)
    pieces = mem.view(0x100000, PAGE_SIZE)
    with pytest.raises(DecodeError) as a:
        decode_folio_arrays(joined(pieces), 300)
    with pytest.raises(DecodeError) as b:
        decode_folio_pieces(pieces, 300)
    assert str(a.value) == str(b.value)


def test_generated_pages_read_write_fingerprint_and_scrub() -> None:
    rec = Records(16, 1024, (Field(0, 8, 7, 1), Field(8, 4, 1 << 31, 3)))
    mem, ref = PhysicalMemory(MEM), PhysicalMemory(MEM)
    mem.fill_records(0x200000, 4, rec)
    ref.write_pages(0x200000, rec.materialise(0, 4 * PAGE_SIZE))
    assert mem.read(0x200ff8, 16) == ref.read(0x200ff8, 16)
    for order in (0, 1, 2):
        assert mem.folio_fingerprint(0x200000, order) == ref.folio_fingerprint(0x200000, order)
    assert mem.describe(0x200, 4) == ref.describe(0x200, 4)
    view = mem.view(0x200000, 4 * PAGE_SIZE)
    assert [type(p) for p in view] == [GenPiece] and view[0].length == 4 * PAGE_SIZE
    mem.write(0x201008, struct.pack("<Q", 99))  # splits the run: page 1 becomes bytes
    ref.write(0x201008, struct.pack("<Q", 99))
    view = mem.view(0x200000, 4 * PAGE_SIZE)
    assert [type(p) for p in view] == [GenPiece, BytePiece, GenPiece]
    assert view[2].off == 2 * PAGE_SIZE
    assert joined(view) == ref.read(0x200000, 4 * PAGE_SIZE)
    assert mem.folio_fingerprint(0x200000, 2) == ref.folio_fingerprint(0x200000, 2)
    mem.scrub([(0x200000, PAGE_SIZE)])  # kexec: only page 0 kept
    assert mem.read(0x200000, PAGE_SIZE) == ref.read(0x200000, PAGE_SIZE)
    assert mem.read(0x201000, PAGE_SIZE) == b"\x6b" * PAGE_SIZE
    assert mem.read(0x203000, PAGE_SIZE) == b"\x6b" * PAGE_SIZE
    mem.zero(0x200000, PAGE_SIZE)  # dropping the rest leaves no generated piece
    assert all(isinstance(p, BytePiece) for p in mem.view(0x200000, 4 * PAGE_SIZE))


def test_descriptor_decode_reads_no_generated_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TiB of 2 MiB folios: 512 Ki records decoded without materialising a byte."""
    nr = 1 << 19
    segs = folio_records([(0, 1 << 32, 9, nr)], 3)
    mem = PhysicalMemory(MEM)
    npages = nr * 16 // PAGE_SIZE  # 2048 pages
    mem.write_stream(0x100000, segs, 0, 1000)
    mem.write_stream(0x600000, segs, 1000 * PAGE_SIZE, npages - 1000)
    pieces = _area(mem, [(0x100000, 1000), (0x600000, npages - 1000)])

    def boom(self: Records, off: int, n: int) -> bytes:
        raise AssertionError("materialised")

    monkeypatch.setattr(Records, "materialise", boom)
    got = decode_folio_pieces(pieces, nr)
    assert got.count.tolist() == [1000 * 256, (npages - 1000) * 256]
    assert got.pfn.tolist() == [1 << 20, (1 << 20) + (1000 * 256 << 9)]
    assert got.pfn_step.tolist() == [512, 512] and got.flags.tolist() == [3, 3]
