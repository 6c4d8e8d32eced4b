"""The ``luosim`` command line (typer + rich).

Exit codes: see luosim.exitcodes (0 ok, 1 the run ended refused/panic/unsafe
or a replay diverged, 2 bad input, 3 a bug in luosim, 4 a host error).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from luosim.exitcodes import GuardedGroup
from luosim.faults import Fault

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  cls=GuardedGroup,
                  help="luosim: an executable, byte-exact model of Linux Live Update.")
out = Console(highlight=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit (bad input = 2)."""
    err.print(f"luosim: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def parse_policy(items: list[str] | None) -> dict[str, str]:
    """``["pci.retrieve_failure=warn", "a=b,c=d"]`` -> dict; bad text exits 2."""
    from luosim.kernel.profiles import check_policy
    policy: dict[str, str] = {}
    for item in items or []:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                fail(f"--policy {part!r}: expected KEY=VALUE")
            try:
                check_policy(key.strip(), value.strip())
            except ValueError as exc:
                fail(f"--policy: {exc}")
            policy[key.strip()] = value.strip()
    return policy


def _load(path: Path) -> Any:
    from luosim.scenario.schema import ScenarioError, load_scenario
    try:
        return load_scenario(path)
    except ScenarioError as exc:
        for line in str(exc).splitlines():
            err.print(f"luosim: {line}", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _reference_scenario() -> Any:
    """The reference host shipped in the package (examples/reference-host.yaml)."""
    from importlib.resources import files

    import yaml

    from luosim.scenario.schema import scenario_from_dict
    ref = files("luosim").joinpath("data/reference-host.yaml")
    return scenario_from_dict(yaml.safe_load(ref.read_text()), "reference-host.yaml")


def _run_and_report(scenario: Any, policy: dict[str, str], faults: tuple[Fault, ...],
                    as_json: bool, title: str, dump: Path | None = None) -> None:
    from luosim.report.console import render
    from luosim.scenario.runner import run
    if as_json:
        result = run(scenario, faults=faults, policy=policy, dump_handover=dump)
        sys.stdout.write(json.dumps(result.as_json(), indent=2, sort_keys=False) + "\n")
    else:
        from luosim.report.progress import PhaseProgress
        with PhaseProgress(out) as progress:
            result = run(scenario, faults=faults, policy=policy, on_phase=progress.phase,
                         dump_handover=dump)
        render(result, out, title=title)
    raise typer.Exit(0 if result.outcome == "ok" else 1)


PolicyOpt = Annotated[list[str] | None, typer.Option(
    "--policy", help="Override a profile policy, KEY=VALUE (e.g. pci.retrieve_failure=warn).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the machine-readable result.")]


@app.command()
def demo(policy: PolicyOpt = None, as_json: JsonOpt = False) -> None:
    """Run the built-in reference hypervisor host live update."""
    pol = parse_policy(policy)
    _run_and_report(_reference_scenario(), pol, (), as_json, "reference host")


@app.command("run")
def run_cmd(file: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
            policy: PolicyOpt = None, as_json: JsonOpt = False,
            fault: Annotated[list[str] | None, typer.Option(
                "--fault", help=r"Inject POINT\[#N]=EFFECT (repeatable).")] = None,
            dump: Annotated[Path | None, typer.Option(
                "--dump-handover", help="Write each kexec's hand-over blobs (kho_data, "
                "kho/out/fdt, sub_fdts, LUO FLB data) under this folder.")] = None) -> None:
    """Run a scenario: live progress, PCI trees, preserved objects, timeline, invariants."""
    pol = parse_policy(policy)
    scenario = _load(file)
    try:
        faults = tuple(Fault.parse(f) for f in fault or [])
    except ValueError as exc:
        fail(f"--fault: {exc}")
    if dump is not None:
        from luosim.inputs import host_path_problem
        problem = host_path_problem(dump)
        if problem:
            fail(f"--dump-handover {dump}: {problem}", 4)
    _run_and_report(scenario, pol, faults, as_json, file.name, dump)


@app.command("faults")
def faults_cmd(as_json: JsonOpt = False) -> None:
    """List the fault points, the effects each accepts, and what it models."""
    from luosim.faults import load_catalog
    catalog = load_catalog()
    if as_json:
        rows = [{"point": fp.name, "effects": list(fp.effects), "doc": fp.doc}
                for fp in sorted(catalog.values(), key=lambda f: f.name)]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.table import Table
    from rich.text import Text
    t = Table(title=f"{len(catalog)} fault points (POINT#N=EFFECT)")
    t.add_column("point", no_wrap=True)  # names are what users type: never cut
    t.add_column("effects", overflow="fold")
    t.add_column("models", overflow="fold", ratio=1)
    for fp in sorted(catalog.values(), key=lambda f: f.name):
        t.add_row(Text(fp.name), Text(", ".join(fp.effects)), Text(fp.doc))
    out.print(t)


@app.command()
def schema() -> None:
    """Print the JSON Schema of scenario files."""
    from luosim.scenario.schema import Scenario
    sys.stdout.write(json.dumps(Scenario.model_json_schema(), indent=2) + "\n")


@app.command()
def inspect(file: Annotated[Path, typer.Argument(help="A hand-over blob or debugfs file.")],
            kind: Annotated[str, typer.Option(
                "--as", help="auto | kho-fdt | luo-fdt | luo-ser | pci-v6 | pci-v7 | pci-v9 | "
                             "memfd | kho-data")] = "auto",
            as_json: JsonOpt = False) -> None:
    """Decode a real or simulated hand-over blob (FDT or packed struct)."""
    from luosim.inputs import MAX_BLOB_BYTES, read_regular_file
    from luosim.inspect.decode import InspectError, decode_blob
    data = read_regular_file(file, MAX_BLOB_BYTES)
    try:
        report = decode_blob(data, kind)
    except InspectError as exc:
        if exc.classification == "bad-argument":
            fail(f"--as: {exc}")
        out.print(f"[bold red]{escape(str(file))}: {exc.classification}[/]: {escape(str(exc))}",
                  soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        from luosim.inspect.decode import render_report
        render_report(report, out)
    if report.get("findings"):  # decodes, but no kernel wrote it: exit 1 like a decode error
        raise typer.Exit(1)


@app.command()
def matrix(file: Annotated[Path | None, typer.Argument(
               help="Scenario whose update is repeated for every profile pair.")] = None,
           policy: PolicyOpt = None, as_json: JsonOpt = False) -> None:
    """Run the update for every (old profile, new profile) pair and tabulate outcomes."""
    from luosim.scenario.matrix import run_matrix
    pol = parse_policy(policy)
    scenario = _reference_scenario() if file is None else _load(file)
    rows = run_matrix(scenario, pol)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.table import Table
    t = Table(title="Cross-version live update")
    for col in ("from", "to", "outcome", "why"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["from"], r["to"], r["outcome"], r["why"])
    out.print(t)


def _mount_explorer() -> None:
    try:
        from luosim.explore.cli import explore_cmd, replay_cmd
    except ImportError:  # pragma: no cover - the explorer is part of the package
        return
    cmds: list[tuple[str, Callable[..., Any]]] = [("explore", explore_cmd), ("replay", replay_cmd)]
    for name, fn in cmds:
        app.command(name)(fn)


_mount_explorer()


def main() -> None:
    """Entry point: exit codes per luosim.exitcodes (0 ok, 1 model, 2 input, 3 bug, 4 host)."""
    from luosim.exitcodes import guarded
    sys.exit(guarded(app))


if __name__ == "__main__":  # python -m luosim.cli
    main()
