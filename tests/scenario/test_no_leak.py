"""A finished run leaves nothing alive: explorations run thousands of runs per
worker process (a leaked machine per run once exhausted 24 GiB)."""

from __future__ import annotations

import gc
from pathlib import Path

from luosim.hw.machine import Machine
from luosim.scenario.runner import run
from luosim.scenario.schema import load_scenario


def test_runs_do_not_keep_machines_alive() -> None:
    sc = load_scenario(Path(__file__).resolve().parents[2] / "examples" / "small-host.yaml")
    for _ in range(3):
        run(sc)
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, Machine)]
    assert alive == []
