"""IOMMU hand-over invariants (spec pci.md §7.3, §7.4.1, §10 inv. 7).

At hand-over only preserved RequesterIDs have context entries on a
preserved unit, and units with nothing preserved have translation off;
after kexec translation is never turned off on a preserved unit, the
restored device keeps the same page-table root and domain ID, and the
preserved DIDs are reserved before any new DID is allocated.
"""

from __future__ import annotations

import copy
from typing import Any

from luosim.abi.iommu import IommuFlbSer, IommuHwSer, iommu_abi
from luosim.hw.iommu import ContextEntry
from luosim.kernel.iommu.core import PreservedOwner
from luosim.kernel.kernel import Kernel

from .conftest import DSA0, DSA1, TOPO, boot, make_vm, pdev

TOPO2: dict[str, Any] = copy.deepcopy(TOPO)
TOPO2["segments"].append({"segment": 1, "devices": [
    {"slot": 2, "kind": "endpoint", "name": "nic1"}]})
NIC1 = "0001:00:02.0"


def preserve_vm(k: Kernel) -> None:
    vm = make_vm(k)
    s = k.open_liveupdate().create_session("vm")
    for tok, f in ((1, vm.ram), (2, vm.iommufd), (3, vm.dev)):
        s.preserve_fd(f, tok)


def test_handover_and_restore() -> None:
    k = boot(TOPO2)
    m = k.machine
    k.iommu.bind_dma_api_driver(DSA1)  # a non-preserved device with a context entry
    k.iommu.bind_dma_api_driver(NIC1)  # on the second unit, nothing preserved there
    preserve_vm(k)
    u0, u1 = m.iommu.units
    before: dict[int, ContextEntry] = {(b << 8) | d: e
                                       for b, d, e in m.iommu.context_entries(u0)}
    rid0, rid1 = pdev(k, DSA0).bdf, pdev(k, DSA1).bdf
    assert set(before) == {rid0, rid1}
    root_before = u0.rtaddr
    seen: dict[str, Any] = {}

    def at_jump(stage: str) -> None:
        if stage == "kexec-jump":
            seen["rids"] = {(b << 8) | d for b, d, _ in m.iommu.context_entries(u0)}
            seen["te"] = (u0.translation_enabled, u1.translation_enabled)
            seen["roots"] = set(m.iommu.context_tables(u0))

    m.stage_hooks.append(at_jump)
    n_te0 = len(u0.te_history)
    k2 = k.kexec("v6")
    assert seen["rids"] == {rid0}  # only the preserved RID translates at hand-over
    assert seen["roots"] == {rid0 >> 8}  # root entries of other buses cleared
    assert seen["te"] == (True, False)  # nothing preserved on unit 1: translation off
    assert all(on for _t, on in u0.te_history[n_te0:])  # never turned off on unit 0
    assert u0.rtaddr == root_before
    after = m.iommu.read_context_entry(u0, rid0 >> 8, rid0 & 0xFF)
    assert after == before[rid0]  # same page-table root, same DID, not rewritten
    dev = k2.iommu.device_by_name(DSA0)
    assert dev.group.domain is not None and dev.group.domain.root == before[rid0].pgtable
    assert dev.group.domain.dids[0] == before[rid0].domain_id
    assert isinstance(dev.group.owner, PreservedOwner)
    # DIDs: preserved ones reserved first, new allocations never collide
    k2.iommu.bind_dma_api_driver(DSA1)
    log = k2.iommu.units[0].dids.log
    assert log[0] == ("reserve", before[rid0].domain_id)
    allocs = [d for op, d in log if op == "alloc"]
    assert allocs and before[rid0].domain_id not in allocs
    assert u1.translation_enabled and k2.iommu.units[1].restored is False
    assert k2.iommu.units[0].restored
    assert u0.rtaddr not in {pa for pa, _o in k2.kho.unclaimed()}  # adopted, not leaked


def test_nothing_preserved_disables_translation(k: Kernel) -> None:
    vm = make_vm(k)
    s = k.open_liveupdate().create_session("vm")
    s.preserve_fd(vm.ram, 1)
    s.preserve_fd(vm.iommufd, 2)
    s.close()  # unpreserved again: the IOMMU FLB goes away
    u0 = k.machine.iommu.units[0]
    k2 = k.kexec("v6")
    assert (u0.te_history[-2][1], u0.te_history[-1][1]) == (False, True)
    assert not k2.iommu.units[0].restored
    assert not list(k.machine.iommu.context_entries(u0))


def test_flb_wire_format(k: Kernel) -> None:
    """The hand-over is decodable from memory alone (``iommu_flb_ser`` version 1)."""
    preserve_vm(k)
    out = k.iommu.lu_out()
    assert out is not None
    ser = IommuFlbSer.decode(k.machine.memory.read(out.ser_pa, IommuFlbSer.SIZE))
    assert ser.version == 1 and ser.iommu_array_phys and ser.device_array_phys
    k2 = k.kexec("v6")
    inc = k2.iommu.incoming
    assert inc is not None and len(inc.devices) == 1 and len(inc.hw) == 1
    rec = inc.devices[0].ser
    assert (rec.pci_domain_nr, rec.devid) == (0, pdev(k2, DSA0).bdf)
    mem = k2.machine.memory
    dev_ser = iommu_abi(k2.profile.iommu_flb_compat).device  # the layout of this build
    now = dev_ser.decode(mem.read(inc.devices[0].phys, dev_ser.SIZE))
    assert now.hdr.incoming and not rec.hdr.incoming  # marked in memory by the probe
    assert IommuHwSer.decode(mem.read(inc.hw[0].phys, IommuHwSer.SIZE)).restored == 1


def test_shared_domain_restored_once(k: Kernel) -> None:
    """Two devices on one preserved HWPT share its DID and one restored domain (§7.4.3)."""
    vm = make_vm(k)
    dev2 = k.vfio.open_device(DSA1)
    dev2.bind_iommufd(vm.iommufd)
    dev2.attach_hwpt(vm.hwpt)
    s = k.open_liveupdate().create_session("vm")
    for tok, f in ((1, vm.ram), (2, vm.iommufd), (3, vm.dev), (4, dev2)):
        s.preserve_fd(f, tok)
    k2 = k.kexec("v6")
    a, b = k2.iommu.device_by_name(DSA0), k2.iommu.device_by_name(DSA1)
    assert a.group.domain is b.group.domain and a.group.domain is not None
    assert a.group.domain.dids == {0: k2.iommu.units[0].dids.log[0][1]}
    assert [op for op, _d in k2.iommu.units[0].dids.log] == ["reserve"]
