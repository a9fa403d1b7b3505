"""Hydra's task function, and when a process imports the training stack for it.

The driver (:func:`vaesweep.run.driver.task`) imports Lightning: 2 s and ~100 MB. A process
imports it once (:func:`load_driver`):

- where jobs run in the launching process (a single run, or a sweep with Hydra's basic
  launcher), before the first job makes its directory: the sweep's callback calls
  :func:`load_driver_here` once the sweep is checked, so a stop signal or an import error there
  leaves no job directory behind, as when the import was part of the command line's own;
- in a launcher's worker (``local_parallel``, Ray, submitit), at its first job: the
  launching process of such a sweep composes, checks and summarises it without Lightning.

When the import fails (a broken Lightning install, or a library it loads), nothing trains
in that process. In the launching process the command ends before any job directory is
made, with one line naming the import error (:class:`StackImportFailed`, reported by the
entry point). In a worker each new job it is given records ``failed`` with that error in its
results.json and the sweep goes on, as with any failed job; the same command with
``sweep.rerun_failed=true`` runs them again once the install is mended. A job that was
``interrupted`` or ``running`` keeps its record (and checkpoint), and resumes then.

In the command line's process and its workers the import runs as the command line's own
imports do: with the collector paused, then frozen (:mod:`vaesweep.core.heap`). A Python
session that imports vaesweep and runs the task itself freezes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable

from omegaconf import DictConfig

from vaesweep.core import heap
from vaesweep.core.stack import StackImportFailed, StackUnavailable
from vaesweep.run import jobs

#: Loggers whose level Lightning's import sets (INFO): a level set before it (Hydra's
#: ``hydra.verbose``) is kept.
_LEVEL_SET_BY_IMPORT = ("lightning.pytorch", "lightning.fabric")
#: The launcher whose jobs run in the launching process.
IN_PROCESS_LAUNCHER = "BasicLauncher"


@functools.cache
def load_driver() -> Callable[[DictConfig], None]:
    """The driver's task, imported once per process."""
    levels = {name: logging.getLogger(name).level for name in _LEVEL_SET_BY_IMPORT}
    with heap.frozen_imports() if heap.launched() else contextlib.nullcontext():
        from vaesweep.run.driver import task as driver_task
    for name, level in levels.items():
        if level != logging.NOTSET:
            logging.getLogger(name).setLevel(level)
    return driver_task


def jobs_run_here(config: DictConfig) -> bool:
    """Whether a multirun's jobs run in the launching process (Hydra's basic launcher)."""
    return IN_PROCESS_LAUNCHER in str(config.hydra.launcher.get("_target_") or "")


@functools.cache
def _driver_or_failure() -> tuple[Callable[[DictConfig], None] | None, Exception | None]:
    """:func:`load_driver`, or the error its import raised: a process tries the import once
    (a retried import of a half-initialised package could fail differently for later jobs)."""
    try:
        return load_driver(), None
    except Exception as error:
        return None, error


def load_driver_here() -> None:
    """:func:`load_driver` in the launching process, before any job (see the module doc)."""
    error = _driver_or_failure()[1]
    if error is not None:
        raise StackImportFailed(StackUnavailable(error)) from error


def task(cfg: DictConfig) -> None:
    """Hydra's task function: one job (:func:`vaesweep.run.driver.task`). Where the driver
    does not import, the job is settled without it (:func:`vaesweep.run.jobs.run`: recorded
    ``failed``, or left to resume when it can)."""
    driver_task, error = _driver_or_failure()
    if error is not None:  # a new exception per job: one raised again gathers every traceback
        jobs.task(cfg, execute=StackUnavailable(error))
    elif driver_task is not None:
        driver_task(cfg)
