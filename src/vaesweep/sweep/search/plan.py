"""A search's options checked into a :class:`Plan`: what to run (space, objective, number of
trials and jobs) and where (storage, study names, trial directories). No config is composed
and no storage opened here."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from vaesweep.core.helpers import override_value
from vaesweep.core.launchers import jobs_at_once
from vaesweep.run.claims import DEFAULT_TIMEOUT_S
from vaesweep.run.config import CONF_DIR, CONFIG_NAME
from vaesweep.run.context import job_dirname
from vaesweep.run.record import NOT_RESULTS
from vaesweep.sweep.search.metrics import objective_direction
from vaesweep.sweep.search.space import PARAMS_KEY, SYNTAX, SearchError, Space, parse_space
from vaesweep.sweep.search.storage import quiet_optuna, storage_location

SEARCH_SWEEPER = "hydra_plugins.vaesweep_optuna_sweeper.optuna_sweeper.OptunaSweeper"
#: Hydra's own Optuna sweeper (hydra-optuna-sweeper, optuna<3), which lightning-hydra-template's
#: hparams_search files name: with hydra/sweeper=optuna, vaesweep's search runs them.
HYDRA_OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
DEFAULT_STUDY = "search"
DEFAULT_OBJECTIVE = "val/elbo"
#: lightning-hydra-template's name for the objective: a top-level key of the config.
OPTIMIZED_METRIC = "optimized_metric"
#: The trial's user attr that holds its job directory.
DIR_ATTR = "job_dir"
#: The pruners a search accepts: none (trials report no intermediate values, below).
NO_PRUNERS = ("optuna.pruners.NopPruner",)


def is_search(config: DictConfig) -> bool:
    """Whether this multirun's sweeper is vaesweep's Optuna search (or names Hydra's own
    Optuna sweeper, which :func:`adopt_sweeper` replaces with it or refuses)."""
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    return sweeper is not None and sweeper.get("_target_") in (
        SEARCH_SWEEPER,
        HYDRA_OPTUNA_SWEEPER,
    )


def adopt_sweeper(config: DictConfig) -> None:
    """``hydra.sweeper._target_`` naming Hydra's own Optuna sweeper (what a
    lightning-hydra-template ``hparams_search`` file writes) is vaesweep's search when
    ``hydra/sweeper=optuna`` selected vaesweep's config: the target is set to vaesweep's
    sweeper in ``config`` (the multirun's config, before Hydra instantiates the sweeper).
    Under another ``hydra/sweeper`` choice it is refused (SearchError)."""
    target = OmegaConf.select(config, "hydra.sweeper._target_")
    if target != HYDRA_OPTUNA_SWEEPER:
        return
    choice = OmegaConf.select(config, "hydra.runtime.choices", default={}).get("hydra/sweeper")
    if choice != "optuna":
        raise SearchError(
            f"hydra.sweeper._target_={target}: Hydra's Optuna sweeper plugin is not installed "
            "(it needs optuna<3); vaesweep's search is selected by `override /hydra/sweeper: "
            f"optuna` in the config's defaults (or hydra/sweeper=optuna), not hydra/sweeper="
            f"{choice}; with it, the _target_ line may stay or go"
        )
    with open_dict(config.hydra.sweeper):
        config.hydra.sweeper._target_ = SEARCH_SWEEPER


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
    objective_key: str = "hydra.sweeper.objective"  # where the objective was set
    # The command that runs one job of this config (python -m vaesweep [--config-dir ...]).
    entry: tuple[str, ...] = ("python", "-m", "vaesweep")
    # sweep.claim_timeout_s: when a claim on a trial's directory is another live launch's.
    claim_timeout_s: float = DEFAULT_TIMEOUT_S
    # What the trials of each study compute (study name → checks.computed_config), once the
    # trials' configs are composed (checks.study_configs): part of the fingerprint.
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def study(self, point: list[str]) -> str:
        return f"{self.study_name}[{','.join(point)}]" if point else self.study_name

    def studies(self) -> list[str]:
        """The name of every study of the search, one per grid point."""
        return [self.study(point) for point in self.space.points()]

    def fingerprint(self, study: str | None = None) -> dict[str, Any]:
        """The search a study is started with (stored with it, compared on resume): the
        searched distributions, the fixed overrides that change results, the objective and
        direction, and what the study's trials compute (``config``: every key a trial reads
        that can change its numbers, as composed, from the command line, presets and config
        files alike) where it is known (:attr:`configs`)."""
        fixed = {k: v for k, v in self.space.fixed.items() if self.changes_results(k)}
        out = {
            "params": {k: p.describe() for k, p in self.space.searched.items()},
            "fixed": dict(sorted(fixed.items())),
            "objective": self.objective,
            "direction": self.direction,
        }
        if study in self.configs:
            out["config"] = self.configs[study]
        return out

    def changes_results(self, key: str) -> bool:
        """Whether an override of ``key`` can change a trial's numbers (not a key of where
        and how it runs and logs, nor one its directory names leave out): the keys the
        fingerprint compares."""
        return not any(key == e or key.startswith(e + ".") for e in self.excluded)

    def proposed(self, trial: Any) -> bool:
        """Whether Optuna proposed a value for every searched key of ``trial`` (not so for a
        trial whose launch was killed while the sampler proposed it: never run, never
        counted)."""
        return set(self.space.searched) <= set(trial.params)

    def trial_dir(self, point: list[str], number: int) -> str:
        name = f"trial_{number:04d}"
        return job_dirname(",".join([*point, name])) if point else name

    def reproduce(self, point: list[str], params: dict[str, Any]) -> list[str]:
        """The command that trains this trial's configuration as one run, from any
        directory: its overrides (a preset that selects the search included: it may set
        more than the sweeper), ``hydra.mode=RUN`` (one job, whatever the preset's
        ``hydra.mode``), without the sweep's own keys (``sweep.resume``, ...)."""
        overrides = [
            o
            for o in self.space.trial_overrides(point, params)
            if _key(o) != "sweep" and not _key(o).startswith("sweep.")
        ]
        return [*self.entry, *overrides, "hydra.mode=RUN"]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def entry_command(config: DictConfig) -> tuple[str, ...]:
    """``python -m vaesweep`` with the config sources this multirun was started with: its
    ``--config-dir`` (absolute), a ``--config-path`` other than the package's config tree,
    a ``--config-name`` other than train, and its ``hydra.searchpath`` (relative ``file://``
    entries made absolute: a trial's preset may be found only there)."""
    command = ["python", "-m", "vaesweep"]
    sources = OmegaConf.select(config, "hydra.runtime.config_sources", default=[]) or []
    for source in sources:
        if source.get("schema") != "file":
            continue
        if source.get("provider") == "command-line":
            command += ["--config-dir", str(source.get("path"))]
        elif source.get("provider") == "main":
            path = Path(str(source.get("path"))).resolve()
            if path != CONF_DIR:
                command += ["--config-path", str(path)]
    name = OmegaConf.select(config, "hydra.job.config_name", default=None)
    if name and name != CONFIG_NAME:
        command += ["--config-name", str(name)]
    searchpath = OmegaConf.select(config, "hydra.searchpath", default=None) or []
    if searchpath:
        command.append(f"hydra.searchpath=[{','.join(map(_search_entry, searchpath))}]")
    return tuple(command)


