"""Conformance: tools/testing/selftests/liveupdate/liveupdate.c (spec luo.md §7).

Every test runs on a luo-v1 profile (v6) and on the luo-v5 profile (v9)
unless the kernel test is P3-only.
"""

from __future__ import annotations

import errno

import pytest

from luosim.kernel.vfs import File, fd_table
from tests.luo.luo_testlib import (
    boot,
    create_and_preserve_empty_memfd,
    create_and_preserve_memfd,
    raises_errno,
)

BOTH = pytest.mark.parametrize("profile", ["v6", "v9"])


@BOTH
def test_basic_open_close(profile: str) -> None:
    """§2.1: /dev/liveupdate opens and closes."""
    k = boot(profile)
    lu = k.open_liveupdate()
    lu.close()
    assert not k.liveupdate.device_in_use


@BOTH
def test_exclusive_open(profile: str) -> None:
    """§2.1: the device is exclusive: a second open is EBUSY; after close it opens again."""
    k = boot(profile)
    lu = k.open_liveupdate()
    with raises_errno(errno.EBUSY):
        k.open_liveupdate()
    lu.close()
    k.open_liveupdate().close()


@BOTH
def test_device_absent_when_disabled(profile: str) -> None:
    """§1.1/§2.1: with liveupdate=off the device does not exist (ENOENT)."""
    k = boot(profile, cmdline="liveupdate=off")
    with raises_errno(errno.ENOENT):
        k.open_liveupdate()
    assert k.liveupdate.enabled is False
    assert k.memfd.handler is None


@BOTH
def test_create_duplicate_session(profile: str) -> None:
    """§2.4 CREATE_SESSION step 4: the same name twice → EEXIST."""
    k = boot(profile)
    lu = k.open_liveupdate()
    lu.create_session("duplicate-session-test")
    with raises_errno(errno.EEXIST):
        lu.create_session("duplicate-session-test")
    assert len(k.liveupdate.sessions.outgoing) == 1


@BOTH
def test_create_distinct_sessions(profile: str) -> None:
    """§2.4: two different names both succeed."""
    k = boot(profile)
    lu = k.open_liveupdate()
    s1 = lu.create_session("distinct-session-1")
    s2 = lu.create_session("distinct-session-2")
    assert s1.fd != s2.fd and s1.name == "distinct-session-1"
    assert [s.name for s in k.liveupdate.sessions.outgoing] == [b"distinct-session-1",
                                                                b"distinct-session-2"]


@BOTH
def test_preserve_memfd(profile: str) -> None:
    """§2.4 PRESERVE_FD, §2.5: after closing the session the memfd still has its data."""
    k = boot(profile)
    lu = k.open_liveupdate()
    s = lu.create_session("preserve-memfd-test")
    f = k.memfd_create("preserve-memfd", size=4096)
    f.write(0, b"preserved data")
    s.preserve_fd(f, 0x1234)
    assert f.frozen and f.refcount == 2
    s.close()
    assert not f.frozen and f.refcount == 1
    assert f.read(0, 14) == b"preserved data"
    assert k.kho.preserved == _luo_pages(k)  # nothing of the memfd stays preserved


def _luo_pages(k: object) -> set[tuple[int, int]]:
    """KHO blocks LUO (and KHO's kexec-metadata) keep preserved while idle."""
    lu = k.liveupdate  # type: ignore[attr-defined]
    pages = {(lu.out_blob_pa >> 12, 0), (lu.out_flb_pa >> 12, 0),
             *k.kho.own_blocks()}  # type: ignore[attr-defined]
    if lu.sessions.block_pa:
        pages.add((lu.sessions.block_pa >> 12, 4))
    return pages


@BOTH
def test_preserve_multiple_memfds(profile: str) -> None:
    """§3.2: two tokens in one session; both contents intact."""
    k = boot(profile)
    lu = k.open_liveupdate()
    s = lu.create_session("multi-memfd")
    a = k.memfd_create("a", size=4096)
    b = k.memfd_create("b", size=4096)
    a.write(0, b"memfd-one")
    b.write(0, b"memfd-two")
    s.preserve_fd(a, 1)
    s.preserve_fd(b, 2)
    assert s.files == 2
    assert a.read(0, 9) == b"memfd-one" and b.read(0, 9) == b"memfd-two"


@BOTH
def test_preserve_complex_scenario(profile: str) -> None:
    """§3.2: two sessions with a data memfd and an empty memfd each."""
    k = boot(profile)
    lu = k.open_liveupdate()
    keep: list[File] = []
    for i in (1, 2):
        s = lu.create_session(f"complex-{i}")
        d = k.memfd_create(f"data{i}", size=4096)
        d.write(0, f"complex data {i}".encode())
        e = k.memfd_create(f"empty{i}")
        s.preserve_fd(d, 0x10 * i)
        s.preserve_fd(e, 0x10 * i + 1)
        keep += [d, e]
    assert keep[0].read(0, 14) == b"complex data 1"
    assert keep[2].read(0, 14) == b"complex data 2"
    assert keep[1].read(0, 10) == b"" and keep[3].read(0, 10) == b""


