"""An in-memory loader: float32 batches sliced from one tensor, sharded across ranks."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from vaesweep.data.preprocessing import PREPROCESS_MODES, check_mode, derived_seed, preprocess


def batch_problem(batch_size: int, world_size: int) -> str:
    """The refusal of a global batch that the data-parallel processes cannot share evenly."""
    return (
        f"data.batch_size={batch_size!r} is invalid: allowed a multiple of the {world_size} "
        f"data-parallel processes (it is the global batch: each process takes "
        f"data.batch_size/{world_size}), e.g. {max(world_size, batch_size // world_size * world_size)}"
    )


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Each process's share of the global batch; ValueError when it does not divide."""
    if batch_size % world_size:
        raise ValueError(batch_problem(batch_size, world_size))
    return batch_size // world_size


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
            check_mode(preprocess)
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
            generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch, 0))
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
        """Batches of the current epoch, read when the first batch is requested (as a torch
        DataLoader draws its sampler's order): Lightning creates a resumed fit's first
        iterator before it sets that epoch, and sets it before taking a batch."""
        yield from self._batches(self.epoch)

    def _batches(self, epoch: int) -> Iterator[Tensor]:
        """Yields float32 x [B, C, H, W] for `epoch`."""
        shard = self._shard(epoch)
        if isinstance(shard, Tensor):
            shard = shard.to(self.data.device)
        generator = None
        if self.preprocess in ("dequantize", "binarize"):
            generator = torch.Generator(device=self.data.device)
            generator.manual_seed(derived_seed(self.seed, epoch, self.rank, 1))
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
