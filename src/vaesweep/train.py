"""Hydra entry point: validate the config, train, evaluate on the test split, record the run.

Lifecycle of one job: results.json says "running" → the config is validated (a bad value
fails here, before any data is loaded or any step is taken) → fit → test on the last or
best checkpoint → image grids → results.json says "completed" with every metric. A
non-finite loss stops training and records "diverged" with the step; any other exception
records "failed" with its type and message; both then exit non-zero. A stop signal records
"interrupted" with the step and exits with 128 + its number (vaesweep.interrupt). W&B is
closed in a ``finally`` so the jobs of one multirun process are separate W&B runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vaesweep import claims, ranks
from vaesweep.atomic import remove_stale_temps
from vaesweep.interrupt import (
    STOP_FILE_ENV,
    JobInterrupted,
    StopSignals,
    SweepStopped,
    pause_point,
    sweep_stopped,
)
from vaesweep.record import CONTINUED, RESULTS_FILE, RunRecord
from vaesweep.sweep import left_alone, read_sweep, register_resolvers, swept_values

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
log = logging.getLogger("vaesweep")

PREPROCESS = ("auto", "dequantize", "binarize", "scale")
CHECKPOINTS = ("last", "best")
LOGGERS = ("wandb", "csv", "none")
# A file to append training-event timestamps to (benchmarks/: cold start, per-job overhead).
TIMESTAMPS_ENV = "VAESWEEP_TIMESTAMPS"
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


# trainer.precision values under which Lightning autocasts (its MixedPrecision plugin).
MIXED_PRECISIONS = ("16-mixed", "bf16-mixed", "16", "bf16")


def validate_config(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Check every value that would otherwise fail (or silently mislead) mid-run.

    Each error names the key, the value and what is allowed. Component options are checked
    by building the likelihood and β schedule on a dummy shape (cheap, no data needed).
    ``overrides``: the command line's, each of which must change what the run computes
    (:mod:`vaesweep.effective`; a multirun checks its overrides once, for all its jobs).
    """
    from vaesweep.effective import check_overrides
    from vaesweep.likelihoods import build_likelihood
    from vaesweep.module import LIKELIHOOD_META_KEYS, OPTIMIZERS
    from vaesweep.networks import ACTIVATIONS, NETWORKS
    from vaesweep.schedules import build_schedule

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{', '.join(missing)}: required but not set (???); pass e.g. {missing[0]}=VALUE"
        )
    if overrides:
        refusal = check_overrides(overrides, [cfg])
        if refusal:
            raise ConfigError(refusal)
    _require(_is_number(cfg.beta) and cfg.beta >= 0, "beta", cfg.beta, "a finite number ≥ 0")
    _require(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "an integer ≥ 0")
    _require(_is_int(cfg.n_samples) and cfg.n_samples >= 1, "n_samples", cfg.n_samples, "≥ 1")
    _require(
        cfg.threads is None or (_is_int(cfg.threads) and cfg.threads >= 1),
        "threads",
        cfg.threads,
        "null (automatic) or an integer ≥ 1",
    )
    _require(isinstance(cfg.compile, bool), "compile", cfg.compile, "true or false")
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
    # Strategy, processes and the global batch (again at setup, from the Trainer itself).
    problem = ranks.config_problem(cfg.trainer, d.batch_size)
    if problem:
        raise ConfigError(problem)

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

    t = cfg.trainer
    _require(
        _is_int(t.accumulate_grad_batches) and t.accumulate_grad_batches >= 1,
        "trainer.accumulate_grad_batches",
        t.accumulate_grad_batches,
        "an integer ≥ 1",
    )
    _require(
        t.gradient_clip_val is None
        or (_is_number(t.gradient_clip_val) and t.gradient_clip_val >= 0),
        "trainer.gradient_clip_val",
        t.gradient_clip_val,
        "null (no clipping) or a finite number ≥ 0",
    )
    _require(
        t.gradient_clip_algorithm in (None, "norm", "value"),
        "trainer.gradient_clip_algorithm",
        t.gradient_clip_algorithm,
        "null (= norm), norm or value",
    )
    o = cfg.optimizer
    _require(o.name in OPTIMIZERS, "optimizer.name", o.name, f"one of {list(OPTIMIZERS)}")
    _require(_is_number(o.lr) and o.lr > 0, "optimizer.lr", o.lr, "a finite number > 0")
    fused = o.get("fused", False)
    _require(isinstance(fused, bool), "optimizer.fused", fused, "true or false")
    if fused and t.gradient_clip_val and str(t.precision) in MIXED_PRECISIONS:
        # Lightning would raise at the first optimisation step, after data, model and loggers.
        raise ConfigError(
            f"trainer.gradient_clip_val={t.gradient_clip_val!r} with "
            f"trainer.precision={t.precision!r} is invalid with optimizer.fused=true: a fused "
            "optimiser unscales the mixed-precision gradients inside its step, so they cannot "
            "be clipped before it. Allowed: optimizer.fused=false, no clipping, or a "
            "precision without autocast (e.g. 32-true)"
        )
    e = cfg.eval
    _require(e.checkpoint in CHECKPOINTS, "eval.checkpoint", e.checkpoint, f"one of {CHECKPOINTS}")
    _require(
        e.checkpoint == "last" or cfg.trainer.enable_checkpointing,
        "eval.checkpoint",
        e.checkpoint,
        "'last' when trainer.enable_checkpointing=false (no best checkpoint is kept)",
    )
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
    from vaesweep.guards import check_run

    check_run(cfg)  # budget, evaluation, optimizer, memory estimate, W&B reachable


