"""The whole mission sweep against a plain PyTorch script that does the same work.

    python benchmarks/sweep_vs_plain.py              # 3 interleaved pairs, median ratio
    python benchmarks/sweep_vs_plain.py --repeats 1

Product: `python run.py -m likelihood=gaussian,laplace beta=0.5,1,4` (6 default jobs:
mnist_small, mlp, 20 epochs, W&B offline + CSV, the basic launcher), through the real CLI in
a subprocess. Reference: this file with --plain, also a subprocess: the same six models
(784-400-2×20 / 20-400-784 MLPs, Adam 1e-3, batch 128, dequantised data, fixed scale 1)
trained with a hand-written loop that validates every epoch, writes the last and the best
checkpoint (weights and optimiser, torch.save), and evaluates the test split with the
K = 100 IWAE bound; imports and data loading included. Printed: both wall times per pair,
their ratio, and the median over the pairs (target ≤ 1.2×).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cli_env, footer, header, median, run_cli, spread

GRID = ["likelihood=gaussian,laplace", "beta=0.5,1,4"]
JOBS = [(lik, beta) for lik in ("gaussian", "laplace") for beta in (0.5, 1.0, 4.0)]


def plain(out: Path, epochs: int = 20) -> None:
    """The reference: six models, plain PyTorch (see the module doc)."""
    import torch
    from torch import nn

    from vaesweep.data.datasets import load_dataset

    torch.set_num_threads(max(1, torch.get_num_threads()))
    raw = load_dataset("mnist_small")
    train, val, test = (raw.splits[s] for s in ("train", "val", "test"))
    gen = torch.Generator().manual_seed(0)
    val_x = (val.float() + torch.rand(val.shape, generator=gen)) / 256.0
    test_x = (test.float() + torch.rand(test.shape, generator=gen)) / 256.0
    log2pi = math.log(2 * math.pi)

    def nll(lik: str, x, mean):  # per example, scale 1
        if lik == "gaussian":
            return (0.5 * (x - mean).pow(2) + 0.5 * log2pi).flatten(1).sum(-1)
        return ((x - mean).abs() + math.log(2.0)).flatten(1).sum(-1)

    for lik, beta in JOBS:
        torch.manual_seed(0)
        enc = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 40))
        dec = nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784))
        params = [*enc.parameters(), *dec.parameters()]
        opt = torch.optim.Adam(params, lr=1e-3, fused=True)

        def elbo(x, enc=enc, dec=dec, lik=lik):
            mu, logvar = enc(x).chunk(2, -1)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            rec = nll(lik, x, dec(z).view_as(x))
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
            return rec, kl

        best = -math.inf
        ckpt = out / f"{lik}-{beta}"
        ckpt.mkdir(parents=True, exist_ok=True)
        for _ in range(epochs):
            perm = torch.randperm(len(train))
            for i in range(0, len(train), 128):
                k = train[perm[i : i + 128]].float()
                x = (k + torch.rand_like(k)) / 256.0
                rec, kl = elbo(x)
                loss = (rec + beta * kl).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                v = torch.cat([sum(elbo(val_x[i : i + 500])) for i in range(0, len(val_x), 500)])
            score = -float(v.mean())
            state = {"enc": enc.state_dict(), "dec": dec.state_dict(), "opt": opt.state_dict()}
            torch.save(state, ckpt / "last.pt")
            if score > best:
                best = score
                torch.save(state, ckpt / "best.pt")
        state = torch.load(ckpt / "last.pt")
        enc.load_state_dict(state["enc"])
        dec.load_state_dict(state["dec"])
        with torch.no_grad():  # IWAE, K = 100, chunks of 10 samples
            bounds = []
            for i in range(0, len(test_x), 500):
                x = test_x[i : i + 500]
                mu, logvar = enc(x).chunk(2, -1)
                std = torch.exp(0.5 * logvar)
                ws = []
                for _ in range(10):
                    eps = torch.randn(10, *mu.shape)
                    z = mu + std * eps
                    mean = dec(z.flatten(0, 1)).view(10, len(x), *x.shape[1:])
                    log_px = -nll(lik, x.expand(10, *x.shape).flatten(0, 1), mean.flatten(0, 1))
                    log_pz = -0.5 * (z.pow(2) + log2pi).sum(-1)
                    log_qz = -0.5 * (eps.pow(2) + log2pi).sum(-1) - std.log().sum(-1)
                    ws.append(log_px.view(10, len(x)) + log_pz - log_qz)
                w = torch.cat(ws)
                bounds.append(torch.logsumexp(w, 0) - math.log(100))
            print(f"{lik} beta={beta}: test IWAE bound {float(torch.cat(bounds).mean()):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--override", nargs="*", default=[], help="extra product overrides")
    args = parser.parse_args()
    if args.plain:
        plain(args.plain)
        return
    header("the mission sweep (6 jobs, basic launcher, W&B offline) vs a plain PyTorch script")
    print(f"python run.py -m {' '.join(GRID)} {' '.join(args.override)}")
    product, reference = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            wall, _ = run_cli(
                ["-m", *GRID, f"hydra.sweep.dir={tmp}/sweep{r}", *args.override], Path(tmp)
            )
            product.append(wall)
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, __file__, "--plain", f"{tmp}/plain{r}"],
                check=True,
                env=cli_env(),
                cwd=tmp,
                stdout=subprocess.DEVNULL,
            )
            reference.append(time.perf_counter() - t0)
            print(
                f"pair {r + 1}: product {product[-1]:.1f} s, plain {reference[-1]:.1f} s, "
                f"ratio {product[-1] / reference[-1]:.2f}"
            )
    ratios = [p / q for p, q in zip(product, reference, strict=True)]
    print(
        f"median: product {median(product):.1f} s ({spread(product)}), plain "
        f"{median(reference):.1f} s ({spread(reference)}), ratio {median(ratios):.2f} "
        f"({spread(ratios)}); target ≤ 1.2"
    )
    footer()


if __name__ == "__main__":
    main()
