"""The tables and numbers the docs quote about the committed studies, computed from docs/results/.

    python experiments/report.py            # print every generated table and every checked number
    python experiments/report.py --write    # rewrite the generated tables in the docs
    python experiments/report.py --check    # exit 1 where a doc and the committed data disagree

Reads only the committed files: docs/results/likelihood_comparison/{runs.csv,
evaluation.txt, sweep/summary.csv, sweep/sweep.json, sweep/provenance.txt} and the same for
docs/results/bernoulli_vs_continuous/{discrete,gaussian_optimal}/. Nothing is trained.

Two kinds of checked text (tests/test_published_numbers.py runs both):

- Generated blocks (the results tables and the findings bullets, whose every number and
  every "every" or "best" is computed). In a Markdown file, the lines between
      <!-- generated: NAME ... -->
      <!-- end generated -->
  are ``BLOCKS[NAME](data)``; ``--write`` puts them there, ``--check`` fails if they differ.
- Prose numbers. ``CLAIMS`` is a table of rows. A ``Claim(file, snippet, compute, fmt)``:
  ``compute(data)`` gives the value(s), each formatted with ``fmt`` (a format spec, or one
  per value; a leading minus becomes "−") and put into the snippet's ``{}``; the file must
  contain the result (whitespace-insensitive, so line breaks do not matter). A
  ``Fact(file, snippet, holds)``: the file must contain the snippet and ``holds(data)`` must
  be true, for words like "every β" or "best". To add a number to a doc, add its row.

Only completed runs (``status == "completed"``) enter anything: each configuration ran with
the same seeds, all completed, and tables give the mean ± standard deviation over them
(ddof = 1); the findings compare means. A run that did not complete, or a configuration
with fewer completed seeds than the others, is a problem that ``--check`` (and ``--write``)
reports by name (``Data.problems``) instead of a mean over fewer seeds. Ranges are min–max
over the configurations (or the runs, where the text says so) of every β of the grid and
both likelihoods unless the text names fewer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from vaesweep.core.atomic import atomic_open

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path("docs/results")
LC = RESULTS / "likelihood_comparison"
BC = RESULTS / "bernoulli_vs_continuous"
BC_PARTS = ("discrete", "gaussian_optimal")
#: The columns of one configuration (its seeds pooled) of each study.
LC_KEYS = ["likelihood", "likelihood.scale", "beta"]
BC_KEYS = ["likelihood", "beta"]
COMPLETED = "completed"

LIKELIHOODS = ("gaussian", "laplace")
SCALES = ("fixed", "optimal", "learned", "per_pixel", "decoder")
SHARED = ("learned", "optimal")
SCALE_LABEL = {
    "fixed": "fixed σ = b = 1",
    "optimal": "optimal, σ* = √MSE / b* = MAE",
    "learned": "learned, shared",
    "per_pixel": "learned, per pixel",
    "decoder": "predicted by the decoder",
}


class Data:
    """The committed results of both studies, read once from ``root`` (the repository)."""

    def __init__(self, root: Path = REPO):
        self.root = Path(root)

    def _csv(self, path: Path) -> pd.DataFrame:
        return pd.read_csv(self.root / path)

    def _provenance(self, path: Path) -> dict[str, str]:
        text = (self.root / path).read_text()
        return dict(re.findall(r"^(\w[\w ]*): (.*)$", text, flags=re.M))

    @cached_property
    def lc_all(self) -> pd.DataFrame:
        """likelihood_comparison/runs.csv as it is: one row per run, whatever its status."""
        return self._csv(LC / "runs.csv")

    @cached_property
    def lc(self) -> pd.DataFrame:
        """likelihood_comparison/runs.csv: one row per completed run (the others, named by
        :attr:`problems`, enter no number)."""
        return completed(self.lc_all)

    @cached_property
    def lc_earlier(self) -> pd.DataFrame:
        """The runs of the earlier publication of the study (likelihood_comparison/
        earlier_b0c9d09.csv: its keys, commit and three metrics) beside this one's, matched
        by likelihood, scale, β and seed (columns METRIC_earlier, METRIC)."""
        keys = ["likelihood", "likelihood.scale", "beta", "seed"]
        earlier = self._csv(LC / "earlier_b0c9d09.csv").drop(columns="commit")
        return earlier.merge(self.lc, on=keys, suffixes=("_earlier", ""), validate="1:1")

    @cached_property
    def lc_2cb07e7(self) -> pd.DataFrame:
        """The runs of the study's publication at 2cb07e7 (earlier_2cb07e7.csv, as
        earlier_b0c9d09.csv) beside this one's."""
        keys = ["likelihood", "likelihood.scale", "beta", "seed"]
        earlier = self._csv(LC / "earlier_2cb07e7.csv").drop(columns="commit")
        return earlier.merge(self.lc, on=keys, suffixes=("_earlier", ""), validate="1:1")

    @cached_property
    def lc_9e88c1f(self) -> pd.DataFrame:
        """The runs of the study's publication at 9e88c1f (earlier_9e88c1f.csv: its keys,
        commit and every metric a run records) beside this one's."""
        keys = ["likelihood", "likelihood.scale", "beta", "seed"]
        earlier = self._csv(LC / "earlier_9e88c1f.csv").drop(columns="commit")
        return earlier.merge(self.lc, on=keys, suffixes=("_earlier", ""), validate="1:1")

    @cached_property
    def bc_1f4feee(self) -> pd.DataFrame:
        """The runs of the Bernoulli study's publication at 1f4feee (earlier_1f4feee.csv:
        keys, commit and every metric) beside this one's."""
        earlier = self._csv(BC / "earlier_1f4feee.csv").drop(columns="commit")
        keys = ["likelihood", "beta", "seed"]
        return earlier.merge(self.bc, on=keys, suffixes=("_earlier", ""), validate="1:1")

    @cached_property
    def bc_earlier(self) -> pd.DataFrame:
        """The same for bernoulli_vs_continuous (its earlier_b0c9d09.csv), matched by
        likelihood, β and seed."""
        earlier = self._csv(BC / "earlier_b0c9d09.csv").drop(columns="commit")
        keys = ["likelihood", "beta", "seed"]
        return earlier.merge(self.bc, on=keys, suffixes=("_earlier", ""), validate="1:1")

    @cached_property
    def lc_groups(self) -> dict[tuple, pd.DataFrame]:
        """likelihood_comparison runs by (likelihood, scale, β): one row per seed."""
        return groups(self.lc, LC_KEYS)

    @cached_property
    def bc_groups(self) -> dict[tuple, pd.DataFrame]:
        """bernoulli_vs_continuous runs by (likelihood, β): one row per seed."""
        return groups(self.bc, BC_KEYS)

    @cached_property
    def lc_summary(self) -> pd.DataFrame:
        return self._csv(LC / "sweep" / "summary.csv")

    @cached_property
    def lc_sweep(self) -> dict:
        return json.loads((self.root / LC / "sweep" / "sweep.json").read_text())

    @cached_property
    def lc_provenance(self) -> dict[str, str]:
        return self._provenance(LC / "sweep" / "provenance.txt")

    @cached_property
    def bc_all(self) -> pd.DataFrame:
        """bernoulli_vs_continuous/runs.csv as it is: both sweeps, every run."""
        return self._csv(BC / "runs.csv")

    @cached_property
    def bc(self) -> pd.DataFrame:
        """bernoulli_vs_continuous/runs.csv: both sweeps, one row per completed run."""
        return completed(self.bc_all)

    @cached_property
    def bc_summary(self) -> dict[str, pd.DataFrame]:
        return {part: self._csv(BC / part / "summary.csv") for part in BC_PARTS}

    @cached_property
    def bc_sweep(self) -> dict[str, dict]:
        return {
            part: json.loads((self.root / BC / part / "sweep.json").read_text())
            for part in BC_PARTS
        }

    @cached_property
    def bc_provenance(self) -> dict[str, dict[str, str]]:
        return {part: self._provenance(BC / part / "provenance.txt") for part in BC_PARTS}

    @cached_property
    def problems(self) -> list[str]:
        """Why the committed runs cannot give the tables (empty when they can): every run
        that did not complete, and every configuration with fewer completed seeds than the
        others (:func:`run_problems`); then K = 5000 scores of other runs than the β chosen
        on the validation split (:func:`chosen_runs_problems`)."""
        found = run_problems(self.lc_all, LC_KEYS, str(LC)) + run_problems(
            self.bc_all, BC_KEYS, str(BC)
        )
        if found:  # the groups below need every seed of every configuration
            return found
        lc_chosen = [
            self.lc_groups[(lik, s, lc_chosen_beta(self, lik, s))]
            for lik in LIKELIHOODS
            for s in SCALES
        ]
        bc_chosen = [self.bc_groups[(lik, bc_chosen_beta(self, lik))] for lik, _ in BC_ROWS]
        text = {study: (self.root / study / "evaluation.txt").read_text() for study in (LC, BC)}
        return chosen_runs_problems(self.lc, lc_chosen, LC, text[LC]) + chosen_runs_problems(
            self.bc, bc_chosen, BC, text[BC]
        )


