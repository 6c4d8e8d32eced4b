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

Concurrency: ``jobs`` tokens (bytes in a pipe) are shared by the whole tree
and every running process holds one.  A forking process hands its token to
the child and takes a free one (waiting if none is) before it runs on; a
process returns its token when its run ends, before it waits for its
children.  So at most ``jobs`` runs progress at any time, and a process
waits only for a token held by a running one (no deadlock).  A process
keeps at most ``jobs`` live children (it waits, without its token, for one
to end before forking another), so the tree holds at most about
``jobs ** depth`` suspended processes.  Waiting processes read their
children's pipes, so none blocks on a full pipe.
``gc.freeze()`` before each fork keeps the collector from touching (and so
copying) the parent's heap in the children.
"""

from __future__ import annotations

import copy
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
from luosim.faults import Fault, recording_sites, set_branch_hook, unreached_warning

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
    tokens: tuple[int, int]  # (read, write) ends of the token pipe
    jobs: int = 1  # also the most live children a process keeps (bounds memory)
    is_child: bool = False
    out_fd: int = -1
    index: dict[Key, list[Plan]] = field(default_factory=dict)
    children: list[_Child] = field(default_factory=list)
    records: list[RunRecord] = field(default_factory=list)
    deferred: list[Plan] = field(default_factory=list)  # fork failed: run fresh
    crash: RunCrash | None = None
    progress: Progress | None = None  # the root's: records in so far, of total
    total: int = 0
    blame: Plan = ()  # the plan a crash of this process is reported for

    def reindex(self) -> None:
        self.index = {}
        for plan, rest in self.pending.items():
            for f in rest:
                self.index.setdefault((f.point, f.occurrence), []).append(plan)


_node: _Node | None = None


def _take_token(node: _Node) -> bool:
    try:
        return len(os.read(node.tokens[0], 1)) == 1
    except BlockingIOError:
        return False


def _give_token(node: _Node) -> None:
    os.write(node.tokens[1], b"t")


def _read_ready(node: _Node, ready: list[int]) -> None:
    """Read the children whose pipes are ready; reap those that finished."""
    for c in list(node.children):
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


def _drain(node: _Node, *, block: bool) -> None:
    """Read what children sent; ``block``: until every child is done."""
    while node.children:
        ready, _, _ = select.select([c.fd for c in node.children], [], [],
                                    None if block else 0)
        if not ready:
            return
        _read_ready(node, ready)


def _make_room(node: _Node) -> None:
    """Before forking: at most ``jobs`` live children, else a wide tree would
    park one suspended process (and its dirtied pages) per plan.  Waits
    without a token, so the children can run."""
    if len(node.children) < node.jobs:
        return
    _give_token(node)
    while len(node.children) >= node.jobs:
        ready, _, _ = select.select([c.fd for c in node.children], [], [])
        _read_ready(node, ready)
    _await_token(node)


def _await_token(node: _Node) -> None:
    """Take a free token, reading children's pipes while none is."""
    while not _take_token(node):
        fds = [node.tokens[0], *(c.fd for c in node.children)]
        ready, _, _ = select.select(fds, [], [])
        _read_ready(node, ready)


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


def _targets(name: str) -> list[int]:
    """Occurrences of ``name`` some pending plan of this process injects at (bulk
    paths of the model go per item around them, so the hook sees each one)."""
    node = _node
    return [] if node is None else [o for (p, o) in node.index if p == name]


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
        _make_room(node)
        r = w = -1
        gc.freeze()
        try:
            r, w = os.pipe()
            pid = os.fork()
        except OSError:
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)
            node.deferred.extend(child_plans)
            continue
        if pid == 0:  # the child: inject f, run on with these plans and our token
            os.close(r)
            for c in node.children:
                os.close(c.fd)
            if node.out_fd >= 0:
                os.close(node.out_fd)
            child_node = _Node(child_plans, node.tokens, node.jobs, True, w,
                               blame=min(child_plans, key=_plan_key))
            child_node.reindex()
            _become(child_node)
            return f
        os.close(w)
        node.children.append(_Child(pid, r))
        _await_token(node)  # the child runs on ours
    return None


def _plan_key(plan: Plan) -> tuple[int, Plan]:
    return (len(plan), plan)


def _become(node: _Node) -> None:
    global _node
    _node = node


def _unreached(result: Any, rest: tuple[Fault, ...]) -> Any:
    """``result`` as a fresh run of the plan would end: the plan's faults this path
    never hit are warned about (FaultInjector had only the ones injected)."""
    if not rest or not hasattr(result, "warnings"):
        return result
    out = copy.copy(result)
    out.warnings = [*result.warnings,
                    *(unreached_warning(f, result.reached[f.point]) for f in rest)]
    return out


def _finish_child(node: _Node, result: Any, full: bool) -> None:
    """Send this subtree's records up the tree and leave (never returns)."""
    code = 0
    try:
        if result is not None:
            node.records.extend(RunRecord.from_result(p, _unreached(result, rest), full=full)
                                for p, rest in node.pending.items())
        _give_token(node)  # before waiting: the children may need it
        _drain(node, block=True)
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
    tokens = os.pipe()
    os.set_blocking(tokens[0], False)
    os.write(tokens[1], b"t" * (jobs - 1))  # the root holds the jobs-th
    root = _Node(pending, tokens, jobs, progress=progress, total=total)
    root.reindex()
    _node = root
    old_hook = set_branch_hook(_hook, _targets)
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
                    node.crash = crash(node.blame, exc)
                _finish_child(node, None, full)
            raise
        node = _node
        if node is not None and node.is_child:
            _finish_child(node, result, full)
    except RunCrash:
        raise
    except Exception as exc:
        raise crash(min(pending, key=_plan_key), exc) from exc
    finally:
        set_branch_hook(*old_hook)
        _node = None
        try:
            _give_token(root)  # the children still running may need it
            _drain(root, block=True)
        finally:
            gc.unfreeze()
            os.close(tokens[0])
            os.close(tokens[1])
    if root.crash is not None:
        raise root.crash
    root.records.extend(RunRecord.from_result(p, _unreached(result, rest), full=full)
                        for p, rest in root.pending.items())
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

