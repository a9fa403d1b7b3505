"""What a table or figure comes from, in words: the setting common to its runs (dataset,
epochs, the fixed settings that change results) and what its ± or error bars are over.

The results table prints these as its notes (Markdown under the table, LaTeX comments
above it); the aggregate figures as a caption at their foot (:func:`add_caption`), so a
figure file says the same on its own.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine

from vaesweep.analysis.figures.style import compact, literal
from vaesweep.analysis.results import completed
from vaesweep.core.helpers import plural
from vaesweep.model.components import component_class

#: The gid of a figure's caption text (``[t for t in fig.texts if t.get_gid() == ...]``).
CAPTION_GID = "caption"
CAPTION_FONTSIZE = 6
# Inches per character of the caption's font, generous (wrap before the figure's edge).
CAPTION_CHAR_WIDTH = 0.047

#: (config column, name in the setting line): the fixed settings that change a result and
#: that a reader of a table needs; listed when every run has the same value. β is among
#: them only for the runs whose schedule reads it (:func:`reads_beta`).
SETTINGS = (
    ("config.model.name", "model"),
    ("config.model.latent_dim", "latent_dim"),
    ("config.data.batch_size", "batch_size"),
    ("config.optimizer.lr", "lr"),
    ("config.beta", "β"),
    ("config.likelihood.name", "likelihood"),
    ("config.likelihood.scale", "scale"),
)
SCHEDULE_PREFIX = "config.beta_schedule."
# A key named in a schedule's hint for `beta` ("its KL weight is beta_schedule.gamma").
_HINTED_KEY = re.compile(r"\bbeta_schedule\.([A-Za-z_]\w*)")


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _common(done: pd.DataFrame, column: str, typed: bool = False) -> tuple[bool, object]:
    """(whether every run has the same value of ``column``, that value or None).
    ``typed``: an int and a float are different values (``trainer.limit_train_batches``: 1
    is one batch, 1.0 all of them), where otherwise 1 == 1.0."""
    if column not in done.columns:
        return False, None
    values = {
        (isinstance(v, float | np.floating) and typed, None if _missing(v) else v)
        for v in done[column]
    }
    if len(values) != 1:
        return False, None
    return True, values.pop()[1]


@cache
def _schedule_class(name: Any, target: Any) -> type | None:
    options = {k: v for k, v in (("name", name), ("_target_", target)) if not _missing(v)}
    try:
        return component_class("beta_schedule", options)
    except ValueError:  # not importable here (a user's module): nothing known of it
        return None


def schedule_class(row: pd.Series) -> type | None:
    """The β schedule class a run's recorded config selects; None where the run recorded
    none or the class cannot be imported."""
    name, target = row.get(f"{SCHEDULE_PREFIX}name"), row.get(f"{SCHEDULE_PREFIX}_target_")
    if _missing(name) and _missing(target):
        return None
    return _schedule_class(name, target)


def reads_beta(row: pd.Series) -> bool:
    """Whether a run's β schedule reads the root ``beta``. A schedule that does not
    (``capacity``: its weight is ``gamma``; ``geco``: its controller sets β) says so itself:
    its ``hints`` name what to set instead of ``beta``, the same words that refuse
    ``beta=...`` for it before training (:mod:`vaesweep.run.effective`), so a ``β=1`` in a
    caption would state a value the run never used. A run without a recorded schedule, or
    whose schedule cannot be imported here, is taken to read it (the constant β)."""
    cls = schedule_class(row)
    return cls is None or "beta" not in getattr(cls, "hints", {})


def schedule_keys(cls: type | None) -> list[str]:
    """The keys a schedule that does not read β has in its place (``gamma``, ``c_max`` for
    ``capacity``; ``target``, ``lambda_init`` for ``geco``): those its hint for ``beta``
    names, so a caption gives the schedule's own weights where it leaves β out."""
    hint = getattr(cls, "hints", {}).get("beta", "") if cls is not None else ""
    return list(dict.fromkeys(_HINTED_KEY.findall(hint)))


def _beta(done: pd.DataFrame) -> str | None:
    """ "β=1" when every run reads β and has that value; "β=1 (beta_schedule=constant,
    linear)" when only the runs of those schedules read it; None when no run reads it or
    the runs differ (β is then a column or a legend entry)."""
    same, value = _common(done, "config.beta")
    if not same or value is None or str(value) == "":
        return None
    reads = done.apply(reads_beta, axis=1) if len(done) else pd.Series(dtype=bool)
    if not reads.any():
        return None
    text = f"β={compact(value)}"
    if reads.all():
        return text
    column = f"{SCHEDULE_PREFIX}name"
    names = dict.fromkeys(str(v) for v in done.loc[reads, column] if not _missing(v))
    return f"{text} (beta_schedule={', '.join(names)})" if names else text


