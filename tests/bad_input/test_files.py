"""Issue 13: scenario, trace and blob files are regular files under a size cap,
read without following a FIFO or device; YAML without duplicate keys or alias
bombs; in run, explore, inspect and replay alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from luosim.inputs import MAX_FILE_BYTES, InputError, parse_yaml, read_regular_file
from tests.bad_input.conftest import SMALL, assert_bad_input, invoke

COMMANDS = {
    "run": lambda p: ["run", p],
    "explore": lambda p: ["explore", p],
    "inspect": lambda p: ["inspect", p],
    "replay": lambda p: ["replay", p],
    "matrix": lambda p: ["matrix", p],
}


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_dev_zero_is_refused_at_once(cmd: str) -> None:
    assert_bad_input(invoke(COMMANDS[cmd]("/dev/zero"), budget_s=5), "/dev/zero",
                     "not a regular file (a character device)")


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_fifo_is_refused_without_hanging(tmp_path: Path, cmd: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: a blocking open or read would hang forever
    assert_bad_input(invoke(COMMANDS[cmd](fifo), budget_s=5), "not a regular file (a FIFO)")


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_oversized_file_is_refused(tmp_path: Path, cmd: str) -> None:
    big = tmp_path / "big"
    with big.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1 if cmd != "inspect" else (64 << 20) + 1)
    assert_bad_input(invoke(COMMANDS[cmd](big), budget_s=5), "byte limit")


def test_directory_is_refused(tmp_path: Path) -> None:
    for cmd in ("run", "replay"):
        assert_bad_input(invoke([cmd, tmp_path]), "is a directory")
    # inspect takes a --dump-handover folder; any other folder is bad input
    assert_bad_input(invoke(["inspect", tmp_path]), "not a --dump-handover folder")


def _alias_bomb(levels: int, fanout: int) -> str:
    """A few KB of YAML whose aliases expand to fanout**levels device nodes."""
    lines = ["machine:", "  segments:", "    - devices:",
             "        - &l0 {slot: 0, kind: bridge}"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*l{i - 1}"] * fanout)
        lines.append(f"        - &l{i} {{slot: {i}, kind: bridge, children: [{refs}]}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("shape,needle", [((9, 9), "more than 64 aliases"),
                                          ((7, 9), "expands to more than")])
def test_alias_bomb_in_devices(tmp_path: Path, shape: tuple[int, int], needle: str) -> None:
    text = _alias_bomb(*shape)
    assert len(text) < 3500
    f = tmp_path / "bomb.yaml"
    f.write_text(text)
    for cmd in ("run", "explore", "matrix"):
        assert_bad_input(invoke([cmd, f], budget_s=3), str(f), needle)


def test_a_few_aliases_are_fine() -> None:
    data = parse_yaml("a: &x {k: 1}\nb: *x\nc: [*x, *x]\n", "t")
    assert data == {"a": {"k": 1}, "b": {"k": 1}, "c": [{"k": 1}, {"k": 1}]}


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("name: a\nmachine:\n  memory: 4GiB\n  memory: 8GiB\n")
    assert_bad_input(invoke(["run", f]), "line 4, column 3", "duplicate key 'memory'",
                     "first at line 3")
    with pytest.raises(InputError, match="duplicate key 'name'"):
        parse_yaml("name: a\nname: b\n", "t")


def test_read_regular_file_reads_a_file(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert read_regular_file(f) == b"abc"
    with pytest.raises(InputError, match="no such file"):
        read_regular_file(tmp_path / "nope")


def test_small_host_still_loads() -> None:
    from luosim.scenario.schema import load_scenario
    assert load_scenario(SMALL).name == "small-host"
