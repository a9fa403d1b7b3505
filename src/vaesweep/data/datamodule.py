"""The Lightning datamodule: a dataset's train/val/test splits as TensorLoaders."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from vaesweep.core.checks import ConfigError, is_int
from vaesweep.data.datasets import DATASETS, RawDataset, load_dataset
from vaesweep.data.loader import TensorLoader, per_rank_batch
from vaesweep.data.preprocessing import check_mode, fixed_preprocess


class VAEDataModule(L.LightningDataModule):
    """Train/val/test TensorLoaders over an in-memory dataset; batches are float32 [B, C, H, W].

    batch_size: the GLOBAL training batch. At setup, on each rank, once Lightning's strategy
    knows the processes, each of the trainer's ``world_size`` processes takes
    batch_size / world_size (``rank_batch_size``; ValueError if it does not divide, before
    any step). eval_batch_size: per process. The validation and test data are the same for
    any value (their noise is fixed), but the results are not: validation draws its latent
    samples from the run's random stream, which training draws from too, so the validation
    settings (eval_batch_size, and how often and how much is validated:
    trainer.check_val_every_n_epoch, trainer.limit_val_batches, ...) change the draws that
    later training gets, hence the numbers (the test's importance samples depend on the
    batches too). Keep them fixed across runs you compare. device: None keeps the tensors on
    the CPU, "auto" uses the trainer's root device (the rank's GPU under DDP), anything else
    is passed to torch.device. test_examples: test on the first N examples of the test split
    only (each with the fixed noise it has in the whole split; ``vaesweep evaluate`` uses
    it); None tests on all.
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
        test_examples: int | None = None,
    ) -> None:
        super().__init__()
        if name not in DATASETS:
            raise ValueError(f"data.name={name!r}: unknown dataset; allowed: {', '.join(DATASETS)}")
        check_mode(preprocess)
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not (is_int(value) and value >= 1):
                raise ValueError(f"data.{key}={value!r}: must be a positive integer")
        if not (test_examples is None or (is_int(test_examples) and test_examples >= 1)):
            raise ValueError(f"test_examples={test_examples!r}: must be null or a positive integer")
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
        self.test_examples = test_examples
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
            if self.test_examples is not None:  # the first examples, with their own noise
                self._eval_cpu["test"] = self._eval_cpu["test"][: self.test_examples]
        device = self._target_device()
        self._tensors = {
            "train": raw.splits["train"].to(device),
            **{s: x.to(device) for s, x in self._eval_cpu.items()},
        }
        rank, world_size = 0, 1
        if self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        self.rank_batch_size = per_rank_batch(self.batch_size, world_size)
        self.check_eval_shards(world_size)
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

    def check_eval_shards(self, world_size: int) -> None:
        """Refuses (ConfigError) a validation or test split with fewer examples than
        processes: a rank holding none would skip the evaluation (Lightning runs no loop over
        no batch), while the others wait for it in the evaluation's collectives (the ranks'
        stop agreement, the synced metrics). Checked at setup on every rank, and by the job's
        process before the fit where the config tells the number of processes."""
        sizes = dict(self._load().sizes)
        if self.test_examples is not None:
            sizes["test"] = min(sizes["test"], self.test_examples)
        for split, key in (("val", "data.val_size"), ("test", "data.test_size")):
            n = sizes[split]
            if n < world_size:
                given = "eval.test_examples" if split == "test" and self.test_examples else key
                raise ConfigError(
                    f"the {split} split of data.name={self.name} holds {n} example(s) "
                    f"({given}), fewer than the {world_size} processes of the run: a process "
                    f"would hold none of them; allowed: at least {world_size} (one per process)"
                )

    def _loader(self, split: str) -> TensorLoader:
        """The loader of `split`, setting up first if needed."""
        if not self._loaders:
            self.setup()
        return self._loaders[split]

    def train_dataloader(self) -> TensorLoader:
        """Training batches with fresh noise; the epoch follows the trainer's fit loop."""
        # Lightning calls loader.sampler.set_epoch(e) at each epoch start, before the
        # epoch's first batch (TensorLoader reads the epoch then), a resumed fit included.
        return self._loader("train")

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
        """For the result file: name, shape, split sizes, content fingerprint, preprocess mode,
        and where the files were read (``source``)."""
        raw = self._load()
        return {
            "name": raw.name,
            "shape": list(raw.shape),
            "sizes": raw.sizes,
            "fingerprint": raw.fingerprint,
            "preprocess": self.preprocess,
            "source": raw.source,
        }
