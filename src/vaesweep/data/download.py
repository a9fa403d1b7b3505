"""Where a dataset's IDX files are: the data root, locating them, downloading with checksums.

The data-root rule: a dataset's files are looked for under ``root`` (``data.root``); when
no root is given, under ``default_root()`` = $VAESWEEP_DATA_ROOT, else
~/.cache/vaesweep/data. Within a root, ``<root>/<name>/`` then ``<root>/`` itself, then the
dataset's system directories (a Debian package); downloads go to ``<root>/<name>/``.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
import warnings
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np

from vaesweep.data.formats import parse_idx, read_bytes

DOWNLOAD_TIMEOUT_S = 10.0


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not on disk and could not be downloaded."""


@dataclass(frozen=True)
class IdxFile:
    """One file of an IDX dataset and its md5 checksums (of the .gz and of the raw bytes)."""

    name: str
    gz_md5: str
    raw_md5: str


@dataclass(frozen=True)
class IdxSource:
    """Where the four IDX files of a dataset come from and how to get them."""

    files: dict[str, IdxFile]  # keys: train_images, train_labels, test_images, test_labels
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()
    install_hint: str = ""


# md5s as published by the dataset authors (and torchvision): gz_md5 is the .gz file served
# by the mirrors, raw_md5 the uncompressed bytes (Debian re-compresses Fashion-MNIST, so
# only raw_md5 identifies its files).
IDX_SOURCES: dict[str, IdxSource] = {
    "mnist": IdxSource(
        files={
            "train_images": IdxFile(
                "train-images-idx3-ubyte",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "6bbc9ace898e44ae57da46a324031adb",
            ),
            "train_labels": IdxFile(
                "train-labels-idx1-ubyte",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "a25bea736e30d166cdddb491f175f624",
            ),
            "test_images": IdxFile(
                "t10k-images-idx3-ubyte",
                "9fb629c4189551a2d022fa330f9573f3",
                "2646ac647ad5339dbf082846283269ea",
            ),
            "test_labels": IdxFile(
                "t10k-labels-idx1-ubyte",
                "ec29112dd5afa0611ce80d1b7f02629c",
                "27ae3e4e09519cfbb04c329615203637",
            ),
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion_mnist": IdxSource(
        files={
            "train_images": IdxFile(
                "train-images-idx3-ubyte",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            ),
            "train_labels": IdxFile(
                "train-labels-idx1-ubyte",
                "25c81989df183df01b3e8a0aad5dffbe",
                "9018921c3c673c538a1fc5bad174d6f9",
            ),
            "test_images": IdxFile(
                "t10k-images-idx3-ubyte",
                "bef4ecab320f06d8554ea6380940ec79",
                "8181f5470baa50b63fa0f6fddb340f0a",
            ),
            "test_labels": IdxFile(
                "t10k-labels-idx1-ubyte",
                "bb300cfdad3c16e7a12a480ee83cd310",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        install_hint="apt-get install dataset-fashion-mnist (installs the files under "
        "/usr/share/datasets/fashion-mnist/)",
    ),
}


def default_root() -> Path:
    """The data root when none is given: $VAESWEEP_DATA_ROOT or ~/.cache/vaesweep/data."""
    return Path(os.environ.get("VAESWEEP_DATA_ROOT", "~/.cache/vaesweep/data")).expanduser()


def _search_dirs(name: str, root: Path, system: bool = True) -> list[Path]:
    """Directories searched, in order, for the IDX files of dataset `name` (without its
    system directories unless ``system``)."""
    dirs = [root / name, root]
    return [*dirs, *(Path(d) for d in IDX_SOURCES[name].system_dirs)] if system else dirs


def _find(file: IdxFile, directory: Path) -> Path | None:
    """`<directory>/<name>` or `<directory>/<name>.gz` if it exists, else None."""
    for candidate in (directory / file.name, directory / f"{file.name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_all(source: IdxSource, directory: Path) -> dict[str, Path] | None:
    """Paths of all the files of `source` in `directory`, or None if any is missing."""
    paths = {role: _find(file, directory) for role, file in source.files.items()}
    return {role: p for role, p in paths.items() if p is not None} if all(paths.values()) else None


def _download(file: IdxFile, mirrors: tuple[str, ...], dest_dir: Path) -> list[str]:
    """Fetches `<name>.gz` from the first mirror whose copy matches gz_md5; returns failures."""
    failures = []
    for mirror in mirrors:
        url = f"{mirror}{file.name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                data = response.read()
        except (OSError, HTTPException, ValueError) as err:
            failures.append(f"{url}: {err}")
            continue
        md5 = hashlib.md5(data).hexdigest()
        if md5 != file.gz_md5:
            failures.append(f"{url}: md5 {md5}, expected {file.gz_md5}")
            continue
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{file.name}.gz"
        # Atomic: readers (other ranks, other sweep jobs) never see a partial file.
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return []
    return failures


def _release_of_another(name: str, paths: dict[str, Path]) -> str | None:
    """The registered dataset other than ``name`` whose released label files these are
    (MNIST and Fashion-MNIST name their files alike), else None. The label files only:
    70 KB to hash, where the images are 55 MB (read_checked hashes the four when read)."""
    owners = set()
    for role in ("train_labels", "test_labels"):
        path = paths.get(role)
        try:
            released = path and _released_as(hashlib.md5(read_bytes(path)).hexdigest())
        except (OSError, ValueError):
            return None  # unreadable: read_checked names the problem
        if not released or released[0] == name:
            return None
        owners.add(released[0])
    return owners.pop() if len(owners) == 1 else None


def _usable_dirs(
    name: str, root: Path, system: bool = True
) -> tuple[dict[str, Path] | None, list[str]]:
    """(the four files of ``name`` from the first searched directory that holds them all,
    or None; a line per directory passed over because it holds another dataset's release,
    e.g. MNIST's files directly in a shared data root when Fashion-MNIST is asked for).
    ``system``: search the dataset's system directories too."""
    passed = []
    # All four from the first directory that has them all: never mix copies of a dataset.
    for directory in _search_dirs(name, root, system):
        if (paths := _find_all(IDX_SOURCES[name], directory)) is None:
            continue
        other = _release_of_another(name, paths)
        if other is None:
            return paths, passed
        passed.append(
            f"{directory} holds the released files of '{other}' (they name their files "
            f"alike): passed over. Keep each dataset in its own directory under the data "
            f"root ({directory / other}, {directory / name}), which is searched first"
        )
    return None, passed


def locate_idx(name: str, root: Path, download: bool, system: bool = True) -> dict[str, Path]:
    """Paths of the four IDX files of `name`, all from one directory; downloads if asked.
    A directory holding another dataset's released files is passed over. ``system``:
    search the dataset's system directories too (only for the default root: a root the
    user set is the only place searched, and a download goes into it)."""
    source = IDX_SOURCES[name]
    dirs = _search_dirs(name, root, system)
    paths, passed = _usable_dirs(name, root, system)
    if paths is not None:
        return paths
    failures: list[str] = []
    if download:
        target = root / name
        _refuse_mixed_copy(name, target)
        for file in source.files.values():
            if _find(file, target) is None:
                failures = _download(file, source.mirrors, target)
                if failures:  # no mirror works: do not wait out the timeouts again
                    break
        if (paths := _find_all(source, target)) is not None:
            return paths
    names = ", ".join(f"{file.name}[.gz]" for file in source.files.values())
    lines = [
        f"dataset '{name}': no directory holds all of {names}",
        f"looked in: {', '.join(str(d) for d in dirs)}",
        *passed,
    ]
    if failures:
        lines.append("download failed:\n    " + "\n    ".join(failures))
    lines.append("to get them, either:")
    lines.append(
        f"  - run with data.download=true on a machine with internet "
        f"(saves to {root / name}, checksummed)"
    )
    lines.append(f"  - copy the four IDX files (raw or .gz) into {root / name} (or set data.root)")
    if source.install_hint:
        lines.append(f"  - {source.install_hint}")
    raise DatasetNotFoundError("\n".join(lines))


def check_given_root(name: str, root: str | os.PathLike[str]) -> None:
    """Refuses a ``data.root`` the user set (not null, the default) that does not hold the
    files of dataset ``name`` (DatasetNotFoundError naming data.root, its value, the
    directories searched and what is allowed). Such a root is the only place searched: a
    system copy is read only with the default root, so that a mistyped or empty directory
    is not silently replaced by it (a run read the Debian package's Fashion-MNIST with
    data.root=/nonexistent/typo, saying so in one log line). Files found there are the
    ones :func:`locate_idx` reads: it searches the same directories first."""
    source = IDX_SOURCES[name]
    root_path = Path(root).expanduser()
    paths, passed = _usable_dirs(name, root_path, system=False)
    if paths is not None:
        return
    names = ", ".join(f"{file.name}[.gz]" for file in source.files.values())
    where = Path(os.path.abspath(root_path))
    state = "which holds no copy of it" if where.is_dir() else "which does not exist"
    looked = ", ".join(str(d) for d in _search_dirs(name, where, system=False))
    system = ", ".join(source.system_dirs)
    default = (
        f"the default, which reads the system copy {system}: a data.root you set is the "
        "only place searched"
        if system
        else "the default: $VAESWEEP_DATA_ROOT, else ~/.cache/vaesweep/data"
    )
    # The first line is what the command line shows (at most 400 characters, the paths
    # searched last): the rest is in the job's log.
    lines = [
        f"dataset '{name}': no directory holds all of its four IDX files in data.root={root}, "
        f"{state}. Allowed: a data.root holding them, data.download=true, or data.root=null "
        f"({default}). Looked in: {looked}",
        f"the files: {names} (raw or .gz), in <root>/{name}/ or <root>/ itself",
        *passed,
        f"data.download=true saves them to {where / name}, checksummed",
    ]
    raise DatasetNotFoundError("\n".join(lines))


def _refuse_mixed_copy(name: str, target: Path) -> None:
    """DatasetNotFoundError when a download would complete ``target`` (the files it lacks)
    beside a file that is not the release: a custom or subsampled copy's files mixed with
    released ones. A partial release (an interrupted download) is completed."""
    for file in IDX_SOURCES[name].files.values():
        found = _find(file, target)
        if found is not None and hashlib.md5(read_bytes(found)).hexdigest() != file.raw_md5:
            raise DatasetNotFoundError(
                f"dataset '{name}': data.download=true would complete {target}, but its "
                f"{found.name} is not the released file (a custom or subsampled copy): the "
                "downloaded files beside it would mix two copies of the dataset. Put the four "
                "files of one copy there, or download into an empty directory (another "
                "data.root)"
            )


def check_download(name: str, root: Path, system: bool = True) -> None:
    """What :func:`locate_idx` with ``download`` would refuse before downloading, checked
    before a job opens its record: nothing when a searched directory holds all the files."""
    if _usable_dirs(name, root, system)[0] is None:
        _refuse_mixed_copy(name, root / name)


def _owner(file: IdxFile) -> str | None:
    """The dataset whose file ``file`` is (None: not a registered one)."""
    for name, source in IDX_SOURCES.items():
        if any(f == file for f in source.files.values()):
            return name
    return None


def _released_as(md5: str) -> tuple[str, str] | None:
    """(dataset, file name) of the released file whose content has this md5, if any."""
    for name, source in IDX_SOURCES.items():
        for f in source.files.values():
            if f.raw_md5 == md5:
                return name, f.name
    return None


def read_checked(path: Path, file: IdxFile, ndim: int) -> np.ndarray:
    """Reads one IDX file; warns when its content differs from the canonical release.

    Raises DatasetNotFoundError when the file is another dataset's release: MNIST and
    Fashion-MNIST name their files alike, so a directory searched for one (a shared data
    root, a system directory) can hold the other's."""
    data = read_bytes(path)
    md5 = hashlib.md5(data).hexdigest()
    if md5 != file.raw_md5:
        wanted = _owner(file)
        other = _released_as(md5)
        if other is not None and other[0] == wanted and other[1] != file.name:
            raise DatasetNotFoundError(
                f"dataset '{wanted}': {path} is its released {other[1]} (content md5 {md5}), "
                f"not its {file.name}: renamed or copied over? Training on one split and "
                f"testing on the other would look like a result. Put the released files "
                f"under their own names in {path.parent}"
            )
        if other is not None and wanted is not None and other[0] != wanted:
            raise DatasetNotFoundError(
                f"dataset '{wanted}': {path} is the released {other[1]} of '{other[0]}' "
                f"(content md5 {md5}), not of '{wanted}': the two name their files alike. "
                f"Keep each dataset in its own directory under the data root "
                f"({path.parent / wanted}, {path.parent / other[0]}), which is searched first"
            )
        # Not an error: a custom or subsampled copy is usable, and the content fingerprint
        # recorded in every result tells such runs apart.
        warnings.warn(
            f"{path}: content md5 {md5} differs from the canonical {file.name} ({file.raw_md5})",
            stacklevel=3,
        )
    return parse_idx(data, source=str(path), ndim=ndim)
