"""ELBO and IWAE estimators shared by training and evaluation, and derived metrics.

Reductions (docs/math.md §1): every log-density is summed over all D data dimensions (and d
latent dimensions for the KL), then averaged over the batch. Nothing here averages over
pixels inside the objective: a per-pixel mean reconstruction next to a summed KL silently
divides β by D.

Units: nats per example for ``rec_nll``, ``kl``, ``elbo`` and the IWAE log-likelihood;
bits per dimension for :func:`bits_per_dim`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vaesweep.model.latent import DiagonalGaussian, standard_normal_log_prob
from vaesweep.model.likelihoods import Likelihood

Network = Callable[[Tensor], Tensor]
#: Network outputs in these types (under autocast: trainer.precision=16-mixed, bf16-mixed) are
#: scored in float32.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 if it is half or bfloat16, else as it is (float32, float64).

    Autocast runs the networks in 16 bits; the densities and the KL are computed from their
    outputs in float32, as docs/math.md states them. In bfloat16, log(0.1) is −2.297 (σ =
    0.1006) and a Gaussian's D·log σ over 784 pixels is off by several nats per rounding
    step: hundreds of nats per example at a fixed σ = 0.1."""
    return t.float() if t.dtype in LOW_PRECISION else t


class DivergenceError(RuntimeError):
    """The training loss became non-finite."""

    def __init__(self, step: int, values: dict[str, float]) -> None:
        self.step = step
        self.values = values
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        super().__init__(f"non-finite training loss at step {step} ({shown})")


@dataclass
class ELBOTerms:
    """Per-example pieces of the evidence lower bound, each of shape [B], in nats."""

    rec_nll: Tensor  # −log p(x|z), one z ~ q(z|x) per example (averaged over samples if > 1)
    kl: Tensor  # KL(q(z|x) ‖ p(z)), analytic
    posterior: DiagonalGaussian
    params: Tensor  # decoder output for the sampled z

    @property
    def elbo(self) -> Tensor:
        """The true bound, free of β: −rec_nll − kl, nats per example, shape [B]."""
        return -self.rec_nll - self.kl


def elbo_terms(
    x: Tensor,
    encoder: Network,
    decoder: Network,
    likelihood: Likelihood,
    n_samples: int = 1,
) -> ELBOTerms:
    """Single-sample (or n-sample averaged) reparameterised ELBO pieces for a batch x [B, C, H, W]."""
    posterior = DiagonalGaussian.from_encoder(full_precision(encoder(x)))
    if n_samples == 1:
        params = full_precision(decoder(posterior.rsample()))
        rec_nll = likelihood.nll(x, params)
    else:
        params = full_precision(decoder(posterior.rsample(n_samples)))
        rec_nll = likelihood.nll(x, params).mean(0)
    return ELBOTerms(rec_nll, posterior.kl_to_standard_normal(), posterior, params)


