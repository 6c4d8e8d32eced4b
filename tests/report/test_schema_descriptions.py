"""Every property `luosim schema` prints has a description."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from luosim.cli import app
from luosim.scenario.descriptions import DESCRIPTIONS


def test_every_schema_property_is_described() -> None:
    res = CliRunner().invoke(app, ["schema"])
    assert res.exit_code == 0
    schema = json.loads(res.output)
    models: dict[str, Any] = {"Scenario": schema, **schema["$defs"]}
    missing = [f"{m}.{p}" for m, d in models.items() for p, v in d.get("properties", {}).items()
               if not v.get("description")]
    assert missing == []
    # and no stale text for a property that no longer exists
    stale = [f"{m}.{p}" for m, texts in DESCRIPTIONS.items() for p in texts
             if p not in models.get(m, {}).get("properties", {})]
    assert stale == []
