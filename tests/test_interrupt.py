"""Interrupted and killed jobs, for real: the CLI in subprocesses, real signals (os.kill),
relaunches of the same command, metrics compared with an uninterrupted run for equality."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaesweep.claims import CLAIM_FILE
from vaesweep.interrupt import PAUSE_ENV
from vaesweep.sweep import SUMMARY_FILE, SWEEP_FILE
from vaesweep.wandb_offline import read_offline_run

from conftest import RUN_PY, cli_env

EPOCHS, BATCHES = 3, 20
# Small, but long enough to be signalled mid-training: 3 epochs of 20 steps on digits.
BUDGET = [
    "data=digits",
    "data.batch_size=16",
    f"trainer.max_epochs={EPOCHS}",
    f"trainer.limit_train_batches={BATCHES}",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "eval.iwae_k=10",
    "likelihood=laplace",
    "likelihood.scale=learned",
]
JOB = [*BUDGET, "beta=2", "logger=none"]


def start(args: list[str], cwd: Path, env: dict[str, str] | None = None, umask: int | None = None):
    """``python run.py ARGS`` started in its own session (so a signal to its process group
    is what a terminal's Ctrl-C does); output goes to cwd/out-<n>.log."""
    n = len(list(cwd.glob("out-*.log")))
    log_path = cwd / f"out-{n}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(RUN_PY), *args],
            cwd=cwd,
            env={**cli_env(), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if umask is None else (lambda: os.umask(umask)),
        )
    proc.log_path = log_path
    return proc


def output(proc) -> str:
    return Path(proc.log_path).read_text()


def finish(proc, timeout: float = 600) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def run_to_end(args: list[str], cwd: Path, **kw) -> tuple[int, str]:
    proc = start(args, cwd, **kw)
    return finish(proc), output(proc)


def wait_for(path_glob: tuple[Path, str], proc, timeout: float = 300) -> Path:
    """The first file matching ``root.glob(pattern)``, waiting for it while ``proc`` runs."""
    root, pattern = path_glob
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(
                f"exited ({proc.returncode}) before {pattern} appeared:\n{output(proc)[-3000:]}"
            )
        time.sleep(0.01)
    pytest.fail(f"{pattern} did not appear in {timeout} s")


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run of JOB (under umask 0o002: test_atomic checks its files)."""
    root = tmp_path_factory.mktemp("reference")
    rc, out = run_to_end([*JOB, "hydra.run.dir=reference"], root, umask=0o002)
    assert rc == 0, out[-3000:]
    r = result(root / "reference")
    assert r["status"] == "completed" and r["attempts"] == 1
    assert any(k.startswith("val/") for k in r["metrics"])
    return r


def test_run_files_get_the_permissions_the_umask_allows(reference):
    """The reference run ran under umask 0o002: results, checkpoints and image grids are
    0o664 like any other file it creates (atomic writes used to leave them 0o600)."""
    run_dir = Path(reference["run_dir"])
    for name in ("results.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
                 "reconstructions.png", "samples.png", "train.log"):  # fmt: skip
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o664, name


def test_checkpoints_keep_the_last_validation_metrics(reference):
    """What a resumed job with nothing left to train reports as val/* (read here from the
    file, as a process whose fit ran in spawned processes reads it)."""
    from vaesweep.callbacks import Resumable

    last = Path(reference["run_dir"]) / "checkpoints" / "last.ckpt"
    val = {k: v for k, v in reference["metrics"].items() if k.startswith("val/")}
    assert val and Resumable.stored_val_metrics(last) == val
    assert Resumable.stored_val_metrics(None) == {}


def check_resumed(run_dir: Path, reference: dict, first: dict, attempts: int = 2) -> dict:
    """The relaunched job: completed, exactly the reference's metrics, attempts counted,
    the first start kept, the time of every attempt added up, its claim released."""
    r = result(run_dir)
    assert r["status"] == "completed" and r["error"] is None
    assert r["metrics"] == reference["metrics"]
    assert r["attempts"] == attempts
    assert r["started_at"] == first["started_at"]
    assert r["duration_s"] > (first["duration_s"] or 0)
    assert not (run_dir / CLAIM_FILE).exists()
    return r


SIGNALS = [  # SIGINT is also tested on a sweep, below
    "SIGTERM",
    pytest.param("SIGINT", marks=pytest.mark.slow),
    pytest.param("SIGUSR1", marks=pytest.mark.slow),
    pytest.param("SIGUSR2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", SIGNALS)
def test_signal_records_interrupted_and_the_relaunch_resumes(workdir, reference, name):
    signum = getattr(signal, name)
    args = [*JOB, "hydra.run.dir=run"]
    proc = start(args, workdir)
    wait_for((workdir / "run" / "checkpoints", "last.ckpt"), proc)  # epoch 1 done
    os.kill(proc.pid, signum)
    assert finish(proc) == 128 + signum, output(proc)[-3000:]
    first = result(workdir / "run")
    assert first["status"] == "interrupted"
    assert first["error"]["type"] == "JobInterrupted" and name in first["error"]["message"]
    step = first["error"]["step"]
    assert isinstance(step, int) and BATCHES <= step < EPOCHS * BATCHES  # mid-training
    assert first["metrics"] == {} and first["attempts"] == 1
    assert first["duration_s"] > 0 and first["finished_at"]
    assert not (workdir / "run" / CLAIM_FILE).exists()
    assert f"stopped by {name}" in output(proc)

    rc, out = run_to_end(args, workdir)
    assert rc == 0, out[-3000:]
    check_resumed(workdir / "run", reference, first)
    assert "resuming" in (workdir / "run" / "train.log").read_text()


# Where a job is SIGKILLed: mid-training (after an epoch's checkpoint), or stopped by the test
# hook in the test loop, between the two image grids, or with the final results.json written
# to its temp file but not yet renamed.
PHASES = [  # result_write also checks a resume that has nothing left to train (val/* kept)
    pytest.param("train", marks=pytest.mark.slow),
    pytest.param("test", marks=pytest.mark.slow),
    pytest.param("images", marks=pytest.mark.slow),
    "result_write",
]


@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_in_any_phase_resumes_to_the_uninterrupted_result(workdir, reference, phase):
    args = [*JOB, "hydra.run.dir=run"]
    run_dir = workdir / "run"
    marker = workdir / "paused"
    env = {} if phase == "train" else {PAUSE_ENV: f"{phase}:{marker}"}
    proc = start(args, workdir, env=env)
    if phase == "train":
        wait_for((run_dir / "checkpoints", "last.ckpt"), proc)
    else:
        wait_for((workdir, marker.name), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = result(run_dir)
    assert first["status"] == "running" and first["metrics"] == {}
    assert (run_dir / CLAIM_FILE).exists()  # left by the killed process: stale
    if phase == "images":
        assert (run_dir / "reconstructions.png").exists() and not (run_dir / "samples.png").exists()
    if phase == "result_write":  # the complete new result, never renamed into place
        (tmp,) = run_dir.glob(".results.json.*.tmp")
        assert json.loads(tmp.read_text())["status"] == "completed"

    rc, out = run_to_end(args, workdir)  # without the hook
    assert rc == 0, out[-3000:]
    check_resumed(run_dir, reference, first)
    assert not list(run_dir.glob(".*.tmp"))
    ref_dir = Path(reference["run_dir"])
    for image in ("reconstructions.png", "samples.png"):
        assert (run_dir / image).read_bytes() == (ref_dir / image).read_bytes(), image


def test_ctrl_c_stops_a_sequential_sweep_and_the_relaunch_continues_it(workdir, reference):
    """SIGINT to the process group (what Ctrl-C in a terminal sends) while the first of two
    jobs trains: it is recorded as interrupted, the second never starts, the summary lists
    what there is; the relaunch resumes the first and runs the second."""
    args = ["-m", "beta=2,4", *BUDGET, "logger=none", "hydra.sweep.dir=sweep"]
    sweep = workdir / "sweep"
    proc = start(args, workdir)
    wait_for((sweep, "beta=2,*/checkpoints/last.ckpt"), proc)
    os.killpg(proc.pid, signal.SIGINT)
    assert finish(proc) == 130, output(proc)[-3000:]
    out = output(proc)
    (job,) = (p for p in sweep.iterdir() if p.is_dir())  # the second job never started
    assert job.name.startswith("beta=2,")
    first = result(job)
    assert first["status"] == "interrupted" and "SIGINT" in first["error"]["message"]
    with open(sweep / SUMMARY_FILE) as f:
        assert [(r["beta"], r["status"]) for r in csv.DictReader(f)] == [("2", "interrupted")]
    assert json.loads((sweep / SWEEP_FILE).read_text())["stopped_by"] == "SIGINT"
    assert "interrupted" in out and "1 of 2 jobs not started" in out

    rc, out = run_to_end(args, workdir)
    assert rc == 0, out[-3000:]
    results = {p.name.split(",")[0]: result(p) for p in sweep.iterdir() if p.is_dir()}
    assert sorted(results) == ["beta=2", "beta=4"]
    assert results["beta=4"]["status"] == "completed" and results["beta=4"]["attempts"] == 1
    check_resumed(job, reference, first)
    assert json.loads((sweep / SWEEP_FILE).read_text())["stopped_by"] is None


def test_wandb_resumed_job_is_the_same_wandb_run(workdir):
    """W&B offline: the interrupted attempt and the resumed one write one W&B run (two
    offline directories with the same run id); the id is kept in results.json."""
    args = [*BUDGET, "beta=2", "logger=wandb", "hydra.run.dir=run"]
    run_dir = workdir / "run"
    proc = start(args, workdir)
    wait_for((run_dir / "checkpoints", "last.ckpt"), proc)
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc) == 128 + signal.SIGTERM, output(proc)[-3000:]
    first = result(run_dir)
    assert first["status"] == "interrupted" and first["wandb_run_id"]

    rc, out = run_to_end(args, workdir)
    assert rc == 0, out[-3000:]
    final = result(run_dir)
    assert final["status"] == "completed" and final["attempts"] == 2
    assert final["wandb_run_id"] == first["wandb_run_id"]
    assert final["started_at"] == first["started_at"]
    runs = [read_offline_run(d) for d in sorted((run_dir / "wandb").glob("offline-run-*"))]
    assert len(runs) == 2
    assert {r["run_id"] for r in runs} == {first["wandb_run_id"]}
    assert runs[0]["summary"]["status"] == "interrupted"
    assert runs[1]["summary"]["status"] == "completed"
    assert runs[1]["summary"]["test/nll"] == pytest.approx(final["metrics"]["test/nll"])
    # The resumed attempt's summary has the best val/elbo of both attempts' validations
    # (its own W&B process saw only the later ones), and the last one, as results.json.
    logged = [row["val/elbo"] for run in runs for row in run["history"] if "val/elbo" in row]
    assert len(logged) >= EPOCHS
    assert runs[1]["summary"]["val/elbo"] == {
        "max": max(logged),
        "last": pytest.approx(final["metrics"]["val/elbo"], rel=1e-12),
    }


