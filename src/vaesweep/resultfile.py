"""Reading ``results.json`` files that may be damaged, stray or incomplete.

The end-of-sweep summary must list every job and ``vaesweep collect`` must not count a
result it cannot trust, whatever is in the directory: a file that is not JSON, one copied
from elsewhere, one that says ``completed`` without any test metric. :func:`read_result`
never raises: it returns the result with the fields the summary reads normalised, and with a
status that says what the file is worth:

- ``unreadable``: not a JSON object (the reason is in ``error``);
- ``incomplete``: a status that is not one of vaesweep's, or ``completed`` without test
  metrics (a run that recorded nothing it earned);
- otherwise the file's own status.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vaesweep.record import RESULTS_FILE, STATUSES

UNREADABLE = "unreadable"
INCOMPLETE = "incomplete"


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "message": message, "step": None}


def checked_status(result: dict[str, Any]) -> tuple[str, str | None]:
    """(the status a result is worth, why it differs from the recorded one or None)."""
    status = result.get("status")
    if status not in STATUSES:
        return INCOMPLETE, f"status {status!r} is not one of {', '.join(STATUSES)}"
    metrics = result.get("metrics")
    if status == "completed":
        tested = isinstance(metrics, dict) and any(
            str(k).startswith("test/") and _number(v) is not None for k, v in metrics.items()
        )
        if not tested:
            return INCOMPLETE, "says completed but holds no test metrics"
    return status, None


def frame_status(result: dict[str, Any]) -> tuple[str, str | None]:
    """The status ``vaesweep collect`` gives a result: :func:`checked_status`, and
    ``fast_dev_run`` for a completed Lightning debug run (one batch of each split: its
    metrics are a smoke test, so aggregates and figures leave it out)."""
    status, reason = checked_status(result)
    trainer = ((result.get("config") or {}).get("trainer")) or {}
    if status == "completed" and isinstance(trainer, dict) and trainer.get("fast_dev_run"):
        return "fast_dev_run", "trainer.fast_dev_run: one batch of each split, not a result"
    return status, reason


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_result(path: str | Path) -> dict[str, Any]:
    """The result at ``path`` (a results.json), normalised for the summary: ``run_dir`` is
    the directory it was found in, ``status`` as :func:`checked_status` says, ``metrics`` a
    dict of finite floats, ``overrides`` a list of strings, ``error`` a dict or None."""
    path = Path(path)
    run_dir = str(path.parent)
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        result, problem = None, f"{path} is not valid JSON ({e})"
    else:
        problem = None if isinstance(result, dict) else f"{path} is not a JSON object"
    if problem is not None:
        return {
            "run_dir": run_dir,
            "status": UNREADABLE,
            "metrics": {},
            "overrides": [],
            "error": _error("UnreadableResult", problem),
        }
    status, reason = checked_status(result)
    metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
    overrides = result.get("overrides") if isinstance(result.get("overrides"), list) else []
    error = result.get("error")
    if reason is not None:
        error = _error("IncompleteResult", f"{path} {reason}")
    elif error is not None and not isinstance(error, dict):
        error = _error("Error", str(error))
    return {
        **result,
        "run_dir": run_dir,
        "status": status,
        "metrics": {k: n for k, v in metrics.items() if (n := _number(v)) is not None},
        "overrides": [str(o) for o in overrides],
        "error": error,
    }


def missing_result(run_dir: Path) -> dict[str, Any]:
    """The summary's entry for a job directory without a results.json."""
    return {
        "run_dir": str(run_dir),
        "status": INCOMPLETE,
        "metrics": {},
        "overrides": [],
        "error": _error(
            "MissingResult",
            f"{run_dir} holds no {RESULTS_FILE}: the job never started its run, or was "
            "refused before it",
        ),
    }


def sweep_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per job directory of a sweep (a directory holding a results.json or
    Hydra's ``.hydra``), sorted by directory; never raises for what the files hold."""
    out = []
    for job_dir in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()):
        path = job_dir / RESULTS_FILE
        if path.exists():
            out.append(read_result(path))
        elif (job_dir / ".hydra").is_dir():
            out.append(missing_result(job_dir))
    return out
