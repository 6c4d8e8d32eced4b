"""hugetlb pools, hugetlb memfds and their live update (kernel/mm/hugetlb.py).

Golden layouts come from include/linux/kho/abi/hugetlb.h of the hugetlb RFC
series as stored in prati0100/linux (commit 23652ff7960d): all structs
``__packed``; ``hugetlb_hstate_ser`` {u64 nr_pages; u8 order} = 9 bytes,
``hugetlb_ser`` {hstates[4]; u8 nr_hstates} = 37, ``hugemfd_folio_ser``
{u64 pfn:52, reserved:12; u64 index} = 16, ``hugemfd_ser`` {u64 size; u64
pos; u64 nr_folios; struct kho_vmalloc folios (16); u8 order} = 41.
"""

from __future__ import annotations

import errno
import struct

import pytest

from luosim.abi.hugetlb import (
    HUGE_MEMFD_COMPATIBLE,
    HUGETLB_FLB_COMPATIBLE,
    MFD_HUGE_1GB,
    MFD_HUGE_2MB,
    MFD_HUGE_SHIFT,
    MFD_HUGETLB,
    HugemfdFolioSer,
    HugemfdSer,
    HugetlbHstateSer,
    HugetlbSer,
)
from luosim.abi.memfd import F_SEAL_SEAL, KhoVmalloc
from luosim.kernel.kernel import Kernel
from luosim.kernel.mm.hugetlb import HugetlbMemfdFile
from tests.luo.luo_testlib import boot, raises_errno

H2M = MFD_HUGETLB | MFD_HUGE_2MB
H1G = MFD_HUGETLB | MFD_HUGE_1GB
POOL = "hugepagesz=1G hugepages=2 hugepagesz=2M hugepages=8"


def _kho_own_only(k: Kernel) -> bool:
    """Only KHO's own pages are unclaimed: the root FDT and, on v9, the kexec-metadata blob."""
    from luosim.abi.kho import KhoData
    kd = KhoData.decode(k.machine.kho_data or b"")
    return [pa for pa, _o in k.kho.unclaimed()] == sorted([kd.fdt_addr, *k.kho.in_kept])


def _pool(k: Kernel, order: int) -> tuple[int, int]:
    h = k.hugetlb.hstates[order]
    return h.nr_huge_pages, h.free_huge_pages


# ---------------------------------------------------------------- ABI (golden)
def test_golden_hugetlb_ser_layout() -> None:
    """hugetlb_ser: hstates[i] at 9*i (nr_pages u64, order u8), nr_hstates at 36."""
    raw = HugetlbSer((HugetlbHstateSer(3, 9), HugetlbHstateSer(1, 18))).encode()
    want = bytearray(37)
    want[0:8] = (3).to_bytes(8, "little")
    want[8] = 9
    want[9:17] = (1).to_bytes(8, "little")
    want[17] = 18
    want[36] = 2
    assert raw == bytes(want) and HugetlbSer.SIZE == 37 and HugetlbHstateSer.SIZE == 9
    assert HugetlbSer.decode(raw).nr_pages(18) == 1 and HugetlbSer.decode(raw).nr_pages(30) == 0


def test_golden_hugemfd_ser_layout() -> None:
    """hugemfd_ser: size @0, pos @8, nr_folios @16, kho_vmalloc @24, order u8 @40."""
    desc = KhoVmalloc(0x1234000, 1, 1, 0)
    raw = HugemfdSer(2 << 30, 7, 2, desc, 18).encode()
    assert len(raw) == 41 == HugemfdSer.SIZE
    assert struct.unpack_from("<QQQ", raw) == (2 << 30, 7, 2)
    assert struct.unpack_from("<QIHH", raw, 24) == (0x1234000, 1, 1, 0)
    assert raw[40] == 18
    folio = HugemfdFolioSer(0x40000, 0x40000).encode()
    assert folio == struct.pack("<QQ", 0x40000, 0x40000) and HugemfdFolioSer.SIZE == 16
    assert (HUGETLB_FLB_COMPATIBLE, HUGE_MEMFD_COMPATIBLE) == ("hugetlb-v1", "huge-memfd-v1")
    # include/uapi/asm-generic/hugetlb_encode.h: HUGETLB_FLAG_ENCODE_2MB = 21 << 26
    assert (MFD_HUGETLB, MFD_HUGE_2MB, MFD_HUGE_1GB) == (4, 21 << 26, 30 << 26)


# ---------------------------------------------------------------- pools and files
def test_pools_from_cmdline() -> None:
    """hugepagesz=/hugepages= pairs; a bare hugepages= is the default (2 MiB) size."""
    k = boot("v9", cmdline=POOL, memory="8GiB")
    assert _pool(k, 18) == (2, 2) and _pool(k, 9) == (8, 8)
    k = boot("v9", cmdline="hugepages=3 hugepagesz=64K hugepages=5")
    assert _pool(k, 9) == (3, 3) and _pool(k, 18) == (0, 0)
    assert any("unsupported hugepagesz=64K" in m for _l, _s, m in k.dmesg)


