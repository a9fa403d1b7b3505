"""Figures of a search (``hydra/sweeper=optuna``): Optuna's optimisation history and parameter
importances, one of each per study, drawn with ``optuna.visualization.matplotlib``.

The studies are found through the ``sweep.json`` of every sweep directory in the frame, where
it is now (:func:`vaesweep.sweep.search.load_studies`); grids have none and get no search
figure. A search whose journal is not found is named, as a skipped figure.
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

from vaesweep.analysis.figures.style import ONE_COLUMN, TWO_COLUMN, literal, paper_style
from vaesweep.analysis.figures.sweep import FigureSkipped
from vaesweep.run.context import SWEEP_FILE, read_sweep


def _sweeps(df: pd.DataFrame) -> list[Path]:
    """The frame's sweep directories where they are now, each once, in the frame's order.

    A run's ``sweep_dir`` is where its sweep was when it ran (results.json says so), while
    ``run_dir`` is where its file was found: a sweep that has been moved since (supported
    by :func:`vaesweep.analysis.results.load_results`) is the run's parent when that holds
    a sweep.json, else the recorded directory (a frame without ``run_dir``, or from W&B).
    """
    if "sweep_dir" not in df.columns:
        return []
    run_dirs = df["run_dir"] if "run_dir" in df.columns else pd.Series(None, index=df.index)
    found: dict[Path, None] = {}
    for recorded, run_dir in zip(df["sweep_dir"], run_dirs, strict=True):
        if not isinstance(recorded, str):
            continue  # a run outside a multirun: no sweep
        here = Path(run_dir).parent if isinstance(run_dir, str) else None
        moved = here is not None and (here / SWEEP_FILE).is_file()
        found[here if moved else Path(recorded)] = None
    return list(found)


def _lost(sweep: Path) -> str | None:
    """Why a search sweep's studies are not found (its journal moved away or deleted; its
    storage without them), or None when ``sweep`` is no search (a grid, or no sweep.json)."""
    try:
        search = (read_sweep(sweep) or {}).get("search")
    except (OSError, ValueError, AttributeError):
        return None  # a damaged sweep.json: nothing says it was a search
    if not isinstance(search, dict) or not search.get("storage"):
        return None
    storage = str(search["storage"])
    if "://" in storage:  # a database URL (sqlite:///..., postgresql://...): no file
        return f"{sweep}: no study of the search is in its storage {storage}"
    beside = sweep / Path(storage).name
    where = f"{beside} (beside {SWEEP_FILE})"
    if Path(storage).is_absolute() and Path(storage) != beside:
        where = f"{storage}, where it was written, nor at {where}"
    return f"{sweep}: the search's Optuna journal is not at {where}; its studies cannot be drawn"


def _studies(df: pd.DataFrame) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """The studies of the frame's search sweeps by sweep (its directory's name, made safe for
    a file name), and why a search's could not be read (a damaged journal) or found (its
    journal not where the sweep is now, nor where it was written)."""
    from vaesweep.sweep.search import SearchError, load_studies  # heavy: torch, run layer

    studies, unreadable = {}, {}
    for d in _sweeps(df):
        name = _unique(_slug(d.name), {*studies, *unreadable})
        try:
            found = load_studies(d)
        except SearchError as e:
            unreadable[name] = str(e)
            continue
        if found:
            studies[name] = found
        elif (lost := _lost(d)) is not None:  # a search whose figures would vanish unsaid
            unreadable[name] = lost
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
        literal(study.study_name),
        (1, 1.01),
        xycoords="axes fraction",
        ha="right",
        va="bottom",
        fontsize=6,
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
