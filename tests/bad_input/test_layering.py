"""Issue 13: the import cycles are broken and check/ does not depend on scenario/
(DESIGN.md layering).  Every import counts, also inside functions and under
TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "luosim"


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(module: str) -> set[str]:
    base = SRC.parent / module.replace(".", "/")
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("luosim")}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("module,forbidden", [
    ("luosim.errors", "luosim.kernel"),
    ("luosim.faults", "luosim.hw"),
    ("luosim.faults", "luosim.kernel.kernel"),
    ("luosim.hw.pci", "luosim.hw.machine"),
])
def test_no_cycle_edge(module: str, forbidden: str) -> None:
    bad = sorted(m for m in imports_of(module) if _under(m, forbidden))
    assert not bad, f"{module} imports {bad}"


def test_check_does_not_import_scenario() -> None:
    for path in sorted((SRC / "check").glob("*.py")):
        mod = _module(path)
        bad = sorted(m for m in imports_of(mod) if _under(m, "luosim.scenario"))
        assert not bad, f"{mod} imports {bad}"


def test_catalog_still_complete() -> None:
    from luosim.faults import load_catalog
    catalog = load_catalog()
    assert "luo.handover" in catalog and "pci.flb.retrieve" in catalog
    assert any(name.startswith("luo.file.") for name in catalog)  # per-handler points
