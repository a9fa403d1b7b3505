"""Training throughput of the product's training step versus a plain PyTorch loop.

    python benchmarks/train_throughput.py                  # mlp/conv × batch 128/512 × bernoulli/gaussian
    python benchmarks/train_throughput.py --device cuda    # the same with data and model on a GPU

Product: the real run of `python run.py` (composed config, ``vaesweep.run.driver.build_run``:
VAEDataModule/TensorLoader data path with per-batch binarisation or dequantisation, the VAE
LightningModule with its logging, a real Lightning Trainer with the default trainer config,
checkpoints, and the default loggers: W&B offline + CSV), trained on mnist_small (4000
training examples) with data.batch_size and likelihood set per case.

Reference: a hand-written loop over the same uint8 training tensor: random permutation,
slice, the same preprocessing (binarize / dequantize with fresh noise), the identical
network (same layers, initialised with the product's weights), the same likelihood written
out (BCE-with-logits sum; Gaussian σ = 1: ½·SSE + ½·D·log 2π), analytic KL, mean over the
batch, and the optimizer built from the product's optimizer config (identical optimiser,
fused kernels included). A second reference, the same loop with torch's default Adam
implementation (same lr), is reported alongside.

Lightning floor: the same plain loop interleaved with a bare LightningModule (the product's
networks, likelihood, data module and optimiser; a four-line manual-optimisation training
step; no loggers, checkpoints, progress bar or callbacks; Lightning's defaults otherwise).
Its ratio is what Lightning's per-batch loop alone costs on this machine: the ceiling for any
product built on Lightning's Trainer.

Measurement: the two alternate epoch by epoch in one process (the reference epoch runs from
a callback at the end of each product epoch), so both see the same machine state. An epoch's
training time runs from the epoch start to the end of its last optimisation step (validation
and checkpointing at the end of the epoch are reported separately as "epoch extras"). The
first --warmup epochs are excluded; the ratio is the median over the measured epoch pairs of
reference time / product time (≥ 1 would mean the product is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from common import REPO, footer, header, median, spread, trainer_device
from hydra import compose, initialize_config_dir
from torch import Tensor, nn

from vaesweep.model.module import build_optimizer

LOG_2PI = math.log(2 * math.pi)


def sync(device: torch.device) -> None:
    """Waits for queued GPU work, so that wall-clock times are complete (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_networks(
    model: str, latent: int, hidden: list[int] | None = None
) -> tuple[nn.Module, nn.Module]:
    """The product's mlp (784-h…-2d, d-…h-784; default h = 400) or default conv networks,
    written by hand."""
    if model == "mlp":
        sizes = list(hidden or [400])
        enc, dec = [nn.Flatten()], []
        for a, b in zip([784, *sizes], sizes, strict=False):
            enc += [nn.Linear(a, b), nn.ReLU()]
        for a, b in zip([latent, *sizes[::-1]], sizes[::-1], strict=False):
            dec += [nn.Linear(a, b), nn.ReLU()]
        enc.append(nn.Linear(sizes[-1], 2 * latent))
        dec += [nn.Linear(sizes[0], 784), nn.Unflatten(1, (1, 28, 28))]
        return nn.Sequential(*enc), nn.Sequential(*dec)
    enc = nn.Sequential(
        nn.Conv2d(1, 32, 4, 2, 1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, 2, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 256),
        nn.ReLU(),
        nn.Linear(256, 2 * latent),
    )
    dec = nn.Sequential(
        nn.Linear(latent, 256),
        nn.ReLU(),
        nn.Linear(256, 64 * 7 * 7),
        nn.ReLU(),
        nn.Unflatten(1, (64, 7, 7)),
        nn.ConvTranspose2d(64, 32, 4, 2, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(32, 1, 4, 2, 1),
    )
    return enc, dec


class PlainLoop:
    """The reference: one epoch of a hand-written training loop (see the module docstring).

    optimizer: {"name": "adam"|"adamw", **torch.optim keyword arguments}.
    """

    def __init__(
        self,
        product: nn.Module,
        model: str,
        likelihood: str,
        data: Tensor,
        batch: int,
        optimizer: dict,
    ):
        hidden = product.hparams.model.get("hidden")
        self.enc, self.dec = plain_networks(model, product.latent_dim, hidden)
        self.enc.to(data.device)
        self.dec.to(data.device)
        ours = [*self.enc.parameters(), *self.dec.parameters()]
        theirs = [*product.encoder.parameters(), *product.decoder.parameters()]
        if [p.shape for p in ours] != [p.shape for p in theirs]:
            raise RuntimeError("the reference network differs from the product's")
        with torch.no_grad():
            for a, b in zip(ours, theirs, strict=True):
                a.copy_(b)
        self.opt = build_optimizer(ours, optimizer)
        self.bernoulli = likelihood == "bernoulli"
        self.data, self.batch = data, batch

    def epoch(self) -> int:
        """Trains one epoch; returns the number of examples seen."""
        n = len(self.data)
        perm = torch.randperm(n).to(self.data.device)
        for i in range(0, n, self.batch):
            k = self.data[perm[i : i + self.batch]].float()
            if self.bernoulli:  # x ~ Bernoulli(k/255); faster than torch.bernoulli on CPU
                x = (torch.rand_like(k) < k / 255.0).float()
            else:
                x = (k + torch.rand_like(k)) / 256.0
            mu, logvar = self.enc(x).chunk(2, dim=-1)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            out = self.dec(z)
            if self.bernoulli:
                rec = F.binary_cross_entropy_with_logits(out, x, reduction="none").sum((1, 2, 3))
            else:  # −log N(x; μ, 1) summed over the D pixels, constant included
                rec = 0.5 * (x - out).pow(2).sum((1, 2, 3)) + 0.5 * x[0].numel() * LOG_2PI
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
            loss = (rec + kl).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        return n


@dataclass
class Interleave(L.Callback):
    """Times each product training epoch and runs one epoch of each reference after it."""

    references: dict[str, PlainLoop] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    product_s: list[float] = field(default_factory=list)
    reference_s: dict[str, list[float]] = field(default_factory=dict)
    extras_s: list[float] = field(default_factory=list)
    examples: list[int] = field(default_factory=list)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(self.device)
        self._t0 = time.perf_counter()
        self._n = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._n += batch.shape[0]
        if batch_idx == trainer.num_training_batches - 1:
            sync(self.device)
            self._t1 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        t2 = time.perf_counter()
        self.product_s.append(self._t1 - self._t0)
        self.extras_s.append(t2 - self._t1)
        self.examples.append(self._n)
        for name, reference in self.references.items():
            with torch.enable_grad():
                sync(self.device)
                t0 = time.perf_counter()
                n = reference.epoch()
                sync(self.device)
                self.reference_s.setdefault(name, []).append(time.perf_counter() - t0)
            if n != self._n:
                raise RuntimeError(f"reference saw {n} examples, the product {self._n}")


class BareModule(L.LightningModule):
    """The floor: a LightningModule with the product's networks and likelihood, nothing else."""

    def __init__(self, product: L.LightningModule) -> None:
        super().__init__()
        self.encoder, self.decoder = product.encoder, product.decoder
        self.likelihood = product.likelihood
        self.optimizer_config = dict(product.hparams.optimizer)
        self.automatic_optimization = False

    def training_step(self, x: Tensor, batch_idx: int) -> None:
        from vaesweep.model.objective import elbo_terms

        terms = elbo_terms(x, self.encoder, self.decoder, self.likelihood)
        self.manual_backward(terms.rec_nll.mean() + terms.kl.mean())
        optimizer = self.optimizers()
        optimizer.step()
        optimizer.zero_grad()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.parameters(), self.optimizer_config)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keeps the progress bar and Lightning's messages out of the benchmark's output."""
    with (
        open(os.devnull, "w") as null,
        contextlib.redirect_stdout(null),
        contextlib.redirect_stderr(null),
    ):
        yield


def pair_ratios(product_s: list[float], reference_s: list[float]) -> list[float]:
    """Reference time / product time of each interleaved epoch pair (> 1: product faster)."""
    return [r / p for p, r in zip(product_s, reference_s, strict=True)]


def compose_cfg(overrides: list[str]):
    from vaesweep.run.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def measure(model: str, likelihood: str, batch: int, args: argparse.Namespace) -> dict[str, float]:
    """Product and reference throughput (samples/s) of one case; medians over epochs."""
    from vaesweep.data import load_dataset
    from vaesweep.run.driver import build_run
    from vaesweep.run.jobs import Job
    from vaesweep.run.record import RunRecord

    accelerator, devices = trainer_device(args.device)
    cfg = compose_cfg(
        [
            f"model={model}",
            f"likelihood={likelihood}",
            f"data.batch_size={batch}",
            f"trainer.max_epochs={args.warmup + args.epochs}",
            f"trainer.accelerator={accelerator}",
            f"trainer.devices={devices}",
            f"paths.data_dir={REPO / 'data'}",
            *args.override,
        ]
    )
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        job = Job(Path(tmp), "bench", [], None, {}, 1)
        record = RunRecord(
            tmp, config={}, overrides=[], seed=cfg.seed, job_name="bench", sweep_dir=None
        )
        timer = Interleave(device=device)
        with quiet():
            parts = build_run(cfg, job, record, torch.get_num_threads(), callbacks=(timer,))
            train_u8 = load_dataset("mnist_small").splits["train"].to(device)
            same = dict(parts.model.hparams.optimizer)  # the product's optimizer config
            default = {"name": same["name"], "lr": same["lr"]}  # torch's implementation
            timer.references = {
                name: PlainLoop(parts.model, model, likelihood, train_u8, batch, optimizer)
                for name, optimizer in (("same", same), ("default", default))
            }
            parts.trainer.fit(parts.model, datamodule=parts.data)
        if "wandb" in sys.modules:
            import wandb

            wandb.finish()
    w = args.warmup
    out = {"extras_ms": 1000 * median(timer.extras_s[w:])}
    if args.floor:
        floor = Interleave(device=device)
        with tempfile.TemporaryDirectory() as tmp, quiet():
            job = Job(Path(tmp), "floor", [], None, {}, 1)
            parts = build_run(cfg, job, None, torch.get_num_threads())  # fresh, seeded
            bare = BareModule(parts.model)
            floor.references = {
                "same": PlainLoop(parts.model, model, likelihood, train_u8, batch, same)
            }
            trainer = L.Trainer(
                max_epochs=args.warmup + args.epochs,
                accelerator=accelerator,
                devices=devices,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                limit_val_batches=0,
                callbacks=[floor],
                default_root_dir=tmp,
            )
            trainer.fit(bare, datamodule=parts.data)
        out["ratio_floor"] = median(pair_ratios(floor.product_s[w:], floor.reference_s["same"][w:]))
    out["product"] = median(
        [n / t for n, t in zip(timer.examples[w:], timer.product_s[w:], strict=True)]
    )
    for name, seconds in timer.reference_s.items():
        out[name] = median([n / t for n, t in zip(timer.examples[w:], seconds[w:], strict=True)])
        ratios = pair_ratios(timer.product_s[w:], seconds[w:])
        out[f"ratio_{name}"] = median(ratios)
        out[f"spread_{name}"] = spread(ratios)
    return out


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--models", nargs="+", default=["mlp", "conv"])
    parser.add_argument("--batches", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--likelihoods", nargs="+", default=["bernoulli", "gaussian"])
    parser.add_argument("--epochs", type=int, default=16, help="measured epoch pairs per case")
    parser.add_argument(
        "--no-floor", dest="floor", action="store_false", help="skip the Lightning-floor run"
    )
    parser.add_argument("--warmup", type=int, default=2, help="epochs excluded per case")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    # Lightning's info messages go through a logging handler that holds the real stdout.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    header("training throughput: product (real run) vs plain PyTorch loop", args.device)
    print(
        f"mnist_small 4000 training examples, {args.warmup} warm-up + {args.epochs} measured epochs"
    )
    print(
        f"{'model':<5} {'likelihood':<10} {'batch':>5} {'product/s':>10} {'plain/s':>9} "
        f"{'RATIO':>6} {'(range)':>12} {'plain*/s':>9} {'ratio*':>7} {'floor':>6} "
        f"{'epoch extras':>13}"
    )
    for model in args.models:
        for batch in args.batches:
            for likelihood in args.likelihoods:
                r = measure(model, likelihood, batch, args)
                print(
                    f"{model:<5} {likelihood:<10} {batch:>5} {r['product']:>10.0f} "
                    f"{r['same']:>9.0f} {r['ratio_same']:>6.3f} {r['spread_same']:>12} "
                    f"{r['default']:>9.0f} {r['ratio_default']:>7.3f} "
                    f"{_ratio(r.get('ratio_floor')):>6} {r['extras_ms']:>10.0f} ms",
                    flush=True,
                )
    print("RATIO  = plain-loop time / product time per epoch (median of pairs), the plain loop")
    print("         using the product's optimizer config (identical optimiser); target ≥ 0.95")
    print("ratio* = the same against plain* = the plain loop with torch's default Adam/AdamW")
    print("         implementation (what a hand-written loop typically uses), same lr")
    print("floor  = the same ratio for a bare LightningModule (same networks, data module and")
    print(
        "         optimiser; no loggers, checkpoints or callbacks): Lightning's own per-batch cost"
    )
    print("epoch extras = validation + checkpoints + epoch-end logging, per epoch (product only)")
    footer()


if __name__ == "__main__":
    main()
