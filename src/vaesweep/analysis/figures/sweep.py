"""Sweep figures from the results frame (:func:`vaesweep.analysis.results.load_results`).

Each function takes the frame (run directories for the ones that read metric histories) and
returns a matplotlib Figure; it raises :class:`FigureSkipped`, with a message naming what is
missing, when the frame cannot support it. Only completed runs are drawn. A configuration is
one value of every swept key except ``seed`` (and ``beta`` where β is the x axis); error
bars and means are over its seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from vaesweep.analysis.figures.captions import add_caption, error_bars, seeds_line, setting
from vaesweep.analysis.figures.kinds import data_kinds
from vaesweep.analysis.figures.style import (
    CYCLE,
    LIKELIHOOD_COLOURS,
    LIKELIHOOD_NAMES,
    METRIC_LABELS,
    ONE_COLUMN,
    SCALE_STYLES,
    SCALE_SYMBOLS,
    TWO_COLUMN,
    LineStyle,
    _is_missing,
    compact,
    line_styles,
    literal,
    new_figure,
    paper_style,
    sequential_colours,
    short_names,
    text_width,
)
from vaesweep.analysis.results import aggregate, completed, config_keys

METRICS_CSV = "metrics.csv"
#: A column of the kind of data each run scored (vaesweep.analysis.figures.kinds).
KIND = "_kind_of_data"
# Horizontal offset between configurations on a log-β axis, in decades (keeps error bars apart).
DODGE_DECADES = 0.012
#: Decades to the eye that a symlog β axis gives its linear part [0, smallest β > 0].
SYMLOG_LINSCALE = 0.5


class FigureSkipped(Exception):
    """This figure cannot be drawn from this frame; the message says why (e.g. the metric)."""


def require(df: pd.DataFrame, *metrics: str) -> None:
    """Raise FigureSkipped naming the first metric that no completed run has."""
    for metric in metrics:
        if metric not in df.columns or df[metric].notna().sum() == 0:
            raise FigureSkipped(f"metric {metric!r} is missing from the results")


def _key(values: Sequence) -> tuple:
    return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in values)


def groups(df: pd.DataFrame, keys: Sequence[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """(configuration, its rows) for every distinct value of ``keys`` (NaN kept, as None)."""
    if not keys:
        return [((), df)]
    out = df.groupby(list(keys), dropna=False, sort=True)
    return [(_key(k if isinstance(k, tuple) else (k,)), g) for k, g in out]


def styles_for(df: pd.DataFrame, keys: Sequence[str]) -> dict[tuple, LineStyle]:
    """The LineStyle of every configuration of ``keys`` in ``df`` (see style.line_styles)."""
    found = groups(df, keys)
    first = [g.iloc[0] for _, g in found]
    return line_styles(
        [c for c, _ in found],
        keys,
        [r.get("config.likelihood.name") for r in first],
        [r.get("config.likelihood.scale") for r in first],
    )


def _legend_below(fig: Figure, axes: Sequence, ncol: int = 3) -> None:
    """One legend under the panels, read row by row (matplotlib fills columns first)."""
    found: dict[str, object] = {}
    for ax in axes:  # panels of different kinds of data hold different configurations
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            found.setdefault(label, handle)
    handles, labels = list(found.values()), list(found)
    if len(labels) < 2:
        return
    # As many columns as the widest entry (handle, gap and label) lets fit in the figure.
    entry = max(text_width(label, mpl.rcParams["legend.fontsize"]) for label in labels) + 0.55
    ncol = max(1, min(ncol, len(labels), int(fig.get_size_inches()[0] // entry)))
    nrows = math.ceil(len(labels) / ncol)
    order = [r * ncol + c for c in range(ncol) for r in range(nrows) if r * ncol + c < len(labels)]
    width, height = fig.get_size_inches()  # rows of legend beyond 2: the panels keep their size
    fig.set_size_inches(width, height + max(0, nrows - 2) * mpl.rcParams["legend.fontsize"] / 40)
    fig.legend(
        [handles[i] for i in order],
        [literal(labels[i]) for i in order],  # values as written, never mathtext
        loc="outside lower center",
        ncol=ncol,
    )


def _betas(df: pd.DataFrame) -> np.ndarray:
    """The β values of the completed runs of ``df``, sorted; FigureSkipped when fewer than 2
    (β not swept, or swept but every run of all but one β did not complete)."""
    if "beta" not in config_keys(df):
        raise FigureSkipped("beta is not swept: this figure needs at least 2 values of beta")
    betas = np.sort(completed(df)["beta"].dropna().unique())
    if len(betas) < 2:
        found = ", ".join(f"{b:g}" for b in betas) or "none"
        raise FigureSkipped(
            f"beta has completed runs at {len(betas)} value(s) only ({found}): this figure "
            "needs at least 2 values of beta"
        )
    return betas


def beta_linthresh(betas: Sequence[float]) -> float | None:
    """None when every β is > 0 (a log axis); else the width of the linear part of a symlog
    axis around β = 0: the smallest β > 0 (1 when there is none), so that every β > 0 falls
    on the logarithmic part, a decade apart as on a log axis."""
    if min(betas) > 0:
        return None
    positive = [b for b in betas if b > 0]
    return float(min(positive)) if positive else 1.0


def dodged(betas: pd.Series, offset: float, linthresh: float | None) -> pd.Series:
    """β moved by ``offset`` decades (a configuration's dodge); β = 0 on a symlog axis as far
    to the eye (its linear part [0, linthresh] is drawn ``SYMLOG_LINSCALE`` decades wide)."""
    moved = betas * 10**offset
    if linthresh is None:
        return moved
    return moved.where(betas != 0, offset / SYMLOG_LINSCALE * linthresh)


def metric_vs_beta(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("test/nll", "test/elbo"),
    error: str = "std",
    width: float = TWO_COLUMN,
) -> Figure:
    """One panel per metric versus β (log axis; symlog when β = 0 is swept): one line per
    configuration, mean ± error
    (``std`` or ``sem`` over seeds) at each β, slightly dodged so error bars do not overlap.
    The caption says the setting and what the error bars are, over how many seeds.

    Runs that score different data (binarised and dequantised images: their NLLs are not
    comparable, :mod:`vaesweep.analysis.figures.kinds`) are drawn in a row of panels per
    kind of data, each with its own y axis, never on one axis."""
    done = completed(df)
    require(done, *metrics)
    betas = _betas(done)
    keys = [k for k in config_keys(df) if k != "beta"]
    done = done.assign(**{KIND: data_kinds(done)})
    kinds = [
        k
        for k in dict.fromkeys(done[KIND])
        if done.loc[done[KIND] == k, list(metrics)].notna().any().any()
    ]
    stats = aggregate(done, by=[*keys, KIND, "beta"], metrics=list(metrics))
    linthresh = beta_linthresh(betas)
    styles = styles_for(done, keys)
    offsets = dict(
        zip(styles, (np.arange(len(styles)) - (len(styles) - 1) / 2) * DODGE_DECADES, strict=True)
    )
    height = 2.4 if width > ONE_COLUMN else 2.2
    with paper_style():
        fig = new_figure(
            width, height * len(kinds), nrows=len(kinds), ncols=len(metrics), squeeze=False
        )
        axes = fig.axes
        panels = [(kind, metric) for kind in kinds for metric in metrics]
        for ax, (kind, metric) in zip(axes, panels, strict=True):
            if len(kinds) > 1:
                ax.set_title(literal(kind), loc="left", fontsize=7)
            part = stats[stats[KIND] == kind]
            for config, rows in groups(part, keys):
                rows = rows.sort_values("beta")
                st, offset = styles[config], offsets[config]
                ax.errorbar(
                    dodged(rows["beta"], offset, linthresh),
                    rows[f"{metric}.mean"],
                    yerr=rows[f"{metric}.{error}"],
                    capsize=2,
                    markersize=3.5,
                    label=st.label,
                    **st.kwargs(),
                )
            if linthresh is None:
                ax.set_xscale("log")
            else:  # β = 0 (a plain autoencoder's objective): linear around 0, log beyond
                ax.set_xscale("symlog", linthresh=linthresh, linscale=SYMLOG_LINSCALE)
            ax.set_xticks(betas, [f"{b:g}" for b in betas])
            ax.minorticks_off()
            ax.set_xlabel("β (KL weight)")
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        _legend_below(fig, axes, ncol=3 if width > ONE_COLUMN else 2)
        counts = stats[[f"{m}.count" for m in metrics]].to_numpy().ravel()
        add_caption(fig, [setting(df), error_bars(counts[counts > 0], error)])
    return fig


def rate_distortion(df: pd.DataFrame, width: float = TWO_COLUMN) -> Figure:
    """Rate KL versus distortion (reconstruction NLL; MSE): a marker per run, and a line per
    configuration through its per-β means (mean over the seeds whose rate and distortion are
    both finite) in order of β; when β is not swept, a larger marker per configuration at
    its mean instead (the title and caption say which).

    A distortion is of the data the run scored (:mod:`vaesweep.analysis.figures.kinds`): a
    Bernoulli's reconstruction NLL and MSE are of binarised images, a density's of
    dequantised grey levels. Runs of different kinds of data are drawn in a row of panels
    per kind, titled with it, each with its own axes, never on one axis (as
    :func:`metric_vs_beta` and the results table keep them apart)."""
    done = completed(df)
    require(done, "test/kl", "test/rec_nll", "test/mse")
    # ±inf is missing, as in every aggregate: not a marker, not part of a mean.
    metrics = ["test/kl", "test/rec_nll", "test/mse"]
    done = done.assign(**{m: done[m].replace([np.inf, -np.inf], np.nan) for m in metrics})
    done = done.assign(**{KIND: data_kinds(done)})
    distortions = ("test/rec_nll", "test/mse")
    kinds = [
        k
        for k in dict.fromkeys(done[KIND])
        if done.loc[done[KIND] == k, "test/kl"].notna().any()
        and done.loc[done[KIND] == k, list(distortions)].notna().any().any()
    ]
    if not kinds:
        raise FigureSkipped("no run has test/kl and a distortion (test/rec_nll, test/mse)")
    keys = [k for k in config_keys(df) if k != "beta"]
    # β values are joined only where there are 2 of them with completed runs.
    join_betas = "beta" in config_keys(df) and done["beta"].nunique() > 1
    styles = styles_for(done, keys)
    with paper_style():
        fig = new_figure(width, 2.6 * len(kinds), nrows=len(kinds), ncols=2, squeeze=False)
        axes = iter(fig.axes)
        for kind in kinds:
            part = done[done[KIND] == kind]
            # β values are written next to the configuration whose rate spreads most (least
            # clutter), in each kind's panels.
            spread = {
                c: np.ptp(r.groupby("beta")["test/kl"].mean()) if join_betas else 0
                for c, r in groups(part, keys)
            }
            labelled = max(spread, key=spread.get)
            for x in distortions:
                ax = next(axes)
                if len(kinds) > 1:
                    ax.set_title(literal(kind), loc="left", fontsize=7)
                for config, rows in groups(part, keys):
                    _rate_distortion_lines(
                        ax, rows, x, styles[config], join_betas, config == labelled
                    )
                ax.set_xlabel(METRIC_LABELS[x])
                ax.set_ylabel(METRIC_LABELS["test/kl"])
        if len(kinds) == 1:
            title = (
                "markers: runs; lines: mean over seeds, joining β values"
                if join_betas
                else "small markers: runs; large markers: mean over seeds"
            )
            fig.axes[0].set_title(title, loc="left")
        _legend_below(fig, fig.axes)
        by = [*keys, "beta"] if join_betas else keys  # the runs behind each mean
        per_point: list[int] = []
        for x in distortions:  # a point's runs: those with both of its values finite
            paired = done.dropna(subset=[x, "test/kl"])
            per_point += list(paired.groupby(by, dropna=False).size()) if by else [len(paired)]
        means = seeds_line(per_point, "Lines" if join_betas else "Large markers")
        small = "Markers" if join_betas else "Small markers"
        add_caption(fig, [setting(df), f"{small}: single runs. {means}"])
    return fig


def _rate_distortion_lines(
    ax: Axes, rows: pd.DataFrame, x: str, st: LineStyle, join_betas: bool, labelled: bool
) -> None:
    """One configuration's runs in a rate–distortion panel: a marker per run, and its
    per-β means joined in order of β (with the β values written when ``labelled``); β not
    swept: its mean as one larger marker."""
    ax.scatter(rows[x], rows["test/kl"], s=9, marker=st.marker, color=st.colour, alpha=0.45)
    # A point is a model's (distortion, rate) pair: both means over the same runs.
    paired = rows.dropna(subset=[x, "test/kl"])
    if not join_betas:
        mean = paired[[x, "test/kl"]].mean()
        ax.plot(
            [mean[x]],
            [mean["test/kl"]],
            color=st.colour,
            linestyle="none",
            marker=st.marker,
            markersize=7,
            markeredgecolor="black",
            markeredgewidth=0.6,
            label=st.label,
        )
        return
    means = paired.groupby("beta")[[x, "test/kl"]].mean()
    means = means.sort_index()
    ax.plot(
        means[x],
        means["test/kl"],
        color=st.colour,
        linestyle=st.linestyle,
        marker=st.marker,
        markersize=3,
        label=st.label,
    )
    if labelled:
        for beta, point in means.iterrows():
            ax.annotate(
                f"β={compact(beta)}",
                (point[x], point["test/kl"]),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=6,
                color="dimgrey",
            )


def _read_csv(path: Path) -> pd.DataFrame | str:
    """The metrics.csv at ``path``, or why it cannot be read (a damaged file is passed over:
    :func:`history_notes` names it)."""
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as e:  # empty, cut short, not UTF-8, not CSV
        return f"{type(e).__name__}: {e}"


def history_notes(df: pd.DataFrame) -> list[str]:
    """One line per completed run whose metrics.csv cannot be read: its histories are left
    out of the history figures, which the other runs still draw."""
    notes = []
    for run_dir in completed(df)["run_dir"]:
        path = Path(str(run_dir)) / METRICS_CSV
        problem = _read_csv(path) if path.is_file() else None
        if isinstance(problem, str):
            notes.append(f"{path} not read, left out of the history figures ({problem})")
    return notes


def read_history(run_dir: str | Path, columns: Sequence[str]) -> pd.DataFrame | None:
    """Rows of ``<run_dir>/metrics.csv`` with ``step`` and every one of ``columns`` logged, or None."""
    path = Path(run_dir) / METRICS_CSV
    if not path.is_file():
        return None
    history = _read_csv(path)
    if isinstance(history, str) or not set(columns) <= set(history.columns):
        return None
    rows = history.dropna(subset=list(columns))[["step", *columns]]
    # A resumed run may log a step twice: keep the last value.
    return rows.drop_duplicates("step", keep="last")


def _histories(runs: pd.DataFrame, columns: Sequence[str]) -> dict[str, pd.DataFrame]:
    found = {r: read_history(r, columns) for r in runs["run_dir"] if isinstance(r, str)}
    found = {r: h for r, h in found.items() if h is not None and not h.empty}
    if not found:
        raise FigureSkipped(
            f"metric {' and '.join(map(repr, columns))} is missing from every run's {METRICS_CSV} "
            "(logger=none keeps no history, runs shorter than trainer.log_every_n_steps log no "
            "step values, and W&B frames have no run directories)"
        )
    return found


def _mean_history(rows: pd.DataFrame, histories: dict, column: str) -> pd.Series | None:
    """Mean over the seeds of a configuration of ``column`` at each step."""
    parts = [histories[r].set_index("step")[column] for r in rows["run_dir"] if r in histories]
    if not parts:
        return None
    return pd.concat(parts, axis=1).mean(axis=1).sort_index()


def _plain_log_ticks(ax) -> None:
    """Tick labels 0.3, 1 instead of 3×10⁻¹, 10⁰ on a log y axis."""
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)


def scale_history(df: pd.DataFrame, width: float = TWO_COLUMN) -> Figure:
    """Decoder scale (σ or b, data units, log axis) over optimisation steps for the runs with a
    learned or optimal scale, and for runs of a likelihood without a ``scale`` key (a user's
    own, by ``_target_``) that log ``train/scale``: one panel per likelihood (the built-in
    ones first), one line per configuration (mean over seeds); line style = scale mode,
    colour = β (viridis, light = small). From ``train/scale`` in each run's metrics.csv."""
    done = completed(df)
    names = done.get("config.likelihood.name", pd.Series(None, index=done.index, dtype=object))
    own = names.notna() & ~names.isin(list(LIKELIHOOD_NAMES))  # a user's likelihood
    if "config.likelihood.scale" in done.columns:
        done = done[done["config.likelihood.scale"].isin(["learned", "optimal"]) | own]
    if done.empty:
        raise FigureSkipped("no completed run has likelihood.scale=learned or optimal")
    histories = _histories(done, ["train/scale"])
    done = done[done["run_dir"].isin(list(histories))]  # a Bernoulli logs no scale
    keys = [k for k in config_keys(df) if k != "likelihood"]
    betas = sorted(done["beta"].unique()) if "beta" in keys else []
    colours = dict(zip(betas, sequential_colours(len(betas)), strict=True))
    found = [str(lik) for lik in dict.fromkeys(names.loc[done.index].dropna())]
    likelihoods = [lik for lik in LIKELIHOOD_NAMES if lik in found]
    likelihoods += sorted(lik for lik in found if lik not in LIKELIHOOD_NAMES)
    if not likelihoods:
        raise FigureSkipped("the runs with a train/scale history do not name their likelihood")
    names = short_names(keys)
    seeds = []  # runs with a history per line
    with paper_style():
        fig = new_figure(width if len(likelihoods) > 1 else ONE_COLUMN, 2.5, ncols=len(likelihoods))
        for ax, lik in zip(fig.axes, likelihoods, strict=True):
            part = done[done["config.likelihood.name"] == lik]
            lines = []
            for config, rows in groups(part, keys):
                mean = _mean_history(rows, histories, "train/scale")
                if mean is None:
                    continue
                seeds.append(sum(r in histories for r in rows["run_dir"]))
                values = dict(zip(keys, config, strict=True))
                scale = rows.get("config.likelihood.scale", pd.Series([None])).iloc[0]
                scale = None if _is_missing(scale) else scale
                label = ", ".join(
                    ([] if scale is None else [str(scale)])
                    + [
                        f"β = {v:g}" if k == "beta" else f"{names[k]}={compact(v)}"
                        for k, v in values.items()
                        if k != "likelihood.scale"
                    ]
                )
                colour = colours.get(values.get("beta"), LIKELIHOOD_COLOURS.get(lik))
                linestyle = SCALE_STYLES.get(scale, SCALE_STYLES[None])[0]
                lines.append([mean, colour, linestyle, label or LIKELIHOOD_NAMES.get(lik, lik)])
            if len({(c, str(ls)) for _, c, ls, _ in lines}) < len(lines):
                for i, line in enumerate(lines):  # e.g. β schedules: a colour per configuration
                    line[1] = CYCLE[i % len(CYCLE)]
            for mean, colour, linestyle, label in lines:
                ax.plot(mean.index, mean.to_numpy(), color=colour, linestyle=linestyle, label=label)
            symbol = SCALE_SYMBOLS.get(lik)
            ax.set_yscale("log")
            _plain_log_ticks(ax)
            title = f"{LIKELIHOOD_NAMES.get(lik, lik)}: scale"
            ax.set_title(literal(f"{title} {symbol}" if symbol else title), loc="left")
            ax.set_xlabel("optimisation step")
            ax.set_ylabel(f"{symbol or 'scale'} (data units)")
            handles, labels = ax.get_legend_handles_labels()
            ax.legend(
                handles,
                [literal(label) for label in labels],  # values as written, never mathtext
                ncol=2 if len(ax.get_lines()) > 3 else 1,
                fontsize=6,
            )
        add_caption(fig, [setting(done), seeds_line(seeds)])
    return fig


def schedule_history(df: pd.DataFrame, width: float = TWO_COLUMN) -> Figure:
    """β_t and the training KL over optimisation steps, one line per configuration (mean over
    seeds), for sweeps where some run uses a non-constant β schedule. From ``beta`` and
    ``train/kl_step`` in each run's metrics.csv."""
    done = completed(df)
    names = done.get("config.beta_schedule.name", pd.Series(dtype=object))
    if not (names.notna() & (names != "constant")).any():
        raise FigureSkipped("every run uses the constant β schedule: no schedule to show")
    histories = _histories(done, ["beta", "train/kl_step"])
    keys = config_keys(df)
    styles = styles_for(done, keys)
    seeds = [sum(r in histories for r in rows["run_dir"]) for _, rows in groups(done, keys)]
    with paper_style():
        fig = new_figure(width, 2.4, ncols=2)
        for ax, column in zip(fig.axes, ("beta", "train/kl_step"), strict=True):
            for config, rows in groups(done, keys):
                mean = _mean_history(rows, histories, column)
                if mean is not None:
                    st = styles[config]
                    ax.plot(
                        mean.index,
                        mean.to_numpy(),
                        color=st.colour,
                        linestyle=st.linestyle,
                        label=st.label,
                    )
            ax.set_xlabel("optimisation step")
            ax.set_ylabel(METRIC_LABELS[column])
        # β spans orders of magnitude (capacity logs its γ, e.g. 1000) and may start at 0.
        fig.axes[0].set_yscale("symlog", linthresh=1e-2)
        fig.axes[0].set_ylabel("β_t (γ for capacity)")
        _legend_below(fig, fig.axes)
        add_caption(fig, [setting(df), seeds_line(seeds)])
    return fig
