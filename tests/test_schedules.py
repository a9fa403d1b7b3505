"""β schedules and controllers: hand-computed values, the published cyclical reference,
controller directions, anti-windup, checkpoint round trips and validation."""

import importlib
import inspect
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import vaesweep
from vaesweep.data.datamodule import VAEDataModule
from vaesweep.model import networks
from vaesweep.model.components import CONTEXT_ARGS, META_KEYS, build_schedule
from vaesweep.model.schedules import SCHEDULES

from conftest import TINY, run_cli


def frange_cycle_linear(n_iter, start=0.0, stop=1.0, n_cycle=4, ratio=0.5):
    """Fu et al. 2019, copied from the paper's repository (the reference, not our code)."""
    L = np.ones(n_iter) * stop
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)  # linear schedule
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and (int(i + c * period) < n_iter):
            L[int(i + c * period)] = v
            v += step
            i += 1
    return L


def betas(schedule, steps):
    return np.array([schedule.beta_at(t) for t in steps])


def scalar(value, requires_grad=False):
    return torch.tensor(float(value), dtype=torch.float64, requires_grad=requires_grad)


# ---- open-loop schedules: values at hand-computed steps -------------------------------


def test_constant():
    s = build_schedule("constant", beta=4.0)
    assert betas(s, [0, 1, 10**7]).tolist() == [4.0, 4.0, 4.0]


def test_linear_values():
    s = build_schedule("linear", beta=2.0, start=0.5, steps=100, delay=10)
    expected = {0: 0.5, 10: 0.5, 35: 0.875, 60: 1.25, 110: 2.0, 10**6: 2.0}
    assert betas(s, expected) == pytest.approx(list(expected.values()))


def test_sigmoid_values():
    s = build_schedule("sigmoid", beta=3.0, start=1.0, steps=400, steepness=10.0)
    k = 10.0

    def sigma(x):
        return 1.0 / (1.0 + math.exp(-x))

    def closed(tau):
        return 1.0 + 2.0 * (sigma(k * (tau - 0.5)) - sigma(-k / 2)) / (sigma(k / 2) - sigma(-k / 2))

    assert s.beta_at(0) == pytest.approx(1.0, abs=1e-12)
    assert s.beta_at(200) == pytest.approx(2.0)
    assert s.beta_at(300) == pytest.approx(closed(0.75))
    assert s.beta_at(300) == pytest.approx(1.0 + 2.0 * 0.9299, abs=1e-4)
    assert s.beta_at(400) == pytest.approx(3.0, abs=1e-12)
    assert s.beta_at(5000) == 3.0


def test_warmups_monotone_and_bounded():
    steps = range(0, 1500)
    for s in (
        build_schedule("linear", beta=2.0, steps=1000, delay=100),
        build_schedule("sigmoid", beta=2.0, steps=1000),
    ):
        b = betas(s, steps)
        assert np.all(np.diff(b) >= 0)
        assert b.min() >= 0.0 and b.max() <= 2.0 + 1e-12


# ---- cyclical: the published reference at every step ---------------------------------


@pytest.mark.parametrize(
    ("n_iter", "n_cycles", "ratio", "beta"),
    [(1000, 4, 0.5, 1.0), (1000, 4, 1.0, 1.0), (1000, 4, 0.5, 0.25), (1000, 4, 1.0, 3.0)],
)
def test_cyclical_linear_matches_fu_et_al(n_iter, n_cycles, ratio, beta):
    s = build_schedule("cyclical", beta=beta, total_steps=n_iter, n_cycles=n_cycles, ratio=ratio)
    reference = frange_cycle_linear(n_iter, 0.0, 1.0, n_cycles, ratio) * beta
    np.testing.assert_allclose(betas(s, range(n_iter)), reference, rtol=0, atol=1e-12)
    assert betas(s, [n_iter, n_iter + 1, 10 * n_iter]).tolist() == [beta] * 3


def test_cyclical_linear_matches_reference_with_start_and_fractional_period():
    s = build_schedule("cyclical", beta=2.0, start=0.5, total_steps=1000, n_cycles=3, ratio=0.7)
    reference = frange_cycle_linear(1000, 0.5, 2.0, 3, 0.7)
    np.testing.assert_allclose(betas(s, range(1000)), reference, rtol=0, atol=1e-12)


