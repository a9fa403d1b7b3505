"""Latent KL, ELBO/IWAE estimators and derived metrics against closed forms and scipy."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.distributions import Normal, kl_divergence

from vaesweep.model.components import build_likelihood
from vaesweep.model.latent import DiagonalGaussian, standard_normal_log_prob
from vaesweep.model.likelihoods import SCALE_MODES
from vaesweep.model.objective import (
    active_units,
    bits_per_dim,
    default_chunk_size,
    effective_beta,
    elbo_terms,
    importance_estimates,
)


def test_kl_matches_torch_distributions_and_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    q = DiagonalGaussian(mu, logvar)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(q.kl_to_standard_normal(), ref, atol=1e-12)
    z = q.rsample(200_000)
    mc = (q.log_prob(z) - standard_normal_log_prob(z)).mean(0)
    assert torch.allclose(mc, ref, atol=0.03)


def test_kl_zero_at_prior_and_nonnegative():
    q = DiagonalGaussian(torch.zeros(3, 5), torch.zeros(3, 5))
    assert torch.equal(q.kl_to_standard_normal(), torch.zeros(3))
    torch.manual_seed(1)
    q = DiagonalGaussian(3 * torch.randn(1000, 5), 3 * torch.randn(1000, 5))
    assert (q.kl_to_standard_normal() >= 0).all()


def test_log_probs_match_scipy():
    torch.manual_seed(2)
    mu, logvar = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    z = torch.randn(4, 3, dtype=torch.float64)
    q = DiagonalGaussian(mu, logvar)
    for b in range(4):
        cov = np.diag(np.exp(logvar[b].numpy()))
        ref_q = stats.multivariate_normal(mu[b].numpy(), cov).logpdf(z[b].numpy())
        assert float(q.log_prob(z)[b]) == pytest.approx(ref_q, abs=1e-10)
        ref_p = stats.multivariate_normal(np.zeros(3), np.eye(3)).logpdf(z[b].numpy())
        assert float(standard_normal_log_prob(z)[b]) == pytest.approx(ref_p, abs=1e-10)


def test_rsample_is_reparameterised():
    mu = torch.tensor([[1.0, -2.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, math.log(4.0)]], requires_grad=True)
    torch.manual_seed(3)
    z = DiagonalGaussian(mu, logvar).rsample(100_000)
    assert z.shape == (100_000, 1, 2)
    assert torch.allclose(z.mean((0, 1)), torch.tensor([1.0, -2.0]), atol=0.03)
    assert torch.allclose(z.std((0, 1)), torch.tensor([1.0, 2.0]), atol=0.03)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None


# --- a linear-Gaussian model: p(z) = N(0, I), p(x|z) = N(Wz + c, s² I), so
# p(x) = N(c, W Wᵀ + s² I) and the true posterior is Gaussian. ---------------------------------

D_LIN, d_LIN, S = 6, 2, 0.5
SHAPE = (1, 2, 3)


class LinearGaussian:
    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(D_LIN, d_LIN, generator=g, dtype=torch.float64)
        self.c = torch.randn(D_LIN, generator=g, dtype=torch.float64)
        self.lik = build_likelihood("gaussian", SHAPE, scale_value=S).double()
        # Exact posterior: Σ = (I + WᵀW/s²)⁻¹, m = Σ Wᵀ (x − c)/s².
        self.post_cov = torch.linalg.inv(
            torch.eye(d_LIN, dtype=torch.float64) + self.W.T @ self.W / S**2
        )

    def decoder(self, z):
        return (z @ self.W.T + self.c).reshape(*z.shape[:-1], *SHAPE)

    def exact_encoder(self, x):
        m = (x.reshape(x.shape[0], -1) - self.c) @ self.W @ self.post_cov / S**2
        # Exact posterior mean and the diagonal of its covariance: this is exactly p(z|x)
        # when W has orthogonal columns (then Σ is diagonal).
        return torch.cat([m, self.post_cov.diagonal().log().expand_as(m)], dim=-1)

    def sample_x(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, d_LIN, generator=g, dtype=torch.float64)
        noise = S * torch.randn(n, D_LIN, generator=g, dtype=torch.float64)
        return (z @ self.W.T + self.c + noise).reshape(n, *SHAPE)

    def exact_log_px(self, x):
        cov = (self.W @ self.W.T + S**2 * np.eye(D_LIN)).numpy()
        return stats.multivariate_normal(self.c.numpy(), cov).logpdf(x.reshape(len(x), -1).numpy())


def test_iwae_is_exact_when_the_posterior_is_exact():
    """With W's columns orthogonal the true posterior is diagonal, so q = p(z|x) and every
    importance weight equals p(x): IWAE_k = ELBO = log p(x) exactly, for any k."""
    model = LinearGaussian()
    q, _ = torch.linalg.qr(model.W)
    model.W = q * torch.tensor([1.5, 0.7], dtype=torch.float64)
    model.post_cov = torch.linalg.inv(
        torch.eye(d_LIN, dtype=torch.float64) + model.W.T @ model.W / S**2
    )
    assert torch.allclose(model.post_cov, model.post_cov.diagonal().diag())
    x = model.sample_x(20)
    exact = model.exact_log_px(x)
    for k in (1, 10, 1000):
        got = importance_estimates(x, model.exact_encoder, model.decoder, model.lik, k=k).log_px
        np.testing.assert_allclose(got.numpy(), exact, atol=1e-9)
    # The analytic-KL ELBO estimator is unbiased but not zero-variance: average many samples.
    terms = elbo_terms(x, model.exact_encoder, model.decoder, model.lik, n_samples=20_000)
    np.testing.assert_allclose(terms.elbo.numpy(), exact, atol=0.05)


def test_iwae_bounds_increase_in_k_and_converge_to_log_px():
    torch.manual_seed(0)
    model = LinearGaussian(seed=3)
    x = model.sample_x(200)
    exact = torch.tensor(model.exact_log_px(x))

    def encoder(x):  # deliberately wrong posterior: shifted mean, too wide
        h = model.exact_encoder(x)
        return torch.cat([h[:, :d_LIN] + 0.3, h[:, d_LIN:] + 0.7], dim=-1)

    elbo = elbo_terms(x, encoder, model.decoder, model.lik, n_samples=2000).elbo.mean()
    iwae_1 = torch.stack(
        [importance_estimates(x, encoder, model.decoder, model.lik, k=1).log_px for _ in range(50)]
    ).mean()
    assert float(iwae_1) == pytest.approx(float(elbo), abs=0.05)  # IWAE_1 is the ELBO
    means = [
        importance_estimates(x, encoder, model.decoder, model.lik, k=k).log_px.mean()
        for k in (1, 10, 100, 1000)
    ]
    assert all(b > a for a, b in zip(means, means[1:], strict=False))
    assert float(means[0]) < float(exact.mean()) - 0.5  # a visibly loose bound
    iwae_5000 = importance_estimates(
        x, encoder, model.decoder, model.lik, k=5000, chunk_size=256
    ).log_px
    assert float(iwae_5000.mean()) <= float(exact.mean()) + 0.01
    assert float((iwae_5000 - exact).abs().mean()) < 0.03
    assert float((iwae_5000 - exact).abs().max()) < 0.2


def test_iwae_chunks_bound_the_decoded_batch():
    model = LinearGaussian()
    seen = []

    def decoder(z):
        seen.append(z.shape[0])
        return model.decoder(z)

    x = model.sample_x(3)
    importance_estimates(x, model.exact_encoder, decoder, model.lik, k=5000, chunk_size=64)
    assert max(seen) == 64 and sum(seen) == 5000
    assert default_chunk_size(batch=500, data_dim=784) * 500 * 784 <= 2**23


def test_bits_per_dim_closed_forms():
    # The uniform density on [0,1]^D (NLL = 0 nats) costs exactly 8 bits per 8-bit dim.
    assert float(bits_per_dim(0.0, 784)) == pytest.approx(8.0)
    nll = 600.0
    expected = (nll + 784 * math.log(256)) / (784 * math.log(2))
    assert float(bits_per_dim(nll, 784)) == pytest.approx(expected)


def test_bits_per_dim_bounds_the_discrete_bin_masses():
    """The meaning of bits/dim, from scipy: a factorised Gaussian density on [0, 1]^D gives
    8-bit data k the probability P(k) = Π (Φ((k+1)/256) − Φ(k/256)), whose cost is
    −log₂ P(k) / D bits per dim. The dequantised continuous NLL, E_u[−log p((k + u)/256)]
    (quadrature over u ~ U(0, 1)), converted by bits_per_dim, bounds it from above
    (Jensen) and, for a density this smooth at the bins' scale, within 10⁻⁵ bits."""
    means, sigma, k = np.array([0.3, 0.5, 0.8]), 0.1, np.array([70, 130, 200])
    d = len(k)

    def dequantised_nll(i):
        return integrate.quad(lambda u: -stats.norm.logpdf((k[i] + u) / 256, means[i], sigma), 0, 1)

    nll = sum(dequantised_nll(i)[0] for i in range(d))
    mass = stats.norm.cdf((k + 1) / 256, means, sigma) - stats.norm.cdf(k / 256, means, sigma)
    discrete = -np.log2(mass).sum() / d
    bpd = float(bits_per_dim(nll, d))
    assert discrete <= bpd < discrete + 1e-5


