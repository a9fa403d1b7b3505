"""Decoder likelihoods p(x | decoder output): exact, normalised, comparable across families.

Every likelihood answers the same questions, so the module and the evaluation code never
branch on a name (the shape of torch.distributions):

- ``param_channels``: decoder outputs needed per data channel (2 when the decoder also
  predicts a log-scale);
- ``log_prob(x, params)``: log p(x | params) per example in nats, summed over all C·H·W
  data dimensions, shape ``params.shape[:-3]`` (e.g. [B], or [K, B] for K importance samples);
- ``mean(params)`` and ``sample(params)``: the reconstruction and a draw, shaped like x;
- ``scale()``: the scale in force (σ or b) as a 0-dim tensor, or None when it has none.

Decoder outputs are grouped by parameter along the channel axis: ``params[..., :C, :, :]``
is the location (or the logits), ``params[..., C:2C, :, :]`` the raw log-scale when
``param_channels == 2``.

All constants are kept (−½ log 2π for the Gaussian, −log 2 for the Laplace, the continuous
Bernoulli normaliser), so ELBOs of different likelihoods on the same data are comparable.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch import distributions as td
from torch.distributions import Distribution, Independent

from vaesweep import continuous_bernoulli

SCALE_MODES = ("fixed", "learned", "per_pixel", "decoder", "optimal")
#: "value": a learned scale starts at ``scale_value``; "data": at the residual scale of the
#: untrained model on the first training batch (shared, or per pixel for ``per_pixel``).
SCALE_INITS = ("value", "data")
OPTIMAL_REDUCTIONS = ("batch", "example")
DATA_DIMS = (-3, -2, -1)


def soft_clip(t: Tensor, minimum: float | None) -> Tensor:
    """Soft lower clip ``minimum + softplus(t − minimum)``; identity when minimum is None.

    A Gaussian or Laplace likelihood is unbounded as its scale → 0 (zero residuals give
    +∞ log-density), so log-scales pass through this smooth floor: ≈ t well above the
    minimum, → minimum far below it, gradient never exactly zero.
    """
    if minimum is None:
        return t
    return minimum + F.softplus(t - minimum)


def inverse_soft_clip(y: Tensor, minimum: float | None) -> Tensor:
    """The t with ``soft_clip(t, minimum) == y`` (requires y > minimum)."""
    if minimum is None:
        return y
    gap = y - minimum
    return minimum + gap + torch.log(-torch.expm1(-gap))


def data_parallel_mean(stat: Tensor) -> Tensor:
    """Mean of a per-process statistic over data-parallel processes (identity without them).

    Under DDP each process holds 1/N of the global batch; averaging the per-process means
    (equal shard sizes) gives the statistic of the global batch, so σ* and its running
    average are the same as in a single-process run. Differentiable all-reduce.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stat
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(stat) / dist.get_world_size()


def _check(condition: bool, key: str, value: object, allowed: str) -> None:
    if not condition:
        raise ValueError(f"{key}={value!r} is invalid: allowed {allowed}")


