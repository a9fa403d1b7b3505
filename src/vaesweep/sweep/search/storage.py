"""Where a search's studies live: a journal file in the sweep directory (default) or an RDB
URL; checked writable before any trial, opened with Optuna's storages.

A journal is appended one line per entry. A write cut short (the disk filled, the machine
lost power) leaves a last line without its newline, and Optuna's next append would join it
to that torn line and make the journal unreadable for good. ``check_storage`` therefore moves
such a tail (or a last line that is not an entry) into a file of its own, and removes a lock that
Optuna could never release, before the search writes again (:func:`mend_journal`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from vaesweep.core.atomic import aside_path, atomic_open
from vaesweep.sweep.search.space import SearchError

JOURNAL_FILE = "optuna_journal.log"
#: Optuna's grace period for a journal lock (JournalFileSymlinkLock's default).
STALE_LOCK_S = 30.0


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
        for note in mend_journal(path):
            print(f"[vaesweep] {note}", file=sys.stderr, flush=True)


def _journal_lock(path: str | Path) -> Any:
    """The lock on this journal: the one open_storage gives Optuna's JournalFileBackend, and
    the one mend_journal takes."""
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


def _foreign(lock: Path, journal: Path) -> bool:
    """Whether ``lock`` is a symlink that does not lead to ``journal``: its target does not
    exist, or is another journal."""
    return lock.is_symlink() and os.path.realpath(lock) != os.path.realpath(journal)


def _clear_foreign_lock(path: Path) -> str | None:
    """Remove a lock on the journal ``path`` whose symlink does not lead to it: left by a
    killed search of an earlier vaesweep (a relative target, which resolves beside the link,
    to nothing) or in a sweep directory moved or copied since. Optuna judges a lock stale by
    its target's changes: it would wait forever for a dangling one, or for as long as another
    journal is written. Such a lock is removed once it is as old as Optuna's grace period, by
    its date or, for a date ahead of this clock, by how long this process watched it. Returns
    what was done."""
    lock = Path(os.path.abspath(path) + ".lock")
    watched, since, told = None, 0.0, False
    while _foreign(lock, path):
        try:
            stat = os.lstat(lock)
            target = os.readlink(lock)
        except FileNotFoundError:  # released or removed meanwhile
            return None
        if (stat.st_ino, stat.st_mtime_ns) != watched:  # another lock than the one watched
            watched, since = (stat.st_ino, stat.st_mtime_ns), time.monotonic()
        left = STALE_LOCK_S - max(time.time() - stat.st_mtime, time.monotonic() - since)
        if left > 0:
            if not told and left > 2:
                told = True
                print(
                    f"[vaesweep] {lock} points to {target!r}, not to this journal: it is "
                    f"removed in {left:.0f} s unless released",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(min(1.0, left))
            continue
        private = lock.with_name(f"{lock.name}.{os.getpid()}.removed")
        try:
            os.rename(lock, private)  # as Optuna releases a lock: one process wins it
        except FileNotFoundError:
            return None
        now = os.lstat(private)
        if (now.st_ino, now.st_mtime_ns) != watched:  # another's lock came in between
            with contextlib.suppress(OSError):  # put it back, never over a newer one
                os.link(private, lock, follow_symlinks=False)
            os.unlink(private)
            continue
        os.unlink(private)
        return (
            f"removed {lock}: a lock left by a killed search, pointing to {target!r}, which is "
            "not this journal from here (an earlier vaesweep wrote relative targets; or the "
            "sweep directory was moved or copied), so Optuna could never release it"
        )
    return None


def mend_journal(path: Path) -> list[str]:
    """Make the journal ``path`` safe to append to; returns what was done, one line each.

    - A lock on it that leads elsewhere is removed (:func:`_clear_foreign_lock`).
    - A torn last line (the bytes after the last newline: a write cut short) is moved into
      ``<journal>.torn-<time>`` and the journal cut there: Optuna's next append would join
      its entry to it, and the journal could never be read again.
    - A last complete line that is not an entry (not JSON, or not an object with an op_code:
      an edit, or such a joined append) is moved into ``<journal>.damaged-<time>`` the same
      way: Optuna skips one that is not JSON without a word, then fails at the first read
      after the next append, and fails at once on the others. A damaged line before the
      last is left for :func:`open_storage` to refuse, naming it.

    Done under Optuna's own lock on the journal, so no live process is in the middle of an
    append. SearchError when the bytes cannot be set aside (a full disk)."""
    notes = [note] if (note := _clear_foreign_lock(path)) else []
    if not path.is_file() or path.stat().st_size == 0:
        return notes
    lock = _journal_lock(path)
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(end - 1)
            torn = f.read(1) != b"\n"
            cut = _line_start(f, end) if torn else end
            damaged = False
            if cut > 0:  # the last complete line
                start = _line_start(f, cut - 1)
                f.seek(start)
                if _not_an_entry(f.read(cut - start)):
                    cut, damaged = start, True
            if cut == end:
                return notes
            f.seek(cut)
            tail = f.read()
            saved = aside_path(path, "damaged" if damaged else "torn")
            try:
                with atomic_open(saved, "wb") as out:
                    out.write(tail)
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise SearchError(
                    f"the search's journal {path} ends in an entry that cannot be read, and "
                    f"setting it aside failed ({e}); free disk space and launch again"
                ) from None
    finally:
        lock.release()
    if damaged:
        what = "a line that is not an entry (an edit, or an append joined to a write cut short)"
    else:
        what = "an entry whose write was cut short (the disk filled or a machine stopped)"
    notes.append(
        f"{path} ended in {what}; its {len(tail)} bytes were moved to {saved.name} and the "
        "search goes on from the last complete entry (a trial whose result was in it is told "
        "again from its results.json)"
    )
    return notes


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
        backend = JournalFileBackend(os.path.abspath(storage), lock_obj=_journal_lock(storage))
        return optuna.storages.JournalStorage(backend)
    except Exception as e:  # JSONDecodeError, or KeyError/TypeError/AssertionError replaying
        raise SearchError(_unreadable(Path(storage), e)) from None


def _not_an_entry(line: bytes) -> str | None:
    """Why ``line`` is not an entry of Optuna's journal (a JSON object with an op_code), None
    when it is one."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        return f"not JSON: {e.msg} at column {e.pos + 1}"  # the line ends in its newline
    except ValueError as e:  # not UTF-8
        return f"not JSON: {e}"
    if not isinstance(value, dict) or "op_code" not in value:
        return "not an entry of Optuna's journal (a JSON object with an op_code)"
    return None


def _unreadable(path: Path, error: Exception) -> str:
    """Why the journal ``path`` cannot be read, naming its first line that is not an entry."""
    try:
        with open(path, "rb") as f:
            for number, text in enumerate(f, start=1):
                why = _not_an_entry(text)
                if why is not None:
                    return (
                        f"the search's journal {path} cannot be read: line {number} is {why}, "
                        "by an edit or by an append joined to a write cut short. Optuna cannot "
                        "read past it; the lines before it are intact. To start the search "
                        "afresh, move the journal away and launch with a new hydra.sweep.dir "
                        "(the trials' directories keep their results for `vaesweep collect`)"
                    )
    except OSError:  # the file itself cannot be read: the error says why
        pass
    return f"the search's journal {path} cannot be read by Optuna ({type(error).__name__}: {error})"


def quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
