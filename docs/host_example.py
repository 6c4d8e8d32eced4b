"""A hypervisor host updated from a PCI-v6 kernel to a PCI-v7 kernel with DMA running.

Two VMs, each with 4 GiB of memfd guest RAM and two vfio-pci devices (one
behind each of two PCIe switches), DMA running before, during and after
the kexec.  Prints where every DMA write landed and what the checker says.
"""

from __future__ import annotations

from luosim.scenario.runner import Run
from luosim.scenario.schema import scenario_from_dict


def switch(n: int, a: str, b: str) -> dict[str, object]:
    return {"slot": n + 1, "kind": "root-port", "name": f"rp{n}", "children": [
        {"slot": 0, "kind": "switch", "name": f"sw{n}", "ports": [
            {"slot": 0, "children": [{"slot": 0, "name": a}]},
            {"slot": 1, "children": [{"slot": 0, "name": b}]}]}]}


HOST = {
    "name": "two-vm-host",
    "machine": {"memory": "24GiB", "segments": [{"devices": [
        switch(0, "dsa0", "dsa1"), switch(1, "nvme0", "nvme1")]}]},
    "kernels": {"before": {"profile": "v6"}, "after": [{"profile": "v7"}]},
    "policy": {"dma.mode": "continuous"},
    "workload": {"blackout_ms": 120, "vms": [
        {"name": "vm0", "memory": "4GiB", "devices": ["dsa0", "nvme1"],
         "dma": {"rate_per_ms": 50, "length": "64MiB"}},
        {"name": "vm1", "memory": "4GiB", "devices": ["dsa1", "nvme0"],
         "dma": {"rate_per_ms": 50, "length": "64MiB"}}]},
}


def main() -> int:
    run = Run(scenario_from_dict(HOST), (), None, None)
    result = run.execute()
    records = run.machine.dma.records
    writes = sum(r.count for r in records)
    translated = sum(r.count for r in records if r.outcome == "translated")
    wrong = [i for i in result.invariants if i.id == "DMA-1" and not i.ok]
    print(f"DMA writes: {writes}, translated into the owning VM's RAM: {translated}, "
          f"corrupting: {0 if not wrong else 'see DMA-1'}")
    for d in result.devices:
        if d.preserved:
            print(f"  {d.name}: {d.bdf_before} -> {d.bdf_after}")
    print(f"outcome: {result.outcome}")
    for inv in result.broken:
        print(f"  {inv.id}: {inv.detail}")
    return 0 if not wrong else 1


if __name__ == "__main__":
    raise SystemExit(main())
