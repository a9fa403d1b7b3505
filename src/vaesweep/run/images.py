"""Image grids and PNG export without torchvision.

Layout is row-major like torchvision's make_grid: image i sits at row i // ncols, column
i % ncols, with ncols = min(nrow, N); every cell is surrounded by `padding` pixels of
pad_value and an unfilled cell in the last row is pad_value too.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from vaesweep.core.atomic import atomic_open

# The arrays behind a run's image grids, which `vaesweep figures` composes across runs.
IMAGES_FILE = "images.npz"


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile images [N, C, H, W] (values clamped to [0, 1]) into one grid [C, H', W'].

    Channels are kept as they are (C=1 stays grayscale, C=3 stays RGB); with
    ncols = min(nrow, N) and nrows = ceil(N / ncols): H' = nrows*(H+padding)+padding and
    W' = ncols*(W+padding)+padding. Float result on the input's device.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, C, H, W], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point with values in [0, 1], got {images.dtype}")
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("images must hold at least one image, got N=0")
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be an int >= 1, got {nrow!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    if not 0.0 <= pad_value <= 1.0:
        raise ValueError(f"pad_value must be in [0, 1], got {pad_value!r}")
    ncols = min(nrow, n)
    nrows = math.ceil(n / ncols)
    grid = images.new_full(
        (c, nrows * (h + padding) + padding, ncols * (w + padding) + padding), float(pad_value)
    )
    images = images.detach().clamp(0.0, 1.0)
    for i in range(n):
        top = padding + (i // ncols) * (h + padding)
        left = padding + (i % ncols) * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def save_image_grid(
    images: Tensor,
    path: str | Path,
    nrow: int = 8,
    padding: int = 2,
    pad_value: float = 1.0,
    upscale: int = 1,
) -> Path:
    """Write images [N, C, H, W] in [0, 1] (C = 1 or 3) as one PNG grid; returns the path.

    Pixels become uint8 round(x * 255); C=1 is saved as mode "L", C=3 as "RGB". upscale
    repeats every grid pixel upscale×upscale times (nearest neighbour), for tiny images such
    as 8×8 digits. The file is written to a temporary name in the same directory and moved
    into place with os.replace, so `path` never holds a partial PNG.
    """
    if isinstance(upscale, bool) or not isinstance(upscale, int) or upscale < 1:
        raise ValueError(f"upscale must be an int >= 1, got {upscale!r}")
    if isinstance(images, Tensor) and images.dim() == 4 and images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must have 1 (grayscale) or 3 (RGB) channels, got C={images.shape[1]}"
        )
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    # NaN (e.g. samples from a diverged model) would have no defined uint8 value; show it black.
    grid = torch.nan_to_num(grid.float().cpu(), nan=0.0)
    pixels = (grid * 255).round().to(torch.uint8)
    if upscale > 1:
        pixels = pixels.repeat_interleave(upscale, dim=1).repeat_interleave(upscale, dim=2)
    # uint8 [H, W] becomes mode "L" and uint8 [H, W, 3] mode "RGB".
    if pixels.shape[0] == 1:
        image = Image.fromarray(pixels[0].numpy())
    else:
        image = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())

    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")
    return Path(path)


def reconstruction_grid(x: Tensor, x_rec: Tensor, n: int = 8) -> Tensor:
    """Originals x[:n] then their reconstructions x_rec[:n]: [2n, C, H, W] for make_grid(nrow=n).

    With nrow=n the first grid row holds the originals and the second row, directly below
    each one, its reconstruction. Needs at least n examples (pass n=min(n, len(x))).
    """
    if x.dim() != 4 or tuple(x.shape) != tuple(x_rec.shape):
        raise ValueError(
            f"x and x_rec must both be [B, C, H, W] with the same shape, "
            f"got {tuple(x.shape)} and {tuple(x_rec.shape)}"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if x.shape[0] < n:
        raise ValueError(
            f"n={n} is larger than the batch ({x.shape[0]} examples); pass n=min(n, len(x))"
        )
    return torch.cat([x[:n].detach(), x_rec[:n].detach().to(x.dtype)], dim=0)
