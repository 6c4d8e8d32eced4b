"""Running many fault plans: inline, on local processes, or on a Dask cluster.

Every executor runs the same pure, module-level function :func:`run_chunk`
on picklable inputs -- a :class:`RunSpec` (the scenario as plain JSON data,
a module-level function that rebuilds the scenario object from it, the
runner function and the policy overrides) and a chunk of fault plans -- and
returns :class:`RunRecord` results in plan order, whatever order the workers
finish in.  A run is deterministic given (scenario, faults, policy), so every
executor gives identical results.
"""

from __future__ import annotations

import importlib
import math
import os
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

from luosim.faults import Fault, recording_sites
from luosim.scenario.result import RunResult

Plan = tuple[Fault, ...]
Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as runs complete."""


class Runner(Protocol):
    """``luosim.scenario.runner.run``-shaped: one deterministic run."""

    def __call__(self, scenario: Any, *, faults: tuple[Fault, ...] = (),
                 policy: Mapping[str, str] | None = None) -> RunResult: ...


ScenarioFactory = Callable[[dict[str, Any]], Any]
"""Rebuilds the scenario object from ``scenario.model_dump(mode="json")``."""


def default_runner(scenario: Any, *, faults: tuple[Fault, ...] = (),
                   policy: Mapping[str, str] | None = None) -> RunResult:
    """``luosim.scenario.runner.run``, imported lazily (in the worker)."""
    # imported by name: the runner is loaded in the worker, and type-checking this
    # package does not depend on the state of the scenario/kernel packages
    run: Any = importlib.import_module("luosim.scenario.runner").run
    result: RunResult = run(scenario, faults=faults, policy=policy)
    return result


FAULT_POINT_PACKAGES = ("luosim.hw", "luosim.kernel", "luosim.userspace")
_declared: list[bool] = []


def declare_fault_points() -> None:
    """Import every module that may declare fault points (once per process).

    Fault points are declared when their kernel module is imported, and the
    kernel imports most modules lazily at boot; a scenario's ``faults:`` and
    a trace's faults are validated against the registry before any boot.
    """
    if _declared:
        return
    _declared.append(True)
    for name in FAULT_POINT_PACKAGES:
        try:
            pkg = importlib.import_module(name)
        except Exception:
            continue
        for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), name + ".",
                                          onerror=lambda _name: None):
            try:
                importlib.import_module(info.name)
            except Exception:
                continue


def default_scenario_factory(data: dict[str, Any]) -> Any:
    """``luosim.scenario.schema.scenario_from_dict``, imported lazily."""
    declare_fault_points()
    return importlib.import_module("luosim.scenario.schema").scenario_from_dict(data)


def scenario_data(scenario: Any) -> dict[str, Any]:
    """A scenario object (pydantic ``model_dump(mode="json")``) or mapping as plain data."""
    dump = getattr(scenario, "model_dump", None)
    if callable(dump):
        data = dump(mode="json")
    elif isinstance(scenario, Mapping):
        data = dict(scenario)
    else:
        raise TypeError(f"cannot explore a {type(scenario).__name__}: expected a Scenario")
    if not isinstance(data, dict):
        raise TypeError("scenario.model_dump() did not return a mapping")
    return data


class RunCrash(Exception):
    """The runner raised instead of returning a result (a model bug or bad input).

    ``kind`` is the qualified class name of the original exception, so a
    caller can tell a ``ScenarioError`` from a crash even across processes.
    """

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message, kind)
        self.message = message
        self.kind = kind

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs besides the plans; picklable."""

    scenario: dict[str, Any]
    runner: Runner = default_runner
    scenario_factory: ScenarioFactory = default_scenario_factory
    policy: tuple[tuple[str, str], ...] = ()
    # record call sites: the runs whose representative occurrences make plans
    sites: bool = False

    @classmethod
    def build(cls, scenario: Any, *, runner: Runner | None = None,
              scenario_factory: ScenarioFactory | None = None,
              policy: Mapping[str, str] | None = None) -> RunSpec:
        return cls(scenario_data(scenario), runner or default_runner,
                   scenario_factory or default_scenario_factory,
                   tuple(sorted((str(k), str(v)) for k, v in (policy or {}).items())))

    @property
    def policy_dict(self) -> dict[str, str]:
        return dict(self.policy)


