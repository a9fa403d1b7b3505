"""Lightning plug-ins of the run: image grids at test time, atomic checkpoint writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor

from vaesweep.atomic import atomic_open
from vaesweep.images import reconstruction_grid, save_image_grid

# Fixed generator seed for the prior samples: the same z for every run and configuration,
# so sample grids are comparable side by side.
SAMPLE_SEED = 1234


class ImageGrids(L.Callback):
    """Writes ``reconstructions.png`` (test images over their reconstructions) and
    ``samples.png`` (E[x|z] for z ~ N(0, I)) into the run dir, and logs them to W&B."""

    def __init__(self, out_dir: str | Path, n: int = 8) -> None:
        self.out_dir = Path(out_dir)
        self.n = n
        self._first: Tensor | None = None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self._first = batch[: self.n]

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._first is None:
            return
        x = self._first
        n = min(self.n, x.shape[0])
        upscale = max(1, 56 // x.shape[-1])  # 8x8 digits are hard to see at 1:1
        rec = reconstruction_grid(x[:n], pl_module.reconstruct(x[:n]), n)
        generator = torch.Generator().manual_seed(SAMPLE_SEED)
        samples = pl_module.sample_prior(self.n * self.n, generator)
        paths = {
            "reconstructions": save_image_grid(
                rec.cpu(), self.out_dir / "reconstructions.png", nrow=n, upscale=upscale
            ),
            "samples": save_image_grid(
                samples.cpu(), self.out_dir / "samples.png", nrow=self.n, upscale=upscale
            ),
        }
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                for key, path in paths.items():
                    logger.log_image(key=f"test/{key}", images=[str(path)])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temp file beside the target, fsynced, then renamed over
    it: a job killed mid-write leaves the previous checkpoint intact, never a torn one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)
