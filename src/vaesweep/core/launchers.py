"""Which kind of launcher a multirun uses, read from its ``_target_``: where its jobs run and
how many share this machine at once. One place for a rule that the sweep's checks, the job's
threads and its stop handling all follow."""

from __future__ import annotations

import os
from typing import Any

#: Launchers that run ``n_jobs`` jobs at once in worker processes of this machine:
#: vaesweep's ``local_parallel`` and Hydra's joblib launcher.
POOL_MARKERS = ("vaesweep_local_launcher", "joblib")
RAY_MARKER = "ray_launcher"
#: The key of a job's ``hydra.launcher`` where ``local_parallel`` writes how many jobs of its
#: launch run at once: min(n_jobs, the jobs of the launch), as its GPU shares count them (a
#: search's batch of 1 under n_jobs=8 runs alone).
JOBS_AT_ONCE_KEY = "jobs_at_once"
SUBMITIT_MARKER = "submitit"


def target_of(launcher: Any) -> str:
    """The launcher config's ``_target_`` (a DictConfig, a dict or the string itself)."""
    if isinstance(launcher, str):
        return launcher
    return str((launcher.get("_target_") if launcher is not None else "") or "")


def is_pool(launcher: Any) -> bool:
    """Jobs in worker processes of this machine, ``n_jobs`` at once."""
    target = target_of(launcher).lower()
    return any(marker in target for marker in POOL_MARKERS)


def is_local_parallel(launcher: Any) -> bool:
    """vaesweep's ``local_parallel`` (which assigns GPUs), not Hydra's joblib."""
    return POOL_MARKERS[0] in target_of(launcher).lower()


def is_hydra_joblib(launcher: Any) -> bool:
    return POOL_MARKERS[1] in target_of(launcher).lower()


def is_ray(launcher: Any) -> bool:
    return RAY_MARKER in target_of(launcher).lower()


def is_submitit(launcher: Any) -> bool:
    return SUBMITIT_MARKER in target_of(launcher).lower()


def jobs_elsewhere(launcher: Any) -> bool:
    """Whether the jobs run in processes other than the launching one (a pool, Ray,
    submitit): they stop through the sweep's stop file, and a stopped job returns."""
    return is_pool(launcher) or is_ray(launcher) or is_submitit(launcher)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: taskset, a SLURM allocation, a
    container's cpuset), else the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def pool_jobs_at_once(launcher: Any) -> int:
    """How many jobs share this machine with a job of a pool launcher (its ``hydra.launcher``
    config): what ``local_parallel`` wrote for the job's launch (:data:`JOBS_AT_ONCE_KEY`),
    else its ``n_jobs`` (Hydra's joblib: every launch counted as n_jobs at once)."""
    written = launcher.get(JOBS_AT_ONCE_KEY)
    if written is not None:
        return jobs_at_once(written)
    return jobs_at_once(launcher.get("n_jobs"))


def jobs_at_once(n_jobs: Any, cores: int | None = None) -> int:
    """``n_jobs`` as a count of jobs at once, in joblib's convention: N ≥ 1 itself, -1 every
    usable core, -k every core but k - 1; None (or anything else) 1. At least 1."""
    cores = cores or usable_cores()
    try:
        n = int(n_jobs)
    except (TypeError, ValueError):
        return 1
    return max(1, n if n > 0 else cores + 1 + n)


def unknown_key(name: str, options: Any, allowed: list[str]) -> str | None:
    """The refusal of the first key of a launcher's config (``options``, a mapping) that the
    launcher ``hydra/launcher=<name>`` does not take (``allowed``: its keys, ``_target_``
    aside), naming the nearest allowed one; else None. Such a key (added with ``+``) would
    fail the launcher's start with Python's ``unexpected keyword argument``, or be ignored."""
    import difflib

    for key in options or {}:
        if key == "_target_" or key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f" (did you mean hydra.launcher.{close[0]}?)" if close else ""
        return (
            f"hydra.launcher.{key}={options[key]!r} is invalid: hydra/launcher={name} has no "
            f"key {key}{hint}. Allowed keys: {', '.join(allowed)}"
        )
    return None
