"""Sweeps for real: the CLI's multirun in subprocesses, launchers, resume after SIGKILL, DDP."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from vaesweep.core.helpers import command_again
from vaesweep.sweep.grid import (
    SUMMARY_FILE,
    SWEEP_FILE,
    job_dirname,
    override_dirname,
    parse_grid,
)

from conftest import RUN_PY, TINY, cli_env, results_under, run_cli
from pause import import_env, pythonpath_with
from wandb_offline import read_offline_run

GRID = ["likelihood=gaussian,laplace", "beta=0.5,2"]


@pytest.mark.parametrize(
    ("argv", "key", "also", "expected"),
    [
        # A sweep's directory, named or not, is given as hydra.sweep.dir (sweep.resume gone).
        (["run.py", "-m", "beta=1,2"], "hydra.sweep.dir", [], "PY run.py -m beta=1,2 X=D"),
        (
            ["/r/run.py", "-m", "hydra.sweep.dir=old", "beta=1,2", "+sweep.resume=x"],
            "hydra.sweep.dir",
            [],
            "PY /r/run.py -m beta=1,2 X=D",
        ),
        # An override in place of one the command had (re-run failed jobs).
        (
            ["run.py", "-m", "sweep.rerun_failed=false", "beta=1,2"],
            "hydra.sweep.dir",
            ["sweep.rerun_failed=true"],
            "PY run.py -m beta=1,2 X=D sweep.rerun_failed=true",
        ),
        # A run: `python -m vaesweep`, an installed script, no argv at all.
        (
            ["/p/vaesweep/__main__.py", "hydra.run.dir=r", "label.note=a b"],
            "hydra.run.dir",
            [],
            "PY -m vaesweep 'label.note=a b' X=D",
        ),
        (["/bin/vaesweep-train", "beta=2"], "hydra.run.dir", [], "vaesweep-train beta=2 X=D"),
        ([], "hydra.run.dir", [], "PY run.py X=D"),
    ],
)
def test_the_command_that_continues_names_the_directory(argv, key, also, expected, monkeypatch):
    """Without its directory, the command as typed would start a new one (named by the
    launch time): the command printed to continue a run or sweep names it. The interpreter
    is this one (``python`` is another here: which is faked to say so)."""
    monkeypatch.setattr("shutil.which", lambda name: f"/elsewhere/{name}")
    got = command_again(key, "/out/D", argv, also=also)
    words = expected.replace("PY", shlex.quote(sys.executable)).replace("X=D", f"{key}=/out/D")
    assert shlex.split(got) == shlex.split(words)


@pytest.mark.parametrize(
    "directory",
    [
        "/a/b,c",
        "/x/lr=1e-3",
        "/p/Projects (old)",
        "/u/com~apple~CloudDocs",
        "/a/it's",
        "/a/b\\",
        "/home/jörg/outputs",  # Hydra's lexer takes ASCII letters only
        "/data/实验/β=1",
    ],
)
def test_the_printed_directory_reads_back_as_itself(directory):
    """A directory with characters Hydra's override grammar gives a meaning (a comma: a
    sweep; =, brackets, ~, quotes) or does not take bare (a letter outside ASCII) is quoted
    so that Hydra's parser returns it unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (item,) = [
        w for w in shlex.split(command_again("hydra.sweep.dir", directory, ["run.py"])) if "=" in w
    ]
    parsed = OverridesParser.create().parse_override(item)
    assert parsed.value() == directory and not parsed.is_sweep_override()


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_summary(sweep: Path) -> list[dict]:
    with open(sweep / SUMMARY_FILE) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "local_parallel"])
