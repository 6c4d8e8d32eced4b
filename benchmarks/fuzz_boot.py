"""Fuzz the next kernel's boot path with mutated hand-overs.

    python benchmarks/fuzz_boot.py [SCENARIO] [--mutants N] [--jobs J] [--seed S]
                                   [--timeout SECONDS] [--json]

Runs SCENARIO (default examples/small-host.yaml) once up to the kexec jump:
the old kernel has serialized everything, memory not preserved is scrubbed
and ``kho_data`` is set.  There, once, the hand-over is walked
(luosim.faults.mutator.handover_targets: kho_data, the KHO root FDT and its
radix-tree nodes, the LUO FDT, session/file/FLB records, pci_ser and its
block chain, pci_dev_ser slots, iommu_flb_ser, memfd records).  Then per
mutant the process forks (copy-on-write: the snapshot costs nothing), the
child applies one edit through the ABI codecs (luosim.faults.mutator) and
lets the run go on: the next kernel boots, the agent retrieves and finishes,
the checker runs after every step.  The child reports the outcome class
(ok / refused / panic / unsafe), or a crash of luosim (any exception out of
the run, or no answer within --timeout), and exits.

SIGUSR1 stops the campaign early: the running mutants finish and the counts
so far are printed.

Round 0 tries boundary values of every field (0, 1, all ones, +-1, a flipped
bit, addresses beyond memory or unaligned, ...); later rounds add random
values, random u64 words of raw objects and random FDT bytes, until N
mutants.  Prints counts per class and per layer; exits 1 if luosim crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import sys
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from luosim.faults.mutator import Mutant, field_mutants, handover_targets
from luosim.scenario.runner import Run
from luosim.scenario.schema import load_scenario

DEFAULT = Path(__file__).resolve().parent.parent / "examples" / "small-host.yaml"
CLASSES = ("ok", "refused", "panic", "unsafe", "crash")


def mutant_stream(machine: Any, seed: int) -> Iterator[Mutant]:
    """Round 0: every target's boundary edits; then random rounds, forever."""
    targets = handover_targets(machine.memory, machine.kho_data)
    kd = machine.kho_data or b""
    rng = random.Random(seed)
    first = [m for t in targets for m in field_mutants(machine.memory, t, kd, rng)]
    rng.shuffle(first)  # any prefix covers every layer
    yield from first
    rnd = 1
    while True:
        rng = random.Random(seed * 1_000_003 + rnd)
        for t in targets:
            yield from field_mutants(machine.memory, t, kd, rng, per_field=2)
        rnd += 1