def completed(frame: pd.DataFrame) -> pd.DataFrame:
    """The completed runs of a runs.csv (every other status: failed, diverged, ...)."""
    return frame[frame["status"] == COMPLETED].reset_index(drop=True)


def run_problems(frame: pd.DataFrame, keys: list[str], study: str) -> list[str]:
    """What keeps the runs of ``frame`` (a runs.csv, every status) from giving means over
    the same seeds: each run that did not complete (its run_dir and status), each completed
    run without a test NLL, and each configuration (``keys``) with fewer such seeds than the
    study has (named, with the runs of the seeds it lacks; a combination of the keys'
    values without any run has none of them)."""
    done = frame["status"] == COMPLETED
    counted = done & frame["test/nll"].notna()
    problems = [
        f"{study}: run {row['run_dir']} is {row['status']}, not completed: it enters no table "
        "(run it again, or remove it and say why)"
        for _, row in frame[~done].iterrows()
    ]
    problems += [
        f"{study}: run {row['run_dir']} is completed without a test/nll"
        for _, row in frame[done & ~counted].iterrows()
    ]
    every = sorted({int(s) for s in frame["seed"].dropna()})
    found = dict(list(frame.groupby(keys, dropna=False, sort=True)))
    # Every combination of the keys' values is a configuration of the grid, with runs or not.
    grid = itertools.product(*(sorted(frame[k].dropna().unique()) for k in keys))
    for key in sorted(set(found) | set(grid), key=str):
        runs = found.get(key, frame.iloc[:0])
        have = {int(s) for s in runs.loc[counted[runs.index], "seed"]}
        missing = [s for s in every if s not in have]
        if not missing:
            continue
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, key, strict=True))
        lacking = []
        for seed in missing:
            of_seed = runs[runs["seed"] == seed]
            listed = ", ".join(
                f"{r} ({st})" for r, st in zip(of_seed["run_dir"], of_seed["status"], strict=True)
            )
            lacking.append(f"seed {seed}: {listed or 'no run'}")
        problems.append(
            f"{study}: {label} has {len(have)} of the {len(every)} seeds ({'; '.join(lacking)}): "
            "its means would be over fewer seeds than the others'"
        )
    return problems


# --- lookups ---------------------------------------------------------------------------------


def groups(df: pd.DataFrame, keys: list[str]) -> dict[tuple, pd.DataFrame]:
    """The rows of ``df`` under their values of ``keys``: one configuration's seeds each,
    which must be the same seeds for every configuration."""
    out = {key: g for key, g in df.groupby(keys, sort=True)}
    seeds = {tuple(sorted(g["seed"])) for g in out.values()}
    if len(seeds) != 1:
        most = max(seeds, key=len)
        fewer = [str(k) for k, g in out.items() if tuple(sorted(g["seed"])) != most]
        raise LookupError(
            f"the configurations of {keys} have different seeds {sorted(seeds)}: those without "
            f"all of {list(most)}: {', '.join(fewer)}"
        )
    return out


def seeds(df: pd.DataFrame) -> list[int]:
    """The seeds every configuration ran with."""
    return sorted(int(s) for s in df["seed"].unique())


def mean(group: pd.DataFrame, column: str) -> float:
    return float(group[column].mean())


def std(group: pd.DataFrame, column: str) -> float:
    """Sample standard deviation over the seeds (ddof = 1)."""
    return float(group[column].std(ddof=1))


def lc(d: Data, column: str, likelihood: str, scale: str, beta: float) -> float:
    """Mean over the seeds of one likelihood × scale × β."""
    return mean(d.lc_groups[(likelihood, scale, beta)], column)


def lc_std(d: Data, column: str, likelihood: str, scale: str, beta: float) -> float:
    return std(d.lc_groups[(likelihood, scale, beta)], column)


def nll(d: Data, likelihood: str, scale: str, beta: float) -> float:
    return lc(d, "test/nll", likelihood, scale, beta)


def lc_betas(d: Data) -> list[float]:
    return sorted(d.lc["beta"].unique())


def bc(d: Data, column: str, likelihood: str, beta: float) -> float:
    """Mean over the seeds of one likelihood × β."""
    return mean(d.bc_groups[(likelihood, beta)], column)


def bc_std(d: Data, column: str, likelihood: str, beta: float) -> float:
    return std(d.bc_groups[(likelihood, beta)], column)


def bc_betas(d: Data) -> list[float]:
    return sorted(d.bc["beta"].unique())


def span(values) -> tuple[float, float]:
    values = list(values)
    return min(values), max(values)


def grid_list(values) -> str:
    """Sweep values as the docs write them: "0.5, 1, 4"."""
    return ", ".join(str(v) for v in values)


def wall_time_s(provenance: dict[str, str]) -> float:
    return float(re.match(r"(\d+) s", provenance["wall time"]).group(1))


# --- the quantities the prose quotes ------------------------------------------------------


def fixed_minus_shared(d: Data) -> tuple[float, float]:
    """How much worse σ = b = 1 is than a learned or optimal shared scale (nats), over the
    grid: min and max over likelihood × shared scale × β."""
    return span(
        nll(d, lik, "fixed", b) - nll(d, lik, s, b)
        for lik in LIKELIHOODS
        for s in SHARED
        for b in lc_betas(d)
    )


def collapsed_units_fixed(d: Data) -> tuple[float, float]:
    rows = d.lc[d.lc["likelihood.scale"] == "fixed"]
    collapsed = rows["config.model.latent_dim"] - rows["test/active_units"]
    return span(collapsed)


def per_pixel_gain(d: Data, betas=None) -> tuple[float, float]:
    """NLL(shared learned) − NLL(per pixel), over both likelihoods and ``betas`` (all)."""
    betas = lc_betas(d) if betas is None else betas
    return span(
        nll(d, lik, "learned", b) - nll(d, lik, "per_pixel", b)
        for lik in LIKELIHOODS
        for b in betas
    )


