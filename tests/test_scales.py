"""Learned scales: their own learning rate, the data-dependent start, and the record of how
far each scale ended from the residual scale of the test data.

References are written out here in numpy, independently of the likelihood code.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from vaesweep.data import VAEDataModule
from vaesweep.model.components import build_components, build_likelihood
from vaesweep.model.module import VAE
from vaesweep.sweep.grid import SCALE_TOLERANCE, scale_converged, summary_rows

SHAPE = (1, 4, 4)
MLP = {"name": "mlp", "latent_dim": 3, "hidden": [16], "activation": "relu"}


def vae(likelihood: dict, lr: float = 1e-3) -> VAE:
    torch.manual_seed(0)
    built = build_components(SHAPE, likelihood, {"name": "constant", "beta": 1.0}, MLP)
    return VAE(**built, optimizer={"name": "adam", "lr": lr, "fused": False}, iwae_k=2)


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
    [
        ("gaussian", "learned"),
        ("laplace", "learned"),
        ("gaussian", "per_pixel"),
        ("laplace", "per_pixel"),
    ],
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


# --- checkpoints written when the scale tensors lived on the likelihood --------------------------
FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: The configs tests/fixtures/make_main_checkpoints.py wrote its checkpoints with.
MAIN_MODEL = {"name": "mlp", "latent_dim": 2, "hidden": [8], "activation": "relu"}
MAIN_LIKELIHOODS = {
    "learned": {"name": "gaussian", "scale": "learned", "scale_init": "data", "scale_lr": 0.01},
    "optimal": {"name": "laplace", "scale": "optimal", "momentum": 0.9},
}
DIGITS = (1, 8, 8)
SCALE_TENSORS = ("log_scale", "running_stat", "num_batches_tracked", "scale_initialized")


def _earlier_layout(state: dict) -> dict:
    """A state dict with the scale tensors where earlier versions kept them."""
    out = {}
    for key, value in state.items():
        for name in SCALE_TENSORS:
            key = key.replace(f"likelihood.scale_mode.{name}", f"likelihood.{name}")
        out[key] = value
    return out


def _fit(tmp_path, likelihood: dict, epochs: int, ckpt_path=None, model_config=MLP):
    L.seed_everything(0, verbose=False)
    built = build_components(DIGITS, likelihood, {"name": "constant", "beta": 1.0}, model_config)
    model = VAE(**built, optimizer={"name": "adam", "lr": 1e-3}, iwae_k=2)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(tmp_path, save_top_k=-1)],
    )
    trainer.fit(model, VAEDataModule("digits", batch_size=256, seed=0), ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("likelihood", MAIN_LIKELIHOODS.values(), ids=list(MAIN_LIKELIHOODS))
def test_resuming_a_checkpoint_with_the_earlier_keys_is_bit_identical(tmp_path, likelihood):
    """A last.ckpt whose scale tensors are stored under the earlier keys: resumed, the run
    continues exactly as the uninterrupted one (weights, scale state, optimizer state)."""
    full, _ = _fit(tmp_path / "full", likelihood, 2)
    (first,) = (tmp_path / "full").glob("epoch=0-*.ckpt")
    checkpoint = torch.load(first, weights_only=False)
    checkpoint["state_dict"] = _earlier_layout(checkpoint["state_dict"])
    assert {"likelihood.log_scale", "likelihood.running_stat"} & set(checkpoint["state_dict"])
    earlier = tmp_path / "earlier.ckpt"
    torch.save(checkpoint, earlier)
    resumed, trainer = _fit(tmp_path / "resumed", likelihood, 2, ckpt_path=earlier)
    assert trainer.global_step == 2 * 6  # 1397 examples in batches of 256
    expected = full.state_dict()
    assert list(resumed.state_dict()) == list(expected)
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # The checkpoints it writes have today's keys.
    (written,) = (tmp_path / "resumed").glob("epoch=1-*.ckpt")
    assert list(torch.load(written, weights_only=False)["state_dict"]) == list(expected)


@pytest.mark.parametrize("name", list(MAIN_LIKELIHOODS))
def test_checkpoints_of_the_earlier_version_load_and_resume(tmp_path, name):
    """Checkpoints written by the code before the scale modes owned their tensors and before
    the VAE took built components (tests/fixtures/make_main_checkpoints.py): the VAE and its
    scale state come back from load_from_checkpoint (the components built from the configs
    their hyperparameters hold), and a fit resumes from them as from the same checkpoint in
    today's layout."""
    path = FIXTURES / f"main_{name}_last.ckpt"
    saved = torch.load(path, weights_only=False)
    old_state = saved["state_dict"]
    assert "likelihood.scale_mode.log_scale" not in old_state  # the earlier layout
    model = VAE.load_from_checkpoint(path)
    assert model.hparams.likelihood == saved["hyper_parameters"]["likelihood"]
    state = model.state_dict()
    assert list(_earlier_layout(state)) == list(old_state)
    for key, value in _earlier_layout(state).items():
        assert torch.equal(value, old_state[key]), key
    assert not model.likelihood.needs_scale_init()  # (learned) initialised before the save

    today = dict(saved, state_dict=state)
    torch.save(today, tmp_path / "today.ckpt")
    runs = {}
    for label, ckpt in (("earlier", path), ("today", tmp_path / "today.ckpt")):
        resumed, trainer = _fit(tmp_path / label, MAIN_LIKELIHOODS[name], 2, ckpt, MAIN_MODEL)
        assert trainer.global_step == 11 + 6  # 1 epoch of 128 saved, then 1 of 256
        runs[label] = resumed.state_dict()
    for key, value in runs["earlier"].items():
        assert torch.equal(value, runs["today"][key]), key


