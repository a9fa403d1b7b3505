"""The multirun's Hydra callback: what the launching process of a sweep does when the sweep
starts and ends, and while it runs.

Before a single run or a sweep makes its directory, it refuses a launch that cannot start
as asked (:mod:`vaesweep.sweep.preflight`). At the start of a sweep it refuses a bad
``sweep.resume`` and checks and records the sweep (a grid:
:mod:`vaesweep.sweep.grid`; an Optuna search: :mod:`vaesweep.sweep.search`). From start to
end it handles the stop signals (:class:`~vaesweep.run.signals.SweepGuard`): a signal stops
the sweep, in a job or between two, sequential or parallel; the summary of what finished
is written and the process exits with 128 + the signal number. At the end it waits for jobs
another live launch of the same sweep is running, writes the summary and, for a sweep that
ended on its own, calls its ``finishers``, each a callable ``(config, sweep_dir)`` the
config names (the W&B summary run, :class:`vaesweep.analysis.wandb_summary.WandbSweepSummary`),
and exits non-zero, naming the jobs, when any job did not complete. A sweep stopped by a
signal (or ended by an error outside its jobs) gets its summary, not the finishers: the
relaunch that ends it calls them. Through all of this end work a signal is only recorded:
it ends the wait at once, and the process exits with 128 + its number once the work is
done; nothing of it raises into Hydra, which would make an error a warning and exit 0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vaesweep.core import launchers
from vaesweep.core.stack import TRACEBACK_HINT
from vaesweep.run import gpus
from vaesweep.run.claims import CLAIM_FILE, DEFAULT_TIMEOUT_S, HOST, wait_for_others
from vaesweep.run.failures import describe
from vaesweep.run.signals import SweepGuard, SweepStopped
from vaesweep.sweep import preflight
from vaesweep.sweep.grid import finish_sweep, planned_dirs, refuse_bad_resume, start_sweep
from vaesweep.sweep.search import finish_search, is_search, start_search
from vaesweep.sweep.task import jobs_run_here, load_driver_here

#: What runs after the summary is written: (the multirun's config, the sweep directory).
Finisher = Callable[[DictConfig, Path], Any]


def refuse_bad_gpu_use(config: DictConfig) -> None:
    """Before any job: Hydra's joblib launcher with several jobs at once, a GPU trainer and
    several visible GPUs would train every job on the first GPU; a job of a launcher that
    assigns its GPU (Ray, local_parallel with GPUs) with several devices (DDP) is not
    supported. Either is refused (exit 2), naming the way out."""
    launcher = OmegaConf.to_container(config.hydra.launcher, resolve=False)
    trainer = OmegaConf.to_container(config.trainer, resolve=True)
    problem = gpus.piled_gpus_problem(launcher, trainer)
    if problem is None and launchers.is_ray(launcher):
        problem = gpus.one_device_problem(trainer, "ray")
    if problem is None and launchers.is_local_parallel(launcher):
        problem = gpus.one_device_problem(trainer, "local_parallel")
        if problem and not gpus.local_gpus(launcher.get("gpus"), trainer):
            problem = None  # no GPU to assign: its jobs see what this process sees
    if problem:
        print(f"[vaesweep] sweep refused: {problem}", file=sys.stderr)
        sys.exit(2)


@dataclass
class _Running:
    """The multirun this (launching) process runs: its signal guard and where it writes."""

    guard: SweepGuard
    config: DictConfig
    search: bool
    finishers: Sequence[Finisher] = field(default_factory=tuple)
    # A grid's job directories, listed at its start (a glob() needs Hydra's config loader,
    # gone when a signal ends the launch before the summary).
    planned: list[str] | None = None

    @property
    def sweep_dir(self) -> Path:
        return Path(self.config.hydra.sweep.dir)

    def finish(self, ended: bool = False) -> bool:
        """Writes the summary (naming the signal that stopped the sweep, if one did), then,
        for a sweep that ``ended`` on its own and got no signal before its finishers, calls
        them (the W&B copy of the summary: a stopped or aborted sweep gets it from the
        relaunch that ends it), and puts the previous signal handlers back. Until then a
        signal is only recorded (the caller exits with 128 + its number): nothing interrupts
        the summary or a finisher (a KeyboardInterrupt out of wandb.init was a traceback).
        True when every job completed and the summary was written."""
        self.guard.quiet()
        stopped_by = self.guard.signal_name
        try:  # Hydra turns a callback's exception into a warning (and the sweep exits 0)
            try:
                done = self._summary(stopped_by)
            except Exception as e:
                print(
                    f"[vaesweep] sweep summary failed: {type(e).__name__}: {e}",
                    file=sys.stderr,
                    flush=True,
                )
                done = False
            if ended and self.guard.signum is None:
                for finisher in self.finishers:  # none changes `done`
                    try:
                        finisher(self.config, self.sweep_dir)
                    except Exception as e:  # a finisher should report its own failures
                        print(
                            f"[vaesweep] {type(finisher).__name__} failed after the sweep's "
                            f"summary: {type(e).__name__}: {e}",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            self.guard.uninstall()
        return done

    def _summary(self, stopped_by: str | None) -> bool:
        if self.search:
            return finish_search(self.sweep_dir, stopped_by=stopped_by)
        planned = self.planned if self.planned is not None else planned_dirs(self.config)
        rerun = bool(OmegaConf.select(self.config, "sweep.rerun_failed", default=False))
        return finish_sweep(
            self.sweep_dir, stopped_by=stopped_by, planned=planned, rerun_failed=rerun
        )

    def wait_for_others(self) -> None:
        """Waits for the jobs this launch skipped because another live launch of the sweep
        runs them (their claims), so that the summary lists them as they end. A signal
        meanwhile (only recorded: the guard is quiet) ends the wait at once; a claim or a
        directory that cannot be read ends it too: the summary lists those jobs as they
        are."""
        try:
            timeout_s = float(self.config.sweep.get("claim_timeout_s") or DEFAULT_TIMEOUT_S)
            claimed = [p.parent for p in sorted(self.sweep_dir.glob(f"*/{CLAIM_FILE}"))]
            stopped = wait_for_others(
                claimed,
                timeout_s,
                poll_s=min(1.0, timeout_s / 10),
                stop=lambda: self.guard.signum is not None,
            )
        except Exception as e:  # the summary is written all the same
            print(
                "[vaesweep] could not wait for the jobs another launch of this sweep is "
                f"running ({type(e).__name__}: {e}); the summary lists them as they are now",
                file=sys.stderr,
                flush=True,
            )
            return
        if stopped:
            print(
                f"[vaesweep] {self.guard.signal_name}: no longer waiting for the jobs another "
                "launch of this sweep is running; the summary lists them as they are now",
                file=sys.stderr,
                flush=True,
            )


_RUNNING: _Running | None = None


class SweepStartFailed(BaseException):
    """An unexpected error in the start of a multirun (its checks, sweep.json, the stop
    guard), carried to the entry point, which says it and exits 1 before any job: Hydra
    turns a callback's ``Exception`` into a warning and would run the jobs without them."""

    def __init__(self, error: Exception) -> None:
        super().__init__(describe(error))
        self.error = error


