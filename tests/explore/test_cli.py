"""The CLI, with the toy backend selected by LUOSIM_EXPLORE_BACKEND=tests.explore.toy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import luosim.explore.cli as cli
from tests.explore import toy

runner = CliRunner()


@pytest.fixture(autouse=True)
def toy_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.BACKEND_ENV, "tests.explore.toy")


@pytest.fixture
def scenario(tmp_path: Path) -> str:
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(toy.SCENARIO))
    return str(path)


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(cli.app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["explore", "nope.json"], "error: nope.json: no such file"),
    (["explore"], "error: missing argument FILE"),
    (["explore", "{file}", "--depth", "3"], "error: --depth must be 1 or 2, got '3'"),
    (["explore", "{file}", "--depth", "two"], "error: --depth must be 1 or 2, got 'two'"),
    (["explore", "{file}", "--effects", "some"], "error: --effects must be one of"),
    (["explore", "{file}", "--policy", "oops"], "error: bad policy 'oops': expected KEY=VALUE"),
    (["explore", "{file}", "--policy", "toy.on_corrupt=warn,x"], "error: bad policy"),
    (["explore", "{file}", "--policy", "nosuch=1"], "error: unknown policy 'nosuch'"),
    (["explore", "{file}", "--compare", "toy.on_corrupt=warn", "bad"], "error: bad policy 'bad'"),
    (["explore", "{file}", "--jobs", "many"], "error: --jobs must be a positive number"),
    (["explore", "{file}", "--executor", "slurm"], "error: --executor must be local or dask"),
    (["explore", "{file}", "--scheduler", "tcp://x:1", "--executor", "local"],
     "error: --scheduler needs --executor dask"),
    (["replay", "nope.json"], "error: nope.json: no such file"),
])
def test_bad_input_exit_2_one_line(scenario: str, args: list[str], message: str) -> None:
    code, out, err = invoke(*(a.replace("{file}", scenario) for a in args))
    assert code == 2
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""


def test_bad_scenario_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[not a scenario")
    code, _, err = invoke("explore", str(bad))
    assert code == 2 and err.startswith(f"error: {bad}: cannot load") and err.count("\n") == 1


def test_explore_json_and_traces(scenario: str, tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    code, out, _ = invoke("explore", scenario, "--depth", "2", "--json", "--traces", str(traces))
    assert code == 0  # unsafe groups are reported, not an error
    doc = json.loads(out)
    assert doc["summary"] == {"runs": 30, "ok": 1, "refused": 3, "panic": 2, "unsafe": 1}
    assert list(doc["groups"][0])[:5] == ["outcome", "signature", "runs", "shortest_plan",
                                          "trace"]
    [path] = sorted(traces.iterdir())
    assert doc["groups"][0]["trace_file"] == str(path)  # unsafe groups: where the trace went
    assert json.loads(path.read_text()) == doc["groups"][0]["trace"]
    code2, out2, _ = invoke("explore", scenario, "--depth", "2", "--json", "--traces",
                            str(traces), "--jobs", "2")
    assert (code2, out2) == (0, out)  # byte-for-byte, whatever the job count
    code3, out3, _ = invoke("explore", scenario, "--depth", "2", "--json", "--traces",
                            str(traces), "--no-fork")
    assert (code3, out3) == (0, out)  # fresh runs give what the fork tree gave

    code, out, _ = invoke("replay", str(path), "--json")
    assert code == 0 and json.loads(out)["same"] is True
    doc = json.loads(path.read_text())
    doc["events"].pop()
    path.write_text(json.dumps(doc))
    code, out, _ = invoke("replay", str(path))
    assert code == 1 and "NOT reproduced" in out


def test_fail_on_unsafe(scenario: str, tmp_path: Path) -> None:
    args = ["explore", scenario, "--traces", str(tmp_path)]
    assert invoke(*args, "--fail-on-unsafe")[0] == 0  # depth 1: no unsafe group
    assert invoke(*args, "--depth", "2", "--fail-on-unsafe")[0] == 1


def test_human_output(scenario: str, tmp_path: Path) -> None:
    code, out, _ = invoke("explore", scenario, "--depth", "2", "--traces", str(tmp_path))
    assert code == 0
    assert "Summary" in out and "1 unsafe group(s)" in out
    assert "toy.a#1=corrupt:flip + toy.c#2=corrupt:zero" in out
    assert "toy-01-unsafe-toy.data-intact.json" in out.replace("\n", "")


def test_compare(scenario: str, tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    code, out, _ = invoke("explore", scenario, "--compare", "toy.on_corrupt=panic",
                          "toy.on_corrupt=warn", "--json", "--traces", str(traces))
    assert code == 0
    doc = json.loads(out)
    assert [(r["plan"], r["a"], r["b"]) for r in doc["rows"]] == [
        (["toy.a#1=corrupt:flip"], "panic", "unsafe"),
        (["toy.a#2=corrupt:flip"], "panic", "unsafe"),
    ]
    assert [p.name for p in traces.iterdir()] == ["b-toy-01-unsafe-toy.checksum.json"]
    code, out, _ = invoke("explore", scenario, "--compare", "toy.on_corrupt=panic",
                          "toy.on_corrupt=warn", "--traces", str(traces))
    assert code == 0 and "2 of 8 fault plans change class" in out


def test_model_crash_exit_3(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "BACKEND", cli.Backend(toy.bad_run, toy.scenario_from_dict,
                                                    toy.load_scenario, toy.check_policy))
    for mode in ("--fork", "--no-fork"):
        code, _, err = invoke("explore", scenario, mode)
        assert code == 3
        assert err == "error: model crash: run with toy.b#1=EIO raised KeyError: 'oops'\n"


def test_commands_can_be_mounted_on_another_app(scenario: str, tmp_path: Path) -> None:
    import typer

    root = typer.Typer()
    root.command("explore")(cli.explore_cmd)
    root.command("replay")(cli.replay_cmd)
    result = runner.invoke(root, ["explore", scenario, "--json", "--traces", str(tmp_path)])
    assert result.exit_code == 0 and json.loads(result.stdout)["summary"]["runs"] == 8


def test_luosim_help_imports_no_model() -> None:
    """``luosim --help`` loads neither the model nor rich, pydantic, numpy or dask."""
    import os
    import subprocess
    import sys

    import luosim
    src = str(Path(luosim.__file__).resolve().parents[1])  # these sources, not an installed copy
    code = ("import sys; sys.argv = ['luosim', '--help']\n"
            "import luosim.cli as c\n"
            "try:\n    c.app()\nexcept SystemExit:\n    pass\n"
            "heavy = ('rich', 'pydantic', 'numpy', 'dask', 'luosim.hw', 'luosim.kernel',\n"
            "         'luosim.scenario')\n"
            "print(sorted({m for m in sys.modules if m.startswith(heavy)}), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": src})
    assert "explore" in proc.stdout
    assert proc.stderr.strip() == "[]"
