"""Random uAPI sequences across kexecs (hypothesis stateful), spec luo.md §1-§3 and §7's
model-level invariants: no preserved byte is lost; a token is retrievable only while its
session is retrieved and unfinished; a failed call leaves the state unchanged; a file is
preserved at most once (P2+).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from luosim.abi.kho import KhoData
from luosim.errors import KernelError
from luosim.kernel.kernel import Kernel
from luosim.kernel.liveupdate.uapi import LiveupdateDevice, Session
from luosim.kernel.mm.memfd import MemfdFile
from luosim.kernel.vfs import fd_table
from tests.luo.luo_testlib import boot

NAMES = st.sampled_from(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"])
TOKENS = st.integers(0, 3)
CONTENT = st.binary(max_size=9000)


@dataclass(eq=False)
class Mem:
    """The agent's view of one memfd: the expected bytes."""

    file: MemfdFile
    data: bytearray
    preserved_in: str | None = None  # outgoing session holding it
    busy_in: str | None = None  # retrieved from this incoming session, not yet finished


@dataclass
class OutSess:
    fd: Session
    files: dict[int, Mem] = field(default_factory=dict)


@dataclass
class InSess:
    fd: Session
    files: dict[int, bytes]
    got: dict[int, Mem] = field(default_factory=dict)
    finished: bool = False


