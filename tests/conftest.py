"""Shared fixtures: a minimal kernel stand-in for unit tests of one module."""

from __future__ import annotations

from typing import Any

import pytest

from luosim.hw.machine import Machine
from luosim.kernel.mm.page_alloc import PageAllocator
from luosim.kernel.profiles import get_profile


class FakeKernel:
    """Just enough of ``Kernel`` for unit tests of mm/kho-level modules."""

    def __init__(self, machine: Machine, cmdline: str = "", profile: str = "v7") -> None:
        self.machine = machine
        self.profile = get_profile(profile)
        self.mm = PageAllocator(machine.memory.size)
        self.cmdline = cmdline
        self.log: list[tuple[str, str]] = []

    def cmdline_has(self, flag: str) -> bool:
        return flag in self.cmdline.split()

    def printk(self, level: str, subsystem: str, message: str, **data: Any) -> None:
        self.log.append((level, message))

    def warn(self, subsystem: str, message: str) -> None:
        self.log.append(("warn", message))

    def warn_once(self, subsystem: str, key: str, message: str) -> None:
        self.log.append(("warn", message))


@pytest.fixture
def machine() -> Machine:
    return Machine(16 << 30)


@pytest.fixture
def fake_kernel(machine: Machine) -> FakeKernel:
    return FakeKernel(machine)
