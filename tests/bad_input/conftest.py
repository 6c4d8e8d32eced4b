"""Helpers for the hostile-input cases of issue 13."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from luosim.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SMALL = EXAMPLES / "small-host.yaml"

# a port-switch-endpoint tree under one root port, used by several cases
ROOT_PORT: dict[str, Any] = {"slot": 1, "kind": "root-port", "name": "rp0",
                             "children": [{"slot": 0, "name": "e0"}]}


def scenario_text(**top: Any) -> str:
    return yaml.safe_dump(top, sort_keys=False)


def invoke(args: list[str], budget_s: float = 10.0) -> Result:
    """Run the CLI in-process; every hostile case must end within ``budget_s``."""
    start = time.monotonic()
    res = CliRunner().invoke(app, [str(a) for a in args])
    elapsed = time.monotonic() - start
    assert elapsed < budget_s, f"took {elapsed:.1f} s: {args}"
    return res


def assert_bad_input(res: Result, *needles: str) -> str:
    """Exit 2, one line, no traceback; returns the line."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    text = res.output.strip()
    assert "Traceback" not in text and "model crash" not in text
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(lines) == 1, text
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write_trace(path: Path, scenario: Any, policy: dict[str, str] | None = None,
                faults: list[str] | None = None) -> Path:
    path.write_text(json.dumps({
        "luosim_trace": 1, "scenario": scenario, "policy": policy or {},
        "faults": faults or [], "outcome": "ok", "signature": "ok", "panic": None,
        "events": []}))
    return path


@pytest.fixture
def small_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SMALL.read_text())
    return data
