"""Tiny real sweeps shared by the results, figures and notebook tests.

conftest.py's session fixtures ``sweep`` and ``schedules`` build them on first use; this
module holds their grids and the helpers the tests share.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, cli_env, run_cli

# 2 likelihoods × 2 scale modes × 2 β × 2 seeds = 16 runs; the scale is logged every step.
LIKELIHOOD_GRID = [
    "-m",
    "likelihood=gaussian,laplace",
    "likelihood.scale=fixed,optimal",
    "beta=0.5,2",
    "seed=0,1",
    *TINY,
    "trainer.log_every_n_steps=1",
    "logger=csv",
]
# The beta_schedules study preset, narrowed to one seed: 5 runs, logged to W&B (offline).
SCHEDULE_GRID = [
    "-m",
    "experiment=beta_schedules",
    "seed=0",
    *TINY,
    "trainer.log_every_n_steps=1",
    "logger=wandb",
]


def build(name: str, args: list[str], factory: pytest.TempPathFactory) -> Path:
    """The sweep directory of ``python run.py ARGS``, in a new temporary directory."""
    root = factory.mktemp(name)
    proc = run_cli([*args, "hydra.sweep.dir=sweep"], root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "sweep"


def likelihood_sweep(factory: pytest.TempPathFactory) -> Path:
    return build("likelihood_sweep", LIKELIHOOD_GRID, factory)


def schedule_sweep(factory: pytest.TempPathFactory) -> Path:
    return build("schedule_sweep", SCHEDULE_GRID, factory)


def copy_results(sweep: Path, dest: Path) -> list[Path]:
    """Copy only the results.json files of a sweep (same relative layout); returns the copies."""
    copies = []
    for path in sorted(sweep.rglob("results.json")):
        target = dest / path.relative_to(sweep)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        copies.append(target)
    return copies


def vaesweep(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``vaesweep ARGS`` (the console script's module) in a subprocess; never raises."""
    return subprocess.run(
        [sys.executable, "-m", "vaesweep.analysis.cli", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
