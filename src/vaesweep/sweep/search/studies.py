"""One Optuna study per grid point, created or continued in the search's storage; the search
it was started with and the sweep directory it belongs to are kept in its user attrs, and a
changed search, or a launch from another sweep directory, is refused."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaesweep.core.helpers import compared_number
from vaesweep.run.context import read_sweep
from vaesweep.sweep.search.plan import Plan
from vaesweep.sweep.search.space import SearchError, render
from vaesweep.sweep.search.storage import is_url

#: The study's user attr that holds the search it was started with (Plan.fingerprint).
SPACE_ATTR = "vaesweep_search"
#: The study's user attr that holds the sweep directory it belongs to (sweep_identity).
SWEEP_ATTR = "vaesweep_sweep"
#: The part of the fingerprint that holds what the trials compute (Plan.fingerprint).
CONFIG_PART = "config"
ABSENT = "<absent>"


def sweep_identity(plan: Plan) -> dict[str, Any]:
    """The sweep directory of a search as its studies record it: its resolved path (the
    same directory through a symlink or a relative path is the same path) and the search's
    id from its sweep.json (kept when the directory is moved; None before its first
    launch)."""
    try:
        record = read_sweep(plan.sweep_dir) or {}
    except (OSError, ValueError):  # a damaged sweep.json: the path alone
        record = {}
    search = record.get("search") if isinstance(record, dict) else None
    return {
        "dir": str(plan.sweep_dir.resolve()),
        "id": search.get("id") if isinstance(search, dict) else None,
    }


def journal_in_sweep_dir(plan: Plan) -> bool:
    """Whether the storage is a journal inside the sweep directory (the default): another
    hydra.sweep.dir is then another storage."""
    if is_url(plan.storage):
        return False
    return Path(plan.storage).resolve().is_relative_to(plan.sweep_dir.resolve())


def check_owner(study: Any, plan: Plan, here: dict[str, Any] | None = None) -> None:
    """SearchError when ``study`` belongs to another sweep directory than ``plan``'s (its
    recorded path, resolved, and its search id both differ: a moved directory keeps its
    id). Its trials' directories are there: a launch from here would add trials to that
    study, run nothing once it has n_trials, and write a best.json naming directories that
    are not here. A study recorded by an earlier vaesweep (no owner) is taken as this
    directory's. ``here``: :func:`sweep_identity` of the plan, when already read."""
    owner = study.user_attrs.get(SWEEP_ATTR)
    if not isinstance(owner, dict):
        return
    here = here or sweep_identity(plan)
    if owner.get("dir") == here["dir"] or (owner.get("id") and owner.get("id") == here["id"]):
        return
    raise SearchError(
        f"hydra.sweeper.storage={plan.storage}: the study {study.study_name!r} there belongs "
        f"to the sweep directory {owner.get('dir')}, not to this launch's {here['dir']}, "
        "and its trials' directories are there (a relative sqlite:/// path is relative to "
        "the working directory, not to the sweep directory). To continue that search, "
        f"relaunch into its directory (hydra.sweep.dir={owner.get('dir')}); to start a new "
        "search here, choose another hydra.sweeper.study_name or another "
        "hydra.sweeper.storage"
    )


def existing_study(storage: Any, name: str) -> Any:
    """The study ``name`` in an opened storage, None when there is none."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def check_unchanged(study: Any, plan: Plan) -> None:
    """SearchError when ``study`` was started with another search than ``plan``, or by
    something else than a vaesweep search (no fingerprint, and trials: Hydra's own Optuna
    sweeper, an Optuna script). A study without a fingerprint or trials (a launch killed
    between creating it and recording its search) is taken: :func:`open_study` records it."""
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is None:
        _check_vaesweeps(study, plan)
        return
    wanted = plan.fingerprint(study.study_name)
    changes = []
    for part, value in wanted.items():
        if part not in stored:  # recorded by an earlier vaesweep: open_study adds it
            continue
        if part == CONFIG_PART:
            changes += _config_changes(stored[part], value)
        elif stored[part] != value:
            changes.append(f"{part}: {stored[part]} → {value}")
    if not changes:
        return
    elsewhere = (
        " or another hydra.sweep.dir (its own journal)" if journal_in_sweep_dir(plan) else ""
    )
    raise SearchError(
        f"hydra.sweeper.params: the study {study.study_name!r} in {plan.storage} was started "
        f"with another search ({'; '.join(changes)}). Its trials would mix two searches: "
        "run the original command to continue it; for the new search, choose another "
        f"hydra.sweeper.study_name or another hydra.sweeper.storage{elsewhere}"
    )


def _config_changes(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``key: old → new`` for each key of the trials' config whose value differs (numbers
    compared as jobs are: ``1`` and ``1.0`` are one value)."""

    def same(key: str) -> bool:
        old, new = (json.dumps(compared_number(key, c.get(key, ABSENT))) for c in (stored, wanted))
        return old == new and (key in stored) == (key in wanted)

    differ = [k for k in sorted({*stored, *wanted}) if not same(k)]
    if not differ:
        return []
    shown = "; ".join(
        f"{k}: {render(stored.get(k)) if k in stored else ABSENT} → "
        f"{render(wanted.get(k)) if k in wanted else ABSENT}"
        for k in differ[:6]
    ) + ("; ..." if len(differ) > 6 else "")
    return [f"the trials' config (from the command line, a preset or a config file): {shown}"]


