"""Search: a resumable Optuna study whose trials are ordinary vaesweep jobs.

``python run.py -m hydra/sweeper=optuna ...`` selects the sweeper of
``hydra_plugins.vaesweep_optuna_sweeper``, which calls :func:`run_search`:

- the search space comes from ``hydra.sweeper.params`` and the command line's overrides
  (:func:`parse_space`): ``interval(a, b)``, ``tag(log, interval(a, b))``,
  ``int(interval(a, b))``, ``choice(...)``, ``range(...)`` are searched; a plain list
  ``a,b,c`` is a grid axis (one study per grid point); anything else is fixed;
- every study lives in one storage in the sweep directory (default: Optuna's journal file
  ``optuna_journal.log``), so the same command continues it: ``n_trials`` is the total per
  study, finished trials are not run again, a trial left ``RUNNING`` by a killed launch is
  run again in its own directory (``trial_0007``), where the job resumes from its
  checkpoint, and a changed search space is refused (it is kept in the study's user attrs);
- each trial is a job launched through ``self.launcher`` in batches of ``n_jobs``; the
  objective is read from the trial's ``results.json`` (default ``val/elbo``, maximised);
  failed and diverged trials are told as FAIL and the search goes on;
- at the end the best trial of every study and its overrides are printed and written to
  ``best.json`` and ``optimization_results.yaml``.

Bad input (an unknown expression, an empty or inverted range, an objective no result will
hold, ``n_trials`` < 1, a storage that cannot be written, a changed search space, a pruner:
trials run to completion, see :func:`check_pruner`) is refused
by :func:`start_search` (from the sweep callback) before any trial runs. Optuna is imported
only inside the functions that need it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from omegaconf import DictConfig, ListConfig, OmegaConf

from vaesweep.record import RESULTS_FILE, write_json_atomic

log = logging.getLogger("vaesweep.search")

SEARCH_SWEEPER = "hydra_plugins.vaesweep_optuna_sweeper.optuna_sweeper.OptunaSweeper"
JOURNAL_FILE = "optuna_journal.log"
BEST_FILE = "best.json"
OPTUNA_RESULTS_FILE = "optimization_results.yaml"
SPACE_ATTR = "vaesweep_search"
DIR_ATTR = "job_dir"
DEFAULT_STUDY = "search"
PARAMS_KEY = "hydra.sweeper.params"
SYNTAX = (
    "interval(a, b), tag(log, interval(a, b)), int(interval(a, b)), "
    "tag(log, int(interval(a, b))), choice(a, b, ...), range(start, stop[, step]), "
    "a,b,... (a grid axis: one study per value) or a single fixed value"
)
#: Every metric a results.json can hold that a search may optimise (README "The math").
VAL_METRICS = ("val/elbo", "val/rec_nll", "val/kl", "val/loss", "val/scale")
TEST_METRICS = (
    "test/nll",
    "test/elbo",
    "test/rec_nll",
    "test/kl",
    "test/bpd",
    "test/mse",
    "test/mae",
    "test/active_units",
    "test/scale_ratio",
)
#: The direction that improves a metric, by its name after the split prefix.
DIRECTIONS = {
    "elbo": "maximize",
    "nll": "minimize",
    "rec_nll": "minimize",
    "bpd": "minimize",
    "loss": "minimize",
    "mse": "minimize",
    "mae": "minimize",
}
SCALE_METRICS = ("val/scale", "test/scale_ratio")


class SearchError(ValueError):
    """A search refused before any trial runs; the message names the key and what is allowed."""


def is_search(config: DictConfig) -> bool:
    """Whether this multirun's sweeper is vaesweep's Optuna search."""
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    return sweeper is not None and sweeper.get("_target_") == SEARCH_SWEEPER


def quote_sweeper_params(argv: list[str]) -> list[str]:
    """``hydra.sweeper.params.KEY=EXPR`` on the command line as Hydra can take it: the key
    added or replaced (``++``: the params of a preset may not have it), the expression
    quoted (Hydra refuses a sweep of its own config keys, ``Sweeping over Hydra's
    configuration is not supported``; for a search it is a plain string)."""
    parser = OverridesParser.create()
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.startswith(PARAMS_KEY + "."):
            try:
                sweep = parser.parse_override(arg).is_sweep_override()
            except Exception:  # reported (with the key) when the search starts
                sweep = value[:1] not in "'\""
            arg = f"++{key}={_quoted(value) if sweep else value}"
        out.append(arg)
    return out


# -- the search space -----------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One searched key and its distribution."""

    key: str  # as in the override (may carry +)
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    @property
    def name(self) -> str:
        return self.key.lstrip("+")

    def distribution(self) -> Any:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step or 1)
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def describe(self) -> str:
        """A canonical text of the distribution (stored with the study, compared on resume)."""
        if self.kind == "categorical":
            return f"choice({', '.join(render(c) for c in self.choices)})"
        text = f"{self.kind}[{self.low!r}, {self.high!r}]"
        if self.step is not None:
            text += f" step {self.step!r}"
        return text + (" log" if self.log else "")

    def example(self) -> Any:
        return self.choices[0] if self.kind == "categorical" else self.low