def test_grid_sweep_with_launcher(workdir, launcher):
    extra = [] if launcher == "basic" else ["hydra/launcher=local_parallel"]
    proc = run_cli(
        ["-m", *GRID, *TINY, "logger=csv", "hydra.sweep.dir=sweep", *extra], workdir, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = workdir / "sweep"
    dirs = job_dirs(sweep)
    assert len(dirs) == 4
    for d in dirs:  # named from the job's own overrides
        r = json.loads((d / "results.json").read_text())
        assert r["status"] == "completed"
        assert d.name == job_dirname(",".join(sorted(r["overrides"])))
        assert f"beta={r['config']['beta']:g}" in d.name
        # Torch threads: the usable cores, shared by local_parallel's 2 jobs at once.
        at_once = 1 if launcher == "basic" else 2
        assert r["devices"]["torch_threads"] == max(1, len(os.sched_getaffinity(0)) // at_once)
    rows = read_summary(sweep)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert {(r["likelihood"], r["beta"]) for r in rows} == {
        (lik, b) for lik in ("gaussian", "laplace") for b in ("0.5", "2")
    }
    meta = json.loads((sweep / SWEEP_FILE).read_text())
    assert meta["grid"] == {"likelihood": ["gaussian", "laplace"], "beta": ["0.5", "2"]}
    assert meta["n_jobs"] == 4 and len(meta["jobs"]) == 4
    assert "-m" in meta["command"]
    if launcher == "local_parallel":
        assert meta["launcher"].endswith("LocalParallelLauncher")
    assert "status" in proc.stdout and "completed" in proc.stdout  # the printed table
    assert not list(sweep.rglob("offline-run-*"))  # logger=csv: no W&B run, no summary run


@pytest.mark.slow
def test_parallel_sweep_leaves_lightning_to_its_workers(workdir):
    """With jobs in local_parallel's workers, the launching process composes, checks and summarises
    the sweep without importing Lightning (2 s, ~100 MB); each worker imports it once. The
    basic launcher, whose jobs run in the launching process, imports it there."""
    marker = workdir / "lightning_imported"
    env = {**cli_env(), **import_env("lightning", marker)}
    cmd = [sys.executable, str(RUN_PY), "-m", "beta=0.5,2", *TINY, "logger=csv"]
    parallel = subprocess.Popen(
        [*cmd, "hydra.sweep.dir=parallel", "hydra/launcher=local_parallel"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parallel.wait(timeout=600) == 0, parallel.stderr.read()[-3000:]
    statuses = [r["status"] for r in results_under(workdir / "parallel")]
    assert statuses == ["completed", "completed"]
    workers = marker.read_text().split()
    assert workers and str(parallel.pid) not in workers
    assert len(workers) == len(set(workers))  # once per worker process
    marker.unlink()
    basic = subprocess.Popen(
        [*cmd, "hydra.sweep.dir=basic"], cwd=workdir, env=env, stdout=subprocess.DEVNULL
    )
    assert basic.wait(timeout=600) == 0
    assert marker.read_text().split() == [str(basic.pid)]  # its jobs run in it


@pytest.mark.slow
def test_two_sweeps_started_together_get_two_directories(workdir):
    args = [sys.executable, str(RUN_PY), "-m", "beta=1", *TINY, "logger=none"]
    procs = [
        subprocess.Popen(
            args, cwd=workdir, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    sweeps = sorted((workdir / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    for s in sweeps:
        assert len(results_under(s)) == 1


@pytest.mark.slow
def test_failing_job_stays_local_and_is_named(workdir):
    """A job that fails on its data (a batch larger than the training split: only its data
    can tell; a bad value of the grid itself is refused before any job) fails alone."""
    cmd = ["-m", "data.batch_size=128,5000", *TINY, "logger=none", "hydra.sweep.dir=sweep"]
    proc = run_cli(cmd, workdir)
    assert proc.returncode != 0
    statuses = {
        r["config"]["data"]["batch_size"]: r["status"] for r in results_under(workdir / "sweep")
    }
    assert statuses == {128: "completed", 5000: "failed"}
    assert "1 of 2 jobs did not complete" in proc.stderr
    assert "data.batch_size=5000" in proc.stderr and "ConfigError" in proc.stderr
    rows = {r["data.batch_size"]: r for r in read_summary(workdir / "sweep")}
    assert rows["5000"]["status"] == "failed"
    assert "data.batch_size=5000 is invalid" in rows["5000"]["error"]

    # Re-running skips the completed job (not a byte changed) and checks the refused one
    # again (a ConfigError: nothing was computed, so no sweep.rerun_failed is needed), which
    # is refused again.
    before = {p: p.stat().st_mtime_ns for p in (workdir / "sweep").rglob("results.json")}
    again = run_cli(cmd, workdir)
    assert again.returncode != 0 and "data.batch_size=5000 is invalid" in again.stderr
    changed = {p.parent.name for p in before if p.stat().st_mtime_ns != before[p]}
    assert len(changed) == 1 and changed.pop().startswith("data.batch_size=5000")
    before = {p: p.stat().st_mtime_ns for p in before}
    # Asked to, it re-runs the failed job (which fails again) and still skips the other.
    rerun = run_cli([*cmd, "sweep.rerun_failed=true"], workdir)
    assert rerun.returncode != 0
    changed = {p.parent.name for p in before if p.stat().st_mtime_ns != before[p]}
    assert len(changed) == 1 and changed.pop().startswith("data.batch_size=5000")


@pytest.mark.slow
def test_killed_job_resumes_to_the_uninterrupted_result(workdir):
    """SIGKILL one job mid-training; the re-run skips the completed job (files untouched)
    and resumes the killed one from its checkpoint to bit-identical metrics."""
    budget = [
        "data=digits",
        "data.batch_size=8",
        "trainer.max_epochs=6",
        "trainer.enable_progress_bar=false",
        "eval.iwae_k=10",
        "logger=csv",
        "likelihood=laplace",
        "likelihood.scale=optimal",
    ]
    cmd = [sys.executable, str(RUN_PY), "-m", "beta=0.5,2", *budget, "hydra.sweep.dir=sweep"]
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=cli_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    sweep = workdir / "sweep"
    deadline = time.monotonic() + 240
    target = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(sweep.glob("beta=2,*/checkpoints/last.ckpt"))
        if found:
            target = found[0].parents[1]
            break
        time.sleep(0.02)
    assert target is not None, "the second job never wrote a checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((target / "results.json").read_text())["status"] == "running"
    first = next(d for d in job_dirs(sweep) if d.name.startswith("beta=0.5"))
    assert json.loads((first / "results.json").read_text())["status"] == "completed"
    mtimes = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}

    again = run_cli(cmd[2:], workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    resumed = json.loads((target / "results.json").read_text())
    assert resumed["status"] == "completed"
    assert "resuming" in (target / "train.log").read_text()

    ref = run_cli(["beta=2", *budget, "hydra.run.dir=reference"], workdir)
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = json.loads((workdir / "reference" / "results.json").read_text())
    assert resumed["metrics"] == reference["metrics"]


@pytest.mark.slow
def test_submitit_local_launcher(workdir):
    proc = run_cli(
        ["-m", "beta=0.5,2", *TINY, "logger=none", "hydra/launcher=submitit_local",
         "hydra.launcher.timeout_min=10", "hydra.sweep.dir=sweep"],
        workdir, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = results_under(workdir / "sweep")
    assert [r["status"] for r in results] == ["completed", "completed"]
    assert (workdir / "sweep" / SUMMARY_FILE).exists()
    assert any((workdir / "sweep" / ".submitit").iterdir())


def ddp_budget(n_test: int = 200) -> list[str]:
    return [
        "data=digits",
        "data.batch_size=64",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "eval.iwae_k=20",
        "logger=csv",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["run", "multirun"])
def test_ddp_two_cpu_processes_match_single_process(workdir, mode):
    """trainer=ddp on 2 CPU processes (gloo): plain ddp from the CLI, ddp_spawn inside a
    multirun. One result written, every test example counted once, metrics ≈ 1 process."""
    args = [*ddp_budget(), "trainer=ddp", "trainer.devices=2"]
    args = (
        ["-m", *args, "hydra.sweep.dir=ddp"] if mode == "multirun" else [*args, "hydra.run.dir=ddp"]
    )
    proc = run_cli(args, workdir, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ddp,) = results_under(workdir / "ddp")
    assert ddp["status"] == "completed"
    assert len(list((workdir / "ddp").rglob("results.json"))) == 1
    assert ddp["metrics"]["test/n_examples"] == ddp["dataset"]["sizes"]["test"] == 200
    single = run_cli([*ddp_budget(), "hydra.run.dir=single"], workdir)
    assert single.returncode == 0, single.stderr[-3000:]
    (one,) = results_under(workdir / "single")
    for key in ("test/nll", "test/elbo", "test/rec_nll", "val/elbo"):
        assert ddp["metrics"][key] == pytest.approx(one["metrics"][key], rel=0.01), key


def test_grid_parsing_and_job_dir_names():
    grid = parse_grid(
        ["beta=0.5,1", "seed=range(3)", "data=digits"], {"likelihood": "gaussian,laplace"}
    )
    assert grid == {
        "likelihood": ["gaussian", "laplace"],
        "beta": ["0.5", "1"],
        "seed": ["0", "1", "2"],
    }
    # A command-line value replaces the preset's axis.
    assert parse_grid(["likelihood=laplace"], {"likelihood": "gaussian,laplace"}) == {}
    assert job_dirname("") == "default"
    assert "/" not in job_dirname("data.root=/a/b,beta=1")
    long_a, long_b = "x=" + "a" * 300, "x=" + "a" * 299 + "b"
    assert len(job_dirname(long_a)) <= 120 and job_dirname(long_a) != job_dirname(long_b)


GLOB = "likelihood=glob(*,exclude=[bernoulli,continuous_bernoulli])"


def _multirun_config(*overrides: str, task: Sequence[str] = ()):
    """A multirun's config as Hydra gives it to the sweep's callback (its sweep overrides in
    hydra.overrides.task), composed under the Hydra that is initialized around the call."""
    from hydra import compose
    from omegaconf import open_dict, read_write

    config = compose("train", list(overrides), return_hydra_config=True)
    with read_write(config), open_dict(config):
        config.hydra.overrides.task = list(task)
    return config


def test_summary_csv_keeps_every_digit_and_the_table_shows_significant_ones(tmp_path, capsys):
    """summary.csv is data (and the W&B summary table is read from it): an MSE of 3e-5 is
    3e-5 there, never 0.0 as 4 decimals would make it. The printed table rounds to 6
    significant digits, which keep a small number's digits too."""
    from vaesweep.analysis.wandb_summary import read_summary_table
    from vaesweep.sweep.grid import finish_sweep

    metrics = {"test/nll": 759.4968200683594, "test/elbo": -763.0161, "test/mse": 0.09961256,
               "test/kl": 3e-5}  # fmt: skip
    for beta in ("0.5", "2"):
        job = tmp_path / f"beta={beta}"
        job.mkdir()
        result = {"status": "completed", "metrics": metrics, "overrides": [f"beta={beta}"],
                  "config": {"beta": float(beta)}, "duration_s": 4.047}  # fmt: skip
        (job / "results.json").write_text(json.dumps(result))
    assert finish_sweep(tmp_path) is True
    (row, _) = read_summary(tmp_path)
    assert {m: float(row[m]) for m in metrics} == metrics  # every digit, as recorded
    columns, data = read_summary_table(tmp_path / SUMMARY_FILE)
    assert data[0][columns.index("test/kl")] == 3e-5  # the W&B table's cell
    table = capsys.readouterr().out.split("jobs):\n")[1]
    assert "759.497" in table and "-763.016" in table and "0.0996126" in table
    assert "3e-05" in table and " 0.0 " not in table and "759.4968200683594" not in table


def test_a_glob_grid_is_checked_and_recorded_like_any_grid(tmp_path, monkeypatch):
    """likelihood=glob(...) lists the group's options as Hydra's sweeper does (it has the
    config loader): the sweep's start checks its jobs and records them; it used to fail
    inside the callback ("ConfigLoader is not set"), which Hydra made a warning, and the
    sweep ran unchecked, unguarded and unrecorded. Outside a Hydra run a glob is refused,
    naming it."""
    from hydra import initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vaesweep.core.checks import ConfigError
    from vaesweep.run.config import CONF_DIR
    from vaesweep.sweep import callback
    from vaesweep.sweep.grid import grid_jobs

    monkeypatch.chdir(tmp_path)
    task = [GLOB, "beta=1,2"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(task)
        assert grid_jobs(task, {}) == BasicSweeper.split_arguments(parsed, None)[0]
        config = _multirun_config(
            "hydra/launcher=local_parallel", "hydra.sweep.dir=sweep", "logger=none", task=task
        )
        try:
            callback.SweepCallback().on_multirun_start(config)
            assert callback._RUNNING is not None
            planned = callback._RUNNING.planned
        finally:
            if callback._RUNNING is not None:
                callback._RUNNING.guard.uninstall()
            callback._RUNNING = None
    meta = json.loads((tmp_path / "sweep" / SWEEP_FILE).read_text())
    assert meta["grid"] == {"likelihood": ["gaussian", "laplace"], "beta": ["1", "2"]}
    assert meta["n_jobs"] == 4 and sorted(planned) == sorted(meta["launches"][0]["job_dirs"])
    assert sorted(planned) == [
        f"beta={b},likelihood={lik}" for b in (1, 2) for lik in ("gaussian", "laplace")
    ]
    with pytest.raises(ConfigError, match=r"likelihood=glob\(.*list the options instead"):
        grid_jobs(task, {})


@pytest.mark.slow
def test_a_glob_grid_runs_checked_and_ends_with_its_summary(workdir):
    """The CLI with likelihood=glob(...): one job per listed option, each completed, the
    sweep's record and summary written, exit 0 (it ended with "sweep summary failed", exit
    1, its checks and stop guard never installed)."""
    proc = run_cli(["-m", GLOB, "beta=2", *TINY, "logger=none", "hydra.sweep.dir=sweep"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "raised" not in proc.stderr and "summary failed" not in proc.stderr
    rows = read_summary(workdir / "sweep")
    assert sorted((r["likelihood"], r["status"]) for r in rows) == [
        ("gaussian", "completed"),
        ("laplace", "completed"),
    ]
    meta = json.loads((workdir / "sweep" / SWEEP_FILE).read_text())
    assert meta["grid"] == {"likelihood": ["gaussian", "laplace"]} and meta["n_jobs"] == 2


def test_an_unexpected_error_at_the_sweeps_start_ends_it_before_any_job(
    tmp_path, capsys, monkeypatch
):
    """Hydra turns a callback's Exception into a warning and would run every job without
    the sweep's checks, stop guard and record: an unexpected error in its start goes past
    Hydra's callbacks to the entry point instead, which names it in one line, exit 1."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks

    from vaesweep.run.config import CONF_DIR
    from vaesweep.sweep import callback

    def broken(config):
        raise RuntimeError("boom")

    monkeypatch.setattr(callback, "start_sweep", broken)
    callbacks = Callbacks()
    callbacks.callbacks.append(callback.SweepCallback())
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = _multirun_config(
            "hydra/launcher=local_parallel", f"hydra.sweep.dir={tmp_path}", task=["beta=1,2"]
        )
        with pytest.raises(callback.SweepStartFailed) as failed:
            callbacks.on_multirun_start(config=config)
    assert callback._RUNNING is None and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert callback.start_failed(failed.value) == 1
    err = capsys.readouterr().err
    assert "[vaesweep] sweep stopped, no job was run: its start" in err
    assert "RuntimeError: boom (set HYDRA_FULL_ERROR=1 for the traceback)" in err


@pytest.mark.parametrize("search", [False, True])
def test_a_sweep_subdir_of_its_own_is_refused_before_any_job(tmp_path, capsys, search):
    """vaesweep finds a sweep's jobs by the names it gives their directories: with
    hydra.sweep.subdir=${hydra.job.num} every job was listed as never started, exit 1, and
    the continue command named the wrong jobs. Refused before any job, naming the key, its
    value and why; vaesweep's own (the config's default) passes."""
    from hydra import initialize_config_dir

    from vaesweep.run.config import CONF_DIR
    from vaesweep.sweep import preflight

    jobs = None if search else [["beta=1"], ["beta=2"]]
    where = f"hydra.sweep.dir={tmp_path / 'sweep'}"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        assert preflight.multirun_refusal(_multirun_config(where), jobs) is None
        config = _multirun_config(where, "hydra.sweep.subdir=${hydra.job.num}")
        problem = preflight.multirun_refusal(config, jobs)
        assert problem is not None
        assert problem.startswith("hydra.sweep.subdir=${hydra.job.num} is not supported")
        assert "finds the sweep's jobs by those names" in problem
        assert ("trial_0000" in problem) == search
        with pytest.raises(SystemExit) as refused:
            preflight.check_multirun(config, search)
    assert refused.value.code == 2
    assert "sweep refused, no job was run: hydra.sweep.subdir=" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "exclude_keys", "item_sep", "kv_sep"),
    [
        ([], [], ",", "="),
        (["beta=4", "likelihood=laplace", "seed=1"], [], ",", "="),
        (["seed=1", "beta=4", "data.root='/a/b=c'"], ["seed"], ",", "-"),  # "=" in a value
        (["+trainer.foo=1", "~logger", "++model.latent_dim=8"], [], "_", "-"),
        (["likelihood@lik=gaussian", "model=conv", "beta=0.5"], ["likelihood"], "/", ":"),
        (["a=[1,2]", "b='x y'", "c={k:v}", "d=range(3)", "B=2"], ["d", "c"], ",", "=="),
        (["hydra.launcher.n_jobs=2", "seed=0"], ["hydra.launcher.n_jobs"], "", ""),
    ],
)
def test_override_dirname_is_the_one_hydra_composes(overrides, exclude_keys, item_sep, kv_sep):
    # Hydra's own (internal) function, as the independent reference.
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    expected = get_overrides_dirname(parsed, exclude_keys, item_sep, kv_sep)
    assert override_dirname(overrides, exclude_keys, item_sep, kv_sep) == expected


@pytest.mark.slow
def test_experiment_preset_expands_to_its_grid(workdir):
    proc = run_cli(
        ["-m", "experiment=tiny_grid", f"hydra.searchpath=[file://{Path(__file__).parent / 'conf'}]",
         "hydra.sweep.dir=sweep"],
        workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((workdir / "sweep" / SWEEP_FILE).read_text())
    assert meta["grid"] == {"likelihood": ["gaussian", "laplace"], "seed": ["0", "1"]}
    results = results_under(workdir / "sweep")
    assert sorted((r["config"]["likelihood"]["name"], r["seed"]) for r in results) == [
        ("gaussian", 0), ("gaussian", 1), ("laplace", 0), ("laplace", 1)
    ]  # fmt: skip
    assert all(
        r["status"] == "completed" and r["config"]["data"]["name"] == "digits" for r in results
    )


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    from vaesweep.run.config import CONF_DIR
    from vaesweep.run.jobs import register_resolvers

    register_resolvers()  # as the entry point does

    overrides = [
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "hydra.launcher.partition=gpu",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.tasks_per_node, launcher.gpus_per_node) == ("gpu", 4, 4)


@pytest.mark.parametrize(
    ("overrides", "tasks", "gpus", "refusal"),
    [
        (["trainer.accelerator=cpu", "trainer.devices=2"], 2, 0, None),  # no GPU asked for
        (["trainer=gpu"], 1, 1, None),
        (["trainer.devices=auto"], None, None, "hydra.launcher.tasks_per_node (While der"),
        (["trainer.devices=-1"], -1, -1, "hydra.launcher.tasks_per_node=-1 is invalid"),
        (["hydra.launcher.gpus_per_node=-2"], 1, -2, "hydra.launcher.gpus_per_node=-2 is inv"),
    ],
)
def test_the_slurm_launcher_asks_for_gpus_only_for_gpu_jobs(overrides, tasks, gpus, refusal):
    """hydra/launcher=slurm asks SLURM for trainer.devices tasks and GPUs: a CPU job asked
    for a GPU; a device count SLURM cannot take (auto, -1) reached sbatch. Now no GPU for
    trainer.accelerator=cpu, and a count that is not one is refused before any job."""
    from hydra import compose, initialize_config_dir

    from vaesweep.run.config import CONF_DIR
    from vaesweep.run.jobs import register_resolvers
    from vaesweep.sweep.preflight import launcher_problem

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    if tasks is not None:  # else submitit's int field refuses the value on reading
        assert (launcher.tasks_per_node, launcher.gpus_per_node) == (tasks, gpus)
    problem = launcher_problem(launcher)
    if refusal is None:
        assert problem is None or problem.startswith("hydra/launcher=slurm needs SLURM"), problem
    else:
        assert problem is not None and problem.startswith(refusal), problem
        assert "trainer.devices=2" in problem


def test_a_key_some_jobs_configs_lack_is_refused_at_the_first_attempt(tmp_path):
    """likelihood=gaussian,bernoulli likelihood.scale=learned: the Bernoulli's config has no
    scale. Hydra's sweeper composes every job before it runs any and ended the launch in its
    own words, suggesting +, then ++ (and a sweep directory was left behind); now the sweep
    is refused at once, naming the key, the job and what to do, and nothing is written."""
    proc = run_cli(
        ["-m", *TINY, "logger=none", "likelihood=gaussian,bernoulli", "likelihood.scale=learned",
         "hydra.sweep.dir=sweep"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        "[vaesweep] sweep refused, no job was run: likelihood.scale=learned: likelihood.scale "
        "is not a key of the config of 1 of the 2 jobs (likelihood=bernoulli): "
        "likelihood=bernoulli has no key scale; its keys: name, allow_nonbinary. Hydra cannot "
        "set a key a config does not have (+ or ++ would add it to a config that does not "
        "read it). Run those jobs (likelihood=bernoulli) as a sweep of their own, without "
        "likelihood.scale, and leave them out of this one"
    ) in proc.stderr
    assert "To append to your config use" not in proc.stderr
    assert "[vaesweep] warning" not in proc.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        # A typo in a swept key: no job's config has it.
        (["betta=1,2"],
         "betta=1,2: betta is not a key of any job's config (2 jobs): the config has no key "
         "betta (did you mean beta?); its keys: data, model, likelihood,"),
        # Under a node that is not there: the first missing node is named.
        (["model.hiden.x=1,2"],
         "model.hiden.x=1,2: model.hiden.x is not a key of any job's config (2 jobs): "
         "model=mlp has no key hiden (did you mean model.hidden?); its keys: name, "
         "latent_dim, hidden, channels, activation. Drop it"),
        # Several jobs lack it: each named by its swept values.
        (["likelihood=gaussian,bernoulli", "likelihood.scale=learned", "seed=0,1"],
         "is not a key of the config of 2 of the 4 jobs (likelihood=bernoulli seed=0; "
         "likelihood=bernoulli seed=1): likelihood=bernoulli has no key scale"),
        # Another error of Hydra's: its first line and the options it lists.
        (["likelihood=gaussian,nope"],
         "the config of 1 of the 2 jobs (likelihood=nope) does not compose: In 'train': Could "
         "not find 'likelihood/nope'; Available options in 'likelihood': bernoulli, "
         "continuous_bernoulli, gaussian, laplace (job: likelihood=nope)"),
    ],
)  # fmt: skip
def test_a_job_whose_config_does_not_compose_refuses_the_sweep(tmp_path, capsys, task, expected):
    """The grid's checks compose every job's config (as Hydra's sweeper does before it runs
    any): one that does not compose refuses the sweep in one line (it was a warning, and the
    launch went on into Hydra's multi-line error)."""
    from hydra import initialize_config_dir

    from vaesweep.run.config import CONF_DIR
    from vaesweep.sweep.grid import refuse_ineffective

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = _multirun_config(f"hydra.sweep.dir={tmp_path}/sweep", task=task)
        with pytest.raises(SystemExit) as exit_:
            refuse_ineffective(config, task, {})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("[vaesweep] sweep refused, no job was run: "), err
    assert expected in err, err


def test_jobs_are_composed_with_the_launchs_hydra_overrides(tmp_path, capsys):
    """A preset found through hydra.searchpath (a Hydra override): each job is composed as
    Hydra's sweeper composes it, with the launch's Hydra overrides, so the grid's checks run
    on it and a job whose config lacks a key is still told apart from one that composes."""
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from vaesweep.run.config import CONF_DIR
    from vaesweep.sweep.grid import refuse_ineffective

    search = f"hydra.searchpath=[file://{Path(__file__).parent / 'conf'}]"
    task = ["experiment=tiny_grid"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = _multirun_config(search, f"hydra.sweep.dir={tmp_path}/s", *task, task=task)
        params = OmegaConf.to_container(config.hydra.sweeper.params)
        refuse_ineffective(config, task, params)  # no exit: all four jobs compose
        task = [*task, "likelihood.scale=learned"]
        params["likelihood"] = "gaussian,bernoulli"
        config = _multirun_config(search, f"hydra.sweep.dir={tmp_path}/s", *task, task=task)
        with pytest.raises(SystemExit):
            refuse_ineffective(config, task, params)
    err = capsys.readouterr().err
    assert "warning" not in err, err
    assert (
        "likelihood.scale=learned: likelihood.scale is not a key of the config of 2 of the 4 "
        "jobs (likelihood=bernoulli seed=0; likelihood=bernoulli seed=1)"
    ) in err, err


def test_a_grid_axis_given_as_a_sweeper_param_is_an_axis(tmp_path):
    """hydra.sweeper.params.beta=0.5,1 with the default (basic) sweeper: the form of Hydra's
    basic sweeper, of vaesweep's study presets and of docs/search.md, which works where a
    preset sets params. It is the same axis as beta=0.5,1: two jobs, named as its. (It ended
    in Hydra's AssertionError: Unexpected type for root: NoneType, the params being null.)"""
    proc = run_cli(
        ["-m", *TINY, "logger=none", "hydra.sweeper.params.beta=0.5,1", "hydra.sweep.dir=sweep"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "sweep" / SWEEP_FILE).read_text())
    assert record["grid"] == {"beta": ["0.5", "1"]}
    assert sorted(r["config"]["beta"] for r in results_under(tmp_path / "sweep")) == [0.5, 1.0]


# --- a training stack that does not import -------------------------------------------------
def broken_package_env(root: Path, name: str = "lightning") -> dict[str, str]:
    """The CLI's environment with a `lightning` (or `name`) package first on the path whose
    import fails, as a broken install's does (a missing shared library)."""
    package = root / "broken_site" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        'raise ImportError("libfake_cuda.so.9: cannot open shared object file")\n'
    )
    return {**cli_env(), "PYTHONPATH": pythonpath_with(package.parent)}


@pytest.mark.parametrize("mode", ["run", "multirun"])
def test_a_training_stack_that_does_not_import_stops_before_any_job(tmp_path, mode):
    """Jobs in the launching process (a single run, the basic launcher): the command ends
    with one line naming the import error, exit 1, no job directory; HYDRA_FULL_ERROR=1
    shows the import's traceback instead."""
    env = broken_package_env(tmp_path)
    where = ["hydra.run.dir=out"] if mode == "run" else ["-m", "beta=0.5,2", "hydra.sweep.dir=out"]
    cmd = [sys.executable, str(RUN_PY), *where, *TINY, "logger=csv"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[vaesweep]")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert f"StackUnavailable: the training stack does not import in {sys.executable}" in lines[0]
    assert "ImportError: libfake_cuda.so.9: cannot open shared object file" in lines[0]
    assert "(raised in " in lines[0] and "broken_site/lightning/__init__.py" in lines[0]
    assert "Traceback" not in proc.stderr and "UserWarning" not in proc.stderr
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.iterdir() if p.is_dir()]  # no job dir
    if mode == "multirun":  # the sweep's record says no job ran
        assert json.loads((out / SWEEP_FILE).read_text())["jobs"] == []
        assert "(0 jobs)" in proc.stdout
    full = subprocess.run(
        cmd, cwd=tmp_path, env={**env, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert full.returncode == 1
    assert 'broken_site/lightning/__init__.py", line 1' in full.stderr  # the import's frames
    assert "ImportError: libfake_cuda.so.9" in full.stderr


def test_a_broken_torch_is_named_in_one_line_before_hydra_starts(tmp_path):
    """torch itself does not import (the entry point's own modules need it): the same one
    line as for Lightning, exit 1, nothing written; HYDRA_FULL_ERROR=1 shows the traceback."""
    env = broken_package_env(tmp_path, "torch")
    cmd = [sys.executable, str(RUN_PY), "-m", "beta=0.5,2", "hydra.sweep.dir=out", *TINY]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("[vaesweep] "), proc.stderr
    assert (
        f"StackUnavailable: the training stack does not import in {sys.executable}" in proc.stderr
    )
    assert "ImportError: libfake_cuda.so.9: cannot open shared object file" in proc.stderr
    assert "broken_site/torch/__init__.py)" in proc.stderr
    assert not (tmp_path / "out").exists()
    full = subprocess.run(
        cmd, cwd=tmp_path, env={**env, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert full.returncode == 1
    assert "Traceback" in full.stderr and 'broken_site/torch/__init__.py", line 1' in full.stderr


@pytest.mark.slow
def test_a_worker_whose_training_stack_does_not_import_records_each_job_failed(tmp_path):
    """local_parallel's workers cannot import Lightning (the launching process never does):
    each job records `failed` with the import error in its results.json, the sweep goes on
    to the end (summary, exit 1); once the install is mended the same command with
    sweep.rerun_failed=true trains them. A job that could resume is left as it was, and
    resumes once the install is mended. Three jobs on two workers: one worker settles two."""
    cmd = [sys.executable, str(RUN_PY), "-m", "beta=0.5,1,2", *TINY, "logger=csv",
           "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
           "hydra.sweep.dir=sweep"]  # fmt: skip
    broken = broken_package_env(tmp_path)

    def launch(*extra: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*cmd, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )

    proc = launch(env=broken)
    assert proc.returncode == 1, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    results = results_under(sweep)
    assert [r["status"] for r in results] == ["failed"] * 3
    for r in results:
        assert r["error"]["type"] == "StackUnavailable"
        assert "ImportError: libfake_cuda.so.9" in r["error"]["message"]
        assert "broken_site/lightning/__init__.py" in r["error"]["message"]
        log = (Path(r["run_dir"]) / "train.log").read_text()
        assert "Traceback" in log and 'broken_site/lightning/__init__.py", line 1' in log
        assert log.count("Traceback (most recent call last)") == 1  # no earlier job's raise
    assert "sweep stopped" not in proc.stderr
    assert "3 of 3 jobs did not complete" in proc.stderr
    assert {row["status"] for row in read_summary(sweep)} == {"failed"}
    mended = launch("sweep.rerun_failed=true", env=cli_env())
    assert mended.returncode == 0, mended.stderr[-3000:]
    assert [r["status"] for r in results_under(sweep)] == ["completed"] * 3

    # A job stopped after its last checkpoint (as a signal leaves it), then a broken worker.
    first = sorted(sweep.rglob("results.json"))[0]
    stopped = json.loads(first.read_text()) | {"status": "interrupted"}
    first.write_text(json.dumps(stopped))
    checkpoint = first.parent / "checkpoints" / "last.ckpt"
    kept = {p: p.read_bytes() for p in (first, checkpoint)}
    again = launch(env=broken)
    assert again.returncode == 1, again.stderr[-3000:]
    assert {p: p.read_bytes() for p in kept} == kept  # record and checkpoint as they were
    assert "StackUnavailable" in again.stderr
    assert "kept for a relaunch" in (first.parent / "train.log").read_text()
    resumed = launch(env=cli_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["status"] for r in results_under(sweep)] == ["completed"] * 3
    assert f"resuming {first.parent} from {checkpoint}" in (first.parent / "train.log").read_text()


@pytest.mark.slow
def test_two_launches_into_one_directory_at_once_each_keep_their_launch(tmp_path):
    """Two different grids launched into one sweep directory at the same moment: sweep.json
    keeps both launches and counts all four jobs (the second launch's read-modify-write
    used to overwrite the first's launch), and the summary tells the jobs apart."""
    args = [*TINY, "logger=none", "beta=1,2", "hydra.sweep.dir=sweep"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(RUN_PY), "-m", *args, *extra],
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in ([], ["likelihood=laplace"])
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert len(record["launches"]) == 2 and record["n_jobs"] == 4 and len(record["jobs"]) == 4
    assert sum("likelihood=laplace" in la["overrides"] for la in record["launches"]) == 1
    with open(tmp_path / "sweep" / "summary.csv", newline="") as f:
        rows = [(r["beta"], r["likelihood"], r["status"]) for r in csv.DictReader(f)]
    assert sorted(rows) == [
        ("1", "gaussian", "completed"),
        ("1", "laplace", "completed"),
        ("2", "gaussian", "completed"),
        ("2", "laplace", "completed"),
    ], rows


def test_the_sweep_record_is_held_by_one_process_at_a_time(tmp_path):
    """sweep_record_lock, which every read-modify-write of sweep.json takes, waits for
    another process that holds it."""
    from vaesweep.run.context import sweep_record_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time\nfrom vaesweep.run.context import sweep_record_lock\n"
            "with sweep_record_lock(sys.argv[1]):\n"
            "    print('held', flush=True)\n    time.sleep(1.5)\n"
        ), str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    started = time.monotonic()
    with sweep_record_lock(tmp_path):
        waited = time.monotonic() - started
    holder.wait(timeout=30)
    assert waited > 0.5, waited  # it waited for the holder to let go


@pytest.mark.slow
def test_a_relaunch_that_writes_a_value_another_way_is_refused(tmp_path):
    """``beta=1,2`` then ``beta=1.0,3``: Hydra would name a new directory for beta=1.0 and
    train beta=1 again beside the first. Refused before any job (exit 2), naming the run
    and how it was written; so is a relaunch that adds or changes a setting that changes no
    result (trainer.enable_model_summary=false, logger=csv); the same values written as
    before continue the sweep (beta=1 skipped, beta=3 new). Another base value (seed) is a
    new job, not a repeat."""
    args = [*TINY, "logger=none", "hydra.sweep.dir=sweep"]
    first = run_cli(["-m", "beta=1,2", *args], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli(["-m", "beta=1.0,3", *args], tmp_path)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "sweep refused, no job was run: the job [beta=1.0] is the run beta=1," in again.stderr
    assert "(completed), written another way (beta=1 there)" in again.stderr
    assert len(results_under(tmp_path / "sweep")) == 2
    # A setting that changes no result, added or changed, names another directory too.
    for extra, how in (
        (["trainer.enable_model_summary=false"], "(a setting that changes no result added)"),
        (["logger=csv"], "(logger=none there)"),
    ):
        args_ = [a for a in args if not (extra[0].startswith("logger") and a == "logger=none")]
        added = run_cli(["-m", "beta=1,2", *args_, *extra], tmp_path)
        assert added.returncode == 2, added.stderr[-3000:]
        assert f"(completed), written another way {how}" in added.stderr, added.stderr[-3000:]
    assert len(results_under(tmp_path / "sweep")) == 2
    same = run_cli(["-m", "beta=1,3", *args], tmp_path)
    assert same.returncode == 0, same.stderr[-3000:]
    assert "skipping" in same.stdout + same.stderr
    other_seed = run_cli(["-m", "beta=1.0", "seed=7", *args], tmp_path)
    assert other_seed.returncode == 0, other_seed.stderr[-3000:]
    assert len(results_under(tmp_path / "sweep")) == 4


@pytest.mark.slow
def test_a_relaunch_with_the_int_of_a_fraction_key_is_a_new_job(tmp_path):
    """trainer.limit_train_batches=1.0 (the whole epoch) then =1 (one batch): Lightning
    reads them as two settings, so the second launch trains a job of its own, where it was
    refused as the first "written another way"."""
    tiny = [a for a in TINY if not a.startswith("trainer.limit_train_batches=")]
    args = [*tiny, "logger=none", "hydra.sweep.dir=sweep"]
    first = run_cli(["-m", "trainer.limit_train_batches=1.0", *args], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli(["-m", "trainer.limit_train_batches=1", *args], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = {repr(r["config"]["trainer"]["limit_train_batches"]): r
            for r in results_under(tmp_path / "sweep")}  # fmt: skip
    assert set(runs) == {"1.0", "1"} and all(r["status"] == "completed" for r in runs.values())
    assert runs["1"]["trained"]["steps"] == 1 < runs["1.0"]["trained"]["steps"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ""),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, ""),  # sbatch's own step: no srun prefix
        (
            {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"},
            "under torchrun, 2 processes: start the command the same way, e.g. torchrun "
            "--nproc-per-node=2",
        ),
        (
            {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "4"},
            "under srun, 4 tasks: start the command the same way, srun with the same options "
            "(e.g. --ntasks=4)",
        ),
    ],
)
def test_a_continue_command_inside_torchrun_or_srun_says_to_start_it_the_same_way(env, expected):
    """Their prefix is not part of the process's command line: the line after the command
    says so (the single run's and the sweep's continue lines both print it)."""
    from vaesweep.core.helpers import launcher_note

    note = launcher_note(env)
    assert (expected in note) if expected else note == ""


@pytest.mark.parametrize("typed", ["sweep.resume=~/x", "sweep.resume='~/x'", "hydra.sweep.dir=~/x"])
@pytest.mark.slow
def test_a_sweep_named_from_home_is_continued_there(tmp_path, typed):
    """``sweep.resume=~/x``: the shell leaves ``~`` alone in such a word (no variable name
    before the ``=``), and Hydra does not expand it either. Unquoted it was a parse error of
    Hydra's; quoted, resume_refusal expanded it (the check passed) while hydra.sweep.dir got
    the literal string: a new sweep in ./~/x that trained every job again. Now the sweep in
    $HOME/x is continued (its completed jobs skipped) and its record names that directory;
    nothing is made under ./~. The same for hydra.sweep.dir=~/x. HOME is a tmp directory."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {**cli_env(), "HOME": str(home)}
    args = ["-m", "beta=1,2", *TINY, "threads=1", "logger=none"]
    first = run_cli([*args, f"hydra.sweep.dir={home / 'x'}"], work, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    results = sorted((home / "x").glob("*/results.json"))
    assert len(results) == 2
    before = {p: p.stat().st_mtime_ns for p in results}

    again = run_cli([*args, typed], work, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (work / "~").exists(), sorted(map(str, (work / "~").rglob("*")))
    assert again.stderr.count("already completed") == 2, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in results} == before  # nothing trained again
    record = json.loads((home / "x" / SWEEP_FILE).read_text())
    assert len(record["launches"]) == 2 and record["sweep_dir"] == str((home / "x").resolve())
    assert str(home / "x") in record["launches"][-1]["command"]  # the path as it was used
    assert f"Sweep {home / 'x'} (2 jobs)" in again.stdout


def test_only_a_leading_tilde_of_a_directory_override_is_expanded(monkeypatch):
    """The keys that name a directory, bare, quoted or with +/++; a home with a space is
    quoted back (Hydra would read it otherwise); other keys, a ~ inside a value, an
    interpolation and an unknown user are left as typed."""
    from vaesweep.sweep.entry import home_expanded

    monkeypatch.setenv("HOME", "/h/a b")
    assert home_expanded(
        ["sweep.resume=~/x", "++hydra.sweep.dir='~'", "+hydra.run.dir=~/r", "label.note=~/x",
         "sweep.resume=a/~", "hydra.run.dir=${oc.env:HOME}/r", "sweep.resume=~no_such_user_/x"]
    ) == [
        "sweep.resume='/h/a b/x'", "++hydra.sweep.dir='/h/a b'", "+hydra.run.dir='/h/a b/r'",
        "label.note=~/x", "sweep.resume=a/~", "hydra.run.dir=${oc.env:HOME}/r",
        "sweep.resume=~no_such_user_/x",
    ]  # fmt: skip
    monkeypatch.setenv("HOME", "/home/u")
    assert home_expanded(["sweep.resume=~/x"]) == ["sweep.resume=/home/u/x"]


def test_a_job_under_hydra_job_chdir_finds_its_sweep(workdir):
    """hydra.job.chdir=true: Hydra enters the job's directory before it calls the task, and
    the sweep's relative directory (the default outputs/multirun/...) was resolved against
    it: the job read no sweep.json, so its W&B run had job_type "train", no swept tags and
    a group named after the wrong directory, and results.json a wrong sweep_dir. Now the
    sweep directory is the one Hydra started in (hydra.runtime.cwd)."""
    proc = run_cli(
        ["-m", "beta=1,2", *TINY, "threads=1", "logger=wandb", "logger.sweep_summary=false",
         "hydra.job.chdir=true"],
        workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (workdir / "outputs" / "multirun").glob("*/*")
    sweep = sweep.resolve()
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    for job in jobs:
        result = json.loads((job / "results.json").read_text())
        assert result["sweep_dir"] == str(sweep)
        beta = f"beta={result['config']['beta']:g}"
        (run,) = [read_offline_run(p) for p in (job / "wandb").glob("offline-run-*")]
        assert run["job_type"] == beta  # the swept values, read from sweep.json
        assert beta in run["tags"]
        assert run["group"] == f"{sweep.parent.name}_{sweep.name}"
    # The jobs' one-line outcomes count the sweep's jobs and name their swept values too.
    assert "job 1/2" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_a_relaunch_removes_the_temps_a_killed_launch_left_of_its_record(tmp_path):
    """A launch killed while it wrote sweep.json or summary.csv (SIGKILL, a lost node) left
    ``.sweep.json.<random>.tmp`` beside them, which nothing removed (the jobs clear only
    their own directories). The next launch's summary removes them, under the sweep
    record's lock that every writer of the two files holds; other files stay."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    left = [".sweep.json.0a1b2c3d4e5f.tmp", ".summary.csv.0a1b2c3d4e5f.tmp"]
    kept = ".notes.txt.0a1b2c3d4e5f.tmp"  # not one of the record's files: not ours to judge
    for name in [*left, kept]:
        (sweep / name).write_text("partial")
    proc = run_cli(["-m", *TINY, "logger=csv", "hydra.sweep.dir=sweep", "seed=0"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [name for name in left if (sweep / name).exists()]
    assert (sweep / kept).exists() and (sweep / "summary.csv").is_file()
