"""Interrupted and killed jobs, for real: the CLI in subprocesses, real signals (os.kill),
relaunches of the same command, metrics compared with an uninterrupted run for equality."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vaesweep.analysis.wandb_summary import TABLE_KEY
from vaesweep.run.claims import CLAIM_FILE
from vaesweep.run.loggers import SUMMARY_JOB_TYPE
from vaesweep.sweep.grid import SUMMARY_FILE, SWEEP_FILE

from conftest import RUN_PY, TINY, cli_env
from pause import pause_env
from wandb_offline import read_offline_run

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
    "threads=1",  # the same arithmetic in every launcher (joblib would give each job 1)
]
JOB = [*BUDGET, "beta=2", "logger=csv"]  # metrics.csv: the history a resume keeps


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


def wait_for_all(root: Path, patterns: list[str], proc, timeout: float = 300) -> None:
    """Waits (while ``proc`` runs) until every pattern matches a file under root."""
    for pattern in patterns:
        wait_for((root, pattern), proc, timeout)


def summary(sweep: Path) -> list[tuple[str, str]]:
    """(beta, status) of every row of the sweep's summary.csv."""
    with open(sweep / SUMMARY_FILE) as f:
        return [(r["beta"], r["status"]) for r in csv.DictReader(f)]


def jobs(sweep: Path) -> dict[str, Path]:
    """The job directories of a sweep by their beta ("beta=2")."""
    return {
        p.name.split(",")[0]: p for p in sweep.iterdir() if p.is_dir() and p.name != ".submitit"
    }


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
    from vaesweep.run.callbacks import Resumable

    last = Path(reference["run_dir"]) / "checkpoints" / "last.ckpt"
    val = {k: v for k, v in reference["metrics"].items() if k.startswith("val/")}
    assert val and Resumable.stored_val_metrics(last) == val
    assert Resumable.stored_val_metrics(None) == {}
    # Under the key Lightning gave it by default (the class name), as in older checkpoints.
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["callbacks"]["Resumable"]["val_metrics"] == val


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
    # The checkpoints it resumed from were overwritten, never versioned (last-v1.ckpt).
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    # The metric history is the uninterrupted run's, row for row (Lightning's CSV logger
    # deleted the rows of the attempts before a resumed one).
    if r["config"]["logger"]["name"] != "none":
        assert csv_rows(run_dir / "metrics.csv") == csv_rows(
            Path(reference["run_dir"]) / "metrics.csv"
        )
        assert not (run_dir / ".metrics.earlier.csv").exists()
    return r


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


SIGNALS = [  # SIGINT is also tested on a sweep, below
    "SIGTERM",
    pytest.param("SIGINT", marks=pytest.mark.slow),
    pytest.param("SIGUSR1", marks=pytest.mark.slow),
    pytest.param("SIGUSR2", marks=pytest.mark.slow),
]


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_job_validated_mid_epoch_resumes_from_an_epoch_end(workdir):
    """trainer.val_check_interval=0.5 validates twice an epoch. last.ckpt was written at
    the mid-epoch validation (it improved val/elbo), and a job stopped after it resumed
    mid-epoch: the epoch's data order, noise and running means restarted, and it completed
    with metrics other than an uninterrupted run's. last.ckpt is now written at epoch ends
    only: the job repeats the epoch it was stopped in and ends as the uninterrupted run."""
    args = [*JOB, "trainer.val_check_interval=0.5"]
    rc, out = run_to_end([*args, "hydra.run.dir=reference"], workdir)
    assert rc == 0, out[-3000:]
    reference = result(workdir / "reference")
    proc = start([*args, "hydra.run.dir=run"], workdir)
    last = wait_for((workdir / "run" / "checkpoints", "last.ckpt"), proc)
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc) == 128 + signal.SIGTERM, output(proc)[-3000:]
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert step % BATCHES == 0, step  # an epoch's end, not its middle
    first = result(workdir / "run")
    assert first["status"] == "interrupted"
    rc, out = run_to_end([*args, "hydra.run.dir=run"], workdir)
    assert rc == 0, out[-3000:]
    check_resumed(workdir / "run", reference, first)