@dataclass(frozen=True)
class RunRecord:
    """The compact result of one run (``result`` only when asked for in full)."""

    plan: Plan
    outcome: str
    signature: str
    panic: str | None
    reached: tuple[tuple[str, int | tuple[int, ...]], ...]
    fired: tuple[str, ...]
    result: RunResult | None = field(default=None, compare=False, repr=False)

    @property
    def reached_map(self) -> dict[str, int | tuple[int, ...]]:
        """Point -> hits, or -> the representative occurrences when the runner
        reports them (one per call-site boundary, see FaultInjector)."""
        return dict(self.reached)

    @classmethod
    def from_result(cls, plan: Plan, result: RunResult, *, full: bool = False) -> RunRecord:
        occ = getattr(result, "occurrences", None) or {}
        reached: list[tuple[str, int | tuple[int, ...]]] = []
        for k, v in sorted(result.reached.items()):
            if v:
                reached.append((k, tuple(occ[k]) if k in occ else int(v)))
        return cls(plan, result.outcome, result.signature(), result.panic, tuple(reached),
                   tuple(result.fired), result if full else None)


def run_one(spec: RunSpec, plan: Plan, *, full: bool = False) -> RunRecord:
    """One run of ``plan`` on a freshly rebuilt scenario."""
    try:
        scenario = spec.scenario_factory(spec.scenario)
        with recording_sites(spec.sites):
            result = spec.runner(scenario, faults=plan, policy=spec.policy_dict)
    except RunCrash:
        raise
    except Exception as exc:
        raise crash(plan, exc) from exc
    return RunRecord.from_result(plan, result, full=full)


def crash(plan: Plan, exc: BaseException) -> RunCrash:
    """The RunCrash reporting that the run of ``plan`` raised ``exc``."""
    labels = " + ".join(f.label() for f in plan) or "no faults"
    first = (str(exc).splitlines() or [""])[0]
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return RunCrash(f"run with {labels} raised {type(exc).__name__}: {first}", kind)


def run_chunk(spec: RunSpec, plans: Sequence[Plan], full: bool = False) -> list[RunRecord]:
    """The pure worker function: run every plan of a chunk, in order."""
    return [run_one(spec, tuple(plan), full=full) for plan in plans]


def chunked(plans: Sequence[Plan], workers: int, *, max_size: int = 32) -> list[list[Plan]]:
    """Split plans into ordered chunks, about four per worker, at most ``max_size`` each."""
    if not plans:
        return []
    size = max(1, min(max_size, math.ceil(len(plans) / (max(1, workers) * 4))))
    return [list(plans[i:i + size]) for i in range(0, len(plans), size)]


