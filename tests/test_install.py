"""A wheel install, used as a new user would: from a directory that has nothing of the checkout.

The wheel is built from the project's files, installed (without its dependencies, which
this environment already has) into a fresh virtual environment, and its entry points are
run from an unrelated temporary directory with no PYTHONPATH: the configs must come from
the installed package, and the results must land where the user launched from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import REPO, TINY

pytestmark = pytest.mark.slow

EXAMPLES = REPO / "examples"


def _run(
    cmd: list[str], cwd: Path, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VAESWEEP_DATA_ROOT")
    }
    environment.update(WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="0", **env)
    return subprocess.run(
        cmd, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ directory of a fresh venv with the vaesweep wheel installed."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy: building never writes into the checkout
    shutil.copytree(
        REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = root / "wheels"
    build = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        cwd=root,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("vaesweep-*.whl")
    env_dir = root / "venv"
    # The dependencies (torch, lightning, hydra, ...) come from this environment; vaesweep
    # itself only from the wheel, which the venv's own site-packages puts first.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    bin_dir = env_dir / "bin"
    install = _run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        cwd=root,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return bin_dir


def test_the_installed_package_is_used_with_its_own_configs(installed, tmp_path):
    probe = _run(
        [
            str(installed / "python"),
            "-c",
            "import vaesweep, vaesweep.run.config as c; print(vaesweep.__file__); print(c.CONF_DIR)",
        ],
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    module_file, conf_dir = probe.stdout.split()
    venv_dir = installed.parent
    assert Path(module_file).is_relative_to(venv_dir), module_file
    assert Path(conf_dir).is_relative_to(venv_dir) and (Path(conf_dir) / "train.yaml").is_file()
    # Every config of the checkout's tree is in the wheel.
    ours = sorted(
        p.relative_to(REPO / "src/vaesweep/conf")
        for p in (REPO / "src/vaesweep/conf").rglob("*.yaml")
    )
    shipped = sorted(p.relative_to(conf_dir) for p in Path(conf_dir).rglob("*.yaml"))
    assert shipped == ours


def test_console_script_trains_from_an_unrelated_directory(installed, tmp_path):
    proc = _run(
        [str(installed / "vaesweep-train"), *TINY, "logger=csv", "likelihood=laplace"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = tmp_path.glob("outputs/runs/*/*/results.json")
    record = json.loads(result.read_text())
    assert record["status"] == "completed"
    assert record["config"]["likelihood"]["name"] == "laplace"
    assert record["config"]["data"]["root"] is None  # the one data-root rule: no ./data
    assert not (tmp_path / "data").exists()


def test_python_m_vaesweep_sweeps_and_collects(installed, tmp_path):
    python = str(installed / "python")
    proc = _run(
        [python, "-m", "vaesweep", "-m", "beta=1,2", *TINY, "logger=csv", "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = (tmp_path / "sweep" / "summary.csv").read_text().splitlines()
    assert len(summary) == 3  # header and two jobs
    collect = _run([python, "-m", "vaesweep", "collect", "sweep", "-o", "runs.csv"], cwd=tmp_path)
    assert collect.returncode == 0, collect.stderr[-3000:]
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 3


def test_a_user_config_directory_extends_the_tree(installed, tmp_path):
    """The user's directory adds a likelihood (their own class, from their own module) and a
    primary config that extends ours; nothing of vaesweep is copied or edited."""
    user = tmp_path / "my_configs"
    shutil.copytree(EXAMPLES / "conf", user)
    (user / "mine.yaml").write_text(
        "defaults:\n  - train\n  - override logger: csv\n  - _self_\n\ntrainer:\n  max_epochs: 1\n"
    )
    args = [a for a in TINY if not a.startswith("trainer.max_epochs")]
    proc = _run(
        [
            str(installed / "vaesweep-train"),
            "--config-dir",
            str(user),
            "--config-name",
            "mine",
            "likelihood=student_t",
            *args,
        ],
        cwd=tmp_path,
        PYTHONPATH=str(EXAMPLES),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = tmp_path.glob("outputs/runs/*/*/results.json")
    record = json.loads(result.read_text())
    assert record["status"] == "completed"
    assert record["config"]["logger"]["name"] == "csv"  # the user's primary config applied
    assert record["config"]["likelihood"]["_target_"].startswith("vaesweep_examples.")
    assert "test/nll" in record["metrics"]