def _schedule(done: pd.DataFrame) -> str | None:
    """ "β schedule=capacity (gamma=1000, c_max=25)" when every run has that non-constant
    schedule: its own weights (:func:`schedule_keys`) that every run shares in brackets."""
    same, name = _common(done, f"{SCHEDULE_PREFIX}name")
    if not same or name in (None, "constant"):
        return None
    keys = schedule_keys(schedule_class(done.iloc[0]))
    values = []
    for key in keys:
        same, value = _common(done, f"{SCHEDULE_PREFIX}{key}")
        if same and value is not None and str(value) != "":
            values.append(f"{key}={compact(value)}")
    return f"β schedule={name}" + (f" ({', '.join(values)})" if values else "")


def _batches(limit: object) -> str:
    """``trainer.limit_train_batches`` in words, as Lightning reads it: an int is a number
    of batches per epoch (``1``: one batch), a float a fraction of the training set
    (``1.0``: all of it, said by nothing; ``0.25``: "of 25% of the training batches"). A
    whole float above 1 (an int that came through a column with missing values) is a
    number of batches: Lightning takes no fraction above 1."""
    if isinstance(limit, bool) or not isinstance(limit, int | float | np.integer | np.floating):
        return f"(trainer.limit_train_batches={limit})"
    if isinstance(limit, int | np.integer) or float(limit) > 1.0:
        n = int(limit)
        return f"of {n} batch" + ("" if n == 1 else "es")
    if float(limit) == 1.0:
        return ""
    return f"of {compact(100 * float(limit), 3)}% of the training batches"


def _budget(done: pd.DataFrame) -> str:
    """ "1 epoch of 3 batches", "20 epochs", "epochs as configured (trainer.max_epochs varies)"."""
    same, epochs = _common(done, "config.trainer.max_epochs")
    if not same:
        known = "config.trainer.max_epochs" in done.columns
        return "epochs as configured (trainer.max_epochs varies)" if known else ""
    parts = []
    cut = done[done["stopped_by"] == "max_time"] if "stopped_by" in done.columns else done[:0]
    trained = cut["trained_epochs"].dropna().astype(int) if len(cut) else cut
    if len(cut):  # trainer.max_time ended them: what they trained, not what was asked
        span = f"{trained.min()}–{trained.max()}" if trained.nunique() > 1 else None
        said = plural(int(trained.min()), "epoch") if len(trained) else "epochs"
        said = f"{span} epochs" if span else said
        if epochs is not None and float(epochs) >= 0:
            said += f" of at most {int(epochs)}"
        parts.append(f"{said} (trainer.max_time ended {len(cut)} of {len(done)} runs)")
    elif epochs is not None and float(epochs) >= 0:
        parts.append(plural(int(epochs), "epoch"))
    same, batches = _common(done, "config.trainer.limit_train_batches", typed=True)
    if same and batches is not None:
        if part := _batches(batches):
            parts.append(part)
    elif not same and "config.trainer.limit_train_batches" in done.columns:
        parts.append("(trainer.limit_train_batches varies)")
    same, steps = _common(done, "config.trainer.max_steps")
    if same and steps is not None and float(steps) >= 0:
        parts.append(f"at most {plural(int(steps), 'step')}")
    return " ".join(parts)


def setting(df: pd.DataFrame) -> str:
    """One line on what the completed runs of ``df`` share: dataset, epochs, and the fixed
    settings that change a result (:data:`SETTINGS`, the β schedule when not constant, with
    its own weights) that every run has alike; a swept setting is the table's column or the
    figure's legend. β is left out for a schedule that does not read it (:func:`reads_beta`).
    """
    done = completed(df)
    head = []
    for column in ("dataset", "config.data.name"):
        same, name = _common(done, column)
        if same and name is not None:
            head.append(str(name))
            break
    if budget := _budget(done):
        head.append(budget)
    fixed = []
    for column, name in SETTINGS:
        if column == "config.beta":
            if beta := _beta(done):
                fixed.append(beta)
            continue
        same, value = _common(done, column)
        if same and value is not None and str(value) != "":
            fixed.append(f"{name}={compact(value)}")
    if schedule := _schedule(done):
        fixed.append(schedule)
    text = ", ".join(head) or "setting not recorded"
    return f"Setting: {text}" + (f"; {', '.join(fixed)}." if fixed else ".")


