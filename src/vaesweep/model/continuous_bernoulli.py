"""The continuous Bernoulli on [0, 1], computed from its logits l in logit space.

The density is p(x | l) = C(l) λ^x (1−λ)^(1−x) with λ = sigmoid(l), or, as an exponential
family with natural parameter l and sufficient statistic x,

    log p(x | l) = x·l − A(l),    A(l) = log ∫₀¹ e^{lx} dx = log(expm1(l) / l),

and the normaliser is log C(l) = softplus(l) − A(l) = log(l / tanh(l/2)), even in l, C(0) = 2.

``torch.distributions.ContinuousBernoulli`` evaluates these from ``clamp(sigmoid(l), eps,
1−eps)``, so beyond |l| ≈ 16 in float32 its normaliser, log-density and mean are wrong and
the gradient of log C is zero (pytorch#72525). Here nothing goes through λ. Every function
splits the logits at a per-dtype threshold T (``SWITCH``):

- |l| ≥ T, closed forms in a = |l| and e = e^{−a} ≤ e^{−T} (so 1 − e needs no expm1):
  k(a) = log(a / (1 − e)) = log a − log1p(−e), A(l) = relu(l) − k(a),
  log C(l) = log1p(e) + k(a) = log a + 2 artanh(e), and
  E[x] = 1 − 1/a + 1/expm1(a) for l > 0, 1/a − 1/expm1(a) for l < 0, with 1/expm1(a)
  evaluated as e/(1 − e). Nothing overflows for any finite l, and each form tends to its
  asymptote (log C → log a, E[x] → 1 − 1/l or 1/|l|). Beyond a cutoff (``EXP_CUTOFF``)
  e is set to 0, where it no longer changes any result, instead of becoming subnormal.
- |l| < T, the Taylor series log(expm1(l)/l) = l/2 + Σₙ B₂ₙ l^{2n} / (2n·(2n)!) (B₂ₙ the
  Bernoulli numbers; radius of convergence 2π) and its derivative E[x] = 1/2 + Σₙ B₂ₙ
  l^{2n−1} / (2n)!, i.e. A(l) = l/2 + l²/24 − l⁴/2880 + … and E[x] = 1/2 + l/12 − l³/720
  + …; log C(l) = log 2 + log cosh(l/2) − (A(l) − l/2), with log cosh(l/2) evaluated as
  log1p(2 sinh²(l/4)) (C/2 = 1 + l²/12 − l⁴/720 + …, so log C = log 2 + l²/12 − 7l⁴/1440
  + …).

Why a threshold: the closed forms are differences of terms of size 1/a (the mean, the
gradients; e.g. d log C/dl = 1/l − 1/sinh(l) ≈ l/6), so for small a their rounding error
grows like eps/a (values) and eps/a² (gradients), and at l = 0 they are 0/0. The series
has no such cancellation but needs more terms the larger T is. Both errors, counted in
ulps, are the same in float32 and float64 (they scale with eps), so both dtypes switch at
T = 2, the smallest T at which the closed-form gradients stay within a few ulps (measured
against mpmath, worst case dE[x]/dl: ~22 ulps with T = 1, ~10 with T = 1.5, ~4 with
T = 2). The dtype sets the number N of series terms: the most demanding use is dE[x]/dl,
whose omitted terms are ≈ 2(2n−1)(T/2π)^{2n}/T² against dE[x]/dl(2) ≈ 0.069, and N is
the smallest count that brings the first omitted one to about an ulp at |l| = T:

- float64: N = 17 (n = 18: 2.2e-17, ~1.4 ulps; with N = 16, ~13 ulps);
- float32: N = 8 (n = 9: 9.6e-9, ~1.2 ulps; with N = 7, ~10 ulps).

Measured over a dense grid against mpmath, in both dtypes: values within 1.2 ulps,
gradients within 4.3 ulps (tests/test_continuous_bernoulli.py checks 4 and 8 ulps).

All branches go through ``torch.where`` with safe inputs on both sides ("double where"):
the branch not taken is evaluated at a harmless point (the series at 0, the closed form at
T), so neither its value nor its gradient is ever inf or NaN, for any finite l. Gradients
are plain autograd of these expressions (differentiable twice and more).

Computation happens in the logits' dtype for float32 and float64; float16 and bfloat16
(e.g. under autocast) are computed in float32 and the densities returned in float32.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import Tensor

__all__ = ["log_normalizer", "log_partition", "log_prob", "mean", "sample"]


def _bernoulli_numbers(count: int) -> list[Fraction]:
    """B₀ … B_{count−1} (B₁ = −1/2), from Σ_{k<m+1} C(m+1, k) B_k = 0."""
    numbers: list[Fraction] = []
    for m in range(count):
        total = sum((math.comb(m + 1, k) * b for k, b in enumerate(numbers)), Fraction(0))
        numbers.append(Fraction(1) if m == 0 else -total / (m + 1))
    return numbers


#: Per working dtype: (switch threshold T on |l|, number N of series terms).
SWITCH: dict[torch.dtype, tuple[float, int]] = {
    torch.float64: (2.0, 17),
    torch.float32: (2.0, 8),
}
#: Per working dtype: the a = |l| beyond which e^{−a} is taken as 0. Every closed form uses
#: e^{−a} next to terms ≥ 1/a (and its a-derivative next to 1/a²), so it is below half an ulp
#: once a²·e^{−a} < eps/2 (a ≳ 45 in float64, ≳ 23 in float32); this cutoff keeps a margin.
EXP_CUTOFF: dict[torch.dtype, float] = {torch.float64: 60.0, torch.float32: 30.0}
_MAX_TERMS = max(n for _, n in SWITCH.values())
_B = _bernoulli_numbers(2 * _MAX_TERMS + 1)
#: E[x] = 1/2 + l · Σ_{n≥1} MEAN_COEFFS[n−1] · (l²)^{n−1},  coefficient B₂ₙ/(2n)!.
MEAN_COEFFS = tuple(float(_B[2 * n] / math.factorial(2 * n)) for n in range(1, _MAX_TERMS + 1))
#: A(l) − l/2 = Σ_{n≥1} PARTITION_COEFFS[n−1] · (l²)^n,  coefficient B₂ₙ/(2n·(2n)!).
PARTITION_COEFFS = tuple(
    float(_B[2 * n] / (2 * n * math.factorial(2 * n))) for n in range(1, _MAX_TERMS + 1)
)


def _working(t: Tensor) -> Tensor:
    """float32/float64 stay as they are; lower precisions are computed in float32."""
    if t.dtype in SWITCH:
        return t
    if not t.is_floating_point():
        raise TypeError(f"continuous Bernoulli logits must be floating point, got {t.dtype}")
    return t.float()


def _horner(coeffs: tuple[float, ...], u: Tensor) -> Tensor:
    """Σ_i coeffs[i]·u^i (at least two coefficients)."""
    acc = u * coeffs[-1] + coeffs[-2]
    for c in reversed(coeffs[:-2]):
        acc = (acc * u).add_(c)  # in place on a fresh product: autograd keeps its inputs
    return acc


class _Split:
    """The logits split at the dtype's threshold, with safe inputs for each branch."""

    def __init__(self, logits: Tensor) -> None:
        threshold, terms = SWITCH[logits.dtype]
        self.small = logits.abs() < threshold
        self.terms = terms
        #: the logits where the series applies, 0 elsewhere
        self.l_series = torch.where(self.small, logits, 0.0)
        self.u = self.l_series * self.l_series
        #: |l| where the closed forms apply, T elsewhere
        self.a = torch.where(self.small, threshold, logits).abs()
        #: e^{−a} ≤ e^{−T}: 1 − e^{−a} then needs no expm1 (whose backward, computed from
        #: its result + 1, loses e^{−a}'s digits). Set to 0 beyond the cutoff, where it no
        #: longer changes any result, rather than letting it become subnormal (slow on CPUs).
        cutoff = EXP_CUTOFF[logits.dtype]
        self.exp = torch.where(self.a < cutoff, torch.exp(-self.a.clamp(max=cutoff)), 0.0)

    def series(self, coeffs: tuple[float, ...]) -> Tensor:
        return _horner(coeffs[: self.terms], self.u)

    def log_ratio(self) -> Tensor:
        """k(a) = log(a / (1 − e^{−a})) on the closed-form side."""
        return torch.log(self.a) - torch.log1p(-self.exp)


