"""Shared helpers: run the real CLI in a subprocess, offline, in a temporary directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_PY = REPO / "run.py"
# A tiny but real budget: digits data, 3 batches of 1 epoch, 10 importance samples.
# A suite started in the background of a shell script (`python -m pytest &`, nohup) inherits
# SIGINT ignored, and so would every process it starts: the tests that send one (Ctrl-C)
# would wait for nothing. Its children get the default disposition back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TINY = [
    "data=digits",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "eval.iwae_k=10",
]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="0")
    env.pop("WANDB_API_KEY", None)
    return env


def run_cli(
    args: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in ``cwd`` (environment ``env``, else :func:`cli_env`); returns
    the completed process (never raises)."""
    return subprocess.run(
        [sys.executable, str(RUN_PY), *args],
        cwd=cwd,
        env=cli_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def results_under(root: Path) -> list[dict]:
    """Every results.json below root, parsed, sorted by run dir."""
    return [json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


# Tiny real sweeps shared by the results, figures and notebook tests (built once per session,
# on first use; see tiny_sweeps.py).
@pytest.fixture(scope="session")
def sweep(tmp_path_factory) -> Path:
    """The 16-run likelihood × scale × β × seed sweep (CSV logger)."""
    import tiny_sweeps

    return tiny_sweeps.likelihood_sweep(tmp_path_factory)


@pytest.fixture(scope="session")
def schedules(tmp_path_factory) -> Path:
    """The beta_schedules study preset, one seed (W&B offline)."""
    import tiny_sweeps

    return tiny_sweeps.schedule_sweep(tmp_path_factory)
