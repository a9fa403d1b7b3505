"""Checks of a run's config that need more than its own value: the training budget, what
evaluation costs, the memory the model needs (vaesweep.memory), and whether W&B can be
reached (vaesweep.loggers).

:func:`check_run` is called by ``vaesweep.train.validate_config``, before any data is
loaded: each refusal is a ``ConfigError`` naming the key, the value and what is allowed.
:func:`check_training_split` runs once the data is loaded (before the first step), and
:func:`require_training` right after the fit: a run whose fit took no optimisation step
fails instead of recording the untrained model's test metrics as a result.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaesweep.config import ConfigError, _is_int, _is_number, _require
from vaesweep.loggers import check_wandb, reachable, wandb_endpoint  # noqa: F401 (moved there)
from vaesweep.memory import (  # noqa: F401 (moved there)
    DATA_SHAPES,
    available_memory,
    check_memory,
    count_parameters,
)

log = logging.getLogger("vaesweep")

#: eval.n_images: images per row of reconstructions.png; samples.png holds n × n samples.
MAX_IMAGES = 64
#: eval.iwae_k: the test split is scored with k decoder passes per example.
MAX_IWAE_K = 100_000
#: Measured IWAE throughput (test examples × samples per second), default MLP, 2 CPU cores.
IWAE_RATE = 180_000
#: likelihood.min_log_scale must stay below log 1 = 0: data lie in [0, 1], so no residual
#: scale (RMS or mean absolute residual) exceeds 1, and a floor at or above 0 keeps σ ≥ 1.
MAX_LOG_SCALE_FLOOR = 0.0


def _error(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is invalid: allowed {allowed}")


def check_run(cfg: DictConfig) -> None:
    """Every check of this module that needs no data (see the module doc)."""
    check_training_budget(cfg.trainer)
    check_evaluation(cfg)
    check_optimizer(cfg.optimizer)
    check_likelihood(cfg.likelihood)
    check_memory(cfg)
    check_wandb(cfg)


# --- training budget -----------------------------------------------------------------------------


def _limit_ok(value: Any) -> bool:
    """Lightning's limit_*_batches: None, a number of batches or a fraction of them."""
    if value is None or (_is_int(value) and value >= 0):
        return True
    return _is_number(value) and 0.0 <= value <= 1.0


def max_time_seconds(value: Any) -> float | None:
    """``trainer.max_time`` in seconds ("DD:HH:MM:SS" or {days, hours, minutes, seconds});
    None when unset or not in one of those forms (Lightning reports those)."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
            return None
        days, hours, minutes, seconds = (int(p) for p in parts)
        return ((days * 24 + hours) * 60 + minutes) * 60.0 + seconds
    if isinstance(value, dict | DictConfig):
        units = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
        return float(sum(units.get(k, 0) * float(v or 0) for k, v in dict(value).items()))
    return None


def check_training_budget(t: DictConfig) -> None:
    """Types of the trainer's budget keys, and budgets that train nothing or never stop: a
    run that takes no optimisation step would test (and record) an untrained model."""
    _require(
        t.max_epochs is None or (_is_int(t.max_epochs) and t.max_epochs >= -1),
        "trainer.max_epochs",
        t.max_epochs,
        "an integer ≥ 1 (or -1: no limit, with trainer.max_steps or trainer.max_time)",
    )
    _require(
        _is_int(t.max_steps) and t.max_steps >= -1,
        "trainer.max_steps",
        t.max_steps,
        "an integer ≥ 1, or -1 (no limit)",
    )
    for key in ("min_epochs", "min_steps"):
        _require(
            t[key] is None or (_is_int(t[key]) and t[key] >= 0),
            f"trainer.{key}",
            t[key],
            "null or an integer ≥ 0",
        )
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        _require(
            _limit_ok(t[key]),
            f"trainer.{key}",
            t[key],
            "null (all), an integer ≥ 1 (batches) or a fraction in (0, 1]",
        )
    fast = t.fast_dev_run
    _require(
        isinstance(fast, bool) or (_is_int(fast) and fast >= 0),
        "trainer.fast_dev_run",
        fast,
        "true, false or a number of batches ≥ 1",
    )
    untrained = "a run must take at least one optimisation step (its test metrics would be "
    untrained += "those of the randomly initialised model)"
    if fast:  # Lightning's debug run: one batch (or N) of each split, whatever the limits
        return
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        _require(t[key] != 0, f"trainer.{key}", t[key], f"a value other than 0: {untrained}")
    seconds = max_time_seconds(t.max_time)
    _require(
        seconds is None or seconds > 0,
        "trainer.max_time",
        t.max_time,
        f"null or a positive duration (DD:HH:MM:SS): {untrained}",
    )
    _require(
        t.limit_test_batches != 0,
        "trainer.limit_test_batches",
        t.limit_test_batches,
        "a value other than 0: a run is scored on its test split",
    )
    if t.max_epochs == -1 and t.max_steps == -1 and seconds is None:
        raise _error(
            "trainer.max_epochs",
            -1,
            "-1 (no epoch limit) only with trainer.max_steps or trainer.max_time: this run "
            "would train forever",
        )


def require_training(trainer: Any) -> None:
    """Raises NothingTrained when a fit ended without a single optimisation step (stopped
    by trainer.max_time before the first batch, say); warns about fast_dev_run metrics.

    A spawned data-parallel fit (``ddp_spawn``) trains in child processes and this process's
    ``global_step`` stays 0: there the last checkpoint the children wrote is the evidence
    (with checkpoints off, this process cannot tell, and nothing is raised)."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    spawned = isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)
    if trainer.global_step == 0 and spawned:
        ckpt = trainer.checkpoint_callback
        if ckpt is None or getattr(ckpt, "dirpath", None) is None:
            return
        if (Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}").exists():
            return
    if trainer.global_step == 0:
        raise NothingTrained(
            "training ended after 0 optimisation steps (trainer.max_epochs="
            f"{trainer.max_epochs}, max_steps={trainer.max_steps}, "
            f"limit_train_batches={trainer.limit_train_batches}; trainer.max_time can stop "
            "a fit before its first batch): the model is untrained, so no metrics are "
            "recorded. Give the run a training budget."
        )
    if trainer.fast_dev_run:
        log.warning(
            "trainer.fast_dev_run: one batch of each split; the metrics check that the run "
            "works, they are not a result (vaesweep collect lists the run as fast_dev_run, "
            "outside aggregates and figures)"
        )


