"""Helpers shared by the LUO tests.

The selftest helpers mirror tools/testing/selftests/liveupdate/luo_test_utils.c
(spec luo.md §7); the test FLBs mirror lib/tests/liveupdate.c; the test file
handler is a minimal handler whose state is a single u64.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from luosim.errors import KernelError
from luosim.faults import Fault
from luosim.hw.machine import Machine
from luosim.kernel.kernel import Kernel
from luosim.kernel.liveupdate.file import FileHandler, FileOpArgs
from luosim.kernel.liveupdate.flb import Flb, FlbOpArgs
from luosim.kernel.liveupdate.uapi import LiveupdateDevice, Session
from luosim.kernel.vfs import File

STATE_SESSION = "luo-state"
STATE_TOKEN = 0x5354
TEST_FLB_DATA = 0xFEEDF00DCAFEBEE0


def boot(profile: str = "v6", cmdline: str = "", memory: str = "4GiB") -> Kernel:
    """A cold-booted kernel on a fresh machine."""
    return Machine.from_topology({"memory": memory}).boot(profile, cmdline=cmdline)


@contextmanager
def raises_errno(err: int) -> Iterator[Any]:
    """Expect a KernelError with ``errno == err``."""
    with pytest.raises(KernelError) as info:
        yield info
    assert info.value.errno == err, f"expected {errno.errorcode[err]}, got {info.value!r}"


def plan(kernel: Kernel, *faults: tuple[str, int, str]) -> None:
    """Install a fault plan (points declared at handler/FLB registration are accepted)."""
    kernel.machine.faults.plan = tuple(Fault(p, n, e) for p, n, e in faults)


# ---------------------------------------------------------------- selftest helpers
def create_and_preserve_memfd(k: Kernel, s: Session, token: int, data: str) -> None:
    """luo_test_utils.c: one-page memfd holding ``data``, preserved, fd closed."""
    f = k.memfd_create("luo-test", size=4096)
    f.write(0, data.encode())
    s.preserve_fd(f, token)
    f.close()


def create_and_preserve_empty_memfd(k: Kernel, s: Session, token: int) -> None:
    f = k.memfd_create("luo-empty")
    s.preserve_fd(f, token)
    f.close()


def restore_and_verify_memfd(s: Session, token: int, data: str) -> File:
    f = s.retrieve_fd(token)
    got = f.read(0, len(data.encode()))  # type: ignore[attr-defined]
    assert got == data.encode(), f"token {token:#x}: {got!r} != {data!r}"
    return f


def stage(lu: LiveupdateDevice) -> int:
    """The selftests' state session decides the stage: absent → 1, else its number."""
    try:
        s = lu.retrieve_session(STATE_SESSION)
    except KernelError as exc:
        assert exc.errno == errno.ENOENT
        return 1
    f = s.retrieve_fd(STATE_TOKEN)
    n = int(f.read(0, 16).rstrip(b"\0"))  # type: ignore[attr-defined]
    s.finish()
    s.close()
    return n


def create_state_session(k: Kernel, lu: LiveupdateDevice, next_stage: int) -> Session:
    s = lu.create_session(STATE_SESSION)
    create_and_preserve_memfd(k, s, STATE_TOKEN, str(next_stage))
    return s


# ---------------------------------------------------------------- test FLBs
class TestFlb(Flb):
    """Modelled on lib/tests/liveupdate.c: data 0xFEEDF00DCAFEBEE0 + index."""

    __test__ = False

    def __init__(self, index: int, expect: int | None = None) -> None:
        super().__init__(f"liveupdate-test-flb-v{index}")
        self.index = index
        self.expect = TEST_FLB_DATA + index if expect is None else expect
        self.calls: list[str] = []

    def preserve(self, args: FlbOpArgs) -> None:
        self.calls.append("preserve")
        args.data = TEST_FLB_DATA + self.index
        args.obj = {"flb": self.index, "state": "outgoing"}

    def unpreserve(self, args: FlbOpArgs) -> None:
        self.calls.append("unpreserve")
        assert args.data == TEST_FLB_DATA + self.index
        assert args.obj == {"flb": self.index, "state": "outgoing"}

    def retrieve(self, args: FlbOpArgs) -> None:
        self.calls.append("retrieve")
        if args.data != self.expect:
            raise KernelError(errno.EINVAL, f"test FLB {self.index}: data {args.data:#x}")
        args.obj = {"flb": self.index, "state": "incoming", "data": args.data}

    def finish(self, args: FlbOpArgs) -> None:
        self.calls.append("finish")
        assert args.obj == {"flb": self.index, "state": "incoming", "data": self.expect}


# ---------------------------------------------------------------- test file handler
class TestFile(File):
    __test__ = False

    def __init__(self, k: Kernel, value: int, *, install_fd: bool = True) -> None:
        super().__init__(k, f"testfile:{value:#x}", install_fd=install_fd)
        self.value = value
        self.fail_freeze: int = 0  # errno to fail freeze with
        self.frozen = False
        self.busy = False  # can_finish says no while set


class TestHandler(FileHandler):
    """A handler whose serialized state is the file's u64 ``value``."""

    __test__ = False

    def __init__(self, k: Kernel, compatible: str = "test-file-v1") -> None:
        super().__init__(compatible)
        self.kernel = k
        self.log: list[tuple[str, int]] = []

    def can_preserve(self, file: File) -> bool:
        return isinstance(file, TestFile)

    def preserve(self, args: FileOpArgs) -> None:
        assert isinstance(args.file, TestFile)
        args.serialized_data = args.file.value
        self.log.append(("preserve", args.file.value))

    def unpreserve(self, args: FileOpArgs) -> None:
        assert isinstance(args.file, TestFile)
        self.log.append(("unpreserve", args.file.value))

    def freeze(self, args: FileOpArgs) -> None:
        assert isinstance(args.file, TestFile)
        if args.file.fail_freeze:
            self.log.append(("freeze-failed", args.file.value))
            raise KernelError(args.file.fail_freeze, "test freeze failure")
        args.file.frozen = True
        self.log.append(("freeze", args.file.value))

    def unfreeze(self, args: FileOpArgs) -> None:
        assert isinstance(args.file, TestFile)
        args.file.frozen = False
        self.log.append(("unfreeze", args.file.value))

    def retrieve(self, args: FileOpArgs) -> None:
        args.file = TestFile(self.kernel, args.serialized_data, install_fd=False)
        self.log.append(("retrieve", args.serialized_data))

    def can_finish(self, args: FileOpArgs) -> bool:
        return not (isinstance(args.file, TestFile) and args.file.busy)

    def finish(self, args: FileOpArgs) -> None:
        self.log.append(("finish", args.serialized_data))
