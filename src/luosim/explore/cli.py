"""``luosim explore`` and ``luosim replay``.

Mount on the root typer app with either::

    root.command("explore")(explore_cmd)
    root.command("replay")(replay_cmd)
    # or: root.registered_commands.extend(app.registered_commands)
    # or: root.add_typer(app, name="fault")   # -> luosim fault explore ...

Exit codes (the table of luosim.exitcodes): 0 exploration completed
(unsafe groups are reported, not an error, unless ``--fail-on-unsafe``:
then 1); 2 bad input (one-line error on stderr: a bad scenario, trace,
policy or option, found before any run); 3 the model crashed or was not
deterministic (a bug in luosim; a replay's traceback is saved to a file);
4 a host error (the traces folder cannot be written).  ``replay`` exits 0
when the run reproduces the trace's outcome, signature and events, else 1.

The scenario backend (loader, ``scenario_from_dict``, runner, policy check)
is ``luosim.scenario`` unless the module-level hook :data:`BACKEND` is set,
or the environment variable ``LUOSIM_EXPLORE_BACKEND`` names a module that
provides ``run``, ``load_scenario``, ``scenario_from_dict`` and optionally
``check_policy`` and ``ScenarioError`` (the tests use ``tests.explore.toy``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from luosim.errors import HostError
from luosim.exitcodes import bug_message
from luosim.inputs import InputError, host_path_problem

if TYPE_CHECKING:  # the heavy modules load inside the commands: `luosim --help` stays fast
    from rich.console import Console
    from rich.table import Table

    from luosim.explore.campaign import Comparison, Exploration
    from luosim.explore.classify import Group
    from luosim.explore.executors import Executor, Progress, Runner, ScenarioFactory

BACKEND_ENV = "LUOSIM_EXPLORE_BACKEND"
DEFAULT_TRACE_DIR = Path("luosim-traces")
EFFECT_FILTERS = ("errno", "corrupt", "all")  # luosim.explore.plans.EFFECT_FILTERS
OUTCOME_STYLE = {"ok": "green", "refused": "yellow", "panic": "magenta", "unsafe": "bold red"}


@dataclass(frozen=True)
class Backend:
    """Where scenarios come from and how they are run."""

    runner: Runner
    scenario_factory: ScenarioFactory
    load_scenario: Callable[[str], Any]
    check_policy: Callable[[str, str], None] | None = None
    scenario_errors: tuple[type[BaseException], ...] = ()


BACKEND: Backend | None = None
"""Module-level hook: when set, used instead of ``LUOSIM_EXPLORE_BACKEND`` / luosim.scenario."""


def _real_load(path: str) -> Any:
    from luosim.explore.executors import declare_fault_points
    declare_fault_points()  # the schema validates `faults:` against the registry
    return importlib.import_module("luosim.scenario.schema").load_scenario(path)


def _real_check_policy(key: str, value: str) -> None:
    importlib.import_module("luosim.kernel.profiles").check_policy(key, value)


def get_backend() -> Backend:
    if BACKEND is not None:
        return BACKEND
    name = os.environ.get(BACKEND_ENV, "").strip()
    if name:
        mod = importlib.import_module(name)
        err = getattr(mod, "ScenarioError", None)
        return Backend(mod.run, mod.scenario_from_dict, mod.load_scenario,
                       getattr(mod, "check_policy", None),
                       (err,) if isinstance(err, type) else ())
    from luosim.explore.executors import default_runner, default_scenario_factory
    errors: tuple[type[BaseException], ...] = ()
    try:
        errors = (importlib.import_module("luosim.scenario.schema").ScenarioError,)
    except (ImportError, AttributeError):
        pass
    return Backend(default_runner, default_scenario_factory, _real_load, _real_check_policy,
                   errors)


class BadInput(ValueError):
    """Bad command-line input: reported on one line, exit code 2."""


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(code)


def parse_policy(texts: Sequence[str], check: Callable[[str, str], None] | None = None,
                 base: dict[str, str] | None = None) -> dict[str, str]:
    """``["a=b,c=d", "e=f"]`` -> ``{"a": "b", "c": "d", "e": "f"}`` (BadInput on errors)."""
    out = dict(base or {})
    for text in texts:
        for item in str(text).split(","):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise BadInput(f"bad policy {text!r}: expected KEY=VALUE[,KEY=VALUE]")
            if check is not None:
                try:
                    check(key, value)
                except ValueError as exc:
                    raise BadInput(str(exc)) from None
            out[key] = value
    return out


def parse_depth(text: str) -> int:
    if text.strip() not in ("1", "2"):
        raise BadInput(f"--depth must be 1 or 2, got {text!r}")
    return int(text)


def parse_jobs(text: str, warn: Callable[[str], None] | None = None) -> int:
    """``--jobs``: 1..cores or 'auto' (= cores); more is capped to the cores, with a note.

    Workers are processes running CPU-bound runs: more than the cores only
    multiplies memory.  0 is refused rather than silently meaning 'auto'.
    """
    from luosim.explore.executors import cpu_count
    t = text.strip().lower()
    if t in ("auto", "all"):
        return cpu_count()
    if not t.isdigit() or int(t) < 1:
        raise BadInput(f"--jobs must be a positive number or 'auto', got {text!r}")
    cores = cpu_count()
    if int(t) > cores:
        if warn is not None:
            warn(f"note: --jobs {int(t)} capped to {cores} (the CPUs this process may use)")
        return cores
    return int(t)


def load_scenario_arg(backend: Backend, file: str | None) -> Any:
    if file is None:
        raise BadInput("missing argument FILE (a scenario file)")
    path = Path(file)
    if not path.exists():
        raise BadInput(f"{file}: no such file")
    if path.is_dir():
        raise BadInput(f"{file}: is a directory, expected a scenario file")
    errors: tuple[type[BaseException], ...] = (*backend.scenario_errors, ValueError, OSError)
    try:
        return backend.load_scenario(file)
    except errors as exc:
        problems = getattr(exc, "problems", None)
        if isinstance(problems, list) and problems:
            source = getattr(exc, "source", file)
            raise BadInput(f"{source}: {'; '.join(map(str, problems))}") from None
        raise BadInput(_one_line(str(exc)) or f"{file}: cannot load") from None


def _executor(kind: str | None, scheduler: str | None, jobs: int,
              jobs_given: bool, fork: bool = True) -> Executor:
    from luosim.explore.executors import DaskExecutor, LocalExecutor
    from luosim.explore.forking import ForkExecutor, fork_available
    kind = kind or ("dask" if scheduler else "local")
    if kind not in ("local", "dask"):
        raise BadInput(f"--executor must be local or dask, got {kind!r}")
    fork = fork and fork_available()
    if kind == "local":
        if scheduler:
            raise BadInput("--scheduler needs --executor dask")
        return ForkExecutor(jobs) if fork else LocalExecutor(jobs)
    try:
        return DaskExecutor(scheduler, n_workers=jobs if jobs_given else None, fork=fork)
    except (OSError, TimeoutError, ValueError) as exc:
        raise BadInput(f"cannot use Dask scheduler {scheduler or '(local cluster)'}: "
                       f"{_one_line(str(exc))}") from None


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress | None]:
    from rich.console import Console
    console = Console(stderr=True, emoji=False)
    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    with RichProgress(TextColumn("[bold]exploring"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("runs"), TimeElapsedColumn(), TextColumn("ETA"),
                      TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("runs", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:limit] or "x"


def write_traces(exploration: Exploration, directory: Path, prefix: str = "") -> dict[str, Path]:
    """Save every unsafe group's shortest-plan trace; signature -> path."""
    from luosim.explore.trace import save_trace
    paths: dict[str, Path] = {}
    for i, g in enumerate(exploration.unsafe_groups, 1):
        if g.trace is None:
            continue
        name = f"{prefix}{_slug(exploration.scenario_name)}-{i:02d}-{_slug(g.signature)}.json"
        paths[g.signature] = save_trace(g.trace, directory / name)
    return paths