def decoder_gain(d: Data, betas=None) -> tuple[float, float]:
    """NLL(per pixel) − NLL(decoder-predicted), over both likelihoods and ``betas`` (all)."""
    betas = lc_betas(d) if betas is None else betas
    return span(
        nll(d, lik, "per_pixel", b) - nll(d, lik, "decoder", b)
        for lik in LIKELIHOODS
        for b in betas
    )


def beta4_cost(d: Data, scales=("learned", "optimal", "per_pixel")) -> tuple[float, float]:
    """NLL(β = 4) − NLL(β = 1) over both likelihoods and ``scales``."""
    top = max(lc_betas(d))
    return span(nll(d, lik, s, top) - nll(d, lik, s, 1.0) for lik in LIKELIHOODS for s in scales)


def best_bpd(d: Data) -> tuple[tuple[str, str, float], float]:
    """The configuration (likelihood, scale, β) with the lowest mean bits/dim, and that mean."""
    key = min(d.lc_groups, key=lambda k: lc(d, "test/bpd", *k))
    return key, lc(d, "test/bpd", *key)


def seed_std_max(d: Data, column: str = "test/nll") -> float:
    """The largest standard deviation over seeds of ``column`` among the configurations."""
    return max(std(g, column) for g in d.lc_groups.values())


def scale_ratio(d: Data, scale: str) -> tuple[float, float]:
    return span(d.lc.loc[d.lc["likelihood.scale"] == scale, "test/scale_ratio"])


def optimal_floor_cost(d: Data, likelihood: str) -> tuple[float, float]:
    """Over the optimal-scale runs of ``likelihood``: the test NLL the soft floor costs
    (docs/math.md §3: D(ln ρ + 1/(2ρ²) − ½) Gaussian, D(ln ρ + 1/ρ − 1) Laplace, ρ =
    exp(log1p(e^(min − ln s)))), s the run's test residual scale (√test/mse, test/mae)."""
    runs = d.lc[(d.lc["likelihood.scale"] == "optimal") & (d.lc["likelihood"] == likelihood)]
    gaussian = likelihood == "gaussian"
    costs = []
    for _, run in runs.iterrows():
        s = math.sqrt(run["test/mse"]) if gaussian else run["test/mae"]
        rho = math.exp(math.log1p(math.exp(-6.0 - math.log(s))))
        per_dim = math.log(rho) + (1 / (2 * rho**2) - 0.5 if gaussian else 1 / rho - 1)
        costs.append(784 * per_dim)
    return min(costs), max(costs)


def three_seeds(frame: pd.DataFrame) -> bool:
    return seeds(frame) == [0, 1, 2]


def config(frame: pd.DataFrame, key: str):
    """The one value of config key ``key`` over every run (LookupError if it varies)."""
    values = frame[f"config.{key}"].unique()
    if len(values) != 1:
        raise LookupError(f"config.{key} varies: {values}")
    value = values[0]
    return value.item() if hasattr(value, "item") else value


def mlp(frame: pd.DataFrame) -> str:
    hidden = "-".join(str(h) for h in json.loads(config(frame, "model.hidden")))
    return f"784-{hidden}-{config(frame, 'model.latent_dim')}"


def bc_bpd_range(d: Data, likelihood: str) -> tuple[float, float]:
    """Min and max over β of the mean bits/dim."""
    return span(bc(d, "test/bpd", likelihood, b) for b in bc_betas(d))


#: The images each likelihood of the Bernoulli study is scored against (docs/math.md §6):
#: the Bernoulli sees x ~ Bernoulli(k/255), so its test/mse is against those binarised
#: images; the others see the dequantised grey levels. Only MSEs against the same images
#: compare.
BC_IMAGES = {
    "bernoulli": "binarised",
    "continuous_bernoulli": "grey levels",
    "gaussian": "grey levels",
}


def same_images(likelihood: str) -> list[str]:
    """The other likelihoods of the Bernoulli study scored against the same images."""
    return [
        lik
        for lik, images in BC_IMAGES.items()
        if images == BC_IMAGES[likelihood] and lik != likelihood
    ]


def gaussian_lowest_grey_mse(d: Data) -> bool:
    """Whether the Gaussian's mean test MSE is below that of every likelihood scored
    against the same (grey-level) images, at every β. The Bernoulli's, against binarised
    images, is not compared."""
    return all(
        bc(d, "test/mse", "gaussian", b)
        < min(bc(d, "test/mse", lik, b) for lik in same_images("gaussian"))
        for b in bc_betas(d)
    )


def summary_matches_runs(d: Data) -> bool:
    """summary.csv (the sweep's table) and runs.csv (collect) give the same test NLL."""
    pairs = [(d.lc_summary, d.lc)] + [(d.bc_summary[p], d.bc) for p in BC_PARTS]
    for summary, runs in pairs:
        for _, row in summary.iterrows():
            match = runs[runs["run_dir"] == row["job"]]
            if len(match) != 1 or not math.isclose(
                match["test/nll"].iloc[0], row["test/nll"], abs_tol=1e-3
            ):
                return False
    return True


# --- formatting -----------------------------------------------------------------------------


def num(value, spec: str) -> str:
    """``value`` formatted with ``spec``, a leading minus written as the typographic "−"."""
    if isinstance(value, bool):
        raise TypeError("a claim's value is a number or a string, not a bool")
    if spec.endswith("d"):
        value = int(value)
    text = format(value, spec)
    return "−" + text[1:] if text.startswith("-") else text


def beta_str(beta: float) -> str:
    return f"{beta:g}"


# --- generated tables -----------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pm(group_mean: float, group_std: float, spec: str) -> str:
    """ "mean ± std" as the tables write it."""
    return f"{num(group_mean, spec)} ± {num(group_std, spec)}"


def readme_likelihood_comparison(d: Data) -> str:
    """README: test NLL (nats, mean ± std over seeds) at β = 1, every scale, both likelihoods,
    with bits/dim."""
    rows = [
        [SCALE_LABEL[s]]
        + [
            f"{pm(nll(d, lik, s, 1.0), lc_std(d, 'test/nll', lik, s, 1.0), '.1f')}"
            f" ({num(lc(d, 'test/bpd', lik, s, 1.0), '.2f')})"
            for lik in LIKELIHOODS
        ]
        for s in SCALES
    ]
    return table(["scale", "Gaussian (L2)", "Laplace (L1)"], rows)


def likelihood_comparison(d: Data) -> str:
    """experiments/likelihood_comparison: every scale × β; NLL mean ± std over seeds (mean
    bits/dim), the best β per scale and likelihood in bold; active units (mean)."""
    rows = []
    for s in SCALES:
        for b in lc_betas(d):
            cells = [SCALE_LABEL[s], beta_str(b)]
            for lik in LIKELIHOODS:
                value = nll(d, lik, s, b)
                text = pm(value, lc_std(d, "test/nll", lik, s, b), ".1f")
                if value == min(nll(d, lik, s, x) for x in lc_betas(d)):
                    text = f"**{text}**"
                cells.append(f"{text} ({num(lc(d, 'test/bpd', lik, s, b), '.3f')})")
            cells.append(
                " / ".join(num(lc(d, "test/active_units", lik, s, b), ".1f") for lik in LIKELIHOODS)
            )
            rows.append(cells)
    header = ["scale", "β", "Gaussian (L2)", "Laplace (L1)", "active units (G / L)"]
    return table(header, rows)