def _partition_parts(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(c, r) with A(l) = c·l − r: c = 1/2 and r = A(l) − l/2 series for |l| < T, c = [l > 0]
    and r = k(|l|) beyond. Written this way, log p = (x − c)·l + r needs no x·l − A(l)
    difference of two large numbers (at l = 100 and x = 1 it is 0·l + k)."""
    split = _Split(logits)
    c = torch.where(split.small, 0.5, (logits > 0).to(logits.dtype))
    r = torch.where(split.small, -(split.u * split.series(PARTITION_COEFFS)), split.log_ratio())
    return c, r


def log_partition(logits: Tensor) -> Tensor:
    """A(l) = log ∫₀¹ e^{lx} dx = log(expm1(l)/l), elementwise (A(0) = 0)."""
    logits = _working(logits)
    c, r = _partition_parts(logits)
    return c * logits - r


def log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log p(x | l) = x·l − softplus(l) + log C(l) = x·l − A(l), elementwise, no reduction.

    x and the logits broadcast against each other; x outside [0, 1] is not checked.
    """
    logits = _working(logits)
    c, r = _partition_parts(logits)
    return (x - c) * logits + r


def log_normalizer(logits: Tensor) -> Tensor:
    """log C(l) = log(l / tanh(l/2)), elementwise: even, log C(0) = log 2, ≈ log|l| for
    large |l|."""
    logits = _working(logits)
    split = _Split(logits)
    quarter = split.l_series / 4
    series = (
        math.log(2.0)
        + torch.log1p(2 * torch.sinh(quarter).square())
        - split.u * split.series(PARTITION_COEFFS)
    )
    # log a + log((1 + e^{−a}) / (1 − e^{−a}))
    closed = torch.log(split.a) + 2 * torch.atanh(split.exp)
    return torch.where(split.small, series, closed)


def mean(logits: Tensor) -> Tensor:
    """E[x | l] = 1/(1 − e^{−l}) − 1/l = A′(l), elementwise (1/2 at l = 0, → 1 − 1/l as
    l → +∞ and → 1/|l| as l → −∞); in the logits' dtype."""
    working = _working(logits)
    split = _Split(working)
    series = 0.5 + split.l_series * split.series(MEAN_COEFFS)
    # 1/expm1(a) as e^{−a}/(1 − e^{−a}): finite for every a ≥ T.
    tail = split.exp / (1 - split.exp) - 1 / split.a
    closed = torch.where(working > 0, 1 + tail, -tail)
    return torch.where(split.small, series, closed).to(logits.dtype)


@torch.no_grad()
def sample(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per element by inverting the CDF F(x) = expm1(l·x)/expm1(l) at u ~ U[0, 1):

    x = log1p(u·expm1(l))/l for l ≤ 1 (x = u at l = 0), and for l > 1, where expm1(l) may
    overflow, the same value as x = 1 + log(u + (1−u)·e^{−l})/l; clamped to [0, 1].
    Not reparameterised (no gradient); in the logits' dtype.
    """
    working = _working(logits)
    u = torch.rand(working.shape, generator=generator, dtype=working.dtype, device=working.device)
    large = working > 1
    nonzero = working != 0
    low = torch.where(large | ~nonzero, 1.0, working)  # safe: l ≤ 1, l ≠ 0
    high = torch.where(large, working, 2.0)  # safe: l > 1
    x_low = torch.log1p(u * torch.expm1(low)) / low
    x_high = 1 + torch.log(u + (1 - u) * torch.exp(-high)) / high
    x = torch.where(large, x_high, torch.where(nonzero, x_low, u))
    return x.clamp_(0.0, 1.0).to(logits.dtype)