def _styled(outcome: str) -> str:
    return f"[{OUTCOME_STYLE.get(outcome, 'white')}]{outcome}[/]"


def _policy_text(policy: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(policy.items())) or "scenario defaults"


def _summary_table(title: str, summary: dict[str, int]) -> Table:
    from rich.table import Table
    table = Table(title=title, title_justify="left")
    table.add_column("runs", justify="right")
    for outcome in ("ok", "refused", "panic", "unsafe"):
        table.add_column(f"{_styled(outcome)} groups", justify="right")
    table.add_row(*(str(summary[k]) for k in ("runs", "ok", "refused", "panic", "unsafe")))
    return table


def _groups_table(groups: list[Group]) -> Table:
    from rich.markup import escape
    from rich.table import Table

    from luosim.explore.plans import format_plan
    table = Table(title="Outcome groups", title_justify="left")
    table.add_column("outcome")
    table.add_column("runs", justify="right")
    table.add_column("signature", overflow="fold")
    table.add_column("shortest fault plan", overflow="fold")
    for g in groups:
        table.add_row(_styled(g.outcome), str(g.runs), escape(g.signature),
                      escape(format_plan(g.shortest_plan)))
    return table


def _print_unsafe(console: Console, exploration: Exploration, paths: dict[str, Path],
                  label: str = "") -> None:
    from rich.markup import escape

    from luosim.explore.plans import format_plan
    unsafe = exploration.unsafe_groups
    if not unsafe:
        console.print(f"[green]no unsafe outcome{label}[/]")
        return
    console.print(f"[bold red]{len(unsafe)} unsafe group(s){label}[/]")
    for g in unsafe:
        console.print(f"  [bold red]✗[/] {escape(g.signature)}  ({g.runs} run(s))")
        console.print(f"    plan:  {escape(format_plan(g.shortest_plan))}")
        path = paths.get(g.signature)
        if path is not None:
            console.print(f"    trace: {escape(str(path))}   (luosim replay {escape(str(path))})")