def over_seeds(counts: Iterable[float]) -> str:
    """ "2 seeds", "2–3 seeds", "1 seed" for the number of runs per point (or row)."""
    found = [int(c) for c in counts if not _missing(c) and c > 0]
    if not found:
        return "no seed"
    low, high = min(found), max(found)
    return plural(high, "seed") if low == high else f"{low}–{high} seeds"


def error_bars(counts: Iterable[float], error: str = "std") -> str:
    """What the error bars are: ``±1 std (ddof = 1) over 2 seeds``, or that there are none."""
    counts = list(counts)
    found = [c for c in counts if not _missing(c)]
    if not found or max(found) <= 1:
        return "Points: one seed each, so no error bars."
    what = "±1 std (ddof = 1)" if error == "std" else "±1 standard error of the mean (std/√n)"
    return f"Points: mean over seeds; error bars {what} over {over_seeds(found)}."


def seeds_line(counts: Iterable[float], what: str = "Lines") -> str:
    """ "Lines: means over 2 seeds." (or "one seed each") for the runs behind each line."""
    found = [c for c in counts if not _missing(c) and c > 0]
    if not found or max(found) <= 1:
        return f"{what}: one seed each."
    return f"{what}: means over {over_seeds(found)}."


def wrap(lines: Sequence[str], width_in: float, fontsize: float = CAPTION_FONTSIZE) -> list[str]:
    """``lines`` wrapped to fit ``width_in`` inches of text at ``fontsize``."""
    chars = max(20, int(width_in / (CAPTION_CHAR_WIDTH * fontsize / CAPTION_FONTSIZE)))
    return [
        part
        for line in lines
        for part in textwrap.wrap(line, chars, break_long_words=False, break_on_hyphens=False)
    ]


def add_caption(fig: Figure, lines: Sequence[str]) -> None:
    """Write ``lines`` (wrapped) under the figure's content. The figure is laid out at its
    size first (its layout engine, once), then grows by the caption's height with every
    panel, legend and text kept where the layout put them, above the caption."""
    width, height = fig.get_size_inches()
    shown = wrap([line for line in lines if line], width - 0.1)
    if not shown:
        return
    engine = fig.get_layout_engine()
    if engine is not None and not isinstance(engine, PlaceHolderLayoutEngine):
        engine.execute(fig)
    # Laid out once: a placeholder, not None, which savefig would replace by the style's
    # constrained layout when it restores the figure's engine.
    fig.set_layout_engine(PlaceHolderLayoutEngine(adjust_compatible=True, colorbar_gridspec=True))
    extra = len(shown) * CAPTION_FONTSIZE * 1.3 / 72 + 0.08
    total = height + extra
    fig.set_size_inches(width, total)

    def lift(y: float) -> float:  # a height in the old figure → the same place in the new
        return (y * height + extra) / total

    for ax in fig.axes:
        box = ax.get_position(original=True)
        ax.set_position([box.x0, lift(box.y0), box.width, box.height * height / total])
    for legend in fig.legends:  # "outside" legends sit on the figure's edge: the old edge
        legend.set_bbox_to_anchor((0, extra / total, 1, height / total), fig.transFigure)
    for text in fig.texts:  # suptitle and supxlabel included (Figure.text made them)
        x, y = text.get_position()
        text.set_position((x, lift(y)))
    caption_text(fig, 0.05 / width, 0.03 / total, shown)


def caption_text(fig: Figure, x: float, y: float, lines: Sequence[str]) -> None:
    """``lines`` as the figure's caption text, its lower left corner at (x, y) in figure
    coordinates (what :func:`caption` reads back)."""
    fig.text(
        x,
        y,
        literal("\n".join(lines)),  # config values as written, never mathtext
        ha="left",
        va="bottom",
        fontsize=CAPTION_FONTSIZE,
        color="dimgrey",
        gid=CAPTION_GID,
    )


def caption(fig: Figure) -> str:
    """The caption :func:`add_caption` wrote, as it reads (a ``$`` unescaped), lines joined
    by spaces ("" if none)."""
    texts = [t.get_text().replace(r"\$", "$") for t in fig.texts if t.get_gid() == CAPTION_GID]
    return " ".join(" ".join(texts).split("\n"))
