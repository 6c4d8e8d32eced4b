"""Regression tests of issue #11 item 6."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from luosim.scenario.runner import run
from luosim.scenario.schema import load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

BRIDGE_HOST = """
name: conventional-bridge
description: a preserved device behind a conventional PCI-PCI bridge, no DMA started
machine:
  memory: 4GiB
  segments:
    - segment: 0
      devices:
        - slot: 3
          kind: bridge
          name: br0
          children: [{slot: 0, name: dsa0}, {slot: 1, name: dsa1}]
kernels:
  before: {profile: PROFILE}
  after: [{profile: PROFILE}]
policy: {dma.mode: MODE}
workload:
  vms:
    - {name: vm0, memory: 32MiB, devices: [dsa0]}
"""


@pytest.mark.parametrize("profile", ["v7", "v9"])
@pytest.mark.parametrize("mode", ["continuous", "reset-at-freeze"])
def test_device_behind_conventional_bridge_keeps_pci5(tmp_path: Path, profile: str,
                                                      mode: str) -> None:
    """vfio enables the device at bind (vfio_pci_core_enable -> pci_enable_device), which
    sets Bus Master on the bridges above it; a conventional bridge has no port driver
    that would have done it at enumeration, so PCI-5 used to fail."""
    p = tmp_path / "b.yaml"
    p.write_text(BRIDGE_HOST.replace("PROFILE", profile).replace("MODE", mode))
    result = run(load_scenario(p))
    assert result.outcome == "ok", [(i.id, i.detail) for i in result.broken]
    br = next(d for d in result.devices if d.name == "br0")
    assert br.auto_preserved and not br.preserved


def test_preserve_none_is_not_unsafe(tmp_path: Path) -> None:
    raw = yaml.safe_load((EXAMPLES / "small-host.yaml").read_text())
    raw["update"] = {"preserve": "none"}
    raw.pop("expect", None)
    p = tmp_path / "none.yaml"
    p.write_text(yaml.safe_dump(raw))
    result = run(load_scenario(p))
    assert result.outcome == "ok", [(i.id, i.detail) for i in result.broken]
    assert not result.preserved_objects


def test_devices_table_shows_auto_preserved_bridges() -> None:
    from io import StringIO

    from rich.console import Console

    from luosim.report.console import render
    result = run(load_scenario(EXAMPLES / "small-host.yaml"))
    rows = {d.name: d for d in result.devices}
    assert rows["sw0"].auto_preserved and not rows["sw0"].preserved
    assert rows["dsa0"].preserved and not rows["dsa0"].auto_preserved
    assert rows["sw0"].as_dict()["auto_preserved"] is True
    buf = StringIO()
    render(result, Console(file=buf, width=140))
    line = next(ln for ln in buf.getvalue().splitlines() if ln.startswith("│ sw0 "))
    assert "auto (bridge)" in line
