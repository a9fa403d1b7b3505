"""Atomic file writes: readers (and crashes) see the old file or the new one, never half."""

from __future__ import annotations

import csv
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# Temp files are ".<target name>.<random>.tmp" beside the target (hidden, one per writer).
TEMP_SUFFIX = ".tmp"


def _create_temp(path: Path, binary: bool) -> tuple[int, Path]:
    """A new, empty temp file beside ``path``, created like any other new file: mode
    0o666 minus the umask (``mkstemp`` would force 0o600, so results, checkpoints and
    images would be unreadable to a group sharing the sweep directory)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    if binary:
        flags |= getattr(os, "O_BINARY", 0)  # Windows only
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # 48 random bits: practically never
            continue


@contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "w",
) -> Iterator[IO]:
    """Open a temp file beside ``path`` for writing; on a clean exit flush, fsync and rename
    it over ``path``, then fsync its directory (so the rename outlives a power loss too); on
    an exception remove it and leave ``path`` as it was.

    The file gets the permissions of any new file (0o666 & ~umask, and a directory's
    default ACL where there is one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path, "b" in mode)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename, a new file) to disk; ~0.1 ms on ext4. Where
    a directory cannot be opened or synced (Windows, some network file systems) the
    rename is still atomic, only not yet durable: nothing to do."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(
    directory: str | os.PathLike[str], targets: tuple[str, ...] | None = None
) -> list[Path]:
    """Remove the temp files that writers killed mid-write (SIGKILL, power loss) left in
    ``directory`` (not recursive); returns them. ``targets``: only the temps of files of
    these names (every temp when None). Call it only while no one else writes them
    (vaesweep does, holding the job's claim, or the sweep record's lock)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    prefixes = None if targets is None else tuple(f".{name}." for name in targets)
    stale = [
        p
        for p in directory.iterdir()
        if p.name.startswith(".")
        and p.name.endswith((TEMP_SUFFIX, ".link"))
        and (prefixes is None or p.name.startswith(prefixes))
        and p.is_file()
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write JSON atomically (temp file beside ``path``, fsync, rename); returns the path.
    NaN and infinities are refused (``allow_nan=False``): JSON cannot hold them."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")
    return Path(path)


def write_csv_atomic(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """Write rows (dicts) as CSV atomically; the columns are every key in order of appearance."""
    fieldnames = list(dict.fromkeys(k for r in rows for k in r)) or ["job", "status", "error"]
    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def aside_path(path: str | os.PathLike[str], why: str) -> Path:
    """A new name beside ``path`` for keeping bytes that cannot stay where they were (a
    damaged record, a torn journal line): ``<name>.<why>-<time>``, numbered when taken."""
    path = Path(path)
    stem = f"{path.name}.{why}-{time.strftime('%Y%m%dT%H%M%S')}"
    candidate, n = path.with_name(stem), 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{stem}.{n}")
    return candidate


def move_aside(path: str | os.PathLike[str], why: str, expected: bytes | None) -> Path | None:
    """Move ``path`` to a new :func:`aside_path` if it still holds ``expected`` (the bytes
    read from it; None for a directory): never over another file, never a file another
    process wrote since. Returns the new name; None when ``path`` is gone or holds other
    bytes now (it is left as it is)."""
    path = Path(path)
    if expected is None:  # a directory: nothing to compare, and no hard link
        aside = aside_path(path, why)
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        return aside
    while True:
        aside = aside_path(path, why)
        try:
            os.link(path, aside)  # never replaces a file
        except FileExistsError:  # taken since aside_path looked: another name
            continue
        except FileNotFoundError:
            return None
        break
    if aside.read_bytes() != expected:  # replaced since it was read
        os.unlink(aside)
        return None
    os.unlink(path)
    return aside
