"""Error types shared by every layer.

Kernel functions that return ``-Exxx`` raise :class:`KernelError` with the
same errno; the uAPI lets it through, so userspace sees an ``OSError`` whose
``.errno`` is the kernel's.  A ``panic()`` is :class:`KernelPanic`.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any


class KernelError(OSError):
    """A negative errno returned by a kernel function (``return -EXXX``)."""

    def __init__(self, err: int, detail: str = "") -> None:
        super().__init__(err, os.strerror(err) if not detail else f"{os.strerror(err)}: {detail}")
        self.detail = detail

    @property
    def name(self) -> str:
        return _errno.errorcode.get(self.errno or 0, str(self.errno))


def errname(err: int) -> str:
    """``errno.EBUSY`` -> ``"EBUSY"``."""
    return _errno.errorcode.get(err, str(err))


class KernelPanic(Exception):
    """``panic(msg)``: the kernel stops; ``.kernel`` is the kernel that panicked.

    ``kernel`` is typed ``Any``: errors.py is the bottom layer and imports
    nothing of kernel/ (kernel.kernel imports it).
    """

    def __init__(self, message: str, kernel: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.kernel = kernel


class KernelBug(KernelPanic):
    """``BUG()`` / ``BUG_ON()``: modelled as a panic with a ``BUG:`` prefix."""

    def __init__(self, message: str, kernel: Any = None) -> None:
        super().__init__(f"BUG: {message}", kernel)


class DeadKernelError(RuntimeError):
    """A Python handle of a kernel that was replaced by kexec was used.

    On hardware the old kernel's objects are gone; using one is a modelling
    bug in the caller, never a kernel behaviour.
    """


def errno_value(name: str) -> int:
    """``"EBUSY"`` -> ``errno.EBUSY``; raises ``ValueError`` for unknown names."""
    val: Any = getattr(_errno, name.upper(), None)
    if not isinstance(val, int):
        raise ValueError(f"unknown errno name {name!r}")
    return val



class HostError(Exception):
    """The host failed luosim (I/O of an output file, ...): exit code 4.

    Deliberately not an ``OSError``: the runner turns a modelled kernel's
    ``OSError`` into the outcome ``refused``, and a full disk on the host is
    not the model refusing anything.
    """

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err
