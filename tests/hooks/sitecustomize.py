"""Test-only pause points, loaded into the subprocesses the tests start (``pause.env``).

``VAESWEEP_PAUSE_AT="<point>[@<n>]:<marker file>"``: at that point (only the n-th time it is
reached, with ``@<n>``) the process appends its pid (a line) to the marker file and waits
until ``<marker file>.release`` exists, a stop signal has been received (by a job or by the
sweep's guard), or it is killed. The tests use it to SIGKILL or signal a job or a search in
a precise phase. The points, each a wrapper around a public function or method of vaesweep
(or, for a search, of Hydra or Optuna):

- ``claimed``: the job's claim is held, nothing else done yet (``claims.acquire`` returned);
- ``data``: the job's data are loaded (a ``VAEDataModule`` built), its stop handlers in
  place, nothing checked against the data or trained yet;
- ``train_batch``: a training batch done (``Resumable.on_train_batch_end``, before it checks
  signals): with ``@1``, in the first epoch, before any checkpoint of this attempt;
- ``epoch_end``: an epoch trained, validated, checkpointed (``Resumable.on_train_epoch_end``);
- ``fit_end``: the fit is over, its checkpoints written, the test not begun
  (``Resumable.on_fit_end``);
- ``test``: after a test batch (``Resumable.on_test_batch_end``, before it checks signals);
- ``images``: between the two image grids (``reconstructions.png`` written);
- ``result_write``: the final results.json complete in its temp file, not yet renamed;
- ``between_jobs``: a job has finished, the next has not started (``jobs.run`` returned);
- ``search_checks``: a search is being checked, no trial has run (before the search's
  ``check_configs``, which composes the trials' configs);
- ``between_trials``: a search's trial has been told to Optuna, the next not yet proposed
  (``search.trials.settle`` returned);
- ``sampler``: Optuna's sampler is proposing a trial (``TPESampler.sample_independent``);
- ``compose``: Hydra's launcher is composing a trial's config (``load_sweep_config``);
- ``driver_import``: the process starts importing the training stack
  (``vaesweep.run.driver``: before a single run's or a basic sweep's first job, or at a
  worker's first job);
- ``summary_run``: the sweep's W&B summary run is open, nothing logged to it yet
  (``wandb.init`` returned a run of job type ``summary``).

Only the modules a point needs are imported here: Lightning (``vaesweep.run.callbacks``,
``vaesweep.data.datamodule``) for ``data``, ``train_batch``, ``epoch_end``, ``fit_end``,
``test`` and ``images`` only, so that the other points leave the processes' own import of
the training stack as it is.

``VAESWEEP_RECORD_IMPORT="<module>:<marker file>"``: a process that imports ``<module>``
appends its pid (a line) to the marker file, once, when the import starts (the tests use
it to see which processes of a sweep load the training stack).

``VAESWEEP_FAIL_AT="<point>"``: a failure injected at that point (the tests use it to see
that a job's outcome survives it):

- ``wandb_finish``: ``wandb.finish`` closes the run, then raises a RuntimeError (as when
  W&B's service goes away, or its finish times out);
- ``images``: the disk is full as the job writes ``images.npz`` (after its fit and its
  test: ``np.savez`` raises ENOSPC);
- ``test``: the host's memory runs out in the job's IWAE test (``VAE.test_step`` raises
  torch's CPU allocator error), after its fit;
- ``first_batch``: the memory runs out in the attempt's first training batch
  (``VAE.training_step`` raises torch's CUDA out-of-memory error: a job resumed on a
  smaller GPU), inside the fit, before any step.

Nothing here is imported unless a variable is set, and nothing of it ships in the package.
"""

from __future__ import annotations

import functools
import importlib.abc
import os
import sys
import time
from pathlib import Path

PAUSE_ENV = "VAESWEEP_PAUSE_AT"
IMPORT_ENV = "VAESWEEP_RECORD_IMPORT"
FAIL_ENV = "VAESWEEP_FAIL_AT"
_signalled = False
_reached: dict[str, int] = {}


def _note_pid(marker: str | Path) -> None:
    """Appends this process's id (a line) to the marker file."""
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")


def _pause(point: str) -> None:
    spec = os.environ.get(PAUSE_ENV, "")
    where, _, marker = spec.partition(":")
    name, _, nth = where.partition("@")
    if name != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if nth and _reached[point] != int(nth):
        return
    marker = Path(marker)
    _note_pid(marker)
    release = marker.with_name(f"{marker.name}.release")
    while not release.exists() and not _signalled:
        time.sleep(0.05)


