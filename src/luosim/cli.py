"""The ``luosim`` command line (typer + rich).

Exit codes: see luosim.exitcodes (0 ok, 1 the run ended refused/panic/unsafe
or a replay diverged, 2 bad input, 3 a bug in luosim, 4 a host error).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast

import typer

from luosim.cli_profiles import register as _register_profiles
from luosim.exitcodes import GuardedGroup

if TYPE_CHECKING:  # the model and rich load inside the commands: `luosim --help` stays fast
    from rich.console import Console

    from luosim.faults import Fault

# plain click help: typer's rich help formatter alone imports ~0.1 s of rich
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  cls=GuardedGroup,
                  help="luosim: an executable, byte-exact model of Linux Live Update.")


class _LazyConsole:
    """A rich Console created (and rich imported) on first use."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._console: Any = None

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console
            self._console = Console(**self._kwargs)
        return cast("Console", self._console)

    def reset(self) -> None:
        self._console = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


def _real(console: Console) -> Console:
    """The rich Console behind a lazy one (for code that wants the real class)."""
    return console.get() if isinstance(console, _LazyConsole) else console


out = cast("Console", _LazyConsole(highlight=False, emoji=False))
err = cast("Console", _LazyConsole(stderr=True, highlight=False, emoji=False))


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
                    fmt: str, title: str, dump: Path | None = None,
                    trace: Path | None = None) -> None:
    from luosim.report.console import render
    from luosim.scenario.runner import run
    if fmt != "rich":
        result = run(scenario, faults=faults, policy=policy, dump_handover=dump)
        if fmt == "ktap":
            from luosim.report.ktap import run_ktap
            sys.stdout.write(run_ktap(result, title))
        else:
            sys.stdout.write(json.dumps(result.as_json(), indent=2, sort_keys=False) + "\n")
    else:
        from luosim.report.progress import PhaseProgress
        with PhaseProgress(_real(out)) as progress:
            result = run(scenario, faults=faults, policy=policy, on_phase=progress.phase,
                         dump_handover=dump)
        render(result, _real(out), title=title)
    if trace is not None:
        from luosim.report.trace import write_trace
        try:
            write_trace(result, trace, title)
        except OSError as exc:
            fail(f"--trace {trace}: {exc.strerror or exc}", 4)
    raise typer.Exit(0 if result.outcome == "ok" else 1)


PolicyOpt = Annotated[list[str] | None, typer.Option(
    "--policy", help="Override a profile policy, KEY=VALUE (e.g. pci.retrieve_failure=warn).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the machine-readable result.")]
FormatOpt = Annotated[str, typer.Option(
    "--format", help="rich | json | ktap (KTAP v1, as kselftest prints it).")]
TraceOpt = Annotated[Path | None, typer.Option(
    "--trace", help="Write a Perfetto trace (protobuf) of the run to this file.")]


def _format(fmt: str, as_json: bool) -> str:
    if fmt not in ("rich", "json", "ktap"):
        fail(f"--format {fmt!r}: expected rich, json or ktap")
    return "json" if as_json else fmt


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version
        try:
            v = version("luosim")
        except PackageNotFoundError:  # run from a source tree without install
            v = "unknown"
        sys.stdout.write(f"luosim {v}\n")
        raise typer.Exit(0)


