"""Decoder likelihoods against independent references (scipy.stats, quadrature, closed forms)."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

from vaesweep.model.components import build_likelihood
from vaesweep.model.likelihoods import (
    LIKELIHOODS,
    SCALE_MODES,
    inverse_soft_clip,
    soft_clip,
)

SHAPE = (2, 3, 4)
D = 24
B = 5


def np_soft_clip(t, minimum=-6.0):
    return minimum + np.log1p(np.exp(t - minimum))


def scipy_logpdf(name, x, loc, scale):
    """Reference log-density summed over the data dims, float64, shape [B]."""
    dist = stats.norm if name == "gaussian" else stats.laplace
    return dist.logpdf(x, loc=loc, scale=scale).reshape(x.shape[0], -1).sum(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def make(name, **options):
    return build_likelihood(name, SHAPE, **options).double()


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_fixed_scale_matches_scipy(name, rng):
    lik = make(name, scale="fixed", scale_value=0.7)
    x = rng.uniform(0, 1, (B, *SHAPE))
    loc = rng.normal(0.5, 0.3, (B, *SHAPE))
    got = lik.log_prob(torch.tensor(x), torch.tensor(loc)).detach().numpy()
    np.testing.assert_allclose(got, scipy_logpdf(name, x, loc, 0.7), rtol=0, atol=1e-10)
    assert float(lik.scale()) == pytest.approx(0.7)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
@pytest.mark.parametrize("mode", ["learned", "per_pixel"])
def test_learned_scales_match_scipy_with_soft_clip(name, mode, rng):
    lik = make(name, scale=mode)
    # includes values far below the floor
    raw = rng.normal(-1.0, 3.0, lik.scale_mode.log_scale.shape)
    with torch.no_grad():
        lik.scale_mode.log_scale.copy_(torch.tensor(raw))
    x = rng.uniform(0, 1, (B, *SHAPE))
    loc = rng.normal(0.5, 0.3, (B, *SHAPE))
    scale = np.broadcast_to(np.exp(np_soft_clip(raw)), x.shape)
    got = lik.log_prob(torch.tensor(x), torch.tensor(loc)).detach().numpy()
    np.testing.assert_allclose(got, scipy_logpdf(name, x, loc, scale), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_decoder_scale_matches_scipy(name, rng):
    lik = make(name, scale="decoder")
    assert lik.param_channels == 2
    x = rng.uniform(0, 1, (B, *SHAPE))
    loc = rng.normal(0.5, 0.3, (B, *SHAPE))
    raw = rng.normal(-2.0, 3.0, (B, *SHAPE))
    params = torch.tensor(np.concatenate([loc, raw], axis=1))  # grouped by parameter
    got = lik.log_prob(torch.tensor(x), params).numpy()
    ref = scipy_logpdf(name, x, loc, np.exp(np_soft_clip(raw)))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-9)


def optimal_stat(name, r, axis=None):
    return np.sqrt((r**2).mean(axis)) if name == "gaussian" else np.abs(r).mean(axis)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
@pytest.mark.parametrize("reduction", ["batch", "example"])
def test_optimal_scale_in_training_matches_scipy(name, reduction, rng):
    lik = make(name, scale="optimal", optimal_reduction=reduction)
    lik.train()
    x = rng.uniform(0, 1, (B, *SHAPE))
    loc = x + rng.normal(0, 0.1, x.shape) * np.arange(1, B + 1)[:, None, None, None]
    r = x - loc
    if reduction == "batch":
        s = optimal_stat(name, r)
    else:
        s = optimal_stat(name, r.reshape(B, -1), axis=1)[:, None, None, None]
    scale = np.broadcast_to(np.exp(np_soft_clip(np.log(s))), x.shape)
    got = lik.log_prob(torch.tensor(x), torch.tensor(loc, requires_grad=True))
    np.testing.assert_allclose(
        got.detach().numpy(), scipy_logpdf(name, x, loc, scale), rtol=1e-12, atol=1e-9
    )


@pytest.mark.parametrize("name", ["bernoulli", "continuous_bernoulli"])
def test_bernoulli_families_match_closed_forms(name, rng):
    lik = make(name)
    logits = rng.normal(0, 3, (B, *SHAPE))
    lam = 1 / (1 + np.exp(-logits))
    if name == "bernoulli":
        x = rng.integers(0, 2, (B, *SHAPE)).astype(float)
        ref = stats.bernoulli.logpmf(x, lam).reshape(B, -1).sum(1)
    else:
        x = rng.uniform(0, 1, (B, *SHAPE))
        log_c = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
        ref = (x * np.log(lam) + (1 - x) * np.log1p(-lam) + log_c).reshape(B, -1).sum(1)
    got = lik.log_prob(torch.tensor(x), torch.tensor(logits)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize(
    "lam", [0.01, 0.2, 0.4989, 0.49995, 0.5, 0.50001, 0.50009, 0.5001, 0.7, 0.995]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_continuous_bernoulli_normaliser_equals_quadrature(lam, dtype):
    """log C(λ) = −log ∫₀¹ λ^x (1−λ)^(1−x) dx, including λ within 1e-4 of ½."""
    integral, _ = integrate.quad(lambda t: lam**t * (1 - lam) ** (1 - t), 0, 1, epsabs=1e-14)
    lik = build_likelihood("continuous_bernoulli", (1, 1, 1)).to(dtype)
    logit = torch.tensor([[[[math.log(lam / (1 - lam))]]]], dtype=dtype)
    # At x = 1 the Bernoulli term is log λ, so log p(1) − log λ is log C(λ).
    log_c = lik.log_prob(torch.ones(1, 1, 1, 1, dtype=dtype), logit) - math.log(lam)
    # float64: to quadrature's accuracy; float32: a few ulps of log λ and of the logit.
    tolerance = 1e-11 if dtype == torch.float64 else 2e-6
    assert float(log_c) == pytest.approx(-math.log(integral), abs=tolerance)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_nll_minimised_at_closed_form_scale(name, rng):
    """For fixed residuals, the NLL is minimised at σ = √MSE (b = MAE) with the stated minimum
    per dimension; the optimal mode (clip off) returns exactly that scale and value."""
    x = rng.uniform(0, 1, (B, *SHAPE))
    loc = x + rng.normal(0, 0.05, x.shape)
    r = (x - loc).ravel()
    mse, mae = np.mean(r**2), np.mean(np.abs(r))

    def nll(log_s):  # independent reference: scipy densities
        dist = stats.norm if name == "gaussian" else stats.laplace
        return -dist.logpdf(r, scale=np.exp(log_s)).sum()

    res = optimize.minimize_scalar(nll, bounds=(-10, 2), method="bounded", options={"xatol": 1e-10})
    grid = np.linspace(-6, 0, 20001)
    grid_best = grid[np.argmin([nll(g) for g in grid])]
    if name == "gaussian":
        s_star, min_per_dim = math.sqrt(mse), 0.5 + 0.5 * math.log(2 * math.pi * mse)
    else:
        s_star, min_per_dim = mae, 1 + math.log(2 * mae)
    assert math.exp(res.x) == pytest.approx(s_star, rel=1e-6)
    assert math.exp(grid_best) == pytest.approx(s_star, rel=1e-3)
    assert res.fun / r.size == pytest.approx(min_per_dim, rel=1e-9)

    lik = make(name, scale="optimal", min_log_scale=None)
    got = lik.log_prob(torch.tensor(x), torch.tensor(loc, requires_grad=True))
    lik.observe(torch.tensor(x), torch.tensor(loc))  # what the training step does next
    assert float(lik.scale()) == pytest.approx(s_star, rel=1e-12)  # first batch seeds the average
    assert float(-got.detach().sum()) / r.size == pytest.approx(min_per_dim, rel=1e-10)
    # With the default soft clip the scale is the clipped σ*: slightly above it, never below.
    clipped = make(name, scale="optimal")
    clipped.observe(torch.tensor(x), torch.tensor(loc))
    assert float(clipped.scale()) == pytest.approx(math.exp(np_soft_clip(math.log(s_star))))
    assert float(clipped.scale()) > s_star


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_optimal_scale_in_eval_uses_running_average_not_scored_batch(name, rng):
    lik = make(name, scale="optimal", momentum=0.9, min_log_scale=None)
    x1, x2, x_test = (rng.uniform(0, 1, (B, *SHAPE)) for _ in range(3))
    loc1, loc2 = x1 + rng.normal(0, 0.1, x1.shape), x2 + rng.normal(0, 0.3, x2.shape)
    lik.train()
    for x, loc in ((x1, loc1), (x2, loc2)):
        lik.log_prob(torch.tensor(x), torch.tensor(loc, requires_grad=True))
        lik.observe(torch.tensor(x), torch.tensor(loc))  # as the training step does
    if name == "gaussian":  # the running average is over σ*² (variances), then √
        expected = math.sqrt(0.9 * np.mean((x1 - loc1) ** 2) + 0.1 * np.mean((x2 - loc2) ** 2))
    else:
        expected = 0.9 * np.mean(np.abs(x1 - loc1)) + 0.1 * np.mean(np.abs(x2 - loc2))
    assert float(lik.scale()) == pytest.approx(expected, rel=1e-12)

    lik.eval()
    loc_test = x_test + rng.normal(0, 0.01, x_test.shape)  # much better fit than training
    before = {k: v.clone() for k, v in lik.state_dict().items()}
    got = lik.log_prob(torch.tensor(x_test), torch.tensor(loc_test)).numpy()
    np.testing.assert_allclose(got, scipy_logpdf(name, x_test, loc_test, expected), rtol=1e-12)
    for k, v in lik.state_dict().items():  # scoring never updates the running average
        assert torch.equal(v, before[k])
    # The running average is a buffer: it travels with the checkpoint.
    fresh = make(name, scale="optimal", momentum=0.9, min_log_scale=None)
    fresh.load_state_dict(lik.state_dict())
    assert float(fresh.eval().scale()) == pytest.approx(expected, rel=1e-12)


def test_fixed_unit_gaussian_rec_nll_is_at_least_half_d_log_2pi(rng):
    lik = make("gaussian")
    x = torch.tensor(rng.uniform(0, 1, (50, *SHAPE)))
    bound = D / 2 * math.log(2 * math.pi)
    for loc in (torch.tensor(rng.normal(0, 2, x.shape)), x.clone(), torch.zeros_like(x)):
        assert (-lik.log_prob(x, loc) >= bound - 1e-9).all()
    assert float(-lik.log_prob(x, x)[0]) == pytest.approx(bound, abs=1e-9)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
@pytest.mark.parametrize("mode", ["learned", "per_pixel", "decoder", "optimal"])
def test_gradients_reach_every_scale(name, mode, rng):
    lik = build_likelihood(name, SHAPE, scale=mode)
    x = torch.rand(B, *SHAPE)
    params = torch.randn(B, lik.param_channels * SHAPE[0], *SHAPE[1:], requires_grad=True)
    lik.log_prob(x, params).sum().backward()
    for p in lik.parameters():
        assert p.dtype == torch.float32
        assert p.grad is not None and torch.all(p.grad != 0)
    assert torch.all(params.grad[:, : SHAPE[0]] != 0)
    if mode == "decoder":  # the log-scale head receives gradients
        assert torch.all(params.grad[:, SHAPE[0] :] != 0)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
@pytest.mark.parametrize("reduction", ["batch", "example"])
def test_optimal_scale_gradient_is_the_closed_form(name, reduction, rng):
    """At the optimal scale the loss is the log-MSE (log-MAE) form, whose gradient has a
    closed form. With s = mean r² (Gaussian) or mean |r| (Laplace) over the batch, or over
    each example's pixels, and r = x − μ: ∂ Σ log p / ∂μ_i = r_i / s (Gaussian) and
    sign(r_i) / s (Laplace); the path through σ* adds nothing, as the NLL is stationary in
    σ there. A statistic over the wrong elements (the batch for the examples' reduction, a
    sum for a mean) or a path through σ* that does not vanish changes it."""
    lik = make(name, scale="optimal", min_log_scale=None, optimal_reduction=reduction).train()
    x = rng.uniform(0, 1, (B, *SHAPE))
    loc = rng.normal(0.5, 0.3, (B, *SHAPE))
    loc_t = torch.tensor(loc, requires_grad=True)
    lik.log_prob(torch.tensor(x), loc_t).sum().backward()
    r = x - loc
    stat = r**2 if name == "gaussian" else np.abs(r)
    s = stat.mean() if reduction == "batch" else stat.reshape(B, -1).mean(1)[:, None, None, None]
    expected = (r if name == "gaussian" else np.sign(r)) / s
    np.testing.assert_allclose(loc_t.grad.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_soft_clip_floor_and_inverse():
    t = torch.linspace(-30, 10, 401, dtype=torch.float64)
    y = soft_clip(t, -6.0)
    assert (y > -6.0).all()
    assert torch.all(torch.diff(y) > 0)
    assert torch.allclose(y[-1], torch.tensor(10.0, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(inverse_soft_clip(y[200:], -6.0), t[200:], atol=1e-9)
    assert torch.equal(soft_clip(t, None), t)


def test_learned_scale_starts_at_scale_value():
    for mode in ("learned", "per_pixel"):
        lik = build_likelihood("gaussian", SHAPE, scale=mode, scale_value=0.1)
        assert float(lik.scale()) == pytest.approx(0.1, rel=1e-5)


def test_mean_and_sample_shapes_and_ranges():
    x_shape = (B, *SHAPE)
    for name in LIKELIHOODS:
        modes = SCALE_MODES if name in ("gaussian", "laplace") else (None,)
        for mode in modes:
            lik = build_likelihood(name, SHAPE, **({"scale": mode} if mode else {}))
            params = torch.randn(B, lik.param_channels * SHAPE[0], *SHAPE[1:])
            assert lik.mean(params).shape == x_shape
            sample = lik.sample(params)
            assert sample.shape == x_shape
            if name == "bernoulli":
                assert set(sample.unique().tolist()) <= {0.0, 1.0}
            if name == "continuous_bernoulli":
                assert ((sample >= 0) & (sample <= 1)).all()


def test_continuous_bernoulli_mean_is_not_lambda():
    lik = build_likelihood("continuous_bernoulli", (1, 1, 1))
    lam = 0.8
    logit = torch.tensor([[[[math.log(lam / (1 - lam))]]]], dtype=torch.float64)
    expected = lam / (2 * lam - 1) + 1 / (2 * math.atanh(1 - 2 * lam))
    assert float(lik.double().mean(logit)) == pytest.approx(expected, rel=1e-9)


def test_log_prob_broadcasts_over_importance_samples(rng):
    lik = make("laplace", scale="learned")
    x = torch.tensor(rng.uniform(0, 1, (B, *SHAPE)))
    params = torch.tensor(rng.normal(0.5, 0.2, (7, B, *SHAPE)))
    got = lik.log_prob(x, params)
    assert got.shape == (7, B)
    assert torch.allclose(got[3], lik.log_prob(x, params[3]))


def test_registry_errors_list_what_exists():
    with pytest.raises(ValueError, match="bernoulli.*continuous_bernoulli.*gaussian.*laplace"):
        build_likelihood("poisson", SHAPE)
    with pytest.raises(ValueError, match=r"no option\(s\) \['scale'\].*none"):
        build_likelihood("bernoulli", SHAPE, scale="learned")
    with pytest.raises(ValueError, match="sigma.*accepted options.*scale_value"):
        build_likelihood("gaussian", SHAPE, sigma=1.0)
    with pytest.raises(ValueError, match="scale='huge'.*fixed.*optimal"):
        build_likelihood("gaussian", SHAPE, scale="huge")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="scale_value"):
            build_likelihood("laplace", SHAPE, scale_value=bad)
    with pytest.raises(ValueError, match="clip floor"):
        build_likelihood("gaussian", SHAPE, scale="learned", scale_value=1e-4)
    with pytest.raises(ValueError, match="momentum"):
        build_likelihood("gaussian", SHAPE, scale="optimal", momentum=1.0)
    with pytest.raises(ValueError, match="optimal_reduction"):
        build_likelihood("gaussian", SHAPE, scale="optimal", optimal_reduction="pixel")
    with pytest.raises(ValueError, match="expects decoder output"):
        build_likelihood("gaussian", SHAPE, scale="decoder").log_prob(
            torch.rand(B, *SHAPE), torch.rand(B, *SHAPE)
        )


def _optimal_scale_on_shard(rank: int, world: int, store: str, x, loc, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        lik = build_likelihood("gaussian", SHAPE, scale="optimal", min_log_scale=None).double()
        shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        loc_shard = loc[shard].clone().requires_grad_(True)
        log_prob = lik.log_prob(x[shard], loc_shard)  # the training density of this shard
        log_prob.sum().backward()
        lik.observe(x[shard], loc_shard)  # as the training step does, on every rank
        grad = loc_shard.grad.numpy().tolist()
        out[rank] = (float(lik.scale()), log_prob.detach().numpy().tolist(), grad)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_optimal_scale_under_data_parallel_is_the_global_batch_statistic(tmp_path, rng):
    """Two gloo processes holding half a batch each train with σ* of the whole batch (not
    of their own half: the halves' residual scales differ 1:8) and keep it as the running
    scale. Each shard's log-density is scipy's normal density at the global σ*, and its
    gradient the whole batch's, ∂/∂μ_i Σ log p = r_i / mean(r²) (r = x − μ, over every
    pixel of the global batch: at σ* the path through σ* adds nothing)."""
    import torch.multiprocessing as mp

    x = torch.tensor(rng.uniform(0, 1, (8, *SHAPE)))
    loc = x + torch.tensor(rng.normal(0, 0.1, x.shape)) * torch.arange(1, 9).view(8, 1, 1, 1)
    out = mp.Manager().dict()
    mp.spawn(_optimal_scale_on_shard, args=(2, str(tmp_path / "store"), x, loc, out), nprocs=2)
    xs, locs = x.numpy(), loc.numpy()
    r = xs - locs
    sigma = math.sqrt(float((r**2).mean()))
    for rank, shard in ((0, slice(0, 4)), (1, slice(4, 8))):
        scale, log_prob, grad = out[rank]
        assert scale == pytest.approx(sigma, rel=1e-12)
        density = stats.norm.logpdf(xs[shard], locs[shard], sigma).reshape(4, -1).sum(1)
        np.testing.assert_allclose(log_prob, density, rtol=1e-12)
        np.testing.assert_allclose(grad, r[shard] / (r**2).mean(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
@pytest.mark.parametrize("mode", SCALE_MODES)
@pytest.mark.parametrize("training", [True, False])
def test_log_prob_is_scipys_density_at_each_modes_scale(name, mode, training, rng):
    """The written-out log_prob is scipy's density at the scale each mode defines, computed
    here in numpy, for every scale mode, in training and in evaluation, over [K, B]
    importance samples: fixed 0.7; learned and per-pixel the soft-clipped parameter; decoder
    the soft-clipped log-scale head; optimal (per-example reduction) in training the
    statistic of each sample k of each example b, s_kb = mean over pixels of (x_b − loc_kb)²
    (|x_b − loc_kb|: Laplace), and in evaluation the running statistic (seeded at 0.7)."""
    lik = make(name, scale=mode, scale_value=0.7, optimal_reduction="example").train(training)
    if mode in ("learned", "per_pixel"):
        with torch.no_grad():
            log_scale = lik.scale_mode.log_scale
            log_scale.add_(torch.tensor(rng.normal(0, 0.3, log_scale.shape)))
    c = lik.param_channels * SHAPE[0]
    params = rng.normal(0.5, 0.3, (3, B, c, *SHAPE[1:]))
    x = rng.uniform(0, 1, (B, *SHAPE))
    loc, raw = params[:, :, : SHAPE[0]], params[:, :, SHAPE[0] :]
    rtol = 1e-12
    if mode == "fixed":
        log_scale = np.log(0.7)
    elif mode in ("learned", "per_pixel"):
        log_scale = np_soft_clip(lik.scale_mode.log_scale.detach().numpy())
    elif mode == "decoder":
        log_scale = np_soft_clip(raw)
    elif training:
        r = x - loc
        stat = (r**2 if name == "gaussian" else np.abs(r)).mean((-3, -2, -1), keepdims=True)
        log_scale = np_soft_clip(0.5 * np.log(stat) if name == "gaussian" else np.log(stat))
    else:
        log_scale = np_soft_clip(np.log(0.7))
        rtol = 1e-6  # the running statistic is seeded in float32
    dist = stats.norm if name == "gaussian" else stats.laplace
    expected = dist.logpdf(x, loc, np.exp(log_scale)).sum((-3, -2, -1))
    got = lik.log_prob(torch.tensor(x), torch.tensor(params)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-9)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
@pytest.mark.parametrize("reduction", ["batch", "example"])
def test_log_prob_is_pure_and_observe_updates_the_running_average(name, reduction, rng):
    """log_prob and nll change no state, in training and with gradients; observe (the training
    step's call) folds the batch statistic into the running average: the first batch seeds
    it, then running = m·running + (1 − m)·stat (stat = mean r² or mean |r|)."""
    m = 0.8
    lik = make(name, scale="optimal", momentum=m, optimal_reduction=reduction).train()
    batches = [
        (rng.uniform(0, 1, (B, *SHAPE)), rng.normal(0.5, s, (3, B, *SHAPE))) for s in (0.1, 0.4)
    ]
    expected = None
    for step, (x, loc) in enumerate(batches, start=1):
        x_t, loc_t = torch.tensor(x), torch.tensor(loc, requires_grad=True)
        before = {k: v.clone() for k, v in lik.state_dict().items()}
        first = lik.log_prob(x_t, loc_t)
        second = lik.log_prob(x_t, loc_t)
        lik.nll(x_t, loc_t).sum().backward()
        assert torch.equal(first, second)
        assert lik.state_dict().keys() == before.keys()
        for k, v in lik.state_dict().items():
            assert torch.equal(v, before[k]), k
        lik.observe(x_t, loc_t)
        r = x - loc  # [3, B, ...]: the statistic of all samples and examples
        stat = np.mean(r**2) if name == "gaussian" else np.mean(np.abs(r))
        expected = stat if expected is None else m * expected + (1 - m) * stat
        assert float(lik.scale_mode.running_stat) == pytest.approx(expected, rel=1e-12)
        assert int(lik.scale_mode.num_batches_tracked) == step


@pytest.mark.parametrize(
    ("mode", "options", "keys"),
    [
        ("fixed", {}, []),
        ("learned", {}, ["log_scale"]),
        ("learned", {"scale_init": "data"}, ["log_scale", "scale_initialized"]),
        ("per_pixel", {}, ["log_scale"]),
        ("per_pixel", {"scale_init": "data"}, ["log_scale", "scale_initialized"]),
        ("decoder", {}, []),
        ("optimal", {}, ["running_stat", "num_batches_tracked"]),
    ],
)
def test_the_scale_mode_owns_its_tensors_and_earlier_keys_load(mode, options, keys):
    """The scale mode is the likelihood's child module and holds every tensor of it: the
    likelihood's own state is the mode's (``scale_mode.<name>``). A state dict written when
    the tensors lived on the likelihood (``<name>``, as in earlier checkpoints) loads strictly,
    into the same tensors."""
    for name in ("gaussian", "laplace"):
        lik = build_likelihood(name, SHAPE, scale=mode, **options)
        assert isinstance(lik.scale_mode, torch.nn.Module)
        assert list(lik.scale_mode.state_dict()) == keys
        assert list(lik.state_dict()) == [f"scale_mode.{k}" for k in keys]
        learned = [k for k in keys if k == "log_scale"]
        assert [n for n, _ in lik.named_parameters()] == [f"scale_mode.{k}" for k in learned]
        assert lik.scale_parameters() == list(lik.scale_mode.parameters())
        state = lik.scale_mode.state_dict().items()
        old = {k: ~v if v.dtype == torch.bool else v + 1 for k, v in state}  # not the start
        fresh = build_likelihood(name, SHAPE, scale=mode, **options)
        fresh.load_state_dict(old)  # strict: no missing or unexpected key
        for k, v in fresh.scale_mode.state_dict().items():
            assert torch.equal(v, old[k]), k
        assert list(old) == keys  # the caller's state dict is left as it was


def test_an_earlier_optimal_checkpoint_loads():
    """A state dict as the earlier code wrote it (buffers on the likelihood) loads strictly."""
    lik = build_likelihood("gaussian", SHAPE, scale="optimal", min_log_scale=None)
    lik.load_state_dict(
        {"running_stat": torch.tensor(0.04), "num_batches_tracked": torch.tensor(7)}
    )
    assert float(lik.eval().scale()) == pytest.approx(0.2)
    assert int(lik.scale_mode.num_batches_tracked) == 7


def test_which_scale_mode_reads_which_option():
    """The table effective.py's refusals come from, as it was before the modes were classes."""
    from vaesweep.model.likelihoods import GaussianLikelihood

    assert GaussianLikelihood.OPTION_MODES == {
        "scale_value": ("fixed", "learned", "per_pixel"),
        "min_log_scale": ("learned", "per_pixel", "decoder", "optimal"),
        "optimal_reduction": ("optimal",),
        "momentum": ("optimal",),
        "scale_lr": ("learned", "per_pixel"),
        "scale_init": ("learned", "per_pixel"),
    }
    unread = GaussianLikelihood.unread_options({"scale": "per_pixel", "scale_init": "data"})
    assert list(unread) == ["optimal_reduction", "momentum", "scale_value"]
    assert "scale_init=data" in unread["scale_value"]
    assert list(GaussianLikelihood.unread_options({"scale": "huge"})) == list(
        GaussianLikelihood.OPTION_MODES
    )


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_under_autocast_the_objective_is_computed_in_float32(name, half):
    """trainer.precision=bf16-mixed / 16-mixed: the networks run in 16 bits, the density and
    the KL of their (rounded) outputs are computed in float32. Reference: scipy in float64
    on the decoder's and encoder's own outputs (caught by forward hooks). In bfloat16 the
    fixed σ = 0.1 alone was off by hundreds of nats per example."""
    from vaesweep.model.components import build_components
    from vaesweep.model.objective import elbo_terms, importance_estimates

    torch.manual_seed(0)
    shape = (1, 8, 8)
    mlp = {"name": "mlp", "latent_dim": 4, "hidden": [32], "activation": "relu"}
    likelihood = {"name": name, "scale": "fixed", "scale_value": 0.1}
    built = build_components(shape, likelihood, {"name": "constant", "beta": 1.0}, mlp)
    lik = built["likelihood"]
    encoder = built["network"].encoder(shape)
    decoder = built["network"].decoder(shape, lik.param_channels)
    enc: list[torch.Tensor] = []
    dec: list[torch.Tensor] = []
    encoder.register_forward_hook(lambda m, i, o: enc.append(o.detach()))
    decoder.register_forward_hook(lambda m, i, o: dec.append(o.detach()))
    x = torch.rand(16, *shape)
    x64 = x.double().numpy()
    with torch.autocast("cpu", dtype=half):
        terms = elbo_terms(x, encoder, decoder, lik)
    assert enc[0].dtype == dec[0].dtype == half  # the networks did run in 16 bits
    assert terms.rec_nll.dtype == terms.kl.dtype == torch.float32
    ref = -scipy_logpdf(name, x64, dec[0].double().numpy(), 0.1)
    np.testing.assert_allclose(terms.rec_nll.detach().double().numpy(), ref, rtol=1e-6)
    mu, logvar = enc[0].double().chunk(2, dim=-1)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
    np.testing.assert_allclose(terms.kl.detach().double().numpy(), kl.numpy(), rtol=1e-5)
    dec.clear()
    with torch.autocast("cpu", dtype=half):
        est = importance_estimates(x, encoder, decoder, lik, k=5, chunk_size=2)
    assert est.log_px.dtype == est.rec_nll.dtype == torch.float32
    # rec_nll: −log p(x|z) averaged over the k samples, each scipy's density of its output
    per_sample = [-scipy_logpdf(name, x64, s.double().numpy(), 0.1) for c in dec for s in c]
    assert len(per_sample) == 5
    np.testing.assert_allclose(est.rec_nll.double().numpy(), np.mean(per_sample, 0), rtol=1e-6)


def test_prior_samples_follow_the_decoders_precision():
    """trainer.precision=64: the decoder is float64, and the sample grid's z too."""
    from vaesweep.model.components import build_components
    from vaesweep.model.module import VAE

    mlp = {"name": "mlp", "latent_dim": 4, "hidden": [32], "activation": "relu"}
    built = build_components(
        (1, 8, 8), {"name": "gaussian", "scale": "fixed"}, {"name": "constant", "beta": 1.0}, mlp
    )
    vae = VAE(**built, optimizer={"name": "adam", "lr": 1e-3}, iwae_k=2).double()
    g = torch.Generator().manual_seed(0)
    samples = vae.sample_prior(3, generator=g)
    assert samples.dtype == torch.float64 and samples.shape == (3, 1, 8, 8)


def test_a_data_started_scale_is_read_again_after_loaded_weights():
    """scale_init=data: once initialised the flag is not read from the device at every step,
    but weights loaded afterwards (a checkpoint) decide again."""
    lik = build_likelihood("gaussian", SHAPE, scale="learned", scale_init="data")
    fresh = {k: v.clone() for k, v in lik.state_dict().items()}
    assert lik.needs_scale_init()
    lik.initialize_scale(torch.rand(B, *SHAPE), torch.rand(B, *SHAPE))
    assert not lik.needs_scale_init()
    lik.load_state_dict(fresh)  # an uninitialised state: the start is set again
    assert lik.needs_scale_init()
    lik.initialize_scale(torch.rand(B, *SHAPE), torch.rand(B, *SHAPE))
    done = {k: v.clone() for k, v in lik.state_dict().items()}
    other = build_likelihood("gaussian", SHAPE, scale="learned", scale_init="data")
    other.load_state_dict(done)
    assert not other.needs_scale_init()
