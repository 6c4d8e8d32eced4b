"""LUO file handlers and preserved files: models kernel/liveupdate/luo_file.c.

A :class:`FileHandler` (``struct liveupdate_file_handler``) knows how to
preserve one kind of file (memfd, vfio-pci cdev, iommufd ...).  Subclass it
and override the ops; the required ones are ``can_preserve``, ``preserve``,
``unpreserve``, ``retrieve`` and ``finish``; ``freeze``, ``unfreeze``,
``can_finish`` and ``get_id`` are optional (an op counts as present when the
subclass or the instance overrides it).  Ops report failure by raising
:class:`~luosim.errors.KernelError`.

:class:`LuoFileSet` is one session's ``struct luo_file_set``: the preserved
files in FIFO order plus their serialized storage (P0/P1 ``luo-v1``: a
2-page array of ``luo_file_ser``, at most 128 files; P3 ``luo-v5``: a chain
of 4 KiB KHO blocks of 63 records each).  Every operation follows the order
of spec luo.md §3.2-§3.6; every failure undoes its earlier steps.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from luosim.abi.block import KHO_BLOCK_MAX, KHO_BLOCK_SIZE, encode_chain, walk_chain
from luosim.abi.errors import DecodeError
from luosim.abi.luo import (
    LIVEUPDATE_HNDL_COMPAT_LENGTH,
    LUO_FILE_ARRAY_SIZE,
    LUO_FILE_MAX,
    LUO_FILES_PER_BLOCK,
    LuoFileSer,
    decode_file_array_v1,
    encode_file_array_v1,
)
from luosim.errors import KernelError
from luosim.faults import point
from luosim.kernel.vfs import File, fget

if TYPE_CHECKING:
    from luosim.kernel.kernel import Kernel
    from luosim.kernel.liveupdate.core import LuoCore
    from luosim.kernel.liveupdate.flb import Flb

REQUIRED_OPS = ("can_preserve", "preserve", "unpreserve", "retrieve", "finish")
OPTIONAL_OPS = ("freeze", "unfreeze", "can_finish", "get_id")

#: Fault points declared for every registered handler: ``luo.file.<compatible>.<op>``.
FILE_FAULT_EFFECTS: dict[str, tuple[str, ...]] = {
    "preserve": ("ENOMEM", "EINVAL"),
    "freeze": ("EINVAL", "EBUSY"),
    "retrieve": ("ENOMEM", "EINVAL", "ENODEV"),
}


def file_fault_point(compatible: str, op: str) -> str:
    """Name of the fault point LUO checks right before calling ``op`` of a handler."""
    return f"luo.file.{compatible}.{op}"


def check_compatible(compatible: str) -> None:
    """A compatible must fit ``char[48]`` with its NUL (EINVAL otherwise)."""
    try:
        raw = compatible.encode("ascii")
    except (UnicodeEncodeError, AttributeError):
        raise KernelError(errno.EINVAL, f"compatible {compatible!r} is not ASCII") from None
    if not raw or len(raw) >= LIVEUPDATE_HNDL_COMPAT_LENGTH or b"\0" in raw:
        raise KernelError(errno.EINVAL, f"compatible {compatible!r} does not fit char[48]")


@dataclass
class FileOpArgs:
    """Models ``struct liveupdate_file_op_args`` (include/linux/liveupdate.h).

    ``serialized_data`` is the handler's opaque u64 (memfd: phys of its
    ``memfd_luo_ser``); ``private_data`` is runtime only, never serialized;
    ``retrieve_status`` is 0 (never attempted), 1 (retrieved) or ``-errno``.
    ``kernel`` is a convenience of the model (the kernel running the op).
    """

    handler: FileHandler
    file: File | None = None
    serialized_data: int = 0
    private_data: Any = None
    retrieve_status: int = 0
    kernel: Kernel | None = None
    # the session's file set: ``liveupdate_get_token_outgoing()`` lookups made
    # by a handler's preserve are scoped to the session being preserved into
    file_set: Any = None


class FileHandler:
    """Models ``struct liveupdate_file_handler`` + ``liveupdate_file_ops``.

    Override the ops in a subclass (or assign callables on the instance).
    ``compatible`` (at most 47 ASCII characters) is unique among registered
    handlers and is written into every file record this handler preserves.
    """

    def __init__(self, compatible: str) -> None:
        self.compatible = compatible

    # -- required -------------------------------------------------------------
    def can_preserve(self, file: File) -> bool:
        """Whether this handler can preserve ``file`` (required)."""
        raise NotImplementedError

    def preserve(self, args: FileOpArgs) -> None:
        """Preserve ``args.file``; set ``args.serialized_data``/``private_data`` (required)."""
        raise NotImplementedError

    def unpreserve(self, args: FileOpArgs) -> None:
        """Undo :meth:`preserve` (session closed before reboot) (required)."""
        raise NotImplementedError

    def retrieve(self, args: FileOpArgs) -> None:
        """Rebuild the file from ``args.serialized_data``; set ``args.file`` (required)."""
        raise NotImplementedError

    def finish(self, args: FileOpArgs) -> None:
        """Release the preserved state; ``args.file`` is None if never retrieved (required)."""
        raise NotImplementedError

    # -- optional -------------------------------------------------------------
    def freeze(self, args: FileOpArgs) -> None:
        """Last update of the preserved state during reboot (optional)."""
        raise NotImplementedError

    def unfreeze(self, args: FileOpArgs) -> None:
        """Undo :meth:`freeze` when the reboot is aborted (optional)."""
        raise NotImplementedError

    def can_finish(self, args: FileOpArgs) -> bool:
        """Whether the file may be finished now (optional; absent means yes)."""
        raise NotImplementedError

    def get_id(self, file: File) -> object:
        """Identity for double-preservation checks (optional; default the file)."""
        raise NotImplementedError

    def has_op(self, name: str) -> bool:
        """Whether op ``name`` is provided (overridden in a subclass or on the instance)."""
        if name in vars(self):
            return vars(self)[name] is not None
        return getattr(type(self), name, None) is not getattr(FileHandler, name, None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.compatible!r}>"


@dataclass
class LuoFile:
    """Models ``struct luo_file``: LUO's record of one preserved file."""

    handler: FileHandler
    token: int
    file: File | None
    serialized_data: int = 0
    private_data: Any = None
    retrieve_status: int = 0
    id_key: object | None = None
    flbs: tuple[Flb, ...] = ()


