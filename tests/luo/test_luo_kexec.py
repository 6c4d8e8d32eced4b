"""LUO across kexec (spec luo.md §7): multi-kexec, unreclaimed sessions, hand-over corruption,
freeze rollback and large memfds.  The kernel's multi-stage selftests
(luo_kexec_simple.c, luo_multi_session.c, luo_stress_*.c) are in
tests/selftests/test_luo_kexec.py.
"""

from __future__ import annotations

import errno
import time

import pytest

from luosim.abi.luo import LUO_KHO_ENTRY_NAME, decode_luo_fdt, decode_luo_v5
from luosim.errors import KernelPanic
from luosim.hw.memory import PAGE_SHIFT
from luosim.kernel.mm.memfd import MemfdFile
from tests.luo.luo_testlib import (
    TestFile,
    TestHandler,
    boot,
    create_and_preserve_memfd,
    plan,
    raises_errno,
    restore_and_verify_memfd,
)

BOTH = pytest.mark.parametrize("profile", ["v6", "v9"])


@BOTH
def _kho_own_pages(k: object) -> list[int]:
    """The KHO root FDT page (and a kexec-metadata blob) are KHO's own, not LUO's to claim."""
    from luosim.abi.kho import KhoData
    kd = KhoData.decode(k.machine.kho_data)  # type: ignore[attr-defined]
    return sorted([kd.fdt_addr, *k.kho.in_kept])  # type: ignore[attr-defined]


@BOTH
def test_liveupdate_number_rises_over_several_kexecs(profile: str) -> None:
    """§1.3: liveupdate-number out = in + 1 (cold boot → 1), also read back from memory."""
    k = boot(profile)
    assert (k.liveupdate.liveupdate_number_in, k.liveupdate.liveupdate_number_out) == (0, 1)
    for n in range(1, 5):
        k = k.kexec(profile)
        assert k.liveupdate.liveupdate_number_in == n
        assert k.liveupdate.liveupdate_number_out == n + 1
        pa = k.kho.subtrees[LUO_KHO_ENTRY_NAME]
        blob = k.machine.memory.read(pa, 4096)
        num = (decode_luo_v5(blob[:32]).liveupdate_num if profile == "v9"
               else decode_luo_fdt(blob, require_flb=True).liveupdate_num)
        assert num == n + 1


def test_liveupdate_number_restarts_after_disabled_kernel() -> None:
    """§1.3: a kernel with LUO disabled writes no state, so the count restarts."""
    k = boot("v6").kexec("v6").kexec("v6", cmdline="liveupdate=off")
    assert k.liveupdate.liveupdate_number_in == 2 and not k.liveupdate.enabled
    k = k.kexec("v6")
    assert k.liveupdate.liveupdate_number_in == 0 and k.liveupdate.liveupdate_number_out == 1