class Campaign:
    def __init__(self, n: int, jobs: int, seed: int, timeout: float) -> None:
        self.n, self.jobs, self.seed, self.timeout = n, jobs, seed, timeout
        self.by_class: Counter[str] = Counter()
        self.by_layer: dict[str, Counter[str]] = defaultdict(Counter)
        self.crashes: list[str] = []
        self.targets = 0
        self.started = 0.0
        self.elapsed = 0.0
        self.child_fd: int | None = None  # set in a child: where to report
        self.done = False
        self.progress = 0  # print counts to stderr every this many mutants

    # -- at the kexec jump, in the parent --------------------------------------------------
    def hook(self, run: Run) -> Any:
        def at_stage(stage: str) -> None:
            if stage != "kexec-jump" or self.done or self.child_fd is not None:
                return
            self.done = True
            self.fork_all(run)
        return at_stage

    def fork_all(self, run: Run) -> None:
        machine = run.machine
        self.targets = len(handover_targets(machine.memory, machine.kho_data))
        stream = mutant_stream(machine, self.seed)
        running: dict[int, tuple[int, str, str]] = {}  # read fd -> (pid, layer, label)
        buffers: dict[int, bytes] = {}
        self.started = time.perf_counter()
        sent = 0

        def stop(_sig: int, _frame: Any) -> None:  # SIGUSR1: finish the running ones, report
            self.n = 0
        signal.signal(signal.SIGUSR1, stop)
        while sent < self.n or running:
            while sent < self.n and len(running) < self.jobs:
                layer, label, apply = next(stream)
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:  # child: mutate, then return into the run
                    os.close(r)
                    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
                    signal.alarm(max(1, int(self.timeout)))
                    self.child_fd = w
                    self.layer = layer
                    kd = bytearray(machine.kho_data or b"")
                    try:
                        apply(machine.memory, kd)
                    except Exception as exc:  # an edit the codecs refuse: not a mutant
                        self._report({"class": "skip", "why": f"{type(exc).__name__}: {exc}"})
                    machine.kho_data = bytes(kd)
                    return
                os.close(w)
                running[r] = (pid, layer, label)
                buffers[r] = b""
                sent += 1
            ready, _, _ = select.select(list(running), [], [], self.timeout + 5)
            for r in ready:
                chunk = os.read(r, 65536)
                if chunk:
                    buffers[r] += chunk
                    continue
                pid, layer, label = running.pop(r)
                os.close(r)
                _, status = os.waitpid(pid, 0)
                self._record(layer, label, buffers.pop(r), status)
                finished = sum(self.by_class.values())
                if self.progress and finished % self.progress == 0:
                    rate = finished / (time.perf_counter() - self.started)
                    print(f"progress: {finished} mutants, {rate:.1f}/s, "
                          f"{dict(self.by_class)}", file=sys.stderr, flush=True)
        self.elapsed = time.perf_counter() - self.started

    def _record(self, layer: str, label: str, data: bytes, status: int) -> None:
        try:
            rec = json.loads(data.decode())
        except ValueError:
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            why = "timeout" if sig == signal.SIGALRM else f"no report (status {status})"
            rec = {"class": "crash", "why": why}
        cls = rec["class"]
        if cls == "skip":
            self.by_class["skipped"] += 1
            return
        self.by_class[cls] += 1
        self.by_layer[layer][cls] += 1
        if cls == "crash":
            self.crashes.append(f"{layer}: {label}: {rec.get('why')}")

    # -- in a child, after the run ---------------------------------------------------------
    def _report(self, rec: dict[str, Any]) -> None:
        assert self.child_fd is not None
        os.write(self.child_fd, json.dumps(rec).encode())
        os._exit(0)

    def finish_child(self, result: Any, exc: BaseException | None) -> None:
        if exc is not None:
            frames = [f"{Path(f.filename).name}:{f.lineno} {f.name}"
                      for f in traceback.extract_tb(exc.__traceback__)
                      if "/luosim/" in f.filename][-4:]
            self._report({"class": "crash", "why": f"{type(exc).__name__}: "
                          f"{str(exc)[:120]} @ {' < '.join(reversed(frames))}"})
        self._report({"class": result.outcome, "signature": result.signature()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", nargs="?", default=str(DEFAULT))
    ap.add_argument("--mutants", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--progress", type=int, default=0,
                    help="print running counts to stderr every N mutants")
    args = ap.parse_args(argv)
    scenario = load_scenario(args.scenario)
    camp = Campaign(args.mutants, max(1, args.jobs), args.seed, args.timeout)
    camp.progress = args.progress
    t0 = time.perf_counter()
    run = Run(scenario, (), None, None)
    run.machine.stage_hooks.append(camp.hook(run))
    try:
        result = run.execute()
    except Exception as exc:
        if camp.child_fd is not None:
            camp.finish_child(None, exc)
        raise
    if camp.child_fd is not None:
        camp.finish_child(result, None)
    total = time.perf_counter() - t0
    done = sum(v for k, v in camp.by_class.items() if k != "skipped")
    report = {
        "scenario": Path(args.scenario).name, "baseline": result.outcome,
        "targets": camp.targets, "mutants": done, "skipped": camp.by_class["skipped"],
        "by_class": {c: camp.by_class[c] for c in CLASSES},
        "by_layer": {k: {c: v[c] for c in CLASSES if v[c]} for k, v in
                     sorted(camp.by_layer.items())},
        "crashes": camp.crashes[:20], "seconds": round(total, 1),
        "ms_per_mutant": round(1000 * camp.elapsed / max(done, 1), 2), "jobs": camp.jobs,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['scenario']}: baseline {result.outcome}; {camp.targets} hand-over "
              f"objects; {done} mutants in {camp.elapsed:.1f} s "
              f"({report['ms_per_mutant']} ms each, {camp.jobs} job(s)); "
              f"{report['skipped']} edits the codecs refused")
        print("class    " + " ".join(f"{c:>8}" for c in CLASSES))
        print("all      " + " ".join(f"{camp.by_class[c]:>8}" for c in CLASSES))
        for layer, counts in sorted(camp.by_layer.items()):
            print(f"{layer:<9}" + " ".join(f"{counts[c]:>8}" for c in CLASSES))
        for line in camp.crashes[:20]:
            print(f"CRASH {line}")
    return 1 if camp.by_class["crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
