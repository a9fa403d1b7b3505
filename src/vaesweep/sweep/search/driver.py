"""A search from start to end: the sweep callback's start (every refusal, then sweep.json),
the sweeper's sweep (every study to n_trials, then best.json) and the callback's end (the
summary, then the best trials)."""

from __future__ import annotations

import hashlib
import sys
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from vaesweep.core.atomic import atomic_open, write_json_atomic
from vaesweep.core.helpers import now
from vaesweep.run.context import SWEEP_FILE, previous_sweep, sweep_record_lock
from vaesweep.run.record import COMPLETED, DIVERGED, FAILED, sweep_results
from vaesweep.sweep.grid import compose_job, finish_sweep, launch_command
from vaesweep.sweep.search.best import BEST_FILE, best_trial, format_best, read_best, write_best
from vaesweep.sweep.search.checks import (
    check_configs,
    check_shadowed,
    check_studies,
    study_configs,
)
from vaesweep.sweep.search.plan import Plan, adopt_sweeper, check_sampler, plan_search
from vaesweep.sweep.search.space import SearchError
from vaesweep.sweep.search.storage import check_storage, open_storage, quiet_optuna
from vaesweep.sweep.search.studies import existing_study, open_study
from vaesweep.sweep.search.trials import run_study, stop_if_signalled


def _sweep_record(config: DictConfig, plan: Plan, previous: dict[str, Any]) -> dict[str, Any]:
    """sweep.json of a search: as for a grid (its columns: grid axes and searched keys), and
    the search's own part."""
    searched = {k: p.describe() for k, p in plan.space.searched.items()}
    return {
        "sweep_dir": str(plan.sweep_dir.resolve()),
        "command": launch_command(),
        # The summary's columns: grid axes and searched keys.
        "grid": {**plan.space.grid, **searched},
        "n_jobs": plan.n_trials * len(plan.space.points()),
        "overrides": list(config.hydra.overrides.task),
        "launcher": config.hydra.launcher.get("_target_"),
        "created_at": previous.get("created_at") or now(),
        "launched_at": [*previous.get("launched_at", []), now()],
        "jobs": previous.get("jobs", []),
        "search": {
            "objective": plan.objective,
            "direction": plan.direction,
            "n_trials": plan.n_trials,
            "n_jobs": plan.n_jobs,
            "storage": plan.storage,
            # Recorded by its studies with the directory's path: a moved directory keeps it.
            "id": (previous.get("search") or {}).get("id") or uuid.uuid4().hex,
            "studies": [plan.study(p) for p in plan.space.points()],
            "params": searched,
            "grid": plan.space.grid,
        },
    }


