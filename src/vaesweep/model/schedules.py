"""β schedules and controllers: the KL weight β_t and the weighted training loss.

Every schedule answers the same three questions, so the training module never branches on
a name:

- ``forward(step, rec_nll, kl)`` → ``(loss, beta)``: the weighted loss (0-dim, carries
  grad) and the β in force (0-dim, detached). ``rec_nll`` and ``kl`` are batch means in
  nats per example. Pure: it never changes state.
- ``observe(step, rec_nll, kl)``: called once AFTER each optimisation step with detached
  batch means (all-reduced across DDP ranks by the caller; with gradient accumulation the
  mean over the step's micro-batches, never once per micro-batch); ``step`` is the step just
  taken. Controllers update their state, open-loop schedules ignore it.
- ``beta_at(step)`` → float: open-loop schedules evaluate β at ``step``; controllers return
  their current β (the state, not the step, decides).

``step`` is always the GLOBAL optimisation step (Lightning's ``global_step``), never a
counter that validation also advances, so a resumed run sees the same β as an
uninterrupted one. Controller state (GECO's multiplier, PI's integral) lives in buffers, so
it is in ``state_dict()`` and in every checkpoint. Buffers are float32 so that the module
moves to any accelerator (MPS has no float64).
"""

from __future__ import annotations

import inspect
import math
import numbers
import operator
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vaesweep.core.checks import require

CYCLICAL_SHAPES = ("linear", "sigmoid", "cosine")


def _check(
    schedule: str,
    param: str,
    value: object,
    allowed: str,
    ok: Callable[[float], bool] = lambda v: True,
    integer: bool = False,
) -> None:
    """Refuses ``param=value`` (naming what is allowed) unless ``value`` is a finite real
    number (an integer when ``integer``) for which ``ok(value)`` holds; ``schedule`` names
    the schedule in the message."""
    valid = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (not integer or float(value).is_integer())
        and ok(value)
    )
    kind = "an integer" if integer else "a finite number"
    require(valid, param, value, f"{kind} {allowed} (beta_schedule={schedule})")


def _step(step: int) -> int:
    """The global optimisation step as a python int (accepts numpy / 0-dim integer tensors)."""
    step = operator.index(step)
    require(step >= 0, "step", step, "an integer >= 0")
    return step


def _rescaled_logistic(tau: float, steepness: float) -> float:
    """Logistic σ(k(τ − ½)) on τ ∈ [0, 1], rescaled affinely to be exactly 0 at τ=0, ½ at
    τ=½ and 1 at τ=1 (the raw logistic only gets within σ(−k/2) of either end). Written
    with σ(x) = (1 + tanh(x/2))/2, which makes those three values exact in floating point."""
    half_range = math.tanh(steepness / 4)
    return (math.tanh(steepness * (tau - 0.5) / 2) + half_range) / (2 * half_range)


def _interpolate(start: float, end: float, fraction: float) -> float:
    """start at fraction 0 and end at fraction 1, both exactly."""
    return start * (1.0 - fraction) + end * fraction


