"""The whole mission sweep against a plain PyTorch script that does the same work.

    python benchmarks/sweep_vs_plain.py              # 5 interleaved runs, median ratios
    python benchmarks/sweep_vs_plain.py --repeats 1 --epochs 80 --no-floor

Product: `python run.py -m likelihood=gaussian,laplace beta=0.5,1,4` (6 default jobs:
mnist_small, mlp, 20 epochs, W&B offline + CSV, the basic launcher), through the real CLI in
a subprocess. Reference: this file with --plain, also a subprocess: the same six models
(784-400-2×20 / 20-400-784 MLPs, Adam 1e-3, batch 128, dequantised data, fixed scale 1)
trained with a hand-written loop that validates every epoch, writes the last and the best
checkpoint (weights and optimiser, torch.save), and evaluates the test split with the
K = 100 IWAE bound; its imports (torch, numpy, the dataset reader: no Lightning) and data
loading included.

Lightning floor: this file with --floor: the plain reference's networks, data, validation,
checkpoints and test, run by a bare LightningModule under Lightning's Trainer (manual
optimisation, ModelCheckpoint, no logger or progress bar). It is what any product built on
Lightning's Trainer pays at least: Lightning's import and its per-batch loop. So
product/floor is vaesweep's own overhead (Hydra, W&B, results, images, resumability), and
floor/plain is Lightning's.

Each run starts with another arm (product, plain, floor; then plain, floor, product; ...),
so that none of them always meets the same part of a slow phase. Printed: the order and the
three wall times per run, each run's ratios, the medians over the runs, and
the median ratios product/plain (target ≤ 1.2×), floor/plain and product/floor, each with
the ratio of the two arms' fastest runs. On a shared VM the same work can take 25 % longer
for minutes at a time (other tenants), so single runs differ a lot; the fastest run of
each arm is the one least disturbed, which makes that second ratio the steadier one.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from common import footer, header, median, run_cli, run_python, spread

GRID = ["likelihood=gaussian,laplace", "beta=0.5,1,4"]
JOBS = [(lik, beta) for lik in ("gaussian", "laplace") for beta in (0.5, 1.0, 4.0)]


LOG2PI = math.log(2 * math.pi)


def _data():
    """The splits of mnist_small as uint8 tensors, val/test dequantised once (seed 0)."""
    import torch

    from vaesweep.data.datasets import load_dataset  # torch and numpy only, no Lightning

    raw = load_dataset("mnist_small")
    train, val, test = (raw.splits[s] for s in ("train", "val", "test"))
    gen = torch.Generator().manual_seed(0)
    val_x = (val.float() + torch.rand(val.shape, generator=gen)) / 256.0
    test_x = (test.float() + torch.rand(test.shape, generator=gen)) / 256.0
    return train, val_x, test_x


def _nets():
    """Encoder 784-400-2×20 and decoder 20-400-784 (seeded by the caller)."""
    from torch import nn

    enc = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 40))
    dec = nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784))
    return enc, dec


def _nll(lik: str, x, mean):
    """−log p(x | mean) per example, scale 1."""
    if lik == "gaussian":
        return (0.5 * (x - mean).pow(2) + 0.5 * LOG2PI).flatten(1).sum(-1)
    return ((x - mean).abs() + math.log(2.0)).flatten(1).sum(-1)


def _elbo(enc, dec, lik: str, x):
    """(reconstruction NLL, analytic KL) per example, one posterior sample."""
    import torch

    mu, logvar = enc(x).chunk(2, -1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    rec = _nll(lik, x, dec(z).view_as(x))
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
    return rec, kl


def _dequantised(train, perm, i: int):
    import torch

    k = train[perm[i : i + 128]].float()
    return (k + torch.rand_like(k)) / 256.0


def _iwae(enc, dec, lik: str, x):
    """IWAE bound, K = 100 in chunks of 10 samples, per example of x."""
    import torch

    mu, logvar = enc(x).chunk(2, -1)
    std = torch.exp(0.5 * logvar)
    ws = []
    for _ in range(10):
        eps = torch.randn(10, *mu.shape)
        z = mu + std * eps
        mean = dec(z.flatten(0, 1)).view(10, len(x), *x.shape[1:])
        log_px = -_nll(lik, x.expand(10, *x.shape).flatten(0, 1), mean.flatten(0, 1))
        log_pz = -0.5 * (z.pow(2) + LOG2PI).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + LOG2PI).sum(-1) - std.log().sum(-1)
        ws.append(log_px.view(10, len(x)) + log_pz - log_qz)
    return torch.logsumexp(torch.cat(ws), 0) - math.log(100)


def plain(out: Path, epochs: int = 20) -> None:
    """The reference: six models, plain PyTorch (see the module doc)."""
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    train, val_x, test_x = _data()
    for lik, beta in JOBS:
        torch.manual_seed(0)
        enc, dec = _nets()
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3, fused=True)
        best = -math.inf
        ckpt = out / f"{lik}-{beta}"
        ckpt.mkdir(parents=True, exist_ok=True)
        for _ in range(epochs):
            perm = torch.randperm(len(train))
            for i in range(0, len(train), 128):
                rec, kl = _elbo(enc, dec, lik, _dequantised(train, perm, i))
                loss = (rec + beta * kl).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                v = [
                    sum(_elbo(enc, dec, lik, val_x[i : i + 500])) for i in range(0, len(val_x), 500)
                ]
            score = -float(torch.cat(v).mean())
            state = {"enc": enc.state_dict(), "dec": dec.state_dict(), "opt": opt.state_dict()}
            torch.save(state, ckpt / "last.pt")
            if score > best:
                best = score
                torch.save(state, ckpt / "best.pt")
        state = torch.load(ckpt / "last.pt")
        enc.load_state_dict(state["enc"])
        dec.load_state_dict(state["dec"])
        with torch.no_grad():
            bound = torch.cat(
                [_iwae(enc, dec, lik, test_x[i : i + 500]) for i in range(0, len(test_x), 500)]
            )
        print(f"{lik} beta={beta}: test IWAE bound {float(bound.mean()):.2f}")


def floor(out: Path, epochs: int = 20) -> None:
    """The Lightning floor: the plain reference's six models, data, validation, checkpoints
    and test, run by a bare LightningModule under Lightning's Trainer (manual optimisation,
    ModelCheckpoint last + best, no logger, progress bar or other callbacks)."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Batches:
        """Shuffled, freshly dequantised training batches (the plain loop's data path)."""

        def __init__(self, train):
            self.train = train

        def __len__(self) -> int:
            return math.ceil(len(self.train) / 128)

        def __iter__(self):
            perm = torch.randperm(len(self.train))
            for i in range(0, len(self.train), 128):
                yield _dequantised(self.train, perm, i)

    class Chunks:
        """Fixed batches of 500 (a list would be taken for a list of data loaders)."""

        def __init__(self, x):
            self.chunks = list(x.split(500))

        def __len__(self) -> int:
            return len(self.chunks)

        def __iter__(self):
            return iter(self.chunks)

    class Bare(L.LightningModule):
        def __init__(self, lik: str, beta: float) -> None:
            super().__init__()
            self.enc, self.dec = _nets()
            self.lik, self.beta = lik, beta
            self.automatic_optimization = False
            self.bounds = []

        def training_step(self, x, batch_idx):
            rec, kl = _elbo(self.enc, self.dec, self.lik, x)
            opt = self.optimizers()
            opt.zero_grad(set_to_none=True)
            self.manual_backward((rec + self.beta * kl).mean())
            opt.step()

        def validation_step(self, x, batch_idx):
            elbo = -sum(_elbo(self.enc, self.dec, self.lik, x)).mean()
            self.log("val/elbo", elbo, batch_size=len(x))

        def test_step(self, x, batch_idx):
            self.bounds.append(_iwae(self.enc, self.dec, self.lik, x))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3, fused=True)

    train, val_x, test_x = _data()
    for lik, beta in JOBS:
        torch.manual_seed(0)
        model = Bare(lik, beta)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=out,
            callbacks=[
                ModelCheckpoint(
                    dirpath=out / f"{lik}-{beta}", monitor="val/elbo", mode="max", save_last=True
                )
            ],
        )
        trainer.fit(model, Batches(train), Chunks(val_x))
        trainer.test(model, Chunks(test_x), ckpt_path="last", verbose=False)  # as plain
        print(f"{lik} beta={beta}: test IWAE bound {float(torch.cat(model.bounds).mean()):.2f}")


