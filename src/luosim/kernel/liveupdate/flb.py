"""File-Lifecycle-Bound objects: models kernel/liveupdate/luo_flb.c.

An :class:`Flb` (``struct liveupdate_flb``) is a global object whose
lifetime follows the files of the handlers it is linked to (spec luo.md §4,
pci.md §1): the PCI core and the IOMMU core each own one.  Subclass it and
override ``preserve``, ``unpreserve``, ``retrieve`` and ``finish`` (all four
required); errors are raised as :class:`~luosim.errors.KernelError`.

Outgoing (old kernel): the first preserved file of any linked handler runs
``preserve`` (which sets ``args.data``, an opaque u64 written into the
hand-over, and ``args.obj``, a live object); the last unpreserved file runs
``unpreserve``.  Incoming (new kernel): ``flb_get_incoming`` finds the
handed-over record by compatible (the FLB need not be registered yet: the
PCI core looks its FLB up during enumeration, before vfio-pci registers),
seeds the reference count with the number of dependent files of the old
kernel, runs ``retrieve`` once and adds a reference; every file finish and
every ``flb_put_incoming`` drops one; at zero ``finish`` runs and later gets
return ENODATA.

All state lives in the kernel's :class:`FlbManager`, never in the
:class:`Flb` object, so one Python FLB object may serve several kernels.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from luosim.abi.luo import LUO_FLB_MAX, LuoFlbSer
from luosim.errors import KernelError
from luosim.faults import point
from luosim.kernel.liveupdate.file import check_compatible

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel
    from luosim.kernel.liveupdate.core import LuoCore
    from luosim.kernel.liveupdate.file import FileHandler

FLB_OPS = ("preserve", "unpreserve", "retrieve", "finish")
FLB_FAULT_EFFECTS: dict[str, tuple[str, ...]] = {
    "preserve": ("ENOMEM",),
    "retrieve": ("ENOMEM", "EINVAL", "EIO"),
}


def flb_fault_point(compatible: str, op: str) -> str:
    """Name of the fault point LUO checks right before an FLB op: ``luo.flb.<compat>.<op>``."""
    return f"luo.flb.{compatible}.{op}"


@dataclass
class FlbOpArgs:
    """Models ``struct liveupdate_flb_op_args``.

    ``data``: preserve sets it (u64 written into the hand-over); unpreserve
    and retrieve read it.  ``obj``: preserve/retrieve set it; unpreserve and
    finish read it.  ``kernel`` is a convenience of the model.
    """

    flb: Flb
    data: int = 0
    obj: Any = None
    kernel: Kernel | None = None


class Flb:
    """Models ``struct liveupdate_flb`` + ``liveupdate_flb_ops`` (override all four ops)."""

    def __init__(self, compatible: str) -> None:
        self.compatible = compatible

    def preserve(self, args: FlbOpArgs) -> None:
        """First dependent file preserved: set ``args.data`` and ``args.obj``."""
        raise NotImplementedError

    def unpreserve(self, args: FlbOpArgs) -> None:
        """Last dependent file unpreserved: undo preserve (``args.data``/``obj`` given)."""
        raise NotImplementedError

    def retrieve(self, args: FlbOpArgs) -> None:
        """New kernel, first use: rebuild ``args.obj`` from ``args.data``."""
        raise NotImplementedError

    def finish(self, args: FlbOpArgs) -> None:
        """New kernel, last reference dropped: release ``args.obj``."""
        raise NotImplementedError

    def has_op(self, name: str) -> bool:
        if name in vars(self):
            return vars(self)[name] is not None
        return getattr(type(self), name, None) is not getattr(Flb, name, None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.compatible!r}>"


@dataclass
class _Outgoing:
    count: int = 0
    data: int = 0
    obj: Any = None


@dataclass
class _Incoming:
    seeded: bool = False
    count: int = 0
    data: int = 0
    obj: Any = None
    retrieved: bool = False
    finished: bool = False
    error: int = 0  # remembered retrieve failure (P4, luo-v5 profiles)


class FlbManager:
    """One kernel's FLB state: global list, handler links, outgoing and incoming."""

    def __init__(self, core: LuoCore) -> None:
        self.core = core
        self.kernel = core.kernel
        self.registered: list[Flb] = []  # global order = serialization order
        self.users: dict[Flb, int] = {}
        self.links: dict[FileHandler, list[Flb]] = {}
        self.out: dict[Flb, _Outgoing] = {}
        self.incoming_records: list[LuoFlbSer] | None = None  # None: no incoming FLB area
        self.inc: dict[str, _Incoming] = {}

    # ------------------------------------------------------------------ register
    def register(self, fh: FileHandler, flb: Flb) -> None:
        """Models liveupdate_register_flb() (spec luo.md §4.2, P2+ checks in order).

        EOPNOTSUPP (disabled); EINVAL (an op missing, bad compatible, handler
        not registered); EEXIST (already linked to this handler); first link
        only: ENOSPC (63 FLBs registered), EEXIST (another FLB object with the
        same compatible).  Declares ``luo.flb.<compatible>.{preserve,retrieve}``.
        """
        if not self.core.enabled:
            raise KernelError(errno.EOPNOTSUPP, "live update is disabled")
        missing = [op for op in FLB_OPS if not flb.has_op(op)]
        if missing:
            self.kernel.warn("luo", f"WARNING: FLB {flb.compatible!r} lacks ops {missing}")
            raise KernelError(errno.EINVAL, f"FLB {flb.compatible!r} lacks {missing}")
        check_compatible(flb.compatible)
        if not self.core.files.is_registered(fh):
            raise KernelError(errno.EINVAL, f"handler {fh.compatible!r} is not registered")
        links = self.links.setdefault(fh, [])
        if flb in links:
            raise KernelError(errno.EEXIST, f"FLB {flb.compatible!r} already linked to "
                              f"{fh.compatible!r}")
        if self.users.get(flb, 0) == 0:
            if len(self.registered) >= LUO_FLB_MAX:
                raise KernelError(errno.ENOSPC, f"{LUO_FLB_MAX} FLBs registered")
            if any(f.compatible == flb.compatible for f in self.registered):
                raise KernelError(errno.EEXIST, f"FLB {flb.compatible!r} is registered")
            for op, effects in FLB_FAULT_EFFECTS.items():
                point(flb_fault_point(flb.compatible, op), effects,
                      f"the {flb.compatible} FLB's {op} op fails")
            self.registered.append(flb)
        self.users[flb] = self.users.get(flb, 0) + 1
        links.append(flb)

    def unregister(self, fh: FileHandler, flb: Flb) -> None:
        """Models liveupdate_unregister_flb() (P2+: void; not linked → warning only)."""
        if not self.core.enabled:
            return
        links = self.links.get(fh, [])
        if flb not in links:
            self.kernel.warn("luo", f"WARNING: FLB {flb.compatible!r} is not linked to "
                             f"{fh.compatible!r}")
            return
        links.remove(flb)
        self.users[flb] -= 1
        if self.users[flb] == 0:
            del self.users[flb]
            self.registered.remove(flb)

    def unlink_handler(self, fh: FileHandler) -> None:
        """Unregistering a handler unlinks every FLB linked to it (P2+)."""
        for flb in list(reversed(self.links.get(fh, []))):
            self.unregister(fh, flb)
        self.links.pop(fh, None)

    def links_of(self, fh: FileHandler) -> list[Flb]:
        """FLBs linked to ``fh`` in link order."""
        return list(self.links.get(fh, ()))

    # ------------------------------------------------------------------ outgoing
    def outgoing_get(self, flbs: tuple[Flb, ...]) -> None:
        """Models luo_flb_file_preserve(): one reference per linked FLB, in link order.

        The first reference runs the FLB's preserve; an error releases the
        references already taken by this call in reverse and propagates.
        """
        done: list[Flb] = []
        try:
            for flb in flbs:
                st = self.out.setdefault(flb, _Outgoing())
                if st.count == 0:
                    args = FlbOpArgs(flb, kernel=self.kernel)
                    self.kernel.machine.faults.check(flb_fault_point(flb.compatible, "preserve"),
                                                     flb.compatible)
                    flb.preserve(args)
                    if not 0 <= args.data < 1 << 64:
                        raise KernelError(errno.EINVAL, f"FLB data {args.data:#x} is not a u64")
                    st.data, st.obj = args.data, args.obj
                st.count += 1
                done.append(flb)
        except KernelError:
            self.outgoing_put(tuple(done))
            raise

    def outgoing_put(self, flbs: tuple[Flb, ...]) -> None:
        """Models luo_flb_file_unpreserve(): reverse link order; the last runs unpreserve."""
        for flb in reversed(flbs):
            st = self.out.get(flb)
            if st is None or st.count == 0:
                self.kernel.warn("luo", f"WARNING: FLB {flb.compatible} outgoing underflow")
                continue
            st.count -= 1
            if st.count == 0:
                flb.unpreserve(FlbOpArgs(flb, data=st.data, obj=st.obj, kernel=self.kernel))
                st.data, st.obj = 0, None

    def get_outgoing(self, flb: Flb) -> Any:
        """Models liveupdate_flb_get_outgoing() (P0-P3): the live obj, None if none; no ref."""
        if not self.core.enabled:
            raise KernelError(errno.EOPNOTSUPP, "live update is disabled")
        st = self.out.get(flb)
        return st.obj if st is not None and st.count else None

    def outgoing_count(self, flb: Flb) -> int:
        st = self.out.get(flb)
        return st.count if st is not None else 0

    def serialize(self) -> list[LuoFlbSer]:
        """Models luo_flb_serialize(): registered FLBs with references, in global order."""
        recs: list[LuoFlbSer] = []
        for flb in self.registered:
            st = self.out.get(flb)
            if st is not None and st.count > 0:
                recs.append(LuoFlbSer(flb.compatible, st.data, st.count))
        return recs

    # ------------------------------------------------------------------ incoming
    def _lookup(self, st: _Incoming, compatible: str) -> None:
        if self.incoming_records is None:
            raise KernelError(errno.ENODATA, "no incoming FLB data")
        for rec in self.incoming_records:
            if rec.name == compatible:
                if not st.seeded:
                    st.data, st.count, st.seeded = rec.data, rec.count, True
                return
        raise KernelError(errno.ENOENT, f"FLB {compatible!r} was not handed over")

    def _retrieve_one(self, flb: Flb) -> _Incoming:
        """Models luo_flb_retrieve_one() (spec luo.md §4.4 steps 1-7)."""
        st = self.inc.setdefault(flb.compatible, _Incoming())
        if st.finished:
            raise KernelError(errno.ENODATA, f"FLB {flb.compatible!r} already finished")
        if st.retrieved:
            return st
        if st.error:
            raise KernelError(st.error, f"FLB {flb.compatible!r}: earlier retrieve failed")
        self._lookup(st, flb.compatible)
        args = FlbOpArgs(flb, data=st.data, kernel=self.kernel)
        try:
            self.kernel.machine.faults.check(flb_fault_point(flb.compatible, "retrieve"),
                                             flb.compatible)
            flb.retrieve(args)
        except KernelError as exc:
            if self.core.v5:  # P4 remembers a failed retrieve; P0-P3 leave it retryable
                st.error = exc.errno or errno.EIO
            raise
        st.obj, st.retrieved = args.obj, True
        return st

    def get_incoming(self, flb: Flb) -> Any:
        """Models liveupdate_flb_get_incoming() with incoming refcounting.

        EOPNOTSUPP (disabled), ENODATA (no incoming FLB area, or finished),
        ENOENT (not handed over), else the retrieve op's error.  On success
        the reference count grows by one: call :meth:`put_incoming`.
        """
        if not self.core.enabled:
            raise KernelError(errno.EOPNOTSUPP, "live update is disabled")
        st = self._retrieve_one(flb)
        st.count += 1
        return st.obj

    def put_incoming(self, flb: Flb) -> None:
        """Models liveupdate_flb_put_incoming() / luo_flb_file_finish_one().

        Drops one reference; at zero retrieves first if needed (an error is
        a warning and the FLB stays unfinished), runs finish and marks the
        FLB finished.  An FLB that was never looked up is looked up first to
        seed its count; one that was not handed over is left alone.
        """
        if not self.core.enabled:
            return
        st = self.inc.setdefault(flb.compatible, _Incoming())
        if st.finished:
            self.kernel.warn("luo", f"WARNING: put of finished FLB {flb.compatible!r}")
            return
        if not st.seeded:
            try:
                self._lookup(st, flb.compatible)
            except KernelError:
                return  # nothing of this FLB was handed over
        if st.count <= 0:
            self.kernel.warn("luo", f"WARNING: FLB {flb.compatible!r} incoming underflow")
            return
        st.count -= 1
        if st.count:
            return
        if not st.retrieved:
            try:
                self._retrieve_one(flb)
            except KernelError as exc:
                self.kernel.warn("luo", f"WARNING: FLB {flb.compatible!r} retrieve at finish "
                                 f"failed: {exc}")
                return
        flb.finish(FlbOpArgs(flb, data=st.data, obj=st.obj, kernel=self.kernel))
        st.data, st.obj, st.finished = 0, None, True
        self.kernel.printk("info", "luo", f"FLB {flb.compatible} finished")

    def incoming_state(self, compatible: str) -> dict[str, Any]:
        """Introspection for checks and tests."""
        st = self.inc.get(compatible, _Incoming())
        return {"count": st.count, "retrieved": st.retrieved, "finished": st.finished,
                "seeded": st.seeded, "error": st.error}
