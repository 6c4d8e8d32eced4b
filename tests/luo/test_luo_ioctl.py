"""Raw ioctl structs and the common dispatch order (spec luo.md §2.1-§2.3)."""

from __future__ import annotations

import errno
import struct

import pytest

from luosim.abi.luo import (
    LIVEUPDATE_IOCTL_CREATE_SESSION,
    LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
    LIVEUPDATE_SESSION_FINISH,
    LIVEUPDATE_SESSION_GET_NAME,
    LIVEUPDATE_SESSION_PRESERVE_FD,
    LIVEUPDATE_SESSION_RETRIEVE_FD,
)
from luosim.kernel.vfs import fd_table
from tests.luo.luo_testlib import boot, raises_errno

BOTH = pytest.mark.parametrize("profile", ["v6", "v9"])


def create_arg(name: bytes, size: int = 72, total: int | None = None) -> bytearray:
    buf = bytearray(struct.pack("<Ii64s", size, -1, name))
    if total is not None:
        buf = buf.ljust(total, b"\0")
    return buf


def test_ioctl_numbers() -> None:
    """§2.1: _IO(0xBA, nr): no size or direction bits."""
    assert (LIVEUPDATE_IOCTL_CREATE_SESSION, LIVEUPDATE_IOCTL_RETRIEVE_SESSION) == (0xBA00, 0xBA01)
    assert (LIVEUPDATE_SESSION_PRESERVE_FD, LIVEUPDATE_SESSION_RETRIEVE_FD,
            LIVEUPDATE_SESSION_FINISH, LIVEUPDATE_SESSION_GET_NAME) == (0xBA40, 0xBA41, 0xBA42,
                                                                        0xBA43)


@BOTH
def test_create_session_raw(profile: str) -> None:
    """§2.2: create_session writes the new fd at offset 4, the rest is unchanged."""
    k = boot(profile)
    lu = k.open_liveupdate()
    arg = create_arg(b"raw-session")
    assert lu.ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION, arg) == 0
    size, fd, name = struct.unpack("<Ii64s", arg)
    assert size == 72 and name.rstrip(b"\0") == b"raw-session"
    assert fd_table(k).lookup(fd).name == "raw-session"


@BOTH
def test_device_nr_out_of_range_einval(profile: str) -> None:
    """§2.3 step 1: device nr >= 2 → EINVAL, before the argument is read."""
    lu = boot(profile).open_liveupdate()
    with raises_errno(errno.EINVAL):
        lu.ioctl(0xBA02, bytearray())  # no user memory at all: still EINVAL
    with raises_errno(errno.EINVAL):
        lu.ioctl(0xBA40, create_arg(b"x"))  # a session command on the device fd


@BOTH
def test_efault_on_size_read(profile: str) -> None:
    """§2.3 step 2: the leading u32 cannot be read → EFAULT."""
    lu = boot(profile).open_liveupdate()
    with raises_errno(errno.EFAULT):
        lu.ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION, bytearray(3))


@BOTH
def test_enotty_on_wrong_command_word(profile: str) -> None:
    """§2.3 step 3: right nr, other type/size/dir bits → ENOIOCTLCMD, ENOTTY in userspace."""
    lu = boot(profile).open_liveupdate()
    with raises_errno(errno.ENOTTY):
        lu.ioctl(0xBB00, create_arg(b"x"))
    with raises_errno(errno.ENOTTY):
        lu.ioctl((72 << 16) | 0xBA00, create_arg(b"x"))  # as if declared with _IOW


@BOTH
def test_size_below_min_einval(profile: str) -> None:
    """§2.3 step 5: size < min_size → EINVAL (72 for create, 16 for preserve)."""
    k = boot(profile)
    lu = k.open_liveupdate()
    with raises_errno(errno.EINVAL):
        lu.ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION, create_arg(b"x", size=71))
    s = lu.create_session("s")
    with raises_errno(errno.EINVAL):
        s.ioctl(LIVEUPDATE_SESSION_PRESERVE_FD, bytearray(struct.pack("<IiQ", 8, 0, 1)))
    assert k.liveupdate.sessions.outgoing[0].files.files == []


@BOTH
def test_e2big_and_zero_extension(profile: str) -> None:
    """§2.3 step 6: a longer struct needs zero extra bytes (else E2BIG); zeros are fine."""
    k = boot(profile)
    lu = k.open_liveupdate()
    arg = create_arg(b"big", size=80, total=80)
    arg[76] = 1
    with raises_errno(errno.E2BIG):
        lu.ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION, arg)
    assert k.liveupdate.sessions.outgoing == []
    arg[76] = 0
    lu.ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION, arg)
    assert k.liveupdate.sessions.outgoing[0].name == b"big"
    with raises_errno(errno.EFAULT):  # size claims more than the user memory holds
        lu.ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION, create_arg(b"z", size=100))


