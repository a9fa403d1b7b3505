"""Searches for real (``hydra/sweeper=optuna``): the CLI in subprocesses, resume after SIGKILL
of the whole sweep, failed trials, bad input refused before any trial, collect and figures."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vaesweep.run.config import CONF_DIR
from vaesweep.sweep.launching import SweepLauncher
from vaesweep.sweep.search import BEST_FILE, JOURNAL_FILE, SearchError, quote_sweeper_params
from vaesweep.sweep.search.checks import check_objective_comparable
from vaesweep.sweep.search.metrics import objective_direction
from vaesweep.sweep.search.plan import (
    HYDRA_OPTUNA_SWEEPER,
    SEARCH_SWEEPER,
    Plan,
    adopt_sweeper,
    check_pruner,
    check_sampler,
    entry_command,
    plan_search,
)
from vaesweep.sweep.search.space import parse_space
from vaesweep.sweep.search.storage import open_storage, quiet_optuna
from vaesweep.sweep.search.trials import _next_batch

from conftest import REPO, RUN_PY, TINY, cli_env, run_cli
from pause import pause_env
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


@pytest.mark.parametrize("value", ["1", "true", "null", "1e-3", "a,b", "x=y", "it's", "a b"])
def test_a_trials_string_values_read_back_as_themselves(value):
    """A string choice is written into the trial's overrides (and best.json's command) so
    that Hydra reads back that string: choice('1','2') is not the int 1, 'true' not a
    boolean, 'a,b' not a grid of two jobs, 'x=y' not a parse error. Plain names stay bare."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    written = value.replace("'", "\\'")
    space = parse_space({}, [f"+label.x=choice('{written}', gaussian, 0.5, 3, true)"])
    choices = space.searched["label.x"].choices
    assert choices == (value, "gaussian", 0.5, 3, True)
    plan = Plan(space, "val/elbo", "maximize", 4, 1, "", "search", 1.0, Path("s"), ())
    for choice in choices:
        (override,) = space.trial_overrides([], {"label.x": choice})
        parsed = parser.parse_override(override)
        assert not parsed.is_sweep_override()
        assert (type(parsed.value()), parsed.value()) == (type(choice), choice)
        assert plan.reproduce([], {"label.x": choice})[3] == override
    assert space.trial_overrides([], {"label.x": "gaussian"}) == ["+label.x=gaussian"]


def test_a_choice_of_lists_or_dicts_trains_with_lists_or_dicts(tmp_path):
    """choice([128],[256,256]) (accepted by Hydra's Optuna sweeper): each option became the
    string '[128]', written quoted (model.hidden='[128]'), and the search was refused as if
    a grid point were wrong. Now a list or dict option is written bare, as Hydra's sweeper
    writes it, and each trial composes the list; a string with the same text as a list
    option is refused (Optuna would hold them as one)."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vaesweep.sweep.search.checks import check_configs

    space = parse_space(
        {}, ["model.hidden=choice([128],[256,256])", "+label.x=choice({a:1},'[1]')"]
    )
    assert space.trial_overrides([], {"model.hidden": "[128]", "label.x": "[1]"}) == [
        "model.hidden=[128]",
        "+label.x='[1]'",  # a string stays a string
    ]
    (dict_override,) = space.trial_overrides([], {"label.x": "{a:1}"})
    assert OverridesParser.create().parse_override(dict_override).value() == {"a": 1}
    with pytest.raises(SearchError, match="the string '\\[1\\]' and the list or dict \\[1\\]"):
        parse_space({}, ["label.x=choice([1],'[1]')"])

    arguments = [
        *TINY,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.params.model.hidden=choice([128],[256,256])",
    ]
    with _composing():
        config = _launching_config(
            [*quote_sweeper_params(arguments), f"hydra.sweep.dir={tmp_path}"]
        )
        plan = plan_search(config, TINY)
        check_configs(config, plan)  # was refused: "model.hidden='[128]' is invalid"
        for value, hidden in (("[128]", [128]), ("[256,256]", [256, 256])):
            job = plan.space.trial_overrides([], {"model.hidden": value})
            assert list(compose("train", overrides=job).model.hidden) == hidden
    assert plan.reproduce([], {"model.hidden": "[128]"})[-2] == "model.hidden=[128]"


@pytest.mark.parametrize("directory", ["trial_0003", "x=a\\b,trial_0003", "it's\\,trial_0000"])
def test_a_trials_directory_reads_back_as_itself(directory):
    """The trial's directory is given to Hydra as hydra.sweep.subdir, quoted: Hydra
    unescapes a backslash only before a quote, so one elsewhere is written once (written
    twice, the job went to a directory the search never looked in)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vaesweep.core.helpers import quoted_value

    parsed = OverridesParser.create().parse_override(
        f"hydra.sweep.subdir={quoted_value(directory)}"
    )
    assert parsed.value() == directory


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


def test_command_line_sampler_arguments_are_added_or_replaced():
    assert quote_sweeper_params(
        ["hydra.sweeper.sampler.n_startup_trials=1", "+hydra.sweeper.sampler.seed=3"]
    ) == ["++hydra.sweeper.sampler.n_startup_trials=1", "+hydra.sweeper.sampler.seed=3"]


def test_every_sampler_argument_is_accepted_and_a_wrong_one_named():
    sweeper = OmegaConf.create(
        {
            "sampler": {
                "_target_": "optuna.samplers.TPESampler",
                "seed": 1,
                "n_startup_trials": 3,
                "multivariate": True,
            }
        }
    )
    check_sampler(sweeper)
    sweeper.sampler.n_startup_trails = 3
    with pytest.raises(SearchError, match="unexpected keyword argument 'n_startup_trails'"):
        check_sampler(sweeper)


@pytest.mark.parametrize(
    ("sampler", "named"),
    [
        (
            {"_target_": "optuna.samplers.GridSampler", "_partial_": True},
            "_target_=optuna.samplers.GridSampler with _partial_=True builds a _DeferredTarget",
        ),
        ({"_target_": "collections.OrderedDict"}, "_target_=collections.OrderedDict builds a"),
    ],
)
def test_a_sampler_config_that_builds_no_sampler_is_refused(sampler, named):
    """``_partial_: true`` (Hydra's own GridSamplerConfig sets it) or a class that is not a
    sampler built without an error and crashed the search after its first trial had been
    asked (AttributeError: no before_trial): refused, naming _target_ and _partial_."""
    with pytest.raises(SearchError, match="not an Optuna sampler") as refused:
        check_sampler(OmegaConf.create({"sampler": sampler}))
    assert f"hydra.sweeper.sampler: {named}" in str(refused.value)
    assert "allowed: _target_ a subclass of optuna.samplers.BaseSampler" in str(refused.value)


def _multirun_config(sweeper: dict, top: dict | None = None, choice: str = "optuna"):
    """A multirun config as the sweep callback sees it (what plan_search reads)."""
    return OmegaConf.create(
        {
            **(top or {}),
            "hydra": {
                "sweeper": {"n_trials": 2, "params": {"beta": "interval(0.1, 10)"}, **sweeper},
                "sweep": {"dir": "sweep"},
                "runtime": {"choices": {"hydra/sweeper": choice}, "config_sources": []},
                "job": {"config_name": "train", "config": {"override_dirname": {}}},
            },
        }
    )


def test_hydra_optuna_sweeper_target_is_this_search_or_refused_in_one_line():
    config = _multirun_config({"_target_": HYDRA_OPTUNA_SWEEPER})
    adopt_sweeper(config)
    assert config.hydra.sweeper._target_ == SEARCH_SWEEPER
    basic = _multirun_config({"_target_": HYDRA_OPTUNA_SWEEPER}, choice="basic")
    with pytest.raises(SearchError, match="override /hydra/sweeper: optuna") as refused:
        adopt_sweeper(basic)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("sweeper", "top", "objective", "direction"),
    [
        ({}, {}, "val/elbo", "maximize"),
        ({}, {"optimized_metric": "val/loss"}, "val/loss", "minimize"),
        ({"objective": "val/rec_nll"}, {}, "val/rec_nll", "minimize"),
        ({"objective": "val/loss"}, {"optimized_metric": "val/loss"}, "val/loss", "minimize"),
    ],
)
def test_optimized_metric_is_the_objective(sweeper, top, objective, direction):
    plan = plan_search(_multirun_config(sweeper, top), ["optimized_metric=val/loss"])
    assert (plan.objective, plan.direction) == (objective, direction)
    assert "optimized_metric" not in plan.space.fixed  # not a key of the trials


@pytest.mark.parametrize(
    ("sweeper", "top", "message"),
    [
        ({}, {"optimized_metric": "test/nll"}, "optimized_metric=test/nll: choosing"),
        ({}, {"optimized_metric": "val/acc_best"}, "optimized_metric=val/acc_best: no result"),
        (
            {"direction": "maximize"},
            {"optimized_metric": "val/loss"},
            "contradicts optimized_metric",
        ),
        ({"objective": "val/kl"}, {"optimized_metric": "val/loss"}, "two objectives"),
    ],
)
def test_optimized_metric_refusals(sweeper, top, message):
    with pytest.raises(SearchError, match=message):
        plan_search(_multirun_config(sweeper, top), [])


def test_sweeper_keys_it_does_not_read_are_refused_saying_what_to_write(tmp_path):
    """Hydra's Optuna sweeper's search-space keys (a template file's ``custom_search_space``,
    the deprecated ``search_space``) are refused naming the key, its value and what to
    write (a file that set them failed on Hydra's schema; ``+hydra.sweeper.KEY`` was
    silently ignored), and so is any other key the sweeper does not read, with the nearest
    option; null is allowed (a file that keeps Hydra's default)."""
    from hydra import compose, initialize_config_dir

    preset = tmp_path / "hparams_search" / "lht_own.yaml"
    preset.parent.mkdir()
    preset.write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: optuna\n"
        "hydra:\n  sweeper:\n    custom_search_space: my_project.spaces.configure\n"
        "    params:\n      optimizer.lr: interval(0.0001, 0.1)\n"
    )
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = [f"hydra.searchpath=[file://{tmp_path}]", "hparams_search=lht_own"]
        config = compose("train", overrides, return_hydra_config=True)
    with pytest.raises(SearchError) as refused:
        plan_search(config, [])
    message = str(refused.value)
    assert message.startswith(
        "hydra.sweeper.custom_search_space=my_project.spaces.configure: a Python function"
    ), message
    assert "allowed: null, with each searched key in hydra.sweeper.params" in message
    assert "interval(a, b)" in message
    with pytest.raises(SearchError, match=r"^hydra.sweeper.search_space=\{'beta': 'interval"):
        plan_search(_multirun_config({"search_space": {"beta": "interval(0.1, 1)"}}), [])
    with pytest.raises(SearchError) as refused:
        plan_search(_multirun_config({"n_trails": 3}), [])
    assert str(refused.value).startswith(
        "hydra.sweeper.n_trails: not an option of the sweeper (did you mean n_trials?); "
        "allowed: allow_test_objective, direction, max_failure_rate, n_jobs, n_trials, "
    ), refused.value
    plan = plan_search(_multirun_config({"custom_search_space": None, "search_space": None}), [])
    assert set(plan.space.searched) == {"beta"}


def test_best_command_runs_one_job_with_the_config_sources_of_the_search():
    config = _multirun_config({})
    config.hydra.runtime.config_sources = [
        {"path": str(CONF_DIR), "schema": "file", "provider": "main"},
        {"path": "/abs/dir", "schema": "file", "provider": "command-line"},
    ]
    plan = plan_search(config, ["hparams_search=x", "sweep.resume=sweep", "seed=1"])
    assert plan.reproduce([], {"beta": 0.5}) == [
        "python",
        "-m",
        "vaesweep",
        "--config-dir",
        "/abs/dir",
        "hparams_search=x",
        "seed=1",
        "beta=0.5",
        "hydra.mode=RUN",
    ]


@pytest.mark.parametrize(
    ("launcher_jobs", "expected"),
    [(-1, "cores"), (-2, "cores - 1"), (3, 3), (None, 1), ("joblib", "cores")],
)
def test_the_batch_is_the_launchers_jobs_at_once_when_unset(launcher_jobs, expected):
    """hydra.sweeper.n_jobs unset: a batch holds as many trials as the launcher runs at
    once, its n_jobs counted as the launcher counts it (-1: every usable core, the default of
    Hydra's joblib launcher), not refused under hydra.sweeper.n_jobs, a key never set."""
    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf

    from vaesweep.core.launchers import usable_cores

    if launcher_jobs == "joblib":
        launcher_jobs = JobLibLauncherConf().n_jobs
    cores = usable_cores()
    if expected == "cores - 1" and cores < 2:
        pytest.skip("one usable core: n_jobs=-2 leaves none")
    expected = {"cores": cores, "cores - 1": cores - 1}.get(expected, expected)
    config = _multirun_config({})
    config.hydra.launcher = {"n_jobs": launcher_jobs}
    assert plan_search(config, []).n_jobs == expected
    config.hydra.sweeper.n_jobs = -1  # set by the user: refused, naming it
    with pytest.raises(SearchError, match=r"hydra.sweeper.n_jobs=-1: allowed"):
        plan_search(config, [])


def test_every_study_gets_a_sampler_of_its_own(tmp_path):
    """Optuna's TPE (the default sampler) refuses to serve a second study; each study of a
    search with grid axes gets its own instance, seeded as if its grid point were searched
    alone (so the studies start from the same proposals), and a continued study one seeded
    from (seed, study, trials so far)."""
    import optuna

    from vaesweep.sweep.search.driver import study_samplers

    def objective(trial):
        return trial.suggest_float("x", 0.0, 1.0) ** 2

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(str(tmp_path / "journal.log"))  # in memory, every study has id 0
    names = iter(f"study{i}" for i in range(9))

    def study(sampler):
        return optuna.create_study(sampler=sampler, storage=storage, study_name=next(names))

    shared = optuna.samplers.TPESampler(seed=0)
    study(shared).optimize(objective, n_trials=2)
    with pytest.raises(ValueError, match="multiple studies"):  # why one instance is not enough
        study(shared).optimize(objective, n_trials=2)

    config = OmegaConf.create(
        {
            "seed": 3,
            "hydra": {
                "sweeper": {
                    "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": "${seed}"}
                }
            },
        }
    )
    first = optuna.samplers.TPESampler(seed=3)  # the sweeper's instance
    plan = _plan(tmp_path / "sweep")
    make = study_samplers(config, first, plan)
    made = [make("search[a]", 0), make("search[b]", 0), make("search[b]", 2)]
    assert made[0] is first and len({id(s) for s in made}) == 3
    xs = []
    for sampler in made[:2]:
        grid_point = study(sampler)
        grid_point.optimize(objective, n_trials=3)
        xs.append([t.params["x"] for t in grid_point.trials])
    alone = study(optuna.samplers.TPESampler(seed=3))
    alone.optimize(objective, n_trials=3)
    assert xs[0] == xs[1] == [t.params["x"] for t in alone.trials]
    continued = study(made[2])
    continued.optimize(objective, n_trials=1)
    assert continued.trials[0].params["x"] != xs[1][0]  # not the first launch's proposals again

    unseeded = OmegaConf.create(
        {"hydra": {"sweeper": {"sampler": {"_target_": "optuna.samplers.RandomSampler"}}}}
    )
    make = study_samplers(unseeded, first, plan)
    assert make("a", 0) is first and make("b", 0) is not first and make("b", 1) is not first
    no_sampler = OmegaConf.create({"hydra": {"sweeper": {"sampler": None}}})
    assert study_samplers(no_sampler, None, plan) is None