@BOTH
def test_preserve_unsupported_fd(profile: str) -> None:
    """§3.2 step 5: no handler accepts the file (like /dev/null) → ENOENT; state unchanged."""
    k = boot(profile)
    lu = k.open_liveupdate()
    s = lu.create_session("unsupported-fd")
    devnull = File(k, "/dev/null")
    with raises_errno(errno.ENOENT):
        s.preserve_fd(devnull, 0x1)
    assert s.files == 0 and devnull.refcount == 1
    if profile == "v6":
        assert s.session.files.array_pa == 0  # the array allocated for it was freed again


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
def test_prevent_double_preservation(profile: str) -> None:
    """§3.2 step 6 (P2+): a memfd preserved once → EBUSY in another session and same session."""
    k = boot(profile)
    lu = k.open_liveupdate()
    s1 = lu.create_session("double-1")
    s2 = lu.create_session("double-2")
    f = k.memfd_create("once", size=4096)
    s1.preserve_fd(f, 0x1)
    with raises_errno(errno.EBUSY):
        s2.preserve_fd(f, 0x2)
    with raises_errno(errno.EBUSY):
        s1.preserve_fd(f, 0x3)
    assert s1.files == 1 and s2.files == 0
    s1.close()
    s2.preserve_fd(f, 0x2)  # free again once the first session is gone


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


def test_create_session_no_null_termination() -> None:
    """§2.4 step 2 (P3): 64 × 'X' → EINVAL."""
    k = boot("v9")
    with raises_errno(errno.EINVAL):
        k.open_liveupdate().create_session("X" * 64)


def test_create_session_empty_name() -> None:
    """§2.4 step 2 (P3): "" → EINVAL."""
    k = boot("v9")
    with raises_errno(errno.EINVAL):
        k.open_liveupdate().create_session("")


def test_luo_v1_names_are_not_validated() -> None:
    """§2.4 step 2 (P0/P1): an unterminated name is cut to 63 chars, an empty one accepted."""
    k = boot("v6")
    lu = k.open_liveupdate()
    s = lu.create_session("X" * 64)
    assert s.name == "X" * 63
    assert lu.create_session("").name == ""


def test_get_session_name() -> None:
    """§2.4 GET_NAME (P3): returns the created name."""
    k = boot("v9")
    s = k.open_liveupdate().create_session("get-name-test")
    assert s.get_name() == "get-name-test"


def test_get_session_name_max_length() -> None:
    """§2.4 GET_NAME (P3): a 63-character name round-trips."""
    k = boot("v9")
    name = "N" * 63
    assert k.open_liveupdate().create_session(name).get_name() == name


def test_get_session_name_absent_on_luo_v1() -> None:
    """§2.1/§2.3: GET_NAME (nr 0x43) does not exist before P3 → EINVAL (nr out of range)."""
    k = boot("v6")
    with raises_errno(errno.EINVAL):
        k.open_liveupdate().create_session("old").get_name()


def test_preserve_many_sessions() -> None:
    """§5.2 (P3): 2000 sessions created (51 per block, grown on demand) and closed."""
    k = boot("v9")
    lu = k.open_liveupdate()
    sessions = [lu.create_session(f"many-test-{i}") for i in range(2000)]
    assert len(k.liveupdate.sessions.blocks) == -(-2000 // 51)
    for s in sessions:
        s.close()
    assert k.liveupdate.sessions.blocks == []
    assert len(fd_table(k)) == 1  # only /dev/liveupdate remains open


def test_luo_v1_session_limit_is_enomem() -> None:
    """§2.4 step 4 (P0/P1): the 820th session → ENOMEM (not ENOSPC)."""
    k = boot("v6")
    lu = k.open_liveupdate()
    for i in range(819):
        lu.create_session(f"s{i}")
    with raises_errno(errno.ENOMEM):
        lu.create_session("one-too-many")


def test_preserve_many_files() -> None:
    """§5.2 (P3): 500 memfds in one session (63 per block), then the session is closed."""
    k = boot("v9")
    lu = k.open_liveupdate()
    s = lu.create_session("many-files")
    for i in range(500):
        create_and_preserve_memfd(k, s, i, f"file-data-{i}")
    assert s.files == 500 and len(s.session.files.blocks) == -(-500 // 63)
    before = len(k.kho.preserved)
    s.close()
    assert len(k.kho.preserved) < before - 500 * 3
    assert s.session.files.blocks == []


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
