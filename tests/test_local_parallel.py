"""``hydra/launcher=local_parallel``: vaesweep's own pool of worker processes, where a worker
that dies (SIGKILL, out of memory) loses its job alone.

Default suite: a small Hydra app of its own (no training, a second) launched through the
launcher by its ``_target_``: a worker killed mid-job, the other jobs (one queued behind the
death included) run and return; the task function is the one ``@hydra.main`` decorated in the
script (sent by value). The job-count rule against joblib's own, the grid's job overrides
against Hydra's basic sweeper, and the summary of a sweep whose jobs were killed or never
started.

Slow: the product's sweep, one job's worker SIGKILLed mid-training: the sweep goes on, the
summary says killed, the relaunch resumes it to the uninterrupted run's metrics.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import joblib
import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from test_interrupt import BUDGET, finish, jobs, output, result, run_to_end, start, summary
from test_ray import composed, held, kill_a_held_job, reference  # noqa: F401 (a fixture)

from vaesweep.core.launchers import jobs_at_once
from vaesweep.run import gpus, record
from vaesweep.run.claims import CLAIM_FILE
from vaesweep.sweep import preflight
from vaesweep.sweep.callback import refuse_bad_gpu_use
from vaesweep.sweep.grid import SUMMARY_FILE, SWEEP_FILE, finish_sweep, grid_jobs

from conftest import TINY, cli_env, results_under, run_cli
from pause import pause_env
from tiny_sweeps import copy_results

TARGET = "hydra_plugins.vaesweep_local_launcher.local_launcher.LocalParallelLauncher"
LOCAL = ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2"]

APP = textwrap.dedent(
    """
    import os, signal, time
    from pathlib import Path

    import hydra

    OUT = Path(os.environ["OUT_DIR"])
    if __name__ == "__mp_main__":  # a worker (spawn) importing the script
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "-")
        (OUT / f"import-{os.getpid()}").write_text(visible)
        status = Path("/proc/self/status").read_text().split("SigBlk:")[1].split()[0]
        (OUT / f"blocked-{os.getpid()}").write_text(status)
        if os.environ.get("DIE_AT_START"):
            os._exit(3)


    class TwoArgs(Exception):
        def __init__(self, a, b):
            super().__init__(a)


    @hydra.main(version_base="1.3", config_path=None, config_name=None)
    def main(cfg):
        (OUT / f"start-{cfg.x}").write_text(f"{os.getpid()} {time.time()}")
        if cfg.x == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if cfg.x == "odd":
            raise TwoArgs(1, 2)  # pickles, but does not unpickle
        if cfg.x == "stop":  # as the sweep's guard does at a signal
            Path(os.environ["VAESWEEP_STOP_FILE"]).write_text("SIGINT")
        time.sleep(0.3)
        (OUT / f"done-{cfg.x}").write_text(f"{os.getpid()} {time.time()}")
        return cfg.x


    if __name__ == "__main__":
        (OUT / "launcher").write_text(str(os.getpid()))
        main()
    """
)


def _app(
    tmp_path: Path, values: str, n_jobs: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    script = tmp_path / "app.py"
    script.write_text(APP)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    args = [
        sys.executable, str(script), "-m", f"+x={values}",
        f"hydra.launcher._target_={TARGET}", f"+hydra.launcher.n_jobs={n_jobs}",
        "hydra.sweep.dir=multirun", *extra,
    ]  # fmt: skip
    env = {**cli_env(), "OUT_DIR": str(out), **(env or {})}
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_worker_killed_mid_job_loses_that_job_alone(tmp_path):
    """Four jobs, two workers; the second job SIGKILLs its own worker. The sweep goes on:
    the other three run to the end (the fourth in a fresh worker), each exactly once; the
    console names the lost job and how its worker ended; Hydra's multirun ends normally."""
    proc = _app(tmp_path, "a,die,b,c", n_jobs=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("done-*")) == ["done-a", "done-b", "done-c"]
    assert sorted(p.name for p in out.glob("start-*")) == [
        "start-a", "start-b", "start-c", "start-die",
    ]  # fmt: skip
    assert "[vaesweep] job #1 (+x=die): its worker process ended without a result " in (proc.stderr)
    assert "(killed by SIGKILL); not retried" in proc.stderr
    pids = {p.name: _stamp(p)[0] for p in [*out.glob("start-*"), *out.glob("done-*")]}
    assert pids["start-die"] not in {pids["done-a"], pids["done-b"], pids["done-c"]}
    assert pids["start-die"] != int((out / "launcher").read_text())  # a worker's


