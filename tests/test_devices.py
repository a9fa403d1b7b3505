"""Several processes for one job: the global batch under every strategy, plain DDP under
SLURM with every rank acting on rank 0's decision, DDP resume identical to an uninterrupted
run, and controllers that observe once per optimiser step under gradient accumulation.

SLURM is simulated the way srun presents itself to a task: its environment variables
(SLURM_NTASKS, SLURM_PROCID, ...), with two real processes on CPU (gloo) started by the test.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from vaesweep.data import VAEDataModule
from vaesweep.model.components import build_components
from vaesweep.model.module import VAE
from vaesweep.run import ranks
from vaesweep.run.config import CONF_DIR, ConfigError, validate_config

from conftest import RUN_PY, cli_env
from pause import pause_env

# Variables of launchers (srun, torchrun, Lightning's ddp) that must not leak into a test.
LAUNCHER_VARS = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_RUN_ID", ranks.DECISION_ENV,
)  # fmt: skip


def clean_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("SLURM_") and k not in LAUNCHER_VARS}


def slurm_vars(rank: int, job_id: str, step: int, port: int, ntasks: int = 2) -> dict[str, str]:
    """What srun sets for task ``rank`` of a one-node step with one task per device."""
    return {
        "SLURM_NTASKS": str(ntasks),
        "SLURM_NTASKS_PER_NODE": str(ntasks),
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
        "SLURM_JOB_ID": job_id,
        "SLURM_STEP_ID": str(step),
        "SLURM_JOB_NAME": "vaesweep-test",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


@pytest.fixture
def no_launcher(monkeypatch):
    for key in [k for k in os.environ if k.startswith("SLURM_") or k in LAUNCHER_VARS]:
        monkeypatch.delenv(key)


@pytest.fixture
def slurm(no_launcher, monkeypatch):
    """This process as task 0 of a simulated two-task srun step."""
    for key, value in slurm_vars(0, "777", 0, 29999).items():
        monkeypatch.setenv(key, value)


# --- the global batch --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        ({"strategy": "auto", "devices": 2, "num_nodes": 1}, 2),  # auto picks DDP
        ({"strategy": "auto", "devices": 1, "num_nodes": 1}, 1),
        ({"strategy": "ddp_spawn", "devices": [0, 1], "num_nodes": 1}, 2),
        ({"strategy": "ddp_find_unused_parameters_true", "devices": "0,1,", "num_nodes": 1}, 2),
        ({"strategy": "auto", "devices": "3", "num_nodes": 1}, 3),
        ({"strategy": "ddp", "devices": 2, "num_nodes": 3}, 6),
        ({"strategy": "single_device", "devices": 1, "num_nodes": 1}, 1),
        ({"strategy": "auto", "devices": -1, "num_nodes": 1}, None),  # the hardware tells
        ({"strategy": "ddp", "devices": "auto", "num_nodes": 1}, None),
    ],
)
def test_world_size_from_the_config(no_launcher, trainer, expected):
    assert ranks.configured_world_size(trainer) == expected


def test_world_size_under_srun_is_the_number_of_tasks(slurm):
    assert ranks.configured_world_size({"strategy": "auto", "devices": 2, "num_nodes": 1}) == 2


def compose_cfg(overrides: list[str]):
    # (paths.data_dir: hydra:runtime interpolations need a running app.)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*overrides, "paths.data_dir=/tmp"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.devices=2", "data.batch_size=127"], r"data.batch_size=127 .*multiple of the 2"),
        (["trainer.devices=[0,1,2]", "data.batch_size=128"], r"multiple of the 3 .*e\.g\. 126"),
        (["trainer=ddp", "trainer.num_nodes=2"], r"trainer.num_nodes=2 .*srun .*torchrun"),
        (["trainer.strategy=fsdp", "trainer.devices=2"], r"'fsdp' \(FSDPStrategy\) is not supp"),
        (["trainer.strategy=deepspeed"], r"'deepspeed' \(DeepSpeedStrategy\) is not supported"),
    ],
)
def test_the_config_is_refused_before_training(no_launcher, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_cfg(overrides))


def test_devices_minus_one_is_left_to_setup(no_launcher, monkeypatch):
    """-1 (every GPU): how many is known at setup only, where the batch's share is checked;
    on a machine that sees a GPU (faked). On the CPU -1 is refused (test_bad_input)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # counted by NVML, not initialised
    validate_config(compose_cfg(["trainer.devices=-1", "data.batch_size=127"]))


def test_srun_tasks_must_match_the_devices(slurm):
    with pytest.raises(ConfigError, match=r"= 1 processes, but 2 were started"):
        validate_config(compose_cfg(["trainer.devices=1"]))
    with pytest.raises(ConfigError, match=r"data.batch_size=127 .*multiple of the 2"):
        validate_config(compose_cfg(["trainer=ddp", "data.batch_size=127"]))
    validate_config(compose_cfg(["trainer=ddp", "data.batch_size=128"]))


