"""Image figures from checkpoints: reconstructions of the same test images and prior samples.

For each configuration (swept keys except ``seed`` and ``beta``; one β per figure) the
completed run with the lowest seed is loaded from the checkpoint it was tested with
(``eval.checkpoint``). Every configuration sees the SAME first test images, preprocessed as
in its own run (fixed dequantisation noise, or fixed binarisation for the Bernoulli), and
the SAME latent draws z ~ N(0, I) for the samples (the seed of the run's samples.png).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor

from vaesweep.figures.style import TWO_COLUMN, new_figure, paper_style
from vaesweep.figures.sweep import FigureSkipped, groups, styles_for
from vaesweep.images import make_grid
from vaesweep.record import RESULTS_FILE
from vaesweep.results import completed, config_keys

# Inches of figure width kept for the row labels.
LABEL_WIDTH = 1.7


def _none_if_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _checkpoint(row: pd.Series) -> Path | None:
    which = _none_if_nan(row.get("config.eval.checkpoint")) or "last"
    path = Path(str(row["run_dir"])) / "checkpoints" / f"{which}.ckpt"
    return path if path.is_file() else None


def representatives(df: pd.DataFrame, beta: float | None) -> list[tuple[str, pd.Series, Path]]:
    """(label, run row, checkpoint) per configuration at ``beta``: its lowest-seed run with a checkpoint."""
    done = completed(df)
    if beta is not None:
        done = done[np.isclose(done["beta"].astype(float), beta)]
    keys = [k for k in config_keys(df) if k != "beta"]
    styles = styles_for(done, keys) if not done.empty else {}
    out = []
    for config, rows in groups(done, keys):
        for _, row in rows.sort_values("seed").iterrows():
            if (ckpt := _checkpoint(row)) is not None:
                out.append((styles[config].label or str(row["job_name"]), row, ckpt))
                break
    if not out:
        raise FigureSkipped("no completed run has its checkpoint (checkpoints/last.ckpt) on disk")
    return out


def _load_model(path: Path):
    from vaesweep.module import VAE

    return VAE.load_from_checkpoint(path, map_location="cpu").eval()


def _test_images(row: pd.Series, n: int, cache: dict) -> tuple[Tensor, Tensor]:
    """The first n test images as grey levels / 255 and as the run's model saw them, [n, C, H, W]."""
    from vaesweep.data import fixed_preprocess, load_dataset

    def opt_int(value: Any) -> int | None:
        value = _none_if_nan(value)
        return None if value is None else int(value)

    key = tuple(
        _none_if_nan(row.get(f"config.data.{k}")) for k in ("name", "root", "val_size", "test_size")
    )
    if key not in cache:
        cache[key] = load_dataset(
            key[0], root=key[1], val_size=opt_int(key[2]), test_size=opt_int(key[3])
        )
    test = cache[key].splits["test"]
    result = json.loads((Path(str(row["run_dir"])) / RESULTS_FILE).read_text())
    mode = result["dataset"]["preprocess"]
    # The whole split, so the fixed noise is the one the run was tested with.
    x = fixed_preprocess(test, mode, "test")[:n]
    return test[:n].float() / 255.0, x


def _strip(ax, images: Tensor, label: str) -> None:
    grid = make_grid(images.float().cpu(), nrow=images.shape[0], padding=1, pad_value=1.0)
    pixels = grid[0] if grid.shape[0] == 1 else grid.permute(1, 2, 0)
    ax.imshow(pixels.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_ylabel(label, rotation=0, ha="right", va="center")


def _rows_figure(rows: list[tuple[str, Tensor]], title: str, width: float) -> Figure:
    n = rows[0][1].shape[0]
    row_height = (width - LABEL_WIDTH) / n + 0.05
    with paper_style():
        fig = new_figure(width, row_height * len(rows) + 0.3, nrows=len(rows))
        for ax, (label, images) in zip(fig.axes, rows, strict=True):
            _strip(ax, images, label)
        fig.suptitle(title, fontsize=8)
    return fig


def _title(what: str, beta: float | None) -> str:
    return what + (f", β = {beta:g}" if beta is not None else "")


@torch.no_grad()
def reconstruction_rows(
    df: pd.DataFrame, beta: float | None = None, n: int = 8
) -> list[tuple[str, Tensor]]:
    """("test images", the first n test images as grey levels / 255), then per configuration
    (label, its reconstructions x̂ = E[x | z = E_q[z|x]] of those images), each [n, C, H, W].
    Bernoulli configurations reconstruct the binarised images they were trained on."""
    cache: dict = {}
    rows: list[tuple[str, Tensor]] = []
    for label, row, ckpt in representatives(df, beta):
        originals, x = _test_images(row, n, cache)
        if not rows:
            rows.append(("test images", originals))
        rows.append((label, _load_model(ckpt).reconstruct(x)))
    return rows


@torch.no_grad()
def sample_rows(
    df: pd.DataFrame, beta: float | None = None, n: int = 8
) -> list[tuple[str, Tensor]]:
    """(label, E[x | z] for the same n draws z ~ N(0, I)) per configuration, each [n, C, H, W]."""
    from vaesweep.callbacks import SAMPLE_SEED

    rows = []
    for label, _, ckpt in representatives(df, beta):
        generator = torch.Generator().manual_seed(SAMPLE_SEED)
        rows.append((label, _load_model(ckpt).sample_prior(n, generator)))
    return rows


def reconstructions(
    df: pd.DataFrame, beta: float | None = None, n: int = 8, width: float = TWO_COLUMN
) -> Figure:
    """Top row: n test images; below, one row per configuration: its reconstructions of them."""
    title = _title("Reconstructions of the same test images", beta)
    return _rows_figure(reconstruction_rows(df, beta, n), title, width)


def prior_samples(
    df: pd.DataFrame, beta: float | None = None, n: int = 8, width: float = TWO_COLUMN
) -> Figure:
    """One row per configuration: E[x | z] for the same n draws z ~ N(0, I)."""
    title = _title("Samples E[x | z], z ~ N(0, I) (same z in every row)", beta)
    return _rows_figure(sample_rows(df, beta, n), title, width)
