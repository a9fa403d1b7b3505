"""A Student-t decoder likelihood, written as a user would: outside vaesweep, selected by
``likelihood._target_`` (see examples/README.md).

p(x | z) = Π_d t_ν(x_d; μ_d(z), s): the decoder gives the location μ, one scale s is
learned (or fixed), and the degrees of freedom ν are an option. Heavier tails than the
Gaussian (ν → ∞) make the reconstruction term robust to outlier pixels; ν = 1 is the
Cauchy. Everything else (training, evaluation, IWAE, results, figures) comes from vaesweep.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, StudentT

from vaesweep.model.likelihoods import Likelihood


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    # vaesweep reports "key=value ..." messages under the group's key (likelihood.dof=...).
    if not ok:
        raise ValueError(f"{key}={value!r} is invalid: allowed {allowed}")


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


class StudentTLikelihood(Likelihood):
    """Student-t with decoder location, a shared scale and ``dof`` degrees of freedom."""

    name = "student_t"
    data_kind = "continuous"  # a density on [0, 1]^D: dequantised data, bits/dim reported
    param_channels = 1  # the decoder predicts the location only

    def __init__(
        self,
        shape: tuple[int, int, int],
        dof: float = 4.0,
        scale_value: float = 0.1,
        learn_scale: bool = True,
        scale_lr: float | None = 0.01,
    ) -> None:
        super().__init__(shape)
        _check(_positive(dof), "dof", dof, "a finite number > 0")
        _check(_positive(scale_value), "scale_value", scale_value, "a finite number > 0")
        _check(isinstance(learn_scale, bool), "learn_scale", learn_scale, "true or false")
        _check(scale_lr is None or _positive(scale_lr), "scale_lr", scale_lr, "null or > 0")
        self.dof = float(dof)
        self.scale_lr = scale_lr
        log_scale = torch.tensor(math.log(scale_value))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @classmethod
    def unread_options(cls, options: dict[str, Any]) -> dict[str, str]:
        # The options that change nothing for this config, each with the reason: vaesweep
        # then refuses a run or sweep that sets one (a fixed scale has no learning rate, so
        # `learn_scale=false scale_lr=0.01,0.1` would be two identical jobs).
        if options.get("learn_scale", True) is False:
            return {
                "scale_lr": "it is read only with likelihood.learn_scale=true, and this run "
                "has likelihood.learn_scale=false (a fixed scale is not trained)"
            }
        return {}

    def distribution(self, params: Tensor) -> Distribution:
        (loc,) = self.split(params)
        scale = self.log_scale.exp().expand_as(loc)
        return Independent(StudentT(self.dof, loc, scale), 3)

    def scale(self) -> Tensor:
        return self.log_scale.detach().exp()

    def scale_parameters(self) -> list[nn.Parameter]:
        return [self.log_scale] if isinstance(self.log_scale, nn.Parameter) else []

    def effective_beta(self, beta: float) -> float | None:
        return None  # no squared- or absolute-error form: no single equivalent β
