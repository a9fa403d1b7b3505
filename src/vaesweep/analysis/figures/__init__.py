"""Paper figures: sweep figures from the results frame, analytic loss-landscape figures.

:func:`write_sweep_figures` and :func:`write_analytic_figures` draw every file first into a
temporary directory beside ``out_dir`` and move each one into ``out_dir`` whole (a file is
there complete or not at all). A figure the frame cannot support (a metric missing, β not
swept, no checkpoints) is skipped and reported. A figure that fails to draw leaves no file
of its name; the table and the other figures are still written, and then
:class:`FiguresFailed` names the figure and the error. An error outside the drawing of a
figure (the results table, the output directory) leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vaesweep.analysis.figures.analytic import ANALYTIC_FIGURES
from vaesweep.analysis.figures.grids import image_notes, prior_samples, reconstructions
from vaesweep.analysis.figures.search import search_plan
from vaesweep.analysis.figures.style import ONE_COLUMN, save
from vaesweep.analysis.figures.sweep import (
    FigureSkipped,
    history_notes,
    metric_vs_beta,
    rate_distortion,
    scale_history,
    schedule_history,
)
from vaesweep.analysis.figures.table import results_table
from vaesweep.analysis.results import completed, config_keys

__all__ = [
    "FigureReport",
    "FigureSkipped",
    "FiguresFailed",
    "draw_sweep_pngs",
    "sweep_plan",
    "write_analytic_figures",
    "write_sweep_figures",
]

TABLE_NAME = "results_table"


@dataclass
class FigureReport:
    """What a write_* call produced: the files in out_dir, "name: reason" per skipped
    figure, and notes on what the written ones leave out."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: What the written figures leave out, and why (runs whose images.npz is missing).
    notes: list[str] = field(default_factory=list)
    #: "name: error" per figure that failed to draw (no file of its name written).
    failed: list[str] = field(default_factory=list)


class FiguresFailed(RuntimeError):
    """Some figures failed to draw (named, with the error); every other file was written,
    as ``report`` lists."""

    def __init__(self, report: FigureReport, out_dir: Path) -> None:
        self.report = report
        super().__init__(
            f"{len(report.failed)} figure(s) could not be drawn: {'; '.join(report.failed)} "
            f"(the other {len(report.written)} file(s), the results table included, were "
            f"written to {out_dir})"
        )


def sweep_plan(df: pd.DataFrame) -> dict[str, Callable[[], Figure]]:
    """Name → figure maker for every sweep figure (images: one figure per β value)."""
    plan: dict[str, Callable[[], Figure]] = {
        "nll_elbo_vs_beta": partial(metric_vs_beta, df, ("test/nll", "test/elbo")),
        "bpd_vs_beta": partial(metric_vs_beta, df, ("test/bpd",), width=ONE_COLUMN),
        "rate_distortion": partial(rate_distortion, df),
        "scale_history": partial(scale_history, df),
        "schedule_history": partial(schedule_history, df),
    }
    done = completed(df)
    betas = sorted(done["beta"].unique()) if "beta" in config_keys(df) else [None]
    for beta in betas:
        # β as written, to every digit that tells it apart (0.5, 2, 0.123456789): two β values
        # agreeing to 6 digits (a search's draws) shared a file, the later one replacing it.
        suffix = "" if beta is None else f"_beta{np.format_float_positional(beta, trim='-')}"
        plan[f"reconstructions{suffix}"] = partial(reconstructions, df, beta)
        plan[f"samples{suffix}"] = partial(prior_samples, df, beta)
    plan.update(search_plan(df))  # a search's optimisation history and importances
    return plan


def _draw(
    plan: dict[str, Callable[[], Figure]],
    out_dir: Path,
    report: FigureReport,
    formats: tuple[str, ...] = ("pdf", "png"),
) -> list[Path]:
    written = []
    for name, make in plan.items():
        try:
            fig = make()
            written += save(fig, out_dir, name, formats)
        except FigureSkipped as reason:
            report.skipped.append(f"{name}: {reason}")
        except OSError:  # the output directory (full, not writable): every figure would fail
            raise
        except Exception as e:  # a bug or data this figure cannot draw: the others still are
            for ext in formats:  # a file saved before the error, or a part of one
                (out_dir / f"{name}.{ext}").unlink(missing_ok=True)
            report.failed.append(f"{name}: {type(e).__name__}: {' '.join(str(e).split())}")
    return written


#: The kinds of file the figure commands write (figures and tables).
FIGURE_SUFFIXES = (".pdf", ".png", ".md", ".tex")


def _atomically(
    out_dir: str | os.PathLike[str], fill: Callable[[Path], FigureReport]
) -> FigureReport:
    """Run ``fill(tmp_dir)``, then move every file it wrote into out_dir, each whole (nothing
    when fill raises); FiguresFailed, after that, when a figure failed to draw."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        report = fill(tmp)
        out_dir.mkdir(exist_ok=True)
        earlier = {p.name for p in out_dir.iterdir() if p.suffix in FIGURE_SUFFIXES}
        for path in sorted(tmp.iterdir()):
            os.replace(path, out_dir / path.name)
            report.written.append(out_dir / path.name)
        stale = sorted(earlier - {p.name for p in report.written})
        if stale:
            shown = ", ".join(stale[:6]) + (" ..." if len(stale) > 6 else "")
            report.notes.append(
                f"{len(stale)} file(s) in {out_dir} are from an earlier run and were not drawn "
                f"now (kept; remove them or pass another --out): {shown}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if report.failed:
        raise FiguresFailed(report, out_dir)
    return report


def write_sweep_figures(df: pd.DataFrame, out_dir: str | os.PathLike[str]) -> FigureReport:
    """Every sweep figure (PDF + PNG) and the results table (Markdown + LaTeX) into out_dir.
    A figure that fails to draw is left out and named by :class:`FiguresFailed`, raised
    once every other file is written (the table needs no drawing)."""

    def fill(tmp: Path) -> FigureReport:
        report = FigureReport(notes=[*image_notes(df), *history_notes(df)])
        try:
            table = results_table(df)
        except FigureSkipped as reason:
            report.skipped.append(f"{TABLE_NAME}: {reason}")
        else:
            (tmp / f"{TABLE_NAME}.md").write_text(table.to_markdown())
            (tmp / f"{TABLE_NAME}.tex").write_text(table.to_latex())
        _draw(sweep_plan(df), tmp, report)
        return report

    return _atomically(out_dir, fill)


def draw_sweep_pngs(df: pd.DataFrame, out_dir: str | os.PathLike[str]) -> FigureReport:
    """The sweep figures as PNGs only (no PDFs, no table) into out_dir, written directly (for
    a temporary directory: the W&B summary run of a sweep logs them as images); a figure
    that fails to draw is in the report's ``failed``."""
    report = FigureReport(notes=image_notes(df))
    report.written = _draw(sweep_plan(df), Path(out_dir), report, formats=("png",))
    return report


def write_analytic_figures(out_dir: str | os.PathLike[str]) -> FigureReport:
    """The analytic figures (PDF + PNG) into out_dir."""

    def fill(tmp: Path) -> FigureReport:
        report = FigureReport()
        _draw(dict(ANALYTIC_FIGURES), tmp, report)
        return report

    return _atomically(out_dir, fill)
