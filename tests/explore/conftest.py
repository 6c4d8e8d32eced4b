from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.explore import toy


@pytest.fixture(autouse=True)
def toy_points() -> Iterator[None]:
    """Declare the toy fault points for one test, then remove them again."""
    toy.register()
    yield
    toy.unregister()


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A two-worker Dask cluster on loopback, shared by a test module."""
    distributed = pytest.importorskip("dask.distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
