"""luosim rendering of tools/testing/selftests/liveupdate/luo_test_utils.c.

Mainline torvalds/linux at 2f3f53a3735a (luo_test_utils.c; the harness
``luo_test()`` detects the stage from the state session and runs stage 1 or
2).  Here both stages run in one Python function with ``k.kexec()`` between:
stage 1's daemon (``daemonize_and_wait()``) is the Python objects that keep
the session fds open through the reboot.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from luosim.errors import KernelError
from luosim.hw.machine import Machine
from luosim.kernel.kernel import Kernel
from luosim.kernel.liveupdate.uapi import LiveupdateDevice, Session
from luosim.kernel.vfs import File

PAGE_SIZE = 4096
PROFILE = "v9"  # luo-v5: the mainline LUO ABI these selftests are written for


def boot(profile: str = PROFILE, cmdline: str = "", memory: str = "4GiB") -> Kernel:
    return Machine.from_topology({"memory": memory}).boot(profile, cmdline=cmdline)


def errno_of(fn: Callable[[], object]) -> int:
    """``-errno`` style: 0 on success, else the error number (the C helpers return -errno)."""
    try:
        fn()
    except KernelError as exc:
        return exc.errno or errno.EIO
    return 0


def cstr(buf: bytes) -> bytes:
    """What strcmp() sees: the bytes up to the first NUL."""
    return buf.split(b"\0", 1)[0]


def create_and_preserve_memfd(k: Kernel, s: Session, token: int, data: str) -> None:
    """memfd_create("test_mfd"), ftruncate(page), snprintf(data) into it, preserve, close."""
    mfd = k.memfd_create("test_mfd")
    mfd.truncate(PAGE_SIZE)
    mfd.write(0, data.encode()[:PAGE_SIZE - 1] + b"\0")
    s.preserve_fd(mfd, token)
    mfd.close()


def restore_and_verify_memfd(s: Session, token: int, expected: str | None) -> File:
    """RETRIEVE_FD, map a page, strcmp() with ``expected`` (None: no check)."""
    mfd = s.retrieve_fd(token)
    got = cstr(mfd.read(0, PAGE_SIZE))  # type: ignore[attr-defined]
    if expected is not None:
        assert got == expected.encode(), f"Data mismatch! Expected {expected!r}, Got {got!r}"
    return mfd


def create_state_file(k: Kernel, lu: LiveupdateDevice, name: str, token: int,
                      next_stage: int) -> Session:
    """A session holding a memfd with the next stage number; left open (not unpreserved)."""
    s = lu.create_session(name)
    create_and_preserve_memfd(k, s, token, str(next_stage))
    return s


def restore_and_read_stage(state: Session, token: int) -> int:
    """restore_and_verify_memfd(NULL) + read() + atoi()."""
    mfd = restore_and_verify_memfd(state, token, None)
    buf = mfd.read(0, 31)  # type: ignore[attr-defined]
    mfd.close()
    digits = cstr(buf)
    return int(digits) if digits.isdigit() else 0


def detect_stage(lu: LiveupdateDevice, state_name: str) -> tuple[int, Session | None]:
    """luo_test(): the state session absent (ENOENT) → stage 1, present → stage 2."""
    try:
        return 2, lu.retrieve_session(state_name)
    except KernelError as exc:
        assert exc.errno == errno.ENOENT, f"Failed to check for state session: {exc}"
        return 1, None


def luo_test(state_name: str, stage1: Callable[[Kernel, LiveupdateDevice], None],
             stage2: Callable[[Kernel, LiveupdateDevice, Session], None],
             k: Kernel | None = None) -> Kernel:
    """Stage 1 on a cold boot, kexec, stage 2; returns the second kernel."""
    k = k or boot()
    lu = k.open_liveupdate()
    st, _ = detect_stage(lu, state_name)
    assert st == 1
    stage1(k, lu)
    k2 = k.kexec(k.profile.name, cmdline=k.cmdline.text)
    lu2 = k2.open_liveupdate()
    st, state = detect_stage(lu2, state_name)
    assert st == 2 and state is not None
    stage2(k2, lu2, state)
    return k2
