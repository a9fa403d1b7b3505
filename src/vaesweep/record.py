"""The run's record on disk: ``results.json``, written atomically at every status change.

Schema: status ("running" | "completed" | "failed" | "diverged" |
"interrupted"), metrics (flat dict of floats), config (resolved, plain dict), overrides,
seed, run_dir, sweep_dir, job_name, started_at, finished_at, duration_s, attempts,
wandb_run_id, versions, dataset, error.

A job that continues an interrupted attempt (its results.json says running or interrupted)
keeps the first attempt's ``started_at`` and W&B run id; ``duration_s`` adds up the time of
every attempt and ``attempts`` counts them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from vaesweep.atomic import atomic_open
from vaesweep.interrupt import pause_point

RESULTS_FILE = "results.json"
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
# Earlier results a new attempt continues (resumes) rather than replaces.
CONTINUED = ("running", "interrupted")


def write_json_atomic(
    path: str | os.PathLike[str], obj: Any, before_replace: Callable[[], None] | None = None
) -> Path:
    """Write JSON atomically (temp file beside ``path``, fsync, rename); returns the path."""
    with atomic_open(path, before_replace=before_replace) as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")
    return Path(path)


def json_safe(value: Any) -> Any:
    """Floats that JSON cannot hold (nan, ±inf) become None; containers recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_state(directory: Path) -> dict[str, Any]:
    """Commit and dirty flag of the git work tree holding ``directory`` (None outside git)."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10
        )
        if out.returncode:
            raise RuntimeError(out.stderr)
        return out.stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def versions() -> dict[str, Any]:
    """Python and package versions, plus the git state of the vaesweep source tree."""
    out: dict[str, Any] = {"python": platform.python_version()}
    for package in ("torch", "lightning", "hydra-core", "omegaconf", "wandb", "vaesweep"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    out["git"] = git_state(Path(__file__).resolve().parent)
    return out


class RunRecord:
    """Owns ``<run_dir>/results.json`` for one run; every update rewrites it atomically."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        config: dict[str, Any],
        overrides: list[str],
        seed: int,
        job_name: str,
        sweep_dir: str | None,
        previous: dict[str, Any] | None = None,
        wandb_run_id: str | None = None,
    ) -> None:
        """``previous``: the result of the earlier attempts this one continues, if any."""
        self.path = Path(run_dir) / RESULTS_FILE
        self._t0 = time.monotonic()
        previous = previous or {}
        self._earlier_s = float(previous.get("duration_s") or 0.0)
        self.data: dict[str, Any] = {
            "status": "running",
            "metrics": {},
            "config": config,
            "overrides": list(overrides),
            "seed": seed,
            "run_dir": str(Path(run_dir).resolve()),
            "sweep_dir": sweep_dir,
            "job_name": job_name,
            "started_at": previous.get("started_at") or _now(),
            "finished_at": None,
            "duration_s": None,
            "attempts": int(previous.get("attempts") or 1) + 1 if previous else 1,
            "wandb_run_id": wandb_run_id,
            "versions": versions(),
            "dataset": None,
            "error": None,
        }
        self.write()

    def write(self, before_replace: Callable[[], None] | None = None) -> None:
        """Rewrite results.json; ``duration_s`` becomes the time spent so far."""
        self.data["duration_s"] = round(self._earlier_s + time.monotonic() - self._t0, 3)
        write_json_atomic(self.path, json_safe(self.data), before_replace)

    def set_dataset(self, info: dict[str, Any]) -> None:
        self.data["dataset"] = info
        self.write()

    def finish(
        self,
        status: str,
        metrics: dict[str, float] | None = None,
        error: BaseException | None = None,
        step: int | None = None,
    ) -> None:
        """Record the final status, metrics and (for failed / diverged / interrupted runs)
        the error, with the step for diverged and interrupted ones."""
        if status not in STATUSES[1:]:
            raise ValueError(f"status={status!r}: allowed {list(STATUSES[1:])}")
        self.data["status"] = status
        if metrics:
            self.data["metrics"].update({k: float(v) for k, v in metrics.items()})
        if error is not None:
            self.data["error"] = {"type": type(error).__name__, "message": str(error), "step": step}
        self.data["finished_at"] = _now()
        self.write(before_replace=lambda: pause_point("result_write"))
