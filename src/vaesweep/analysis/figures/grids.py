"""Image figures from the runs' files: reconstructions of the same test images and prior
samples, one row per configuration.

For each configuration (swept keys except ``seed`` and ``beta``; one β per figure) the
completed run with the lowest seed whose ``images.npz`` can be read is shown; a run passed
over (its file missing, truncated or damaged) is named with the reason
(:func:`image_notes`), and never stops the other figures. Every run writes the
arrays behind its own image grids there at test time (vaesweep.run.callbacks.ImageGrids): the
first test images (the same for every run: the test split and its order are fixed),
their reconstructions as that run's model saw them (its own fixed dequantisation noise,
or binarisation for the Bernoulli), and E[x | z] for draws z ~ N(0, I) from one fixed seed
(the same z for every run with the same latent size). Figures only read those files: no
model is rebuilt, no dataset is loaded, and a user's own components need not be
importable to draw them.
"""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine
from torch import Tensor

from vaesweep.analysis.figures.captions import CAPTION_FONTSIZE, caption_text, setting, wrap
from vaesweep.analysis.figures.style import TWO_COLUMN, literal, paper_style, text_width
from vaesweep.analysis.figures.sweep import FigureSkipped, groups, styles_for
from vaesweep.analysis.results import completed, config_keys
from vaesweep.run.images import IMAGES_FILE, make_grid

#: Configuration rows drawn at most in one figure (the footer counts the others).
MAX_ROWS = 24
# Row labels: font size (pt), characters per line before wrapping, gap to the images (pt).
LABEL_FONTSIZE = 7
LABEL_CHARS = 32
LABEL_PAD = 4
# Inches: the figure's margin, the space between rows, the tallest strip of images.
MARGIN = 0.05
ROW_GAP = 0.06
MAX_ROW_HEIGHT = 1.2


#: The arrays every images.npz holds.
ARRAYS = ("originals", "reconstructions", "samples")


def _images_problem(path: Path) -> str | None:
    """Why the run's images.npz cannot be drawn (missing, or not a readable archive of
    :data:`ARRAYS`), else None."""
    if not path.is_file():
        return "is missing"
    try:
        arrays = _arrays(path)
    except Exception as e:  # BadZipFile, a CRC error, EOFError, a bad header, ...
        return f"cannot be read ({type(e).__name__}: {str(e)[:120]})"
    absent = [a for a in ARRAYS if a not in arrays]
    return f"lacks the array(s) {', '.join(absent)}" if absent else None


def representatives(
    df: pd.DataFrame, beta: float | None, notes: list[str] | None = None
) -> list[tuple[str, pd.Series, Path]]:
    """(label, run row, its images.npz) per configuration at ``beta``: its lowest-seed run
    whose file can be read. ``notes`` gets one line per run passed over (its file missing
    or damaged), saying which run shows the configuration instead or that it is left out."""
    done = completed(df)
    if beta is not None:
        done = done[done["beta"].astype(float) == float(beta)]  # this β, not a close one
    keys = [k for k in config_keys(df) if k != "beta"]
    styles = styles_for(done, keys) if not done.empty else {}
    out = []
    for config, rows in groups(done, keys):
        label = styles[config].label if config in styles else ""
        passed: list[str] = []
        chosen = None
        for _, row in rows.sort_values("seed").iterrows():
            images = Path(str(row["run_dir"])) / IMAGES_FILE
            problem = _images_problem(images)
            if problem is None:
                chosen = row
                out.append((label or str(row["job_name"]), row, images))
                break
            passed.append(f"{images} {problem}")
        if notes is not None and passed:
            name = label or str(rows.iloc[0]["job_name"])
            where = "" if beta is None else f" at β = {beta:g}"
            shown = (
                "it is left out of the reconstructions and samples"
                if chosen is None
                else f"seed {chosen['seed']} is shown instead"
            )
            notes.append(f"images of {name}{where} not drawn: {'; '.join(passed)}; {shown}")
    if not out:
        raise FigureSkipped(
            f"no completed run has its {IMAGES_FILE} (the arrays every run writes at test "
            "time; a run of an earlier version has only its reconstructions.png and samples.png)"
        )
    return out


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}