def _check_vaesweeps(study: Any, plan: Plan) -> None:
    """SearchError when ``study``, which records no vaesweep search, has trials: another
    tool's (its trials have no directory here, their parameters are not this search's)."""
    trials = study.get_trials(deepcopy=False)
    if not trials:
        return
    raise SearchError(
        f"hydra.sweeper.study_name={plan.study_name}: the study {study.study_name!r} in "
        f"{plan.storage} was not started by a vaesweep search (it records no search, and has "
        f"{len(trials)} trials: Hydra's own Optuna sweeper's or another Optuna script's?), so "
        "its trials are not this search's and their directories are not in the sweep "
        "directory; choose another hydra.sweeper.study_name (or another hydra.sweeper.storage)"
    )


class TrialSampler:
    """A study's sampler that picks, for each trial, the sampler proposing it: the one that
    proposed the trial before it in this launch (its random stream goes on), else a new one
    from ``make(trial number)`` (``driver.study_samplers``: the configured sampler for trial
    0, else one seeded from (seed, study, trial number)). So one launch proposes what the
    same command always proposes, and two launches of one search at once (or relaunched
    together) never share a random stream: a trial whose predecessor another launch
    proposed gets a sampler of its own number, unique in the study. Optuna calls
    ``before_trial`` with the new trial's number before it samples anything; everything else
    goes to the sampler of the current trial."""

    def __init__(self, make: Callable[[int], Any], number: int) -> None:
        self._make = make
        self._sampler = make(number)  # proposes trial ``number`` (the next one asked) ...
        self._next = number  # ... unless another launch asks it first

    def before_trial(self, study: Any, trial: Any) -> None:
        if trial.number != self._next:
            self._sampler = self._make(trial.number)
        self._next = trial.number + 1
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return self._sampler.sample_independent(study, trial, name, distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def __getattr__(self, name: str) -> Any:  # reseed_rng, GridSampler.is_exhausted, ...
        if name.startswith("__") or name in ("_sampler", "_make", "_next"):
            raise AttributeError(name)  # not set yet (copy, pickle): never the sampler's
        return getattr(self._sampler, name)


def open_study(storage: Any, plan: Plan, point: list[str], sampler: Any, pruner: Any) -> Any:
    """The study of one grid point: continued when it exists (and the search is unchanged),
    else created with the search's fingerprint. ``sampler``: a sampler, or a function of
    (study name, trial number) that gives the sampler proposing from that trial on (see
    ``driver.study_samplers``; the study gets a :class:`TrialSampler` of it)."""
    import optuna

    name = plan.study(point)
    existing = existing_study(storage, name)
    here = sweep_identity(plan)
    if existing is not None:
        check_owner(existing, plan, here)
        check_unchanged(existing, plan)
    asked = len(existing.get_trials(deepcopy=False)) if existing is not None else 0
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=TrialSampler(functools.partial(sampler, name), asked)
        if callable(sampler)
        else sampler,
        pruner=pruner,
        direction=plan.direction,
        load_if_exists=True,
    )
    stored = existing.user_attrs.get(SPACE_ATTR) if existing is not None else None
    if stored is None:  # new, or never recorded
        study.set_user_attr(SPACE_ATTR, plan.fingerprint(name))
        study.set_user_attr("grid_point", point)
    elif set(plan.fingerprint(name)) - set(stored):  # an earlier vaesweep's: completed
        study.set_user_attr(SPACE_ATTR, {**plan.fingerprint(name), **stored})
    if study.user_attrs.get(SWEEP_ATTR) != here:  # where it is now (moved: its new path)
        study.set_user_attr(SWEEP_ATTR, here)
    return study
