"""KHO root versions (kho-v2/v3/v4), blob-size, kexec-metadata and memblock.

Expected names, sizes and offsets are the kernel headers' (cited), never
luosim's own encoder's:

* gregkh/linux 9d87d0fc include/linux/kho/abi/kexec_handover.h:
  KHO_FDT_COMPATIBLE "kho-v3", KHO_SUB_TREE_PROP_NAME "preserved-data",
  KHO_SUB_TREE_SIZE_PROP_NAME "blob-size" (u64 beside preserved-data).
* torvalds/linux 40735a68 include/linux/kho/abi/kexec_metadata.h: packed
  {u32 version; char previous_release[__NEW_UTS_LEN + 1]; u32 kexec_count}
  = 4 + 65 + 4 = 73 bytes, offsets 0/4/69; KHO_KEXEC_METADATA_VERSION 1;
  KHO_METADATA_NODE_NAME "kexec-metadata".
* torvalds/linux c17ee635 include/linux/kho/abi/memblock.h: "memblock",
  "memblock-v1", "reserve-mem-v1", u64 start/size.
"""

from __future__ import annotations

import errno
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from luosim.abi import kexec_metadata as km
from luosim.abi.errors import DecodeError
from luosim.abi.fdt import build_fdt
from luosim.abi.kho import KhoData, decode_root_fdt, encode_root_fdt
from luosim.abi.memblock import ReserveMem, decode_memblock_fdt, encode_memblock_fdt
from luosim.errors import KernelError
from luosim.hw.machine import Machine
from luosim.kernel.kho import Kho
from tests.conftest import FakeKernel


def _dts(tmp_path: Path, blob: bytes) -> str:
    dtc = shutil.which("dtc")
    if dtc is None:
        pytest.fail("dtc missing: `make test` installs device-tree-compiler")
    path = tmp_path / "x.dtb"
    path.write_bytes(blob)
    return subprocess.run([dtc, "-I", "dtb", "-O", "dts", str(path)], check=True,
                          capture_output=True, text=True, timeout=30).stdout


def _u64_cells(value: int) -> str:
    """How dtc shows a raw little-endian u64: two big-endian 32-bit cells."""
    raw = value.to_bytes(8, "little")
    hi, lo = int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:], "big")
    return f"<0x{hi:02x} 0x{lo:02x}>"  # dtc prints cells as 0x%02x


def test_kexec_metadata_layout_is_the_headers() -> None:
    assert km.SIZE == 73
    assert km.OFFSETS == {"version": 0, "previous_release": 4, "kexec_count": 69}
    assert (km.KHO_KEXEC_METADATA_VERSION, km.KHO_METADATA_NODE_NAME) == (1, "kexec-metadata")
    blob = km.KexecMetadata(1, "7.3.0-rc4", 5).encode()
    assert len(blob) == 73
    assert blob[0:4] == b"\x01\x00\x00\x00"
    assert blob[4:14] == b"7.3.0-rc4\x00" and blob[14:69] == bytes(55)
    assert blob[69:73] == b"\x05\x00\x00\x00"
    assert km.read_incoming(blob, 73) == km.KexecMetadata(1, "7.3.0-rc4", 5)


@pytest.mark.parametrize("blob,size,field", [
    (b"\x01\x00", 2, "version"),                      # smaller than the version word
    (b"\x02" + bytes(72), 73, "version"),             # unknown version
    (b"\x01" + bytes(71), 72, "kexec_count"),         # too small for v1
])
def test_kexec_metadata_reader_checks(blob: bytes, size: int, field: str) -> None:
    """kho_in_kexec_metadata(): each check warns and ignores the blob."""
    with pytest.raises(DecodeError) as ei:
        km.read_incoming(blob, size)
    assert ei.value.field == field


@pytest.mark.parametrize("compat", ["kho-v3", "kho-v4"])
def test_blob_size_root_decodes_with_dtc(tmp_path: Path, compat: str) -> None:
    blob = encode_root_fdt(0x12345000, [("LUO", 0x2000, 4096), ("kexec-metadata", 0x3000, 73)],
                           compatible=compat)
    dts = _dts(tmp_path, blob)
    assert f'compatible = "{compat}";' in dts
    assert f"preserved-memory-map = {_u64_cells(0x12345000)};" in dts
    nodes = dict(re.findall(r"\n\t(\S+) \{(.*?)\n\t\};", dts, re.S))
    assert set(nodes) == {"LUO", "kexec-metadata"}
    assert f"preserved-data = {_u64_cells(0x3000)};" in nodes["kexec-metadata"]
    assert f"blob-size = {_u64_cells(73)};" in nodes["kexec-metadata"]
    assert f"blob-size = {_u64_cells(4096)};" in nodes["LUO"]
    root = decode_root_fdt(blob, expect_compatible=compat)
    assert root.sizes == {"LUO": 4096, "kexec-metadata": 73}