def test_components_built_in_python_are_passed_to_load_from_checkpoint(tmp_path):
    """A checkpoint keeps the class path of a component built in Python (no config): loading
    asks for it, and takes it."""
    from vaesweep.model.likelihoods import GaussianLikelihood
    from vaesweep.model.networks import MLP as MLPNetwork
    from vaesweep.model.schedules import ConstantBeta

    model = VAE(
        likelihood=GaussianLikelihood(DIGITS, scale="optimal"),
        schedule=ConstantBeta(1.0),
        network=MLPNetwork(latent_dim=3, hidden=[16]),
    )
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, VAEDataModule("digits", batch_size=64, seed=0))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(ValueError, match=r"no config of the VAE's likelihood .*pass it"):
        VAE.load_from_checkpoint(tmp_path / "m.ckpt")
    loaded = VAE.load_from_checkpoint(
        tmp_path / "m.ckpt",
        likelihood=GaussianLikelihood(DIGITS, scale="optimal"),
        schedule=ConstantBeta(1.0),
        network=MLPNetwork(latent_dim=3, hidden=[16]),
    )
    assert int(loaded.likelihood.scale_mode.num_batches_tracked) == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


EVERY_SCALE = {
    "fixed": {"name": "gaussian", "scale": "fixed"},
    "learned": {"name": "laplace", "scale": "learned", "scale_lr": 0.01},
    "per_pixel": {"name": "gaussian", "scale": "per_pixel", "scale_init": "data"},
    "per_pixel_value": {"name": "laplace", "scale": "per_pixel", "scale_lr": 0.03},
    "decoder": {"name": "gaussian", "scale": "decoder"},
    "optimal": {"name": "gaussian", "scale": "optimal", "optimal_reduction": "example"},
}


@pytest.mark.parametrize("likelihood", EVERY_SCALE.values(), ids=list(EVERY_SCALE))
def test_every_scale_mode_resumes_bit_identically(tmp_path, likelihood):
    """Stopped after its first epoch and resumed from that checkpoint, a run of every scale
    mode ends with the weights, scale tensors and optimiser state of the uninterrupted run."""
    full, _ = _fit(tmp_path / "full", likelihood, 3)
    (first,) = (tmp_path / "full").glob("epoch=0-*.ckpt")
    resumed, trainer = _fit(tmp_path / "resumed", likelihood, 3, ckpt_path=first)
    assert trainer.global_step == 3 * 6
    # It did resume (a fresh start with the same seed would end the same): no first epoch.
    assert sorted(p.name[:7] for p in (tmp_path / "resumed").glob("*.ckpt")) == [
        "epoch=1", "epoch=2"
    ]  # fmt: skip
    expected = full.state_dict()
    assert list(resumed.state_dict()) == list(expected)
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key
    ends = [torch.load(next((tmp_path / d).glob("epoch=2-*.ckpt")), weights_only=False)
            for d in ("full", "resumed")]  # fmt: skip
    assert torch.equal(
        torch.cat([t.flatten() for s in ends[0]["optimizer_states"][0]["state"].values()
                   for t in s.values()]),
        torch.cat([t.flatten() for s in ends[1]["optimizer_states"][0]["state"].values()
                   for t in s.values()]),
    )  # fmt: skip
