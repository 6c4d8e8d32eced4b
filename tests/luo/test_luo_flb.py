"""FLBs (spec luo.md §4, pci.md §1) with test FLBs modelled on lib/tests/liveupdate.c."""

from __future__ import annotations

import errno

import pytest

from luosim.abi.luo import LuoFlbSer, decode_flb_block
from luosim.kernel.kernel import Kernel
from luosim.kernel.liveupdate.flb import Flb, FlbOpArgs
from tests.luo.luo_testlib import (
    TEST_FLB_DATA,
    TestFile,
    TestFlb,
    TestHandler,
    boot,
    plan,
    raises_errno,
)

BOTH = pytest.mark.parametrize("profile", ["v6", "v9"])


def setup(k: Kernel, nflbs: int = 3) -> tuple[TestHandler, list[TestFlb]]:
    """A test handler with the three test FLBs linked, as the in-kernel test does."""
    h = TestHandler(k)
    k.liveupdate.register_file_handler(h)
    flbs = [TestFlb(i) for i in range(nflbs)]
    for flb in flbs:
        k.liveupdate.register_flb(h, flb)
    return h, flbs


# ---------------------------------------------------------------- registration
@BOTH
def test_register_flb_eexist(profile: str) -> None:
    """§4.2 step 6/7: linking FLB 0 twice → EEXIST; another object, same compatible → EEXIST."""
    k = boot(profile)
    h, flbs = setup(k)
    with raises_errno(errno.EEXIST):
        k.liveupdate.register_flb(h, flbs[0])
    h2 = TestHandler(k, "test-file-v2")
    k.liveupdate.register_file_handler(h2)
    with raises_errno(errno.EEXIST):
        k.liveupdate.register_flb(h2, TestFlb(0))
    k.liveupdate.register_flb(h2, flbs[0])  # the same object may serve two handlers
    assert k.liveupdate.flbs.users[flbs[0]] == 2


@BOTH
def test_register_flb_enospc_at_64th(profile: str) -> None:
    """§4.2 step 7: 63 FLBs fit one page; the 64th → ENOSPC."""
    k = boot(profile)
    others = len(k.liveupdate.flbs.registered)  # e.g. the PCI and IOMMU FLBs
    h, flbs = setup(k, nflbs=63 - others)
    assert len(k.liveupdate.flbs.registered) == 63
    with raises_errno(errno.ENOSPC):
        k.liveupdate.register_flb(h, TestFlb(63))
    k.liveupdate.unregister_flb(h, flbs[5])
    k.liveupdate.register_flb(h, TestFlb(63))


@BOTH
def test_register_flb_einval(profile: str) -> None:
    """§4.2 steps 2-3: an op missing, or the handler not registered → EINVAL."""
    k = boot(profile)
    h, _ = setup(k, 0)

    class NoFinish(Flb):
        def preserve(self, args: FlbOpArgs) -> None: ...
        def unpreserve(self, args: FlbOpArgs) -> None: ...
        def retrieve(self, args: FlbOpArgs) -> None: ...

    with raises_errno(errno.EINVAL):
        k.liveupdate.register_flb(h, NoFinish("no-finish"))
    with raises_errno(errno.EINVAL):
        k.liveupdate.register_flb(TestHandler(k, "never-registered"), TestFlb(1))
    with raises_errno(errno.EINVAL):
        k.liveupdate.register_flb(h, _long_name_flb())  # compatible beyond char[48]


def _long_name_flb() -> TestFlb:
    f = TestFlb(0)
    f.compatible = "x" * 48
    return f


def test_register_flb_eopnotsupp_when_disabled() -> None:
    """§4.2 step 1: LUO off → EOPNOTSUPP (and handler registration too)."""
    k = boot("v6", cmdline="liveupdate=off")
    h = TestHandler(k)
    with raises_errno(errno.EOPNOTSUPP):
        k.liveupdate.register_file_handler(h)
    with raises_errno(errno.EOPNOTSUPP):
        k.liveupdate.register_flb(h, TestFlb(0))
    with raises_errno(errno.EOPNOTSUPP):
        k.liveupdate.flb_get_outgoing(TestFlb(0))
    with raises_errno(errno.EOPNOTSUPP):
        k.liveupdate.flb_get_incoming(TestFlb(0))


