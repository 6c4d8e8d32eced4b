"""docs/luo_example.py runs successfully (README snippet; spec luo.md §1.3 carry-forward)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "luo_example.py"


def test_luo_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """§1.3: the example carries two sessions of memfds over two kexecs, intact."""
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "generation 1: 64 MiB RAM" in out and "generation 2: 64 MiB RAM" in out
    assert "kexec x2 ok" in out
