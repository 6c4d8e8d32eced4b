"""Issue 13: rich markup never eats output; `inspect --as memfd` of garbage is a finding."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from luosim.cli import app
from luosim.scenario.result import InvariantResult, RunResult
from tests.bad_input.conftest import invoke

PANIC = "BUG: DMAR: VT-d root table of 0000:03:00.0 is not the preserved one [x]"


def test_help_shows_the_fault_syntax() -> None:
    res = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "120"})
    assert "POINT[#N]=EFFECT" in res.output


def test_report_prints_a_panic_as_written() -> None:
    from luosim.report.console import render
    buf = io.StringIO()
    console = Console(file=buf, width=200, emoji=True, color_system=None)  # the worst case
    result = RunResult("panic", panic=PANIC,
                       invariants=[InvariantResult("X-1", False, ":bug: [bold]x[/]")])
    render(result, console)
    text = buf.getvalue()
    assert PANIC in text and ":bug: [bold]x[/]" in text
    assert "\N{BUG}" not in text


def test_explore_tables_print_a_panic_signature_as_written() -> None:
    from luosim.explore.classify import Group
    from luosim.explore.cli import _groups_table
    buf = io.StringIO()
    group = Group(outcome="panic", signature=f"panic:{PANIC}", runs=1, shortest_plan=())
    Console(file=buf, width=300, emoji=False, color_system=None).print(_groups_table([group]))
    assert f"panic:{PANIC}" in buf.getvalue()
    import inspect as pyinspect

    import luosim.explore.cli as ecli
    assert "Console(highlight=False)" not in pyinspect.getsource(ecli)


def test_faults_listing_keeps_every_point_name_at_80_columns() -> None:
    from luosim.faults import load_catalog
    res = CliRunner().invoke(app, ["faults"], env={"COLUMNS": "80"})
    assert res.exit_code == 0
    assert max(len(line) for line in res.output.splitlines()) <= 80
    names = {line.split("│")[1].strip() for line in res.output.splitlines()
             if line.startswith("│") and line.split("│")[1].strip()}
    assert set(load_catalog()) <= names


def test_inspect_memfd_of_random_bytes_has_findings(tmp_path: Path) -> None:
    f = tmp_path / "rand.bin"
    f.write_bytes(os.urandom(48))
    res = invoke(["inspect", "--as", "memfd", "--json", f])
    assert res.exit_code == 1, res.output
    import json
    assert json.loads(res.output)["findings"]


@pytest.mark.parametrize("v2", [False, True])
def test_a_kernel_written_memfd_record_has_no_findings(v2: bool) -> None:
    from luosim.abi import memfd
    from luosim.inspect.decode import decode_blob
    folios = memfd.KhoVmalloc(first=0x1234000, total_pages=2, order=0)
    n = 512  # 1 GiB of 2 MiB folios: 512 records of 16 bytes = 2 pages
    rec = (memfd.MemfdLuoSerV2(0, 1 << 30, 0, 0, n, folios) if v2
           else memfd.MemfdLuoSerV1(0, 1 << 30, n, folios))
    report = decode_blob(rec.encode(), "memfd")
    assert "findings" not in report, report


def test_kernel_preserved_memfd_has_no_findings() -> None:
    """The record the modelled kernel writes at preserve time passes the checks."""
    from luosim.abi import memfd
    from luosim.hw.machine import Machine
    from luosim.inspect.decode import memfd_findings
    k = Machine.from_topology({"memory": "1GiB"}).boot("v7")
    f = k.memfd_create("ram", size=8 << 20)
    f.fill(0, 8 << 20, 0x5A)
    s = k.open_liveupdate().create_session("s")
    records: list[object] = []
    real = {c: c.encode for c in (memfd.MemfdLuoSerV1, memfd.MemfdLuoSerV2)}

    def spy(self: memfd.MemfdLuoSerV2) -> bytes:
        records.append(self)
        return real[type(self)](self)

    for cls in real:
        cls.encode = spy  # type: ignore[method-assign,assignment]
    try:
        s.preserve_fd(f, token=1)
    finally:
        for cls, fn in real.items():
            cls.encode = fn  # type: ignore[method-assign]
    assert records and all(memfd_findings(r) == [] for r in records)
