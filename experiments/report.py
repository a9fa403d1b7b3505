"""The tables and numbers the docs quote about the committed studies, computed from docs/results/.

    python experiments/report.py            # print every generated table and every checked number
    python experiments/report.py --write    # rewrite the generated tables in the docs
    python experiments/report.py --check    # exit 1 where a doc and the committed data disagree

Reads only the committed files: docs/results/likelihood_comparison/{runs.csv,
sweep/summary.csv, sweep/sweep.json, sweep/provenance.txt} and the same for
docs/results/bernoulli_vs_continuous/{discrete,gaussian_optimal}/. Nothing is trained.

Two kinds of checked text (tests/test_published_numbers.py runs both):

- Generated tables. In a Markdown file, the lines between
      <!-- generated: NAME ... -->
      <!-- end generated -->
  are ``BLOCKS[NAME](data)``; ``--write`` puts them there, ``--check`` fails if they differ.
- Prose numbers. ``CLAIMS`` is a table of rows. A ``Claim(file, snippet, compute, fmt)``:
  ``compute(data)`` gives the value(s), each formatted with ``fmt`` (a format spec, or one
  per value; a leading minus becomes "−") and put into the snippet's ``{}``; the file must
  contain the result (whitespace-insensitive, so line breaks do not matter). A
  ``Fact(file, snippet, holds)``: the file must contain the snippet and ``holds(data)`` must
  be true, for words like "every β" or "best". To add a number to a doc, add its row.

Ranges are min–max over the runs the snippet names (by default every β of the grid and
both likelihoods); each study has one seed, so there is no ± std anywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path("docs/results")
LC = RESULTS / "likelihood_comparison"
BC = RESULTS / "bernoulli_vs_continuous"
BC_PARTS = ("discrete", "gaussian_optimal")

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
    def lc(self) -> pd.DataFrame:
        """likelihood_comparison/runs.csv: one row per run."""
        return self._csv(LC / "runs.csv")

    @cached_property
    def lc_rows(self) -> dict[tuple, dict]:
        """likelihood_comparison runs by (likelihood, scale, β)."""
        return rows_by(self.lc, ["likelihood", "likelihood.scale", "beta"])

    @cached_property
    def bc_rows(self) -> dict[tuple, dict]:
        """bernoulli_vs_continuous runs by (likelihood, β)."""
        return rows_by(self.bc, ["likelihood", "beta"])

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
    def bc(self) -> pd.DataFrame:
        """bernoulli_vs_continuous/runs.csv: both sweeps, one row per run."""
        return self._csv(BC / "runs.csv")

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


# --- lookups ---------------------------------------------------------------------------------


def rows_by(df: pd.DataFrame, keys: list[str]) -> dict[tuple, dict]:
    """Each row of ``df`` as a dict, under its values of ``keys`` (which must be unique)."""
    out = {}
    for row in df.to_dict("records"):
        key = tuple(row[k] for k in keys)
        if key in out:
            raise LookupError(f"two rows for {dict(zip(keys, key, strict=True))}")
        out[key] = row
    return out


def lc(d: Data, column: str, likelihood: str, scale: str, beta: float) -> float:
    return float(d.lc_rows[(likelihood, scale, beta)][column])


def nll(d: Data, likelihood: str, scale: str, beta: float) -> float:
    return lc(d, "test/nll", likelihood, scale, beta)


def lc_betas(d: Data) -> list[float]:
    return sorted(d.lc["beta"].unique())


def bc(d: Data, column: str, likelihood: str, beta: float) -> float:
    return float(d.bc_rows[(likelihood, beta)][column])


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


def active_units_fixed(d: Data) -> tuple[float, float]:
    return span(d.lc.loc[d.lc["likelihood.scale"] == "fixed", "test/active_units"])


def learned_ahead(d: Data, betas) -> tuple[float, float]:
    """NLL(optimal) − NLL(learned), shared scales, over both likelihoods and ``betas``:
    positive when the learned scale is ahead."""
    return span(
        nll(d, lik, "optimal", b) - nll(d, lik, "learned", b) for lik in LIKELIHOODS for b in betas
    )


def optimal_ahead(d: Data, likelihood: str, beta: float) -> float:
    return nll(d, likelihood, "learned", beta) - nll(d, likelihood, "optimal", beta)


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


def decoder_beta_gain(d: Data) -> tuple[float, float]:
    """NLL(smallest β) − NLL(largest β) for the decoder-predicted scale, both likelihoods."""
    lo, hi = min(lc_betas(d)), max(lc_betas(d))
    return span(nll(d, lik, "decoder", lo) - nll(d, lik, "decoder", hi) for lik in LIKELIHOODS)


def fixed_beta_spread(d: Data) -> float:
    """The largest change of the NLL across β with σ = b = 1."""
    return max(
        max(nll(d, lik, "fixed", b) for b in lc_betas(d))
        - min(nll(d, lik, "fixed", b) for b in lc_betas(d))
        for lik in LIKELIHOODS
    )


def best_bpd(d: Data) -> pd.Series:
    return d.lc.loc[d.lc["test/bpd"].idxmin()]


def scale_ratio(d: Data, scale: str) -> tuple[float, float]:
    return span(d.lc.loc[d.lc["likelihood.scale"] == scale, "test/scale_ratio"])


def active_units(d: Data, scales, betas) -> tuple[float, float]:
    rows = d.lc[d.lc["likelihood.scale"].isin(scales) & d.lc["beta"].isin(betas)]
    return span(rows["test/active_units"])


def l1_better_everywhere(d: Data) -> bool:
    return all(
        nll(d, "laplace", s, b) < nll(d, "gaussian", s, b) for s in SCALES for b in lc_betas(d)
    )


def l2_lower_mse_except_fixed(d: Data) -> bool:
    return all(
        lc(d, "test/mse", "gaussian", s, b) < lc(d, "test/mse", "laplace", s, b)
        for s in SCALES
        if s != "fixed"
        for b in lc_betas(d)
    ) and all(
        lc(d, "test/mse", "gaussian", "fixed", b) > lc(d, "test/mse", "laplace", "fixed", b)
        for b in lc_betas(d)
    )


def beta1_best(d: Data, scales=("learned", "optimal", "per_pixel")) -> bool:
    return all(
        nll(d, lik, s, 1.0) == min(nll(d, lik, s, b) for b in lc_betas(d))
        for lik in LIKELIHOODS
        for s in scales
    )


def decoder_improves_with_beta(d: Data) -> bool:
    return all(
        all(x > y for x, y in zip(v[:-1], v[1:], strict=True))
        for v in ([nll(d, lik, "decoder", b) for b in lc_betas(d)] for lik in LIKELIHOODS)
    )


def one_seed(frame: pd.DataFrame) -> bool:
    return sorted(frame["seed"].unique()) == [0]


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
    return span(d.bc.loc[d.bc["likelihood"] == likelihood, "test/bpd"])


def gaussian_lowest_mse_bc(d: Data) -> bool:
    return all(
        bc(d, "test/mse", "gaussian", b)
        < min(bc(d, "test/mse", lik, b) for lik in ("bernoulli", "continuous_bernoulli"))
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


def readme_likelihood_comparison(d: Data) -> str:
    """README: test NLL (bits/dim) at β = 1, every scale, both likelihoods."""
    rows = [
        [SCALE_LABEL[s]]
        + [
            f"{num(nll(d, lik, s, 1.0), '.1f')} ({num(lc(d, 'test/bpd', lik, s, 1.0), '.2f')})"
            for lik in LIKELIHOODS
        ]
        for s in SCALES
    ]
    return table(["scale", "Gaussian (L2)", "Laplace (L1)"], rows)


def likelihood_comparison(d: Data) -> str:
    """experiments/likelihood_comparison: every scale × β; NLL (bits/dim), best β per scale and
    likelihood in bold; active units."""
    rows = []
    for s in SCALES:
        for b in lc_betas(d):
            cells = [SCALE_LABEL[s], beta_str(b)]
            for lik in LIKELIHOODS:
                value = nll(d, lik, s, b)
                text = num(value, ".1f")
                if value == min(nll(d, lik, s, x) for x in lc_betas(d)):
                    text = f"**{text}**"
                cells.append(f"{text} ({num(lc(d, 'test/bpd', lik, s, b), '.3f')})")
            cells.append(
                " / ".join(num(lc(d, "test/active_units", lik, s, b), "d") for lik in LIKELIHOODS)
            )
            rows.append(cells)
    header = ["scale", "β", "Gaussian (L2)", "Laplace (L1)", "active units (G / L)"]
    return table(header, rows)


BC_ROWS = (
    ("bernoulli", "Bernoulli (binarised), test NLL"),
    ("continuous_bernoulli", "continuous Bernoulli (dequantised), test NLL / bits/dim"),
    ("gaussian", "Gaussian, σ* = √MSE (dequantised), test NLL / bits/dim"),
)


def bernoulli_vs_continuous(d: Data) -> str:
    """experiments/bernoulli_vs_continuous: NLL (and bits/dim) per likelihood and β, the best β
    of each row in bold; MSE."""
    betas = bc_betas(d)
    rows = []
    for lik, label in BC_ROWS:
        best = min(bc(d, "test/nll", lik, b) for b in betas)
        cells = [label]
        for b in betas:
            value = bc(d, "test/nll", lik, b)
            text = num(value, ".1f")
            if lik != "bernoulli":
                text += f" / {num(bc(d, 'test/bpd', lik, b), '.3f')}"
            cells.append(f"**{text}**" if value == best else text)
        rows.append(cells)
    rows.append(
        ["test MSE (B / CB / G)"]
        + [" / ".join(num(bc(d, "test/mse", lik, b), ".4f") for lik, _ in BC_ROWS) for b in betas]
    )
    return table(["likelihood (data)"] + [f"β = {beta_str(b)}" for b in betas], rows)


BLOCKS: dict[str, Callable[[Data], str]] = {
    "readme_likelihood_comparison": readme_likelihood_comparison,
    "likelihood_comparison": likelihood_comparison,
    "bernoulli_vs_continuous": bernoulli_vs_continuous,
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


def _lc_claims(f: str) -> list[Claim | Fact]:
    """Numbers both the README and the study's README quote."""
    return [
        Claim(f, "MLP {}", lambda d: mlp(d.lc), "s"),
        Claim(f, "{}–{} nats worse", fixed_minus_shared, ",.0f"),
        Claim(
            f,
            "close at β = 0.5 and 1 (learned ahead by {}–{} nats), but at β = 4 the optimal one"
            " is ahead by {} (Gaussian) and {} nats (Laplace)",
            lambda d: (
                *learned_ahead(d, [0.5, 1.0]),
                optimal_ahead(d, "gaussian", 4.0),
                optimal_ahead(d, "laplace", 4.0),
            ),
        ),
        Claim(f, "a per-pixel scale gains {}–{} nats", per_pixel_gain),
        Claim(f, "({}–{} at β = 1)", lambda d: per_pixel_gain(d, [1.0])),
        Claim(f, "a decoder-predicted scale {}–{} more", decoder_gain, ".0f"),
        Claim(f, "β = 4 costs {}–{} nats", beta4_cost),
        Claim(
            f,
            "{}–{} nats from β = {} to {}",
            lambda d: (*decoder_beta_gain(d), min(lc_betas(d)), max(lc_betas(d))),
            (".1f", ".1f", "g", "g"),
        ),
        Claim(f, "β moves the NLL by at most {} nats", fixed_beta_spread),
        Claim(
            f,
            "L2 gives the lower MSE with every scale but σ = 1 ({} against {}, shared learned scale, β = 1)",
            lambda d: (
                lc(d, "test/mse", "gaussian", "learned", 1.0),
                lc(d, "test/mse", "laplace", "learned", 1.0),
            ),
            ".4f",
        ),
        Claim(
            f,
            "(best: Laplace, decoder, β = 4, {} bits/dim)",
            lambda d: best_bpd(d)["test/bpd"],
            ".2f",
        ),
        Claim(
            f,
            "effective σ = √β of {}–{}",
            lambda d: (math.sqrt(min(lc_betas(d))), math.sqrt(max(lc_betas(d)))),
            (".2f", ".0f"),
        ),
        Claim(
            f,
            "learned shared σ ends at ({}–{}, Gaussian)",
            lambda d: span(lc(d, "scale", "gaussian", "learned", b) for b in lc_betas(d)),
            ".3f",
        ),
        Fact(f, "for every scale treatment and every β", l1_better_everywhere),
        Fact(f, "β = 1 is best", beta1_best),
        Fact(f, "L2 gives the lower MSE with every scale but σ = 1", l2_lower_mse_except_fixed),
        Fact(
            f,
            "best: Laplace, decoder, β = 4",
            lambda d: (
                tuple(best_bpd(d)[["likelihood", "likelihood.scale", "beta"]])
                == ("laplace", "decoder", 4.0)
            ),
        ),
        Fact(f, "one seed", lambda d: one_seed(d.lc)),
    ]