class BetaSchedule(nn.Module):
    """Base class: loss = rec_nll + β_t · kl with β_t from ``beta_at`` (open-loop schedules)."""

    name: ClassVar[str]
    #: What to use instead of a config key this schedule does not read: {key: hint}.
    hints: ClassVar[dict[str, str]] = {}

    @classmethod
    def unread_options(cls, options: dict[str, Any]) -> dict[str, str]:
        """Options that change nothing this schedule computes, given its config, each with
        the reason (see ``Likelihood.unread_options``); none by default."""
        return {}

    def forward(self, step: int, rec_nll: Tensor, kl: Tensor) -> tuple[Tensor, Tensor]:
        """Weighted loss (0-dim, with grad) and the β in force at ``step`` (0-dim, detached).
        rec_nll, kl: batch means, nats per example. Does not change any state."""
        beta = self._beta_tensor(step, kl)
        return rec_nll + beta * kl, beta

    def observe(self, step: int, rec_nll: Tensor, kl: Tensor) -> None:
        """Update controller state from detached, all-reduced batch means after an
        optimisation step; open-loop schedules have no state."""

    def beta_at(self, step: int) -> float:
        """β at global optimisation step ``step`` (controllers: the current β)."""
        raise NotImplementedError(
            f"{type(self).__qualname__} implements no beta_at(step): a BetaSchedule "
            "implements beta_at(step), the β at a global optimisation step"
        )

    def settles(self) -> tuple[str, int] | None:
        """(the options that set it, the global step) from which this schedule holds its
        final value, for one that changes with the step; None for a constant β and for the
        controllers, whose β follows the losses."""
        return None

    def describe_at(self, step: int) -> str:
        """What this schedule gives at ``step``, for messages."""
        return f"β = {self.beta_at(step):.4g}"

    def _beta_tensor(self, step: int, like: Tensor) -> Tensor:
        # Reused while β keeps its value (every step for a constant β): making a tensor from
        # a python float takes four ops, ~1 % of a small training step. It is never
        # modified in place, so a β returned earlier keeps its value.
        value = self.beta_at(step)
        cached = getattr(self, "_beta_cache", None)
        if (
            cached is None
            or cached[0] != value
            or cached[1].dtype != like.dtype
            or cached[1].device != like.device
        ):
            cached = self._beta_cache = (
                value,
                torch.tensor(value, dtype=like.dtype, device=like.device),
            )
        return cached[1]

    def extra_repr(self) -> str:
        # Each constructor argument, from the attribute of its name, else from the config the
        # schedule was built from (a user's class may keep an argument under another name);
        # one found in neither is left out.
        config = getattr(self, "built_from", None)
        config = config if isinstance(config, dict) else {}
        shown = []
        for p in inspect.signature(type(self).__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if hasattr(self, p.name):
                shown.append(f"{p.name}={getattr(self, p.name)!r}")
            elif p.name in config:
                shown.append(f"{p.name}={config[p.name]!r}")
        return ", ".join(shown)


class ConstantBeta(BetaSchedule):
    """β_t = beta (β-VAE, Higgins et al. 2017; beta=1 is the plain ELBO)."""

    name = "constant"

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        _check(self.name, "beta", beta, ">= 0", lambda v: v >= 0)
        self.beta = float(beta)

    def beta_at(self, step: int) -> float:
        _step(step)
        return self.beta


class LinearWarmup(BetaSchedule):
    """β_t = start + (beta − start) · clip((t − delay)/steps, 0, 1): KL warm-up (Bowman et
    al. 2016; Sønderby et al. 2016). start > beta gives a linear decrease instead."""

    name = "linear"

    def __init__(
        self, beta: float = 1.0, start: float = 0.0, steps: int = 300, delay: int = 0
    ) -> None:
        super().__init__()
        _check(self.name, "beta", beta, ">= 0", lambda v: v >= 0)
        _check(self.name, "start", start, ">= 0", lambda v: v >= 0)
        _check(self.name, "steps", steps, "> 0", lambda v: v > 0, integer=True)
        _check(self.name, "delay", delay, ">= 0", lambda v: v >= 0, integer=True)
        self.beta, self.start = float(beta), float(start)
        self.steps, self.delay = int(steps), int(delay)

    def beta_at(self, step: int) -> float:
        fraction = min(max((_step(step) - self.delay) / self.steps, 0.0), 1.0)
        return _interpolate(self.start, self.beta, fraction)

    def settles(self) -> tuple[str, int] | None:
        return ("delay + steps" if self.delay else "steps"), self.delay + self.steps


class SigmoidWarmup(BetaSchedule):
    """β_t = start + (beta − start) · [σ(k(τ − ½)) − σ(−k/2)] / [σ(k/2) − σ(−k/2)],
    τ = min(t/steps, 1), k = steepness: logistic KL annealing (Bowman et al. 2016), rescaled
    to equal start exactly at t=0 and beta exactly from t=steps on."""

    name = "sigmoid"

    def __init__(
        self, beta: float = 1.0, start: float = 0.0, steps: int = 300, steepness: float = 10.0
    ) -> None:
        super().__init__()
        _check(self.name, "beta", beta, ">= 0", lambda v: v >= 0)
        _check(self.name, "start", start, ">= 0", lambda v: v >= 0)
        _check(self.name, "steps", steps, "> 0", lambda v: v > 0, integer=True)
        _check(self.name, "steepness", steepness, "> 0", lambda v: v > 0)
        self.beta, self.start = float(beta), float(start)
        self.steps, self.steepness = int(steps), float(steepness)

    def beta_at(self, step: int) -> float:
        tau = min(_step(step) / self.steps, 1.0)
        return _interpolate(self.start, self.beta, _rescaled_logistic(tau, self.steepness))

    def settles(self) -> tuple[str, int] | None:
        return "steps", self.steps


class CyclicalBeta(BetaSchedule):
    """Cyclical annealing (Fu et al. 2019, NAACL): n_cycles cycles over total_steps; in each,
    β rises from start to beta over the first ``ratio`` of the cycle, then holds at beta.

    Cycle c starts at step ⌊c·total_steps/n_cycles⌋; with i the step within the cycle and
    τ = min(i / (ratio·total_steps/n_cycles), 1), β = start + (beta − start)·g(τ), where
    g(τ) = τ (linear: identical to the authors' ``frange_cycle_linear``), the rescaled
    logistic of ``sigmoid`` with steepness 12 (the authors' σ(12τ − 6), made to hit 0 and 1
    exactly), or ½(1 − cos πτ) (cosine). From total_steps on, β holds at beta.
    """

    name = "cyclical"

    def __init__(
        self,
        beta: float = 1.0,
        total_steps: int = 600,
        n_cycles: int = 4,
        ratio: float = 0.5,
        shape: str = "linear",
        start: float = 0.0,
    ) -> None:
        super().__init__()
        _check(self.name, "beta", beta, ">= 0", lambda v: v >= 0)
        _check(self.name, "start", start, f"in [0, beta={beta}]", lambda v: 0 <= v <= beta)
        _check(self.name, "total_steps", total_steps, "> 0", lambda v: v > 0, integer=True)
        _check(
            self.name,
            "n_cycles",
            n_cycles,
            f"in [1, total_steps={total_steps}]",
            lambda v: 1 <= v <= total_steps,
            integer=True,
        )
        _check(self.name, "ratio", ratio, "in (0, 1]", lambda v: 0 < v <= 1)
        allowed = f"one of {list(CYCLICAL_SHAPES)} (beta_schedule={self.name})"
        require(isinstance(shape, str) and shape in CYCLICAL_SHAPES, "shape", shape, allowed)
        self.beta, self.start = float(beta), float(start)
        self.total_steps, self.n_cycles = int(total_steps), int(n_cycles)
        self.ratio, self.shape = float(ratio), shape

    def beta_at(self, step: int) -> float:
        step = _step(step)
        if step >= self.total_steps:
            return self.beta
        n, m = self.total_steps, self.n_cycles
        # Integer arithmetic for the cycle boundaries: the latest c with ⌊c·n/m⌋ <= step.
        # (In the reference a cycle's rise may reach the next cycle's first step when
        # ratio=1; the later cycle overwrites it, i.e. the latest cycle wins, as here.)
        cycle = ((step + 1) * m - 1) // n
        within = step - cycle * n // m
        tau = min(within * m / (self.ratio * n), 1.0)
        if self.shape == "sigmoid":
            tau = _rescaled_logistic(tau, 12.0)
        elif self.shape == "cosine":
            tau = 0.5 * (1.0 - math.cos(math.pi * tau))
        return _interpolate(self.start, self.beta, tau)

    def settles(self) -> tuple[str, int] | None:
        # The last cycle's rise ends at the first step within it whose τ reaches 1.
        n, m = self.total_steps, self.n_cycles
        last_start = (m - 1) * n // m
        rise = math.ceil(self.ratio * n / m)
        while rise > 0 and (rise - 1) * m / (self.ratio * n) >= 1.0:  # τ as beta_at computes it
            rise -= 1
        while rise * m / (self.ratio * n) < 1.0:
            rise += 1
        return "total_steps", min(n, last_start + rise)


class CapacityAnnealing(BetaSchedule):
    """loss = rec_nll + γ·|kl − C(t)|, C(t) = min(c_max, c_max·t/c_steps) nats: controlled
    capacity increase (Burgess et al. 2018, "Understanding disentangling in β-VAE").
    The reported β is γ (the weight on the KL deviation)."""

    name = "capacity"
    hints = {
        "beta": "its KL weight is beta_schedule.gamma (loss = rec_nll + gamma·|KL − C(t)|) "
        "and its target capacity beta_schedule.c_max"
    }

    def __init__(self, gamma: float = 1000.0, c_max: float = 25.0, c_steps: int = 500) -> None:
        super().__init__()
        _check(self.name, "gamma", gamma, ">= 0", lambda v: v >= 0)
        _check(self.name, "c_max", c_max, ">= 0 (nats)", lambda v: v >= 0)
        _check(self.name, "c_steps", c_steps, "> 0", lambda v: v > 0, integer=True)
        self.gamma, self.c_max, self.c_steps = float(gamma), float(c_max), int(c_steps)

    def capacity_at(self, step: int) -> float:
        """Target KL capacity C(t) in nats per example."""
        return min(self.c_max, self.c_max * _step(step) / self.c_steps)

    def beta_at(self, step: int) -> float:
        _step(step)
        return self.gamma

    def settles(self) -> tuple[str, int] | None:
        return "c_steps", self.c_steps

    def describe_at(self, step: int) -> str:
        return f"capacity C = {self.capacity_at(step):.4g} nats"

    def forward(self, step: int, rec_nll: Tensor, kl: Tensor) -> tuple[Tensor, Tensor]:
        gamma = self._beta_tensor(step, kl)
        return rec_nll + gamma * (kl - self.capacity_at(step)).abs(), gamma


class GECO(BetaSchedule):
    """GECO (Rezende & Viola 2018, "Taming VAEs"): Lagrange multiplier λ on the reconstruction
    constraint C = rec_nll − target <= 0; loss = rec_nll + β·kl with β = 1/λ.

    This loss is (1/λ)·[kl + λ·(rec_nll − target)] + const: the paper's Lagrangian divided by
    λ, so it has the same minimiser and stays in the units of the other schedules. After each
    step (``observe``): C_ma ← α·C_ma + (1 − α)·C (the first observation sets C_ma = C), then
    λ ← clip(λ·exp(speed·C_ma/scale), lambda_min, lambda_max). Reconstruction worse than the
    target (C > 0) raises λ, so β falls; better lowers λ, so β rises.

    ``target`` is the tolerated reconstruction NLL in nats per example (any sign: continuous
    densities can have negative NLL). ``scale`` (nats, default max(|target|, 1)) makes
    ``speed`` unit-free: with the default, a 10% sustained violation moves log λ by
    speed·0.1 per step, i.e. ×e in 1000 steps at speed=0.01.
    """

    name = "geco"
    hints = {
        "beta": "its β = 1/λ is set by the controller from the reconstruction target "
        "beta_schedule.target (start: beta_schedule.lambda_init, bounds: lambda_min, "
        "lambda_max)"
    }

    def __init__(
        self,
        target: float,
        alpha: float = 0.99,
        speed: float = 0.01,
        scale: float | None = None,
        lambda_init: float = 1.0,
        lambda_min: float = 1e-6,
        lambda_max: float = 1e6,
    ) -> None:
        super().__init__()
        _check(self.name, "target", target, "(nats per example)")
        _check(self.name, "alpha", alpha, "in [0, 1)", lambda v: 0 <= v < 1)
        _check(self.name, "speed", speed, "> 0", lambda v: v > 0)
        if scale is not None:
            _check(self.name, "scale", scale, "> 0 (nats) or None", lambda v: v > 0)
        _check(self.name, "lambda_min", lambda_min, "> 0", lambda v: v > 0)
        _check(
            self.name,
            "lambda_max",
            lambda_max,
            f">= lambda_min={lambda_min}",
            lambda v: v >= lambda_min,
        )
        _check(
            self.name,
            "lambda_init",
            lambda_init,
            f"in [lambda_min={lambda_min}, lambda_max={lambda_max}]",
            lambda v: lambda_min <= v <= lambda_max,
        )
        self.target, self.alpha, self.speed = float(target), float(alpha), float(speed)
        self.scale = float(scale) if scale is not None else max(abs(self.target), 1.0)
        self.lambda_init = float(lambda_init)
        self.lambda_min, self.lambda_max = float(lambda_min), float(lambda_max)
        self.register_buffer("lagrange_multiplier", torch.tensor(float(lambda_init)))
        self.register_buffer("constraint_ma", torch.tensor(0.0))
        self.register_buffer("initialised", torch.tensor(False))

    def beta_at(self, step: int) -> float:
        return (1.0 / self.lagrange_multiplier).item()

    def _beta_tensor(self, step: int, like: Tensor) -> Tensor:
        # A new tensor, never a view of the buffer: a logged β must not change later.
        return (1.0 / self.lagrange_multiplier).to(dtype=like.dtype, device=like.device)

    @torch.no_grad()
    def observe(self, step: int, rec_nll: Tensor, kl: Tensor) -> None:
        constraint = torch.as_tensor(rec_nll).detach().to(self.constraint_ma) - self.target
        moving = self.alpha * self.constraint_ma + (1.0 - self.alpha) * constraint
        self.constraint_ma.copy_(torch.where(self.initialised, moving, constraint))
        self.initialised.fill_(True)
        updated = self.lagrange_multiplier * torch.exp(self.speed * self.constraint_ma / self.scale)
        self.lagrange_multiplier.copy_(updated.clamp(self.lambda_min, self.lambda_max))


class PIController(BetaSchedule):
    """PI controller on the KL (ControlVAE, Shao et al. 2020, ICML): e = kl_target − kl,
    P = kp/(1 + exp(e)), I ← I − ki·e, β = clip(P + I + beta_min, beta_min, beta_max).

    KL above the set-point (e < 0) raises β, below lowers it; loss = rec_nll + β·kl.
    Anti-windup by integrator clamping: I ← clip(I − ki·e, min(I, −P),
    max(I, beta_max − beta_min − P)), i.e. the integral stops accumulating where the
    unclipped β reaches a bound. (The paper's Algorithm 1 tests the *clipped* β(t−1), which
    is always inside the bounds, so its integral winds up without limit.) I stays within
    [−kp, beta_max − beta_min], and β comes off a bound as soon as the error changes sign
    instead of staying pinned by a wound-up integral.

    Before the first observation β = beta_init. The default None is the paper's start
    (I = 0, β = beta_min); a value starts I at beta_init − beta_min − kp/2, so that β stays
    at beta_init while the KL sits at the set-point.
    """

    name = "pi"

    def __init__(
        self,
        kl_target: float = 25.0,
        kp: float = 0.01,
        ki: float = 0.0001,
        beta_min: float = 0.0,
        beta_max: float = 1.0,
        beta_init: float | None = None,
    ) -> None:
        super().__init__()
        _check(self.name, "kl_target", kl_target, ">= 0 (nats per example)", lambda v: v >= 0)
        _check(self.name, "kp", kp, ">= 0", lambda v: v >= 0)
        _check(self.name, "ki", ki, ">= 0", lambda v: v >= 0)
        _check(self.name, "beta_min", beta_min, ">= 0", lambda v: v >= 0)
        _check(self.name, "beta_max", beta_max, ">= 0", lambda v: v >= 0)
        # The pair: beta_max's default is 1, so a beta_min above it is the value to change.
        _check(self.name, "beta_min", beta_min, f"<= beta_max={beta_max}", lambda v: v <= beta_max)
        if beta_init is None:
            integral, beta = 0.0, beta_min
        else:
            _check(
                self.name,
                "beta_init",
                beta_init,
                f"in [beta_min={beta_min}, beta_max={beta_max}] or None",
                lambda v: beta_min <= v <= beta_max,
            )
            integral, beta = beta_init - beta_min - kp / 2, beta_init
        self.kl_target, self.kp, self.ki = float(kl_target), float(kp), float(ki)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.beta_init = None if beta_init is None else float(beta_init)
        self.register_buffer("integral", torch.tensor(float(integral)))
        self.register_buffer("beta", torch.tensor(float(beta)))

    def beta_at(self, step: int) -> float:
        return self.beta.item()

    def _beta_tensor(self, step: int, like: Tensor) -> Tensor:
        # A copy, never the buffer itself: a logged β must not change at the next observe.
        return self.beta.to(dtype=like.dtype, device=like.device, copy=True)

    @torch.no_grad()
    def observe(self, step: int, rec_nll: Tensor, kl: Tensor) -> None:
        error = self.kl_target - torch.as_tensor(kl).detach().to(self.integral)
        proportional = self.kp * torch.sigmoid(-error)  # = kp / (1 + exp(e)), overflow-free
        # Anti-windup: the integral may move towards the value at which the unclipped β
        # reaches a bound, never past it (nor is it pulled back if already past).
        upper = torch.maximum(self.integral, self.beta_max - self.beta_min - proportional)
        lower = torch.minimum(self.integral, -proportional)
        self.integral.copy_(torch.clamp(self.integral - self.ki * error, lower, upper))
        beta = proportional + self.integral + self.beta_min
        self.beta.copy_(beta.clamp(self.beta_min, self.beta_max))


SCHEDULES: dict[str, type[BetaSchedule]] = {
    cls.name: cls
    for cls in (
        ConstantBeta,
        LinearWarmup,
        SigmoidWarmup,
        CyclicalBeta,
        CapacityAnnealing,
        GECO,
        PIController,
    )
}