@BOTH
def test_finish_size_and_reserved(profile: str) -> None:
    """§2.2/§2.4: finish needs 8 bytes; ``reserved`` is not checked."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("f")
    k2 = k.kexec(profile)
    r = k2.open_liveupdate().retrieve_session("f")
    with raises_errno(errno.EINVAL):
        r.ioctl(LIVEUPDATE_SESSION_FINISH, bytearray(struct.pack("<II", 4, 0)))
    assert r.ioctl(LIVEUPDATE_SESSION_FINISH, bytearray(struct.pack("<II", 8, 0xFFFF))) == 0
    assert s.closed is False  # the old kernel's object is untouched


def test_session_nr_out_of_range() -> None:
    """§2.3 step 1: session nr >= 0x40 + number of ops → EINVAL (GET_NAME absent on v6)."""
    s6 = boot("v6").open_liveupdate().create_session("a")
    with raises_errno(errno.EINVAL):
        s6.ioctl(LIVEUPDATE_SESSION_GET_NAME, bytearray(72))
    s9 = boot("v9").open_liveupdate().create_session("a")
    with raises_errno(errno.EINVAL):
        s9.ioctl(0xBA44, bytearray(72))
    with raises_errno(errno.EINVAL):
        s9.ioctl(0xBA3F, bytearray(72))


def test_get_name_quirks() -> None:
    """§2.3 GET_NAME quirk: min/kernel size 16; bytes 16..71 must be zero on input (E2BIG);
    reserved ≠ 0 → EINVAL; output copies min(size, 72)."""
    s = boot("v9").open_liveupdate().create_session("quirk-name")
    arg = bytearray(struct.pack("<II64s", 72, 0, bytes(8) + b"garbage"))  # at 16..22
    with raises_errno(errno.E2BIG):
        s.ioctl(LIVEUPDATE_SESSION_GET_NAME, arg)
    arg = bytearray(struct.pack("<II64s", 72, 1, b""))
    with raises_errno(errno.EINVAL):
        s.ioctl(LIVEUPDATE_SESSION_GET_NAME, arg)
    arg = bytearray(struct.pack("<II64s", 72, 0, b""))
    s.ioctl(LIVEUPDATE_SESSION_GET_NAME, arg)
    assert arg[8:18] == b"quirk-name"
    arg = bytearray(struct.pack("<II", 16, 0)) + bytearray(8) + bytearray(b"\xee" * 48)
    s.ioctl(LIVEUPDATE_SESSION_GET_NAME, arg)
    assert arg[8:16] == b"quirk-na" and arg[16:] == b"\xee" * 48  # only 16 bytes copied out
    with raises_errno(errno.EINVAL):
        s.ioctl(LIVEUPDATE_SESSION_GET_NAME, bytearray(struct.pack("<II", 8, 0)))


@BOTH
def test_preserve_and_retrieve_fd_raw(profile: str) -> None:
    """§2.2: preserve_fd {size, fd, token}; retrieve_fd writes the new fd at offset 4."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("raw")
    f = k.memfd_create("raw", size=4096)
    f.write(0, b"raw ioctl")
    s.ioctl(LIVEUPDATE_SESSION_PRESERVE_FD, bytearray(struct.pack("<IiQ", 16, f.fd, 2**64 - 1)))
    k2 = k.kexec(profile)
    lu2 = k2.open_liveupdate()
    arg = create_arg(b"raw")
    lu2.ioctl(LIVEUPDATE_IOCTL_RETRIEVE_SESSION, arg)
    sfd = struct.unpack_from("<i", arg, 4)[0]
    sess = fd_table(k2).lookup(sfd)
    rarg = bytearray(struct.pack("<IiQ", 16, -1, 2**64 - 1))
    sess.ioctl(LIVEUPDATE_SESSION_RETRIEVE_FD, rarg)  # type: ignore[attr-defined]
    fd = struct.unpack_from("<i", rarg, 4)[0]
    rarg2 = bytearray(struct.pack("<IiQ", 16, -1, 2**64 - 1))
    sess.ioctl(LIVEUPDATE_SESSION_RETRIEVE_FD, rarg2)  # type: ignore[attr-defined]
    fd2 = struct.unpack_from("<i", rarg2, 4)[0]
    f1 = fd_table(k2).lookup(fd)
    assert fd != fd2 and fd_table(k2).lookup(fd2) is f1  # a new fd to the same file
    assert f1.read(0, 9) == b"raw ioctl"  # type: ignore[attr-defined]
    with raises_errno(errno.EINVAL):  # PRESERVE_FD on an incoming session
        sess.ioctl(LIVEUPDATE_SESSION_PRESERVE_FD,  # type: ignore[attr-defined]
                   bytearray(struct.pack("<IiQ", 16, fd, 5)))
    with raises_errno(errno.ENOENT):
        sess.ioctl(LIVEUPDATE_SESSION_RETRIEVE_FD,  # type: ignore[attr-defined]
                   bytearray(struct.pack("<IiQ", 16, -1, 1)))


@BOTH
def test_retrieve_session_errors(profile: str) -> None:
    """§2.4 RETRIEVE_SESSION: unknown name → ENOENT; already retrieved → EINVAL."""
    k = boot(profile)
    k.open_liveupdate().create_session("once")
    lu2 = k.kexec(profile).open_liveupdate()
    with raises_errno(errno.ENOENT):
        lu2.retrieve_session("nope")
    lu2.retrieve_session("once")
    with raises_errno(errno.EINVAL):
        lu2.retrieve_session("once")
