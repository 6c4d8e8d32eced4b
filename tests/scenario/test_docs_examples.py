"""The README's runnable examples (docs/*.py) work and say what the README says."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_host_example_v6_to_v7_zero_dma_corruption(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue "vfio-pci, IOMMU and live DMA": 2 VMs, 4 vfio devices behind 2 switches,
    8 GiB of guest RAM, v6 -> v7 with DMA running: no DMA write lands outside its VM.
    The PCI FLB ABI differs between v6 and v7 (pci.md §3), so VFIO-8 is reported."""
    mod = runpy.run_path(str(DOCS / "host_example.py"))
    assert mod["main"]() == 0
    out = capsys.readouterr().out
    assert "corrupting: 0" in out
    assert "VFIO-8" in out
    for line in out.splitlines():
        if "->" in line and ": 0000:" in line:
            before, after = line.split(": ", 1)[1].split(" -> ")
            assert before == after
