"""Where a search's studies live: a journal file in the sweep directory (default) or an RDB
URL; checked writable before any trial, opened with Optuna's storages."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from vaesweep.sweep.search.space import SearchError

JOURNAL_FILE = "optuna_journal.log"


def is_url(storage: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+]*://", storage) is not None


def storage_location(storage: Any, sweep_dir: Path) -> str:
    """The journal file (relative paths inside the sweep directory) or RDB URL of a study."""
    if storage is None or storage == "":
        return str(sweep_dir / JOURNAL_FILE)
    if not isinstance(storage, str):
        raise SearchError(
            f"hydra.sweeper.storage={storage}: allowed: null (a journal in the sweep "
            "directory), a journal file path or an RDB URL such as sqlite:///search.db"
        )
    if is_url(storage):
        return storage
    path = Path(storage).expanduser()
    return str(path if path.is_absolute() else sweep_dir / path)


def check_storage(storage: str) -> None:
    """SearchError unless the storage can be written (the journal file is created)."""
    path = None
    if not is_url(storage):
        path = Path(storage)
    elif storage.startswith("sqlite:///"):
        path = Path(storage[len("sqlite:///") :])
    if path is None:
        try:
            open_storage(storage)
        except Exception as e:
            raise SearchError(f"hydra.sweeper.storage={storage}: cannot be opened ({e})") from None
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as e:
        raise SearchError(
            f"hydra.sweeper.storage={storage}: cannot write {path} ({e}); allowed: a writable "
            "journal file path, an RDB URL, or null (a journal in the sweep directory)"
        ) from None


def open_storage(storage: str) -> Any:
    """Optuna's storage for a journal file or RDB URL. The journal's path is made absolute:
    Optuna's lock is a symlink to the journal, and a relative target dangles (it resolves
    beside the link), so Optuna could never tell that a lock left by a killed search is stale
    and the next launch waited for it forever. With an absolute target it releases such a
    lock after its grace period (30 s)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if is_url(storage):
        return optuna.storages.RDBStorage(storage)
    return optuna.storages.JournalStorage(JournalFileBackend(os.path.abspath(storage)))


def quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
