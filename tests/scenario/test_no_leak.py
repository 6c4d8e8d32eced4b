"""A finished run leaves nothing alive: explorations run thousands of runs per
worker process (a leaked machine per run once exhausted 24 GiB)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from luosim.scenario.runner import Run
from luosim.scenario.schema import load_scenario


def test_runs_do_not_keep_their_machines_alive() -> None:
    sc = load_scenario(Path(__file__).resolve().parents[2] / "examples" / "small-host.yaml")
    refs = []
    for _ in range(3):
        r = Run(sc, (), None, None)
        r.execute()
        refs.append(weakref.ref(r.machine))
        del r
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]
