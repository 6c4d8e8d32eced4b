"""The multi-stage LUO selftests of mainline tools/testing/selftests/liveupdate/.

One test per C program (each has one test, run as stage 1, kexec, stage 2):
luo_kexec_simple.c and luo_multi_session.c (torvalds/linux 7b24dd46a70e),
luo_stress_sessions.c (7b24dd46a70e; 2000 sessions) and luo_stress_files.c
(637315cb400e; 500 files).  Every ``fail_exit()`` condition of the C code
is an assertion here (via :mod:`tests.selftests.lu_utils`); stage 1 closes
/dev/liveupdate and keeps the session fds open through the reboot as the
daemon does.  Run on v9 (luo-v5) and, where the luo-v1 limits allow, v6.
"""

from __future__ import annotations

import time

import pytest

from luosim.kernel.kernel import Kernel
from luosim.kernel.liveupdate.uapi import LiveupdateDevice, Session
from tests.selftests.lu_utils import (
    boot,
    create_and_preserve_memfd,
    create_state_file,
    luo_test,
    restore_and_read_stage,
    restore_and_verify_memfd,
)

BOTH = pytest.mark.parametrize("profile", ["v6", "v9"])


def _kho_own_only(k: Kernel) -> bool:
    """Nothing but KHO's own pages is left unclaimed (everything was finished): the
    root FDT and, on a kexec-metadata build (v9), the metadata blob KHO keeps."""
    from luosim.abi.kho import KhoData
    kd = KhoData.decode(k.machine.kho_data or b"")
    return [pa for pa, _o in k.kho.unclaimed()] == sorted([kd.fdt_addr, *k.kho.in_kept])


@BOTH
def test_luo_kexec_simple(profile: str) -> None:
    """luo_kexec_simple.c: "test-session", token 0x1A, "hello kexec world"; state 999."""
    state_name, state_token = "kexec_simple_state", 999
    held: list[Session] = []

    def stage1(k: Kernel, lu: LiveupdateDevice) -> None:
        held.append(create_state_file(k, lu, state_name, state_token, 2))
        s = lu.create_session("test-session")
        assert s.fd >= 0
        create_and_preserve_memfd(k, s, 0x1A, "hello kexec world")
        held.append(s)
        lu.close()

    def stage2(k: Kernel, lu: LiveupdateDevice, state: Session) -> None:
        assert restore_and_read_stage(state, state_token) == 2
        s = lu.retrieve_session("test-session")
        assert s.fd >= 0
        restore_and_verify_memfd(s, 0x1A, "hello kexec world").close()
        s.finish()
        s.close()
        state.finish()
        state.close()

    k2 = luo_test(state_name, stage1, stage2, boot(profile))
    assert k2.liveupdate.sessions.incoming == []
    assert _kho_own_only(k2)


@BOTH
def test_luo_multi_session(profile: str) -> None:
    """luo_multi_session.c: two empty sessions, one with one memfd, one with two."""
    state_name, state_token = "kexec_multi_state", 998
    files = {"multi-test-files-1": [(0x1001, "Data for session files 1")],
             "multi-test-files-2": [(0x2002, "First file for session files 2"),
                                    (0x3003, "Second file for session files 2")]}
    empties = ["multi-test-empty-1", "multi-test-empty-2"]
    held: list[Session] = []

    def stage1(k: Kernel, lu: LiveupdateDevice) -> None:
        held.append(create_state_file(k, lu, state_name, state_token, 2))
        held.extend(lu.create_session(n) for n in empties)
        for name, mfds in files.items():
            s = lu.create_session(name)
            for token, data in mfds:
                create_and_preserve_memfd(k, s, token, data)
            held.append(s)
        assert all(s.fd >= 0 for s in held)
        lu.close()

    def stage2(k: Kernel, lu: LiveupdateDevice, state: Session) -> None:
        assert restore_and_read_stage(state, state_token) == 2
        got = {n: lu.retrieve_session(n) for n in [*empties, *files]}
        for name, mfds in files.items():
            for token, data in mfds:
                restore_and_verify_memfd(got[name], token, data).close()
        for s in got.values():
            s.finish()
            s.close()
        state.finish()
        state.close()

    k2 = luo_test(state_name, stage1, stage2, boot(profile))
    assert k2.liveupdate.sessions.incoming == []
    assert _kho_own_only(k2)


def test_luo_stress_sessions() -> None:
    """luo_stress_sessions.c: 2000 sessions "many-test-%d", each retrieved and finished."""
    n = 2000
    state_name, state_token = "kexec_many_state", 999
    held: list[Session] = []
    t0 = time.perf_counter()

    def stage1(k: Kernel, lu: LiveupdateDevice) -> None:
        held.append(create_state_file(k, lu, state_name, state_token, 2))
        for i in range(n):
            s = lu.create_session(f"many-test-{i}")
            assert s.fd >= 0, f"luo_create_session for 'many-test-{i}' at index {i}"
            held.append(s)
        lu.close()

    def stage2(k: Kernel, lu: LiveupdateDevice, state: Session) -> None:
        assert restore_and_read_stage(state, state_token) == 2
        for i in range(n):
            s = lu.retrieve_session(f"many-test-{i}")
            assert s.fd >= 0
            s.finish()
            s.close()
        state.finish()
        state.close()

    k2 = luo_test(state_name, stage1, stage2)
    assert k2.liveupdate.sessions.incoming == []
    assert time.perf_counter() - t0 < 20  # seconds, not minutes (no quadratic lookups)


def test_luo_stress_files() -> None:
    """luo_stress_files.c: 500 memfds in "many_files_session", tokens 0..499, "file-data-%d"."""
    n = 500
    state_name, state_token = "kexec_many_files_state", 9999
    held: list[Session] = []

    def stage1(k: Kernel, lu: LiveupdateDevice) -> None:
        held.append(create_state_file(k, lu, state_name, state_token, 2))
        s = lu.create_session("many_files_session")
        for i in range(n):
            create_and_preserve_memfd(k, s, i, f"file-data-{i}")
        assert s.files == n
        held.append(s)
        lu.close()

    def stage2(k: Kernel, lu: LiveupdateDevice, state: Session) -> None:
        assert restore_and_read_stage(state, state_token) == 2
        s = lu.retrieve_session("many_files_session")
        for i in range(n):
            restore_and_verify_memfd(s, i, f"file-data-{i}").close()
        s.finish()
        s.close()
        state.finish()
        state.close()

    k2 = luo_test(state_name, stage1, stage2)
    assert _kho_own_only(k2)
