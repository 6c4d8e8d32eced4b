"""The exit codes of every ``luosim`` command, and the guard that enforces them.

====  ============================================================
code  meaning
====  ============================================================
0     ok: the run ended ``ok``, the table or listing was produced
1     the model found the update unsafe, or it panicked or refused
      (``run``, ``demo``, ``replay`` that did not reproduce,
      ``explore --fail-on-unsafe``, ``inspect`` of a corrupt blob)
2     bad input: one line on stderr naming the place and problem
3     a bug in luosim: the traceback is saved to a file whose path
      is printed (``explore``: a run crashed or was not deterministic)
4     a host error: luosim could not read or write a file it was
      told to (``--dump-handover`` under a regular file, disk full)
====  ============================================================
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from luosim.errors import HostError
from luosim.inputs import InputError

OK, MODEL, BAD_INPUT, BUG, HOST = 0, 1, 2, 3, 4


def save_traceback(exc: BaseException) -> str:
    """Write ``exc``'s traceback to a new file; return its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fd, path = tempfile.mkstemp(prefix=f"luosim-crash-{stamp}-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"luosim {' '.join(sys.argv[1:])}\n\n")
        f.write("".join(traceback.format_exception(exc)))
    return path


def bug_message(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    try:
        where = f"traceback saved to {save_traceback(exc)}"
    except OSError as io:
        where = f"could not save the traceback: {io.strerror or io}"
    return f"internal error (a bug in luosim): {type(exc).__name__}: {first}; {where}"


def exit_code_of(exc: BaseException, stderr: TextIO | None = None) -> int:
    """Print one line for an exception that escaped a command; return its exit code."""
    err = stderr or sys.stderr
    if isinstance(exc, InputError):
        for line in str(exc).splitlines():
            print(f"luosim: {line}", file=err)
        return BAD_INPUT
    if isinstance(exc, HostError):
        print(f"luosim: {exc}", file=err)
        return HOST
    if isinstance(exc, KeyboardInterrupt):
        print("luosim: interrupted", file=err)
        return 130
    if isinstance(exc, OSError) and not hasattr(exc, "detail"):
        # a host call failed outside the model (a KernelError carries .detail)
        name = getattr(exc, "filename", None)
        print(f"luosim: {str(name) + ': ' if name else ''}{exc.strerror or exc}", file=err)
        return HOST
    print(f"luosim: {bug_message(exc)}", file=err)
    return BUG


class GuardedGroup(TyperGroup):
    """The root command group: whatever a command lets escape becomes one line
    and an exit code of the table above, under ``CliRunner`` as on a terminal."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except Exception as exc:
            raise typer.Exit(exit_code_of(exc)) from None


def guarded(fn: Callable[[], object], stderr: TextIO | None = None) -> int:
    """Run a command; map what escapes it to the exit-code table."""
    try:
        fn()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BrokenPipeError:
        return HOST
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code_of(exc, stderr)
    return OK
