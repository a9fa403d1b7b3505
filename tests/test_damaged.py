"""Damaged files never cost data or truth: a run directory whose results.json is lost or
unreadable is compared against its identity.json (another config refused, nothing in the
directory touched; the same config resumed), a damaged checkpoint is reported as damaged
and never resumed, a claim file that names no holder is taken over, never reported as
held by nobody, and a sweep record (sweep.json) that cannot be read is kept aside while the
relaunch goes on. Real runs of the CLI in subprocesses."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaesweep.run import claims
from vaesweep.run.context import SWEEP_FILE
from vaesweep.run.record import IDENTITY_FILE, RESULTS_FILE, missing_result
from vaesweep.sweep.grid import SUMMARY_FILE, finish_sweep, varying_keys

from conftest import RUN_PY, TINY, cli_env, run_cli
from pause import pause_env

# Three training batches, checkpoints kept: enough for a resumable run.
ARGS = [*TINY, "logger=none"]


def digests(run_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def last_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[vaesweep]")]
    assert lines, proc.stderr[-3000:]
    return lines[-1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A completed β = 1 run (the reference for every case below)."""
    root = tmp_path_factory.mktemp("finished")
    proc = run_cli([*ARGS, "hydra.run.dir=run"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "run" / IDENTITY_FILE).is_file()
    return root / "run"


def copy_of(run_dir: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, dest)
    return dest


@pytest.mark.parametrize("damage", ["truncated", pytest.param("deleted", marks=pytest.mark.slow)])
def test_another_config_is_refused_when_results_json_is_lost(finished, tmp_path, damage):
    run = copy_of(finished, tmp_path / "run")
    result = run / RESULTS_FILE
    if damage == "truncated":
        result.write_bytes(result.read_bytes()[:50])
    else:
        result.unlink()
    before = digests(run)
    proc = run_cli([*ARGS, "beta=4", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode != 0
    line = last_line(proc)
    assert "ConfigMismatch" in line and "of a different config" in line, line
    assert "beta: 1.0 → 4" in line and f"{RESULTS_FILE} " in line
    assert digests(run) == before  # not a byte changed: checkpoints, images, .hydra, logs


@pytest.mark.parametrize("status", ["interrupted", "running", "untested"])
@pytest.mark.slow
def test_a_directory_of_another_configs_run_in_progress_is_not_touched(finished, tmp_path, status):
    """A directory holding an interrupted or running (killed) result of β = 1, or a
    completed one without a test score (both resumed by the same config), relaunched with
    β = 4: ConfigMismatch, whose message says nothing in it was changed. Hydra used to
    write the refused config's .hydra/*.yaml over the run's own before the task refused it;
    now not a byte of the directory changes, nor a .hydra file's time."""
    run = copy_of(finished, tmp_path / "run")
    if status == "untested":
        result = json.loads((run / RESULTS_FILE).read_text())
        result["metrics"]["test/nll"] = None
        (run / RESULTS_FILE).write_text(json.dumps(result))
    else:
        _as_left(run, status)
    hydra = sorted((run / ".hydra").glob("*.yaml"))
    assert [p.name for p in hydra] == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    mtimes = {p: p.stat().st_mtime_ns for p in hydra}
    before = digests(run)
    proc = run_cli([*ARGS, "beta=4", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode != 0
    line = last_line(proc)
    assert "ConfigMismatch" in line and "of a different config" in line, line
    assert "beta: 1.0 → 4" in line and "Nothing in it was changed" in line
    assert digests(run) == before  # .hydra/*.yaml included
    assert {p: p.stat().st_mtime_ns for p in hydra} == mtimes


def test_the_same_config_resumes_when_results_json_is_lost(finished, tmp_path):
    reference = json.loads((finished / RESULTS_FILE).read_text())["metrics"]
    run = copy_of(finished, tmp_path / "run")
    (run / RESULTS_FILE).unlink()
    proc = run_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run / RESULTS_FILE).read_text())
    assert result["status"] == "completed"
    test = {k: v for k, v in reference.items() if k.startswith("test/")}
    assert {k: result["metrics"][k] for k in test} == test  # resumed, not retrained


@pytest.mark.slow
def test_the_checkpoint_identifies_a_run_whose_files_are_lost(finished, tmp_path):
    """results.json and identity.json both gone: the copy of the config every checkpoint
    keeps still refuses another config (nothing touched) and resumes the same one."""
    run = copy_of(finished, tmp_path / "run")
    (run / RESULTS_FILE).unlink()
    (run / IDENTITY_FILE).unlink()
    before = digests(run)
    proc = run_cli([*ARGS, "beta=4", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode != 0
    line = last_line(proc)
    assert "checkpoints/last.ckpt says" in line and "beta: 1.0 → 4" in line, line
    assert digests(run) == before
    proc = run_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / RESULTS_FILE).read_text())["status"] == "completed"


@pytest.mark.slow
def test_files_that_cannot_be_identified_are_refused(finished, tmp_path):
    run = copy_of(finished, tmp_path / "run")
    (run / RESULTS_FILE).unlink()
    (run / IDENTITY_FILE).unlink()
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:2000])  # a checkpoint too damaged to say anything
    before = digests(run)
    for beta in ("1", "4"):  # even the same config: the files could be anyone's
        proc = run_cli([*ARGS, f"beta={beta}", f"hydra.run.dir={run}"], tmp_path)
        assert proc.returncode != 0
        line = last_line(proc)
        assert "no identity.json (nor a readable checkpoint)" in line, line
        assert "move the directory away" in line
    assert digests(run) == before


def test_a_damaged_checkpoint_is_reported_not_resumed(finished, tmp_path):
    run = copy_of(finished, tmp_path / "run")
    result = json.loads((run / RESULTS_FILE).read_text())
    result["status"] = "interrupted"  # as a stopped job leaves it
    (run / RESULTS_FILE).write_text(json.dumps(result))
    last = run / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = bytes(400)  # the zip's CRC check flags it
    last.write_bytes(bytes(data))
    proc = run_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode != 0
    line = last_line(proc)
    assert "DamagedCheckpoint" in line and str(last) in line and "CRC" in line, line
    after = json.loads((run / RESULTS_FILE).read_text())
    assert after["status"] == "failed" and after["error"]["type"] == "DamagedCheckpoint"
    assert not any(k.startswith("test/") for k in after["metrics"])


def flip_a_weight(checkpoint: Path) -> None:
    """Flips one byte in the middle of the checkpoint's largest tensor (a zip member under
    ``data/``, stored uncompressed): torch.load reads the file without a complaint, only
    the member's CRC-32 tells."""
    import struct
    import zipfile

    with zipfile.ZipFile(checkpoint) as archive:
        tensors = [i for i in archive.infolist() if "/data/" in i.filename]
        member = max(tensors, key=lambda i: i.file_size)
    data = bytearray(checkpoint.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, member.header_offset + 26)
    start = member.header_offset + 30 + name_len + extra_len  # after its local header
    data[start + member.file_size // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def finished_best(tmp_path_factory) -> Path:
    """A completed run tested on its best checkpoint (eval.checkpoint=best)."""
    root = tmp_path_factory.mktemp("finished_best")
    proc = run_cli([*ARGS, "eval.checkpoint=best", "hydra.run.dir=run"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


@pytest.mark.parametrize("attempt", ["fresh", "killed", "untested"])
@pytest.mark.slow
def test_a_damaged_checkpoint_is_never_tested(finished_best, tmp_path, attempt):
    """eval.checkpoint=best and best.ckpt damaged: in the attempt that wrote it (damaged
    between its fit and its test, which the test hook fit_end holds apart), in the
    relaunch of a job killed while it tested (results.json running), and in the relaunch
    of a completed result without a test score. Only the checkpoint to resume from
    (last.ckpt) was verified: torch.load read the flipped byte silently, the job tested
    the damaged weights and recorded completed. Now the tested checkpoint is verified
    before it is loaded, with the outcome of a damaged last.ckpt: failed, DamagedCheckpoint,
    naming the file, and no test metrics."""
    import torch

    args = [*ARGS, "eval.checkpoint=best"]
    if attempt == "fresh":
        run = tmp_path / "run"
        marker = tmp_path / "paused"
        with open(tmp_path / "out.log", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, str(RUN_PY), *args, f"hydra.run.dir={run}"],
                cwd=tmp_path,
                env={**cli_env(), **pause_env("fit_end", marker)},
                stdout=log,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), (tmp_path / "out.log").read_text()[-3000:]
        best = run / "checkpoints" / "best.ckpt"
        flip_a_weight(best)
        marker.with_name(f"{marker.name}.release").touch()
        _, stderr = proc.communicate(timeout=120)
        proc.stderr = stderr
    else:
        run = copy_of(finished_best, tmp_path / "run")
        if attempt == "killed":
            _as_left(run, "running")  # the claim went with the killed process
        else:
            result = json.loads((run / RESULTS_FILE).read_text())
            result["metrics"]["test/nll"] = None
            (run / RESULTS_FILE).write_text(json.dumps(result))
        best = run / "checkpoints" / "best.ckpt"
        flip_a_weight(best)
        torch.load(best, map_location="cpu", weights_only=False)  # loads all the same
        proc = run_cli([*args, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode != 0, proc.stderr[-3000:]
    line = last_line(proc)
    assert f"DamagedCheckpoint: checkpoint {best} is damaged" in line and "CRC" in line, line
    assert "it was not tested" in line and "sweep.rerun_failed=true" in line
    after = json.loads((run / RESULTS_FILE).read_text())
    assert after["status"] == "failed" and after["error"]["type"] == "DamagedCheckpoint"
    assert after["tested_checkpoint"] == "best"
    assert not any(k.startswith("test/") and v is not None for k, v in after["metrics"].items())


@pytest.mark.slow
@pytest.mark.parametrize(
    "content",
    [
        b"",
        pytest.param(b'{"host": "x", "pi', marks=pytest.mark.slow),
        pytest.param(b"\xff\xfe garbage", marks=pytest.mark.slow),
    ],
)
def test_a_claim_file_naming_no_holder(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    claim = run / claims.CLAIM_FILE
    claim.write_bytes(content)
    info = claims.read_claim(run)
    assert info is not None and not info.readable
    assert "None" not in info.describe()
    # Fresh (its mtime ahead, so the subprocess's start-up never ages it past the grace
    # period): its writer may be writing it still. A single run that cannot run fails.
    ahead = time.time() + 3600
    os.utime(claim, (ahead, ahead))
    proc = run_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode != 0 and "claim file that names no holder" in last_line(proc)
    assert not (run / RESULTS_FILE).exists()
    # Past the grace period it is stale: taken over, and the run runs.
    old = time.time() - claims.UNREADABLE_GRACE_S - 1
    os.utime(claim, (old, old))
    proc = run_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / RESULTS_FILE).read_text())["status"] == "completed"
    assert "took over the stale claim" in proc.stdout + proc.stderr


SWEEP_ARGS = ["-m", "beta=0.5,2", *ARGS, "hydra.sweep.dir=sweep"]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    proc = run_cli(SWEEP_ARGS, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "sweep"


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage",
    [
        b'{"grid": {"beta": ["0.5", "2"]}, "jobs": [{"dir"',
        pytest.param(b"[]\n", marks=pytest.mark.slow),
        pytest.param(b"\xff\xfe{}", marks=pytest.mark.slow),
    ],
)
def test_a_sweep_record_that_cannot_be_read_is_kept_aside_and_the_sweep_goes_on(
    finished_sweep, tmp_path, damage
):
    """Before, each job failed with a JSONDecodeError (or the sweep's callback warned and the
    summary failed). Now the damaged record is kept aside, the completed jobs are skipped
    without a byte changed, and the relaunch writes a new record and summary."""
    sweep = copy_of(finished_sweep, tmp_path / "sweep")
    (sweep / SWEEP_FILE).write_bytes(damage)
    jobs = sorted(p.parent for p in sweep.glob(f"*/{RESULTS_FILE}"))
    before = {job.name: digests(job) for job in jobs}
    proc = run_cli(SWEEP_ARGS, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (aside,) = sweep.glob(f"{SWEEP_FILE}.damaged-*")
    assert aside.read_bytes() == damage
    warned = [line for line in proc.stderr.splitlines() if "cannot be read" in line]
    assert len(warned) == 1 and warned[0].startswith("[vaesweep] ") and aside.name in warned[0]
    assert proc.stderr.count("already completed") == 2  # skipped, not trained again
    assert "UserWarning" not in proc.stderr and "Traceback" not in proc.stderr
    for job in jobs:
        after = digests(job)
        assert {k: v for k, v in after.items() if k in before[job.name]} == before[job.name]
    record = json.loads((sweep / SWEEP_FILE).read_text())
    assert record["n_jobs"] == 2 and sorted(record["grid"]) == ["beta"]
    assert sorted(j["status"] for j in record["jobs"]) == ["completed", "completed"]
    assert "(2 jobs)" in proc.stdout


@pytest.mark.slow
def test_a_new_record_keeps_the_columns_of_the_launches_it_lost(finished_sweep, tmp_path):
    """The record was lost with the launch that swept beta=0.5,2; a relaunch runs one more
    job (likelihood=laplace beta=2: an empty grid) in the same directory. Before, the
    summary had no column for beta or likelihood (the new record's grid is empty): its rows
    could not be told apart. Now every result key whose value differs between the
    directory's jobs is a column; keys that change no result (threads) are not."""
    sweep = copy_of(finished_sweep, tmp_path / "sweep")
    (sweep / SWEEP_FILE).write_bytes(b"{")
    extra = ["likelihood=laplace", "beta=2", "threads=1"]
    proc = run_cli(["-m", *ARGS, *extra, "hydra.sweep.dir=sweep"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((sweep / SWEEP_FILE).read_text())
    assert record["grid"] == {} and record["restarted_from"].startswith(f"{SWEEP_FILE}.damaged-")
    with open(sweep / SUMMARY_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert {(r["beta"], r["likelihood"]) for r in rows} == {
        ("0.5", "gaussian"),
        ("2", "gaussian"),  # from the job's config: its overrides do not name a likelihood
        ("2", "laplace"),
    }
    assert "threads" not in rows[0] and "trainer.max_epochs" not in rows[0]
    # A later relaunch keeps the mark (the lost launches stay unknown) and the columns.
    proc = run_cli(["-m", *ARGS, *extra, "hydra.sweep.dir=sweep"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        json.loads((sweep / SWEEP_FILE).read_text())["restarted_from"] == record["restarted_from"]
    )
    with open(sweep / SUMMARY_FILE, newline="") as f:
        assert {"beta", "likelihood"} <= set(next(csv.DictReader(f)))


def test_the_keys_that_tell_jobs_apart_are_columns():
    """The keys whose values differ between the directory's jobs, or that only some jobs set
    (launches the record does not know, or a fixed override changed between launches), by
    their name without Hydra's + prefix, the last of a repeated key; never deletions,
    Hydra's keys, keys that change no result, or a directory without a readable
    results.json."""
    results = [
        {"run_dir": "s/a", "overrides": ["beta=1", "seed=0", "trainer.max_epochs=3"]},
        {"run_dir": "s/b", "overrides": ["beta=4", "trainer.max_epochs=3", "sweep.resume=s"]},
        {"run_dir": "s/c", "overrides": ["beta=9", "beta=4", "+model.foo=2", "~model.bar"]},
        {"run_dir": "s/d", "overrides": ["threads=2", "logger=csv", "label.note=x"]},
        missing_result(Path("s/e")),
    ]
    assert varying_keys(results) == ["beta", "model.foo", "seed", "trainer.max_epochs"]
    same = [{"run_dir": f"s/{n}", "overrides": ["beta=1", "beta=1"]} for n in "ab"]
    assert varying_keys(same) == []
    one_grid = [{"run_dir": f"s/{b}", "overrides": [f"beta={b}", "seed=0"]} for b in "14"]
    assert varying_keys(one_grid) == ["beta"]  # the grid's own key: already a column


def test_a_fixed_override_changed_between_launches_is_a_column_of_the_summary(tmp_path):
    """Two launches of beta=1 into one directory, with trainer.max_epochs=2 and then 3: the
    summary's rows read beta=1 twice unless the key that tells them apart is a column."""
    sweep = tmp_path / "sweep"
    for epochs, nll in ((2, 62.5), (3, 62.1)):
        job = sweep / f"beta=1,trainer.max_epochs={epochs}"
        job.mkdir(parents=True)
        result = {"run_dir": str(job), "status": "completed", "metrics": {"test/nll": nll, "test/elbo": -nll},
                  "overrides": ["beta=1", f"trainer.max_epochs={epochs}"],
                  "config": {"beta": 1.0, "trainer": {"max_epochs": epochs}}}  # fmt: skip
        (job / RESULTS_FILE).write_text(json.dumps(result))
    (sweep / SWEEP_FILE).write_text(json.dumps({"grid": {"beta": ["1"]}, "jobs": []}))
    finish_sweep(sweep)
    with open(sweep / SUMMARY_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["beta"], r["trainer.max_epochs"], r["test/nll"]) for r in rows] == [
        ("1", "2", "62.5"),
        ("1", "3", "62.1"),
    ]


def _as_left(run: Path, status: str, error: dict | None = None) -> dict:
    """The run's results.json with ``status`` (and ``error``), as such an attempt leaves it."""
    result = json.loads((run / RESULTS_FILE).read_text())
    result.update(status=status, error=error)
    (run / RESULTS_FILE).write_text(json.dumps(result))
    return result


@pytest.mark.slow
def test_a_failed_run_trained_again_never_resumes_its_old_checkpoints(finished, tmp_path):
    """A failed β = 1 run's directory trained again as β = 4 (sweep.rerun_failed=true) and
    stopped by Ctrl-C in its first epoch, before a checkpoint of its own: β = 1's checkpoints
    are gone before the new attempt trains, so the relaunch starts β = 4 from step 0 instead
    of resuming β = 1's weights under β = 4."""
    run = copy_of(finished, tmp_path / "run")
    _as_left(run, "failed", {"type": "RuntimeError", "message": "in its test", "step": None})
    assert {p.name for p in (run / "checkpoints").glob("*.ckpt")} >= {"last.ckpt"}
    args = [*ARGS, "beta=4", "sweep.rerun_failed=true", f"hydra.run.dir={run}"]
    marker = tmp_path / "paused"
    with open(tmp_path / "out.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(RUN_PY), *args],
            cwd=tmp_path,
            env={**cli_env(), **pause_env("train_batch@1", marker)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), (tmp_path / "out.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    stopped = json.loads((run / RESULTS_FILE).read_text())
    assert stopped["status"] == "interrupted" and stopped["config"]["beta"] == 4
    assert not list((run / "checkpoints").glob("*.ckpt"))  # β = 1's are not there to resume
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" not in (run / "train.log").read_text()
    done = json.loads((run / RESULTS_FILE).read_text())
    assert done["status"] == "completed" and done["config"]["beta"] == 4


@pytest.mark.slow
def test_a_refusal_in_the_driver_keeps_an_interrupted_job_resumable(finished, tmp_path):
    """An interrupted job relaunched where the driver refuses it before training (here: the
    launcher gave it a GPU this machine does not have): its results.json and checkpoints stay
    as they were, so the corrected command resumes it instead of training it from step 0."""
    run = copy_of(finished, tmp_path / "run")
    left = _as_left(run, "interrupted", {"type": "JobInterrupted", "message": "SIGTERM", "step": 3})
    mtime = (run / RESULTS_FILE).stat().st_mtime_ns
    before = digests(run)
    gpu = {"VAESWEEP_GPUS_ASSIGNED_BY": "local_parallel", "CUDA_VISIBLE_DEVICES": "0"}
    proc = run_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path, env={**cli_env(), **gpu})
    assert proc.returncode != 0
    assert "sees no CUDA device" in proc.stderr, proc.stderr[-3000:]
    assert "checkpoints are kept" in (run / "train.log").read_text()
    after = digests(run)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not any(k.startswith("checkpoints/") for k in changed), changed
    assert json.loads((run / RESULTS_FILE).read_text()) == left  # the record as it was
    assert (run / RESULTS_FILE).stat().st_mtime_ns == mtime  # and its time
    again = run_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path)  # on a machine as asked
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming {run} from" in (run / "train.log").read_text()
    assert "dirpath has changed" not in again.stderr  # a copy: its best score came along
    assert json.loads((run / RESULTS_FILE).read_text())["attempts"] == left["attempts"] + 1


@pytest.mark.slow
def test_a_run_is_never_resumed_on_other_data(finished, tmp_path):
    """An interrupted run whose earlier attempt recorded other data (another copy of the
    dataset: data.root, $VAESWEEP_DATA_ROOT or a download read now where it read another)
    is refused before it trains, naming both copies' fingerprints; its record and
    checkpoints are kept, and with its own data the same command resumes it."""
    run = copy_of(finished, tmp_path / "run")
    left = _as_left(run, "interrupted", {"type": "JobInterrupted", "message": "SIGTERM", "step": 3})
    own = dict(left["dataset"])
    left["dataset"] = {**own, "fingerprint": "f" * 64, "source": "/elsewhere/digits"}
    (run / RESULTS_FILE).write_text(json.dumps(left))
    before = digests(run)
    proc = run_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode != 0
    log = (run / "train.log").read_text()
    assert "this run cannot be resumed on these data" in log, log[-3000:]
    assert "read from /elsewhere/digits" in log and "content fingerprint ffffffffffff" in log
    assert f"content fingerprint {own['fingerprint'][:12]}" in log  # the data read now
    assert "checkpoints are kept" in log
    after = digests(run)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not any(k.startswith("checkpoints/") for k in changed), changed
    assert json.loads((run / RESULTS_FILE).read_text()) == left  # the record as it was
    left["dataset"] = own  # the run's own data again
    (run / RESULTS_FILE).write_text(json.dumps(left))
    again = run_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming {run} from" in (run / "train.log").read_text()
    assert json.loads((run / RESULTS_FILE).read_text())["status"] == "completed"


def test_a_run_whose_record_is_lost_is_checked_against_its_checkpoints_data(finished, tmp_path):
    """results.json lost: the last checkpoint keeps the data the run trained on, and a
    resume on other data is refused all the same (the directory left as it was)."""
    import torch

    run = copy_of(finished, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    kept = state["callbacks"]["Resumable"]["dataset"]
    assert (
        kept["fingerprint"]
        == json.loads((run / RESULTS_FILE).read_text())["dataset"]["fingerprint"]
    )
    state["callbacks"]["Resumable"]["dataset"] = {**kept, "fingerprint": "d" * 64}
    torch.save(state, last)
    (run / RESULTS_FILE).unlink()
    before = digests(run)
    proc = run_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode != 0
    assert "this run cannot be resumed on these data" in proc.stderr, proc.stderr[-3000:]
    assert "content fingerprint dddddddddddd" in proc.stderr
    assert not (run / RESULTS_FILE).exists()
    after = digests(run)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not any(k.startswith("checkpoints/") for k in changed), changed


def test_a_run_is_never_evaluated_on_other_data(finished, tmp_path):
    """vaesweep evaluate scores a run on the data it recorded, or says it was not evaluated
    (naming both copies), never writing scores of other images under the run's name."""
    run = copy_of(finished, tmp_path / "run")
    result = json.loads((run / RESULTS_FILE).read_text())
    result["dataset"] = {**result["dataset"], "fingerprint": "e" * 64}
    (run / RESULTS_FILE).write_text(json.dumps(result))
    proc = subprocess.run(
        [sys.executable, "-m", "vaesweep", "evaluate", str(run), "eval.iwae_k=10"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert f"{run} was not evaluated: the run's data were digits" in proc.stderr, proc.stderr
    assert "content fingerprint eeeeeeeeeeee" in proc.stderr
    assert not (run / "evaluations").exists()


def test_a_completed_result_without_a_test_score_is_tested_again(finished, tmp_path):
    """What versions before the non-finite check recorded for a NaN test/nll: ``completed``
    with a null score (collect lists it ``incomplete`` and the sweep's end says to continue).
    The relaunch resumes it from its last checkpoint and tests it again, to the scores of
    the run itself, rather than skipping it as completed for ever."""
    reference = json.loads((finished / RESULTS_FILE).read_text())["metrics"]
    run = copy_of(finished, tmp_path / "run")
    result = json.loads((run / RESULTS_FILE).read_text())
    result["metrics"]["test/nll"] = None
    (run / RESULTS_FILE).write_text(json.dumps(result))
    proc = run_cli([*ARGS, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already completed" not in proc.stderr
    after = json.loads((run / RESULTS_FILE).read_text())
    assert after["status"] == "completed" and after["attempts"] == result["attempts"] + 1
    test = {k: v for k, v in reference.items() if k.startswith("test/")}
    assert {k: after["metrics"][k] for k in test} == test  # resumed and tested, not retrained


def test_metrics_history_killed_between_merging_and_tidying_keeps_each_row_once(
    tmp_path, monkeypatch
):
    """An attempt killed after it wrote the merged metrics.csv but before it removed the
    set-aside rows: the next resume keeps every earlier row once (no curve drawn twice)."""
    import torch

    from vaesweep.run import history

    def write(rows: list[dict]) -> None:
        columns = sorted({k for r in rows for k in r})
        with open(tmp_path / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    def checkpoint(step: int) -> Path:
        path = tmp_path / f"step{step}.ckpt"
        torch.save({"global_step": step}, path)
        return path

    write([{"step": s, "epoch": s // 2, "train/loss": 10 - s} for s in range(6)])  # attempt 1
    history.set_aside(tmp_path, checkpoint(4))  # attempt 2 resumes at step 4
    write([{"step": s, "epoch": s // 2, "train/loss": 10 - s, "val/elbo": s} for s in range(4, 8)])
    real_unlink = Path.unlink

    def killed(self, *args, **kwargs):
        if self.name == history.EARLIER_FILE:
            raise KeyboardInterrupt  # the process ends here
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        history.merge(tmp_path)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert (tmp_path / history.EARLIER_FILE).exists()  # both files left behind

    history.set_aside(tmp_path, checkpoint(6))  # attempt 3 resumes at step 6
    with open(tmp_path / history.EARLIER_FILE, newline="") as f:
        kept = [int(float(r["step"])) for r in csv.DictReader(f)]
    assert kept == [0, 1, 2, 3, 4, 5]


def test_checkpoint_state_survives_the_job_directory_moving(tmp_path):
    """Lightning keeps a ModelCheckpoint's best score only when it writes to the directory it
    saved it from; a job's directory moved between two attempts (a sweep renamed, another
    mount path after a requeue) would make the next validation the best. RunCheckpoint reads
    the saved paths as the same files in the new place, under ModelCheckpoint's own key."""
    import warnings

    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vaesweep.run.callbacks import RunCheckpoint

    kwargs = {"filename": "best", "monitor": "val/elbo", "mode": "max", "save_top_k": 1}
    old_dir, new_dir = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    saved = ModelCheckpoint(dirpath=old_dir, save_last=True, **kwargs)
    best = str(old_dir / "best.ckpt")
    saved.best_model_path, saved.best_model_score = best, torch.tensor(-512.0)
    saved.best_k_models = {best: torch.tensor(-512.0)}
    saved.kth_best_model_path, saved.kth_value = best, torch.tensor(-512.0)
    saved.last_model_path = str(old_dir / "last.ckpt")
    state = saved.state_dict()

    resumed = RunCheckpoint(dirpath=new_dir, save_last=True, **kwargs)
    assert resumed.state_key == saved.state_key  # checkpoints of either class load
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's "dirpath has changed" would raise
        resumed.load_state_dict(state)
    assert resumed.best_model_score == torch.tensor(-512.0)
    assert resumed.best_model_path == str(new_dir / "best.ckpt")
    assert list(resumed.best_k_models) == [str(new_dir / "best.ckpt")]
    assert resumed.last_model_path == str(new_dir / "last.ckpt")
    # Lightning's own class, for comparison, drops the score.
    plain = ModelCheckpoint(dirpath=new_dir, save_last=True, **kwargs)
    with pytest.warns(UserWarning, match="dirpath has changed"):
        plain.load_state_dict(state)
    assert plain.best_model_score is None
