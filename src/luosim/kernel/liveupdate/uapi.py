"""The /dev/liveupdate uAPI: models kernel/liveupdate/luo_core.c + luo_session.c ioctls.

:class:`LiveupdateDevice` is an open /dev/liveupdate, :class:`Session` a
session fd.  Both accept raw ioctls (``ioctl(cmd, arg)`` with ``arg`` a
``bytearray`` standing for the user memory the argument pointer addresses)
decoded through :mod:`luosim.abi.luo` with the dispatch order of spec
luo.md §2.3, and offer Python conveniences (``create_session``,
``preserve_fd``, ...) that go through exactly the same ioctl path.  Errors
are :class:`~luosim.errors.KernelError` (an ``OSError``) with the errno
userspace would see (ENOIOCTLCMD is reported as ENOTTY).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Protocol, Self, TypeVar

from luosim.abi.errors import DecodeError
from luosim.abi.luo import (
    IOCTLS,
    LIVEUPDATE_CMD_BASE,
    LIVEUPDATE_CMD_SESSION_BASE,
    LIVEUPDATE_IOCTL_CREATE_SESSION,
    LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
    LIVEUPDATE_SESSION_FINISH,
    LIVEUPDATE_SESSION_GET_NAME,
    LIVEUPDATE_SESSION_NAME_LENGTH,
    LIVEUPDATE_SESSION_PRESERVE_FD,
    LIVEUPDATE_SESSION_RETRIEVE_FD,
    IoctlDesc,
    LiveupdateIoctlCreateSession,
    LiveupdateIoctlRetrieveSession,
    LiveupdateSessionFinish,
    LiveupdateSessionGetName,
    LiveupdateSessionPreserveFd,
    LiveupdateSessionRetrieveFd,
)
from luosim.errors import KernelError
from luosim.kernel.liveupdate.session import LuoSession, display_name
from luosim.kernel.vfs import File, check_alive, fd_table

if TYPE_CHECKING:
    from luosim.kernel.liveupdate.core import LuoCore

_DEVICE_TABLE: tuple[IoctlDesc, ...] = IOCTLS[0:2]
_SESSION_TABLE_V1: tuple[IoctlDesc, ...] = IOCTLS[2:5]
_SESSION_TABLE_V5: tuple[IoctlDesc, ...] = IOCTLS[2:6]
#: The largest struct an op may write back (GET_NAME writes 72 bytes, spec §2.3 quirk).
_GET_NAME_OUT = LiveupdateSessionGetName.SIZE

Handler = Callable[[bytes], bytes]


def _name_bytes(name: str | bytes) -> bytes:
    raw = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    if len(raw) > LIVEUPDATE_SESSION_NAME_LENGTH:
        raise ValueError(f"session name of {len(raw)} bytes does not fit u8[64]")
    return raw


def dispatch(table: tuple[IoctlDesc, ...], base: int, cmd: int, arg: bytearray,
             ops: dict[int, Handler], kind_check: Callable[[IoctlDesc], None] | None = None
             ) -> int:
    """The common ioctl dispatch of spec luo.md §2.3 (luo_ioctl()/luo_session_ioctl()).

    1. nr outside the table → EINVAL; 2. read the u32 ``size`` → EFAULT;
    3. command word differs from the table's → ENOTTY; 4. session kind
    check; 5. size < min_size → EINVAL; 6. extensible-struct copy-in
    (E2BIG for non-zero extra bytes, EFAULT beyond user memory); 7. the op;
    8. copy back ``min(size, written)`` bytes.
    """
    nr = cmd & 0xFF
    if nr < base or nr - base >= len(table):
        raise KernelError(errno.EINVAL, f"ioctl nr {nr:#x} out of range")
    desc = table[nr - base]
    if len(arg) < 4:
        raise KernelError(errno.EFAULT, "cannot read the argument's size")
    (usize,) = struct.unpack_from("<I", arg, 0)
    if cmd != desc.cmd:
        raise KernelError(errno.ENOTTY, f"ioctl {cmd:#x} is not {desc.name} ({desc.cmd:#x})")
    if kind_check is not None:
        kind_check(desc)
    if usize < desc.min_size:
        raise KernelError(errno.EINVAL, f"{desc.name}: size {usize} < {desc.min_size}")
    if usize > len(arg):
        raise KernelError(errno.EFAULT, f"{desc.name}: size {usize} beyond user memory")
    ksize = desc.kernel_size
    if usize > ksize and any(arg[ksize:usize]):
        raise KernelError(errno.E2BIG, f"{desc.name}: non-zero bytes beyond {ksize}")
    kbuf = bytes(arg[:min(usize, ksize)]).ljust(ksize, b"\0")
    out = ops[desc.cmd](kbuf)
    n = min(usize, len(out))
    arg[:n] = out[:n]
    return 0


class _Codec(Protocol):
    SIZE: ClassVar[int]

    @classmethod
    def decode(cls, buf: bytes, offset: int = 0, what: str = "") -> Self: ...


_T = TypeVar("_T", bound=_Codec)


def _decode(cls: type[_T], kbuf: bytes) -> _T:
    """Decode the kernel copy of an ioctl struct (zero-extended to the struct size)."""
    try:
        return cls.decode(kbuf.ljust(cls.SIZE, b"\0"))
    except DecodeError as exc:  # pragma: no cover - lengths are fixed above
        raise KernelError(errno.EINVAL, str(exc)) from None


class LiveupdateDevice(File):
    """An open /dev/liveupdate (exclusive; closing it only releases exclusivity)."""

    def __init__(self, core: LuoCore) -> None:
        super().__init__(core.kernel, "/dev/liveupdate")
        self.core = core
        self._ops: dict[int, Handler] = {
            LIVEUPDATE_IOCTL_CREATE_SESSION: self._create_session,
            LIVEUPDATE_IOCTL_RETRIEVE_SESSION: self._retrieve_session,
        }

    def release(self) -> None:
        """Models luo_release(): clears the in-use flag only."""
        self.core.device_in_use = False

    # ------------------------------------------------------------------ raw ioctls
    def ioctl(self, cmd: int, arg: bytearray) -> int:
        """``ioctl(fd, cmd, arg)`` on /dev/liveupdate."""
        self.check_open()
        return dispatch(_DEVICE_TABLE, LIVEUPDATE_CMD_BASE, cmd, arg, self._ops)

    def _create_session(self, kbuf: bytes) -> bytes:
        """Models luo_ioctl_create_session()."""
        a = _decode(LiveupdateIoctlCreateSession, kbuf)
        sess = self.core.sessions.create(a.name)
        try:
            fd_file = Session(self.core, sess)
        except KernelError:
            self.core.sessions.destroy_outgoing(sess)
            raise
        return LiveupdateIoctlCreateSession(a.size, fd_file.fd, a.name).encode()

    def _retrieve_session(self, kbuf: bytes) -> bytes:
        """Models luo_ioctl_retrieve_session()."""
        a = _decode(LiveupdateIoctlRetrieveSession, kbuf)
        sess = self.core.sessions.retrieve(a.name)
        fd_file = Session(self.core, sess)
        sess.retrieved = True
        return LiveupdateIoctlRetrieveSession(a.size, fd_file.fd, a.name).encode()

    # ------------------------------------------------------------------ Python API
    def create_session(self, name: str | bytes) -> Session:
        """LIVEUPDATE_IOCTL_CREATE_SESSION → the new session's fd."""
        arg = bytearray(LiveupdateIoctlCreateSession(72, 0, _name_bytes(name)).encode())
        self.ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION, arg)
        return self._session_of(LiveupdateIoctlCreateSession.decode(bytes(arg)).fd)

    def retrieve_session(self, name: str | bytes) -> Session:
        """LIVEUPDATE_IOCTL_RETRIEVE_SESSION → the incoming session's fd."""
        arg = bytearray(LiveupdateIoctlRetrieveSession(72, 0, _name_bytes(name)).encode())
        self.ioctl(LIVEUPDATE_IOCTL_RETRIEVE_SESSION, arg)
        return self._session_of(LiveupdateIoctlRetrieveSession.decode(bytes(arg)).fd)

    def _session_of(self, fd: int) -> Session:
        f = fd_table(self.kernel).lookup(fd)
        assert isinstance(f, Session)
        return f


