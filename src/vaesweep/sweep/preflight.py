"""Checks of a launch before Hydra creates or writes anything: a refusal is one line on
stderr and exit status 2, never one of Hydra's tracebacks from the middle of a launch.

Called by the multirun's callback (:mod:`vaesweep.sweep.callback`) from ``on_run_start``
and ``on_multirun_start``, which Hydra calls before it makes the run or sweep directory:

- a key given twice on the command line, Hydra's own (``hydra.run.dir``) included: Hydra
  would keep the last value silently (the task's keys are refused by the same check in
  :mod:`vaesweep.run.effective`, but Hydra's never reach the task);
- a ``--config-dir`` file that the launch selects but Hydra never reads (vaesweep's own
  config of that group and name comes first in the search path);
- the ``sweep`` keys, which the claim of a job's directory reads before its config is
  validated (:func:`vaesweep.run.config.check_sweep_keys`);
- a single run: ``sweep.resume`` (a multirun's key: the run would go to a new directory);
  ``hydra.run.dir`` naming a file, or a directory it cannot write;
- a multirun: ``hydra.sweep.dir`` naming a file, a sweep directory or an existing job
  directory of the grid it cannot write (the whole sweep is refused before any job runs:
  Hydra's launchers cannot skip one job, and a job whose log file cannot be opened stops
  the sweep); a ``hydra.sweep.subdir`` other than vaesweep's (its jobs are found by the
  names it gives their directories); the launcher: local_parallel's (or joblib's)
  ``n_jobs``, local_parallel's ``gpus``, ``stop_grace_s`` and keys, Ray's options (keys,
  resources, ``init`` against ``ray.init``, an ``address`` where nothing answers), and
  SLURM's commands for submitit.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaesweep.core import launchers
from vaesweep.core.checks import ConfigError, is_int, is_number
from vaesweep.run.config import CONF_DIR, CONFIG_NAME, check_sweep_keys
from vaesweep.run.effective import repeated_key
from vaesweep.run.gpus import named_gpus
from vaesweep.run.ranks import DECISION_ENV
from vaesweep.sweep.grid import grid_jobs, job_dirs

#: The commands submitit's SLURM executor runs (it fails with a traceback without them).
SLURM_COMMANDS = ("sbatch", "srun")


def refuse(message: str, multirun: bool) -> None:
    """Prints the refusal in one line and exits with status 2."""
    what = "sweep refused, no job was run" if multirun else "run refused, nothing was written"
    print(f"[vaesweep] {what}: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def writable(directory: Path) -> bool:
    """Whether files can be created in ``directory`` (permissions or a read-only mount)."""
    return os.access(directory, os.W_OK | os.X_OK)


def _directory_problem(key: str, value: Any, path: Path) -> str | None:
    """Why ``path`` (the value of ``key``) cannot hold a run's files, else None."""
    if path.exists() and not path.is_dir():
        return (
            f"{key}={value} is invalid: {path} is an existing file, not a directory. "
            f"Allowed: a new or existing directory (move the file away, or choose another "
            f"{key})"
        )
    if path.is_dir() and not writable(path):
        return (
            f"{key}={value} is invalid: the directory {path} is not writable (read-only). "
            f"Allowed: a directory this user can write (make it writable, or choose another "
            f"{key})"
        )
    existing = next((p for p in path.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{key}={value} is invalid: {existing} is an existing file, not a directory"
    if existing is not None and not path.exists() and not writable(existing):
        return (
            f"{key}={value} is invalid: it would be created in {existing}, which is not "
            "writable (read-only)"
        )
    return None


def _overrides(config: DictConfig) -> list[str]:
    """The command line's overrides as typed (an interpolation in one left unresolved)."""
    given = OmegaConf.to_container(config.hydra.overrides, resolve=False)
    return [*given["hydra"], *given["task"]]


def _common(config: DictConfig) -> str | None:
    repeated = repeated_key(_overrides(config))
    if repeated:
        return repeated
    try:
        check_sweep_keys(config)
    except ConfigError as e:
        return str(e)
    return None


def _selected(config: DictConfig, jobs: list[list[str]]) -> set[tuple[str, str]]:
    """(group, option) pairs the launch selects: the composed config's choices and, for a
    grid, every ``group=option`` of its jobs' overrides."""
    choices = OmegaConf.select(config, "hydra.runtime.choices", default={}) or {}
    selected = {(str(g), str(n)) for g, n in choices.items() if n is not None}
    for job in jobs:
        for override in job:
            key, _, value = override.lstrip("+~").partition("=")
            if value and "." not in key and (CONF_DIR / key).is_dir():
                selected.add((key, value))
    return {(g, n) for g, n in selected if not g.startswith("hydra/")}


def shadowed_config(config: DictConfig, jobs: list[list[str]] | None = None) -> str | None:
    """A config of the ``--config-dir`` that the launch selects but Hydra never reads: the
    package's config tree has one of the same group and name, and Hydra reads the package's
    first. The problem (naming both files) unless the two are the same file, else None."""
    sources = OmegaConf.select(config, "hydra.runtime.config_sources", default=[]) or []
    dirs = [
        Path(str(s.get("path")))
        for s in sources
        if s.get("provider") == "command-line" and s.get("schema") == "file"
    ]
    if not dirs:
        return None
    for group, name in sorted(_selected(config, jobs or [])):
        ours = CONF_DIR / group / f"{name}.yaml"
        for directory in dirs:
            theirs = directory / group / f"{name}.yaml"
            if ours.is_file() and theirs.is_file() and ours.read_bytes() != theirs.read_bytes():
                return (
                    f"{group}={name}: {theirs} is never read: vaesweep's own {ours} has the "
                    "same name and Hydra reads the package's config tree before --config-dir; "
                    f"rename yours (e.g. {group}/my_{name}.yaml) and select {group}=my_{name}"
                )
    return None


def run_refusal(config: DictConfig) -> str | None:
    """Why a single run cannot start as asked, else None."""
    problem = _common(config)
    if problem:
        return problem
    resume = config.sweep.get("resume")
    if resume not in (None, ""):
        return (
            f"sweep.resume={resume} is invalid without -m: it continues a sweep (a multirun), "
            "and a single run would ignore it and start a new run elsewhere. Allowed: "
            f"python run.py -m sweep.resume={resume} ... to continue that sweep, or "
            "hydra.run.dir=DIR to continue a single run in DIR"
        )
    run_dir = str(config.hydra.run.dir)
    return _directory_problem("hydra.run.dir", run_dir, Path(run_dir)) or shadowed_config(config)


def launcher_problem(launcher: DictConfig) -> str | None:
    """Why the multirun's launcher cannot start its jobs here, else None."""
    target = str(launcher.get("_target_") or "")
    if launchers.is_pool(target):
        n_jobs = launcher.get("n_jobs")
        cores = launchers.usable_cores()
        if n_jobs is not None and not (
            is_int(n_jobs) and (n_jobs >= 1 or (n_jobs < 0 and cores + 1 + n_jobs >= 1))
        ):
            return (
                f"hydra.launcher.n_jobs={n_jobs!r} is invalid: allowed an integer ≥ 1 (jobs at "
                f"once), or a negative one from -1 (all {cores} CPU cores) to -{cores}"
            )
    if launchers.is_local_parallel(target):
        problem = _local_parallel_problem(launcher, target) or _gpu_ids_problem(
            launcher.get("gpus")
        )
        if problem:
            return problem
    if launchers.is_ray(target):
        return _ray_problem(launcher)
    if launchers.is_submitit(target) and "slurm" in target.lower():
        for key, low in (("tasks_per_node", 1), ("gpus_per_node", 0)):
            try:
                value = launcher.get(key)
                shown = f"={value!r}"
            except Exception as e:  # submitit's typed field refuses a string (devices=auto)
                value, shown = None, f" ({str(e).splitlines()[0]})"
            if not (is_int(value) and value >= low):
                return (
                    f"hydra.launcher.{key}{shown} is invalid: allowed an integer ≥ {low}, "
                    "the number SLURM is asked for (hydra/launcher=slurm sets it from "
                    "trainer.devices: give that as a count, e.g. trainer.devices=2, or set "
                    f"hydra.launcher.{key})"
                )
        missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
        if missing:
            return (
                f"hydra/launcher=slurm needs SLURM on this machine: `{missing[0]}` was not "
                f"found on PATH ({', '.join(missing)} missing; submitit submits the jobs "
                "with sbatch). Run the sweep on a SLURM login node, or drop hydra/launcher "
                "(one job at a time) or use hydra/launcher=local_parallel"
            )
    return None


def _local_parallel_problem(launcher: DictConfig, target: str) -> str | None:
    """A key ``local_parallel`` does not take (``+hydra.launcher.n_job=4``), or a
    ``stop_grace_s`` that is not a number of seconds, else None (the launcher's constructor
    would raise Python's error, naming no allowed value, after sweep.json was written)."""
    from hydra.utils import get_class

    try:
        parameters = inspect.signature(get_class(target)).parameters
    except Exception:  # Hydra names a target that does not import when it instantiates it
        return None
    allowed = [n for n in parameters if n not in ("self", "args", "kwargs")]
    problem = launchers.unknown_key("local_parallel", launcher, allowed)
    if problem:
        return problem
    grace = launcher.get("stop_grace_s", 0)
    if not (is_number(grace) and grace >= 0):
        return (
            f"hydra.launcher.stop_grace_s={grace!r} is invalid: allowed a number of seconds "
            "≥ 0 (how long running jobs get to record interrupted after a second stop "
            "signal, before SIGKILL)"
        )
    return None


def _ray_problem(launcher: DictConfig) -> str | None:
    """What ``hydra/launcher=ray`` refuses in its options before Ray starts (its
    ``check_options``: keys, resources, ``init`` against ``ray.init``), and an ``address``
    where nothing answers; else None. A message for an address that did not answer in time
    is printed, and the launch goes on (Ray then retries)."""
    from hydra_plugins.vaesweep_ray_launcher import ray_launcher

    options = OmegaConf.to_container(launcher, resolve=True)
    try:
        ray_launcher.check_options(options)  # type: ignore[arg-type]
    except ray_launcher.RayLauncherError as error:
        return str(error)
    return ray_launcher.address_problem(options.get("address"))  # type: ignore[union-attr]


def _gpu_ids_problem(gpus: Any) -> str | None:
    """Why ``hydra.launcher.gpus`` of local_parallel is not a list of GPU ids, else None."""
    if gpus is None:
        return None
    items = gpus.split(",") if isinstance(gpus, str) else gpus
    items = [items] if is_int(items) else items
    try:
        ids = [str(x).strip() for x in items]
    except TypeError:
        ids = [""]
    if all(i.isdigit() or i.startswith(("GPU-", "MIG-")) for i in ids):
        try:
            named_gpus(ids)
        except ValueError as error:
            return f"hydra.launcher.gpus={gpus!r} is invalid: {error}"
        return None
    return (
        f"hydra.launcher.gpus={gpus!r} is invalid: allowed null (every visible GPU when the "
        "trainer trains on one), a list of GPU ids as CUDA_VISIBLE_DEVICES names them "
        "(hydra.launcher.gpus=[0,2], or GPU-/MIG- UUIDs), or [] for none"
    )


def _resume_elsewhere(config: DictConfig, sweep_dir: str) -> str | None:
    """``sweep.resume=A`` with ``hydra.sweep.dir=B``: the second wins in Hydra, so the sweep in
    A would not be continued but trained again in B."""
    resume = config.get("sweep", {}).get("resume")
    given = any(o.split("=", 1)[0] == "hydra.sweep.dir" for o in _overrides(config))
    if not resume or not given:
        return None
    if Path(str(resume)).resolve() == Path(sweep_dir).resolve():  # as Hydra uses them
        return None
    return (
        f"sweep.resume={resume} and hydra.sweep.dir={sweep_dir} name two directories: the "
        "sweep would not be continued but run again in the second. Give one of them (they "
        "mean the same: the sweep directory to continue)"
    )


@functools.cache
def default_subdir() -> str:
    """vaesweep's ``hydra.sweep.subdir`` (its config's, unresolved): a job's directory named
    from its overrides."""
    train = OmegaConf.load(CONF_DIR / f"{CONFIG_NAME}.yaml")
    return str(OmegaConf.to_container(train.hydra.sweep, resolve=False)["subdir"])


def subdir_problem(config: DictConfig, search: bool) -> str | None:
    """Why the multirun's ``hydra.sweep.subdir`` cannot be used, else None: vaesweep finds a
    sweep's jobs by the names it gives their directories (to skip or resume them on a
    relaunch, to list those never started, to print the command that continues the sweep),
    so another subdir (``${hydra.job.num}``) would leave every job unfound."""
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    if subdir == default_subdir():
        return None
    names = "trial_0000, trial_0001, ..." if search else "from its overrides (beta=0.5,seed=1)"
    return (
        f"hydra.sweep.subdir={subdir} is not supported: vaesweep names each job's directory "
        f"itself, {names}, and finds the sweep's jobs by those names (to resume or skip them "
        "on a relaunch, and in the summary); with another subdir they would be listed as "
        "never started. Remove hydra.sweep.subdir (hydra.job.config.override_dirname's "
        "exclude_keys, item_sep and kv_sep shape a grid's names)"
    )


def multirun_refusal(config: DictConfig, jobs: list[list[str]] | None = None) -> str | None:
    """Why a multirun cannot start as asked, else None. ``jobs``: the overrides of every
    job of a grid (None for a search, whose jobs are not known in advance)."""
    problem = _common(config)
    if problem:
        return problem
    sweep_dir = str(config.hydra.sweep.dir)
    problem = _resume_elsewhere(config, sweep_dir) or subdir_problem(config, jobs is None)
    if problem:
        return problem
    problem = _directory_problem("hydra.sweep.dir", sweep_dir, Path(sweep_dir))
    if problem:
        return problem
    problem = launcher_problem(config.hydra.launcher) or shadowed_config(config, jobs)
    if problem:
        return problem
    for job_dir in job_dirs(config, jobs or []):
        if job_dir.exists() and not (job_dir.is_dir() and writable(job_dir)):
            what = "not writable (read-only)" if job_dir.is_dir() else "a file"
            return (
                f"the job directory {job_dir.absolute()} is {what}: its job cannot write its log or "
                "results. Make it writable (or move it away), or narrow the sweep to leave "
                "that job out"
            )
    return None


def check_run(config: DictConfig) -> None:
    """Refuses (exit 2) a single run that cannot start as asked. Not in a process that
    Lightning's ``ddp`` started for a job's other rank: it runs the command rank 0 was
    started with, which rank 0 checked, plus the ``hydra.run.dir`` Lightning appends to it
    (a second one, which would look like a user's repeated key)."""
    if os.environ.get(DECISION_ENV):
        return
    problem = run_refusal(config)
    if problem:
        refuse(problem, multirun=False)
    if note := unswept_grid(config):
        print(f"[vaesweep] note: {note}", file=sys.stderr, flush=True)


def unswept_grid(config: DictConfig) -> str | None:
    """A note for a single run of a preset whose grid (``hydra.sweeper.params`` of Hydra's
    basic sweeper) only a multirun runs: without ``-m`` it trains one run with the defaults,
    which may be no run of the study at all. None otherwise, and for a search's preset (its
    best-trial command is a single run on purpose)."""
    sweeper = config.hydra.get("sweeper") or {}
    params = sweeper.get("params") or {}
    if not params or "BasicSweeper" not in str(sweeper.get("_target_", "")):
        return None
    choices = OmegaConf.select(config, "hydra.runtime.choices", default={}) or {}
    preset = next(
        (f"{g}={choices[g]}" for g in ("experiment", "hparams_search") if choices.get(g)),
        "the config",
    )
    return (
        f"{preset} defines a grid ({', '.join(map(str, params))}) that only a multirun runs: "
        "this is one run with the defaults; add -m to run the grid"
    )


def check_multirun(config: DictConfig, search: bool) -> None:
    """Refuses (exit 2) a multirun that cannot start as asked."""
    jobs = None
    if not search:
        params = config.hydra.sweeper.get("params")
        params = OmegaConf.to_container(params, resolve=True) if params else {}
        jobs = grid_jobs(list(config.hydra.overrides.task), params)
    problem = multirun_refusal(config, jobs)
    if problem:
        refuse(problem, multirun=True)
