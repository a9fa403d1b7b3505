"""Guards for the private Lightning internals vaesweep still uses.

vaesweep.model.module writes its step and epoch metrics through
``trainer._logger_connector.log_metrics`` (what ``self.log`` ends in, without its per-call
bookkeeping: a measured saving per training step); it also short-cuts ``_current_fx_name``,
overrides the progress bar's ``_should_update`` and reads ``fit_loop.epoch_progress``. None
is public API, so lightning is pinned to the exact version tested here, and these tests fail
with a clear message when the installed version or one of them changes.
"""

from __future__ import annotations

import csv
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_lightning_is_the_pinned_version():
    pinned = re.search(r'"lightning==([^"]+)"', PYPROJECT.read_text())
    assert pinned, "pyproject.toml must pin lightning exactly (a private method is used)"
    assert L.__version__ == pinned.group(1), (
        f"lightning {L.__version__} is installed, {pinned.group(1)} is pinned: "
        "re-check trainer._logger_connector.log_metrics before moving the pin"
    )


def test_wandb_is_the_pinned_version_and_its_offline_records_parse(tmp_path):
    """wandb_offline reads W&B's internal offline record format: the version is
    pinned exactly, and an offline run written now reads back (a changed format fails here
    with this message rather than somewhere in the dashboard tests)."""
    import wandb

    from wandb_offline import read_offline_run

    pinned = re.search(r'"wandb==([^"]+)"', PYPROJECT.read_text())
    assert pinned, "pyproject.toml must pin wandb exactly (its offline record format is read)"
    assert wandb.__version__ == pinned.group(1), (
        f"wandb {wandb.__version__} is installed, {pinned.group(1)} is pinned: re-check "
        "wandb_offline (record format) and reinit='create_new' before moving the pin"
    )
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
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = proc.stdout.split()[-1]
    (directory,) = (tmp_path / "wandb").glob("offline-run-*")
    record = read_offline_run(directory)
    assert record["run_id"] == run_id
    assert record["config"]["a"] == 1
    assert [row["x"] for row in record["history"] if "x" in row] == [2.5]


def test_logger_connector_log_metrics_writes_to_the_loggers(tmp_path):
    trainer = L.Trainer(
        logger=CSVLogger(save_dir=str(tmp_path), name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    connector = getattr(trainer, "_logger_connector", None)
    assert connector is not None, "Trainer._logger_connector is gone: vaesweep.model.module needs it"
    params = list(inspect.signature(connector.log_metrics).parameters)
    assert params[:2] == ["metrics", "step"], (
        f"_logger_connector.log_metrics now takes {params}: vaesweep.model.module calls it as "
        "log_metrics(metrics, step=step)"
    )
    connector.log_metrics({"train/loss": 1.5, "epoch": 0}, step=7)
    for lg in trainer.loggers:
        lg.save()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert rows == [{"epoch": "0", "step": "7", "train/loss": "1.5"}], rows


def test_the_other_internals_vaesweep_relies_on_still_exist(tmp_path):
    from lightning.pytorch.callbacks import TQDMProgressBar

    # vaesweep.model.module.VAE.__setattr__ short-cuts the attribute Lightning sets around hooks.
    assert hasattr(L.LightningModule(), "_current_fx_name"), (
        "LightningModule no longer has _current_fx_name: drop VAE.__setattr__'s short-cut"
    )
    # vaesweep.data reads the epoch the fit loop is in to seed its loader's shuffling.
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.fit_loop.epoch_progress.current.processed == 0, (
        "fit_loop.epoch_progress.current.processed moved: vaesweep.data needs the epoch"
    )
    # vaesweep.run.callbacks.ThrottledProgressBar overrides the bar's redraw decision.
    params = list(inspect.signature(TQDMProgressBar._should_update).parameters)
    assert params == ["self", "current", "total"], (
        f"TQDMProgressBar._should_update now takes {params}: update ThrottledProgressBar"
    )
