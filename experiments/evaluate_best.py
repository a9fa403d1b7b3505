"""Score the best β of each configuration of a study again at K = 5000, and publish it.

    python experiments/evaluate_best.py likelihood_comparison --by likelihood likelihood.scale \
        --examples 1000
    python experiments/evaluate_best.py bernoulli_vs_continuous --by likelihood --examples 500

Run after experiments/run_study.sh (every part of the study). Reads the study's runs from
``outputs/studies/<name>`` (vaesweep.load_results), takes for each configuration (the
``--by`` columns) the β with the lowest mean test/nll over its seeds, and scores those runs
again from their last checkpoints with ``vaesweep evaluate``: first at K = 100, then at
K = 5000, both on the first ``--examples`` test images (so that the two columns compare the
same images). Then, as run_study.sh does: ``vaesweep collect`` into
``docs/results/<name>/runs.csv`` (now with the ``test/...@iwae_k=...`` columns) and
experiments/relative_paths.py; last, ``docs/results/<name>/evaluation.txt`` (written
atomically, once runs.csv holds the scores) says what was scored, when, and how long it
took (experiments/report.py reads it).

The best β is chosen on the test split, as the study's tables mark it (their bold row):
the K = 5000 column measures how much tighter the bound gets for those rows, not a held-out
score. An evaluation that exists is not computed again (``vaesweep evaluate``), so an
interrupted call continues where it stopped; evaluation.txt then says so, and its wall time
counts only the last call's work.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from vaesweep.core.atomic import atomic_open

ROOT = Path(__file__).resolve().parent.parent


def best_runs(work: Path, by: list[str]) -> list[str]:
    """Run directories of the best β (lowest mean test/nll over seeds) of each configuration."""
    from vaesweep import load_results

    if "beta" in by:
        sys.exit("--by beta: β is what is chosen for each configuration; leave it out")
    frame = load_results(work)
    frame = frame[frame["status"] == "completed"]
    # A swept key is a column only where its value differs between the runs; the flattened
    # config always has it (a config group's choice under its `name`).
    columns = {}
    for key in [*by, "beta"]:
        found = [c for c in (key, f"config.{key}", f"config.{key}.name") if c in frame.columns]
        if not found:
            sys.exit(f"--by {key}: no such column in the runs of {work}")
        columns[key] = found[0]
    frame = frame.assign(**{key: frame[c] for key, c in columns.items()})
    keys = [*by, "beta"]
    seeds = frame.groupby(keys, dropna=False)["test/nll"].count()
    if seeds.nunique() > 1:  # a β with fewer completed seeds could win by luck
        print(f"warning: completed seeds per configuration differ:\n{seeds}", file=sys.stderr)
    means = frame.groupby(keys, dropna=False)["test/nll"].mean().reset_index()
    best = means.loc[means.groupby(by, dropna=False)["test/nll"].idxmin(), keys]
    chosen = frame.merge(best, on=keys)
    return sorted(chosen["run_dir"].astype(str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="the study's name (outputs/studies/NAME, docs/results/NAME)")
    parser.add_argument("--by", nargs="+", required=True, help="columns of one configuration")
    parser.add_argument("--examples", type=int, required=True, help="first N test images")
    args = parser.parse_args()
    work = ROOT / "outputs" / "studies" / args.study
    out = ROOT / "docs" / "results" / args.study
    runs = best_runs(work, args.by)
    out.mkdir(parents=True, exist_ok=True)
    done = [f"iwae_k={k},checkpoint=last,test_examples={args.examples}.json" for k in (100, 5000)]
    resumed = any((Path(run) / "evaluations" / name).exists() for run in runs for name in done)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t0 = time.monotonic()
    for k in (100, 5000):
        cmd = [sys.executable, "-m", "vaesweep", "evaluate", *runs, f"eval.iwae_k={k}"]
        subprocess.run([*cmd, f"eval.test_examples={args.examples}"], check=True, cwd=ROOT)
    wall = time.monotonic() - t0
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    line = (
        f"evaluation: vaesweep evaluate RUN_DIRS eval.iwae_k=100, then eval.iwae_k=5000, both "
        f"eval.test_examples={args.examples}, for the {len(runs)} runs of the best β (lowest "
        f"mean test/nll over seeds) of each {','.join(args.by)}; started {started}, wall time "
        f"{wall:.0f} s{' (continuing an earlier call: this call only)' if resumed else ''}, "
        f"load average at the end: {load}\n"
    )
    collect = [sys.executable, "-m", "vaesweep", "collect", str(work)]
    subprocess.run([*collect, "-o", str(out / "runs.csv")], check=True, cwd=ROOT)
    relative = [sys.executable, str(ROOT / "experiments" / "relative_paths.py"), str(out)]
    subprocess.run([*relative, "--root", str(ROOT)], check=True)
    # Last, once runs.csv holds the scores it describes; a reader sees the old file or this.
    with atomic_open(out / "evaluation.txt") as f:
        f.write(line)
    print(line, end="")


if __name__ == "__main__":
    main()