class Session(File):
    """A session fd ("[luo_session] <name>"); closing the last fd releases the session."""

    def __init__(self, core: LuoCore, sess: LuoSession) -> None:
        # the anon inode is "[luo_session] <name>"; ``name`` is the session's name
        super().__init__(core.kernel, display_name(sess.name))
        self.core = core
        self.session = sess
        sess.fd_file = self
        table = _SESSION_TABLE_V5 if core.v5 else _SESSION_TABLE_V1
        self._table = table
        self._ops: dict[int, Handler] = {
            LIVEUPDATE_SESSION_PRESERVE_FD: self._preserve_fd,
            LIVEUPDATE_SESSION_RETRIEVE_FD: self._retrieve_fd,
            LIVEUPDATE_SESSION_FINISH: self._finish,
            LIVEUPDATE_SESSION_GET_NAME: self._get_name,
        }

    @property
    def name_bytes(self) -> bytes:
        return self.session.name

    @property
    def incoming(self) -> bool:
        return self.session.incoming

    def release(self) -> None:
        """Models luo_session_release(): outgoing → unpreserve all; incoming → finish."""
        if self.session.incoming:
            self.core.sessions.release_incoming(self.session)
        else:
            self.core.sessions.destroy_outgoing(self.session)

    # ------------------------------------------------------------------ raw ioctls
    def _kind_check(self, desc: IoctlDesc) -> None:
        """Per-ioctl session kind (P3, and the stable fix on luo-v1 profiles)."""
        if desc.cmd == LIVEUPDATE_SESSION_PRESERVE_FD and self.session.incoming:
            raise KernelError(errno.EINVAL, "PRESERVE_FD needs an outgoing session")
        if desc.cmd in (LIVEUPDATE_SESSION_RETRIEVE_FD, LIVEUPDATE_SESSION_FINISH) \
                and not self.session.incoming:
            raise KernelError(errno.EINVAL, f"{desc.name} needs an incoming session")

    def ioctl(self, cmd: int, arg: bytearray) -> int:
        """``ioctl(session_fd, cmd, arg)``."""
        self.check_open()
        return dispatch(self._table, LIVEUPDATE_CMD_SESSION_BASE, cmd, arg, self._ops,
                        self._kind_check)

    def _preserve_fd(self, kbuf: bytes) -> bytes:
        """Models luo_session_preserve_fd()."""
        a = _decode(LiveupdateSessionPreserveFd, kbuf)
        self.session.files.preserve(a.token, a.fd)
        return a.encode()

    def _retrieve_fd(self, kbuf: bytes) -> bytes:
        """Models luo_session_retrieve_fd(): a new fd to the retrieved file."""
        a = _decode(LiveupdateSessionRetrieveFd, kbuf)
        file = self.session.files.retrieve(a.token)
        fd = file.install_fd()
        return LiveupdateSessionRetrieveFd(a.size, fd, a.token).encode()

    def _finish(self, kbuf: bytes) -> bytes:
        """Models luo_session_finish() (``reserved`` is not checked)."""
        a = _decode(LiveupdateSessionFinish, kbuf)
        self.core.sessions.finish(self.session)
        return a.encode()

    def _get_name(self, kbuf: bytes) -> bytes:
        """Models luo_session_get_name() (P3): reserved must be 0."""
        a = _decode(LiveupdateSessionGetName, kbuf)
        if a.reserved:
            raise KernelError(errno.EINVAL, "get_name: reserved is not 0")
        return LiveupdateSessionGetName(a.size, 0, self.session.name).encode()

    # ------------------------------------------------------------------ Python API
    def preserve_fd(self, file: File, token: int) -> None:
        """LIVEUPDATE_SESSION_PRESERVE_FD of ``file``'s fd (EBADF if it has none here)."""
        fd = file.fd if file.kernel is self.kernel else -1
        arg = bytearray(LiveupdateSessionPreserveFd(16, fd, token).encode())
        self.ioctl(LIVEUPDATE_SESSION_PRESERVE_FD, arg)

    def retrieve_fd(self, token: int) -> File:
        """LIVEUPDATE_SESSION_RETRIEVE_FD → the file (a new fd to it)."""
        arg = bytearray(LiveupdateSessionRetrieveFd(16, 0, token).encode())
        self.ioctl(LIVEUPDATE_SESSION_RETRIEVE_FD, arg)
        fd = LiveupdateSessionRetrieveFd.decode(bytes(arg)).fd
        return fd_table(self.kernel).lookup(fd)

    def finish(self) -> None:
        """LIVEUPDATE_SESSION_FINISH."""
        self.ioctl(LIVEUPDATE_SESSION_FINISH, bytearray(LiveupdateSessionFinish().encode()))

    def get_name(self) -> str:
        """LIVEUPDATE_SESSION_GET_NAME (luo-v5 profiles; EINVAL elsewhere: nr out of range)."""
        arg = bytearray(LiveupdateSessionGetName().encode())
        self.ioctl(LIVEUPDATE_SESSION_GET_NAME, arg)
        out = LiveupdateSessionGetName.decode(bytes(arg))
        return out.name[:out.name_len].decode("utf-8", "backslashreplace")

    @property
    def files(self) -> int:
        """Number of files the session currently holds."""
        check_alive(self.kernel)
        return len(self.session.files)