def _after(obj, name: str, point: str, when=lambda *a, **k: True) -> None:
    original = getattr(obj, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        if when(*args, **kwargs):
            _pause(point)
        return out

    setattr(obj, name, wrapper)


def _before(obj, name: str, point: str) -> None:
    original = getattr(obj, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        _pause(point)
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)


def _notice_signals(cls) -> None:
    """A stop signal received by a job (StopSignals) or a sweep's guard ends the hold."""
    handle = cls._handle

    def noticing(self, signum, frame):
        global _signalled
        _signalled = True
        return handle(self, signum, frame)

    cls._handle = noticing


class _OnFirstImport(importlib.abc.MetaPathFinder):
    """Calls ``action`` when this process first imports ``module``; finds nothing itself."""

    def __init__(self, module: str, action) -> None:
        self.module, self.action, self.done = module, action, False

    def find_spec(self, name, path, target=None):
        if name == self.module and not self.done:
            self.done = True
            self.action()
        return None


def _install() -> None:
    from vaesweep.run import claims, jobs, record, signals

    point = os.environ[PAUSE_ENV].partition(":")[0].partition("@")[0]
    for cls in (signals.StopSignals, signals.SweepGuard):
        _notice_signals(cls)
    if point in ("train_batch", "epoch_end", "fit_end", "test", "images"):
        from vaesweep.run import callbacks
    if point == "claimed":
        _after(claims, "acquire", "claimed")
    elif point == "data":
        from vaesweep.data.datamodule import VAEDataModule

        _after(VAEDataModule, "__init__", "data")
    elif point == "driver_import":
        sys.meta_path.insert(0, _OnFirstImport("vaesweep.run.driver", lambda: _pause(point)))
    elif point == "train_batch":
        _before(callbacks.Resumable, "on_train_batch_end", "train_batch")
    elif point == "epoch_end":
        _after(callbacks.Resumable, "on_train_epoch_end", "epoch_end")
    elif point == "fit_end":
        _after(callbacks.Resumable, "on_fit_end", "fit_end")
    elif point == "test":
        _before(callbacks.Resumable, "on_test_batch_end", "test")
    elif point == "images":
        _after(
            callbacks,
            "save_image_grid",
            "images",
            when=lambda grid, path, **k: Path(path).name == "reconstructions.png",
        )
    elif point == "between_jobs":
        _after(jobs, "run", "between_jobs")
    elif point == "search_checks":
        from vaesweep.sweep.search import driver

        _before(driver, "check_configs", "search_checks")
    elif point == "between_trials":
        from vaesweep.sweep.search import trials

        _after(trials, "settle", "between_trials")
    elif point == "sampler":
        import optuna

        _before(optuna.samplers.TPESampler, "sample_independent", "sampler")
    elif point == "compose":
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        _before(ConfigLoaderImpl, "load_sweep_config", "compose")
    elif point == "summary_run":
        import wandb

        from vaesweep.run.loggers import SUMMARY_JOB_TYPE

        _after(
            wandb, "init", "summary_run", when=lambda *a, **k: k.get("job_type") == SUMMARY_JOB_TYPE
        )
    elif point == "result_write":
        finish, replace = record.RunRecord.finish, os.replace
        finishing = []

        def finish_paused(self, *args, **kwargs):
            finishing.append(True)
            try:
                return finish(self, *args, **kwargs)
            finally:
                finishing.pop()

        def replace_paused(src, dst, *args, **kwargs):
            if finishing and Path(dst).name == record.RESULTS_FILE:
                _pause("result_write")
            return replace(src, dst, *args, **kwargs)

        record.RunRecord.finish = finish_paused
        os.replace = replace_paused


def _install_failure() -> None:
    point = os.environ[FAIL_ENV]
    if point == "images":
        import errno

        import numpy as np

        def disk_full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device (test hook images)")

        np.savez = disk_full
        return
    if point == "test":
        from vaesweep.model.module import VAE

        def out_of_memory(self, *args, **kwargs):
            raise RuntimeError(
                "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 "
                "bytes (test hook test)"
            )

        VAE.test_step = out_of_memory
        return
    if point == "first_batch":
        from vaesweep.model.module import VAE

        def cuda_out_of_memory(self, *args, **kwargs):
            raise RuntimeError(
                "CUDA out of memory. Tried to allocate 20.00 GiB (test hook first_batch)"
            )

        VAE.training_step = cuda_out_of_memory
        return
    from vaesweep.run import loggers

    if point != "wandb_finish":
        return
    make_loggers = loggers.make_loggers  # imports wandb for a job that logs to it

    @functools.wraps(make_loggers)
    def making(*args, **kwargs):
        out = make_loggers(*args, **kwargs)
        if "wandb" in sys.modules:
            import wandb

            finish = wandb.finish
            if not getattr(finish, "fails", False):

                @functools.wraps(finish)
                def failing(*a, **k):
                    finish(*a, **k)
                    raise RuntimeError("the W&B service went away (test hook wandb_finish)")

                failing.fails = True
                wandb.finish = failing
        return out

    loggers.make_loggers = making


if os.environ.get(PAUSE_ENV):
    _install()
if os.environ.get(FAIL_ENV):
    _install_failure()
if os.environ.get(IMPORT_ENV):
    _module, _marker = os.environ[IMPORT_ENV].split(":", 1)
    sys.meta_path.insert(0, _OnFirstImport(_module, lambda: _note_pid(_marker)))
