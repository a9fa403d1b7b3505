"""A finished (or running) search's studies, opened again from its sweep.json for the
figures; nothing is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaesweep.run.context import read_sweep
from vaesweep.sweep.search.storage import is_url, open_storage, quiet_optuna


def _journal(sweep_dir: Path, storage: str) -> str | None:
    """A journal (or SQLite) file where it was written, or beside sweep.json (a moved
    sweep); None when neither is there."""
    beside = sweep_dir / Path(storage).name
    order = (Path(storage), beside) if Path(storage).is_absolute() else (beside,)
    found = [p for p in order if p.is_file()]
    return str(found[0]) if found else None


def load_studies(sweep_dir: str | Path) -> list[Any]:
    """The Optuna studies of a search directory (from its sweep.json), [] for a grid."""
    try:
        record = read_sweep(sweep_dir) or {}
    except (OSError, ValueError):  # a damaged sweep.json: no studies to draw
        record = {}
    search = record.get("search")
    if not search:
        return []
    storage = search["storage"]
    if not is_url(storage):
        storage = _journal(Path(sweep_dir), storage)
        if storage is None:
            return []
    elif storage.startswith("sqlite:///"):  # opening a missing file would create it empty
        path = storage.removeprefix("sqlite:///")
        found = path if Path(path).is_file() else _journal(Path(sweep_dir), path)
        if found is None:
            return []
        storage = f"sqlite:///{found}"
    import optuna

    quiet_optuna()
    opened = open_storage(storage)
    out = []
    for name in search.get("studies", []):
        try:
            out.append(optuna.load_study(study_name=name, storage=opened))
        except KeyError:
            continue
    return out