def start_failed(failed: SweepStartFailed) -> int:
    """What the entry point does when the start of a multirun failed: one line naming the
    error; returns the exit status, 1."""
    print(
        "[vaesweep] sweep stopped, no job was run: its start (the sweep's checks, sweep.json, "
        f"the stop guard) failed: {describe(failed.error)}{TRACEBACK_HINT}",
        file=sys.stderr,
        flush=True,
    )
    return 1


def finish_stopped(stop: SweepStopped) -> int:
    """What the entry point does when a signal stopped the sweep (SweepStopped: in a job it
    interrupted, which recorded it, or between two jobs): the summary of what finished,
    with the signal named; returns the exit status, 128 + the signal number."""
    global _RUNNING
    running, _RUNNING = _RUNNING, None
    if running is not None:
        running.guard.signum = running.guard.signum or stop.signum
        running.finish()
    return stop.exit_code


def finish_aborted(error: BaseException) -> int:
    """What the entry point does when an error outside the task ended the launch (Hydra
    could not make a job's directory or write its files, a launcher failed): one line
    naming it, then, when a sweep was running, the summary of what finished; returns the
    exit status, 1."""
    global _RUNNING
    running, _RUNNING = _RUNNING, None
    stopped = "sweep stopped: " if running is not None else ""
    print(f"[vaesweep] {stopped}{describe(error)}{TRACEBACK_HINT}", file=sys.stderr, flush=True)
    if running is not None:
        running.finish()
    return 1