def _launching_config(overrides: list[str]):
    """The config a multirun of the search launches with, composed by Hydra: its task
    overrides that are not grid axes applied (Hydra applies a grid axis per job)."""
    from hydra import compose

    return compose(
        "train", overrides=["hydra/sweeper=optuna", *overrides], return_hydra_config=True
    )


def test_each_grid_point_of_seed_proposes_what_a_search_of_that_seed_alone_does(tmp_path):
    """``seed`` as a grid axis: every study's sampler was seeded with the launching config's
    seed (the default 0, the grid's values being applied per job), so seed=1,2 proposed the
    same trials at both points. Each study now proposes what a search of its seed alone
    proposes: a TPE sampler of that seed (real Optuna), the search run by the sweeper's own
    function with the sampler Hydra builds from the launching config."""
    import optuna
    from hydra.utils import instantiate

    from vaesweep.sweep.search.driver import run_search

    beta = "beta=interval(0.1, 10)"

    def search(name: str, arguments: list[str], fixed: list[str]) -> dict[str, list]:
        sweep = tmp_path / name
        with _composing():
            config = _launching_config(
                [*fixed, f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=2"]
            )
            sampler = instantiate(config.hydra.sweeper.sampler)  # as Hydra builds the sweeper's
            run_search(config, _RecordingLauncher(sweep), arguments, sampler, None)
        storage = open_storage(str(sweep / JOURNAL_FILE))
        return {
            n: [t.params["beta"] for t in optuna.load_study(study_name=n, storage=storage).trials]
            for n in optuna.get_all_study_names(storage)
        }

    def tpe(seed: int) -> list[float]:  # what a TPE sampler of this seed proposes first
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        dist = optuna.distributions.FloatDistribution(0.1, 10)
        return [study.ask({"beta": dist}).params["beta"] for _ in range(2)]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = search("grid", ["seed=1,2", beta], [])
    alone = {k: search(f"seed{k}", [f"seed={k}", beta], [f"seed={k}"])["search"] for k in (1, 2)}
    assert alone[1] == tpe(1) and alone[2] == tpe(2) and alone[1] != alone[2]
    assert grid == {"search[seed=1]": alone[1], "search[seed=2]": alone[2]}
    # A relaunch to 3 trials: the continued study's sampler is seeded from its own seed (2).
    with _composing():
        config = _launching_config(
            [f"hydra.sweep.dir={tmp_path / 'grid'}", "hydra.sweeper.n_trials=3"]
        )
        sampler = instantiate(config.hydra.sweeper.sampler)
        run_search(config, _RecordingLauncher(tmp_path / "grid"), ["seed=1,2", beta], sampler, None)
    reseeded = hashlib.sha256(b"2:search[seed=2]:2").digest()
    continued = trials(tmp_path / "grid", "search[seed=2]")
    assert continued[2].params["beta"] == tpe(int.from_bytes(reseeded[:4], "big"))[0]


def test_two_launches_at_once_propose_different_trials_and_one_launch_its_own(tmp_path):
    """Two launches of one search opened at the same count of trials (started together, or
    relaunched together) got samplers with one random stream, and their proposals came in
    identical pairs: half the budget trained twice. Each trial that does not follow the one
    its launch's sampler proposed last gets a sampler seeded from (seed, study, trial
    number), unique in the study; a single launch proposes what it always did (a TPE
    sampler of its seed, and on a relaunch one seeded from (seed, study, trials so far)).
    Through the real study_samplers → open_study → _next_batch."""
    import optuna

    from vaesweep.sweep.search.driver import study_samplers
    from vaesweep.sweep.search.studies import open_study

    quiet_optuna()
    config = OmegaConf.create(
        {
            "seed": 0,
            "hydra": {
                "sweeper": {
                    "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": "${seed}"}
                }
            },
        }
    )
    dist = {"beta": optuna.distributions.FloatDistribution(0.1, 10, log=True)}

    def launch(plan: Plan):  # what run_search does: the sweeper's instance, then open_study
        samplers = study_samplers(config, optuna.samplers.TPESampler(seed=0), plan)
        return open_study(open_storage(plan.storage), plan, [], samplers, None)

    def run(plan: Plan, launches: list, rounds: int) -> list[tuple[int, float]]:
        proposed = []
        for _ in range(rounds):
            for study in launches:
                for number, params in _next_batch(study, plan, [], dist, set()):
                    proposed.append((number, params["beta"]))
                    study.tell(number, -float(number))
        return proposed

    space = parse_space({"beta": "tag(log, interval(0.1, 10))"}, [])
    plan = Plan(space, "val/elbo", "maximize", 6, 1, str(tmp_path / "two" / JOURNAL_FILE),
                "search", 1.0, tmp_path / "two", ())  # fmt: skip
    Path(plan.storage).parent.mkdir()
    together = run(plan, [launch(plan), launch(plan)], 3)
    assert [n for n, _ in together] == list(range(6))
    assert len({beta for _, beta in together}) == 6  # were 3 pairs
    plan.n_trials = 10  # two relaunches together, at 6 trials so far
    again = run(plan, [launch(plan), launch(plan)], 2)
    assert [n for n, _ in again] == [6, 7, 8, 9]
    assert len({beta for _, beta in together + again}) == 10

    alone = Plan(space, "val/elbo", "maximize", 4, 1, str(tmp_path / "one" / JOURNAL_FILE),
                 "search", 1.0, tmp_path / "one", ())  # fmt: skip
    Path(alone.storage).parent.mkdir()
    one = run(alone, [launch(alone)], 4)
    tpe = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    expected = []
    for _ in range(4):
        trial = tpe.ask(dist)
        expected.append(trial.params["beta"])
        tpe.tell(trial, -float(trial.number))
    assert [beta for _, beta in one] == expected  # a single launch: TPE of its seed, unchanged


def test_a_search_space_with_values_a_run_refuses_is_refused_before_any_trial(workdir):
    proc = run_cli([*SEARCH, "hydra.sweeper.params.beta=interval(-1, 1)"], workdir, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        "[vaesweep] search refused, no trial was run: hydra.sweeper.params.beta=float[-1.0, 1.0] "
        "includes beta=-1.0, which a run refuses: beta=-1.0 is invalid: allowed a finite "
        "number ≥ 0"
    ) in proc.stderr
    assert not list(workdir.rglob("results.json"))
    # A grid point whose every trial a run refuses, whatever the searched value (the fixed
    # dequantised data under bernoulli): refused before any trial, also when it is not the
    # first point (its trials used to fail one by one after the first study had run).
    proc = run_cli([*SEARCH, BETA, "likelihood=gaussian,bernoulli", "data.preprocess=dequantize"],
                   workdir, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        "search refused, no trial was run: the trials at the grid point likelihood=bernoulli "
        "would be refused at every searched value tried (beta=0.1, beta=10.0): "
    ) in proc.stderr
    assert "data.preprocess='dequantize' with likelihood=bernoulli is invalid" in proc.stderr
    assert "(no bits/dim is reported then). Drop that grid point or correct the value" in (
        proc.stderr
    )
    assert not list(workdir.rglob("results.json"))


@pytest.mark.parametrize(
    ("params", "grid", "message"),
    [
        (  # one key refused at both bounds: the key, not a grid point, with the fix
            {"data.batch_size": "interval(16, 256)"},
            [],
            "hydra.sweeper.params.data.batch_size=float[16.0, 256.0] includes "
            "data.batch_size=16.0, which a run refuses: data.batch_size=16.0 is invalid: "
            "allowed an integer > 0. Allowed: a space whose every value a run accepts "
            "(data.batch_size takes integers: "
            "hydra.sweeper.params.data.batch_size=int(interval(16, 256)))",
        ),
        (
            {"data.batch_size": "tag(log, interval(16, 256))"},
            ["likelihood=gaussian,laplace"],
            "includes data.batch_size=16.0 at the grid point likelihood=gaussian, which a run "
            "refuses",
        ),
        (  # a grid point refused whatever the searched values: the point
            {"beta": "interval(0.1, 10)"},
            ["likelihood=gaussian,bernoulli", "data.preprocess=dequantize"],
            "the trials at the grid point likelihood=bernoulli would be refused at every "
            "searched value tried (beta=0.1, beta=10.0): ",
        ),
    ],
)
def test_a_searched_key_refused_at_both_bounds_is_named_as_the_key(params, grid, message):
    """data.batch_size=interval(16, 256) (floats, refused at both bounds) was reported as
    'refused at every searched value tried ... Drop that grid point', with no grid point:
    now the key is named, with the integer range that fixes it."""
    from vaesweep.sweep.search.checks import check_space_values

    plan = Plan(parse_space(params, ["data=digits", *grid]), "val/elbo", "maximize", 2, 1, "",
                "search", 1.0, Path("."), ())  # fmt: skip
    example = {k: p.example() for k, p in plan.space.searched.items()}
    with _composing(), pytest.raises(SearchError) as refused:
        check_space_values(_multirun_config({}), plan, example)
    assert message in str(refused.value)
    if "int(interval" in message:
        assert "grid point" not in str(refused.value)


def _check_configs(tmp_path: Path, arguments: list[str]) -> None:
    """check_configs of a search launched with ``arguments`` (real Hydra composition)."""
    from vaesweep.sweep.search.checks import check_configs

    with _composing():
        quoted = quote_sweeper_params(arguments)
        hydra = [a for a in quoted if a.lstrip("+").startswith("hydra.")]
        config = _launching_config([*hydra, f"hydra.sweep.dir={tmp_path}"])
        plan = plan_search(config, [a for a in quoted if a not in hydra])
        check_configs(config, plan)


@pytest.mark.parametrize("order", ["capacity,constant", "constant,capacity"])
@pytest.mark.parametrize(
    ("schedule", "refused"),
    [
        (  # capacity reads no β: its trials would be copies of one run
            "hydra.sweeper.params.beta_schedule=choice({order})",
            "hydra.sweeper.params.beta=float[0.1, 10.0] log is read only at some values of "
            "the search space: the trials at beta_schedule=capacity do not read it (no selected "
            "component reads `beta`",
        ),
        (  # a grid axis: the study of capacity searches a key none of its trials reads
            "beta_schedule={order}",
            "hydra.sweeper.params.beta=float[0.1, 10.0] log at the grid point "
            "beta_schedule=capacity (study 'search[beta_schedule=capacity]') is read by no "
            "trial of this study",
        ),
        ("hydra.sweeper.params.beta_schedule=choice({order}) beta=2", None),  # fixed β: read
    ],
)
def test_a_searched_key_some_trials_do_not_read_is_refused_in_any_order(
    tmp_path, order, schedule, refused
):
    """beta searched with beta_schedule=choice(capacity, constant) was refused (capacity
    first: β unread at the example point) while choice(constant, capacity) was accepted,
    and 3 of its 4 trials were capacity runs that differed only in β, with identical
    metrics. With a grid axis, both orders were accepted and the capacity study searched
    a β none of its trials read. Now the trials at every value tried decide, in any order."""
    searched = (
        [] if " beta=2" in schedule else ["hydra.sweeper.params.beta=tag(log, interval(0.1, 10))"]
    )
    arguments = [
        "data=digits",
        "hydra.sweeper.n_trials=2",
        *searched,
        *schedule.format(order=order).split(),
    ]
    if refused is None:
        _check_configs(tmp_path, arguments)
        return
    with pytest.raises(SearchError) as e:
        _check_configs(tmp_path, arguments)
    assert refused in str(e.value)
    if "choice" in schedule:
        assert (
            "A conditional search space is not supported: search beta only where every "
            "trial reads it (a fixed beta_schedule=constant" in str(e.value)
        )


