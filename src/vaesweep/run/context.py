"""Where and what one job is: its directory, name, overrides and rank (:class:`Job`, from
Hydra's runtime config), the sweep it belongs to (``sweep.json``, written by
:mod:`vaesweep.sweep.grid` and read here for its grid), and how a job directory is named
from its overrides (so that a relaunch of the same command finds the same ones)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from vaesweep.core import launchers
from vaesweep.core.atomic import move_aside
from vaesweep.core.helpers import bounded

SWEEP_FILE = "sweep.json"
#: The key of a sweep record started anew: the name its unreadable predecessor was moved to.
RESTARTED = "restarted_from"
_from_command_line = False
MAX_DIRNAME = 120  # well below the 255-byte limit of common file systems


#: Held while a launch reads and writes ``sweep.json`` (two launches of one sweep at once).
SWEEP_LOCK_FILE = ".sweep.lock"


@contextlib.contextmanager
def sweep_record_lock(sweep_dir: str | Path) -> Iterator[None]:
    """Holds the sweep's record for one read-modify-write of ``sweep.json``: two launches
    into one directory at once each add their launch (the second used to overwrite the
    first's). An advisory lock on a file beside it, released when the process ends."""
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(sweep_dir) / SWEEP_LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_sweep(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The sweep's record (``sweep.json``), None when there is none."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.exists() else None


def previous_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """The record of a sweep's earlier launches, for a launch about to write it anew: {} when
    there is none. One that cannot be read (edited, or damaged outside vaesweep, which writes
    it atomically) is moved to ``sweep.json.damaged-<time>`` with a warning, and the launch
    starts a new record (``{RESTARTED: that file's name}``): the jobs' own results are
    untouched and skipped or resumed as usual.
    """
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except IsADirectoryError as e:
        data, error = None, e
    else:
        try:
            record = json.loads(data)
            if isinstance(record, dict):
                return record
            error = ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as e:  # not JSON, not UTF-8
            error = e
    aside = move_aside(path, "damaged", data)
    if aside is None:  # another launch moved it first, or wrote a new one: read that
        return previous_sweep(sweep_dir)
    print(
        f"[vaesweep] {path} cannot be read ({type(error).__name__}: {error}); it was moved to "
        f"{aside.name} and this launch starts a new record of the sweep (the jobs' results "
        "are kept: completed jobs are skipped, interrupted ones resumed)",
        file=sys.stderr,
        flush=True,
    )
    return {RESTARTED: aside.name}


def swept_values(job_overrides: list[str], grid_keys: list[str]) -> dict[str, str]:
    """This job's value of every swept key, from its own overrides."""
    values = {}
    for item in job_overrides:
        key, _, value = item.partition("=")
        if key in grid_keys:
            values[key] = value
    return values


def job_dirname(override_dirname: str) -> str:
    """A job directory name from its overrides: readable, one path component, bounded.

    ``/`` in values becomes ``_``; a name longer than MAX_DIRNAME is cut and given a short
    hash of the full name, so distinct grid points never share a directory.
    """
    return bounded(override_dirname.replace(os.sep, "_") or "default", MAX_DIRNAME)


@dataclass
class Job:
    """Where and what one job of a run or sweep is."""

    run_dir: Path
    name: str  # from the overrides; the W&B run name
    overrides: list[str]
    sweep_dir: Path | None  # None outside a multirun
    swept: dict[str, str]  # this job's value of each swept key (multirun)
    n_parallel: int  # jobs sharing this machine at once (local_parallel; Ray: cores / its CPUs)

    @property
    def multirun(self) -> bool:
        return self.sweep_dir is not None

    def torch_threads(self, threads: Any) -> int:
        """The torch CPU threads of this job: the config's ``threads``, or with null the
        usable cores shared among the jobs running at once (``n_parallel``)."""
        if threads:
            return int(threads)
        return max(1, launchers.usable_cores() // self.n_parallel)


def job_sweep_dir(hc: Any) -> Path:
    """The sweep directory of a job (``hc``: its Hydra config, ``HydraConfig.get()``),
    absolute. A relative ``hydra.sweep.dir`` (the default ``outputs/multirun/...``) is taken
    from the directory Hydra started in (``hydra.runtime.cwd``), never from the process's
    directory now: with ``hydra.job.chdir=true`` Hydra has entered the job's directory
    before it calls the task."""
    sweep_dir = Path(str(hc.sweep.dir))
    if not sweep_dir.is_absolute():
        sweep_dir = Path(str(hc.runtime.cwd)) / sweep_dir
    return sweep_dir.resolve()


def current_job() -> Job:
    hc = HydraConfig.get()
    multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
    sweep_dir = job_sweep_dir(hc) if multirun else None
    try:
        overrides = list(hc.overrides.task)
        name = hc.job.override_dirname
    except Exception:  # an override whose interpolation does not resolve ('beta=${nope}'):
        # as typed; the config check refuses it, naming the key
        overrides = [str(o) for o in OmegaConf.to_container(hc.overrides.task, resolve=False)]
        name = OmegaConf.to_container(hc.job, resolve=False).get("override_dirname")
    swept: dict[str, str] = {}
    if sweep_dir is not None:
        sweep_record = read_sweep(sweep_dir)
        swept = swept_values(overrides, list(sweep_record["grid"]) if sweep_record else [])
    launcher = hc.launcher.get("_target_", "") if "launcher" in hc else ""
    # A pool's jobs at once: for local_parallel those of this job's launch (a search's batch).
    n_parallel = launchers.pool_jobs_at_once(hc.launcher) if launchers.is_pool(launcher) else 1
    if launchers.is_ray(launcher):  # the CPUs Ray gave the job (the launcher resolved them)
        cpus = float(hc.launcher.get("cpus_per_job") or 1)
        n_parallel = max(1, round(launchers.usable_cores() / max(cpus, 1e-3)))
    return Job(
        run_dir=Path(hc.runtime.output_dir),
        name=name or "default",
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


def mark_command_line() -> None:
    """Called by the entry point (``run.py``, ``python -m vaesweep``, ``vaesweep-train``):
    this process runs the Hydra app from its own command line, so re-running ``sys.argv``
    (what Lightning's plain ``ddp`` does to start the other ranks) starts the same job."""
    global _from_command_line
    _from_command_line = True


def runs_from_command_line() -> bool:
    """Whether :func:`mark_command_line` was called in this process."""
    return _from_command_line
