"""Fork-based execution of fault plans: run each common prefix once.

A run with faults is the fault-free run up to the first hit a fault
targets.  So the explorer runs the scenario once with no fault and, at each
fault-point occurrence some plan targets, ``os.fork()``s a child per effect:
the child injects that effect and runs only the rest of the scenario; the
parent goes on as if nothing happened.  A child whose plans have a second
fault forks again at that fault's occurrence (depth 2), and so on.

Every process of the tree ends its run with the result of each plan whose
remaining faults were never hit -- exactly what a fresh run of that plan
gives, since an injector only acts on the occurrence it targets.  Records
travel up the tree through pipes (pickled); the root returns them in plan
order.  The hook is :func:`luosim.faults.set_branch_hook`: the runner must
create its injector from :class:`luosim.faults.FaultInjector` (or call
:func:`luosim.faults.branch` itself, like the tests' toy runner).

Concurrency: ``jobs - 1`` tokens (bytes in a pipe) are shared by the whole
tree.  A forking process that takes a token lets the child run beside it;
when none is free it lends the child its own and waits for it, so no process
ever blocks on a token (no deadlock) and at most ``jobs`` runs progress.
``gc.freeze()`` before each fork keeps the collector from touching (and so
copying) the parent's heap in the children.
"""

from __future__ import annotations

import gc
import os
import pickle
import select
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from luosim.explore.executors import (
    Plan,
    Progress,
    RunCrash,
    RunRecord,
    RunSpec,
    crash,
    run_one,
)
from luosim.faults import Fault, recording_sites, set_branch_hook

Key = tuple[str, int]


def fork_available() -> bool:
    return hasattr(os, "fork")


@dataclass
class _Child:
    pid: int
    fd: int
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _Node:
    """What one process of the tree is responsible for."""

    # plan -> its faults not yet injected on this process's path
    pending: dict[Plan, tuple[Fault, ...]]
    tokens: tuple[int, int] | None  # (read, write) ends of the token pipe
    is_child: bool = False
    out_fd: int = -1
    own_token: bool = False
    index: dict[Key, list[Plan]] = field(default_factory=dict)
    children: list[_Child] = field(default_factory=list)
    records: list[RunRecord] = field(default_factory=list)
    deferred: list[Plan] = field(default_factory=list)  # fork failed: run fresh
    crash: RunCrash | None = None
    progress: Progress | None = None  # the root's: records in so far, of total
    total: int = 0

    def reindex(self) -> None:
        self.index = {}
        for plan, rest in self.pending.items():
            for f in rest:
                self.index.setdefault((f.point, f.occurrence), []).append(plan)


_node: _Node | None = None


def _take_token(node: _Node) -> bool:
    if node.tokens is None:
        return False
    try:
        return len(os.read(node.tokens[0], 1)) == 1
    except BlockingIOError:
        return False


def _give_token(node: _Node) -> None:
    if node.tokens is not None:
        os.write(node.tokens[1], b"t")


def _drain(node: _Node, *, block: bool, only: _Child | None = None) -> None:
    """Read what children sent; reap those that finished.  ``block``: until
    every child (or ``only``) is done."""
    while True:
        live = [c for c in node.children if only is None or c is only]
        if not live:
            return
        ready, _, _ = select.select([c.fd for c in live], [], [], None if block else 0)
        if not ready:
            return
        for c in live:
            if c.fd not in ready:
                continue
            chunk = os.read(c.fd, 1 << 20)
            if chunk:
                c.data += chunk
                continue
            os.close(c.fd)
            os.waitpid(c.pid, 0)
            node.children.remove(c)
            _receive(node, bytes(c.data))


def _receive(node: _Node, data: bytes) -> None:
    try:
        records, deferred, err = pickle.loads(data)
    except Exception:
        err = RunCrash("a forked explorer process died without a result", "ForkDied")
        records, deferred = [], []
    node.records.extend(records)
    node.deferred.extend(deferred)
    if err is not None and node.crash is None:
        node.crash = err
    if node.progress is not None:
        node.progress(min(len(node.records), node.total - 1), node.total)


