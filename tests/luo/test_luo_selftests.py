"""LUO uAPI behaviour beyond liveupdate.c (spec luo.md §7): luo-v1 limits, bad fds, tokens.

The tests of liveupdate.c itself, one per TEST_F, are in
tests/selftests/test_liveupdate.py.
"""

from __future__ import annotations

import errno

import pytest

from tests.luo.luo_testlib import (
    boot,
    create_and_preserve_empty_memfd,
    raises_errno,
)

BOTH = pytest.mark.parametrize("profile", ["v6", "v9"])


@BOTH
def test_device_absent_when_disabled(profile: str) -> None:
    """§1.1/§2.1: with liveupdate=off the device does not exist (ENOENT)."""
    k = boot(profile, cmdline="liveupdate=off")
    with raises_errno(errno.ENOENT):
        k.open_liveupdate()
    assert k.liveupdate.enabled is False
    assert k.memfd.handler is None


@BOTH
def test_preserve_bad_fd(profile: str) -> None:
    """§3.2 step 3: a closed fd → EBADF."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("badf")
    f = k.memfd_create("closed")
    f.close()
    with raises_errno(errno.EBADF):
        s.preserve_fd(f, 1)


@BOTH
def test_duplicate_token_in_session(profile: str) -> None:
    """§3.2 step 1: a token already used in the session → EEXIST; another session may reuse it."""
    k = boot(profile)
    lu = k.open_liveupdate()
    s = lu.create_session("tokens")
    s.preserve_fd(k.memfd_create("a"), 7)
    with raises_errno(errno.EEXIST):
        s.preserve_fd(k.memfd_create("b"), 7)
    lu.create_session("tokens-2").preserve_fd(k.memfd_create("c"), 7)


def test_luo_v1_names_are_not_validated() -> None:
    """§2.4 step 2 (P0/P1): an unterminated name is cut to 63 chars, an empty one accepted."""
    k = boot("v6")
    lu = k.open_liveupdate()
    s = lu.create_session("X" * 64)
    assert s.name == "X" * 63
    assert lu.create_session("").name == ""


def test_get_session_name_absent_on_luo_v1() -> None:
    """§2.1/§2.3: GET_NAME (nr 0x43) does not exist before P3 → EINVAL (nr out of range)."""
    k = boot("v6")
    with raises_errno(errno.EINVAL):
        k.open_liveupdate().create_session("old").get_name()


def test_luo_v1_session_limit_is_enomem() -> None:
    """§2.4 step 4 (P0/P1): the 820th session → ENOMEM (not ENOSPC)."""
    k = boot("v6")
    lu = k.open_liveupdate()
    for i in range(819):
        lu.create_session(f"s{i}")
    with raises_errno(errno.ENOMEM):
        lu.create_session("one-too-many")


def test_luo_v1_file_limit_is_enospc() -> None:
    """§3.2 step 2 (P0/P1): the 129th file of a session → ENOSPC."""
    k = boot("v6")
    s = k.open_liveupdate().create_session("full")
    for i in range(128):
        create_and_preserve_empty_memfd(k, s, i)
    with raises_errno(errno.ENOSPC):
        s.preserve_fd(k.memfd_create("129"), 128)


@BOTH
def test_retrieve_fd_on_outgoing_session_is_einval(profile: str) -> None:
    """§2.3 step 4: RETRIEVE_FD/FINISH need an incoming session → EINVAL."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("out")
    with raises_errno(errno.EINVAL):
        s.retrieve_fd(1)
    with raises_errno(errno.EINVAL):
        s.finish()


@BOTH
def test_sessions_survive_device_close(profile: str) -> None:
    """§1.2: closing /dev/liveupdate does not touch sessions."""
    k = boot(profile)
    lu = k.open_liveupdate()
    s = lu.create_session("kept")
    lu.close()
    assert k.liveupdate.sessions.outgoing[0].name == b"kept"
    s.preserve_fd(k.memfd_create("x"), 1)
