"""Location-scale likelihoods: Gaussian (σ) and Laplace (b), each with a scale mode.

The scale modes (fixed, learned, per_pixel, decoder, optimal) are classes in
:mod:`vaesweep.model.scales`, each a child module (``scale_mode``) that holds its own
parameters and buffers; a family here supplies only its density's pieces as static hooks, the
scale modes' part of them through the public :class:`vaesweep.model.scales.ScaleFamily`.
All constants are kept (−½ log 2π for the Gaussian, −log 2 for the Laplace), so ELBOs of
different likelihoods on the same data are comparable.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch import distributions as td
from torch.distributions import Distribution, Independent

from vaesweep.core.checks import is_number, require
from vaesweep.model.likelihood_base import Likelihood
from vaesweep.model.scales import (
    DATA_DIMS,
    OPTIMAL_REDUCTIONS,
    SCALE_INITS,
    SCALE_MODE_CLASSES,
    SCALE_MODES,
    SCALE_OPTIONS,
    ScaleMode,
)

#: Tensors a scale mode owns that earlier versions registered on the likelihood itself: a
#: state dict with ``<likelihood>.<name>`` is read as ``<likelihood>.scale_mode.<name>``.
MOVED_TO_SCALE_MODE = ("log_scale", "running_stat", "num_batches_tracked", "scale_initialized")


class LocationScale(Likelihood):
    """Gaussian or Laplace with one of the scale modes of :data:`SCALE_MODES`, each a
    :class:`vaesweep.model.scales.ScaleMode` that this likelihood holds (``scale_mode``) and asks.

    - ``fixed``: scale = ``scale_value`` (default 1).
    - ``learned``: one scalar log-scale parameter shared by all pixels and examples.
    - ``per_pixel``: a learned log-scale per data dimension (not input dependent).
    - ``decoder``: the decoder predicts a log-scale per pixel and example (2 channels/pixel).
    - ``optimal``: the closed-form maximiser for the current residuals r = x − μ, over the
      batch (``optimal_reduction="batch"``, the σ-VAE) or per example. While training the
      batch statistic is used; :meth:`observe` (called by the training step) folds it into a
      running average (an EMA with ``momentum``, a checkpointed buffer); in eval mode the
      running average is used, never the residuals of the data being scored (that would tune
      the density to the test set).

    Every learned or computed log-scale passes through :func:`soft_clip` with floor
    ``min_log_scale`` (default −6, i.e. scale ≳ e^−6); None disables the clip.

    A family (Gaussian, Laplace) supplies only the static hooks below: the residual term and
    its weight, the effective-β factor, and for its scale mode (:class:`ScaleFamily`, the
    class itself is handed to the mode) the residual statistic and statistic ↔ scale.
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
        self._check_options(scale, scale_value, min_log_scale, optimal_reduction, momentum)
        require(
            scale_lr is None
            or (is_number(scale_lr) and scale_lr > 0),  # (true is not a learning rate)
            "scale_lr",
            scale_lr,
            "null (the optimizer's lr) or a finite number > 0",
        )
        require(
            isinstance(scale_init, str) and scale_init in SCALE_INITS,
            "scale_init",
            scale_init,
            f"one of {list(SCALE_INITS)}",
        )
        require(
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
        # A child module with its own parameters and buffers (the only ones this likelihood has).
        self.scale_mode: ScaleMode = SCALE_MODE_CLASSES[scale](
            type(self),
            self.shape,
            scale_value=self.scale_value,
            min_log_scale=self.min_log_scale,
            optimal_reduction=optimal_reduction,
            momentum=self.momentum,
            scale_init=scale_init,
        )
        self.param_channels = self.scale_mode.param_channels

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints written before the scale modes held their tensors have them on the
        # likelihood (``likelihood.log_scale``): read them as the mode's. A state dict in
        # today's layout passes unchanged; the next checkpoint is written in it.
        for name in MOVED_TO_SCALE_MODE:
            old, new = prefix + name, f"{prefix}scale_mode.{name}"
            if old in state_dict and new not in state_dict:
                state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args)

    @staticmethod
    def _check_options(
        scale: str,
        scale_value: float,
        min_log_scale: float | None,
        optimal_reduction: str,
        momentum: float,
    ) -> None:
        require(
            isinstance(scale, str) and scale in SCALE_MODES,
            "scale",
            scale,
            f"one of {list(SCALE_MODES)}",
        )
        require(
            is_number(scale_value) and scale_value > 0,
            "scale_value",
            scale_value,
            "a finite number > 0",
        )
        require(
            min_log_scale is None or (is_number(min_log_scale) and min_log_scale < 0),
            "min_log_scale",
            min_log_scale,
            "null or a number < 0: the data lie in [0, 1], so no residual scale (RMS or "
            "mean absolute residual) exceeds 1 = e^0, and a floor at or above it keeps the "
            "scale above every residual scale (the default is -6)",
        )
        require(
            isinstance(optimal_reduction, str) and optimal_reduction in OPTIMAL_REDUCTIONS,
            "optimal_reduction",
            optimal_reduction,
            f"one of {list(OPTIMAL_REDUCTIONS)}",
        )
        require(
            is_number(momentum) and 0.0 <= momentum < 1.0,
            "momentum",
            momentum,
            "a number in [0, 1)",
        )

    #: The scale modes that read each mode-dependent option (from each mode's ``reads``).
    OPTION_MODES: ClassVar[dict[str, tuple[str, ...]]] = {
        key: tuple(name for name, mode in SCALE_MODE_CLASSES.items() if key in mode.reads)
        for key in SCALE_OPTIONS
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
        if isinstance(mode, str) and mode in SCALE_MODE_CLASSES:  # else refused when built
            unread.update(SCALE_MODE_CLASSES[mode].unread_options(options))
        return unread

    @staticmethod
    def min_log_scale_ok(mode: str, scale_value: float, min_log_scale: float | None) -> bool:
        """A learned scale must start above the soft clip's floor (else it cannot be hit)."""
        cls = SCALE_MODE_CLASSES.get(mode) if isinstance(mode, str) else None
        return cls is None or cls.start_is_valid(scale_value, min_log_scale)

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
    def residual_stat(residual: Tensor, dims: tuple[int, ...]) -> Tensor:
        """Statistic whose closed-form function is the optimal scale (mean r² or mean |r|)
        (:class:`~vaesweep.model.scales.ScaleFamily`)."""
        raise NotImplementedError

    @staticmethod
    def stat_to_scale(stat: Tensor) -> Tensor:
        """The scale of a residual statistic (:class:`~vaesweep.model.scales.ScaleFamily`)."""
        raise NotImplementedError

    @staticmethod
    def scale_to_stat(scale: Tensor) -> Tensor:
        """The inverse of :meth:`stat_to_scale`."""
        raise NotImplementedError

    @staticmethod
    def _beta_factor(scale: float) -> float:
        """β′/β for a shared scale: 2σ² (Gaussian, SSE convention) or b (Laplace, SAE)."""
        raise NotImplementedError

    # --- scale: asked of the scale mode ---------------------------------------------------------
    def log_scale_for(self, x: Tensor | None, loc: Tensor, raw: Tensor | None) -> Tensor:
        """Log-scale broadcastable to ``loc`` (after the soft clip where it applies).

        ``x`` is needed only by the optimal mode while training; ``raw`` is the decoder's
        log-scale output in ``decoder`` mode.
        """
        return self.scale_mode.log_scale_for(x, loc, raw)

    def scale_parameters(self) -> list[nn.Parameter]:
        return list(self.scale_mode.parameters())

    def needs_scale_init(self) -> bool:
        return self.scale_mode.needs_init()

    def scale_ratio(self, sq_residual: Tensor, abs_residual: Tensor) -> Tensor | None:
        """σ / √MSE (Gaussian) or b / MAE (Laplace) for a shared scale; for ``per_pixel``
        the geometric mean over pixels of σ_i / r_i, r_i the pixel's residual scale; None
        for ``decoder`` (a scale per example: no single residual to compare with).

        A residual scale below the floor exp(``min_log_scale``), which no scale can reach
        (an always-black border pixel), is compared with the floor instead: such a pixel
        counts as converged when its scale sits at the floor."""
        stat = sq_residual if self.residual_metric == "mse" else abs_residual
        return self.scale_mode.scale_ratio(stat)

    def initialize_scale(self, x: Tensor, loc: Tensor) -> None:
        """Sets a learned scale to the residual scale (√mean r² or mean |r|) of the batch x
        against its reconstruction loc: over all pixels (``learned``) or per pixel over the
        batch (``per_pixel``), averaged over data-parallel processes."""
        self.scale_mode.initialize(x, loc)

    def observe(self, x: Tensor, params: Tensor) -> None:
        """Folds a training batch into the running σ* (``optimal``; nothing for other modes)."""
        self.scale_mode.observe(x, self.split(params)[0])

    def scale(self) -> Tensor | None:
        """σ (or b) in force: fixed/learned value, the running average for ``optimal``, the
        geometric mean over pixels for ``per_pixel``, and the mean over the last scored
        batch for ``decoder``."""
        return self.scale_mode.scale()

    def effective_beta(self, beta: float) -> float | None:
        """β′ = 2σ²β (Gaussian) or bβ (Laplace) for a scale shared by every pixel and example
        (the one in force); None for ``per_pixel`` and ``decoder`` scales."""
        if not self.scale_mode.shared:
            return None
        return self._beta_factor(float(self.scale())) * float(beta)

    # --- density -----------------------------------------------------------------------------
    def _loc_log_scale(self, params: Tensor, x: Tensor | None) -> tuple[Tensor, Tensor]:
        parts = self.split(params)
        raw = parts[1] if len(parts) > 1 else None
        return parts[0], self.log_scale_for(x, parts[0], raw)

    def distribution(self, params: Tensor) -> Distribution:
        loc, log_scale = self._loc_log_scale(params, None)
        scale = torch.exp(log_scale).expand_as(loc)
        return Independent(self.distribution_class(loc, scale, validate_args=False), 3)

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x | params) per example, nats, summed over C·H·W: with log-scale s and
        residual r = x − μ, Σ_D [−c − s − w(s)·f(r)] (the family's c, w, f below). Pure: it
        changes no parameter or buffer (:meth:`observe` updates the running σ*).

        The same density as ``distribution(params).log_prob(x)`` (the tests check it against
        torch.distributions and scipy), written out (in ``nll``) because that expands the
        scale to the data's shape and takes ~8 element-wise passes.
        """
        return -self.nll(x, params)

    def nll(self, x: Tensor, params: Tensor) -> Tensor:
        """−log p(x | params) = Σ_D [c + s + w(s)·f(r)]. When s is the same for every pixel
        (fixed, learned and optimal scales) the sum factors, D·(c + s) + w(s)·Σ_D f(r), and
        only the residual term is element-wise."""
        loc, log_scale = self._loc_log_scale(params, x)
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
    def residual_stat(residual: Tensor, dims: tuple[int, ...]) -> Tensor:
        return residual.pow(2).mean(dims)

    @staticmethod
    def stat_to_scale(stat: Tensor) -> Tensor:
        return stat.sqrt()

    @staticmethod
    def scale_to_stat(scale: Tensor) -> Tensor:
        return scale.pow(2)

    @staticmethod
    def _beta_factor(scale: float) -> float:
        return 2.0 * scale * scale


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
    def residual_stat(residual: Tensor, dims: tuple[int, ...]) -> Tensor:
        return residual.abs().mean(dims)

    @staticmethod
    def stat_to_scale(stat: Tensor) -> Tensor:
        return stat

    @staticmethod
    def scale_to_stat(scale: Tensor) -> Tensor:
        return scale

    @staticmethod
    def _beta_factor(scale: float) -> float:
        return scale
