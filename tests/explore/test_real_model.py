"""The explorer on the real model (issue "Fault explorer"): a small host with
one preserved device behind a switch, depth 1, local vs Dask, the warn/panic
comparison on the PCI FLB retrieve, and replay of a saved counterexample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from luosim.explore.campaign import compare, explore
from luosim.explore.executors import DaskExecutor, LocalExecutor
from luosim.explore.trace import Trace, load_trace, replay, save_trace
from luosim.scenario.schema import scenario_from_dict

SMALL = {
    "name": "small-host",
    "machine": {
        "memory": "4GiB",
        "segments": [{
            "firmware_numbering": "sparse",
            "devices": [
                {"slot": 1, "kind": "root-port", "name": "rp0", "children": [
                    {"slot": 0, "kind": "switch", "name": "sw0", "ports": [
                        {"slot": 0, "children": [{"slot": 0, "name": "dsa0"}]},
                        {"slot": 1, "children": [{"slot": 0, "name": "dsa1"}]}]}]},
            ]}],
    },
    "kernels": {"before": {"profile": "v7"},
                "after": [{"profile": "v7", "cmdline": "pci=assign-busses"}]},
    "policy": {"dma.mode": "continuous"},
    "workload": {"blackout_ms": 10, "vms": [
        {"name": "vm0", "memory": "32MiB", "devices": ["dsa0"],
         "dma": {"rate_per_ms": 5, "length": "1MiB"}},
        {"name": "vm1", "memory": "32MiB", "devices": ["dsa1"],
         "dma": {"rate_per_ms": 5, "length": "1MiB"}}]},
}
SCENARIO = scenario_from_dict(SMALL)
WARN = {"pci.retrieve_failure": "warn"}

distributed = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def local_result() -> Any:
    with LocalExecutor(1) as ex:
        return explore(SCENARIO, 1, effects="errno", policy=WARN, executor=ex)


def test_depth1_finds_the_renumbering_under_warn(local_result: Any) -> None:
    unsafe = [g for g in local_result.groups if g.outcome == "unsafe"]
    assert unsafe, "warn must expose a renumbered device under live IOMMU translation"
    sigs = " ".join(g.signature for g in unsafe)
    assert "PCI-1" in sigs
    assert local_result.summary["runs"] == len(local_result.records)


def test_warn_and_panic_differ_on_pci_flb_retrieve() -> None:
    cmp = compare(SCENARIO, {"pci.retrieve_failure": "panic"}, WARN, effects="errno",
                  executor=LocalExecutor(1))
    changed = {r.plan: (r.outcome_a, r.outcome_b) for r in cmp.rows}
    hits = [v for k, v in changed.items() if "pci.flb.retrieve" in str(k)]
    assert ("panic", "unsafe") in hits


def test_dask_gives_the_local_results(client: Any, local_result: Any) -> None:
    got = explore(SCENARIO, 1, effects="errno", policy=WARN,
                  executor=DaskExecutor(client=client))
    assert json.dumps(got.as_json(), sort_keys=True) == \
        json.dumps(local_result.as_json(), sort_keys=True)


def test_saved_counterexample_replays_to_the_same_outcome(local_result: Any,
                                                          tmp_path: Path) -> None:
    group = next(g for g in local_result.groups if g.outcome == "unsafe")
    assert isinstance(group.trace, Trace)
    path = save_trace(group.trace, tmp_path / "cex.json")
    result, same, diff = replay(load_trace(path))
    assert same, diff
    assert result.outcome == "unsafe"


def test_panic_policies_leave_no_unsafe_errno_group() -> None:
    """With both kernel policies at panic (PCI FLB retrieve, IOMMU domain restore),
    no single errno fault ends unsafe: every hazard the warn policies expose is
    stopped by a panic before any invariant breaks."""
    panic = {"pci.retrieve_failure": "panic", "iommu.restore_failure": "panic"}
    with LocalExecutor(1) as ex:
        result = explore(SCENARIO, 1, effects="errno", policy=panic, executor=ex)
    assert result.summary["unsafe"] == 0, [g.signature for g in result.groups]
    assert result.summary["panic"] > 0