# Where a job is SIGKILLed: mid-training (after an epoch's checkpoint), or stopped by the test
# hook in the test loop, between the two image grids, or with the final results.json written
# to its temp file but not yet renamed.
PHASES = [  # result_write also checks a resume that has nothing left to train (val/* kept)
    pytest.param("train", marks=pytest.mark.slow),
    pytest.param("test", marks=pytest.mark.slow),
    pytest.param("images", marks=pytest.mark.slow),
    "result_write",
]


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_in_any_phase_resumes_to_the_uninterrupted_result(workdir, reference, phase):
    args = [*JOB, "hydra.run.dir=run"]
    run_dir = workdir / "run"
    marker = workdir / "paused"
    env = {} if phase == "train" else pause_env(phase, marker)
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


@pytest.mark.slow
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
    # The relaunch is the command the sweep printed (its directory as sweep.resume).
    printed = shlex.split(out.split("Continue this sweep:\n")[1].splitlines()[0])
    assert Path(shutil.which(printed[0])).resolve() == Path(sys.executable).resolve()
    assert printed[1] == str(RUN_PY) and printed[-1] == f"hydra.sweep.dir={sweep.resolve()}"

    rc, out = run_to_end(printed[2:], workdir)
    assert rc == 0, out[-3000:]
    assert "Continue this sweep" not in out
    results = {p.name.split(",")[0]: result(p) for p in sweep.iterdir() if p.is_dir()}
    assert sorted(results) == ["beta=2", "beta=4"]
    assert results["beta=4"]["status"] == "completed" and results["beta=4"]["attempts"] == 1
    check_resumed(job, reference, first)
    assert json.loads((sweep / SWEEP_FILE).read_text())["stopped_by"] is None


@pytest.mark.slow
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
    printed = shlex.split(output(proc).split("continue it with: ")[1].splitlines()[0])
    assert printed[1:] == [str(RUN_PY), *args[:-1], f"hydra.run.dir={run_dir.resolve()}"]

    rc, out = run_to_end(printed[2:], workdir)  # the command the run printed
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
    proc = start(args, workdir, env=pause_env("test", marker))
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


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_a_signal_while_the_training_stack_is_imported_leaves_no_job_behind(workdir, mode):
    """SIGINT while the process imports the driver (Lightning), held there by the test hook
    "driver_import": that happens before a single run's or a basic sweep's first job makes
    its directory, so the stop leaves none; a sweep writes its (empty) summary. Exit 130,
    one line, no traceback; the same command then runs to the end."""
    sweep = workdir / "sweep"
    args = (
        [*JOB, "hydra.run.dir=run"]
        if mode == "run"
        else ["-m", "beta=2,4", *BUDGET, "logger=none", f"hydra.sweep.dir={sweep}"]
    )
    marker = workdir / "importing"
    proc = start(args, workdir, env=pause_env("driver_import", marker))
    wait_for((workdir, marker.name), proc)
    os.kill(proc.pid, signal.SIGINT)
    assert finish(proc) == 128 + signal.SIGINT, output(proc)[-3000:]
    out = output(proc)
    assert "Traceback" not in out
    if mode == "run":
        assert not (workdir / "run").exists()
        assert "[vaesweep] stopped by SIGINT" in out
    else:
        assert not jobs(sweep)  # no job directory
        assert "Sweep stopped by SIGINT: 2 of 2 jobs not started" in out
        assert json.loads((sweep / SWEEP_FILE).read_text())["stopped_by"] == "SIGINT"
    rc, out = run_to_end(args, workdir)
    assert rc == 0, out[-3000:]
    where = [workdir / "run"] if mode == "run" else list(jobs(sweep).values())
    assert [result(d)["status"] for d in where] == ["completed"] * len(where)