def test_a_reader_accepts_only_its_root_version() -> None:
    """kho_populate(): fdt_node_check_compatible() against the kernel's one version."""
    v2 = encode_root_fdt(0x1000, [("LUO", 0x2000)])
    v3 = encode_root_fdt(0x1000, [("LUO", 0x2000, 64)], compatible="kho-v3")
    assert decode_root_fdt(v2, expect_compatible="kho-v2").sizes == {}
    for blob, other in ((v2, "kho-v3"), (v3, "kho-v2"), (v3, "kho-v4")):
        with pytest.raises(DecodeError) as ei:
            decode_root_fdt(blob, expect_compatible=other)
        assert ei.value.kind == "bad-compatible"
    with pytest.raises(DecodeError):  # kho-v1 has no codec: unknown to every reader
        decode_root_fdt(encode_root_fdt(0x1000, [], compatible="kho-v1"))


def test_v9_handover_is_a_kho_v3_root_with_blob_sizes(tmp_path: Path) -> None:
    """Issue #10: a v9-era hand-over has a kho-v3 root, every subnode with blob-size."""
    m = Machine(1 << 30)
    k = m.boot("v9", cmdline="liveupdate=1")
    s = k.open_liveupdate().create_session("s")
    f = k.memfd_create("ram", size=8192)
    s.preserve_fd(f, 1)
    k2 = k.kexec("v9")
    kd = KhoData.decode(m.kho_data or b"")
    blob = m.memory.read(kd.fdt_addr, kd.fdt_size)
    dts = _dts(tmp_path, blob)
    assert 'compatible = "kho-v3";' in dts
    nodes = dict(re.findall(r"\n\t(\S+) \{(.*?)\n\t\};", dts, re.S))
    assert {"LUO", "kexec-metadata"} <= set(nodes)
    for body in nodes.values():
        assert "preserved-data = " in body and "blob-size = " in body
    assert f"blob-size = {_u64_cells(73)};" in nodes["kexec-metadata"]
    assert k2.kho.kexec_count == 1 and k2.kho.previous_release == "v9"


def test_kexec_count_rises_by_one_per_update() -> None:
    m = Machine(1 << 30)
    k = m.boot("mainline-7.3", cmdline="liveupdate=1")
    assert (k.kho.kexec_count, k.kho.previous_release) == (0, "")  # cold boot
    counts = []
    for nxt in ("v9", "mainline-block", "mainline-block", "v9"):
        k = k.kexec(nxt, cmdline="liveupdate=1")
        counts.append((k.kho.kexec_count, k.kho.previous_release))
    # mainline-block's kho-v4 root is not read by the v3 kernels around it: the
    # chain restarts where the root version changes
    assert counts == [(1, "mainline-7.3"), (0, ""), (1, "mainline-block"), (0, "")]


def test_v2_kernel_ignores_a_v3_root_and_boots_cold() -> None:
    m = Machine(1 << 30)
    k = m.boot("v9", cmdline="liveupdate=1")
    k2 = k.kexec("v7", cmdline="liveupdate=1")
    assert not k2.kho.is_kho_boot
    assert any("booting without KHO" in msg and "'kho-v3' is not 'kho-v2'" in msg
               for _lvl, _sub, msg in k2.dmesg)


def test_missing_blob_size_is_einval(machine: Machine) -> None:
    """kho_retrieve_subtree() on a kho-v3 root: no blob-size -> warning and -EINVAL."""
    k = FakeKernel(machine, profile="v9")
    kho = Kho(k)  # type: ignore[arg-type]
    kho.early_init(None)
    blob_pa = k.mm.alloc_pages(0)
    kho.preserve_folio(blob_pa, 0)
    kho.add_subtree("ok", blob_pa, 16)
    kho.add_subtree("broken", blob_pa, 16)
    kd = KhoData.decode(kho.handover() or b"")
    root = decode_root_fdt(machine.memory.read(kd.fdt_addr, kd.fdt_size))
    forged = build_fdt([("compatible", "kho-v3"),
                        ("preserved-memory-map", root.mem_map_pa.to_bytes(8, "little"))],
                       [("ok", [("preserved-data", blob_pa.to_bytes(8, "little")),
                                ("blob-size", (16).to_bytes(8, "little"))]),
                        ("broken", [("preserved-data", blob_pa.to_bytes(8, "little"))])])
    machine.memory.write(kd.fdt_addr, forged)
    kd2 = KhoData(kd.fdt_addr, len(forged), kd.scratch_addr, kd.scratch_size).encode()
    machine.kexec_jump(kd2)
    k2 = FakeKernel(machine, profile="v9")
    kho2 = Kho(k2)  # type: ignore[arg-type]
    kho2.early_init(kd2)
    assert kho2.retrieve_blob("ok") == (blob_pa, 16)
    with pytest.raises(KernelError) as ei:
        kho2.retrieve_subtree("broken")
    assert ei.value.errno == errno.EINVAL
    assert ("warn", "broken KHO subnode 'broken': missing or invalid blob-size property") \
        in k2.log


