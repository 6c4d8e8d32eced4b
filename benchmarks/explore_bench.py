"""Explorer throughput on the reference scenario.

    python benchmarks/explore_bench.py [SCENARIO] [--jobs N] [--no-depth2]

Reports runs/s and runs/s per core at depth 1 with one job (inline) and with
all cores (a process pool; worker start-up is timed separately), and the
wall time of a depth-2 exploration on all cores.  "Runs" counts every run
executed, including the re-run of each group's shortest plan for its trace.
The scenario backend is luosim.scenario unless LUOSIM_EXPLORE_BACKEND names
another module (see luosim.explore.cli).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from luosim.explore.campaign import Exploration, explore
from luosim.explore.cli import BadInput, get_backend, load_scenario_arg
from luosim.explore.executors import LocalExecutor, RunCrash, cpu_count

DEFAULT = Path(__file__).resolve().parent.parent / "examples" / "reference-host.yaml"


def timed(scenario: Any, depth: int, executor: LocalExecutor) -> tuple[Exploration, int, float]:
    backend = get_backend()
    executed = [0]

    def progress(done: int, total: int) -> None:
        executed[0] = total

    t0 = time.perf_counter()
    ex = explore(scenario, depth, "all", None, executor, backend.runner, progress,
                 scenario_factory=backend.scenario_factory)
    return ex, executed[0], time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", default=str(DEFAULT))
    ap.add_argument("--jobs", type=int, default=cpu_count(), help="cores for the pooled runs")
    ap.add_argument("--no-depth2", action="store_true", help="skip the depth-2 exploration")
    args = ap.parse_args(argv)
    console = Console(highlight=False)
    try:
        scenario = load_scenario_arg(get_backend(), args.scenario)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    jobs = max(1, args.jobs)
    table = Table(title=f"luosim explore benchmark: {Path(args.scenario).name}, "
                        f"{jobs} core(s) available for the pool", title_justify="left")
    for col in ("exploration", "jobs", "runs", "groups", "wall s", "runs/s", "runs/s/core"):
        table.add_column(col, justify="left" if col == "exploration" else "right")
    try:
        with LocalExecutor(1) as inline:
            ex, runs, wall = timed(scenario, 1, inline)
        table.add_row("depth 1", "1", str(runs), str(len(ex.groups)), f"{wall:.2f}",
                      f"{runs / wall:.1f}", f"{runs / wall:.1f}")
        t0 = time.perf_counter()
        with LocalExecutor(jobs).start() as pool:
            startup = time.perf_counter() - t0
            ex, runs, wall = timed(scenario, 1, pool)
            table.add_row("depth 1", str(jobs), str(runs), str(len(ex.groups)), f"{wall:.2f}",
                          f"{runs / wall:.1f}", f"{runs / wall / jobs:.1f}")
            if not args.no_depth2:
                ex, runs, wall = timed(scenario, 2, pool)
                table.add_row("depth 2", str(jobs), str(runs), str(len(ex.groups)),
                              f"{wall:.2f}", f"{runs / wall:.1f}", f"{runs / wall / jobs:.1f}")
    except RunCrash as exc:
        print(f"error: model crash: {exc}", file=sys.stderr)
        return 1
    console.print(table)
    console.print(f"pool start-up ({jobs} workers): {startup:.2f} s (not in the wall times)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
