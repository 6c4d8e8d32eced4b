"""Invariants over machine + kernel state, each with an id and a spec reference.

The runner calls :meth:`Checker.check` after every step.  An invariant
that breaks stays broken (its first failure is kept) and makes the run
``unsafe``.  The checker is an observer with a probe on the hardware: it may
read kernel and hardware state, but it never changes it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from luosim.check.result import InvariantResult

if TYPE_CHECKING:
    from luosim.hw.machine import Machine
    from luosim.kernel.kernel import Kernel


class PfnRanges:
    """A set of page frames stored as sorted, merged [start, end) ranges."""

    def __init__(self, blocks: list[tuple[int, int]]) -> None:
        merged: list[tuple[int, int]] = []
        for a, b in sorted(blocks):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        self.starts = [a for a, _b in merged]
        self.ends = [b for _a, b in merged]

    def __contains__(self, pfn: object) -> bool:
        if not isinstance(pfn, int):
            return False
        i = bisect.bisect_right(self.starts, pfn) - 1
        return i >= 0 and pfn < self.ends[i]


@dataclass(frozen=True)
class Invariant:
    id: str
    description: str
    spec: str
    fn: Callable[[CheckContext], str | None]  # None = holds, else what broke


@dataclass
class CheckContext:
    """What the runner knows across kernels (captured from the old kernel before kexec)."""

    machine: Machine
    kernel: Kernel | None = None
    step: str = ""
    phase: str = "before"  # before | preserved | after-kexec | finished
    kexecs: int = 0
    # device name -> BDF at preservation time, for preserved vfio devices
    preserved_bdfs: dict[str, str] = field(default_factory=dict)
    # VM RAM: name -> the first problem seen with its preserved content (KHO-1)
    ram_problems: dict[str, str] = field(default_factory=dict)
    # VM RAM: name -> [(index, pa, order, count)] runs of the preserved folios
    ram_layout: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    # physical pages each VM's RAM occupies, as sorted [start, end) pfn ranges
    ram_pfns: dict[str, PfnRanges] = field(default_factory=dict)
    device_vm: dict[str, str] = field(default_factory=dict)  # device name -> VM
    liveupdate_numbers: list[int] = field(default_factory=list)
    retrieved_tokens: dict[tuple[str, int], int] = field(default_factory=dict)
    dma_checked: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


REGISTRY: list[Invariant] = []


def invariant(id: str, description: str, spec: str) -> Callable[
        [Callable[[CheckContext], str | None]], Callable[[CheckContext], str | None]]:
    def deco(fn: Callable[[CheckContext], str | None]) -> Callable[[CheckContext], str | None]:
        REGISTRY.append(Invariant(id, description, spec, fn))
        return fn
    return deco


class Checker:
    """Runs every registered invariant; remembers the first failure of each."""

    def __init__(self, ctx: CheckContext) -> None:
        self.ctx = ctx
        self.failures: dict[str, InvariantResult] = {}
        self.checked: set[str] = set()

    def check(self, step: str) -> list[InvariantResult]:
        """Evaluate all invariants after ``step``; return the newly broken ones."""
        self.ctx.step = step
        new: list[InvariantResult] = []
        for inv in REGISTRY:
            if inv.id in self.failures:
                continue
            detail = inv.fn(self.ctx)
            self.checked.add(inv.id)
            if detail is not None:
                res = InvariantResult(inv.id, False, f"{detail} (after {step})", inv.spec, step)
                self.failures[inv.id] = res
                new.append(res)
                self.ctx.machine.emit("checker", "check", "invariant-broken",
                                      f"{inv.id}: {detail}", "error", step=step)
        return new

    def results(self) -> list[InvariantResult]:
        out = []
        for inv in REGISTRY:
            if inv.id in self.failures:
                out.append(self.failures[inv.id])
            else:
                out.append(InvariantResult(inv.id, True, inv.description, inv.spec))
        return out

    @property
    def broken(self) -> bool:
        return bool(self.failures)
