"""One job carried out: the policy's decision (:mod:`vaesweep.run.policy`: skip, refuse,
claim, resume or run), then the run and how its outcome is recorded.

Then the config is validated, the driver (:func:`vaesweep.run.driver.fit_and_test`, passed in as
``execute``) trains and tests, and results.json gets the outcome: ``completed`` with the
metrics, ``diverged`` with the step, ``failed`` with the error, or ``interrupted`` with the
step when a stop signal came (:mod:`vaesweep.run.signals`). Under several processes (srun,
torchrun) rank 0 decides and the other ranks follow (:mod:`vaesweep.run.ranks`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vaesweep.core import launchers
from vaesweep.core.atomic import remove_stale_temps, write_json_atomic
from vaesweep.core.checks import ConfigError
from vaesweep.core.helpers import TIMESTAMPS_ENV, append_timestamp, command_again, launcher_note
from vaesweep.data.datasets import check_available
from vaesweep.data.download import DatasetNotFoundError
from vaesweep.model.objective import DivergenceError
from vaesweep.run import claims, ranks, record
from vaesweep.run.config import check_sweep_keys, validate_config
from vaesweep.run.console import job_story, tidy_logging
from vaesweep.run.context import (
    Job,
    current_job,
    job_dirname,
    job_sweep_dir,
    process_rank,
    read_sweep,
)
from vaesweep.run.failures import job_label, quiet_console, report_failure
from vaesweep.run.loggers import finish_wandb, new_wandb_id
from vaesweep.run.policy import (
    DamagedCheckpoint,
    config_subdir,
    left_alone,
    refuse_other_config,
    retest_from,
    stored_identity,
    verify_checkpoint,
)
from vaesweep.run.record import COMPLETED, CONTINUED, RESULTS_FILE, RunRecord
from vaesweep.run.signals import (
    STOP_FILE_ENV,
    JobInterrupted,
    StopSignals,
    stop_sweep,
    sweep_stopped,
)

log = logging.getLogger("vaesweep")
#: Set on an error after which the earlier attempt's record and checkpoints were kept: the
#: line that says so (:func:`_tell_kept`).
KEPT_ATTR = "vaesweep_kept"


#: The driver that trains and tests a job: (cfg, job, record or None on ranks > 0,
#: checkpoint to resume from, torch threads, stop signals) → metrics.
Execute = Callable[
    [DictConfig, "Job", "RunRecord | None", "Path | None", int, "StopSignals | None"],
    dict[str, float],
]


class NonFiniteScore(RuntimeError):
    """Training ended, but the test score (test/nll or test/elbo) is not a finite number."""

    def __init__(self, problem: str, metrics: dict[str, float]) -> None:
        self.metrics = metrics
        super().__init__(
            f"the trained model's test score is not finite ({problem}): recorded diverged, "
            "not completed"
        )


class JobNotRerun(RuntimeError):
    """A job whose earlier result is failed/diverged, left alone (sweep.rerun_failed=false)."""


def run(cfg: DictConfig, execute: Execute | Exception) -> dict[str, float] | None:
    """Train, test and record one job; returns the metrics written to results.json.

    An existing result in the job's directory decides what happens: ``completed`` → skip
    (nothing is touched); ``failed``/``diverged`` → re-run only with sweep.rerun_failed=true
    (one whose config was refused before it trained is run, so checked, again; one that
    failed after its fit had completed is tested again from its last checkpoint);
    ``running`` or ``interrupted`` with ``checkpoints/last.ckpt`` → resume from that
    checkpoint. A job claimed by another live process (vaesweep.run.claims) is skipped (returns
    None); the claim is held, and the stop signals handled, for the rest of the job.

    ``execute`` may instead be the exception that says why this process cannot run the
    driver (:mod:`vaesweep.sweep.task`). The job is then settled as above without it: it
    records ``failed`` with that error, unless an earlier attempt continues (``interrupted``
    or ``running``, or a lost results.json beside the last checkpoint), whose record and
    checkpoints are left for a relaunch. The error is raised either way; ranks > 0 raise it
    at once (rank 0 settles the job).
    """
    job = current_job()
    check_sweep_keys(cfg)  # read by the claim below, before the config is validated
    if job.multirun and sweep_stopped():  # handed out after a parallel sweep was stopped
        log.debug("not started: the sweep was stopped")
        return None
    torch_threads = job.torch_threads(cfg.threads)
    rank = process_rank()
    if rank != 0:  # a DDP worker a launcher started: does what rank 0 decided, writes nothing
        if isinstance(execute, Exception):
            raise execute
        decision = ranks.await_decision(job.run_dir, rank)  # RankZeroStopped: rank 0 did not
        if decision.action == "skip":
            return None
        # Stop handlers of its own: the ranks agree on a stop (vaesweep.run.signals), which
        # rank 0 records and tells; this rank ends with the same status, quietly.
        try:
            with StopSignals(os.environ.get(STOP_FILE_ENV)) as signals:
                return execute(cfg, job, None, decision.resume_from, torch_threads, signals)
        except JobInterrupted as stop:
            if isinstance(stop.ended_by, Exception):  # its own error, as rank 0 reports its
                report_failure(stop.ended_by, job_label())
            _await_record(job.run_dir)
            raise SystemExit(stop.exit_code) from None
        except claims.ClaimLost as lost:  # rank 0's, agreed by every rank: as rank 0 does
            print(f"[vaesweep] rank {rank} stopped {job.run_dir.name}: {lost}", file=sys.stderr)
            if signals.received:  # a stop signal came too: it still stops (128 + n)
                raise SystemExit(signals.exception().exit_code) from None
            if not job.multirun:  # a single run that did not finish must not exit 0
                raise SystemExit(1) from None
            return None

    # Messages about skipped jobs go to the terminal only: a skipped job's files (its
    # train.log included) are left exactly as they were (a completed one is not even
    # claimed: not a byte of its directory changes).
    with ranks.rank_zero_decides(job.run_dir):  # the other ranks (srun, torchrun) follow
        refuse_other_config(job.run_dir, cfg)  # an earlier result of another config: refused
        if left_alone(job.run_dir, cfg.sweep.rerun_failed) == COMPLETED:
            return _skip_completed(job)
        try:
            claim = claims.acquire(job.run_dir, cfg.sweep.claim_timeout_s)
        except claims.ClaimHeld as held:
            if not job.multirun:  # a single run that did not run must not exit 0
                raise
            # A sweep's job another live launch runs: the end of this launch waits for it.
            print(f"[vaesweep] skipping {job.run_dir.name}: {held}", file=sys.stderr)
            return None
        signals = StopSignals(os.environ.get(STOP_FILE_ENV), claim)
        try:
            with claim, signals:
                return _run_claimed(cfg, job, torch_threads, signals, execute)
        except claims.ClaimLost as lost:
            if signals.received:  # a stop signal came too: it still stops the sweep
                print(f"[vaesweep] stopped {job.run_dir.name}: {lost}", file=sys.stderr)
                raise signals.exception() from None
            if not job.multirun:  # a single run that did not finish must not exit 0
                raise
            # Taken over by another launch, which runs it now (the end of this one waits).
            print(f"[vaesweep] stopped {job.run_dir.name}: {lost}", file=sys.stderr)
            return None


#: How long a rank > 0 stopped with the others waits for rank 0 to record the stop.
RECORD_WAIT_S = 30.0


def _await_record(run_dir: Path, timeout_s: float = RECORD_WAIT_S) -> None:
    """A rank > 0, stopped with the others: waits (up to ``timeout_s``) until rank 0 has
    recorded the job's outcome. A launcher that ends a job's processes once one of them has
    exited (torchrun, srun's --kill-on-bad-exit) would otherwise stop rank 0 while it writes
    results.json and closes W&B."""
    deadline = time.monotonic() + timeout_s
    while record.status(run_dir) == record.RUNNING and time.monotonic() < deadline:
        time.sleep(0.1)


def _skip_completed(job: Job) -> dict[str, float]:
    print(f"[vaesweep] skipping {job.run_dir.name}: already completed", file=sys.stderr)
    return (record.read(job.run_dir) or {}).get("metrics") or {}


def _run_claimed(
    cfg: DictConfig,
    job: Job,
    torch_threads: int,
    signals: StopSignals,
    execute: Execute | Exception,
) -> dict[str, float] | None:
    """The rest of ``run`` for a job this process holds the claim on, while ``signals``
    handles the stop signals. A signal stops the job at its next safe point and records
    ``interrupted`` with the step (JobInterrupted propagates)."""
    for directory in (job.run_dir, job.run_dir / "checkpoints"):
        remove_stale_temps(directory)  # left by a process killed mid-write
    # Again, now that the job is ours: another process may have finished it meanwhile.
    status = left_alone(job.run_dir, cfg.sweep.rerun_failed)
    if status == COMPLETED:
        return _skip_completed(job)
    if status is not None:
        retest = retest_from(job.run_dir, cfg) is not None  # it failed after its fit
        raise JobNotRerun(
            f"{job.run_dir.name} holds a {status} result: not re-run "
            "(pass sweep.rerun_failed=true to re-run failed and diverged jobs"
            + ("; its fit had completed: it is then tested again from checkpoints/last.ckpt, "
               "not trained again)" if retest else ")")
        )  # fmt: skip
    previous, resume_from = _resume_point(job, cfg)
    if isinstance(execute, Exception):  # this process cannot run the driver
        _settle_unavailable(cfg, job, execute, previous, resume_from)
    try:
        validate_config(cfg, None if job.multirun else job.overrides)
        # Data files that are not there: named now, before the record opens (an interrupted
        # job keeps its record and checkpoints for when they are).
        check_available(cfg.data.get("name"), cfg.data.get("root"), bool(cfg.data.get("download")))
    except (ConfigError, DatasetNotFoundError) as e:
        _settle_refused(cfg, job, e, previous, resume_from)
    if resume_from is None:
        _remove_replaced_checkpoints(job.run_dir)
    earlier = _stat(job.run_dir / RESULTS_FILE)  # to restore it as it was (a refusal below)
    run_record = _open_record(cfg, job, previous, resume_from)
    status = record.FAILED
    try:
        if resume_from is not None:
            verify_checkpoint(resume_from)  # a damaged file is reported, never resumed
        record.write_identity(job.run_dir, run_record.data["config"])  # before any checkpoint
        metrics = execute(cfg, job, run_record, resume_from, torch_threads, signals)
        unearned = record.unearned(metrics)
        if unearned:  # a model whose test score is not a number has not earned "completed"
            raise NonFiniteScore(unearned, metrics)
        signals.check_claim()  # the result is written only by the claim's holder
        _tell_unavailable(run_record, metrics)
        run_record.finish(COMPLETED, metrics=metrics)  # before W&B is closed (finally)
        status = COMPLETED
    except claims.ClaimLost:  # the directory is the new holder's: no record, no W&B status
        raise
    except NonFiniteScore as e:
        signals.check_claim()  # each outcome below is written only by the claim's holder
        status = record.DIVERGED
        run_record.finish(status, metrics=e.metrics, error=e)
        log.error("run diverged: %s (results: %s)", e, run_record.path)
        raise
    except DivergenceError as e:
        signals.check_claim()
        status = record.DIVERGED
        run_record.finish(status, error=e, step=e.step)
        log.error("run diverged: %s (results: %s)", e, run_record.path)
        raise
    except ConfigError as e:
        signals.check_claim()
        if previous is not None or resume_from is not None:
            # Refused in the driver (a GPU not visible here, a trainer setting): an earlier
            # attempt continues, so its record and checkpoints stay for a relaunch.
            _restore_record(run_record.path, previous, earlier)
            _tell_kept(job, e)
            raise
        run_record.finish(status, error=e)
        log.error("bad config: %s (results: %s)", e, run_record.path)
        raise
    except BaseException as e:
        signals.check_claim()  # failed or stopped after another process took the job over?
        # A stop signal came: JobInterrupted, Lightning's SIGTERMException, or what it caused.
        if signals.received:
            status = record.INTERRUPTED
            stop = signals.exception()
            run_record.finish(status, error=stop, step=stop.step)
            log.warning("run interrupted: %s (results: %s)", stop, run_record.path)
            if not job.multirun:  # a sweep's own line names its command (finish_sweep)
                _tell_how_to_continue(job.run_dir)
            raise stop from None
        if _keeps_earlier(e, run_record, previous, resume_from):
            # Nothing of this attempt was computed (the data could not be read or
            # downloaded here, ...): the earlier attempt's record and checkpoints stay. Never
            # a failed record in their place: a DatasetNotFoundError there reads as a job
            # refused before it trained (record.refused), whose relaunch deletes the
            # checkpoints and trains from step 0.
            _restore_record(run_record.path, previous, earlier)
            _tell_kept(job, e)
            # W&B (started inside the fit) shows the status the record is left with.
            status = str((previous or {}).get("status") or record.INTERRUPTED)
            raise
        run_record.finish(status, error=e)
        log.exception("run failed: %s: %s (results: %s)", type(e).__name__, e, run_record.path)
        raise
    finally:
        # After results.json has the outcome; never raises (a warning names the W&B run).
        finish_wandb(None if signals.claim_lost else status, job.run_dir)
    if not job.multirun:  # a sweep's job tells its outcome in one line (_tell_outcome)
        log.info("completed: %s", run_record.path)
    return metrics


def _tell_unavailable(run_record: RunRecord, metrics: dict[str, float]) -> None:
    """Warns of the metrics a completed run could not compute (not finite numbers)."""
    lost = record.not_finite(metrics)
    if lost:  # e.g. test/mse of a likelihood without a mean (a Cauchy's is undefined)
        log.warning(
            "metrics that could not be computed for this run's components (recorded under "
            "'unavailable' in %s): %s",
            run_record.path.name,
            ", ".join(f"{k}={v}" for k, v in lost.items()),
        )


def _tell_how_to_continue(run_dir: Path) -> None:
    """Logs the command that resumes an interrupted single run (its directory named); never
    raises: the stop that called it must reach the caller."""
    try:
        command = command_again("hydra.run.dir", run_dir)
        note = launcher_note()  # torchrun, srun: their prefix is not in this command line
        log.warning("continue it with: %s%s", command, f"\n{note}" if note else "")
    except Exception:  # noqa: BLE001 (a hint only)
        log.debug("no command to continue with", exc_info=True)


def _keeps_earlier(
    error: BaseException,
    run_record: RunRecord,
    previous: dict[str, Any] | None,
    resume_from: Path | None,
) -> bool:
    """Whether a failure leaves the earlier attempt's record and checkpoints as they were
    (:func:`_restore_record`): the attempt continues one (``previous`` or ``resume_from``:
    :func:`_resume_point`) and failed before it began to compute (``run_record.training``:
    the data not found or not readable, the model or trainer not built), so it changed
    nothing of the run. Not for a DamagedCheckpoint (the checkpoint to resume from is
    damaged: the run cannot continue, recorded failed) nor for what is not an Exception."""
    return (
        (previous is not None or resume_from is not None)
        and not run_record.training
        and isinstance(error, Exception)
        and not isinstance(error, DamagedCheckpoint)
    )


def _tell_kept(job: Job, error: BaseException) -> None:
    """Logs why an attempt that continues an earlier one did not run, and that the earlier
    one's record and checkpoints are kept (for the relaunch that resumes it)."""
    if isinstance(error, ConfigError):
        what, then = "bad config", "the corrected command"
    elif isinstance(error, DatasetNotFoundError):
        what, then = "data not found", "the same command, once they are there,"
    else:
        what, then = f"not run ({type(error).__name__})", "the same command, once that is fixed,"
    log.error(
        "%s: %s (not run; %s and its checkpoints are kept: %s resumes it)",
        what,
        error,
        job.run_dir,
        then,
    )
    # The terminal's second line, after the error's own (task): a relaunch with
    # sweep.rerun_failed=true is not what it needs.
    with contextlib.suppress(AttributeError, TypeError):
        setattr(
            error,
            KEPT_ATTR,
            f"{job.run_dir.name}: nothing of this attempt was computed; the earlier attempt's "
            f"record and checkpoints are kept: {then} resumes it",
        )


def _settle_unavailable(
    cfg: DictConfig,
    job: Job,
    unavailable: Exception,
    previous: dict[str, Any] | None,
    resume_from: Path | None,
) -> NoReturn:
    """A job this process holds but cannot run (see :func:`run`): recorded ``failed``, or
    kept as it is when an earlier attempt continues (``interrupted``, ``running``, or a lost
    results.json beside the last checkpoint: :func:`_resume_point`); raises
    ``unavailable``."""
    if previous is not None or resume_from is not None:
        log.error(
            "not run in this process: %s; its results.json and checkpoints are kept for a relaunch",
            unavailable,
            exc_info=unavailable,
        )
        raise unavailable
    run_record = _open_record(cfg, job, previous, resume_from)
    run_record.finish(record.FAILED, error=unavailable)
    log.error("run failed: %s (results: %s)", unavailable, run_record.path, exc_info=unavailable)
    raise unavailable


def _settle_refused(
    cfg: DictConfig,
    job: Job,
    refusal: ConfigError | DatasetNotFoundError,
    previous: dict[str, Any] | None,
    resume_from: Path | None,
) -> NoReturn:
    """A job refused before it trains, by its config or by data files that are not there:
    recorded ``failed`` with the refusal (a relaunch checks it again, without
    sweep.rerun_failed: :func:`record.refused`), or, when an earlier attempt continues, its
    record and checkpoints left as they are, so that the corrected command (or the same one,
    once the data are there) resumes it; raises ``refusal``."""
    if previous is not None or resume_from is not None:
        _tell_kept(job, refusal)
        raise refusal
    what = "bad config" if isinstance(refusal, ConfigError) else "data not found"
    run_record = _open_record(cfg, job, previous, resume_from)
    run_record.finish(record.FAILED, error=refusal)
    log.error("%s: %s (results: %s)", what, refusal, run_record.path)
    raise refusal


def _remove_replaced_checkpoints(run_dir: Path) -> None:
    """Before an attempt that starts from step 0 writes anything: the checkpoints an earlier
    attempt left (a failed or diverged run trained again, possibly under another config) are
    deleted, so that an attempt stopped before its first checkpoint is never resumed from
    them (nor tested from a stale ``best.ckpt``)."""
    directory = run_dir / "checkpoints"
    stale = sorted(directory.glob("*.ckpt")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info(
            "removed the earlier attempt's checkpoints (%s): this attempt starts from step 0",
            ", ".join(p.name for p in stale),
        )


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _restore_record(
    path: Path, previous: dict[str, Any] | None, earlier: os.stat_result | None
) -> None:
    """results.json as the earlier attempt left it (``previous``, with its times ``earlier``:
    the sweep's outcome line then takes the job for one this launch did not run), or none at
    all where it was lost (the checkpoint and identity.json still say whose it is)."""
    if previous is None:
        path.unlink(missing_ok=True)
        return
    write_json_atomic(path, previous)
    if earlier is not None:
        os.utime(path, ns=(earlier.st_atime_ns, earlier.st_mtime_ns))


def _resume_point(job: Job, cfg: DictConfig) -> tuple[dict[str, Any] | None, Path | None]:
    """The earlier attempt's record that this one continues (None: a new job, a failed one
    re-run from the start, or a lost results.json) and the checkpoint to resume from (None:
    from the start). A job that failed after its fit had completed (re-run: the policy left
    it alone otherwise) resumes from its last checkpoint: tested again, not trained again."""
    last = job.run_dir / "checkpoints" / "last.ckpt"
    previous = record.read(job.run_dir)
    if previous is None and last.exists() and stored_identity(job.run_dir)[0] is not None:
        # results.json lost or damaged: identity.json (or the checkpoint itself) says it is this
        # config's (the policy refused the directory otherwise).
        return None, last
    if record.untested(previous):  # completed without a test score: its test runs again
        return previous, last if last.exists() else None
    retest = retest_from(job.run_dir, cfg) if record.failed_after_fit(previous) else None
    if retest is not None:
        log.info(
            "%s failed after its fit had completed (%s): tested again from %s, not trained again",
            job.run_dir.name,
            ((previous or {}).get("error") or {}).get("type") or "an error",
            retest.relative_to(job.run_dir),
        )
        return previous, retest
    if previous is None or previous.get("status") not in CONTINUED:
        return None, None  # a new job, or a failed one re-run from the start
    return previous, last if last.exists() else None


def _open_record(
    cfg: DictConfig, job: Job, previous: dict[str, Any] | None, resume_from: Path | None
) -> RunRecord:
    """The job's record ("running"), continuing ``previous``, the earlier attempt's (time
    spent, attempts, W&B run), resumed from ``resume_from`` (:func:`_resume_point`)."""
    if resume_from is not None and previous is None:
        log.warning("resuming %s from %s (its %s is lost)", job.run_dir, resume_from, RESULTS_FILE)
    elif resume_from is not None:
        log.info("resuming %s from %s", job.run_dir, resume_from)
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
    run_record = RunRecord(
        job.run_dir,
        config=config,
        overrides=job.overrides,
        seed=config.get("seed"),  # None for a config refused without one (~seed)
        job_name=job.name,
        sweep_dir=None if job.sweep_dir is None else str(job.sweep_dir),
        previous=previous,
        wandb_run_id=wandb_id,
        resumed=resume_from is not None,
    )
    return run_record


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
    - local_parallel, joblib or Ray (a job in a worker process): returns, the same way;
      the launching process, signalled too, stops the sweep.
    - Hydra's basic launcher (jobs in the launching process): the sweep stops
      (SweepStopped; the entry point writes the summary and exits 128 + the signal).
    - A single run: exits with 128 + the signal number.
    """
    launcher = _launcher()
    try:
        stop.hand_over()  # submitit: may requeue and exit; the sweep guard: SweepStopped
    except Exception as e:  # submitit's UncompletedJobError: not requeued
        print(f"[vaesweep] {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    if launchers.jobs_elsewhere(launcher):
        return
    if launcher:
        stop_sweep(stop.signum)
    raise SystemExit(stop.exit_code)


def task(cfg: DictConfig, execute: Execute | Exception) -> None:
    """One job of a run or a sweep, as Hydra's task runs it (``execute``: the driver's
    :func:`vaesweep.run.driver.fit_and_test`, or why it cannot run here): :func:`run`, then
    how its outcome ends it.

    In a multirun a job's failure is recorded in its results.json and does not stop the
    other jobs; the sweep's summary then names it and the sweep exits non-zero. A stop
    signal (Ctrl-C, SIGTERM, SIGUSR1/2) does stop the sweep: the job records
    ``interrupted``, no further job starts, the summary so far is written, and the process
    exits with 128 + the signal number; under submitit the job is requeued instead
    (:func:`_stopped`). So does a signal that came while the job ran when the job then
    ended otherwise (refused, diverged, failed: recorded so, and said in its one line).
    """
    quiet_console()  # one line per failure on the terminal; tracebacks in the job's log file
    tidy_logging()  # each library message once, without the noise of our own calls
    started, stamps = time.time(), os.environ.get(TIMESTAMPS_ENV)
    try:
        run(cfg, execute)
    except JobInterrupted as stop:
        if isinstance(stop.ended_by, Exception):  # the job's own outcome first, as below
            report_failure(stop.ended_by, job_label())
            _tell_retest(cfg)
        print(f"[vaesweep] {stop}", file=sys.stderr, flush=True)
        _stopped(stop)
    except Exception as error:
        report_failure(error, job_label())  # one line; the traceback goes to train.log
        kept = getattr(error, KEPT_ATTR, None)
        if kept:
            print(f"[vaesweep] {kept}", file=sys.stderr, flush=True)
        elif not isinstance(error, JobNotRerun):  # whose own line says it
            _tell_retest(cfg)
        if HydraConfig.get().mode.name == "MULTIRUN":
            return
        raise SystemExit(1) from None
    finally:
        _tell_outcome(started)
        if stamps:
            job = HydraConfig.get().job.override_dirname or "default"
            append_timestamp(stamps, "job_start", t=started, job=job)
            append_timestamp(stamps, "job_end", job=job)


def _tell_retest(cfg: DictConfig) -> None:
    """After a failure: where the job failed once its fit had completed, says that
    sweep.rerun_failed=true tests it again from its last checkpoint, without training it
    again (the failure's own advice may say to re-run it). Never raises."""
    try:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if process_rank() != 0 or retest_from(run_dir, cfg) is None:
            return
    except Exception:  # noqa: BLE001 (a hint only)
        return
    label = job_label()
    print(
        f"[vaesweep] {f'{label}: ' if label else ''}its fit had completed: the same command "
        "with sweep.rerun_failed=true tests it again from checkpoints/last.ckpt, without "
        "training it again",
        file=sys.stderr,
        flush=True,
    )


def _tell_outcome(started: float) -> None:
    """In a multirun, one line with the job's outcome (after Hydra's ``#k : overrides``)
    when this process ran it; a job it skipped has said so already."""
    hc = HydraConfig.get()
    if hc.mode.name != "MULTIRUN" or process_rank() != 0:
        return
    run_dir = Path(hc.runtime.output_dir)
    try:
        if (run_dir / RESULTS_FILE).stat().st_mtime < started:
            return  # skipped: the result is an earlier one
    except OSError:
        return
    result = record.read(run_dir)
    if result is None:
        return
    total = (read_sweep(job_sweep_dir(hc)) or {}).get("n_jobs")
    story = job_story(
        int(hc.job.num),
        total,
        str(result.get("status")),
        time.time() - started,
        result.get("metrics"),
    )
    log.info(story)


def _first_set(value: Any, default: Any) -> Any:
    return default if value is None or value == "" else value


def gpus_for(accelerator: Any, devices: Any) -> Any:
    """The GPUs a job asks a scheduler for (hydra/launcher=slurm's ``gpus_per_node``):
    none for ``trainer.accelerator=cpu``, else ``trainer.devices``."""
    return 0 if str(accelerator) == "cpu" else devices


#: The answer of ``_config_subdir`` for each config it was asked about: id of the config ->
#: (a weak reference to it, the arguments, the answer).
_SUBDIRS: dict[int, tuple[weakref.ref, tuple[str, bool, float], str | None]] = {}


def _config_subdir(
    run_dir: str, rerun_failed: bool, claim_timeout_s: float, _root_: DictConfig
) -> str | None:
    """The resolver of ``hydra.output_subdir``: :func:`config_subdir`, given the job's
    config (OmegaConf passes the root of the config being resolved as ``_root_``).

    Ranks > 0 of a job (srun's, torchrun's tasks) write no ``.hydra`` files: rank 0 does, as
    with Lightning's own ddp launcher (which sets ``hydra.output_subdir=null`` for them).
    One config gets one answer: Hydra reads ``hydra.output_subdir`` twice in a row (is it
    None? then the path), and the directory may change in between. A rank 1 whose second
    reading saw rank 0's claim, taken meanwhile, got None and failed with "TypeError:
    expected str, bytes or os.PathLike object, not NoneType" (the job's other ranks then
    waited for it), as could a launch racing another for the job."""
    if process_rank() != 0:
        return None
    args = (run_dir, rerun_failed, claim_timeout_s)
    held = _SUBDIRS.get(id(_root_))
    if held is not None and held[0]() is _root_ and held[1] == args:
        return held[2]
    answer = config_subdir(run_dir, rerun_failed, claim_timeout_s, _root_)
    for key in [key for key, (ref, _, _) in _SUBDIRS.items() if ref() is None]:
        del _SUBDIRS[key]  # configs gone
    _SUBDIRS[id(_root_)] = (weakref.ref(_root_), args, answer)
    return answer


def register_resolvers() -> None:
    """The resolvers ``vaesweep/conf/train.yaml`` uses (idempotent); Hydra copies their cache
    into every job, so a sweep's id is the same in the launcher and in its jobs."""
    resolvers = {
        "vaesweep.job_dir": (job_dirname, False),
        "vaesweep.uid": (lambda: secrets.token_hex(2), True),  # cached: one id per sweep
        "vaesweep.either": (_first_set, False),
        "vaesweep.config_subdir": (_config_subdir, False),
        "vaesweep.gpus_for": (gpus_for, False),
    }
    for name, (fn, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)
