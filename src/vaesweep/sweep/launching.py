"""What vaesweep's launchers (``local_parallel``, ``ray``) share: one job's config in its
worker process, how it runs there, and how a job whose worker died is reported.

A launcher hands each worker the sweep's Hydra context, config, task function and Hydra's
singleton state (:data:`Shared`); in the worker, :func:`job_config` composes the job's
config as Hydra's own launchers do, and :func:`run_configured` runs it. A job whose worker
process ended without a result (killed outright, out of memory) is :func:`lost`: said on the
console and returned as a finished job, so that the sweep goes on and writes its summary;
its results.json keeps what it last wrote (``running``), the summary and ``collect`` list it
as ``killed``, and the same command resumes it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from vaesweep.core.checks import ConfigError

#: (Hydra context, the sweep's config, the task function, Hydra's singleton state).
Shared = tuple[HydraContext, DictConfig, TaskFunction, dict[str, Any]]
#: Environment variables of the launching process that every job gets (the sweep's stop
#: file, W&B's mode and keys), also in a worker started before they were set.
FORWARDED_PREFIXES = ("VAESWEEP_", "WANDB_", "CUBLAS_WORKSPACE_CONFIG", "HYDRA_FULL_ERROR")


class LauncherRefused(ConfigError):
    """A launcher's options cannot run these jobs, found before any job starts (a Ray job
    larger than every node): the entry point refuses the sweep in one line, exit 2."""


class SweepLauncher(Launcher):
    """What vaesweep's launchers share of Hydra's Launcher: what ``setup`` is given, the
    start of every launch (:meth:`begin_launch`) and the state sent to the workers
    (:meth:`shared`). Abstract (``launch`` is each launcher's own), so Hydra does not list it
    as a plugin."""

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        # Each job's Hydra job number during a :meth:`launch_numbered` (else consecutive).
        self.numbers: list[int] | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch_numbered(
        self, job_overrides: Sequence[Sequence[str]], numbers: Sequence[int]
    ) -> Sequence[JobReturn]:
        """``launch`` with each job's own Hydra job number (``hydra.job.num``), which need
        not follow one another: a search's relaunch runs a trial left unfinished beside new
        ones, each numbered as its trial."""
        self.numbers = list(numbers)
        try:
            return self.launch(job_overrides, initial_job_idx=self.numbers[0] if numbers else 0)
        finally:
            self.numbers = None

    def job_number(self, initial_job_idx: int, position: int) -> int:
        """The Hydra job number of the job at ``position`` of this launch."""
        if self.numbers is not None:
            return self.numbers[position]
        return initial_job_idx + position

    def begin_launch(self) -> Path:
        """Hydra's globals and logging, as its own launchers set them; the sweep directory,
        made."""
        setup_globals()
        assert self.config is not None and self.task_function is not None
        assert self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return sweep_dir

    def shared(self) -> Shared:
        """What every job's worker needs (:func:`job_config`, :func:`run_configured`)."""
        assert self.config is not None and self.task_function is not None
        assert self.hydra_context is not None
        return (self.hydra_context, self.config, self.task_function, Singleton.get_state())


def forwarded_environment() -> dict[str, str]:
    """The variables of this (launching) process that its jobs must see."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}


def adopt_environment(env: Mapping[str, str]) -> None:
    """In a worker that runs jobs of several launches: the launching process's forwarded
    variables as they are now (one set since an earlier job is set, one unset is removed)."""
    for key in [k for k in os.environ if k.startswith(FORWARDED_PREFIXES) and k not in env]:
        del os.environ[key]
    os.environ.update(env)


def job_config(
    idx: int, overrides: Sequence[str], shared: Shared, **launcher_values: Any
) -> DictConfig:
    """The job's config, set as Hydra's current one (``hydra.job.id``/``num`` as Hydra's
    launchers set them; ``launcher_values``: what the launcher resolved for this job, written
    under ``hydra.launcher``). Its ``hydra.sweep.dir`` is absolute, from the launching
    process's directory (:func:`absolute_sweep_dir`)."""
    hydra_context, config, _, singleton_state = shared
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
        sweep_config.hydra.sweep.dir = str(absolute_sweep_dir(sweep_config, config))
    with open_dict(sweep_config.hydra.launcher):  # a structured config's keys are its own
        for key, value in launcher_values.items():
            sweep_config.hydra.launcher[key] = value
    HydraConfig.instance().set_config(sweep_config)
    return sweep_config


def absolute_sweep_dir(sweep_config: DictConfig, config: DictConfig) -> Path:
    """A job's ``hydra.sweep.dir`` as the launching process means it: a relative one (the
    default ``outputs/multirun/...``) is taken from that process's directory
    (``hydra.runtime.cwd`` of the sweep's ``config``), not the worker's: a Ray worker of a
    cluster joined with ``address=auto`` runs where the cluster was started. The job
    directory's name (``hydra.sweep.subdir``) is unchanged."""
    sweep_dir = Path(str(sweep_config.hydra.sweep.dir))
    if sweep_dir.is_absolute():
        return sweep_dir
    return Path(str(config.hydra.runtime.cwd)) / sweep_dir


def run_configured(sweep_config: DictConfig, shared: Shared) -> JobReturn:
    """Runs the job whose config :func:`job_config` made, in its sweep subdirectory."""
    hydra_context, _, task_function, _ = shared
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def lost(idx: int, overrides: Sequence[str], what: str) -> JobReturn:
    """A job whose worker ended without a result (``what``: how, in a few words): said on the
    console, and returned as a finished job so that the sweep goes on (module doc)."""
    print(
        f"[vaesweep] job #{idx} ({' '.join(filter_overrides(overrides))}): {what}; not "
        "retried. The summary lists it; the command it prints resumes it",
        file=sys.stderr,
        flush=True,
    )
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)