def default_chunk_size(batch: int, data_dim: int, budget: int = 2**22) -> int:
    """Importance samples per chunk so one chunk's decoder output has ≲ ``budget`` elements.

    2^22 float32 (16 MiB, ~10 samples of a 500-image MNIST batch) keeps a chunk's working
    set in a CPU's last-level cache: ~45 % faster than 2^23 on 2 EPYC cores, with half the
    peak memory (benchmarks/iwae.py); smaller chunks only add per-chunk overhead.
    """
    return max(1, budget // max(1, batch * data_dim))


@dataclass
class ImportanceEstimates:
    """Evaluation quantities from one set of k importance samples per example, each [B]."""

    log_px: Tensor  # IWAE_k estimate of log p(x), nats
    rec_nll: Tensor  # −log p(x|z) averaged over the k samples, nats
    kl: Tensor  # analytic KL(q(z|x) ‖ p(z)), nats
    posterior: DiagonalGaussian


@torch.no_grad()
def importance_estimates(
    x: Tensor,
    encoder: Network,
    decoder: Network,
    likelihood: Likelihood,
    k: int = 100,
    chunk_size: int | None = None,
) -> ImportanceEstimates:
    """IWAE estimate of log p(x) with k importance samples (Burda et al. 2016), plus the
    ELBO pieces from the same samples.

    log p(x) ≈ log (1/k) Σ_j p(x|z_j) p(z_j) / q(z_j|x), z_j ~ q(z|x), computed with
    logsumexp over chunks of ``chunk_size`` samples, folded into a running total
    (logaddexp), so memory is that of one chunk whatever k: nothing is kept per chunk.
    ELBO ≤ E[IWAE_k] ≤ log p(x), increasing in k. Because rec_nll is averaged over the very
    samples the IWAE uses, −rec_nll − kl ≤ IWAE_k up to the Monte Carlo error of the KL
    (Jensen's inequality on the same weights).
    """
    if k < 1:
        raise ValueError(f"k={k} is invalid: the number of importance samples must be ≥ 1")
    posterior = DiagonalGaussian.from_encoder(full_precision(encoder(x)))
    chunk = chunk_size or default_chunk_size(x.shape[0], likelihood.data_dim)
    # Keeping one [B] tensor per chunk (for a final logsumexp) held ~1 MB of heap per
    # chunk on CPU (fragmentation): k = 10^6 in chunks of 10 ran out of 24 GB.
    total, log_lik_sum = None, 0.0
    for start in range(0, k, chunk):
        z = posterior.rsample(min(chunk, k - start))  # [n, B, d]
        log_lik = likelihood.log_prob(x, full_precision(decoder(z)))
        log_w = log_lik + standard_normal_log_prob(z) - posterior.log_prob(z)
        part = torch.logsumexp(log_w, dim=0)
        total = part if total is None else torch.logaddexp(total, part)
        log_lik_sum = log_lik_sum + log_lik.sum(0)
    log_px = total - math.log(k)
    return ImportanceEstimates(
        log_px, -log_lik_sum / k, posterior.kl_to_standard_normal(), posterior
    )


def bits_per_dim(nll_nats: Tensor | float, data_dim: int, num_levels: int = 256) -> Tensor:
    """Bits/dim of 8-bit data scaled to [0, 1] with uniform dequantisation.

    A density on [0,1]^D becomes one on [0,256)^D by dividing by 256^D, so the discrete
    NLL bound is NLL + D ln 256 nats: bpd = (NLL + D ln 256) / (D ln 2).
    """
    nll = torch.as_tensor(nll_nats, dtype=torch.float64)
    return (nll + data_dim * math.log(num_levels)) / (data_dim * math.log(2.0))


def active_units(posterior_means: Tensor, threshold: float = 0.01) -> Tensor:
    """Number of latent dims i with Cov_x(E_q[z_i|x]) > threshold (Burda et al. 2016).

    posterior_means: [N, d] posterior means over a data set; returns a 0-dim long tensor.
    """
    return (posterior_means.double().var(dim=0, unbiased=False) > threshold).sum()


def effective_beta(likelihood: Likelihood, beta: float) -> dict[str, float]:
    """β rescaled to the conventions β-VAE papers use, where it is well defined.

    The likelihood answers (:meth:`Likelihood.effective_beta`): with a shared scale s,
    −log p(x|z) = (Σ residual terms)/c(s) + const, so the loss rec_nll + β·KL has the
    gradient direction of
      Gaussian (σ):   SSE + β′·KL, β′ = 2σ²β       Laplace (b): SAE + β′·KL, β′ = bβ
      Bernoulli:      BCE_sum + β′·KL, β′ = β
    ``effective_beta`` is β′ (sum-over-pixels reconstruction convention);
    ``effective_beta_per_dim`` is β′/D (per-pixel-mean reconstruction convention, as in
    "MSE + β·KL" code). Per-pixel and decoder-predicted scales have no single value: {}.
    """
    value = likelihood.effective_beta(beta)
    if value is None:
        return {}
    return {"effective_beta": value, "effective_beta_per_dim": value / likelihood.data_dim}
