"""The kernel model writes each IOMMU / vfio record in the one header version its build uses.

A profile is varied only in the layer under test (``Profile.iommu_abi``, ``Profile.vfio_abi``);
the records are read back from physical memory with the codec of that header
and checked against the figures of the header (sizes, where the token sits).
"""

from __future__ import annotations

import dataclasses

import pytest

from luosim.abi import iommu, vfio
from luosim.hw.machine import Machine
from luosim.kernel import profiles
from luosim.kernel.kernel import Kernel
from tests.vfio_iommu.conftest import DSA0, TOPO, make_vm, pdev


def _boot(monkeypatch: pytest.MonkeyPatch, prof: profiles.Profile) -> Kernel:
    monkeypatch.setitem(profiles.PROFILES, prof.name, prof)
    return Machine.from_topology(TOPO).boot(prof.name)


def _preserve(k: Kernel) -> None:
    vm = make_vm(k)
    s = k.open_liveupdate().create_session("vm")
    for tok, f in ((1, vm.ram), (2, vm.iommufd), (3, vm.dev)):
        s.preserve_fd(f, tok)


@pytest.mark.parametrize("compat", ["iommu-liveupdate-v1", "iommu-liveupdate"])
def test_iommu_flb_follows_one_header(monkeypatch: pytest.MonkeyPatch, compat: str) -> None:
    base = profiles.PROFILES["v6"]
    prof = dataclasses.replace(base, name=f"v6-{compat}", iommu_abi=compat)
    k = _boot(monkeypatch, prof)
    _preserve(k)
    abi = iommu.iommu_abi(compat)
    out = k.iommu.lu_out()
    assert out is not None
    mem = k.machine.memory
    flb = abi.flb.decode(mem.read(out.ser_pa, abi.flb.SIZE))
    if abi.version is None:  # ef754267: 24 bytes, no version word
        assert abi.flb.SIZE == 24
    else:
        assert abi.flb.SIZE == 32 and flb.version == 1
    heads = (flb.iommu_array_phys, flb.iommu_domain_array_phys, flb.device_array_phys)
    dev_page = mem.read(heads[2], 4096)
    _nxt, objs = iommu.decode_array_page(dev_page, abi.device.SIZE, "devices")
    assert len(objs) == 1
    dev = abi.device.decode(objs[0])
    assert (dev.pci_domain_nr, dev.devid) == (0, pdev(k, DSA0).bdf)
    if compat == "iommu-liveupdate":  # 22fa8f30: dma_owner_token at 16 = iommufd LUO token
        assert abi.device.SIZE == 72 and objs[0][16:24] == (2).to_bytes(8, "little")
    else:
        assert abi.device.SIZE == 56
    dom_page = mem.read(heads[1], 4096)
    _nxt, doms = iommu.decode_array_page(dom_page, abi.domain.SIZE, "domains")
    assert len(doms) == 1 and len(doms[0]) == (37 if abi.version is None else 40)
    # the new kernel of the same build adopts it and fills restored_domain in place
    k2 = k.kexec(prof.name)
    inc = k2.iommu.incoming
    assert inc is not None and len(inc.devices) == 1
    drec = next(iter(inc.domains.values()))
    off = 29 if abi.version is None else 32  # restored_domain per header
    assert k2.machine.memory.read_u64(drec.phys + off) != 0
    assert k2.iommu.device_by_name(DSA0).group.domain is not None


@pytest.mark.parametrize(("abi", "compat", "size"), [
    ("vfio-pci-v2", "vfio-pci-v2", 11), ("vfio-pci-v1-iommu", "vfio-pci-v1", 9)])
def test_vfio_record_carries_the_iommufd_token(monkeypatch: pytest.MonkeyPatch, abi: str,
                                              compat: str, size: int) -> None:
    base = profiles.PROFILES["v6"]
    prof = dataclasses.replace(base, name=f"v6-{abi}", vfio_abi=abi)
    k = _boot(monkeypatch, prof)
    assert k.vfio.handler.compatible == compat
    _preserve(k)
    lfs = [lf for sess in k.liveupdate.sessions.outgoing for lf in sess.files.files
           if lf.token == 3]
    assert len(lfs) == 1 and lfs[0].handler.compatible == compat
    raw = k.machine.memory.read(lfs[0].serialized_data, size)
    bdf = pdev(k, DSA0).bdf
    if size == 11:  # anolis 5a52741a: {u32 domain, u16 bdf, u8 reset_works, u32 token @7}
        exp = (0).to_bytes(4, "little") + bdf.to_bytes(2, "little") + b"\x01"
    else:  # d835969e + IOMMU v1: {u16 bdf, u16 domain, u8 reset_works, u32 token @5}
        exp = bdf.to_bytes(2, "little") + (0).to_bytes(2, "little") + b"\x01"
    assert raw == exp + (2).to_bytes(4, "little")  # the iommufd's LUO token
    assert vfio.VFIO_LAYOUTS[abi].decode(raw).token == 2  # type: ignore[attr-defined]
    k2 = k.kexec(prof.name)
    s2 = k2.open_liveupdate().retrieve_session("vm")
    dev = s2.retrieve_fd(3)
    assert dev.pdev.bdf == bdf

