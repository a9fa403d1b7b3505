"""The results table: one row per configuration, mean ± std over seeds, best value in bold.

Its notes say what the rows share (:func:`vaesweep.analysis.figures.captions.setting`:
dataset, epochs, the fixed settings that change a result), what ± is over how many seeds,
and where the test metrics come from.

Which value is best depends on the metric (``DIRECTIONS``): lower NLL, bits/dim,
reconstruction NLL, MSE and MAE, higher ELBO. The rate (KL) and the number of active units
have no better direction and are never bold. Best is judged on the mean, and only among
rows of the same kind of data (:mod:`vaesweep.analysis.figures.kinds`): when the rows score
different data (binarised and dequantised images), the kind is the first column and each
kind has its own best.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vaesweep.analysis.figures.captions import over_seeds, setting
from vaesweep.analysis.figures.kinds import data_kinds
from vaesweep.analysis.figures.style import likelihood_label
from vaesweep.analysis.figures.sweep import FigureSkipped
from vaesweep.analysis.results import (
    aggregate,
    completed,
    config_keys,
    evaluations,
    unaggregated_message,
)
from vaesweep.run.record import COMPLETED, DUPLICATE, UNREADABLE

TABLE_METRICS = (
    "test/nll",
    "test/bpd",
    "test/elbo",
    "test/rec_nll",
    "test/kl",
    "test/mse",
    "test/active_units",
)
DIRECTIONS = {
    "test/nll": "min",
    "test/bpd": "min",
    "test/elbo": "max",
    "test/rec_nll": "min",
    "test/mse": "min",
    "test/mae": "min",
}
HEADERS = {
    "test/nll": "NLL (nats)",
    "test/bpd": "bits/dim",
    "test/elbo": "ELBO (nats)",
    "test/rec_nll": "rec. NLL (nats)",
    "test/kl": "KL (nats)",
    "test/mse": "MSE",
    "test/mae": "MAE",
    "test/active_units": "active units",
}
ARROWS = {"min": ("↓", r"$\downarrow$"), "max": ("↑", r"$\uparrow$")}
#: The table's column of the kind of data a row scored (when the rows score several).
KIND = "kind of data"
KEY_HEADERS = {"beta": ("β", r"$\beta$"), "likelihood.scale": ("scale", "scale")}
# Decimals per metric; nats get 1 from 100 up, else 2.
DECIMALS = {"test/bpd": 3, "test/mse": 4, "test/mae": 4, "test/active_units": 1}
#: The marks of cells averaged over fewer seeds than the table's others (one per count,
#: most seeds first), as Markdown and as LaTeX.
FEWER_MARKS = (
    ("†", r"$^{\dagger}$"),
    ("‡", r"$^{\ddagger}$"),
    ("§", r"$^{\S}$"),
    ("¶", r"$^{\P}$"),
)


@dataclass
class ResultsTable:
    """Cells as text, which cells are best, and the notes printed under the table."""

    columns: list[str]  # configuration keys, then metrics
    keys: list[str]
    rows: list[list[str]]
    best: list[list[bool]]
    notes: list[str]
    #: Per cell, the index into FEWER_MARKS of its mark (a cell averaged over fewer seeds
    #: than the others), or None; empty: no cell is marked.
    marks: list[list[int | None]] = field(default_factory=list)

    def _marks(self) -> list[list[int | None]]:
        return self.marks or [[None] * len(cells) for cells in self.rows]

    def to_markdown(self) -> str:
        head = [_md(KEY_HEADERS.get(k, (k,))[0]) for k in self.keys]
        head += [self._header(m, 0) for m in self.metrics]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for cells, best, marks in zip(self.rows, self.best, self._marks(), strict=True):
            shown = [
                (f"**{c}**" if b else c) + ("" if k is None else FEWER_MARKS[k][0])
                for c, b, k in zip(map(_md, cells), best, marks, strict=True)
            ]
            lines.append("| " + " | ".join(shown) + " |")
        return "\n".join(lines + [""] + [f"{n}" for n in self.notes]) + "\n"

    def to_latex(self) -> str:
        head = [KEY_HEADERS[k][1] if k in KEY_HEADERS else _tex(k) for k in self.keys]
        head += [self._header(m, 1) for m in self.metrics]
        lines = [
            r"\begin{tabular}{" + "l" * len(self.keys) + "r" * len(self.metrics) + "}",
            r"\toprule",
            " & ".join(head) + r" \\",
            r"\midrule",
        ]
        for cells, best, marks in zip(self.rows, self.best, self._marks(), strict=True):
            shown = [_tex(c) for c in cells]
            shown = [
                (rf"\textbf{{{c}}}" if b else c) + ("" if k is None else FEWER_MARKS[k][1])
                for c, b, k in zip(shown, best, marks, strict=True)
            ]
            lines.append(" & ".join(shown) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        notes = [f"% {n}" for n in self.notes]
        return "\n".join(notes + lines) + "\n"

    @property
    def metrics(self) -> list[str]:
        return self.columns[len(self.keys) :]

    @staticmethod
    def _header(metric: str, latex: int) -> str:
        name = HEADERS.get(metric, metric)
        arrow = ARROWS[DIRECTIONS[metric]][latex] if metric in DIRECTIONS else ""
        return _tex(name) + (f" {arrow}" if arrow else "") if latex else f"{name} {arrow}".strip()


#: LaTeX's special characters in text, and what prints each as itself (``|``, ``<`` and
#: ``>`` print other glyphs in the default OT1 font encoding).
TEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "&": r"\&",
    "#": r"\#",
    "^": r"\textasciicircum{}",
    "_": r"\_",
    "~": r"\textasciitilde{}",
    "%": r"\%",
    "|": r"\textbar{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}
_TEX_SPECIAL = re.compile("|".join(map(re.escape, TEX_SPECIALS)))


def _tex(text: str) -> str:
    """Plain text as LaTeX prints it as written: every special character escaped (in one
    pass, so no escape is escaped again); "±" becomes $\\pm$, a minus sign $-$."""
    text = _TEX_SPECIAL.sub(lambda m: TEX_SPECIALS[m.group()], text)
    text = re.sub(r"(?<![\w.])-(?=\d)", "$-$", text)  # a minus sign, not a hyphen
    return text.replace("±", r"$\pm$")


def _md(text: str) -> str:
    """A Markdown table cell's text: a ``|`` escaped (``\\|``), never a column's end."""
    return text.replace("|", r"\|")


def _decimals(metric: str, means: pd.Series) -> int:
    """Decimals of a column: DECIMALS, else (nats) 1 from |x| ≥ 100 up, else 2."""
    if metric in DECIMALS:
        return DECIMALS[metric]
    return 1 if means.abs().max() >= 100 else 2


#: From this magnitude up a table number is written in scientific notation (1.00e+300, not
#: 300 digits), as is a nonzero one that its column's decimals would show as 0.
SCIENTIFIC_FROM = 1e6


def _scientific(value: float, decimals: int) -> bool:
    size = abs(value)
    return size >= SCIENTIFIC_FROM or 0 < size < 0.5 * 10**-decimals


def _mean_text(mean: float, decimals: int) -> str:
    """A finite mean as its cell shows it: ``decimals`` decimals, or 3 significant digits in
    scientific notation beyond :data:`SCIENTIFIC_FROM` or below what the decimals show."""
    return f"{mean:.2e}" if _scientific(mean, decimals) else f"{mean:.{decimals}f}"


def _cell(mean: float, std: float, decimals: int) -> str:
    """ "mean ± std"; "–" for a mean that is not finite, the mean alone for a std that is
    NaN (one seed), "± inf" for a spread beyond the largest float. The std is in scientific
    notation where the mean is, or from :data:`SCIENTIFIC_FROM` up."""
    if not math.isfinite(mean):
        return "–"
    text = _mean_text(mean, decimals)
    if math.isnan(std):
        return text
    if not math.isfinite(std):
        return f"{text} ± inf"
    scientific = _scientific(mean, decimals) or std >= SCIENTIFIC_FROM
    return f"{text} ± {std:.2e}" if scientific else f"{text} ± {std:.{decimals}f}"


def _key(values: Sequence) -> tuple:
    """A row's configuration as a dict key: NaN is None (a missing value, or an explicit
    null)."""
    return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in values)


def _runs_per_row(runs: pd.DataFrame, keys: list[str]) -> dict[tuple, tuple[int, int]]:
    """{configuration: (its runs, those of them that did not complete)}, counting every run
    but duplicates (a copy of a counted run) and unreadable results (no configuration)."""
    runs = runs[~runs["status"].isin([DUPLICATE, UNREADABLE])]
    parts = runs.groupby(keys, dropna=False, sort=False) if keys else [((), runs)]
    return {
        _key(k if isinstance(k, tuple) else (k,)): (len(g), int((g["status"] != COMPLETED).sum()))
        for k, g in parts
    }


def _fewer_seeds(
    stats: pd.DataFrame, present: list[str], keys: list[str], runs: dict[tuple, tuple[int, int]]
) -> tuple[dict, str | None]:
    """The cells averaged over fewer seeds than the most any cell has, {(row, metric):
    index into FEWER_MARKS}, one mark per count (most seeds first; the last mark for the rest),
    and the note that says what each mark means and why its cells have fewer (None when
    every cell has the same count). Why, as is true of the marked cells' rows (``runs``, of
    :func:`_runs_per_row`): runs of the row that did not complete, completed runs without a
    finite value of the metric, or fewer runs in the row than the most seeds of a cell."""
    counts = {(i, m): int(stats.at[i, f"{m}.count"]) for i in stats.index for m in present}
    most = max(counts.values(), default=0)
    fewer = sorted({c for c in counts.values() if 0 < c < most}, reverse=True)
    if not fewer:
        return {}, None
    index = {c: min(j, len(FEWER_MARKS) - 1) for j, c in enumerate(fewer)}
    cells = {cell: index[c] for cell, c in counts.items() if c in index}
    said: dict[int, list[str]] = {}
    for c in fewer:
        said.setdefault(index[c], []).append(str(c))
    causes: dict[int, set[str]] = {j: set() for j in said}
    for (i, m), j in cells.items():
        n_runs, not_completed = runs.get(_key([stats.at[i, k] for k in keys]), (0, 0))
        if not_completed:
            causes[j].add("did not complete")
        if n_runs - not_completed > counts[i, m]:  # completed, but no finite value of m
            causes[j].add("lack a finite value")
        if n_runs < most:
            causes[j].add("fewer")

    def why(found: set[str]) -> str:
        failed = [c for c in ("did not complete", "lack a finite value") if c in found]
        reasons = [f"the row's other runs {' or '.join(failed)}"] if failed else []
        reasons += ["the row has fewer seeds than the others"] if "fewer" in found else []
        return " or ".join(reasons)

    return cells, "; ".join(
        f"{FEWER_MARKS[j][0]} over {' or '.join(cs)} of {most} seeds ({why(causes[j])})"
        for j, cs in said.items()
    ) + "."


def _value(key: str, value: object) -> str:
    """A setting's cell: as written, an explicit null as ``null`` ("–" is a metric cell
    without a finite value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if key == "likelihood":
        return likelihood_label(str(value), None)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _test_source(done: pd.DataFrame, df: pd.DataFrame) -> str:
    """Where the table's test metrics come from: training time (with which K) or an
    evaluation of ``vaesweep evaluate``."""
    if "evaluation" in df.attrs:
        return f"Test metrics: vaesweep evaluate, {df.attrs['evaluation']}."
    ks = sorted({int(k) for k in done.get("config.eval.iwae_k", pd.Series(dtype=float)).dropna()})
    text = "Test metrics: at training time"
    if ks:
        text += f", NLL by the IWAE bound with K = {', '.join(map(str, ks))}"
    if found := evaluations(df):
        text += f"; also evaluated: {', '.join(found)} (vaesweep figures --evaluation NAME)"
    return text + "."