def test_short_pool_is_logged() -> None:
    """Too little memory: the pool keeps what it got and the kernel says so."""
    k = boot("v9", cmdline="hugepagesz=1G hugepages=8", memory="4GiB")
    got = k.hugetlb.hstates[18].nr_huge_pages
    assert 0 < got < 8
    assert any(f"Only allocated {got} hugepages" in m for _l, _s, m in k.dmesg)


def test_memfd_create_errors() -> None:
    k = boot("v9", cmdline=POOL, memory="8GiB")
    with raises_errno(errno.ENODEV):  # no 64 KiB hstate on x86-64
        k.memfd_create("x", flags=MFD_HUGETLB | (16 << MFD_HUGE_SHIFT))
    with raises_errno(errno.EINVAL):  # a huge page size without MFD_HUGETLB
        k.memfd_create("x", flags=MFD_HUGE_2MB)
    with raises_errno(errno.EINVAL):  # sizes are whole huge pages
        k.memfd_create("x", size=4096, flags=H2M)
    f = k.memfd_create("x", size=4 << 20, flags=MFD_HUGETLB)  # default hstate
    assert isinstance(f, HugetlbMemfdFile) and f.hstate.order == 9


def test_pages_come_from_the_pool_and_go_back() -> None:
    k = boot("v9", cmdline="hugepagesz=2M hugepages=2")
    f = k.memfd_create("ram", size=6 << 20, flags=H2M)
    f.write(0, b"a")
    f.write(2 << 20, b"b")
    assert _pool(k, 9) == (2, 0)
    with raises_errno(errno.ENOMEM):  # a fault with the pool empty
        f.write(4 << 20, b"c")
    with raises_errno(errno.ENOSPC):  # fallocate: alloc_hugetlb_folio() fails
        f.fallocate(4 << 20, 2 << 20)
    f.close()
    assert _pool(k, 9) == (2, 2)


def test_preserve_with_short_pool_is_enomem_and_rolls_back() -> None:
    """hugemfd_preserve() pins every page: holes need pool pages (memfd_pin_folios)."""
    k = boot("v9", cmdline="hugepagesz=2M hugepages=1")
    s = k.open_liveupdate().create_session("vm")
    f = k.memfd_create("ram", size=4 << 20, flags=H2M)
    before = set(k.kho.preserved)
    with raises_errno(errno.ENOMEM):
        s.preserve_fd(f, 1)
    assert not f.frozen and s.files == 0
    assert k.kho.preserved == before
    f.truncate(2 << 20)  # resizable again
    s.preserve_fd(f, 1)


@pytest.mark.parametrize("profile", ["v6", "v7"])
def test_profiles_without_the_series_refuse_enoent(profile: str) -> None:
    """luo-v1 profiles: memfd_luo_can_preserve() refuses hugetlb, no other handler → ENOENT."""
    k = boot(profile, cmdline="hugepagesz=2M hugepages=2")
    s = k.open_liveupdate().create_session("vm")
    f = k.memfd_create("ram", size=2 << 20, flags=H2M)
    with raises_errno(errno.ENOENT):
        s.preserve_fd(f, 1)


def test_flb_counts_and_unpreserve() -> None:
    """The hugetlb-v1 FLB counts preserved pages per hstate in memory; close undoes all."""
    k = boot("v9", cmdline=POOL, memory="8GiB")
    idle = set(k.kho.preserved)
    s = k.open_liveupdate().create_session("vm")
    f = k.memfd_create("ram", size=6 << 20, flags=H2M)
    g = k.memfd_create("big", size=1 << 30, flags=H1G)
    s.preserve_fd(f, 1)
    s.preserve_fd(g, 2)
    flb_pa = k.liveupdate.flbs.out[k.hugetlb.flb].data
    ser = HugetlbSer.decode(k.machine.memory.read(flb_pa, HugetlbSer.SIZE))
    assert ser.nr_pages(9) == 3 and ser.nr_pages(18) == 1
    with raises_errno(errno.EPERM):
        f.truncate(2 << 20)
    s.close()
    assert k.kho.preserved == idle and not f.frozen and not g.frozen


