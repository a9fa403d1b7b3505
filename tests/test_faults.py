"""Damaged files and odd inputs never cost data or truth (issue 21): each is refused in one
line before anything is written (naming the key, the value and what is allowed), or ends in
a truthful result; a sweep writes its summary. Config values are checked in-process on
real Hydra compositions; the launch checks run on Hydra configs composed with their
``hydra`` node; a few real CLI runs prove the wiring."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_data import make_idx_dataset
from test_effective import configs, refusal
from test_train import validate

from vaesweep.analysis.figures import write_sweep_figures
from vaesweep.analysis.figures.grids import image_notes, reconstruction_rows
from vaesweep.analysis.figures.sweep import metric_vs_beta
from vaesweep.analysis.figures.table import results_table
from vaesweep.analysis.results import load_results
from vaesweep.data import IDX_SOURCES, load_dataset
from vaesweep.run.config import CONF_DIR, ConfigError
from vaesweep.run.context import job_dirname
from vaesweep.run.effective import check_distinct, check_overrides, result_config
from vaesweep.run.jobs import register_resolvers
from vaesweep.run.loggers import tell_wandb_mode
from vaesweep.run.policy import describe_differences, differences
from vaesweep.sweep import preflight
from vaesweep.sweep.grid import grid_jobs, start_sweep, summary_rows, union_grid

from conftest import RUN_PY, TINY, cli_env, results_under, run_cli

# B: the brief's one-epoch budget without a logger.
B = [*TINY, "logger=none"]


def jobs_of(overrides: list[str]) -> list[tuple[list[str], object]]:
    jobs = grid_jobs(overrides, {})
    return list(zip(jobs, configs(*jobs), strict=True))


# --- 8, 9: likelihoods and data that are not a likelihood, keys and sweeps that change nothing


def test_a_continuous_density_on_binarised_data_is_refused():
    for likelihood in ("continuous_bernoulli", "gaussian", "laplace"):
        with pytest.raises(
            ConfigError,
            match=rf"data.preprocess='binarize' is invalid: allowed dequantize, scale or auto "
            rf"with likelihood={likelihood}: it is a density on continuous data",
        ):
            validate([f"likelihood={likelihood}", "data.preprocess=binarize"])
    validate(["likelihood=continuous_bernoulli"])  # auto: dequantised
    validate(["likelihood=bernoulli", "data.preprocess=binarize"])


def test_allow_nonbinary_is_refused_where_it_changes_nothing():
    # A density (Gaussian): the key is never read.
    message = refusal(["+likelihood.allow_nonbinary=true"])
    assert message is not None and message.startswith(
        "likelihood.allow_nonbinary=true has no effect on what this run computes"
    ), message
    assert "likelihood=gaussian is a density on continuous data" in message
    # The sweep of both values on a Gaussian: refused as a key no job reads.
    swept = ["+likelihood.allow_nonbinary=true,false"]
    message = check_overrides(swept, configs(*grid_jobs(swept, {})))
    assert message is not None and "allow_nonbinary=true,false has no effect" in message
    # A Bernoulli on binarised data (auto) does not read it either...
    message = refusal(["likelihood=bernoulli", "likelihood.allow_nonbinary=true"])
    assert message is not None and "read only when the data are not binarised" in message
    assert "data.preprocess=auto (binarize for likelihood=bernoulli)" in message
    # ...on grey levels it is the opt-in it is meant to be.
    assert refusal(["likelihood=bernoulli", "likelihood.allow_nonbinary=true",
                    "data.preprocess=scale"]) is None  # fmt: skip


@pytest.mark.parametrize(
    "key",
    ["limit_train_batches", "limit_val_batches", "limit_test_batches", "val_check_interval",
     "overfit_batches"],
)  # fmt: skip
def test_an_int_and_a_float_of_a_batches_or_fraction_key_are_two_jobs(key):
    """Lightning reads trainer.limit_train_batches=1 as one batch and =1.0 as all of them:
    a sweep of both is two jobs, not a repeat, and a run stored with one is not the job of
    the other; beta=1 and beta=1.0 stay one job, and so do 0 and 0.0 (both off)."""
    from vaesweep.run.policy import differences

    assert check_distinct(jobs_of([f"trainer.{key}=1,1.0"])) is None
    for same in ("beta=1,1.0", f"trainer.{key}=0.5,0.50"):
        message = check_distinct(jobs_of([same]))
        assert message is not None and "compute the same thing" in message, message
    if key != "val_check_interval":  # 0 and 0.0 both turn it off: one job
        message = check_distinct(jobs_of([f"trainer.{key}=0,0.0"]))
        assert message is not None and "compute the same thing" in message, message
    ((_, one),), ((_, whole),) = jobs_of([f"trainer.{key}=1"]), jobs_of([f"trainer.{key}=1.0"])
    stored = json.loads(json.dumps(OmegaConf.to_container(whole, resolve=True)))  # results.json
    assert differences(stored, one) == [(f"trainer.{key}", 1.0, 1)]
    assert differences(stored, whole) == []
    ((_, beta_int),), ((_, beta_float),) = jobs_of(["beta=1"]), jobs_of(["beta=1.0"])
    assert differences(json.loads(json.dumps(OmegaConf.to_container(beta_float, resolve=True))),
                       beta_int) == []  # fmt: skip


def test_a_sweep_of_auto_and_what_it_resolves_to_is_refused():
    message = check_distinct(jobs_of(["likelihood=bernoulli", "data.preprocess=binarize,auto"]))
    assert message is not None and "compute the same thing" in message, message
    assert "data.preprocess=auto is binarize for likelihood=bernoulli" in message
    ((_, gaussian),) = jobs_of(["data.preprocess=auto"])
    assert result_config(gaussian)["data.preprocess"] == "dequantize"
    # Different data: distinct jobs.
    assert check_distinct(jobs_of(["data.preprocess=dequantize,scale"])) is None


def test_a_relaunch_compares_what_auto_resolves_to():
    (binarize,) = configs(["likelihood=bernoulli", "data.preprocess=binarize"])
    (auto,) = configs(["likelihood=bernoulli"])
    stored = OmegaConf.to_container(auto, resolve=True)
    assert differences(stored, binarize) == []  # the same job: skipped or resumed
    (scale,) = configs(
        ["likelihood=bernoulli", "data.preprocess=scale", "likelihood.allow_nonbinary=true"]
    )
    assert ("data.preprocess", "binarize", "scale") in differences(stored, scale)


def test_a_relaunch_names_the_differing_values_as_written():
    """Numbers compare as floats (beta=1 is beta=1.0) but are named as the configs hold them:
    an int stays an int, a float a float."""
    (before,) = configs(["trainer.max_epochs=20", "beta=1.0", "seed=3"])
    (now,) = configs(["trainer.max_epochs=3", "beta=4", "seed=3"])
    stored = OmegaConf.to_container(before, resolve=True)
    diffs = differences(stored, now)
    assert ("trainer.max_epochs", 20, 3) in diffs and ("beta", 1.0, 4) in diffs, diffs
    assert "beta: 1.0 → 4;" in describe_differences(diffs)
    assert "trainer.max_epochs: 20 → 3" in describe_differences(diffs)
    (same,) = configs(["trainer.max_epochs=20", "beta=1", "seed=3"])
    assert differences(stored, same) == []


# --- 7, 11, 5, 6: values that failed mid-run or were silently ignored


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seed=4294967296"], r"seed=4294967296 is invalid: allowed an integer in \[0, 4294967295\]"),
        (["sweep.claim_timeout_s=abc"], r"sweep.claim_timeout_s='abc' is invalid: allowed a number"),
        (["sweep.claim_timeout_s=-5"], r"sweep.claim_timeout_s=-5 is invalid: allowed a number of seconds > 0"),
        (["trainer.min_epochs=5", "trainer.max_epochs=1"], r"trainer.min_epochs=5 is invalid: allowed at most trainer.max_epochs=1"),
        (["trainer.min_steps=10", "trainer.max_steps=5"], r"trainer.min_steps=10 is invalid: allowed at most trainer.max_steps=5"),
        (["trainer.val_check_interval=0"], r"trainer.val_check_interval=0 is invalid: allowed null"),
        (["trainer.val_check_interval=1.5"], r"trainer.val_check_interval=1.5 is invalid"),
        (["trainer.check_val_every_n_epoch=0"], r"trainer.check_val_every_n_epoch=0 is invalid"),
        (["eval.checkpoint=best", "trainer.limit_val_batches=0"], r"eval.checkpoint='best' is invalid: allowed 'last' with trainer.limit_val_batches=0"),
        (["eval.checkpoint=best", "trainer.check_val_every_n_epoch=3", "trainer.max_epochs=2"], r"'last' with trainer.check_val_every_n_epoch=3 > trainer.max_epochs=2"),
    ],
)  # fmt: skip
def test_values_that_failed_mid_run_or_were_ignored_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["seed=4294967295"],
        ["sweep.claim_timeout_s=0.5"],
        ["trainer.min_epochs=1", "trainer.max_epochs=1"],
        ["trainer.min_steps=10"],  # max_steps=-1: no limit
        ["trainer.min_epochs=5", "trainer.max_epochs=-1", "trainer.max_steps=100"],
        ["trainer.val_check_interval=0.5"],
        ["trainer.val_check_interval=2", "trainer.check_val_every_n_epoch=null"],
        ["eval.checkpoint=best"],
        ["eval.checkpoint=last", "trainer.limit_val_batches=0"],
    ],
)
def test_the_values_around_them_pass(overrides):
    validate(overrides)


# --- 1, 3, 7, 10, 13: the launch, checked before Hydra makes a directory


@pytest.fixture
def launch(tmp_path):
    """compose(overrides) → a config with its ``hydra`` node, as Hydra's callbacks get it."""
    register_resolvers()

    def make(overrides: list[str]):
        if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
            overrides = [f"hydra.sweep.dir={tmp_path}/sweep", *overrides]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)

    return make