class FileManager:
    """Handler registry and the global file-identity table of one kernel.

    Models the handler list of luo_file.c and (P2+) the identity check that
    refuses to preserve a file twice, across all sessions.
    """

    def __init__(self, core: LuoCore) -> None:
        self.core = core
        self.kernel = core.kernel
        self.handlers: list[FileHandler] = []
        self.ids: dict[object, LuoFile] = {}

    # ------------------------------------------------------------------ registry
    def register(self, fh: FileHandler) -> None:
        """Models liveupdate_register_file_handler() (P2+ order, spec luo.md §3.2).

        EOPNOTSUPP when LUO is disabled; EINVAL for a missing required op or
        a compatible that does not fit char[48]; EEXIST for a duplicate
        compatible.  Handlers are kept in registration order.  Declares the
        fault points ``luo.file.<compatible>.{preserve,freeze,retrieve}``.
        """
        if not self.core.enabled:
            raise KernelError(errno.EOPNOTSUPP, "live update is disabled")
        missing = [op for op in REQUIRED_OPS if not fh.has_op(op)]
        if missing:
            raise KernelError(errno.EINVAL, f"handler {fh.compatible!r} lacks {missing}")
        check_compatible(fh.compatible)
        if fh in self.handlers or any(h.compatible == fh.compatible for h in self.handlers):
            raise KernelError(errno.EEXIST, f"file handler {fh.compatible!r} is registered")
        for op, effects in FILE_FAULT_EFFECTS.items():
            point(file_fault_point(fh.compatible, op), effects,
                  f"the {fh.compatible} file handler's {op} op fails")
        self.handlers.append(fh)
        self.kernel.printk("info", "luo", f"registered file handler {fh.compatible}")

    def unregister(self, fh: FileHandler) -> None:
        """Models liveupdate_unregister_file_handler() (P2+: void, unlinks its FLBs first)."""
        if not self.core.enabled or fh not in self.handlers:
            if fh not in self.handlers:
                self.kernel.warn("luo", f"unregistering unknown file handler {fh.compatible!r}")
            return
        if any(lf.handler is fh for lf in self.ids.values()):
            self.kernel.warn("luo", f"file handler {fh.compatible} unregistered while files "
                             "are preserved")
        self.core.flbs.unlink_handler(fh)
        self.handlers.remove(fh)

    def is_registered(self, fh: FileHandler) -> bool:
        return fh in self.handlers

    def find_for(self, file: File) -> FileHandler:
        """First registered handler whose can_preserve() accepts ``file`` (else ENOENT)."""
        for fh in self.handlers:
            if fh.can_preserve(file):
                return fh
        raise KernelError(errno.ENOENT, f"no live update handler for {file.name!r}")

    def by_compatible(self, compatible: str) -> FileHandler:
        """Handler with exactly this compatible (deserialization; ENOENT if none)."""
        for fh in self.handlers:
            if fh.compatible == compatible:
                return fh
        raise KernelError(errno.ENOENT, f"no file handler {compatible!r}")

    # ------------------------------------------------------------------ identity
    def id_of(self, fh: FileHandler, file: File) -> object:
        """``get_id(file)`` if the handler has it, else the file itself."""
        return fh.get_id(file) if fh.has_op("get_id") else file.get_id()

    # ------------------------------------------------------------------ helpers
    def args(self, lf: LuoFile) -> FileOpArgs:
        return FileOpArgs(handler=lf.handler, file=lf.file, serialized_data=lf.serialized_data,
                          private_data=lf.private_data, retrieve_status=lf.retrieve_status,
                          kernel=self.kernel)

    def check_fault(self, fh: FileHandler, op: str) -> None:
        self.kernel.machine.faults.check(file_fault_point(fh.compatible, op), fh.compatible)


