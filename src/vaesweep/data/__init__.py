"""Datasets as in-memory uint8 tensors, preprocessing for VAE likelihoods, fast loaders.

Data flows one way through the modules of this package:

- ``formats``: the IDX file format (bytes, raw or gzipped, to arrays);
- ``download``: where a dataset's files are (the data root), downloads with checksums;
- ``datasets``: the named datasets as uint8 tensors and their fixed splits;
- ``preprocessing``: uint8 grey levels to float32 x in [0, 1] (dequantise, binarise, scale);
- ``loader``: ``TensorLoader``, batches sliced from one in-memory tensor;
- ``datamodule``: ``VAEDataModule``, the Lightning datamodule over the above.

The names below are re-exported here: import them from ``vaesweep.data``.
``VAEDataModule`` is loaded on first use, so reading a dataset never imports Lightning (a
plain-PyTorch script, like ``benchmarks/sweep_vs_plain.py``'s reference, loads only torch and
numpy). To patch a module attribute in a test, patch it in the module that defines it (e.g.
``vaesweep.data.download.DOWNLOAD_TIMEOUT_S``): this package holds copies of the bindings.
Mutable registries (``IDX_SOURCES``, ``DATASETS``) are the same objects here and there.
"""

from typing import TYPE_CHECKING, Any

from vaesweep.data.datasets import (
    DATASETS,
    SPLIT_SEED,
    SPLITS,
    RawDataset,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    load_mnist_small,
)
from vaesweep.data.download import (
    DOWNLOAD_TIMEOUT_S,
    IDX_SOURCES,
    DatasetNotFoundError,
    IdxFile,
    IdxSource,
    default_root,
)
from vaesweep.data.formats import parse_idx, read_idx
from vaesweep.data.loader import TensorLoader
from vaesweep.data.preprocessing import (
    EVAL_NOISE_SEED,
    PREPROCESS_MODES,
    fixed_preprocess,
    preprocess,
)

__all__ = [
    "DATASETS",
    "DOWNLOAD_TIMEOUT_S",
    "EVAL_NOISE_SEED",
    "IDX_SOURCES",
    "PREPROCESS_MODES",
    "SPLITS",
    "SPLIT_SEED",
    "DatasetNotFoundError",
    "IdxFile",
    "IdxSource",
    "RawDataset",
    "TensorLoader",
    "VAEDataModule",
    "default_root",
    "fixed_preprocess",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_mnist_small",
    "parse_idx",
    "preprocess",
    "read_idx",
]


if TYPE_CHECKING:
    from vaesweep.data.datamodule import VAEDataModule


def __getattr__(name: str) -> Any:
    if name == "VAEDataModule":  # the one name whose module imports Lightning
        from vaesweep.data.datamodule import VAEDataModule

        globals()[name] = VAEDataModule  # loaded once
        return VAEDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