CLAIMS: list[Claim | Fact] = [
    # README: the headline study.
    Claim(
        README,
        "one seed, {} epochs, MLP",
        lambda d: config(d.lc, "trainer.max_epochs"),
        "d",
    ),
    Claim(
        README,
        "every likelihood × scale at β ∈ {{{}}}: {} runs",
        lambda d: (grid_list(d.lc_sweep["grid"]["beta"]), len(d.lc)),
        ("s", "d"),
    ),
    Claim(README, "and collapses {}–{} of 20", collapsed_units_fixed, ".0f"),
    Claim(
        README,
        "(ranges over β ∈ {{{}}} and both likelihoods)",
        lambda d: grid_list(d.lc_sweep["grid"]["beta"]),
        "s",
    ),
    *_lc_claims(README),
    # README: the Bernoulli study, one sentence.
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
        "(mnist_small, one seed, {} epochs)",
        lambda d: config(d.bc, "trainer.max_epochs"),
        "d",
    ),
    # experiments/likelihood_comparison/README.md
    *_lc_claims(LC_README),
    Claim(LC_README, "({}–{} of 20 units active)", active_units_fixed, ".0f"),
    Claim(
        LC_README,
        "ranges are over β ∈ {{{}}} and both likelihoods unless they say otherwise",
        lambda d: grid_list(d.lc_sweep["grid"]["beta"]),
        "s",
    ),
    Fact(
        LC_README,
        "With a decoder-predicted scale the NLL improves with β",
        decoder_improves_with_beta,
    ),
    Claim(
        LC_README,
        "One seed (seed 0), {} epochs",
        lambda d: config(d.lc, "trainer.max_epochs"),
        "d",
    ),
    Claim(LC_README, "all {} likelihood × scale × β points", lambda d: d.lc_sweep["n_jobs"], "d"),
    Claim(
        LC_README,
        "`likelihood.scale` ∈ {{{}}} × `beta` ∈ {{{}}}",
        lambda d: (
            grid_list(d.lc_sweep["grid"]["likelihood.scale"]),
            grid_list(d.lc_sweep["grid"]["beta"]),
        ),
        "s",
    ),
    Claim(LC_README, "at commit {}", lambda d: d.lc_provenance["commit"][:7], "s"),
    Claim(
        LC_README,
        "The {} runs took {} s ({} min) of wall time",
        lambda d: (len(d.lc), wall_time_s(d.lc_provenance), wall_time_s(d.lc_provenance) / 60),
        ("d", ".0f", ".0f"),
    ),
    Claim(LC_README, "{}–{} s per run (`duration_s`)", lambda d: span(d.lc["duration_s"]), ".0f"),
    Claim(LC_README, "batch {}", lambda d: config(d.lc, "data.batch_size"), "d"),
    Claim(LC_README, "K = {}", lambda d: config(d.lc, "eval.iwae_k"), "d"),
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
    Claim(
        LC_README,
        "(e.g. shared learned scale at β = 1: {} against {} bits/dim)",
        lambda d: (
            lc(d, "test/bpd", "laplace", "learned", 1.0),
            lc(d, "test/bpd", "gaussian", "learned", 1.0),
        ),
        ".2f",
    ),
    Claim(
        LC_README,
        "(`test/scale_ratio` {}–{} over the grid)",
        lambda d: scale_ratio(d, "learned"),
        ".3f",
    ),
    Claim(LC_README, "ends {}–{} times it", lambda d: scale_ratio(d, "optimal"), ".3f"),
    Claim(
        LC_README, "at β = 1 alone that gain is {}–{} nats", lambda d: decoder_gain(d, [1.0]), ".0f"
    ),
    Claim(LC_README, "optimal scale: {}–{}", lambda d: beta4_cost(d, ["optimal"])),
    Claim(
        LC_README,
        "learned shared and per-pixel ones: {}–{}",
        lambda d: beta4_cost(d, ["learned", "per_pixel"]),
    ),
    Claim(
        LC_README,
        "{}–{} of 20 active at β = 4",
        lambda d: active_units(d, ["learned", "optimal", "per_pixel"], [4.0]),
        ".0f",
    ),
    Fact(
        LC_README,
        "all 20 at β = 0.5 and 1",
        lambda d: (
            active_units(d, ["learned", "optimal", "per_pixel", "decoder"], [0.5, 1.0]) == (20, 20)
        ),
    ),
    # experiments/bernoulli_vs_continuous/README.md
    Claim(BC_README, "MLP {}", lambda d: mlp(d.bc), "s"),
    Claim(
        BC_README,
        "batch {}, {} epochs",
        lambda d: (config(d.bc, "data.batch_size"), config(d.bc, "trainer.max_epochs")),
        "d",
    ),
    Claim(
        BC_README,
        "## Results (seed 0, {} runs, at commit {})",
        lambda d: (len(d.bc), d.bc_provenance["discrete"]["commit"][:7]),
        ("d", "s"),
    ),
    Fact(BC_README, "## Results (seed 0", lambda d: one_seed(d.bc)),
    Fact(
        BC_README,
        "at commit a19e06b",
        lambda d: len({p["commit"] for p in d.bc_provenance.values()}) == 1,
    ),
    Claim(
        BC_README,
        "took **{} s** in all (the sweep's wall time), {}–{} s per run",
        lambda d: (
            wall_time_s(d.bc_provenance["discrete"]),
            *span(d.bc_summary["discrete"]["duration_s"]),
        ),
        ".0f",
    ),
    Claim(
        BC_README,
        "the three Gaussian runs **{} s**, {}–{} s per run",
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
            for x in span(d.bc.loc[d.bc["likelihood"] == lik, "duration_s"])
        ),
        ".0f",
    ),
    Claim(
        BC_README,
        "about {} min at that load",
        lambda d: 3 * sum(wall_time_s(p) for p in d.bc_provenance.values()) / 60,
        ".0f",
    ),
    Claim(
        BC_README,
        "{} against {} bits/dim at β = 1",
        lambda d: (
            bc(d, "test/bpd", "continuous_bernoulli", 1.0),
            bc(d, "test/bpd", "gaussian", 1.0),
        ),
        ".2f",
    ),
    Claim(
        BC_README,
        "({}–{} against {}–{} over β ∈ {{{}}})",
        lambda d: (
            *bc_bpd_range(d, "continuous_bernoulli"),
            *bc_bpd_range(d, "gaussian"),
            grid_list(d.bc_sweep["discrete"]["grid"]["beta"]),
        ),
        (".2f", ".2f", ".2f", ".2f", "s"),
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
    Claim(
        BC_README,
        "(5000 real MNIST digits, 4000 / 500 / {}",
        lambda d: d.bc["test/n_examples"].iloc[0],
        "d",
    ),
    Fact(
        BC_README,
        "runs** on `mnist_small`",
        lambda d: (
            config(d.bc, "data.name") == "mnist_small" and set(d.bc["test/n_examples"]) == {500}
        ),
    ),
    Claim(
        BC_README,
        "one shared σ ({}–{} here)",
        lambda d: span(d.bc.loc[d.bc["likelihood"] == "gaussian", "scale"]),
        ".3f",
    ),
    Claim(
        BC_README,
        "({} at β = 1, against {} for the continuous Bernoulli and {} for the Bernoulli)",
        lambda d: tuple(
            bc(d, "test/mse", lik, 1.0) for lik in ("gaussian", "continuous_bernoulli", "bernoulli")
        ),
        ".4f",
    ),
    Fact(
        BC_README,
        "The Gaussian reconstructs with the lowest MSE at every β",
        gaussian_lowest_mse_bc,
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
        "seed 0, {} epochs: {} runs",
        lambda d: (config(d.lc, "trainer.max_epochs"), len(d.lc)),
        "d",
    ),
    Claim(
        RESULTS_DOC,
        "seed 0, {} epochs, two sweeps: {} runs",
        lambda d: (config(d.bc, "trainer.max_epochs"), len(d.bc)),
        "d",
    ),
    Claim(
        RESULTS_DOC,
        "(`test/scale_ratio` {}–{} over β ∈ {{{}}}, both likelihoods)",
        lambda d: (*scale_ratio(d, "learned"), grid_list(d.lc_sweep["grid"]["beta"])),
        (".3f", ".3f", "s"),
    ),
    Claim(
        RESULTS_DOC,
        "30 runs (commit {})",
        lambda d: d.lc_provenance["commit"][:7],
        "s",
    ),
    Claim(
        RESULTS_DOC,
        "9 runs (commit {})",
        lambda d: d.bc_provenance["discrete"]["commit"][:7],
        "s",
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
    data: generated blocks that differ, prose claims that fail."""
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


def write(data: Data, root: Path = REPO) -> list[str]:
    changed = []
    for f in DOCS:
        path = root / f
        text = path.read_text()
        new = render(text, data)
        if new != text:
            path.write_text(new)
            changed.append(f)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the generated tables")
    mode.add_argument("--check", action="store_true", help="exit 1 on any disagreement")
    args = parser.parse_args(argv)
    data = Data()
    if args.write:
        for f in write(data):
            print(f"rewrote {f}")
        return 0
    if args.check:
        problems = check(data)
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
