"""A run's ``metrics.csv`` across its attempts.

Lightning's CSV logger deletes the ``metrics.csv`` it finds when it starts, so an attempt
that resumes from a checkpoint would leave only its own rows: the history before the
interruption (the ``train/scale`` and β curves the figures draw) would be lost. Around an
attempt that resumes:

- :func:`set_aside` (before the logger is made) keeps the rows logged before the
  checkpoint's step in ``.metrics.earlier.csv``: the rows after it were logged by training
  the resumed attempt repeats. Rows kept aside by an earlier attempt that never merged
  (killed outright) are kept with them; an attempt killed after it merged but before it
  removed the set-aside file left them in ``metrics.csv`` already, and they are kept once.
- :func:`merge` (after the attempt, however it ended) writes ``metrics.csv`` again as those
  rows followed by the attempt's own, the columns the union of both, atomically.

An attempt that starts from step 0 drops whatever was set aside (Lightning replaces the
file).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from vaesweep.core.atomic import write_csv_atomic

METRICS_FILE = "metrics.csv"
EARLIER_FILE = ".metrics.earlier.csv"


def logged_step(checkpoint: Path) -> int:
    """The logging step a fit resumed from ``checkpoint`` continues at: its ``global_step``
    (the optimisation steps; Lightning's logging step counts the batches that took one,
    the same number, whether the module steps its optimiser itself or Lightning does, with
    gradient accumulation)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # our own file
    return int(state.get("global_step", 0))


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return math.nan


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    """``rows`` with the union of their columns in Lightning's (sorted) order, atomically."""
    columns = sorted({key for row in rows for key in row if key is not None})
    write_csv_atomic(path, [{c: row.get(c, "") for c in columns} for row in rows])


def _values(row: dict[str, str]) -> dict[str, str]:
    """A row's non-empty cells (a merged file fills the columns a row lacked with "")."""
    return {k: v for k, v in row.items() if k is not None and v not in ("", None)}


def _begins_with(rows: list[dict[str, str]], head: list[dict[str, str]]) -> bool:
    """Whether ``rows`` starts with the rows of ``head`` (as :func:`merge` writes them)."""
    return len(rows) >= len(head) and all(
        _values(a) == _values(b) for a, b in zip(rows, head, strict=False)
    )


def set_aside(run_dir: Path, resume_from: Path | None) -> None:
    """Before an attempt's logger is made (see the module doc)."""
    current, earlier = run_dir / METRICS_FILE, run_dir / EARLIER_FILE
    if resume_from is None:
        earlier.unlink(missing_ok=True)
        return
    step = logged_step(resume_from)
    before, logged = _rows(earlier), _rows(current)
    if before and _begins_with(logged, before):
        before = []  # merged already: the last attempt was killed before it removed the file
    kept = [r for r in [*before, *logged] if _step(r) < step]
    if kept:
        _write(earlier, kept)
    else:
        earlier.unlink(missing_ok=True)
    current.unlink(missing_ok=True)


def merge(run_dir: Path) -> None:
    """After an attempt: ``metrics.csv`` = the rows set aside, then the attempt's own."""
    earlier = run_dir / EARLIER_FILE
    if not earlier.exists():
        return
    _write(run_dir / METRICS_FILE, [*_rows(earlier), *_rows(run_dir / METRICS_FILE)])
    earlier.unlink()