# The evaluations' test NLL columns; no test_examples when the whole test split was scored.
PAPER = re.compile(r"^test/nll@iwae_k=(\d+),checkpoint=last(?:,test_examples=(\d+))?$")


def paper_columns(frame: pd.DataFrame) -> dict[int, str]:
    """{K: column} of the ``vaesweep evaluate`` test NLLs in ``frame`` (one test_examples)."""
    found = {c: m for c in frame.columns if (m := PAPER.match(c))}
    sizes = {m[2] for m in found.values()}  # None: the whole split
    if len(sizes) != 1:
        raise LookupError(f"evaluations on {sorted(map(str, sizes)) or 'no'} test subsets")
    return {int(m[1]): c for c, m in found.items()}


def paper_k(frame: pd.DataFrame) -> tuple[int, int, int]:
    """(training-time K, paper K, test examples) of the evaluations in ``frame``."""
    columns = paper_columns(frame)
    low, high = min(columns), max(columns)
    counted = frame[columns[low].replace("test/nll@", "test/n_examples@")].dropna().unique()
    if len(counted) != 1:
        raise LookupError(f"evaluations on {sorted(counted)} test examples")
    return low, high, int(counted[0])


def lc_best_beta(d: Data, likelihood: str, scale: str) -> float:
    """The β with the lowest mean test NLL (training-time K, whole test split)."""
    return min(lc_betas(d), key=lambda b: nll(d, likelihood, scale, b))


def bc_best_beta(d: Data, likelihood: str) -> float:
    """The β with the lowest mean test NLL of one likelihood of the Bernoulli study."""
    return min(bc_betas(d), key=lambda b: bc(d, "test/nll", likelihood, b))


def lc_chosen_beta(d: Data, likelihood: str, scale: str) -> float:
    """The β chosen on the validation split (the highest mean val/elbo over the seeds), as
    experiments/evaluate_best.py chooses the runs it scores at K = 5000."""
    return max(lc_betas(d), key=lambda b: lc(d, "val/elbo", likelihood, scale, b))


def bc_chosen_beta(d: Data, likelihood: str) -> float:
    """The same for one likelihood of the Bernoulli study."""
    return max(bc_betas(d), key=lambda b: bc(d, "val/elbo", likelihood, b))


def chosen_runs_problems(
    frame: pd.DataFrame, chosen: list[pd.DataFrame], study: Path, text: str
) -> list[str]:
    """Why the K = 5000 scores of a study (``frame``: its completed runs) are not those of
    the β chosen on the validation split (``chosen``: each configuration's group of seeds),
    as evaluation.txt (``text``) must say: empty when they are."""
    marker = "chosen on the validation split"
    problems = [] if marker in text else [f"{study}/evaluation.txt does not say '{marker}'"]
    try:
        high = paper_columns(frame)[max(paper_columns(frame))]
    except LookupError as error:
        return [*problems, f"{study}: {error}"]
    scored = set(frame.loc[frame[high].notna(), "run_dir"])
    expected = set(pd.concat(chosen)["run_dir"])
    if scored != expected:
        problems.append(
            f"{study}: the runs scored at K = 5000 are not those of the β chosen by val/elbo "
            f"(scored but not chosen: {sorted(scored - expected)}; chosen but not scored: "
            f"{sorted(expected - scored)}): run experiments/evaluate_best.py again"
        )
    return problems


def paper_gap(group: pd.DataFrame) -> tuple[float, float, float, float, float]:
    """(mean, std) at the low K, (mean, std) at the paper K, and the mean change, over the
    seeds that carry both evaluations."""
    columns = paper_columns(group)
    both = group[[columns[min(columns)], columns[max(columns)]]].dropna()
    a, b = both.iloc[:, 0], both.iloc[:, 1]
    return a.mean(), a.std(ddof=1), b.mean(), b.std(ddof=1), (b - a).mean()


def likelihood_comparison_paper(d: Data) -> str:
    """experiments/likelihood_comparison: the β of each likelihood × scale chosen on the
    validation split (highest mean val/elbo) scored again by ``vaesweep evaluate`` at
    K = 5000 on the first test examples, with K = 100 on the same examples beside it
    (mean ± std over seeds, nats)."""
    low, high, _ = paper_k(d.lc)
    rows = []
    for lik in LIKELIHOODS:
        for s in SCALES:
            b = lc_chosen_beta(d, lik, s)
            group = d.lc_groups[(lik, s, b)]
            lo_m, lo_s, hi_m, hi_s, change = paper_gap(group)
            rows.append(
                [
                    lik.capitalize(),
                    SCALE_LABEL[s],
                    beta_str(b),
                    pm(lo_m, lo_s, ".1f"),
                    pm(hi_m, hi_s, ".1f"),
                    num(change, ".2f"),
                ]
            )
    header = ["likelihood", "scale", "β (val. ELBO)", f"K = {low}", f"K = {high}", "change"]
    return table(header, rows)


BC_ROWS = (
    ("bernoulli", "Bernoulli (binarised), test NLL"),
    ("continuous_bernoulli", "continuous Bernoulli (dequantised), test NLL / bits/dim"),
    ("gaussian", "Gaussian, σ* = √MSE (dequantised), test NLL / bits/dim"),
)


def bernoulli_vs_continuous(d: Data) -> str:
    """experiments/bernoulli_vs_continuous: NLL mean ± std over seeds (and mean bits/dim) per
    likelihood and β, the best β of each row in bold; mean MSE."""
    betas = bc_betas(d)
    rows = []
    for lik, label in BC_ROWS:
        best = min(bc(d, "test/nll", lik, b) for b in betas)
        cells = [label]
        for b in betas:
            value = bc(d, "test/nll", lik, b)
            text = pm(value, bc_std(d, "test/nll", lik, b), ".1f")
            if lik != "bernoulli":
                text += f" / {num(bc(d, 'test/bpd', lik, b), '.3f')}"
            cells.append(f"**{text}**" if value == best else text)
        rows.append(cells)
    grey = [lik for lik, _ in BC_ROWS if BC_IMAGES[lik] == "grey levels"]
    rows.append(
        ["test MSE, dequantised grey levels (CB / G)"]
        + [" / ".join(num(bc(d, "test/mse", lik, b), ".4f") for lik in grey) for b in betas]
    )
    rows.append(
        ["test MSE, binarised images (B; not comparable with CB / G)"]
        + [num(bc(d, "test/mse", "bernoulli", b), ".4f") for b in betas]
    )
    return table(["likelihood (data)"] + [f"β = {beta_str(b)}" for b in betas], rows)


def bernoulli_vs_continuous_paper(d: Data) -> str:
    """experiments/bernoulli_vs_continuous: the β of each likelihood chosen on the validation
    split, at K = 5000 (with K = 100 on the same test examples), mean ± std over seeds, nats."""
    low, high, _ = paper_k(d.bc)
    rows = []
    for lik, _ in BC_ROWS:
        b = bc_chosen_beta(d, lik)
        lo_m, lo_s, hi_m, hi_s, change = paper_gap(d.bc_groups[(lik, b)])
        rows.append(
            [
                BC_NAME[lik],
                beta_str(b),
                pm(lo_m, lo_s, ".1f"),
                pm(hi_m, hi_s, ".1f"),
                num(change, ".2f"),
            ]
        )
    header = ["likelihood", "β (val. ELBO)", f"K = {low}", f"K = {high}", "change"]
    return table(header, rows)


