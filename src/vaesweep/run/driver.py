"""The driver of one job (the Hydra task): validate the config, train, evaluate on the test
split, record the run. The Hydra entry point that calls it is :mod:`vaesweep.sweep.entry`.

Lifecycle of one job: results.json says "running" → the config is validated (a bad value
fails here, before any data is loaded or any step is taken) → fit → test on the last or
best checkpoint → image grids → results.json says "completed" with every metric. A
non-finite loss stops training and records "diverged" with the step; any other exception
records "failed" with its type and message; both then exit non-zero. A stop signal records
"interrupted" with the step and exits with 128 + its number (vaesweep.run.signals). W&B is
closed in a ``finally``, after results.json has the outcome, so the jobs of one multirun
process are separate W&B runs (an error closing it is a warning: vaesweep.run.jobs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.callbacks import Timer
from omegaconf import DictConfig, OmegaConf

from vaesweep.core.checks import ConfigError
from vaesweep.core.helpers import TIMESTAMPS_ENV
from vaesweep.data import VAEDataModule
from vaesweep.model import components
from vaesweep.model.module import VAE
from vaesweep.model.objective import DivergenceError
from vaesweep.run import context, gpus, history, jobs, ranks
from vaesweep.run.callbacks import (
    LAST_CHECKPOINT,
    AtomicCheckpointIO,
    EpochLines,
    ImageGrids,
    NullProfiler,
    Resumable,
    RunCheckpoint,
    ScheduleLength,
    ThrottledProgressBar,
    Timestamps,
    WandbMetrics,
)
from vaesweep.run.config import check_training_split, require_training, resolve_preprocess
from vaesweep.run.console import is_terminal
from vaesweep.run.context import Job
from vaesweep.run.loggers import make_loggers, resumed_wandb_summary
from vaesweep.run.policy import verify_checkpoint
from vaesweep.run.record import RunRecord, data_changed
from vaesweep.run.signals import StopSignals
from vaesweep.run.spawn import DIVERGED, STOPPED, SpawnChannel

log = logging.getLogger("vaesweep")


def _reexecution_breaks(job: Job) -> bool:
    """Whether re-running the command (Lightning's plain ``ddp``) would break this job:
    inside a multirun or a parallel launcher, and in any process that did not start this job
    from its own command line (a notebook, a test, a script calling the driver)."""
    return job.multirun or not context.runs_from_command_line()


def resolve_strategy(strategy: str, job: Job) -> str:
    """``ddp`` re-executes ``sys.argv`` in its child processes, which breaks inside a
    multirun, a parallel launcher and pytest: ``ddp_spawn`` there. Under srun (one task per
    device) or torchrun every DDP variant becomes plain ``ddp`` (vaesweep.run.ranks)."""
    resolved = ranks.resolve_strategy(strategy, _reexecution_breaks(job))
    if resolved != strategy:
        log.info("trainer.strategy=%s → %s", strategy, resolved)
    return resolved


@dataclass
class RunParts:
    """The components of one job, built from its config (what ``fit_and_test`` runs)."""

    data: Any  # vaesweep.data.VAEDataModule
    model: Any  # vaesweep.model.module.VAE
    trainer: Any  # lightning.Trainer
    checkpoint: Any  # lightning.pytorch.callbacks.ModelCheckpoint, None without checkpointing
    loggers: list
    strategy: str = "auto"  # the strategy name the trainer was given


def build_run(
    cfg: DictConfig,
    job: Job,
    record: RunRecord | None,
    torch_threads: int,
    callbacks: tuple = (),
    resume_from: Path | None = None,
) -> RunParts:
    """Seeds, threads, data, model, loggers and trainer of one job (benchmarks reuse it, with
    their own extra Lightning ``callbacks``). A job resumed from ``resume_from`` must read
    the data its earlier attempts recorded (:func:`check_same_data`), checked before the
    record takes the data read now."""
    if os.environ.get(TIMESTAMPS_ENV):
        callbacks = (*callbacks, Timestamps(os.environ[TIMESTAMPS_ENV], job.name))
    torch.set_num_threads(torch_threads)
    missing = gpus.missing_gpu_problem(cfg.trainer.get("accelerator"))
    if missing:
        raise ConfigError(missing)
    gpus.cap_memory()  # a job given a share of a GPU: at most that share of its memory
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.deterministic:  # as the Trainer will set it: strict for true, "warn" warns
        torch.use_deterministic_algorithms(True, warn_only=cfg.trainer.deterministic == "warn")
    preprocess = resolve_preprocess(cfg)
    data = _build_data(cfg, preprocess)
    if record is not None:
        if resume_from is not None:
            recorded = record.data["dataset"]  # the earlier attempt's, until set below
            if recorded is None:  # results.json lost (or an older record): the checkpoint's
                recorded = Resumable.stored_state(resume_from).get("dataset")
            check_same_data(recorded, data.info, cfg)
        record_data_root(record.data["config"])
        record.set_dataset(data.info)
    trainer_args = dict(OmegaConf.to_container(cfg.trainer, resolve=True))
    world_size = ranks.configured_world_size(trainer_args)
    if world_size is not None and world_size > 1:  # in one line, before any process starts
        data.check_eval_shards(world_size)
    model = _build_model(cfg, data.shape, preprocess == "dequantize", trainer_args)
    loggers = make_loggers(cfg, job, record.data["wandb_run_id"]) if record is not None else []
    trainer, checkpoint = _build_trainer(cfg, job, trainer_args, loggers, callbacks)
    if record is not None:
        _record_precision(cfg, trainer, record)
        _tell_data_source(cfg, data.info)
        record.set_devices(gpus.device_info(str(trainer.strategy.root_device)))
    return RunParts(data, model, trainer, checkpoint, loggers, trainer_args["strategy"])


#: trainer.precision values and the precision Lightning means by them (its short forms).
_PRECISION_NAMES = {
    "None": "32-true",
    "32": "32-true",
    "16": "16-mixed",
    "bf16": "bf16-mixed",
    "64": "64-true",
}


def _record_precision(cfg: DictConfig, trainer: Any, record: RunRecord) -> None:
    """results.json records the precision Lightning runs with, which may differ from the
    config's (fp16 autocast is not supported on a CPU: ``16`` runs as ``bf16-mixed``)."""
    used = str(trainer.precision)
    asked = str(cfg.trainer.precision)
    record.set_facts(precision=used)
    if _PRECISION_NAMES.get(asked, asked) != used:
        log.warning(
            "trainer.precision=%s runs as %s on this %s: results.json records precision=%s",
            asked,
            used,
            type(trainer.accelerator).__name__.replace("Accelerator", "") or "device",
            used,
        )


def _tell_data_source(cfg: DictConfig, info: dict[str, Any]) -> None:
    """Says where a dataset read from files was found when data.root did not hold it
    (results.json records it: ``dataset.source``). A data.root that is set is refused
    before the record opens when it holds no copy (vaesweep.data.download.check_given_root):
    this is said only with data.download=true, which a copy found elsewhere makes
    unnecessary."""
    source, root = info.get("source"), cfg.data.get("root")
    if not source or not root or not Path(source).is_dir():
        return
    root_path = Path(str(root)).expanduser().resolve()
    if Path(source).resolve().is_relative_to(root_path):
        return
    level = logging.INFO if root_path.is_dir() else logging.WARNING
    state = "holds no copy of it" if root_path.is_dir() else "does not exist"
    log.log(
        level,
        "data.root=%s %s: data=%s was read from %s (results.json: dataset.source)",
        root,
        state,
        cfg.data.name,
        source,
    )


def record_data_root(config: dict[str, Any]) -> None:
    """A relative ``data.root`` in the config results.json records (``config``, changed in
    place) becomes the absolute directory the job reads it as: relative to the directory
    the job runs in, the one it was launched from (Hydra's default, hydra.job.chdir=false).
    Recorded as typed (``custom28``), ``vaesweep evaluate`` run from another directory read
    another one. data.root changes no result (vaesweep.run.record.NOT_RESULTS): a resume
    and the comparison of configs do not read it."""
    data = config.get("data")
    root = data.get("root") if isinstance(data, dict) else None
    if isinstance(root, str) and root and not Path(root).expanduser().is_absolute():
        data["root"] = os.path.abspath(Path(root).expanduser())


def _build_data(cfg: DictConfig, preprocess: str) -> Any:
    return VAEDataModule(
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


def _build_model(
    cfg: DictConfig, shape: tuple[int, int, int], report_bpd: bool, trainer_args: dict
) -> Any:
    """The LightningModule; takes the optimisation arguments it applies out of trainer_args.
    Its components are built here from the config (the path, checks and messages of
    ``components.build``); the VAE gets the objects."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    built = components.build_components(
        shape, plain["likelihood"], plain["beta_schedule"], plain["model"]
    )
    return VAE(
        **built,
        optimizer=plain["optimizer"],
        n_samples=cfg.n_samples,
        iwae_k=cfg.eval.iwae_k,
        iwae_chunk=cfg.eval.iwae_chunk,
        active_units_threshold=cfg.eval.active_units_threshold,
        report_bpd=report_bpd,
        seed=cfg.seed,
        compile=cfg.compile,
        **_optimization_args(trainer_args),
    )


def checkpoint_callbacks(directory: Path) -> tuple[RunCheckpoint, RunCheckpoint]:
    """A job's two checkpoints in ``directory``, always the same two files (no version
    counter: a resumed job wrote last-v1.ckpt beside the last.ckpt it resumed from, and a
    second requeue resumed from the stale one).

    ``best.ckpt``: the best val/elbo, written at the validation that gave it.
    ``last.ckpt``: a callback of its own, written at the end of every training epoch, an
    epoch cut short by max_steps or max_time included, so that it always holds the fit's
    final weights, and never mid-epoch (a resume restarts the epoch it stopped in, and
    reproduces it). Lightning >= 2.6 writes the save_last file of a monitored checkpoint
    only when the monitored one is written too: last.ckpt stayed at the best epoch whenever
    the last ones did not improve val/elbo, and the default eval.checkpoint=last tested
    those weights."""
    best = RunCheckpoint(
        dirpath=directory,
        filename="best",
        monitor="val/elbo",
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    last = RunCheckpoint(
        dirpath=directory,
        filename=LAST_CHECKPOINT,
        monitor=None,
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    return best, last


def _build_trainer(
    cfg: DictConfig, job: Job, trainer_args: dict, loggers: list, callbacks: tuple
) -> tuple[Any, Any]:
    """The Lightning Trainer and its ModelCheckpoint (None without checkpointing)."""
    checkpoint = None  # trainer.enable_checkpointing=false: no checkpoints, no resume
    if trainer_args["enable_checkpointing"]:
        checkpoint, last = checkpoint_callbacks(job.run_dir / "checkpoints")
        callbacks = (checkpoint, last, *callbacks)
    trainer_args["strategy"] = resolve_strategy(trainer_args["strategy"], job)
    plugins = trainer_args.pop("plugins") or []
    plugins = [plugins] if not isinstance(plugins, list) else plugins
    plugins = [*plugins, *slurm_plugins(plugins)]
    if trainer_args["profiler"] is None:
        trainer_args["profiler"] = NullProfiler()
    if trainer_args["enable_progress_bar"] and not is_terminal():
        # A log file or a SLURM output file: one line per epoch instead of a bar's redraws.
        trainer_args["enable_progress_bar"] = False
        callbacks = (*callbacks, EpochLines())
    if trainer_args["enable_progress_bar"]:
        # Lightning redraws its bar after every batch: a formatted write per step, which W&B
        # also captures and sends to its service. Redraw twice a second instead.
        callbacks = (*callbacks, ThrottledProgressBar(min_interval=0.5))
    callbacks = (*callbacks, ImageGrids(job.run_dir, cfg.eval.n_images))
    if cfg.logger.name == "wandb":
        # Step axes and summaries (vaesweep.analysis.wandb_summary).
        callbacks = (*callbacks, WandbMetrics())

    def make_trainer() -> L.Trainer:
        return L.Trainer(
            **trainer_args,
            plugins=[AtomicCheckpointIO(), *plugins],
            logger=loggers or False,
            callbacks=list(callbacks),
            default_root_dir=str(job.run_dir),
        )

    trainer = make_trainer()
    if ranks.reexecutes_command(trainer, trainer_args["strategy"]) and _reexecution_breaks(job):
        # What `auto` picks for several devices: plain ddp, which would re-run the command.
        log.info("trainer.strategy=%s → ddp_spawn", trainer_args["strategy"])
        trainer_args["strategy"] = "ddp_spawn"
        trainer = make_trainer()
    problem = ranks.trainer_problem(trainer, str(cfg.trainer.strategy))
    if not problem and (assigned_by := os.environ.get(gpus.ASSIGNED_ENV)):
        trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
        problem = gpus.one_device_problem(trainer_cfg, assigned_by)
    if problem:
        raise ConfigError(problem)
    return trainer, checkpoint


def slurm_plugins(plugins: list) -> list:
    """Under SLURM, Lightning's SLURM environment without its auto-requeue: [] elsewhere,
    or when the config gives a cluster environment itself.

    Lightning's own SLURMEnvironment would handle SIGUSR1 by saving an ``hpc_ckpt`` and
    running ``scontrol requeue`` from inside the training loop (on every rank where no
    other handler came first). vaesweep stops the job at a safe point instead, records it
    ``interrupted`` and exits 128 + the signal; the requeue is left to submitit (its own
    signal, the submitit launcher) or to the user's ``sbatch --requeue``."""
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


def check_same_data(recorded: Any, now: dict[str, Any], cfg: DictConfig) -> None:
    """A resumed run reads the data its earlier attempts trained on, or is refused before
    it trains (a ConfigError: its record and checkpoints are kept for the corrected
    command)."""
    changed = data_changed(recorded, now)
    if changed:
        root = cfg.data.get("root")
        where = "data.root=null" if root is None else f"data.root={root}"
        raise ConfigError(
            f"this run cannot be resumed on these data ({where}): {changed}. Resuming would "
            "train the rest of the run on other data. Allowed: the copy the run began on (set "
            "data.root to it, or $VAESWEEP_DATA_ROOT where data.root is null), and the same "
            "command resumes it; or train it from the start in another directory"
        )


def fit_and_test(
    cfg: DictConfig,
    job: Job,
    record: RunRecord | None,
    resume_from: Path | None,
    torch_threads: int,
    signals: StopSignals | None = None,
) -> dict[str, float]:
    """Trains and tests one job; its metrics. On the job's rank 0, metrics.csv keeps the
    history of the attempts before a resumed one (:mod:`vaesweep.run.history`)."""
    if record is None:  # not the job's rank 0: it writes no metrics.csv
        return _fit_and_test(cfg, job, record, resume_from, torch_threads, signals)
    history.set_aside(job.run_dir, resume_from)  # what Lightning's CSV logger would delete
    try:
        return _fit_and_test(cfg, job, record, resume_from, torch_threads, signals)
    finally:
        if signals is None or not signals.claim_lost:  # else the files are the new holder's
            history.merge(job.run_dir)


def _fit_and_test(
    cfg: DictConfig,
    job: Job,
    record: RunRecord | None,
    resume_from: Path | None,
    torch_threads: int,
    signals: StopSignals | None,
) -> dict[str, float]:
    resumable = Resumable(
        signals,
        on_epoch_end=None if record is None else record.write,
        # From its first batch on, a failure is this attempt's outcome (else the earlier
        # attempt's record and checkpoints stay: vaesweep.run.jobs).
        on_first_batch=None if record is None else record.begin_training,
        identity=None if record is None else record.data["config"],
    )
    callbacks = (resumable, ScheduleLength())
    parts = build_run(cfg, job, record, torch_threads, callbacks, resume_from)
    trainer, model, data = parts.trainer, parts.model, parts.data
    if record is not None:  # kept in every checkpoint, for a resume whose record is lost
        resumable.dataset = data.info
    check_training_split(cfg, data, trainer.world_size)  # the data are loaded now
    resumable.signals.check()
    spawned = None
    if ranks.start_method(trainer, parts.strategy) in SPAWNING:
        # The training hooks run in processes this one starts: what they end with, and the
        # stop signals this process receives, pass through the channel (vaesweep.run.spawn).
        spawned = SpawnChannel()
        resumable.signals.spawned = spawned
        model.on_divergence = spawned.record_divergence
    try:
        return _train_and_test(cfg, job, record, resume_from, parts, resumable, spawned)
    finally:
        if spawned is not None:
            resumable.signals.spawned = None
            model.on_divergence = None
            spawned.close()


#: How DDP strategies that start their processes from this one start them (not ``popen``:
#: plain ddp re-runs the command, each process a job of its own).
SPAWNING = ("spawn", "fork", "forkserver")


@contextmanager
def spawned_outcome(
    spawned: SpawnChannel | None, signals: StopSignals, fitting: bool = True
) -> Iterator[None]:
    """Around a fit (``fitting``) or test whose hooks run in spawned processes
    (``spawned``): a failure they end with becomes what they recorded
    (:mod:`vaesweep.run.spawn`), as for a fit in this process. A divergence: DivergenceError
    with its step. A stop (a signal this process received and passed on, or the sweep's stop
    file): JobInterrupted at the step the fit's processes stopped at (a test's processes
    know no training step: none). Anything else is left as it is (torch.multiprocessing's
    exception); so are the stops the processes recorded on their own (torch.multiprocessing
    ends the others with SIGTERM once one has failed)."""
    if spawned is None:
        yield
        return
    try:
        yield
    except Exception as error:
        diverged = spawned.outcomes(DIVERGED)
        if diverged:
            first = min(diverged, key=lambda o: o.get("step") or 0)
            raise DivergenceError(int(first["step"]), dict(first["values"])) from error
        if signals.poll():
            steps = [o["step"] for o in spawned.outcomes(STOPPED) if o.get("step") is not None]
            signals.stopped_in_spawned(max(steps) if steps and fitting else None)
            raise signals.exception() from error
        raise


def _train_and_test(
    cfg: DictConfig,
    job: Job,
    record: RunRecord | None,
    resume_from: Path | None,
    parts: RunParts,
    resumable: Resumable,
    spawned: SpawnChannel | None,
) -> dict[str, float]:
    trainer, model, data = parts.trainer, parts.model, parts.data
    if record is not None:  # rank 0: the other ranks (if any) now train too, from the same point
        if spawned is not None:  # its batches run elsewhere: a failure is this attempt's now
            record.begin_training()
            resumable.on_first_batch = None
        ranks.announce_training(job.run_dir, resume_from)
    try:
        with spawned_outcome(spawned, resumable.signals):
            trainer.fit(model, datamodule=data, ckpt_path=resume_from)
        if record is not None:  # (a resumed fit may have had nothing left to train)
            record.begin_training()
    finally:
        # For the processes the fit started (Lightning's ddp), not for what this process
        # starts later: a command it runs would take itself for one of this job's ranks.
        os.environ.pop(ranks.DECISION_ENV, None)
    resumable.signals.check_together(trainer)  # the ranks of a fit of several agree
    # No optimisation step: fail rather than test an untrained model.
    require_training(trainer, parts.strategy)
    if record is not None:
        record.set_facts(trained=trained_budget(trainer, parts.strategy))
    # The last validation's metrics (Lightning brings them back from spawned processes too).
    # A resumed fit with nothing left to train validated nothing: then they come from the
    # checkpoint, where Resumable keeps them.
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not fit_metrics:
        fit_metrics = resumable.val_metrics or Resumable.stored_val_metrics(resume_from)
    ckpt = None  # without checkpoints: the weights in memory, i.e. the last ones
    tested_checkpoint = "last"
    if parts.checkpoint is not None:
        tested_checkpoint = cfg.eval.checkpoint
        last_file = job.run_dir / "checkpoints" / f"{LAST_CHECKPOINT}.ckpt"
        # None: the weights in memory, the same final ones, where no checkpoint was written
        # (trainer.fast_dev_run writes none).
        last = str(last_file) if last_file.is_file() else None
        ckpt = parts.checkpoint.best_model_path if cfg.eval.checkpoint == "best" else last
        if cfg.eval.checkpoint == "best" and not ckpt:  # the fit ended before a validation
            log.warning(
                "eval.checkpoint=best: the fit ended before its first validation, so there "
                "is no best checkpoint; tested on the last weights instead (results.json: "
                "tested_checkpoint=last)"
            )
            ckpt, tested_checkpoint = last, "last"
    if record is not None:
        record.set_facts(tested_checkpoint=tested_checkpoint)
    if ckpt is not None:  # a damaged one is reported (DamagedCheckpoint), never tested
        verify_checkpoint(Path(ckpt), "tested")
    with spawned_outcome(spawned, resumable.signals, fitting=False):
        tested = trainer.test(model, datamodule=data, ckpt_path=ckpt, verbose=False)[0]
    resumable.signals.check_together(trainer)
    metrics = {**fit_metrics, **{k: float(v) for k, v in tested.items()}}
    if resume_from is not None:
        best = resumable.best_val_elbo
        if best is None:  # the fit ran in spawned processes: their state is in the checkpoint
            best = Resumable.stored_state(resume_from).get("best_val_elbo")
        resumed_wandb_summary(parts.loggers, fit_metrics, best)
    return metrics


def trained_budget(trainer: Any, strategy: str = "auto") -> dict[str, Any]:
    """What the fit trained, over all its attempts (results.json ``trained``): ``steps``
    (optimisation steps), ``epochs`` (as Lightning counts them: an epoch cut short by
    max_steps or max_time counts) and ``stopped_by``, the budget that ended it:
    ``max_epochs``, ``max_steps``, ``max_time`` (so the same config trains further on a
    faster or idler machine) or ``other`` (a callback's stop). All None for a fit in spawned
    processes (``ddp_spawn``), whose loop state this process does not see."""
    if ranks.start_method(trainer, strategy) not in (None, "popen"):
        return {"steps": None, "epochs": None, "stopped_by": None}
    steps, epochs = int(trainer.global_step), int(trainer.current_epoch)
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    expired = any((t.time_remaining() or 0.0) <= 0 for t in timers)
    if expired and trainer.should_stop:  # the Timer stopped it, in its last epoch too
        stopped_by = "max_time"  # (Lightning counts the epoch it cut as one trained)
    elif trainer.max_steps is not None and 0 <= trainer.max_steps <= steps:
        stopped_by = "max_steps"
    elif trainer.max_epochs is not None and 0 <= trainer.max_epochs <= epochs:
        stopped_by = "max_epochs"
    elif expired:
        stopped_by = "max_time"
    else:
        stopped_by = "other"
    return {"steps": steps, "epochs": epochs, "stopped_by": stopped_by}


def task(cfg: DictConfig) -> None:
    """The Hydra task: one job (:func:`vaesweep.run.jobs.task`), trained and tested by
    :func:`fit_and_test`."""
    jobs.task(cfg, execute=fit_and_test)