def _hook(name: str, occurrence: int) -> Fault | None:
    """The branch hook: fork a child per fault some pending plan has here."""
    node = _node
    if node is None:
        return None
    plans = node.index.pop((name, occurrence), None)
    if not plans:
        return None
    by_fault: dict[Fault, dict[Plan, tuple[Fault, ...]]] = {}
    for plan in plans:
        rest = node.pending.pop(plan, None)
        if rest is None:  # already handed to a child at an earlier hit
            continue
        # a plan with two effects here fires its first, like FaultInjector.hit
        f = min(x for x in rest if (x.point, x.occurrence) == (name, occurrence))
        left = list(rest)
        left.remove(f)
        by_fault.setdefault(f, {})[plan] = tuple(left)
    for f in sorted(by_fault):
        child_plans = by_fault[f]
        _drain(node, block=False)
        own = _take_token(node)
        r = w = -1
        gc.freeze()
        try:
            r, w = os.pipe()
            pid = os.fork()
        except OSError:
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)
            if own:
                _give_token(node)
            node.deferred.extend(child_plans)
            continue
        if pid == 0:  # the child: inject f and run on with these plans only
            os.close(r)
            for c in node.children:
                os.close(c.fd)
            if node.out_fd >= 0:
                os.close(node.out_fd)
            child_node = _Node(child_plans, node.tokens, True, w, own)
            child_node.reindex()
            _become(child_node)
            return f
        os.close(w)
        child = _Child(pid, r)
        node.children.append(child)
        if not own:  # no free core: the child runs on ours, we wait
            _drain(node, block=True, only=child)
    return None


def _become(node: _Node) -> None:
    global _node
    _node = node


def _finish_child(node: _Node, result: Any, full: bool) -> None:
    """Send this subtree's records up the tree and leave (never returns)."""
    code = 0
    try:
        _drain(node, block=True)
        if result is not None:
            node.records.extend(RunRecord.from_result(p, result, full=full)
                                for p in node.pending)
        if node.own_token:
            _give_token(node)
        payload = pickle.dumps((node.records, node.deferred, node.crash))
        view = memoryview(payload)
        while view:
            n = os.write(node.out_fd, view)
            view = view[n:]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def run_tree(spec: RunSpec, plans: Sequence[Plan], *, jobs: int = 1, full: bool = False,
             progress: Progress | None = None) -> list[RunRecord]:
    """Run ``plans`` as one fork tree; records in the order of ``plans``."""
    global _node
    if _node is not None:
        raise RuntimeError("run_tree is not reentrant")
    total = len(plans)
    if progress:
        progress(0, total)
    if not plans:
        return []
    pending = {tuple(p): tuple(p) for p in plans}
    tokens: tuple[int, int] | None = None
    if jobs > 1:
        tokens = os.pipe()
        os.set_blocking(tokens[0], False)
        os.write(tokens[1], b"t" * (jobs - 1))
    root = _Node(pending, tokens, progress=progress, total=total)
    root.reindex()
    _node = root
    old_hook = set_branch_hook(_hook)
    sys.stdout.flush()
    sys.stderr.flush()
    result: Any = None
    try:
        try:
            scenario = spec.scenario_factory(spec.scenario)
            with recording_sites(spec.sites):
                result = spec.runner(scenario, faults=(), policy=spec.policy_dict)
        except BaseException as exc:
            node = _node
            if node is not None and node.is_child:
                if isinstance(exc, Exception) and node.crash is None:
                    first = min(node.pending, default=(), key=lambda p: (len(p), p))
                    node.crash = crash(first, exc)
                _finish_child(node, None, full)
            raise
        node = _node
        if node is not None and node.is_child:
            _finish_child(node, result, full)
    except RunCrash:
        raise
    except Exception as exc:
        first = min(pending, key=lambda p: (len(p), p))
        raise crash(first, exc) from exc
    finally:
        set_branch_hook(old_hook)
        _node = None
        try:
            _drain(root, block=True)
        finally:
            gc.unfreeze()
            if tokens is not None:
                os.close(tokens[0])
                os.close(tokens[1])
    if root.crash is not None:
        raise root.crash
    root.records.extend(RunRecord.from_result(p, result, full=full) for p in root.pending)
    for plan in root.deferred:
        root.records.append(run_one(spec, plan, full=full))
    by_plan = {rec.plan: rec for rec in root.records}
    if progress:
        progress(total, total)
    return [by_plan[tuple(p)] for p in plans]


def fork_chunk(spec: RunSpec, plans: Sequence[Plan], full: bool = False) -> list[RunRecord]:
    """A Dask task: explore the subtree of ``plans`` in one worker (one core)."""
    if not fork_available():
        return [run_one(spec, tuple(p), full=full) for p in plans]
    return run_tree(spec, plans, jobs=1, full=full)


class ForkExecutor:
    """Runs plans as fork trees on ``jobs`` cores of this machine (POSIX only)."""

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        if not fork_available():
            raise RuntimeError("os.fork is not available here: use --no-fork")
        self.jobs = jobs

    def run(self, spec: RunSpec, plans: Sequence[Plan], *, full: bool = False,
            progress: Progress | None = None) -> list[RunRecord]:
        return run_tree(spec, plans, jobs=self.jobs, full=full, progress=progress)

    def close(self) -> None:
        pass

    def start(self) -> ForkExecutor:
        return self

    def __enter__(self) -> ForkExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

