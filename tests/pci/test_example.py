"""docs/pci_example.py runs and shows the BDF stability it documents (spec pci.md §5.1,
§5.2, §10 inv. 1): the same BDFs after a kexec with ``pci=assign-busses``, other
BDFs after a cold boot with the same command line."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "pci_example.py"


def test_example_bdfs() -> None:
    ns = runpy.run_path(str(EXAMPLE))
    result = ns["main"]()
    assert result == {"nvme1": ("0000:06:00.0", "0000:06:00.0", "0000:04:00.0"),
                      "nic": ("0000:09:00.0", "0000:09:00.0", "0000:05:00.0")}


def test_example_runs_as_a_script(capsys: pytest.CaptureFixture[str]) -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(src)}, check=True, timeout=120).stdout
    assert "nvme1    0000:06:00.0   0000:06:00.0   0000:04:00.0" in out
    assert "nic      0000:09:00.0   0000:09:00.0   0000:05:00.0" in out