BC_NAME = {
    "bernoulli": "Bernoulli",
    "continuous_bernoulli": "continuous Bernoulli",
    "gaussian": "Gaussian, σ*",
}


def how_many(hits: int, total: int, all_words: str, cases: str) -> str:
    """``all_words`` ("for every …") when all ``total`` cases hold, else "in 14 of 15
    ``cases``"."""
    return all_words if hits == total else f"in {hits} of {total} {cases}"


def l1_wins(d: Data) -> tuple[int, int]:
    """(likelihood × scale × β points where the Laplace mean NLL is below the Gaussian's, all)."""
    cases = [(s, b) for s in SCALES for b in lc_betas(d)]
    return sum(nll(d, "laplace", s, b) < nll(d, "gaussian", s, b) for s, b in cases), len(cases)


def l2_mse_wins(d: Data, scales) -> tuple[int, int]:
    cases = [(s, b) for s in scales for b in lc_betas(d)]
    hits = sum(
        lc(d, "test/mse", "gaussian", s, b) < lc(d, "test/mse", "laplace", s, b) for s, b in cases
    )
    return hits, len(cases)


def rng(lo_hi: tuple[float, float], spec: str = ".1f") -> str:
    """A range as the docs write it: "2.1–5.3", or "−1.2 to 4.0" when a bound is negative."""
    lo, hi = lo_hi
    sep = " to " if min(lo, hi) < 0 else "–"
    return f"{num(lo, spec)}{sep}{num(hi, spec)}"


def best_betas(d: Data, scale: str) -> str:
    """The best β (lowest mean NLL) of each likelihood for ``scale``: "1 (G), 1 (L)"."""
    return ", ".join(
        f"{beta_str(lc_best_beta(d, lik, scale))} ({lik[0].upper()})" for lik in LIKELIHOODS
    )


def chosen_against_best(d: Data) -> str:
    """Where the β chosen by the validation ELBO (the K = 5000 rows') is not the one with the
    lowest mean test NLL, and what it costs on the test split."""
    differ = []
    for s in SCALES:
        for lik in LIKELIHOODS:
            chosen, best = lc_chosen_beta(d, lik, s), lc_best_beta(d, lik, s)
            if chosen != best:
                cost = nll(d, lik, s, chosen) - nll(d, lik, s, best)
                differ.append(
                    f"the scale {SCALE_LABEL[s]} ({lik[0].upper()}), where it picks β = "
                    f"{beta_str(chosen)}, whose test NLL is {num(cost, '.1f')} nats above "
                    f"β = {beta_str(best)}'s"
                )
    if not differ:
        return "The validation ELBO, which chooses the β of the K = 5000 rows, picks the same."
    return (
        "The validation ELBO, which chooses the β of the K = 5000 rows, picks the same but "
        "for " + "; ".join(differ) + "."
    )


def bc_chosen_note(d: Data) -> str:
    """Whether the validation ELBO's choice of β is the lowest mean test NLL's as well."""
    same = all(bc_chosen_beta(d, lik) == bc_best_beta(d, lik) for lik, _ in BC_ROWS)
    return "the same β as the lowest test NLL" if same else "not always the lowest test NLL's"


def shared_scales_compared(d: Data) -> str:
    """Learned minus optimal shared scale, per likelihood and β, mean ± the larger of the two
    stds: positive when the optimal scale is ahead."""
    parts = []
    for lik in LIKELIHOODS:
        cells = []
        for b in lc_betas(d):
            diff = nll(d, lik, "learned", b) - nll(d, lik, "optimal", b)
            noise = max(lc_std(d, "test/nll", lik, s, b) for s in SHARED)
            cells.append(f"{num(diff, '+.1f')} ± {num(noise, '.1f')} at β = {beta_str(b)}")
        parts.append(f"{lik.capitalize()} " + ", ".join(cells))
    return "; ".join(parts)


def findings(d: Data) -> str:
    """The answer in bullets, every number and every "every" computed from runs.csv (means
    over the seeds; ranges over both likelihoods and every β unless they say otherwise)."""
    betas = grid_list(beta_str(b) for b in lc_betas(d))
    hits, total = l1_wins(d)
    mse_hits, mse_total = l2_mse_wins(d, [s for s in SCALES if s != "fixed"])
    (lik, s, b), bpd = best_bpd(d)
    low, high, n_paper = paper_k(d.lc)
    changes = [
        paper_gap(d.lc_groups[(li, sc, lc_chosen_beta(d, li, sc))])[4]
        for li in LIKELIHOODS
        for sc in SCALES
    ]
    lines = [
        f"- **L1 (Laplace) gives the better likelihood** "
        f"{how_many(hits, total, 'for every scale treatment and every β', 'scale × β points')} "
        f"(shared learned scale, β = 1: {num(lc(d, 'test/bpd', 'laplace', 'learned', 1.0), '.2f')} "
        f"against {num(lc(d, 'test/bpd', 'gaussian', 'learned', 1.0), '.2f')} bits/dim); L2 gives "
        f"the lower MSE {how_many(mse_hits, mse_total, 'with every learned or optimal scale', 'learned or optimal scale × β points')} "
        f"({num(lc(d, 'test/mse', 'gaussian', 'learned', 1.0), '.4f')} against "
        f"{num(lc(d, 'test/mse', 'laplace', 'learned', 1.0), '.4f')}, shared learned scale, β = 1).",
        f"- **The scale matters more than L1 vs L2**: σ = b = 1 is "
        f"{rng(fixed_minus_shared(d), ',.0f')} nats worse than a learned or optimal shared "
        f"scale and collapses {rng(collapsed_units_fixed(d), '.0f')} of "
        f"{config(d.lc, 'model.latent_dim')} latent units (over runs). Learned minus optimal "
        f"shared scale (nats, ± the larger std over seeds of the two; positive: optimal "
        f"ahead): {shared_scales_compared(d)}. "
        f"Over the shared learned scale, a per-pixel scale gains "
        f"{rng(per_pixel_gain(d))} nats, and over the per-pixel one a decoder-predicted "
        f"scale {rng(decoder_gain(d), '.0f')} more (best: {lik.capitalize()}, "
        f"{SCALE_LABEL[s]}, β = {beta_str(b)}, {num(bpd, '.2f')} bits/dim).",
        f"- **β** (the β of the lowest mean test NLL per likelihood, G / L): fixed {best_betas(d, 'fixed')}; optimal "
        f"{best_betas(d, 'optimal')}; learned shared {best_betas(d, 'learned')}; per pixel "
        f"{best_betas(d, 'per_pixel')}; decoder-predicted {best_betas(d, 'decoder')}. "
        f"β = 4 against β = 1 with shared and per-pixel scales: {rng(beta4_cost(d))} nats "
        f"(positive: β = 4 worse). {chosen_against_best(d)}",
        f"- **Seeds**: the standard deviation of the test NLL over the "
        f"{len(seeds(d.lc))} seeds is at most {num(seed_std_max(d), '.1f')} nats for any "
        f"configuration (mean ± std in the table).",
        f"- **K = {high}** (`vaesweep evaluate`, the β of each likelihood × scale chosen by "
        f"the validation ELBO, first "
        f"{n_paper} test images): the NLL changes by {rng(span(changes), '.2f')} nats from "
        f"K = {low} on the same images.",
    ]
    return "Ranges are over β ∈ {" + betas + "} and both likelihoods.\n\n" + "\n".join(lines) + "\n"