def _search_entry(entry: str) -> str:
    """One ``hydra.searchpath`` entry for a command run from any directory: a relative
    ``file://`` path made absolute, quoted for Hydra's override grammar where needed."""
    entry = str(entry)
    if entry.startswith("file://"):
        entry = "file://" + str(Path(entry[len("file://") :]).resolve())
    return override_value(entry)


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


def check_sampler(opts: DictConfig) -> None:
    """SearchError unless ``hydra.sweeper.sampler`` builds an Optuna sampler (from its
    ``_target_`` and arguments, as Hydra will build it): an unknown argument or class is
    named before any trial runs, and so is a config that builds something else (a class
    that is not a sampler, or ``_partial_: true``, which builds a function of the
    arguments left out)."""
    conf = opts.get("sampler")
    if conf is None:
        return
    if not isinstance(conf, DictConfig) or conf.get("_target_") is None:
        raise SearchError(
            f"hydra.sweeper.sampler={conf}: allowed: null or a mapping with _target_ (an "
            "Optuna sampler class) and its constructor's arguments"
        )
    import optuna
    from hydra.utils import instantiate

    quiet_optuna()  # an experimental argument (multivariate=true) is taken without a warning
    try:
        built = instantiate(conf)
    except Exception as e:
        cause = e.__cause__ or e
        raise SearchError(
            f"hydra.sweeper.sampler: {conf.get('_target_')} cannot be built from "
            f"{OmegaConf.to_container(conf, resolve=True)} ({type(cause).__name__}: "
            f"{str(cause).splitlines()[0] if str(cause) else ''}); allowed: its "
            "constructor's arguments (the Optuna documentation of the class lists them)"
        ) from None
    if not isinstance(built, optuna.samplers.BaseSampler):
        partial = conf.get("_partial_")
        raise SearchError(
            f"hydra.sweeper.sampler: _target_={conf.get('_target_')}"
            + (f" with _partial_={partial}" if partial is not None else "")
            + f" builds a {type(built).__name__}, not an Optuna sampler; allowed: _target_ "
            "a subclass of optuna.samplers.BaseSampler (optuna.samplers.TPESampler, "
            "RandomSampler, GridSampler, ...) with its constructor's arguments, and no "
            "_partial_ (or _partial_: false)"
        )


