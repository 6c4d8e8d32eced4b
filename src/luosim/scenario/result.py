"""The result of one run: outcome, invariants, events, devices.

Its ``as_json()`` is the stable CLI shape of docs/architecture.md
(``luosim run --json``).  Outcomes, in DESIGN.md's words:

ok       update completed, every invariant holds;
refused  an operation failed cleanly (errno), state rolled back;
panic    a kernel panicked (with message) before any invariant broke;
unsafe   an invariant broke.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from luosim.check.result import InvariantResult

__all__ = ["OUTCOMES", "DeviceResult", "InvariantResult", "RunResult"]

OUTCOMES = ("ok", "refused", "panic", "unsafe")


@dataclass(frozen=True)
class DeviceResult:
    name: str
    bdf_before: str | None
    bdf_after: str | None
    preserved: bool
    auto_preserved: bool = False  # a bridge preserved because a device below it is

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bdf_before": self.bdf_before, "bdf_after": self.bdf_after,
                "preserved": self.preserved, "auto_preserved": self.auto_preserved}


@dataclass
class RunResult:
    outcome: str
    panic: str | None = None
    error: str | None = None  # errno failure of a refused run: "STEP: EBUSY (...)"
    failed_step: str | None = None
    invariants: list[InvariantResult] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    devices: list[DeviceResult] = field(default_factory=list)
    reached: Counter[str] = field(default_factory=Counter)  # fault point -> hits
    # fault point -> occurrences that differ by call site (what the explorer tries)
    occurrences: dict[str, tuple[int, ...]] = field(default_factory=dict)
    fired: list[str] = field(default_factory=list)  # fault labels that fired
    phases: list[tuple[str, int]] = field(default_factory=list)  # (phase, simulated ns)
    pci_before: list[dict[str, Any]] = field(default_factory=list)
    pci_after: list[dict[str, Any]] = field(default_factory=list)
    preserved_objects: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    dma: list[dict[str, Any]] = field(default_factory=list)  # DmaRecord.as_dict() rows
    device_vm: dict[str, str] = field(default_factory=dict)  # assigned device -> VM
    # things the user asked for that did not happen, e.g. a planned fault never reached
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not one of {OUTCOMES}")

    @property
    def broken(self) -> list[InvariantResult]:
        return [i for i in self.invariants if not i.ok]

    def signature(self) -> str:
        """Outcome class plus what makes it that class, stable across runs.

        Runs with the same signature are one group in an exploration.
        """
        if self.outcome == "unsafe":
            return "unsafe:" + ",".join(sorted({i.id for i in self.broken}))
        if self.outcome == "panic":
            return f"panic:{_stable(self.panic or '')}"
        if self.outcome == "refused":
            return f"refused:{self.failed_step or '?'}:{_stable(self.error or '')}"
        return "ok"

    def as_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "panic": self.panic,
            "error": self.error,
            "invariants": [i.as_dict() for i in self.invariants],
            "events": self.events,
            "devices": [d.as_dict() for d in self.devices],
            # additions for reports and traces (DESIGN.md's keys above are unchanged)
            "phases": [{"phase": p, "duration_ns": ns} for p, ns in self.phases],
            "pci_before": self.pci_before,
            "pci_after": self.pci_after,
            "preserved_objects": self.preserved_objects,
            "device_vm": self.device_vm,
            "dma": self.dma,
            "warnings": list(self.warnings),
        }


# compiled at import, before the explorer forks: not once per forked child
_ADDR = re.compile(r"0x[0-9a-f]+")
_NUMBER = re.compile(r"\b\d{3,}\b")


def _stable(message: str) -> str:
    """Drop addresses and numbers that vary between otherwise equal failures."""
    return _NUMBER.sub("N", _ADDR.sub("ADDR", message))[:160]