def bc_findings(d: Data) -> str:
    """The Bernoulli study's answer in bullets, computed from runs.csv (means over seeds)."""
    betas = grid_list(beta_str(b) for b in bc_betas(d))
    low, high, n_paper = paper_k(d.bc)
    changes = [paper_gap(d.bc_groups[(lik, bc_chosen_beta(d, lik))])[4] for lik, _ in BC_ROWS]
    sigma = span(bc(d, "scale", "gaussian", b) for b in bc_betas(d))
    cb_better = all(
        bc(d, "test/nll", "continuous_bernoulli", b) < bc(d, "test/nll", "gaussian", b)
        for b in bc_betas(d)
    )
    lines = [
        f"- **On the same dequantised grey levels the continuous Bernoulli's likelihood is "
        f"{'far higher than' if cb_better else 'not always higher than'} the Gaussian's** "
        f"with the optimal shared σ: {num(bc(d, 'test/bpd', 'continuous_bernoulli', 1.0), '.2f')} "
        f"against {num(bc(d, 'test/bpd', 'gaussian', 1.0), '.2f')} bits/dim at β = 1 "
        f"({rng(bc_bpd_range(d, 'continuous_bernoulli'), '.2f')} against "
        f"{rng(bc_bpd_range(d, 'gaussian'), '.2f')} over β ∈ {{{betas}}}).",
        f"- **On the same dequantised grey levels the Gaussian reconstructs with a lower MSE "
        f"than the continuous Bernoulli "
        f"{'at every β' if gaussian_lowest_grey_mse(d) else 'at some β only'}** "
        f"({num(bc(d, 'test/mse', 'gaussian', 1.0), '.4f')} against "
        f"{num(bc(d, 'test/mse', 'continuous_bernoulli', 1.0), '.4f')} at β = 1); its one "
        f"shared σ ends at {rng(sigma, '.3f')}. "
        f"The Bernoulli's MSE ({num(bc(d, 'test/mse', 'bernoulli', 1.0), '.4f')} at β = 1) is "
        f"against the binarised images it scores, not the grey levels, and is not compared.",
        f"- **Seeds**: the standard deviation of the test NLL over the {len(seeds(d.bc))} seeds "
        f"is at most {num(max(std(g, 'test/nll') for g in d.bc_groups.values()), '.1f')} nats "
        f"for any likelihood × β.",
        f"- **K = {high}** (`vaesweep evaluate`, the β of each likelihood chosen by the "
        f"validation ELBO ({bc_chosen_note(d)}), all "
        f"{n_paper} test images): the NLL changes by {rng(span(changes), '.2f')} nats from "
        f"K = {low} on the same images.",
    ]
    return "\n".join(lines) + "\n"


BLOCKS: dict[str, Callable[[Data], str]] = {
    "readme_likelihood_comparison": readme_likelihood_comparison,
    "likelihood_comparison": likelihood_comparison,
    "likelihood_comparison_paper": likelihood_comparison_paper,
    "readme_findings": findings,
    "findings": findings,
    "bernoulli_vs_continuous": bernoulli_vs_continuous,
    "bernoulli_vs_continuous_paper": bernoulli_vs_continuous_paper,
    "bc_findings": bc_findings,
}

BLOCK = re.compile(
    r"(?P<open><!-- generated: (?P<name>[\w.-]+)[^\n]*-->\n)(?P<body>.*?)(?P<close><!-- end generated -->)",
    flags=re.S,
)


def render(text: str, data: Data) -> str:
    """``text`` with every generated block recomputed (KeyError for an unknown block)."""

    def fill(m: re.Match) -> str:
        name = m["name"]
        if name not in BLOCKS:
            raise KeyError(f"unknown generated block {name!r}; known: {sorted(BLOCKS)}")
        return m["open"] + BLOCKS[name](data) + m["close"]

    return BLOCK.sub(fill, text)


def block_names(text: str) -> list[str]:
    return [m["name"] for m in BLOCK.finditer(text)]


# --- claims in the prose ----------------------------------------------------------------------

README = "README.md"
LC_README = "experiments/likelihood_comparison/README.md"
BC_README = "experiments/bernoulli_vs_continuous/README.md"
RESULTS_DOC = "docs/results-and-figures.md"
DOCS = (README, LC_README, BC_README, RESULTS_DOC)


@dataclass(frozen=True)
class Claim:
    """``file`` must contain ``snippet`` with its ``{}`` filled by ``compute(data)`` (one value
    or a tuple), each formatted with ``fmt`` (one spec for all, or a tuple of them)."""

    file: str
    snippet: str
    compute: Callable[[Data], object]
    fmt: str | tuple[str, ...] = ".1f"

    def text(self, data: Data) -> str:
        values = self.compute(data)
        values = values if isinstance(values, tuple) else (values,)
        fmts = self.fmt if isinstance(self.fmt, tuple) else (self.fmt,) * len(values)
        if len(fmts) != len(values):
            raise ValueError(f"{len(values)} values but {len(fmts)} formats: {self.snippet!r}")
        return self.snippet.format(*(num(v, f) for v, f in zip(values, fmts, strict=True)))


@dataclass(frozen=True)
class Fact:
    """``file`` must contain ``snippet``, and ``holds(data)`` must be true."""

    file: str
    snippet: str
    holds: Callable[[Data], bool]


def runtime_span(frame: pd.DataFrame, mask=None) -> tuple[float, float]:
    rows = frame if mask is None else frame[mask]
    return span(rows["duration_s"])


def unchanged(d: Data, frame: pd.DataFrame | None = None) -> pd.Series:
    """Per run of a study (default: likelihood_comparison): whether the earlier publication
    gave it the same test NLL, test ELBO and validation ELBO, to the last bit."""
    metrics = ["test/nll", "test/elbo", "val/elbo"]
    frame = d.lc_earlier if frame is None else frame
    return pd.concat([frame[m] == frame[f"{m}_earlier"] for m in metrics], axis=1).all(axis=1)


def reproduced(frame: pd.DataFrame) -> tuple[int, int]:
    """(runs whose every metric of the earlier file is the same to the bit (both missing
    counts as the same), metrics compared) of a frame made by merging an earlier
    publication's runs with this one's."""
    metrics = [c.removesuffix("_earlier") for c in frame.columns if c.endswith("_earlier")]
    same = pd.concat(
        [
            (frame[m] == frame[f"{m}_earlier"]) | (frame[m].isna() & frame[f"{m}_earlier"].isna())
            for m in metrics
        ],
        axis=1,
    ).all(axis=1)
    return int(same.sum()), len(metrics)


def evaluation_info(d: Data, study: Path) -> dict[str, str]:
    """evaluation.txt of a study: the runs evaluated, its wall time, the settings."""
    text = (d.root / study / "evaluation.txt").read_text()
    return {
        "runs": re.search(r"for the (\d+) runs", text)[1],
        "wall": re.search(r"wall time (\d+) s", text)[1],
        "examples": re.search(r"eval.test_examples=(\d+)", text)[1],
    }


def _study_claims(f: str) -> list[Claim | Fact]:
    """What the README and the study's README both say about the likelihood comparison."""
    return [
        Claim(f, "MLP {}", lambda d: mlp(d.lc), "s"),
        Claim(
            f,
            "effective σ = √β of {}–{}",
            lambda d: (math.sqrt(min(lc_betas(d))), math.sqrt(max(lc_betas(d)))),
            (".2f", ".0f"),
        ),
        Claim(
            f,
            "learned shared σ ends at (seed means {}–{}, Gaussian)",
            lambda d: span(lc(d, "scale", "gaussian", "learned", b) for b in lc_betas(d)),
            ".3f",
        ),
    ]