class SweepCallback(Callback):
    """See the module doc. ``finishers``: what runs after the summary is written (Hydra
    instantiates them from the config's ``hydra.callbacks.sweep.finishers``)."""

    def __init__(self, finishers: Sequence[Finisher] | None = None) -> None:
        self.finishers = tuple(finishers or ())

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A single run: refused (exit 2) before Hydra makes its directory when it cannot
        start as asked (:mod:`vaesweep.sweep.preflight`); then the training stack is
        imported, still before the directory (:mod:`vaesweep.sweep.task`)."""
        preflight.check_run(config)
        load_driver_here()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """The sweep's checks, its record and its stop guard. An unexpected error here ends
        the launch (:class:`SweepStartFailed`): Hydra would make it a warning and run every
        job without them."""
        global _RUNNING
        try:
            self._start(config)
        except Exception as error:
            if _RUNNING is not None:
                _RUNNING.guard.uninstall()
                _RUNNING = None
            raise SweepStartFailed(error) from error

    def _start(self, config: DictConfig) -> None:
        global _RUNNING
        refuse_bad_resume(config.sweep.get("resume"))
        refuse_bad_gpu_use(config)
        search = is_search(config)
        preflight.check_multirun(config, search)  # before the sweep directory is made
        if not search:
            start_sweep(config)
            self._guard(config, search=False).planned = planned_dirs(config)
            self._load_driver(config)
            return
        # hydra/sweeper=optuna: vaesweep.sweep.search checks and records. Its guard comes
        # first: a signal during the checks (or anywhere later) is recorded, and the search
        # stops at its next safe point.
        running = self._guard(config, search=True)
        try:
            start_search(config)
        except BaseException:  # refused (exit 2): nothing ran, nothing to summarise
            running.guard.uninstall()
            _RUNNING = None
            raise
        self._load_driver(config)

    @staticmethod
    def _load_driver(config: DictConfig) -> None:
        """Jobs in this process: the training stack imported before the first one, under
        the sweep's guard (a signal meanwhile stops the sweep before any job). Jobs in
        workers: they import it, this process never does (:mod:`vaesweep.sweep.task`)."""
        if jobs_run_here(config):
            load_driver_here()

    def _guard(self, config: DictConfig, search: bool) -> _Running:
        global _RUNNING
        # This launch's. Jobs in other processes (a pool, Ray) stop through the sweep's stop
        # file, whose path they get absolute: a job with hydra.job.chdir=true runs in its own
        # directory, a Ray worker of a cluster joined with address=auto where it started.
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        stop_file = sweep_dir / f".stop-{HOST}-{os.getpid()}"
        parallel = launchers.is_pool(config.hydra.launcher) or launchers.is_ray(
            config.hydra.launcher
        )
        guard = SweepGuard(stop_file, parallel=parallel, deferred=search).install()
        _RUNNING = _Running(guard, config, search, self.finishers)
        return _RUNNING

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Jobs this launch skipped because another live launch of the same sweep was
        running them (vaesweep.run.claims) are waited for first, so that the summary reports
        them with their final status, not as unfinished (not when a signal stopped this
        launch, and no longer once one comes). From here on a signal is only recorded: the
        summary names it and the process exits with 128 + its number."""
        global _RUNNING
        running = _RUNNING
        if running is None:  # not started by on_multirun_start (another callback order)
            guard = SweepGuard(Path(config.hydra.sweep.dir) / ".stop", False)
            running = _Running(guard, config, is_search(config), self.finishers)
        running.guard.quiet()
        if running.guard.signum is None:
            running.wait_for_others()
        _RUNNING = None
        done = running.finish(ended=True)
        if running.guard.signum is not None:
            sys.exit(128 + running.guard.signum)
        if not done:
            sys.exit(1)
