"""A hook for progress display: stages report finished rows here; the CLI draws bars from it.

The library stays free of any UI: with no listener set, these calls do nothing. That is also the case in a Dask
worker process, where the listener of the command's process is out of reach: there the flow advances a stage's
bar by the rows of a task's batches as the task completes (flows/common.py `collect`).
"""

from __future__ import annotations

from typing import Protocol


class ProgressListener(Protocol):
    def start(self, stage: str, total: int | None) -> None: ...

    def advance(self, stage: str, rows: int) -> None: ...

    # Optional: `teacher(stage, samples, tokens)`, called for every teacher answer (see `teacher` below).


_listener: ProgressListener | None = None


def set_listener(listener: ProgressListener | None) -> None:
    global _listener
    _listener = listener


def start(stage: str, total: int | None) -> None:
    if _listener is not None:
        _listener.start(stage, total)


def advance(stage: str, rows: int) -> None:
    if _listener is not None and rows:
        _listener.advance(stage, rows)


def teacher(stage: str, samples: int = 0, tokens: int = 0) -> None:
    """A teacher answer arrived: feeds the samples/s and tokens/s shown while a batch is still running."""
    hook = getattr(_listener, "teacher", None)
    if hook is not None and (samples or tokens):
        hook(stage, samples, tokens)
