"""hugetlb memfds keep their pages as runs (kernel/mm/hugetlb.py): the same
pages, content, records and hand-over as one page at a time."""

from __future__ import annotations

import errno
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from luosim.abi.hugetlb import MFD_HUGE_1GB, MFD_HUGE_2MB, MFD_HUGETLB, HugemfdFolioSer
from luosim.errors import KernelError
from luosim.hw.memory import PAGE_SHIFT
from luosim.kernel.mm.hugetlb import HugetlbMemfdFile
from tests.luo.luo_testlib import boot

H2M = MFD_HUGETLB | MFD_HUGE_2MB
H1G = MFD_HUGETLB | MFD_HUGE_1GB
M2 = 2 << 20


OPS = st.lists(st.tuples(st.sampled_from(["fill", "write", "punch", "truncate", "falloc"]),
                         st.integers(0, 11), st.integers(1, 4)), max_size=12)


@settings(max_examples=25, deadline=None)
@given(OPS)
def test_runs_match_per_page_records_and_survive_kexec(ops: list[tuple[str, int, int]]) -> None:
    k = boot("v9", cmdline="hugepagesz=2M hugepages=16", memory="4GiB")
    s = k.open_liveupdate().create_session("vm")
    f = k.memfd_create("ram", size=12 * M2, flags=H2M)
    for op, at, n in ops:
        n = min(n, 12 - at)
        free = k.hugetlb.hstates[9].free_huge_pages
        if op == "fill" and n <= free:
            f.fill(at * M2, n * M2, at * 7 + n)
        elif op == "write" and free:
            f.write(at * M2 + 5, b"x" * 9)
        elif op == "punch":
            f.fallocate(at * M2, n * M2, 0x03)
        elif op == "truncate":
            f.truncate((at + 1) * M2)
            f.truncate(12 * M2)
        elif op == "falloc" and n <= free:
            f.fallocate(at * M2, n * M2, 0x01)
    pages = f.folios()
    assert [i for i, _pa, _o in pages] == sorted({i for i, _pa, _o in pages})
    assert len({pa for _i, pa, _o in pages}) == len(pages) == f.nr_folios
    fp = f.fingerprint()
    content = hashlib.sha256(f.read(0, f.size)).digest()
    if len(pages) + k.hugetlb.hstates[9].free_huge_pages < 12:
        return
    s.preserve_fd(f, 1)
    pages = f.folios()  # populate() filled the holes
    k2 = k.kexec("v9", cmdline="hugepagesz=2M hugepages=16")
    f2 = k2.open_liveupdate().retrieve_session("vm").retrieve_fd(1)
    assert isinstance(f2, HugetlbMemfdFile)
    assert f2.folios() == pages and f2.fingerprint() == fp
    assert hashlib.sha256(f2.read(0, f2.size)).digest() == content


def test_folio_array_is_one_record_per_folio() -> None:
    """The generated array reads like the kernel's per-folio hugemfd_folio_ser array."""
    k = boot("v9", cmdline="hugepagesz=2M hugepages=16", memory="4GiB")
    f = k.memfd_create("ram", size=10 * M2, flags=H2M)
    f.populate()
    f.fallocate(3 * M2, 2 * M2, 0x03)
    f.populate()  # holes refilled from the head of the free list: LIFO
    recs = [HugemfdFolioSer(pa >> PAGE_SHIFT, i) for i, pa, _o in f.folios()]
    from luosim.abi.hugetlb import encode_hugemfd_folios
    from luosim.abi.memfd import folio_records
    gen = b"".join(r.materialise(0, r.nbytes) for r in folio_records(f.folio_runs(), 0))
    assert gen == encode_hugemfd_folios(recs)


def test_terabyte_of_gigantic_pages_hands_over_the_same_folios() -> None:
    pool = "hugepagesz=1G hugepages=1024"
    k = boot("v9", cmdline=pool, memory="1088GiB")
    s = k.open_liveupdate().create_session("vm")
    f = k.memfd_create("ram", size=1024 << 30, flags=H1G)
    f.fill(0, 1024 << 30, 5)
    f.write(3 << 30, b"guest")
    fp = f.fingerprint()
    s.preserve_fd(f, 1)
    pages = f.folios()
    assert len(pages) == 1024 and len(f.folio_runs()) <= 2
    k2 = k.kexec("v9", cmdline=pool)
    f2 = k2.open_liveupdate().retrieve_session("vm").retrieve_fd(1)
    assert isinstance(f2, HugetlbMemfdFile)
    assert f2.folios() == pages and f2.fingerprint() == fp
    assert f2.read(3 << 30, 5) == b"guest"


def test_stores_fault_pages_in_but_never_grow_the_file() -> None:
    """hugetlbfs has no write(): a store through the mapping beyond i_size is
    SIGBUS (EFAULT here) and the size stays; a store into a hole faults one
    huge page in from the pool; reads of holes are zeros (hugetlbfs_read_iter)."""
    k = boot("v9", cmdline="hugepagesz=2M hugepages=4", memory="4GiB")
    f = k.memfd_create("ram", size=3 * M2, flags=H2M)
    with pytest.raises(KernelError) as exc:
        f.write(3 * M2 - 4, b"12345678")
    assert exc.value.errno == errno.EFAULT and f.size == 3 * M2 and f.nr_folios == 0
    assert f.write(M2 + 5, b"abc") == 3
    assert f.nr_folios == 1 and k.hugetlb.hstates[9].free_huge_pages == 3
    assert f.read(M2 - 2, 10) == b"\0" * 7 + b"abc"
    assert f.read(0, 3 * M2) == b"\0" * (M2 + 5) + b"abc" + b"\0" * (2 * M2 - 8)
