"""One Optuna study per grid point, created or continued in the search's storage; the search
it was started with is kept in its user attrs, and a changed search is refused."""

from __future__ import annotations

from typing import Any

from vaesweep.sweep.search.plan import Plan
from vaesweep.sweep.search.space import SearchError

#: The study's user attr that holds the search it was started with (Plan.fingerprint).
SPACE_ATTR = "vaesweep_search"


def existing_study(storage: Any, name: str) -> Any:
    """The study ``name`` in an opened storage, None when there is none."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def check_unchanged(study: Any, plan: Plan) -> None:
    """SearchError when ``study`` was started with another search than ``plan``."""
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


def open_study(storage: Any, plan: Plan, point: list[str], sampler: Any, pruner: Any) -> Any:
    """The study of one grid point: continued when it exists (and the search is unchanged),
    else created with the search's fingerprint. ``sampler``: a sampler, or a function of
    (study name, trials already asked) that gives one (see ``driver.study_samplers``)."""
    import optuna

    name = plan.study(point)
    existing = existing_study(storage, name)
    if existing is not None:
        check_unchanged(existing, plan)
    asked = len(existing.get_trials(deepcopy=False)) if existing is not None else 0
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler(name, asked) if callable(sampler) else sampler,
        pruner=pruner,
        direction=plan.direction,
        load_if_exists=True,
    )
    if existing is None:
        study.set_user_attr(SPACE_ATTR, plan.fingerprint())
        study.set_user_attr("grid_point", point)
    return study