@pytest.mark.slow
def test_a_search_with_grid_axes_and_the_default_sampler_runs_every_study(workdir):
    """The real CLI: two studies (a grid axis) under the default seeded TPE sampler; the
    second study proposes what a search of its grid point alone proposes."""
    grid = run_cli(
        [*SEARCH, "hydra.sweeper.n_trials=2", BETA, "likelihood=gaussian,laplace"], workdir
    )
    assert grid.returncode == 0, grid.stderr[-3000:]
    alone = run_cli(
        [
            *SEARCH[:-1],
            "hydra.sweep.dir=alone",
            "hydra.sweeper.n_trials=2",
            BETA,
            "likelihood=laplace",
        ],
        workdir,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    best = json.loads((workdir / "sweep" / BEST_FILE).read_text())
    assert len(best) == 2 and all(b["best"] is not None for b in best)
    by_study = {
        n: [t.params["beta"] for t in trials(workdir / "sweep", n)]
        for n in ("search[likelihood=gaussian]", "search[likelihood=laplace]")
    }
    assert all(len(v) == 2 for v in by_study.values())
    assert by_study["search[likelihood=laplace]"] == [
        t.params["beta"] for t in trials(workdir / "alone")
    ]


@pytest.mark.parametrize(
    ("params", "size"),
    [
        ({"beta": "range(0.5, 2, 0.5)"}, 3),  # 0.5, 1.0, 1.5: what a reviewer ran 4 trials of
        ({"model.latent_dim": "range(2, 10, 4)", "seed": "choice(0, 1)"}, 4),  # {2, 6} × {0, 1}
        ({"model.latent_dim": "int(interval(2, 5))"}, 4),
        ({"beta": "interval(0.1, 10)", "seed": "choice(0, 1)"}, None),  # continuous: unbounded
        ({"model.use_bias": "choice(0, false)"}, 2),  # a bool is not the number it equals
        ({"beta": "choice(1, 1.0, 2)"}, 2),  # beta=1 and beta=1.0 are one job
        ({"trainer.limit_train_batches": "choice(1, 1.0)"}, 2),  # one batch, every batch
    ],
)
def test_more_trials_than_the_space_has_points_are_refused(params, size):
    """A sampler proposes a point of a discrete space again once it has run out (TPE even
    before); each would train again to the same numbers: β=1.0 three times, never 0.5."""
    assert parse_space(params, []).size() == size
    if size is None:
        plan_search(_multirun_config({"params": params, "n_trials": 50}), [])
        return
    plan_search(_multirun_config({"params": params, "n_trials": size}), [])
    with pytest.raises(SearchError, match=rf"n_trials={size + 1} is more than the {size} dist"):
        plan_search(_multirun_config({"params": params, "n_trials": size + 1}), [])


def _written_range(start: str, stop: str, step: str) -> list:
    """range(start, stop, step)'s values as written, in exact fractions of the written
    texts: start + k·step for k = 0, 1, ... while before stop."""
    from fractions import Fraction

    first, end, by = Fraction(start), Fraction(stop), Fraction(step)
    values, k = [], 0
    while (first + k * by < end) if by > 0 else (first + k * by > end):
        values.append(first + k * by)
        k += 1
    return values


_STARTS = ["0", "0.1", "0.2", "0.5", "1", "0.05", "1e-4", "-0.3"]
_STOPS = ["0.3", "0.5", "0.7", "0.9", "1", "1.5", "2", "3"]
_STEPS = ["0.1", "0.2", "0.3", "0.05", "0.25", "0.7", "0.15"]


def test_a_float_range_searches_every_value_written_and_counts_them():
    """range(0, 1, 0.3) came out of Hydra's parser ending at 0.8999999999999999, and Optuna
    trims a stepped range to whole steps in decimal: 0.9 was never searched while the
    space's size said 4 (21 of 317 ranges lost a value; range(0, 0.9, 0.3) had one value
    too many). Over a few hundred ranges, the distribution Optuna gets spans exactly the
    values as written (fractions of the written texts) and the size is their number;
    Optuna's own sampler proposes each of them (to a rounding error), and nothing else."""
    import itertools
    from fractions import Fraction

    import optuna

    checked = 0
    for start, stop, step in itertools.product(_STARTS, _STOPS, _STEPS):
        for a, b, by in ((start, stop, step), (stop, start, f"-{step}")):
            wanted = _written_range(a, b, by)
            if len(wanted) < 2:
                continue
            param = parse_space({}, [f"beta=range({a}, {b}, {by})"]).searched["beta"]
            dist = param.distribution()
            assert param.size() == len(wanted), (a, b, by)
            assert Fraction(repr(dist.low)) == min(wanted), (a, b, by)
            assert Fraction(repr(dist.high)) == max(wanted), (a, b, by)
            assert Fraction(repr(dist.step)) == abs(Fraction(by))
            checked += 1
    assert checked > 600
    for written, wanted in [(("0", "1", "0.3"), [0, 0.3, 0.6, 0.9]), (("0", "0.9", "0.3"), [0, 0.3, 0.6])]:  # fmt: skip
        param = parse_space({}, [f"beta=range({', '.join(written)})"]).searched["beta"]
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        proposed = {study.ask({"beta": param.distribution()}).params["beta"] for _ in range(200)}
        assert sorted(round(v, 12) for v in proposed) == wanted and param.size() == len(wanted)


def test_a_long_range_is_searched_without_listing_its_values():
    """range(0, 10**9) is a stepped distribution from its ends: its values are counted, not
    listed (a list of 10**7 decimals took 1.8 GB before the search began)."""
    import tracemalloc

    tracemalloc.start()
    try:
        param = parse_space({}, ["seed=range(0, 1000000000)"]).searched["seed"]
        int_peak = tracemalloc.get_traced_memory()[1]
        wide = parse_space({}, ["beta=range(0.5, 100000.5, 0.001)"]).searched["beta"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert max(int_peak, peak) < 20 * 2**20, (int_peak, peak)
    dist = param.distribution()
    assert (dist.low, dist.high, dist.step, param.size()) == (0, 999999999, 1, 10**9)
    dist = wide.distribution()
    assert (dist.low, dist.high, dist.step, wide.size()) == (0.5, 100000.499, 0.001, 10**8)
    # Shuffled, a range is a categorical of its values: a long one is refused, unlisted.
    with pytest.raises(SearchError) as refused:
        parse_space({}, ["seed=shuffle(range(0, 1000000000))"])
    assert str(refused.value) == (
        "seed=shuffle(range(0, 1000000000)): a shuffled range is a categorical of its "
        "1000000000 values; allowed: at most 10000, or the same range() without shuffle (a "
        "stepped distribution over the same values: their order means nothing to a search)"
    )
    assert parse_space({}, ["seed=shuffle(range(0, 10000))"]).searched["seed"].size() == 10000


def test_a_shuffled_search_space_is_the_same_search_at_every_launch(tmp_path):
    """Hydra's shuffle() is unseeded: every parse gave another order, which went into the
    study's stored search, so a relaunch of a search with shuffle(range(...)) or
    shuffle(choice(...)) was refused as "started with another search". Order means nothing
    to a search space: two parses whose Hydra orders differ describe one search, and the
    relaunch continues the study."""
    import random

    import optuna
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vaesweep.sweep.search.studies import open_study

    exprs = ["beta=shuffle(range(1, 9))", "seed=shuffle(choice(3, 1, 2, 5, 4, 0, 7, 6))",
             "likelihood=shuffle(choice(gaussian, laplace, logistic, student_t, cauchy))"]  # fmt: skip
    parser = OverridesParser.create()

    def parse(seed: int) -> tuple[list, Plan]:
        random.seed(seed)
        hydra_orders = [list(parser.parse_override(e).sweep_iterator()) for e in exprs]
        random.seed(seed)
        space = parse_space({}, exprs)
        plan = Plan(space, "val/elbo", "maximize", 3, 1, str(tmp_path / JOURNAL_FILE), "search",
                    1.0, tmp_path, ())  # fmt: skip
        return hydra_orders, plan

    (tmp_path / JOURNAL_FILE).touch()
    storage = open_storage(str(tmp_path / JOURNAL_FILE))
    first_orders, first = parse(1)
    study = open_study(storage, first, [], optuna.samplers.RandomSampler(seed=0), None)
    study.enqueue_trial({"beta": 3, "seed": 5, "likelihood": "laplace"})
    study.ask({k: p.distribution() for k, p in first.space.searched.items()})
    for seed in (2, 3):
        orders, again = parse(seed)
        assert all(a != b for a, b in zip(orders, first_orders, strict=True))  # Hydra's differ
        assert again.fingerprint() == first.fingerprint()
        continued = open_study(storage, again, [], optuna.samplers.RandomSampler(seed=0), None)
        trial = continued.ask({k: p.distribution() for k, p in again.space.searched.items()})
        assert trial.number == seed - 1 and len(continued.trials) == seed
    assert sorted(first.space.searched["beta"].choices) == list(range(1, 9))


def test_a_key_searched_twice_on_the_command_line_is_refused():
    """``beta=...`` and ``hydra.sweeper.params.beta=...`` on one command line: the first
    replaced the second silently (the journal held the other space). A preset's params,
    replaced by the command line, stay allowed."""
    given = "hydra.sweeper.params.beta=interval(0.2,1)"
    config = _multirun_config({})
    config.hydra.overrides = {"hydra": [given], "task": ["beta=interval(0.1,1)"]}
    with pytest.raises(SearchError, match=r"beta is given twice on the command line, as beta="):
        plan_search(config, ["beta=interval(0.1,1)"])
    config.hydra.overrides = {"hydra": [], "task": ["beta=interval(0.1,1)"]}  # from a preset
    assert plan_search(config, ["beta=interval(0.1,1)"]).space.searched["beta"].low == 0.1


@pytest.mark.parametrize(
    ("params", "objective", "refused"),
    [
        ({"beta": "interval(0.1, 10)"}, "val/loss", True),
        ({"beta_schedule.steps": "range(100, 500, 100)"}, "val/loss", True),
        ({"beta_schedule": "choice(linear, cyclical)"}, "val/loss", True),
        ({"optimizer.lr": "interval(0.0001, 0.01)"}, "val/loss", False),  # β fixed: comparable
        ({"beta": "interval(0.1, 10)"}, "val/elbo", False),
        ({"beta": "interval(0.1, 10)"}, "val/rec_nll", True),
        ({"beta": "interval(0.1, 10)"}, "test/rec_nll", True),
        ({"beta": "interval(0.1, 10)"}, "test/mse", True),
        ({"beta": "interval(0.1, 10)"}, "test/mae", True),
        ({"beta": "interval(0.1, 10)"}, "val/kl", True),
        ({"beta_schedule": "choice(linear, cyclical)"}, "val/rec_nll", True),
        ({"beta": "interval(0.1, 10)"}, "test/nll", False),
        ({"beta": "interval(0.1, 10)"}, "test/elbo", False),
        ({"optimizer.lr": "interval(0.0001, 0.01)"}, "val/rec_nll", False),
    ],
)
def test_an_objective_that_beta_changes_by_definition_is_refused(params, objective, refused):
    """val/loss = rec_nll + β·KL: over β (or its schedule) it ranks the smallest β best.
    A reviewer's search picked β = 1.23 by val/loss over β = 2.69, whose val/elbo was best.
    The reconstruction's scores (rec_nll, mse, mae) fall with β too: a search by val/rec_nll
    picked β = 0.1, the worst test/nll and test/elbo of the three (and the refusal of
    val/loss recommended it)."""
    plan = Plan(parse_space(params, []), objective, "minimize", 2, 1, "", "s", 1.0, Path("."), ())
    if not refused:
        check_objective_comparable(plan)
        return
    with pytest.raises(SearchError, match=f"objective={objective} with {next(iter(params))}") as e:
        check_objective_comparable(plan)
    assert (
        "allowed: val/elbo (or, with hydra.sweeper.allow_test_objective=true, test/elbo, "
        "test/nll, test/bpd), which scores every β alike" in str(e.value)
    )
    assert "rec_nll)" not in str(e.value)


def test_a_half_proposed_trial_is_never_run_nor_counted(tmp_path):
    """A launch killed while the sampler proposed a trial leaves it RUNNING without every
    searched value: the next launch tells it FAIL and proposes n_trials complete ones."""
    import optuna

    space = parse_space({"beta": "interval(0.1, 10)", "seed": "choice(0, 1)"}, [])
    plan = Plan(space, "val/elbo", "maximize", 2, 1, "", "search", 1.0, tmp_path, ())
    study = optuna.create_study(direction="maximize")
    study.ask().suggest_float("beta", 0.1, 10)  # cut short before "seed"
    dists = {k: p.distribution() for k, p in space.searched.items()}
    ((number, params),) = _next_batch(study, plan, [], dists, set())
    assert number == 1 and set(params) == {"beta", "seed"}
    assert study.trials[0].state.name == "FAIL"
    study.tell(1, 1.0)
    assert len(_next_batch(study, plan, [], dists, set())) == 1  # still 2 to run in all


class _RecordingLauncher:
    """Runs no job: writes each trial's completed result (val/elbo = -beta) and records the
    Hydra job numbers it was given."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir, self.numbers = sweep_dir, []

    def launch(self, overrides: list[list[str]], initial_job_idx: int) -> None:
        for i, job in enumerate(overrides):
            self.numbers.append(initial_job_idx + i)
            values = dict(o.split("=", 1) for o in job)
            run = self.sweep_dir / values["hydra.sweep.subdir"].strip("'")
            run.mkdir(parents=True)
            metrics = {"val/elbo": -float(values["beta"])}
            (run / "results.json").write_text(
                json.dumps({"status": "completed", "metrics": metrics})
            )


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_relaunched_search_numbers_its_jobs_by_trial(tmp_path, n_jobs):
    """Job k of a search (its line ``job k/N completed``) is the k-th trial, counting the
    earlier studies' n_trials: a relaunch continues the numbering (it restarted at job 1)
    and a half-proposed trial, never run, takes no number."""
    import optuna

    from vaesweep.sweep.search.trials import run_study

    space = parse_space({"beta": "interval(0.1, 10)"}, [])
    plan = Plan(space, "val/elbo", "maximize", 4, n_jobs, "", "search", 1.0, tmp_path, ())
    study = optuna.create_study(direction="maximize")
    first = _RecordingLauncher(tmp_path)
    plan.n_trials = 2  # the first launch asked for 2 trials...
    run_study(study, plan, [], first, 4)  # ...as the second study of the search (4 + k)
    assert first.numbers == [4, 5]
    study.ask()  # a launch killed while the sampler proposed a trial (never run)
    plan.n_trials = 4  # the relaunch asks for 4
    again = _RecordingLauncher(tmp_path)
    run_study(study, plan, [], again, 4)
    assert again.numbers == [6, 7]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2 + ["FAIL"] + ["COMPLETE"] * 2


@pytest.mark.parametrize(
    ("sampler", "grid", "told", "n_jobs"),
    [
        ("GridSampler", [0.5, 1.0, 2.0], 3, 2),
        ("GridSampler", [0.5, 1.0, 2.0], 3, 3),  # one batch: the stop at its first tell
        ("BruteForceSampler", None, 3, 2),
        ("BruteForceSampler", None, 3, 3),
        ("GridSampler", [0.5, 1.0], 2, 1),  # its own grid is smaller than n_trials: done at 2
    ],
)
def test_a_sampler_that_ends_the_study_ends_it_cleanly(tmp_path, sampler, grid, told, n_jobs):
    """GridSampler and BruteForceSampler call study.stop() in after_trial once their space is
    exhausted, which raises RuntimeError outside study.optimize: the search stopped with
    'sweep stopped: RuntimeError' (exit 1) although every trial had completed, and the
    trials after it in the batch were left untold. Now the study is done, every trial told."""
    import optuna

    from vaesweep.sweep.search.trials import run_study

    quiet_optuna()  # BruteForceSampler is experimental
    space = parse_space({"beta": "choice(0.5, 1.0, 2.0)"}, [])
    plan = Plan(space, "val/elbo", "maximize", 3, n_jobs, "", "search", 1.0, tmp_path, ())
    cls = getattr(optuna.samplers, sampler)
    made = cls({"beta": grid}, seed=0) if grid else cls(seed=0)
    study = optuna.create_study(direction="maximize", sampler=made)
    run_study(study, plan, [], _RecordingLauncher(tmp_path), 0)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * told
    assert sorted(t.params["beta"] for t in study.trials) == sorted(grid or [0.5, 1.0, 2.0])


class _LeavingLauncher(_RecordingLauncher):
    """As _RecordingLauncher, but a trial whose directory is in ``leave`` gets no result
    (its launch killed: left RUNNING); records each launch's job numbers."""

    def __init__(self, sweep_dir: Path, leave: tuple[str, ...] = ()):
        super().__init__(sweep_dir)
        self.leave, self.launches = leave, []

    def launch(self, overrides: list[list[str]], initial_job_idx: int) -> None:
        self.launches.append([initial_job_idx + i for i in range(len(overrides))])
        kept = [o for o in overrides if not any(f"'{d}'" in o[-1] for d in self.leave)]
        super().launch(kept, initial_job_idx)


class _NumberingLauncher(SweepLauncher, _LeavingLauncher):
    """A vaesweep launcher (SweepLauncher.launch_numbered, job_number) that writes results
    as _LeavingLauncher."""

    def __init__(self, sweep_dir: Path):
        SweepLauncher.__init__(self)
        _LeavingLauncher.__init__(self, sweep_dir)

    def launch(self, overrides: list[list[str]], initial_job_idx: int) -> None:
        self.launches.append([self.job_number(initial_job_idx, i) for i in range(len(overrides))])
        _RecordingLauncher.launch(self, overrides, initial_job_idx)


@pytest.mark.parametrize("numbering", [False, True])
def test_a_relaunch_numbers_a_resumed_trial_and_new_ones_each_by_its_trial(tmp_path, numbering):
    """A relaunch's batch runs trial 1, left unfinished, beside the new trial 4: their jobs
    are 1 and 4 (+ the study's first job), each its trial's, not 1 and 2. A vaesweep
    launcher takes both numbers in one launch (the batch runs at once); another launcher
    numbers a launch's jobs from its first, so each run of consecutive numbers is a launch."""
    import optuna

    from vaesweep.sweep.search.trials import run_study

    space = parse_space({"beta": "interval(0.1, 10)"}, [])
    plan = Plan(space, "val/elbo", "maximize", 4, 2, "", "search", 1.0, tmp_path, ())
    study = optuna.create_study(direction="maximize")
    first = _LeavingLauncher(tmp_path, leave=("trial_0001",))
    run_study(study, plan, [], first, 4)
    assert first.launches == [[4, 5], [6, 7]]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING", "COMPLETE", "COMPLETE"]
    plan.n_trials = 5  # the relaunch asks for one more
    again = _NumberingLauncher(tmp_path) if numbering else _LeavingLauncher(tmp_path)
    run_study(study, plan, [], again, 4)
    assert again.launches == ([[5, 8]] if numbering else [[5], [8]])
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5


# -- two launches of one search at once -------------------------------------------------------


class _LateSampler:
    """A RandomSampler whose ``after_trial`` (Optuna calls it inside ``tell``, after its check
    that the trial is unfinished and before the write) first runs ``meanwhile``: another
    launch telling the same trial in between, as two processes can."""

    def __init__(self, meanwhile):
        import optuna

        self.random, self.meanwhile = optuna.samplers.RandomSampler(seed=0), meanwhile

    def __getattr__(self, name):
        return getattr(self.random, name)

    def after_trial(self, study, trial, state, values):
        self.meanwhile()
        self.random.after_trial(study, trial, state, values)


def test_a_trial_told_by_another_launch_is_left_as_it_was_told(tmp_path):
    """Launch B settles launch A's trial from its results.json before A does (B's start
    settles RUNNING trials whose result is on disk; A tells its batch when the batch ends):
    A then raised Optuna's "Cannot tell a COMPLETE trial" and the search stopped. Now the
    second teller finds it told and keeps that outcome (state and value), whether B told it
    before A looked or between A's look and A's write (one journal, two storages, as two
    processes have)."""
    import optuna

    from vaesweep.sweep.search.trials import settle

    journal = str(tmp_path / JOURNAL_FILE)
    dist = {"beta": optuna.distributions.FloatDistribution(0.1, 10)}
    a = optuna.create_study(study_name="search", storage=open_storage(journal),
                            direction="maximize")  # fmt: skip
    b = optuna.load_study(study_name="search", storage=open_storage(journal))
    done = {"status": "completed", "metrics": {"val/elbo": -90.0}}
    failed = {"status": "failed", "metrics": {}}

    first = a.ask(dist).number
    assert settle(b, first, done, "val/elbo") == "COMPLETE"
    assert settle(a, first, {**done, "metrics": {"val/elbo": -1.0}}, "val/elbo") == "COMPLETE"
    assert settle(a, first, failed, "val/elbo") == "COMPLETE"

    second = a.ask(dist).number
    late = optuna.load_study(study_name="search", storage=open_storage(journal),
                             sampler=_LateSampler(lambda: settle(b, second, done, "val/elbo")))  # fmt: skip
    assert settle(late, second, failed, "val/elbo") == "COMPLETE"  # B's, told in between

    c = optuna.load_study(study_name="search", storage=open_storage(journal))  # a third reader
    assert [(t.state.name, t.value) for t in c.trials] == [("COMPLETE", -90.0)] * 2


_HOLD_CLAIM = """
import sys, time
from vaesweep.run.claims import acquire
claim = acquire(sys.argv[1], 300)
print("held", flush=True)
time.sleep(600)
"""


class _DirsLauncher(_RecordingLauncher):
    """As _RecordingLauncher (into directories that may exist); records each job's directory."""

    def __init__(self, sweep_dir: Path):
        super().__init__(sweep_dir)
        self.dirs = []

    def launch(self, overrides: list[list[str]], initial_job_idx: int) -> None:
        for job in overrides:
            run = self.sweep_dir / dict(o.split("=", 1) for o in job)["hydra.sweep.subdir"].strip(
                "'"
            )
            self.dirs.append(run.name)
            run.mkdir(parents=True, exist_ok=True)
            beta = float(dict(o.split("=", 1) for o in job)["beta"])
            (run / "results.json").write_text(
                json.dumps({"status": "completed", "metrics": {"val/elbo": -beta}})
            )


def test_a_trial_another_live_launch_runs_is_not_launched_again(tmp_path):
    """Launch B found launch A's RUNNING trial (its job claimed by A's live process) "left
    unfinished" and launched it again. Now a trial whose directory another live process
    claims is that launch's: B runs the trial a dead launch left, counts A's towards
    n_trials and asks no more; once A's process is gone, its trial is run again."""
    import optuna

    from vaesweep.sweep.search.trials import run_study

    space = parse_space({"beta": "interval(0.1, 10)"}, [])
    journal = str(tmp_path / JOURNAL_FILE)
    plan = Plan(space, "val/elbo", "maximize", 3, 2, journal, "search", 1.0, tmp_path, ())
    dists = {"beta": space.searched["beta"].distribution()}
    study = optuna.create_study(study_name="search", storage=open_storage(journal),
                                direction="maximize")  # fmt: skip
    for number in range(3):
        trial = study.ask(dists)
        trial.set_user_attr("job_dir", plan.trial_dir([], number))
    study.tell(0, -1.0)  # trial 0 done; 1 run by launch A (alive); 2 left by a dead launch
    (tmp_path / "trial_0001").mkdir()
    a = subprocess.Popen([sys.executable, "-c", _HOLD_CLAIM, str(tmp_path / "trial_0001")],
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert a.stdout.readline().strip() == "held"
        b_study = optuna.load_study(study_name="search", storage=open_storage(journal))
        b = _DirsLauncher(tmp_path)
        run_study(b_study, plan, [], b, 0)
        assert b.dirs == ["trial_0002"]
        assert [t.state.name for t in b_study.trials] == ["COMPLETE", "RUNNING", "COMPLETE"]
    finally:
        a.kill()
        a.wait()
    again = _DirsLauncher(tmp_path)
    run_study(b_study, plan, [], again, 0)  # A is gone: its trial was left unfinished
    assert again.dirs == ["trial_0001"]
    assert [t.state.name for t in b_study.trials] == ["COMPLETE"] * 3


_LAUNCH = """
import json, sys, time
from pathlib import Path
import optuna
from vaesweep.run import claims
from vaesweep.sweep.search.plan import Plan
from vaesweep.sweep.search.space import parse_space
from vaesweep.sweep.search.storage import open_storage, quiet_optuna
from vaesweep.sweep.search.trials import run_study

sweep = Path(sys.argv[1])
quiet_optuna()

class Launcher:
    # Each job as vaesweep's: skipped when completed or claimed by another live process,
    # else claimed, run (0.2 s), its result written, its claim released.
    def launch(self, overrides, initial_job_idx):
        for job in overrides:
            values = dict(o.split("=", 1) for o in job)
            run = sweep / values["hydra.sweep.subdir"].strip("'")
            run.mkdir(parents=True, exist_ok=True)
            try:
                claim = claims.acquire(run)
            except claims.ClaimHeld:
                continue
            with claim:
                if (run / "results.json").exists():
                    continue
                time.sleep(0.2)
                with open(sweep / "runs.log", "a") as f:
                    f.write(run.name + "\\n")
                metrics = {"val/elbo": -float(values["beta"])}
                (run / "results.json").write_text(json.dumps({"status": "completed", "metrics": metrics}))

journal = str(sweep / "optuna_journal.log")
space = parse_space({"beta": "interval(0.1, 10)"}, [])
plan = Plan(space, "val/elbo", "maximize", 8, 2, journal, "search", 1.0, sweep, ())
study = optuna.create_study(study_name="search", storage=open_storage(journal),
                            direction="maximize", load_if_exists=True)
run_study(study, plan, [], Launcher(), 0)
"""


def test_two_launches_of_one_search_at_once_share_its_trials(tmp_path):
    """The same search launched twice at once (two processes, one journal): both end
    without an error, the study has exactly n_trials trials, all completed, each run once."""
    import optuna

    (tmp_path / JOURNAL_FILE).touch()
    launches = [
        subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, str(tmp_path)], stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=120)[1] for p in launches]
    assert [p.returncode for p in launches] == [0, 0], errors
    study = optuna.load_study(
        study_name="search", storage=open_storage(str(tmp_path / JOURNAL_FILE))
    )
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 8
    runs = (tmp_path / "runs.log").read_text().split()
    assert sorted(runs) == [f"trial_{n:04d}" for n in range(8)]


def test_a_search_table_has_its_objective_next_to_the_status():
    from vaesweep.sweep.grid import summary_rows

    result = {"run_dir": "s/trial_0000", "status": "completed", "overrides": ["beta=0.5"],
              "metrics": {"val/elbo": -80.123456, "test/nll": 79.5}}  # fmt: skip
    (row,) = summary_rows([result], ["beta"], ["val/elbo"])
    assert list(row)[:5] == ["job", "beta", "status", "val/elbo", "test/nll"]
    assert row["val/elbo"] == -80.123456 and row["beta"] == "0.5"  # every digit
    (row,) = summary_rows([result], ["beta"], ["test/nll"])  # already a column: once
    assert list(row)[3:5] == ["test/nll", "test/elbo"]
    assert "val/elbo" not in summary_rows([result], ["beta"])[0]  # a grid: as before


def test_the_best_trial_files_appear_only_whole(tmp_path, monkeypatch):
    from vaesweep.sweep.search.best import OPTUNA_RESULTS_FILE, write_best

    best = [{"study": "search", "best": {"params": {"beta": 0.5}, "value": -80.25}}]
    write_best(tmp_path, best)
    replaced = []
    replace = os.replace

    def replace_seen(src, dst):
        replaced.append(Path(dst).name)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_seen)
    best[0]["best"]["value"] = -79.5
    write_best(tmp_path, best)
    assert sorted(replaced) == [BEST_FILE, OPTUNA_RESULTS_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(replaced)  # no temp left
    assert json.loads((tmp_path / BEST_FILE).read_text()) == best
    assert OmegaConf.to_container(OmegaConf.load(tmp_path / OPTUNA_RESULTS_FILE)) == {
        "name": "optuna",
        "study": "search",
        "best_params": {"beta": 0.5},
        "best_value": -79.5,
    }


# -- another study's trials, kinds of data, best.json of every study, unfinished trials ----------


def _result(beta: float, status: str = "completed", value: float | None = None) -> dict:
    """A trial's results.json as a job writes it (the fixed overrides of _plan's trials)."""
    metrics = {"val/elbo": -beta if value is None else value, "test/nll": 1.0, "test/elbo": -1.0}
    return {
        "status": status,
        "metrics": metrics if status == "completed" else {},
        "overrides": ["data=digits", "logger=csv", f"beta={beta!r}"],
        "config": {"beta": beta},
    }


def _plan(sweep: Path, n_trials: int = 1, study_name: str = "search", grid=()) -> Plan:
    space = parse_space({"beta": "interval(1.0, 4.0)"}, ["data=digits", "logger=csv", *grid])
    storage = str(sweep / JOURNAL_FILE)
    sweep.mkdir(parents=True, exist_ok=True)
    Path(storage).touch()
    return Plan(space, "val/elbo", "maximize", n_trials, 1, storage, study_name, 1.0, sweep,
                ("logger", "threads"))  # fmt: skip


class _RefusingLauncher:
    """Each job refuses its directory (ConfigMismatch: another config's run is there) and
    leaves it as it was: writes nothing."""

    def __init__(self):
        self.launched = []

    def launch(self, overrides: list[list[str]], initial_job_idx: int) -> None:
        self.launched += overrides


def test_a_trial_is_never_told_another_configurations_result(tmp_path, capsys):
    """trial_0000 of a new study held a completed run of another configuration (another
    study's trial 0 in the same sweep directory): its job refused it, and the search read
    that run's results.json and told its val/elbo as the trial's. Now it is told FAIL,
    naming the difference; a result recorded with the trial's own overrides (another
    launch's, with a key that changes nothing: logger) is told as before."""
    import optuna

    from vaesweep.sweep.search.best import best_trial
    from vaesweep.sweep.search.trials import run_study

    plan = _plan(tmp_path)
    (tmp_path / "trial_0000").mkdir()
    (tmp_path / "trial_0000" / "results.json").write_text(json.dumps(_result(9.5, value=-1.0)))
    study = optuna.create_study(direction="maximize", study_name="search")
    launcher = _RefusingLauncher()
    run_study(study, plan, [], launcher, 0)
    assert len(launcher.launched) == 1  # the job ran, and refused the directory
    assert [t.state.name for t in study.trials] == ["FAIL"]
    assert best_trial(study, plan, [])["best"] is None
    err = capsys.readouterr().err
    assert "search: trial 0 told as failed: its directory holds a completed run of another" in err
    assert f"beta: beta=9.5 → beta={study.trials[0].params['beta']!r}" in err

    # A launch killed after the job wrote its result, before telling it: settled from disk,
    # by the same rule (the trial's own result, written under logger=none: told).
    study = optuna.create_study(direction="maximize")
    trial = study.ask({"beta": plan.space.searched["beta"].distribution()})
    trial.set_user_attr("job_dir", "trial_0001")
    own = _result(trial.params["beta"], value=-2.0)
    own["overrides"][1] = "logger=none"
    (tmp_path / "trial_0001").mkdir()
    (tmp_path / "trial_0001" / "results.json").write_text(json.dumps(own))
    other = study.ask({"beta": plan.space.searched["beta"].distribution()})
    other.set_user_attr("job_dir", "trial_0000")  # another configuration's completed run
    from vaesweep.sweep.search.trials import settle_finished_on_disk

    assert settle_finished_on_disk(study, plan, []) == [0, 1]
    assert [(t.state.name, t.value) for t in study.trials] == [("COMPLETE", -2.0), ("FAIL", None)]


def test_a_new_study_is_refused_where_another_studys_trials_are(tmp_path):
    """A new study (a changed study_name, storage or journal; a deleted journal) would start
    at trial 0 in trial_0000, which holds another study's trial: refused before any job,
    naming the studies the storage holds (the way to continue one of them) and the way to
    start a new one (another hydra.sweep.dir)."""
    import optuna

    from vaesweep.sweep.search.checks import check_studies

    plan = _plan(tmp_path, n_trials=2)
    check_studies(plan)  # an empty directory: a new study is welcome
    (tmp_path / "trial_0000").mkdir()
    with pytest.raises(SearchError, match=r"holds trial directories of another study \(trial_0000\)") as e:  # fmt: skip
        check_studies(plan)  # the journal was deleted: no study holds them
    assert "another hydra.sweep.dir" in str(e.value) and "holds no other study" in str(e.value)
    storage = open_storage(plan.storage)
    optuna.create_study(study_name="search", storage=storage)
    check_studies(plan)  # the study that ran them: continued
    other = _plan(tmp_path, n_trials=2, study_name="other2")
    with pytest.raises(SearchError, match="study_name=other2: the study 'other2' is new") as e:
        check_studies(other)
    assert "holds the studies 'search'; to continue one of them" in str(e.value)
    (tmp_path / "trial_0000").rename(tmp_path / "trial_0007")  # beyond n_trials: still seen
    with pytest.raises(SearchError, match=r"another study \(trial_0007\)"):
        check_studies(other)
    # Another grid point's trials are not this study's directories: no collision.
    check_studies(_plan(tmp_path, study_name="other2", grid=["likelihood=gaussian,laplace"]))


def test_a_relaunch_that_drops_a_study_of_its_sweep_directory_is_refused(tmp_path):
    """Grid axes changed on relaunch into the same sweep directory (an axis added: 'search'
    became 'search[likelihood=gaussian]', ...) were accepted: sweep.json was rewritten,
    best.json lost the first search's study, summary.csv mixed the two. Now a relaunch
    that does not have every study of its sweep directory (in the storage, or in
    sweep.json's record of the earlier launches) is refused; a value added to a grid axis
    keeps every study and is accepted."""
    import optuna

    from vaesweep.sweep.search.checks import check_studies
    from vaesweep.sweep.search.studies import open_study

    sampler = optuna.samplers.RandomSampler(seed=0)
    first = _plan(tmp_path / "a")
    storage = open_storage(first.storage)
    open_study(storage, first, [], sampler, None)
    with pytest.raises(SearchError) as refused:
        check_studies(_plan(tmp_path / "a", grid=["likelihood=gaussian,laplace"]))
    assert (
        f"hydra.sweep.dir={tmp_path / 'a'} holds a search whose studies 'search' this launch "
        "does not have (its studies: 'search[likelihood=gaussian]', "
        "'search[likelihood=laplace]'): its grid axes or study_name changed"
    ) in str(refused.value)
    assert "choose another hydra.sweep.dir" in str(refused.value)
    check_studies(first)  # the same search

    two = _plan(tmp_path / "b", grid=["seed=0,1"])
    storage = open_storage(two.storage)
    for point in two.space.points():
        open_study(storage, two, point, sampler, None)
    three = _plan(tmp_path / "b", grid=["seed=0,1,2"])
    check_studies(three)  # a value added to the axis: every study kept
    open_study(storage, three, ["seed=2"], sampler, None)
    with pytest.raises(SearchError, match="studies 'search\\[seed=2\\]' this launch"):
        check_studies(two)  # a value dropped

    # The earlier launches' studies in sweep.json (their storage elsewhere, or gone).
    (tmp_path / "c").mkdir()
    record = {"search": {"studies": ["search"], "grid": {}}}
    (tmp_path / "c" / "sweep.json").write_text(json.dumps(record))
    with pytest.raises(SearchError, match=r"studies 'search' this launch .* grid axes: \{\} → "):
        check_studies(_plan(tmp_path / "c", grid=["likelihood=gaussian,laplace"]))


@pytest.mark.slow
def test_changed_grid_axes_are_refused_by_the_cli(workdir):
    """The reviewer's case, real launches into one sweep directory: a search, then the same
    with a grid axis added."""
    first = run_cli([*SEARCH, "hydra.sweeper.n_trials=1", BETA], workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    before = (workdir / "sweep" / "sweep.json").read_bytes()
    again = run_cli([*SEARCH, "hydra.sweeper.n_trials=1", BETA, "likelihood=gaussian,laplace"],
                    workdir, timeout=120)  # fmt: skip
    assert again.returncode == 2, again.stderr[-3000:]
    assert "holds a search whose studies 'search' this launch does not have" in again.stderr
    assert (workdir / "sweep" / "sweep.json").read_bytes() == before
    (best,) = json.loads((workdir / "sweep" / BEST_FILE).read_text())
    assert best["study"] == "search" and not list((workdir / "sweep").glob("likelihood=*"))


def test_a_study_of_another_sweep_directory_is_refused_before_any_trial(tmp_path):
    """A storage shared by two sweep directories (an absolute journal, sqlite:///x.db relative
    to the working directory) and the default study name: a launch into a new sweep
    directory joined the first one's study (nothing ran once it had n_trials, best.json
    named directories that are not there). Now refused, naming the storage, the study, the
    directory it belongs to and both ways out; the same directory by another path (a
    symlink), or moved (its sweep.json's id), continues it. A changed search's refusal
    names the ways that help (another study_name or storage; another hydra.sweep.dir only
    where the journal is in the sweep directory)."""
    import optuna

    from vaesweep.sweep.search.checks import check_studies
    from vaesweep.sweep.search.studies import open_study

    shared = tmp_path / "shared.log"
    shared.touch()

    def plan(sweep: Path, **kw) -> Plan:
        p = _plan(sweep, **kw)
        p.storage = str(shared)
        return p

    first = tmp_path / "first"
    first.mkdir()
    (first / "sweep.json").write_text(json.dumps({"search": {"id": "f1rst"}}))
    storage = open_storage(str(shared))
    sampler = optuna.samplers.RandomSampler(seed=0)
    open_study(storage, plan(first), [], sampler, None)
    check_studies(plan(first))  # its own directory
    (tmp_path / "link").symlink_to(first)
    check_studies(plan(tmp_path / "link"))  # the same directory through a symlink
    owner = str(first.resolve())
    with pytest.raises(SearchError) as refused:
        check_studies(plan(tmp_path / "second"))
    for part in (f"hydra.sweeper.storage={shared}: the study 'search' there belongs to the "
                 f"sweep directory {owner}, not to this launch's {(tmp_path / 'second').resolve()}",
                 f"relaunch into its directory (hydra.sweep.dir={owner})",
                 "choose another hydra.sweeper.study_name or another hydra.sweeper.storage"):  # fmt: skip
        assert part in str(refused.value)
    with pytest.raises(SearchError, match="belongs to the sweep directory"):  # the sweeper too
        open_study(storage, plan(tmp_path / "second"), [], sampler, None)
    check_studies(plan(tmp_path / "second", study_name="other"))  # another study: welcome

    moved = tmp_path / "moved"
    first.rename(moved)  # moved with its sweep.json: the same search
    check_studies(plan(moved))
    open_study(storage, plan(moved), [], sampler, None)  # now recorded where it is
    first.mkdir()  # a new directory at the old path: not the study's any more
    with pytest.raises(SearchError, match=f"belongs to the sweep directory {moved.resolve()},"):
        check_studies(plan(first))

    changed = plan(moved)
    changed.space = parse_space({"beta": "interval(1.0, 5.0)"}, ["data=digits", "logger=csv"])
    with pytest.raises(SearchError, match="was started with another search") as refused:
        check_studies(changed)
    assert "choose another hydra.sweeper.study_name or another hydra.sweeper.storage" in str(
        refused.value
    )
    assert "hydra.sweep.dir" not in str(refused.value)  # another directory: the same storage
    own = _plan(tmp_path / "own")  # the default: a journal in the sweep directory
    open_study(open_storage(own.storage), own, [], sampler, None)
    own.space = changed.space
    with pytest.raises(
        SearchError, match=r"storage or another hydra.sweep.dir \(its own journal\)"
    ):
        check_studies(own)


def test_a_study_no_vaesweep_search_started_is_refused_or_given_its_search(tmp_path):
    """A study without vaesweep's fingerprint was joined silently: one with trials (another
    tool's: Hydra's own Optuna sweeper, an Optuna script) gave a best.json naming trial
    directories that do not exist, and one without trials (a launch killed between
    create_study and recording its search) never got a fingerprint, so a later launch with
    another space was accepted. Now the first is refused, the second recorded."""
    import optuna

    from vaesweep.sweep.search.checks import check_studies
    from vaesweep.sweep.search.studies import SPACE_ATTR, open_study

    plan = _plan(tmp_path)
    storage = open_storage(plan.storage)
    foreign = optuna.create_study(study_name="search", storage=storage, direction="maximize")
    foreign.optimize(lambda t: -t.suggest_float("beta", 1.0, 4.0), n_trials=3)
    sampler = optuna.samplers.RandomSampler(seed=0)
    for check in (check_studies, lambda p: open_study(storage, p, [], sampler, None)):
        with pytest.raises(SearchError) as refused:
            check(plan)
        assert (
            f"hydra.sweeper.study_name=search: the study 'search' in {plan.storage} was not "
            "started by a vaesweep search (it records no search, and has 3 trials"
        ) in str(refused.value)
        assert "choose another hydra.sweeper.study_name" in str(refused.value)

    killed = _plan(tmp_path / "killed")  # killed right after create_study: no trial
    storage = open_storage(killed.storage)
    optuna.create_study(study_name="search", storage=storage, direction="maximize")
    check_studies(killed)
    study = open_study(storage, killed, [], sampler, None)
    assert study.user_attrs[SPACE_ATTR] == killed.fingerprint()
    killed.space = parse_space({"beta": "interval(50.0, 60.0)"}, ["data=digits", "logger=csv"])
    with pytest.raises(SearchError, match="was started with another search"):
        check_studies(killed)


def test_a_study_of_another_tool_is_refused_by_the_cli(workdir):
    """The reviewer's case, real launch: a plain Optuna study 'search' with 3 completed
    trials in the storage; the search ran nothing, exited 0 and reported the foreign
    trial 2 (a directory that does not exist) as its best."""
    import optuna

    storage = f"sqlite:///{workdir / 'example.db'}"
    study = optuna.create_study(study_name="search", storage=storage, direction="maximize")
    study.optimize(lambda t: -t.suggest_float("x", 0.0, 1.0), n_trials=3)
    proc = run_cli([*SEARCH, "hydra.sweeper.n_trials=3", BETA, f"hydra.sweeper.storage={storage}"],
                   workdir, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "the study 'search' in sqlite:///" in proc.stderr
    assert "was not started by a vaesweep search" in proc.stderr
    assert not (workdir / "sweep" / BEST_FILE).exists()


def test_a_study_recorded_without_its_trials_config_resumes_and_records_it(tmp_path):
    """A study an earlier vaesweep started records no trials' config in its fingerprint: it
    resumes (the rest of its search unchanged), and records this launch's config, which
    the next launch is compared with. A changed config (the override lines the same: an
    edited preset) is refused, naming the keys that differ."""
    import optuna

    from vaesweep.sweep.search.checks import check_studies, study_configs
    from vaesweep.sweep.search.studies import open_study

    plan = _plan(tmp_path)  # no trials' config: as an earlier vaesweep fingerprinted
    storage = open_storage(plan.storage)
    sampler = optuna.samplers.RandomSampler(seed=0)
    open_study(storage, plan, [], sampler, None)
    assert "config" not in _stored_fingerprint(storage)
    with _composing():
        plan.configs = study_configs(_multirun_config({}), plan)
        edited = _plan(tmp_path)
        edited.space.fixed["trainer.max_epochs"] = "trainer.max_epochs=3"
        edited.configs = study_configs(_multirun_config({}), edited)
    config = plan.configs["search"]
    assert config["trainer.max_epochs"] == 20 and "beta" not in config  # the searched key
    assert "logger.name" not in config and "data.name" in config  # what changes results
    check_studies(plan)  # resumed
    open_study(storage, plan, [], sampler, None)
    assert _stored_fingerprint(storage) == plan.fingerprint("search")
    assert _stored_fingerprint(storage)["config"] == config
    plan.configs = edited.configs  # the same override lines, another composed config
    with pytest.raises(SearchError, match="was started with another search") as refused:
        check_studies(plan)
    assert (
        "the trials' config (from the command line, a preset or a config file): "
        "trainer.max_epochs: 20 → 3)" in str(refused.value)
    )
    with pytest.raises(SearchError, match="trainer.max_epochs: 20 → 3"):
        open_study(storage, plan, [], sampler, None)


def _stored_fingerprint(storage) -> dict:
    import optuna

    from vaesweep.sweep.search.studies import SPACE_ATTR

    return optuna.load_study(study_name="search", storage=storage).user_attrs[SPACE_ATTR]


@pytest.mark.slow
def test_an_edited_preset_is_a_changed_search(tmp_path):
    """The reviewer's case: a search kept in a preset (hparams_search), edited between two
    launches (trainer.max_epochs: 1 → 2, with n_trials raised) was accepted, and one study
    mixed trials of 1 and 2 epochs. Now refused before any trial, naming the key; an edit
    of n_trials alone continues the study."""
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    preset = conf / "edit.yaml"
    text = (
        "# @package _global_\n"
        "defaults: [{override /hydra/sweeper: optuna}]\n"
        "trainer: {max_epochs: 1}\n"
        "hydra: {mode: MULTIRUN, sweeper: {n_trials: 1, params: {beta: 'tag(log, interval(0.1, 10))'}}}\n"
    )
    preset.write_text(text)
    budget = [a for a in LHT_BUDGET if not a.startswith("trainer.max_epochs=")]  # the preset's
    args = ["--config-dir", str(tmp_path / "conf"), "hparams_search=edit", *budget]
    assert run_cli(args, tmp_path).returncode == 0
    preset.write_text(
        text.replace("max_epochs: 1", "max_epochs: 2").replace("n_trials: 1", "n_trials: 2")
    )
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        "search refused, no trial was run: hydra.sweeper.params: the study 'search'" in proc.stderr
    )
    assert "trainer.max_epochs: 1 → 2" in proc.stderr
    assert len(trials(tmp_path / "sweep")) == 1
    preset.write_text(text.replace("n_trials: 1", "n_trials: 2"))
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [t.state.name for t in trials(tmp_path / "sweep")] == ["COMPLETE", "COMPLETE"]


@pytest.mark.slow
def test_the_same_search_into_a_new_sweep_directory_is_refused_by_the_cli(workdir):
    """The reviewer's case, real launches: sqlite:///x.db (relative to the working
    directory, as lightning-hydra-template writes it) and the default study name. The same
    command into a new sweep directory ran nothing (the study had n_trials), exited 0 and
    wrote a best.json naming a trial directory that is not there; now refused before any
    trial. The sweep directory moved and relaunched with more trials continues its study."""
    import optuna

    args = [*SEARCH[:-1], "hydra.sweeper.storage=sqlite:///x.db", BETA]
    first = run_cli([*args, "hydra.sweep.dir=sweep", "hydra.sweeper.n_trials=1"], workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli([*args, "hydra.sweep.dir=sweep2", "hydra.sweeper.n_trials=1"], workdir)
    assert again.returncode == 2, again.stderr[-3000:]
    owner = (workdir / "sweep").resolve()
    assert f"the study 'search' there belongs to the sweep directory {owner}" in again.stderr
    assert f"hydra.sweep.dir={owner}" in again.stderr
    assert not (workdir / "sweep2" / BEST_FILE).exists()
    assert not list((workdir / "sweep2").glob("trial_*"))
    (workdir / "sweep").rename(workdir / "moved")
    moved = run_cli([*args, "hydra.sweep.dir=moved", "hydra.sweeper.n_trials=2"], workdir)
    assert moved.returncode == 0, moved.stderr[-3000:]
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{workdir / 'x.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    (best,) = json.loads((workdir / "moved" / BEST_FILE).read_text())
    assert (workdir / "moved" / best["best"]["dir"] / "results.json").is_file()


def test_a_new_study_in_a_searched_directory_is_refused_by_the_cli(workdir):
    """The reviewer's case, with the real CLI: a study of another name in the sweep
    directory of a search refused before any job (it reported the other study's trial 0
    as its own best, exit 0)."""
    import optuna

    sweep = workdir / "sweep"
    (sweep / "trial_0000").mkdir(parents=True)
    (sweep / "trial_0000" / "results.json").write_text(json.dumps(_result(2.5)))
    optuna.create_study(study_name="search", storage=open_storage(str(sweep / JOURNAL_FILE)))
    before = (sweep / "trial_0000" / "results.json").read_bytes()
    proc = run_cli([*SEARCH, "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=other2",
                    "beta=interval(1, 4)"], workdir, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "search refused, no trial was run: hydra.sweeper.study_name=other2" in proc.stderr
    assert "hydra.sweep.dir" in proc.stderr
    assert not (sweep / BEST_FILE).exists() and len(trials(sweep)) == 0
    assert (sweep / "trial_0000" / "results.json").read_bytes() == before


def _composing():
    from hydra import initialize_config_dir

    return initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")


@pytest.mark.parametrize(
    ("params", "grid", "refused"),
    [
        ({"likelihood": "choice(bernoulli, gaussian)"}, [], "likelihood=bernoulli,gaussian"),
        (
            {"likelihood": "choice(gaussian, continuous_bernoulli, bernoulli)"},
            [],
            "likelihood=gaussian,continuous_bernoulli,bernoulli",
        ),  # fmt: skip
        ({"data.preprocess": "choice(dequantize, scale)"}, [], "data.preprocess=dequantize,scale"),
        ({"likelihood": "choice(gaussian, laplace)"}, [], None),  # one kind: comparable
        ({"beta": "interval(0.5, 2)"}, ["likelihood=bernoulli,gaussian"], None),  # a grid axis
    ],
)
def test_a_search_over_kinds_of_data_is_refused(params, grid, refused):
    """likelihood=choice(bernoulli,gaussian) ranked a Bernoulli ELBO of binarised images
    against a Gaussian ELBO of dequantised grey levels (numbers of different data, which the
    table and figures never compare): refused before any trial, suggesting a grid axis."""
    from vaesweep.sweep.search.checks import check_space_values

    plan = Plan(parse_space(params, ["data=digits", *grid]), "val/elbo", "maximize", 2, 1, "",
                "search", 1.0, Path("."), ())  # fmt: skip
    config = _multirun_config({})
    example = {k: p.example() for k, p in plan.space.searched.items()}
    with _composing():
        if refused is None:
            check_space_values(config, plan, example)
            return
        with pytest.raises(SearchError, match="gives trials of different data") as e:
            check_space_values(config, plan, example)
    key = next(iter(params))
    assert str(e.value).startswith(f"hydra.sweeper.params.{key}=choice(")
    assert f"make {key} a grid axis, one study per kind of data ({refused})" in str(e.value)


@pytest.mark.parametrize(
    ("params", "grid"),
    [
        ({"data": "choice(digits, mnist)"}, []),  # the same likelihood and preprocessing
        ({"data": "choice(mnist, mnist_small)"}, ["likelihood=bernoulli,gaussian"]),
        ({"beta": "interval(0.5, 2)", "data": "choice(digits, fashion_mnist)"}, []),
        ({"data.val_size": "choice(100, 300)"}, ["data=digits"]),  # other validation examples
    ],
)
def test_a_search_over_datasets_is_refused(params, grid):
    """data=choice(...) ranked an ELBO of one dataset against another's (and the results
    frame refuses to collect the two together): refused before any trial, one search per
    dataset suggested, whatever else is searched and at every grid point."""
    from vaesweep.sweep.search.checks import check_space_values

    plan = Plan(parse_space(params, grid), "val/elbo", "maximize", 2, 1, "", "search", 1.0,
                Path("."), ())  # fmt: skip
    config = _multirun_config({})
    example = {k: p.example() for k, p in plan.space.searched.items()}
    key = "data" if "data" in params else "data.val_size"
    first, second = params[key].removeprefix("choice(").removesuffix(")").split(", ")
    with _composing(), pytest.raises(SearchError, match="gives trials of different data") as e:
        check_space_values(config, plan, example)
    message = str(e.value)
    assert message.startswith(f"hydra.sweeper.params.{key}={params[key]}"), message
    if key == "data":
        assert f"data={first}: {first}, " in message and f"data={second}: {second}, " in message
    else:
        assert f"data.val_size={first}: digits (data.val_size={first}), " in message
    assert f"per dataset and split ({key}={first}, then {key}={second})" in message
    assert "vaesweep collect refuses runs of two datasets or splits together" in message


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "continuous_bernoulli"])
@pytest.mark.parametrize("preprocess", ["auto", "binarize", "dequantize", "scale"])
def test_a_searchs_kind_of_data_is_the_tables(likelihood, preprocess):
    """The search tells kinds of data apart by the rule of the results table and figures."""
    import pandas as pd
    from hydra import compose

    from vaesweep.analysis.figures.kinds import data_kind as table_kind
    from vaesweep.sweep.search.checks import data_kind

    with _composing():
        cfg = compose("train", [f"likelihood={likelihood}", f"data.preprocess={preprocess}"])
    row = pd.Series({"config.likelihood.name": cfg.likelihood.name,
                     "config.likelihood._target_": cfg.likelihood.get("_target_"),
                     "config.data.preprocess": preprocess})  # fmt: skip
    assert data_kind(cfg) == table_kind(row)


class _StoppingLauncher(_RecordingLauncher):
    """As _RecordingLauncher, until a trial of ``stop_at`` (a grid point's text): then it
    stops the search (as a signal or a failure would), writing nothing."""

    def __init__(self, sweep_dir: Path, stop_at: str | None = None):
        super().__init__(sweep_dir)
        self.stop_at = stop_at

    def launch(self, overrides: list[list[str]], initial_job_idx: int) -> None:
        if self.stop_at is not None and any(self.stop_at in o for o in overrides[0]):
            raise KeyboardInterrupt("stopped")
        super().launch(overrides, initial_job_idx)


def test_a_stopped_relaunch_keeps_every_study_in_best_json(tmp_path):
    """A relaunch of a grid of studies stopped in its first study wrote best.json with that
    study alone: the second study's best trial, found by the first launch, was dropped."""
    from vaesweep.sweep.search.driver import run_search

    config = _multirun_config({"n_trials": 1, "params": {"beta": "interval(1.0, 4.0)"}})
    config.hydra.sweep.dir = str(tmp_path)
    grid = ["likelihood=gaussian,laplace"]
    with _composing():  # as in Hydra's multirun, which composes the trials' configs
        run_search(config, _StoppingLauncher(tmp_path), grid, None, None)
    first = json.loads((tmp_path / BEST_FILE).read_text())
    assert [b["study"] for b in first] == ["search[likelihood=gaussian]", "search[likelihood=laplace]"]  # fmt: skip
    config.hydra.sweeper.n_trials = 2
    with _composing(), pytest.raises(KeyboardInterrupt):
        run_search(config, _StoppingLauncher(tmp_path, "likelihood=gaussian"), grid, None, None)
    again = json.loads((tmp_path / BEST_FILE).read_text())
    assert [b["study"] for b in again] == [b["study"] for b in first]
    assert [b["n_running"] for b in again] == [1, 0]  # the stopped trial, to run again
    assert again[1]["best"] == first[1]["best"]


def test_a_search_with_an_unfinished_trial_does_not_succeed(tmp_path):
    """A trial whose process died (results.json still running, no live claim) left the
    search printing "Continue this sweep" and exiting 0: as in a grid, it is not done (the
    sweep exits 1; the same command runs the trial again). Failed trials are not that."""
    from vaesweep.sweep.search.best import write_best
    from vaesweep.sweep.search.driver import finish_search

    (tmp_path / "sweep.json").write_text(json.dumps({"grid": {"beta": "float"}, "n_jobs": 3}))
    for name, result in (("trial_0000", _result(1.5)), ("trial_0001", _result(2.5, "failed"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(result))
    best = {"trial": 0, "value": -1.5, "params": {"beta": 1.5}, "dir": "trial_0000",
            "overrides": ["beta=1.5"], "command": "python -m vaesweep beta=1.5"}  # fmt: skip
    record = {"study": "search", "objective": "val/elbo", "direction": "maximize",
              "n_completed": 1, "n_failed": 1, "n_running": 0, "best": best}  # fmt: skip
    write_best(tmp_path, [record])
    assert finish_search(tmp_path) is True  # a failed trial is the search's own outcome
    (tmp_path / "trial_0002").mkdir()
    (tmp_path / "trial_0002" / "results.json").write_text(json.dumps(_result(3.5, "running")))
    write_best(tmp_path, [{**record, "n_running": 1}])
    assert finish_search(tmp_path) is False


def test_a_half_proposed_trial_is_not_counted_in_best_json(tmp_path):
    """A trial cut short while the sampler proposed it is told FAIL and never run: it is
    not one of the study's trials, nor a failed one, in best.json and the printed line."""
    import optuna

    from vaesweep.sweep.search.best import best_trial, format_best

    space = parse_space({"beta": "interval(0.1, 10)", "seed": "choice(0, 1)"}, [])
    plan = Plan(space, "val/elbo", "maximize", 1, 1, "", "search", 1.0, tmp_path, ())
    study = optuna.create_study(direction="maximize", study_name="search")
    study.ask().suggest_float("beta", 0.1, 10)  # cut short before "seed"
    dists = {k: p.distribution() for k, p in space.searched.items()}
    ((number, _),) = _next_batch(study, plan, [], dists, set())
    study.tell(number, -80.0)
    record = best_trial(study, plan, [])
    assert (record["n_trials"], record["n_completed"], record["n_failed"]) == (1, 1, 0)
    assert format_best([record]).startswith("search: 1 completed, 0 failed; best")


# -- a journal write cut short (disk full, power loss) -----------------------------------------


def _journal_lines(n: int) -> bytes:
    return b"".join(
        json.dumps({"op_code": 0, "n": i, "pad": "x" * 900}).encode() + b"\n" for i in range(n)
    )


@pytest.mark.parametrize("torn_size", [1, 70_000])  # within the last read chunk, and beyond it
def test_a_torn_journal_tail_is_moved_aside_under_optunas_lock(tmp_path, torn_size):
    from vaesweep.sweep.search.storage import mend_journal

    journal = tmp_path / JOURNAL_FILE
    whole = _journal_lines(100)
    torn = (b'{"op_code":6,"worker_id":"' + b"w" * torn_size)[:torn_size]
    journal.write_bytes(whole + torn)
    (note,) = mend_journal(journal)
    assert journal.read_bytes() == whole
    (saved,) = tmp_path.glob(f"{JOURNAL_FILE}.torn-*")
    assert saved.read_bytes() == torn
    assert f"its {torn_size} bytes were moved to {saved.name}" in note and "cut short" in note
    assert not (tmp_path / f"{JOURNAL_FILE}.lock").exists()  # Optuna's lock was released
    assert mend_journal(journal) == []  # a journal that ends in a whole entry is left alone
    assert journal.read_bytes() == whole


@pytest.mark.parametrize("torn", [b"", b'{"op_co'])
@pytest.mark.parametrize("bad", ["joined", b"null\n", b"[]\n", b"{}\n", b"\n"])
def test_a_last_journal_line_that_is_not_an_entry_is_moved_aside(tmp_path, torn, bad):
    """An append joined to a torn line (as vaesweep left it before it mended journals), or an
    edit: JSON that is not an object with an op_code, an empty line."""
    from vaesweep.sweep.search.storage import mend_journal

    journal = tmp_path / JOURNAL_FILE
    whole = _journal_lines(3)
    if bad == "joined":
        bad = b'{"op_code":6,"work' + whole.splitlines(keepends=True)[-1]
    journal.write_bytes(whole + bad + torn)
    (note,) = mend_journal(journal)
    assert journal.read_bytes() == whole
    (saved,) = tmp_path.glob(f"{JOURNAL_FILE}.damaged-*")
    assert saved.read_bytes() == bad + torn and "not an entry" in note


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (b"{}\n", "line 2 is not an entry of Optuna's journal"),
        (b'{"op_code": 1\n', "line 2 is not JSON: Expecting ',' delimiter at column 15"),
    ],
)
def test_a_journal_line_before_the_last_that_is_not_an_entry_is_refused(tmp_path, bad, why):
    import optuna

    journal = tmp_path / JOURNAL_FILE
    optuna.create_study(storage=open_storage(str(journal)), study_name="first")
    first = journal.read_bytes()
    journal.write_bytes(first + bad + first.replace(b"first", b"second"))
    with pytest.raises(SearchError, match=f"{JOURNAL_FILE} cannot be read: {why}"):
        open_storage(str(journal))


def test_a_journal_with_no_complete_line_is_emptied_and_an_empty_one_left_alone(tmp_path):
    from vaesweep.sweep.search.storage import mend_journal

    journal = tmp_path / JOURNAL_FILE
    journal.write_bytes(b'{"op_code":0,"worker')
    assert len(mend_journal(journal)) == 1
    (saved,) = tmp_path.glob(f"{JOURNAL_FILE}.torn-*")
    assert saved.read_bytes() == b'{"op_code":0,"worker'
    assert journal.read_bytes() == b""
    assert mend_journal(journal) == []
    assert mend_journal(tmp_path / "absent.log") == []


_HOLD_LOCK = """
import sys, time
from optuna.storages.journal import JournalFileSymlinkLock
lock = JournalFileSymlinkLock(sys.argv[1])
lock.acquire()
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def test_mending_waits_for_a_live_holder_of_the_journal_lock(tmp_path):
    from vaesweep.sweep.search.storage import mend_journal

    journal = tmp_path / JOURNAL_FILE
    journal.write_bytes(_journal_lines(2) + b'{"op')
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(journal), "2"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        started = time.monotonic()
        assert len(mend_journal(journal)) == 1
        assert time.monotonic() - started > 1.5  # it waited for the holder's release
        assert holder.wait(timeout=30) == 0  # which released the lock and ended by itself
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert journal.read_bytes() == _journal_lines(2)


_MEND_TIMED = """
import json, sys, time
from pathlib import Path
from vaesweep.sweep.search import storage
storage.STALE_LOCK_S = float(sys.argv[2])
started = time.monotonic()
notes = storage.mend_journal(Path(sys.argv[1]))
print(json.dumps([time.time(), time.monotonic() - started, notes]))
"""

_FOREIGN_LOCKS = {
    # vaesweep before aba6fe1 gave Optuna a relative journal path: a killed search left a
    # lock whose relative target resolves beside the link, to nothing.
    "relative, old": ("sweep/optuna_journal.log", -60.0),
    "relative, young": ("sweep/optuna_journal.log", -24.0),  # removed once 30 s old
    "dated ahead of this clock": ("sweep/optuna_journal.log", 3600.0),  # watched 30 s
    "to the journal of a copied sweep": ("ORIGINAL", -60.0),
}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.slow)
        if c in ("relative, young", "dated ahead of this clock")
        else c
        for c in _FOREIGN_LOCKS
    ],
)
def test_a_lock_that_does_not_lead_to_the_journal_is_removed(tmp_path, monkeypatch, case):
    """Optuna judges a lock by its target: it waits forever for a dangling one (its stale check
    stats the target) and for as long as another journal is written. Such a lock is removed
    once as old as Optuna's grace period, by its date or by how long it was watched. The
    grace period is cut to 6 s in the mending process for the case it must watch."""
    target, offset = _FOREIGN_LOCKS[case]
    grace = 6.0 if offset > 0 else 30.0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep").mkdir()
    journal = Path("sweep") / JOURNAL_FILE
    journal.write_bytes(_journal_lines(2))
    if target == "ORIGINAL":  # the sweep this one was copied from: its journal exists
        (tmp_path / "original").mkdir()
        target = str(tmp_path / "original" / JOURNAL_FILE)
        Path(target).write_bytes(_journal_lines(2))
    lock = tmp_path / "sweep" / f"{JOURNAL_FILE}.lock"
    os.symlink(target, lock)  # as Optuna made it
    dated = time.time() + offset
    os.utime(lock, (dated, dated), follow_symlinks=False)
    # In a process of its own: before the fix this waited forever, spinning.
    mend = subprocess.run(
        [sys.executable, "-c", _MEND_TIMED, str(journal), str(grace)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert mend.returncode == 0, mend.stderr[-3000:]
    ended, waited, (note,) = json.loads(mend.stdout)
    assert f"removed {lock}" in note and repr(target) in note
    assert not lock.is_symlink()
    if offset == -60.0:
        assert waited < 1.0  # old enough at once
    elif offset < 0:
        assert grace <= ended - dated < grace + 4  # removed when it was 30 s old
    else:
        assert grace <= waited < grace + 4  # watched for the grace period
        assert "removed in" in mend.stderr  # said so when it began to wait
    assert journal.read_bytes() == _journal_lines(2)


@pytest.mark.slow
def test_a_search_whose_last_journal_write_was_cut_short_goes_on(workdir):
    """The first launch's last journal entry (trial 0 told COMPLETE) is cut in half, as a full
    disk leaves it. Before, the relaunch joined its first entry to the torn line and the
    journal could never be read again ("sweep stopped: JSONDecodeError")."""
    args = [*SEARCH, BETA]
    first = run_cli([*args, "hydra.sweeper.n_trials=1"], workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = workdir / "sweep"
    journal = sweep / JOURNAL_FILE
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    assert json.loads(data[last:])["trial_id"] == 0  # trial 0's result, told to Optuna
    torn = data[last : last + (len(data) - last) // 2]
    journal.write_bytes(data[:last] + torn)
    (sweep / "sweep.json").write_bytes(b'{"search": {')  # the search's record damaged too
    result = (sweep / "trial_0000" / "results.json").read_bytes()

    again = run_cli([*args, "hydra.sweeper.n_trials=2"], workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    (saved,) = sweep.glob(f"{JOURNAL_FILE}.torn-*")
    assert saved.read_bytes() == torn
    assert f"moved to {saved.name}" in again.stderr
    (record,) = sweep.glob("sweep.json.damaged-*")
    assert record.read_bytes() == b'{"search": {' and record.name in again.stderr
    assert json.loads((sweep / "sweep.json").read_text())["search"]["n_trials"] == 2
    final = trials(sweep)
    assert [(t.number, t.state.name) for t in final] == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert (sweep / "trial_0000" / "results.json").read_bytes() == result  # not trained again
    assert final[0].value == pytest.approx(json.loads(result)["metrics"]["val/elbo"])
    for line in journal.read_bytes().splitlines():
        json.loads(line)

    # Two search sweeps in one frame, one damaged later (an edit): the figures skip the damaged
    # one's, naming the line, and draw the other's, named after its sweep.
    import shutil

    import pandas as pd

    from vaesweep.analysis.figures import FigureSkipped
    from vaesweep.analysis.figures.search import search_plan

    other = shutil.copytree(sweep, workdir / "other")
    twin = shutil.copytree(sweep, workdir / "elsewhere" / "sweep")  # the damaged one's name
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:2]) + b"{damaged\n" + b"".join(lines[2:]))
    plan = search_plan(pd.DataFrame({"sweep_dir": [str(sweep), str(other), str(twin)]}))
    assert sorted(plan) == [
        "optimization_history_other",
        "optimization_history_sweep",
        "optimization_history_sweep_2",
        "param_importances_other",
        "param_importances_sweep_2",
    ]
    with pytest.raises(FigureSkipped, match="line 3 is not JSON"):
        plan["optimization_history_sweep"]()
    assert len(plan["optimization_history_other"]().axes) == 1


@pytest.mark.parametrize("where", [pytest.param("last", marks=pytest.mark.slow), "middle"])
def test_a_journal_line_that_is_not_json(workdir, where):
    """An append joined to a torn line (as vaesweep left it before it mended journals). As the
    last line Optuna skipped it without a word and failed after the next append: it is moved
    aside and the search runs. In the middle Optuna cannot read past it: the search is
    refused before any trial, naming the line."""
    sweep = workdir / "sweep"
    sweep.mkdir()
    journal = sweep / JOURNAL_FILE
    import optuna

    optuna.create_study(storage=open_storage(str(journal)), study_name="elsewhere")
    lines = journal.read_bytes().count(b"\n")
    joined = b'{"op_code":6,"work' + journal.read_bytes().splitlines(keepends=True)[-1]
    with open(journal, "ab") as f:
        f.write(joined)
        if where == "middle":  # a later entry after it
            f.write(journal.read_bytes().splitlines(keepends=True)[0].replace(b"elsewhere", b"x"))
    proc = run_cli([*SEARCH, BETA, "hydra.sweeper.n_trials=1"], workdir, timeout=120)
    if where == "last":
        assert proc.returncode == 0, proc.stderr[-3000:]
        (saved,) = sweep.glob(f"{JOURNAL_FILE}.damaged-*")
        assert saved.read_bytes() == joined and saved.name in proc.stderr
        assert [t.state.name for t in trials(sweep)] == ["COMPLETE"]
        return
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "search refused, no trial was run" in proc.stderr
    assert f"{Path('sweep') / JOURNAL_FILE} cannot be read: line {lines + 1} is not JSON" in (
        proc.stderr
    )
    assert "is not JSON: Expecting ':' delimiter at column 21, by an edit" in proc.stderr
    assert not list(sweep.glob("trial_*"))


# -- lightning-hydra-template's hparams_search file --------------------------------------------
LHT_FILE = CONF_DIR / "hparams_search" / "lht_optuna.yaml"
DOCS = REPO / "docs" / "search.md"
VERBATIM = "<!-- src/vaesweep/conf/hparams_search/lht_optuna.yaml, verbatim: tests/test_search.py checks it -->"


def test_docs_show_the_shipped_lht_file_verbatim():
    text = DOCS.read_text()
    assert VERBATIM in text
    block = text.split(VERBATIM, 1)[1].split("```yaml\n", 1)[1].split("```\n", 1)[0]
    assert block == LHT_FILE.read_text()


def test_a_config_dir_file_hydra_would_never_read_is_refused(tmp_path):
    """Hydra reads the package's config tree before --config-dir: a user's file of the same
    group and name would be silently replaced by the package's."""
    from vaesweep.sweep.search.checks import check_shadowed

    (tmp_path / "hparams_search").mkdir()
    theirs = tmp_path / "hparams_search" / "lht_optuna.yaml"
    config = _multirun_config({})
    config.hydra.runtime.choices = {"hparams_search": "lht_optuna", "hydra/sweeper": "optuna"}
    config.hydra.runtime.config_sources = [
        {"path": str(tmp_path), "schema": "file", "provider": "command-line"}
    ]
    theirs.write_bytes(LHT_FILE.read_bytes())
    check_shadowed(config)  # the same file: nothing lost
    theirs.write_text(LHT_FILE.read_text().replace("n_trials: 20", "n_trials: 5"))
    with pytest.raises(SearchError, match="is never read.*rename yours"):
        check_shadowed(config)


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
    "a choice a run refuses": (
        [BETA, "hydra.sweeper.params.n_samples=choice(1, 0)", "likelihood=gaussian,laplace"],
        [
            "hydra.sweeper.params.n_samples=choice(1, 0) includes n_samples=0 at the grid "
            "point likelihood=gaussian, which a run refuses: n_samples=0 is invalid: allowed an "
            "integer ≥ 1",
        ],
    ),
    "val/loss over beta": (
        [BETA, "hydra.sweeper.objective=val/loss"],
        ["hydra.sweeper.objective=val/loss with beta searched", "allowed: val/elbo"],
    ),
    "a search over kinds of data": (
        [BETA, "hydra.sweeper.params.likelihood=choice(bernoulli, gaussian)"],
        [
            "hydra.sweeper.params.likelihood=choice(bernoulli, gaussian) gives trials of "
            "different data (likelihood=bernoulli: binarised data; likelihood=gaussian: "
            "dequantised data)",
            "make likelihood a grid axis, one study per kind of data",
        ],
    ),
    "a sampler config that builds no sampler": (
        [
            BETA,
            "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",
            "++hydra.sweeper.sampler._partial_=true",
        ],
        ["hydra.sweeper.sampler: _target_=optuna.samplers.GridSampler with _partial_=True"],
    ),
    "a conditional search space": (
        [BETA, "hydra.sweeper.params.beta_schedule=choice(constant, capacity)"],
        ["hydra.sweeper.params.beta=float[0.1, 10.0] log is read only at some values"],
    ),
    "a pruner that would never prune": (
        [BETA, "hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner}"],
        ["hydra.sweeper.pruner=optuna.pruners.MedianPruner", "run to completion", "null"],
    ),
    # Every trial trained, then failed: none reported val/elbo.
    "a val/ objective of trials that never validate": (
        [BETA, "trainer.check_val_every_n_epoch=2"],  # (TINY: max_epochs=1)
        [
            "hydra.sweeper.objective=val/elbo: with trainer.check_val_every_n_epoch=2 > "
            "trainer.max_epochs=1 the trials never validate",
            "allow_test_objective=true",
        ],
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


def test_a_search_whose_sampler_exhausts_its_space_exits_0(workdir):
    """The reviewer's case: BruteForceSampler over every point of the space exited 1 with
    'sweep stopped: RuntimeError: Study.stop is supposed to be invoked ...' once the last
    trial had completed."""
    proc = run_cli([*SEARCH, "hydra.sweeper.n_trials=2", "hydra.sweeper.params.beta=choice(0.5, 2)",
                    "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler"], workdir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RuntimeError" not in proc.stderr
    assert [t.state.name for t in trials(workdir / "sweep")] == ["COMPLETE", "COMPLETE"]


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
    # The relaunch numbers its jobs by trial (it said "job 1/4" for trial 2), and the
    # table has the objective.
    told = re.findall(r"job (\d+)/4 completed", proc.stdout + proc.stderr)
    assert told == [str(n + 1) for n in range(4) if f"trial_{n:04d}" not in before], told
    assert "val/elbo" in (sweep / "summary.csv").read_text().splitlines()[0].split(",")
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


# A process killed while it writes the journal: its write went through and it blocks in
# Optuna's lock release, as if the kill had landed between the two.
_KILLED_IN_A_JOURNAL_WRITE = """
import time
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileSymlinkLock

from vaesweep.sweep.search.storage import check_storage, open_storage, storage_location

def stuck(lock):
    print("holding", flush=True)
    time.sleep(600)

JournalFileSymlinkLock.release = stuck
journal = storage_location(None, Path("sweep"))
check_storage(journal)
storage = open_storage(journal)
optuna.create_study(storage=storage, study_name="killed while writing")
"""


@pytest.mark.slow
def test_a_search_killed_inside_a_journal_write_does_not_block_the_next_launch(workdir):
    """The journal path is relative (hydra.sweep.dir=sweep, run from the workdir) as users
    write it. Before the journal's path was made absolute, Optuna's lock symlink dangled and
    the relaunch waited forever (found when the killed-search test's SIGKILL landed there)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _KILLED_IN_A_JOURNAL_WRITE],
        cwd=workdir,
        env=cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "holding\n"
    finally:
        holder.kill()
        holder.wait()
    lock = workdir / "sweep" / f"{JOURNAL_FILE}.lock"
    assert lock.is_symlink()  # the killed process's lock is left behind
    started = time.monotonic()
    proc = run_cli([*SEARCH, "hydra.sweeper.n_trials=2", BETA], workdir, timeout=150)
    waited = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Forcibly releasing the lock file" in proc.stderr  # Optuna's grace period (30 s)
    assert waited > 30
    assert not lock.exists() and not lock.is_symlink()
    final = trials(workdir / "sweep")
    assert [t.state.name for t in final] == ["COMPLETE", "COMPLETE"]
    assert [d.name for d in trial_dirs(workdir / "sweep")] == ["trial_0000", "trial_0001"]


@pytest.fixture(scope="module")
def failing_search(tmp_path_factory) -> Path:
    """4 trials in batches of 2 (local_parallel): a batch larger than the training split
    fails once the data are loaded, and the seeded random sampler proposes it for trials 1
    and 3."""
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
            "hydra.sweeper.params.data.batch_size=choice(64, 5000)",
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
    assert meta["search"]["n_jobs"] == 2 and meta["launcher"].endswith("LocalParallelLauncher")
    assert set(meta["grid"]) == {"beta", "optimizer.lr", "data.batch_size"}


@pytest.mark.slow
def test_collect_and_figures_on_a_search(failing_search, tmp_path):
    out = tmp_path / "runs.csv"
    proc = vaesweep(["collect", str(failing_search), "-o", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    import pandas as pd

    df = pd.read_csv(out)
    assert len(df) == 4
    for column in ("beta", "optimizer.lr", "data.batch_size"):  # the trial params are columns
        assert column in df.columns
    assert sorted(df["status"]) == ["completed", "completed", "failed", "failed"]
    figures = tmp_path / "figures"
    proc = vaesweep(["figures", str(failing_search), "--out", str(figures)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("optimization_history", "param_importances"):
        assert (figures / f"{name}.pdf").exists() and (figures / f"{name}.png").exists()


# -- lightning-hydra-template's file, for real ---------------------------------------------------
LHT_BUDGET = [*TINY, "logger=none", "threads=1", "hydra.sweep.dir=sweep"]


def start(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m vaesweep ARGS`` in its own session (a signal to its process group is what
    Ctrl-C in a terminal sends); output in cwd/out-<n>.log."""
    log_path = cwd / f"out-{len(list(cwd.glob('out-*.log')))}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vaesweep", *args],
            cwd=cwd,
            env={**cli_env(), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.log_path = log_path
    return proc


def output(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text()


def finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def stop_at(proc: subprocess.Popen, marker: Path, name: str, timeout: float = 180) -> int:
    """Waits until ``proc`` is held at its pause point, sends it the signal (SIGINT to its
    process group, as Ctrl-C does; any other to the process) and returns its exit status."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before the pause:\n{output(proc)[-3000:]}")
        assert time.monotonic() < deadline, "the pause point was never reached"
        time.sleep(0.02)
    signum = getattr(signal, name)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    return finish(proc)


def check_stopped(proc: subprocess.Popen, rc: int, sweep: Path, name: str) -> None:
    """Exit 128 + the signal, no traceback, the summary naming the signal; every trial that
    ran is completed or interrupted."""
    out = output(proc)
    assert rc == 128 + getattr(signal, name), out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert f"Sweep stopped by {name}" in out, out[-3000:]
    assert json.loads((sweep / "sweep.json").read_text())["stopped_by"] == name
    for path in sweep.glob("trial_*/results.json"):
        assert json.loads(path.read_text())["status"] in ("completed", "interrupted"), path


def _run_elsewhere(tmp_path: Path, command: list[str], *extra: str):
    """best.json's ``command`` (plus ``extra`` overrides) run from a new directory,
    ``tmp_path/elsewhere``: (that directory, the completed process)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, *command[1:], *extra],
        cwd=elsewhere,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return elsewhere, proc


@pytest.mark.slow
def test_lht_file_in_a_config_dir_stops_continues_and_its_best_trial_reproduces(tmp_path):
    """The shipped file as a user's own (in a --config-dir, under another name: Hydra would
    read the package's file of the same name first), run as the issue ran it, from its own
    directory: Ctrl-C between two trials stops it cleanly, the same command continues it to
    n_trials, and best.json's command, run from another directory, trains the best trial
    again to exactly its metrics."""
    conf = tmp_path / "conf"
    (conf / "hparams_search").mkdir(parents=True)
    (conf / "hparams_search" / "mnist_vae.yaml").write_bytes(LHT_FILE.read_bytes())
    launch = tmp_path / "launch"
    launch.mkdir()
    args = [
        "--config-dir",
        "../conf",
        "-m",
        "hparams_search=mnist_vae",
        *LHT_BUDGET,
        "hydra.sweeper.n_trials=3",
    ]
    sweep, marker = launch / "sweep", launch / "paused"
    proc = start(args, launch, env=pause_env("between_trials@1", marker))
    check_stopped(proc, stop_at(proc, marker, "SIGINT"), sweep, "SIGINT")
    assert [t.state.name for t in trials(sweep)] == ["COMPLETE"]

    proc = start(args, launch)
    assert finish(proc) == 0, output(proc)[-3000:]
    final = trials(sweep)
    assert [t.number for t in final] == [0, 1, 2]
    assert {t.state.name for t in final} == {"COMPLETE"}
    meta = json.loads((sweep / "sweep.json").read_text())["search"]
    assert (meta["objective"], meta["direction"]) == ("val/elbo", "maximize")  # optimized_metric
    assert set(meta["params"]) == {
        "optimizer.lr",
        "data.batch_size",
        "model.hidden.0",
        "model.latent_dim",
    }
    (best,) = json.loads((sweep / BEST_FILE).read_text())
    command = shlex.split(best["best"]["command"])
    assert command[:5] == ["python", "-m", "vaesweep", "--config-dir", str(conf)]
    assert command[-1] == "hydra.mode=RUN" and "hparams_search=mnist_vae" in command
    assert best["best"]["command"] in output(proc)

    elsewhere, again = _run_elsewhere(tmp_path, command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (elsewhere / "outputs" / "multirun").exists()  # one run, not a search
    (result,) = (json.loads(p.read_text()) for p in elsewhere.rglob("results.json"))
    trial = json.loads((sweep / best["best"]["dir"] / "results.json").read_text())
    assert result["metrics"] == trial["metrics"]
    assert result["config"] == trial["config"]


SEARCHPATH_PRESET = """\
# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /logger: none
optimized_metric: val/elbo
hydra:
  sweeper:
    n_trials: 1
    params:
      optimizer.lr: interval(0.0001, 0.01)
"""


@pytest.mark.slow
def test_a_search_preset_found_through_hydra_searchpath_runs_and_its_best_reproduces(tmp_path):
    """A search preset in a directory given by ``hydra.searchpath`` (a relative file://
    path, as lightning-hydra-template users add their own config directory): the search's
    checks compose its trials with the launch's Hydra overrides, as Hydra's sweeper does
    (they composed without them: "Could not find 'hparams_search/mine'", no trial run), and
    best.json's command carries the search path, made absolute, so that it trains the best
    trial again from another directory, to exactly its metrics."""
    (tmp_path / "conf" / "hparams_search").mkdir(parents=True)
    (tmp_path / "conf" / "hparams_search" / "mine.yaml").write_text(SEARCHPATH_PRESET)
    launch = tmp_path / "launch"
    launch.mkdir()
    args = ["-m", "hydra.searchpath=[file://../conf]", "hparams_search=mine", *TINY]
    proc = run_cli([*args, "hydra.sweep.dir=sweep"], launch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "does not compose" not in proc.stderr
    (best,) = json.loads((launch / "sweep" / BEST_FILE).read_text())
    command = shlex.split(best["best"]["command"])
    conf = (tmp_path / "conf").resolve()
    assert command[:4] == ["python", "-m", "vaesweep", f"hydra.searchpath=[file://{conf}]"]
    assert command[-1] == "hydra.mode=RUN" and "hparams_search=mine" in command

    elsewhere, again = _run_elsewhere(tmp_path, command, "hydra.run.dir=one")
    assert again.returncode == 0, again.stderr[-3000:]
    result = json.loads((elsewhere / "one" / "results.json").read_text())
    trial = json.loads((launch / "sweep" / best["best"]["dir"] / "results.json").read_text())
    assert result["metrics"] == trial["metrics"]
    assert result["config"] == trial["config"]


def test_the_entry_command_quotes_a_search_path_hydra_would_split():
    """A searchpath entry with a comma or a space is quoted for Hydra's override grammar, and
    the override parses back to the same absolute entries."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    entries = [
        "file:///a b,c/conf",
        "pkg://my.pkg",
        "file:///tmp/dätä",  # unquoted, Hydra's grammar takes ASCII letters only
        "file:///tmp/a\\b",
        "file:///tmp/it's",
        "file:///tmp/end\\",
        "file:///tmp/[x]=y",
    ]
    config = OmegaConf.create({"hydra": {"searchpath": entries, "job": {}}})
    *_, override = entry_command(config)
    (parsed,) = OverridesParser.create().parse_overrides([override])
    assert parsed.key_or_group == "hydra.searchpath"
    assert parsed.value() == entries


@pytest.mark.slow
def test_lht_file_in_the_config_tree_runs_with_run_py(workdir):
    """``python run.py -m hparams_search=lht_optuna``: the shipped file, a sampler argument
    on the command line too."""
    args = [
        "-m",
        "hparams_search=lht_optuna",
        *LHT_BUDGET,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1",
    ]
    proc = run_cli(args, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [t.state.name for t in trials(workdir / "sweep")] == ["COMPLETE", "COMPLETE"]
    (best,) = json.loads((workdir / "sweep" / BEST_FILE).read_text())
    command = shlex.split(best["best"]["command"])
    assert command[:4] == ["python", "-m", "vaesweep", "hparams_search=lht_optuna"]


# Where a search is stopped: while its checks compose the trials' configs, while Optuna's
# sampler proposes the second trial, while Hydra composes its config, between the first two
# trials, in the second trial (held after its epoch, stopped at its next safe point).
STOPS = [
    ("search_checks", "SIGINT"),
    ("sampler@2", "SIGTERM"),
    ("compose@2", "SIGINT"),
    ("between_trials@1", "SIGTERM"),
    ("epoch_end@2", "SIGINT"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "name"), STOPS, ids=[f"{p}-{n}" for p, n in STOPS])
def test_a_stop_anywhere_in_a_search_is_clean_and_the_relaunch_completes(workdir, point, name):
    args = [*SEARCH, "hydra.sweeper.n_trials=3", BETA]
    sweep, marker = workdir / "sweep", workdir / "paused"
    proc = start(args, workdir, env=pause_env(point, marker))
    check_stopped(proc, stop_at(proc, marker, name), sweep, name)
    if point.startswith("epoch_end"):
        result = json.loads((sweep / "trial_0001" / "results.json").read_text())
        assert result["status"] == "interrupted" and name in result["error"]["message"]
    assert not list(sweep.glob(".stop-*"))

    proc = start(args, workdir)
    assert finish(proc) == 0, output(proc)[-3000:]
    assert "Traceback" not in output(proc)
    final = trials(sweep)
    assert [(t.number, t.state.name) for t in final] == [(i, "COMPLETE") for i in range(3)]
    for t in final:  # each trial ran the values Optuna proposed for it, and reported them
        r = json.loads((sweep / f"trial_{t.number:04d}" / "results.json").read_text())
        assert r["config"]["beta"] == pytest.approx(t.params["beta"])
        assert r["metrics"]["val/elbo"] == pytest.approx(t.value)
    assert json.loads((sweep / "sweep.json").read_text())["stopped_by"] is None


def test_a_moved_or_missing_sqlite_search_is_opened_where_it_is_and_never_created(
    tmp_path, monkeypatch
):
    """A search stored in SQLite: load_studies (the figures) opens the file where it was
    written, beside sweep.json once the sweep was moved, and creates no empty database where
    there is none (Optuna's storage would)."""
    import optuna

    from vaesweep.sweep.search.load import load_studies

    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    record = {"search": {"storage": "sqlite:///opt.db", "studies": ["s"]}}
    (sweep / "sweep.json").write_text(json.dumps(record))
    assert load_studies(sweep) == [] and not (tmp_path / "opt.db").exists()
    study = optuna.create_study(study_name="s", storage="sqlite:///opt.db")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert [len(s.trials) for s in load_studies(sweep)] == [2]  # where it was written
    os.replace(tmp_path / "opt.db", sweep / "opt.db")  # moved with the sweep
    (moved := tmp_path / "moved").mkdir()
    monkeypatch.chdir(moved)
    assert [len(s.trials) for s in load_studies(sweep)] == [2]
    assert not (moved / "opt.db").exists()
