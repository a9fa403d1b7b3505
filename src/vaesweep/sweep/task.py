"""Hydra's task function, and when a process imports the training stack for it.

The driver (:func:`vaesweep.run.driver.task`) imports Lightning: 2 s and ~100 MB. A process
imports it once (:func:`load_driver`):

- where jobs run in the launching process (a single run, or a sweep with Hydra's basic
  launcher), before the first job makes its directory: the sweep's callback calls
  :func:`load_driver` once the sweep is checked, so a stop signal or an import error there
  leaves no job directory behind, as when the import was part of the command line's own;
- in a launcher's worker (``local_parallel``, Ray, submitit), at its first job: the
  launching process of such a sweep composes, checks and summarises it without Lightning.

When the import fails (a broken torch or Lightning install), nothing trains in that process.
In the launching process the command ends before any job directory is made, with one line
naming the import error (:class:`StackImportFailed`, reported by the entry point). In a
worker each job it is given records ``failed`` with that error in its results.json and the
sweep goes on, as with any failed job; the same command with ``sweep.rerun_failed=true`` runs
them again once the install is mended.

In the command line's process and its workers the import runs as the command line's own
imports do: with the collector paused, then frozen (:mod:`vaesweep.core.heap`). A Python
session that imports vaesweep and runs the task itself freezes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable

from omegaconf import DictConfig

from vaesweep.core import heap
from vaesweep.run import jobs

#: Loggers whose level Lightning's import sets (INFO): a level set before it (Hydra's
#: ``hydra.verbose``) is kept.
_LEVEL_SET_BY_IMPORT = ("lightning.pytorch", "lightning.fabric")
#: The launcher whose jobs run in the launching process.
IN_PROCESS_LAUNCHER = "BasicLauncher"


class StackUnavailable(RuntimeError):
    """The training stack (torch, Lightning, the driver) does not import in this process."""

    def __init__(self, error: Exception) -> None:
        first = (str(error).strip().splitlines() or ["(no message)"])[0]
        super().__init__(
            f"the training stack does not import in {sys.executable} "
            f"({type(error).__name__}: {first}); check its torch and Lightning install"
        )


class StackImportFailed(BaseException):
    """Carries :class:`StackUnavailable` from the sweep's callback to the entry point: Hydra
    turns a callback's ``Exception`` into a warning and goes on to the jobs."""

    def __init__(self, error: StackUnavailable) -> None:
        super().__init__(str(error))
        self.error = error


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


def load_driver_here() -> None:
    """:func:`load_driver` in the launching process, before any job (see the module doc)."""
    try:
        load_driver()
    except Exception as error:
        raise StackImportFailed(StackUnavailable(error)) from error


def task(cfg: DictConfig) -> None:
    """Hydra's task function: one job (:func:`vaesweep.run.driver.task`). Where the driver
    does not import, the job records ``failed`` with the import error (:func:`_unavailable`)."""
    try:
        driver_task = load_driver()
    except Exception as error:
        driver_task = functools.partial(_unavailable, StackUnavailable(error), error)
    driver_task(cfg)


def _unavailable(unavailable: StackUnavailable, error: Exception, cfg: DictConfig) -> None:
    """A job in a process whose training stack does not import: claimed and recorded as any
    job is, its run fails with ``unavailable`` (the import's traceback in its train.log)."""

    def execute(*_: object) -> dict[str, float]:
        raise unavailable from error

    jobs.task(cfg, execute)