@pytest.mark.slow
def test_a_signal_between_two_jobs_stops_the_sweep_with_its_summary(workdir, reference):
    """SIGTERM while a sequential sweep is between two jobs, held there by the test hook
    "between_jobs" (the first job completed and its claim released, the second not yet
    begun): the sweep stops with 143, no second job directory, the summary and sweep.json
    written with what finished; the relaunch skips the first job and runs the second."""
    args = ["-m", "beta=2,4", *BUDGET, "logger=none", "hydra.sweep.dir=sweep"]
    sweep, marker = workdir / "sweep", workdir / "between"
    proc = start(args, workdir, env=pause_env("between_jobs", marker))
    wait_for((workdir, marker.name), proc)
    (job,) = jobs(sweep).values()
    assert job.name.startswith("beta=2,") and result(job)["status"] == "completed"
    assert not (job / CLAIM_FILE).exists()
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc) == 128 + signal.SIGTERM, output(proc)[-3000:]
    assert list(jobs(sweep)) == ["beta=2"]  # the second job never started
    assert summary(sweep) == [("2", "completed")]
    record = json.loads((sweep / SWEEP_FILE).read_text())
    assert record["stopped_by"] == "SIGTERM" and record["finished_at"]
    assert "Sweep stopped by SIGTERM: 1 of 2 jobs not started" in output(proc)
    assert result(job)["metrics"] == reference["metrics"]

    rc, out = run_to_end(args, workdir)
    assert rc == 0, out[-3000:]
    assert "skipping beta=2," in out
    results = {k: result(v) for k, v in jobs(sweep).items()}
    assert [(k, r["status"], r["attempts"]) for k, r in sorted(results.items())] == [
        ("beta=2", "completed", 1),
        ("beta=4", "completed", 1),
    ]
    assert summary(sweep) == [("2", "completed"), ("4", "completed")]
    assert json.loads((sweep / SWEEP_FILE).read_text())["stopped_by"] is None


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local_parallel", "joblib"])
@pytest.mark.parametrize("to", ["process", "group"])
def test_ctrl_c_stops_a_parallel_sweep_and_the_relaunch_continues_it(
    workdir, reference, to, launcher
):
    """vaesweep's local_parallel launcher and Hydra's joblib launcher, two jobs at once in
    worker processes, a third waiting: SIGINT
    to the launching process only (``kill -INT``), or to its whole process group (what
    Ctrl-C in a terminal sends: the workers get it too), while both jobs are mid-training
    (held after their first epoch by the test hook "epoch_end", released once the signal
    was sent). Both record ``interrupted`` (not failed) at that step, the third never
    starts, the launching process writes the summary and exits 130; the relaunch resumes the
    two and runs the third, and the resumed job ends with the reference's metrics."""
    args = [
        "-m", "beta=2,4,8", *BUDGET, "logger=none", f"hydra/launcher={launcher}",
        "hydra.launcher.n_jobs=2", "hydra.sweep.dir=sweep",
    ]  # fmt: skip
    sweep, marker = workdir / "sweep", workdir / "epoch_end"
    proc = start(args, workdir, env=pause_env("epoch_end", marker))
    deadline = time.monotonic() + 300
    while len(set(marker.read_text().split()) if marker.exists() else ()) < 2:  # both held
        assert proc.poll() is None and time.monotonic() < deadline, output(proc)[-3000:]
        time.sleep(0.05)
    if to == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGINT)
    wait_for((sweep, ".stop-*"), proc)  # the launching process has told its workers
    marker.with_name(f"{marker.name}.release").touch()
    assert finish(proc) == 130, output(proc)[-3000:]
    out = output(proc)
    first = {k: result(v) for k, v in jobs(sweep).items() if (v / "results.json").exists()}
    assert sorted(first) == ["beta=2", "beta=4"]  # the third job never started
    if launcher == "local_parallel":  # never handed out: not even its directory
        assert sorted(jobs(sweep)) == ["beta=2", "beta=4"]
    for r in first.values():
        assert r["status"] == "interrupted", r["error"]
        assert r["error"]["type"] == "JobInterrupted" and "SIGINT" in r["error"]["message"]
        assert r["error"]["step"] == BATCHES + 1  # the first batch after the hold: mid-training
    assert summary(sweep) == [("2", "interrupted"), ("4", "interrupted")]
    assert json.loads((sweep / SWEEP_FILE).read_text())["stopped_by"] == "SIGINT"
    assert "1 of 3 jobs not started" in out
    assert not list(sweep.glob(".stop-*")) and not list(sweep.glob(f"*/{CLAIM_FILE}"))

    rc, out = run_to_end(args, workdir)
    assert rc == 0, out[-3000:]
    final = {k: result(v) for k, v in jobs(sweep).items()}
    assert sorted(final) == ["beta=2", "beta=4", "beta=8"]
    assert [final[k]["attempts"] for k in sorted(final)] == [2, 2, 1]
    assert all(r["status"] == "completed" for r in final.values())
    check_resumed(jobs(sweep)["beta=2"], reference, first["beta=2"])
    assert summary(sweep) == [("2", "completed"), ("4", "completed"), ("8", "completed")]