@dataclass
class Job:
    """Where and what one job of a run or sweep is."""

    run_dir: Path
    name: str  # from the overrides; the W&B run name
    overrides: list[str]
    sweep_dir: Path | None  # None outside a multirun
    swept: dict[str, str]  # this job's value of each swept key (multirun)
    n_parallel: int  # jobs sharing this machine at once (joblib launcher)

    @property
    def multirun(self) -> bool:
        return self.sweep_dir is not None


def current_job() -> Job:
    hc = HydraConfig.get()
    multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
    sweep_dir = Path(hc.sweep.dir).resolve() if multirun else None
    overrides = list(hc.overrides.task)
    swept: dict[str, str] = {}
    if sweep_dir is not None:
        record = read_sweep(sweep_dir)
        swept = swept_values(overrides, list(record["grid"]) if record else [])
    launcher = hc.launcher.get("_target_", "") if "launcher" in hc else ""
    n_parallel = int(hc.launcher.get("n_jobs") or 1) if "joblib" in launcher else 1
    return Job(
        run_dir=Path(hc.runtime.output_dir),
        name=hc.job.override_dirname or "default",
        overrides=overrides,
        sweep_dir=sweep_dir,
        swept=swept,
        n_parallel=max(1, n_parallel),
    )


def process_rank() -> int:
    """Global rank of this process when a launcher (torchrun, srun, Lightning's ddp)
    started several; 0 otherwise. Only rank 0 writes results, images and W&B."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def _reexecution_breaks(job: Job) -> bool:
    """Whether re-running the command (Lightning's plain ``ddp``) would break this job:
    inside a multirun, a parallel launcher and pytest."""
    return job.multirun or "pytest" in sys.modules


def resolve_strategy(strategy: str, job: Job) -> str:
    """``ddp`` re-executes ``sys.argv`` in its child processes, which breaks inside a
    multirun, a parallel launcher and pytest: ``ddp_spawn`` there. Under srun (one task per
    device) or torchrun every DDP variant becomes plain ``ddp`` (vaesweep.ranks)."""
    resolved = ranks.resolve_strategy(strategy, _reexecution_breaks(job))
    if resolved != strategy:
        log.info("trainer.strategy=%s → %s", strategy, resolved)
    return resolved


def _make_loggers(cfg: DictConfig, job: Job, wandb_id: str | None = None) -> list:
    """The job's Lightning loggers. ``wandb_id``: the W&B run's id, kept in results.json so
    that every attempt of an interrupted job writes to the same W&B run."""
    from lightning.pytorch.loggers import CSVLogger

    if cfg.logger.name == "none":
        return []
    loggers: list = [CSVLogger(save_dir=str(job.run_dir), name="", version="")]
    if cfg.logger.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        scale = cfg.likelihood.get("scale")
        label = cfg.get("label") or {}
        tags = [
            cfg.likelihood.name,
            f"schedule={cfg.beta_schedule.name}",
            *cfg.logger.tags,
            *(label.get("tags") or []),
        ]
        if scale is not None:
            tags.insert(1, f"scale={scale}")
        tags += [f"{k}={v}" for k, v in job.swept.items()]
        # Seeds of one configuration share a job_type, so W&B can group them.
        config_axes = [f"{k}={v}" for k, v in job.swept.items() if k != "seed"]
        loggers.append(
            WandbLogger(
                name=job.name,
                id=wandb_id,
                resume="allow",
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                save_dir=str(job.run_dir),
                mode=cfg.logger.mode,
                group=sweep_group(job.sweep_dir),
                job_type=(",".join(config_axes) or "train")[:64],
                tags=list(dict.fromkeys(str(t)[:64] for t in tags)),
                notes=label.get("note"),
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


def sweep_group(sweep_dir: Path | None) -> str | None:
    """W&B group of a sweep: its directory's last two parts (date_time-id); None for runs."""
    if sweep_dir is None:
        return None
    return f"{sweep_dir.parent.name}_{sweep_dir.name}"


def _finish_wandb(status: str) -> None:
    """Close the job's W&B run (if any) with its status, so runs that failed or diverged
    show as failed in W&B too (summary ``status``, non-zero exit code)."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.run.summary["status"] = status
            wandb.finish(exit_code=0 if status == "completed" else 1)


class JobNotRerun(RuntimeError):
    """A job whose earlier result is failed/diverged, left alone (sweep.rerun_failed=false)."""


def _previous_result(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RESULTS_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # not written by vaesweep (ours are atomic): start afresh
        return None


def run(cfg: DictConfig) -> dict[str, float] | None:
    """Train, test and record one job; returns the metrics written to results.json.

    An existing result in the job's directory decides what happens: ``completed`` → skip
    (nothing is touched); ``failed``/``diverged`` → re-run only with sweep.rerun_failed=true;
    ``running`` or ``interrupted`` with ``checkpoints/last.ckpt`` → resume from that
    checkpoint. A job claimed by another live process (vaesweep.claims) is skipped (returns
    None); the claim is held, and the stop signals handled, for the rest of the job.
    """
    job = current_job()
    if job.multirun and sweep_stopped():  # handed out after a parallel sweep was stopped
        log.debug("not started: the sweep was stopped")
        return None
    if cfg.threads:
        torch_threads = int(cfg.threads)
    else:
        torch_threads = max(1, (os.cpu_count() or 1) // job.n_parallel)
    rank = process_rank()
    if rank != 0:  # a DDP worker a launcher started: does what rank 0 decided, writes nothing
        decision = ranks.await_decision(job.run_dir, rank)  # RankZeroStopped: rank 0 did not
        if decision.action == "skip":
            return None
        return _fit_and_test(cfg, job, None, decision.resume_from, torch_threads)

    # Messages about skipped jobs go to the terminal only: a skipped job's files (its
    # train.log included) are left exactly as they were (a completed one is not even
    # claimed: not a byte of its directory changes).
    with ranks.rank_zero_decides(job.run_dir):  # the other ranks (srun, torchrun) follow
        from vaesweep.jobdir import refuse_other_config

        refuse_other_config(job.run_dir, cfg)  # an earlier result of another config: refused
        if left_alone(job.run_dir, cfg.sweep.rerun_failed) == "completed":
            return _skip_completed(job)
        try:
            claim = claims.acquire(job.run_dir, cfg.sweep.claim_timeout_s)
        except claims.ClaimHeld as held:
            print(f"[vaesweep] skipping {job.run_dir.name}: {held}", file=sys.stderr)
            return None
        with claim, StopSignals(os.environ.get(STOP_FILE_ENV)) as signals:
            pause_point("claimed")
            return _run_claimed(cfg, job, torch_threads, signals)


def _skip_completed(job: Job) -> dict[str, float]:
    print(f"[vaesweep] skipping {job.run_dir.name}: already completed", file=sys.stderr)
    return json.loads((job.run_dir / RESULTS_FILE).read_text())["metrics"]


def _new_wandb_id() -> str:
    """A W&B run id (8 characters from [a-z0-9], as W&B makes them)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _run_claimed(
    cfg: DictConfig, job: Job, torch_threads: int, signals: StopSignals
) -> dict[str, float] | None:
    """The rest of ``run`` for a job this process holds the claim on, while ``signals``
    handles the stop signals. A signal stops the job at its next safe point and records
    ``interrupted`` with the step (JobInterrupted propagates)."""
    for directory in (job.run_dir, job.run_dir / "checkpoints"):
        remove_stale_temps(directory)  # left by a process killed mid-write
    # Again, now that the job is ours: another process may have finished it meanwhile.
    status = left_alone(job.run_dir, cfg.sweep.rerun_failed)
    if status == "completed":
        return _skip_completed(job)
    if status is not None:
        raise JobNotRerun(
            f"{job.run_dir.name} holds a {status} result: not re-run "
            "(pass sweep.rerun_failed=true to re-run failed and diverged jobs)"
        )
    resume_from = None
    last = job.run_dir / "checkpoints" / "last.ckpt"
    previous = _previous_result(job.run_dir)
    if previous is None or previous.get("status") not in CONTINUED:
        previous = None  # a new job, or a failed one re-run from the start
    elif last.exists():
        resume_from = last
        log.info("resuming %s from %s", job.run_dir, last)
    wandb_id = None
    if cfg.logger.get("name") == "wandb":
        # The W&B run continues where the checkpoint does; a job that starts again from step
        # 0 gets a new one (W&B would drop the history of steps it has already seen).
        earlier = (previous or {}).get("wandb_run_id") if resume_from is not None else None
        wandb_id = earlier or _new_wandb_id()
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an unresolvable value: recorded as written, reported by validation
        config = OmegaConf.to_container(cfg, resolve=False)
    record = RunRecord(
        job.run_dir,
        config=config,
        overrides=job.overrides,
        seed=cfg.seed,
        job_name=job.name,
        sweep_dir=None if job.sweep_dir is None else str(job.sweep_dir),
        previous=previous,
        wandb_run_id=wandb_id,
    )
    from vaesweep.module import DivergenceError

    status = "failed"
    try:
        validate_config(cfg, None if job.multirun else job.overrides)
        metrics = _fit_and_test(cfg, job, record, resume_from, torch_threads, signals)
        status = "completed"
    except DivergenceError as e:
        status = "diverged"
        record.finish(status, error=e, step=e.step)
        log.error("run diverged: %s (results: %s)", e, record.path)
        raise
    except ConfigError as e:
        record.finish(status, error=e)
        log.error("bad config: %s (results: %s)", e, record.path)
        raise
    except BaseException as e:
        # A stop signal came: JobInterrupted, Lightning's SIGTERMException, or what it caused.
        if signals.received:
            status = "interrupted"
            stop = signals.exception()
            record.finish(status, error=stop, step=stop.step)
            log.warning("run interrupted: %s (results: %s)", stop, record.path)
            raise stop from None
        record.finish(status, error=e)
        log.exception("run failed: %s: %s (results: %s)", type(e).__name__, e, record.path)
        raise
    finally:
        _finish_wandb(status)
    record.finish("completed", metrics=metrics)
    log.info("completed: %s", record.path)
    return metrics


@dataclass
class RunParts:
    """The components of one job, built from its config (what ``_fit_and_test`` runs)."""

    data: Any  # vaesweep.data.VAEDataModule
    model: Any  # vaesweep.module.VAE
    trainer: Any  # lightning.Trainer
    checkpoint: Any  # lightning.pytorch.callbacks.ModelCheckpoint, None without checkpointing
    loggers: list


def build_run(
    cfg: DictConfig,
    job: Job,
    record: RunRecord | None,
    torch_threads: int,
    callbacks: tuple = (),
) -> RunParts:
    """Seeds, threads, data, model, loggers and trainer of one job (benchmarks reuse it, with
    their own extra Lightning ``callbacks``)."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vaesweep.callbacks import (
        AtomicCheckpointIO,
        ImageGrids,
        NullProfiler,
        ThrottledProgressBar,
        Timestamps,
        WandbMetrics,
    )
    from vaesweep.data import VAEDataModule
    from vaesweep.module import VAE

    if os.environ.get(TIMESTAMPS_ENV):
        callbacks = (*callbacks, Timestamps(os.environ[TIMESTAMPS_ENV], job.name))
    torch.set_num_threads(torch_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    preprocess = resolve_preprocess(cfg)
    data = VAEDataModule(
        name=cfg.data.name,
        root=cfg.data.root,
        download=cfg.data.download,
        batch_size=cfg.data.batch_size,  # global: each rank takes its share at setup
        eval_batch_size=cfg.data.eval_batch_size,
        preprocess=preprocess,
        seed=cfg.seed,
        val_size=cfg.data.val_size,
        test_size=cfg.data.test_size,
        device="auto",  # the tensors live on the training device: no copy per batch
    )
    if record is not None:
        record.set_dataset(data.info)
    plain = OmegaConf.to_container(cfg, resolve=True)
    trainer_args = dict(plain["trainer"])
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
        seed=cfg.seed,
        compile=cfg.compile,
        **_optimization_args(trainer_args),
    )
    checkpoint = None  # trainer.enable_checkpointing=false: no checkpoints, no resume
    if plain["trainer"]["enable_checkpointing"]:
        checkpoint = ModelCheckpoint(
            dirpath=job.run_dir / "checkpoints",
            filename="best",
            monitor="val/elbo",
            mode="max",
            save_top_k=1,
            save_last=True,
            # Always the same two files. With the version counter, a resumed job wrote
            # last-v1.ckpt: the last.ckpt it resumed from is a hard link to best.ckpt
            # (AtomicCheckpointIO), whose saved state predates the last path, so Lightning
            # took last.ckpt for another run's file; a second requeue then resumed from
            # the stale last.ckpt.
            enable_version_counter=False,
        )
        callbacks = (checkpoint, *callbacks)
    loggers = _make_loggers(cfg, job, record.data["wandb_run_id"]) if record is not None else []
    trainer_args["strategy"] = resolve_strategy(trainer_args["strategy"], job)
    plugins = trainer_args.pop("plugins") or []
    plugins = [plugins] if not isinstance(plugins, list) else plugins
    plugins = [*plugins, *slurm_plugins(plugins)]
    if trainer_args["profiler"] is None:
        trainer_args["profiler"] = NullProfiler()
    if trainer_args["enable_progress_bar"]:
        # Lightning redraws its bar after every batch: a formatted write per step, which W&B
        # also captures and sends to its service. Redraw twice a second instead.
        callbacks = (*callbacks, ThrottledProgressBar(min_interval=0.5))
    callbacks = [*callbacks, ImageGrids(job.run_dir, cfg.eval.n_images)]
    if cfg.logger.name == "wandb":
        callbacks.append(WandbMetrics())  # step axes and summaries (vaesweep.dashboard)

    def make_trainer() -> L.Trainer:
        return L.Trainer(
            **trainer_args,
            plugins=[AtomicCheckpointIO(), *plugins],
            logger=loggers or False,
            callbacks=callbacks,
            default_root_dir=str(job.run_dir),
        )

    trainer = make_trainer()
    if ranks.reexecutes_command(trainer) and _reexecution_breaks(job):
        # What `auto` picks for several devices: plain ddp, which would re-run the command.
        log.info("trainer.strategy=%s → ddp_spawn", trainer_args["strategy"])
        trainer_args["strategy"] = "ddp_spawn"
        trainer = make_trainer()
    problem = ranks.trainer_problem(trainer, str(cfg.trainer.strategy))
    if problem:
        raise ConfigError(problem)
    return RunParts(data, model, trainer, checkpoint, loggers)


def slurm_plugins(plugins: list) -> list:
    """Under SLURM, Lightning's SLURM environment without its auto-requeue: [] elsewhere,
    or when the config gives a cluster environment itself.

    Lightning's own SLURMEnvironment would handle SIGUSR1 by saving an ``hpc_ckpt`` and
    running ``scontrol requeue`` from inside the training loop (on every rank where no
    other handler came first). vaesweep stops the job at a safe point instead, records it
    ``interrupted`` and exits 128 + the signal; the requeue is left to submitit (its own
    signal, the submitit launcher) or to the user's ``sbatch --requeue``."""
    from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

    if not SLURMEnvironment.detect() or any(isinstance(p, ClusterEnvironment) for p in plugins):
        return []
    return [SLURMEnvironment(auto_requeue=False)]


def _optimization_args(trainer_args: dict[str, Any]) -> dict[str, Any]:
    """The module's optimisation arguments; takes the ones it applies out of trainer_args.

    The module steps its optimiser itself (manual optimisation: less per-step overhead, same
    numbers) and then also clips. With gradient accumulation Lightning's automatic
    optimisation does both, so the Trainer keeps its arguments.
    """
    if trainer_args["accumulate_grad_batches"] != 1:
        return {"optimization": "automatic"}
    return {
        "optimization": "manual",
        "gradient_clip_val": trainer_args.pop("gradient_clip_val"),
        "gradient_clip_algorithm": trainer_args.pop("gradient_clip_algorithm"),
    }


def _fit_and_test(
    cfg: DictConfig,
    job: Job,
    record: RunRecord | None,
    resume_from: Path | None,
    torch_threads: int,
    signals: StopSignals | None = None,
) -> dict[str, float]:
    from vaesweep.callbacks import Resumable

    resumable = Resumable(signals, on_epoch_end=None if record is None else record.write)
    parts = build_run(cfg, job, record, torch_threads, callbacks=(resumable,))
    trainer, model, data = parts.trainer, parts.model, parts.data
    from vaesweep.guards import check_training_split, require_training

    check_training_split(cfg, data)  # the data are loaded now: a batch must fit the split
    resumable.signals.check()
    if record is not None:  # rank 0: the other ranks (if any) now train too, from the same point
        ranks.announce_training(job.run_dir, resume_from)
    trainer.fit(model, datamodule=data, ckpt_path=resume_from)
    resumable.signals.check()
    require_training(trainer)  # no optimisation step: fail rather than test an untrained model
    # The last validation's metrics (Lightning brings them back from spawned processes too).
    # A resumed fit with nothing left to train validated nothing: then they come from the
    # checkpoint, where Resumable keeps them.
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not fit_metrics:
        fit_metrics = resumable.val_metrics or Resumable.stored_val_metrics(resume_from)
    ckpt = None  # without checkpoints: the weights in memory, i.e. the last ones
    if parts.checkpoint is not None:
        ckpt = parts.checkpoint.best_model_path if cfg.eval.checkpoint == "best" else "last"
    tested = trainer.test(model, datamodule=data, ckpt_path=ckpt, verbose=False)[0]
    resumable.signals.check()
    metrics = {**fit_metrics, **{k: float(v) for k, v in tested.items()}}
    if resume_from is not None:
        best = resumable.best_val_elbo
        if best is None:  # the fit ran in spawned processes: their state is in the checkpoint
            best = Resumable.stored_state(resume_from).get("best_val_elbo")
        _resumed_wandb_summary(parts.loggers, fit_metrics, best)
    return metrics


def _resumed_wandb_summary(
    loggers: list, fit_metrics: dict[str, float], best: float | None
) -> None:
    """The W&B summary of a resumed job's ``val/*`` (vaesweep.dashboard computes it from the
    logged history, but this attempt's process saw only its own validations, none at all
    when the job was resumed after its last epoch): the last values, and the best
    ``val/elbo`` of every attempt (kept in the checkpoint)."""
    from vaesweep.dashboard import val_elbo_summary

    values: dict[str, Any] = dict(fit_metrics)
    last = fit_metrics.get("val/elbo")
    if last is not None:
        values["val/elbo"] = {"last": last} if best is None else val_elbo_summary(best, last)
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.summary.update(values)


def _launcher() -> str:
    """The Hydra launcher running this job ('' for a single run)."""
    hc = HydraConfig.get()
    if hc.mode is None or hc.mode.name != "MULTIRUN":
        return ""
    return str(hc.launcher.get("_target_") or "")


def _stopped(stop: JobInterrupted) -> None:
    """After a job recorded ``interrupted``: hands the signal to the handler that was in
    place before the job, then ends as the launcher needs.

    - Submitit (a job in its own process, SLURM or local): submitit's handler of its
      pre-emption signal (SIGUSR2, or $SUBMITIT_PREEMPT_SIGNAL) saves the job for a requeue
      and exits (local: status 144; SLURM: scontrol requeue); the requeued attempt resumes.
      Any other signal, or a requeue submitit refuses (too many time-outs), returns: the
      launcher collects the job and its summary lists it as interrupted (non-zero exit).
    - joblib (a job in a worker process): returns, the same way; the launching process,
      signalled too, stops the sweep.
    - Hydra's basic launcher (jobs in the launching process): the sweep stops
      (SweepStopped; the entry point writes the summary and exits 128 + the signal).
    - A single run: exits with 128 + the signal number.
    """
    launcher = _launcher()
    try:
        stop.hand_over()  # submitit: may requeue and exit; the sweep guard: SweepStopped
    except Exception as e:  # submitit's UncompletedJobError: not requeued
        print(f"[vaesweep] {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    if "submitit" in launcher or "joblib" in launcher:
        return
    if launcher:
        raise SweepStopped(stop.signum)
    raise SystemExit(stop.exit_code)


def task(cfg: DictConfig) -> None:
    """The Hydra task: one job of a run or a sweep.

    In a multirun a job's failure is recorded in its results.json and does not stop the
    other jobs; the sweep's summary then names it and the sweep exits non-zero. A stop
    signal (Ctrl-C, SIGTERM, SIGUSR1/2) does stop the sweep: the job records
    ``interrupted``, no further job starts, the summary so far is written, and the process
    exits with 128 + the signal number; under submitit the job is requeued instead
    (:func:`_stopped`).
    """
    from vaesweep.failures import job_label, quiet_console, report_failure

    quiet_console()  # one line per failure on the terminal; tracebacks in the job's log file
    started, stamps = time.time(), os.environ.get(TIMESTAMPS_ENV)
    try:
        run(cfg)
        pause_point("between_jobs")  # test hook: this job has finished, the next not started
    except JobInterrupted as stop:
        print(f"[vaesweep] {stop}", file=sys.stderr, flush=True)
        _stopped(stop)
    except Exception as error:
        report_failure(error, job_label())  # one line; the traceback goes to train.log
        if HydraConfig.get().mode.name == "MULTIRUN":
            return
        raise SystemExit(1) from None
    finally:
        if stamps:
            from vaesweep.callbacks import append_timestamp

            job = HydraConfig.get().job.override_dirname or "default"
            append_timestamp(stamps, "job_start", t=started, job=job)
            append_timestamp(stamps, "job_end", job=job)


register_resolvers()
_hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")


def main() -> None:
    """``python run.py``: Hydra's entry point for :func:`task`. A signal that stopped a
    sweep (in a job or between two) ends here: the summary of what finished is written and
    the process exits with 128 + the signal number."""
    from vaesweep.sweep import finish_stopped

    try:
        _hydra_main(task)()
    except SweepStopped as stop:
        raise SystemExit(finish_stopped(stop)) from None  # the summary says what was stopped


def cli_main() -> None:
    """Console-script entry point (``vaesweep-train``), same arguments as ``run.py``."""
    from vaesweep.search import quote_sweeper_params

    sys.argv[1:] = quote_sweeper_params(sys.argv[1:])
    main()
