"""Job claims: one live process per job; stale claims (dead pid, old heartbeat) taken over;
two launches of one sweep, for real (processes racing, the CLI twice)."""

from __future__ import annotations

import collections
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaesweep.run import claims
from vaesweep.run.claims import CLAIM_FILE, HOST, ClaimHeld, acquire, held_by_other, read_claim

from conftest import RUN_PY, TINY, cli_env, results_under
from pause import pause_env

HOLD = """
import sys, time
from vaesweep.run.claims import acquire
claim = acquire(sys.argv[1], float(sys.argv[2]))
print("held", flush=True)
time.sleep(600)
"""


def holder(run_dir: Path, timeout_s: float = 300) -> subprocess.Popen:
    """Another process that claims run_dir and keeps it until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), str(timeout_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def write_claim(run_dir: Path, age_s: float = 0.0, **info) -> Path:
    """A claim file as another process would have left it, its heartbeat age_s old."""
    path = run_dir / CLAIM_FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {"host": HOST, "pid": 1, "process_start": None, "token": "other", "started_at": "x"}
    path.write_text(json.dumps({**data, **info}))
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_claim_holds_identity_and_is_released(tmp_path):
    with acquire(tmp_path) as claim:
        info = read_claim(tmp_path)
        assert (info.host, info.pid, info.token) == (HOST, os.getpid(), claim.token)
        assert info.process_start and info.started_at
        assert info.interval == claim.interval == 30  # every holder says how often it beats
        assert held_by_other(tmp_path, 300) is None  # ours
        with pytest.raises(ClaimHeld):  # not twice, even by this process
            acquire(tmp_path)
    assert not (tmp_path / CLAIM_FILE).exists()
    with acquire(tmp_path):  # free again
        pass


def test_heartbeat_renews_the_claim_while_it_is_held(tmp_path):
    with acquire(tmp_path, timeout_s=0.5) as claim:  # a beat every 0.05 s
        assert claim.interval == pytest.approx(0.05)
        os.utime(tmp_path / CLAIM_FILE, (0, 0))
        time.sleep(0.3)
        assert read_claim(tmp_path).age() < 0.2
    assert claims.heartbeat_interval(300) == 30 and claims.heartbeat_interval(3600) == 30


def test_a_claim_taken_over_is_marked_lost_and_left_to_its_new_holder(tmp_path):
    with acquire(tmp_path, timeout_s=0.5) as claim:  # a beat every 0.05 s
        claim.verify()  # ours: nothing raised
        assert not claim.lost.is_set()
        write_claim(tmp_path, host="elsewhere.example", pid=4242)  # another host took it
        with pytest.raises(claims.ClaimLost, match="elsewhere.example:4242"):
            claim.verify()  # read now, before the heartbeat thread looks
        assert claim.lost.is_set()
    assert read_claim(tmp_path).host == "elsewhere.example"  # released: not ours to remove
    # The heartbeat thread finds out by itself; a claim file removed counts as lost too.
    (tmp_path / CLAIM_FILE).unlink()
    with acquire(tmp_path, timeout_s=0.5) as claim:
        (tmp_path / CLAIM_FILE).unlink()
        assert claim.lost.wait(5)
        with pytest.raises(claims.ClaimLost, match="now no process"):
            claim.verify()
    assert not (tmp_path / CLAIM_FILE).exists()


def test_a_live_holder_keeps_its_claim_and_a_dead_ones_is_taken_over(tmp_path):
    proc = holder(tmp_path)
    try:
        with pytest.raises(ClaimHeld, match=f"{HOST}:{proc.pid}") as held:
            acquire(tmp_path)
        assert held.value.holder.pid == proc.pid
        assert held_by_other(tmp_path, 300).pid == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert read_claim(tmp_path).pid == proc.pid  # left behind: stale now
    assert held_by_other(tmp_path, 300) is None
    with acquire(tmp_path) as claim:
        assert read_claim(tmp_path).token == claim.token
    assert not list(tmp_path.glob(f"{CLAIM_FILE}*"))  # no takeover marker left


def test_a_claim_from_another_host_is_stale_when_its_heartbeat_is_old(tmp_path):
    write_claim(tmp_path, age_s=5, host="elsewhere.example", pid=os.getpid())
    with pytest.raises(ClaimHeld, match="elsewhere.example"):
        acquire(tmp_path, timeout_s=300)
    write_claim(tmp_path, age_s=400, host="elsewhere.example", pid=os.getpid())
    with acquire(tmp_path, timeout_s=300):
        assert read_claim(tmp_path).host == HOST


def test_a_taker_with_a_shorter_timeout_waits_for_three_of_the_holders_beats(tmp_path):
    """A holder on another host with the default timeout (300 s) beats every 30 s; a
    relaunch there with sweep.claim_timeout_s=20 must not take the live claim between two
    of its beats: it waits until the heartbeat is 3 beats (90 s) old."""
    assert claims.heartbeat_interval(300) == 30
    elsewhere = {"host": "elsewhere.example", "pid": os.getpid(), "heartbeat_s": 30.0}
    for age in (25, 85):  # older than the taker's 20 s, within three of the holder's beats
        write_claim(tmp_path, age_s=age, **elsewhere)
        with pytest.raises(ClaimHeld, match="elsewhere.example"):
            acquire(tmp_path, timeout_s=20)
    write_claim(tmp_path, age_s=95, **elsewhere)
    with acquire(tmp_path, timeout_s=20):
        assert read_claim(tmp_path).host == HOST
    # A claim that does not say its beat (an earlier version): the taker's timeout alone.
    write_claim(tmp_path, age_s=25, host="elsewhere.example", pid=os.getpid())
    with acquire(tmp_path, timeout_s=20) as claim:
        assert read_claim(tmp_path).interval == pytest.approx(claim.interval) == 2.0


def test_same_host_claims_of_gone_processes_are_stale(tmp_path):
    # A reused pid: alive, but not the process that claimed (another start time).
    parent = os.getppid()
    write_claim(tmp_path, pid=parent, process_start="1")
    assert held_by_other(tmp_path, 300) is None
    write_claim(tmp_path, pid=parent, process_start=claims._process_start(parent))
    assert held_by_other(tmp_path, 300).pid == parent
    # A zombie: killed, not yet waited for.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.kill()
    time.sleep(0.5)
    write_claim(tmp_path, pid=child.pid, process_start=None)
    try:
        assert held_by_other(tmp_path, 300) is None
    finally:
        child.wait()
    # An empty claim (its writer died between create and write): judged by its age.
    (tmp_path / CLAIM_FILE).write_text("")
    assert held_by_other(tmp_path, 300) is not None
    os.utime(tmp_path / CLAIM_FILE, (0, 0))
    assert held_by_other(tmp_path, 300) is None


def _can_unshare_pids() -> bool:
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True
    )
    return probe.returncode == 0


def test_a_claim_of_another_pid_namespace_on_this_host_is_judged_by_its_heartbeat(tmp_path):
    """A container sharing the host's name (``docker run --network host``) has its own
    pids: its holder's pid 1 is this namespace's init, alive with another start time, so
    its live claim was judged stale at once and taken over (the job trained twice). Now
    a claim written in another pid namespace is judged as another host's: by its
    heartbeat. A real holder in a new pid namespace (``unshare --pid``)."""
    if shutil.which("unshare") is None or not _can_unshare_pids():
        pytest.skip("cannot create a pid namespace here (unshare --pid needs privileges)")
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", HOLD,
         str(tmp_path), "300"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        start_new_session=True,  # its group holds the holder too: killed with it below
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "held"
        info = read_claim(tmp_path)
        assert info.host == HOST and info.pid_namespace != claims.PID_NAMESPACE
        with pytest.raises(ClaimHeld):
            acquire(tmp_path, timeout_s=300)  # its pid is no process of ours: still held
        assert held_by_other(tmp_path, 300) is not None
        old = time.time() - 400  # no heartbeat for longer than the timeout: stale
        os.utime(tmp_path / CLAIM_FILE, (old, old))
        assert held_by_other(tmp_path, 300) is None
    finally:
        # Not unshare alone: its forked holder (pid 1 of the namespace) would outlive it.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # This namespace's own claims are judged by their pid at once, as before.
    write_claim(tmp_path, pid=2**22 + 1, pid_namespace=claims.PID_NAMESPACE)
    assert held_by_other(tmp_path, 300) is None


RACE = """
import sys, time
from vaesweep.run.claims import ClaimHeld, acquire
start = float(sys.argv[2])
ready = time.time()
while time.time() < start:
    pass