@app.callback()
def _root(_version_flag: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """luosim: an executable, byte-exact model of Linux Live Update."""
    # a console sizes itself from COLUMNS/the terminal when made: one per invocation
    for console in (out, err):
        if isinstance(console, _LazyConsole):
            console.reset()


@app.command()
def demo(policy: PolicyOpt = None, as_json: JsonOpt = False, fmt: FormatOpt = "rich",
         trace: TraceOpt = None) -> None:
    """Run the built-in reference hypervisor host live update."""
    pol = parse_policy(policy)
    _run_and_report(_reference_scenario(), pol, (), _format(fmt, as_json), "reference host",
                    trace=trace)


@app.command("run")
def run_cmd(file: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
            policy: PolicyOpt = None, as_json: JsonOpt = False,
            fault: Annotated[list[str] | None, typer.Option(
                "--fault", help="Inject POINT[#N]=EFFECT (repeatable).")] = None,
            dump: Annotated[Path | None, typer.Option(
                "--dump-handover", help="Write each kexec's hand-over blobs (kho_data, "
                "kho/out/fdt, sub_fdts, LUO FLB data) under this folder.")] = None,
            fmt: FormatOpt = "rich", trace: TraceOpt = None) -> None:
    """Run a scenario: live progress, PCI trees, preserved objects, timeline, invariants."""
    from luosim.faults import Fault
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
    _run_and_report(scenario, pol, faults, _format(fmt, as_json), file.name, dump, trace)


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
def inspect(file: Annotated[Path, typer.Argument(
                help="A hand-over blob or debugfs file, or a --dump-handover folder.")],
            kind: Annotated[str, typer.Option(
                "--as", help="auto | kho-fdt | luo-fdt | luo-ser | pci-v6 | pci-v7 | pci-v9 | "
                             "memfd | kho-data | iommu-{flb,flb-v1,domain,domain-pran,device,"
                             "device-pran,device-generic,hw,hw-generic} | vfio-pci-v1 | "
                             "vfio-pci-v1-iommu | vfio-pci-v2 | kexec-metadata | "
                             "memblock")] = "auto",
            as_json: JsonOpt = False) -> None:
    """Decode a hand-over blob (FDT or packed struct), or a whole dump folder as a tree."""
    from luosim.inspect.decode import InspectError, decode_blob
    if file.is_dir():
        from luosim.inspect.tree import TreeError, count_findings, inspect_dir, render_tree
        try:
            node = inspect_dir(file)
        except (TreeError, OSError) as exc:
            fail(str(exc))
        if as_json:
            sys.stdout.write(json.dumps(node.as_json(), indent=2) + "\n")
        else:
            render_tree(node, _real(out))
            out.print(f"{count_findings(node)} findings", highlight=False)
        return
    from luosim.inputs import MAX_BLOB_BYTES, read_regular_file
    data = read_regular_file(file, MAX_BLOB_BYTES)
    try:
        report = decode_blob(data, kind)
    except InspectError as exc:
        from luosim.inspect.tree import find_in_dump, render_tree
        # no magic, but a --dump-handover file: its path says what it is
        found = find_in_dump(file) if exc.classification == "unknown" else None
        if found is not None:
            if as_json:
                sys.stdout.write(json.dumps(found.as_json(), indent=2) + "\n")
            else:
                render_tree(found, _real(out))
            return
        if exc.classification == "bad-argument":
            fail(f"--as: {exc}")
        from rich.markup import escape
        out.print(f"[bold red]{escape(str(file))}: {exc.classification}[/]: {escape(str(exc))}",
                  soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        from luosim.inspect.decode import render_report
        render_report(report, _real(out))
    if report.get("findings"):  # decodes, but no kernel wrote it: exit 1 like a decode error
        raise typer.Exit(1)


@app.command()
def matrix(file: Annotated[Path | None, typer.Argument(
               help="Scenario whose update is repeated for every profile pair.")] = None,
           policy: PolicyOpt = None, as_json: JsonOpt = False, fmt: FormatOpt = "rich",
           hops: Annotated[int, typer.Option(
               "--hops", min=1, max=4,
               help="Consecutive updates per path (2: every A -> B -> C).")] = 1,
           profile: Annotated[list[str] | None, typer.Option(
               "--profile", help="Restrict to these kernel profiles (repeatable; "
                                 "default: all).")] = None) -> None:
    """Run the update for every (old profile, new profile) pair and tabulate outcomes.

    Exits 1 when a pair ends unsafe or in a panic."""
    from luosim.scenario.matrix import run_paths, select_profiles
    pol = parse_policy(policy)
    fmt = _format(fmt, as_json)
    try:
        names = select_profiles(profile)
    except ValueError as e:
        fail(f"--profile: {e}")
    scenario = _reference_scenario() if file is None else _load(file)
    rows = run_paths(scenario, hops, pol, names)
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif fmt == "ktap":
        from luosim.report.ktap import matrix_ktap
        sys.stdout.write(matrix_ktap(rows))
    else:
        from rich.table import Table
        t = Table(title="Cross-version live update")
        cols = ("from", "via", "to", "outcome", "why") if hops > 1 else \
            ("from", "to", "outcome", "why")
        for col in cols:
            t.add_column(col)
        for r in rows:
            t.add_row(*(r[c] for c in cols))
        out.print(t)
    raise typer.Exit(1 if any(r["outcome"] in ("unsafe", "panic") for r in rows) else 0)


@app.command("report")
def report_cmd(result: Annotated[Path, typer.Argument(
                   help="JSON printed by run/demo/explore/matrix --json.")],
               output: Annotated[Path, typer.Option(
                   "-o", "--output", help="The HTML page to write.")] = Path("report.html")
               ) -> None:
    """Write a static HTML page (no network access) of a run, explore or matrix result."""
    from luosim.report.html import ReportError, render_html
    try:
        data = json.loads(result.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"{result}: cannot read: {exc.strerror or exc}")
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"{result}: not JSON: {exc}")
    try:
        page = render_html(data, result.stem)
    except ReportError as exc:
        fail(f"{result}: {exc}")
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"-o {output}: {exc.strerror or exc}", 4)
    err.print(f"luosim: wrote {output} ({len(page)} bytes)", markup=False)


def _mount_explorer() -> None:
    try:
        from luosim.explore.cli import explore_cmd, replay_cmd
    except ImportError:  # pragma: no cover - the explorer is part of the package
        return
    cmds: list[tuple[str, Callable[..., Any]]] = [("explore", explore_cmd), ("replay", replay_cmd)]
    for name, fn in cmds:
        app.command(name)(fn)


_mount_explorer()
_register_profiles(app)


def main() -> None:
    """Entry point: exit codes per luosim.exitcodes (0 ok, 1 model, 2 input, 3 bug, 4 host)."""
    from luosim.exitcodes import guarded
    sys.exit(guarded(app))


if __name__ == "__main__":  # python -m luosim.cli
    main()
