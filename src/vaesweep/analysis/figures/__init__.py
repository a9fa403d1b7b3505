"""Paper figures: sweep figures from the results frame, analytic loss-landscape figures.

:func:`write_sweep_figures` and :func:`write_analytic_figures` draw every figure first into a
temporary directory beside ``out_dir`` and move the files into ``out_dir`` only when all of
them were written, so an error leaves no partial set behind. A figure the frame cannot
support (a metric missing, β not swept, no checkpoints) is skipped and reported.
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
        except FigureSkipped as reason:
            report.skipped.append(f"{name}: {reason}")
            continue
        written += save(fig, out_dir, name, formats)
    return written


#: The kinds of file the figure commands write (figures and tables).
FIGURE_SUFFIXES = (".pdf", ".png", ".md", ".tex")


def _atomically(
    out_dir: str | os.PathLike[str], fill: Callable[[Path], FigureReport]
) -> FigureReport:
    """Run ``fill(tmp_dir)``, then move every file it wrote into out_dir (nothing on error)."""
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
    return report


def write_sweep_figures(df: pd.DataFrame, out_dir: str | os.PathLike[str]) -> FigureReport:
    """Every sweep figure (PDF + PNG) and the results table (Markdown + LaTeX) into out_dir."""

    def fill(tmp: Path) -> FigureReport:
        report = FigureReport(notes=[*image_notes(df), *history_notes(df)])
        _draw(sweep_plan(df), tmp, report)
        try:
            table = results_table(df)
        except FigureSkipped as reason:
            report.skipped.append(f"{TABLE_NAME}: {reason}")
        else:
            (tmp / f"{TABLE_NAME}.md").write_text(table.to_markdown())
            (tmp / f"{TABLE_NAME}.tex").write_text(table.to_latex())
        return report

    return _atomically(out_dir, fill)


def draw_sweep_pngs(df: pd.DataFrame, out_dir: str | os.PathLike[str]) -> FigureReport:
    """The sweep figures as PNGs only (no PDFs, no table) into out_dir, written directly (for
    a temporary directory: the W&B summary run of a sweep logs them as images)."""
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