try:
    claim = acquire(sys.argv[1])
except ClaimHeld:
    print("held", ready, time.time(), flush=True)
else:
    time.sleep(1.5)
    released = time.time()
    claim.release()
    print("won", ready, released, flush=True)
"""


@pytest.mark.parametrize("stale", [False, True])
@pytest.mark.slow
def test_exactly_one_of_many_racing_processes_wins(tmp_path, stale):
    """Eight processes claim one job at the same instant (with or without a stale claim
    of a dead process to take over first): exactly one holds it."""
    if stale:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        write_claim(tmp_path, pid=dead.pid)
    start = time.time() + 4.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(tmp_path), str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    lines = [p.communicate(timeout=60)[0].split() for p in procs]
    outcomes = collections.Counter(line[0] for line in lines)
    assert outcomes == {"won": 1, "held": 7}
    # A real race: every process was waiting at the barrier when it opened, and each that
    # was refused was refused while the winner still held the claim (not after a release).
    assert all(float(ready) < start for _, ready, _ in lines)
    (released,) = [float(t) for outcome, _, t in lines if outcome == "won"]
    assert all(float(t) < released for outcome, _, t in lines if outcome == "held")
    assert not list(tmp_path.glob(f"{CLAIM_FILE}*"))


def test_a_job_config_keeps_its_answer_to_where_hydra_writes_its_files(tmp_path, monkeypatch):
    """Hydra reads ``hydra.output_subdir`` twice before a job starts (is it None? then the
    path). A claim another process took between the two readings made the second None, and
    the job failed with "TypeError: expected str, bytes or os.PathLike object, not NoneType"
    (rank 1 of an srun job, as rank 0 claimed the job: rank 0 then waited for it). One config
    keeps its first answer; a config made after the claim sees it; ranks > 0 of a job write
    no ``.hydra`` files at all (rank 0 does)."""
    from omegaconf import OmegaConf

    from vaesweep.run.config import CONF_DIR
    from vaesweep.run.jobs import register_resolvers

    register_resolvers()
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    run_dir = tmp_path / "job"
    run_dir.mkdir()
    train = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "train.yaml"))
    subdir = train["hydra"]["output_subdir"]  # the interpolation, as written

    def job_config():
        return OmegaConf.create(
            {
                "sweep": {"rerun_failed": False, "claim_timeout_s": 300},
                "hydra": {"runtime": {"output_dir": str(run_dir)}, "output_subdir": subdir},
            }
        )

    config = job_config()
    assert config.hydra.output_subdir == ".hydra"
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert job_config().hydra.output_subdir is None  # rank 1: rank 0 writes them
    monkeypatch.delenv("SLURM_PROCID")
    proc = holder(run_dir)  # another live process claims the job now
    try:
        assert config.hydra.output_subdir == ".hydra"  # the second reading
        assert job_config().hydra.output_subdir is None  # skipped: not a byte written
    finally:
        proc.kill()
        proc.wait()


def test_a_single_run_another_live_process_holds_is_refused_by_the_cli(workdir):
    """Nothing runs and nothing is written, and the exit status says so: a run that did
    not run never exits 0 (a sweep's job held by another launch is skipped instead)."""
    run_dir = workdir / "run"
    proc = holder(run_dir)
    try:
        cli = subprocess.run(
            [sys.executable, str(RUN_PY), *TINY, "logger=none", "hydra.run.dir=run"],
            cwd=workdir, env=cli_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert cli.returncode == 1, cli.stderr[-3000:]
    assert f"ClaimHeld: held by {HOST}:{proc.pid}" in cli.stderr
    assert not (run_dir / "results.json").exists() and not (run_dir / ".hydra").exists()


def _launch(args: list[str], cwd: Path, logs: tuple[Path, Path], env: dict[str, str]):
    """A launch of ``args`` in ``cwd`` whose stdout and stderr go to the two ``logs``."""
    out, err = logs
    with open(out, "w") as o, open(err, "w") as e:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=o, stderr=e)


def _wait_until(procs: list, condition, what: str, timeout: float = 300) -> None:
    """Waits for ``condition()``; fails when a launch of ``procs`` exits first or after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert all(p.poll() is None for p in procs), f"a launch exited before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_launches_of_one_sweep_run_every_job_exactly_once(workdir):
    """The same three-job sweep launched twice, deterministically interleaved: the first
    launch holds its first job (the test hook "claimed": claim taken, nothing trained yet)
    until the second has met that claim ("held by ... " on its stderr, read from the file
    it writes), then goes on. Each job is trained by exactly one of them, both exit 0, and
    both summaries list all three jobs as completed."""
    stamps = workdir / "timestamps.jsonl"
    marker = workdir / "first-holds-a-job"
    env = {**cli_env(), "VAESWEEP_TIMESTAMPS": str(stamps)}
    args = [
        sys.executable, str(RUN_PY), "-m", "beta=1,2,4", *TINY, "threads=1", "logger=none",
        "hydra.sweep.dir=sweep",
    ]  # fmt: skip
    logs = [(workdir / f"out-{i}.log", workdir / f"err-{i}.log") for i in range(2)]

    def launch(i: int, extra_env: dict[str, str]) -> subprocess.Popen:
        return _launch(args, workdir, logs[i], {**env, **extra_env})

    def wait_until(condition, what: str, timeout: float = 300) -> None:
        _wait_until(procs, condition, what, timeout)

    procs = [launch(0, pause_env("claimed", marker))]
    try:
        wait_until(marker.exists, "claim held by the first launch")
        (held_dir,) = [p.parent for p in (workdir / "sweep").glob(f"*/{CLAIM_FILE}")]
        assert read_claim(held_dir).pid == procs[0].pid
        procs.append(launch(1, {}))
        wait_until(lambda: "held by" in logs[1][1].read_text(), "meeting")
        assert f"skipping {held_dir.name}: held by {HOST}:{procs[0].pid}" in logs[1][1].read_text()
        marker.with_name(f"{marker.name}.release").touch()  # the first launch goes on
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, logs, strict=True):
        assert p.returncode == 0, err.read_text()[-3000:]
        assert "did not complete" not in err.read_text()
        assert out.read_text().count("completed") >= 3, out.read_text()  # every job completed
    results = results_under(workdir / "sweep")
    assert len(results) == 3
    assert all(r["status"] == "completed" and r["attempts"] == 1 for r in results)
    events = [json.loads(line) for line in stamps.read_text().splitlines()]
    fits = collections.Counter(e["job"] for e in events if e["event"] == "fit_start")
    assert sorted(fits.values()) == [1, 1, 1], fits  # each job trained once, by one launch
    assert not list((workdir / "sweep").glob(f"*/{CLAIM_FILE}*"))


def _files(run_dir: Path) -> dict:
    """Every file of a job directory but its claim and logs, with its time and bytes."""
    return {
        p.relative_to(run_dir): (p.stat().st_mtime_ns, p.read_bytes())
        for p in run_dir.rglob("*")
        if p.is_file() and p.name != CLAIM_FILE and p.suffix != ".log"
    }


def _sweep_paused_in_its_first_batch(workdir: Path, marker: Path, err_log: Path):
    """A two-job sweep (claims beating every 0.1 s) held in its first job's first batch;
    (the process, the held job's directory)."""
    args = [
        sys.executable, str(RUN_PY), "-m", "beta=1,2", *TINY, "threads=1", "logger=csv",
        "sweep.claim_timeout_s=1", "hydra.sweep.dir=sweep",
    ]  # fmt: skip
    with open(err_log, "w") as err:
        proc = subprocess.Popen(
            args, cwd=workdir, env={**cli_env(), **pause_env("train_batch@1", marker)},
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the first job never reached its first batch: {err_log.read_text()}")
        time.sleep(0.05)
    (run_dir,) = [p.parent for p in (workdir / "sweep").glob(f"*/{CLAIM_FILE}")]
    assert read_claim(run_dir).pid == proc.pid
    return proc, run_dir


def _take_over(run_dir: Path) -> subprocess.Popen:
    """The takeover, as another launch makes it once the heartbeat is older than the
    timeout: the claim removed, and a live process holding a new one."""
    (run_dir / CLAIM_FILE).unlink()
    return holder(run_dir)


def test_a_job_whose_claim_is_taken_over_stops_and_leaves_its_directory(workdir):
    """A job suspended past its claim's timeout loses the claim to another process (which
    judged it stale and took the job over). Once it runs again it stops at its next batch
    and writes nothing more into the directory: no checkpoint, no result, no metrics (its
    log says why); the sweep goes on with its other jobs, and its end waits for the new
    holder. Real processes: the sweep paused in its first job's first batch (test hook
    "train_batch@1"), the claim file taken by another live process meanwhile."""
    marker, err_log = workdir / "in-first-batch", workdir / "err.log"
    proc, run_dir = _sweep_paused_in_its_first_batch(workdir, marker, err_log)
    other = None
    try:
        other = _take_over(run_dir)
        before = _files(run_dir)
        assert json.loads((run_dir / "results.json").read_text())["status"] == "running"
        marker.with_name(f"{marker.name}.release").touch()
        deadline = time.monotonic() + 300
        while not (
            f"stopped {run_dir.name}" in err_log.read_text()
            and any(r["status"] == "completed" for r in results_under(workdir / "sweep"))
        ):
            assert proc.poll() is None, err_log.read_text()[-3000:]
            assert time.monotonic() < deadline, err_log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1)  # the sweep's end waits for the job's new holder
        assert proc.poll() is None, err_log.read_text()[-3000:]
        assert _files(run_dir) == before  # nothing written, nothing removed
        assert not list((run_dir / "checkpoints").glob("*.ckpt"))
        assert read_claim(run_dir).pid == other.pid  # the new holder's claim left alone
    finally:
        if other is not None:
            other.send_signal(signal.SIGKILL)
            other.wait()
        proc.wait(timeout=300) if proc.poll() is None else None
    text = err_log.read_text()
    assert "was taken over while this process held it" in text, text[-3000:]
    (log_file,) = [p for p in run_dir.glob("*.log")]
    assert "was taken over" in log_file.read_text()  # the job's own log says why it stopped
    results = {Path(r["run_dir"]).name: r for r in results_under(workdir / "sweep")}
    assert results[run_dir.name]["status"] == "running"  # as the new holder (killed) left it
    others = [r for name, r in results.items() if name != run_dir.name]
    assert [r["status"] for r in others] == ["completed"]
    assert proc.returncode != 0  # the sweep says one of its jobs did not complete


def test_a_stop_signal_still_stops_the_sweep_when_the_claim_was_lost_too(workdir):
    """Ctrl-C after the claim was lost (a sweep suspended with Ctrl-Z past its timeout, taken
    over, resumed with fg, then stopped): the job writes nothing (not even "interrupted": the
    directory is the new holder's), and the signal still stops the sweep (exit 130; its
    second job never starts), as it would have without the takeover."""
    marker, err_log = workdir / "in-first-batch", workdir / "err.log"
    proc, run_dir = _sweep_paused_in_its_first_batch(workdir, marker, err_log)
    other = None
    try:
        other = _take_over(run_dir)
        before = _files(run_dir)
        time.sleep(0.5)  # the heartbeat thread (every 0.1 s) sees the claim lost
        proc.send_signal(signal.SIGINT)  # ends the pause too
        proc.wait(timeout=300)
        assert _files(run_dir) == before
    finally:
        if other is not None:
            other.send_signal(signal.SIGKILL)
            other.wait()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err_log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert f"stopped {run_dir.name}: the claim on" in text
    assert len(results_under(workdir / "sweep")) == 1  # the second job never started


def test_a_claim_travels_to_a_spawned_process_without_its_heartbeat(tmp_path):
    """Lightning's ddp_spawn pickles the callbacks, and the claim with their StopSignals: the
    copy reads the same file, holds no thread, and never removes the holder's claim."""
    import pickle

    from vaesweep.run.signals import StopSignals

    with acquire(tmp_path, timeout_s=0.5) as claim:
        copy = pickle.loads(pickle.dumps(StopSignals(None, claim))).claim
        assert (copy.path, copy.token, copy.interval) == (claim.path, claim.token, claim.interval)
        copy.verify()  # still the holder's: nothing raised
        copy.release()  # not this copy's to release
        assert read_claim(tmp_path).token == claim.token
        write_claim(tmp_path, host="elsewhere.example", pid=4242)
        with pytest.raises(claims.ClaimLost, match="elsewhere.example"):
            copy.verify()


def _cannot_read_others_files() -> list[str] | None:
    """A command prefix under which this process cannot read another user's mode-600 file
    (root keeps its uid but loses the capabilities that override file permissions), or None
    where none is available."""
    if os.geteuid() != 0:
        return []  # an ordinary user: another user's 600 file is unreadable already
    if shutil.which("setpriv") is None:
        return None
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


@pytest.mark.parametrize("unreadable", ["another user's", "a directory"])
@pytest.mark.slow
def test_a_claim_that_cannot_be_read_at_the_end_still_gives_the_summary(workdir, unreadable):
    """A job of the sweep directory claimed by a file this launch cannot read: another
    user's launch's claim (mode 600, owned by nobody; the sweep run without the capability
    to read it), or a directory named .claim. The end of the sweep read every claim to wait
    for the jobs other launches run; reading this one raised, Hydra made that a warning, and
    the sweep exited 0 with no table and no summary.csv although one of its jobs failed. Now
    such a claim is judged by its heartbeat (its mtime, kept fresh here as its holder
    would), as another host's: waited for until it is gone, then the summary is written and
    the exit status is 1 (a failed job)."""
    prefix = _cannot_read_others_files() if unreadable == "another user's" else []
    if prefix is None:
        pytest.skip("cannot run a process that is denied another user's files here")
    other = workdir / "sweep" / "beta=9"  # a job of another launch's grid in this directory
    other.mkdir(parents=True)
    claim = other / CLAIM_FILE
    if unreadable == "a directory":
        claim.mkdir()
    else:
        write_claim(other, host="elsewhere.example", pid=4242, token="theirs")
        os.chown(claim, 65534, 65534)
        os.chmod(claim, 0o600)
    args = [
        "-m", "data.batch_size=128,5000", *TINY, "threads=1", "logger=none",
        "sweep.claim_timeout_s=3", "hydra.sweep.dir=sweep",
    ]  # fmt: skip
    out_log, err_log = workdir / "out.log", workdir / "err.log"
    with open(out_log, "w") as out, open(err_log, "w") as err:
        proc = subprocess.Popen(
            [*prefix, sys.executable, str(RUN_PY), *args],
            cwd=workdir, env=cli_env(), stdout=out, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "waiting for 1 job(s)" not in out_log.read_text():  # its holder beats
            assert proc.poll() is None, err_log.read_text()[-3000:]
            assert time.monotonic() < deadline, out_log.read_text()[-3000:]
            os.utime(claim)
            time.sleep(0.2)
        time.sleep(1)
        assert proc.poll() is None  # waiting while the claim is fresh
        claim.rmdir() if claim.is_dir() else claim.unlink()  # its job ended
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = out_log.read_text(), err_log.read_text()
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err and "Callback" not in err, err[-3000:]
    waited = "waiting for 1 job(s) that another launch is running: beta=9 (a claim file that "
    assert f"{waited}cannot be read: " in out, out[-3000:]
    assert "Sweep sweep (2 jobs)" in out, out[-3000:]
    assert "1 of 2 jobs did not complete" in err
    with open(workdir / "sweep" / "summary.csv") as f:
        rows = {r["data.batch_size"]: r["status"] for r in csv.DictReader(f)}
    assert rows == {"128": "completed", "5000": "failed"}
    assert json.loads((workdir / "sweep" / "sweep.json").read_text())["finished_at"]


def test_a_claim_file_that_cannot_be_read_is_judged_by_its_heartbeat(tmp_path):
    """A directory named .claim (open() raises): a claim naming no holder, with the reason,
    live while its mtime is fresh, stale once it is older than the timeout (not after the
    5 s grace of a claim being written); a holder whose own file cannot be read for a
    moment does not count it as lost."""
    (tmp_path / CLAIM_FILE).mkdir()
    info = read_claim(tmp_path)
    assert info.error.startswith("IsADirectoryError") and not info.readable
    assert "cannot be read" in info.describe() and "cannot be read" in info.holder
    assert held_by_other(tmp_path, 300) is not None
    with pytest.raises(ClaimHeld, match="cannot be read"):
        acquire(tmp_path, timeout_s=300)
    old = time.time() - 10
    os.utime(tmp_path / CLAIM_FILE, (old, old))
    assert held_by_other(tmp_path, 300) is not None  # a written claim would be stale now
    assert held_by_other(tmp_path, 5) is None
    (tmp_path / CLAIM_FILE).rmdir()
    with acquire(tmp_path, timeout_s=300) as claim:
        (tmp_path / CLAIM_FILE).unlink()
        (tmp_path / CLAIM_FILE).mkdir()
        claim.verify()  # a file system that cannot answer says nothing of who holds it
        (tmp_path / CLAIM_FILE).rmdir()
        (tmp_path / CLAIM_FILE).write_text(json.dumps({"token": claim.token, "host": HOST}))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "signum"), [("basic", signal.SIGINT), ("local_parallel", signal.SIGTERM)]
)
def test_a_signal_while_waiting_for_another_launchs_job_gives_the_stopped_summary(
    workdir, launcher, signum
):
    """Two launches of one sweep: the first holds a job (the test hook "claimed"), the second
    skips it, runs the others, and at its end waits for the first's job. A stop signal to
    the waiting launch used to leave no summary (the basic launcher: exit 128 + N, no table,
    sweep.json without finished_at and stopped_by, handlers not restored) or do nothing at
    all (a parallel sweep: the first signal only wrote the stop file, which was left behind,
    and the wait went on). Now it ends the wait at once: the summary names the signal, the
    stop file is removed, exit 128 + N; the first launch finishes its job and ends with
    every job completed."""
    sweep, marker = workdir / "sweep", workdir / "first-holds-a-job"
    extra = (
        [] if launcher == "basic" else ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=1"]
    )
    args = [
        sys.executable, str(RUN_PY), "-m", "beta=1,2,4", *TINY, "threads=1", "logger=none",
        "hydra.sweep.dir=sweep", *extra,
    ]  # fmt: skip
    logs = [(workdir / f"out-{i}.log", workdir / f"err-{i}.log") for i in range(2)]

    def launch(i: int, extra_env: dict[str, str]) -> subprocess.Popen:
        return _launch(args, workdir, logs[i], {**cli_env(), **extra_env})

    def wait_until(condition, what: str, timeout: float = 300) -> None:
        _wait_until(procs, condition, what, timeout)

    procs = [launch(0, pause_env("claimed", marker))]
    try:
        wait_until(marker.exists, "claim held by the first launch")
        (held_dir,) = [p.parent for p in sweep.glob(f"*/{CLAIM_FILE}")]
        holder_pid = read_claim(held_dir).pid  # the first launch (or its worker)
        procs.append(launch(1, {}))
        wait_until(lambda: "waiting for 1 job(s)" in logs[1][0].read_text(), "wait")
        procs[1].send_signal(signum)
        try:
            procs[1].wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the waiting launch did not stop: " + logs[1][1].read_text()[-3000:])
        out, err = (p.read_text() for p in logs[1])
        assert procs[1].returncode == 128 + signum, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert "Sweep sweep (3 jobs)" in out, out[-3000:]
        assert f"Sweep stopped by {signum.name}" in err and "Continue this sweep:" in err
        record = json.loads((sweep / "sweep.json").read_text())
        assert record["stopped_by"] == signum.name and record["finished_at"]
        with open(sweep / "summary.csv") as f:
            rows = {r["job"]: r["status"] for r in csv.DictReader(f)}
        assert len(rows) == 3
        assert {job: s for job, s in rows.items() if job != held_dir.name} == {
            p.name: "completed" for p in sweep.iterdir() if p.is_dir() and p != held_dir
        }
        assert rows[held_dir.name] == "incomplete"  # the first launch's, under way
        assert not list(sweep.glob(".stop-*"))
        assert read_claim(held_dir).pid == holder_pid  # the other launch's job untouched
        marker.with_name(f"{marker.name}.release").touch()  # the first launch goes on
        assert procs[0].wait(timeout=300) == 0, logs[0][1].read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = results_under(sweep)
    assert [r["status"] for r in results] == ["completed"] * 3
    assert all(r["attempts"] == 1 for r in results)
