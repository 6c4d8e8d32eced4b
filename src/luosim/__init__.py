"""luosim: an executable, byte-exact model of Linux Live Update.

Public surface (../shared/DESIGN.md "Public Python API")::

    from luosim import Machine, KernelPanic
    m = Machine.from_topology({})
    k = m.boot("v6")
"""

from luosim.abi.errors import DecodeError
from luosim.errors import KernelError, KernelPanic
from luosim.hw.machine import Machine

__all__ = ["DecodeError", "KernelError", "KernelPanic", "Machine"]
__version__ = "0.1.0"
