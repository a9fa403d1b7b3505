"""IWAE evaluation: throughput (examples × K per second) and peak memory for K = 1000.

    python benchmarks/iwae.py
    python benchmarks/iwae.py --device cuda

Product: ``vaesweep.model.objective.importance_estimates`` (what the test step runs) on one test
batch (500 mnist_small test examples, data.eval_batch_size) with the default model (mlp,
Gaussian σ = 1), in its default chunking (chunk size chosen to bound memory) and with a few
explicit chunk sizes (eval.iwae_chunk).

Reference, measured in the same run and interleaved: a naive single-chunk IWAE written out
by hand: all K samples at once, z [K, B, d] → decoder → log p(x|z) + log p(z) − log q(z|x),
logsumexp over K. It is run only where its estimated peak memory fits in half the
available memory (--naive-max-gb).

Peak memory: each case once more in a fresh process (after the timings). CPU: the peak
resident set (VmHWM, reset through /proc/self/clear_refs) minus the resident set before the
evaluation, with glibc's mmap threshold fixed so that freed tensors leave the resident set
(Linux); CUDA:
torch.cuda.max_memory_allocated minus the allocation before it.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import footer, header, median, spread
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)
NAIVE = "naive single chunk"


def rss_kb() -> tuple[int, int]:
    """(current, peak) resident set of this process, KiB (Linux)."""
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{k}:\s+(\d+)", status)[1]) for k in ("VmRSS", "VmHWM"))


def measure(fn: Callable[[], Tensor], device: torch.device) -> tuple[float, float]:
    """Runs fn once; returns (seconds, peak extra memory in MiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = rss_kb()[0] * 1024
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = rss_kb()[1] * 1024
    return time.perf_counter() - t0, (peak - before) / 2**20


@torch.no_grad()
def naive_iwae(x: Tensor, encoder, decoder, k: int) -> Tensor:
    """log p(x) by IWAE_k in one chunk, Gaussian σ = 1, written out: nats, shape [B]."""
    mu, logvar = encoder(x).chunk(2, dim=-1)
    std = (0.5 * logvar).exp()
    eps = torch.randn(k, *mu.shape, device=x.device)
    z = mu + std * eps  # [K, B, d]
    loc = decoder(z)  # [K, B, C, H, W]
    log_lik = -0.5 * ((x - loc).pow(2) + LOG_2PI).sum((-3, -2, -1))
    log_prior = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    log_q = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
    return torch.logsumexp(log_lik + log_prior - log_q, dim=0) - math.log(k)


def build_cases(args: argparse.Namespace) -> tuple[int, int, dict[str, Callable[[], Tensor]]]:
    """(batch size, chunk size chosen by the product, {label: one IWAE evaluation})."""
    from vaesweep.data import VAEDataModule
    from vaesweep.model.components import build_components
    from vaesweep.model.module import VAE
    from vaesweep.model.objective import default_chunk_size, importance_estimates

    device = torch.device(args.device)
    torch.manual_seed(0)
    data = VAEDataModule("mnist_small", eval_batch_size=args.batch, preprocess="dequantize")
    x = data.test_tensor()[: args.batch].to(device)
    cfg = {"name": "mlp", "latent_dim": 20, "hidden": [400], "activation": "relu"}
    built = build_components(
        tuple(x.shape[1:]),
        {"name": "gaussian", "scale": "fixed"},
        {"name": "constant", "beta": 1.0},
        cfg,
    )
    model = VAE(**built, optimizer={"name": "adam", "lr": 1e-3})
    model.to(device).eval()
    b, d = x.shape[0], math.prod(x.shape[1:])
    auto = default_chunk_size(b, d)
    cases: dict[str, Callable[[], Tensor]] = {}
    for chunk in [None, *args.chunks]:
        label = f"product, chunk {auto} (auto)" if chunk is None else f"product, chunk {chunk}"
        cases[label] = lambda c=chunk: importance_estimates(
            x, model.encoder, model.decoder, model.likelihood, k=args.k, chunk_size=c
        )
    # decoder output, its residual and square, the hidden layer: ~4 floats per K·B·D
    naive_gb = 4 * 4 * args.k * b * d / 2**30
    limit = args.naive_max_gb if args.naive_max_gb is not None else _available_gb(device) / 2
    if naive_gb <= limit:
        cases[NAIVE] = lambda: naive_iwae(x, model.encoder, model.decoder, args.k)
    else:
        print(f"naive single chunk skipped: needs ~{naive_gb:.1f} GB, limit {limit:.1f} GB")
    return b, auto, cases


def peak_in_fresh_process(label: str, argv: list[str]) -> float:
    """Peak extra memory (MiB) of one evaluation of case `label`, in a new process."""
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--memory-case", label],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--k", type=int, default=1000, help="importance samples")
    parser.add_argument("--batch", type=int, default=500, help="test examples per batch")
    parser.add_argument("--chunks", nargs="*", type=int, default=[5, 21, 50])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-max-gb", type=float, default=None)
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)  # internal: memory pass
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.memory_case:
        if device.type == "cpu":
            # A fixed mmap threshold (128 KiB) makes glibc give every large tensor back to
            # the OS when it is freed, so the resident set follows live memory.
            ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # -3: M_MMAP_THRESHOLD
        _, _, cases = build_cases(args)
        print(measure(cases[args.memory_case], device)[1])
        return
    header(f"IWAE evaluation, K = {args.k}", args.device)
    b, auto, cases = build_cases(args)
    times: dict[str, list[float]] = {label: [] for label in cases}
    for i in range(args.repeats + 1):  # repetition 0 warms up: excluded
        for label, fn in cases.items():
            seconds, _ = measure(fn, device)
            if i:
                times[label].append(seconds)
    argv = sys.argv[1:]
    peaks = {label: peak_in_fresh_process(label, argv) for label in cases}
    print(f"batch {b} test examples × K {args.k}, mlp + Gaussian; {args.repeats} repetitions")
    print(f"{'':<30} {'examples×K/s':>13} {'seconds':>8} {'(range)':>16} {'peak MiB':>9}")
    for label in cases:
        t = median(times[label])
        print(
            f"{label:<30} {b * args.k / t:>13,.0f} {t:>8.3f} {spread(times[label]):>16} "
            f"{peaks[label]:>9.0f}"
        )
    if NAIVE in cases:
        ratio = median(times[NAIVE]) / median(times[f"product, chunk {auto} (auto)"])
        print(f"speed ratio product (auto chunk) / naive single chunk: {ratio:.2f}")
    footer()


def _available_gb(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2**30
    meminfo = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemAvailable:\s+(\d+)", meminfo)[1]) / 2**20


if __name__ == "__main__":
    main()
