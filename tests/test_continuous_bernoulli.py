"""The logit-space continuous Bernoulli against independent references.

References, never the implementation itself: mpmath at 50 digits (skipped where mpmath is
missing), scipy quadrature of e^{x·l} over [0, 1], numpy float64 closed forms, the exact
CDF for samples, and autograd.gradcheck's finite differences.

Tolerances: values within 4 ulps relative of the exact result in their dtype (4·eps: 8.9e-16
in float64, 4.8e-7 in float32; measured ≤ 1.2 ulps), gradients within 8 ulps (measured
≤ 4.3 ulps, the series side of d log C/dl and the closed side of dE[x]/dl near the switch).
"""

import functools
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from vaesweep.data import load_dataset, preprocess
from vaesweep.model import continuous_bernoulli as cb
from vaesweep.model.components import build_likelihood

DTYPES = [torch.float32, torch.float64]
MAGNITUDES = [1e-8, 1e-4, 0.01, 0.1, 1, 5, 16, 17, 30, 50, 88, 89, 100]
GRID = [0.0, *MAGNITUDES, *(-m for m in MAGNITUDES)]
VALUE_ULPS, GRAD_ULPS = 4, 8


def dense_grid(dtype: torch.dtype) -> torch.Tensor:
    """GRID, both sides of the series/closed-form switch and of the e^{−|l|} cutoff (exactly
    at them and one ulp either side), and a sweep of [−6, 6] and of magnitudes to 1e3."""
    edges = []
    for edge in (cb.SWITCH[dtype][0], cb.EXP_CUTOFF[dtype]):
        t = torch.tensor(edge, dtype=dtype)
        for v in (torch.nextafter(t, t.new_tensor(0.0)), t, torch.nextafter(t, t.new_tensor(1e9))):
            edges += [float(v), -float(v)]
    mags = np.geomspace(1e-12, 1e3, 151)
    points = np.concatenate([GRID, edges, np.linspace(-6, 6, 241), mags, -mags])
    return torch.tensor(points, dtype=dtype)


@pytest.fixture(scope="module")
def mp():
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):
        yield mpmath


def exact(mp, logit: float) -> dict[str, float]:
    """log C, A = log(expm1(l)/l), E[x] and the derivatives of log C and E[x] at l = logit."""
    if logit == 0:
        return {"log_c": math.log(2), "a": 0.0, "mean": 0.5, "d_log_c": 0.0, "d_mean": 1 / 12}
    t = mp.mpf(logit)
    return {
        "log_c": float(mp.log(t / mp.tanh(t / 2))),
        "a": float(mp.log(mp.expm1(t) / t)),
        "mean": float(1 / (1 - mp.exp(-t)) - 1 / t),
        "d_log_c": float(1 / t - 1 / mp.sinh(t)),
        "d_mean": float(1 / t**2 - 1 / (4 * mp.sinh(t / 2) ** 2)),
    }