def test_workers_that_die_before_they_are_ready_lose_the_waiting_jobs(tmp_path):
    """Every worker dies while it imports the script (a broken install): after three in a
    row the waiting jobs are each said lost, instead of workers started for ever."""
    proc = _app(tmp_path, "a,b,c,d,e", 2, env={"DIE_AT_START": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    started = list((tmp_path / "out").glob("import-*"))
    assert 3 <= len(started) <= 4  # three in a row, and at most one more beside them
    assert not list((tmp_path / "out").glob("start-*"))
    for job in range(5):
        assert f"[vaesweep] job #{job} (+x=" in proc.stderr
    assert "no worker process could start (3 in a row ended before they were ready, the " in (
        proc.stderr
    )
    assert "exit status 3" in proc.stderr


def test_jobs_waiting_when_the_sweep_is_stopped_are_never_handed_out(tmp_path):
    """The sweep's stop file written while the first job runs (as the guard writes it at a
    signal): the waiting jobs never reach a worker, so no job directory is made for them,
    where each was handed out, made its directory and returned at once."""
    stop = tmp_path / ".stop-test"
    proc = _app(tmp_path, "stop,a,b", 1, env={"VAESWEEP_STOP_FILE": str(stop)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert stop.read_text() == "SIGINT"
    assert sorted(p.name for p in (tmp_path / "out").glob("start-*")) == ["start-stop"]
    assert sorted(p.name for p in (tmp_path / "multirun").iterdir() if p.is_dir()) == ["0"]


def test_a_worker_given_a_job_after_the_stop_makes_nothing(tmp_path):
    """A job handed out just before the stop file appeared: the worker (a real spawned
    one, through its pipe) checks the stop before it builds the job's config or makes its
    directory, and answers NOT_STARTED, which the launching process records as no result."""
    import multiprocessing
    import pickle

    from hydra_plugins.vaesweep_local_launcher import local_launcher

    stop = tmp_path / ".stop-test"
    stop.write_text("SIGTERM")
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    worker = context.Process(target=local_launcher._serve, args=(theirs,))
    worker.start()
    try:
        assert ours.poll(60) and ours.recv_bytes() == local_launcher.READY
        # No usable payload: a worker that went on to build the job would fail on it.
        ours.send((0, ["+x=1"], pickle.dumps(None), {"VAESWEEP_STOP_FILE": str(stop)}, 1))
        assert ours.poll(60) and ours.recv_bytes() == local_launcher.NOT_STARTED
        ours.send(None)
        worker.join(30)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".stop-test"]


def test_a_result_that_does_not_unpickle_fails_its_job_alone(tmp_path):
    """A task's exception that pickles but does not unpickle (an __init__ of two arguments)
    is sent back as a RuntimeError naming it: the other jobs run to the end, then Hydra
    reports the failed job as it would with its basic launcher."""
    proc = _app(tmp_path, "a,odd,b,c", 2)
    assert proc.returncode == 1
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("done-*")) == ["done-a", "done-b", "done-c"]
    assert "its return value could not be sent back" in proc.stderr


def test_each_worker_sees_its_gpu_from_its_first_line(tmp_path):
    """Two GPU ids named, four jobs two at a time: each worker has its own id in its
    environment while it imports the script (a module-level CUDA query would see it), and
    the ids alternate between the two workers; the stop signals are held meanwhile."""
    proc = _app(tmp_path, "a,b,c,d", 2, "+hydra.launcher.gpus=[0,1]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = sorted(p.read_text() for p in (tmp_path / "out").glob("import-*"))
    assert seen == ["0", "1"]
    # SIGINT and SIGTERM held while each worker starts, the first one's included (a Ctrl-C
    # then waits for its handlers instead of killing it): bits 2 and 15 of its mask.
    masks = [int(p.read_text(), 16) for p in (tmp_path / "out").glob("blocked-*")]
    assert len(masks) == 2 and all(m & 0x4002 == 0x4002 for m in masks), masks


def _stamp(path: Path) -> tuple[int, float]:
    """(pid, time) a job of the app wrote at its start or end."""
    pid, t = path.read_text().split()
    return int(pid), float(t)


@pytest.mark.slow
def test_workers_are_reused_and_one_job_per_worker_at_a_time(tmp_path):
    """Five jobs on two workers: at most two processes run them, none of them the
    launching process (workers are reused, not started per job); a worker runs one job at
    a time, and at most two jobs run at once (each job's start and end times)."""
    proc = _app(tmp_path, "a,b,c,d,e", n_jobs=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    spans = {}
    for x in "abcde":
        (pid, t0), (pid_end, t1) = _stamp(out / f"start-{x}"), _stamp(out / f"done-{x}")
        assert pid == pid_end and t0 < t1
        spans[x] = (pid, t0, t1)
    pids = {pid for pid, _, _ in spans.values()}
    assert 1 <= len(pids) <= 2 and int((out / "launcher").read_text()) not in pids
    for pid in pids:  # one job at a time in each worker
        own = sorted((t0, t1) for p, t0, t1 in spans.values() if p == pid)
        assert all(end <= start for (_, end), (start, _) in zip(own, own[1:], strict=False))
    for _, t0, _ in spans.values():  # at most two running at any job's start
        assert sum(a <= t0 < b for _, a, b in spans.values()) <= 2


@pytest.mark.parametrize(
    ("statuses", "search", "expected"),
    [
        ({}, False, None),  # every job completed: nothing to continue
        ({0: "failed"}, False, "Train the failed jobs again:"),
        # Refused before training: the same command runs it once its cause is fixed.
        ({0: ("failed", "ConfigError")}, False, "1 job(s) refused before training"),
        ({0: ("failed", "ConfigError"), 1: "failed"}, False, "Train the failed jobs again:"),
        ({0: "failed"}, True, None),  # a search's failed trials are told to Optuna
        ({0: "interrupted"}, False, "Continue this sweep:"),
        ({0: "interrupted", 1: "diverged"}, False, "Continue this sweep:"),
        ({0: "interrupted", 1: "failed"}, True, "Continue this sweep:"),
    ],
)
def test_the_end_of_a_sweep_prints_the_command_that_continues_it(
    sweep, tmp_path, capsys, statuses, search, expected
):
    """The command is printed only when a relaunch has something to do, with the sweep's
    directory (typed again without it, the command would start a new one); failed jobs of a
    grid need sweep.rerun_failed=true, which the printed command then carries."""
    copies = copy_results(sweep, tmp_path)
    for index, status in statuses.items():
        data = json.loads(copies[index].read_text())
        if isinstance(status, tuple):  # with the error's type
            status, kind = status
            data["error"] = {"type": kind, "message": "x is invalid", "step": None}
        copies[index].write_text(json.dumps({**data, "status": status}))
    finish_sweep(tmp_path, search=search)
    err = capsys.readouterr().err
    if expected is None:
        assert "sweep.resume=" not in err
        return
    assert expected in err
    command = shlex.split(err.split(expected)[1].split("\n")[1])
    directory = f"hydra.sweep.dir={tmp_path.resolve()}"
    if expected.startswith("Train"):
        assert command[-2:] == [directory, "sweep.rerun_failed=true"]
    else:
        assert command[-1] == directory
    # Failed jobs beside resumable ones: said, without re-running them unasked.
    hint = "add sweep.rerun_failed=true to train its failed jobs again too"
    assert (hint in err) == (expected.startswith("Continue") and "diverged" in statuses.values())
    assert ("refused before training" in err) == expected.startswith("1 job(s) refused")


def test_a_launch_that_reran_failed_jobs_is_not_told_to_rerun_them(sweep, tmp_path, capsys):
    """The launch's own sweep.rerun_failed (its composed config, however it was set) ran the
    failed jobs again already: no command is printed for jobs that failed once more, and
    beside resumable ones no hint to add what is in force."""
    copies = copy_results(sweep, tmp_path)
    data = json.loads(copies[0].read_text())
    copies[0].write_text(json.dumps({**data, "status": "failed"}))
    finish_sweep(tmp_path, rerun_failed=True)
    assert "sweep.rerun_failed" not in capsys.readouterr().err
    data = json.loads(copies[1].read_text())
    copies[1].write_text(json.dumps({**data, "status": "interrupted"}))
    finish_sweep(tmp_path, rerun_failed=True)
    err = capsys.readouterr().err
    assert "Continue this sweep:" in err and "sweep.rerun_failed" not in err


@pytest.mark.parametrize("n_jobs", [1, 2, 3, -1, -2])
def test_n_jobs_counts_as_joblibs_does(n_jobs):
    cores = os.cpu_count() or 1
    if cores + 1 + n_jobs < 1 and n_jobs < 0:
        pytest.skip("fewer cores than this n_jobs leaves")
    assert jobs_at_once(n_jobs) == joblib.effective_n_jobs(n_jobs)


@pytest.mark.parametrize(
    "overrides",
    [
        ["beta=2,4", *BUDGET],  # trainer.enable_progress_bar=false, ...
        ["seed=0,1", "trainer.enable_progress_bar=False", "+label.x= 1e-3 ", "lr=1.0"],
        ["likelihood=gaussian,laplace", "beta=1,2", "+label.note=a b"],
    ],
)
def test_grid_jobs_are_the_basic_sweepers(overrides):
    """The jobs a sweep's checks and sweep.json name (their directories) are those Hydra's
    sweeper launches, values written its way (false → False, 1e-3 → 0.001): else the
    summary would call a job that ran 'never started'."""
    params = {"seed": "0,1,2"}
    parsed = OverridesParser.create().parse_overrides(
        [f"{k}={v}" for k, v in params.items()] + overrides
    )
    assert grid_jobs(overrides, params) == BasicSweeper.split_arguments(parsed, None)[0]


def test_the_summary_says_killed_and_names_jobs_that_never_started(sweep, tmp_path, capsys):
    """A job whose results.json says running with no process holding its claim is killed in
    the summary (as ``vaesweep collect`` says); a job this launch planned that has no
    directory is named as never started, and the sweep does not count as complete. The
    job_dirs an earlier launch (or an older vaesweep, which spelled some values otherwise)
    recorded in sweep.json are not this launch's: they are never called unstarted."""
    copies = copy_results(sweep, tmp_path)
    killed = copies[0].parent
    data = json.loads(copies[0].read_text())
    data["status"] = "running"
    copies[0].write_text(json.dumps(data))
    names = sorted(p.parent.name for p in copies)
    old_spelling = [n.replace("beta=", "beta = ") for n in names]
    (tmp_path / SWEEP_FILE).write_text(
        json.dumps({"grid": {}, "n_jobs": 2 * len(names), "launches": [{"job_dirs": old_spelling}]})
    )
    assert finish_sweep(tmp_path, planned=[*names, "beta=9,never"]) is False
    err = capsys.readouterr().err
    assert f"{killed.name}: killed: results.json says running, but no process holds" in err
    assert f"1 of this launch's {len(names) + 1} jobs never started (beta=9,never)." in err
    continued = shlex.split(err.split("Continue this sweep:\n")[1].splitlines()[0])
    assert continued[-1] == f"hydra.sweep.dir={tmp_path.resolve()}"
    with open(tmp_path / SUMMARY_FILE) as f:
        statuses = {row["job"]: row["status"] for row in csv.DictReader(f)}
    assert statuses[killed.name] == "killed"
    assert sum(s == "completed" for s in statuses.values()) == len(names) - 1
    jobs_record = json.loads((tmp_path / SWEEP_FILE).read_text())["jobs"]
    assert {j["dir"]: j["status"] for j in jobs_record}[killed.name] == "killed"
    assert record.status(killed) == "running"  # the file itself is left as the job wrote it

    copies[0].write_text(json.dumps({**data, "status": "completed"}))
    assert finish_sweep(tmp_path, planned=names) is True  # earlier launches' names ignored
    assert "never started" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_job_whose_worker_is_killed_is_listed_and_resumed(tmp_path, reference):  # noqa: F811
    """The product's sweep, three jobs two at a time; SIGKILL to one job's worker process
    mid-training (held after its first epoch): the job beside it completes, the third runs
    in a fresh worker, the summary says killed (exit 1); the same command resumes the killed
    job (its dead claim taken over) to the uninterrupted run's metrics."""
    args = ["-m", "beta=2,4,8", *BUDGET, "logger=none", *LOCAL, "hydra.sweep.dir=sweep"]
    out = kill_a_held_job(args, tmp_path, reference)
    assert "job #0 (beta=2 " in out and "(killed by SIGKILL); not retried" in out
    assert "TerminatedWorkerError" not in out and "never started" not in out
    sweep = tmp_path / "sweep"
    assert [result(v)["attempts"] for _, v in sorted(jobs(sweep).items())] == [2, 1, 1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone, only not yet waited for
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.slow
def test_a_second_signal_stops_the_workers_and_the_relaunch_resumes(tmp_path):
    """Two jobs held mid-training, never released: SIGINT to the launching process writes
    the stop file (which the held jobs cannot reach); a second SIGINT stops now: the
    workers get SIGTERM (the test's hold ends at a signal, so the jobs reach their next
    batch and record interrupted; SIGKILL after hydra.launcher.stop_grace_s otherwise). The
    launching process exits 130 with no worker left behind; the third job never started;
    the same command resumes all three to completion."""
    args = [
        "-m", "beta=2,4,8", *BUDGET, "logger=none", *LOCAL, "hydra.launcher.stop_grace_s=2",
        "hydra.sweep.dir=sweep",
    ]  # fmt: skip
    sweep, marker = tmp_path / "sweep", tmp_path / "epoch_end"
    proc = start(args, tmp_path, env=pause_env("epoch_end", marker))
    workers = held(marker, 2, proc)
    os.kill(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while not list(sweep.glob(".stop-*")):
        assert time.monotonic() < deadline and proc.poll() is None, output(proc)[-3000:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)
    assert finish(proc, timeout=60) == 130, output(proc)[-3000:]
    assert not any(_alive(pid) for pid in workers)
    assert summary(sweep) == [("2", "interrupted"), ("4", "interrupted")]
    assert "1 of 3 jobs not started" in output(proc)

    rc, out = run_to_end(args, tmp_path)
    assert rc == 0, out[-3000:]
    assert [result(v)["status"] for _, v in sorted(jobs(sweep).items())] == ["completed"] * 3
    assert [result(v)["attempts"] for _, v in sorted(jobs(sweep).items())] == [2, 2, 1]


# --- GPUs: each job its own, or a share of one -------------------------------------------


def test_places_spread_round_robin_with_their_share():
    """The share is 1/k for the k places this launch fills on one GPU: a GPU with one job
    is whole, and n_jobs above the number of jobs caps nothing."""
    assert gpus.spread(["0", "1"], 2) == [("0", None), ("1", None)]
    assert gpus.spread(["0", "1"], 4) == [("0", 0.5), ("1", 0.5), ("0", 0.5), ("1", 0.5)]
    assert gpus.spread(["0", "1", "2"], 2) == [("0", None), ("1", None)]
    assert gpus.spread(["3"], 3) == [("3", 0.3333)] * 3
    assert gpus.spread(["0", "1"], 3) == [("0", 0.5), ("1", None), ("0", 0.5)]
    assert gpus.spread(["0", "1"], 4, n_used=1)[0] == ("0", None)  # one job, n_jobs=4
    assert gpus.spread(["0"], 64, n_used=2)[:2] == [("0", 0.5), ("0", 0.5)]


def test_each_launch_spreads_its_jobs_over_the_gpus_whatever_workers_earlier_ones_left(
    monkeypatch,
):
    """Workers are kept between launches (a search's batches), and one may die. Two GPUs,
    n_jobs=4: a batch of 4 runs two jobs on each GPU, half of it each; the worker of place 1
    (GPU 1) dies. A batch of 2 then runs one job on each GPU, whole (the idle worker of GPU
    1 takes the free place, no worker starts), not both on GPU 0 uncapped beside an idle GPU
    1; a batch of 3 caps the GPU two of them share; with no worker left on GPU 1, a batch of
    2 starts one there. Real hand-out, workers faked (no process started)."""
    from omegaconf import OmegaConf

    from hydra_plugins.vaesweep_local_launcher import local_launcher as ll

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(ll._Worker, "start", lambda self: None)
    given: list[tuple] = []

    def give(worker, position, message):
        worker.job = position
        given.append((worker.env["CUDA_VISIBLE_DEVICES"], message[3].get(gpus.FRACTION_ENV)))
        return True

    monkeypatch.setattr(ll._Worker, "give", give)
    launcher = ll.LocalParallelLauncher(n_jobs=4, gpus=[0, 1])
    launcher.config = OmegaConf.create({"trainer": {"accelerator": "gpu"}})

    def batch(n: int) -> Counter:
        overrides = [[f"+x={i}"] for i in range(n)]
        launcher.places_env = launcher._places(4, min(4, n))  # as launch() sets them
        run = ll._Launch(launcher, overrides, 0, b"", {}, 4)
        run._hand_out()  # starts the workers it lacks
        for worker in launcher.workers:
            worker.ready = True
        run._hand_out()
        assert not run.waiting
        placed = Counter(given)
        given.clear()
        for worker in launcher.workers:
            worker.job = None  # each job's result came back
        return placed

    def lose(gpu: str) -> None:
        (dead,) = [
            w for w in launcher.workers if w.slot == 1 and w.env["CUDA_VISIBLE_DEVICES"] == gpu
        ]
        launcher.workers.remove(dead)

    try:
        assert batch(4) == {("0", "0.5"): 2, ("1", "0.5"): 2}
        lose("1")
        assert batch(2) == {("0", None): 1, ("1", None): 1}
        assert len(launcher.workers) == 3  # no new worker: the idle one of GPU 1 ran
        assert batch(3) == {("0", "0.5"): 2, ("1", None): 1}
        lose("1")  # now none on GPU 1
        assert batch(2) == {("0", None): 1, ("1", None): 1}
        assert sorted(w.env["CUDA_VISIBLE_DEVICES"] for w in launcher.workers) == ["0", "0", "1"]
    finally:
        for worker in launcher.workers:
            worker.conn.close()
        launcher.workers = []


def test_gpu_indices_count_among_the_gpus_this_process_sees(monkeypatch):
    """Under a scheduler that gave the sweep GPUs 2 and 3, index 0 is GPU 2 (as torch
    numbers them); UUIDs pass as they are; an index beyond them is refused before any job."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpus.named_gpus([0, 1]) == ["2", "3"]
    assert gpus.named_gpus("1") == ["3"]
    assert gpus.named_gpus(["GPU-ab12"]) == ["GPU-ab12"]
    message = preflight.launcher_problem(
        composed(*LOCAL, "hydra.launcher.gpus=[0,2]").hydra.launcher
    )
    assert message is not None and "names GPU 2, but this process sees 2" in message
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpus.named_gpus([0, 2]) == ["0", "2"]


def test_gpu_indices_in_trainer_devices_are_refused_where_the_launcher_assigns_gpus():
    """A job given its own GPU sees it as device 0: trainer.devices=[1] would fail there."""
    for devices in ([1], "0,1"):
        for launcher in ("local_parallel", "ray"):
            message = gpus.one_device_problem({"devices": devices, "num_nodes": 1}, launcher)
            assert message is not None and "picks GPUs by index" in message
    assert gpus.one_device_problem({"devices": 1, "num_nodes": 1}, "local_parallel") is None


THREADS_APP = textwrap.dedent(
    """
    import os
    from pathlib import Path

    import hydra

    from vaesweep.run.context import current_job


    @hydra.main(version_base="1.3", config_path=None, config_name=None)
    def main(cfg):
        threads = current_job().torch_threads(None)  # threads: null, as a job computes them
        Path(os.environ["OUT_DIR"], f"threads-{cfg.x}").write_text(str(threads))


    if __name__ == "__main__":
        main()
    """
)


@pytest.mark.parametrize(("values", "n_jobs"), [("a", 8), ("a,b", 8), ("a,b,c", 2)])
@pytest.mark.slow
def test_a_jobs_threads_are_the_cores_over_the_jobs_its_launch_runs_at_once(
    tmp_path, values, n_jobs
):
    """threads: null is the usable cores / the jobs running at once. A launch of fewer jobs
    than n_jobs (a search's batch of one under n_jobs=8) runs them all at once, no more: each
    job got cores / n_jobs threads (2 of 16 cores, one job at a time), now cores / the jobs
    of its launch at once, as its GPU share is counted."""
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one usable core: every job gets one thread")
    script = tmp_path / "threads_app.py"
    script.write_text(THREADS_APP)
    args = [
        sys.executable, str(script), "-m", f"+x={values}", f"hydra.launcher._target_={TARGET}",
        f"+hydra.launcher.n_jobs={n_jobs}", "hydra.sweep.dir=multirun",
    ]  # fmt: skip
    env = {**cli_env(), "OUT_DIR": str(tmp_path)}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    at_once = min(n_jobs, len(values.split(",")))
    threads = {p.name: int(p.read_text()) for p in tmp_path.glob("threads-*")}
    assert threads == {f"threads-{x}": max(1, cores // at_once) for x in values.split(",")}


@pytest.mark.slow
def test_a_search_of_one_trial_at_a_time_trains_each_on_every_core(tmp_path):
    """The reviewer's case, a real search: hydra.sweeper.n_jobs=1 under
    hydra.launcher.n_jobs=8 runs one trial at a time, and each trained with cores / 8
    threads; now with every usable core (results.json records the torch threads)."""
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one usable core: every job gets one thread")
    args = [
        "-m", "hydra/sweeper=optuna", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=8",
        "hydra.sweeper.n_jobs=1", "hydra.sweeper.n_trials=2", "beta=interval(0.1, 10)", *TINY,
        "logger=none", "hydra.sweep.dir=sweep",
    ]  # fmt: skip
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("trial_*/results.json")]
    assert [r["devices"]["torch_threads"] for r in runs] == [cores, cores]


def test_n_jobs_minus_one_counts_the_cores_this_process_may_use(tmp_path):
    """Under taskset (or a SLURM allocation) -1 means the cores allowed, as joblib counts."""
    code = (
        "import joblib; from vaesweep.core.launchers import jobs_at_once; "
        "print(jobs_at_once(-1), joblib.effective_n_jobs(-1))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "1"]


@pytest.mark.parametrize(
    ("option", "visible_env", "count", "accelerator", "expected"),
    [
        (None, None, 2, "auto", ["0", "1"]),
        (None, "2,5", 2, "gpu", ["2", "5"]),  # the ids this process was given
        (None, None, 2, "cpu", []),
        (None, None, 0, "auto", []),
        ([0, 2], None, 0, "cpu", ["0", "2"]),  # named: assigned whatever the trainer
        ("1,3", None, 4, "gpu", ["1", "3"]),
        ([], None, 4, "gpu", []),
    ],
)
def test_the_gpus_local_parallel_spreads_over(
    monkeypatch, option, visible_env, count, accelerator, expected
):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if visible_env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible_env)
    assert gpus.local_gpus(option, {"accelerator": accelerator}) == expected


def test_ddp_in_a_local_parallel_job_is_refused_only_where_it_assigns_gpus(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(SystemExit):
        refuse_bad_gpu_use(composed(*LOCAL, "hydra.launcher.gpus=[0,1]", "trainer.devices=2"))
    assert "DDP inside a local_parallel job is not supported" in capsys.readouterr().err
    refuse_bad_gpu_use(composed(*LOCAL, "trainer.devices=2", "trainer.accelerator=cpu"))
    refuse_bad_gpu_use(composed(*LOCAL, "hydra.launcher.gpus=[0,1]", "trainer.devices=1"))


@pytest.mark.parametrize("value", ["abc", "[-1]", "[0,x]", "[1.5]"])
def test_gpu_ids_that_are_not_ids_are_refused(value):
    message = preflight.launcher_problem(
        composed(*LOCAL, f"hydra.launcher.gpus={value}").hydra.launcher
    )
    assert message is not None and message.startswith("hydra.launcher.gpus=")
    assert "allowed null (every visible GPU when the trainer trains on one)" in message


@pytest.mark.slow
@pytest.mark.parametrize(
    ("n_jobs", "n_runs", "per_id", "share"), [(2, 2, 1, None), (4, 4, 2, 0.5), (4, 2, 1, None)]
)
def test_named_gpus_are_assigned_one_per_job_or_shared(tmp_path, n_jobs, n_runs, per_id, share):
    """Two GPU ids named (none here: the jobs train on CPU but record what they were
    given): at n_jobs=2 each job has its own id and a whole GPU, at 4 two jobs share each id
    with half its memory; 2 jobs with n_jobs=4 have a whole GPU each."""
    betas = ",".join(str(b) for b in (0.5, 1, 2, 4)[:n_runs])
    proc = run_cli(
        [
            "-m",
            f"beta={betas}",
            *TINY,
            "logger=none",
            "trainer.accelerator=cpu",
            "hydra/launcher=local_parallel",
            f"hydra.launcher.n_jobs={n_jobs}",
            "hydra.launcher.gpus=[0,1]",
            "hydra.sweep.dir=sweep",
        ],  # fmt: skip
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    devices = [r["devices"] for r in results_under(tmp_path / "sweep")]
    assert len(devices) == n_runs
    assert Counter(d["cuda_visible_devices"] for d in devices) == {"0": per_id, "1": per_id}
    assert {d["fraction"] for d in devices} == {share}


@pytest.mark.slow
def test_workers_of_a_launching_process_killed_outright_stop_their_jobs(tmp_path):
    """SIGKILL to the launching process while two jobs train: each worker sees it gone, stops
    its job (SIGTERM to itself: interrupted, its claim released) and exits, instead of
    running on unsupervised; the same command then resumes both."""
    args = ["-m", "beta=2,4", *BUDGET, "logger=none", *LOCAL, "hydra.sweep.dir=sweep"]
    sweep, marker = tmp_path / "sweep", tmp_path / "epoch_end"
    proc = start(args, tmp_path, env=pause_env("epoch_end", marker))
    workers = held(marker, 2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their launching process"
        time.sleep(0.1)
    assert [result(v)["status"] for _, v in sorted(jobs(sweep).items())] == ["interrupted"] * 2
    assert not list(sweep.glob(f"*/{CLAIM_FILE}"))
    rc, out = run_to_end(args, tmp_path)
    assert rc == 0, out[-3000:]
    assert [result(v)["attempts"] for _, v in sorted(jobs(sweep).items())] == [2, 2]


@pytest.mark.parametrize("launcher", ["local_parallel", "ray"])
def test_the_stop_file_reaches_the_jobs_as_an_absolute_path(tmp_path, monkeypatch, launcher):
    """Jobs in other processes stop through the sweep's stop file, whose path they read
    from VAESWEEP_STOP_FILE: absolute, from the launching process's directory, since a job
    with hydra.job.chdir=true runs in its own directory, and a Ray worker of a cluster
    joined with address=auto where that cluster started."""
    from vaesweep.run.signals import STOP_FILE_ENV
    from vaesweep.sweep import callback

    monkeypatch.chdir(tmp_path)
    config = composed(f"hydra/launcher={launcher}", "hydra.sweep.dir=sweep", "hydra.job.chdir=true")
    running = callback.SweepCallback()._guard(config, search=False)
    try:
        stop_file = Path(os.environ[STOP_FILE_ENV])
        assert stop_file.is_absolute() and stop_file.parent == tmp_path / "sweep"
    finally:
        running.guard.uninstall()
        callback._RUNNING = None


def test_a_worker_whose_launching_process_is_gone_signals_its_job_once():
    """The launching process gone, a worker sends its job one SIGTERM (stop at the next
    batch, recorded interrupted), once the job's handler is in place (while it starts, the
    worker's own handler would ignore it): never a second, which would stop the job at once,
    in the middle of its record of the stop or W&B's finish."""
    code = textwrap.dedent(
        """
        import signal, time
        from hydra_plugins.vaesweep_local_launcher import local_launcher as ll

        ll.POLL_S = 0.02
        signal.signal(signal.SIGTERM, ll._between_jobs)  # a job starting
        ll._watch_parent(-1)  # no process has that pid: the parent is gone
        time.sleep(0.3)
        got = []
        signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))  # the job's
        time.sleep(1.0)
        print(len(got))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["1"]


def test_a_job_given_a_gpu_it_cannot_see_is_refused_unless_it_trains_on_the_cpu(monkeypatch):
    """hydra.launcher.gpus=[5] on a machine without GPU 5: the job sees no CUDA device, and
    accelerator auto would train on the CPU without a word. Refused before training (the
    job records failed, runs again once corrected); trainer.accelerator=cpu is not."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv(gpus.ASSIGNED_ENV, "local_parallel")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    message = gpus.missing_gpu_problem("auto")
    assert message is not None
    assert message.startswith("the local_parallel launcher gave this job GPU 5")
    assert "hydra.launcher.gpus" in message
    assert gpus.missing_gpu_problem("cpu") is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a Ray job given no GPU
    assert gpus.missing_gpu_problem("auto") is None
    monkeypatch.delenv(gpus.ASSIGNED_ENV)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")  # set by the user, not a launcher
    assert gpus.missing_gpu_problem("auto") is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.launcher.stop_grace_s=30s",
         "hydra.launcher.stop_grace_s='30s' is invalid: allowed a number of seconds ≥ 0"),
        ("+hydra.launcher.n_job=4",
         "hydra.launcher.n_job=4 is invalid: hydra/launcher=local_parallel has no key n_job "
         "(did you mean hydra.launcher.n_jobs?). Allowed keys: n_jobs, gpus, stop_grace_s"),
    ],
)  # fmt: skip
def test_a_launcher_key_it_cannot_take_is_refused_before_anything_is_written(
    tmp_path, override, message
):
    """The launcher's constructor raised Python's error (could not convert string to float:
    '30s'; an unexpected keyword argument 'n_job'), naming no allowed value, after sweep.json
    recorded a launch that ran nothing. Now the sweep's checks refuse it first."""
    args = ["-m", *TINY, "logger=none", *LOCAL, override, "seed=0,1", "hydra.sweep.dir=sweep"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"[vaesweep] sweep refused, no job was run: {message}" in proc.stderr
    assert "Error in call to target" not in proc.stderr
    assert "Continue this sweep" not in proc.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("grace", ["-1", "null", "true", "abc", "inf"])
def test_stop_grace_s_is_a_number_of_seconds(grace):
    message = preflight.launcher_problem(
        composed(*LOCAL, f"hydra.launcher.stop_grace_s={grace}").hydra.launcher
    )
    assert message is not None and message.startswith("hydra.launcher.stop_grace_s="), message
    assert "is invalid: allowed a number of seconds ≥ 0" in message
    for good in ("0", "2.5", "30"):
        config = composed(*LOCAL, f"hydra.launcher.stop_grace_s={good}")
        assert preflight.launcher_problem(config.hydra.launcher) is None