def _show_exploration(exploration: Exploration, paths: dict[str, Path]) -> None:
    from rich.console import Console
    from rich.markup import escape
    console = Console(highlight=False, emoji=False)
    console.print(f"[bold]luosim explore[/] {escape(exploration.scenario_name)}: "
                  f"depth {exploration.depth}, effects {exploration.effects}, "
                  f"policy {escape(_policy_text(exploration.policy))}")
    console.print(_summary_table("Summary", exploration.summary))
    console.print(_groups_table(exploration.groups))
    _print_unsafe(console, exploration, paths)


def _show_comparison(cmp: Comparison, paths_a: dict[str, Path],
                     paths_b: dict[str, Path]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from luosim.explore.plans import format_plan
    console = Console(highlight=False, emoji=False)
    console.print(f"[bold]luosim explore --compare[/] {escape(cmp.a.scenario_name)}: "
                  f"depth {cmp.a.depth}, effects {cmp.a.effects}")
    console.print(f"  A: {escape(_policy_text(cmp.policy_a))}")
    console.print(f"  B: {escape(_policy_text(cmp.policy_b))}")
    console.print(_summary_table("Summary under A", cmp.a.summary))
    console.print(_summary_table("Summary under B", cmp.b.summary))
    if not cmp.rows:
        console.print(f"no fault plan changes class between A and B ({cmp.a.runs} plans)")
    else:
        table = Table(title=f"{len(cmp.rows)} of {cmp.a.runs} fault plans change class",
                      title_justify="left")
        table.add_column("fault plan", overflow="fold")
        table.add_column("class under A")
        table.add_column("class under B")
        for row in cmp.rows:
            table.add_row(escape(format_plan(row.plan)), _styled(row.outcome_a),
                          _styled(row.outcome_b))
        console.print(table)
    _print_unsafe(console, cmp.a, paths_a, " under A")
    _print_unsafe(console, cmp.b, paths_b, " under B")


def explore_cmd(
    file: Annotated[str | None, typer.Argument(
        help="Scenario file (YAML).", show_default=False)] = None,
    depth: Annotated[str, typer.Option(help="Faults per run: 1 or 2.")] = "1",
    effects: Annotated[str, typer.Option(
        help="Which effects to inject: errno, corrupt or all.")] = "all",
    policy: Annotated[list[str] | None, typer.Option(
        help="Policy override KEY=VALUE[,KEY=VALUE] (repeatable).",
        show_default=False)] = None,
    compare_policies: Annotated[tuple[str, str] | None, typer.Option(
        "--compare", metavar="POLICY_A POLICY_B",
        help="Compare two policies (each KEY=VALUE[,KEY=VALUE]): list the plans "
             "whose outcome class differs.", show_default=False)] = None,
    jobs: Annotated[str, typer.Option(
        "--jobs", "-j", help="Cores to use (local), or 'auto' for all of them.")] = "1",
    executor: Annotated[str | None, typer.Option(
        help="local or dask (default: local; dask when --scheduler is given).",
        show_default=False)] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="Dask scheduler address, e.g. tcp://10.0.0.1:8786 (default: a local cluster).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    traces: Annotated[Path, typer.Option(
        help="Directory for the traces of unsafe groups.")] = DEFAULT_TRACE_DIR,
    fail_on_unsafe: Annotated[bool, typer.Option(
        "--fail-on-unsafe", help="Exit 1 when an unsafe group was found.")] = False,
    fmt: Annotated[str, typer.Option(
        "--format", help="rich | json | ktap (KTAP v1: one test per group).")] = "rich",
    fork: Annotated[bool, typer.Option(
        "--fork/--no-fork", help="Run each common prefix once and fork at the injection "
        "points (POSIX); --no-fork runs every plan from scratch.")] = True,
) -> None:
    """Explore the fault space of a scenario and classify every outcome."""
    from luosim.explore.campaign import Comparison, ExploreError, compare, explore
    from luosim.explore.executors import LocalExecutor, RunCrash
    try:
        if fmt not in ("rich", "json", "ktap"):
            raise BadInput(f"--format must be rich, json or ktap, got {fmt!r}")
        as_json = as_json or fmt == "json"
        backend = get_backend()
        n_depth = parse_depth(depth)
        if effects not in EFFECT_FILTERS:
            raise BadInput(f"--effects must be one of {', '.join(EFFECT_FILTERS)}, "
                           f"got {effects!r}")
        n_jobs = parse_jobs(jobs, lambda m: typer.echo(m, err=True))
        if (executor or "local") not in ("local", "dask"):
            raise BadInput(f"--executor must be local or dask, got {executor!r}")
        base = parse_policy(policy or [], backend.check_policy)
        pols = None
        if compare_policies is not None and any(compare_policies):
            pols = tuple(parse_policy([p], backend.check_policy, base)
                         for p in compare_policies)
        scenario = load_scenario_arg(backend, file)
        problem = host_path_problem(traces)
        if problem:  # found now, not after the whole exploration
            raise BadInput(f"--traces {traces}: {problem}")
        ex = _executor(executor, scheduler, n_jobs, jobs != "1", fork)
    except BadInput as exc:
        _fail(str(exc))
    try:
        if isinstance(ex, LocalExecutor):
            ex.start()  # fork the workers before the progress bar starts its thread
        with _progress_bar(not as_json and fmt != "ktap") as progress:
            if pols is not None:
                result: Exploration | Comparison = compare(
                    scenario, pols[0], pols[1], n_depth, effects, ex, backend.runner,
                    progress, scenario_factory=backend.scenario_factory)
            else:
                result = explore(scenario, n_depth, effects, base, ex, backend.runner,
                                 progress, scenario_factory=backend.scenario_factory)
    except RunCrash as exc:
        if exc.kind.endswith(("ScenarioError", "InputError", "TraceError")):
            _fail(str(exc))
        if exc.kind.endswith("HostError"):
            _fail(str(exc), 4)
        _fail(f"model crash: {exc}", 3)
    except ExploreError as exc:
        _fail(str(exc), 3)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    finally:
        ex.close()
    try:
        if isinstance(result, Comparison):
            paths_a = write_traces(result.a, traces, "a-")
            paths_b = write_traces(result.b, traces, "b-")
            unsafe = bool(result.a.unsafe_groups or result.b.unsafe_groups)
        else:
            paths_a = write_traces(result, traces)
            paths_b = {}
            unsafe = bool(result.unsafe_groups)
    except OSError as exc:
        _fail(f"--traces {traces}: {exc.strerror or exc}", 4)
    if as_json or fmt == "ktap":
        data = result.as_json()
        for g in data.get("groups", []):  # where the unsafe groups' traces went
            if g["signature"] in paths_a:
                g["trace_file"] = str(paths_a[g["signature"]])
        if fmt == "ktap":
            from luosim.report.ktap import explore_ktap
            typer.echo(explore_ktap(data), nl=False)
        else:
            typer.echo(json.dumps(data, indent=2))
    elif isinstance(result, Comparison):
        _show_comparison(result, paths_a, paths_b)
    else:
        _show_exploration(result, paths_a)
    if fail_on_unsafe and unsafe:
        raise typer.Exit(1)


