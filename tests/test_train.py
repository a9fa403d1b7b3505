"""The training stack end to end: real Hydra composition, real Lightning, real W&B (offline),
the real CLI in subprocesses."""

from __future__ import annotations

import inspect
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from vaesweep.run.config import CONF_DIR, ConfigError, validate_config
from vaesweep.run.record import STATUSES

from conftest import TINY, cli_env, results_under, run_cli
from wandb_offline import read_offline_run

GROUPS = ["data", "model", "likelihood", "beta_schedule", "optimizer", "trainer", "logger", "eval"]
METRIC_KEYS = {
    "test/elbo",
    "test/rec_nll",
    "test/kl",
    "test/nll",
    "test/bpd",
    "test/mse",
    "test/mae",
    "test/active_units",
    "scale",
    "beta",
    "effective_beta",
    "val/elbo",
}
SCHEMA = {
    "status",
    "metrics",
    "config",
    "overrides",
    "seed",
    "run_dir",
    "sweep_dir",
    "job_name",
    "started_at",
    "finished_at",
    "duration_s",
    "attempts",
    "wandb_run_id",
    "versions",
    "dataset",
    "precision",
    "tested_checkpoint",
    "trained",
    "devices",
    "changed_between_attempts",
    "error",
}


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def validate(overrides: list[str]) -> None:
    # hydra:runtime.* interpolations need a running app; they are not what is checked here.
    validate_config(compose_cfg([*overrides, "paths.data_dir=/tmp"]))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_validates(group):
    for option in options(group):
        overrides = [f"{group}={option}"]
        if (group, option) == ("beta_schedule", "geco"):
            with pytest.raises(ConfigError, match="beta_schedule.target: required"):
                validate(overrides)
            overrides.append("beta_schedule.target=-100")
        if (group, option) == ("trainer", "gpu") and not torch.cuda.is_available():
            # Refused in the job itself here (test_bad_input), valid in a launching process.
            validate_config(compose_cfg([*overrides, "paths.data_dir=/tmp"]), in_job=False)
            continue
        validate(overrides)


def test_scale_modes_compose_for_both_location_scale_likelihoods():
    for lik in ("gaussian", "laplace"):
        for scale in ("fixed", "learned", "per_pixel", "decoder", "optimal"):
            validate([f"likelihood={lik}", f"likelihood.scale={scale}"])


