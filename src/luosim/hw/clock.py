"""Simulated time in nanoseconds; only the runner and kexec advance it."""

from __future__ import annotations


class SimClock:
    def __init__(self) -> None:
        self.now_ns = 0

    def advance(self, ns: int) -> int:
        if ns < 0:
            raise ValueError("time does not run backwards")
        self.now_ns += ns
        return self.now_ns
