"""A search's options checked into a :class:`Plan`: what to run (space, objective, number of
trials and jobs) and where (storage, study names, trial directories). No config is composed
and no storage opened here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaesweep.run.context import job_dirname
from vaesweep.run.effective import NOT_RESULTS
from vaesweep.sweep.search.metrics import objective_direction
from vaesweep.sweep.search.space import PARAMS_KEY, SYNTAX, SearchError, Space, parse_space
from vaesweep.sweep.search.storage import storage_location

SEARCH_SWEEPER = "hydra_plugins.vaesweep_optuna_sweeper.optuna_sweeper.OptunaSweeper"
DEFAULT_STUDY = "search"
#: The trial's user attr that holds its job directory.
DIR_ATTR = "job_dir"
#: The pruners a search accepts: none (trials report no intermediate values, below).
NO_PRUNERS = ("optuna.pruners.NopPruner",)


def is_search(config: DictConfig) -> bool:
    """Whether this multirun's sweeper is vaesweep's Optuna search."""
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    return sweeper is not None and sweeper.get("_target_") == SEARCH_SWEEPER


@dataclass
class Plan:
    """A checked search: what to run and where."""

    space: Space
    objective: str
    direction: str
    n_trials: int
    n_jobs: int
    storage: str  # a journal file path or an RDB URL
    study_name: str
    max_failure_rate: float
    sweep_dir: Path
    excluded: tuple[str, ...]  # keys that do not change results (kept out of the fingerprint)

    def study(self, point: list[str]) -> str:
        return f"{self.study_name}[{','.join(point)}]" if point else self.study_name

    def fingerprint(self) -> dict[str, Any]:
        fixed = {
            k: v
            for k, v in self.space.fixed.items()
            if not any(k == e or k.startswith(e + ".") for e in self.excluded)
        }
        return {
            "params": {k: p.describe() for k, p in self.space.searched.items()},
            "fixed": dict(sorted(fixed.items())),
            "objective": self.objective,
            "direction": self.direction,
        }

    def trial_dir(self, point: list[str], number: int) -> str:
        name = f"trial_{number:04d}"
        return job_dirname(",".join([*point, name])) if point else name


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SearchError(f"hydra.sweeper.{key}={value}: allowed: an integer ≥ 1")
    return value


def check_pruner(pruner: Any) -> None:
    """Refuses a pruner that would never prune. A trial is a whole job (its own Hydra job,
    in another process with a parallel launcher or SLURM) that Optuna hears of only when it
    has finished (``tell`` with the objective from its results.json): no trial reports
    intermediate values or asks ``should_prune`` while it trains, so MedianPruner,
    HyperbandPruner and the others would be accepted and never stop a trial."""
    if pruner is None:
        return
    target = pruner.get("_target_") if isinstance(pruner, DictConfig) else pruner
    if target in NO_PRUNERS:
        return
    raise SearchError(
        f"hydra.sweeper.pruner={target}: trials run to completion (each is a whole job that "
        "tells Optuna only its final objective), so a pruner would never stop one. "
        f"Allowed: null or {NO_PRUNERS[0]}. To spend less on poor trials, search with a "
        "smaller trainer.max_epochs and train the best trial longer"
    )


def _space(opts: DictConfig, arguments: list[str]) -> Space:
    params = opts.get("params")
    if params is not None and not isinstance(params, DictConfig):
        raise SearchError(f"{PARAMS_KEY}={params}: allowed: a mapping of key to expression")
    params = OmegaConf.to_container(params, resolve=True) if params is not None else {}
    space = parse_space(params, arguments)
    if not space.searched:
        raise SearchError(
            f"{PARAMS_KEY}: nothing to search (no key has a search expression); allowed: {SYNTAX}"
        )
    return space


def plan_search(config: DictConfig, arguments: list[str]) -> Plan:
    """Checks the options and the space of a search (no config composition, no storage)."""
    opts = config.hydra.sweeper
    n_trials = _positive_int("n_trials", opts.get("n_trials"))
    n_jobs = opts.get("n_jobs")
    if n_jobs is None:
        n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None) or 1
    n_jobs = _positive_int("n_jobs", n_jobs)
    rate = opts.get("max_failure_rate", 1.0)
    if not (isinstance(rate, int | float) and 0 <= rate <= 1):
        raise SearchError(f"hydra.sweeper.max_failure_rate={rate}: allowed: a number in [0, 1]")
    check_pruner(opts.get("pruner"))
    space = _space(opts, arguments)
    objective = str(opts.get("objective") or "val/elbo")
    direction = objective_direction(
        objective, opts.get("direction"), bool(opts.get("allow_test_objective"))
    )
    sweep_dir = Path(config.hydra.sweep.dir)
    excluded = OmegaConf.select(
        config, "hydra.job.config.override_dirname.exclude_keys", default=[]
    )
    return Plan(
        space=space,
        objective=objective,
        direction=direction,
        n_trials=n_trials,
        n_jobs=n_jobs,
        storage=storage_location(opts.get("storage"), sweep_dir),
        study_name=str(opts.get("study_name") or DEFAULT_STUDY),
        max_failure_rate=float(rate),
        sweep_dir=sweep_dir,
        excluded=(*map(str, excluded), *NOT_RESULTS),
    )
