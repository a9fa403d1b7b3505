"""What happens to one job: skip, claim, resume or run, and how its outcome is recorded.

The policy, decided from the job's directory before anything is touched:

- a ``completed`` result → skipped (not a byte of the directory changes);
- a ``failed``/``diverged`` result → re-run only with ``sweep.rerun_failed=true``;
- ``running``/``interrupted`` with ``checkpoints/last.ckpt`` → resumed from it;
- a result of another config → refused (:mod:`vaesweep.jobdir`);
- a job claimed by another live process → skipped (:mod:`vaesweep.claims`).

Then the config is validated, the driver (:func:`vaesweep.train.fit_and_test`, passed in as
``execute``) trains and tests, and results.json gets the outcome: ``completed`` with the
metrics, ``diverged`` with the step, ``failed`` with the error, or ``interrupted`` with the
step when a stop signal came (:mod:`vaesweep.interrupt`). Under several processes (srun,
torchrun) rank 0 decides and the other ranks follow (:mod:`vaesweep.ranks`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vaesweep import claims, ranks
from vaesweep.atomic import remove_stale_temps
from vaesweep.config import ConfigError, validate_config
from vaesweep.interrupt import STOP_FILE_ENV, StopSignals, pause_point, sweep_stopped
from vaesweep.loggers import finish_wandb, new_wandb_id
from vaesweep.record import CONTINUED, RESULTS_FILE, RunRecord
from vaesweep.sweep import left_alone, read_sweep, swept_values

log = logging.getLogger("vaesweep")


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


#: The driver that trains and tests a job: (cfg, job, record or None on ranks > 0,
#: checkpoint to resume from, torch threads, stop signals) → metrics.
Execute = Callable[
    [DictConfig, "Job", "RunRecord | None", "Path | None", int, "StopSignals | None"],
    dict[str, float],
]


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


def run(cfg: DictConfig, execute: Execute) -> dict[str, float] | None:
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
        return execute(cfg, job, None, decision.resume_from, torch_threads, None)

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
            return _run_claimed(cfg, job, torch_threads, signals, execute)


def _skip_completed(job: Job) -> dict[str, float]:
    print(f"[vaesweep] skipping {job.run_dir.name}: already completed", file=sys.stderr)
    return json.loads((job.run_dir / RESULTS_FILE).read_text())["metrics"]


def _run_claimed(
    cfg: DictConfig, job: Job, torch_threads: int, signals: StopSignals, execute: Execute
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
    record, resume_from = _open_record(cfg, job)
    from vaesweep.module import DivergenceError

    status = "failed"
    try:
        validate_config(cfg, None if job.multirun else job.overrides)
        metrics = execute(cfg, job, record, resume_from, torch_threads, signals)
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
        finish_wandb(status)
    record.finish("completed", metrics=metrics)
    if not job.multirun:  # a sweep's job tells its outcome in one line (vaesweep.train)
        log.info("completed: %s", record.path)
    return metrics


def _open_record(cfg: DictConfig, job: Job) -> tuple[RunRecord, Path | None]:
    """The job's record ("running"), continuing an interrupted attempt's (time spent,
    attempts, W&B run) when its last checkpoint is there to resume from, which is returned."""
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
        wandb_id = earlier or new_wandb_id()
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
    return record, resume_from