def results_table(df: pd.DataFrame, metrics: Sequence[str] = TABLE_METRICS) -> ResultsTable:
    """Mean ± std (ddof = 1) over seeds per configuration for the ``metrics`` present."""
    done = completed(df)
    present = [m for m in metrics if m in done.columns and done[m].notna().any()]
    if not present:
        raise FigureSkipped(f"none of the metrics {list(metrics)} is in the results")
    keys = config_keys(df)
    done = done.assign(**{KIND: data_kinds(done)})
    kinds = list(dict.fromkeys(done[KIND]))
    if len(kinds) > 1:  # numbers of different data: the kind is a column, ranked within it
        keys = [KIND, *keys]
    stats = aggregate(done, by=keys, metrics=present)
    decimals = {m: _decimals(m, stats[f"{m}.mean"]) for m in present}
    best_rows: dict[str, set] = {}
    for m in present:
        if m not in DIRECTIONS:
            continue
        best_rows[m] = set()
        parts = stats.groupby(KIND, sort=False) if KIND in keys else [(None, stats)]
        for _, part in parts:  # never ranked across kinds of data
            means = part[f"{m}.mean"]
            means = means[np.isfinite(means.to_numpy(dtype=float))]  # never a "–" cell
            if len(means):  # every row that shows the best mean is bold, not one of them
                shown = means.map(lambda v, d=decimals[m]: _mean_text(v, d))
                best = means.idxmin() if DIRECTIONS[m] == "min" else means.idxmax()
                best_rows[m].update(shown.index[shown == shown[best]])
    runs = df.assign(**{KIND: data_kinds(df)}) if KIND in keys else df
    fewer, fewer_note = _fewer_seeds(stats, present, keys, _runs_per_row(runs, keys))
    rows, best, marks = [], [], []
    for i, stat in stats.iterrows():
        cells = [_value(k, stat[k]) for k in keys]
        cells += [_cell(stat[f"{m}.mean"], stat[f"{m}.std"], decimals[m]) for m in present]
        rows.append(cells)
        best.append([False] * len(keys) + [i in best_rows.get(m, ()) for m in present])
        marks.append([None] * len(keys) + [fewer.get((i, m)) for m in present])
    counts = stats[[f"{m}.count" for m in present]].to_numpy().ravel()
    counts = counts[counts > 0]
    if counts.max() == 1:
        spread = "One seed per row: means only"
    else:
        spread = f"Mean ± std (ddof = 1) over {over_seeds(counts)}"
    per = "per column" if len(kinds) == 1 else "per column within each kind of data"
    notes = [
        setting(df),
        f"{spread}; bold: best mean {per} (↓ lower is better, ↑ higher is better); "
        "NLL, ELBO and KL in nats per example, MSE per pixel.",
    ]
    if fewer_note:
        notes.append(fewer_note)
    notes.append(_test_source(done, df))
    # A seed collected twice with other metrics, runs of several code states (the frame's).
    notes += [f"Note: {c[0].upper()}{c[1:]}." for c in df.attrs.get("caveats", [])]
    if message := unaggregated_message(df):
        notes.append(f"Not shown: {message}.")
    if len(kinds) > 1:
        notes.append(
            f"The rows score different data ({'; '.join(kinds)}): their NLL/ELBO are numbers "
            "of different data and are not comparable, so each kind is ranked on its own."
        )
    return ResultsTable([*keys, *present], keys, rows, best, notes, marks if fewer else [])