# --- SLURM, simulated through its environment variables (as Lightning's own tests do) --------
FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "$SCONTROL_LOG"
"""


def fake_slurm(tmp: Path, job_id: str = "4242") -> tuple[dict[str, str], Path]:
    """The environment of a one-task SLURM batch job, with a ``scontrol`` on PATH that
    records its calls (a requeue would show there); returns it and the record's path."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(FAKE_SCONTROL)
    scontrol.chmod(0o755)
    log = tmp / "scontrol.log"
    env = {k: v for k, v in cli_env().items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        SCONTROL_LOG=str(log),
        SLURM_JOB_ID=job_id,
        SLURM_JOB_NAME="vaesweep-test",
        SLURM_NTASKS="1",
        SLURM_NNODES="1",
        SLURM_NODEID="0",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
    )
    return env, log


LIGHTNING_FIT = """
import os, signal, sys
import lightning as L, torch
from torch.utils.data import DataLoader, TensorDataset
from vaesweep.run.driver import slurm_plugins

class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
    def training_step(self, batch, i):
        if i == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return self.layer(batch[0]).sum()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

plugins = slurm_plugins([]) if sys.argv[1] == "vaesweep" else []
trainer = L.Trainer(max_epochs=1, limit_train_batches=5, logger=False, plugins=plugins,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=sys.argv[2])
trainer.fit(Model(), DataLoader(TensorDataset(torch.randn(20, 4)), batch_size=4))
print("fit returned")
"""


@pytest.mark.slow
@pytest.mark.parametrize("plugins", ["lightning", "vaesweep"])
def test_lightning_requeues_under_slurm_unless_vaesweep_turns_it_off(tmp_path, plugins):
    """The reference behaviour the next test relies on: in the simulated SLURM job, a plain
    Lightning fit that receives SIGUSR1 runs ``scontrol requeue <job id>`` (its
    SLURMEnvironment's auto-requeue) and trains on; with vaesweep's plugins Lightning
    installs no such handler, and SIGUSR1 takes its default action (the process ends)."""
    env, log = fake_slurm(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", LIGHTNING_FIT, plugins, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if plugins == "lightning":
        assert proc.returncode == 0 and "fit returned" in proc.stdout, proc.stderr[-3000:]
        assert log.read_text().split() == ["requeue", "4242"]
        assert list(tmp_path.glob("hpc_ckpt_*.ckpt"))
    else:
        assert proc.returncode == -signal.SIGUSR1, proc.stderr[-3000:]
        assert not log.exists() and not list(tmp_path.glob("hpc_ckpt_*.ckpt"))


@pytest.mark.slow
def test_sigusr1_under_slurm_is_interrupted_and_never_a_lightning_requeue(workdir, reference):
    """A vaesweep job in the simulated SLURM job gets SIGUSR1 mid-training: ``interrupted``
    with exit 138 (128 + 10), no ``scontrol`` call and no ``hpc_ckpt`` (Lightning's
    auto-requeue is off); the requeued job (the same command, SLURM_RESTART_COUNT=1)
    resumes to the reference's metrics."""
    env, log = fake_slurm(workdir)
    args = [*JOB, "hydra.run.dir=run"]
    run_dir = workdir / "run"
    proc = start(args, workdir, env=env)
    wait_for((run_dir / "checkpoints", "last.ckpt"), proc)
    os.kill(proc.pid, signal.SIGUSR1)
    assert finish(proc) == 128 + signal.SIGUSR1, output(proc)[-3000:]
    first = result(run_dir)
    assert first["status"] == "interrupted" and "SIGUSR1" in first["error"]["message"]
    assert not log.exists()
    assert not list(run_dir.rglob("hpc_ckpt_*"))

    rc, out = run_to_end(args, workdir, env={**env, "SLURM_RESTART_COUNT": "1"})
    assert rc == 0, out[-3000:]
    check_resumed(run_dir, reference, first)
    assert not log.exists()


@pytest.mark.slow
def test_submitit_time_out_requeues_the_job_and_it_resumes(workdir, reference):
    """SLURM's time-out and pre-emption path, on submitit's local executor with a real
    time-out (not simulated): ``hydra/launcher=submitit_local`` with
    ``hydra.launcher.timeout_min=1``, so submitit's controller sends the job SIGUSR2 30 s
    after it started (the local executor's signal delay), as SLURM does before a time
    limit. To be sure the time-out meets the job mid-training, the test hook "epoch_end"
    holds the first attempt after its first epoch (a stop signal ends the hold).

    The job stops at its next batch and records ``interrupted`` (not failed); then
    submitit's own handler, handed the signal, requeues it (exit 144, the controller starts
    it again). The second attempt resumes from the checkpoint and ends ``completed`` with
    the reference's metrics, attempts = 2; the launching process exits 0."""
    args = [
        "-m", *JOB, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=1",
        "hydra.sweep.dir=sweep",
    ]  # fmt: skip
    sweep, marker = workdir / "sweep", workdir / "epoch_end"
    proc = start(args, workdir, env=pause_env("epoch_end", marker))
    wait_for((workdir, marker.name), proc)
    (job,) = jobs(sweep).values()
    deadline = time.monotonic() + 120
    while result(job)["status"] != "interrupted":  # the time-out, 30 s after the job started
        assert proc.poll() is None and time.monotonic() < deadline, output(proc)[-3000:]
        time.sleep(0.1)
    first = result(job)
    assert first["error"]["type"] == "JobInterrupted" and "SIGUSR2" in first["error"]["message"]
    assert first["error"]["step"] == BATCHES + 1
    marker.with_name(f"{marker.name}.release").touch()  # the requeued attempt runs freely
    assert finish(proc) == 0, output(proc)[-3000:]
    check_resumed(job, reference, first)
    assert "resuming" in (job / "train.log").read_text()
    with open(sweep / SUMMARY_FILE) as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["completed"]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    submitit = [line for line in logs.splitlines() if line.startswith("submitit ")]  # its own
    assert any("this job is timed-out" in line for line in submitit)
    assert sum("Requeued job" in line for line in submitit) == 1
    pids = marker.read_text().split()  # the first attempt held once, the second at each epoch
    assert pids[0] != pids[1] and set(pids[1:]) == {pids[1]}  # a new process requeued


def test_a_signal_after_the_job_recorded_its_result_says_nothing_is_left_to_resume(tmp_path):
    """A stop signal that lands after the job's last safe point (its results.json written,
    completed) still stops the process (128 + n; a sweep stops), but said "the same command
    resumes it", and the next launch found nothing to resume: it now says the job had
    recorded its result. A signal at a safe point still says how to resume."""
    from vaesweep.run.signals import JobInterrupted, StopSignals

    with pytest.raises(JobInterrupted) as late, StopSignals():
        os.kill(os.getpid(), signal.SIGUSR1)  # handled: the job records, then ends
    assert late.value.exit_code == 128 + signal.SIGUSR1
    assert (
        str(late.value) == "SIGUSR1 came after the job had recorded its result: nothing to resume"
    )
    stop_file = tmp_path / "stop"
    stop_file.write_text("SIGTERM")  # a parallel sweep's launching process was signalled
    late_stop = pytest.raises(JobInterrupted, match="^SIGTERM came after the job had recorded")
    with late_stop, StopSignals(stop_file):
        pass
    at_safe_point = pytest.raises(JobInterrupted, match="^stopped by SIGUSR1; the same command")
    with at_safe_point as early, StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGUSR1)
        signals.check()  # a safe point
    assert early.value.exit_code == 128 + signal.SIGUSR1
    with StopSignals():  # no signal: nothing raised
        pass


