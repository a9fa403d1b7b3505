"""The latent variable: diagonal Gaussian posterior q(z|x), N(0, I) prior, analytic KL."""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


class DiagonalGaussian:
    """q(z|x) = N(μ, diag σ²), built from an encoder output [..., 2d] = (μ, log σ²)."""

    def __init__(self, mu: Tensor, logvar: Tensor) -> None:
        if mu.shape != logvar.shape:
            raise ValueError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} differ")
        self.mu = mu
        self.logvar = logvar

    @classmethod
    def from_encoder(cls, h: Tensor) -> DiagonalGaussian:
        """Split encoder output [B, 2d] into mean (first half) and log-variance (second half)."""
        if h.shape[-1] % 2:
            raise ValueError(f"encoder output needs an even last dimension, got {h.shape[-1]}")
        mu, logvar = h.chunk(2, dim=-1)
        return cls(mu, logvar)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, n_samples: int | None = None) -> Tensor:
        """Reparameterised draw z = μ + σ·ε, ε ~ N(0, I): [B, d], or [n, B, d] if n_samples."""
        shape = self.mu.shape if n_samples is None else (n_samples, *self.mu.shape)
        eps = torch.randn(shape, dtype=self.mu.dtype, device=self.mu.device)
        return self.mu + self.std * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z|x) in nats, summed over latent dims: shape z.shape[:-1]."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu).pow(2) / self.logvar.exp()).sum(-1)

    def kl_to_standard_normal(self) -> Tensor:
        """KL(q ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²), nats per example, shape [B]."""
        return 0.5 * (self.mu.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(-1)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) in nats, summed over the last (latent) dimension."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)