CLAIMS: list[Claim | Fact] = [
    # README: the headline study and the Bernoulli one.
    Claim(
        README,
        "({} seeds, {} epochs, MLP",
        lambda d: (len(seeds(d.lc)), config(d.lc, "trainer.max_epochs")),
        "d",
    ),
    Claim(
        README,
        "every likelihood × scale at β ∈ {{{}}}: {} runs",
        lambda d: (grid_list(d.lc_sweep["grid"]["beta"]), len(d.lc)),
        ("s", "d"),
    ),
    *_study_claims(README),
    Claim(
        README,
        "reaches {} bits/dim at β = 1 against {} for a Gaussian",
        lambda d: (
            bc(d, "test/bpd", "continuous_bernoulli", 1.0),
            bc(d, "test/bpd", "gaussian", 1.0),
        ),
        ".2f",
    ),
    Claim(
        README,
        "(mnist_small, {} seeds, {} epochs)",
        lambda d: (len(seeds(d.bc)), config(d.bc, "trainer.max_epochs")),
        "d",
    ),
    # experiments/likelihood_comparison/README.md
    *_study_claims(LC_README),
    Claim(
        LC_README,
        "`likelihood.scale` ∈ {{{}}} × `beta` ∈ {{{}}}",
        lambda d: (
            grid_list(d.lc_sweep["grid"]["likelihood.scale"]),
            grid_list(d.lc_sweep["grid"]["beta"]),
        ),
        "s",
    ),
    Claim(LC_README, "batch {}", lambda d: config(d.lc, "data.batch_size"), "d"),
    Claim(LC_README, "K = {}.", lambda d: config(d.lc, "eval.iwae_k"), "d"),
    Fact(
        LC_README,
        "Fashion-MNIST (55 000 / 5 000 / 10 000)",
        lambda d: (
            set(d.lc["test/n_examples"]) == {10000} and config(d.lc, "data.name") == "fashion_mnist"
        ),
    ),
    Fact(
        LC_README,
        "Adam (lr 10⁻³; learned scales 10⁻²",
        lambda d: (
            config(d.lc, "optimizer.lr") == 1e-3 and config(d.lc, "likelihood.scale_lr") == 1e-2
        ),
    ),
    Fact(LC_README, "Three seeds (0, 1, 2)", lambda d: three_seeds(d.lc)),
    Claim(
        LC_README,
        "Three seeds (0, 1, 2), {} epochs",
        lambda d: config(d.lc, "trainer.max_epochs"),
        "d",
    ),
    Claim(
        LC_README,
        "all {} likelihood × scale × β × seed points",
        lambda d: d.lc_sweep["n_jobs"],
        "d",
    ),
    Claim(LC_README, "at commit {}", lambda d: d.lc_provenance["commit"][:7], "s"),
    Fact(
        LC_README,
        "(`versions.cpu_capability`: AVX512 for every run here)",
        lambda d: bool(d.lc["versions"].str.contains(r"cpu_capability=AVX512\b").all()),
    ),
    Claim(
        LC_README,
        "{} of the {} runs give every one of the {} metrics they record to the bit",
        lambda d: (*reproduced(d.lc_9e88c1f)[:1], len(d.lc_9e88c1f), reproduced(d.lc_9e88c1f)[1]),
        "d",
    ),
    Claim(
        LC_README,
        "The {} runs took {} s ({} min) of wall time",
        lambda d: (len(d.lc), wall_time_s(d.lc_provenance), wall_time_s(d.lc_provenance) / 60),
        ("d", ".0f", ".0f"),
    ),
    Claim(LC_README, "{}–{} s per run (`duration_s`", lambda d: runtime_span(d.lc), ".0f"),
    Fact(
        BC_README,
        "the same β as the lowest test NLL's for each likelihood",
        lambda d: all(bc_chosen_beta(d, lik) == bc_best_beta(d, lik) for lik, _ in BC_ROWS),
    ),
    Claim(
        BC_README,
        "{} of the {} runs give every one of the {} metrics they record to the bit",
        lambda d: (*reproduced(d.bc_1f4feee)[:1], len(d.bc_1f4feee), reproduced(d.bc_1f4feee)[1]),
        "d",
    ),
    Claim(
        BC_README,
        "{} of the {} runs give exactly the test NLL, test ELBO and validation ELBO of the",
        lambda d: (int(unchanged(d, d.bc_earlier).sum()), len(d.bc_earlier)),
        "d",
    ),
    Fact(
        BC_README,
        "every run's validation metrics the same",
        lambda d: bool((d.bc_earlier["val/elbo"] == d.bc_earlier["val/elbo_earlier"]).all()),
    ),
    Fact(
        LC_README,
        "all 90 validation ELBOs are equal to the bit",
        lambda d: (
            len(d.lc_earlier) == 90
            and bool((d.lc_earlier["val/elbo"] == d.lc_earlier["val/elbo_earlier"]).all())
        ),
    ),
    Claim(
        LC_README,
        "and {} of the 90 test NLLs and ELBOs. The other {} are tested on",
        lambda d: (int(unchanged(d).sum()), int((~unchanged(d)).sum())),
        "d",
    ),
    Claim(
        LC_README,
        "the same {} of those {} runs, and the {} runs with a per-pixel scale",
        lambda d: (
            int(
                (
                    ~unchanged(d, d.lc_2cb07e7) & (d.lc_2cb07e7["likelihood.scale"] != "per_pixel")
                ).sum()
            ),
            int((~unchanged(d)).sum()),
            int(
                (
                    ~unchanged(d, d.lc_2cb07e7) & (d.lc_2cb07e7["likelihood.scale"] == "per_pixel")
                ).sum()
            ),
        ),
        "d",
    ),
    Fact(
        LC_README,
        "which trained to other numbers on that day's VM",
        lambda d: (
            set(
                d.lc_2cb07e7.loc[
                    d.lc_2cb07e7["val/elbo"] != d.lc_2cb07e7["val/elbo_earlier"], "likelihood.scale"
                ]
            )
            == {"per_pixel"}
        ),
    ),
    Claim(
        LC_README,
        "(validation ELBO by up to {} nats)",
        lambda d: (d.lc_2cb07e7["val/elbo"] - d.lc_2cb07e7["val/elbo_earlier"]).abs().max(),
        ".1f",
    ),
    Claim(
        LC_README,
        "The K = 5000 evaluation of {} runs on {} test images each took {} s",
        lambda d: tuple(evaluation_info(d, LC)[k] for k in ("runs", "examples", "wall")),
        "s",
    ),
    Claim(
        LC_README,
        "(`test/scale_ratio` {}–{} over runs)",
        lambda d: scale_ratio(d, "learned"),
        ".3f",
    ),
    Claim(LC_README, "ends {}–{} times it", lambda d: scale_ratio(d, "optimal"), ".3f"),
    Claim(
        LC_README,
        "costs its test NLL {}–{} nats (Gaussian) and {}–{} (Laplace)",
        lambda d: (*optimal_floor_cost(d, "gaussian"), *optimal_floor_cost(d, "laplace")),
        ".2f",
    ),
    Fact(
        LC_README,
        "min_log_scale = −6 in every run",
        lambda d: set(d.lc["config.likelihood.min_log_scale"]) == {-6.0},
    ),
    # experiments/bernoulli_vs_continuous/README.md
    Claim(BC_README, "MLP {}", lambda d: mlp(d.bc), "s"),
    Claim(
        BC_README,
        "batch {}, {} epochs",
        lambda d: (config(d.bc, "data.batch_size"), config(d.bc, "trainer.max_epochs")),
        "d",
    ),
    Fact(BC_README, "three seeds (0, 1, 2)", lambda d: three_seeds(d.bc)),
    Claim(
        BC_README,
        "## Results (3 seeds, {} runs, at commit {})",
        lambda d: (len(d.bc), d.bc_provenance["discrete"]["commit"][:7]),
        ("d", "s"),
    ),
    Fact(
        BC_README,
        "both sweeps at the same commit",
        lambda d: len({p["commit"] for p in d.bc_provenance.values()}) == 1,
    ),
    Claim(
        BC_README,
        "took **{} s** (the sweep's wall time), {}–{} s per run",
        lambda d: (
            wall_time_s(d.bc_provenance["discrete"]),
            *span(d.bc_summary["discrete"]["duration_s"]),
        ),
        ".0f",
    ),
    Claim(
        BC_README,
        "the nine Gaussian runs **{} s**, {}–{} s per run",
        lambda d: (
            wall_time_s(d.bc_provenance["gaussian_optimal"]),
            *span(d.bc_summary["gaussian_optimal"]["duration_s"]),
        ),
        ".0f",
    ),
    Claim(
        BC_README,
        "{}–{} s per continuous Bernoulli run against {}–{} s per Bernoulli one",
        lambda d: tuple(
            x
            for lik in ("continuous_bernoulli", "bernoulli")
            for x in runtime_span(d.bc, d.bc["likelihood"] == lik)
        ),
        ".0f",
    ),
    Claim(
        BC_README,
        "The K = 5000 evaluation of {} runs on {} test images each took {} s",
        lambda d: tuple(evaluation_info(d, BC)[k] for k in ("runs", "examples", "wall")),
        "s",
    ),
    Claim(
        BC_README,
        "`likelihood` ∈ {{{}}} × `beta` ∈ {{{}}}",
        lambda d: (
            grid_list(d.bc_sweep["discrete"]["grid"]["likelihood"]),
            grid_list(d.bc_sweep["discrete"]["grid"]["beta"]),
        ),
        "s",
    ),
    Fact(
        BC_README,
        "then the same β × seeds for the Gaussian",
        lambda d: (
            d.bc_sweep["gaussian_optimal"]["grid"]["beta"] == d.bc_sweep["discrete"]["grid"]["beta"]
        ),
    ),
    Fact(
        BC_README,
        "(5000 real MNIST digits, 4000 / 500 / 500",
        lambda d: (
            config(d.bc, "data.name") == "mnist_small" and set(d.bc["test/n_examples"]) == {500}
        ),
    ),
    # docs/results-and-figures.md
    Claim(
        RESULTS_DOC,
        "Gaussian, Laplace × {} scale × β ∈ {{{}}} × 3 seeds",
        lambda d: (
            grid_list(d.lc_sweep["grid"]["likelihood.scale"]),
            grid_list(d.lc_sweep["grid"]["beta"]),
        ),
        "s",
    ),
    Claim(
        RESULTS_DOC,
        "Bernoulli (binarised), continuous Bernoulli, Gaussian σ* × β ∈ {{{}}} × 3 seeds",
        lambda d: grid_list(d.bc_sweep["discrete"]["grid"]["beta"]),
        "s",
    ),
    Claim(
        RESULTS_DOC,
        "3 seeds, {} epochs: {} runs (commit {})",
        lambda d: (config(d.lc, "trainer.max_epochs"), len(d.lc), d.lc_provenance["commit"][:7]),
        ("d", "d", "s"),
    ),
    Claim(
        RESULTS_DOC,
        "3 seeds, {} epochs, two sweeps: {} runs (commit {})",
        lambda d: (
            config(d.bc, "trainer.max_epochs"),
            len(d.bc),
            d.bc_provenance["discrete"]["commit"][:7],
        ),
        ("d", "d", "s"),
    ),
    Claim(
        RESULTS_DOC,
        "(`test/scale_ratio` {}–{} over its runs at β ∈ {{{}}},",
        lambda d: (*scale_ratio(d, "learned"), grid_list(d.lc_sweep["grid"]["beta"])),
        (".3f", ".3f", "s"),
    ),
    Fact(
        RESULTS_DOC,
        "a per-pixel scale beats a shared one at every β",
        lambda d: per_pixel_gain(d)[0] > 0,
    ),
]


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def check_claim(claim: Claim | Fact, data: Data, text: str) -> str | None:
    """Why ``text`` (the claim's file) disagrees with the data, or None."""
    if isinstance(claim, Fact):
        if normalise(claim.snippet) not in normalise(text):
            return f"{claim.file}: missing {claim.snippet!r}"
        if not claim.holds(data):
            return f"{claim.file}: {claim.snippet!r} does not hold in the committed data"
        return None
    expected = claim.text(data)
    if normalise(expected) not in normalise(text):
        return f"{claim.file}: expected {expected!r} (from the data), not found"
    return None


