"""The Dask executor on a two-worker loopback cluster gives the local results."""

from __future__ import annotations

import json
from typing import Any

import pytest

from luosim.explore.campaign import compare, explore
from luosim.explore.executors import DaskExecutor, LocalExecutor
from tests.explore import toy

distributed = pytest.importorskip("dask.distributed")


def test_dask_matches_local(client: Any) -> None:
    kw: dict[str, Any] = {"runner": toy.run, "scenario_factory": toy.scenario_from_dict}
    with LocalExecutor(1) as local:
        expected = explore(toy.SCENARIO, 2, executor=local, **kw)
    seen: list[tuple[int, int]] = []
    dask_ex = DaskExecutor(client=client, max_chunk=3)  # several chunks per batch
    got = explore(toy.SCENARIO, 2, executor=dask_ex, progress=lambda d, t: seen.append((d, t)),
                  **kw)
    dask_ex.close()  # does not close a client it was given
    assert got.records == expected.records
    assert json.dumps(got.as_json()) == json.dumps(expected.as_json())
    assert seen[-1][0] == seen[-1][1]
    cmp = compare(toy.SCENARIO, {}, {"toy.on_corrupt": "warn"},
                  executor=DaskExecutor(client=client), **kw)
    assert len(cmp.rows) == 2