@BOTH
def test_register_file_handler_errors(profile: str) -> None:
    """§3.2: a handler without a required op → EINVAL; duplicate compatible → EEXIST."""
    k = boot(profile)
    k.liveupdate.register_file_handler(TestHandler(k))
    with raises_errno(errno.EEXIST):
        k.liveupdate.register_file_handler(TestHandler(k))
    bad = TestHandler(k, "no-retrieve")
    bad.retrieve = None  # type: ignore[assignment,method-assign]
    with raises_errno(errno.EINVAL):
        k.liveupdate.register_file_handler(bad)


@BOTH
def test_unregister_handler_unlinks_flbs(profile: str) -> None:
    """§3.2 (P2+): unregistering a handler drops its FLB links first."""
    k = boot(profile)
    before = list(k.liveupdate.flbs.registered)
    h, _flbs = setup(k)
    k.liveupdate.unregister_file_handler(h)
    assert k.liveupdate.flbs.registered == before and h not in k.liveupdate.files.handlers


# ---------------------------------------------------------------- outgoing
@BOTH
def test_flb_outgoing_refcount(profile: str) -> None:
    """§4.3: preserve on the first dependent file, unpreserve on the last; get_outgoing."""
    k = boot(profile)
    _h, flbs = setup(k)
    lu = k.open_liveupdate()
    assert k.liveupdate.flb_get_outgoing(flbs[0]) is None
    s1 = lu.create_session("a")
    s2 = lu.create_session("b")
    s1.preserve_fd(TestFile(k, 1), 1)
    s2.preserve_fd(TestFile(k, 2), 1)
    s2.preserve_fd(TestFile(k, 3), 2)
    assert [f.calls for f in flbs] == [["preserve"]] * 3
    assert k.liveupdate.flbs.outgoing_count(flbs[1]) == 3
    assert k.liveupdate.flb_get_outgoing(flbs[2]) == {"flb": 2, "state": "outgoing"}
    s2.close()
    assert k.liveupdate.flbs.outgoing_count(flbs[1]) == 1
    assert [f.calls for f in flbs] == [["preserve"]] * 3
    s1.close()
    assert [f.calls for f in flbs] == [["preserve", "unpreserve"]] * 3
    assert k.liveupdate.flb_get_outgoing(flbs[0]) is None


@BOTH
def test_flb_preserve_failure_unwinds(profile: str) -> None:
    """§4.3: an FLB preserve error releases the references taken by this call (reverse)."""
    k = boot(profile)
    h, flbs = setup(k)
    s = k.open_liveupdate().create_session("x")
    plan(k, ("luo.flb.liveupdate-test-flb-v2.preserve", 1, "ENOMEM"))
    f = TestFile(k, 9)
    with raises_errno(errno.ENOMEM):
        s.preserve_fd(f, 1)
    assert [x.calls for x in flbs] == [["preserve", "unpreserve"]] * 2 + [[]]
    assert s.files == 0 and f.refcount == 1 and h.log == []
    s.preserve_fd(f, 1)  # the fault fired once


@BOTH
def test_flb_serialized_records(profile: str) -> None:
    """§4.3/§5.1: FLBs with references are written {name, data, count} in global order."""
    k = boot(profile)
    _h, _flbs = setup(k)
    s = k.open_liveupdate().create_session("x")
    for v in range(3):
        s.preserve_fd(TestFile(k, v), v)
    k.liveupdate.reboot()
    recs = decode_flb_block(k.machine.memory.read(k.liveupdate.out_flb_pa, 4096))
    assert recs == [LuoFlbSer(f"liveupdate-test-flb-v{i}", TEST_FLB_DATA + i, 3)
                    for i in range(3)]


# ---------------------------------------------------------------- incoming
def _kexec_with_flbs(profile: str, nfiles: int = 2) -> Kernel:
    k = boot(profile)
    _h, _ = setup(k)
    s = k.open_liveupdate().create_session("flb-files")
    for v in range(nfiles):
        s.preserve_fd(TestFile(k, 0x100 + v), v)
    return k.kexec(profile)