def test_every_trainer_argument_is_a_config_key():
    cfg = compose_cfg([])
    managed = {"self", "logger", "callbacks", "default_root_dir"}
    args = set(inspect.signature(L.Trainer.__init__).parameters) - managed
    assert args <= set(cfg.trainer), sorted(args - set(cfg.trainer))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["beta=-1"], "beta=-1 is invalid"),
        (["likelihood.scale_value=0"], "likelihood.scale_value=0 is invalid"),
        (["likelihood=laplace", "likelihood.scale=huge"], "likelihood.scale='huge'.*optimal"),
        (["model.latent_dim=0"], "model.latent_dim=0 is invalid"),
        (["likelihood=bernoulli", "data.preprocess=dequantize"], "allow_nonbinary=true"),
        (["beta_schedule=cyclical", "beta_schedule.ratio=1.5"], "ratio=1.5"),
        (["beta_schedule=cyclical", "beta_schedule.n_cycles=0"], "n_cycles=0"),
        (["optimizer.lr=0"], "optimizer.lr=0 is invalid"),
        (["eval.checkpoint=first"], "eval.checkpoint='first'.*last.*best"),
        (["trainer=ddp", "data.batch_size=127"], "data.batch_size=127.*multiple of the 2"),
        (["logger.mode=sometimes"], "logger.mode='sometimes'"),
    ],
)
def test_bad_values_name_key_value_and_allowed(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(overrides)


def test_a_presets_root_keys_beat_the_root_configs_and_lose_to_the_command_line(tmp_path):
    """A user's experiment (or hparams_search) preset sets root keys, as
    lightning-hydra-template's presets set ``seed``: they were silently replaced by
    train.yaml's own values (its ``_self_`` came last), while the preset's group keys took
    effect. Now the preset's values are the run's, and the command line still wins."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nseed: 7\nbeta: 4\nn_samples: 2\nsweep:\n  rerun_failed: true\n"
        "label:\n  note: from the preset\ntrainer:\n  max_epochs: 3\n"
    )
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    cfg = compose_cfg([searchpath, "experiment=mine"])
    assert (cfg.seed, cfg.beta, cfg.n_samples) == (7, 4, 2)
    assert cfg.sweep.rerun_failed is True and cfg.label.note == "from the preset"
    assert cfg.trainer.max_epochs == 3
    cfg = compose_cfg([searchpath, "experiment=mine", "seed=3", "beta=0.5"])
    assert (cfg.seed, cfg.beta) == (3, 0.5)
    assert compose_cfg([]).seed == 0  # no preset: train.yaml's


def test_bernoulli_on_grey_levels_needs_explicit_opt_in():
    validate(["likelihood=bernoulli", "data.preprocess=scale", "likelihood.allow_nonbinary=true"])


def check_completed_run(result: dict, run_dir: Path) -> None:
    assert set(result) == SCHEMA
    assert result["status"] == "completed" and result["error"] is None
    metrics = result["metrics"]
    assert set(metrics) >= METRIC_KEYS, METRIC_KEYS - set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    # The IWAE bound is at least as tight as the ELBO.
    assert metrics["test/nll"] <= -metrics["test/elbo"] + 1e-6
    assert result["versions"]["torch"].startswith("2.13")
    # The CPU kernels torch dispatched to (this process's, unless ATEN_CPU_CAPABILITY differs)
    if "ATEN_CPU_CAPABILITY" not in os.environ:
        assert result["versions"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert result["dataset"]["fingerprint"] and result["dataset"]["sizes"]["test"] > 0
    assert result["dataset"]["source"]  # where the data were read
    assert result["precision"] == "32-true" and result["tested_checkpoint"] == "last"
    trainer = result["config"]["trainer"]
    batches = trainer["limit_train_batches"]  # an int in the tests' tiny budget
    assert result["trained"] == {
        "steps": trainer["max_epochs"] * batches,
        "epochs": trainer["max_epochs"],
        "stopped_by": "max_epochs",
    }
    devices = result["devices"]  # where it ran: here the CPU, no launcher's GPU share
    assert devices["accelerator"] == "cpu" and devices["fraction"] is None
    assert devices["names"] == [] and "cuda_visible_devices" in devices
    # What the bits of a CPU run depend on: this machine's CPU as lscpu names it, the vector
    # instructions torch's kernels chose here, and the threads (threads=null and one job at
    # a time: every usable core).
    lscpu = shutil.which("lscpu") and subprocess.run(["lscpu"], capture_output=True, text=True)
    if lscpu and lscpu.returncode == 0 and platform.machine() in ("x86_64", "i686"):
        # (an ARM /proc/cpuinfo has no model name: the record then says what Python does)
        names = [
            ln.split(":", 1)[1].strip()
            for ln in lscpu.stdout.splitlines()
            if ln.startswith("Model name")
        ]
        assert devices["cpu"] in names, (devices["cpu"], names)
    assert devices["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert devices["torch_threads"] == len(os.sched_getaffinity(0))
    for name in ("reconstructions.png", "samples.png"):
        with Image.open(run_dir / name) as im:
            assert im.size[0] > 0
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / ".hydra" / "config.yaml").exists()


def test_the_cpu_kernels_a_run_used_are_recorded(workdir):
    """ATEN_CPU_CAPABILITY=avx2 makes torch run its AVX2 kernels on an AVX-512 machine
    (another summation order, other last bits): results.json records the set the job ran,
    as a fresh interpreter with the same variable reports it."""
    env = {**cli_env(), "ATEN_CPU_CAPABILITY": "avx2"}
    proc = run_cli([*TINY, "logger=none", "hydra.run.dir=run"], workdir, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = results_under(workdir)
    told = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert result["versions"]["cpu_capability"] == told
    if torch.backends.cpu.get_cpu_capability() == "AVX512":  # lowered, as asked
        assert told == "AVX2"


def test_run_py_end_to_end_writes_a_complete_result(workdir):
    """Default data and model, a tiny budget, W&B offline (the default logger)."""
    args = [a for a in TINY if not a.startswith("data=")]
    proc = run_cli([*args, "hydra.run.dir=run"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = results_under(workdir)
    run_dir = workdir / "run"
    check_completed_run(result, run_dir)
    metrics = result["metrics"]
    # Fixed σ = 1 Gaussian on 28×28 data: −log p(x|z) ≥ (D/2) ln 2π = 720.45 nats.
    assert metrics["test/rec_nll"] >= 784 / 2 * math.log(2 * math.pi)
    assert result["dataset"]["name"] == "mnist_small"
    assert (run_dir / "metrics.csv").read_text().count("\n") > 1
    # W&B offline run: exists, carries the resolved config and the test metrics as summary.
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    wb = read_offline_run(offline)
    assert wb["config"]["likelihood"]["name"] == "gaussian"
    assert wb["config"]["seed"] == 0
    assert wb["summary"]["test/nll"] == pytest.approx(metrics["test/nll"])
    assert "gaussian" in wb["tags"] and "scale=fixed" in wb["tags"]
    assert any("test/reconstructions" in k for k in wb["summary"])


@pytest.mark.slow
def test_six_job_multirun(workdir):
    proc = run_cli(
        ["-m", "likelihood=gaussian,laplace", "beta=0.5,1,4", *TINY, "hydra.sweep.dir=sweep"],
        workdir,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The job directories; wandb/ is the sweep's W&B summary run (tests/test_dashboard.py).
    job_dirs = sorted(p for p in (workdir / "sweep").iterdir() if p.is_dir() and p.name != "wandb")
    assert len(job_dirs) == 6
    results = results_under(workdir / "sweep")
    assert [r["status"] for r in results] == ["completed"] * 6
    seen = {(r["config"]["likelihood"]["name"], r["config"]["beta"]) for r in results}
    assert seen == {(lik, b) for lik in ("gaussian", "laplace") for b in (0.5, 1.0, 4.0)}
    for r in results:
        check_completed_run(r, Path(r["run_dir"]))
        assert r["sweep_dir"] == str((workdir / "sweep").resolve())
    # Each job its own W&B run, all in the sweep's group.
    runs = [read_offline_run(next(d.glob("wandb/offline-run-*"))) for d in job_dirs]
    assert len({r["run_id"] for r in runs}) == 6
    assert len({r["group"] for r in runs}) == 1 and runs[0]["group"]
    # job_type and tags carry the swept values of each job.
    for r, res in zip(runs, results, strict=True):
        beta = f"beta={res['config']['beta']:g}"
        lik = f"likelihood={res['config']['likelihood']['name']}"
        assert beta in r["tags"] and lik in r["tags"]
        assert set(r["job_type"].split(",")) == {beta, lik}


@pytest.mark.slow
def test_same_command_twice_gives_identical_metrics(workdir):
    args = [*TINY, "likelihood=laplace", "likelihood.scale=optimal", "logger=csv"]
    for name in ("a", "b"):
        proc = run_cli([*args, f"hydra.run.dir={name}"], workdir)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (results_under(workdir / name)[0]["metrics"] for name in ("a", "b"))
    assert a == b


def test_divergence_is_recorded_with_its_step(workdir):
    proc = run_cli([*TINY, "optimizer.lr=1e30", "logger=none", "hydra.run.dir=r"], workdir)
    assert proc.returncode != 0
    (result,) = results_under(workdir)
    assert result["status"] == "diverged"
    assert result["error"]["type"] == "DivergenceError"
    assert isinstance(result["error"]["step"], int) and result["error"]["step"] >= 0
    assert "non-finite" in proc.stderr + proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["beta=-2"], "beta=-2 is invalid"),
        (["likelihood=bernoulli", "data.preprocess=dequantize"], "only on binary data"),
    ],
)
def test_bad_input_exits_nonzero_and_claims_no_success(workdir, overrides, message):
    proc = run_cli([*TINY, *overrides, "logger=none", "hydra.run.dir=r"], workdir)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    (result,) = results_under(workdir)
    assert result["status"] == "failed" and result["error"]["type"] == "ConfigError"
    assert result["metrics"] == {}
    assert not (workdir / "r" / "checkpoints").exists()  # failed before any training


def test_unknown_group_option_lists_the_choices(workdir):
    proc = run_cli(["likelihood=poisson"], workdir)
    assert proc.returncode != 0
    out = proc.stderr + proc.stdout
    for name in ("bernoulli", "continuous_bernoulli", "gaussian", "laplace"):
        assert name in out


def test_help_lists_groups_and_options(workdir):
    proc = run_cli(["--help"], workdir)
    assert proc.returncode == 0
    for token in (
        "likelihood: bernoulli, continuous_bernoulli, gaussian, laplace",
        "beta_schedule",
    ):
        assert token in proc.stdout
    # The launchers and sweepers, as Hydra itself lists them (the plugins installed here).
    hydra_help = run_cli(["--hydra-help"], workdir).stdout.splitlines()
    for group in ("hydra/launcher: ", "hydra/sweeper: "):
        (line,) = [x.strip() for x in hydra_help if x.startswith(group)]
        assert line in proc.stdout, (line, proc.stdout)


def test_help_of_the_installed_commands_shows_them_and_the_results_commands(workdir):
    """``python -m vaesweep --help`` (as ``vaesweep-train --help``): examples an installed
    package can run, the results subcommands, and where the guides are (not installed)."""
    proc = subprocess.run(
        [sys.executable, "-m", "vaesweep", "--help"],
        cwd=workdir, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "vaesweep-train -m likelihood=gaussian,laplace beta=0.5,1,4" in out
    assert "vaesweep collect|figures|evaluate SWEEP_DIR..." in out
    assert "python -m vaesweep COMMAND" in out
    assert "  python run.py " not in out  # no checkout-only example
    assert "docs/*.md in the vaesweep source repository" in out


def test_statuses_are_the_documented_ones():
    assert STATUSES == ("running", "completed", "failed", "diverged", "interrupted")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.name=conv", "model.name='conv' is invalid: it labels results"),
        ("likelihood.name=laplace", "likelihood.name='laplace' is invalid: it labels results"),
        ("beta_schedule.name=linear", "beta_schedule.name='linear' is invalid"),
    ],
)
def test_a_name_that_is_not_the_components_own_is_refused(override, message):
    """The class computes and ``name`` only labels: before components were chosen by
    _target_, model.name=conv chose the conv network; now it would label an MLP's results
    "conv", so it is refused, pointing to the group choice."""
    with pytest.raises(ConfigError, match=message) as error:
        validate_config(compose_cfg([override]))
    assert f"({override.split('.')[0]}={override.split('=')[1]})" in str(error.value)


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"test/n_examples": 500.0, "test/nll": None}, "incomplete"),
        ({"test/nll": 100.0, "test/elbo": float("nan")}, "incomplete"),
        ({"test/nll": float("inf"), "test/elbo": -100.0}, "incomplete"),
        ({"test/nll": 100.0}, "incomplete"),
        ({"test/nll": 100.0, "test/elbo": -101.0, "test/mse": None}, "completed"),
    ],
)
def test_completed_means_a_finite_test_nll_and_elbo(metrics, expected):
    from vaesweep.run.record import checked_status

    status, reason = checked_status({"status": "completed", "metrics": metrics})
    assert status == expected
    assert (reason is None) == (expected == "completed")


def test_a_non_finite_score_is_recorded_diverged_and_named(tmp_path):
    from vaesweep.run.record import RunRecord, not_finite, unearned

    metrics = {"test/nll": float("nan"), "test/elbo": -3.0, "test/mse": float("inf")}
    assert unearned(metrics) == "test/nll is nan"
    assert not_finite(metrics) == {"test/nll": "nan", "test/mse": "inf"}
    record = RunRecord(tmp_path, config={}, overrides=[], seed=0, job_name="j", sweep_dir=None)
    record.finish("diverged", metrics=metrics)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["metrics"] == {"test/elbo": -3.0}
    assert written["unavailable"] == {"test/nll": "nan", "test/mse": "inf"}


def test_an_attempt_resumed_with_other_versions_or_devices_is_recorded_so(tmp_path, caplog):
    """changed_between_attempts: each fact of versions (W&B's aside) and devices (its type,
    names, CUDA, CPU) that a resumed attempt computes with otherwise than the attempt before,
    with its values in attempt order; nothing for an attempt that starts from step 0, or one
    whose earlier attempt did not record the fact."""
    from vaesweep.run.record import RunRecord, versions

    now = versions()
    cpu = {"accelerator": "cpu", "names": [], "cuda": None, "cpu": "X", "torch_threads": 2}
    gpu = {**cpu, "accelerator": "cuda:0", "names": ["NVIDIA H100"], "cuda": "12.8"}
    earlier = {
        "status": "interrupted",
        "versions": {**now, "torch": "2.0.0", "wandb": "0.1", "git": {**now["git"], "dirty": 3}},
        "devices": gpu,
    }
    keys = dict(config={}, overrides=[], seed=0, job_name="j", sweep_dir=None)

    def attempt(previous, resumed, devices):
        record = RunRecord(tmp_path, **keys, previous=previous, resumed=resumed)
        record.set_devices(devices)
        return json.loads((tmp_path / "results.json").read_text())

    fresh = attempt(earlier, False, cpu)  # trained from step 0: nothing carried over
    assert fresh["changed_between_attempts"] == {}
    with caplog.at_level("WARNING", logger="vaesweep"):
        second = attempt(earlier, True, {**cpu, "torch_threads": 8})
    assert second["changed_between_attempts"] == {
        "versions.torch": ["2.0.0", now["torch"]],
        "versions.git.dirty": [3, now["git"]["dirty"]],
        "devices.type": ["cuda", "cpu"],
    }  # not wandb, not the thread count, not what only one of the two device types has
    assert "resumes with other versions or devices than its earlier attempt" in caplog.text
    assert "devices.type: cuda → cpu" in caplog.text
    third = attempt(second, True, gpu)  # back on the GPU: the history grows
    assert third["changed_between_attempts"]["devices.type"] == ["cuda", "cpu", "cuda"]
    assert third["changed_between_attempts"]["versions.torch"] == ["2.0.0", now["torch"]]
    caplog.clear()
    with caplog.at_level("WARNING", logger="vaesweep"):
        same = attempt({**third, "devices": gpu}, True, gpu)  # nothing new: no warning
    assert same["changed_between_attempts"] == third["changed_between_attempts"]
    assert "resumes with other" not in caplog.text
    older = attempt({"status": "interrupted"}, True, gpu)  # an earlier version's record
    assert older["changed_between_attempts"] == {}
    # A GPU run on another node: its GPUs and CUDA count, not the node's CPU or its kernels.
    node = {**gpu, "cpu": "Y"}
    other = attempt({**earlier, "versions": {**now, "cpu_capability": "AVX2"}}, True, node)
    assert set(other["changed_between_attempts"]) == set()
    other = attempt(earlier, True, {**gpu, "names": ["NVIDIA A100"]})
    assert other["changed_between_attempts"]["devices.names"] == [["NVIDIA H100"], ["NVIDIA A100"]]


def test_the_trained_budget_says_which_limit_ended_the_fit():
    """results.json's ``trained``: the steps and epochs a fit trained and the budget that
    ended it, from a real Trainer: max_epochs, max_steps (mid-epoch: Lightning counts the
    cut epoch), max_time (how far it got depends on the machine: the frame says so)."""
    import time

    from torch.utils.data import DataLoader, TensorDataset

    from vaesweep.run.driver import trained_budget

    class Slow(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            time.sleep(0.02)
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=4)  # 10 batches
    slow_epoch = DataLoader(TensorDataset(torch.randn(400, 2)), batch_size=4)  # 2 s an epoch
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    for limits, expected in (
        ({"max_epochs": 2}, {"steps": 20, "epochs": 2, "stopped_by": "max_epochs"}),
        ({"max_epochs": 5, "max_steps": 15}, {"steps": 15, "epochs": 2, "stopped_by": "max_steps"}),
        ({"max_epochs": 10**6, "max_time": {"seconds": 1}}, {"stopped_by": "max_time"}),
        # Cut in its last epoch: Lightning counts that epoch, but the Timer ended the fit.
        ({"max_epochs": 1, "max_time": {"seconds": 1}}, {"epochs": 1, "stopped_by": "max_time"}),
    ):
        trainer = L.Trainer(**quiet, enable_checkpointing=False, **limits)
        data = slow_epoch if limits.get("max_epochs") == 1 else loader
        trainer.fit(Slow(), data)
        trained = trained_budget(trainer)
        assert trained.items() >= expected.items(), (limits, trained)
        assert 1 <= trained["steps"] <= len(data) * trained["epochs"], trained