class LuoFileSet:
    """Models ``struct luo_file_set``: one session's files and their storage."""

    def __init__(self, core: LuoCore, owner: str) -> None:
        self.core = core
        self.kernel = core.kernel
        self.owner = owner
        self.files: list[LuoFile] = []
        self.array_pa = 0  # luo-v1 outgoing: 2-page array, allocated on first preserve
        self.blocks: list[int] = []  # luo-v5 outgoing: one KHO block per 63 files
        self.in_pages: list[int] = []  # incoming storage restored at deserialization

    @property
    def mgr(self) -> FileManager:
        return self.core.files

    @property
    def v5(self) -> bool:
        return self.core.v5

    def __len__(self) -> int:
        return len(self.files)

    def find(self, token: int) -> LuoFile | None:
        for lf in self.files:
            if lf.token == token:
                return lf
        return None

    # ------------------------------------------------------------------ storage
    def _grow_blocks(self, nfiles: int) -> None:
        """luo-v5: make room for ``nfiles`` records (ENOMEM, ENOSPC past 10000 blocks)."""
        need = -(-nfiles // LUO_FILES_PER_BLOCK)
        while len(self.blocks) < need:
            if len(self.blocks) >= KHO_BLOCK_MAX:
                raise KernelError(errno.ENOSPC, f"{self.owner}: file block chain is full")
            self.blocks.append(self.kernel.kho.alloc_preserve(KHO_BLOCK_SIZE))

    def _shrink_storage(self) -> None:
        """Free storage beyond what the current file count needs (tail first)."""
        kho = self.kernel.kho
        if self.v5:
            need = -(-len(self.files) // LUO_FILES_PER_BLOCK)
            while len(self.blocks) > need:
                kho.unpreserve_free(self.blocks.pop())
        elif not self.files and self.array_pa:
            kho.unpreserve_free(self.array_pa)
            self.array_pa = 0

    def _write_records(self, zero: bool = False) -> None:
        mem = self.kernel.machine.memory
        recs = [] if zero else [LuoFileSer(lf.handler.compatible, lf.serialized_data, lf.token)
                                for lf in self.files]
        if self.v5:
            if not self.blocks:
                return
            if zero:
                for pa in self.blocks:
                    mem.zero(pa, KHO_BLOCK_SIZE)
                return
            pages = encode_chain([r.encode() for r in recs], LuoFileSer.SIZE, self.blocks)
            for pa, page in zip(self.blocks, pages):
                mem.write(pa, page)
        elif self.array_pa:
            mem.write(self.array_pa, encode_file_array_v1(recs))

    def serialized(self) -> tuple[int, int]:
        """``luo_file_set_ser``: (phys of the array / first block or 0, count)."""
        if not self.files:
            return 0, 0
        return (self.blocks[0] if self.v5 else self.array_pa), len(self.files)

    # ------------------------------------------------------------------ preserve
    def preserve(self, token: int, fd: int) -> None:
        """Models luo_preserve_file() in kernel/liveupdate/luo_file.c (spec luo.md §3.2).

        Order: token in this session (EEXIST); capacity (luo-v1: 128 files,
        ENOSPC; luo-v5: grow blocks, ENOMEM/ENOSPC); fget (EBADF); luo-v1
        array on the first file (ENOMEM); first handler whose can_preserve
        accepts the file (ENOENT); identity across all sessions (EBUSY);
        FLB outgoing references; handler preserve (its error, no unpreserve).
        Every failure undoes the earlier steps in reverse.
        """
        mgr = self.mgr
        if self.find(token) is not None:
            raise KernelError(errno.EEXIST, f"token {token:#x} already used in {self.owner}")
        grew = False
        if self.v5:
            before = len(self.blocks)
            self._grow_blocks(len(self.files) + 1)
            grew = len(self.blocks) != before
        elif len(self.files) >= LUO_FILE_MAX:
            raise KernelError(errno.ENOSPC, f"{self.owner}: {LUO_FILE_MAX} files preserved")
        undo: list[Callable[[], None]] = []
        if grew:
            undo.append(self._shrink_storage)
        try:
            file = fget(self.kernel, fd)
            undo.append(file.put)
            if not self.v5 and not self.array_pa:
                self.array_pa = self.kernel.kho.alloc_preserve(LUO_FILE_ARRAY_SIZE)
                undo.append(self._shrink_storage)
            fh = mgr.find_for(file)
            key = mgr.id_of(fh, file)
            if key in mgr.ids:
                raise KernelError(errno.EBUSY, f"{file.name!r} is already preserved")
            lf = LuoFile(handler=fh, token=token, file=file, id_key=key)
            mgr.ids[key] = lf

            def drop_id() -> None:
                mgr.ids.pop(key, None)

            undo.append(drop_id)
            flbs = tuple(self.core.flbs.links_of(fh))
            self.core.flbs.outgoing_get(flbs)
            undo.append(lambda: self.core.flbs.outgoing_put(flbs))
            lf.flbs = flbs
            args = FileOpArgs(handler=fh, file=file, kernel=self.kernel, file_set=self)
            mgr.check_fault(fh, "preserve")
            fh.preserve(args)
        except KernelError:
            for step in reversed(undo):
                step()
            raise
        lf.serialized_data = args.serialized_data
        lf.private_data = args.private_data
        self.files.append(lf)
        self.kernel.printk("info", "luo", f"{self.owner}: preserved {file.name!r} token "
                           f"{token:#x} with {fh.compatible}")

    def unpreserve_all(self) -> None:
        """Models luo_file_unpreserve_files(): newest first, undo every preserve.

        Handler unpreserve, then FLB references dropped, identity removed,
        LUO's file reference dropped; finally the storage is freed.
        """
        mgr = self.mgr
        while self.files:
            lf = self.files.pop()
            lf.handler.unpreserve(mgr.args(lf))
            self.core.flbs.outgoing_put(lf.flbs)
            if lf.id_key is not None:
                mgr.ids.pop(lf.id_key, None)
            if lf.file is not None:
                lf.file.put()
                lf.file = None
        self._shrink_storage()

    # ------------------------------------------------------------------ freeze
    def freeze(self) -> None:
        """Models luo_file_freeze() (spec luo.md §3.3) and writes the file records.

        Files in preservation order; a freeze error unfreezes the earlier
        files in forward order, zeroes the records and propagates.
        """
        mgr = self.mgr
        done: list[LuoFile] = []
        for lf in self.files:
            if lf.handler.has_op("freeze"):
                args = mgr.args(lf)
                try:
                    mgr.check_fault(lf.handler, "freeze")
                    lf.handler.freeze(args)
                except KernelError as exc:
                    self.kernel.printk("err", "luo", f"{self.owner}: freeze of token "
                                       f"{lf.token:#x} failed: {exc}")
                    self._unfreeze_files(done)
                    raise
                lf.serialized_data = args.serialized_data
                lf.private_data = args.private_data
            done.append(lf)
        self._write_records()

    def _unfreeze_files(self, files: list[LuoFile]) -> None:
        for lf in files:
            if lf.handler.has_op("unfreeze"):
                args = self.mgr.args(lf)
                lf.handler.unfreeze(args)
                lf.private_data = args.private_data
        self._write_records(zero=True)

    def unfreeze(self) -> None:
        """Models luo_file_unfreeze(): every file, forward order; records zeroed."""
        self._unfreeze_files(list(self.files))

    # ------------------------------------------------------------------ incoming
    def deserialize(self, files_pa: int, count: int) -> None:
        """Models luo_file_deserialize() (spec luo.md §3.6): records, handler lookup.

        The storage pages are claimed from KHO and kept until finish.  A bad
        pointer or record is EINVAL, an unknown compatible ENOENT, and
        (luo-v5) a record count that differs from ``count`` EINVAL.
        """
        if count == 0 and files_pa == 0:
            return
        kho = self.kernel.kho
        mem = self.kernel.machine.memory
        try:
            if self.v5:
                def read_block(pa: int) -> bytes:
                    if kho.restore_folio(pa) is None:
                        raise KernelError(errno.EINVAL, f"file block {pa:#x} not preserved")
                    self.in_pages.append(pa)
                    return mem.read(pa, KHO_BLOCK_SIZE)

                raw = walk_chain(read_block, files_pa, LuoFileSer.SIZE,
                                 f"{self.owner} file blocks")
                if len(raw) != count:
                    raise KernelError(errno.EINVAL, f"{self.owner}: {len(raw)} file records, "
                                      f"session says {count}")
                recs = [LuoFileSer.decode(r, 0, "luo file") for r in raw]
            else:
                if kho.restore_folio(files_pa) is None:
                    raise KernelError(errno.EINVAL, f"file array {files_pa:#x} not preserved")
                self.in_pages.append(files_pa)
                recs = decode_file_array_v1(mem.read(files_pa, LUO_FILE_ARRAY_SIZE), count)
        except DecodeError as exc:
            raise KernelError(errno.EINVAL, str(exc)) from None
        for rec in recs:
            fh = self.mgr.by_compatible(rec.compatible)
            self.files.append(LuoFile(handler=fh, token=rec.token, file=None,
                                      serialized_data=rec.data))

    def retrieve(self, token: int) -> File:
        """Models luo_retrieve_file() (spec luo.md §3.4).

        Unknown token → ENOENT; a remembered failure is returned again
        without calling the handler; an already retrieved file is returned
        as is (the caller installs a new fd); else the handler's retrieve.
        LUO keeps one reference to the retrieved file until finish.
        """
        lf = self.find(token)
        if lf is None:
            raise KernelError(errno.ENOENT, f"{self.owner}: no file with token {token:#x}")
        if lf.retrieve_status < 0:
            raise KernelError(-lf.retrieve_status, f"token {token:#x}: earlier retrieve failed")
        if lf.retrieve_status == 1 and lf.file is not None:
            return lf.file
        mgr = self.mgr
        args = mgr.args(lf)
        try:
            mgr.check_fault(lf.handler, "retrieve")
            lf.handler.retrieve(args)
            if args.file is None:
                raise KernelError(errno.EINVAL, f"{lf.handler.compatible} retrieve set no file")
        except KernelError as exc:
            lf.retrieve_status = -(exc.errno or errno.EIO)
            raise
        lf.file = args.file
        lf.private_data = args.private_data
        lf.retrieve_status = 1
        key = mgr.id_of(lf.handler, args.file)
        lf.id_key = key
        mgr.ids[key] = lf
        return args.file

    def finish(self) -> None:
        """Models luo_file_finish() (spec luo.md §3.5): can_finish pass, then finish pass.

        Pass 1 (oldest first) refuses with EBUSY, changing nothing; pass 2
        (newest first) runs the handler finish, drops one incoming reference
        per FLB linked to the handler (reverse link order), removes the
        identity and LUO's file reference; then frees the storage.
        """
        mgr = self.mgr
        for lf in self.files:
            if lf.handler.has_op("can_finish") and not lf.handler.can_finish(mgr.args(lf)):
                raise KernelError(errno.EBUSY, f"{self.owner}: token {lf.token:#x} cannot "
                                  "finish yet")
        while self.files:
            lf = self.files.pop()
            lf.handler.finish(mgr.args(lf))
            for flb in reversed(self.core.flbs.links_of(lf.handler)):
                self.core.flbs.put_incoming(flb)
            if lf.id_key is not None:
                mgr.ids.pop(lf.id_key, None)
            if lf.file is not None:
                lf.file.put()
                lf.file = None
        self.free_incoming_storage()

    def free_incoming_storage(self) -> None:
        mm = self.kernel.mm
        for pa in self.in_pages:
            mm.free_pages(pa)
        self.in_pages.clear()
