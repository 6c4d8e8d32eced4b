"""A minimal VFS: ``struct file`` with reference counting, and fd tables.

Models the parts of fs/file_table.c and fs/file.c that live update relies
on: a :class:`File` is a kernel ``struct file`` whose lifetime is a
reference count (``get_file()``/``fput()``); the last ``fput()`` runs the
file's ``release`` (:meth:`File.release`).  Userspace holds files through
file descriptors: every fd is one reference.  A Python caller holding a
:class:`File` object holds "an fd to it"; :meth:`File.close` is ``close(fd)``.

One process (the live-update agent) is modelled, so there is one fd table
per kernel (:func:`fd_table`).  Retrieving the same preserved file twice
gives two fds to the same ``struct file`` (the same Python object); each
:meth:`File.close` closes one of them.
"""

from __future__ import annotations

import errno
import itertools
from typing import TYPE_CHECKING

from luosim.errors import DeadKernelError, KernelError

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel

#: First fd handed out (0-2 are stdin/stdout/stderr).
FIRST_FD = 3
#: RLIMIT_NOFILE of the agent (the selftests raise it for 2000 sessions).
DEFAULT_NOFILE = 1 << 20


def check_alive(kernel: Kernel) -> None:
    """Refuse to use a kernel that kexec'ed or panicked (a caller bug)."""
    if not kernel.alive:
        raise DeadKernelError(f"kernel {kernel.name} is no longer running")


class FdTable:
    """The agent's fd table in one kernel (``struct files_struct``)."""

    def __init__(self, limit: int = DEFAULT_NOFILE) -> None:
        self.limit = limit
        self._fds: dict[int, File] = {}
        self._next_hint = FIRST_FD

    def install(self, file: File) -> int:
        """``get_unused_fd_flags()`` + ``fd_install()``: lowest free fd; EMFILE when full."""
        if len(self._fds) >= self.limit:
            raise KernelError(errno.EMFILE, "too many open files")
        fd = self._next_hint
        while fd in self._fds:
            fd += 1
        self._fds[fd] = file
        self._next_hint = fd + 1
        return fd

    def lookup(self, fd: int) -> File:
        """``fget()`` without the reference: EBADF for a closed or unknown fd."""
        f = self._fds.get(fd)
        if f is None:
            raise KernelError(errno.EBADF, f"fd {fd} is not open")
        return f

    def remove(self, fd: int) -> File:
        f = self.lookup(fd)
        del self._fds[fd]
        self._next_hint = min(self._next_hint, fd)
        return f

    def __len__(self) -> int:
        return len(self._fds)

    def __contains__(self, fd: object) -> bool:
        return fd in self._fds


def fd_table(kernel: Kernel) -> FdTable:
    """The agent's fd table in ``kernel`` (created on first use).

    It lives on the kernel object: a module-level table keyed weakly by kernel
    would keep every kernel alive through its own files (value -> key).
    """
    table: FdTable | None = getattr(kernel, "_fd_table", None)
    if table is None:
        table = FdTable()
        kernel._fd_table = table  # type: ignore[attr-defined]
    return table


def fget(kernel: Kernel, fd: int) -> File:
    """``fget(fd)``: the file with one more reference; EBADF if not open."""
    return fd_table(kernel).lookup(fd).get()


class File:
    """A kernel ``struct file``.

    ``refcount`` counts every holder: userspace fds and kernel references
    (e.g. LUO's reference on a preserved or retrieved file).  A file made
    with ``install_fd=True`` starts with one fd holding its only reference;
    ``install_fd=False`` makes a file whose first reference belongs to the
    creator (the kernel), as ``anon_inode_getfile()`` returns it.
    """

    _ids = itertools.count(1)

    def __init__(self, kernel: Kernel, name: str, *, install_fd: bool = True) -> None:
        self.kernel = kernel
        self.name = name
        self.refcount = 1
        self.released = False
        self.file_id = next(File._ids)
        self.fds: list[int] = []
        if install_fd:
            self.fds.append(fd_table(kernel).install(self))

    # ------------------------------------------------------------------ references
    def get(self) -> File:
        """``get_file()``."""
        if self.released:
            raise RuntimeError(f"get_file() on released file {self!r}")
        self.refcount += 1
        return self

    def put(self) -> None:
        """``fput()``: the last reference runs :meth:`release`."""
        if self.refcount <= 0:
            raise RuntimeError(f"fput() underflow on {self!r}")
        self.refcount -= 1
        if self.refcount == 0:
            self.released = True
            self.release()

    def release(self) -> None:
        """``file_operations.release``: override in subclasses."""

    def get_id(self) -> object:
        """Identity used by LUO when the handler has no ``get_id`` op (the file itself)."""
        return self

    # ------------------------------------------------------------------ fds
    @property
    def fd(self) -> int:
        """The most recently installed open fd, -1 when none is open."""
        return self.fds[-1] if self.fds else -1

    @property
    def closed(self) -> bool:
        """True when userspace has no open fd to this file."""
        return not self.fds

    def install_fd(self) -> int:
        """Take a new reference and install it as a new fd (``fd_install()``)."""
        check_alive(self.kernel)
        self.get()
        try:
            fd = fd_table(self.kernel).install(self)
        except KernelError:
            self.put()
            raise
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        """``close(fd)``: drop the newest open fd's reference; EBADF if none is open."""
        check_alive(self.kernel)
        if not self.fds:
            raise KernelError(errno.EBADF, f"{self.name}: no open fd")
        fd = self.fds.pop()
        fd_table(self.kernel).remove(fd)
        self.put()

    def check_open(self) -> None:
        """Userspace file operations need a live kernel and an open fd (else EBADF)."""
        check_alive(self.kernel)
        if not self.fds:
            raise KernelError(errno.EBADF, f"{self.name}: fd is closed")

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r} id={self.file_id} fds={self.fds} "
                f"ref={self.refcount}>")