def replay_cmd(
    trace: Annotated[str | None, typer.Argument(
        help="A trace file written by luosim explore.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    perfetto: Annotated[Path | None, typer.Option(
        "--trace", help="Also write the replayed run as a Perfetto trace (protobuf).",
        show_default=False)] = None,
) -> None:
    """Re-run a counterexample trace; exit 0 if it reproduces, 1 if not."""
    from luosim.explore.trace import TraceError, load_trace, replay
    if trace is None:
        _fail("missing argument TRACE (a trace file)")
    backend = get_backend()
    bad_scenario: tuple[type[BaseException], ...] = (*backend.scenario_errors, InputError)
    try:
        loaded = load_trace(trace)
        for key, value in loaded.policy.items():
            if backend.check_policy is not None:
                backend.check_policy(key, value)
        scenario = backend.scenario_factory(loaded.scenario)
    except TraceError as exc:
        _fail(str(exc))
    except bad_scenario as exc:
        problems = getattr(exc, "problems", None) or [str(exc)]
        _fail(f"{trace}: scenario: {'; '.join(map(str, problems))}")
    except ValueError as exc:  # check_policy
        _fail(f"{trace}: policy: {exc}")
    try:
        result, same, diff = replay(loaded, backend.runner,
                                    scenario_factory=lambda _data: scenario)
    except HostError as exc:
        _fail(str(exc), 4)
    except Exception as exc:
        _fail(f"model crash replaying {trace}: {bug_message(exc)}", 3)
    if perfetto is not None:
        from luosim.report.trace import write_trace
        try:
            write_trace(result, perfetto, f"replay {Path(trace).name}")
        except OSError as exc:
            _fail(f"--trace {perfetto}: {exc.strerror or exc}", 4)
    if as_json:
        typer.echo(json.dumps({
            "trace": trace, "faults": loaded.labels, "same": same, "diff": diff,
            "expected": {"outcome": loaded.outcome, "signature": loaded.signature,
                         "panic": loaded.panic, "events": len(loaded.events)},
            "replayed": {"outcome": result.outcome, "signature": result.signature(),
                         "panic": result.panic, "events": len(result.events)},
        }, indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape

        from luosim.explore.plans import format_plan
        console = Console(highlight=False, emoji=False)
        console.print(f"[bold]luosim replay[/] {escape(trace)}: "
                      f"{escape(format_plan(loaded.faults))}")
        if same:
            console.print(f"[green]reproduced[/]: {_styled(result.outcome)} "
                          f"{escape(result.signature())}, {len(result.events)} events identical")
        else:
            console.print(f"[bold red]NOT reproduced[/]: trace {_styled(loaded.outcome)}, "
                          f"replay {_styled(result.outcome)}")
            console.print(escape(diff))
    if not same:
        raise typer.Exit(1)


app = typer.Typer(help="Fault-space exploration and counterexample replay.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.command("explore")(explore_cmd)
app.command("replay")(replay_cmd)
