"""The extent model hands over the same bytes as the per-folio model did.

Digests recorded with tests/extents/handover_digest.py from the per-folio
model: first at 9dc9c4e, then re-recorded on the integration branch just
before the extent model was merged (after the ABI layouts, the kho-v3 root
and kexec-metadata changed the hand-over on purpose), and checked identical
with the extent model merged; every byte of the hand-over metadata and,
for small-host and the API case, of the guest RAM must be identical.

Re-recorded once more on purpose (branch flat12) when large memfd allocations
became 2 MiB / 1 GiB aligned (``bulk_align()`` in kernel/mm/memfd.py): guest
RAM moved, so the folio-array pfns, the KHO radix bitmaps and the IOMMU
tables (now 2 MiB leaves, as ``iommu_map()`` picks them) changed; small-host
did not move.  Generated (descriptor) pages changed no digest.

hugetlb-guest-ram and five-updates (hugetlb pools) added on branch huge12, in
the commit that made a fresh hugetlb pool hand out pages lowest first, as the
kernel's boot-time free list does (mm/hugetlb.c: memblock top-down, then three
list_add()s; see ``HugetlbSubsystem._alloc_boot_pages``): the hugetlb pages'
physical addresses per file index, hence the hugemfd folio-array pfns, the
KHO radix bitmaps and the IOMMU tables of those scenarios, differ from the
older highest-first order.  The run-based hugetlb files after it must keep
these digests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.extents.handover_digest import api_digests, run_digests

GOLDEN = json.loads((Path(__file__).parent / "data" / "handover_golden.json").read_text())
RAM_ORDER = {"small-host.yaml": 9}


@pytest.mark.parametrize("example", [k for k in GOLDEN if k.endswith(".yaml")])
def test_scenario_handover_bytes_unchanged(example: str) -> None:
    assert run_digests(example, RAM_ORDER.get(example, 3)) == GOLDEN[example]


def test_api_memfds_handover_and_content_unchanged() -> None:
    assert api_digests() == GOLDEN["api"]
