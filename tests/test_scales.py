"""Learned scales: their own learning rate, the data-dependent start, and the record of how
far each scale ended from the residual scale of the test data.

References are written out here in numpy, independently of the likelihood code.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from vaesweep.model.components import build_likelihood
from vaesweep.model.module import VAE
from vaesweep.sweep.grid import SCALE_TOLERANCE, scale_converged, summary_rows

SHAPE = (1, 4, 4)
MLP = {"name": "mlp", "latent_dim": 3, "hidden": [16], "activation": "relu"}


def vae(likelihood: dict, lr: float = 1e-3) -> VAE:
    torch.manual_seed(0)
    return VAE(
        shape=SHAPE,
        model=MLP,
        likelihood=likelihood,
        schedule={"name": "constant", "beta": 1.0},
        optimizer={"name": "adam", "lr": lr, "fused": False},
        iwae_k=2,
    )


def batch(n: int = 32) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mode", ["learned", "per_pixel"])
def test_scale_parameters_get_their_own_learning_rate(mode):
    model = vae({"name": "gaussian", "scale": mode, "scale_lr": 0.05})
    opt = model.configure_optimizers()
    (scale_group,) = [g for g in opt.param_groups if g["lr"] == 0.05]
    assert [p is model.likelihood.scale_mode.log_scale for p in scale_group["params"]] == [True]
    (other,) = [g for g in opt.param_groups if g["lr"] == 1e-3]
    n_params = sum(1 for _ in model.parameters())
    assert len(other["params"]) == n_params - 1
    # Adam's first step moves every parameter by lr (m̂/√v̂ = g/|g|): the scale by 0.05.
    before = model.likelihood.scale_mode.log_scale.detach().clone()
    loss = model.likelihood.nll(batch(), torch.full((32, *SHAPE), 0.5)).mean()
    loss.backward()
    opt.step()
    moved = (model.likelihood.scale_mode.log_scale.detach() - before).abs()
    np.testing.assert_allclose(moved.numpy(), 0.05, rtol=1e-5)


def test_null_scale_lr_is_the_sigma_vae_setting_one_group():
    model = vae({"name": "laplace", "scale": "learned", "scale_lr": None}, lr=3e-4)
    (group,) = model.configure_optimizers().param_groups
    assert group["lr"] == 3e-4
    assert any(p is model.likelihood.scale_mode.log_scale for p in group["params"])


@pytest.mark.parametrize(
    ("name", "mode"),
    [("gaussian", "learned"), ("laplace", "learned"), ("gaussian", "per_pixel"), ("laplace", "per_pixel")],
)
def test_data_init_starts_at_the_untrained_models_residual_scale(name, mode):
    model = vae({"name": name, "scale": mode, "scale_init": "data"})
    x = batch()
    with torch.no_grad():
        mu = model.encoder(x)[:, :3]
        x_hat = model.decoder(mu).numpy()
    residual = x.numpy() - x_hat
    axis = None if mode == "learned" else 0
    if name == "gaussian":
        expected = np.sqrt(np.mean(residual.astype(np.float64) ** 2, axis=axis))
    else:
        expected = np.mean(np.abs(residual.astype(np.float64)), axis=axis)
    assert model.likelihood.needs_scale_init()
    model._initialize_scale(x)
    assert not model.likelihood.needs_scale_init()
    clip = model.likelihood.min_log_scale
    got = torch.exp(model.likelihood.scale_mode.log_scale.detach().double())
    # log_scale is stored before the soft floor: the scale in force is its soft clip.
    in_force = np.exp(clip + np.log1p(np.exp(np.log(got.numpy()) - clip)))
    np.testing.assert_allclose(in_force, expected, rtol=1e-5)
    # Saved with the weights: a resumed run does not initialise again.
    state = model.state_dict()
    fresh = vae({"name": name, "scale": mode, "scale_init": "data"})
    fresh.load_state_dict(state)
    assert not fresh.likelihood.needs_scale_init()


def test_training_initialises_once_from_the_first_batch(tmp_path):
    model = vae({"name": "gaussian", "scale": "learned", "scale_init": "data", "scale_lr": 1e-9})
    x = batch(64)
    with torch.no_grad():
        x_hat = model.decoder(model.encoder(x[:16])[:, :3]).numpy()
    first_batch_rms = float(np.sqrt(np.mean((x[:16].numpy() - x_hat) ** 2)))
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    loader = torch.utils.data.DataLoader(x, batch_size=16, shuffle=False)
    trainer.fit(model, train_dataloaders=loader)
    # With a negligible scale lr the scale stays where the first batch put it.
    assert float(model.likelihood.scale()) == pytest.approx(first_batch_rms, rel=1e-4)


def _scale_ratio_reference(scale: np.ndarray, residuals: np.ndarray, gaussian: bool, floor: float):
    per_pixel = np.sqrt((residuals**2).mean(0)) if gaussian else np.abs(residuals).mean(0)
    if scale.ndim == 0:
        target = np.sqrt((residuals**2).mean()) if gaussian else np.abs(residuals).mean()
        log_target = np.log(target)
    else:
        log_target = np.log(per_pixel)
    log_target = np.maximum(log_target, floor)  # the floor no scale can go below
    return float(np.exp(np.mean(np.log(scale) - log_target)))


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
@pytest.mark.parametrize("mode", ["fixed", "learned", "optimal", "per_pixel"])
def test_scale_ratio_against_numpy(name, mode):
    lik = build_likelihood(name, SHAPE, scale=mode, scale_value=0.3).double()
    rng = np.random.default_rng(0)
    residuals = rng.normal(0.0, 0.1, size=(200, *SHAPE)) * rng.uniform(0.01, 2, size=SHAPE)
    if mode == "per_pixel":
        with torch.no_grad():
            lik.scale_mode.log_scale.copy_(torch.from_numpy(rng.normal(-2.5, 0.5, size=SHAPE)))
        scale = np.exp(-6 + np.log1p(np.exp(lik.scale_mode.log_scale.detach().numpy() + 6)))
    else:
        scale = np.array(float(lik.scale()))
    sq = torch.from_numpy((residuals**2).mean(0))
    ab = torch.from_numpy(np.abs(residuals).mean(0))
    got = float(lik.scale_ratio(sq, ab))
    expected = _scale_ratio_reference(scale, residuals, name == "gaussian", -6.0)
    assert got == pytest.approx(expected, rel=1e-9)


def test_scale_ratio_is_none_without_a_single_scale():
    assert build_likelihood("gaussian", SHAPE, scale="decoder").scale_ratio(None, None) is None
    assert build_likelihood("bernoulli", SHAPE).scale_ratio(None, None) is None


def _result(mode, ratio):
    return {
        "run_dir": f"/x/{mode}-{ratio}",
        "status": "completed",
        "config": {"likelihood": {"name": "gaussian", "scale": mode}},
        "metrics": {"test/scale_ratio": ratio},
        "overrides": [],
    }


def test_summary_flags_learned_scales_that_did_not_converge():
    assert scale_converged(_result("learned", 1.2)) is True
    assert scale_converged(_result("learned", 1 / SCALE_TOLERANCE + 1e-9)) is True
    assert scale_converged(_result("per_pixel", 1.3)) is False
    assert scale_converged(_result("learned", 0.7)) is False
    assert scale_converged(_result("fixed", 8.0)) is None  # not learned: nothing to converge
    assert scale_converged(_result("learned", None)) is None
    rows = summary_rows([_result("learned", 3.4), _result("optimal", 1.0)], [])
    assert [r["scale_converged"] for r in rows] == [False, None]
    assert rows[0]["test/scale_ratio"] == 3.4

