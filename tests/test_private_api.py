"""Guards that vaesweep stays on public APIs and version ranges.

src/ uses no private Lightning, Hydra or W&B API (a text search over every file under src/),
so pyproject.toml gives torch, lightning and wandb ranges, not exact pins; .ci/run also tests
the newest releases those ranges allow. The tests' own W&B reader (tests/wandb_offline.py)
reads W&B's internal offline record format: that is test-only code, checked here against the
installed wandb, and it fails loudly, naming the version, when the format changes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PYPROJECT = ROOT / "pyproject.toml"

# What private uses look like (the ones vaesweep had, and the general forms): an import from
# or of a private Lightning/Hydra/W&B module or name, W&B's internal record format, and
# Lightning's private Trainer, loop, logger-connector, launcher and progress-bar internals.
PRIVATE = {
    "Hydra internals": r"hydra\._internal",
    "a private module or name of lightning/hydra/wandb": (
        r"(?:from|import)\s+(?:lightning|pytorch_lightning|hydra|wandb)[\w.]*\._"
        r"|from\s+(?:lightning|pytorch_lightning|hydra|wandb)[\w.]*\s+import\s+[^\n]*\b_[A-Za-z]"
    ),
    "W&B's internal record format": r"wandb_internal_pb2|wandb\.proto\b|wandb\.sdk\.internal",
    "the Trainer's logger connector": r"_logger_connector",
    "Lightning's launcher classes": r"_SubprocessScriptLauncher|_MultiProcessingLauncher",
    "TQDMProgressBar._should_update": r"_should_update",
    "LightningModule._current_fx_name": r"_current_fx_name",
    "the fit loop's progress": r"fit_loop\.|epoch_progress|_batches_that_stepped",
    "a private Trainer/strategy/launcher attribute": (
        r"\b(?:trainer|strategy|launcher)\._(?!_)[A-Za-z]"
    ),
}


def _source_files() -> list[Path]:
    files = [p for p in SRC.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files, f"no files under {SRC}"
    return files


@pytest.mark.parametrize("what", sorted(PRIVATE))
def test_src_uses_no_private_lightning_hydra_or_wandb_api(what):
    pattern = re.compile(PRIVATE[what])
    hits = []
    for path in _source_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, f"src/ uses {what} (not public API):\n" + "\n".join(hits)


def _dependencies() -> dict[str, Requirement]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return {Requirement(d).name: Requirement(d) for d in project["dependencies"]}


@pytest.mark.parametrize("name", ["torch", "lightning", "wandb"])
def test_pyproject_gives_ranges_not_exact_pins(name):
    from importlib.metadata import version

    requirement = _dependencies()[name]
    operators = {spec.operator for spec in requirement.specifier}
    assert not operators & {"==", "==="}, (
        f"pyproject.toml pins {requirement}: give a range (development machines and CI "
        "pin torch in constraints-cpu.txt)"
    )
    assert ">=" in operators, f"{requirement}: give the oldest supported release"
    installed = version(name)
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{name} {installed} is installed, outside pyproject.toml's {requirement}"
    )


def test_wandb_lower_bound_has_reinit_create_new():
    """vaesweep.analysis.wandb_summary opens its summary run with reinit="create_new",
    which W&B has from 0.19.10 on."""
    bounds = [Version(s.version) for s in _dependencies()["wandb"].specifier if s.operator == ">="]
    assert bounds and min(bounds) >= Version("0.19.10"), bounds


def test_ci_upgrade_step_uses_pyprojects_ranges():
    """.ci/run upgrades lightning and wandb to the newest releases pyproject.toml allows."""
    deps = _dependencies()
    (line,) = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if "--upgrade" in line and not line.lstrip().startswith("#")
    ]
    ranges = [Requirement(a) for a in shlex.split(line) if re.search(r"[<>=]", a)]
    upgraded = {requirement.name: requirement for requirement in ranges}
    assert set(upgraded) == {"lightning", "wandb"}, line
    for name, requirement in upgraded.items():
        assert requirement.specifier == deps[name].specifier, (requirement, deps[name])


def test_wandb_offline_records_parse(tmp_path):
    """tests/wandb_offline.py reads W&B's internal offline record format: an offline run
    written now by the installed wandb reads back (a changed format fails here, naming the
    wandb version, rather than somewhere in the dashboard tests)."""
    import wandb

    from wandb_offline import read_offline_run

    # Written by a process of its own, as every job's run is (W&B's state in this test
    # process depends on which tests ran before it).
    script = (
        "import sys, wandb\n"
        "run = wandb.init(project='guard', dir=sys.argv[1], mode='offline', reinit='create_new',"
        " config={'a': 1}, settings=wandb.Settings(silent=True))\n"
        "run.log({'x': 2.5})\n"
        "run.finish()\n"
        "print(run.id)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env={**env, "WANDB_MODE": "offline"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"wandb {wandb.__version__}: an offline run with reinit='create_new' failed:\n"
        + proc.stderr[-3000:]
    )
    run_id = proc.stdout.split()[-1]
    (directory,) = (tmp_path / "wandb").glob("offline-run-*")
    problem = f"wandb {wandb.__version__}'s offline run files: update tests/wandb_offline.py"
    try:
        record = read_offline_run(directory)
    except Exception as e:  # any failure to read is the format's change, with this message
        raise AssertionError(f"{problem} ({type(e).__name__}: {e})") from e
    assert record["run_id"] == run_id, problem
    assert record["config"]["a"] == 1, problem
    assert [row["x"] for row in record["history"] if "x" in row] == [2.5], problem
