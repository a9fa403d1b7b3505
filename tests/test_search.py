"""Searches for real (``hydra/sweeper=optuna``): the CLI in subprocesses, resume after SIGKILL
of the whole sweep, failed trials, bad input refused before any trial, collect and figures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vaesweep.sweep.search import BEST_FILE, JOURNAL_FILE, SearchError, quote_sweeper_params
from vaesweep.sweep.search.metrics import objective_direction
from vaesweep.sweep.search.plan import check_pruner
from vaesweep.sweep.search.space import parse_space
from vaesweep.sweep.search.storage import open_storage

from conftest import RUN_PY, TINY, cli_env, run_cli
from tiny_sweeps import vaesweep

SEARCH = ["-m", "hydra/sweeper=optuna", *TINY, "logger=none", "threads=1", "hydra.sweep.dir=sweep"]
BETA = "hydra.sweeper.params.beta=tag(log, interval(0.1, 10))"
LR = "hydra.sweeper.params.optimizer.lr=tag(log, interval(1e-4, 1e-2))"


def trial_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.glob("trial_*") if p.is_dir())


def trials(sweep: Path, name: str = "search") -> list:
    import optuna

    storage = open_storage(str(sweep / JOURNAL_FILE))
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


# -- the space and the options, in process ----------------------------------------------------


def test_space_syntax():
    space = parse_space(
        {
            "beta": "tag(log, interval(0.1, 10))",
            "model.latent_dim": "int(interval(2, 32))",
            "optimizer.lr": "interval(1e-4, 1e-3)",
            "data.batch_size": "choice(32, 64)",
            "model.hidden": "range(100, 500, 100)",
            "likelihood": "gaussian,laplace",
            "trainer.max_epochs": 3,
        },
        ["likelihood=laplace", "seed=0,1"],  # the command line wins; a,b is a grid axis
    )
    s = space.searched
    assert s["beta"].describe() == "float[0.1, 10.0] log"
    assert s["model.latent_dim"].describe() == "int[2, 32]"
    assert s["optimizer.lr"].describe() == "float[0.0001, 0.001]"
    assert s["data.batch_size"].describe() == "choice(32, 64)"
    assert s["model.hidden"].describe() == "int[100, 400] step 100"  # stop excluded
    assert space.grid == {"seed": ["0", "1"]}
    assert space.fixed == {
        "trainer.max_epochs": "trainer.max_epochs=3",
        "likelihood": "likelihood=laplace",
    }
    assert space.points() == [["seed=0"], ["seed=1"]]
    assert space.trial_overrides(["seed=1"], {"beta": 0.5}) == [
        "trainer.max_epochs=3",
        "likelihood=laplace",
        "seed=1",
        "beta=0.5",
    ]


def test_command_line_params_are_quoted_for_hydra():
    assert quote_sweeper_params([BETA, "hydra.sweeper.params.seed=1", "beta=1"]) == [
        "++hydra.sweeper.params.beta='tag(log, interval(0.1, 10))'",
        "++hydra.sweeper.params.seed=1",
        "beta=1",
    ]


@pytest.mark.parametrize(
    ("objective", "direction", "expected"),
    [
        ("val/elbo", None, "maximize"),
        ("val/loss", None, "minimize"),
        ("val/kl", "minimize", "minimize"),
        ("test/nll", None, "minimize"),  # with the opt-in below
    ],
)
def test_direction_follows_the_metric(objective, direction, expected):
    assert objective_direction(objective, direction, allow_test=True) == expected


@pytest.mark.parametrize(
    ("objective", "direction", "allow_test", "message"),
    [
        ("val/elbow", None, False, "no result holds this metric"),
        ("test/nll", None, False, "allow_test_objective=true"),
        ("val/elbo", "minimize", False, "contradicts"),
        ("val/kl", None, False, "no natural direction"),
    ],
)
def test_objective_refusals(objective, direction, allow_test, message):
    with pytest.raises(SearchError, match=message):
        objective_direction(objective, direction, allow_test)


def test_only_a_pruner_that_never_prunes_is_accepted():
    check_pruner(None)
    check_pruner(OmegaConf.create({"_target_": "optuna.pruners.NopPruner"}))
    median = OmegaConf.create({"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2})
    with pytest.raises(SearchError, match="run to completion"):
        check_pruner(median)


# -- bad input, refused by the real CLI before any trial ----------------------------------------


def _unwritable(workdir: Path) -> str:
    (workdir / "a_file").write_text("")
    return f"hydra.sweeper.storage={workdir / 'a_file' / 'journal.log'}"


BAD = {
    "unknown distribution": (
        ["hydra.sweeper.params.beta=loguniform(0.1, 10)"],
        ["hydra.sweeper.params.beta", "interval(a, b)"],
    ),
    "inverted range": (
        ["hydra.sweeper.params.beta=interval(10, 0.1)"],
        ["hydra.sweeper.params.beta", "empty or inverted"],
    ),
    "empty range": (
        [BETA, "hydra.sweeper.params.model.latent_dim=range(8, 2)"],
        ["hydra.sweeper.params.model.latent_dim", "empty or inverted"],
    ),
    "unknown metric": (
        [BETA, "hydra.sweeper.objective=val/elbow"],
        ["hydra.sweeper.objective", "val/elbo"],
    ),
    "test metric": ([BETA, "hydra.sweeper.objective=test/nll"], ["allow_test_objective"]),
    "bits/dim of binary data": (
        [
            BETA,
            "likelihood=bernoulli",
            "hydra.sweeper.objective=test/bpd",
            "hydra.sweeper.allow_test_objective=true",
        ],
        ["hydra.sweeper.objective=test/bpd", "dequantised"],
    ),
    "contradicting direction": (
        [BETA, "hydra.sweeper.direction=minimize"],
        ["hydra.sweeper.direction", "maximize"],
    ),
    "no trials": ([BETA, "hydra.sweeper.n_trials=0"], ["hydra.sweeper.n_trials=0", "≥ 1"]),
    "unread key": (
        ["hydra.sweeper.params.likelihood.momentum=interval(0.5, 0.9)"],
        ["likelihood.momentum", "no effect"],
    ),
    "unwritable storage": ([BETA, _unwritable], ["hydra.sweeper.storage", "cannot write"]),
    "a pruner that would never prune": (
        [BETA, "hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner}"],
        ["hydra.sweeper.pruner=optuna.pruners.MedianPruner", "run to completion", "null"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_refused_before_any_trial(workdir, case):
    args, expected = BAD[case]
    args = [a(workdir) if callable(a) else a for a in args]
    proc = run_cli([*SEARCH, *args], workdir, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "search refused, no trial was run" in proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr[-2000:]
    assert not list(workdir.rglob("trial_*")) and not list(workdir.rglob("results.json"))


# -- runs ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_search_resumes_to_exactly_n_trials(workdir):
    args = [*SEARCH, "hydra.sweeper.n_trials=4", BETA]
    proc = subprocess.Popen(
        [sys.executable, str(RUN_PY), *quote_sweeper_params(args)],
        cwd=workdir,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    sweep = workdir / "sweep"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            done = [
                d
                for d in trial_dirs(sweep)
                if (d / "results.json").exists()
                and json.loads((d / "results.json").read_text())["status"] == "completed"
            ]
            if len(done) >= 2:
                break
            assert proc.poll() is None, "the search ended before it was killed"
            time.sleep(0.1)
        else:
            pytest.fail("no two completed trials within 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {d.name: (d / "results.json").read_bytes() for d in done}
    states = {t.number: t.state.name for t in trials(sweep)}
    assert len(states) < 4 or "RUNNING" in states.values()  # killed mid-search

    proc = run_cli(args, workdir, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = trials(sweep)
    assert [t.number for t in final] == [0, 1, 2, 3]  # exactly n_trials, none asked twice
    assert {t.state.name for t in final} == {"COMPLETE"}
    # The relaunch proposes new points, not its first launch's again.
    assert len({tuple(sorted(t.params.items())) for t in final}) == 4
    assert [d.name for d in trial_dirs(sweep)] == [f"trial_{i:04d}" for i in range(4)]
    for name, content in before.items():  # completed trials were not run again
        assert (sweep / name / "results.json").read_bytes() == content
        assert f"skipping {name}" not in proc.stderr  # not even launched
    for t in final:
        r = json.loads((sweep / f"trial_{t.number:04d}" / "results.json").read_text())
        assert r["metrics"]["val/elbo"] == pytest.approx(t.value)
        assert r["config"]["beta"] == pytest.approx(t.params["beta"])
    best = json.loads((sweep / BEST_FILE).read_text())
    assert best[0]["best"]["value"] == max(t.value for t in final)
    assert "best val/elbo" in proc.stdout
    assert (
        OmegaConf.load(sweep / "optimization_results.yaml").best_value == best[0]["best"]["value"]
    )

    # The same command once more: nothing left to do, nothing re-run.
    again = run_cli(args, workdir, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(trials(sweep)) == 4
    # A changed search space is refused, naming what changed.
    changed = run_cli([*SEARCH, "hydra.sweeper.n_trials=4", BETA.replace("10))", "20))")], workdir)
    assert changed.returncode == 2
    assert "another search" in changed.stderr and "float[0.1, 20.0] log" in changed.stderr
    assert len(trials(sweep)) == 4


@pytest.fixture(scope="module")
def failing_search(tmp_path_factory) -> Path:
    """4 trials in batches of 2 (local_parallel): n_samples=0 fails validation, and the
    seeded random sampler proposes it for trials 1 and 3."""
    root = tmp_path_factory.mktemp("search")
    proc = run_cli(
        [
            *SEARCH,
            "hydra/launcher=local_parallel",
            "hydra.launcher.n_jobs=2",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler",
            BETA,
            LR,
            "hydra.sweeper.params.n_samples=choice(1, 0)",
        ],
        root,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 completed, 2 failed" in proc.stdout
    return root / "sweep"


@pytest.mark.slow
def test_failed_trials_do_not_stop_the_search(failing_search):
    final = trials(failing_search)
    assert [t.state.name for t in final] == ["COMPLETE", "FAIL", "COMPLETE", "FAIL"]
    for t in final:
        r = json.loads((failing_search / f"trial_{t.number:04d}" / "results.json").read_text())
        assert r["status"] == ("completed" if t.state.name == "COMPLETE" else "failed")
    meta = json.loads((failing_search / "sweep.json").read_text())
    assert meta["search"]["n_jobs"] == 2 and "joblib" in meta["launcher"].lower()
    assert set(meta["grid"]) == {"beta", "optimizer.lr", "n_samples"}


@pytest.mark.slow
def test_collect_and_figures_on_a_search(failing_search, tmp_path):
    out = tmp_path / "runs.csv"
    proc = vaesweep(["collect", str(failing_search), "-o", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    import pandas as pd

    df = pd.read_csv(out)
    assert len(df) == 4
    for column in ("beta", "optimizer.lr", "n_samples"):  # the trial params are columns
        assert column in df.columns
    assert sorted(df["status"]) == ["completed", "completed", "failed", "failed"]
    figures = tmp_path / "figures"
    proc = vaesweep(["figures", str(failing_search), "--out", str(figures)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("optimization_history", "param_importances"):
        assert (figures / f"{name}.pdf").exists() and (figures / f"{name}.png").exists()
