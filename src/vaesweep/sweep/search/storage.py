"""Where a search's studies live: a journal file in the sweep directory (default) or an RDB
URL; checked writable before any trial, opened with Optuna's storages.

A journal is appended one line per entry. A write cut short (the disk filled, the machine
lost power) leaves a last line without its newline, and Optuna's next append would join it
to that torn line and make the journal unreadable for good. ``check_storage`` therefore moves
such a torn tail into a file of its own before the search writes again."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from vaesweep.core.atomic import aside_path, atomic_open
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
    """SearchError unless the storage can be written (the journal file is created) and a
    journal can be read; a journal's torn last entry is moved aside (mend_journal)."""
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
    if not is_url(storage):
        saved = mend_journal(path)
        if saved is not None:
            print(
                f"[vaesweep] {path} ended in an entry whose write was cut short (the disk "
                f"filled or a machine stopped while it was written); its bytes were moved to "
                f"{saved.name} and the search goes on from the last complete entry",
                file=sys.stderr,
                flush=True,
            )


def _journal_lock(path: Path) -> Any:
    """The lock Optuna's JournalFileBackend takes for this journal (see open_storage)."""
    from optuna.storages.journal import JournalFileSymlinkLock

    return JournalFileSymlinkLock(os.path.abspath(path))


def _line_start(f: Any, end: int) -> int:
    """Where the line that ends at byte ``end`` of ``f`` starts: after the last newline before
    ``end`` (0 when there is none). Reads backwards in chunks."""
    pos, chunk = end, 1 << 16
    while pos > 0:
        start = max(0, pos - chunk)
        f.seek(start)
        found = f.read(pos - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        pos = start
    return 0


def mend_journal(path: Path) -> Path | None:
    """Move a torn last line of the journal ``path`` (the bytes after its last newline) into
    ``<journal>.torn-<time>`` and cut the journal there; returns that file, None when the
    journal ends in a newline. Raises SearchError, naming the line, when the last complete
    entry is not JSON: Optuna skips such a line without a word and fails at the first read
    after the next append. Done under Optuna's own lock on the journal, so no live process
    is in the middle of an append."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    saved = None
    lock = _journal_lock(path)
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(end - 1)
            if f.read(1) != b"\n":
                cut = _line_start(f, end)
                f.seek(cut)
                torn = f.read()
                saved = aside_path(path, "torn")
                with atomic_open(saved, "wb") as out:
                    out.write(torn)
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
                end = cut
            if end > 0:
                start = _line_start(f, end - 1)
                f.seek(start)
                try:
                    json.loads(f.read(end - start))
                except ValueError as e:
                    raise SearchError(_unreadable(path, e)) from None
    finally:
        lock.release()
    return saved


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
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(os.path.abspath(storage)))
    except ValueError as e:  # json.JSONDecodeError too
        raise SearchError(_unreadable(Path(storage), e)) from None


def _unreadable(path: Path, error: Exception) -> str:
    """Why the journal ``path`` cannot be read, naming its first damaged line."""
    line = None
    with open(path, "rb") as f:
        for number, text in enumerate(f, start=1):
            try:
                json.loads(text)
            except ValueError:
                line = number
                break
    where = f" at line {line}" if line is not None else ""
    return (
        f"the search's journal {path} cannot be read{where} ({error}): it was damaged, by an "
        "edit or by an append joined to a line cut short (which vaesweep now mends before it "
        "writes). The lines before it are intact. Move the journal away and launch with a new "
        "hydra.sweep.dir to start the search afresh"
    )


def quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