@BOTH
def test_flb_incoming_refcount_and_finish(profile: str) -> None:
    """§4.4: count seeded from the hand-over; get +1, put -1; each file finish puts one;
    finish at zero; afterwards get → ENODATA."""
    k2 = _kexec_with_flbs(profile, nfiles=2)
    probe = TestFlb(0)  # looked up before any handler links it (like the PCI core)
    obj = k2.liveupdate.flb_get_incoming(probe)
    assert obj == {"flb": 0, "state": "incoming", "data": TEST_FLB_DATA}
    assert k2.liveupdate.flbs.incoming_state(probe.compatible)["count"] == 3
    k2.liveupdate.flb_put_incoming(probe)
    h = TestHandler(k2)
    k2.liveupdate.register_file_handler(h)
    flbs = [probe, TestFlb(1), TestFlb(2)]
    for f in flbs:
        k2.liveupdate.register_flb(h, f)
    s = k2.open_liveupdate().retrieve_session("flb-files")
    s.retrieve_fd(0)
    s.finish()
    assert probe.calls == ["retrieve", "finish"]
    assert flbs[1].calls == ["retrieve", "finish"]  # retrieved at the last put
    with raises_errno(errno.ENODATA):
        k2.liveupdate.flb_get_incoming(probe)


@BOTH
def test_flb_never_finishes_while_a_session_is_unfinished(profile: str) -> None:
    """§4.4: the FLB finishes only when every dependent file of the old kernel finished."""
    k = boot(profile)
    _h, _ = setup(k, 1)
    lu = k.open_liveupdate()
    lu.create_session("one").preserve_fd(TestFile(k, 1), 1)
    lu.create_session("two").preserve_fd(TestFile(k, 2), 1)
    k2 = k.kexec(profile)
    _h2, flbs2 = setup(k2, 1)
    lu2 = k2.open_liveupdate()
    lu2.retrieve_session("one").finish()
    assert flbs2[0].calls == []  # one reference of two dropped, nothing retrieved yet
    assert k2.liveupdate.flb_get_incoming(flbs2[0])["flb"] == 0
    assert flbs2[0].calls == ["retrieve"]
    k2.liveupdate.flb_put_incoming(flbs2[0])
    lu2.retrieve_session("two").finish()
    assert flbs2[0].calls == ["retrieve", "finish"]


def test_flb_get_incoming_enodata_cold_boot() -> None:
    """§4.4 step 3: no incoming FLB area (cold boot) → ENODATA."""
    k = boot("v9")
    with raises_errno(errno.ENODATA):
        k.liveupdate.flb_get_incoming(TestFlb(0))


@BOTH
def test_flb_get_incoming_enoent(profile: str) -> None:
    """§4.4 step 4: handed-over area without this compatible → ENOENT."""
    k2 = boot(profile).kexec(profile)
    with raises_errno(errno.ENOENT):
        k2.liveupdate.flb_get_incoming(TestFlb(0))
    k3 = _kexec_with_flbs(profile)
    with raises_errno(errno.ENOENT):
        k3.liveupdate.flb_get_incoming(TestFlb(7))


@BOTH
def test_flb_get_incoming_retrieve_error(profile: str) -> None:
    """§4.4 step 6: the retrieve op's error is returned (P4 remembers it; P0-P3 retry)."""
    k2 = _kexec_with_flbs(profile)
    bad = TestFlb(0, expect=0x1234)  # data mismatch → EINVAL, as lib/tests/liveupdate.c
    with raises_errno(errno.EINVAL):
        k2.liveupdate.flb_get_incoming(bad)
    with raises_errno(errno.EINVAL):
        k2.liveupdate.flb_get_incoming(bad)
    assert bad.calls == (["retrieve"] if profile == "v9" else ["retrieve", "retrieve"])
    flb1 = TestFlb(1)
    plan(k2, ("luo.flb.liveupdate-test-flb-v1.retrieve", 1, "EIO"))
    with raises_errno(errno.EIO):
        k2.liveupdate.flb_get_incoming(flb1)
    if profile == "v6":  # P0-P3: retryable
        assert k2.liveupdate.flb_get_incoming(flb1)["flb"] == 1


def test_flb_missing_area_luo_v5_is_enodata() -> None:
    """§4.4 step 3/§5.2: luo.handover corrupt:missing-flb-node on luo-v5: flbs_pa = 0 → ENODATA."""
    k = boot("v9")
    setup(k)
    k.open_liveupdate().create_session("x").preserve_fd(TestFile(k, 1), 1)
    plan(k, ("luo.handover", 1, "corrupt:missing-flb-node"))
    k2 = k.kexec("v9")
    with raises_errno(errno.ENODATA):
        k2.liveupdate.flb_get_incoming(TestFlb(0))
