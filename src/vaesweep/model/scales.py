"""Scale modes of the location-scale likelihoods (Gaussian σ, Laplace b): one class each.

A :class:`ScaleMode` answers, for the likelihood that holds it, every question that depends
on how the scale is set: how many decoder outputs it needs per data channel, which options it
reads, which tensors it owns, the log-scale for a batch, the scale in force (for reports), how
far that is from the residual scale of evaluated data, the data-dependent start, and what a
training batch adds to its running statistic. The likelihood delegates to it and never
branches on the mode's name.

A mode is an ``nn.Module``, the likelihood's child ``scale_mode``, and owns its tensors: the
parameter ``log_scale`` (learned, per_pixel), the buffers ``scale_initialized`` (with
``scale_init=data``), ``running_stat`` and ``num_batches_tracked`` (optimal). Their state-dict
keys are ``<likelihood>.scale_mode.<name>``; checkpoints written when they lived on the
likelihood itself (``<likelihood>.log_scale``, ...) are migrated when loaded
(:meth:`vaesweep.model.location_scale.LocationScale._load_from_state_dict`). ``.to()`` /
``.double()`` / ``.train()`` / ``.eval()`` of the likelihood reach the mode as any child.

The family's part (Gaussian or Laplace: residual statistic, statistic ↔ scale) comes in
through the small public interface :class:`ScaleFamily`, given to the mode when it is built.

All log-scales that are learned or computed pass through :func:`soft_clip` with the floor
``min_log_scale`` (docs/math.md §3).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

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


class ScaleFamily(Protocol):
    """What a scale mode needs of its family (Gaussian or Laplace): the residual statistic
    whose closed-form function is the optimal scale, and statistic ↔ scale. The
    location-scale likelihood classes implement it as static methods and give themselves
    (the class) to their mode."""

    @staticmethod
    def residual_stat(residual: Tensor, dims: tuple[int, ...]) -> Tensor:
        """mean r² (Gaussian) or mean |r| (Laplace) over ``dims``."""
        ...

    @staticmethod
    def stat_to_scale(stat: Tensor) -> Tensor:
        """σ = √stat (Gaussian) or b = stat (Laplace)."""
        ...

    @staticmethod
    def scale_to_stat(scale: Tensor) -> Tensor:
        """The inverse of :meth:`stat_to_scale`."""
        ...


class ScaleMode(nn.Module):
    """How a location-scale likelihood sets its scale; the base is what most modes share.

    family: the likelihood's family maths (:class:`ScaleFamily`); shape: the data shape
    (C, H, W); the other arguments are the likelihood's options of the same names (already
    checked by the likelihood), of which a mode reads those in ``reads``.
    """

    name: ClassVar[str]
    #: The likelihood options (of :data:`SCALE_OPTIONS`) this mode reads.
    reads: ClassVar[frozenset[str]] = frozenset()
    #: Decoder outputs per data channel: 2 when the decoder also predicts the log-scale.
    param_channels: ClassVar[int] = 1
    #: One scale for every pixel and example (then the effective β is defined).
    shared: ClassVar[bool] = True

    def __init__(
        self,
        family: ScaleFamily,
        shape: tuple[int, int, int],
        scale_value: float = 1.0,
        min_log_scale: float | None = -6.0,
        optimal_reduction: str = "batch",
        momentum: float = 0.99,
        scale_init: str = "value",
    ) -> None:
        """Keeps the options; a mode with tensors registers them here (none by default)."""
        super().__init__()
        self.family = family
        self.shape = tuple(shape)
        self.scale_value = float(scale_value)
        self.min_log_scale = None if min_log_scale is None else float(min_log_scale)
        self.optimal_reduction = optimal_reduction
        self.momentum = float(momentum)
        self.scale_init = scale_init

    @classmethod
    def unread_options(cls, options: dict[str, Any]) -> dict[str, str]:
        """Options this mode reads in general but not with these ``options``, with the reason."""
        return {}

    @classmethod
    def start_is_valid(cls, scale_value: float, min_log_scale: float | None) -> bool:
        """Whether ``scale_value`` is a valid start (a learned scale must start above the
        soft clip's floor, else it cannot be hit)."""
        return True

    def log_scale_for(self, x: Tensor | None, loc: Tensor, raw: Tensor | None) -> Tensor:
        """The log-scale for a batch, broadcastable to ``loc``: ``x`` is the data (read only by
        ``optimal`` while training), ``raw`` the decoder's log-scale output (``decoder``)."""
        raise NotImplementedError

    def scale(self) -> Tensor | None:
        """The scale in force as a 0-dim tensor (for reports; never differentiated)."""
        raise NotImplementedError

    def needs_init(self) -> bool:
        """Whether :meth:`initialize` must run before the first training step."""
        return False

    def initialize(self, x: Tensor, loc: Tensor) -> None:
        """Data-dependent start from a batch x and its reconstruction loc (nothing here)."""

    def observe(self, x: Tensor, loc: Tensor) -> None:
        """Folds a training batch x, with the decoder's locations ``loc``, into the mode's
        running statistic (none here)."""

    def scale_ratio(self, stat: Tensor) -> Tensor | None:
        """Scale in force / residual scale, from the per-pixel residual statistic ``stat``
        (mean r² or mean |r| of the evaluated data, shape (C, H, W)); see docs/math.md §3."""
        stat = stat.double().clamp_min(torch.finfo(torch.float64).tiny).mean()
        return self._ratio(torch.log(self.scale().double()), stat)

    def _ratio(self, log_scale: Tensor, stat: Tensor) -> Tensor:
        """exp(mean(log scale − log residual scale)); a residual scale below the floor
        exp(``min_log_scale``), which no scale can reach, counts as the floor."""
        target = torch.log(self.family.stat_to_scale(stat))
        if self.min_log_scale is not None:
            target = target.clamp_min(self.min_log_scale)
        return torch.exp((log_scale - target).mean())

    def stat_to_log_scale(self, stat: Tensor) -> Tensor:
        """The soft-clipped log-scale of a residual statistic. The floor on the statistic only
        guards log(0) for exactly zero residuals; the soft clip is what bounds the likelihood."""
        tiny = torch.finfo(stat.dtype).tiny
        scale = self.family.stat_to_scale(stat.clamp_min(tiny))
        return soft_clip(torch.log(scale), self.min_log_scale)


class FixedScale(ScaleMode):
    """``fixed``: the scale is ``scale_value`` (default 1), never learned."""

    name = "fixed"
    reads = frozenset({"scale_value"})

    def log_scale_for(self, x: Tensor | None, loc: Tensor, raw: Tensor | None) -> Tensor:
        return torch.full((), math.log(self.scale_value), dtype=loc.dtype, device=loc.device)

    def scale(self) -> Tensor:
        return torch.tensor(self.scale_value)


class LearnedScale(ScaleMode):
    """``learned``: one log-scale parameter ``log_scale`` shared by all pixels and examples,
    stored before the soft clip; starts at ``scale_value`` or, with ``scale_init=data``, at
    the residual scale of the untrained model on the first batch."""

    name = "learned"
    reads = frozenset({"scale_value", "min_log_scale", "scale_lr", "scale_init"})

    def __init__(self, family: ScaleFamily, shape: tuple[int, int, int], **options: Any) -> None:
        super().__init__(family, shape, **options)
        # Store the pre-clip value, so that the clipped scale starts at scale_value.
        init = inverse_soft_clip(
            torch.tensor(math.log(self.scale_value), dtype=torch.float32), self.min_log_scale
        )
        self.log_scale = nn.Parameter(self._initial(init))
        if self.scale_init == "data":
            # Set from the first training batch (``initialize``); saved with the weights, so
            # a resumed run does not initialise again.
            self.register_buffer("scale_initialized", torch.zeros((), dtype=torch.bool))
        # The buffer's value as last read: reading a GPU buffer syncs with the device, so it
        # is read again only until it says True, and after weights are loaded.
        self._initialized_seen = False
        self.register_load_state_dict_post_hook(_forget_initialized)

    def _initial(self, init: Tensor) -> Tensor:
        return init.clone()

    @classmethod
    def unread_options(cls, options: dict[str, Any]) -> dict[str, str]:
        if options.get("scale_init") != "data":
            return {}
        return {
            "scale_value": "likelihood.scale_init=data starts the scale at the data's residual "
            "scale; scale_value is the start only with likelihood.scale_init=value"
        }

    @classmethod
    def start_is_valid(cls, scale_value: float, min_log_scale: float | None) -> bool:
        return min_log_scale is None or math.log(scale_value) > min_log_scale

    def log_scale_for(self, x: Tensor | None, loc: Tensor, raw: Tensor | None) -> Tensor:
        return soft_clip(self.log_scale, self.min_log_scale)

    def scale(self) -> Tensor:
        return torch.exp(soft_clip(self.log_scale, self.min_log_scale)).detach()

    def needs_init(self) -> bool:
        if not hasattr(self, "scale_initialized") or self._initialized_seen:
            return False
        self._initialized_seen = bool(self.scale_initialized)
        return not self._initialized_seen

    #: The dimensions (counted from the last) the data-dependent start is NOT reduced over.
    _init_keeps: ClassVar[int] = 0

    @torch.no_grad()
    def initialize(self, x: Tensor, loc: Tensor) -> None:
        """Sets the scale to the residual scale (√mean r² or mean |r|) of the batch x against
        its reconstruction loc: over all pixels (``learned``) or per pixel over the batch
        (``per_pixel``), averaged over data-parallel processes."""
        residual = x - loc
        dims = tuple(range(residual.dim() - self._init_keeps))
        stat = data_parallel_mean(self.family.residual_stat(residual, dims))
        scale = self.family.stat_to_scale(stat.clamp_min(torch.finfo(stat.dtype).tiny))
        log_scale = torch.log(scale)
        if self.min_log_scale is not None:  # start strictly above the floor (invertible)
            log_scale = log_scale.clamp_min(self.min_log_scale + 1e-3)
        self.log_scale.copy_(inverse_soft_clip(log_scale, self.min_log_scale))
        self.scale_initialized.fill_(True)


def _forget_initialized(module: LearnedScale, incompatible_keys: Any) -> None:
    """After loaded weights (a checkpoint): ``scale_initialized`` is read again."""
    module._initialized_seen = False


class PerPixelScale(LearnedScale):
    """``per_pixel``: a learned log-scale per data dimension (C, H, W), not input dependent.
    Its reported scale is the geometric mean over pixels."""

    name = "per_pixel"
    shared = False
    _init_keeps = 3

    def _initial(self, init: Tensor) -> Tensor:
        return torch.full(self.shape, float(init))

    def scale(self) -> Tensor:
        return torch.exp(soft_clip(self.log_scale, self.min_log_scale).mean()).detach()

    def scale_ratio(self, stat: Tensor) -> Tensor:
        """The geometric mean over pixels of σ_i / r_i, r_i the pixel's residual scale."""
        stat = stat.double().clamp_min(torch.finfo(torch.float64).tiny)
        log_scale = soft_clip(self.log_scale.detach().double(), self.min_log_scale)
        return self._ratio(log_scale, stat)


class DecoderScale(ScaleMode):
    """``decoder``: the decoder predicts a log-scale per pixel and example (2 outputs per data
    channel). Its reported scale is the mean over the last decoder output scored (at test
    time: the last batch's last IWAE chunk): the only thing a scored batch leaves behind, a
    non-persistent value for logs (no parameter or buffer)."""

    name = "decoder"
    reads = frozenset({"min_log_scale"})
    param_channels = 2
    shared = False

    def __init__(self, family: ScaleFamily, shape: tuple[int, int, int], **options: Any) -> None:
        super().__init__(family, shape, **options)
        self._last_scale: Tensor | None = None

    def log_scale_for(self, x: Tensor | None, loc: Tensor, raw: Tensor | None) -> Tensor:
        log_scale = soft_clip(raw, self.min_log_scale)
        self._last_scale = torch.exp(log_scale).detach().mean()
        return log_scale

    def scale(self) -> Tensor | None:
        return self._last_scale

    def scale_ratio(self, stat: Tensor) -> None:
        return None  # a scale per example: no single residual to compare with


class OptimalScale(ScaleMode):
    """``optimal``: the closed-form maximiser for the current residuals r = x − μ, over the
    batch (``optimal_reduction="batch"``, the σ-VAE) or per example.

    While training, the log-density uses the batch's statistic (mean r² or mean |r|), global
    under DDP. Evaluation uses ``running_stat``, a checkpointed running average (EMA with
    ``momentum``, seeded by the first training batch; until then the scale is
    ``scale_value``), never the residuals of the data being scored. Only :meth:`observe`,
    which the training step calls once per batch, changes it.
    """

    name = "optimal"
    reads = frozenset({"min_log_scale", "optimal_reduction", "momentum"})

    def __init__(self, family: ScaleFamily, shape: tuple[int, int, int], **options: Any) -> None:
        super().__init__(family, shape, **options)
        init = torch.exp(torch.tensor(math.log(self.scale_value), dtype=torch.float32))
        self.register_buffer("running_stat", self.family.scale_to_stat(init))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def _batch_stat(self, x: Tensor, loc: Tensor) -> Tensor:
        """The batch's statistic (over the global batch, 0-dim) or the examples' ([..., 1, 1, 1])."""
        residual = x - loc
        if self.optimal_reduction == "batch":
            dims = tuple(range(residual.dim()))
            return data_parallel_mean(self.family.residual_stat(residual, dims))
        return self.family.residual_stat(residual, DATA_DIMS)[..., None, None, None]

    def log_scale_for(self, x: Tensor | None, loc: Tensor, raw: Tensor | None) -> Tensor:
        if self.training and x is not None and torch.is_grad_enabled():
            # Not detached, as in σ-VAE: at σ* the NLL is stationary in σ, so the path
            # through σ* adds (up to the clip) no gradient, and the loss is the log-MSE form.
            return self.stat_to_log_scale(self._batch_stat(x, loc))
        return self.stat_to_log_scale(self.running_stat)

    def scale(self) -> Tensor:
        return torch.exp(self.stat_to_log_scale(self.running_stat)).detach()

    @torch.no_grad()
    def observe(self, x: Tensor, loc: Tensor) -> None:
        """running ← stat on the first batch, then momentum·running + (1 − momentum)·stat, with
        stat the batch's statistic averaged over examples and data-parallel processes (the
        statistic the training log-density of this batch used, computed again)."""
        stat = data_parallel_mean(self._batch_stat(x, loc).mean())
        first = self.num_batches_tracked == 0
        ema = self.momentum * self.running_stat + (1.0 - self.momentum) * stat
        self.running_stat.copy_(torch.where(first, stat, ema))
        self.num_batches_tracked += 1


SCALE_MODE_CLASSES: dict[str, type[ScaleMode]] = {
    cls.name: cls for cls in (FixedScale, LearnedScale, PerPixelScale, DecoderScale, OptimalScale)
}
SCALE_MODES = tuple(SCALE_MODE_CLASSES)
#: The options whose use depends on the scale mode, in the order reports list them.
SCALE_OPTIONS = (
    "scale_value",
    "min_log_scale",
    "optimal_reduction",
    "momentum",
    "scale_lr",
    "scale_init",
)