def render(value: Any) -> str:
    """A parameter value as an override value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


@dataclass
class Space:
    """What a search command asks for: searched keys, grid axes and fixed overrides."""

    searched: dict[str, Param] = field(default_factory=dict)
    grid: dict[str, list[str]] = field(default_factory=dict)  # key → override values
    fixed: dict[str, str] = field(default_factory=dict)  # key → override line

    def points(self) -> list[list[str]]:
        """The overrides of every grid point ([[]] without grid axes)."""
        axes = [[f"{k}={v}" for v in values] for k, values in self.grid.items()]
        return [list(p) for p in itertools.product(*axes)]

    def trial_overrides(self, point: list[str], params: dict[str, Any]) -> list[str]:
        return [
            *self.fixed.values(),
            *point,
            *(f"{self.searched[name].key}={render(v)}" for name, v in params.items()),
        ]


def _refuse(source: str, written: str, problem: str) -> SearchError:
    return SearchError(f"{source}={written}: {problem}; allowed: {SYNTAX}")


def _param(source: str, override: Override) -> Param:
    key = override.get_key_element()
    written = override.input_line.split("=", 1)[1] if override.input_line else ""
    value = override.value()
    if isinstance(value, IntervalSweep):
        unknown = set(value.tags) - {"log"}
        if unknown:
            raise _refuse(source, written, f"unknown tag {sorted(unknown)} (only log)")
        low, high = value.start, value.end
        if not low < high:
            raise _refuse(source, written, f"empty or inverted range [{low}, {high}]")
        log_scale = "log" in value.tags
        if log_scale and low <= 0:
            raise _refuse(source, written, f"a log range needs a positive lower end, got {low}")
        kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
        return Param(key, kind, low, high, log=log_scale)
    if isinstance(value, RangeSweep):
        if value.tags:
            raise _refuse(source, written, f"unknown tag {sorted(value.tags)} on range()")
        values = list(override.sweep_iterator(transformer=Transformer.encode))
        if not values:
            raise _refuse(source, written, "empty or inverted range (no value)")
        if value.shuffle or len(values) == 1:
            return Param(key, "categorical", choices=tuple(values))
        step = abs(value.step)
        kind = "int" if all(isinstance(v, int) for v in values) else "float"
        return Param(key, kind, min(values), max(values), step=step)
    if isinstance(value, ChoiceSweep):
        if value.tags:
            raise _refuse(source, written, f"unknown tag {sorted(value.tags)} on choice()")
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        bad = [c for c in choices if not isinstance(c, str | int | float | bool)]
        if bad:
            raise _refuse(
                source, written, f"choices must be numbers, strings or booleans, got {bad}"
            )
        return Param(key, "categorical", choices=tuple(choices))
    raise _refuse(
        source, written, f"{override.value_type.name.lower()} is not a search distribution"
    )


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": e}}`` (what ``hydra.sweeper.params.optimizer.lr=e`` makes) and
    ``{"optimizer.lr": e}`` (a preset's params) → ``{"optimizer.lr": e}``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict | DictConfig):
            out.update(_flat(dict(value), f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parse_space(params: dict[str, Any] | None, arguments: list[str]) -> Space:
    """The search space of ``hydra.sweeper.params`` (first) and the command line's overrides
    (which win for the same key). Raises SearchError naming the key."""
    parser = OverridesParser.create()
    space = Space()
    items: list[tuple[str, str]] = []
    for key, value in _flat(params or {}).items():
        source = f"{PARAMS_KEY}.{key}"
        if isinstance(value, list | ListConfig):
            raise SearchError(f"{source}: a list is not a search expression; allowed: {SYNTAX}")
        items.append((source, f"{key}={render(value) if not isinstance(value, str) else value}"))
    items += [(arg.split("=", 1)[0], arg) for arg in arguments]
    for source, line in items:
        try:
            override = parser.parse_override(line)
        except Exception as e:
            message = str(e).splitlines()
            detail = next((m for m in message if "while evaluating" in m or "Unknown" in m), "")
            written = line.split("=", 1)[1] if "=" in line else line
            raise _refuse(source, written, f"not a search expression ({detail.strip()})") from None
        name = override.get_key_element().lstrip("+")
        for table in (space.searched, space.grid, space.fixed):
            table.pop(name, None)
        value = override.value() if override.is_sweep_override() else None
        if isinstance(value, ChoiceSweep) and value.simple_form:
            space.grid[name] = list(override.sweep_string_iterator())
        elif override.is_sweep_override():
            space.searched[name] = _param(source, override)
        else:
            space.fixed[name] = override.input_line or line
    return space


# -- options --------------------------------------------------------------------------------


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
        from vaesweep.sweep import job_dirname

        name = f"trial_{number:04d}"
        return job_dirname(",".join([*point, name])) if point else name


def objective_direction(objective: str, direction: Any, allow_test: bool) -> str:
    """The checked direction of an objective (SearchError for a metric no result holds, a
    test metric without the opt-in, or a direction that contradicts the metric)."""
    known = VAL_METRICS + TEST_METRICS
    if objective not in known:
        raise SearchError(
            f"hydra.sweeper.objective={objective}: no result holds this metric; allowed: "
            + ", ".join(known)
        )
    if objective.startswith("test/") and not allow_test:
        raise SearchError(
            f"hydra.sweeper.objective={objective}: choosing hyperparameters on the test split "
            "reports an optimistic test score; use a val/* metric (allowed: "
            + ", ".join(VAL_METRICS)
            + "), or opt in with hydra.sweeper.allow_test_objective=true"
        )
    natural = DIRECTIONS.get(objective.split("/", 1)[1])
    if direction is None:
        if natural is None:
            raise SearchError(
                f"hydra.sweeper.direction=null: {objective} has no natural direction; "
                "allowed: maximize or minimize"
            )
        return natural
    if isinstance(direction, list | ListConfig):
        raise SearchError(
            f"hydra.sweeper.direction={list(direction)}: one objective, one direction; "
            "allowed: maximize or minimize"
        )
    direction = str(direction).lower()
    if direction not in ("maximize", "minimize"):
        raise SearchError(
            f"hydra.sweeper.direction={direction}: allowed: maximize, minimize or null "
            "(from the objective)"
        )
    if natural is not None and direction != natural:
        raise SearchError(
            f"hydra.sweeper.direction={direction} contradicts hydra.sweeper.objective="
            f"{objective}, which improves when it gets {'larger' if natural == 'maximize' else 'smaller'}; "
            f"allowed: {natural} or null"
        )
    return direction


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SearchError(f"hydra.sweeper.{key}={value}: allowed: an integer ≥ 1")
    return value


#: The pruners a search accepts: none (trials report no intermediate values, below).
NO_PRUNERS = ("optuna.pruners.NopPruner",)


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
    params = opts.get("params")
    if params is not None and not isinstance(params, DictConfig):
        raise SearchError(f"{PARAMS_KEY}={params}: allowed: a mapping of key to expression")
    params = OmegaConf.to_container(params, resolve=True) if params is not None else {}
    space = parse_space(params, arguments)
    if not space.searched:
        raise SearchError(
            f"{PARAMS_KEY}: nothing to search (no key has a search expression); allowed: {SYNTAX}"
        )
    objective = str(opts.get("objective") or "val/elbo")
    direction = objective_direction(
        objective, opts.get("direction"), bool(opts.get("allow_test_objective"))
    )
    sweep_dir = Path(config.hydra.sweep.dir)
    excluded = OmegaConf.select(
        config, "hydra.job.config.override_dirname.exclude_keys", default=[]
    )
    from vaesweep.effective import NOT_RESULTS

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


# -- storage --------------------------------------------------------------------------------


def _is_url(storage: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+]*://", storage) is not None


def storage_location(storage: Any, sweep_dir: Path) -> str:
    """The journal file (relative paths inside the sweep directory) or RDB URL of a study."""
    if storage is None or storage == "":
        return str(sweep_dir / JOURNAL_FILE)
    if not isinstance(storage, str):
        raise SearchError(
            f"hydra.sweeper.storage={storage}: allowed: null (a journal in the sweep "
            "directory), a journal file path or an RDB URL such as sqlite:///search.db"
        )
    if _is_url(storage):
        return storage
    path = Path(storage).expanduser()
    return str(path if path.is_absolute() else sweep_dir / path)


def check_storage(storage: str) -> None:
    """SearchError unless the storage can be written (the journal file is created)."""
    path = None
    if not _is_url(storage):
        path = Path(storage)
    elif storage.startswith("sqlite:///"):
        path = Path(storage[len("sqlite:///") :])
    if path is None:
        try:
            open_storage(storage)
        except Exception as e:
            raise SearchError(f"hydra.sweeper.storage={storage}: cannot be opened ({e})") from None
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as e:
        raise SearchError(
            f"hydra.sweeper.storage={storage}: cannot write {path} ({e}); allowed: a writable "
            "journal file path, an RDB URL, or null (a journal in the sweep directory)"
        ) from None


def open_storage(storage: str) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if _is_url(storage):
        return optuna.storages.RDBStorage(storage)
    return optuna.storages.JournalStorage(JournalFileBackend(storage))


def _quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _existing_study(storage: Any, name: str) -> Any:
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _check_unchanged(study: Any, plan: Plan) -> None:
    stored = study.user_attrs.get(SPACE_ATTR)
    wanted = plan.fingerprint()
    if stored is None or stored == wanted:
        return
    changes = [
        f"{part}: {stored.get(part)} → {wanted[part]}"
        for part in wanted
        if stored.get(part) != wanted[part]
    ]
    raise SearchError(
        f"hydra.sweeper.params: the study {study.study_name!r} in {plan.storage} was started "
        f"with another search ({'; '.join(changes)}). Its trials would mix two searches: "
        "run the original command to continue it, or start a new sweep directory "
        "(another hydra.sweep.dir) for the new search"
    )


def _study(storage: Any, plan: Plan, point: list[str], sampler: Any, pruner: Any) -> Any:
    import optuna

    name = plan.study(point)
    existing = _existing_study(storage, name)
    if existing is not None:
        _check_unchanged(existing, plan)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=plan.direction,
        load_if_exists=True,
    )
    if existing is None:
        study.set_user_attr(SPACE_ATTR, plan.fingerprint())
        study.set_user_attr("grid_point", point)
    return study


# -- checks before any trial ------------------------------------------------------------------


def check_configs(config: DictConfig, plan: Plan) -> None:
    """Composes one job per grid point (searched keys at an example value) and refuses keys
    that change nothing, grid points that compute the same thing, and an objective that
    these jobs will not report."""
    from hydra import compose

    from vaesweep.config import resolve_preprocess
    from vaesweep.effective import check_distinct, check_overrides

    example = {k: p.example() for k, p in plan.space.searched.items()}
    jobs = [plan.space.trial_overrides(point, example) for point in plan.space.points()]
    try:
        configs = [compose(config.hydra.job.config_name, overrides=job) for job in jobs]
    except Exception as e:
        raise SearchError(f"the trials' config does not compose: {e}") from None
    for cfg in configs:
        if plan.objective == "test/bpd" and resolve_preprocess(cfg) != "dequantize":
            raise SearchError(
                f"hydra.sweeper.objective=test/bpd: bits/dim are reported only for "
                f"dequantised data, and likelihood={cfg.likelihood.name} has "
                f"{resolve_preprocess(cfg)}d data; allowed: {', '.join(VAL_METRICS[:4])}"
            )
        if plan.objective in SCALE_METRICS and cfg.likelihood.get("scale") is None:
            raise SearchError(
                f"hydra.sweeper.objective={plan.objective}: likelihood={cfg.likelihood.name} "
                f"has no scale; allowed: {', '.join(VAL_METRICS[:4])}"
            )
    refusal = check_overrides(jobs[0], configs)  # every job has the same keys
    if refusal is None and len(jobs) > 1:
        refusal = check_distinct(list(zip(jobs, configs, strict=True)))
    if refusal:
        raise SearchError(refusal)


def _check_studies(plan: Plan) -> None:
    """A changed search space is refused before anything runs (existing studies only)."""
    if not _is_url(plan.storage) and not Path(plan.storage).stat().st_size:
        return
    _quiet_optuna()
    storage = open_storage(plan.storage)
    for point in plan.space.points():
        study = _existing_study(storage, plan.study(point))
        if study is not None:
            _check_unchanged(study, plan)


def start_search(config: DictConfig) -> None:
    """The sweep callback's start of a search: every check, then sweep.json. Exits with
    status 2, naming the key, when the search is refused."""
    from vaesweep.sweep import SWEEP_FILE, read_sweep

    try:
        plan = plan_search(config, list(config.hydra.overrides.task))
        check_configs(config, plan)
        check_storage(plan.storage)
        _check_studies(plan)
    except SearchError as e:
        print(f"[vaesweep] search refused, no trial was run: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    previous = read_sweep(plan.sweep_dir) or {}
    record = {
        "sweep_dir": str(plan.sweep_dir.resolve()),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        # The summary's columns: grid axes and searched keys.
        "grid": {**plan.space.grid, **{k: p.describe() for k, p in plan.space.searched.items()}},
        "n_jobs": plan.n_trials * len(plan.space.points()),
        "overrides": list(config.hydra.overrides.task),
        "launcher": config.hydra.launcher.get("_target_"),
        "created_at": previous.get("created_at") or _now(),
        "launched_at": [*previous.get("launched_at", []), _now()],
        "jobs": previous.get("jobs", []),
    }
    record["search"] = {
        "objective": plan.objective,
        "direction": plan.direction,
        "n_trials": plan.n_trials,
        "n_jobs": plan.n_jobs,
        "storage": plan.storage,
        "studies": [plan.study(p) for p in plan.space.points()],
        "params": {k: p.describe() for k, p in plan.space.searched.items()},
        "grid": plan.space.grid,
    }
    write_json_atomic(plan.sweep_dir / SWEEP_FILE, record)


# -- the search -----------------------------------------------------------------------------


def read_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def settle(study: Any, number: int, result: dict[str, Any] | None, objective: str) -> str | None:
    """Tells Optuna the outcome of one trial from its results.json; returns the state told
    (COMPLETE | FAIL), or None for a trial with no final result (left RUNNING, resumed by
    the next launch)."""
    from optuna.trial import TrialState

    status = (result or {}).get("status")
    if status == "completed":
        value = (result.get("metrics") or {}).get(objective)
        if value is not None and math.isfinite(float(value)):
            study.tell(number, float(value))
            return "COMPLETE"
        log.warning("trial %d: %s missing or not finite: told as failed", number, objective)
        study.tell(number, state=TrialState.FAIL)
        return "FAIL"
    if status in ("failed", "diverged"):
        study.tell(number, state=TrialState.FAIL)
        return "FAIL"
    return None


_FINISHED = ("COMPLETE", "FAIL", "PRUNED")


def _run_study(study: Any, plan: Plan, point: list[str], launcher: Any, job_idx: int) -> int:
    """Runs one study to n_trials trials in total; returns the next job index."""
    from optuna.trial import TrialState

    dists = {k: p.distribution() for k, p in plan.space.searched.items()}
    unsettled: set[int] = set()
    while True:
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        finished = [t for t in trials if t.state.name in _FINISHED]
        batch = [(t.number, dict(t.params)) for t in running if t.number not in unsettled]
        batch = batch[: plan.n_jobs]
        n_new = min(plan.n_jobs - len(batch), plan.n_trials - len(finished) - len(running))
        for _ in range(max(0, n_new)):
            trial = study.ask(dists)
            trial.set_user_attr(DIR_ATTR, plan.trial_dir(point, trial.number))
            batch.append((trial.number, trial.params))
        if not batch:
            return job_idx
        dirs = [plan.trial_dir(point, number) for number, _ in batch]
        overrides = [
            [*plan.space.trial_overrides(point, params), f"hydra.sweep.subdir={_quoted(d)}"]
            for (_, params), d in zip(batch, dirs, strict=True)
        ]
        resumed = [n for n, _ in batch if any(t.number == n for t in running)]
        if resumed:
            log.info("%s: running again trials %s (left unfinished)", study.study_name, resumed)
        launcher.launch(overrides, initial_job_idx=job_idx)
        job_idx += len(batch)
        failed = 0
        for (number, _), d in zip(batch, dirs, strict=True):
            state = settle(
                study, number, read_result(plan.sweep_dir / d / RESULTS_FILE), plan.objective
            )
            if state is None:
                unsettled.add(number)
            failed += state == "FAIL"
        if failed / len(batch) > plan.max_failure_rate:
            raise RuntimeError(
                f"{failed} of {len(batch)} trials of a batch failed "
                f"(hydra.sweeper.max_failure_rate={plan.max_failure_rate}): search stopped"
            )


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def run_search(
    config: DictConfig, launcher: Any, arguments: list[str], sampler: Any, pruner: Any
) -> list[dict[str, Any]]:
    """The sweeper's ``sweep``: every study of the search to n_trials; returns the best
    trials (also in best.json)."""
    plan = plan_search(config, arguments)
    check_storage(plan.storage)
    _quiet_optuna()
    storage = open_storage(plan.storage)
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, plan.sweep_dir / "multirun.yaml")
    job_idx = 0
    studies = []
    for point in plan.space.points():
        study = _study(storage, plan, point, sampler, pruner)
        job_idx = _run_study(study, plan, point, launcher, job_idx)
        studies.append((point, study))
    best = [best_trial(study, plan, point) for point, study in studies]
    write_best(plan.sweep_dir, best)
    return best


def best_trial(study: Any, plan: Plan, point: list[str]) -> dict[str, Any]:
    """The best trial of a study as a record for best.json (``best`` null without any
    completed trial)."""
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "FAIL", "RUNNING")}
    record: dict[str, Any] = {
        "study": study.study_name,
        "grid_point": point,
        "objective": plan.objective,
        "direction": plan.direction,
        "storage": plan.storage,
        "n_trials": len(trials),
        "n_completed": counts["COMPLETE"],
        "n_failed": counts["FAIL"],
        "n_running": counts["RUNNING"],
        "best": None,
    }
    if counts["COMPLETE"]:
        t = study.best_trial
        record["best"] = {
            "trial": t.number,
            "value": t.value,
            "params": t.params,
            "dir": t.user_attrs.get(DIR_ATTR, plan.trial_dir(point, t.number)),
            "overrides": plan.space.trial_overrides(point, t.params),
        }
    return record


def write_best(sweep_dir: Path, best: list[dict[str, Any]]) -> None:
    write_json_atomic(sweep_dir / BEST_FILE, best)
    # Hydra's Optuna sweeper writes this file (one study: name, best_params, best_value).
    yaml = [
        {
            "name": "optuna",
            "study": b["study"],
            "best_params": b["best"]["params"] if b["best"] else None,
            "best_value": b["best"]["value"] if b["best"] else None,
        }
        for b in best
    ]
    OmegaConf.save(
        OmegaConf.create(yaml[0] if len(yaml) == 1 else yaml), sweep_dir / OPTUNA_RESULTS_FILE
    )


def format_best(best: list[dict[str, Any]]) -> str:
    lines = []
    for b in best:
        head = f"{b['study']}: {b['n_completed']} completed, {b['n_failed']} failed"
        if b["n_running"]:
            head += f", {b['n_running']} unfinished"
        if b["best"] is None:
            lines.append(f"{head}; no completed trial")
            continue
        best = b["best"]
        lines.append(
            f"{head}; best {b['objective']} = {best['value']:.6g} ({b['direction']}) "
            f"in {best['dir']}:\n  python run.py " + shlex.join(best["overrides"])
        )
    return "\n".join(lines)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def finish_search(sweep_dir: Path, stopped_by: str | None = None) -> bool:
    """The sweep callback's end of a search: summary.csv and the table (as for a grid),
    then the best trial of every study; True when every study has a completed trial."""
    from vaesweep.sweep import finish_sweep

    finish_sweep(sweep_dir, stopped_by=stopped_by)
    best = read_result(sweep_dir / BEST_FILE)
    if not best:
        return False
    print(f"Search {sweep_dir} ({BEST_FILE}):\n{format_best(best)}\n", flush=True)
    return all(b["best"] is not None for b in best)


def load_studies(sweep_dir: str | Path) -> list[Any]:
    """The Optuna studies of a search directory (from its sweep.json), [] for a grid."""
    record = read_result(Path(sweep_dir) / "sweep.json") or {}
    search = record.get("search")
    if not search:
        return []
    storage = search["storage"]
    if not _is_url(storage):  # a journal: where it was written, or beside sweep.json
        beside = Path(sweep_dir) / Path(storage).name
        order = (Path(storage), beside) if Path(storage).is_absolute() else (beside,)
        found = [p for p in order if p.is_file()]
        if not found:
            return []
        storage = str(found[0])
    import optuna

    _quiet_optuna()
    opened = open_storage(storage)
    out = []
    for name in search.get("studies", []):
        try:
            out.append(optuna.load_study(study_name=name, storage=opened))
        except KeyError:
            continue
    return out