def _reference(mode: str, out: str, epochs: int, cwd: str) -> float:
    """Wall seconds of this file run as `--plain`/`--floor` in a fresh interpreter."""
    return run_python([__file__, f"--{mode}", out, "--epochs", str(epochs)], cwd)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20, help="epochs per job (all three)")
    parser.add_argument("--no-floor", action="store_true", help="skip the Lightning floor")
    parser.add_argument("--override", nargs="*", default=[], help="extra product overrides")
    args = parser.parse_args()
    if args.plain or args.floor:
        (plain if args.plain else floor)(args.plain or args.floor, args.epochs)
        return
    header("the mission sweep (6 jobs, basic launcher, W&B offline) vs a plain PyTorch script")
    extra = [f"trainer.max_epochs={args.epochs}", *args.override]
    print(f"python run.py -m {' '.join([*GRID, *extra])}")
    times: dict[str, list[float]] = {"product": [], "plain": [], "floor": []}
    with tempfile.TemporaryDirectory() as tmp:
        arms = ["product", "plain"] + ([] if args.no_floor else ["floor"])
        for r in range(args.repeats):
            order = arms[r % len(arms) :] + arms[: r % len(arms)]  # each arm first in turn
            for arm in order:
                if arm == "product":
                    sweep = [f"hydra.sweep.dir={tmp}/sweep{r}"]
                    times[arm].append(run_cli(["-m", *GRID, *sweep, *extra], Path(tmp))[0])
                else:
                    times[arm].append(_reference(arm, f"{tmp}/{arm}{r}", args.epochs, tmp))
            wall, base = times["product"][-1], times["plain"][-1]
            line = f"run {r + 1} ({', '.join(order)}): product {wall:.1f} s, plain {base:.1f} s"
            line += f" (ratio {wall / base:.2f})"
            if not args.no_floor:
                f = times["floor"][-1]
                line += f", Lightning floor {f:.1f} s (floor/plain {f / base:.2f})"
            print(line, flush=True)
    for name, values in times.items():
        if values:
            print(f"median {name}: {median(values):.1f} s ({spread(values)})")
    pairs = [("product", "plain")]
    if not args.no_floor:
        pairs += [("floor", "plain"), ("product", "floor")]
    for a, b in pairs:
        ratios = [x / y for x, y in zip(times[a], times[b], strict=True)]
        target = "; target ≤ 1.2" if (a, b) == ("product", "plain") else ""
        print(
            f"ratio {a}/{b}: median {median(ratios):.2f} ({spread(ratios)}), fastest runs "
            f"{min(times[a]) / min(times[b]):.2f}{target}"
        )
    footer()


if __name__ == "__main__":
    main()