def assert_ulps(got: torch.Tensor, ref: np.ndarray, dtype: torch.dtype, ulps: float, what: str):
    got = got.detach().double().numpy()
    rel = np.abs(got - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
    worst = int(np.argmax(rel))
    eps = torch.finfo(dtype).eps
    assert rel[worst] <= ulps * eps, f"{what}: {rel[worst] / eps:.2f} ulps at entry {worst}"


# --- values --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_match_mpmath(mp, dtype):
    logits = dense_grid(dtype)
    refs = [exact(mp, float(v)) for v in logits]
    for name, fn in (
        ("log_c", cb.log_normalizer),
        ("a", cb.log_partition),
        ("mean", cb.mean),
    ):
        got = fn(logits)
        assert got.dtype == dtype
        assert_ulps(got, np.array([r[name] for r in refs]), dtype, VALUE_ULPS, name)


def quadrature_log_normalizer(t: float) -> float:
    """log C(l) = softplus(l) − A(l) with A(l) = m + log ∫₀¹ e^{x·l − m} dx, m = max(l, 0)
    (so the integrand is ≤ 1): log C = log1p(e^{−|l|}) − log ∫₀¹ e^{x·l − m} dx."""
    m = max(t, 0.0)
    integral, _ = integrate.quad(
        lambda x: math.exp(x * t - m), 0, 1, epsabs=0, epsrel=1e-13, limit=200
    )
    return math.log1p(math.exp(-abs(t))) - math.log(integral)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_normalizer_matches_quadrature_and_numpy(dtype):
    """Two references that need no mpmath: quadrature (1e-12 relative) and numpy's float64
    log(l/tanh(l/2)) (a few ulps, for l ≠ 0)."""
    logits = torch.tensor(GRID, dtype=dtype)
    got = cb.log_normalizer(logits).double().numpy()
    at = logits.double().numpy()  # the logits as the dtype rounds them
    quad = np.array([quadrature_log_normalizer(float(v)) for v in at])
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(got, quad, rtol=rtol, atol=0)
    nonzero = at != 0
    closed = np.log(at[nonzero] / np.tanh(at[nonzero] / 2))
    rtol = 8 * np.finfo(np.float64).eps if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(got[nonzero], closed, rtol=rtol, atol=0)
    assert got[~nonzero][0] == pytest.approx(math.log(2), rel=rtol)


@pytest.mark.parametrize(
    "logit", [-1000.0, -100.0, -50.0, -30.0, -17.0, 0.0, 1e-4, 17.0, 89.0, 1e3]
)
def test_density_integrates_to_one_with_the_stated_mean(logit):
    """∫₀¹ p(x | l) dx = 1 and ∫₀¹ x p(x | l) dx = E[x], by quadrature of exp(log_prob) in
    float64, including logits where torch.distributions.ContinuousBernoulli's float32
    density integrates to 0.53 (|l| = 30) and 0.32 (|l| = 50)."""
    t = torch.tensor(logit, dtype=torch.float64)

    def density(x: float) -> float:
        return math.exp(float(cb.log_prob(torch.tensor(x, dtype=torch.float64), t)))

    # The mass sits within ~1/|l| of one end: tell quad where.
    edge = 20 / abs(logit) if abs(logit) > 20 else None
    points = None if edge is None else [edge if logit < 0 else 1 - edge]
    opts = {"epsabs": 0, "epsrel": 1e-13, "limit": 200, "points": points}
    mass, _ = integrate.quad(density, 0, 1, **opts)
    first, _ = integrate.quad(lambda x: x * density(x), 0, 1, **opts)
    assert mass == pytest.approx(1.0, abs=1e-12)
    assert first == pytest.approx(float(cb.mean(t)), rel=1e-12)


def test_even_normaliser_and_mirrored_mean():
    """log C(−l) = log C(l) bit for bit; E[x | −l] = 1 − E[x | l]; the asymptotes."""
    logits = dense_grid(torch.float64)
    assert torch.equal(cb.log_normalizer(-logits), cb.log_normalizer(logits))
    torch.testing.assert_close(cb.mean(-logits), 1 - cb.mean(logits), rtol=0, atol=3e-16)
    for dtype in DTYPES:
        big = torch.tensor([1e4, -1e4, 1e30], dtype=dtype)
        torch.testing.assert_close(
            cb.mean(big), torch.tensor([1 - 1e-4, 1e-4, 1.0], dtype=dtype), rtol=2e-7, atol=0
        )
        torch.testing.assert_close(cb.log_normalizer(big), big.abs().log(), rtol=2e-7, atol=0)


# --- gradients -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_match_analytic_derivatives(mp, dtype):
    """d log C/dl = 1/l − 1/sinh l, dE[x]/dl = 1/l² − 1/(4 sinh²(l/2)) (the variance),
    dA/dl = E[x], d log p/dl = x − E[x] and d log p/dx = l (mpmath references)."""
    logits = dense_grid(dtype).requires_grad_(True)
    refs = [exact(mp, float(v)) for v in logits.detach()]
    for name, fn, ref in (
        ("d_log_c", cb.log_normalizer, [r["d_log_c"] for r in refs]),
        ("d_mean", cb.mean, [r["d_mean"] for r in refs]),
        ("d_a", cb.log_partition, [r["mean"] for r in refs]),
    ):
        (grad,) = torch.autograd.grad(fn(logits).sum(), logits)
        assert_ulps(grad, np.array(ref), dtype, GRAD_ULPS, name)

    x = torch.rand(logits.shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    d_x, d_l = torch.autograd.grad(cb.log_prob(x, logits).sum(), (x, logits))
    assert torch.equal(d_x, logits.detach())
    ref = x.detach().double().numpy() - np.array([r["mean"] for r in refs])
    np.testing.assert_allclose(d_l.double().numpy(), ref, rtol=0, atol=4 * torch.finfo(dtype).eps)


GRADCHECK_POINTS = [0.0, 1e-8, -1e-4, 0.1, -1.0, 1.999, -2.0, 2.001, 5.0, -16.0, 30.0, -61.0, 100.0]


def test_gradcheck_float64():
    """Finite differences (first and second order) across the grid: exactly 0, the switch at
    |l| = 2 from both sides, the e^{−|l|} cutoff, large logits."""
    logits = torch.tensor(GRADCHECK_POINTS, dtype=torch.float64, requires_grad=True)
    x = torch.linspace(0, 1, len(GRADCHECK_POINTS), dtype=torch.float64, requires_grad=True)
    for fn in (cb.log_normalizer, cb.log_partition, cb.mean):
        assert torch.autograd.gradcheck(fn, (logits,), atol=1e-7, rtol=1e-6)
        assert torch.autograd.gradgradcheck(fn, (logits,), atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradcheck(cb.log_prob, (x, logits), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_values_and_gradients_at_any_finite_logit(dtype):
    """No inf/NaN, in the values or in the gradients (including through the branch that
    torch.where does not take), from the smallest subnormal to the largest float."""
    info = torch.finfo(dtype)
    mags = [0.0, info.tiny * info.eps, info.tiny, 1e-30, 1e-8, 2.0, 30.0, 60.0, 100.0]
    mags += [800.0, 1e4, 1e30, info.max]
    logits = torch.tensor([*mags, *(-m for m in mags)], dtype=dtype, requires_grad=True)
    fns = [cb.log_normalizer, cb.mean, cb.log_partition]
    fns += [functools.partial(cb.log_prob, x) for x in (0.0, 0.5, 1.0)]
    for fn in fns:
        value = fn(logits)
        (grad,) = torch.autograd.grad(value.sum(), logits)
        assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    sample = cb.sample(logits.detach(), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(sample).all() and ((sample >= 0) & (sample <= 1)).all()
    # At l = 0 exactly: d log C/dl = 0, dE[x]/dl = 1/12, d log p/dl = x − 1/2.
    zero = torch.zeros((), dtype=dtype, requires_grad=True)
    assert torch.autograd.grad(cb.log_normalizer(zero), zero)[0] == 0
    assert float(torch.autograd.grad(cb.mean(zero), zero)[0]) == pytest.approx(1 / 12, rel=1e-6)
    assert float(torch.autograd.grad(cb.log_prob(0.9, zero), zero)[0]) == pytest.approx(0.4)


# --- samples -------------------------------------------------------------------------------
def exact_cdf(x: np.ndarray, t: float) -> np.ndarray:
    """F(x) = (e^{t·x} − 1)/(e^t − 1) at logit t, written to stay finite (for t > 0 divided
    by e^t)."""
    if t == 0:
        return x
    if t < 0:
        return np.expm1(t * x) / np.expm1(t)
    return (np.exp(t * (x - 1)) - np.exp(-t)) / -np.expm1(-t)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logit", [-50.0, -3.0, -1e-3, 0.0, 1.0, 1.5, 3.0, 50.0])
def test_samples_follow_the_cdf(dtype, logit):
    """Kolmogorov–Smirnov against the exact CDF; logit 1 is the edge between the two inverse-
    CDF forms; every draw in [0, 1]."""
    logits = torch.full((20000,), logit, dtype=dtype)
    draws = cb.sample(logits, generator=torch.Generator().manual_seed(1))
    assert draws.dtype == dtype and not draws.requires_grad
    assert ((draws >= 0) & (draws <= 1)).all()
    result = stats.kstest(draws.double().numpy(), lambda x: exact_cdf(x, logit))
    assert result.pvalue > 1e-3


# --- the likelihood on logits a trained decoder produces ------------------------------------
@pytest.fixture(scope="module")
def trained_logits():
    """A decoder (one code per image → 784 logits) trained with Adam for 150 steps on the
    continuous-Bernoulli NLL of 32 dequantised mnist_small digits: most logits leave the
    range |l| < 16 where a clamped λ is accurate."""
    x = preprocess(
        load_dataset("mnist_small").splits["train"][:32],
        "dequantize",
        torch.Generator().manual_seed(0),
    )
    lik = build_likelihood("continuous_bernoulli", (1, 28, 28))
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(
        torch.nn.Linear(32, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 784),
        torch.nn.Unflatten(1, (1, 28, 28)),
    )
    codes = torch.eye(32)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=2e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend (seconds on a busy machine)
    try:
        for _ in range(150):
            optimizer.zero_grad()
            loss = lik.nll(x, decoder(codes)).mean()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        return x, decoder(codes)


def test_log_prob_exact_on_trained_logits(trained_logits):
    x, logits = trained_logits
    assert (logits.abs() > 16).float().mean() > 0.5
    x64, l64 = x.double().numpy(), logits.double().numpy()
    # Reference: numpy float64, the Bernoulli term plus log(l/tanh(l/2)) (no pixel has l = 0).
    terms = x64 * l64 - np.logaddexp(0, l64) + np.log(l64 / np.tanh(l64 / 2))
    ref = terms.reshape(len(x), -1).sum(1)
    lik = build_likelihood("continuous_bernoulli", (1, 28, 28))
    got64 = lik.log_prob(x.double(), logits.double()).numpy()
    got32 = lik.log_prob(x, logits).numpy()
    np.testing.assert_allclose(got64, ref, rtol=0, atol=1e-8)  # nats per image
    # float32: rounding of 784 terms of size up to |l|·eps (measured ≲ 4e-4 nats per image)
    np.testing.assert_allclose(got32, ref, rtol=0, atol=3e-3)


# --- the likelihood class ------------------------------------------------------------------
def test_likelihood_class_uses_the_logit_space_functions():
    shape = (2, 3, 4)
    lik = build_likelihood("continuous_bernoulli", shape).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, *shape, dtype=torch.float64, generator=gen)
    params = 40 * torch.randn(7, 5, *shape, dtype=torch.float64, generator=gen)
    nll = lik.nll(x, params)  # [B] data against [K, B] importance samples
    assert nll.shape == (7, 5)
    torch.testing.assert_close(nll, -cb.log_prob(x, params).sum((-3, -2, -1)), rtol=0, atol=0)
    torch.testing.assert_close(lik.log_prob(x, params), -nll, rtol=0, atol=0)
    torch.testing.assert_close(lik.mean(params), cb.mean(params), rtol=0, atol=0)
    assert lik.sample(params).shape == params.shape
    with pytest.raises(NotImplementedError, match="pytorch#72525"):
        lik.distribution(params)
    # Reduced precision (e.g. under autocast) is computed in float32.
    half = params.to(torch.bfloat16)
    got = lik.log_prob(x.float(), half)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, lik.log_prob(x.float(), half.float()), rtol=0, atol=0)
    assert lik.mean(half).dtype == torch.bfloat16