class Executor(Protocol):
    """Runs plans and returns their records in plan order."""

    def run(self, spec: RunSpec, plans: Sequence[Plan], *, full: bool = False,
            progress: Progress | None = None) -> list[RunRecord]: ...

    def close(self) -> None: ...


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class LocalExecutor:
    """``jobs`` worker processes (``ProcessPoolExecutor``); ``jobs=1`` runs inline.

    ``start_method`` defaults to ``fork`` where available (workers inherit the
    imported runner and the fault-point registry; no re-import of ``__main__``)
    and ``spawn`` elsewhere.  Forking is done by :meth:`start`, which starts
    every worker at once -- call it before starting threads (e.g. a progress
    bar); :meth:`run` calls it if needed.  Workers are reused across batches
    until :meth:`close`.
    """

    def __init__(self, jobs: int = 1, *, start_method: str | None = None,
                 max_chunk: int = 32) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs
        if start_method is None:
            import multiprocessing

            start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() \
                else "spawn"
        self.start_method = start_method
        self.max_chunk = max_chunk
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> LocalExecutor:
        """Start the worker processes now (no-op for ``jobs=1``)."""
        if self.jobs > 1 and self._pool is None:
            import multiprocessing

            ctx = multiprocessing.get_context(self.start_method)
            self._pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx)
            # one trivial task per worker makes the pool start all of them now
            for fut in [self._pool.submit(os.getpid) for _ in range(self.jobs)]:
                fut.result()
        return self

    def _get_pool(self) -> ProcessPoolExecutor:
        self.start()
        assert self._pool is not None
        return self._pool

    def run(self, spec: RunSpec, plans: Sequence[Plan], *, full: bool = False,
            progress: Progress | None = None) -> list[RunRecord]:
        total = len(plans)
        if progress:
            progress(0, total)
        if self.jobs == 1 or total <= 1:
            out: list[RunRecord] = []
            for plan in plans:
                out.append(run_one(spec, tuple(plan), full=full))
                if progress:
                    progress(len(out), total)
            return out
        chunks = chunked(plans, self.jobs, max_size=self.max_chunk)
        pool = self._get_pool()
        futures: dict[Future[list[RunRecord]], int] = {
            pool.submit(run_chunk, spec, chunk, full): i for i, chunk in enumerate(chunks)}
        results: list[list[RunRecord] | None] = [None] * len(chunks)
        done = 0
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = futures[fut]
                    try:
                        results[i] = fut.result()  # re-raises RunCrash
                    except BrokenProcessPool as exc:
                        pool.shutdown(wait=False, cancel_futures=True)
                        self._pool = None
                        raise RunCrash(f"a worker process died: {exc}",
                                       "BrokenProcessPool") from exc
                    done += len(chunks[i])
                if progress:
                    progress(done, total)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
        return [rec for chunk in results if chunk is not None for rec in chunk]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> LocalExecutor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class DaskExecutor:
    """Runs chunks of plans on a ``dask.distributed`` cluster.

    With ``scheduler_address`` it connects to a running scheduler (every
    worker must be able to import ``luosim`` and the runner); with ``client``
    it uses that client (not closed here); with neither it starts a
    ``LocalCluster`` of ``n_workers`` single-threaded worker processes.
    With ``fork`` (the default) each task explores a subtree: its chunk of
    plans (consecutive in plan order, so mostly sharing their first fault)
    runs as one fork tree (luosim.explore.forking) in the worker.
    """

    def __init__(self, scheduler_address: str | None = None, *, client: Any = None,
                 n_workers: int | None = None, timeout: str = "10s",
                 max_chunk: int | None = None, fork: bool = True) -> None:
        dd: Any = importlib.import_module("dask.distributed")
        # a fork tree pays its prefix once per task: few large chunks (about
        # four per worker); fresh runs gain nothing from size, 32 keeps progress fine
        self.max_chunk = max_chunk if max_chunk is not None else (1 << 30 if fork else 32)
        self.fork = fork
        self._cluster: Any = None
        self._owns_client = client is None
        if client is not None:
            self.client = client
        elif scheduler_address:
            self.client = dd.Client(scheduler_address, timeout=timeout)
        else:
            self._cluster = dd.LocalCluster(n_workers=n_workers or cpu_count(),
                                         threads_per_worker=1, processes=True,
                                         host="127.0.0.1", dashboard_address=None)
            self.client = dd.Client(self._cluster, timeout=timeout)

    def _workers(self) -> int:
        try:
            info = self.client.scheduler_info()
            return max(1, sum(int(w.get("nthreads", 1)) for w in info["workers"].values()))
        except Exception:
            return 1

    def run(self, spec: RunSpec, plans: Sequence[Plan], *, full: bool = False,
            progress: Progress | None = None) -> list[RunRecord]:
        as_completed: Any = importlib.import_module("dask.distributed").as_completed
        total = len(plans)
        if progress:
            progress(0, total)
        if not plans:
            return []
        chunks = chunked(plans, self._workers(), max_size=self.max_chunk)
        spec_future = self.client.scatter(spec, broadcast=True, hash=False)
        task: Callable[..., list[RunRecord]] = run_chunk
        if self.fork:
            task = importlib.import_module("luosim.explore.forking").fork_chunk
        futures = [self.client.submit(task, spec_future, chunk, full, pure=False)
                   for chunk in chunks]
        index = {fut.key: i for i, fut in enumerate(futures)}
        results: list[list[RunRecord] | None] = [None] * len(chunks)
        done = 0
        try:
            for fut in as_completed(futures):
                i = index[fut.key]
                results[i] = fut.result()  # re-raises RunCrash
                done += len(chunks[i])
                if progress:
                    progress(done, total)
        except BaseException:
            self.client.cancel(futures)
            raise
        finally:
            self.client.cancel(spec_future)
        return [rec for chunk in results if chunk is not None for rec in chunk]

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
