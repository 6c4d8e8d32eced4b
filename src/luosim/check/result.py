"""One invariant's verdict: what the checker produces and a run result carries.

Lives in check/ (the layer below scenario/, DESIGN.md) so the checker does not
import scenario/; ``luosim.scenario.result`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class InvariantResult:
    id: str
    ok: bool
    detail: str
    spec: str = ""
    step: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ok": self.ok, "detail": self.detail}