def _stub_trainer(rank: int, world_size: int) -> SimpleNamespace:
    progress = SimpleNamespace(current=SimpleNamespace(processed=0))
    return SimpleNamespace(
        global_rank=rank,
        world_size=world_size,
        fit_loop=SimpleNamespace(epoch_progress=progress),
    )


def test_each_rank_takes_its_share_of_the_global_batch_at_setup():
    data = VAEDataModule("digits", batch_size=64)
    data.trainer = _stub_trainer(1, 2)  # what Lightning has set up when it calls setup
    data.setup("fit")
    loader = data.train_dataloader()
    assert data.rank_batch_size == loader.batch_size == 32
    assert len(loader) == math.ceil(1397 // 2 / 32)  # its half of the examples, 32 at a time
    assert next(iter(loader)).shape[0] == 32
    data.trainer = _stub_trainer(0, 3)
    with pytest.raises(ValueError, match=r"data.batch_size=64 is invalid: .*multiple of the 3"):
        data.setup("fit")


def test_strategy_under_srun_and_where_reexecution_breaks(no_launcher, monkeypatch):
    assert ranks.resolve_strategy("ddp", True) == "ddp_spawn"
    assert ranks.resolve_strategy("ddp_find_unused_parameters_true", True) == (
        "ddp_spawn_find_unused_parameters_true"
    )
    assert ranks.resolve_strategy("ddp", False) == "ddp"
    assert ranks.resolve_strategy("auto", True) == "auto"  # decided once the Trainer exists
    for key, value in slurm_vars(1, "5", 0, 29999).items():
        monkeypatch.setenv(key, value)
    # srun started the processes: plain ddp connects them, in a multirun too.
    assert ranks.resolve_strategy("ddp_spawn", True) == "ddp"
    assert ranks.resolve_strategy("ddp_fork_find_unused_parameters_false", True) == (
        "ddp_find_unused_parameters_false"
    )
    assert ranks.resolve_strategy("fsdp", True) == "fsdp"


def test_auto_with_two_devices_is_ddp_that_reexecutes_the_command(no_launcher):
    def trainer(strategy: str) -> L.Trainer:
        return L.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False)

    auto = trainer("auto")
    assert type(auto.strategy).__name__ == "DDPStrategy"
    assert auto.num_devices * auto.num_nodes == 2
    assert ranks.reexecutes_command(auto, "auto")
    assert not ranks.reexecutes_command(trainer("ddp_spawn"), "ddp_spawn")
    assert ranks.trainer_problem(auto, "auto") is None


@pytest.mark.parametrize(
    "strategy",
    [
        "auto",
        "ddp",
        "ddp_spawn",
        "ddp_fork",
        "ddp_notebook",
        "ddp_find_unused_parameters_true",
        "ddp_spawn_find_unused_parameters_false",
    ],
)
def test_start_method_from_public_information_is_lightnings(no_launcher, strategy):
    """ranks.start_method decides from the strategy name and public attributes; Lightning's
    launcher (private, read here as the independent reference) starts processes that way."""
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False)
    launcher = trainer.strategy.launcher
    popen = type(launcher).__name__ == "_SubprocessScriptLauncher"
    assert ranks.start_method(trainer, strategy) == ("popen" if popen else launcher._start_method)
    single = L.Trainer(accelerator="cpu", devices=1, logger=False)
    assert ranks.start_method(single, "auto") is None


# --- rank 0's decision ---------------------------------------------------------------------
def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob(f"{ranks.DECISION_PREFIX}*"))


def test_rank_zero_refusal_reaches_the_other_ranks(slurm, tmp_path):
    with pytest.raises(ConfigError), ranks.rank_zero_decides(tmp_path):
        raise ConfigError("data.batch_size=127 is invalid")
    with pytest.raises(ranks.RankZeroStopped, match="ConfigError: data.batch_size=127"):
        ranks.await_decision(tmp_path, 1)
    assert leftovers(tmp_path) == []  # the last rank to read it removed it


def test_rank_zero_skip_and_training_reach_the_other_ranks(slurm, tmp_path):
    with ranks.rank_zero_decides(tmp_path):
        pass  # returned without training: e.g. the job is claimed by another live process
    assert ranks.await_decision(tmp_path, 1) == ranks.Decision(
        "skip", None, "rank 0 skipped the job"
    )
    (tmp_path / f"{ranks.DECISION_PREFIX}slurm-776.0.0.json").write_text("{}")  # a dead launch's
    try:
        with ranks.rank_zero_decides(tmp_path):
            ranks.announce_training(tmp_path, tmp_path / "last.ckpt")
            assert leftovers(tmp_path) == [f"{ranks.DECISION_PREFIX}slurm-777.0.0.json"]
            decision = ranks.await_decision(tmp_path, 1)
    finally:  # the driver removes it after the fit; left here, every later CLI run inherited it
        os.environ.pop(ranks.DECISION_ENV, None)
    assert decision == ranks.Decision("train", str(tmp_path / "last.ckpt"))
    assert leftovers(tmp_path) == []