class Likelihood(nn.Module):
    """Base class: a factorised density over C×H×W data given decoder outputs."""

    name: ClassVar[str]
    #: "binary": a normalised likelihood only on {0,1} data; "continuous": a density on [0,1]^D.
    data_kind: ClassVar[str]
    param_channels: int = 1

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        _check(
            len(shape) == 3 and all(int(s) > 0 for s in shape),
            "shape",
            shape,
            "(C, H, W) with positive sizes",
        )
        self.shape = tuple(int(s) for s in shape)

    @property
    def data_dim(self) -> int:
        """D = C·H·W, the number of data dimensions a log-density sums over."""
        return math.prod(self.shape)

    def split(self, params: Tensor) -> tuple[Tensor, ...]:
        """Split decoder output [..., P·C, H, W] into P tensors [..., C, H, W]."""
        expected = self.param_channels * self.shape[0]
        if params.shape[-3:] != (expected, *self.shape[1:]):
            raise ValueError(
                f"{self.name} expects decoder output [..., {expected}, {self.shape[1]}, "
                f"{self.shape[2]}], got {tuple(params.shape)}"
            )
        if self.param_channels == 1:
            return (params,)
        return params.chunk(self.param_channels, dim=-3)

    #: What to use instead of a config key this likelihood does not read: {key: hint}.
    hints: ClassVar[dict[str, str]] = {}

    @classmethod
    def unread_options(cls, options: dict[str, Any]) -> dict[str, str]:
        """The options that change nothing this likelihood computes, given ``options`` (its
        config), each with the reason. A sweep or run that sets one is refused
        (:mod:`vaesweep.effective`); every option is read unless a family says otherwise."""
        return {}

    def distribution(self, params: Tensor) -> Distribution:
        """p(x | params) as a torch Distribution with event shape (C, H, W)."""
        raise NotImplementedError

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x | params) per example: nats, summed over C·H·W, shape params.shape[:-3]."""
        return self.distribution(params).log_prob(x)

    def nll(self, x: Tensor, params: Tensor) -> Tensor:
        """−log p(x | params), exactly ``-log_prob`` (the training loss's reconstruction term;
        families override it to save the negations on the hot path)."""
        return -self.log_prob(x, params)

    def mean(self, params: Tensor) -> Tensor:
        """E[x | params], shaped like the data."""
        return self.distribution(params).mean

    def sample(self, params: Tensor) -> Tensor:
        """One draw x ~ p(x | params), shaped like the data."""
        return self.distribution(params).sample()

    def scale(self) -> Tensor | None:
        """The scale in force (σ or b) as a 0-dim tensor; None for scale-free families."""
        return None

    #: Learning rate of :meth:`scale_parameters` (None: the optimizer's).
    scale_lr: float | None = None

    def scale_parameters(self) -> list[nn.Parameter]:
        """The parameters of a learned scale (they get ``scale_lr``); none by default."""
        return []

    def needs_scale_init(self) -> bool:
        """Whether :meth:`initialize_scale` must run before the first training step."""
        return False

    def scale_ratio(self, sq_residual: Tensor, abs_residual: Tensor) -> Tensor | None:
        """How far the scale in force is from the residual scale of the evaluated data, as a
        ratio (1 = converged); None for families without a scale. ``sq_residual`` and
        ``abs_residual``: per-pixel means of (x − x̂)² and |x − x̂|, shaped (C, H, W)."""
        return None

    def initialize_scale(self, x: Tensor, loc: Tensor) -> None:
        """Data-dependent initialisation from a batch x and its reconstruction loc."""


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


class ContinuousBernoulliLikelihood(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019) on [0, 1] with logits l: the
    Bernoulli term plus log C, C = l/tanh(l/2) = 2 artanh(1−2λ)/(1−2λ), C(0) = 2; i.e.
    log p = x·l − log(expm1(l)/l).

    Computed from the logits by :mod:`vaesweep.continuous_bernoulli` (closed forms in |l|, a
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
            "log_prob, nll, mean and sample, or vaesweep.continuous_bernoulli"
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


class LocationScale(Likelihood):
    """Gaussian or Laplace with one of the scale modes of :data:`SCALE_MODES`.

    - ``fixed``: scale = ``scale_value`` (default 1).
    - ``learned``: one scalar log-scale parameter shared by all pixels and examples.
    - ``per_pixel``: a learned log-scale per data dimension (not input dependent).
    - ``decoder``: the decoder predicts a log-scale per pixel and example (2 channels/pixel).
    - ``optimal``: the closed-form maximiser for the current residuals r = x − μ, over the
      batch (``optimal_reduction="batch"``, the σ-VAE) or per example. While training the
      batch statistic is used and folded into a running average (an EMA with ``momentum``,
      a checkpointed buffer); in eval mode the running average is used, never the residuals
      of the data being scored (that would tune the density to the test set).

    Every learned or computed log-scale passes through :func:`soft_clip` with floor
    ``min_log_scale`` (default −6, i.e. scale ≳ e^−6); None disables the clip.
    """

    data_kind = "continuous"
    distribution_class: ClassVar[type[Distribution]]
    #: The test metric whose closed-form function is the optimal scale: "mse" or "mae".
    residual_metric: ClassVar[str]

    def __init__(
        self,
        shape: tuple[int, int, int],
        scale: str = "fixed",
        scale_value: float = 1.0,
        min_log_scale: float | None = -6.0,
        optimal_reduction: str = "batch",
        momentum: float = 0.99,
        scale_lr: float | None = None,
        scale_init: str = "value",
    ) -> None:
        super().__init__(shape)
        _check(scale in SCALE_MODES, "scale", scale, f"one of {list(SCALE_MODES)}")
        _check(
            isinstance(scale_value, int | float) and math.isfinite(scale_value) and scale_value > 0,
            "scale_value",
            scale_value,
            "a finite number > 0",
        )
        _check(
            min_log_scale is None
            or (isinstance(min_log_scale, int | float) and math.isfinite(min_log_scale)),
            "min_log_scale",
            min_log_scale,
            "a finite number or null (no clip)",
        )
        _check(
            optimal_reduction in OPTIMAL_REDUCTIONS,
            "optimal_reduction",
            optimal_reduction,
            f"one of {list(OPTIMAL_REDUCTIONS)}",
        )
        _check(0.0 <= momentum < 1.0, "momentum", momentum, "a number in [0, 1)")
        _check(
            scale_lr is None
            or (isinstance(scale_lr, int | float) and math.isfinite(scale_lr) and scale_lr > 0),
            "scale_lr",
            scale_lr,
            "null (the optimizer's lr) or a finite number > 0",
        )
        _check(scale_init in SCALE_INITS, "scale_init", scale_init, f"one of {list(SCALE_INITS)}")
        _check(
            self.min_log_scale_ok(scale, scale_value, min_log_scale),
            "scale_value",
            scale_value,
            f"a value above the clip floor exp(min_log_scale={min_log_scale}) for a learned scale",
        )
        self.mode = scale
        self.scale_value = float(scale_value)
        self.min_log_scale = None if min_log_scale is None else float(min_log_scale)
        self.optimal_reduction = optimal_reduction
        self.momentum = float(momentum)
        self.scale_lr = None if scale_lr is None else float(scale_lr)
        self.scale_init = scale_init
        self.param_channels = 2 if scale == "decoder" else 1

        init = torch.tensor(math.log(self.scale_value), dtype=torch.float32)
        if scale in ("learned", "per_pixel"):
            # Store the pre-clip value, so that the clipped scale starts at scale_value.
            init = inverse_soft_clip(init, self.min_log_scale)
        if scale == "learned":
            self.log_scale = nn.Parameter(init.clone())
        elif scale == "per_pixel":
            self.log_scale = nn.Parameter(torch.full(self.shape, float(init)))
        elif scale == "optimal":
            # Running average of the batch statistic (mean r² or mean |r|), seeded by the
            # first training batch; until then the scale is scale_value.
            self.register_buffer("running_stat", self._scale_to_stat(torch.exp(init)))
            self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        if scale in ("learned", "per_pixel") and scale_init == "data":
            # Set from the first training batch (``initialize_scale``); saved with the
            # weights, so a resumed run does not initialise again.
            self.register_buffer("scale_initialized", torch.zeros((), dtype=torch.bool))
        self._last_scale: Tensor | None = None

    #: The scale modes that read each mode-dependent option.
    OPTION_MODES: ClassVar[dict[str, tuple[str, ...]]] = {
        "scale_value": ("fixed", "learned", "per_pixel"),
        "min_log_scale": ("learned", "per_pixel", "decoder", "optimal"),
        "optimal_reduction": ("optimal",),
        "momentum": ("optimal",),
        "scale_lr": ("learned", "per_pixel"),
        "scale_init": ("learned", "per_pixel"),
    }

    @classmethod
    def unread_options(cls, options: dict[str, Any]) -> dict[str, str]:
        mode = options.get("scale", "fixed")
        unread = {
            key: f"it is read only with likelihood.scale={' or '.join(modes)}, and this run "
            f"has likelihood.scale={mode}"
            for key, modes in cls.OPTION_MODES.items()
            if mode not in modes
        }
        if mode in ("learned", "per_pixel") and options.get("scale_init") == "data":
            unread["scale_value"] = (
                "likelihood.scale_init=data starts the scale at the data's residual scale; "
                "scale_value is the start only with likelihood.scale_init=value"
            )
        return unread

    @staticmethod
    def min_log_scale_ok(mode: str, scale_value: float, min_log_scale: float | None) -> bool:
        """A learned scale must start above the soft clip's floor (else it cannot be hit)."""
        if mode not in ("learned", "per_pixel") or min_log_scale is None:
            return True
        return math.log(scale_value) > min_log_scale

    # --- family-specific pieces -------------------------------------------------------------
    #: c in log p = Σ_D [−c − s − w(s)·f(r)], s the log-scale and r = x − μ.
    log_norm: ClassVar[float]

    @staticmethod
    def _residual_term(residual: Tensor) -> Tensor:
        """f(r): r² (Gaussian) or |r| (Laplace), element-wise."""
        raise NotImplementedError

    @staticmethod
    def _weight(log_scale: Tensor) -> Tensor:
        """w(s): 1/(2σ²) (Gaussian) or 1/b (Laplace) from the log-scale s."""
        raise NotImplementedError

    @staticmethod
    def _residual_stat(residual: Tensor, dims: tuple[int, ...]) -> Tensor:
        """Statistic whose closed-form function is the optimal scale (mean r² or mean |r|)."""
        raise NotImplementedError

    @staticmethod
    def _stat_to_scale(stat: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def _scale_to_stat(scale: Tensor) -> Tensor:
        raise NotImplementedError

    # --- scale -----------------------------------------------------------------------------
    def log_scale_for(self, x: Tensor | None, loc: Tensor, raw: Tensor | None) -> Tensor:
        """Log-scale broadcastable to ``loc`` (after the soft clip where it applies).

        ``x`` is needed only by the optimal mode while training; ``raw`` is the decoder's
        log-scale output in ``decoder`` mode.
        """
        if self.mode == "fixed":
            return torch.full((), math.log(self.scale_value), dtype=loc.dtype, device=loc.device)
        if self.mode in ("learned", "per_pixel"):
            return soft_clip(self.log_scale, self.min_log_scale)
        if self.mode == "decoder":
            return soft_clip(raw, self.min_log_scale)
        # optimal
        if self.training and x is not None and torch.is_grad_enabled():
            residual = x - loc
            if self.optimal_reduction == "batch":
                stat = data_parallel_mean(
                    self._residual_stat(residual, tuple(range(residual.dim())))
                )
            else:
                stat = self._residual_stat(residual, DATA_DIMS)[..., None, None, None]
            self._update_running(data_parallel_mean(stat.detach().mean()))
            # Not detached, as in σ-VAE: at σ* the NLL is stationary in σ, so the path
            # through σ* adds (up to the clip) no gradient, and the loss is the log-MSE form.
            return self._stat_to_log_scale(stat)
        return self._stat_to_log_scale(self.running_stat)

    def _stat_to_log_scale(self, stat: Tensor) -> Tensor:
        # The floor on the statistic only guards log(0) for exactly zero residuals; the soft
        # clip is what bounds the likelihood.
        tiny = torch.finfo(stat.dtype).tiny
        return soft_clip(torch.log(self._stat_to_scale(stat.clamp_min(tiny))), self.min_log_scale)

    def scale_parameters(self) -> list[nn.Parameter]:
        return [self.log_scale] if self.mode in ("learned", "per_pixel") else []

    def needs_scale_init(self) -> bool:
        return hasattr(self, "scale_initialized") and not bool(self.scale_initialized)

    def scale_ratio(self, sq_residual: Tensor, abs_residual: Tensor) -> Tensor | None:
        """σ / √MSE (Gaussian) or b / MAE (Laplace) for a shared scale; for ``per_pixel``
        the geometric mean over pixels of σ_i / r_i, r_i the pixel's residual scale; None
        for ``decoder`` (a scale per example: no single residual to compare with).

        A residual scale below the floor exp(``min_log_scale``), which no scale can reach
        (an always-black border pixel), is compared with the floor instead: such a pixel
        counts as converged when its scale sits at the floor."""
        if self.mode == "decoder":
            return None
        stat = sq_residual if self.residual_metric == "mse" else abs_residual
        stat = stat.double().clamp_min(torch.finfo(torch.float64).tiny)
        if self.mode != "per_pixel":
            stat = stat.mean()
        target = torch.log(self._stat_to_scale(stat))
        if self.min_log_scale is not None:
            target = target.clamp_min(self.min_log_scale)
        if self.mode == "per_pixel":
            log_scale = soft_clip(self.log_scale.detach().double(), self.min_log_scale)
        else:
            log_scale = torch.log(self.scale().double())
        return torch.exp((log_scale - target).mean())

    @torch.no_grad()
    def initialize_scale(self, x: Tensor, loc: Tensor) -> None:
        """Sets a learned scale to the residual scale (√mean r² or mean |r|) of the batch x
        against its reconstruction loc: over all pixels (``learned``) or per pixel over the
        batch (``per_pixel``), averaged over data-parallel processes."""
        residual = x - loc
        dims = tuple(range(residual.dim())) if self.mode == "learned" else tuple(
            range(residual.dim() - 3)
        )
        stat = data_parallel_mean(self._residual_stat(residual, dims))
        log_scale = torch.log(self._stat_to_scale(stat.clamp_min(torch.finfo(stat.dtype).tiny)))
        if self.min_log_scale is not None:  # start strictly above the floor (invertible)
            log_scale = log_scale.clamp_min(self.min_log_scale + 1e-3)
        self.log_scale.copy_(inverse_soft_clip(log_scale, self.min_log_scale))
        self.scale_initialized.fill_(True)

    @torch.no_grad()
    def _update_running(self, stat: Tensor) -> None:
        first = self.num_batches_tracked == 0
        ema = self.momentum * self.running_stat + (1.0 - self.momentum) * stat
        self.running_stat.copy_(torch.where(first, stat, ema))
        self.num_batches_tracked += 1

    def scale(self) -> Tensor | None:
        """σ (or b) in force: fixed/learned value, the running average for ``optimal``, the
        geometric mean over pixels for ``per_pixel``, and the mean over the last scored
        batch for ``decoder``."""
        if self.mode == "fixed":
            return torch.tensor(self.scale_value)
        if self.mode == "learned":
            return torch.exp(soft_clip(self.log_scale, self.min_log_scale)).detach()
        if self.mode == "per_pixel":
            return torch.exp(soft_clip(self.log_scale, self.min_log_scale).mean()).detach()
        if self.mode == "optimal":
            return torch.exp(self._stat_to_log_scale(self.running_stat)).detach()
        return self._last_scale

    # --- density -----------------------------------------------------------------------------
    def _distribution(self, params: Tensor, x: Tensor | None) -> Distribution:
        parts = self.split(params)
        loc, raw = parts[0], (parts[1] if self.mode == "decoder" else None)
        log_scale = self.log_scale_for(x, loc, raw)
        scale = torch.exp(log_scale).expand_as(loc)
        if self.mode == "decoder":
            self._last_scale = scale.detach().mean()
        return Independent(self.distribution_class(loc, scale, validate_args=False), 3)

    def distribution(self, params: Tensor) -> Distribution:
        return self._distribution(params, None)

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x | params) per example, nats, summed over C·H·W: with log-scale s and
        residual r = x − μ, Σ_D [−c − s − w(s)·f(r)] (the family's c, w, f below).

        The same density as ``distribution(params).log_prob(x)`` (the tests check it against
        torch.distributions and scipy), written out (in ``nll``) because that expands the
        scale to the data's shape and takes ~8 element-wise passes.
        """
        return -self.nll(x, params)

    def nll(self, x: Tensor, params: Tensor) -> Tensor:
        """−log p(x | params) = Σ_D [c + s + w(s)·f(r)]. When s is the same for every pixel
        (fixed, learned and optimal scales) the sum factors, D·(c + s) + w(s)·Σ_D f(r), and
        only the residual term is element-wise."""
        parts = self.split(params)
        loc, raw = parts[0], (parts[1] if self.mode == "decoder" else None)
        log_scale = self.log_scale_for(x, loc, raw)
        if self.mode == "decoder":
            self._last_scale = torch.exp(log_scale).detach().mean()
        residual = self._residual_term(x - loc)
        if log_scale.dim() < 3 or log_scale.shape[-3:].numel() == 1:
            s = log_scale.reshape(log_scale.shape[:-3]) if log_scale.dim() >= 3 else log_scale
            return self.data_dim * (self.log_norm + s) + self._weight(s) * residual.sum(DATA_DIMS)
        return (self.log_norm + log_scale + self._weight(log_scale) * residual).sum(DATA_DIMS)

    def mean(self, params: Tensor) -> Tensor:
        return self.split(params)[0]


class GaussianLikelihood(LocationScale):
    """log N(x; μ, σ) = −½ log 2π − log σ − (x−μ)²/(2σ²), summed over pixels.

    Optimal scale: σ*² = mean (x−μ)², i.e. σ* = √MSE; at σ* the NLL per dimension is
    ½ + ½ ln(2π·MSE).
    """

    name = "gaussian"
    residual_metric = "mse"
    distribution_class = td.Normal
    log_norm = 0.5 * math.log(2.0 * math.pi)

    @staticmethod
    def _residual_term(residual: Tensor) -> Tensor:
        return residual.pow(2)

    @staticmethod
    def _weight(log_scale: Tensor) -> Tensor:
        return 0.5 * torch.exp(-2.0 * log_scale)

    @staticmethod
    def _residual_stat(residual: Tensor, dims: tuple[int, ...]) -> Tensor:
        return residual.pow(2).mean(dims)

    @staticmethod
    def _stat_to_scale(stat: Tensor) -> Tensor:
        return stat.sqrt()

    @staticmethod
    def _scale_to_stat(scale: Tensor) -> Tensor:
        return scale.pow(2)


class LaplaceLikelihood(LocationScale):
    """log Lap(x; μ, b) = −log 2b − |x−μ|/b, summed over pixels (the L1 reconstruction).

    Optimal scale: b* = mean |x−μ| (MAE); at b* the NLL per dimension is 1 + ln(2·MAE).
    """

    name = "laplace"
    residual_metric = "mae"
    distribution_class = td.Laplace
    log_norm = math.log(2.0)

    @staticmethod
    def _residual_term(residual: Tensor) -> Tensor:
        return residual.abs()

    @staticmethod
    def _weight(log_scale: Tensor) -> Tensor:
        return torch.exp(-log_scale)

    @staticmethod
    def _residual_stat(residual: Tensor, dims: tuple[int, ...]) -> Tensor:
        return residual.abs().mean(dims)

    @staticmethod
    def _stat_to_scale(stat: Tensor) -> Tensor:
        return stat

    @staticmethod
    def _scale_to_stat(scale: Tensor) -> Tensor:
        return scale


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls
    for cls in (
        BernoulliLikelihood,
        ContinuousBernoulliLikelihood,
        GaussianLikelihood,
        LaplaceLikelihood,
    )
}


def likelihood_options(name: str) -> list[str]:
    """Option names accepted by the likelihood ``name`` (besides the data shape)."""
    params = inspect.signature(LIKELIHOODS[name].__init__).parameters
    return [p for p in params if p not in ("self", "shape")]


def build_likelihood(name: str, shape: tuple[int, int, int], **options: object) -> Likelihood:
    """Build a likelihood from its registry name, the data shape (C, H, W) and options."""
    if name not in LIKELIHOODS:
        raise ValueError(f"likelihood={name!r} is unknown: choose one of {sorted(LIKELIHOODS)}")
    accepted = likelihood_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"likelihood {name!r} has no option(s) {unknown}: accepted options are "
            f"{accepted or 'none'}"
        )
    return LIKELIHOODS[name](shape, **options)
