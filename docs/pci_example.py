"""PCI device preservation in luosim: two devices behind a switch keep their BDFs.

Run with ``PYTHONPATH=src python docs/pci_example.py``.  The firmware numbers
the buses sparsely (spare bus numbers at the end of every bridge window), so
Linux's own numbering, ``pci=assign-busses``, would move devices.  Two
vfio-pci devices behind a PCIe switch are preserved in a session; the next
kernel boots with ``pci=assign-busses``, yet every bridge inherits its bus
numbers because the PCI core's FLB says devices are pending (spec pci.md
§5.1), and the devices come back at the same (segment, bus, device,
function) — the RequesterID the IOMMU translates.  For contrast, a cold boot
of the same machine with the same command line renumbers them.
"""

from __future__ import annotations

from typing import Any

from luosim.hw.machine import Machine

TOPOLOGY: dict[str, Any] = {
    "memory": "4GiB",
    "segments": [{
        "segment": 0, "firmware_numbering": "sparse", "firmware_bus_gap": 2,
        "devices": [
            {"slot": 1, "kind": "root-port", "name": "rp1", "children": [
                {"slot": 0, "kind": "switch", "name": "sw", "ports": [
                    {"slot": 0, "name": "dp0", "children": [{"slot": 0, "name": "nvme0"}]},
                    {"slot": 1, "name": "dp1", "children": [{"slot": 0, "name": "nvme1"}]},
                    {"slot": 2, "name": "dp2", "children": [{"slot": 0, "name": "nic"}]},
                ]}]},
            {"slot": 2, "kind": "root-port", "name": "rp2", "children": [
                {"slot": 0, "name": "gpu"}]},
        ]}],
}
PRESERVE = ("nvme1", "nic")
PROFILE = "v7"  # PCI series v7: block-set ABI, a failed retrieve panics


def bdf_of(k: Any, hw_id: str) -> str:
    dev = k.pci.find_hw(hw_id)
    return dev.name if dev is not None else "(not enumerated)"


def main() -> dict[str, tuple[str, str, str]]:
    """Returns {device: (BDF before, BDF after kexec, BDF after a cold boot)}."""
    m = Machine.from_topology(TOPOLOGY)
    k = m.boot(PROFILE, cmdline="")  # keeps the firmware's numbers
    before = {h: bdf_of(k, h) for h in PRESERVE}
    lu = k.open_liveupdate()
    s = lu.create_session("vm0")
    for token, hw_id in enumerate(PRESERVE, 1):
        s.preserve_fd(k.vfio.open_device(before[hw_id]), token=token)
    print("preserved, as (bdf, refcount) in the PCI FLB:")
    for _dom, bdf, refcount in k.pci_lu.outgoing_entries():
        print(f"  {bdf >> 8:02x}:{(bdf >> 3) & 0x1f:02x}.{bdf & 7}  refcount {refcount}")

    k = k.kexec(PROFILE, cmdline="pci=assign-busses")
    s = k.open_liveupdate().retrieve_session("vm0")
    after = {}
    iommufd = k.iommufd_mod.open()
    for token, hw_id in enumerate(PRESERVE, 1):
        f = s.retrieve_fd(token)
        pdev = f.pdev  # type: ignore[attr-defined]
        assert pdev.hw.hw_id == hw_id and k.pci_lu.is_incoming(pdev)
        after[hw_id] = pdev.name
        f.bind_iommufd(iommufd)  # type: ignore[attr-defined]  # vfio can_finish needs it
    s.finish()  # vfio-pci finish -> pci_liveupdate_finish() for each device
    assert not any(k.pci_lu.is_incoming(d) for d in k.pci.devices())

    cold_m = Machine.from_topology(TOPOLOGY)
    cold = cold_m.boot(PROFILE, cmdline="pci=assign-busses")
    result = {h: (before[h], after[h], bdf_of(cold, h)) for h in PRESERVE}
    print(f"{'device':8} {'before':14} {'after kexec':14} {'cold boot (assign-busses)'}")
    for h, (b, a, c) in result.items():
        print(f"{h:8} {b:14} {a:14} {c}")
    return result


if __name__ == "__main__":
    main()