@BOTH
def test_unreclaimed_session(profile: str) -> None:
    """§1.3: an incoming session never retrieved stays until the next reboot; its memory
    is reported unclaimed by KHO, it is not handed over again, its name is reusable."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("orphan")
    f = k.memfd_create("orphan-ram", size=8192)
    f.write(0, b"never retrieved")
    folio_pas = [pa for _i, pa, _o in f.folio_list()]
    s.preserve_fd(f, 1)
    k2 = k.kexec(profile)
    lu2 = k2.open_liveupdate()
    unclaimed = {pa for pa, _o in k2.kho.unclaimed()}
    assert set(folio_pas) <= unclaimed
    s_new = lu2.create_session("orphan")  # outgoing may reuse an incoming name
    assert s_new.name == "orphan"
    assert [x.name for x in k2.liveupdate.sessions.incoming] == [b"orphan"]
    k3 = k2.kexec(profile)
    lu3 = k3.open_liveupdate()
    r = lu3.retrieve_session("orphan")  # the new, empty one
    with raises_errno(errno.ENOENT):
        r.retrieve_fd(1)
    assert not set(folio_pas) & {pa for pa, _o in k3.kho.unclaimed()}
    assert all(k3.machine.memory.read(pa, 1) == b"\x6b" for pa in folio_pas  # scrubbed
               if pa >> 12 not in k3.mm.allocated)  # (unless k3 allocated it again)


@BOTH
def test_handover_compatible_corruption_panics(profile: str) -> None:
    """§6: a LUO hand-over with a wrong compatible → luo_restore_fail() → panic."""
    k = boot(profile)
    plan(k, ("luo.handover", 1, "corrupt:compatible"))
    with pytest.raises(KernelPanic) as info:
        k.kexec(profile)
    assert "luo" in info.value.message and info.value.kernel is not None
    assert not info.value.kernel.alive


def test_handover_panics_even_with_liveupdate_off() -> None:
    """§1.1: the incoming parse runs (and panics) even with liveupdate=off when KHO is on."""
    k = boot("v9")
    plan(k, ("luo.handover", 1, "corrupt:compatible"))
    with pytest.raises(KernelPanic):
        k.kexec("v9", cmdline="liveupdate=off")


def test_missing_flb_node_panics_luo_v1() -> None:
    """§5.1: a luo-v1 hand-over without the luo-flb node → ENOENT → panic."""
    k = boot("v7")
    plan(k, ("luo.handover", 1, "corrupt:missing-flb-node"))
    with pytest.raises(KernelPanic, match="luo-flb"):
        k.kexec("v7")


def test_session_count_corruption() -> None:
    """§5.2/§6: luo-v5 validates the block chain at early boot (panic); luo-v1 reads the
    session block at first open, so the same corruption is EIO there."""
    k = boot("v9")
    k.open_liveupdate().create_session("x")
    plan(k, ("luo.handover", 1, "corrupt:session-count"))
    with pytest.raises(KernelPanic):
        k.kexec("v9")
    k = boot("v6")
    plan(k, ("luo.handover", 1, "corrupt:session-count"))
    k2 = k.kexec("v6")
    with raises_errno(errno.EIO):
        k2.open_liveupdate()
    with raises_errno(errno.EIO):  # cached for the boot
        k2.open_liveupdate()


@pytest.mark.parametrize("src,dst", [("v6", "v9"), ("v9", "v6")])
def test_cross_abi_kexec_panics(src: str, dst: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """§5/§6: luo-v1 FDT read as luo-v5 struct (or vice versa) → compatible mismatch → panic.

    The LUO layer alone: v9 is given v6's kho-v2 root here, since the real v9
    root (kho-v3) is already refused by KHO (tests/profiles)."""
    from dataclasses import replace

    from luosim.kernel.profiles import PROFILES
    monkeypatch.setitem(PROFILES, "v9", replace(PROFILES["v9"], kho_abi="kho-v2"))
    with pytest.raises(KernelPanic):
        boot(src).kexec(dst)


def test_v6_to_v7_same_abi() -> None:
    """§0/§5.1: v6 and v7 share the luo-v1 ABI, so sessions cross between them."""
    k = boot("v6")
    s = k.open_liveupdate().create_session("same-abi")
    create_and_preserve_memfd(k, s, 3, "v6→v7")
    k2 = k.kexec("v7")
    restore_and_verify_memfd(k2.open_liveupdate().retrieve_session("same-abi"), 3, "v6→v7")


@BOTH
def test_unknown_file_compatible_is_eio(profile: str) -> None:
    """§3.6/§6: a file record whose handler is missing in the new kernel → EIO on open."""
    k = boot(profile)
    h = TestHandler(k)
    k.liveupdate.register_file_handler(h)
    s = k.open_liveupdate().create_session("needs-test-handler")
    s.preserve_fd(TestFile(k, 42), 1)
    k2 = k.kexec(profile)  # nobody registers test-file-v1 here
    with raises_errno(errno.EIO):
        k2.open_liveupdate()


@BOTH
def test_freeze_failure_rolls_back(profile: str) -> None:
    """§1.2/§3.3: a freeze error unfreezes earlier files (forward order) and earlier
    sessions (reverse order), reboot fails, the kernel lives on and a retry succeeds."""
    k = boot(profile)
    h = TestHandler(k)
    k.liveupdate.register_file_handler(h)
    lu = k.open_liveupdate()
    s0 = lu.create_session("s0")
    s1 = lu.create_session("s1")
    files = [TestFile(k, v) for v in (0xA0, 0xA1, 0xB0, 0xB1, 0xB2)]
    s0.preserve_fd(files[0], 1)
    s0.preserve_fd(files[1], 2)
    s1.preserve_fd(files[2], 1)
    s1.preserve_fd(files[3], 2)
    s1.preserve_fd(files[4], 3)
    files[3].fail_freeze = errno.EBUSY
    h.log.clear()
    with raises_errno(errno.EBUSY):
        k.kexec(profile)
    assert k.alive and k.machine.current is k
    assert h.log == [("freeze", 0xA0), ("freeze", 0xA1), ("freeze", 0xB0),
                     ("freeze-failed", 0xB1), ("unfreeze", 0xB0),
                     ("unfreeze", 0xA0), ("unfreeze", 0xA1)]
    assert not any(f.frozen for f in files)
    mem = k.machine.memory
    if profile == "v6":
        assert mem.read(k.liveupdate.sessions.block_pa, 88) == bytes(88)
    files[3].fail_freeze = 0
    k2 = k.kexec(profile)
    h2 = TestHandler(k2)
    k2.liveupdate.register_file_handler(h2)
    r1 = k2.open_liveupdate().retrieve_session("s1")
    got = r1.retrieve_fd(2)
    assert isinstance(got, TestFile) and got.value == 0xB1


@BOTH
def test_freeze_fault_point(profile: str) -> None:
    """§3.3: the luo.file.<compatible>.freeze fault point fails the reboot cleanly."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("fp")
    create_and_preserve_memfd(k, s, 1, "survives a failed reboot")
    compat = k.memfd.compatible
    plan(k, (f"luo.file.{compat}.freeze", 1, "EINVAL"))
    with raises_errno(errno.EINVAL):
        k.kexec(profile)
    k2 = k.kexec(profile)
    restore_and_verify_memfd(k2.open_liveupdate().retrieve_session("fp"), 1,
                             "survives a failed reboot")


