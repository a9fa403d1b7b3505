"""Atomic writes: still atomic, and the files get the permissions the umask gives any file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vaesweep.core.atomic import aside_path, atomic_open, move_aside, remove_stale_temps
from vaesweep.run.record import write_json_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_atomic_files_get_the_umask_permissions_of_any_new_file(tmp_path, umask):
    plain = tmp_path / "plain"
    plain.write_text("x")  # what any other new file gets
    assert mode(plain) == 0o666 & ~umask
    with atomic_open(tmp_path / "text.txt") as f:
        f.write("hello")
    with atomic_open(tmp_path / "data.bin", "wb") as f:
        f.write(b"\x00\x01")
    write_json_atomic(tmp_path / "results.json", {"a": 1})
    for name in ("text.txt", "data.bin", "results.json"):
        assert mode(tmp_path / name) == mode(plain), name
    # Replacing an existing file: the new one's permissions, still from the umask.
    (tmp_path / "text.txt").chmod(0o600)
    with atomic_open(tmp_path / "text.txt") as f:
        f.write("again")
    assert mode(tmp_path / "text.txt") == mode(plain)
    assert (tmp_path / "text.txt").read_text() == "again"


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"status": "running"})
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write('{"status": "comp')
        raise RuntimeError("killed mid-write")
    assert target.read_text().startswith('{\n  "status": "running"')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_the_new_file_appears_only_at_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    write_json_atomic(target, {"v": 1})
    seen = []
    replace = os.replace

    def replace_seen(src, dst):  # what a reader sees just before the rename
        seen.append(Path(dst).read_text())
        replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_seen)
    with atomic_open(target) as f:
        f.write('{"v": 2}')
        assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert '"v": 1' in seen[0] and target.read_text() == '{"v": 2}'


def test_remove_stale_temps_removes_only_writers_leftovers(tmp_path):
    keep = ["results.json", ".hydra", "train.log", ".claim"]
    (tmp_path / ".hydra").mkdir()
    for name in keep[::2] + keep[3:]:
        (tmp_path / name).write_text("x")
    stale = [".results.json.0a1b2c3d4e5f.tmp", ".last.ckpt.1234.link"]
    for name in stale:
        (tmp_path / name).write_text("partial")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert remove_stale_temps(tmp_path / "missing") == []


def test_aside_paths_are_new_names_beside_the_file(tmp_path):
    target = tmp_path / "sweep.json"
    first = aside_path(target, "damaged")
    assert first.parent == tmp_path and first.name.startswith("sweep.json.damaged-")
    first.write_text("x")
    second = aside_path(target, "damaged")  # within the same second: numbered
    assert second != first and not second.exists() and second.name.startswith(first.name)


def test_move_aside_moves_only_the_bytes_it_was_given(tmp_path):
    target = tmp_path / "sweep.json"
    target.write_bytes(b'{"grid": ')
    taken = aside_path(target, "damaged")
    taken.write_text("kept")  # an earlier aside of the same second is never replaced
    moved = move_aside(target, "damaged", b'{"grid": ')
    assert moved is not None and moved != taken and not target.exists()
    assert moved.read_bytes() == b'{"grid": ' and taken.read_text() == "kept"
    target.write_text("{}")  # another launch wrote a good record after this one read
    assert move_aside(target, "damaged", b'{"grid": ') is None
    assert target.read_text() == "{}" and len(list(tmp_path.iterdir())) == 3
    assert move_aside(tmp_path / "absent.json", "damaged", b"") is None


def test_every_atomic_write_syncs_its_directory_after_the_rename(tmp_path, monkeypatch):
    """The temp file is synced before its rename, and the directory after it, so that the
    rename itself survives a power loss (a directory entry is flushed with its directory)."""
    import os

    from vaesweep.core.atomic import write_json_atomic

    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), (tmp_path / "r.json").exists()))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    (temp, renamed_before), (directory, renamed_after) = synced
    assert temp.endswith(".tmp") and not renamed_before
    assert directory == str(tmp_path) and renamed_after
