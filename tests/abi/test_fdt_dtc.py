"""Decode the luo-v1 FDT with the reference tool (dtc) and check what it sees.

dtc has no type information for properties read from a .dtb, so it guesses:
strings print as ``"..."``, values whose length is a multiple of 4 print as
big-endian 32-bit cells ``<0x... 0x...>``, others as bytes ``[xx xx]``.  The
8-byte raw little-endian u64 properties therefore show up as two cells; the
helper below turns either form back into the raw bytes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from luosim.abi import luo


def _dtc() -> str:
    path = shutil.which("dtc")
    if path is None:
        pytest.fail("dtc (device-tree-compiler) is not installed; `make test` installs it "
                    "(apt-get install device-tree-compiler)")
    return path


def _decompile(tmp_path: Path, blob: bytes) -> str:
    dtb = tmp_path / "luo.dtb"
    dtb.write_bytes(blob)
    res = subprocess.run([_dtc(), "-I", "dtb", "-O", "dts", str(dtb)], capture_output=True,
                         text=True, check=False, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _raw(value: str) -> bytes:
    """Raw bytes of a dts property value in ``<cells>`` or ``[bytes]`` form."""
    value = value.strip()
    if value.startswith("<"):
        cells = value.strip("<>").split()
        return b"".join(int(c, 16).to_bytes(4, "big") for c in cells)
    if value.startswith("["):
        return bytes.fromhex(value.strip("[]").replace(" ", ""))
    raise AssertionError(f"not a numeric dts value: {value!r}")


def _nodes(dts: str) -> dict[str, dict[str, str]]:
    """``{node name: {prop: value text}}`` for the root and its direct children."""
    out: dict[str, dict[str, str]] = {}
    stack: list[str] = []
    for line in dts.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"(\S+) \{", line):
            stack.append(m.group(1))
            out[m.group(1)] = {}
        elif line == "};":
            stack.pop()
        elif m := re.fullmatch(r"([\w,.+-]+) = (.*);", line):
            out[stack[-1]][m.group(1)] = m.group(2)
    return out


def test_luo_fdt_with_dtc(tmp_path: Path) -> None:
    """spec luo.md §5.1: dtc sees the nodes, compatibles and raw u64 values we wrote."""
    num, sess_pa, flb_pa = 3, 0x1_2345_6000, 0xFEDC_B000
    nodes = _nodes(_decompile(tmp_path, luo.encode_luo_fdt(num, sess_pa, flb_pa)))
    assert list(nodes) == ["/", "luo-session", "luo-flb"]
    assert list(nodes["/"]) == ["compatible", "liveupdate-number"]
    assert nodes["/"]["compatible"] == '"luo-v1"'
    assert _raw(nodes["/"]["liveupdate-number"]) == num.to_bytes(8, "little")
    assert nodes["luo-session"]["compatible"] == '"luo-session-v2"'
    assert _raw(nodes["luo-session"]["luo-session-header"]) == sess_pa.to_bytes(8, "little")
    assert nodes["luo-flb"]["compatible"] == '"luo-flb-v1"'
    assert _raw(nodes["luo-flb"]["luo-flb-header"]) == flb_pa.to_bytes(8, "little")


def test_luo_fdt_p0_with_dtc(tmp_path: Path) -> None:
    """spec luo.md §5.1: a P0 FDT has no luo-flb node."""
    nodes = _nodes(_decompile(tmp_path, luo.encode_luo_fdt(1, 0x4000, None)))
    assert list(nodes) == ["/", "luo-session"]
    assert _raw(nodes["luo-session"]["luo-session-header"]) == (0x4000).to_bytes(8, "little")


def test_dtc_roundtrip_is_decodable(tmp_path: Path) -> None:
    """dtc's own re-encoding (dts → dtb) of our FDT decodes to the same values."""
    blob = luo.encode_luo_fdt(9, 0x8000, 0x9000)
    dts = tmp_path / "luo.dts"
    dts.write_text(_decompile(tmp_path, blob))
    res = subprocess.run([_dtc(), "-I", "dts", "-O", "dtb", str(dts)], capture_output=True,
                         check=False, timeout=30)
    assert res.returncode == 0, res.stderr
    assert luo.decode_luo_fdt(res.stdout, require_flb=True) == luo.LuoFdt(9, 0x8000, 0x9000)