def test_active_units_counts_dims_with_varying_means():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(5000, 4, generator=g) * torch.tensor([1.0, 0.2, 0.05, 0.0])
    # variances 1, 0.04, 0.0025, 0 → two dims above 0.01
    assert int(active_units(means)) == 2
    assert int(active_units(means, threshold=0.001)) == 3


def test_effective_beta_gives_the_same_gradient_direction():
    """rec_nll + β·KL (Gaussian σ) is (1/2σ²)·(SSE + β′·KL): same gradient up to a factor."""
    sigma, beta = 0.3, 4.0
    lik = build_likelihood("gaussian", (1, 2, 2), scale_value=sigma)
    eff = effective_beta(lik, beta)
    assert eff["effective_beta"] == pytest.approx(2 * sigma**2 * beta)
    assert eff["effective_beta_per_dim"] == pytest.approx(2 * sigma**2 * beta / 4)
    torch.manual_seed(0)
    x, loc = torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2, requires_grad=True)
    mu = torch.randn(3, 2, requires_grad=True)
    kl = DiagonalGaussian(mu, torch.zeros(3, 2)).kl_to_standard_normal()
    g1 = torch.autograd.grad(
        (-lik.log_prob(x, loc) + beta * kl).sum(), (loc, mu), retain_graph=True
    )
    g2 = torch.autograd.grad(
        ((x - loc).pow(2).sum((1, 2, 3)) + eff["effective_beta"] * kl).sum(), (loc, mu)
    )
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a * 2 * sigma**2, b, atol=1e-6)
    lap = build_likelihood("laplace", (1, 2, 2), scale_value=0.5)
    assert effective_beta(lap, 2.0)["effective_beta"] == pytest.approx(1.0)
    assert effective_beta(build_likelihood("bernoulli", (1, 2, 2)), 2.0)["effective_beta"] == 2.0
    assert effective_beta(build_likelihood("gaussian", (1, 2, 2), scale="decoder"), 1.0) == {}


