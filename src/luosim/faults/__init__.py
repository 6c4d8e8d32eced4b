"""Named fault points and injection plans.

A fault point is a place where the modelled kernel can fail.  Kernel code
calls :meth:`FaultInjector.hit` at the point; with no plan it only records
that the point was reached (and how often), with a plan it returns the
planned effect for that occurrence.  Effects are an errno name
(``"ENOMEM"``) or ``"corrupt:<how>"``; each point declares which it accepts.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from luosim.errors import KernelError, errno_value


@dataclass(frozen=True)
class FaultPoint:
    name: str
    effects: tuple[str, ...]
    doc: str


@dataclass(frozen=True, order=True)
class Fault:
    """Inject ``effect`` at the ``occurrence``-th time (1-based) ``point`` is hit."""

    point: str
    occurrence: int
    effect: str

    def label(self) -> str:
        return f"{self.point}#{self.occurrence}={self.effect}"

    @classmethod
    def parse(cls, text: str) -> Fault:
        """``"pci.flb.retrieve#1=ENOMEM"`` -> Fault (ValueError on bad text)."""
        try:
            left, effect = text.split("=", 1)
            point, _, occ = left.partition("#")
            fault = cls(point.strip(), int(occ) if occ else 1, effect.strip())
        except ValueError:
            raise ValueError(f"bad fault {text!r}: expected POINT[#N]=EFFECT") from None
        fault.validate()
        return fault

    def validate(self) -> None:
        fp = REGISTRY.get(self.point) or load_catalog().get(self.point)
        if fp is None:
            raise ValueError(f"unknown fault point {self.point!r}")
        if self.effect not in fp.effects:
            raise ValueError(f"fault point {self.point!r} does not accept effect {self.effect!r}"
                             f" (accepts {', '.join(fp.effects)})")
        if self.occurrence < 1:
            raise ValueError(f"fault occurrence must be >= 1, got {self.occurrence}")


REGISTRY: dict[str, FaultPoint] = {}

# modules that declare fault points at import time
_DECLARING_MODULES = (
    "luosim.kernel.kho",
    "luosim.kernel.liveupdate.core",
    "luosim.kernel.liveupdate.file",
    "luosim.kernel.liveupdate.flb",
    "luosim.kernel.mm.memfd",
    "luosim.kernel.pci.probe",
    "luosim.kernel.pci.liveupdate",
    "luosim.kernel.iommu.core",
    "luosim.kernel.iommu.liveupdate",
    "luosim.kernel.iommu.iommufd",
    "luosim.kernel.vfio.pci",
    "luosim.userspace.agent",
    "luosim.scenario.runner",
    "luosim.hw.machine",
)

CATALOG_HOOKS: list[Callable[[], object]] = []
"""Run by :func:`load_catalog` after the imports (declarations that need a boot)."""


def load_catalog() -> dict[str, FaultPoint]:
    """Import every module that declares fault points; return the registry.

    Points declared per registered handler or FLB (``luo.file.<compat>.<op>``)
    appear once a kernel has booted and registered them.
    """
    global _catalog_loaded
    if _catalog_loaded:
        return REGISTRY
    _catalog_loaded = True
    import importlib
    for mod in _DECLARING_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    # handlers and FLBs declare their per-op points when a kernel registers them:
    # hw.machine (imported above) hooks a throw-away boot in here, so this
    # package imports nothing of hw/ or kernel/ itself (no import cycle)
    for hook in CATALOG_HOOKS:
        hook()
    return REGISTRY


_catalog_loaded = False


def point(name: str, effects: tuple[str, ...] | list[str], doc: str) -> str:
    """Declare a fault point (idempotent for identical declarations)."""
    fp = FaultPoint(name, tuple(effects), doc)
    old = REGISTRY.get(name)
    if old is not None and old != fp:
        raise ValueError(f"fault point {name!r} declared twice with different effects")
    REGISTRY[name] = fp
    return name


BranchHook = Callable[[str, int], "Fault | None"]
"""``hook(point, occurrence)``: the fault to inject at a hit no plan targets, or None."""

BranchTargets = Callable[[str], Iterable[int]]
"""``targets(point)``: the occurrences of ``point`` at which the hook may inject."""

_record_sites = False
_branch_hook: BranchHook | None = None
_branch_targets: BranchTargets | None = None


@contextmanager
def recording_sites(on: bool = True) -> Iterator[None]:
    """Machines created inside record each hit's call site (the explorer's
    representative occurrences need them; a plain run does not pay for them)."""
    global _record_sites
    old, _record_sites = _record_sites, on
    try:
        yield
    finally:
        _record_sites = old


def set_branch_hook(hook: BranchHook | None, targets: BranchTargets | None = None
                    ) -> tuple[BranchHook | None, BranchTargets | None]:
    """Install the fork explorer's hook (see luosim.explore.forking) and the
    occurrences it targets; returns the old pair (``set_branch_hook(*old)``)."""
    global _branch_hook, _branch_targets
    old = (_branch_hook, _branch_targets)
    _branch_hook, _branch_targets = hook, targets
    return old


def _branch_within(name: str, lo: int, hi: int) -> bool:
    """Whether the branch hook may inject at an occurrence in (lo, hi] of ``name``."""
    if _branch_hook is None:
        return False
    if _branch_targets is None:  # targets unknown: every bulk path goes per item
        return True
    return any(lo < o <= hi for o in _branch_targets(name))


def branch(name: str, occurrence: int) -> Fault | None:
    """Ask the installed branch hook whether to inject at this hit."""
    return _branch_hook(name, occurrence) if _branch_hook is not None else None


def unreached_warning(fault: Fault, hits: int) -> str:
    """The run's warning for a planned fault that never fired."""
    return (f"fault {fault.label()} was never reached ({fault.point} was hit {hits} "
            f"time{'s' if hits != 1 else ''} in this run)")


