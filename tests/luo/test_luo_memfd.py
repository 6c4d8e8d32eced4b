"""The memfd model and its LUO handler (spec luo.md §5.3)."""

from __future__ import annotations

import errno

import pytest

from luosim.abi.memfd import (
    F_SEAL_GROW,
    F_SEAL_SEAL,
    F_SEAL_WRITE,
    MemfdLuoFolioSer,
    MemfdLuoSerV1,
    MemfdLuoSerV2,
    decode_folio_array,
)
from luosim.hw.memory import PAGE_SHIFT
from luosim.kernel.mm.memfd import MemfdFile
from tests.luo.luo_testlib import boot, plan, raises_errno

BOTH = pytest.mark.parametrize("profile", ["v6", "v9"])


@BOTH
def test_memfd_basic_io(profile: str) -> None:
    """§5.3 (shmem behaviour the handler relies on): holes read as zero, writes grow
    the file, truncate zeroes the tail."""
    k = boot(profile)
    f = k.memfd_create("io")
    assert f.read(0, 10) == b""
    f.write(5000, b"abc")
    assert f.size == 5003 and f.read(4998, 10) == b"\0\0abc"
    assert len(f.folios()) == 1  # only the touched page exists
    f.truncate(5001)
    f.truncate(6000)
    assert f.read(5000, 3) == b"a\0\0"
    f.truncate(0)
    assert f.folios() == []


@BOTH
def test_memfd_seals(profile: str) -> None:
    """§5.3 seals: F_ADD_SEALS: write/grow seals refuse with EPERM; F_SEAL_SEAL freezes the set."""
    k = boot(profile)
    f = k.memfd_create("sealed", size=4096, seals=F_SEAL_GROW)
    with raises_errno(errno.EPERM):
        f.write(4096, b"x")
    f.add_seals(F_SEAL_WRITE | F_SEAL_SEAL)
    with raises_errno(errno.EPERM):
        f.write(0, b"x")
    with raises_errno(errno.EPERM):
        f.add_seals(F_SEAL_GROW)


@BOTH
def test_frozen_while_preserved(profile: str) -> None:
    """§5.3: preserved memfds refuse growth/shrink (EPERM); writes in size and seals work."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("frozen")
    f = k.memfd_create("frozen", size=8192)
    s.preserve_fd(f, 1)
    for op in (lambda: f.truncate(4096), lambda: f.truncate(1 << 20),
               lambda: f.write(8190, b"xyz")):
        with raises_errno(errno.EPERM):
            op()
    f.write(8189, b"xyz")
    f.add_seals(F_SEAL_GROW)
    s.close()
    f.truncate(4096)  # unfrozen after unpreserve


@BOTH
def test_preserve_record_layout(profile: str) -> None:
    """§5.3: the record holds size and the folio array via kho_vmalloc; holes are
    allocated at preserve, folio flags DIRTY|UPTODATE."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("layout")
    f = k.memfd_create("layout", size=3 * 4096)
    f.write(4096, b"middle")
    s.preserve_fd(f, 1)
    lf = s.session.files.files[0]
    raw = k.machine.memory.read(lf.serialized_data, 48)
    ser = MemfdLuoSerV2.decode(raw) if profile == "v9" else MemfdLuoSerV1.decode(raw)
    assert ser.size == 3 * 4096 and ser.nr_folios == 3
    assert (ser.folios.first >> PAGE_SHIFT, 0) in k.kho.preserved
    chunk = k.machine.memory.read(ser.folios.first, 4096)
    first_page = int.from_bytes(chunk[8:16], "little")
    recs: list[MemfdLuoFolioSer] = decode_folio_array(k.machine.memory.read(first_page, 4096), 3)
    assert [r.index for r in recs] == [0, 1, 2]
    assert all(r.flags == 3 for r in recs)
    assert [r.pfn << PAGE_SHIFT for r in recs] == [pa for _i, pa, _o in f.folio_list()]


