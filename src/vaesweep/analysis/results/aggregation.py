"""Statistics over a frame's completed runs: mean, std, sem and count per configuration
(seeds pooled); the others are left out with a warning that counts them."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from vaesweep.analysis.results.frame import ResultsError
from vaesweep.run.record import COMPLETED, UNREADABLE, changes_results

STATS = ("mean", "std", "sem", "count")


def excluded_message(df: pd.DataFrame) -> str | None:
    """ "N of M runs excluded ... (k failed, ...)" when some runs did not complete, else None."""
    bad = df[df["status"] != "completed"]
    if bad.empty:
        return None
    counts = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
    return f"{len(bad)} of {len(df)} runs excluded from the aggregates ({counts})"


def unaggregated_message(df: pd.DataFrame) -> str | None:
    """The configurations none of whose runs completed (all failed, diverged, ...): they have
    no row in the aggregates, so a table would not show that they were tried. None if none."""
    keys = [k for k in config_keys(df) if k in df.columns] if "swept" in df.attrs else []
    known = df[df["status"] != UNREADABLE]
    if not keys or known.empty:
        return None
    lost = []
    for key, group in known.groupby(keys, dropna=False, sort=True):
        if (group["status"] == COMPLETED).any():
            continue
        values = key if isinstance(key, tuple) else (key,)
        label = ",".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
        counts = ", ".join(f"{n} {s}" for s, n in group["status"].value_counts().items())
        lost.append(f"{label} ({counts})")
    if not lost:
        return None
    shown = "; ".join(lost[:5]) + (" ..." if len(lost) > 5 else "")
    return (
        f"{len(lost)} configuration(s) without a completed run, so not in the aggregates: {shown}"
    )


def evaluations(df: pd.DataFrame) -> list[str]:
    """The names of the ``vaesweep evaluate`` results in the frame (``iwae_k=5000,checkpoint=last``
    from the columns ``test/nll@iwae_k=5000,checkpoint=last``, ...)."""
    return sorted({c.split("@", 1)[1] for c in df.columns if c.startswith("test/") and "@" in c})


def use_evaluation(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The frame with every ``test/*`` metric of the evaluation ``name`` (``test/nll@name``,
    ...) in place of the training-time one, for figures and tables of paper-grade numbers.
    ResultsError when no run has it, or some completed run lacks it (named, with the
    command that computes it)."""
    suffix = f"@{name}"
    columns = [c for c in df.columns if c.startswith("test/") and c.endswith(suffix)]
    if not columns:
        found = ", ".join(evaluations(df)) or "none (vaesweep evaluate writes them)"
        raise ResultsError(f"--evaluation {name}: no run holds it; evaluations found: {found}")
    done = df["status"] == COMPLETED
    lacking = df.loc[done & df[columns].isna().all(axis=1), "run_dir"].tolist()
    if lacking:
        settings = " ".join(f"eval.{item}" for item in name.split(","))
        raise ResultsError(
            f"--evaluation {name}: {len(lacking)} of {int(done.sum())} completed runs lack it "
            f"(e.g. {lacking[0]}); compute it with: vaesweep evaluate <the same dirs> {settings}"
        )
    out = df.copy()
    for column in columns:
        out[column.removesuffix(suffix)] = out[column]
    out.attrs = {**df.attrs, "evaluation": name}
    return out


def completed(df: pd.DataFrame, warn: bool = False) -> pd.DataFrame:
    """The completed runs only (attrs kept); with ``warn``, warns with the count of the others."""
    message = excluded_message(df)
    if warn and message:
        warnings.warn(message, stacklevel=3)
    return df[df["status"] == "completed"]


def _attr(df: pd.DataFrame, name: str) -> list[str]:
    if name not in df.attrs:
        raise ResultsError(
            f"df.attrs[{name!r}] is missing (a frame not made by load_results, or read back "
            "from a file): pass by=[...] and metrics=[...] explicitly"
        )
    return list(df.attrs[name])