class LuoStateMachine(RuleBasedStateMachine):
    k: Kernel
    lu: LiveupdateDevice

    @initialize(profile=st.sampled_from(["v6", "v9"]))
    def start(self, profile: str) -> None:
        self.profile = profile
        self.k = boot(profile, memory="1GiB")
        self.lu = self.k.open_liveupdate()
        self.kexecs = 0
        self.memfds: list[Mem] = []
        self.out: dict[str, OutSess] = {}
        self.incoming: dict[str, dict[int, bytes]] = {}
        self.parked: dict[str, dict[int, bytes]] = {}  # left unretrieved on purpose
        self.retrieved: dict[str, InSess] = {}

    # ------------------------------------------------------------------ helpers
    def snapshot(self) -> Any:
        lu = self.k.liveupdate
        return (
            [(s.name, [(f.token, f.serialized_data, f.retrieve_status) for f in s.files.files],
              tuple(s.files.blocks), s.files.array_pa) for s in lu.sessions.outgoing],
            [(s.name, s.retrieved, [(f.token, f.retrieve_status) for f in s.files.files])
             for s in lu.sessions.incoming],
            frozenset(self.k.kho.preserved), len(self.k.mm.allocated), len(fd_table(self.k)),
            tuple(lu.sessions.blocks), frozenset(id(x) for x in lu.files.ids),
            [(m.file.size, m.file.frozen) for m in self.memfds],
        )

    def call(self, err: int | None, fn: Any) -> Any:
        """Run ``fn`` expecting errno ``err`` (None = success); failures change nothing."""
        before = self.snapshot()
        try:
            result = fn()
        except KernelError as exc:
            assert err is not None, f"unexpected {exc!r}"
            assert exc.errno == err, f"expected {errno.errorcode[err]}, got {exc!r}"
            assert self.snapshot() == before, "a failed call changed the state"
            return None
        assert err is None, f"expected {errno.errorcode[err]}, call succeeded"
        return result

    def mem_of(self, f: MemfdFile) -> Mem | None:
        return next((m for m in self.memfds if m.file is f), None)

    # ------------------------------------------------------------------ sessions
    @precondition(lambda self: len(self.out) < 3 and not self.incoming)
    @rule(name=NAMES)
    def create_session(self, name: str) -> None:
        s = self.call(errno.EEXIST if name in self.out else None,
                      lambda: self.lu.create_session(name))
        if s is not None:
            self.out[name] = OutSess(s)

    @precondition(lambda self: self.out)
    @rule(data=st.data())
    def close_outgoing(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.out)))
        sess = self.out.pop(name)
        sess.fd.close()
        for m in sess.files.values():
            m.preserved_in = None

    @precondition(lambda self: self.kexecs % 2 == 1)
    @rule()
    def reopen_device(self) -> None:
        self.lu.close()
        self.lu = self.k.open_liveupdate()

    # ------------------------------------------------------------------ memfds
    @precondition(lambda self: not self.incoming)
    @rule(content=CONTENT)
    def create_memfd(self, content: bytes) -> None:
        f = self.k.memfd_create("agent", size=len(content))
        f.write(0, content)
        self.memfds.append(Mem(f, bytearray(content)))

    @precondition(lambda self: self.memfds)
    @rule(data=st.data(), payload=st.binary(min_size=1, max_size=64))
    def write_memfd(self, data: st.DataObject, payload: bytes) -> None:
        m = data.draw(st.sampled_from(self.memfds))
        off = data.draw(st.integers(0, len(m.data) + 50))
        end = off + len(payload)
        grows = end > len(m.data)
        err = errno.EPERM if grows and m.preserved_in is not None else None
        if self.call(err, lambda: m.file.write(off, payload)) is not None:
            if grows:
                m.data.extend(bytes(end - len(m.data)))
            m.data[off:end] = payload

    @precondition(lambda self: self.memfds)
    @rule(data=st.data())
    def close_memfd(self, data: st.DataObject) -> None:
        m = data.draw(st.sampled_from(self.memfds))
        m.file.close()
        if m.file.closed:
            self.memfds.remove(m)

    @precondition(lambda self: self.out and self.memfds)
    @rule(data=st.data(), token=TOKENS)
    def preserve(self, data: st.DataObject, token: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.out)))
        m = data.draw(st.sampled_from(self.memfds))
        sess = self.out[name]
        if token in sess.files:
            err: int | None = errno.EEXIST
        elif m.preserved_in is not None or m.busy_in is not None:
            err = errno.EBUSY
        else:
            err = None
        if self.call(err, lambda: sess.fd.preserve_fd(m.file, token)) is None and err is None:
            sess.files[token] = m
            m.preserved_in = name

    @precondition(lambda self: self.out)
    @rule(data=st.data(), content=CONTENT, token=TOKENS)
    def preserve_new_memfd(self, data: st.DataObject, content: bytes, token: int) -> None:
        self.create_memfd(content)
        name = data.draw(st.sampled_from(sorted(self.out)))
        sess = self.out[name]
        m = self.memfds[-1]
        err = errno.EEXIST if token in sess.files else None
        if self.call(err, lambda: sess.fd.preserve_fd(m.file, token)) is None and err is None:
            sess.files[token] = m
            m.preserved_in = name

    # ------------------------------------------------------------------ kexec
    @precondition(lambda self: any(s.files for s in self.out.values()))
    @rule()
    def kexec(self) -> None:
        handed = {name: {t: bytes(m.data) for t, m in s.files.items()}
                  for name, s in self.out.items()}
        self.k = self.k.kexec(self.profile)
        self.kexecs += 1
        self.lu = self.k.open_liveupdate()
        self.memfds, self.out, self.retrieved, self.parked = [], {}, {}, {}
        self.incoming = handed

    @precondition(lambda self: self.incoming)
    @rule()
    def leave_unretrieved(self) -> None:
        """Stop caring about the incoming sessions (they are dropped at the next kexec)."""
        self.parked.update(self.incoming)
        self.incoming = {}

    @precondition(lambda self: self.incoming or self.retrieved or self.parked)
    @rule(data=st.data())
    def retrieve_session(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.incoming) + sorted(self.retrieved)
                                         + sorted(self.parked) + ["never-created"]))
        if name in self.parked:
            self.incoming[name] = self.parked.pop(name)
        if name in self.incoming:
            err = None
        elif name in self.retrieved:
            err = errno.EINVAL
        else:
            err = errno.ENOENT
        s = self.call(err, lambda: self.lu.retrieve_session(name))
        if s is not None:
            self.retrieved[name] = InSess(s, self.incoming.pop(name))

    @precondition(lambda self: self.retrieved)
    @rule(data=st.data())
    def retrieve_fd(self, data: st.DataObject) -> None:
        live = sorted(n for n, x in self.retrieved.items() if x.files and not x.finished)
        name = data.draw(st.sampled_from(live or sorted(self.retrieved)))
        sess = self.retrieved[name]
        token = data.draw(st.sampled_from(sorted(sess.files) * 3 + [7]))
        err = errno.ENOENT if sess.finished or token not in sess.files else None
        f = self.call(err, lambda: sess.fd.retrieve_fd(token))
        if f is None:
            return
        assert isinstance(f, MemfdFile)
        if token in sess.got:  # again: a new fd to the same struct file
            assert sess.got[token].file is f
            m = sess.got[token]
        else:
            want = sess.files[token]
            assert f.size == len(want) and f.read(0, f.size) == want, "preserved bytes lost"
            m = Mem(f, bytearray(want), busy_in=name)
            sess.got[token] = m
        if self.mem_of(f) is None:
            self.memfds.append(m)

    def _finished(self, sess: InSess) -> None:
        sess.finished = True
        for m in sess.got.values():
            m.busy_in = None

    @precondition(lambda self: self.retrieved)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.retrieved)))
        sess = self.retrieved[name]
        self.call(None, sess.fd.finish)
        self._finished(sess)

    @precondition(lambda self: self.retrieved)
    @rule(data=st.data())
    def close_incoming(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.retrieved)))
        sess = self.retrieved.pop(name)
        sess.fd.close()
        self._finished(sess)

    # ------------------------------------------------------------------ invariants
    @invariant()
    def contents_intact(self) -> None:
        for m in self.memfds:
            assert m.file.size == len(m.data)
            assert m.file.read(0, m.file.size) == m.data

    @invariant()
    def kernel_agrees(self) -> None:
        lu = self.k.liveupdate
        assert [s.name.decode() for s in lu.sessions.outgoing] == list(self.out)
        for s in lu.sessions.outgoing:
            assert [f.token for f in s.files.files] == list(self.out[s.name.decode()].files)
        assert sorted(s.name.decode() for s in lu.sessions.incoming) == \
            sorted(set(self.incoming) | set(self.retrieved) | set(self.parked))
        assert lu.liveupdate_number_in == self.kexecs
        assert lu.liveupdate_number_out == self.kexecs + 1

    @invariant()
    def nothing_leaked_once_all_finished(self) -> None:
        """Every hand-over block is claimed once all incoming sessions are finished."""
        if self.kexecs and not self.incoming and not self.parked \
                and all(s.finished for s in self.retrieved.values()):
            kd = KhoData.decode(self.k.machine.kho_data or b"")
            assert [pa for pa, _o in self.k.kho.unclaimed()] == sorted(
                [kd.fdt_addr, *self.k.kho.in_kept])

    @invariant()
    def preserved_memory_is_preserved(self) -> None:
        preserved = self.k.kho.preserved
        for sess in self.out.values():
            for m in sess.files.values():
                assert m.file.frozen
                for _i, pa, order in m.file.folio_list():
                    assert (pa >> 12, order) in preserved


LuoStateMachine.TestCase.settings = settings(
    max_examples=500, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestLuoStateful = LuoStateMachine.TestCase