def test_memblock_fdt_golden_and_dtc(tmp_path: Path) -> None:
    regions = [ReserveMem("trace", 0x1_0000_0000, 0x40_0000), ReserveMem("oops", 0x2000, 0x1000)]
    blob = encode_memblock_fdt(regions)
    dts = _dts(tmp_path, blob)
    assert 'compatible = "memblock-v1";' in dts
    assert dts.count('compatible = "reserve-mem-v1";') == 2
    assert f"start = {_u64_cells(0x1_0000_0000)};" in dts
    assert f"size = {_u64_cells(0x40_0000)};" in dts
    assert decode_memblock_fdt(blob) == {r.name: r for r in regions}
    other = build_fdt([("compatible", "memblock-v2")], [])
    with pytest.raises(DecodeError) as ei:
        decode_memblock_fdt(other)
    assert ei.value.kind == "bad-compatible"


def test_inspect_decodes_the_new_layouts(tmp_path: Path) -> None:
    """Issue #10: `luosim inspect` decodes a kho-v3 root, kexec-metadata and memblock."""
    import json

    from typer.testing import CliRunner

    from luosim.cli import app
    runner = CliRunner()
    files = {
        "root.dtb": encode_root_fdt(0x5000, [("kexec-metadata", 0x6000, 73)], "kho-v3"),
        "meta.bin": km.KexecMetadata(1, "v9", 3).encode(),
        "memblock.dtb": encode_memblock_fdt([ReserveMem("trace", 0x100000, 0x2000)]),
    }
    out = {}
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
        res = runner.invoke(app, ["inspect", str(tmp_path / name), "--json"])
        assert res.exit_code == 0, res.output
        out[name] = json.loads(res.output)
    assert out["root.dtb"]["compatible"] == "kho-v3"
    assert out["root.dtb"]["blob-size"] == {"kexec-metadata": 73}
    assert out["meta.bin"] == {"kind": "kexec-metadata", "version": 1,
                               "previous_release": "v9", "kexec_count": 3}
    assert out["memblock.dtb"]["reserve_mem"] == {"trace": {"start": "0x100000",
                                                            "size": 0x2000}}


def test_reserve_mem_region_is_revived_at_the_same_address() -> None:
    """mm/memblock.c: a reserve_mem region comes back at its address with its content."""
    cmd = "liveupdate=1 reserve_mem=64K:4096:trace reserve_mem=8K:8K:oops"
    m = Machine(1 << 30)
    k = m.boot("v9", cmdline=cmd)
    regions = dict(k.reserve_mem.regions)
    assert set(regions) == {"trace", "oops"} and regions["oops"].start % 8192 == 0
    m.memory.write(regions["trace"].start, b"ftrace ring")
    k2 = k.kexec("v9", cmdline=cmd)
    assert k2.reserve_mem.revived == {"trace", "oops"}
    assert k2.reserve_mem.regions == regions
    assert m.memory.read(regions["trace"].start, 11) == b"ftrace ring"
    # the memblock FDT is left reserved; the regions themselves are claimed
    unclaimed = {pa for pa, _o in k2.kho.unclaimed()}
    assert k2.reserve_mem.in_fdt_pa in unclaimed
    assert regions["trace"].start not in unclaimed
    # a kernel asking for another size gets a fresh region
    k3 = k2.kexec("v9", cmdline="liveupdate=1 reserve_mem=128K:4096:trace")
    assert k3.reserve_mem.revived == set()


def test_root_layout_follows_kho_add_subtree_calls(tmp_path: Path) -> None:
    """kho_add_subtree() (gregkh/linux 9d87d0fc) edits the live root with libfdt's
    fdt_add_subnode() and fdt_setprop(): a new node goes right after the root's
    properties and a new property first in its node.  So dtc lists the newest
    subtree first and blob-size before preserved-data."""
    blob = encode_root_fdt(0x1000, [("first", 0x2000, 1), ("second", 0x3000, 2)], "kho-v3")
    dts = _dts(tmp_path, blob)
    assert dts.index("second {") < dts.index("first {")
    body = dts[dts.index("first {"):]
    assert body.index("blob-size") < body.index("preserved-data")
    assert len(blob) < 4096  # fdt_pack() after every edit