@BOTH
def test_memfd_finish_without_retrieve_frees_everything(profile: str) -> None:
    """§5.3: finish of a never-retrieved memfd restores and frees every folio and the record."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("unretrieved")
    f = k.memfd_create("big", folio_order=9)
    f.fill(0, 64 << 20, seed=7)
    s.preserve_fd(f, 1)
    k2 = k.kexec(profile)
    before = k2.mm.free_pages_count()
    r = k2.open_liveupdate().retrieve_session("unretrieved")
    r.finish()
    assert k2.mm.free_pages_count() - before >= (64 << 20) >> PAGE_SHIFT
    # only KHO's own root FDT page, and on kernels with kexec-metadata its
    # blob, which kho_in_kexec_metadata() copies and leaves reserved
    kept = 2 if k2.profile.kexec_metadata else 1
    assert len(k2.kho.unclaimed()) == kept


@BOTH
def test_memfd_fault_points(profile: str) -> None:
    """§5.3: memfd.preserve (ENOMEM/EFBIG) and memfd.retrieve (EIO) fail cleanly."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("fp")
    f = k.memfd_create("fp", size=4096)
    f.write(0, b"fault points")
    preserved = set(k.kho.preserved)
    plan(k, ("memfd.preserve", 1, "EFBIG"))
    with raises_errno(errno.EFBIG):
        s.preserve_fd(f, 1)
    assert k.kho.preserved == preserved and not f.frozen and s.files == 0
    s.preserve_fd(f, 1)
    k2 = k.kexec(profile)
    plan(k2, ("memfd.retrieve", 2, "EIO"))  # occurrence counts span kexecs: none so far
    r = k2.open_liveupdate().retrieve_session("fp")
    got = r.retrieve_fd(1)
    assert isinstance(got, MemfdFile) and got.read(0, 12) == b"fault points"


@BOTH
def test_memfd_retrieve_eio_leaks_but_stays_consistent(profile: str) -> None:
    """§3.4/§5.3: memfd.retrieve=EIO: the error is remembered, finish does nothing for it."""
    k = boot(profile)
    s = k.open_liveupdate().create_session("eio")
    f = k.memfd_create("eio", size=4096)
    s.preserve_fd(f, 1)
    k2 = k.kexec(profile)
    plan(k2, ("memfd.retrieve", 1, "EIO"))
    r = k2.open_liveupdate().retrieve_session("eio")
    with raises_errno(errno.EIO):
        r.retrieve_fd(1)
    r.finish()
    assert any(pa == f.folio_list()[0][1] for pa, _o in k2.kho.unclaimed())


def test_memfd_v2_seals_cross_kexec() -> None:
    """§5.3 memfd-v2: seals are preserved and re-applied; memfd-v1 retrieves unsealable."""
    k = boot("v9")
    s = k.open_liveupdate().create_session("seals")
    f = k.memfd_create("seals", size=4096, seals=F_SEAL_GROW)
    s.preserve_fd(f, 1)
    f2 = k.kexec("v9").open_liveupdate().retrieve_session("seals").retrieve_fd(1)
    assert isinstance(f2, MemfdFile) and f2.seals == F_SEAL_GROW
    k = boot("v6")
    s = k.open_liveupdate().create_session("seals")
    s.preserve_fd(k.memfd_create("s", size=4096, seals=F_SEAL_GROW), 1)
    f3 = k.kexec("v6").open_liveupdate().retrieve_session("seals").retrieve_fd(1)
    assert isinstance(f3, MemfdFile) and f3.seals == F_SEAL_SEAL


def test_fill_alignment_and_fingerprint() -> None:
    """§5.3 / DESIGN.md scale model: fill() works in whole folios; fingerprints ignore
    holes but see content changes."""
    k = boot("v9")
    f = k.memfd_create("fp", folio_order=9)
    with raises_errno(errno.EINVAL):
        f.fill(4096, 2 << 20, seed=1)
    f.truncate(8 << 20)
    empty = f.fingerprint()
    f.populate()
    assert f.fingerprint() == empty
    f.fill(0, 2 << 20, seed=1)
    one = f.fingerprint()
    assert one != empty
    f.write(100, b"x")
    assert f.fingerprint() != one
