"""Issue 13: one table of exit codes (luosim.exitcodes) for every command."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from luosim import exitcodes
from luosim.cli import main
from tests.bad_input.conftest import SMALL, assert_bad_input, invoke


def test_dump_handover_under_a_regular_file_is_a_host_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = invoke(["run", SMALL, "--json", "--dump-handover", blocker / "sub"])
    assert res.exit_code == 4, res.output
    assert "refused" not in res.output and "ENOTDIR" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_dump_write_failure_during_the_run_is_a_host_error(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder is fine up front but the write fails mid-run: still 4, not `refused`."""
    import luosim.inspect.dump as dump

    def full_disk(*_a: object, **_k: object) -> list[str]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dump, "dump_handover", full_disk)
    res = invoke(["run", SMALL, "--json", "--dump-handover", tmp_path / "d"])
    assert res.exit_code == 4, res.output
    assert "No space left on device" in res.output and '"outcome"' not in res.output


def test_a_bug_in_luosim_is_exit_3_with_the_traceback_saved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import luosim.scenario.runner as runner

    def broken(*_a: object, **_k: object) -> None:
        raise ZeroDivisionError("modelling bug")

    monkeypatch.setattr(runner, "run", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    res = invoke(["run", SMALL, "--json"])
    assert res.exit_code == 3
    line = res.output.strip()
    assert "Traceback" not in line and "ZeroDivisionError: modelling bug" in line
    path = Path(line.rsplit("traceback saved to ", 1)[1])
    assert path.parent == tmp_path and "Traceback" in path.read_text()


def test_main_applies_the_table(monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["luosim", "run", "/dev/null/nope"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert "luosim: /dev/null/nope" in capsys.readouterr().err


@pytest.mark.parametrize("exc,code", [
    (exitcodes.InputError("f", ["bad"]), 2), (exitcodes.HostError("disk"), 4),
    (PermissionError(13, "Permission denied", "out.json"), 4),
    (RuntimeError("x"), 3), (KeyboardInterrupt(), 130)])
def test_guarded(exc: BaseException, code: int, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    def fn() -> None:
        raise exc
    assert exitcodes.guarded(fn, open(os.devnull, "w")) == code  # noqa: SIM115


def test_kernel_error_escaping_the_runner_is_a_bug_not_a_host_error(tmp_path: Path) -> None:
    from luosim.errors import KernelError
    monkey = KernelError(5, "EIO from the model")
    with open(os.devnull, "w") as null:
        import tempfile
        old, tempfile.tempdir = tempfile.tempdir, str(tmp_path)
        try:
            assert exitcodes.exit_code_of(monkey, null) == 3
        finally:
            tempfile.tempdir = old


def test_explore_jobs(tmp_path: Path) -> None:
    from luosim.explore.executors import cpu_count
    assert_bad_input(invoke(["explore", SMALL, "--jobs", "0"]), "--jobs")
    from luosim.explore.cli import parse_jobs
    notes: list[str] = []
    assert parse_jobs("64", notes.append) == cpu_count()
    if cpu_count() < 64:
        assert "capped" in notes[0]
    assert parse_jobs("auto") == cpu_count()


def test_explore_checks_traces_before_exploring(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import luosim.explore.campaign as campaign

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("explored before checking --traces")

    monkeypatch.setattr(campaign, "explore", never)  # explore/cli imports it at call time
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_bad_input(invoke(["explore", SMALL, "--traces", blocker]), "--traces",
                     "not a directory")
    assert_bad_input(invoke(["explore", SMALL, "--traces", blocker / "sub"]), "--traces")


def test_fault_never_reached_is_reported(tmp_path: Path) -> None:
    res = invoke(["run", SMALL, "--json", "--fault", "pci.flb.retrieve#99=ENOMEM"])
    data = json.loads(res.output)
    assert data["warnings"] == [
        "fault pci.flb.retrieve#99=ENOMEM was never reached (pci.flb.retrieve was hit 1 time "
        "in this run)"]
    res = invoke(["run", SMALL, "--fault", "pci.flb.retrieve#99=ENOMEM"])
    assert "warning: fault pci.flb.retrieve#99=ENOMEM was never reached" in \
        " ".join(res.output.split())
    res = invoke(["run", SMALL, "--json", "--fault", "pci.flb.retrieve#1=ENOMEM"])
    assert json.loads(res.output)["warnings"] == []


def test_matrix_follows_the_table(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("machine: {memory: 1MiB}\n")
    assert_bad_input(invoke(["matrix", f]), "machine.memory")