def test_run_refusals(launch, tmp_path):
    file = tmp_path / "a_file"
    file.write_text("not a directory")
    message = preflight.run_refusal(launch([f"hydra.run.dir={file}"]))
    assert message == (
        f"hydra.run.dir={file} is invalid: {file} is an existing file, not a directory. "
        "Allowed: a new or existing directory (move the file away, or choose another "
        "hydra.run.dir)"
    )
    message = preflight.run_refusal(launch([f"hydra.run.dir={file}/run"]))
    assert (
        message
        == f"hydra.run.dir={file}/run is invalid: {file} is an existing file, not a directory"
    )
    message = preflight.run_refusal(launch([f"sweep.resume={tmp_path}"]))
    assert message.startswith(f"sweep.resume={tmp_path} is invalid without -m"), message
    twice = [f"hydra.run.dir={tmp_path}/a", f"hydra.run.dir={tmp_path}/b"]
    message = preflight.run_refusal(launch(twice))
    assert message.startswith("hydra.run.dir is given twice on the command line"), message
    assert message.endswith(
        f"only the last, hydra.run.dir={tmp_path}/b, would be used. Give each key once."
    )
    message = preflight.run_refusal(launch(["sweep.claim_timeout_s=abc"]))
    assert message == "sweep.claim_timeout_s='abc' is invalid: allowed a number of seconds > 0"
    assert preflight.run_refusal(launch([f"hydra.run.dir={tmp_path}/new/run"])) is None  # fmt: skip


