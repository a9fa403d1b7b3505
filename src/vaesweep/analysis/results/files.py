"""The frame from the ``results.json`` files below some directories (the single source of
truth; a sweep may have been moved)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from vaesweep.analysis.results.frame import ResultsError, build_frame, flatten, parse_overrides
from vaesweep.run.context import SWEEP_FILE
from vaesweep.run.record import (
    KILLED,
    RESULTS_FILE,
    RUNNING,
    UNREADABLE,
    frame_status,
    read_evaluations,
    settled,
)


def _local_row(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    # The types of what is read here are checked when the file is read (_read, _bad_field).
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
            **_trained(result.get("trained")),
            "dataset": dataset.get("name") or (config.get("data") or {}).get("name"),
            "dataset_fingerprint": dataset.get("fingerprint"),
            **code_state(result.get("versions")),
            "changed_between_attempts": attempt_changes(result.get("changed_between_attempts")),
        },
        "metrics": {**(result.get("metrics") or {}), **_evaluated(path.parent)},
        "config": flatten(config),
        "overrides": parse_overrides(result.get("overrides") or []),
        # Not a column: which of two runs of one configuration and seed is the newer.
        "finished_at": result.get("finished_at"),
    }


def _trained(trained: Any) -> dict[str, Any]:
    """The ``trained_steps``, ``trained_epochs`` and ``stopped_by`` columns from
    results.json's ``trained`` (None where a run of an older version has none)."""
    trained = trained if isinstance(trained, dict) else {}
    return {
        "trained_steps": trained.get("steps"),
        "trained_epochs": trained.get("epochs"),
        "stopped_by": trained.get("stopped_by"),
    }


def attempt_changes(changes: Any) -> str | None:
    """The ``changed_between_attempts`` column: what a resumed run computed with that
    changed between its attempts, as "versions.torch: 2.12.0 → 2.13.0; ..." (None: nothing
    changed, or a results.json of a version that did not record it)."""
    if not changes:
        return None
    return "; ".join(
        f"{key}: {' → '.join(map(str, values)) if isinstance(values, list) else values}"
        for key, values in changes.items()
    )


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


def _unreadable_row(path: Path, problem: str) -> dict[str, Any]:
    """A results.json that cannot be read: listed, with the reason, and never aggregated."""
    return {
        "identity": {
            "run_dir": str(path.parent),
            "job_name": path.parent.name,
            "status": UNREADABLE,
            "error": f"{path} is not a valid results file ({problem})",
            **code_state(None),
        },
        "metrics": {},
        "config": {},
        "overrides": {},
    }


class BadFields(ValueError):
    """A results.json that is a JSON object but holds a field of a type vaesweep never
    writes there (edited by hand, or written by another tool)."""


# JSON's names for the types a field may hold, as the messages say them.
_OBJECT, _ARRAY, _STRING, _NUMBER = "an object", "an array", "a string", "a number"
_TYPES = {_OBJECT: dict, _ARRAY: list, _STRING: str, _NUMBER: int | float}
# The fields of a results.json that a row is made of, and what each may hold besides null
# (absent: a run outside a multirun, or a file of an older version). A result whose fields
# hold anything else cannot be read into a row: it is a row with the status unreadable,
# naming the field, rather than a traceback that loses every other run of the sweep.
_FIELDS = {
    "config": _OBJECT,
    "dataset": _OBJECT,
    "metrics": _OBJECT,
    "error": _OBJECT,
    "overrides": _ARRAY,
    "sweep_dir": _STRING,
    "job_name": _STRING,
    "seed": _NUMBER,
    "duration_s": _NUMBER,
    "changed_between_attempts": _OBJECT,
}
# Fields inside those objects that a row reads, by path (an object before what it holds).
_INNER = {
    ("dataset", "name"): _STRING,
    ("dataset", "fingerprint"): _STRING,
    ("config", "data"): _OBJECT,
    ("config", "data", "name"): _STRING,
    ("error", "type"): _STRING,
    ("error", "message"): _STRING,
}