def test_a_completed_job_is_skipped_without_writing_a_byte(slurm, tmp_path):
    scores = {"test/nll": 91.5, "test/elbo": -95.25}
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed", "metrics": scores}))
    with ranks.rank_zero_decides(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    assert ranks.await_decision(tmp_path, 1).action == "skip"


def test_a_completed_job_without_a_test_score_waits_for_rank_zero(slurm, tmp_path):
    """Recorded completed without a finite test score (an earlier version's NaN): rank 0
    resumes and tests it again, so the other ranks wait for its decision rather than skip."""
    (tmp_path / "results.json").write_text(
        json.dumps({"status": "completed", "metrics": {"test/elbo": -95.25}})
    )
    with pytest.raises(ranks.RankZeroStopped, match="decided nothing"):
        ranks.await_decision(tmp_path, 1, timeout_s=0.3)


def test_no_decision_times_out_with_a_hint(slurm, tmp_path):
    start = time.monotonic()
    with pytest.raises(ranks.RankZeroStopped, match=r"within 0.3 s .*hydra.run.dir"):
        ranks.await_decision(tmp_path, 1, timeout_s=0.3)
    assert time.monotonic() - start < 5


def test_processes_lightning_starts_get_the_decision_in_the_environment(no_launcher, tmp_path):
    ranks.announce_training(tmp_path, None)  # rank 0, before Lightning starts the others
    try:
        assert ranks.await_decision(tmp_path, 1) == ranks.Decision("train")
        with pytest.raises(ranks.RankZeroStopped, match="no decision of rank 0"):
            ranks.await_decision(tmp_path / "another", 1)
    finally:
        os.environ.pop(ranks.DECISION_ENV)
    assert leftovers(tmp_path) == []


# --- controllers under gradient accumulation ---------------------------------------------------
class Recorder(VAE):
    """Records (global_step, rec_nll, kl, β) of every training micro-batch."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple[int, float, float, float]] = []

    def _step_terms(self, x, n_samples=1):
        out = super()._step_terms(x, n_samples)
        if self.trainer.training:
            values = (out["rec_nll"].item(), out["kl"].item(), out["beta"].item())
            self.seen.append((self.global_step, *values))
        return out


def geco_reference(steps, target, alpha, speed, scale, lam):
    """β = 1/λ of every step by hand: one update per step from the mean of its micro-batches."""
    betas, ma = [], None
    for micro in steps:
        betas.append(1 / lam)
        c = sum(rec for rec, _ in micro) / len(micro) - target
        ma = c if ma is None else alpha * ma + (1 - alpha) * c
        lam = min(max(lam * math.exp(speed * ma / scale), 1e-6), 1e6)
    return betas


def pi_reference(steps, kl_target, kp, ki, beta_max):
    betas, integral, beta = [], 0.0, 0.0
    for micro in steps:
        betas.append(beta)
        error = kl_target - sum(kl for _, kl in micro) / len(micro)
        p = kp / (1 + math.exp(error))
        upper, lower = max(integral, beta_max - p), min(integral, -p)
        integral = min(max(integral - ki * error, lower), upper)
        beta = min(max(p + integral, 0.0), beta_max)
    return betas


SCHEDULES = {
    "geco": {"name": "geco", "target": 58.0, "alpha": 0.5, "speed": 1.0},
    "pi": {"name": "pi", "kl_target": 0.0, "kp": 0.5, "ki": 0.2, "beta_max": 5.0},
}


@pytest.mark.parametrize(("schedule", "accumulate"), [("geco", 3), ("pi", 3), ("geco", 1)])
def test_controllers_observe_once_per_optimiser_step(tmp_path, schedule, accumulate):
    model = Recorder(
        **build_components(
            (1, 8, 8),
            {"name": "gaussian", "scale": "fixed"},
            SCHEDULES[schedule],
            {"name": "mlp", "latent_dim": 4, "hidden": [32], "activation": "relu"},
        ),
        optimizer={"name": "adam", "lr": 1e-3},
        optimization="automatic" if accumulate > 1 else "manual",
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=7,  # micro-batches per step: 3, 3, 1 (the epoch's last steps)
        limit_val_batches=0,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, VAEDataModule("digits", batch_size=64, preprocess="scale"))
    steps: dict[int, list] = {}
    for step, rec, kl, beta in model.seen:
        steps.setdefault(step, []).append((rec, kl, beta))
    sizes = [3, 3, 1] * 2 if accumulate == 3 else [1] * 14
    assert [len(micro) for micro in steps.values()] == sizes
    assert list(steps) == list(range(len(sizes))) == list(range(trainer.global_step))
    # β is that of the step: the same for all its micro-batches.
    assert all(len({beta for *_, beta in micro}) == 1 for micro in steps.values())
    observed = [[(rec, kl) for rec, kl, _ in micro] for micro in steps.values()]
    if schedule == "geco":
        options = SCHEDULES["geco"]
        expected = geco_reference(observed, 58.0, options["alpha"], options["speed"], 58.0, 1.0)
    else:
        expected = pi_reference(observed, 0.0, 0.5, 0.2, 5.0)
    betas = [micro[0][2] for micro in steps.values()]
    assert betas == pytest.approx(expected, rel=1e-5)
    assert len(set(betas)) == len(betas)  # it moved at every step


# --- two real processes --------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], cwd: Path, env: dict[str, str], name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(RUN_PY), *args],
        cwd=cwd, env=env, text=True,
        stdout=open(cwd / f"{name}.out", "w"), stderr=open(cwd / f"{name}.err", "w"),
    )  # fmt: skip


def srun(args: list[str], cwd: Path, job_id: str, step: int) -> list[subprocess.Popen]:
    """Two tasks of a simulated srun step, one per (CPU) device."""
    port, base = free_port(), clean_env(cli_env())
    return [
        launch(args, cwd, base | slurm_vars(r, job_id, step, port), f"{job_id}.{step}.{r}")
        for r in (0, 1)
    ]


def finish(procs: list[subprocess.Popen], timeout: float = 400) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()


def stderr_of(cwd: Path, name: str) -> str:
    return (cwd / f"{name}.err").read_text()[-3000:]


# Plain DDP on two CPU processes; batches of 8 per process (88 steps an epoch), so that the
# test can kill the SLURM job between its first checkpoint and its end.
DDP = [
    "data=digits",
    "data.batch_size=16",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.enable_progress_bar=false",
    "eval.iwae_k=10",
    "logger=csv",
]


@pytest.mark.slow
def test_slurm_ddp_killed_and_resumed_equals_uninterrupted_ddp(workdir):
    """``trainer.devices=2`` (strategy auto: Lightning's plain ddp, which re-runs the command
    for rank 1) takes data.batch_size as the global batch. The same job as two simulated
    srun tasks, SIGKILLed after its first checkpoint and relaunched, resumes on both ranks
    (rank 1 learns the checkpoint from rank 0's decision) and ends with exactly the metrics
    of the uninterrupted run."""
    args = [*DDP, "trainer.max_epochs=3"]
    full = launch([*args, "hydra.run.dir=full"], workdir, clean_env(cli_env()), "full")
    part = workdir / "part"
    tasks = srun([*args, "hydra.run.dir=part"], workdir, "4101", 0)
    deadline = time.monotonic() + 400
    while not (part / "checkpoints" / "last.ckpt").exists():
        assert time.monotonic() < deadline and all(t.poll() is None for t in tasks), [
            stderr_of(workdir, f"4101.0.{r}") for r in (0, 1)
        ]
        time.sleep(0.02)
    for task in tasks:
        task.send_signal(signal.SIGKILL)  # the node fails: no handler runs
    finish(tasks)
    assert json.loads((part / "results.json").read_text())["status"] == "running"
    killed_at = torch.load(part / "checkpoints" / "last.ckpt", weights_only=False)["epoch"]
    assert killed_at < 2  # training was not over

    assert finish(srun([*args, "hydra.run.dir=part"], workdir, "4101", 1)) == [0, 0], [
        stderr_of(workdir, f"4101.1.{r}") for r in (0, 1)
    ]
    assert finish([full]) == [0], stderr_of(workdir, "full")
    resumed = json.loads((part / "results.json").read_text())
    reference = json.loads((workdir / "full" / "results.json").read_text())
    assert resumed["status"] == reference["status"] == "completed"
    assert "resuming" in (part / "train.log").read_text()
    assert resumed["metrics"] == reference["metrics"]

    # The global batch: 1397 training examples, 698 per rank, in batches of 16 / 2 = 8.
    assert reference["config"]["trainer"]["strategy"] == "auto"
    last = torch.load(workdir / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3 * math.ceil(1397 // 2 / 8) == 264
    # Every rank's own RNG state is in the checkpoint.
    first, second = (state["torch"] for state in last["rng_state"]["ranks"])
    assert not torch.equal(first, second)
    for run_dir in (part, workdir / "full"):
        assert leftovers(run_dir) == [] and len(list(run_dir.rglob("results.json"))) == 1


@pytest.mark.slow
def test_slurm_ranks_follow_rank_zero_when_it_skips_or_refuses(workdir):
    """Both srun tasks exit promptly (well within the ranks' decision timeout) when rank 0
    skips a completed job (its directory untouched) or refuses the config; rank 1 reports
    rank 0's reason. (Skipping a job another process holds: the decision file, tested above.)"""
    args = [*DDP, "trainer.max_epochs=1"]
    done = workdir / "done"
    done.mkdir()
    scores = {"test/nll": 91.5, "test/elbo": -95.25}  # completed: with its test scores
    (done / "results.json").write_text(json.dumps({"status": "completed", "metrics": scores}))
    (done / "train.log").write_text("trained\n")
    before = {p: p.stat().st_mtime_ns for p in done.iterdir()}
    started = time.monotonic()
    jobs = {
        "done": srun([*args, "hydra.run.dir=done"], workdir, "4201", 0),
        "refused": srun(
            [
                *(a for a in args if not a.startswith("data.batch_size=")),
                "data.batch_size=127",
                "hydra.run.dir=refused",
            ],
            workdir,
            "4202",
            0,
        ),  # fmt: skip
    }
    codes = {name: finish(procs, timeout=300) for name, procs in jobs.items()}
    assert time.monotonic() - started < ranks.DECISION_TIMEOUT_S / 2
    assert codes["done"] == [0, 0], [stderr_of(workdir, f"4201.0.{r}") for r in (0, 1)]
    assert {p: p.stat().st_mtime_ns for p in done.iterdir()} == before  # no file added either
    assert codes["refused"][0] != 0 and codes["refused"][1] != 0
    assert "data.batch_size=127" in stderr_of(workdir, "4202.0.0")
    rank1 = stderr_of(workdir, "4202.0.1")
    assert "rank 0 did not train refused" in rank1 and "data.batch_size=127" in rank1
    assert leftovers(workdir / "refused") == []


SMI_ROWS = [
    ["550.54.15", "0", "GPU-aaaa1111-0000-0000-0000-000000000000", "NVIDIA H100 80GB HBM3"],
    ["550.54.15", "1", "GPU-bbbb2222-0000-0000-0000-000000000000", "NVIDIA A100-SXM4-40GB"],
]


@pytest.mark.parametrize(
    ("visible", "names"),
    [
        (None, ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"]),  # unset: every GPU
        ("1", ["NVIDIA A100-SXM4-40GB"]),
        ("1,0", ["NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3"]),  # in its order
        ("GPU-bbbb", ["NVIDIA A100-SXM4-40GB"]),  # a UUID prefix
        ("", []),  # no GPU
        ("0,7,1", ["NVIDIA H100 80GB HBM3"]),  # CUDA stops at the first invalid entry
        ("GPU-", []),  # a prefix of both: names no one GPU
    ],
)
def test_visible_gpu_names_follow_cuda_visible_devices(visible, names):
    from vaesweep.run.gpus import visible_names

    assert visible_names(SMI_ROWS, visible) == names


def test_device_facts_are_read_without_initialising_cuda(tmp_path, monkeypatch):
    """A job records its devices before the fit: torch.cuda.is_available() and
    get_device_name() initialise CUDA in the process, after which a fork-based DDP
    (ddp_fork, ddp_notebook) cannot start its processes ("Cannot re-initialize CUDA in
    forked subprocess"). The facts now come from NVML's count and nvidia-smi (a stand-in
    on PATH here, two GPUs), CUDA left as it was."""
    from vaesweep.run import gpus

    smi = tmp_path / "nvidia-smi"
    lines = "\\n".join(", ".join(row) for row in SMI_ROWS)
    smi.write_text(f"#!/bin/sh\nprintf '{lines}\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")

    def initialises(*args, **kwargs):
        raise AssertionError("this call initialises CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", initialises)
    monkeypatch.setattr(torch.cuda, "get_device_name", initialises)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # NVML's, for CUDA_VISIBLE_DEVICES
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    info = gpus.device_info("cuda:0")
    assert info["names"] == ["NVIDIA A100-SXM4-40GB"] and info["driver"] == "550.54.15"
    assert info["cuda_visible_devices"] == "1"
    # The job's config check, which runs before the fit too, counts the same way.
    cfg = compose_cfg(["trainer=gpu", "paths.data_dir=/tmp"])
    validate_config(cfg)


# --- ddp_spawn: how the spawned processes end is the job's outcome ------------------------------
# trainer=ddp in a multirun, a parallel launcher or a test is ddp_spawn: the training hooks run
# in processes the job's process starts. 3 epochs of 20 steps (batches of 8 per process).
SPAWN_EPOCHS, SPAWN_BATCHES = 3, 20
SPAWN = [
    "data=digits",
    "data.batch_size=16",
    f"trainer.max_epochs={SPAWN_EPOCHS}",
    f"trainer.limit_train_batches={SPAWN_BATCHES}",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "eval.iwae_k=10",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "threads=1",
    "logger=csv",
]


def start_job(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python run.py ARGS`` in its own session (a signal to its group is a terminal's
    Ctrl-C); stdout and stderr to cwd/job.log."""
    with open(cwd / "job.log", "a") as log:
        return subprocess.Popen(
            [sys.executable, str(RUN_PY), *args],
            cwd=cwd, env={**clean_env(cli_env()), **(env or {})}, text=True,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def job_log(cwd: Path) -> str:
    return (cwd / "job.log").read_text()[-4000:]


def wait_job(proc: subprocess.Popen, cwd: Path, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"still running after {timeout} s:\n{job_log(cwd)}")


@pytest.fixture(scope="module")
def spawn_reference(tmp_path_factory) -> dict:
    """The uninterrupted ddp_spawn run (trainer=ddp, a single run in a test: ddp_spawn)."""
    root = tmp_path_factory.mktemp("spawn_reference")
    proc = start_job([*SPAWN, "hydra.run.dir=run"], root)
    assert wait_job(proc, root) == 0, job_log(root)
    result = json.loads((root / "run" / "results.json").read_text())
    assert result["status"] == "completed"
    return result


@pytest.mark.slow
def test_a_divergence_under_ddp_spawn_is_recorded_diverged_with_its_step(workdir):
    """The non-finite loss is raised in a spawned process: it reached the job's process as
    torch.multiprocessing's ProcessRaisedException and was recorded failed. Now the spawned
    process records it, and the job records diverged with the step, as in one process."""
    args = [*SPAWN, "optimizer.lr=1e30", "hydra.run.dir=run"]
    proc = start_job(args, workdir)
    assert wait_job(proc, workdir) == 1, job_log(workdir)
    result = json.loads((workdir / "run" / "results.json").read_text())
    assert result["status"] == "diverged", result["error"]
    assert result["error"]["type"] == "DivergenceError"
    assert isinstance(result["error"]["step"], int) and result["error"]["step"] >= 0
    assert "DivergenceError: non-finite training loss at step" in job_log(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["job_process", "ctrl_c", "stop_file"])
def test_a_stop_under_ddp_spawn_is_interrupted_at_its_step_and_resumes(
    workdir, spawn_reference, how
):
    """Both spawned processes held after their first epoch (test hook "epoch_end"), then:
    SIGTERM to the job's process alone (it reached neither of them: the whole fit ran to its
    end, then was recorded interrupted at no step); Ctrl-C to the process group (they ended
    with status 0 and no result, and the job's process waited for one for ever); SIGINT to
    the launching process of a local_parallel sweep alone (they read its stop file and
    stopped, the job's process never did: recorded failed, and the relaunch refused it).
    Now each is recorded interrupted at the first step after the hold, exits 128 + n, and
    the relaunch resumes to exactly the uninterrupted run's metrics."""
    sweep = how == "stop_file"
    marker = workdir / "held"
    if sweep:  # (-m first: Hydra's parser takes the overrides after it)
        args = ["-m", *SPAWN, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=1"]
        args.append("hydra.sweep.dir=sweep")
    else:
        args = [*SPAWN, "hydra.run.dir=run"]
    proc = start_job(args, workdir, env=pause_env("epoch_end", marker))
    deadline = time.monotonic() + 300
    while len(marker.read_text().split() if marker.exists() else ()) < 2:  # both held
        assert proc.poll() is None and time.monotonic() < deadline, job_log(workdir)
        time.sleep(0.05)
    signum = signal.SIGTERM if how == "job_process" else signal.SIGINT
    if how == "ctrl_c":
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    if sweep:
        while not list((workdir / "sweep").glob(".stop-*")):  # the launching process's file
            assert proc.poll() is None, job_log(workdir)
            time.sleep(0.02)
    marker.with_name(f"{marker.name}.release").touch()
    assert wait_job(proc, workdir, timeout=180) == 128 + signum, job_log(workdir)
    (run_dir,) = (
        [p.parent for p in workdir.glob("sweep/*/results.json")] if sweep else [workdir / "run"]
    )
    first = json.loads((run_dir / "results.json").read_text())
    assert first["status"] == "interrupted", first["error"]
    assert first["error"]["type"] == "JobInterrupted"
    assert signal.Signals(signum).name in first["error"]["message"]
    assert first["error"]["step"] == SPAWN_BATCHES + 1  # the first batch after the hold
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == SPAWN_BATCHES  # the fit did not run on to its end

    proc = start_job(args, workdir)  # the same command
    assert wait_job(proc, workdir) == 0, job_log(workdir)
    final = json.loads((run_dir / "results.json").read_text())
    assert final["status"] == "completed" and final["attempts"] == 2
    assert "resuming" in (run_dir / "train.log").read_text()
    assert final["metrics"] == spawn_reference["metrics"]


# --- plain ddp: every rank stops at one step --------------------------------------------------
# trainer.devices=2 with strategy auto in a single run is Lightning's plain ddp: it re-runs the
# command for rank 1, a process of the job with a trainer of its own.
PLAIN_DDP = [
    *(a for a in SPAWN if a not in ("trainer=ddp", "threads=1")),
    "trainer.devices=2",
    "hydra.run.dir=run",
]


@pytest.fixture(scope="module")
def plain_ddp_reference(tmp_path_factory) -> dict:
    """The uninterrupted plain-ddp run."""
    root = tmp_path_factory.mktemp("plain_ddp_reference")
    proc = start_job(PLAIN_DDP, root)
    assert wait_job(proc, root) == 0, job_log(root)
    result = json.loads((root / "run" / "results.json").read_text())
    assert result["status"] == "completed" and result["config"]["trainer"]["strategy"] == "auto"
    return result


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl_c", "sigint_rank_0", "sigterm_rank_0", "sigterm_rank_1"])
def test_a_stop_under_plain_ddp_stops_every_rank_at_one_step_and_resumes(
    workdir, plain_ddp_reference, how
):
    """Both ranks held before the stop check of a batch of their second epoch, then a signal:
    to the process group (a terminal's Ctrl-C), or to one rank, which a signal releases at
    once while the other stays held for a second: a stop that reaches the ranks at different
    batches. Rank 1 had no stop handler (Ctrl-C raised KeyboardInterrupt inside Lightning;
    SIGTERM, Lightning's own handler, which broadcast from inside the handler), and a rank
    that stopped alone left the other in its next collective: a hang, or "Connection closed
    by peer". Now the ranks agree on the stop at the batch: the job is recorded interrupted
    at that step, nothing but the stop is reported, every process ends, and the same command
    resumes to exactly the uninterrupted run's metrics."""
    held_at = SPAWN_BATCHES + 5  # after the first epoch's checkpoint
    marker = workdir / "held"
    proc = start_job(PLAIN_DDP, workdir, env=pause_env(f"train_batch@{held_at}", marker))
    deadline = time.monotonic() + 300
    while len(pids := (marker.read_text().split() if marker.exists() else ())) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, job_log(workdir)
        time.sleep(0.05)
    (rank_1,) = {int(p) for p in pids} - {proc.pid}
    signum = signal.SIGINT if how in ("ctrl_c", "sigint_rank_0") else signal.SIGTERM
    if how == "ctrl_c":
        os.killpg(proc.pid, signum)
    else:
        os.kill(rank_1 if how.endswith("rank_1") else proc.pid, signum)
    time.sleep(1)  # the signalled rank goes on alone meanwhile
    marker.with_name(f"{marker.name}.release").touch()
    assert wait_job(proc, workdir, timeout=120) == 128 + signum, job_log(workdir)
    deadline = time.monotonic() + 30
    while "zombie" not in _proc_state(rank_1):
        assert time.monotonic() < deadline, f"rank 1 still runs\n{job_log(workdir)}"
        time.sleep(0.1)
    output = job_log(workdir)
    for noise in ("Error", "Traceback", "Connection closed", "KeyboardInterrupt"):
        assert noise not in output, output
    run_dir = workdir / "run"
    first = json.loads((run_dir / "results.json").read_text())
    assert first["status"] == "interrupted", first["error"]
    assert signal.Signals(signum).name in first["error"]["message"]
    assert first["error"]["step"] == held_at  # the batch both were held in
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == SPAWN_BATCHES  # the first epoch's

    proc = start_job(PLAIN_DDP, workdir)  # the same command
    assert wait_job(proc, workdir) == 0, job_log(workdir)
    final = json.loads((run_dir / "results.json").read_text())
    assert final["status"] == "completed" and final["attempts"] == 2
    assert final["metrics"] == plain_ddp_reference["metrics"]


def _agree_on_a_lost_claim(rank: int, port: int, out: str, run_dir: str, check: str) -> None:
    """One of two gloo ranks: rank 0 holds the job's claim (rank 1 none, as under srun or
    torchrun); another launch takes it over between two checks, which both ranks make
    together (``check``: the epoch end's reading of the claim file, or a batch end where rank
    0's heartbeat has seen it); each writes what it ended with."""
    import torch.distributed as dist

    from vaesweep.run import claims
    from vaesweep.run.signals import StopSignals

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    trainer = SimpleNamespace(
        world_size=2, global_step=7, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    claim = claims.acquire(Path(run_dir), timeout_s=600) if rank == 0 else None
    stops = StopSignals(claim=claim)
    stops.trainer = trainer
    together = getattr(stops, check)
    together(trainer)  # the claim is rank 0's: both go on
    if rank == 0:
        other = {"host": "elsewhere.example", "pid": 4242, "process_start": None}
        Path(run_dir, claims.CLAIM_FILE).write_text(
            json.dumps({**other, "token": "other", "started_at": "x"})
        )
        if check == "check_together":
            claim._mark_lost()  # as the heartbeat thread does once it reads the file
    dist.barrier()
    try:
        together(trainer)
        outcome = {"stopped": None}
    except claims.ClaimLost as lost:
        outcome = {"stopped": type(lost).__name__, "message": str(lost)}
    Path(out, f"rank{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("check", ["check_claim_together", "check_together"])
def test_ranks_stop_together_when_rank_0_loses_the_claim(tmp_path, check):
    """Two real gloo processes: once another launch has taken the job over, rank 0 (the
    claim's holder) and rank 1 (no claim) both raise ClaimLost at the same check, the one
    before an epoch's files or the one after a batch. Rank 0 raised it alone, and rank 1
    waited in its next collective (a hang, or a lost connection)."""
    import torch.multiprocessing as mp

    run_dir = tmp_path / "job"
    run_dir.mkdir()
    args = (free_port(), str(tmp_path), str(run_dir), check)
    mp.start_processes(_agree_on_a_lost_claim, args=args, nprocs=2, start_method="fork")
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["stopped"] == "ClaimLost" and "elsewhere.example:4242" in zero["message"]
    assert one["stopped"] == "ClaimLostByRank" and "rank 0" in one["message"]


def test_a_rank_that_stops_with_rank_0s_lost_claim_is_not_taken_for_a_stop(tmp_path):
    """A rank > 0 (no claim of its own) ending with ClaimLostByRank while the sweep's stop
    file says SIGTERM: the claim loss leaves its block as it is (rank 0's does too), so the
    rank reports no failure into the new holder's directory and does not wait for a record
    that is the new holder's (it was made a JobInterrupted ended by the loss)."""
    from vaesweep.run.claims import ClaimLostByRank
    from vaesweep.run.signals import StopSignals

    stop_file = tmp_path / "stop"
    stop_file.write_text("SIGTERM")
    with pytest.raises(ClaimLostByRank), StopSignals(stop_file):
        raise ClaimLostByRank()


def _threads() -> list[str]:
    """The names of this process's threads (Linux)."""
    tasks = Path("/proc/self/task")
    return sorted((tasks / t / "comm").read_text().strip() for t in os.listdir(tasks))


def _at_the_last_exit_handler(rank: int, out: str) -> None:
    """What is left of the process group when the interpreter is about to finalize."""
    import torch.distributed as dist

    seen = {"initialized": dist.is_initialized(), "threads": _threads()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))


def _end_a_rank(rank: int, port: int, out: str, set_up: bool) -> None:
    """One of two gloo ranks, as a spawned process of a fit ends: the product's callback set
    up in it (``set_up``) or not, a few all-reduces of values (as the ranks' checks make
    them), then the process returns and the interpreter exits."""
    import atexit

    import torch.distributed as dist

    from vaesweep.run.callbacks import Resumable
    from vaesweep.run.signals import reduced

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # both ranks on one core
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    atexit.register(_at_the_last_exit_handler, rank, out)  # the first registered runs last
    trainer = SimpleNamespace(
        world_size=2, global_step=0, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    if set_up:
        Resumable().setup(trainer, None, "fit")  # type: ignore[arg-type]
    for _ in range(20):
        reduced([rank], trainer, "max")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rank_ends_its_process_group_before_the_interpreter_finalizes(tmp_path):
    """Two real gloo processes started as ddp_spawn starts them (spawn: the interpreter
    finalizes at their end). Left to finalization, gloo's worker threads are still there
    at the last exit handler, and a worker dropping a finished all-reduce's tensors then
    aborted the process now and then ("terminate called without an active exception",
    SIGABRT: a ddp_spawn job recorded failed after its fit). Once the product's callback is
    set up in a rank, the group is destroyed at exit: no worker is left when finalization
    starts, and no process aborts (five pairs, both ranks on one core)."""
    import torch.multiprocessing as mp

    mp.start_processes(
        _end_a_rank, args=(free_port(), str(tmp_path), False), nprocs=2, start_method="spawn"
    )
    for rank in (0, 1):  # the check sees what is left
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["initialized"] and "pt_gloo_runloop" in seen["threads"], seen
    for _ in range(5):
        for rank in (0, 1):
            (tmp_path / f"rank{rank}.json").unlink()
        # an abort raises ProcessExitedException here
        mp.start_processes(
            _end_a_rank, args=(free_port(), str(tmp_path), True), nprocs=2, start_method="spawn"
        )
        for rank in (0, 1):
            seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
            assert not seen["initialized"], seen
            assert not any(name.startswith("pt_gloo") for name in seen["threads"]), seen


def _proc_state(pid: int) -> str:
    """The state line of a process's /proc status, "zombie" once it has ended."""
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def _agree(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks: rank 0 has received SIGTERM, rank 1 nothing; both check
    together (first with no stop anywhere), and write what they ended with."""
    import torch.distributed as dist

    from vaesweep.run.signals import JobInterrupted, StopSignals

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    trainer = SimpleNamespace(
        world_size=2, global_step=7, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    stops = StopSignals()
    stops.trainer = trainer
    handed = []
    stops._previous = {signal.SIGTERM: lambda *a: handed.append(a)}  # submitit's, say
    stops.check_together(trainer)  # nobody has a stop: goes on
    if rank == 0:
        stops._handle(signal.SIGTERM, None)
    try:
        stops.check_together(trainer)
        outcome = {"stopped": False}
    except JobInterrupted as stop:
        stop.hand_over()
        outcome = {"stopped": True, "signum": stop.signum, "step": stop.step, "handed": len(handed)}
    Path(out, f"rank{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()


def test_ranks_agree_on_a_stop_only_one_of_them_received(tmp_path):
    """Two real gloo processes: a stop that only rank 0 received stops both at the same
    check, with its signal and step, and each hands it to its own earlier handler (a
    scheduler's requeue runs on any rank); with no stop anywhere, neither stops."""
    import torch.multiprocessing as mp

    mp.start_processes(_agree, args=(free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    for rank in (0, 1):
        outcome = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert outcome == {"stopped": True, "signum": signal.SIGTERM, "step": 7, "handed": 1}
