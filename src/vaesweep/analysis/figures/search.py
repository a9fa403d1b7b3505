"""Figures of a search (``hydra/sweeper=optuna``): Optuna's optimisation history and parameter
importances, one of each per study, drawn with ``optuna.visualization.matplotlib``.

The studies are found through the ``sweep.json`` of every sweep directory in the frame
(:func:`vaesweep.sweep.search.load_studies`); grids have none and get no search figure.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from vaesweep.analysis.figures.style import ONE_COLUMN, TWO_COLUMN, paper_style
from vaesweep.analysis.figures.sweep import FigureSkipped


def _studies(df: pd.DataFrame) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """The studies of the frame's search sweeps by sweep (its directory's name, made safe for
    a file name), and why a sweep's could not be read (a damaged journal)."""
    from vaesweep.sweep.search import SearchError, load_studies  # heavy: torch, run layer

    if "sweep_dir" not in df.columns:
        return {}, {}
    studies, unreadable = {}, {}
    for d in dict.fromkeys(df["sweep_dir"].dropna()):
        if not isinstance(d, str):
            continue
        name = _unique(_slug(Path(d).name), {*studies, *unreadable})
        try:
            found = load_studies(d)
        except SearchError as e:
            unreadable[name] = str(e)
            continue
        if found:
            studies[name] = found
    return studies, unreadable


def _slug(text: str) -> str:
    """``text`` made safe for a file name."""
    return re.sub(r"[^\w.-]+", "_", text)


def _unique(name: str, taken: set[str] | dict[str, Any]) -> str:
    """``name``, or ``name_2``, ``name_3``, ... when it is taken."""
    n, unique = 1, name
    while unique in taken:
        n += 1
        unique = f"{name}_{n}"
    return unique


def _suffix(study: Any, n_studies: int) -> str:
    """ "" for a single study; else the grid point's values (``_gaussian_learned``)."""
    point = study.user_attrs.get("grid_point") or []
    if n_studies == 1 or not point:
        return "" if n_studies == 1 else f"_{study.study_name}"
    values = [p.split("=", 1)[1] for p in point]
    return "_" + _slug("_".join(values))


def _completed(study: Any) -> list[Any]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def _objective(study: Any) -> str:
    return (study.user_attrs.get("vaesweep_search") or {}).get("objective", "objective")


def _named(ax: Any, study: Any) -> Any:
    """The study's name under Optuna's title (grid searches have one study per point)."""
    ax.annotate(
        study.study_name, (1, 1.01), xycoords="axes fraction", ha="right", va="bottom", fontsize=6
    )
    return ax


def _sized(ax: Any, width: float) -> Figure:
    fig = ax.figure
    fig.set_size_inches(width, width * 0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "layout has changed to tight"
        fig.tight_layout()
    return fig


def optimization_history(study: Any) -> Figure:
    """The objective of every completed trial and the best so far, over trials."""
    from optuna.visualization.matplotlib import plot_optimization_history

    if not _completed(study):
        raise FigureSkipped(f"study {study.study_name!r} has no completed trial")
    with warnings.catch_warnings(), paper_style():
        warnings.simplefilter("ignore")
        ax = plot_optimization_history(study, target_name=_objective(study))
    return _sized(_named(ax, study), TWO_COLUMN)


def param_importances(study: Any) -> Figure:
    """fANOVA importance of each searched parameter for the objective."""
    from optuna.visualization.matplotlib import plot_param_importances

    done = _completed(study)
    n_params = len({k for t in done for k in t.params})
    if len(done) < 2 or n_params < 2:
        raise FigureSkipped(
            f"study {study.study_name!r}: importances need ≥ 2 completed trials and ≥ 2 "
            f"searched parameters (it has {len(done)} and {n_params})"
        )
    with warnings.catch_warnings(), paper_style():
        warnings.simplefilter("ignore")
        ax = plot_param_importances(study, target_name=_objective(study))
    return _sized(_named(ax, study), ONE_COLUMN * 1.5)


def _skipped(reason: FigureSkipped) -> Figure:
    raise reason


def search_plan(df: pd.DataFrame) -> dict[str, Callable[[], Figure]]:
    """Name → figure maker for the search figures of the frame's sweeps ({} for grids)."""
    by_sweep, unreadable = _studies(df)
    plan: dict[str, Callable[[], Figure]] = {}
    for name, reason in unreadable.items():  # reported as skips; every other figure is drawn
        plan[_unique(f"optimization_history_{name}", plan)] = partial(
            _skipped, FigureSkipped(reason)
        )
    for name, studies in by_sweep.items():
        # Several search sweeps in one frame: each one's figures are named after it.
        prefix = f"_{name}" if len(by_sweep) + len(unreadable) > 1 else ""
        for study in studies:
            suffix = prefix + _suffix(study, len(studies))
            for figure, make in (
                ("optimization_history", optimization_history),
                ("param_importances", param_importances),
            ):
                plan[_unique(f"{figure}{suffix}", plan)] = partial(make, study)
    return plan
