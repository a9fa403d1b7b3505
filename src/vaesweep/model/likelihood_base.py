"""The interface of a decoder likelihood p(x | decoder output).

Every likelihood answers the same questions, so the module and the evaluation code never
branch on a name (the shape of torch.distributions):

- ``param_channels``: decoder outputs needed per data channel (2 when the decoder also
  predicts a log-scale);
- ``log_prob(x, params)``: log p(x | params) per example in nats, summed over all C·H·W
  data dimensions, shape ``params.shape[:-3]`` (e.g. [B], or [K, B] for K importance samples);
- ``mean(params)`` and ``sample(params)``: the reconstruction and a draw, shaped like x;
- ``scale()``: the scale in force (σ or b) as a 0-dim tensor, or None when it has none;
- ``observe(x, params)``: what a training batch adds to running statistics (the training
  step calls it; ``log_prob`` and ``nll`` are pure);
- ``effective_beta(β)``: β in the "reconstruction sum + β′·KL" convention, or None.

Decoder outputs are grouped by parameter along the channel axis: ``params[..., :C, :, :]``
is the location (or the logits), ``params[..., C:2C, :, :]`` the raw log-scale when
``param_channels == 2``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.distributions import Distribution

from vaesweep.core.checks import require

#: The data a run scored, by the preprocessing in force.
DATA_LABELS = {
    "binarize": "binarised data",
    "dequantize": "dequantised data",
    "scale": "grey levels (not dequantised)",
}


def data_label(data_kind: str, preprocess: Any) -> str:
    """What a run's likelihood numbers are of, as the results table, the figures and the
    search's checks name it (``binarised data``, ...): from the likelihood's ``data_kind``
    and the preprocessing in force (``auto``/None resolved as a run resolves it: binarize
    for a likelihood on binary data, else dequantize). Numbers of two labels are never
    ranked against each other."""
    if preprocess is None or preprocess == "auto":
        preprocess = "binarize" if data_kind == "binary" else "dequantize"
    label = DATA_LABELS.get(str(preprocess), f"data.preprocess={preprocess}")
    if data_kind == "binary" and preprocess != "binarize":
        label += ", Bernoulli: not a density"
    if data_kind == "continuous" and preprocess == "binarize":
        label += ", a density: not a likelihood of 0/1 data"
    return label


class Likelihood(nn.Module):
    """Base class: a factorised density over C×H×W data given decoder outputs."""

    name: ClassVar[str]
    #: "binary": a normalised likelihood only on {0,1} data; "continuous": a density on [0,1]^D.
    data_kind: ClassVar[str]
    param_channels: int = 1

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        require(
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
                f"{getattr(self, 'name', type(self).__qualname__)} expects decoder output [..., {expected}, {self.shape[1]}, "
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
        (:mod:`vaesweep.run.effective`); every option is read unless a family says otherwise."""
        return {}

    def distribution(self, params: Tensor) -> Distribution:
        """p(x | params) as a torch Distribution with event shape (C, H, W)."""
        raise NotImplementedError(
            f"{type(self).__qualname__} implements no distribution(params): a Likelihood "
            "implements distribution(params) (a torch Distribution with event shape (C, H, W)), "
            "or each of log_prob(x, params), mean(params) and sample(params) that is called "
            "(they default to the distribution's)"
        )

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

    def observe(self, x: Tensor, params: Tensor) -> None:
        """Folds a training batch (data x, decoder output params) into the likelihood's running
        statistics; none by default. The training step calls it once per batch, after the
        loss; nothing else changes a likelihood's state (``log_prob`` and ``nll`` are pure)."""

    def effective_beta(self, beta: float) -> float | None:
        """β′ such that ``rec_nll + β·KL`` has the gradient direction of ``R + β′·KL``, R the
        family's conventional reconstruction sum (docs/math.md §5); None where no single value
        exists, the default (a family whose reconstruction term is its NLL says β′ = β)."""
        return None
