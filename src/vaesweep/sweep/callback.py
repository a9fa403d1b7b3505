"""The multirun's Hydra callback: what the launching process of a sweep does when the sweep
starts and ends, and while it runs.

At the start it refuses a bad ``sweep.resume`` and checks and records the sweep (a grid:
:mod:`vaesweep.sweep.grid`; an Optuna search: :mod:`vaesweep.sweep.search`). From start to
end it handles the stop signals (:class:`~vaesweep.run.signals.SweepGuard`): a signal stops
the sweep, in a job or between two, sequential or parallel; the summary of what finished
is written and the process exits with 128 + the signal number. At the end it waits for jobs
another live launch of the same sweep is running, writes the summary and calls its
``finishers``, each a callable ``(config, sweep_dir)`` the config names (the W&B summary
run, :class:`vaesweep.analysis.wandb_summary.WandbSweepSummary`), and exits non-zero,
naming the jobs, when any job did not complete.
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

from vaesweep.run import gpus
from vaesweep.run.claims import CLAIM_FILE, DEFAULT_TIMEOUT_S, HOST, wait_for_others
from vaesweep.run.signals import SweepGuard, SweepStopped
from vaesweep.sweep.grid import finish_sweep, refuse_bad_resume, start_sweep
from vaesweep.sweep.search import finish_search, is_search, start_search

#: What runs after the summary is written: (the multirun's config, the sweep directory).
Finisher = Callable[[DictConfig, Path], Any]
#: Launchers whose jobs run in other processes (they stop through the sweep's stop file).
PARALLEL_LAUNCHERS = ("joblib", "ray_launcher")


def refuse_bad_gpu_use(config: DictConfig) -> None:
    """Before any job: local_parallel (joblib) with several jobs at once, a GPU trainer and
    several visible GPUs would train every job on the first GPU; a Ray launcher job with
    several devices (DDP) is not supported. Either is refused (exit 2), naming the way out."""
    launcher = OmegaConf.to_container(config.hydra.launcher, resolve=False)
    trainer = OmegaConf.to_container(config.trainer, resolve=True)
    problem = gpus.piled_gpus_problem(launcher, trainer)
    if problem is None and "ray_launcher" in str(launcher.get("_target_") or ""):
        problem = gpus.ray_devices_problem(trainer)
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

    @property
    def sweep_dir(self) -> Path:
        return Path(self.config.hydra.sweep.dir)

    def finish(self) -> bool:
        """Puts the previous signal handlers back, then writes the summary (naming the
        signal that stopped the sweep, if one did) and calls the finishers (the W&B copy of
        the summary); True when every job completed."""
        self.guard.uninstall()
        stopped_by = self.guard.signal_name
        try:  # Hydra turns a callback's exception into a warning (and the sweep exits 0)
            if self.search:
                done = finish_search(self.sweep_dir, stopped_by=stopped_by)
            else:
                done = finish_sweep(self.sweep_dir, stopped_by=stopped_by)
        except Exception as e:
            print(f"[vaesweep] sweep summary failed: {type(e).__name__}: {e}", file=sys.stderr)
            done = False
        for finisher in self.finishers:  # each reports its own failures; none changes `done`
            finisher(self.config, self.sweep_dir)
        return done


_RUNNING: _Running | None = None


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


class SweepCallback(Callback):
    """See the module doc. ``finishers``: what runs after the summary is written (Hydra
    instantiates them from the config's ``hydra.callbacks.sweep.finishers``)."""

    def __init__(self, finishers: Sequence[Finisher] | None = None) -> None:
        self.finishers = tuple(finishers or ())

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_bad_resume(config.sweep.get("resume"))
        refuse_bad_gpu_use(config)
        search = is_search(config)
        if search:  # hydra/sweeper=optuna: vaesweep.sweep.search checks and records
            start_search(config)
        else:
            start_sweep(config)
        self._guard(config, Path(config.hydra.sweep.dir), search)

    def _guard(self, config: DictConfig, sweep_dir: Path, search: bool) -> None:
        global _RUNNING
        launcher = str(config.hydra.launcher.get("_target_") or "")
        stop_file = sweep_dir / f".stop-{HOST}-{os.getpid()}"  # this launch's only
        parallel = any(name in launcher for name in PARALLEL_LAUNCHERS)
        guard = SweepGuard(stop_file, parallel=parallel).install()
        _RUNNING = _Running(guard, config, search, self.finishers)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Jobs this launch skipped because another live launch of the same sweep was
        running them (vaesweep.run.claims) are waited for first, so that the summary reports
        them with their final status, not as unfinished (not when a signal stopped this
        launch)."""
        global _RUNNING
        sweep_dir = Path(config.hydra.sweep.dir)
        running, _RUNNING = _RUNNING, None
        if running is None:  # not started by on_multirun_start (another callback order)
            guard = SweepGuard(sweep_dir / ".stop", False)
            running = _Running(guard, config, is_search(config), self.finishers)
        if running.guard.signum is None:
            timeout_s = float(config.sweep.get("claim_timeout_s") or DEFAULT_TIMEOUT_S)
            claimed = [p.parent for p in sorted(sweep_dir.glob(f"*/{CLAIM_FILE}"))]
            wait_for_others(claimed, timeout_s, poll_s=min(1.0, timeout_s / 10))
        done = running.finish()
        if running.guard.signum is not None:
            sys.exit(128 + running.guard.signum)
        if not done:
            sys.exit(1)