class NothingTrained(RuntimeError):
    """The fit ended without a single optimisation step."""


def check_training_split(cfg: DictConfig, data: Any) -> None:
    """Refuses a global batch larger than the training split (``data``: the loaded
    ``VAEDataModule``): every step would see the whole split, not a batch of it."""
    n_train = int(data.info["sizes"]["train"])
    _require(
        cfg.data.batch_size <= n_train,
        "data.batch_size",
        cfg.data.batch_size,
        f"at most the {n_train} examples of the training split of data={cfg.data.name}",
    )


# --- evaluation ----------------------------------------------------------------------------------


def check_evaluation(cfg: DictConfig) -> None:
    """Evaluation keys whose cost or meaning is bounded: the image grids and the IWAE."""
    e = cfg.eval
    _require(
        _is_int(e.n_images) and 1 <= e.n_images <= MAX_IMAGES,
        "eval.n_images",
        e.n_images,
        f"an integer in [1, {MAX_IMAGES}] (samples.png holds n_images² samples)",
    )
    k = e.iwae_k
    if _is_int(k) and k > MAX_IWAE_K:
        hours = 1000 * k / IWAE_RATE / 3600
        raise _error(
            "eval.iwae_k",
            k,
            f"an integer in [1, {MAX_IWAE_K}]: the test split is scored with k decoder passes "
            f"per example; k={k} takes ~{hours:,.1f} h per 1000 test examples at the "
            f"~{IWAE_RATE // 1000}k examples×samples/s measured for the default MLP on 2 CPU "
            "cores",
        )
    threshold = e.active_units_threshold
    _require(
        _is_number(threshold) and threshold >= 0,
        "eval.active_units_threshold",
        threshold,
        "a finite number ≥ 0 (a variance of the posterior means)",
    )


# --- optimizer and likelihood -------------------------------------------------------------------


def check_optimizer(o: DictConfig) -> None:
    _require(
        _is_number(o.get("weight_decay", 0.0)) and o.get("weight_decay", 0.0) >= 0,
        "optimizer.weight_decay",
        o.get("weight_decay"),
        "a finite number ≥ 0",
    )
    betas = o.get("betas")
    if betas is not None:
        betas = list(betas) if OmegaConf.is_list(betas) or isinstance(betas, list) else betas
        _require(
            isinstance(betas, list)
            and len(betas) == 2
            and all(_is_number(b) and 0 <= b < 1 for b in betas),
            "optimizer.betas",
            betas,
            "two numbers in [0, 1), e.g. [0.9, 0.999]",
        )


def check_likelihood(lik: DictConfig) -> None:
    floor = lik.get("min_log_scale")
    if _is_number(floor):
        _require(
            floor < MAX_LOG_SCALE_FLOOR,
            "likelihood.min_log_scale",
            floor,
            f"null or a number < {MAX_LOG_SCALE_FLOOR:g}: the data lie in [0, 1], so no "
            "residual scale exceeds 1 = e^0, and a floor at or above it keeps the scale "
            "above every residual scale (the default is -6)",
        )


def resume_refusal(resume: Any) -> str | None:
    """Why ``sweep.resume`` cannot be continued (it must name an existing sweep directory
    holding sweep.json), else None."""
    from vaesweep.sweep import SWEEP_FILE

    if resume is None or resume == "":
        return None
    path = Path(str(resume)).expanduser()
    if not path.is_dir():
        return (
            f"sweep.resume={resume} is invalid: no such directory. Allowed: an existing sweep "
            "directory (with sweep.json); to start a new sweep there, use "
            f"hydra.sweep.dir={resume}"
        )
    if not (path / SWEEP_FILE).is_file():
        return (
            f"sweep.resume={resume} is invalid: {path} holds no {SWEEP_FILE}, so it is not a "
            f"sweep directory. Allowed: a directory a multirun wrote; to start a new sweep "
            f"there, use hydra.sweep.dir={resume}"
        )
    return None


def refuse_bad_resume(resume: Any) -> None:
    """Exits (status 2) before any job runs when ``sweep.resume`` names no sweep."""
    refusal = resume_refusal(resume)
    if refusal:
        print(f"[vaesweep] sweep refused, no job was run: {refusal}", file=sys.stderr, flush=True)
        sys.exit(2)
