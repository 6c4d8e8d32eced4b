"""Live progress of a run's phases (rich), fed by the runner's ``on_phase``."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


class PhaseProgress:
    """A spinner per phase; each finished phase stays on screen with a tick."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                  BarColumn(bar_width=20), TimeElapsedColumn(),
                                  console=console, transient=False)
        self._task: TaskID | None = None

    def __enter__(self) -> PhaseProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close()
        self._progress.__exit__(et, ev, tb)

    def _close(self) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=1, total=1)
            self._task = None

    def phase(self, name: str) -> None:
        self._close()
        self._task = self._progress.add_task(name, total=1)