@dataclass
class FaultInjector:
    """Shared by every kernel booted on one machine: occurrences span kexecs."""

    plan: tuple[Fault, ...] = ()
    reached: Counter[str] = field(default_factory=Counter)
    fired: list[tuple[Fault, str]] = field(default_factory=list)
    # point -> runs of consecutive hits from one call site: [first, last, site]
    sites: dict[str, list[list[int | str]]] = field(default_factory=dict)
    record_sites: bool = field(default_factory=lambda: _record_sites)

    def hit(self, name: str, context: str = "") -> str | None:
        """Record a pass through ``name``; return the planned effect, if any."""
        if name not in REGISTRY:
            raise KeyError(f"undeclared fault point {name!r}")
        self.reached[name] += 1
        n = self.reached[name]
        if self.record_sites:
            self._note_site(name, n, n)
        for f in self.plan:
            if f.point == name and f.occurrence == n:
                self.fired.append((f, context))
                return f.effect
        if _branch_hook is not None:
            forked = _branch_hook(name, n)
            if forked is not None:  # the fork explorer's child: from here on, this plan
                self.plan += (forked,)
                self.fired.append((forked, context))
                return forked.effect
        return None

    def _note_site(self, name: str, first: int, last: int) -> None:
        """Hits ``first..last`` of ``name`` came from the caller's call site."""
        site = _call_site()
        runs = self.sites.setdefault(name, [])
        if runs and runs[-1][2] == site:
            runs[-1][1] = last
        else:
            runs.append([first, last, site])

    def pending(self, name: str, count: int) -> bool:
        """Whether a planned fault fires within the next ``count`` hits of ``name``
        (bulk paths then take the per-item path so the fault lands exactly)."""
        n0 = self.reached[name]
        return (any(f.point == name and n0 < f.occurrence <= n0 + count for f in self.plan)
                or _branch_within(name, n0, n0 + count))

    def hit_many(self, name: str, count: int, context: str = "") -> tuple[int, str] | None:
        """``count`` consecutive :meth:`hit` of ``name`` from one call site, in bulk.

        Returns (0-based position, effect) of the first planned fault among
        them; the hits after it are not recorded (the caller stops there).
        Callers check :meth:`pending` first: a hit the fork explorer branches
        at must go through :meth:`hit`.
        """
        if name not in REGISTRY:
            raise KeyError(f"undeclared fault point {name!r}")
        if count <= 0:
            return None
        n0 = self.reached[name]
        fire = min((f for f in self.plan if f.point == name and n0 < f.occurrence <= n0 + count),
                   key=lambda f: f.occurrence, default=None)
        n = n0 + count if fire is None else fire.occurrence
        self.reached[name] = n
        if self.record_sites:
            self._note_site(name, n0 + 1, n)
        if fire is None:
            return None
        self.fired.append((fire, context))
        return fire.occurrence - n0 - 1, fire.effect

    def check(self, name: str, context: str = "") -> str | None:
        """Like :meth:`hit`, but raise ``KernelError`` for an errno effect.

        Returns a ``corrupt:*`` effect for the caller to apply, else None.
        """
        effect = self.hit(name, context)
        if effect is None or effect.startswith("corrupt:"):
            return effect
        raise KernelError(errno_value(effect), f"injected at {name}")


    def representative_occurrences(self) -> dict[str, tuple[int, ...]]:
        """Occurrences worth a fault each: first and last hit of every run of
        consecutive hits from the same call site.

        Failing the 1st or the 3000th folio of one memfd takes the same path;
        the first and last of a run keep the boundaries (nothing preserved
        yet / everything but the last) and every distinct caller.
        """
        out: dict[str, tuple[int, ...]] = {}
        if not self.record_sites:  # not asked for: callers fall back to hit counts
            return out
        for name, runs in self.sites.items():
            if self.reached[name] <= EVERY_OCCURRENCE_UP_TO:
                out[name] = tuple(range(1, self.reached[name] + 1))
                continue
            occ: set[int] = set()
            for first, last, _site in runs:
                occ.add(int(first))
                occ.add(int(last))
            out[name] = tuple(sorted(occ))
        return out


def _call_site() -> str:
    """The function that called into the module holding the fault point."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back  # type: ignore[assignment]
    home = frame.f_globals.get("__name__") if frame is not None else None
    while frame is not None and frame.f_globals.get("__name__") == home:
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return str(home)
    return f"{frame.f_globals.get('__name__')}:{frame.f_code.co_name}"


# a point hit this few times is tried at every occurrence (which device,
# which bridge, which session matters); beyond, per call-site boundary
EVERY_OCCURRENCE_UP_TO = 16
