"""Scaling table: run cost against guest RAM, VMs and preserved endpoints.

    PYTHONPATH=src python benchmarks/scaling.py [--repeat N] [--quick]

Each point is one clean run of a generated host (v7 -> v7, pci=assign-busses,
live DMA on the VMs with a device), timed in process after a warm-up run;
the best of ``--repeat`` runs is kept.  Guest RAM is a shmem memfd of 2 MiB
or 4 KiB folios on v7 kernels, or a hugetlb memfd of 1 GiB pages (one
preserved folio per GiB) on v9 kernels.  For each axis the table gives the
wall time per point and the least-squares cost per unit (seconds per GiB,
per VM, per endpoint); "flat" means the per-unit cost is noise next to the
fixed cost.  Timings on a shared machine: read them as upper bounds.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

from luosim.scenario.runner import run
from luosim.scenario.schema import Scenario, scenario_from_dict

GiB = 1 << 30


def host(*, vms: int, vm_gib: int, endpoints: int, folio_order: int = 9,
         hugetlb_1g: bool = False) -> Scenario:
    """``endpoints`` vfio functions behind switches of 4 ports, ``vms`` VMs of
    ``vm_gib`` GiB (the first ``endpoints`` with one device each).

    ``hugetlb_1g``: guest RAM is a hugetlb memfd of 1 GiB pages from a
    ``hugepagesz=1G`` pool on v9 kernels (the hugetlb live-update series needs
    luo-v5); otherwise shmem memfds of ``folio_order`` folios on v7."""
    switches = max(1, -(-endpoints // 4))
    devices: list[dict[str, Any]] = []
    e = 0
    for s in range(switches):
        ports = []
        for p in range(4):
            if e >= endpoints:
                break
            ports.append({"slot": p, "name": f"sw{s}-dp{p}",
                          "children": [{"slot": 0, "name": f"ep{e}", "vendor": 0x8086,
                                        "device": 0x0B25}]})
            e += 1
        devices.append({"slot": s + 1, "kind": "root-port", "name": f"rp{s}",
                        "children": [{"slot": 0, "kind": "switch", "name": f"sw{s}",
                                      "ports": ports}]})
    ram = vms * vm_gib
    vm_specs = []
    for v in range(vms):
        spec: dict[str, Any] = {"name": f"vm{v}", "memory": f"{vm_gib}GiB"}
        if hugetlb_1g:
            spec["ram_backing"] = "hugetlb-1G"
        else:
            spec["folio_order"] = folio_order
        if v < endpoints:
            spec["devices"] = [f"ep{v}"]
            spec["dma"] = {"rate_per_ms": 20, "length": "1MiB"}
        vm_specs.append(spec)
    kernels: dict[str, Any] = {"before": {"profile": "v7"},
                               "after": [{"profile": "v7", "cmdline": "pci=assign-busses"}]}
    if hugetlb_1g:
        pool = f"hugepagesz=1G hugepages={ram}"
        kernels = {"before": {"profile": "v9", "cmdline": pool},
                   "after": [{"profile": "v9", "cmdline": f"pci=assign-busses {pool}"}]}
    data = {
        "name": f"scale-{vms}vm-{ram}g-{endpoints}ep",
        "machine": {"memory": f"{ram + 64}GiB",
                    "segments": [{"segment": 0, "firmware_numbering": "sparse",
                                  "firmware_bus_gap": 1, "devices": devices}]},
        "kernels": kernels,
        "policy": {"dma.mode": "continuous"},
        "workload": {"blackout_ms": 20, "vms": vm_specs},
    }
    return scenario_from_dict(data, "<scaling>")


def timed(sc: Scenario, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        res = run(sc)
        best = min(best, time.perf_counter() - t0)
        if res.outcome != "ok":
            raise SystemExit(f"{sc.name}: outcome {res.outcome}")
    return best


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, cost per unit)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer, smaller points")
    args = ap.parse_args(argv)
    ram_points = [1, 16, 256] if args.quick else [1, 16, 256, 1024, 4096]
    axes: list[tuple[str, str, list[int], Any]] = [
        ("guest RAM (1 VM, 2 MiB folios)", "GiB", ram_points,
         lambda g: host(vms=1, vm_gib=g, endpoints=1)),
        # 32 GiB of 4 KiB folios is the schema's MAX_FOLIOS (2^23 folios per run)
        ("guest RAM (1 VM, 4 KiB folios)", "GiB", [1, 4, 16] if args.quick else [1, 4, 16, 32],
         lambda g: host(vms=1, vm_gib=g, endpoints=1, folio_order=0)),
        ("guest RAM (1 VM, 1 GiB hugetlb pages, v9)", "GiB", ram_points,
         lambda g: host(vms=1, vm_gib=g, endpoints=1, hugetlb_1g=True)),
        ("VMs (1 GiB each, 2 devices)", "VM", [2, 16, 64] if args.quick else [2, 16, 64, 256],
         lambda n: host(vms=n, vm_gib=1, endpoints=2)),
        ("endpoints (a VM each)", "endpoint", [4, 16] if args.quick else [4, 16, 64],
         lambda n: host(vms=n, vm_gib=1, endpoints=n)),
    ]
    run(host(vms=1, vm_gib=1, endpoints=1))  # warm-up: imports, caches
    for title, unit, points, make in axes:
        times = [timed(make(p), args.repeat) for p in points]
        a, b = slope([float(p) for p in points], times)
        print(f"\n{title}")
        for p, t in zip(points, times):
            print(f"  {p:>6} {unit:<8} {t * 1000:9.1f} ms")
        print(f"  fit: {a * 1000:.1f} ms + {b * 1000:.3f} ms per {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