# ---------------------------------------------------------------- across kexec
def test_hugetlb_memfd_across_kexec_keeps_pool_size() -> None:
    """Next boot allocates hugepages= minus the preserved pages; retrieve adds them back."""
    k = boot("v9", cmdline=POOL, memory="8GiB")
    s = k.open_liveupdate().create_session("vm")
    f = k.memfd_create("ram", size=1 << 30, flags=H1G)
    f.fill(0, 1 << 30, 42)
    f.write(100, b"guest")
    fp = f.fingerprint()
    s.preserve_fd(f, 1)
    pa = f.folios()[0][1]
    k2 = k.kexec("v9", cmdline=POOL)
    assert _pool(k2, 18) == (1, 1)  # 2 requested, 1 preserved
    s2 = k2.open_liveupdate().retrieve_session("vm")
    f2 = s2.retrieve_fd(1)
    assert isinstance(f2, HugetlbMemfdFile)
    assert f2.fingerprint() == fp and f2.read(100, 5) == b"guest"
    assert f2.folios()[0][1] == pa and f2.seals == F_SEAL_SEAL
    assert _pool(k2, 18) == (2, 1)
    s2.finish()
    f2.close()
    assert _pool(k2, 18) == (2, 2)
    assert _kho_own_only(k2)


def test_finish_without_retrieve_frees_into_the_pool() -> None:
    k = boot("v9", cmdline=POOL, memory="8GiB")
    s = k.open_liveupdate().create_session("vm")
    f = k.memfd_create("ram", size=4 << 20, flags=H2M)
    f.populate()
    s.preserve_fd(f, 1)
    k2 = k.kexec("v9", cmdline=POOL)
    assert _pool(k2, 9) == (6, 6)
    k2.open_liveupdate().retrieve_session("vm").finish()
    assert _pool(k2, 9) == (8, 8)
    assert _kho_own_only(k2)


def test_three_updates_in_a_row() -> None:
    """Retrieve, FINISH, preserve again: the same huge pages through three kexecs."""
    k = boot("v9", cmdline=POOL, memory="8GiB")
    f = k.memfd_create("ram", size=1 << 30, flags=H1G)
    f.fill(0, 1 << 30, 7)
    fp = f.fingerprint()
    s = k.open_liveupdate().create_session("vm")
    s.preserve_fd(f, 1)
    for _ in range(3):
        k = k.kexec("v9", cmdline=POOL)
        lu = k.open_liveupdate()
        s = lu.retrieve_session("vm")
        f = s.retrieve_fd(1)
        assert f.fingerprint() == fp
        s.finish()
        s.close()
        s = lu.create_session("vm")
        s.preserve_fd(f, 1)
        assert _pool(k, 18) == (2, 1)


# ---------------------------------------------------------------- scenarios
def _scenario(ram_backing: str, memory: str, cmdline: str) -> dict[str, object]:
    return {
        "name": "hugetlb-vm",
        "machine": {"memory": "8GiB", "segments": [{"segment": 0, "devices": [
            {"slot": 1, "kind": "root-port", "name": "rp0",
             "children": [{"slot": 0, "name": "dsa0"}]}]}]},
        "kernels": {"before": {"profile": "v9", "cmdline": cmdline},
                    "after": [{"profile": "v9", "cmdline": cmdline}]},
        "policy": {"dma.mode": "continuous"},
        "workload": {"vms": [{"name": "vm0", "memory": memory, "ram_backing": ram_backing,
                              "devices": ["dsa0"], "dma": {"rate_per_ms": 5,
                                                           "length": "1MiB"}}]},
    }


@pytest.mark.parametrize(("backing", "memory", "cmdline"), [
    ("hugetlb-2M", "64MiB", "hugepagesz=2M hugepages=40"),
    ("hugetlb-1G", "1GiB", "hugepagesz=1G hugepages=1"),
])
def test_scenario_vm_on_hugetlb_ram(backing: str, memory: str, cmdline: str) -> None:
    """A VM with hugetlb guest RAM, a vfio device and live DMA survives a live update."""
    from luosim.scenario.runner import run
    from luosim.scenario.schema import scenario_from_dict

    result = run(scenario_from_dict(_scenario(backing, memory, cmdline)))
    detail = result.panic or result.error or "; ".join(f"{i.id}: {i.detail}"
                                                       for i in result.broken)
    assert result.outcome == "ok", detail


def test_scenario_hugetlb_pool_too_small_is_refused() -> None:
    """No hugepages= on the command line: the VM cannot get its RAM (ENOMEM)."""
    from luosim.scenario.runner import run
    from luosim.scenario.schema import scenario_from_dict

    result = run(scenario_from_dict(_scenario("hugetlb-2M", "64MiB", "")))
    assert result.outcome == "refused" and "ENOMEM" in (result.error or "")


def test_scenario_hugetlb_1g_needs_whole_gib() -> None:
    from luosim.scenario.schema import scenario_from_dict

    with pytest.raises(Exception, match="multiple of 1GiB"):
        scenario_from_dict(_scenario("hugetlb-1G", "512MiB", "hugepagesz=1G hugepages=1"))
