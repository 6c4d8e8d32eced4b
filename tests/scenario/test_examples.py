"""Every example's outcome matches its documented expectation (``expect:`` in the
file, per policy), and the demo scenario is the shipped reference host."""

from __future__ import annotations

from pathlib import Path

import pytest

from luosim.scenario.runner import run
from luosim.scenario.schema import load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CASES = [(p.name, i) for p in sorted(EXAMPLES.glob("*.yaml"))
         for i in range(len(load_scenario(p).expect))]


def test_every_example_documents_an_expectation() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 5
    for p in files:
        assert load_scenario(p).expect, f"{p.name} has no expect:"


@pytest.mark.parametrize(("name", "index"), CASES)
def test_example_outcome(name: str, index: int) -> None:
    sc = load_scenario(EXAMPLES / name)
    exp = sc.expect[index]
    result = run(sc, policy=exp.policy)
    detail = (result.panic or result.error or
              "; ".join(f"{i.id}: {i.detail}" for i in result.broken))
    assert result.outcome == exp.outcome, f"{name} under {exp.policy}: {detail}"


def test_demo_runs_the_shipped_reference_host() -> None:
    from importlib.resources import files
    shipped = files("luosim").joinpath("data/reference-host.yaml").read_text()
    assert shipped == (EXAMPLES / "reference-host.yaml").read_text()
