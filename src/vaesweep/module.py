"""The LightningModule: wires encoder, latent, decoder, likelihood and β schedule.

Training, validation and test use the definitions of :mod:`vaesweep.objective`:
``rec_nll`` and ``kl`` in nats per example (summed over dimensions, mean over the batch),
``elbo = −rec_nll − kl`` (β-free) and ``loss`` (the β-weighted objective).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from vaesweep.likelihoods import build_likelihood
from vaesweep.networks import build_decoder, build_encoder
from vaesweep.objective import (
    bits_per_dim,
    effective_beta,
    elbo_terms,
    importance_estimates,
)
from vaesweep.schedules import build_schedule

# Config keys of the likelihood group that are not constructor options.
LIKELIHOOD_META_KEYS = ("name", "allow_nonbinary")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class DivergenceError(RuntimeError):
    """The training loss became non-finite."""

    def __init__(self, step: int, values: dict[str, float]) -> None:
        self.step = step
        self.values = values
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        super().__init__(f"non-finite training loss at step {step} ({shown})")


class VAE(L.LightningModule):
    """A VAE whose likelihood and β schedule come from their registries.

    shape: data shape (C, H, W); model / likelihood / schedule / optimizer: plain dicts of
    the corresponding config groups; iwae_k / iwae_chunk / active_units_threshold: test-set
    evaluation; report_bpd: whether bits/dim is defined (dequantised 8-bit data); seed: the
    run's seed (gives each data-parallel rank its own stream of reparameterisation noise).
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        model: dict[str, Any],
        likelihood: dict[str, Any],
        schedule: dict[str, Any],
        optimizer: dict[str, Any],
        n_samples: int = 1,
        iwae_k: int = 100,
        iwae_chunk: int | None = None,
        active_units_threshold: float = 0.01,
        report_bpd: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.shape = tuple(shape)
        options = {k: v for k, v in likelihood.items() if k not in LIKELIHOOD_META_KEYS}
        self.likelihood = build_likelihood(likelihood["name"], self.shape, **options)
        net = {k: model.get(k) for k in ("hidden", "channels", "activation") if k in model}
        self.encoder = build_encoder(model["name"], self.shape, model["latent_dim"], **net)
        self.decoder = build_decoder(
            model["name"],
            self.shape,
            model["latent_dim"],
            self.likelihood.param_channels,
            **net,
        )
        sched = {k: v for k, v in schedule.items() if k != "name"}
        self.schedule = build_schedule(schedule["name"], **sched)
        self.latent_dim = int(model["latent_dim"])
        self._test_sums: dict[str, Tensor] = {}

    # --- randomness: per-rank streams, saved with every checkpoint ------------------------------
    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            # Every rank starts from the same seed; without this the ranks would draw the
            # same ε for different examples (correlated noise across the global batch).
            torch.manual_seed(self.hparams.seed * 1_000_003 + self.trainer.global_rank)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The RNG state travels with the weights, so a resumed run draws the same noise as
        # an uninterrupted one (bit-identical metrics on CPU).
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["rng_state"]["torch"])

    # --- training ------------------------------------------------------------------------
    def _step_terms(self, x: Tensor, n_samples: int = 1) -> dict[str, Tensor]:
        terms = elbo_terms(x, self.encoder, self.decoder, self.likelihood, n_samples)
        rec_nll, kl = terms.rec_nll.mean(), terms.kl.mean()
        loss, beta = self.schedule(self.global_step, rec_nll, kl)
        return {"loss": loss, "rec_nll": rec_nll, "kl": kl, "elbo": -rec_nll - kl, "beta": beta}

    def _log_scale(self, prefix: str, batch_size: int) -> None:
        scale = self.likelihood.scale()
        if scale is not None:
            self.log(f"{prefix}scale", scale, batch_size=batch_size)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        out = self._step_terms(batch, self.hparams.n_samples)
        if not torch.isfinite(out["loss"]):
            raise DivergenceError(
                self.global_step, {k: float(v) for k, v in out.items() if k != "beta"}
            )
        strategy = self.trainer.strategy
        # Controllers see batch means averaged over all data-parallel ranks.
        self.schedule.observe(
            self.global_step,
            strategy.reduce(out["rec_nll"].detach(), reduce_op="mean"),
            strategy.reduce(out["kl"].detach(), reduce_op="mean"),
        )
        b = batch.shape[0]
        metrics = {f"train/{k}": v for k, v in out.items() if k != "beta"}
        self.log_dict(metrics, on_step=True, on_epoch=True, batch_size=b, prog_bar=False)
        self.log("beta", out["beta"], on_step=True, on_epoch=False, batch_size=b)
        self._log_scale("train/", b)
        return out["loss"]

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        out = self._step_terms(batch)
        b = batch.shape[0]
        for k in ("loss", "rec_nll", "kl", "elbo"):
            self.log(f"val/{k}", out[k], batch_size=b, sync_dist=True, prog_bar=k == "elbo")
        self._log_scale("val/", b)  # the scale evaluation uses (running σ* for `optimal`)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = dict(self.hparams.optimizer)
        name = cfg.pop("name")
        if "betas" in cfg:
            cfg["betas"] = tuple(cfg["betas"])
        return OPTIMIZERS[name](self.parameters(), **cfg)

    # --- test: sums over examples, reduced across ranks, divided by the true count -------------
    def on_test_epoch_start(self) -> None:
        self._test_sums = {}

    def _accumulate(self, name: str, value: Tensor) -> None:
        value = value.detach().double()
        self._test_sums[name] = self._test_sums.get(name, 0) + value

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        est = importance_estimates(
            batch,
            self.encoder,
            self.decoder,
            self.likelihood,
            k=self.hparams.iwae_k,
            chunk_size=self.hparams.iwae_chunk,
        )
        # Reconstructions are decoded from the posterior mean, x̂ = E[x | z = E_q[z]].
        mu = est.posterior.mu
        x_hat = self.likelihood.mean(self.decoder(mu))
        d = math.prod(self.shape)
        self._accumulate("count", torch.tensor(float(batch.shape[0]), device=batch.device))
        self._accumulate("rec_nll", est.rec_nll.sum())
        self._accumulate("kl", est.kl.sum())
        self._accumulate("nll", -est.log_px.sum())
        self._accumulate("mse", (x_hat - batch).pow(2).sum() / d)
        self._accumulate("mae", (x_hat - batch).abs().sum() / d)
        self._accumulate("mu_sum", mu.sum(0))
        self._accumulate("mu_sq_sum", mu.pow(2).sum(0))

    def on_test_epoch_end(self) -> None:
        strategy = self.trainer.strategy
        sums = {k: strategy.reduce(v, reduce_op="sum") for k, v in self._test_sums.items()}
        n = sums.pop("count")
        mean = {k: v / n for k, v in sums.items()}
        variance = (mean.pop("mu_sq_sum") - mean.pop("mu_sum").pow(2)).clamp_min(0)
        metrics = {
            "test/rec_nll": mean["rec_nll"],
            "test/kl": mean["kl"],
            "test/elbo": -mean["rec_nll"] - mean["kl"],
            "test/nll": mean["nll"],
            "test/mse": mean["mse"],
            "test/mae": mean["mae"],
            "test/active_units": (variance > self.hparams.active_units_threshold).sum().double(),
            "test/n_examples": n,
        }
        if self.hparams.report_bpd and self.likelihood.data_kind == "continuous":
            metrics["test/bpd"] = bits_per_dim(mean["nll"], math.prod(self.shape))
        metrics.update(self.summary_metrics())
        for k, v in metrics.items():  # already reduced: identical on every rank
            self.log(k, float(v), batch_size=1, sync_dist=True)

    # --- summaries ---------------------------------------------------------------------------
    def summary_metrics(self) -> dict[str, float]:
        """Scale in force and β / effective β at the current step (for results.json)."""
        out: dict[str, float] = {}
        scale = self.likelihood.scale()
        if scale is not None:
            out["scale"] = float(scale)
        beta = self.schedule.beta_at(self.global_step)
        out["beta"] = beta
        out.update(effective_beta(self.likelihood, beta))
        return out

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """x̂ = E[x | z = E_q[z|x]] for a batch, shaped like x."""
        mu, _ = self.encoder(x).chunk(2, dim=-1)
        return self.likelihood.mean(self.decoder(mu))

    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """E[x | z] for n draws z ~ N(0, I) (means, not noisy draws), shape [n, C, H, W]."""
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.device)
        return self.likelihood.mean(self.decoder(z))
