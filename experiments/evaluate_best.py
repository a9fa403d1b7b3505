"""Score the best β of each configuration of a study again at K = 5000, and publish it.

    python experiments/evaluate_best.py likelihood_comparison --by likelihood likelihood.scale \
        --examples 1000
    python experiments/evaluate_best.py bernoulli_vs_continuous --by likelihood --examples 500

Run after experiments/run_study.sh (every part of the study). Reads the study's runs from
``outputs/studies/<name>`` (vaesweep.load_results), takes for each configuration (the
``--by`` columns) the β chosen on the validation split (``--select``, default ``val/elbo``:
the highest mean validation ELBO over its seeds), and scores those runs again from their
last checkpoints with ``vaesweep evaluate``: first at K = 100, then at K = 5000, both on
the first ``--examples`` test images (so that the two columns compare the same images).
Then, as run_study.sh does: ``vaesweep collect`` into ``docs/results/<name>/runs.csv`` (now
with the ``test/...@iwae_k=...`` columns) and experiments/relative_paths.py; last,
``docs/results/<name>/evaluation.txt`` (written atomically, once runs.csv holds the scores)
says what was scored, how the β was chosen, when, and how long it took (experiments/report.py
reads it).

The test split is not used to choose: a β picked by its own test NLL reports an optimistic
score. ``--select test/nll`` (lowest mean test NLL) is there to show how much that choice
would move the numbers, and says so in evaluation.txt. An evaluation that exists is not
computed again (``vaesweep evaluate``), so an interrupted call continues where it stopped;
evaluation.txt then says so, and its wall time counts only the last call's work.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from vaesweep.core.atomic import atomic_open

ROOT = Path(__file__).resolve().parent.parent


#: How each --select metric chooses: (highest wins, the words evaluation.txt uses).
SELECT = {
    "val/elbo": (True, "highest mean val/elbo over seeds, chosen on the validation split"),
    "test/nll": (False, "lowest mean test/nll over seeds, chosen on the test split"),
}


def best_runs(work: Path, by: list[str], select: str = "val/elbo") -> list[str]:
    """Run directories of the chosen β of each configuration (``SELECT[select]``): every
    completed seed of it."""
    from vaesweep import load_results

    if "beta" in by:
        sys.exit("--by beta: β is what is chosen for each configuration; leave it out")
    highest, _ = SELECT[select]
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
    seeds = frame.groupby(keys, dropna=False)[select].count()
    if seeds.nunique() > 1:  # a β with fewer completed seeds could win by luck
        print(f"warning: completed seeds per configuration differ:\n{seeds}", file=sys.stderr)
    means = frame.groupby(keys, dropna=False)[select].mean().reset_index()
    per_config = means.groupby(by, dropna=False)[select]
    best = means.loc[per_config.idxmax() if highest else per_config.idxmin(), keys]
    chosen = frame.merge(best, on=keys)
    return sorted(chosen["run_dir"].astype(str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="the study's name (outputs/studies/NAME, docs/results/NAME)")
    parser.add_argument("--by", nargs="+", required=True, help="columns of one configuration")
    parser.add_argument("--examples", type=int, required=True, help="first N test images")
    parser.add_argument(
        "--select",
        choices=sorted(SELECT),
        default="val/elbo",
        help="how the β of each configuration is chosen (default: val/elbo, the validation split)",
    )
    args = parser.parse_args()
    work = ROOT / "outputs" / "studies" / args.study
    out = ROOT / "docs" / "results" / args.study
    runs = best_runs(work, args.by, args.select)
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
        f"eval.test_examples={args.examples}, for the {len(runs)} runs of the β "
        f"({SELECT[args.select][1]}) of each {','.join(args.by)}; started {started}, wall time "
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