@pytest.mark.slow
def test_a_stopped_sweep_writes_its_summary_but_no_wandb_summary_run(workdir):
    """A sweep stopped by a signal (SIGINT between its two jobs, test hook "between_jobs")
    writes summary.csv, the table and sweep.json's stopped_by, and no W&B summary run (it
    used to write one, with the partial table, after restoring the handlers, so a second
    Ctrl-C in wandb.init was a traceback); the relaunch that ends the sweep writes it."""
    args = ["-m", "beta=2,4", *TINY, "threads=1", "logger=wandb", "hydra.sweep.dir=sweep"]
    sweep, marker = workdir / "sweep", workdir / "between"
    proc = start(args, workdir, env=pause_env("between_jobs", marker))
    wait_for((workdir, marker.name), proc)
    os.kill(proc.pid, signal.SIGINT)
    assert finish(proc) == 130, output(proc)[-3000:]
    out = output(proc)
    assert "Traceback" not in out, out[-3000:]
    assert summary(sweep) == [("2", "completed")]
    assert json.loads((sweep / SWEEP_FILE).read_text())["stopped_by"] == "SIGINT"
    assert len(list(sweep.glob("*/wandb/offline-run-*"))) == 1  # the job's own run
    assert not list(sweep.glob("wandb/offline-run-*")), out[-3000:]  # no summary run
    assert "W&B sweep summary" not in out

    rc, out = run_to_end(args, workdir)
    assert rc == 0, out[-3000:]
    (run,) = [read_offline_run(p) for p in sweep.glob("wandb/offline-run-*")]
    assert run["job_type"] == SUMMARY_JOB_TYPE
    assert run["summary"]["sweep/n_completed"] == 2 and TABLE_KEY in run["summary"]