def start_search(config: DictConfig) -> None:
    """The sweep callback's start of a search: every check, then sweep.json. Exits with
    status 2, naming the key, when the search is refused."""
    try:
        adopt_sweeper(config)  # lightning-hydra-template's _target_: this search
        check_shadowed(config)
        plan = plan_search(config, list(config.hydra.overrides.task))
        check_sampler(config.hydra.sweeper)
        check_configs(config, plan)
        study_samplers(config, None, plan)  # the sampler resolved at every grid point
        check_storage(plan.storage)
        check_studies(plan)
    except SearchError as e:
        print(f"[vaesweep] search refused, no trial was run: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    with sweep_record_lock(plan.sweep_dir):
        previous = previous_sweep(plan.sweep_dir)
        write_json_atomic(plan.sweep_dir / SWEEP_FILE, _sweep_record(config, plan, previous))


def run_search(
    config: DictConfig, launcher: Any, arguments: list[str], sampler: Any, pruner: Any
) -> list[dict[str, Any]]:
    """The sweeper's ``sweep``: every study of the search to n_trials; returns the best
    trials (also in best.json, written too when a signal stops the search: SweepStopped
    propagates to the entry point, which writes the summary)."""
    plan = plan_search(config, arguments)
    plan.configs = study_configs(config, plan)  # what each study's trials compute
    stop_if_signalled()
    check_storage(plan.storage)
    quiet_optuna()
    storage = open_storage(plan.storage)
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(plan.sweep_dir / "multirun.yaml", "wb") as f:  # as Hydra's sweepers do
        f.write(OmegaConf.to_yaml(config).encode("utf-8"))
    studies: list[tuple[list[str], Any]] = []
    samplers = study_samplers(config, sampler, plan)
    try:
        for index, point in enumerate(plan.space.points()):
            stop_if_signalled()
            study = open_study(storage, plan, point, samplers, pruner)
            studies.append((point, study))
            # Job k of the search is trial k - 1 of its study, after the earlier studies'
            # n_trials: the numbering a relaunch continues.
            run_study(study, plan, point, launcher, index * plan.n_trials)
    finally:  # the best trials so far, also when the search stopped
        best = _write_best(plan, storage, dict((",".join(p), s) for p, s in studies))
    return best


def _write_best(plan: Plan, storage: Any, opened: dict[str, Any]) -> list[dict[str, Any]]:
    """best.json: the best trial of every study of the search that the storage holds, those
    this launch did not reach too (a launch stopped, or failed, before a study's turn keeps
    what earlier launches found). ``opened``: the studies this launch opened, by grid
    point."""
    try:
        best = []
        for point in plan.space.points():
            study = opened.get(",".join(point)) or existing_study(storage, plan.study(point))
            if study is not None:
                best.append(best_trial(study, plan, point))
        write_best(plan.sweep_dir, best)
    except Exception as e:  # never hides what stopped the search
        print(f"[vaesweep] {BEST_FILE} not written: {type(e).__name__}: {e}", file=sys.stderr)
        return []
    return best


def _interpolates(conf: Any) -> bool:
    """Whether a config node (or a value) holds an interpolation (``${seed}``)."""
    container = OmegaConf.to_container(conf, resolve=False) if OmegaConf.is_config(conf) else conf
    if isinstance(container, dict):
        return any(_interpolates(v) for v in container.values())
    if isinstance(container, list):
        return any(_interpolates(v) for v in container)
    return isinstance(container, str) and "${" in container


def point_sampler_conf(config: DictConfig, plan: Plan, point: list[str]) -> dict[str, Any]:
    """The sampler's config (``hydra.sweeper.sampler``, resolved) of the study of one grid
    point: its interpolations (``seed: ${seed}``) resolved against the config of that grid
    point's trials (the search's fixed overrides and the point's, composed by Hydra), as a
    search of that grid point alone resolves them against its launching config. The
    launching config of a search with grid axes lacks the axes' values (Hydra applies them
    per job): resolved there, ``${seed}`` with ``seed=1,2,3`` was the default seed for every
    study."""
    conf = config.hydra.sweeper.sampler
    if not point or not _interpolates(conf):
        return OmegaConf.to_container(conf, resolve=True)
    job = compose_job(config, [*plan.space.fixed.values(), *point])
    root = OmegaConf.create(OmegaConf.to_container(job, resolve=False))
    with open_dict(root):  # the launching config's hydra node (the sampler's own config)
        root.hydra = OmegaConf.to_container(config.hydra, resolve=False)
    try:
        return OmegaConf.to_container(root.hydra.sweeper.sampler, resolve=True)
    except Exception as e:
        raise SearchError(
            f"hydra.sweeper.sampler={OmegaConf.to_container(conf, resolve=False)}: cannot be "
            f"resolved at the grid point {' '.join(point)} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); allowed: interpolations of keys "
            "that the trials' config has"
        ) from None


def study_samplers(config: DictConfig, sampler: Any, plan: Plan) -> Any:
    """The samplers of each study, as a function of (study name, trial number) that gives
    the sampler proposing that study's trials from that one on (a study's
    :class:`~vaesweep.sweep.search.studies.TrialSampler` asks it for its first trial in a
    launch, and for any trial whose predecessor another launch proposed).

    Every study gets samplers of its own: Optuna's samplers keep per-study state, and TPE
    (the default) refuses a second study. A study's trial 0 is proposed by the configured
    sampler as a search of its grid point alone configures it (:func:`point_sampler_conf`:
    seeded with that point's seed by default, ``seed`` a grid axis included), so the same
    command proposes the same trials and a study proposes what it would in a search of its
    grid point alone, the other studies notwithstanding. A seeded sampler restarts its
    random stream on every launch: any other trial number gets the sampler seeded from
    (its seed, study, trial number) instead, the same for the same command and the same
    point of resumption, and unique in the study, so a relaunch, or two launches at once,
    never propose another launch's points again. ``sampler``: the sweeper's instance of the
    configured sampler, resolved against the launching config (None: Optuna's default, made
    anew for every study).
    """
    from hydra.utils import instantiate

    if config.hydra.sweeper.get("sampler") is None:
        return sampler
    launching = OmegaConf.to_container(config.hydra.sweeper.sampler, resolve=True)
    confs = {plan.study(p): point_sampler_conf(config, plan, p) for p in plan.space.points()}
    unused = [sampler]  # the sweeper's own instance serves the first study that asks

    def make(study: str, number: int) -> Any:
        conf = confs.get(study, launching)
        seed = conf.get("seed")
        seeded = isinstance(seed, int) and not isinstance(seed, bool)
        if number == 0 or not seeded:
            if conf == launching and unused:
                return unused.pop()
            return instantiate(conf)
        digest = hashlib.sha256(f"{seed}:{study}:{number}".encode()).digest()
        return instantiate({**conf, "seed": int.from_bytes(digest[:4], "big")})

    return make


def finish_search(sweep_dir: Path, stopped_by: str | None = None) -> bool:
    """The sweep callback's end of a search: summary.csv and the table (as for a grid),
    then the best trial of every study; True when every study has a completed trial and no
    trial is left unfinished (a trial whose process died, its results.json still running:
    as a grid's killed job, the sweep exits 1 and the same command runs it again; failed
    trials are the search's own outcome, told to Optuna). The objective is a column of the
    table, next to the status."""
    best = read_best(sweep_dir)
    objectives = list(dict.fromkeys(b["objective"] for b in best or [] if b.get("objective")))
    finish_sweep(sweep_dir, stopped_by=stopped_by, metrics=objectives, search=True)
    if not best:
        return False
    print(f"Search {sweep_dir} ({BEST_FILE}):\n{format_best(best)}\n", flush=True)
    # As the table lists them (a claim another live launch held was waited for).
    unfinished = [
        r for r in sweep_results(sweep_dir) if r["status"] not in (COMPLETED, FAILED, DIVERGED)
    ]
    return all(b["best"] is not None for b in best) and not unfinished