def test_cyclical_hand_values():
    s = build_schedule("cyclical", beta=1.0, total_steps=1000, n_cycles=4, ratio=0.5)
    expected = {0: 0.0, 50: 0.4, 125: 1.0, 200: 1.0, 250: 0.0, 260: 0.08, 999: 1.0, 1000: 1.0}
    assert betas(s, expected) == pytest.approx(list(expected.values()))
    cosine = build_schedule("cyclical", beta=2.0, total_steps=1000, shape="cosine")
    # τ = 25/125 = 0.2: 2 · ½(1 − cos 36°) = 1 − 0.80901699...
    assert cosine.beta_at(275) == pytest.approx(1.0 - 0.8090169943749475)
    sigmoid = build_schedule("cyclical", beta=2.0, total_steps=1000, shape="sigmoid")
    assert sigmoid.beta_at(500 + 62) < 1.0 < sigmoid.beta_at(500 + 63)  # midpoint τ = ½

    # Off the midpoint the steepness shows: Fu et al.'s σ(12τ − 6), rescaled to run from 0
    # to 1 over the ramp, written out with math.exp (steps 525 and 600: τ = 0.2 and 0.8).
    def logistic(t):
        return 1.0 / (1.0 + math.exp(-t))

    for step, tau in ((525, 0.2), (600, 0.8)):
        ramp = (logistic(12 * tau - 6) - logistic(-6)) / (logistic(6) - logistic(-6))
        assert sigmoid.beta_at(step) == pytest.approx(2.0 * ramp, rel=1e-12)


@pytest.mark.parametrize("shape", ["sigmoid", "cosine"])
def test_cyclical_smooth_shapes(shape):
    start, beta = 0.1, 2.0
    s = build_schedule(
        "cyclical", beta=beta, start=start, total_steps=1000, n_cycles=4, ratio=0.5, shape=shape
    )
    b = betas(s, range(1200))
    for c in range(4):
        first = 250 * c
        assert b[first] == pytest.approx(start, abs=1e-12)
        rise = b[first : first + 126]
        assert np.all(np.diff(rise) > 0)
        assert b[first + 125] == pytest.approx(beta, abs=1e-12)
        np.testing.assert_allclose(b[first + 125 : first + 250], beta, atol=1e-12)
    np.testing.assert_allclose(b[1000:], beta)
    assert b.min() >= start - 1e-12 and b.max() <= beta + 1e-12


# ---- loss composition and gradients -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "step", "beta"),
    [
        ("constant", {"beta": 4.0}, 3, 4.0),
        ("linear", {"beta": 2.0, "steps": 100}, 25, 0.5),
        ("cyclical", {"beta": 1.0, "total_steps": 1000}, 50, 0.4),
    ],
)
def test_open_loop_loss_and_gradients(name, options, step, beta):
    s = build_schedule(name, **options)
    rec, kl = scalar(100.0, True), scalar(12.0, True)
    loss, b = s(step, rec, kl)
    assert loss.dim() == 0 and b.dim() == 0 and not b.requires_grad
    assert b.item() == pytest.approx(beta)
    assert loss.item() == pytest.approx(100.0 + beta * 12.0)
    loss.backward()
    assert rec.grad.item() == 1.0
    assert kl.grad.item() == pytest.approx(beta)


def test_capacity_values_and_gradient_sign():
    s = build_schedule("capacity", gamma=1000.0, c_max=25.0, c_steps=100000)
    assert [s.capacity_at(t) for t in (0, 40000, 100000, 200000)] == pytest.approx(
        [0.0, 10.0, 25.0, 25.0]
    )
    for kl_value, sign in ((12.0, 1.0), (8.0, -1.0)):  # C(40000) = 10 nats
        rec, kl = scalar(100.0, True), scalar(kl_value, True)
        loss, beta = s(40000, rec, kl)
        assert beta.item() == 1000.0 and s.beta_at(40000) == 1000.0
        assert loss.item() == pytest.approx(100.0 + 1000.0 * 2.0)
        loss.backward()
        assert rec.grad.item() == 1.0
        assert kl.grad.item() == sign * 1000.0


