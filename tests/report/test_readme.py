"""The README stands alone and its `inspect DIR` example is what luosim prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from luosim.cli import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_no_reference_outside_the_repository() -> None:
    assert "../" not in README
    for link in re.findall(r"`((?:docs|examples|tests|benchmarks|src)/[^`\s]+)`", README):
        path = link.split("#")[0].rstrip("/")
        if "*" in path or "NAME" in path or "{" in path:
            continue
        assert (ROOT / path).exists(), link


def test_glossary() -> None:
    glossary = README[README.index("## Glossary"):]
    glossary = glossary[:glossary.index("\n## ", 3)]
    for term in ("KHO", "LUO", "FLB", "BME", "ACS", "ARI", "RID", "DID"):
        assert re.search(rf"^\| {term} \| \w", glossary, re.M), term


def test_inspect_dir_example_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import luosim.cli
    # the README shows a 100-column terminal; xdist workers have none
    monkeypatch.setattr(luosim.cli, "out", Console(width=100, highlight=False, emoji=False))
    block = README[README.index("$ luosim inspect dump"):]
    block = block[:block.index("```")]
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(ROOT / "examples/small-host.yaml"), "--json",
                              "--dump-handover", str(tmp_path / "dump")])
    assert res.exit_code == 0
    res = runner.invoke(app, ["inspect", str(tmp_path / "dump")])
    assert res.exit_code == 0
    shown = [ln.split("── ", 1)[1].strip() for ln in block.splitlines() if "── " in ln]
    assert len(shown) > 40
    actual = {ln.split("── ", 1)[1].strip() for ln in res.output.splitlines() if "── " in ln}
    assert [s for s in shown if s not in actual] == []
    assert res.output.rstrip().endswith(block.rstrip().splitlines()[-1])