def _json_type(value: Any) -> str:
    """What ``value`` is, in JSON's words (``a string``, ``true``, ...)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return next((name for name, kind in _TYPES.items() if isinstance(value, kind)), "null")


def _holds(value: Any, expected: str) -> bool:
    return value is None or (isinstance(value, _TYPES[expected]) and not isinstance(value, bool))


def _bad_field(result: dict[str, Any]) -> str | None:
    """Which field of ``result`` (a results.json's object) holds a type the row cannot be
    made from, and what it holds; None when every field the row reads is of its type."""
    for key, expected in _FIELDS.items():
        if not _holds(result.get(key), expected):
            return f"{key!r} is {_json_type(result[key])}, not {expected}"
    for path, expected in _INNER.items():
        value: Any = result
        for key in path:  # the objects on its path were checked before it: dicts or None
            value = (value or {}).get(key)
        if not _holds(value, expected):
            return f"{'.'.join(path)} is {_json_type(value)}, not {expected}"
    error = result.get("error")
    if error is not None and not {"type", "message"} <= error.keys():
        return "'error' lacks its type or message"
    for name, value in (result.get("metrics") or {}).items():
        if not _holds(value, _NUMBER):
            return f"metric {name!r} is {_json_type(value)}, not {_NUMBER}"
    for item in result.get("overrides") or []:
        if not isinstance(item, str):
            return f"'overrides' holds {_json_type(item)}, not only strings"
    return None


def _read(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; OSError or ValueError (JSONDecodeError and
    UnicodeDecodeError included) when there is none, :class:`BadFields` when a field the row
    reads holds another type than vaesweep writes there."""
    result = json.loads(path.read_text())
    if not isinstance(result, dict):
        raise ValueError("not a JSON object")
    problem = _bad_field(result)
    if problem is not None:
        raise BadFields(problem)
    return result


def _short(run_dir: Path, dirs: tuple[str | os.PathLike[str], ...]) -> str:
    """``run_dir`` relative to the directory given that holds it (its name if it is one)."""
    for d in dirs:
        top = Path(d).resolve()
        if run_dir.is_relative_to(top) and run_dir != top:
            return str(run_dir.relative_to(top))
    return run_dir.name


def _walk(path: Path, name: str) -> list[Path]:
    """Every file called ``name`` at or below the directory ``path``, symbolic links to
    directories followed (each real directory once)."""
    found, seen = [], set()
    for top, dirs, files in os.walk(path, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        if name in files:
            found.append(Path(top) / name)
    return found


def find_results(*dirs: str | os.PathLike[str]) -> list[Path]:
    """Every results.json at or below ``dirs`` (a dir, or a results.json itself), sorted,
    unique (symbolic links to sweep directories are followed)."""
    found: set[Path] = set()
    for d in dirs:
        path = Path(d)
        if not path.exists():
            raise ResultsError(f"{path}: no such file or directory")
        if path.is_file():
            found.add(path.resolve())
        else:
            found.update(p.resolve() for p in _walk(path, RESULTS_FILE))
    return sorted(found)


def missing_jobs(dirs: tuple[str | os.PathLike[str], ...], found: list[Path]) -> list[str]:
    """Notes on the sweeps below ``dirs`` whose sweep.json names more jobs than have a
    results.json: jobs that never started (a stopped sweep), or whose file was lost."""
    have = {p.parent for p in found}
    notes, seen = [], set()
    for d in dirs:
        if not Path(d).is_dir():
            continue
        for record_path in _walk(Path(d), SWEEP_FILE):
            if record_path.resolve() in seen:  # a directory given twice, or a link to it
                continue
            seen.add(record_path.resolve())
            try:
                record = json.loads(record_path.read_text())
                jobs, n_jobs = record.get("jobs") or [], int(record.get("n_jobs") or 0)
            except (OSError, ValueError, TypeError, AttributeError):
                continue  # a damaged record: the next launch of the sweep sets it aside
            sweep = record_path.parent.resolve()
            ran = sum(p.is_relative_to(sweep) for p in have)
            lost = [
                str(j["dir"])
                for j in jobs
                if isinstance(j, dict) and j.get("dir") and (sweep / j["dir"]) not in have
            ]
            if ran >= n_jobs and not lost:
                continue
            note = f"{record_path.parent}: {SWEEP_FILE} counts {n_jobs} jobs, {ran} have a {RESULTS_FILE}"
            if lost:
                shown = ", ".join(lost[:3]) + (" ..." if len(lost) > 3 else "")
                note += f"; lost from jobs that ran: {shown}"
            notes.append(note + " (the sweep's command runs what is missing)")
    return notes


def load_results(*dirs: str | os.PathLike[str], completed_required: bool = True) -> pd.DataFrame:
    """One row per ``results.json`` found (recursively) under ``dirs``; columns as in
    :mod:`vaesweep.analysis.results`. A results.json that cannot be read is a row with the
    status ``unreadable``; one that says ``running`` while no live process holds the run's
    claim (vaesweep.run.claims) has the status ``killed``. ``df.attrs["notes"]`` says what
    else the user should know (jobs of a sweep.json without a result, killed runs,
    duplicates whose metrics differ).

    Raises ResultsError when none is found, when runs of different datasets (name or
    content fingerprint) are mixed, or when no run completed (unless not
    ``completed_required``: listing the runs of a sweep none of whose jobs completed).
    """
    if not dirs:
        raise ResultsError("no directory given")
    paths = find_results(*dirs)
    if not paths:
        raise ResultsError(
            f"no {RESULTS_FILE} found under {', '.join(str(d) for d in dirs)}: "
            "pass a run or sweep directory written by `python run.py`"
        )
    rows, unreadable, mistyped, killed = [], [], [], []
    for path in paths:
        try:
            result = _read(path)
        except (OSError, ValueError) as e:
            rows.append(_unreadable_row(path, str(e)))
            (mistyped if isinstance(e, BadFields) else unreadable).append(f"{path} ({e})")
            continue
        gone = None
        if frame_status(result)[0] == RUNNING:
            result, gone = settled(path, result, _read)
        row = _local_row(path, result)
        if gone is not None:
            row["identity"].update(status=KILLED, error=gone)
            killed.append(_short(path.parent, dirs))
        rows.append(row)
    df = build_frame(rows, completed_required)
    notes = missing_jobs(dirs, paths)
    if unreadable:
        notes.append(
            f"{len(unreadable)} {RESULTS_FILE} could not be read (status unreadable; the "
            f"sweep's command runs such a job again): {'; '.join(unreadable[:3])}"
            + (" ..." if len(unreadable) > 3 else "")
        )
    if mistyped:
        # Not "runs again", as above: a launch goes by the status such a file says (one that
        # says completed is left alone), so the note only names the field to mend.
        notes.append(
            f"{len(mistyped)} {RESULTS_FILE} hold a field of a type vaesweep never writes "
            "there (status unreadable; edited, or written by another tool): "
            f"{'; '.join(mistyped[:3])}" + (" ..." if len(mistyped) > 3 else "")
        )
    if killed:
        notes.append(
            f"{len(killed)} run(s) say running but no process runs them (killed outright: "
            "SIGKILL, out of memory, a node lost; status killed); the same command in the same "
            f"directory resumes them: {', '.join(killed[:3])}" + (" ..." if len(killed) > 3 else "")
        )
    df.attrs["notes"] = [*notes, *df.attrs["notes"]]
    return df
