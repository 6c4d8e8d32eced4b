"""Bad scenario files: one line per problem naming the YAML path, exit 2, no traceback
(issue "Scenarios, invariant checker and the luosim CLI")."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from luosim.cli import app

runner = CliRunner()

BAD = {
    "not-yaml": ("machine: [1, 2\n", "YAML syntax error"),
    "top-level-list": ("- 1\n- 2\n", "(top level): expected a mapping"),
    "unknown-key": ("colour: blue\n", "colour: unknown key"),
    "slot-type": ("machine:\n  segments:\n    - devices:\n        - {slot: 1, kind: switch, "
                  "ports: [{slot: x}]}\n",
                  "machine.segments[0].devices[0].ports[0].slot: expected an integer, got 'x'"),
    "slot-range": ("machine:\n  segments:\n    - devices: [{slot: 40}]\n",
                   "machine.segments[0].devices[0].slot: expected a value <= 31, got 40"),
    "memory-size": ("machine: {memory: lots}\n", "machine.memory: cannot parse size 'lots'"),
    "profile": ("kernels: {before: {profile: v8}}\n",
                "kernels.before.profile: unknown kernel profile 'v8'"),
    "policy": ("policy: {pci.retrieve_failure: ignore}\n",
               "policy: policy pci.retrieve_failure: 'ignore' is not one of panic, warn"),
    "fault": ("faults: ['nosuch#1=ENOMEM']\n", "faults: unknown fault point 'nosuch'"),
    "vm-device": ("workload: {vms: [{name: vm0, devices: [ghost]}]}\n",
                  "workload.vms[0].devices: no device named 'ghost'"),
    "endpoint-children": ("machine:\n  segments:\n"
                          "    - devices: [{slot: 1, children: [{slot: 0}]}]\n",
                          "machine.segments[0].devices[0]: an endpoint has no children or ports"),
    "duplicate-slot": ("machine:\n  segments:\n    - devices: [{slot: 1}, {slot: 1}]\n",
                       "machine.segments[0]: devices[1]: slot 1 function 0 is already used"),
    "vm-memory": ("workload: {vms: [{name: vm0, memory: 3MiB}]}\n",
                  "workload.vms[0].memory: VM memory must be a positive multiple of 2MiB"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_scenario_is_one_line_exit_2(tmp_path: Path, name: str) -> None:
    text, expected = BAD[name]
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    res = runner.invoke(app, ["run", str(f)])
    assert res.exit_code == 2, res.output
    out = res.output.strip()
    assert "Traceback" not in out
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith(f"luosim: {f}: ")
    assert expected in lines[0]


def test_missing_file(tmp_path: Path) -> None:
    res = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2
    assert "no such file" in res.output and "Traceback" not in res.output


def test_bad_policy_argument() -> None:
    res = runner.invoke(app, ["demo", "--policy", "pci.retrieve_failure"])
    assert res.exit_code == 2
    assert "expected KEY=VALUE" in res.output


def test_bad_fault_argument(tmp_path: Path) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text("name: x\n")
    res = runner.invoke(app, ["run", str(f), "--fault", "pci.flb.retrieve#1=EWHAT"])
    assert res.exit_code == 2
    assert "--fault" in res.output and "Traceback" not in res.output


def test_schema_is_exported() -> None:
    import json
    res = runner.invoke(app, ["schema"])
    assert res.exit_code == 0
    schema = json.loads(res.output)
    assert "machine" in schema["properties"]
