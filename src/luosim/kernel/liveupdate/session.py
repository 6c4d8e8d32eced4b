"""LUO sessions: models kernel/liveupdate/luo_session.c.

Outgoing sessions are created by the agent and serialized at reboot;
incoming sessions are rebuilt from physical memory at the first open of
/dev/liveupdate.  The two lists are separate: an outgoing session may reuse
the name of an incoming one (spec luo.md §1.3).

Serialized forms (spec luo.md §5):

* ``luo-v1`` (profiles v6, v7): one 16-page session block allocated and
  KHO-preserved at boot, ``luo_session_header_ser {count}`` followed by up
  to 819 ``luo_session_ser`` records; the 820th create fails with ENOMEM.
* ``luo-v5`` (profile v9): a chain of 4 KiB KHO blocks of 51 records each,
  grown before an insert and shrunk from the tail on removal; the chain's
  first block is written into ``luo_ser.sessions_pa`` at reboot.

Session names are byte strings of at most 63 bytes (the NUL-terminated
``char[64]``).  luo-v1 kernels accept any name (empty, or 64 bytes cut to
63); luo-v5 kernels refuse an empty or unterminated name (EINVAL).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from luosim.abi.block import KHO_BLOCK_MAX, KHO_BLOCK_SIZE, encode_chain, walk_chain
from luosim.abi.errors import DecodeError
from luosim.abi.luo import (
    LUO_SESSION_BLOCK_SIZE,
    LUO_SESSION_MAX,
    LUO_SESSION_NAME_LENGTH,
    LUO_SESSIONS_PER_BLOCK,
    LuoFileSetSer,
    LuoSessionHeaderSer,
    LuoSessionSer,
)
from luosim.errors import KernelError
from luosim.kernel.liveupdate.file import LuoFileSet

if TYPE_CHECKING:
    from luosim.kernel.liveupdate.core import LuoCore
    from luosim.kernel.liveupdate.uapi import Session


def encode_session_record(name: bytes, files_pa: int, count: int) -> bytes:
    """One 80-byte ``luo_session_ser`` (raw name bytes, NUL padded)."""
    return name.ljust(LUO_SESSION_NAME_LENGTH, b"\0") + LuoFileSetSer(files_pa, count).encode()


def decode_session_record(buf: bytes, offset: int) -> tuple[bytes, int, int]:
    """(name, files_pa, count) of the ``luo_session_ser`` at ``offset``.

    The name is copied with a 64-byte bound (``strscpy``): up to the first
    NUL, at most 63 bytes.
    """
    raw = bytes(buf[offset:offset + LUO_SESSION_NAME_LENGTH])
    if len(raw) != LUO_SESSION_NAME_LENGTH:
        raise DecodeError("luo session", offset, "luo_session_ser.name", "truncated",
                          kind="truncated")
    nul = raw.find(b"\0")
    name = raw[:nul] if nul >= 0 else raw[:LUO_SESSION_NAME_LENGTH - 1]
    fs = LuoFileSetSer.decode(buf, offset + LUO_SESSION_NAME_LENGTH, "luo session")
    return name, fs.files, fs.count


def display_name(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


class LuoSession:
    """Models ``struct luo_session``."""

    def __init__(self, core: LuoCore, name: bytes, incoming: bool) -> None:
        self.core = core
        self.name = name
        self.incoming = incoming
        self.retrieved = False
        self.leaked = False  # incoming: implicit finish at close failed
        self.files = LuoFileSet(core, f"session {display_name(name)!r}")
        self.fd_file: Session | None = None

    def __repr__(self) -> str:
        kind = "in" if self.incoming else "out"
        return f"<LuoSession {display_name(self.name)!r} {kind} files={len(self.files)}>"


class SessionManager:
    """Outgoing and incoming session lists of one kernel, plus their storage."""

    def __init__(self, core: LuoCore) -> None:
        self.core = core
        self.kernel = core.kernel
        self.outgoing: list[LuoSession] = []
        self.incoming: list[LuoSession] = []
        self.block_pa = 0  # luo-v1: the 16-page session block (allocated at late init)
        self.blocks: list[int] = []  # luo-v5: outgoing session blocks

    @property
    def v5(self) -> bool:
        return self.core.v5

    # ------------------------------------------------------------------ names
    def check_name(self, raw: bytes) -> bytes:
        """The stored name of a ``u8[64]`` name field (spec luo.md §2.4 step 2).

        luo-v5: ``strnlen`` 0 or 64 → EINVAL.  luo-v1: no check, an
        unterminated name is cut to 63 bytes and an empty name is accepted.
        """
        raw = bytes(raw[:LUO_SESSION_NAME_LENGTH])
        nul = raw.find(b"\0")
        length = nul if nul >= 0 else len(raw)
        if self.v5 and (length == 0 or length >= LUO_SESSION_NAME_LENGTH):
            raise KernelError(errno.EINVAL, "session name is empty or not NUL-terminated")
        return raw[:min(length, LUO_SESSION_NAME_LENGTH - 1)]

    # ------------------------------------------------------------------ outgoing
    def _shrink_blocks(self) -> None:
        need = -(-len(self.outgoing) // LUO_SESSIONS_PER_BLOCK)
        while len(self.blocks) > need:
            self.kernel.kho.unpreserve_free(self.blocks.pop())

    def create(self, raw_name: bytes) -> LuoSession:
        """Models luo_session_create() + luo_session_insert() (spec luo.md §2.4).

        Name check (luo-v5), capacity (luo-v1: 819 sessions → ENOMEM;
        luo-v5: grow the block chain, ENOMEM or ENOSPC), duplicate name among
        outgoing sessions → EEXIST.
        """
        name = self.check_name(raw_name)
        if self.v5:
            need = -(-(len(self.outgoing) + 1) // LUO_SESSIONS_PER_BLOCK)
            if need > len(self.blocks):
                if len(self.blocks) >= KHO_BLOCK_MAX:
                    raise KernelError(errno.ENOSPC, "session block chain is full")
                self.blocks.append(self.kernel.kho.alloc_preserve(KHO_BLOCK_SIZE))
        elif len(self.outgoing) >= LUO_SESSION_MAX:
            raise KernelError(errno.ENOMEM, f"{LUO_SESSION_MAX} sessions exist")
        if any(s.name == name for s in self.outgoing):
            if self.v5:
                self._shrink_blocks()
            raise KernelError(errno.EEXIST, f"session {display_name(name)!r} exists")
        sess = LuoSession(self.core, name, incoming=False)
        self.outgoing.append(sess)
        self.kernel.printk("info", "luo", f"created session {display_name(name)!r}")
        return sess

    def destroy_outgoing(self, sess: LuoSession) -> None:
        """Models luo_session_release() of an outgoing session: unpreserve all, remove."""
        sess.files.unpreserve_all()
        if sess in self.outgoing:
            self.outgoing.remove(sess)
        if self.v5:
            self._shrink_blocks()
        sess.fd_file = None
        self.kernel.printk("info", "luo", f"session {display_name(sess.name)!r} closed")

    # ------------------------------------------------------------------ incoming
    def retrieve(self, raw_name: bytes) -> LuoSession:
        """Models luo_session_retrieve(): ENOENT unknown, EINVAL already retrieved."""
        raw = bytes(raw_name[:LUO_SESSION_NAME_LENGTH])
        nul = raw.find(b"\0")
        name = raw[:nul] if nul >= 0 else raw
        for sess in self.incoming:
            if sess.name == name:
                if sess.retrieved:
                    raise KernelError(errno.EINVAL, f"session {display_name(name)!r} "
                                      "already retrieved")
                return sess
        raise KernelError(errno.ENOENT, f"no incoming session {display_name(name)!r}")

    def finish(self, sess: LuoSession) -> None:
        """Models luo_session_finish(): finish every file (EBUSY if one cannot)."""
        sess.files.finish()

    def release_incoming(self, sess: LuoSession) -> None:
        """Models luo_session_release() of a retrieved session: implicit finish.

        Success removes the session; failure leaves it retrieved with no fd,
        never retrievable or finishable again in this boot (spec luo.md §2.5).
        """
        sess.fd_file = None
        try:
            self.finish(sess)
        except KernelError as exc:
            sess.leaked = True
            self.kernel.printk("warn", "luo", f"session {display_name(sess.name)!r}: finish "
                               f"at close failed ({exc}); leaked until reboot")
            return
        if sess in self.incoming:
            self.incoming.remove(sess)

    # ------------------------------------------------------------------ serialize
    def serialize(self) -> int:
        """Models luo_session_serialize() (spec luo.md §1.2): freeze, write records.

        Sessions in creation order: freeze the files, then write the record.
        A failure in session k rolls back sessions k-1..0 (reverse order),
        zeroes their records and propagates.  Returns the phys written as
        the session pointer (luo-v1: the block; luo-v5: first block or 0).
        """
        mem = self.kernel.machine.memory
        done: list[LuoSession] = []
        for sess in self.outgoing:
            try:
                sess.files.freeze()
            except KernelError:
                for prev in reversed(done):
                    prev.files.unfreeze()
                self._zero_records()
                raise
            done.append(sess)
        records = [encode_session_record(s.name, *s.files.serialized()) for s in self.outgoing]
        if self.v5:
            pages = encode_chain(records, LuoSessionSer.SIZE, self.blocks)
            for pa, page in zip(self.blocks, pages):
                mem.write(pa, page)
            return self.blocks[0] if self.blocks else 0
        blob = LuoSessionHeaderSer(len(records)).encode() + b"".join(records)
        mem.write(self.block_pa, blob.ljust(LUO_SESSION_BLOCK_SIZE, b"\0"))
        return self.block_pa

    def _zero_records(self) -> None:
        mem = self.kernel.machine.memory
        if self.v5:
            for pa in self.blocks:
                mem.zero(pa, KHO_BLOCK_SIZE)
        elif self.block_pa:
            mem.zero(self.block_pa, LUO_SESSION_BLOCK_SIZE)

    # ------------------------------------------------------------------ deserialize
    def validate_incoming_chain(self, sessions_pa: int) -> None:
        """luo-v5 early boot: the session block chain must be well formed (else EINVAL)."""
        mem = self.kernel.machine.memory
        walk_chain(lambda pa: mem.read(pa, KHO_BLOCK_SIZE), sessions_pa, LuoSessionSer.SIZE,
                   "luo session blocks")

    def deserialize(self, sessions_pa: int) -> None:
        """Models luo_session_deserialize() (spec luo.md §3.6).

        Reads every session record from physical memory (claiming the
        storage from KHO), inserts it into the incoming list (duplicate name
        → EEXIST) and deserializes its file records.  Errors propagate; what
        was built so far stays (leaked) as in the kernel.
        """
        kho = self.kernel.kho
        mem = self.kernel.machine.memory
        pages: list[int] = []
        try:
            if self.v5:
                if not sessions_pa:
                    return

                def read_block(pa: int) -> bytes:
                    if kho.restore_folio(pa) is None:
                        raise KernelError(errno.EINVAL, f"session block {pa:#x} not preserved")
                    pages.append(pa)
                    return mem.read(pa, KHO_BLOCK_SIZE)

                raw = walk_chain(read_block, sessions_pa, LuoSessionSer.SIZE,
                                 "luo session blocks")
                recs = [decode_session_record(r, 0) for r in raw]
            else:
                if kho.restore_folio(sessions_pa) is None:
                    raise KernelError(errno.EINVAL,
                                      f"session block {sessions_pa:#x} not preserved")
                pages.append(sessions_pa)
                buf = mem.read(sessions_pa, LUO_SESSION_BLOCK_SIZE)
                hdr = LuoSessionHeaderSer.decode(buf, 0, "luo session block")
                if hdr.count > LUO_SESSION_MAX:
                    raise DecodeError("luo session block", 0, "luo_session_header_ser.count",
                                      f"count {hdr.count} exceeds {LUO_SESSION_MAX}")
                recs = [decode_session_record(buf, LuoSessionHeaderSer.SIZE
                                              + i * LuoSessionSer.SIZE)
                        for i in range(hdr.count)]
        except DecodeError as exc:
            raise KernelError(errno.EINVAL, str(exc)) from None
        finally:
            for pa in pages:
                self.kernel.mm.free_pages(pa)
        for name, files_pa, count in recs:
            if any(s.name == name for s in self.incoming):
                raise KernelError(errno.EEXIST, f"duplicate incoming session "
                                  f"{display_name(name)!r}")
            sess = LuoSession(self.core, name, incoming=True)
            self.incoming.append(sess)
            sess.files.deserialize(files_pa, count)
        self.kernel.printk("info", "luo", f"deserialized {len(recs)} incoming sessions")