def image_notes(df: pd.DataFrame) -> list[str]:
    """One line per configuration whose images are not drawn from its lowest-seed run (or
    not at all) because a run's images.npz is missing or damaged, naming the file and why."""
    done = completed(df)
    betas = sorted(done["beta"].unique()) if "beta" in config_keys(df) else [None]
    notes: list[str] = []
    for beta in betas:
        with contextlib.suppress(FigureSkipped):  # reported as the figure's skip
            representatives(df, beta, notes)
    return list(dict.fromkeys(notes))


def _wrap_label(label: str, chars: int) -> str:
    """``label`` on lines of at most ``chars`` characters, broken between its ``; ``-joined
    parts where it can (a part longer than a line is broken at its spaces)."""
    lines: list[str] = []
    for part in label.split("; "):
        pieces = textwrap.wrap(part, chars, break_long_words=False) or [""]
        if lines and len(lines[-1]) + 2 + len(pieces[0]) <= chars:
            lines[-1] += f"; {pieces.pop(0)}"
        lines += pieces
    return "\n".join(lines)


def _strip(ax, images: Tensor, label: str) -> None:
    grid = make_grid(images.float().cpu(), nrow=images.shape[0], padding=1, pad_value=1.0)
    pixels = grid[0] if grid.shape[0] == 1 else grid.permute(1, 2, 0)
    ax.imshow(pixels.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_ylabel(
        literal(label),
        rotation=0,
        ha="right",
        va="center",
        fontsize=LABEL_FONTSIZE,
        labelpad=LABEL_PAD,
    )


def _rows_figure(
    rows: list[tuple[str, Tensor]], title: str, width: float, footer: list[str]
) -> Figure:
    """One strip of images per row, its label on its left, laid out by hand: the label
    column is as wide as the longest (wrapped) label, every strip as tall as its images at
    the width left (at most MAX_ROW_HEIGHT) and never lower than its label, and the figure
    as tall as its rows, title and footer."""
    chars = max(16, min(LABEL_CHARS, int(0.35 * width / 0.06)))
    labels = [_wrap_label(label, chars) for label, _ in rows]
    label_width = max(text_width(label, LABEL_FONTSIZE) for label in labels)
    label_width += LABEL_PAD / 72 + 0.05
    _, _, h, w = rows[0][1].shape
    n = rows[0][1].shape[0]
    aspect = (h + 2) / (n * (w + 1) + 1)  # of the strip make_grid draws (padding 1)
    strip_width = width - 2 * MARGIN - label_width
    strip_height = min(strip_width * aspect, MAX_ROW_HEIGHT)
    line = LABEL_FONTSIZE * 1.25 / 72
    heights = [max(strip_height, line * (lab.count("\n") + 1)) + ROW_GAP for lab in labels]
    title_lines = wrap([title], width - 2 * MARGIN, fontsize=8)
    footer_lines = wrap(footer, width - 2 * MARGIN)
    top = MARGIN + len(title_lines) * 8 * 1.3 / 72 + 0.05
    bottom = MARGIN + (
        len(footer_lines) * CAPTION_FONTSIZE * 1.3 / 72 + 0.06 if footer_lines else 0
    )
    total = top + sum(heights) + bottom
    with paper_style():
        fig = Figure(figsize=(width, total))
        # Laid out here, never by an engine: a placeholder, not None, which savefig would
        # replace by the style's constrained layout when it restores the figure's engine.
        fig.set_layout_engine(
            PlaceHolderLayoutEngine(adjust_compatible=True, colorbar_gridspec=True)
        )
        y = total - top
        for (_, images), label, height in zip(rows, labels, heights, strict=True):
            y -= height
            box = [MARGIN + label_width, y + ROW_GAP / 2, strip_width, height - ROW_GAP]
            ax = fig.add_axes([box[0] / width, box[1] / total, box[2] / width, box[3] / total])
            _strip(ax, images, label)
            ax.set_anchor("W")  # a strip narrower than its box sits next to its label
        fig.suptitle(literal("\n".join(title_lines)), fontsize=8, y=1 - MARGIN / total, va="top")
        if footer_lines:
            caption_text(fig, MARGIN / width, MARGIN / total, footer_lines)
    return fig


def _capped(
    rows: list[tuple[str, Tensor]], fixed: int, df: pd.DataFrame, what: str
) -> tuple[list[tuple[str, Tensor]], list[str]]:
    """The first ``fixed`` rows and at most MAX_ROWS configuration rows after them, and the
    figure's footer: the setting, which run each row shows, how many rows were left out."""
    configs = len(rows) - fixed
    footer = [setting(df), f"Each row: {what} of one run, its configuration's lowest seed."]
    if configs > MAX_ROWS:
        footer.append(
            f"{configs - MAX_ROWS} of {configs} configurations not shown (the first "
            f"{MAX_ROWS} in the order of the results table are)."
        )
    return rows[: fixed + MAX_ROWS], footer


def _title(what: str, beta: float | None) -> str:
    return what + (f", β = {beta:g}" if beta is not None else "")


def reconstruction_rows(
    df: pd.DataFrame, beta: float | None = None, n: int = 8
) -> list[tuple[str, Tensor]]:
    """("test images", the first n test images as grey levels / 255), then per configuration
    (label, its reconstructions x̂ = E[x | z = E_q[z|x]] of those images), each [n, C, H, W].
    Bernoulli configurations reconstruct the binarised images they were trained on."""
    rows: list[tuple[str, Tensor]] = []
    for label, _, path in representatives(df, beta):
        arrays = _arrays(path)
        if not rows:
            originals = torch.from_numpy(arrays["originals"][:n]).float() / 255.0
            rows.append(("test images", originals))
        rows.append((label, torch.from_numpy(arrays["reconstructions"][:n])))
    count = min(images.shape[0] for _, images in rows)
    return [(label, images[:count]) for label, images in rows]


def sample_rows(
    df: pd.DataFrame, beta: float | None = None, n: int = 8
) -> list[tuple[str, Tensor]]:
    """(label, E[x | z] for the same n draws z ~ N(0, I)) per configuration, each [n, C, H, W]."""
    rows = [
        (label, torch.from_numpy(_arrays(path)["samples"][:n]))
        for label, _, path in representatives(df, beta)
    ]
    count = min(images.shape[0] for _, images in rows)
    return [(label, images[:count]) for label, images in rows]


def reconstructions(
    df: pd.DataFrame, beta: float | None = None, n: int = 8, width: float = TWO_COLUMN
) -> Figure:
    """Top row: n test images; below, one row per configuration: its reconstructions of them
    (at most MAX_ROWS; the footer says how many more there are)."""
    title = _title("Reconstructions of the same test images", beta)
    rows, footer = _capped(reconstruction_rows(df, beta, n), 1, df, "the reconstructions")
    return _rows_figure(rows, title, width, footer)


def prior_samples(
    df: pd.DataFrame, beta: float | None = None, n: int = 8, width: float = TWO_COLUMN
) -> Figure:
    """One row per configuration: E[x | z] for the same n draws z ~ N(0, I) (at most
    MAX_ROWS; the footer says how many more there are)."""
    title = _title("Samples E[x | z], z ~ N(0, I) (same z in every row)", beta)
    rows, footer = _capped(sample_rows(df, beta, n), 0, df, "the samples")
    return _rows_figure(rows, title, width, footer)
