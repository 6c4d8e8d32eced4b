"""Mutation fuzzing of every ABI decoder: malformed input only ever raises DecodeError.

Valid blobs of every kind are mutated (bit flips, truncation, extension, random
bytes, overwritten words) and fed to their decoder; the decoder must either
succeed or raise :class:`DecodeError` — never IndexError, struct.error,
UnicodeDecodeError, KeyError, a libfdt exception or anything else.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luosim.abi import block, fdt, iommu, kho, luo, memfd, pci, vfio
from luosim.abi.errors import DecodeError

Decoder = Callable[[bytes], object]

STRUCTS: list[object] = [
    block.KhoBlockHeaderSer(0x1000, 3),
    luo.LuoSessionHeaderSer(2), luo.LuoSessionSer("vm0", 0x5000, 2), luo.LuoFileSetSer(1, 2),
    luo.LuoFileSer("memfd-v1", 0x1000, 7), luo.LuoFlbHeaderSer(1, 1),
    luo.LuoFlbSer("pci-v3", 0x7000, 1), luo.LuoSer("luo-v5", 1, 0x2000, 0x3000),
    luo.LiveupdateIoctlCreateSession(72, 3, b"vm0"),
    luo.LiveupdateIoctlRetrieveSession(72, 3, b"a"),
    luo.LiveupdateSessionPreserveFd(16, 3, 9), luo.LiveupdateSessionRetrieveFd(16, 3, 9),
    luo.LiveupdateSessionFinish(8, 0), luo.LiveupdateSessionGetName(72, 0, b"vm0"),
    memfd.KhoVmalloc(0x1000, 2, 1, 0), memfd.MemfdLuoFolioSer(0x123, 3, 4),
    memfd.MemfdLuoSerV1(0, 4096, 1, memfd.KhoVmalloc(0x1000, 1, 1, 0)),
    memfd.MemfdLuoSerV2(0, 4096, 9, 0, 1, memfd.KhoVmalloc(0x1000, 1, 1, 0)),
    pci.PciDevSer(0, 0x300, 1), pci.PciSerV7(1, 0x8000), pci.PciSerV9(1, 1, 0x9000),
    pci.PciSerV6(3, 2, (pci.PciDevSer(0, 0x300, 1), pci.PciDevSer(0, 0, 0),
                        pci.PciDevSer(0, 0x10, 2))),
    vfio.VfioPciCoreDeviceSer(0, 0x300), vfio.VfioPciCoreDeviceSerV2(0, 0x300, 1, 5),
    vfio.VfioPciCoreDeviceSerIommuV1(0, 0x300, 1, 5),
    iommu.IommuFlbSer(1, 0x1000, 0x2000, 0x3000), iommu.IommuFlbSerV1(0x1000, 0x2000, 0x3000),
    iommu.IommuArrayHdrSer(0, 1), iommu.IommuHdrSer(1, 2),
    iommu.IommuDomainSer(iommu.IommuHdrSer(1, 0), 0x4000, 4, 48, True, 0),
    iommu.IommuDomainSerPran(iommu.IommuHdrSer(1, 0), 0x4000, 4, 48, True, 0),
    iommu.IommuDeviceSer(iommu.IommuHdrSer(1, 0), 0x300, 0, 5, 0x1000, 0x2000, 0, 0),
    iommu.IommuDeviceSerPran(iommu.IommuHdrSer(1, 0), 0x300, 0, 5, 0x1000, 0x2000,
                             dma_owner_token=9),
    iommu.IommuDeviceSerGeneric(iommu.IommuHdrSer(1, 0), 0x300, 0, 5, 0x1000, 0x2000),
    iommu.IommuHwSerGeneric(iommu.IommuHdrSer(1, 0), 0xFED90000, 0),
    memfd.KhoVmallocChunk(0, (0x1000, 0x2000)), kho.KhoData(0x1000, 0x100, 0x2000, 0x3000),
    iommu.IommuHwSer(iommu.IommuHdrSer(1, 0), 0xFED90000, 1, 0, 0xFED90000, 0x5000),
    iommu.VtdRootEntry(True, 0x5000), iommu.VtdContextEntry(True, 0, 0x6000, 2, 3),
    iommu.VtdPte(0x7000),
]


def _struct_decoder(obj: object) -> tuple[str, bytes, Decoder]:
    cls = type(obj)
    return cls.__name__, obj.encode(), lambda b: cls.decode(b)  # type: ignore[attr-defined]


def _fdt_explore(b: bytes) -> object:
    view = fdt.parse("fuzz", b)
    for path in ["/"] + ["/" + n for n in view.subnodes("/")]:
        for name, _ in view.props(path):
            view.prop(path, name)
        view.is_compatible(path, "luo-v1")
        view.has_node(path)
    view.prop_strlist("/", "compatible")
    return view.prop_u64("/", "liveupdate-number")


PAGE_A, PAGE_B = 0x10000, 0x3000
_FILES = [luo.LuoFileSer(f"memfd-v{i}", i, i).encode() for i in range(70)]
_CHAIN = b"".join(block.encode_chain(_FILES, 64, [PAGE_A, PAGE_B]))
_ARRAYS = (iommu.encode_array_page([b"\x01" * 40] * 3, 40, PAGE_B)
           + iommu.encode_array_page([b"\x02" * 40], 40, 0))


def _pages(b: bytes) -> dict[int, bytes]:
    return {PAGE_A: b[:4096], PAGE_B: b[4096:8192]} if len(b) > 4096 else {PAGE_A: b}


def _walk_chain(b: bytes) -> object:
    return block.walk_chain(_pages(b).__getitem__, PAGE_A, 64, "fuzz chain")


def _walk_arrays(b: bytes) -> object:
    return iommu.walk_arrays(_pages(b).__getitem__, PAGE_A, 40, "fuzz arrays")


def _trim(blob: bytes, n: int) -> bytes:
    return blob[:n]


SAMPLES: list[tuple[str, bytes, Decoder]] = [_struct_decoder(o) for o in STRUCTS] + [
    ("luo_fdt_p1", luo.encode_luo_fdt(3, 0x5000, 0x6000),
     lambda b: luo.decode_luo_fdt(b, require_flb=True)),
    ("luo_fdt_p0", luo.encode_luo_fdt(3, 0x5000, None),
     lambda b: luo.decode_luo_fdt(b, require_flb=False)),
    ("fdt_parse", luo.encode_luo_fdt(1, 0x5000, 0x6000), _fdt_explore),
    ("luo_v5", luo.encode_luo_v5(2, 0x1000, 0x2000), luo.decode_luo_v5),
    ("kho_block", block.encode_block(_FILES[:5], 64, 0x2000),
     lambda b: block.decode_block(b, 64, "fuzz")),
    ("walk_chain", _CHAIN, _walk_chain),
    ("vmalloc_chunk", memfd.KhoVmallocChunk(0x5000, (0x6000, 0x7000, 0x8000)).encode(),
     memfd.KhoVmallocChunk.decode),
    ("folio_array", memfd.encode_folio_array([memfd.MemfdLuoFolioSer(i, 3, i) for i in range(3)]),
     lambda b: memfd.decode_folio_array(b, 3)),
    ("session_block_v1", _trim(luo.encode_session_block_v1(
        [luo.LuoSessionSer("a", 0x1000, 1), luo.LuoSessionSer("b", 0, 0)]), 8 + 160 + 16),
     luo.decode_session_block_v1),
    ("file_array_v1", luo.encode_file_array_v1([luo.LuoFileSer("memfd-v1", 1, 2)] * 2)[:160],
     lambda b: luo.decode_file_array_v1(b, 2)),
    ("flb_block", _trim(luo.encode_flb_block([luo.LuoFlbSer("pci-v3", 1, 1)]), 16 + 64 + 16),
     luo.decode_flb_block),
    ("iommu_array_page", _ARRAYS[:4096], lambda b: iommu.decode_array_page(b, 40, "fuzz")),
    ("iommu_walk_arrays", _ARRAYS, _walk_arrays),
]

INTERESTING = [0, 1, 2, 0x7F, 0xFF, 0x1000, 0xFFFF, 0xFFFF_FFFF, PAGE_A, PAGE_B, PAGE_A + 8,
               (1 << 63), (1 << 64) - 1]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes, Decoder]:
    name, blob, fn = draw(st.sampled_from(SAMPLES))
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "random", "word", "header"]))
        if op == "flip" and data:
            for _ in range(draw(st.integers(1, 8))):
                bit = draw(st.integers(0, len(data) * 8 - 1))
                data[bit // 8] ^= 1 << (bit % 8)
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "random":
            data = bytearray(draw(st.binary(max_size=min(len(blob) * 2, 512))))
        elif op == "word" and len(data) >= 8:
            off = draw(st.integers(0, len(data) - 8))
            val = draw(st.sampled_from(INTERESTING) | st.integers(0, (1 << 64) - 1))
            data[off:off + 8] = val.to_bytes(8, "little")
        elif op == "header" and len(data) >= 16:
            # page/block header words: next pointers and counts (cycles, overlong counts)
            off = draw(st.sampled_from([o for o in range(0, len(data) - 15, 4096)])) + draw(
                st.sampled_from([0, 8]))
            data[off:off + 8] = draw(st.sampled_from(INTERESTING)).to_bytes(8, "little")
    return name, bytes(data), fn


@settings(max_examples=2000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_decoders_raise_only_decode_error(case: tuple[str, bytes, Decoder]) -> None:
    """Only DecodeError (or a successful decode) on mutated input, for every decoder."""
    name, data, fn = case
    try:
        fn(data)
    except DecodeError as exc:
        assert exc.kind in {"truncated", "bad-magic", "bad-compatible", "bad-value", "bad-fdt",
                            "bad-pointer", "cycle"}, (name, exc)


def test_every_sample_decodes_unmutated() -> None:
    """The fuzz corpus itself is valid (so the mutations start from real blobs)."""
    for _name, blob, fn in SAMPLES:
        fn(blob)