def _objective(config: DictConfig, opts: DictConfig) -> tuple[str, str]:
    """(the objective, the key that set it): ``hydra.sweeper.objective``, else the config's
    ``optimized_metric`` (lightning-hydra-template's name), else val/elbo. Both set to two
    metrics is refused."""
    objective = opts.get("objective")
    metric = config.get(OPTIMIZED_METRIC)
    if objective is not None and metric is not None and str(objective) != str(metric):
        raise SearchError(
            f"hydra.sweeper.objective={objective} and {OPTIMIZED_METRIC}={metric} name two "
            f"objectives; a search optimises one: set one of them ({OPTIMIZED_METRIC} is "
            "lightning-hydra-template's name for hydra.sweeper.objective)"
        )
    if objective is not None:
        return str(objective), "hydra.sweeper.objective"
    if metric is not None:
        return str(metric), OPTIMIZED_METRIC
    return DEFAULT_OBJECTIVE, "hydra.sweeper.objective"


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


def _check_option_keys(opts: DictConfig) -> None:
    """Refuses a key of ``hydra.sweeper`` the sweeper does not read (``+hydra.sweeper.KEY``
    gets past Hydra's schema), and Hydra's Optuna sweeper's search-space keys, which it
    does not support, saying what to write instead."""
    from hydra_plugins.vaesweep_optuna_sweeper.optuna_sweeper import OptunaSweeperConf

    for key in ("custom_search_space", "search_space"):
        value = opts.get(key)
        if value is not None:
            what = (
                "a Python function defining the space (Hydra's Optuna sweeper)"
                if key == "custom_search_space"
                else "Hydra's deprecated form of params"
            )
            raise SearchError(
                f"hydra.sweeper.{key}={OmegaConf.to_container(opts, resolve=False)[key]}: "
                f"{what}, not supported: vaesweep's sweeper searches the space of "
                "hydra.sweeper.params alone (conditional spaces are refused); allowed: null, "
                f"with each searched key in hydra.sweeper.params ({SYNTAX})"
            )
    known = {f.name for f in fields(OptunaSweeperConf)}
    unknown = sorted(str(k) for k in opts if k not in known)
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(key, sorted(known - {"_target_"}), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise SearchError(
            f"hydra.sweeper.{key}: not an option of the sweeper{hint}; allowed: "
            f"{', '.join(sorted(known - {'_target_', 'custom_search_space', 'search_space'}))}"
        )


def _refuse_given_twice(config: DictConfig, arguments: list[str]) -> None:
    """A key searched twice on the command line, as ``KEY=...`` and as
    ``hydra.sweeper.params.KEY=...``: the first would replace the second silently (a
    preset's ``hydra.sweeper.params`` is replaced by the command line on purpose)."""
    prefix = "hydra.sweeper.params."
    hydra_keys = {
        _key(str(o))[len(prefix) :]
        for o in OmegaConf.select(config, "hydra.overrides.hydra", default=[]) or []
        if _key(str(o)).startswith(prefix)
    }
    for key in sorted(hydra_keys & {_key(a) for a in arguments}):
        raise SearchError(
            f"{key} is given twice on the command line, as {key}=... and as {prefix}{key}=..., "
            f"and the first would replace the second silently; give it once"
        )


def plan_search(config: DictConfig, arguments: list[str]) -> Plan:
    """Checks the options and the space of a search (no config composition, no storage)."""
    opts = config.hydra.sweeper
    _check_option_keys(opts)
    n_trials = _positive_int("n_trials", opts.get("n_trials"))
    n_jobs = opts.get("n_jobs")
    if n_jobs is None:  # the launcher's jobs at once (joblib's -1: every usable core)
        n_jobs = jobs_at_once(OmegaConf.select(config, "hydra.launcher.n_jobs", default=None))
    n_jobs = _positive_int("n_jobs", n_jobs)
    rate = opts.get("max_failure_rate", 1.0)
    if not (isinstance(rate, int | float) and 0 <= rate <= 1):
        raise SearchError(f"hydra.sweeper.max_failure_rate={rate}: allowed: a number in [0, 1]")
    check_pruner(opts.get("pruner"))
    _refuse_given_twice(config, arguments)
    # optimized_metric on the command line is the objective, not a key of the trials.
    space = _space(opts, [a for a in arguments if _key(a) != OPTIMIZED_METRIC])
    size = space.size()
    if size is not None and n_trials > size:
        searched = ", ".join(f"{k}={p.describe()}" for k, p in space.searched.items())
        raise SearchError(
            f"hydra.sweeper.n_trials={n_trials} is more than the {size} distinct points of "
            f"the search space ({searched}): the sampler would propose points again, and each "
            f"would train again to the same result; allowed: n_trials ≤ {size}, or a grid "
            "(-m KEY=a,b,c), which runs each point once"
        )
    objective, objective_key = _objective(config, opts)
    direction = objective_direction(
        objective, opts.get("direction"), bool(opts.get("allow_test_objective")), objective_key
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
        objective_key=objective_key,
        entry=entry_command(config),
        claim_timeout_s=float(
            OmegaConf.select(config, "sweep.claim_timeout_s", default=None) or DEFAULT_TIMEOUT_S
        ),
    )