def check(data: Data, root: Path = REPO, files=None) -> list[str]:
    """Every disagreement between the docs under ``root`` (or ``files``: name → text) and the
    data: generated blocks that differ, prose claims that fail. First the runs themselves
    (:attr:`Data.problems`): where a run did not complete or a configuration lacks a seed,
    those are the problems, and nothing is computed from the runs."""
    if data.problems:
        return list(data.problems)
    texts = files if files is not None else {f: (root / f).read_text() for f in DOCS}
    problems = []
    for name, text in texts.items():
        if render(text, data) != text:
            problems.append(
                f"{name}: a generated table differs (python experiments/report.py --write)"
            )
    for claim in CLAIMS:
        if claim.file in texts:
            problem = check_claim(claim, data, texts[claim.file])
            if problem:
                problems.append(problem)
    return problems


class RunsError(ValueError):
    """The committed runs cannot give the tables (:attr:`Data.problems`)."""


def write(data: Data, root: Path = REPO) -> list[str]:
    """Rewrite the generated blocks of the docs under ``root`` that differ, each file
    atomically (a reader or a crash sees the old text or the new); returns those files.
    RunsError, before any file is written, when the runs cannot give the tables."""
    if data.problems:
        raise RunsError("\n".join(data.problems))
    new_texts = {}
    for f in DOCS:
        text = (root / f).read_text()
        new = render(text, data)
        if new != text:
            new_texts[f] = new
    for f, new in new_texts.items():
        with atomic_open(root / f) as out:
            out.write(new)
    return list(new_texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the generated tables")
    mode.add_argument("--check", action="store_true", help="exit 1 on any disagreement")
    args = parser.parse_args(argv)
    data = Data(REPO)
    if data.problems:  # no table and no number from runs that are not all there
        for p in data.problems:
            print(p, file=sys.stderr)
        return 1
    if args.write:
        for f in write(data, REPO):
            print(f"rewrote {f}")
        return 0
    if args.check:
        problems = check(data, REPO)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    for name, block in BLOCKS.items():
        print(f"## {name}\n\n{block(data)}")
    print("## claims\n")
    for claim in CLAIMS:
        shown = (
            claim.text(data)
            if isinstance(claim, Claim)
            else f"{claim.snippet} [{claim.holds(data)}]"
        )
        print(f"{claim.file}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
