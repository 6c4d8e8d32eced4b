from __future__ import annotations

import json
from pathlib import Path

import pytest

from luosim.explore.campaign import explore
from luosim.explore.trace import Trace, TraceError, load_trace, replay, save_trace
from luosim.faults import Fault
from tests.explore import toy

PLAN = (Fault("toy.a", 1, "corrupt:flip"), Fault("toy.c", 2, "corrupt:zero"))


def unsafe_trace() -> Trace:
    return Trace.from_result(toy.SCENARIO, {}, PLAN, toy.run(toy.SCENARIO, faults=PLAN))


def test_save_load_replay_reproduces(tmp_path: Path) -> None:
    trace = unsafe_trace()
    path = save_trace(trace, tmp_path / "sub" / "t.json")
    loaded = load_trace(path)
    assert loaded == trace
    assert json.loads(path.read_text())["faults"] == ["toy.a#1=corrupt:flip",
                                                      "toy.c#2=corrupt:zero"]
    result, same, diff = replay(loaded, toy.run, scenario_factory=toy.scenario_from_dict)
    assert (result.outcome, same, diff) == ("unsafe", True, "")


def test_exploration_traces_replay(tmp_path: Path) -> None:
    ex = explore(toy.SCENARIO, 2, runner=toy.run, scenario_factory=toy.scenario_from_dict,
                 policy={"toy.on_corrupt": "warn"})
    for i, g in enumerate(ex.groups):
        assert g.trace is not None
        loaded = load_trace(save_trace(g.trace, tmp_path / f"{i}.json"))
        assert loaded.policy == {"toy.on_corrupt": "warn"}
        result, same, diff = replay(loaded, toy.run, scenario_factory=toy.scenario_from_dict)
        assert same, diff
        assert result.signature() == g.signature


def test_replay_detects_differences(tmp_path: Path) -> None:
    doc = unsafe_trace().as_json()
    doc["events"][3]["detail"] = "tampered"
    doc["outcome"] = "ok"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    _, same, diff = replay(load_trace(path), toy.run, scenario_factory=toy.scenario_from_dict)
    assert not same
    assert "outcome: trace 'ok', replay 'unsafe'" in diff
    assert "first difference at event 3" in diff


def write(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(content)
    return path


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.pop("events"), "missing key 'events'"),
    (lambda d: d.pop("luosim_trace"), "missing key 'luosim_trace'"),
    (lambda d: d.update(luosim_trace=7), "unsupported luosim_trace version 7"),
    (lambda d: d.update(faults=["nosuch.point#1=ENOMEM"]),
     "faults[0]: unknown fault point 'nosuch.point'"),
    (lambda d: d.update(faults=["toy.b#1=ENOMEM"]), "does not accept effect 'ENOMEM'"),
    (lambda d: d.update(faults=["garbage"]), "faults[0]: bad fault 'garbage'"),
    (lambda d: d.update(scenario=[]), "key 'scenario' has the wrong type (list)"),
])
def test_bad_trace_files(tmp_path: Path, mutate: object, message: str) -> None:
    doc = unsafe_trace().as_json()
    mutate(doc)  # type: ignore[operator]
    path = write(tmp_path, json.dumps(doc))
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert message in str(info.value)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not JSON (line 1, column 2"),
    ("[1, 2]", "not a luosim trace"),
    ("", "not JSON"),
])
def test_not_a_trace(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(TraceError, match=message.replace("(", r"\(")):
        load_trace(write(tmp_path, content))


def test_missing_trace_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file"):
        load_trace(tmp_path / "nope.json")
    with pytest.raises(TraceError, match="is a directory"):
        load_trace(tmp_path)