@pytest.mark.slow
def test_signals_while_the_wandb_summary_run_is_written_end_the_sweep_cleanly(workdir):
    """SIGINT, then SIGTERM, while the W&B summary run of a finished sweep is open (test hook
    "summary_run"). The handlers used to be restored before it: the first signal was a
    KeyboardInterrupt out of W&B, the run left without its table. Now the end of the sweep
    records them: the run gets its table and is finished, summary.csv is as written, no
    traceback, and the exit status is 128 + the first signal's number."""
    args = ["-m", "beta=2", *TINY, "threads=1", "logger=wandb", "hydra.sweep.dir=sweep"]
    sweep, marker = workdir / "sweep", workdir / "summary_run"
    proc = start(args, workdir, env=pause_env("summary_run", marker))
    wait_for((workdir, marker.name), proc)
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc) == 130, output(proc)[-3000:]
    out = output(proc)
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    with open(sweep / SUMMARY_FILE) as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["completed"]
    (run,) = [read_offline_run(p) for p in sweep.glob("wandb/offline-run-*")]
    assert run["job_type"] == SUMMARY_JOB_TYPE
    assert run["summary"]["sweep/n_completed"] == 1 and TABLE_KEY in run["summary"]
    assert "W&B sweep summary: run" in out


@pytest.mark.parametrize("mode", ["run", "sweep"])
@pytest.mark.slow
def test_a_signal_before_a_refusal_still_stops(workdir, mode):
    """SIGTERM while the job's data load (held there by the test hook "data"), then the job
    is refused by what the data say (data.batch_size above the training split: a
    ConfigError once the data are loaded). The signal was only recorded, and the refusal
    ended the job: a single run exited 1, not 143, and a sequential sweep went on to its
    next job (so would submitit not requeue). Now the refusal is recorded and said (failed,
    ConfigError) and then the stop is honoured: 143, and the sweep stops with its summary."""
    budget = [a for a in BUDGET if not a.startswith("data.batch_size=")]
    args = [*budget, "data.batch_size=2000", "logger=none"]
    sweep = workdir / "sweep"
    if mode == "run":
        args = [*args, "hydra.run.dir=run"]
    else:
        args = ["-m", "beta=2,4", *args, f"hydra.sweep.dir={sweep}"]
    marker = workdir / "loaded"
    proc = start(args, workdir, env=pause_env("data", marker))
    wait_for((workdir, marker.name), proc)
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc) == 128 + signal.SIGTERM, output(proc)[-3000:]
    out = output(proc)
    assert "ConfigError: data.batch_size=2000 is invalid" in out
    assert "stopped by SIGTERM, received while the job ran (it ended with ConfigError" in out
    assert "Traceback" not in out
    run_dir = workdir / "run" if mode == "run" else jobs(sweep)["beta=2"]
    refused = result(run_dir)
    assert refused["status"] == "failed" and refused["error"]["type"] == "ConfigError"
    assert not (run_dir / CLAIM_FILE).exists()
    if mode == "sweep":
        assert list(jobs(sweep)) == ["beta=2"]  # the second job never started
        assert summary(sweep) == [("2", "failed")]
        assert json.loads((sweep / SWEEP_FILE).read_text())["stopped_by"] == "SIGTERM"


def test_a_signal_received_while_a_job_ends_by_an_error_is_honoured_after_it(tmp_path):
    """A job that ends by an error after a stop signal came (a divergence here; a refusal,
    a failure, a result not finite, a job not re-run alike) records that error, and then
    the stop is honoured (128 + n, the handler before the job handed the signal): the
    signal was lost when the job ended by an error, and only an error-free end stopped."""
    from vaesweep.model.objective import DivergenceError
    from vaesweep.run.signals import JobInterrupted, StopSignals

    diverged = DivergenceError(5, {"loss": float("nan")})
    with pytest.raises(JobInterrupted) as stop, StopSignals():
        os.kill(os.getpid(), signal.SIGUSR1)  # handled: only recorded
        raise diverged  # what the job ends with, once its results.json says so
    assert stop.value.ended_by is diverged and stop.value.__cause__ is diverged
    assert stop.value.exit_code == 128 + signal.SIGUSR1
    assert str(stop.value) == (
        "stopped by SIGUSR1, received while the job ran (it ended with DivergenceError, above)"
    )
    stop_file = tmp_path / "stop"
    stop_file.write_text("SIGINT")  # a parallel sweep's launching process was signalled
    with pytest.raises(JobInterrupted, match="^stopped by SIGINT"), StopSignals(stop_file):
        raise ValueError("a failure")
    with pytest.raises(ValueError), StopSignals():  # no signal: the error as it was
        raise ValueError("a failure")