def swept_keys(df: pd.DataFrame) -> list[str]:
    """The swept keys of a frame made by vaesweep.analysis.results (``df.attrs["swept"]``)."""
    return _attr(df, "swept")


def metric_names(df: pd.DataFrame) -> list[str]:
    """The metric columns of a frame made by vaesweep.analysis.results (``df.attrs["metrics"]``)."""
    return _attr(df, "metrics")


def config_keys(df: pd.DataFrame) -> list[str]:
    """Swept keys that define a configuration: all but ``seed`` and the keys of where and
    how a job runs (``logger``, ``threads``, ``paths``, ...: runs that differ only there are
    pooled).
    The swept keys hold the config keys that differ between runs without a command line
    that swept them (a primary config's ``trainer.max_epochs``), so runs of such different
    configurations are never pooled (the frame's ``df.attrs["notes"]`` names those keys);
    the aggregates, the figures and the results table all group by these keys."""
    return [k for k in swept_keys(df) if k != "seed" and changes_results(k)]


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and std (ddof=1) of finite ``values`` (NaN: none, or one for the std), without
    overflow: values near the largest float (a run's 1e300) are summed and squared scaled by
    their largest magnitude, so the std of [1e300, 0.05] is 7.07e299, not inf with numpy's
    RuntimeWarning; only a spread beyond the largest float is inf."""
    if not len(values):
        return math.nan, math.nan
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(np.mean(values))
        std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        if math.isfinite(mean) and (len(values) < 2 or math.isfinite(std)):
            return mean, std  # the common case, as numpy computes it
        scale = float(np.max(np.abs(values)))
        scaled = values / scale
        mean = scale * float(np.mean(scaled))  # |mean| <= scale: finite
        if len(values) > 1:  # > the largest float only for a spread that is: inf
            std = scale * float(np.std(scaled, ddof=1))
    return mean, std


def _stats(group: pd.DataFrame, metrics: list[str]) -> dict[str, float | int]:
    """``METRIC.mean``, ``.std`` (ddof=1), ``.sem`` and ``.count`` of one group's runs. A
    value that is not finite (NaN, ±inf: from a W&B summary or a foreign results.json) is
    missing, as NaN: it counts nowhere."""
    row: dict[str, float | int] = {}
    for m in metrics:
        values = group[m].dropna().to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        mean, std = _mean_std(values)
        row[f"{m}.mean"] = mean
        row[f"{m}.std"] = std
        row[f"{m}.sem"] = std / math.sqrt(len(values)) if len(values) > 1 else math.nan
        row[f"{m}.count"] = len(values)
    return row


def aggregate(
    df: pd.DataFrame,
    by: list[str] | None = None,
    metrics: list[str] | None = None,
) -> pd.DataFrame:
    """Mean, std (ddof=1), sem = std/√count and count of each metric over the runs of a group.

    by: grouping columns (default: :func:`config_keys`, the swept keys except ``seed`` and
    those that change no result, so groups pool seeds);
    metrics: metric columns (default: all). Only completed runs count; the others are left
    out with a warning. Columns: the ``by`` keys, then ``METRIC.mean``, ``METRIC.std``,
    ``METRIC.sem``, ``METRIC.count`` per metric (count of the finite values: NaN and ±inf
    are missing).
    """
    by = config_keys(df) if by is None else list(by)
    metrics = metric_names(df) if metrics is None else list(metrics)
    missing = [c for c in [*by, *metrics] if c not in df.columns]
    if missing:
        raise KeyError(f"columns not in the frame: {missing}")
    done = completed(df, warn=True)
    groups = done.groupby(by, dropna=False, sort=True) if by else [((), done)]
    rows = []
    for key, group in groups:
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        rows.append({**row, **_stats(group, metrics)})
    out = pd.DataFrame(rows, columns=[*by, *(f"{m}.{s}" for m in metrics for s in STATS)])
    out.attrs = {"by": by, "metrics": metrics}
    return out