@BOTH
def test_retrieve_failure_is_remembered(profile: str) -> None:
    """§3.4 (P2+): a failed retrieve returns the same error without calling the handler."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("rf")
    create_and_preserve_memfd(k, s, 1, "x")
    k2 = k.kexec(profile)
    plan(k2, (f"luo.file.{k2.memfd.compatible}.retrieve", 1, "ENODEV"))
    s2 = k2.open_liveupdate().retrieve_session("rf")
    with raises_errno(errno.ENODEV):
        s2.retrieve_fd(1)
    with raises_errno(errno.ENODEV):
        s2.retrieve_fd(1)
    assert k2.machine.faults.reached[f"luo.file.{k2.memfd.compatible}.retrieve"] == 1
    s2.finish()


@BOTH
def test_can_finish_busy_and_close_leak(profile: str) -> None:
    """§3.5/§2.5: can_finish false → EBUSY, retryable; a failing implicit finish at close
    leaves the session retrieved with no fd (EINVAL on retrieve)."""
    k = boot(profile)
    k.liveupdate.register_file_handler(TestHandler(k))
    s = k.open_liveupdate().create_session("busy")
    s.preserve_fd(TestFile(k, 5), 1)
    k2 = k.kexec(profile)
    k2.liveupdate.register_file_handler(TestHandler(k2))
    lu2 = k2.open_liveupdate()
    r = lu2.retrieve_session("busy")
    f = r.retrieve_fd(1)
    assert isinstance(f, TestFile)
    f.busy = True
    with raises_errno(errno.EBUSY):
        r.finish()
    assert r.files == 1
    r.close()  # implicit finish fails; close itself succeeds
    with raises_errno(errno.EINVAL):
        lu2.retrieve_session("busy")
    assert k2.liveupdate.sessions.incoming[0].leaked


@BOTH
def test_carry_forward_needs_finish(profile: str) -> None:
    """§1.3 (P2+): a retrieved file is EBUSY for a new session until its session finishes."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("gen1")
    create_and_preserve_memfd(k, s, 1, "carried")
    k2 = k.kexec(profile)
    lu2 = k2.open_liveupdate()
    r = lu2.retrieve_session("gen1")
    f = r.retrieve_fd(1)
    out = lu2.create_session("gen2")
    with raises_errno(errno.EBUSY):
        out.preserve_fd(f, 1)
    r.finish()
    out.preserve_fd(f, 1)
    k3 = k2.kexec(profile)
    restore_and_verify_memfd(k3.open_liveupdate().retrieve_session("gen2"), 1, "carried")


@BOTH
def test_byte_memfd_exact_across_kexec(profile: str) -> None:
    """§5.3: a byte memfd with holes comes back bit-identical (size, holes, bytes)."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("bytes")
    f = k.memfd_create("bytes", size=5 * 4096 + 123)
    pattern = bytes(range(256)) * 40
    f.write(100, pattern)
    f.write(4 * 4096 + 7, b"tail")
    before = f.read(0, f.size)
    s.preserve_fd(f, 9)
    with raises_errno(errno.EPERM):
        f.write(f.size, b"grow")  # frozen while preserved
    f.write(0, b"in-size writes still work")
    before = f.read(0, f.size)
    k2 = k.kexec(profile)
    f2 = k2.open_liveupdate().retrieve_session("bytes").retrieve_fd(9)
    assert isinstance(f2, MemfdFile)
    assert f2.size == 5 * 4096 + 123 and f2.read(0, f2.size) == before


@BOTH
def test_one_gib_memfd_order9_fingerprint(profile: str) -> None:
    """§5.3: a 1 GiB memfd of 512 order-9 synthetic folios keeps its fingerprint."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("guest-ram")
    f = k.memfd_create("guest-ram", folio_order=9)
    t0 = time.perf_counter()
    f.fill(0, 1 << 30, seed=0xC0FFEE)
    f.write(12345, b"dirty bytes inside a huge folio")
    fp = f.fingerprint()
    pas = f.folio_list()
    assert len(pas) == 512
    s.preserve_fd(f, 1)
    f.close()
    k2 = k.kexec(profile)
    f2 = k2.open_liveupdate().retrieve_session("guest-ram").retrieve_fd(1)
    assert isinstance(f2, MemfdFile)
    elapsed = time.perf_counter() - t0
    assert f2.size == 1 << 30 and f2.fingerprint() == fp
    assert f2.folio_list() == pas  # same physical folios, same orders
    assert f2.read(12345, 31) == b"dirty bytes inside a huge folio"
    assert elapsed < 10, elapsed
    assert all(pa >> PAGE_SHIFT for _i, pa, _o in pas)
