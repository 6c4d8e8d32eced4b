"""Typed decode errors and encode range checks of the ABI codecs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from luosim.abi import block, fdt, iommu, luo, memfd, pci
from luosim.abi.errors import DecodeError


def _luo_fdt(root: list[tuple[str, bytes | str]],
             nodes: list[tuple[str, list[tuple[str, bytes | str]]]]) -> bytes:
    return fdt.build_fdt(root, nodes)


U64 = (0x1000).to_bytes(8, "little")
GOOD_ROOT: list[tuple[str, bytes | str]] = [("compatible", "luo-v1"), ("liveupdate-number", U64)]
Node = tuple[str, list[tuple[str, bytes | str]]]
GOOD_SESS: Node = ("luo-session", [("compatible", "luo-session-v2"), ("luo-session-header", U64)])
GOOD_FLB: Node = ("luo-flb", [("compatible", "luo-flb-v1"), ("luo-flb-header", U64)])


def test_truncated_names_field_and_offset() -> None:
    """spec luo.md §5.1: a short luo_file_ser names the first missing field."""
    raw = luo.LuoFileSer("memfd-v1", 1, 2).encode()
    with pytest.raises(DecodeError) as ei:
        luo.LuoFileSer.decode(raw[:50])
    assert ei.value.kind == "truncated" and ei.value.field == "luo_file_ser.data"
    assert ei.value.offset == 48
    with pytest.raises(DecodeError) as ei:
        luo.LuoFileSer.decode(raw, offset=10)
    assert ei.value.offset == 10 + 48


def test_unterminated_or_non_ascii_string() -> None:
    """spec luo.md §5.1: kernel-written names carry their NUL; missing NUL is corruption."""
    with pytest.raises(DecodeError, match="NUL"):
        luo.LuoSessionSer.decode(b"x" * 64 + bytes(16))
    with pytest.raises(DecodeError, match="non-ASCII") as ei:
        luo.LuoFlbSer.decode(b"ab\xff" + bytes(61))
    assert ei.value.offset == 2


def test_encode_range_checks() -> None:
    """Encoders refuse out-of-range values with ValueError."""
    bad: list[Callable[[], object]] = [
        lambda: luo.LuoFileSer("x" * 48, 0, 0).encode(),
        lambda: luo.LuoFileSer("ok", -1, 0).encode(),
        lambda: luo.LuoSer("luo-v5", 1 << 64, 0, 0).encode(),
        lambda: luo.LiveupdateSessionPreserveFd(16, 1 << 31, 0).encode(),
        lambda: luo.LiveupdateIoctlCreateSession(name=b"x" * 65),
        lambda: pci.PciDevSer(0, 1 << 16, 0).encode(),
        lambda: pci.PciSerV6(2, 0, ()).encode(),
        lambda: memfd.MemfdLuoFolioSer(1 << 52, 0, 0).encode(),
        lambda: memfd.MemfdLuoFolioSer(0, 1 << 12, 0).encode(),
        lambda: memfd.KhoVmallocChunk(0, (1, 0)).encode(),
        lambda: iommu.VtdRootEntry(True, 0x1001).encode(),
        lambda: iommu.VtdContextEntry(True, 4).encode(),
        lambda: iommu.VtdPte(1 << 52).encode(),
        lambda: block.encode_block([b"1" * 8] * 511, 8, 0),
        lambda: luo.encode_luo_fdt(-1, 0),
    ]
    for fn in bad:
        with pytest.raises(ValueError):
            fn()


def test_luo_v5_checks() -> None:
    """spec luo.md §5.2: short blob and compatible over the full 8-byte field."""
    good = luo.encode_luo_v5(1, 0, 0x1000)
    with pytest.raises(DecodeError) as ei:
        luo.decode_luo_v5(good[:31])
    assert ei.value.kind == "truncated"
    with pytest.raises(DecodeError) as ei:
        luo.decode_luo_v5(b"luo-v5\0x" + good[8:])
    assert ei.value.kind == "bad-compatible"
    with pytest.raises(DecodeError) as ei:
        luo.decode_luo_v5(b"luo-v4\0\0" + good[8:])
    assert ei.value.kind == "bad-compatible"


@pytest.mark.parametrize(("root", "nodes", "kind", "text"), [
    ([("compatible", "luo-v2"), ("liveupdate-number", U64)], [GOOD_SESS, GOOD_FLB],
     "bad-compatible", "root"),
    ([("compatible", "luo-v1")], [GOOD_SESS, GOOD_FLB], "bad-value", "liveupdate-number"),
    ([("compatible", "luo-v1"), ("liveupdate-number", U64[:7])], [GOOD_SESS, GOOD_FLB],
     "bad-value", "expected 8 bytes, got 7"),
    (GOOD_ROOT, [GOOD_FLB], "bad-value", "missing node /luo-session"),
    (GOOD_ROOT, [("luo-session", [("compatible", "luo-session-v1"),
                                  ("luo-session-header", U64)]), GOOD_FLB],
     "bad-compatible", "luo-session"),
    (GOOD_ROOT, [("luo-session", [("compatible", "luo-session-v2"),
                                  ("luo-session-header", U64 + b"\0")]), GOOD_FLB],
     "bad-value", "expected 8 bytes, got 9"),
    (GOOD_ROOT, [GOOD_SESS, ("luo-flb", [("compatible", "luo-flb-v2"),
                                         ("luo-flb-header", U64)])],
     "bad-compatible", "luo-flb"),
    (GOOD_ROOT, [GOOD_SESS, ("luo-flb", [("compatible", "luo-flb-v1")])],
     "bad-value", "luo-flb-header"),
])
def test_luo_fdt_incoming_checks(root: list[tuple[str, bytes | str]],
                                 nodes: list[tuple[str, list[tuple[str, bytes | str]]]],
                                 kind: str, text: str) -> None:
    """spec luo.md §5.1: every incoming check raises a typed DecodeError."""
    with pytest.raises(DecodeError, match=text) as ei:
        luo.decode_luo_fdt(_luo_fdt(root, nodes), require_flb=True)
    assert ei.value.kind == kind


def test_luo_fdt_compatible_list() -> None:
    """fdt_node_check_compatible semantics: any entry of a string list matches."""
    root: list[tuple[str, bytes | str]] = [("compatible", b"foo\0luo-v1\0"),
                                           ("liveupdate-number", U64)]
    assert luo.decode_luo_fdt(_luo_fdt(root, [GOOD_SESS]), require_flb=False).liveupdate_num == 4096


def test_fdt_parse_errors() -> None:
    """Header sanity checks and libfdt validation produce typed errors."""
    good = luo.encode_luo_fdt(1, 2, 3)
    cases = [(b"", "truncated"), (b"\0" * 64, "bad-magic"), (good[:-1], "truncated"),
             (good[:8] + b"\xff" * 4 + good[12:], "bad-fdt")]
    for blob, kind in cases:
        with pytest.raises(DecodeError) as ei:
            fdt.parse("t", blob)
        assert ei.value.kind == kind, (blob[:16], ei.value)
    view = fdt.parse("t", good + b"\xff" * 100)  # trailing bytes beyond totalsize are ignored
    assert view.subnodes("/") == ["luo-session", "luo-flb"]
    assert [n for n, _ in view.props("/luo-flb")] == ["compatible", "luo-flb-header"]
    assert view.prop_str("/luo-flb", "compatible") == "luo-flb-v1"
    assert view.prop_u64("/luo-flb", "luo-flb-header") == 3
    assert not view.has_node("/nope")
    with pytest.raises(DecodeError, match="missing node"):
        view.prop("/nope", "x")
    with pytest.raises(DecodeError, match="missing property"):
        view.prop("/", "nope")
    with pytest.raises(DecodeError, match="single NUL-terminated"):
        view.prop_str("/", "liveupdate-number")


def test_block_decode_errors() -> None:
    """spec luo.md §5.2: count 0 and count > capacity are rejected."""
    with pytest.raises(DecodeError, match="count 0"):
        block.decode_block(block.encode_block([], 64, 0), 64, "t")
    over = block.KhoBlockHeaderSer(0, 64).encode() + bytes(4080)
    with pytest.raises(DecodeError, match="exceeds block capacity 63"):
        block.decode_block(over, 64, "t")
    with pytest.raises(DecodeError) as ei:
        block.decode_block(block.KhoBlockHeaderSer(0, 2).encode() + bytes(70), 64, "t")
    assert ei.value.kind == "truncated"


def test_walk_chain() -> None:
    """spec luo.md §5.2: chains are followed; cycles, length and bad pointers are typed."""
    entries = [bytes([i]) * 64 for i in range(100)]
    pas = [0x10000, 0x4000]
    pages = dict(zip(pas, block.encode_chain(entries, 64, pas), strict=True))
    assert block.walk_chain(pages.__getitem__, 0x10000, 64, "t") == entries
    assert block.walk_chain(pages.__getitem__, 0, 64, "t") == []
    with pytest.raises(DecodeError) as ei:
        block.walk_chain(pages.__getitem__, 0x10000, 64, "t", max_blocks=1)
    assert ei.value.kind == "bad-value"
    cyc = {0x1000: block.encode_block([b"a" * 64], 64, 0x2000),
           0x2000: block.encode_block([b"b" * 64], 64, 0x1000)}
    with pytest.raises(DecodeError) as ei:
        block.walk_chain(cyc.__getitem__, 0x1000, 64, "t")
    assert ei.value.kind == "cycle"
    with pytest.raises(DecodeError) as ei:
        block.walk_chain(cyc.__getitem__, 0x5000, 64, "t")
    assert ei.value.kind == "bad-pointer"
    with pytest.raises(DecodeError) as ei:
        block.walk_chain(cyc.__getitem__, 0x1008, 64, "t")
    assert ei.value.kind == "bad-pointer"


def test_session_and_flb_counts() -> None:
    """spec luo.md §5.1: counts above the fixed capacities are corrupt."""
    with pytest.raises(DecodeError, match="LUO_SESSION_MAX"):
        luo.decode_session_block_v1((820).to_bytes(8, "little") + bytes(65528))
    with pytest.raises(DecodeError, match="LUO_FLB_MAX"):
        luo.decode_flb_block(luo.LuoFlbHeaderSer(1, 64).encode() + bytes(4080))
    with pytest.raises(DecodeError, match="LUO_FILE_MAX"):
        luo.decode_file_array_v1(bytes(8192), 129)


def test_iommu_walk_arrays() -> None:
    """spec pci.md §7.2: array chains allow empty pages; cycles are typed."""
    pages = {0x1000: iommu.encode_array_page([], 40, 0x2000),
             0x2000: iommu.encode_array_page([b"d" * 40], 40, 0)}
    assert iommu.walk_arrays(pages.__getitem__, 0x1000, 40, "t") == [b"d" * 40]
    loop = {0x1000: iommu.encode_array_page([], 40, 0x1000)}
    with pytest.raises(DecodeError) as ei:
        iommu.walk_arrays(loop.__getitem__, 0x1000, 40, "t")
    assert ei.value.kind == "cycle"
    with pytest.raises(DecodeError, match="exceeds page capacity"):
        iommu.decode_array_page(iommu.IommuArrayHdrSer(0, 103).encode() + bytes(4080), 40, "t")


def test_pci_v6_truncated_array() -> None:
    """spec pci.md §3.1: the slot array must be fully present."""
    with pytest.raises(DecodeError) as ei:
        pci.PciSerV6.decode(pci.PciSerV6(2, 0, (pci.PciDevSer(0, 0, 0),) * 2).encode()[:20])
    assert ei.value.kind == "truncated" and ei.value.field == "pci_ser.devices"


def test_ioctl_name_helpers() -> None:
    """spec luo.md §2.4: P3 strnlen check vs P0/P1 truncation need the raw name bytes."""
    a = luo.LiveupdateIoctlCreateSession(name=b"")
    assert a.name == bytes(64) and a.name_len == 0
    b = luo.LiveupdateIoctlRetrieveSession.decode(b"H\0\0\0\0\0\0\0ab\0cd" + bytes(59))
    assert b.name_len == 2 and b.name_text() == "ab"
