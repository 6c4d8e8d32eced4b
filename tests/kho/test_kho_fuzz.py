"""Corrupt KHO hand-overs never crash a decoder: only DecodeError (spec kho.md;
"never crash on a corrupt hand-over: classify it")."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luosim.abi.errors import DecodeError
from luosim.abi.kho import KhoData, KhoScratch, decode_root_fdt, encode_root_fdt, walk_radix_tree

VALID_FDT = encode_root_fdt(0x12345000, [("LUO", 0x2000), ("pci", 0x3000)])
VALID_DATA = KhoData(0x1000, len(VALID_FDT), 0x3000, 16).encode()


def mutate(blob: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(blob)
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "random", "word"]))
    if how == "flip" and buf:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "truncate":
        del buf[data.draw(st.integers(0, len(buf))):]
    elif how == "extend":
        buf += data.draw(st.binary(max_size=64))
    elif how == "random":
        return data.draw(st.binary(max_size=len(blob) + 16))
    elif buf and len(buf) >= 8:
        i = data.draw(st.integers(0, len(buf) - 8))
        buf[i:i + 8] = data.draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    return bytes(buf)


@settings(max_examples=1000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_root_fdt_and_boot_data_mutations(data: st.DataObject) -> None:
    for blob, decode in ((VALID_FDT, decode_root_fdt), (VALID_DATA, KhoData.decode),
                         (VALID_DATA[16:], KhoScratch.decode_array)):
        try:
            decode(mutate(blob, data))  # type: ignore[operator]
        except DecodeError:
            pass


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(st.integers(0, 63).map(lambda p: p * 4096),
                       st.binary(min_size=4096, max_size=4096), max_size=12),
       st.integers(0, 80).map(lambda p: p * 4096 + 0))
def test_radix_walk_of_garbage_is_classified(pages: dict[int, bytes], root: int) -> None:
    """Garbage tables: pointers outside RAM, unaligned, loops; only DecodeError."""
    mem_size = 64 * 4096

    def read(pa: int) -> bytes:
        return pages.get(pa, struct.pack("<512Q", *([pa + 4096] * 512)))  # self-similar chain

    try:
        for n, (_pa, _order) in enumerate(walk_radix_tree(read, root, mem_size, max_nodes=64)):
            if n > 2000:  # a garbage leaf holds ~16k "preserved" bits: enough seen
                break
    except DecodeError:
        pass
