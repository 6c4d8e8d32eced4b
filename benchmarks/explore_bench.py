"""Reference run and explorer throughput (issue 12 items 2-4).

    python benchmarks/explore_bench.py [SCENARIO] [--jobs N] [--no-depth2] [--fresh]
                                       [--repeat N]

Prints, for SCENARIO (default examples/reference-host.yaml):

- one run in process (best of ``--repeat``) and from the CLI
  (``luosim run FILE --json`` in a new interpreter), and ``luosim --help``;
- the fork floor: ``os.fork()`` + the child's ``_exit`` + ``waitpid`` of this
  process after a run, the least any forked plan costs;
- the explorer at depth 1 with the fork executor on one core and on
  ``--jobs`` cores, with ``--fresh`` also the fresh-run executor on one core;
- the explorer at depth 2 (fork executor, ``--jobs`` cores) unless
  ``--no-depth2``.

"Runs" counts every run the exploration executed: the fault-free run, every
plan, and the re-run of each group's shortest plan for its trace.  Per-core
figures divide by wall time x cores used, and also by CPU seconds (this
process and every child it reaped, so the fork trees are included): on a
machine shared with other work the CPU figure is the one to trust.  The load
average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "examples" / "reference-host.yaml"


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Row:
    def __init__(self, what: str, jobs: int, runs: int, wall: float, cpu: float) -> None:
        self.what, self.jobs, self.runs, self.wall, self.cpu = what, jobs, runs, wall, cpu

    def cells(self) -> list[str]:
        per_core = self.runs / self.wall / self.jobs
        per_cpu = self.runs / self.cpu if self.cpu > 0 else float("nan")
        return [self.what, str(self.jobs), str(self.runs), f"{self.wall:.2f}", f"{self.cpu:.2f}",
                f"{self.runs / self.wall:.1f}", f"{per_core:.1f}", f"{per_cpu:.1f}"]


def timed_explore(scenario: Any, depth: int, executor: Any, backend: Any) -> tuple[int, int,
                                                                                   float, float]:
    from luosim.explore.campaign import explore
    executed = [0]

    def progress(done: int, total: int) -> None:
        executed[0] = total

    c0, t0 = cpu_seconds(), time.perf_counter()
    ex = explore(scenario, depth, "all", None, executor, backend.runner, progress,
                 scenario_factory=backend.scenario_factory)
    return executed[0], len(ex.groups), time.perf_counter() - t0, cpu_seconds() - c0


def fork_floor(n: int = 100) -> dict[str, float]:
    """What one forked plan costs before it does any work: ``os.fork()``, the
    child's ``os._exit`` and the parent's ``waitpid``, from this process as it
    is after a run (its heap is what the explorer forks); mean of ``n``."""
    import gc
    gc.freeze()
    try:
        c0, t0 = cpu_seconds(), time.perf_counter()
        for _ in range(n):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        return {"wall": (time.perf_counter() - t0) / n, "cpu": (cpu_seconds() - c0) / n}
    finally:
        gc.unfreeze()


def cli_seconds(args: list[str], repeat: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "luosim.cli", *args], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    from luosim.explore.cli import BadInput, get_backend, load_scenario_arg
    from luosim.explore.executors import LocalExecutor, RunCrash, cpu_count
    from luosim.explore.forking import ForkExecutor
    from luosim.scenario.runner import run

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("scenario", nargs="?", default=str(DEFAULT))
    ap.add_argument("--jobs", type=int, default=cpu_count(), help="cores for the pooled runs")
    ap.add_argument("--no-depth2", action="store_true", help="skip the depth-2 exploration")
    ap.add_argument("--fresh", action="store_true",
                    help="also time depth 1 with the fresh-run executor (--no-fork)")
    ap.add_argument("--repeat", type=int, default=5, help="best of N for the single runs")
    args = ap.parse_args(argv)
    backend = get_backend()
    try:
        scenario = load_scenario_arg(backend, args.scenario)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    jobs = max(1, args.jobs)
    name = Path(args.scenario).name
    print(f"luosim explore benchmark: {name}; {os.cpu_count()} CPUs, load average {load()}")

    best = float("inf")
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        run(scenario)
        best = min(best, time.perf_counter() - t0)
    print(f"one run in process (best of {args.repeat}):      {best * 1e3:8.1f} ms")
    print(f"luosim run {name} --json (CLI):  "
          f"{cli_seconds(['run', args.scenario, '--json'], 3) * 1e3:8.1f} ms (best of 3)")
    print(f"luosim --help:                          "
          f"{cli_seconds(['--help'], 5) * 1e3:8.1f} ms (best of 5)")

    floor = fork_floor()
    print(f"fork + exit of this process (mean of 100): {floor['wall'] * 1e3:7.2f} ms wall, "
          f"{floor['cpu'] * 1e3:.2f} ms CPU: caps a forked plan at "
          f"{1 / floor['cpu']:.0f} runs per CPU-second before it runs anything")

    rows: list[Row] = []
    try:
        runs, groups, wall, cpu = timed_explore(scenario, 1, ForkExecutor(1), backend)
        rows.append(Row(f"depth 1 fork ({groups} groups)", 1, runs, wall, cpu))
        if jobs > 1:
            runs, groups, wall, cpu = timed_explore(scenario, 1, ForkExecutor(jobs), backend)
            rows.append(Row(f"depth 1 fork ({groups} groups)", jobs, runs, wall, cpu))
        if args.fresh:
            with LocalExecutor(1) as inline:
                runs, groups, wall, cpu = timed_explore(scenario, 1, inline, backend)
            rows.append(Row(f"depth 1 --no-fork ({groups} groups)", 1, runs, wall, cpu))
        if not args.no_depth2:
            runs, groups, wall, cpu = timed_explore(scenario, 2, ForkExecutor(jobs), backend)
            rows.append(Row(f"depth 2 fork ({groups} groups)", jobs, runs, wall, cpu))
    except RunCrash as exc:
        print(f"error: model crash: {exc}", file=sys.stderr)
        return 1
    head = ["exploration", "cores", "runs", "wall s", "cpu s", "runs/s", "runs/s/core",
            "runs/cpu-s"]
    table = [head, *(r.cells() for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))
    print(f"load average after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
