"""The hand-over ``corrupt:*`` effects that the hand-over mutator applies to the
written KHO root FDT and LUO hand-over (issue 13), on the small host: outcome,
signature and the next kernel's log line.  The expected values were recorded
with the kernel modules' own corrupting encoders, before the effects moved to
luosim.faults.mutator."""

from __future__ import annotations

import copy

import pytest

from luosim.faults import Fault
from luosim.scenario.runner import run
from luosim.scenario.schema import scenario_from_dict
from tests.explore.test_real_model import SMALL

CASES = [
    ("v7", "kho.handover", "corrupt:root-compatible", "unsafe", "unsafe:KHO-1,LUO-2,VFIO-8",
     "setup: handover FDT is invalid, booting without KHO: kho root fdt: offset 0x0, "
     "field /compatible: 'kho-v1' is not 'kho-v2'"),
    ("v9", "kho.handover", "corrupt:root-compatible", "unsafe", "unsafe:KHO-1,LUO-2,VFIO-8",
     "setup: handover FDT is invalid, booting without KHO: kho root fdt: offset 0x0, "
     "field /compatible: 'kho-v1' is not 'kho-v3'"),
    ("v7", "kho.handover", "corrupt:mem-map", "unsafe", "unsafe:KHO-1,LUO-2,VFIO-8",
     "failed to get preserved memory map"),
    ("v9", "kho.handover", "corrupt:mem-map", "unsafe", "unsafe:KHO-1,LUO-2,VFIO-8",
     "failed to get preserved memory map"),
    ("v7", "luo.handover", "corrupt:compatible", "panic",
     "panic:luo: incoming hand-over is invalid: LUO FDT: offset ADDR, field /:compatible: "
     "root is not compatible with 'luo-v1'",
     "Kernel panic - not syncing: luo: incoming hand-over is invalid: LUO FDT: offset 0x0, "
     "field /:compatible: root is not compatible with 'luo-v1'"),
    ("v9", "luo.handover", "corrupt:compatible", "panic",
     "panic:luo: incoming hand-over is invalid: LUO blob: offset ADDR, field "
     "luo_ser.compatible: b'luo-v4\\x00\\x00' is not b'luo-v5\\x00\\x00'",
     "Kernel panic - not syncing: luo: incoming hand-over is invalid: LUO blob: offset 0x0, "
     "field luo_ser.compatible: b'luo-v4\\x00\\x00' is not b'luo-v5\\x00\\x00'"),
    ("v7", "luo.handover", "corrupt:missing-flb-node", "panic",
     "panic:luo: incoming hand-over is invalid: LUO FDT: offset ADDR, field /luo-flb: "
     "missing node /luo-flb (ENOENT)",
     "Kernel panic - not syncing: luo: incoming hand-over is invalid: LUO FDT: offset 0x0, "
     "field /luo-flb: missing node /luo-flb (ENOENT)"),
    # luo-v5: flbs_pa = 0, the FLBs are not found; the devices' state is leaked
    ("v9", "luo.handover", "corrupt:missing-flb-node", "unsafe", "unsafe:IOMMU-7,VFIO-8",
     "end of boot: 63 preserved blocks (16415 pages) not restored: leaked until the next "
     "reboot"),
]


@pytest.mark.parametrize(("profile", "point", "effect", "outcome", "signature", "line"), CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_handover_corruption_on_small_host(profile: str, point: str, effect: str,
                                           outcome: str, signature: str, line: str) -> None:
    data = copy.deepcopy(SMALL)
    data["kernels"] = {"before": {"profile": profile}, "after": [{"profile": profile}]}
    result = run(scenario_from_dict(data), faults=(Fault(point, 1, effect),))
    assert result.fired == [f"{point}#1={effect}"]
    assert (result.outcome, result.signature()) == (outcome, signature)
    after = [e["detail"] for e in result.events
             if e["kind"] == "log" and e["kernel"].startswith("k2")]
    assert line in after


def test_root_corruption_changes_only_its_field() -> None:
    """The re-encoded root keeps every subtree, in the kernel's order, with its blob-size."""
    from luosim.abi.kho import KhoData, decode_root_fdt, encode_root_fdt
    from luosim.faults.mutator import corrupt_kho_root
    from luosim.hw.machine import Machine

    mem = Machine.from_topology({"memory": "256MiB"}).memory
    fdt_pa = 0x10000
    blob = encode_root_fdt(0x20000, [("kexec-metadata", 0x30000, 73), ("LUO", 0x31000, 32)],
                           compatible="kho-v3")
    mem.write(fdt_pa, blob)
    written = decode_root_fdt(blob)
    kd = bytearray(KhoData(fdt_pa, len(blob), 0x40000, 0).encode())
    corrupt_kho_root(mem, kd, "corrupt:mem-map")
    got = decode_root_fdt(mem.read(fdt_pa, KhoData.decode(bytes(kd)).fdt_size))
    assert (got.compatible, got.mem_map_pa) == ("kho-v3", 0)
    assert list(got.subtrees.items()) == list(written.subtrees.items())
    assert got.sizes == written.sizes