@pytest.mark.parametrize(
    ("name", "options"),
    [("geco", {"target": 80.0, "lambda_init": 4.0}), ("pi", {"kl_target": 10.0, "beta_init": 0.5})],
)
def test_controller_loss_and_gradients(name, options):
    s = build_schedule(name, **options)
    rec, kl = scalar(100.0, True), scalar(12.0, True)
    loss, beta = s(0, rec, kl)
    expected_beta = 0.25 if name == "geco" else 0.5
    assert beta.item() == pytest.approx(expected_beta) and not beta.requires_grad
    assert s.beta_at(0) == pytest.approx(expected_beta)
    assert loss.item() == pytest.approx(100.0 + expected_beta * 12.0)
    loss.backward()
    assert rec.grad.item() == 1.0 and kl.grad.item() == pytest.approx(expected_beta)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("constant", {}),
        ("capacity", {}),
        ("geco", {"target": 80.0}),
        ("pi", {"kl_target": 10.0}),
    ],
)
def test_forward_is_pure_and_beta_is_a_snapshot(name, options):
    s = build_schedule(name, **options)
    s.observe(0, scalar(90.0), scalar(20.0))
    before = {k: v.clone() for k, v in s.state_dict().items()}
    _, beta = s(1, scalar(90.0), scalar(20.0))
    logged = beta.item()
    s(1, scalar(90.0), scalar(20.0))
    after = s.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for _ in range(5):
        s.observe(1, scalar(200.0), scalar(40.0))
    assert beta.item() == logged  # the returned β does not alias controller state


# ---- GECO ---------------------------------------------------------------------------


def test_geco_hand_values():
    s = build_schedule("geco", target=100.0, alpha=0.5, speed=0.1, scale=10.0)
    kl = scalar(5.0)
    s.observe(0, scalar(120.0), kl)  # C = 20 initialises C_ma; log λ += 0.1 · 20/10
    assert s.beta_at(1) == pytest.approx(math.exp(-0.2), rel=1e-6)
    s.observe(1, scalar(80.0), kl)  # C_ma = ½·20 + ½·(−20) = 0: λ unchanged
    assert s.beta_at(2) == pytest.approx(math.exp(-0.2), rel=1e-6)
    s.observe(2, scalar(80.0), kl)  # C_ma = −10: log λ −= 0.1
    assert s.beta_at(3) == pytest.approx(math.exp(-0.1), rel=1e-6)
    assert build_schedule("geco", target=80.0).scale == 80.0
    assert build_schedule("geco", target=-0.5).scale == 1.0


def test_geco_direction_and_clamp():
    worse = build_schedule("geco", target=80.0, speed=1.0, lambda_max=50.0)
    better = build_schedule("geco", target=80.0, speed=1.0, lambda_min=0.02)
    previous_worse, previous_better = worse.beta_at(0), better.beta_at(0)
    for t in range(2000):
        worse.observe(t, scalar(120.0), scalar(5.0))
        better.observe(t, scalar(40.0), scalar(5.0))
        assert worse.beta_at(t) <= previous_worse and better.beta_at(t) >= previous_better
        previous_worse, previous_better = worse.beta_at(t), better.beta_at(t)
    assert worse.beta_at(0) == pytest.approx(1 / 50.0) and 1 / 50.0 < 1.0
    assert better.beta_at(0) == pytest.approx(1 / 0.02)


# ---- PI (ControlVAE) ----------------------------------------------------------------


def test_pi_hand_values():
    s = build_schedule("pi", kl_target=10.0, kp=0.01, ki=0.001)
    assert s.beta_at(0) == 0.0  # the paper's β(0) = beta_min
    s.observe(0, scalar(0.0), scalar(12.0))  # e = −2: P = 0.01/(1 + e^−2), I = 0.002
    assert s.beta_at(1) == pytest.approx(0.01 / (1 + math.exp(-2.0)) + 0.002, rel=1e-6)
    s.observe(1, scalar(0.0), scalar(9.0))  # e = 1: P = 0.01/(1 + e), I = 0.002 − 0.001
    assert s.beta_at(2) == pytest.approx(0.01 / (1 + math.e) + 0.001, rel=1e-6)


