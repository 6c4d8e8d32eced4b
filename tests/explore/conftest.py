from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.explore import toy


@pytest.fixture(autouse=True)
def toy_points() -> Iterator[None]:
    """Declare the toy fault points for one test, then remove them again."""
    toy.register()
    yield
    toy.unregister()
