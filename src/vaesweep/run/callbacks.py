"""Lightning plug-ins of the run: image grids at test time, stop-and-resume state, atomic
checkpoint writes, a progress bar redrawn by the clock, one line per epoch where there is no
terminal, and (benchmarks only) timestamps of training events."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.profilers import PassThroughProfiler
from torch import Tensor

from vaesweep.core.atomic import atomic_open
from vaesweep.core.helpers import append_timestamp
from vaesweep.model import components
from vaesweep.run.claims import ClaimLost
from vaesweep.run.console import finite_value
from vaesweep.run.images import IMAGES_FILE, reconstruction_grid, save_image_grid
from vaesweep.run.loggers import define_metrics
from vaesweep.run.policy import RUN_STATE_KEY, stored_run_state
from vaesweep.run.signals import StopSignals, in_step, reduced, release_at_exit

log = logging.getLogger("vaesweep")
# Fixed generator seed for the prior samples: the same z for every run and configuration,
# so sample grids are comparable side by side.
SAMPLE_SEED = 1234


class ImageGrids(L.Callback):
    """Writes ``reconstructions.png`` (test images over their reconstructions) and
    ``samples.png`` (E[x|z] for z ~ N(0, I)) into the run dir, logs them to W&B, and keeps
    their arrays in ``images.npz`` (``originals``: the first test images as uint8 grey
    levels; ``reconstructions`` of them as the run's model saw them; ``samples``), so that
    figures compare runs from files, without rebuilding any model."""

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
        recon = pl_module.reconstruct(x[:n])
        rec = reconstruction_grid(x[:n], recon, n)
        generator = torch.Generator().manual_seed(SAMPLE_SEED)
        samples = pl_module.sample_prior(self.n * self.n, generator)
        paths = {
            "reconstructions": save_image_grid(
                rec.cpu(), self.out_dir / "reconstructions.png", nrow=n, upscale=upscale
            )
        }
        paths["samples"] = save_image_grid(
            samples.cpu(), self.out_dir / "samples.png", nrow=self.n, upscale=upscale
        )
        raw = getattr(trainer.datamodule, "raw", None)  # VAEDataModule: the uint8 splits
        originals = raw.splits["test"][:n] if raw is not None else (x[:n] * 255).round()
        with atomic_open(self.out_dir / IMAGES_FILE, "wb") as f:
            np.savez(
                f,
                originals=originals.to(torch.uint8).cpu().numpy(),
                reconstructions=recon.float().cpu().numpy(),
                samples=samples.float().cpu().numpy(),
            )
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                for key, path in paths.items():
                    logger.log_image(key=f"test/{key}", images=[str(path)])


class WandbMetrics(L.Callback):
    """Declares the job's W&B metrics (step axes, summaries: vaesweep.run.loggers) in the
    process that logs, before its first row; rank 0 only (the others do not log)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                define_metrics(logger.experiment)


class Resumable(L.Callback):
    """What makes a job stoppable and resumable to the same result:

    - it stops the job at the next batch boundary (training, validation or test) once a stop
      signal has been received (``signals``, see vaesweep.run.signals), in the processes a
      spawning strategy (ddp_spawn) started too, which get a copy of it;
    - it keeps the metrics of the last validation epoch (``val/*``) and saves them in every
      checkpoint (Lightning saves a callback's ``state_dict``), so a job resumed after its
      last epoch (killed while testing, say), whose fit has nothing left to train or
      validate, still reports the values an uninterrupted run reports;
    - at every epoch end it calls ``on_epoch_end`` (the run record updates the time spent,
      which a SIGKILL would otherwise lose).
    """

    def __init__(
        self,
        signals: StopSignals | None = None,
        on_epoch_end: Any = None,
        identity: dict[str, Any] | None = None,
        on_first_batch: Any = None,
    ) -> None:
        """``identity``: the run's config, kept in every checkpoint (what a directory whose
        results.json and identity.json are lost is identified by)."""
        self.identity = identity
        self.signals = signals if signals is not None else StopSignals()
        self.on_epoch_end = on_epoch_end
        #: Called once, at the end of this attempt's first training batch.
        self.on_first_batch = on_first_batch
        self._in_step = False  # one rank of several (set up): stops are agreed (setup)
        self._shared_batches = 0  # batches of the current evaluation every rank holds
        self.val_metrics: dict[str, float] = {}
        self.best_val_elbo: float | None = None
        #: The data the run reads (a datamodule's ``info``), kept in every checkpoint.
        self.dataset: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.signals.trainer = trainer
        # In a process ddp_spawn started, and in every rank of a fit of several processes,
        # this process's stop signals are this callback's, not Lightning's ...
        self.signals.take_over(trainer)
        self._in_step = in_step(trainer)
        if self._in_step:  # the process group ends before the interpreter does
            release_at_exit()

    # ... also once Lightning has installed its SIGTERM handler, before its loops run.
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signals.take_over(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signals.take_over(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.writes_step_metrics(batch_idx):
            # The module writes this step's metrics to the loggers (its training_step): is
            # the directory still this process's? The heartbeat thread may not have looked
            # since the takeover (a resumed process). Every rank computes the same answer
            # here, so the ranks of a fit of several check together.
            self.signals.check_claim_together(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.on_first_batch is not None:
            self.on_first_batch()
            self.on_first_batch = None
        if self._in_step:  # every rank ends each training batch: they agree on a stop here
            self.signals.check_together(trainer)
        else:
            self.signals.check()

    # Ranks may hold unequal numbers of validation and test batches (every example once):
    # they agree on a stop after each batch every rank holds (vaesweep.run.signals).
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._shared_batches = self._batches_of_every_rank(
            trainer, 0 if trainer.sanity_checking else trainer.num_val_batches
        )

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signals.take_over(trainer)
        self._shared_batches = self._batches_of_every_rank(trainer, trainer.num_test_batches)

    def _batches_of_every_rank(self, trainer: L.Trainer, batches: Any) -> int:
        """How many batches of an evaluation every rank holds (several ranks: the fewest
        any holds, an all-reduce every rank makes here; one process: not used)."""
        if not self._in_step:
            return 0
        mine = sum(batches) if isinstance(batches, list) else batches
        return reduced(int(mine) if math.isfinite(mine) else 2**62, trainer, "min")

    def _evaluation_batch_end(self, trainer: L.Trainer, batch_idx: int) -> None:
        if not self._in_step:
            self.signals.check()
        elif batch_idx < self._shared_batches:  # (one dataloader: vaesweep's val and test)
            self.signals.check_together(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl_idx=0):
        self._evaluation_batch_end(trainer, batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl_idx=0):
        self._evaluation_batch_end(trainer, batch_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            # Before Lightning writes the epoch's validation metrics to the loggers (the CSV
            # logger's metrics.csv, in the job's directory) and ModelCheckpoint its files:
            # is the directory still this process's? (every rank ends the epoch's validation)
            self.signals.check_claim_together(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_metrics = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
            }
            elbo = self.val_metrics.get("val/elbo")
            if elbo is not None and (self.best_val_elbo is None or elbo > self.best_val_elbo):
                self.best_val_elbo = elbo

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signals.check_claim_together(trainer)  # before the record and the checkpoint
        if self.on_epoch_end is not None:
            self.on_epoch_end()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        if isinstance(exception, ClaimLost):
            # Lightning finalizes the loggers next: the CSV logger would append its last
            # rows to a metrics.csv that is the new holder's now.
            trainer.loggers = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "val_metrics": dict(self.val_metrics),
            "best_val_elbo": self.best_val_elbo,
            "identity": self.identity,
            "dataset": self.dataset,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.val_metrics = dict(state_dict.get("val_metrics", {}))
        self.best_val_elbo = state_dict.get("best_val_elbo")

    @property
    def state_key(self) -> str:
        return RUN_STATE_KEY  # the class name, Lightning's default, fixed for old checkpoints

    @classmethod
    def stored_state(cls, checkpoint: str | Path | None) -> dict[str, Any]:
        """This callback's state kept in a checkpoint file ({} without one)."""
        return stored_run_state(checkpoint)

    @classmethod
    def stored_val_metrics(cls, checkpoint: str | Path | None) -> dict[str, float]:
        """The ``val/*`` metrics kept in a checkpoint file ({} without one)."""
        return dict(cls.stored_state(checkpoint).get("val_metrics", {}))


#: The file name (without .ckpt) of a job's last checkpoint: its weights at the end of its
#: last training epoch, what a resume starts from and eval.checkpoint=last tests.
LAST_CHECKPOINT = "last"


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for a job's ``checkpoints/`` directory, whose state
    survives the job's directory being moved (a sweep directory renamed, or seen under
    another path after a requeue) between two attempts.

    Lightning keeps its best score and best paths only when the directory it saved them
    from is the one it writes to now; otherwise the first validation after the resume
    became the best, however bad, and ``eval.checkpoint=best`` tested it. The checkpoints
    move with the job's directory, so the paths saved under the old directory are read
    as the same files under the new one."""

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's own key, under which every checkpoint holds this state (those
        written before this class, too)."""
        key = super().state_key
        return "ModelCheckpoint" + key[len(type(self).__qualname__) :]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if saved is None or self.dirpath is None or saved == self.dirpath:
            return super().load_state_dict(state_dict)

        def moved(path: Any) -> Any:
            if isinstance(path, str) and path and os.path.dirname(path) == saved:
                return os.path.join(self.dirpath, os.path.basename(path))
            return path

        rebased = dict(state_dict, dirpath=self.dirpath)
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in rebased:
                rebased[key] = moved(rebased[key])
        if isinstance(rebased.get("best_k_models"), dict):
            rebased["best_k_models"] = {moved(k): v for k, v in rebased["best_k_models"].items()}
        if self.monitor is not None:  # once a job (last.ckpt's callback has no score)
            log.info(
                "checkpoints moved from %s to %s: their best score is kept", saved, self.dirpath
            )
        return super().load_state_dict(rebased)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temp file beside the target, fsynced, then renamed over
    it: a job killed mid-write leaves the previous checkpoint intact, never a torn one.

    A checkpoint of the same training step as the one just written (``last.ckpt`` right
    after ``best.ckpt`` in an epoch that improved ``val/elbo``) becomes a hard link to that
    file, also renamed into place, instead of being serialised and fsynced a second time
    (~13 ms for the default MLP with its Adam state).
    """

    def __init__(self) -> None:
        super().__init__()
        self._written: tuple[tuple[Any, Any], Path] | None = None  # (epoch, step), file

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        step = (checkpoint.get("epoch"), checkpoint.get("global_step"))
        written = self._written
        if written is not None and written[0] == step and _link_atomically(written[1], path):
            return
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)
        self._written = (step, path)


def _link_atomically(source: Path, path: Path) -> bool:
    """Makes ``path`` a hard link to ``source`` (a temp link renamed over it); False when
    that is not possible (same file, other directory, no hard links on this file system)."""
    if source == path or source.parent != path.parent or not source.exists():
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


class ThrottledProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, redrawn at most every ``min_interval`` seconds (and at the last
    batch of each loop) instead of every ``refresh_rate`` batches.

    A redraw formats the bar and its metrics and writes them to the terminal, and W&B's
    console capture forwards each write to its service: ~2-3 ms on a small CPU, which a
    per-batch (or every-10-batches) redraw adds to a 5 ms training step. Deciding by the
    clock costs one ``time.monotonic()`` per batch and keeps the bar as live as a person
    can read it, whatever the step time. The batch-end hooks are Lightning's public
    callback hooks, redrawing as TQDMProgressBar's own do when ``should_draw`` says so.
    """

    def __init__(self, min_interval: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_interval = float(min_interval)
        self._last_draw = -float("inf")

    def should_draw(self, current: int, total: int | float | None) -> bool:
        """Whether to redraw a bar at batch ``current`` (1-based) of ``total``: at the last
        batch, and when ``min_interval`` seconds have passed since the last redraw."""
        if not self.is_enabled:
            return False
        now = time.monotonic()
        if current == total or now - self._last_draw >= self.min_interval:
            self._last_draw = now
            return True
        return False

    def _draw(self, bar: Any, batch_idx: int) -> bool:
        """Moves ``bar`` to batch ``batch_idx`` + 1 if it is time to; whether it did."""
        n = batch_idx + 1
        if not self.should_draw(n, bar.total):
            return False
        if not bar.disable:
            bar.n = n
            bar.refresh()
        return True

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        bar = self.train_progress_bar
        if self._draw(bar, batch_idx):
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        self._draw(self.val_progress_bar, batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._draw(self.test_progress_bar, batch_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._draw(self.predict_progress_bar, batch_idx)


class NullProfiler(PassThroughProfiler):
    """Lightning's default no-op profiler without its cost: Lightning wraps each hook call,
    ~45 per training step, in ``profiler.profile(name)``, a generator-based context manager
    (~60 µs per step in all); this one returns a single shared no-op context."""

    _noop = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._noop


class EpochLines(L.Callback):
    """One progress line per training epoch, for output that is not a terminal:
    ``epoch 3/20  train/loss=… val/elbo=…  (1.2 s)``."""

    SHOWN = ("train/loss_epoch", "val/elbo", "val/nll", "val/rec_nll", "val/kl")

    def __init__(self) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = [
            f"{key.replace('_epoch', '')}={value:.4g}"
            for key in self.SHOWN
            if key in metrics and (value := finite_value(metrics[key])) is not None
        ]
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        elapsed = time.perf_counter() - self._started
        log.info(
            "epoch %d/%s  %s  (%.1f s)", trainer.current_epoch + 1, total, " ".join(shown), elapsed
        )


class ScheduleLength(L.Callback):
    """Warns, once a fresh fit knows how many optimisation steps it takes, when the β
    schedule has not settled by its end (a warm-up of 10 000 steps in a 600-step run): the
    run then ends at a β it never meant to hold. Schedules count optimisation steps, not
    epochs."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        schedule = getattr(pl_module, "schedule", None)
        settles = schedule.settles() if schedule is not None else None
        if settles is None or trainer.global_step > 0 or not trainer.is_global_zero:
            return  # a resumed fit warned when it started
        options, step = settles
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) or total >= step:
            return
        last = int(total) - 1
        if schedule.describe_at(last) == schedule.describe_at(step):
            return  # (a cyclical schedule's last cycle may reach β before its end)
        # The config's name (a user's class need not declare one), else the class's.
        name = (components.config_of(schedule) or {}).get("name") or getattr(
            schedule, "name", type(schedule).__name__
        )
        log.warning(
            "beta_schedule=%s settles at step %d (beta_schedule.%s), but this run takes %d "
            "optimisation steps: it ends at %s, not at the %s it settles at. Shorten the "
            "schedule or train longer (its steps are optimisation steps, not epochs).",
            name,
            step,
            options,
            int(total),
            schedule.describe_at(last),
            schedule.describe_at(step),
        )


class Timestamps(L.Callback):
    """Records when training events happen, for the benchmarks (cold start, per-job overhead):
    ``fit_start``, ``first_step`` (the first optimisation step has been taken), and for every
    epoch ``epoch_start`` and ``epoch_end`` (its last optimisation step). Only added when the
    benchmarks ask for it (``VAESWEEP_TIMESTAMPS``), so normal runs pay nothing."""

    def __init__(self, path: str | Path, job: str) -> None:
        self.path = Path(path)
        self.job = job
        self._stepped = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        append_timestamp(self.path, "fit_start", job=self.job)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        append_timestamp(self.path, "epoch_start", job=self.job, epoch=trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._stepped:
            self._stepped = True
            append_timestamp(self.path, "first_step", job=self.job)
        if batch_idx == trainer.num_training_batches - 1:
            append_timestamp(self.path, "epoch_end", job=self.job, epoch=trainer.current_epoch)