def test_pi_direction_and_bounds():
    above = build_schedule("pi", kl_target=10.0, ki=0.001, beta_min=0.1, beta_max=0.8)
    below = build_schedule(
        "pi", kl_target=10.0, ki=0.001, beta_min=0.1, beta_max=0.8, beta_init=0.5
    )
    above_betas, below_betas = [], []
    for t in range(3000):
        above.observe(t, scalar(0.0), scalar(15.0))
        below.observe(t, scalar(0.0), scalar(5.0))
        above_betas.append(above.beta_at(t))
        below_betas.append(below.beta_at(t))
    assert np.all(np.diff(above_betas) >= 0) and above_betas[-1] == pytest.approx(0.8)
    assert np.all(np.diff(below_betas) <= 0) and below_betas[-1] == pytest.approx(0.1)
    assert below_betas[0] < 0.5  # started at beta_init, then fell
    assert min(above_betas + below_betas) >= 0.1 - 1e-7
    assert max(above_betas + below_betas) <= 0.8 + 1e-7


def test_pi_anti_windup_recovers_quickly():
    s = build_schedule("pi", kl_target=10.0, kp=0.01, ki=0.01, beta_max=1.0)
    for t in range(1000):
        s.observe(t, scalar(0.0), scalar(30.0))  # e = −20: without anti-windup I ≈ 200
    assert s.beta_at(1000) == 1.0
    assert s.integral.item() <= 1.0
    trajectory = []
    for t in range(1000, 1020):
        s.observe(t, scalar(0.0), scalar(0.0))  # e = +10
        trajectory.append(s.beta_at(t))
    assert trajectory[0] < 1.0  # off the bound at once
    assert trajectory[-1] == 0.0  # and all the way down to beta_min within ~10 steps
    for t in range(1020, 2020):
        s.observe(t, scalar(0.0), scalar(0.0))  # saturate at beta_min
    s.observe(2020, scalar(0.0), scalar(30.0))
    assert s.beta_at(2021) > 0.0


def test_pi_closed_loop_reaches_set_point():
    # Toy plant: the KL the model settles to under weight β, kl = 50·exp(−3β).
    s = build_schedule("pi", kl_target=10.0, kp=0.01, ki=0.005, beta_max=2.0)
    for t in range(3000):
        kl = 50.0 * math.exp(-3.0 * s.beta_at(t))
        s.observe(t, scalar(0.0), scalar(kl))
    assert 50.0 * math.exp(-3.0 * s.beta_at(3000)) == pytest.approx(10.0, abs=0.1)
    assert s.beta_at(3000) == pytest.approx(math.log(5.0) / 3.0, abs=0.01)


# ---- checkpointing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options"),
    [("geco", {"target": 80.0, "speed": 0.1}), ("pi", {"kl_target": 10.0, "ki": 0.002})],
)
def test_controller_state_dict_round_trip(name, options):
    generator = torch.Generator().manual_seed(0)
    signals = [
        (
            scalar(60.0 + 40.0 * torch.rand((), generator=generator)),
            scalar(5.0 + 15.0 * torch.rand((), generator=generator)),
        )
        for _ in range(60)
    ]
    first = build_schedule(name, **options)
    for t, (rec, kl) in enumerate(signals[:30]):
        first.observe(t, rec, kl)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = build_schedule(name, **options)
    assert second.beta_at(30) != first.beta_at(30)
    second.load_state_dict(torch.load(buffer))
    sequences = ([], [])
    for t, (rec, kl) in enumerate(signals[30:], start=30):
        for schedule, sequence in zip((first, second), sequences, strict=True):
            sequence.append(schedule(t, rec, kl)[1].item())
            schedule.observe(t, rec, kl)
    assert sequences[0] == sequences[1]
    assert len(set(sequences[0])) > 10  # the controller was moving


def test_open_loop_schedules_have_no_state():
    for name in ("constant", "linear", "sigmoid", "capacity"):
        assert build_schedule(name).state_dict() == {}


