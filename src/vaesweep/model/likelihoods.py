"""Decoder likelihoods p(x | decoder output): exact, normalised, comparable across families.

The interface every likelihood answers is :class:`vaesweep.model.likelihood_base.Likelihood`; the
Gaussian and Laplace and their scale modes are in :mod:`vaesweep.model.location_scale` and
:mod:`vaesweep.model.scales`. Here: the Bernoulli and continuous Bernoulli, the registry, and the
public names of all of them (import them from here).

All constants are kept (−½ log 2π for the Gaussian, −log 2 for the Laplace, the continuous
Bernoulli normaliser), so ELBOs of different likelihoods on the same data are comparable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution

from vaesweep.model import continuous_bernoulli
from vaesweep.model.likelihood_base import Likelihood
from vaesweep.model.location_scale import GaussianLikelihood, LaplaceLikelihood, LocationScale
from vaesweep.model.scales import (
    DATA_DIMS,
    OPTIMAL_REDUCTIONS,
    SCALE_INITS,
    SCALE_MODES,
    data_parallel_mean,
    inverse_soft_clip,
    soft_clip,
)

__all__ = [
    "DATA_DIMS",
    "LIKELIHOODS",
    "OPTIMAL_REDUCTIONS",
    "SCALE_INITS",
    "SCALE_MODES",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "LaplaceLikelihood",
    "Likelihood",
    "LocationScale",
    "data_parallel_mean",
    "inverse_soft_clip",
    "soft_clip",
]


class BernoulliLikelihood(Likelihood):
    """Bernoulli with logits l: log p = x log s(l) + (1−x) log(1−s(l)).

    Normalised only on binary x; on grey-level x it is not a density (no bits/dim).
    """

    name = "bernoulli"
    data_kind = "binary"

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        return -self.nll(x, params)

    def nll(self, x: Tensor, params: Tensor) -> Tensor:
        (logits,) = self.split(params)
        if x.shape != logits.shape:  # e.g. [B, ...] data for [K, B, ...] importance samples
            x = x.expand_as(logits)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(DATA_DIMS)

    def mean(self, params: Tensor) -> Tensor:
        (logits,) = self.split(params)
        return torch.sigmoid(logits)

    def sample(self, params: Tensor) -> Tensor:
        return torch.bernoulli(self.mean(params))

    def effective_beta(self, beta: float) -> float | None:
        """The reconstruction term is the NLL itself: β′ = β."""
        return float(beta)


class ContinuousBernoulliLikelihood(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019) on [0, 1] with logits l: the
    Bernoulli term plus log C, C = l/tanh(l/2) = 2 artanh(1−2λ)/(1−2λ), C(0) = 2; i.e.
    log p = x·l − log(expm1(l)/l).

    Computed from the logits by :mod:`vaesweep.model.continuous_bernoulli` (closed forms in |l|, a
    Taylor series near l = 0), exact to a few ulps in float32 and float64 with exact
    gradients at every finite logit; torch.distributions.ContinuousBernoulli clamps
    λ = sigmoid(l) and is wrong beyond |l| ≈ 16, where trained decoders put most pixels.
    """

    name = "continuous_bernoulli"
    data_kind = "continuous"

    def distribution(self, params: Tensor) -> Distribution:
        raise NotImplementedError(
            "continuous_bernoulli has no torch Distribution: torch.distributions."
            "ContinuousBernoulli is inaccurate beyond |logit| ≈ 16 (pytorch#72525); use "
            "log_prob, nll, mean and sample, or vaesweep.model.continuous_bernoulli"
        )

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        (logits,) = self.split(params)
        # A view: [B, ...] data against [K, B, ...] importance samples (never a larger x).
        x = x.expand_as(logits)
        return continuous_bernoulli.log_prob(x, logits).sum(DATA_DIMS)

    def mean(self, params: Tensor) -> Tensor:
        (logits,) = self.split(params)
        return continuous_bernoulli.mean(logits)

    def sample(self, params: Tensor) -> Tensor:
        (logits,) = self.split(params)
        return continuous_bernoulli.sample(logits)

    def effective_beta(self, beta: float) -> float | None:
        """The reconstruction term is the NLL itself: β′ = β."""
        return float(beta)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls
    for cls in (
        BernoulliLikelihood,
        ContinuousBernoulliLikelihood,
        GaussianLikelihood,
        LaplaceLikelihood,
    )
}
