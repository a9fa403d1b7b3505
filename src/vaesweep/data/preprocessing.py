"""Preprocessing for VAE likelihoods: uint8 grey levels to float32 x in [0, 1].

docs/math.md §6: k in {0..255} becomes

- ``dequantize``: x = (k + u) / 256, u ~ U(0, 1), for continuous likelihoods;
- ``binarize``:   x ~ Bernoulli(k / 255), for the Bernoulli likelihood;
- ``scale``:      x = k / 255, no noise (explicit opt-in).

Training batches get fresh noise each epoch (``loader.py``: a generator seeded by
(seed, epoch, rank), so epoch e is identical whether or not the process restarted at e).
Validation and test noise is drawn once from a fixed generator (``fixed_preprocess``),
independent of the run seed, so their scores are reproducible and comparable across runs
and seeds.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor

PREPROCESS_MODES = ("dequantize", "binarize", "scale")

# A dataset constant, NOT the run seed: the fixed val/test noise must not change when a
# sweep varies `seed`.
EVAL_NOISE_SEED = 20240602

# Dequantisation uses u <= 1 - 2^-16: then k + u <= 256 - 2^-16, which float32 represents
# exactly, so rounding never lands x on the upper edge (k + 1) / 256 (it would for ~1 pixel
# in 2^17 with u up to 1 - 2^-24).
_U_MAX = 1.0 - 2.0**-16


def check_mode(mode: str) -> None:
    """Raises for an unknown preprocessing mode."""
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"data.preprocess={mode!r}: allowed: {', '.join(PREPROCESS_MODES)}")


def derived_seed(*keys: int) -> int:
    """A 63-bit seed mixing integer `keys` (numpy SeedSequence: same on every machine)."""
    state = np.random.SeedSequence([k % 2**64 for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) | (int(state[1]) >> 1)


def preprocess(k: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """uint8 grey levels k (any shape) -> float32 x in [0, 1], same shape; noise from `generator`.

    dequantize: x = (k + u) / 256, u ~ U(0, 1), so x in [k/256, (k+1)/256);
    binarize: x ~ Bernoulli(k / 255) in {0, 1}; scale: x = k / 255.
    """
    check_mode(mode)
    if k.dtype != torch.uint8:
        raise TypeError(f"preprocess expects uint8 grey levels, got {k.dtype}")
    x = k.float()
    if mode == "scale":
        return x / 255.0
    u = torch.rand(k.shape, generator=generator, device=k.device)
    if mode == "dequantize":
        return (x + u.clamp_(max=_U_MAX)) / 256.0
    return (u < x / 255.0).float()


def fixed_preprocess(k: Tensor, mode: str, split: str) -> Tensor:
    """`preprocess` with noise fixed per split (not per run seed): reproducible val/test x."""
    # Drawn on the CPU so the values are the same whatever device the data then lives on.
    generator = torch.Generator().manual_seed(
        derived_seed(EVAL_NOISE_SEED, zlib.crc32(split.encode()))
    )
    return preprocess(k.cpu(), mode, generator).to(k.device)