def test_repr_lists_options():
    text = repr(build_schedule("pi", kl_target=10.0, beta_max=0.5))
    assert "kl_target=10.0" in text and "beta_max=0.5" in text and "beta_init=None" in text


# ---- registry and validation --------------------------------------------------------


def test_registry():
    expected = {"constant", "linear", "sigmoid", "cyclical", "capacity", "geco", "pi"}
    assert set(SCHEDULES) == expected
    assert all(cls.name == name for name, cls in SCHEDULES.items())
    with pytest.raises(ValueError, match="warmup") as error:
        build_schedule("warmup")
    assert all(name in str(error.value) for name in expected)
    with pytest.raises(ValueError, match="gama") as error:
        build_schedule("capacity", gama=10.0)
    assert all(option in str(error.value) for option in ("gamma", "c_max", "c_steps"))
    with pytest.raises(ValueError, match="target"):
        build_schedule("geco")  # its config's target is ??? too: no default either way


@pytest.mark.parametrize(
    ("name", "options", "param", "value"),
    [
        ("constant", {"beta": -1.0}, "beta", -1.0),
        ("constant", {"beta": float("nan")}, "beta", float("nan")),
        ("linear", {"start": -0.5}, "start", -0.5),
        ("linear", {"steps": 0}, "steps", 0),
        ("linear", {"steps": 10.5}, "steps", 10.5),
        ("linear", {"delay": -1}, "delay", -1),
        ("sigmoid", {"steps": -5}, "steps", -5),
        ("sigmoid", {"steepness": 0.0}, "steepness", 0.0),
        ("cyclical", {"total_steps": 0}, "total_steps", 0),
        ("cyclical", {"n_cycles": 0}, "n_cycles", 0),
        ("cyclical", {"total_steps": 3, "n_cycles": 4}, "n_cycles", 4),
        ("cyclical", {"ratio": 0.0}, "ratio", 0.0),
        ("cyclical", {"ratio": 1.5}, "ratio", 1.5),
        ("cyclical", {"shape": "square"}, "shape", "square"),
        ("cyclical", {"beta": 1.0, "start": 2.0}, "start", 2.0),
        ("capacity", {"gamma": -1.0}, "gamma", -1.0),
        ("capacity", {"c_max": -25.0}, "c_max", -25.0),
        ("capacity", {"c_steps": 0}, "c_steps", 0),
        ("geco", {"target": float("inf")}, "target", float("inf")),
        ("geco", {"target": 1.0, "alpha": 1.0}, "alpha", 1.0),
        ("geco", {"target": 1.0, "alpha": -0.1}, "alpha", -0.1),
        ("geco", {"target": 1.0, "speed": 0.0}, "speed", 0.0),
        ("geco", {"target": 1.0, "scale": -2.0}, "scale", -2.0),
        ("geco", {"target": 1.0, "lambda_min": 0.0}, "lambda_min", 0.0),
        ("geco", {"target": 1.0, "lambda_min": 2.0, "lambda_max": 1.0}, "lambda_max", 1.0),
        ("geco", {"target": 1.0, "lambda_init": 1e7}, "lambda_init", 1e7),
        ("pi", {"kl_target": -1.0}, "kl_target", -1.0),
        ("pi", {"kl_target": 1.0, "kp": -0.01}, "kp", -0.01),
        ("pi", {"kl_target": 1.0, "ki": -0.1}, "ki", -0.1),
        ("pi", {"kl_target": 1.0, "beta_min": -0.1}, "beta_min", -0.1),
        ("pi", {"kl_target": 1.0, "beta_min": 0.5, "beta_max": 0.2}, "beta_max", 0.2),
        ("pi", {"kl_target": 1.0, "beta_min": 2.0}, "beta_min", 2.0),  # not the default max
        ("pi", {"kl_target": 1.0, "beta_max": -1.0}, "beta_max", -1.0),
        ("pi", {"kl_target": 1.0, "beta_init": 1.5}, "beta_init", 1.5),
        ("pi", {"kl_target": True}, "kl_target", True),
    ],
)
def test_invalid_parameters(name, options, param, value):
    with pytest.raises(ValueError) as error:
        build_schedule(name, **options)
    message = str(error.value)
    assert f"{param}=" in message and repr(value) in message and name in message
    assert message.startswith(f"{param}={value!r} is invalid") or (
        f"{param}=" in message.split(" is invalid")[1]  # the pair, named from one side
    )


