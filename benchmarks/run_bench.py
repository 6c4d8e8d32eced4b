"""Run-cost benchmarks of issue #12 (guest RAM as extents).

    PYTHONPATH=src python benchmarks/run_bench.py [--repeat N] [--no-hyperscale]

Prints: the reference host run in process (best and median of N warm runs)
and from the CLI (wall of ``luosim run``, imports included); the
``kho.handover#1=corrupt:*`` plans in process; the README's first API
snippet (a 1 GiB memfd of 4 KiB folios through a kexec) in a fresh process;
the hyperscale host (examples/hyperscale-host.yaml) wall and peak RSS in a
fresh process.  Targets: reference <= 30 ms in process, hyperscale < 1 s and
< 300 MiB.  Explorer throughput is benchmarks/explore_bench.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

_CHILD = """
import resource, sys, time
t0 = time.perf_counter()
c0 = time.process_time()
{body}
wall = time.perf_counter() - t0
cpu = time.process_time() - c0
print(f"{{cpu:.4f}} {{wall:.4f}} {{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}}")
"""

_RUN = """
from luosim.scenario.runner import run
from luosim.scenario.schema import load_scenario
sc = load_scenario({path!r})
t0 = time.perf_counter()
res = run(sc)
assert res.outcome == "ok", res.outcome
"""

_README = """
from luosim import Machine
m = Machine.from_topology({})
k = m.boot("v7", cmdline="")
s = k.open_liveupdate().create_session("vm0")
f = k.memfd_create("ram", size=1 << 30)
s.preserve_fd(f, token=1)
k2 = k.kexec("v7")
f2 = k2.open_liveupdate().retrieve_session("vm0").retrieve_fd(1)
"""


def child(body: str) -> tuple[float, float, float]:
    """(CPU s, wall s of ``body``, imports included; peak RSS MiB) in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", _CHILD.format(body=body)], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[-3]), float(out[-2]), float(out[-1])


def run_child(path: Path) -> tuple[float, float, float]:
    """CPU and wall of the run itself (imports and parsing excluded), peak RSS."""
    start = "t0 = time.perf_counter(); c0 = time.process_time()"
    body = (_RUN.format(path=str(path)).replace("t0 = time.perf_counter()", start)
            + "\nwall0 = time.perf_counter() - t0\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    code = _CHILD.format(body=body).replace("wall = time.perf_counter() - t0", "wall = wall0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[-3]), float(out[-2]), float(out[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--no-hyperscale", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from luosim.faults import Fault
    from luosim.scenario.runner import run
    from luosim.scenario.schema import load_scenario

    ref = load_scenario(EXAMPLES / "reference-host.yaml")
    run(ref)  # warm-up
    times, cpu = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        run(ref)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(f"reference run, in process: best {min(times) * 1000:.1f} ms, "
          f"median {statistics.median(times) * 1000:.1f} ms, best CPU "
          f"{min(cpu) * 1000:.1f} ms ({args.repeat} runs)")

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cli = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "luosim"), "run",
                        str(EXAMPLES / "reference-host.yaml")], env=env, check=True,
                       capture_output=True)
        cli.append(time.perf_counter() - t0)
    print(f"reference run, from the CLI: best {min(cli) * 1000:.0f} ms (3 runs, imports included)")

    for how in ("root-compatible", "mem-map", "radix-node"):
        fault = (Fault.parse(f"kho.handover#1=corrupt:{how}"),)
        t0 = time.perf_counter()
        res = run(ref, faults=fault)
        print(f"kho.handover#1=corrupt:{how}: {(time.perf_counter() - t0) * 1000:.1f} ms "
              f"({res.outcome})")

    cpu_s, wall, rss = child(_README)
    print(f"README snippet (1 GiB memfd, 4 KiB folios, kexec): {wall * 1000:.0f} ms "
          f"(CPU {cpu_s * 1000:.0f} ms), peak RSS {rss:.0f} MiB (fresh process, imports "
          "included)")

    if not args.no_hyperscale:
        cpu_s, wall, rss = run_child(EXAMPLES / "hyperscale-host.yaml")
        print(f"hyperscale host (4 TiB, 256 VMs, 64 endpoints): {wall:.2f} s "
              f"(CPU {cpu_s:.2f} s), peak RSS {rss:.0f} MiB (fresh process)")
        import resource
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([str(Path(sys.executable).parent / "luosim"), "run",
                            str(EXAMPLES / "hyperscale-host.yaml"), "--json"], env=env,
                           check=True, capture_output=True)
            best = min(best, time.perf_counter() - t0)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"hyperscale host from the CLI (luosim run --json, interpreter start, imports, "
              f"YAML, run and JSON output): best {best:.2f} s (3 runs), peak RSS of any "
              f"child so far {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