@pytest.mark.slow
def test_a_job_resumed_with_other_cpu_kernels_says_so_in_its_result_and_frame(workdir):
    """An attempt that trained with torch's plain CPU kernels (ATEN_CPU_CAPABILITY=default,
    as on an older node) is stopped and resumed with the machine's own (AVX2 or AVX-512):
    the result recorded only the last attempt's versions, so nothing said that its numbers
    came from two kinds of kernels. Now the resume warns, results.json names the change
    under changed_between_attempts, and the frame has it in a column and a note."""
    import torch

    from vaesweep.analysis.results import load_results

    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("this CPU has no vector kernels to change to")
    args = [*JOB, "hydra.run.dir=run"]
    proc = start(args, workdir, env={"ATEN_CPU_CAPABILITY": "default"})
    wait_for((workdir / "run" / "checkpoints", "last.ckpt"), proc)
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc) == 128 + signal.SIGTERM, output(proc)[-3000:]
    first = result(workdir / "run")
    assert first["versions"]["cpu_capability"] == "DEFAULT"
    assert first["changed_between_attempts"] == {}

    rc, out = run_to_end(args, workdir)
    assert rc == 0, out[-3000:]
    final = result(workdir / "run")
    own = torch.backends.cpu.get_cpu_capability()
    assert final["status"] == "completed" and final["attempts"] == 2
    assert final["changed_between_attempts"] == {"versions.cpu_capability": ["DEFAULT", own]}
    assert f"versions.cpu_capability: DEFAULT → {own}" in out
    df = load_results(workdir)
    assert list(df["changed_between_attempts"]) == [f"versions.cpu_capability: DEFAULT → {own}"]
    assert any("resumed with other versions or devices" in c for c in df.attrs["caveats"])


@pytest.mark.slow
def test_a_resumed_attempt_that_fails_before_its_first_batch_keeps_the_earlier_one(
    workdir, reference
):
    """A job stopped after its first epoch, relaunched where its first batch runs out of
    memory (test hook: a resume on a smaller GPU), inside the fit: that attempt was
    recorded failed, and the relaunch with sweep.rerun_failed=true its advice called for
    deleted the checkpoints and trained from step 0. Now an attempt that fails before its
    first batch has run computed nothing: the interrupted record and its checkpoints stay
    as they were, the error is reported, and the next relaunch resumes them to the
    uninterrupted run's result."""
    from pause import fail_env

    args = [*JOB, "hydra.run.dir=run"]
    run_dir = workdir / "run"
    proc = start(args, workdir)
    last = wait_for((run_dir / "checkpoints", "last.ckpt"), proc)
    os.kill(proc.pid, signal.SIGTERM)
    assert finish(proc) == 128 + signal.SIGTERM, output(proc)[-3000:]
    first = result(run_dir)
    assert first["status"] == "interrupted"
    kept = [(run_dir / "results.json").read_bytes(), last.read_bytes(), last.stat().st_mtime_ns]

    proc = start(args, workdir, env=fail_env("first_batch"))
    assert finish(proc) == 1, output(proc)[-3000:]
    said = output(proc)
    assert "CUDA out of memory" in said, said[-3000:]
    assert (
        "[vaesweep] run: nothing of this attempt was computed; the earlier attempt's record and "
        "checkpoints are kept: the same command, once that is fixed, resumes it"
    ) in said, said[-3000:]
    assert [
        (run_dir / "results.json").read_bytes(),
        last.read_bytes(),
        last.stat().st_mtime_ns,
    ] == kept

    rc, out = run_to_end(args, workdir)
    assert rc == 0, out[-3000:]
    check_resumed(run_dir, reference, first, attempts=2)
    assert "removed the earlier attempt's checkpoints" not in (run_dir / "train.log").read_text()