def test_steps_must_be_non_negative_integers():
    s = build_schedule("linear", steps=10)
    assert s.beta_at(np.int64(5)) == pytest.approx(0.5)
    assert s.beta_at(torch.tensor(5)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="step=-1"):
        s.beta_at(-1)
    with pytest.raises(TypeError):
        s.beta_at(2.5)


# ---- when a schedule settles: the run-length warning ------------------------------------


def _last_change(schedule, horizon):
    """The first step from which the schedule's value (β, or the capacity) no longer changes
    within ``horizon`` steps: found by evaluating every step."""
    value = getattr(schedule, "capacity_at", schedule.beta_at)
    values = [value(t) for t in range(horizon)]
    return max(t for t in range(1, horizon) if values[t] != values[t - 1])


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("linear", {"steps": 37}),
        ("linear", {"steps": 37, "delay": 11}),
        ("linear", {"steps": 1}),
        ("sigmoid", {"steps": 41}),
        ("cyclical", {"total_steps": 50, "n_cycles": 3, "ratio": 1.0}),
        ("cyclical", {"total_steps": 50, "n_cycles": 4, "ratio": 0.5, "shape": "cosine"}),
        ("cyclical", {"total_steps": 600, "n_cycles": 4, "ratio": 0.5}),  # the config's
        ("cyclical", {"total_steps": 7, "n_cycles": 7, "ratio": 0.3}),
        ("cyclical", {"total_steps": 100, "n_cycles": 3, "ratio": 0.7, "shape": "sigmoid"}),
        ("capacity", {"c_steps": 29}),
    ],
)
def test_settles_is_the_step_from_which_the_schedule_holds(name, options):
    schedule = build_schedule(name, **options)
    _, step = schedule.settles()
    assert step == _last_change(schedule, 3 * step + 10)


@pytest.mark.parametrize(("name", "options"), [("constant", {}), ("geco", {"target": -100.0}),
                                               ("pi", {"kl_target": 25.0})])  # fmt: skip
def test_constant_beta_and_controllers_never_settle(name, options):
    assert build_schedule(name, **options).settles() is None


@pytest.mark.slow
def test_a_schedule_longer_than_the_run_is_named_in_a_warning(tmp_path):
    """A real run of 3 optimisation steps: a 300-step warm-up is named with the β it ends
    at; a 2-step one is not."""
    long = run_cli([*TINY, "logger=csv", "hydra.run.dir=long", "beta_schedule=linear"], tmp_path)
    assert long.returncode == 0, long.stderr[-3000:]
    warning = (
        "beta_schedule=linear settles at step 300 (beta_schedule.steps), but this run takes 3 "
        "optimisation steps: it ends at β = 0.006667, not at the β = 1 it settles at."
    )  # β at step 2, the last of the three: 2/300
    assert warning in long.stdout + long.stderr
    assert warning in (tmp_path / "long" / "train.log").read_text()
    args = [*TINY, "logger=csv", "hydra.run.dir=short", "beta_schedule=linear"]
    short = run_cli([*args, "beta_schedule.steps=2"], tmp_path)
    assert short.returncode == 0, short.stderr[-3000:]
    assert "settles at step" not in short.stdout + short.stderr


# ---- a class built in Python gets its config's defaults ----------------------------------

