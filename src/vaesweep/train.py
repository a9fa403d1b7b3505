"""Hydra entry point: validate the config, train, evaluate on the test split, record the run.

Lifecycle of one job: results.json says "running" → the config is validated (a bad value
fails here, before any data is loaded or any step is taken) → fit → test on the last or
best checkpoint → image grids → results.json says "completed" with every metric. A
non-finite loss stops training and records "diverged" with the step; any other exception
records "failed" with its type and message; both then exit non-zero. W&B is closed in a
``finally`` so the jobs of one multirun process are separate W&B runs.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vaesweep.record import RunRecord

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
log = logging.getLogger("vaesweep")

PREPROCESS = ("auto", "dequantize", "binarize", "scale")
CHECKPOINTS = ("last", "best")
LOGGERS = ("wandb", "csv", "none")
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A config value that cannot work, reported before any training starts."""


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: allowed {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _prefixed(group: str, error: Exception) -> str:
    """A component's "key=value ..." message with the key made a full config path."""
    message = str(error)
    return f"{group}.{message}" if re.match(r"^\w+=", message) else message


def resolve_preprocess(cfg: DictConfig) -> str:
    """The data preprocessing in force: ``auto`` means binarize for Bernoulli, else dequantize."""
    if cfg.data.preprocess != "auto":
        return cfg.data.preprocess
    return "binarize" if cfg.likelihood.name == "bernoulli" else "dequantize"


def world_size(cfg: DictConfig) -> int:
    """Number of data-parallel processes the trainer config asks for (1 unless DDP)."""
    devices, strategy = cfg.trainer.devices, str(cfg.trainer.strategy)
    if "ddp" in strategy and _is_int(devices):
        return devices * int(cfg.trainer.num_nodes)
    return 1


def validate_config(cfg: DictConfig) -> None:
    """Check every value that would otherwise fail (or silently mislead) mid-run.

    Each error names the key, the value and what is allowed. Component options are checked
    by building the likelihood and β schedule on a dummy shape (cheap, no data needed).
    """
    from vaesweep.likelihoods import build_likelihood
    from vaesweep.module import LIKELIHOOD_META_KEYS, OPTIMIZERS
    from vaesweep.networks import ACTIVATIONS, NETWORKS
    from vaesweep.schedules import build_schedule

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{', '.join(missing)}: required but not set (???); pass e.g. {missing[0]}=VALUE"
        )
    _require(_is_number(cfg.beta) and cfg.beta >= 0, "beta", cfg.beta, "a finite number ≥ 0")
    _require(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "an integer ≥ 0")
    _require(_is_int(cfg.n_samples) and cfg.n_samples >= 1, "n_samples", cfg.n_samples, "≥ 1")
    m = cfg.model
    _require(m.name in NETWORKS, "model.name", m.name, f"one of {list(NETWORKS)}")
    _require(
        _is_int(m.latent_dim) and m.latent_dim > 0, "model.latent_dim", m.latent_dim, "an int > 0"
    )
    _require(
        m.activation in ACTIVATIONS, "model.activation", m.activation, f"one of {list(ACTIVATIONS)}"
    )
    d = cfg.data
    _require(d.preprocess in PREPROCESS, "data.preprocess", d.preprocess, f"one of {PREPROCESS}")
    for key in ("batch_size", "eval_batch_size"):
        _require(_is_int(d[key]) and d[key] > 0, f"data.{key}", d[key], "an integer > 0")
    n_proc = world_size(cfg)
    _require(
        d.batch_size % n_proc == 0,
        "data.batch_size",
        d.batch_size,
        f"a multiple of the {n_proc} data-parallel processes (it is the global batch)",
    )

    lik = OmegaConf.to_container(cfg.likelihood, resolve=True)
    preprocess = resolve_preprocess(cfg)
    if lik["name"] == "bernoulli" and preprocess != "binarize" and not lik.get("allow_nonbinary"):
        raise ConfigError(
            f"data.preprocess={preprocess!r} with likelihood=bernoulli is invalid: a Bernoulli "
            "is a likelihood only on binary data. Allowed: data.preprocess=binarize (or auto), "
            "or opt in with likelihood.allow_nonbinary=true (no bits/dim is reported then)."
        )
    try:
        options = {k: v for k, v in lik.items() if k not in LIKELIHOOD_META_KEYS}
        build_likelihood(lik["name"], (1, 4, 4), **options)
    except ValueError as e:
        raise ConfigError(_prefixed("likelihood", e)) from None
    try:
        sched = OmegaConf.to_container(cfg.beta_schedule, resolve=True)
        build_schedule(sched.pop("name"), **sched)
    except ValueError as e:
        raise ConfigError(_prefixed("beta_schedule", e)) from None

    o = cfg.optimizer
    _require(o.name in OPTIMIZERS, "optimizer.name", o.name, f"one of {list(OPTIMIZERS)}")
    _require(_is_number(o.lr) and o.lr > 0, "optimizer.lr", o.lr, "a finite number > 0")
    e = cfg.eval
    _require(e.checkpoint in CHECKPOINTS, "eval.checkpoint", e.checkpoint, f"one of {CHECKPOINTS}")
    _require(_is_int(e.iwae_k) and e.iwae_k >= 1, "eval.iwae_k", e.iwae_k, "an integer ≥ 1")
    _require(
        e.iwae_chunk is None or (_is_int(e.iwae_chunk) and e.iwae_chunk >= 1),
        "eval.iwae_chunk",
        e.iwae_chunk,
        "null or an integer ≥ 1",
    )
    _require(cfg.logger.name in LOGGERS, "logger.name", cfg.logger.name, f"one of {LOGGERS}")
    if cfg.logger.name == "wandb":
        mode = cfg.logger.mode
        _require(mode in WANDB_MODES, "logger.mode", mode, f"one of {WANDB_MODES}")


