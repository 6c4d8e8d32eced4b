"""Golden bytes for the KHO ABI (include/linux/kho/abi/kexec_handover.h, spec kho.md
"Tracking format").  Expected values are computed by hand in the comments."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from luosim.abi.errors import DecodeError
from luosim.abi.kho import (
    KHO_TREE_MAX_DEPTH,
    KhoData,
    KhoScratch,
    bitmap_index,
    decode_key,
    decode_root_fdt,
    encode_key,
    encode_root_fdt,
    table_index,
)
from luosim.hw.machine import Machine
from luosim.hw.memory import PAGE_SIZE
from luosim.kernel.kho import Kho
from tests.conftest import FakeKernel


def test_tree_depth_is_six() -> None:
    # ceil((52 - 15) / 9) + 1 = 5 + 1
    assert KHO_TREE_MAX_DEPTH == 6


def test_key_encoding_golden() -> None:
    # order 9 at 2 MiB: order bit 52-9=43, shifted pa = 0x200000 >> 21 = 1
    assert encode_key(0x200000, 9) == (1 << 43) | 1 == 0x80000000001
    # order 0 at 0x1234000: bit 52 | pfn 0x1234
    assert encode_key(0x1234000, 0) == 0x10000000001234
    assert decode_key(0x80000000001) == (0x200000, 9)
    assert decode_key(0x10000000001234) == (0x1234000, 0)


def test_key_indices_golden() -> None:
    key = 0x80000000001  # 2^43 | 1
    assert bitmap_index(key) == 1
    # level L index = (key >> ((L-1)*9 + 15)) % 512
    assert [table_index(key, lvl) for lvl in (1, 2, 3, 4, 5)] == [0, 0, 0, 2, 0]


def test_radix_tree_bytes_in_memory() -> None:
    """One order-9 folio at 2 MiB: root[0] -> L4[2] -> L3[0] -> L2[0] -> L1[0] -> leaf bit 1."""
    m = Machine(4 << 30)
    k = FakeKernel(m)
    kho = Kho(k)  # type: ignore[arg-type]
    kho.early_init(None)
    kho.preserved.add((0x200000 >> 12, 9))
    root = kho._write_radix_tree()
    node = root
    for index in (0, 2, 0, 0, 0):
        words = struct.unpack("<512Q", m.memory.read(node, PAGE_SIZE))
        assert [i for i, w in enumerate(words) if w] == [index]
        node = words[index]
    leaf = m.memory.read(node, PAGE_SIZE)
    assert leaf[0] == 0x02 and not any(leaf[1:])


def test_kho_data_golden() -> None:
    blob = KhoData(0x1000, 0x200, 0x3000, 0x10).encode()
    assert blob == bytes.fromhex("0010000000000000" "0002000000000000"
                                 "0030000000000000" "1000000000000000")
    assert KhoData.decode(blob) == KhoData(0x1000, 0x200, 0x3000, 0x10)
    with pytest.raises(DecodeError) as ei:
        KhoData.decode(blob[:31])
    assert ei.value.kind == "truncated"


def test_kho_scratch_golden() -> None:
    assert KhoScratch(0x1000000, 0x4000000).encode() == bytes.fromhex(
        "0000000100000000" "0000000400000000")
    with pytest.raises(DecodeError):
        KhoScratch.decode_array(b"\0" * 17)


def test_root_fdt_roundtrip_and_errors() -> None:
    blob = encode_root_fdt(0x12345000, [("LUO", 0x2000), ("TEST", 0x3000)])
    root = decode_root_fdt(blob)
    assert root.compatible == "kho-v2"
    assert root.mem_map_pa == 0x12345000
    assert root.subtrees == {"LUO": 0x2000, "TEST": 0x3000}
    with pytest.raises(DecodeError) as ei:
        decode_root_fdt(encode_root_fdt(1, [], compatible="kho-v1"))
    assert ei.value.kind == "bad-compatible"
    with pytest.raises(DecodeError) as ei:
        decode_root_fdt(blob[:20])
    assert ei.value.kind == "bad-fdt"


def test_root_fdt_decodes_with_dtc(tmp_path: Path) -> None:
    """The reference tool reads our FDT: node names, compatible, raw u64 values."""
    dtc = shutil.which("dtc")
    assert dtc, "dtc missing: `make test` installs device-tree-compiler"
    blob = encode_root_fdt(0x12345000, [("LUO", 0x2000)])
    path = tmp_path / "kho.dtb"
    path.write_bytes(blob)
    dts = subprocess.run([dtc, "-I", "dtb", "-O", "dts", str(path)], check=True,
                         capture_output=True, text=True).stdout
    assert 'compatible = "kho-v2";' in dts
    # raw little-endian u64 0x12345000 = bytes 00 50 34 12 00 00 00 00, which dtc
    # shows as two big-endian cells: the proof that KHO writes native u64s, not cells
    assert "preserved-memory-map = <0x503412 0x00>;" in dts
    assert "LUO {" in dts
    assert "preserved-data = <0x200000 0x00>;" in dts
