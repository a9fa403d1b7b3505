"""Per-job overhead of a sequential multirun, and the speed-up of the local_parallel launcher.

    python benchmarks/sweep_overhead.py
    python benchmarks/sweep_overhead.py --device cuda

The sweep is the README's `python run.py -m beta=0.5,1,2,4` (4 default jobs: mnist_small,
mlp, Gaussian, 20 epochs, W&B offline + CSV), run through the real CLI in a subprocess,
once with the default (basic, sequential) launcher and once with
`hydra/launcher=local_parallel` (worker processes, 2 jobs at once, each with cores/2 torch threads),
alternating, --repeats times.

Pure training time of a job: the sum over its epochs of the time from the epoch's start to
the end of its last optimisation step (Lightning callback timestamps, enabled by
VAESWEEP_TIMESTAMPS; not present in normal runs). Everything else is overhead: the process
start and Hydra (shared by the jobs of a sequential sweep), config validation, data,
model, loggers (W&B init and finish), trainer, validation, checkpoints, test-set
evaluation (IWAE, K = 100), image grids, results.json, summary.csv.

    per-job overhead = a job's wall time (Hydra calls the task → it returns) − its pure
                       training time, over the jobs after the first

The first job also pays, once per sweep, the import of wandb (the first job that logs to
W&B imports it) and the start of W&B's service; it is reported as "the first job's extra"
(up to 2026-11-21 it also held the imports of torch and Lightning, which run.py now does
at its start). The process itself costs, once per sweep, its start (python, the imports of
torch, Lightning and Hydra, Hydra's compositions; cold_start.py measures the whole path to
the first optimisation step) and its exit (sweep summary, W&B teardown, interpreter
exit). All of it spread over the sweep's jobs is printed too: sweep wall time / jobs −
training time per job.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import cli_env, footer, header, median, run_cli, spread


def sweep(tmp: Path, name: str, grid: list[str], extra: list[str]) -> dict[str, float]:
    """Runs one sweep; returns its wall time and per-job means (seconds): pure training,
    the overhead every job pays (means over the jobs after the first, which also pays the
    process's imports and W&B start) and its parts, and what the sweep pays once."""
    stamps = tmp / f"{name}.jsonl"
    args = ["-m", *grid, f"hydra.sweep.dir={tmp / name}", *extra]
    t0 = time.time()
    run_cli(args, tmp, cli_env(VAESWEEP_TIMESTAMPS=str(stamps)))
    t1 = time.time()
    wall = t1 - t0
    events: dict[str, list[dict]] = defaultdict(list)
    for line in stamps.read_text().splitlines():
        e = json.loads(line)
        events[e["job"]].append(e)
    jobs = []
    for job in events.values():
        at = defaultdict(list)
        for e in sorted(job, key=lambda e: e["time"]):
            at[e["event"]].append(e["time"])
        starts, ends = at["epoch_start"], at["epoch_end"]
        train = sum(b - a for a, b in zip(starts, ends, strict=True))
        jobs.append(
            {
                "start": at["job_start"][0],
                "end": at["job_end"][0],
                "train": train,
                "every": at["job_end"][0] - at["job_start"][0] - train,
                "setup": starts[0] - at["job_start"][0],
                "between": sum(b - a for a, b in zip(ends, starts[1:], strict=False)),
                "after": at["job_end"][0] - ends[-1],
            }
        )
    jobs.sort(key=lambda j: j["start"])
    n = len(jobs)
    later = jobs[1:] or jobs  # jobs that found the process warm
    out = {k: sum(j[k] for j in later) / len(later) for k in ("every", "setup", "between", "after")}
    out["train"] = sum(j["train"] for j in jobs) / n
    out["overhead"] = wall / n - out["train"]
    out["first_extra"] = jobs[0]["every"] - out["every"] if n > 1 else 0.0
    out["to_first"] = jobs[0]["start"] - t0
    out["after_last"] = t1 - max(j["end"] for j in jobs)
    return out | {"wall": wall, "jobs": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--grid", nargs="+", default=["beta=0.5,1,2,4"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=2, help="local_parallel's n_jobs")
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides")
    args = parser.parse_args()
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    extra = [f"trainer.accelerator={accelerator}", *args.override]
    parallel = ["hydra/launcher=local_parallel", f"hydra.launcher.n_jobs={args.n_jobs}"]
    header("sweep: per-job overhead (basic launcher) and local_parallel speed-up", args.device)
    print(f"python run.py -m {' '.join(args.grid + extra)}  [+ {' '.join(parallel)}]")
    basic_runs, parallel_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            basic_runs.append(sweep(Path(tmp), f"basic{i}", args.grid, extra))
            parallel_runs.append(sweep(Path(tmp), f"parallel{i}", args.grid, [*extra, *parallel]))
    n = basic_runs[0]["jobs"]

    def col(runs: list[dict[str, float]], key: str) -> str:
        values = [r[key] for r in runs]
        return f"{median(values):7.2f} s ({spread(values)})"

    print(f"{args.repeats} repetitions of {n} jobs each, medians (min..max)")
    print("basic launcher (sequential, one process):")
    print(f"  sweep wall time                                   {col(basic_runs, 'wall')}")
    print(f"  pure training time per job                        {col(basic_runs, 'train')}")
    print(f"  PER-JOB OVERHEAD (job wall time - training, 2..n) {col(basic_runs, 'every')}")
    print(f"      setup: config, record, data, model, W&B run   {col(basic_runs, 'setup')}")
    print(f"      between epochs: validation, checkpoints       {col(basic_runs, 'between')}")
    print(f"      after training: last validation, test (IWAE), {col(basic_runs, 'after')}")
    print("        image grids, results.json, W&B finish")
    print("  once per sweep:")
    print(f"      the first job's extra                         {col(basic_runs, 'first_extra')}")
    print("        (import of wandb, W&B service start)")
    print(f"      process start to first job (imports, Hydra)   {col(basic_runs, 'to_first')}")
    print(f"      last job to process exit (summary, teardown)  {col(basic_runs, 'after_last')}")
    print(f"  everything spread over the {n} jobs (wall/jobs -   {col(basic_runs, 'overhead')}")
    print("    training): per-job overhead + once-per-sweep costs / jobs")
    print(f"local_parallel launcher (n_jobs={args.n_jobs}):")
    print(f"  sweep wall time                              {col(parallel_runs, 'wall')}")
    print(f"  pure training time per job                   {col(parallel_runs, 'train')}")
    print(f"  process start to first job                   {col(parallel_runs, 'to_first')}")
    print("    (the launching process's imports, Hydra; a worker's start and imports)")
    speedups = [b["wall"] / p["wall"] for b, p in zip(basic_runs, parallel_runs, strict=True)]
    overhead = median([r["every"] for r in basic_runs])
    print(f"speed-up of local_parallel (basic wall / parallel wall): {median(speedups):.2f}")
    print(f"target: per-job overhead ≤ 1.5 s -> {'met' if overhead <= 1.5 else 'NOT met'}")
    footer()


if __name__ == "__main__":
    main()