def _job_identity() -> tuple[Path, str, str | None, list[str]]:
    """Run dir, job name (from the overrides), sweep dir (multirun only), overrides."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    name = hc.job.override_dirname or "default"
    multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
    sweep_dir = str(Path(hc.sweep.dir).resolve()) if multirun else None
    return run_dir, name, sweep_dir, overrides


def _make_loggers(cfg: DictConfig, run_dir: Path, name: str, sweep_dir: str | None) -> list:
    from lightning.pytorch.loggers import CSVLogger

    if cfg.logger.name == "none":
        return []
    loggers: list = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    if cfg.logger.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        scale = cfg.likelihood.get("scale")
        tags = [cfg.likelihood.name, f"schedule={cfg.beta_schedule.name}", *cfg.logger.tags]
        if scale is not None:
            tags.insert(1, f"scale={scale}")
        loggers.append(
            WandbLogger(
                name=name,
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                save_dir=str(run_dir),
                mode=cfg.logger.mode,
                group=sweep_group(sweep_dir),
                tags=tags,
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


def sweep_group(sweep_dir: str | None) -> str | None:
    """W&B group of a sweep: its directory's last two parts (date_time-id); None for runs."""
    if not sweep_dir:
        return None
    path = Path(sweep_dir)
    return f"{path.parent.name}_{path.name}"


def _finish_wandb() -> None:
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def run(cfg: DictConfig) -> dict[str, float]:
    """Train, test and record one job; returns the metrics written to results.json."""
    run_dir, name, sweep_dir, overrides = _job_identity()
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an unresolvable value: recorded as written, reported by validation
        config = OmegaConf.to_container(cfg, resolve=False)
    record = RunRecord(
        run_dir,
        config=config,
        overrides=overrides,
        seed=cfg.seed,
        job_name=name,
        sweep_dir=sweep_dir,
    )
    from vaesweep.module import DivergenceError

    try:
        validate_config(cfg)
        metrics = _fit_and_test(cfg, run_dir, name, sweep_dir, record)
    except DivergenceError as e:
        record.finish("diverged", error=e, step=e.step)
        log.error("run diverged: %s (results: %s)", e, record.path)
        raise
    except BaseException as e:
        record.finish("failed", error=e)
        log.error("run failed: %s: %s (results: %s)", type(e).__name__, e, record.path)
        raise
    finally:
        _finish_wandb()
    record.finish("completed", metrics=metrics)
    log.info("completed: %s", record.path)
    return metrics


def _fit_and_test(
    cfg: DictConfig, run_dir: Path, name: str, sweep_dir: str | None, record: RunRecord
) -> dict[str, float]:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vaesweep.callbacks import ImageGrids
    from vaesweep.data import VAEDataModule
    from vaesweep.module import VAE

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    preprocess = resolve_preprocess(cfg)
    data = VAEDataModule(
        name=cfg.data.name,
        root=cfg.data.root,
        download=cfg.data.download,
        batch_size=cfg.data.batch_size // world_size(cfg),
        eval_batch_size=cfg.data.eval_batch_size,
        preprocess=preprocess,
        seed=cfg.seed,
        val_size=cfg.data.val_size,
        test_size=cfg.data.test_size,
    )
    record.set_dataset(data.info)
    plain = OmegaConf.to_container(cfg, resolve=True)
    model = VAE(
        shape=data.shape,
        model=plain["model"],
        likelihood=plain["likelihood"],
        schedule=plain["beta_schedule"],
        optimizer=plain["optimizer"],
        n_samples=cfg.n_samples,
        iwae_k=cfg.eval.iwae_k,
        iwae_chunk=cfg.eval.iwae_chunk,
        active_units_threshold=cfg.eval.active_units_threshold,
        report_bpd=preprocess == "dequantize",
    )
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val/elbo",
        mode="max",
        save_top_k=1,
        save_last=True,
    )
    loggers = _make_loggers(cfg, run_dir, name, sweep_dir)
    trainer = L.Trainer(
        **plain["trainer"],
        logger=loggers or False,
        callbacks=[checkpoint, ImageGrids(run_dir, cfg.eval.n_images)],
        default_root_dir=str(run_dir),
    )
    trainer.fit(model, datamodule=data)
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    ckpt = checkpoint.best_model_path if cfg.eval.checkpoint == "best" else "last"
    tested = trainer.test(model, datamodule=data, ckpt_path=ckpt, verbose=False)[0]
    metrics = {**fit_metrics, **{k: float(v) for k, v in tested.items()}}
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.summary.update(metrics)
    return metrics


def task(cfg: DictConfig) -> None:
    """The Hydra task: one job of a run or a sweep."""
    run(cfg)


main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(task)


def cli_main() -> None:
    """Console-script entry point (``vaesweep-train``), same arguments as ``run.py``."""
    main()
