"""luosim: an executable, byte-exact model of Linux Live Update.

Public surface (docs/architecture.md "Public Python API")::

    from luosim import Machine, KernelPanic
    m = Machine.from_topology({})
    k = m.boot("v6")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from luosim.abi.errors import DecodeError
    from luosim.errors import KernelError, KernelPanic
    from luosim.hw.machine import Machine

__all__ = ["DecodeError", "KernelError", "KernelPanic", "Machine"]
__version__ = "0.1.0"

# loaded on first use (PEP 562), so that `luosim --help` does not import the model
_LAZY = {"DecodeError": "luosim.abi.errors", "KernelError": "luosim.errors",
         "KernelPanic": "luosim.errors", "Machine": "luosim.hw.machine"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'luosim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
