"""Summary of before/after pairs of train_throughput.py runs kept in one results file.

    python benchmarks/throughput_pairs.py benchmarks/results/train_throughput_layers.txt \
        [--exclude ROUND:PAIR ...]

The file holds "######## round R" sections of "## pair P: before|after (COMMIT)" runs (the
raw output of train_throughput.py under each). Printed, per likelihood and per commit: the
RATIO of every pair and their median, and the change of the median against "before".
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path
from statistics import median


def read_pairs(path: Path, exclude: set[str]) -> dict[tuple[str, str], list[float]]:
    """{(likelihood, commit or "before"): [RATIO of each kept run]}."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    round_, pair, side = None, None, None
    for line in path.read_text().splitlines():
        if m := re.match(r"######## round (\d+)", line):
            round_ = m[1]
        elif m := re.match(r"## pair (\d+): (before|after) \((\w+)\)", line):
            pair, side = m[1], ("before" if m[2] == "before" else m[3])
        elif line.startswith("mlp ") and f"{round_}:{pair}" not in exclude:
            fields = line.split()
            out[(fields[1], side)].append(float(fields[5]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--exclude", nargs="*", default=[], metavar="ROUND:PAIR")
    args = parser.parse_args()
    ratios = read_pairs(args.file, set(args.exclude))
    for likelihood in sorted({k[0] for k in ratios}):
        before = median(ratios[(likelihood, "before")])
        for (lik, side), values in sorted(ratios.items(), key=lambda kv: kv[0][1] != "before"):
            if lik != likelihood:
                continue
            change = "" if side == "before" else f"  change {median(values) / before - 1:+.1%}"
            shown = " ".join(f"{v:.3f}" for v in values)
            print(
                f"{lik:10} {side:8} n={len(values)} median {median(values):.3f}{change}  [{shown}]"
            )


if __name__ == "__main__":
    main()
