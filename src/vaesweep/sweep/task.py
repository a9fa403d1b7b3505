"""Hydra's task function, and when a process imports the training stack for it.

The driver (:func:`vaesweep.run.driver.task`) imports Lightning: 2 s and ~100 MB. A process
imports it once (:func:`load_driver`):

- where jobs run in the launching process (a single run, or a sweep with Hydra's basic
  launcher), before the first job makes its directory: the sweep's callback calls
  :func:`load_driver` once the sweep is checked, so a stop signal or an import error there
  leaves no job directory behind, as when the import was part of the command line's own;
- in a launcher's worker (``local_parallel``, Ray, submitit), at its first job: the
  launching process of such a sweep composes, checks and summarises it without Lightning.

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


def task(cfg: DictConfig) -> None:
    """Hydra's task function: one job (:func:`vaesweep.run.driver.task`)."""
    load_driver()(cfg)
