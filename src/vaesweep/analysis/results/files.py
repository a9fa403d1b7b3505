"""The frame from the ``results.json`` files below some directories (the single source of
truth; a sweep may have been moved)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from vaesweep.analysis.results.frame import ResultsError, build_frame, flatten, parse_overrides
from vaesweep.run.record import RESULTS_FILE, frame_status, read_evaluations


def _local_row(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise ResultsError(f"{path}: not a valid results file (not a JSON object)")
    dataset = result.get("dataset") or {}
    config = result.get("config") or {}
    error = result.get("error")
    # "completed" without test metrics is "incomplete"; a fast_dev_run is not a result.
    status, reason = frame_status(result)
    return {
        "identity": {
            "run_dir": str(path.parent),  # where it is now (a sweep may have been moved)
            "sweep_dir": result.get("sweep_dir"),
            "job_name": result.get("job_name"),
            "status": status,
            "error": reason or (f"{error['type']}: {error['message']}" if error else None),
            "seed": result.get("seed"),
            "duration_s": result.get("duration_s"),
            "dataset": dataset.get("name") or (config.get("data") or {}).get("name"),
            "dataset_fingerprint": dataset.get("fingerprint"),
            **code_state(result.get("versions")),
        },
        "metrics": {**(result.get("metrics") or {}), **_evaluated(path.parent)},
        "config": flatten(config),
        "overrides": parse_overrides(result.get("overrides") or []),
    }


def code_state(versions: Any) -> dict[str, Any]:
    """The ``commit``, ``dirty`` and ``versions`` columns of a run from the ``versions`` its
    results.json holds: the vaesweep source tree's git commit and dirty flag (None outside a
    git checkout) and one "name=version ..." string of Python and the packages."""
    versions = versions if isinstance(versions, dict) else {}
    git = versions.get("git") if isinstance(versions.get("git"), dict) else {}
    packages = " ".join(f"{k}={v}" for k, v in versions.items() if k != "git" and v is not None)
    return {"commit": git.get("commit"), "dirty": git.get("dirty"), "versions": packages or None}


def _evaluated(run_dir: Path) -> dict[str, float]:
    """The metrics of the run's evaluations (vaesweep evaluate), as ``key@name``."""
    return {
        f"{key}@{name}": value
        for name, evaluation in read_evaluations(run_dir).items()
        for key, value in (evaluation.get("metrics") or {}).items()
        if key.startswith("test/")
    }


def find_results(*dirs: str | os.PathLike[str]) -> list[Path]:
    """Every results.json at or below ``dirs`` (a dir, or a results.json itself), sorted, unique."""
    found: set[Path] = set()
    for d in dirs:
        path = Path(d)
        if not path.exists():
            raise ResultsError(f"{path}: no such file or directory")
        if path.is_file():
            found.add(path.resolve())
        else:
            found.update(p.resolve() for p in path.rglob(RESULTS_FILE))
    return sorted(found)


def load_results(*dirs: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per ``results.json`` found (recursively) under ``dirs``; columns as in
    :mod:`vaesweep.analysis.results`.

    Raises ResultsError when none is found, when one is not valid JSON, when runs of different
    datasets (name or content fingerprint) are mixed, or when no run completed.
    """
    if not dirs:
        raise ResultsError("no directory given")
    paths = find_results(*dirs)
    if not paths:
        raise ResultsError(
            f"no {RESULTS_FILE} found under {', '.join(str(d) for d in dirs)}: "
            "pass a run or sweep directory written by `python run.py`"
        )
    rows = []
    for path in paths:
        try:
            rows.append(_local_row(path, json.loads(path.read_text())))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ResultsError(f"{path}: not a valid results file ({e})") from None
    return build_frame(rows)