@pytest.mark.slow
def test_wandb_summary_of_a_job_resumed_after_its_last_epoch(workdir):
    """Stopped while testing, the job resumes with nothing left to train or validate: its
    second attempt logs no val/elbo, and its W&B summary still has the best and the last
    val/elbo, those the first attempt logged (the best is kept in the checkpoint)."""
    args = [*BUDGET, "beta=2", "logger=wandb", "hydra.run.dir=run"]
    run_dir, marker = workdir / "run", workdir / "paused"
    proc = start(args, workdir, env={PAUSE_ENV: f"test:{marker}"})
    wait_for((workdir, marker.name), proc)
    for _ in range(2):  # a second signal stops the job at once, wherever it is
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue
    assert finish(proc) == 128 + signal.SIGTERM, output(proc)[-3000:]
    assert result(run_dir)["status"] == "interrupted"

    rc, out = run_to_end(args, workdir)
    assert rc == 0, out[-3000:]
    final = result(run_dir)
    assert final["status"] == "completed" and final["attempts"] == 2
    first, second = (read_offline_run(d) for d in sorted((run_dir / "wandb").glob("offline-*")))
    logged = [row["val/elbo"] for row in first["history"] if "val/elbo" in row]
    assert len(logged) == EPOCHS
    assert not any("val/elbo" in row for row in second["history"])
    assert second["summary"]["val/elbo"] == {
        "max": max(logged),
        "last": pytest.approx(final["metrics"]["val/elbo"], rel=1e-12),
    }
    assert second["summary"]["test/nll"] == pytest.approx(final["metrics"]["test/nll"])


@pytest.mark.slow
def test_a_job_stopped_before_its_first_checkpoint_starts_again(workdir, reference):
    """SIGTERM while the job is still starting (before any checkpoint): recorded as
    interrupted; the relaunch trains from step 0 (a new W&B run, since W&B would drop the
    steps it has seen) and ends with the reference metrics; attempts and time carry over."""
    args = [*BUDGET, "beta=2", "logger=wandb", "hydra.run.dir=run"]
    run_dir = workdir / "run"
    proc = start(args, workdir)
    wait_for((run_dir, "results.json"), proc)
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc) == 128 + signal.SIGTERM, output(proc)[-3000:]
    first = result(run_dir)
    assert first["status"] == "interrupted"
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()

    rc, out = run_to_end(args, workdir)
    assert rc == 0, out[-3000:]
    final = check_resumed(run_dir, reference, first)
    assert final["wandb_run_id"] and final["wandb_run_id"] != first["wandb_run_id"]
    assert "resuming" not in (run_dir / "train.log").read_text()