def test_elbo_terms_reductions_sum_over_dims():
    """rec_nll is a sum over all D pixels (not a mean): a per-pixel error of e gives D·e."""
    lik = build_likelihood("laplace", (1, 4, 4))
    x = torch.full((2, 1, 4, 4), 0.5)

    def encoder(x):
        return torch.zeros(x.shape[0], 4)

    def decoder(z):
        return torch.full((*z.shape[:-1], 1, 4, 4), 0.25)

    terms = elbo_terms(x, encoder, decoder, lik)
    per_pixel = math.log(2.0) + 0.25  # −log Lap(0.5; 0.25, 1)
    assert torch.allclose(terms.rec_nll, torch.full((2,), 16 * per_pixel))
    assert torch.equal(terms.kl, torch.zeros(2))
    assert torch.allclose(terms.elbo, -terms.rec_nll)


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        *((name, mode) for name in ("gaussian", "laplace") for mode in SCALE_MODES),
        ("bernoulli", None),
        ("continuous_bernoulli", None),
    ],
)
def test_effective_beta_is_each_likelihoods_closed_form(name, mode):
    """docs/math.md §5: β′ = 2σ²β (Gaussian), bβ (Laplace), β (Bernoulli, continuous
    Bernoulli), with the scale in force; no single value ({}) for per-pixel or decoder scales."""
    shape, beta = (1, 3, 3), 1.7
    options = {"scale": mode, "scale_value": 0.4} if mode else {}
    lik = build_likelihood(name, shape, **options).double()
    rng = np.random.default_rng(3)
    if mode == "learned":  # a raw log-scale well below and above the soft floor's knee
        with torch.no_grad():
            lik.scale_mode.log_scale.fill_(-1.3)
        s = math.exp(-6 + math.log1p(math.exp(-1.3 + 6)))
    elif mode == "optimal":  # the running average of one training batch
        x, loc = rng.uniform(0, 1, (4, *shape)), rng.uniform(0, 1, (4, *shape))
        lik.observe(torch.tensor(x), torch.tensor(loc))
        raw = math.sqrt(np.mean((x - loc) ** 2)) if name == "gaussian" else np.mean(abs(x - loc))
        s = math.exp(-6 + math.log1p(math.exp(math.log(raw) + 6)))
    else:
        s = 0.4
    got = effective_beta(lik, beta)
    if mode in ("per_pixel", "decoder"):
        assert lik.effective_beta(beta) is None
        assert got == {}
        return
    expected = {"gaussian": 2 * s * s * beta, "laplace": s * beta}.get(name, beta)
    rel = 1e-7 if mode == "fixed" else 1e-12  # a fixed σ is reported in float32
    assert lik.effective_beta(beta) == pytest.approx(expected, rel=rel)
    assert got["effective_beta"] == pytest.approx(expected, rel=rel)
    assert got["effective_beta_per_dim"] == pytest.approx(expected / 9, rel=rel)