def test_multirun_refusals(launch, tmp_path, monkeypatch):
    jobs = [["beta=1"], ["beta=2"]]
    file = tmp_path / "a_file"
    file.write_text("")
    message = preflight.multirun_refusal(launch([f"hydra.sweep.dir={file}"]), jobs)
    assert message is not None and message.startswith(
        f"hydra.sweep.dir={file} is invalid: {file} is an existing file, not a directory"
    )
    parallel = ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=0"]
    message = preflight.multirun_refusal(launch(parallel), jobs)
    assert message is not None and message.startswith(
        "hydra.launcher.n_jobs=0 is invalid: allowed an integer ≥ 1 (jobs at once)"
    )
    parallel[-1] = "hydra.launcher.n_jobs=2"
    assert preflight.multirun_refusal(launch(parallel), jobs) is None
    monkeypatch.setenv("PATH", str(tmp_path / "no_bin"))
    message = preflight.multirun_refusal(launch(["hydra/launcher=slurm"]), jobs)
    assert message is not None and message.startswith(
        "hydra/launcher=slurm needs SLURM on this machine: `sbatch` was not found on PATH"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in ("sbatch", "srun"):
        (bin_dir / command).write_text("#!/bin/sh\n")
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert preflight.multirun_refusal(launch(["hydra/launcher=slurm"]), jobs) is None
    twice = ["hydra.sweep.dir=x", f"hydra.sweep.dir={tmp_path}/s"]
    message = preflight.multirun_refusal(launch(twice), jobs)
    assert message is not None and "hydra.sweep.dir is given twice" in message


def test_a_read_only_job_directory_is_named(launch, tmp_path, monkeypatch):
    """Without root's bypass of permissions: ``writable`` is what decides."""
    config = launch([])
    sweep = Path(config.hydra.sweep.dir)
    (sweep / "beta=2").mkdir(parents=True)
    monkeypatch.setattr(preflight, "writable", lambda d: Path(d).name != "beta=2")
    message = preflight.multirun_refusal(config, [["beta=1"], ["beta=2"]])
    assert message == (
        f"the job directory {sweep / 'beta=2'} is not writable (read-only): its job cannot "
        "write its log or results. Make it writable (or move it away), or narrow the sweep "
        "to leave that job out"
    )
    assert preflight.multirun_refusal(config, [["beta=1"]]) is None  # its own directory
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setattr(preflight, "writable", lambda d: Path(d) != run_dir)
    message = preflight.run_refusal(launch([f"hydra.run.dir={run_dir}"]))
    assert message is not None and f"the directory {run_dir} is not writable" in message


def one_refusal(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[vaesweep]")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_cli_refuses_a_launch_before_hydra_writes(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = run_cli(["-m", *B, "beta=1,2", "hydra.sweep.dir=a_file"], tmp_path)
    line = one_refusal(proc)
    assert line.startswith("[vaesweep] sweep refused, no job was run: hydra.sweep.dir=a_file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    # sweep.resume and hydra.sweep.dir naming two directories: Hydra keeps the second, so
    # the sweep to continue was silently trained again elsewhere.
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "sweep.json").write_text(json.dumps({"grid": {"beta": ["1", "2"]}, "jobs": []}))
    proc = run_cli(["-m", *B, "beta=1,2", "sweep.resume=earlier", "hydra.sweep.dir=other"],
                   tmp_path)  # fmt: skip
    line = one_refusal(proc)
    assert line.startswith(
        "[vaesweep] sweep refused, no job was run: sweep.resume=earlier and "
        "hydra.sweep.dir=other name two directories"
    ), line
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("multirun", [False, True])
def test_a_config_dir_file_hydra_would_never_read_is_refused_before_any_run(tmp_path, multirun):
    """A user's likelihood/gaussian.yaml in --config-dir is shadowed by vaesweep's own (Hydra
    reads the package's config tree first): a run or grid that selects it is refused, not
    trained with the package's file (which a reviewer found silently: scale fixed, not the
    file's learned)."""
    user = tmp_path / "conf" / "likelihood"
    user.mkdir(parents=True)
    ours = (CONF_DIR / "likelihood" / "gaussian.yaml").read_text()
    (user / "gaussian.yaml").write_text(ours.replace("scale: fixed", "scale: learned"))
    assert (user / "gaussian.yaml").read_text() != ours
    where = ["-m", "likelihood=laplace,gaussian"] if multirun else ["likelihood=gaussian"]
    proc = run_cli([*where[:-1], "--config-dir", str(tmp_path / "conf"), *B, where[-1]], tmp_path)
    line = one_refusal(proc)
    what = "sweep refused, no job was run" if multirun else "run refused, nothing was written"
    assert line.startswith(f"[vaesweep] {what}: likelihood=gaussian: {user / 'gaussian.yaml'} is ")
    assert "rename yours (e.g. likelihood/my_gaussian.yaml)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]
    # Not selected, or the same bytes: nothing is lost, nothing refused.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("train", ["likelihood=laplace"], return_hydra_config=True)
    config = OmegaConf.create(OmegaConf.to_container(config))  # untyped: a source added
    config.hydra.runtime.config_sources.append(
        {"path": str(tmp_path / "conf"), "schema": "file", "provider": "command-line"}
    )
    assert preflight.shadowed_config(config) is None
    assert "likelihood=gaussian" in preflight.shadowed_config(config, [["likelihood=gaussian"]])
    (user / "gaussian.yaml").write_text(ours)
    assert preflight.shadowed_config(config, [["likelihood=gaussian"]]) is None


@pytest.mark.slow
def test_cli_refuses_a_single_run_before_hydra_writes(tmp_path):
    proc = run_cli([*B, "sweep.resume=somewhere"], tmp_path)
    line = one_refusal(proc)
    assert line.startswith("[vaesweep] run refused, nothing was written: sweep.resume=somewhere")
    assert list(tmp_path.iterdir()) == []


def _read_only(path: Path, script: str) -> subprocess.CompletedProcess:
    """``script`` with ``path`` bind-mounted read-only (a user namespace: root's bypass of
    permissions does not apply to a read-only mount)."""
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("cannot mount read-only here (unshare)")
    return subprocess.run(
        ["unshare", "-Urm", "sh", "-c",
         f"mount --bind {path} {path} && mount -o remount,bind,ro {path} && {script}"],
        env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_a_read_only_job_directory_refuses_the_sweep_before_any_job(tmp_path):
    """Hydra's launchers cannot skip one job, and a job whose train.log cannot be opened
    stops the sweep with a traceback: the sweep is refused up front, naming the directory."""
    # Named as Hydra names it: its values as its sweeper writes them (false → False).
    job = tmp_path / "sweep" / job_dirname(",".join(sorted(grid_jobs([*B, "beta=2"], {})[0])))
    job.mkdir(parents=True)
    args = " ".join(["-m", *B, "beta=1,2", "hydra.sweep.dir=sweep"])
    proc = _read_only(job, f"cd {tmp_path} && {sys.executable} {RUN_PY} {args}")
    line = one_refusal(proc)
    assert f"the job directory {job} is not writable (read-only)" in line, line
    assert not results_under(tmp_path)
    # An interrupted single run whose directory became read-only: refused the same way.
    run = tmp_path / "run"
    run.mkdir()
    proc = _read_only(run, f"cd {tmp_path} && {sys.executable} {RUN_PY} {' '.join(B)} "
                           f"hydra.run.dir={run}")  # fmt: skip
    line = one_refusal(proc)
    assert f"hydra.run.dir={run} is invalid: the directory {run} is not writable" in line
    assert list(run.iterdir()) == []


# --- 2: errors outside the task (Hydra writing its files) are one line


@pytest.mark.slow
def test_an_error_outside_the_task_is_one_line(tmp_path):
    """Hydra cannot write the run's .hydra files (a full disk, say): one line naming it,
    exit 1, no traceback."""
    hook = tmp_path / "sitecustomize.py"
    hook.write_text(
        "import errno, hydra.core.utils as u\n"
        "def full(*a, **k):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "u._save_config = full\n"
    )
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    env = {**cli_env(), "PYTHONPATH": os.pathsep.join([str(tmp_path), *inherited])}
    proc = subprocess.run(
        [sys.executable, str(RUN_PY), *B, "hydra.run.dir=run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[vaesweep]")]
    assert len(lines) == 1 and lines[0].startswith("[vaesweep] disk full"), proc.stderr[-3000:]
    assert "set HYDRA_FULL_ERROR=1 for the traceback" in lines[0]


# --- 12, 5, 14: what results.json records is what ran


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.slow
def test_last_ckpt_holds_the_fits_final_weights_and_is_what_last_tests(tmp_path):
    """Lightning ≥ 2.6 writes a monitored checkpoint's save_last file only when the
    monitored one is written too: last.ckpt stayed at the best epoch (step 10) when the last
    epoch did not improve val/elbo, and eval.checkpoint=last tested those weights; a fit
    that ended mid-epoch (max_steps) or without a validation at its end was tested on an
    older checkpoint. last.ckpt now holds the final weights: its step is the fit's, and its
    test metrics are those of the same run without checkpoints (the weights in memory)."""
    changed = ("trainer.limit_train_batches=", "trainer.max_epochs=")
    base = [a for a in B if not a.startswith(changed)]
    base += ["trainer.limit_train_batches=5", "optimizer.lr=0.1", "trainer.max_epochs=3"]
    cases = {
        "worse": [],  # val/elbo best after epoch 2 of 3, with this seed and lr
        "mid_epoch": ["trainer.max_steps=7"],
        "no_final_validation": ["trainer.check_val_every_n_epoch=2"],
    }
    for name, extra in cases.items():
        metrics = {}
        for checkpoints in ("true", "false"):
            run = f"{name}-{checkpoints}"
            args = [*base, *extra, f"trainer.enable_checkpointing={checkpoints}"]
            proc = run_cli([*args, f"hydra.run.dir={run}"], tmp_path)
            assert proc.returncode == 0, proc.stderr[-3000:]
            (result,) = results_under(tmp_path / run)
            assert result["tested_checkpoint"] == "last"
            metrics[checkpoints] = {k: v for k, v in result["metrics"].items()}
        ckpts = tmp_path / f"{name}-true" / "checkpoints"
        assert _step(ckpts / "last.ckpt") == result["trained"]["steps"], name
        assert metrics["true"] == metrics["false"], name


@pytest.mark.parametrize(
    ("limits", "best_step", "last_step"),
    [
        ({"max_epochs": 3}, 5, 15),  # val/elbo best after epoch 1, worse after
        ({"max_epochs": 3, "max_steps": 12}, 5, 12),  # ended mid-epoch 3
        ({"max_epochs": 3, "check_val_every_n_epoch": 2}, 10, 15),  # no final validation
        ({"max_epochs": 2, "val_check_interval": 0.4}, 2, 10),  # mid-epoch validations
    ],
)
def test_the_job_checkpoints_keep_the_best_validation_and_every_epochs_end(
    tmp_path, limits, best_step, last_step
):
    """The driver's two checkpoints under a real Trainer, with a val/elbo that only gets
    worse after the first validation: best.ckpt stays at that validation, last.ckpt follows
    every epoch's end to the fit's last step, never a mid-epoch validation."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from vaesweep.run.driver import checkpoint_callbacks

    class Worse(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val/elbo", -float(self.global_step))  # worse at every validation

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = DataLoader(TensorDataset(torch.randn(20, 2)), batch_size=4)  # 5 batches an epoch
    best, last = checkpoint_callbacks(tmp_path)
    trainer = L.Trainer(
        callbacks=[best, last], logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **limits,
    )  # fmt: skip
    trainer.fit(Worse(), data, data)
    assert _step(tmp_path / "best.ckpt") == best_step
    assert _step(tmp_path / "last.ckpt") == last_step == trainer.global_step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_results_record_the_precision_used_and_the_checkpoint_tested(tmp_path):
    """trainer.precision=16 on a CPU runs as bf16-mixed; eval.checkpoint=best with a fit
    that ends before its first validation is tested on the last weights, and says so."""
    args = [*B, "trainer.precision=16", "eval.checkpoint=best", "trainer.max_steps=2"]
    proc = run_cli([*args, "hydra.run.dir=run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = results_under(tmp_path)
    assert result["status"] == "completed" and result["metrics"]["test/nll"] > 0
    assert result["config"]["trainer"]["precision"] == 16  # as asked...
    assert result["precision"] == "bf16-mixed"  # ...and as run
    assert result["tested_checkpoint"] == "last"
    assert result["trained"] == {"steps": 2, "epochs": 1, "stopped_by": "max_steps"}
    said = proc.stdout + proc.stderr
    assert "trainer.precision=16 runs as bf16-mixed" in said
    assert "tested on the last weights instead" in said
    assert result["dataset"]["source"] == "sklearn.datasets.load_digits"


def test_the_dataset_records_the_directory_it_was_read_from(tmp_path, monkeypatch):
    system = tmp_path / "usr_share_fashion"
    make_idx_dataset(system)
    source = IDX_SOURCES["fashion_mnist"]
    monkeypatch.setitem(
        IDX_SOURCES, "fashion_mnist", type(source)(source.files, (), (str(system),), "")
    )
    with pytest.warns(UserWarning, match="differs from the canonical"):
        raw = load_dataset("fashion_mnist", root=tmp_path / "MISSING", val_size=7)
    assert raw.source == str(system)  # not the data.root results.json's config holds


def test_a_differing_wandb_mode_is_named_once(monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "online")
    logger = OmegaConf.create({"name": "wandb", "mode": "offline"})
    with caplog.at_level("WARNING", logger="vaesweep"):
        tell_wandb_mode(logger)
        tell_wandb_mode(logger)
    said = [r.getMessage() for r in caplog.records if "WANDB_MODE" in r.getMessage()]
    assert said == [
        "WANDB_MODE=online in the environment is not used: this run logs with "
        "logger.mode=offline (the config decides W&B's mode; pass logger.mode=online to use "
        "that)"
    ]
    caplog.clear()
    tell_wandb_mode(OmegaConf.create({"name": "wandb", "mode": "online"}))
    tell_wandb_mode(OmegaConf.create({"name": "csv"}))
    assert not caplog.records


# --- 17: sweep.json keeps every launch


def test_two_grids_in_one_sweep_directory_keep_both_launches(launch, tmp_path, monkeypatch):
    first, second = launch(["beta=1"]), launch(["seed=0"])
    OmegaConf.update(first, "hydra.overrides.task", ["beta=1,2"], force_add=True)
    OmegaConf.update(second, "hydra.overrides.task", ["seed=0,1,2"], force_add=True)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        monkeypatch.setattr(sys, "argv", ["run.py", "-m", "beta=1,2"])
        start_sweep(first)
        monkeypatch.setattr(sys, "argv", ["run.py", "-m", "seed=0,1,2"])
        start_sweep(second)
    record = json.loads((Path(first.hydra.sweep.dir) / "sweep.json").read_text())
    assert [la["command"] for la in record["launches"]] == [
        "run.py -m beta=1,2",
        "run.py -m seed=0,1,2",
    ]
    assert [la["grid"] for la in record["launches"]] == [
        {"beta": ["1", "2"]},
        {"seed": ["0", "1", "2"]},
    ]
    assert all(la["launched_at"] for la in record["launches"])
    # provenance of each launch, the latest's at the top: versions, commit and dirty flag
    assert [la["versions"]["torch"] for la in record["launches"]] == [torch.__version__] * 2
    assert record["versions"] == record["launches"][-1]["versions"]
    assert set(record["versions"]["git"]) == {"commit", "dirty"}
    assert record["grid"] == {"beta": ["1", "2"], "seed": ["0", "1", "2"]}
    assert record["n_jobs"] == 5
    # The summary has a column for every launch's keys, from each job's own config.
    results = [
        {"run_dir": "s/beta=2", "status": "completed", "metrics": {}, "overrides": ["beta=2"],
         "config": {"beta": 2.0, "seed": 0}},
        {"run_dir": "s/seed=1", "status": "completed", "metrics": {}, "overrides": ["seed=1"],
         "config": {"beta": 1.0, "seed": 1}},
    ]  # fmt: skip
    rows = summary_rows(results, list(record["grid"]))
    assert [(r["beta"], r["seed"]) for r in rows] == [("2", 0), (1.0, "1")]


def test_union_grid_keeps_order_and_every_value():
    assert union_grid([{"a": ["1", "2"]}, {"b": ["x"], "a": ["2", "3"]}]) == {
        "a": ["1", "2", "3"],
        "b": ["x"],
    }


# --- 16, 4: figures never rank across kinds of data, and say what they leave out


def write_run(root: Path, likelihood: str, beta: float, nll: float, images: str = "ok") -> Path:
    name = f"likelihood={likelihood},beta={beta:g}"
    run = root / name
    run.mkdir(parents=True)
    targets = {
        "gaussian": "vaesweep.model.likelihoods.GaussianLikelihood",
        "laplace": "vaesweep.model.likelihoods.LaplaceLikelihood",
        "bernoulli": "vaesweep.model.likelihoods.BernoulliLikelihood",
    }
    result = {
        "status": "completed",
        "metrics": {"test/nll": nll, "test/elbo": -nll - 1, "test/kl": 3.0, "test/mse": 0.1},
        "config": {
            "beta": beta,
            "seed": 0,
            "likelihood": {"name": likelihood, "_target_": targets[likelihood]},
            "data": {"name": "digits", "preprocess": "auto"},
        },
        "overrides": [f"likelihood={likelihood}", f"beta={beta:g}"],
        "seed": 0,
        "job_name": name,
        "dataset": {"name": "digits", "fingerprint": "f"},
    }
    (run / "results.json").write_text(json.dumps(result))
    arrays = {
        "originals": np.zeros((8, 1, 8, 8), np.uint8),
        "reconstructions": np.zeros((8, 1, 8, 8), np.float32),
        "samples": np.zeros((8, 1, 8, 8), np.float32),
    }
    if images != "missing":
        np.savez(run / "images.npz", **arrays)
    if images == "truncated":
        data = (run / "images.npz").read_bytes()
        (run / "images.npz").write_bytes(data[: len(data) // 2])
    return run


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Gaussian, Laplace (dequantised) and Bernoulli (binarised) runs at two β; the
    Bernoulli NLL is the lowest number, and the Laplace β = 2 images are missing, the
    Gaussian β = 2 ones truncated."""
    root = tmp_path / "sweep"
    for beta in (0.5, 2.0):
        write_run(root, "gaussian", beta, 120.0 + beta, "truncated" if beta == 2 else "ok")
        write_run(root, "laplace", beta, 110.0 + beta, "missing" if beta == 2 else "ok")
        write_run(root, "bernoulli", beta, 60.0 + beta)
    return root


def test_the_table_ranks_within_each_kind_of_data(mixed):
    table = results_table(load_results(mixed))
    assert table.keys[0] == "kind of data"
    nll = table.columns.index("test/nll")
    bold = {(row[0], row[1], row[2]) for row, best in zip(table.rows, table.best, strict=True)
            if best[nll]}  # fmt: skip
    # The best of each kind: never the Bernoulli's number against the densities'.
    assert bold == {
        ("binarised data", "Bernoulli", "0.5"),
        ("dequantised data", "Laplace", "0.5"),
    }
    assert any("not comparable" in note for note in table.notes)


def test_the_nll_figure_puts_each_kind_of_data_on_its_own_axes(mixed):
    fig = metric_vs_beta(load_results(mixed))
    assert len(fig.axes) == 4  # 2 kinds × (NLL, ELBO)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["binarised data"] * 2 + ["dequantised data"] * 2
    labels = [{c.get_label() for c in ax.containers} for ax in fig.axes]
    assert labels[0] == {"Bernoulli"} and labels[2] == {"Gaussian", "Laplace"}


def test_runs_whose_images_are_missing_or_truncated_are_named_and_the_rest_drawn(mixed):
    df = load_results(mixed)
    notes = "\n".join(image_notes(df))
    assert f"{mixed}/likelihood=laplace,beta=2/images.npz is missing" in notes
    assert f"{mixed}/likelihood=gaussian,beta=2/images.npz cannot be read (BadZipFile" in notes
    assert notes.count("left out of the reconstructions and samples") == 2
    assert [label for label, _ in reconstruction_rows(df, beta=2.0)] == [
        "test images",
        "Bernoulli",
    ]
    assert len(reconstruction_rows(df, beta=0.5)) == 4


@pytest.mark.slow
def test_figures_command_names_the_runs_it_leaves_out(mixed, tmp_path):
    report = write_sweep_figures(load_results(mixed), tmp_path / "figures")
    assert len(report.notes) == 2
    written = {p.name for p in report.written}
    assert {"reconstructions_beta2.png", "samples_beta2.png", "nll_elbo_vs_beta.pdf"} <= written
    assert {"results_table.md"} <= written
    # The CLI prints the notes.
    proc = subprocess.run(
        [sys.executable, "-m", "vaesweep.analysis.cli", "figures", str(mixed),
         "--out", str(tmp_path / "cli")],
        env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "note: images of Laplace at β = 2 not drawn" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bits_per_dim_only_for_dequantised_data(tmp_path):
    """bits/dim is the discrete NLL of 8-bit data only when the density was fitted to
    x = (k + u)/256: data scaled to [0, 1] without noise (or binarised) report none."""
    proc = run_cli([*TINY, "logger=none", "data.preprocess=scale", "hydra.run.dir=run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = results_under(tmp_path / "run")
    assert math.isfinite(result["metrics"]["test/nll"]) and "test/bpd" not in result["metrics"]
    assert result["config"]["data"]["preprocess"] == "scale"


# --- a failure after the fit ----------------------------------------------------------------
@pytest.mark.parametrize("point", ["images", "test"])
@pytest.mark.slow
def test_a_job_that_failed_after_its_fit_is_tested_again_not_trained_again(tmp_path, point):
    """The disk full as the job writes images.npz, or the memory out in its IWAE test (test
    hooks), once its fit had completed: recorded failed, with the advice to relaunch with
    sweep.rerun_failed=true, which deleted the fit's valid last.ckpt and trained the job
    from step 0. Now the failure line says that relaunch tests it again from the last
    checkpoint; a plain relaunch still leaves it alone (failed jobs are re-run only when
    asked), and the relaunch with sweep.rerun_failed=true resumes it from last.ckpt, untouched,
    with nothing left to train: completed with exactly the metrics of the run that never
    failed."""
    from pause import fail_env

    args = [*TINY, "logger=csv"]
    reference = run_cli([*args, "hydra.run.dir=reference"], tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = json.loads((tmp_path / "reference" / "results.json").read_text())["metrics"]
    run_dir = tmp_path / "run"
    proc = run_cli([*args, "hydra.run.dir=run"], tmp_path, env={**cli_env(), **fail_env(point)})
    assert proc.returncode == 1, proc.stderr[-3000:]
    failed = json.loads((run_dir / "results.json").read_text())
    assert failed["status"] == "failed" and failed["trained"]["steps"] == 3, failed["error"]
    said = "disk full" if point == "images" else "out of memory"
    assert said in proc.stderr and "sweep.rerun_failed=true" in proc.stderr, proc.stderr[-3000:]
    assert (
        "[vaesweep] its fit had completed: the same command with sweep.rerun_failed=true tests "
        "it again from checkpoints/last.ckpt, without training it again"
    ) in proc.stderr, proc.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    before = (last.stat().st_ino, last.stat().st_mtime_ns, last.read_bytes())

    plain = run_cli([*args, "hydra.run.dir=run"], tmp_path)  # failed jobs: only when asked
    assert plain.returncode == 1 and "JobNotRerun" in plain.stderr, plain.stderr[-3000:]

    again = run_cli([*args, "sweep.rerun_failed=true", "hydra.run.dir=run"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    result = json.loads((run_dir / "results.json").read_text())
    assert result["status"] == "completed" and result["attempts"] == 2
    assert result["metrics"] == expected
    assert (last.stat().st_ino, last.stat().st_mtime_ns, last.read_bytes()) == before
    log = (run_dir / "train.log").read_text()
    assert "failed after its fit had completed" in log and "not trained again" in log
    assert "removed the earlier attempt's checkpoints" not in log
