"""Codec throughput and the reference run, for comparing two source trees.

    PYTHONPATH=src python benchmarks/abi_codecs.py [--json]

Times (best of several repeats, microseconds) the bulk memfd folio array
encode/decode (4096 records), single-record encode/decode of a few structs,
and one in-process run of examples/reference-host.yaml.  Run it once with
the old tree first on PYTHONPATH and once with the new one, interleaved, on an
idle machine: only the minimum of the repeats is meaningful on a shared box.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from luosim.abi import iommu, luo, memfd, pci

REFERENCE = Path(__file__).resolve().parent.parent / "examples" / "reference-host.yaml"


def best(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Best per-call time in microseconds."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def reference_run() -> float:
    """Seconds for one in-process run of the reference scenario (best of 3)."""
    from luosim.scenario.runner import run
    from luosim.scenario.schema import load_scenario
    sc = load_scenario(REFERENCE)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        run(sc)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-run", action="store_true", help="skip the reference run")
    args = ap.parse_args()
    folios = [memfd.MemfdLuoFolioSer(i, 3, i) for i in range(4096)]
    arr = memfd.encode_folio_array(folios)
    sess = luo.LuoSessionSer("session-a", 0x1000, 3)
    sess_b = sess.encode()
    dev = pci.PciDevSer(0, 0x300, 1)
    dev_b = dev.encode()
    hw = iommu.IommuHwSer(iommu.IommuHdrSer(1, 0), 0xFED90000, 1, 0, 0xFED90000, 0x5000)
    hw_b = hw.encode()
    res = {
        "folio_array_encode_4096_us": best(lambda: memfd.encode_folio_array(folios), 5),
        "folio_array_decode_4096_us": best(lambda: memfd.decode_folio_array(arr, 4096), 5),
        "luo_session_encode_us": best(sess.encode, 20000),
        "luo_session_decode_us": best(lambda: luo.LuoSessionSer.decode(sess_b), 20000),
        "pci_dev_encode_us": best(dev.encode, 20000),
        "pci_dev_decode_us": best(lambda: pci.PciDevSer.decode(dev_b), 20000),
        "iommu_hw_encode_us": best(hw.encode, 5000),
        "iommu_hw_decode_us": best(lambda: iommu.IommuHwSer.decode(hw_b), 5000),
    }
    if not args.no_run:
        res["reference_run_s"] = reference_run()
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for k, v in res.items():
            print(f"{k:32s} {v:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