CONF = Path(vaesweep.__file__).parent / "conf"
#: (config, key): why the Python default differs from the config's on purpose; each is
#: named in docs/components.md ("Python defaults that differ from the configs'").
PYTHON_DEFAULT_DIFFERS = {
    ("likelihood/gaussian.yaml", "scale_lr"): "None trains a learned scale at the network's lr",
    ("likelihood/laplace.yaml", "scale_lr"): "None trains a learned scale at the network's lr",
    ("model/mlp.yaml", "latent_dim"): "required in Python",
    ("model/conv.yaml", "latent_dim"): "required in Python",
    ("data/mnist_small.yaml", "preprocess"): "dequantize: what auto gives all but bernoulli",
}
#: (config, key): the built-in value that a Python default of None stands for.
NONE_MEANS = {
    ("model/mlp.yaml", "hidden"): networks.DEFAULT_MLP_HIDDEN,
    ("model/conv.yaml", "hidden"): networks.DEFAULT_CONV_HIDDEN,
    ("model/conv.yaml", "channels"): networks.DEFAULT_CONV_CHANNELS,
}
DEFAULT_CONFIGS = [
    *(f"{group}/{path.name}" for group in ("beta_schedule", "likelihood", "model")
      for path in sorted((CONF / group).glob("*.yaml"))),
    "data/mnist_small.yaml",  # the default data (no _target_: VAEDataModule's options)
]  # fmt: skip


def _resolved(config):
    """The config file's keys with ${beta} and ${paths.*} resolved as in train.yaml; a
    mandatory ``???`` stays the string "???"."""
    root = OmegaConf.create(
        {
            "beta": OmegaConf.load(CONF / "train.yaml").beta,
            "paths": OmegaConf.load(CONF / "paths" / "default.yaml"),
            "node": OmegaConf.load(CONF / config),
        }
    )
    return OmegaConf.to_container(root.node, resolve=True)


@pytest.mark.parametrize("config", DEFAULT_CONFIGS)
def test_python_defaults_are_the_configs(config):
    """A component built in Python without an option gets the value the CLI gives it,
    except where PYTHON_DEFAULT_DIFFERS says why not; a config's ``???`` is required in
    Python too."""
    options = _resolved(config)
    group = config.split("/")[0]
    if "_target_" in options:
        module, _, name = options["_target_"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        meta, context = META_KEYS[group], CONTEXT_ARGS[group]
    else:
        cls, meta, context = VAEDataModule, ("name",), ()
    params = {
        key: param
        for key, param in inspect.signature(cls).parameters.items()
        if key not in context and param.kind is param.POSITIONAL_OR_KEYWORD
    }
    keys = {key: value for key, value in options.items() if key not in meta}
    assert set(keys) <= set(params), f"{config}: keys {cls.__name__} does not take"
    if cls is not VAEDataModule:  # its other options (seed, device, ...) are not data.*
        assert set(params) <= set(keys), f"{config}: options of {cls.__name__} it lacks"
    differs = {}
    for key, value in keys.items():
        default = params[key].default
        if default is None and (config, key) in NONE_MEANS:
            default = list(NONE_MEANS[config, key])
        expected = inspect.Parameter.empty if value == "???" else value  # ??? is required
        if default != expected:
            differs[key] = (value, default)
    documented = {key for (name, key) in PYTHON_DEFAULT_DIFFERS if name == config}
    assert set(differs) == documented, differs


def test_the_vaes_default_optimizer_is_the_configs_but_for_fused():
    """A VAE built in Python without ``optimizer`` trains with the optimizer that
    ``optimizer=adam`` builds, up to ``fused`` (torch's Adam against its fused kernel: equal
    up to float rounding), which docs/components.md names; both built, not read."""
    from vaesweep.model.likelihoods import GaussianLikelihood
    from vaesweep.model.module import DEFAULT_OPTIMIZER, VAE
    from vaesweep.model.schedules import ConstantBeta

    def built(spec):
        model = VAE(
            likelihood=GaussianLikelihood((1, 28, 28)),
            schedule=ConstantBeta(1.0),
            network=networks.MLP(latent_dim=4),
            optimizer=spec,
        )
        return model.configure_optimizers().defaults

    config = OmegaConf.to_container(OmegaConf.load(CONF / "optimizer" / "adam.yaml"))
    python, cli = built(dict(DEFAULT_OPTIMIZER)), built(config)
    differs = {k for k in python if python[k] != cli[k]}
    assert differs == {"fused"} and cli["fused"] is True
    assert '"fused": True' in (Path(__file__).parents[1] / "docs" / "components.md").read_text()
