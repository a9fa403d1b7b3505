"""The numbers the docs quote about the committed studies agree with the committed results.

Reads docs/results/ (runs.csv, summary.csv, sweep.json, provenance.txt) with pandas only;
nothing is trained. The tables between ``<!-- generated: NAME -->`` markers must be what
experiments/report.py writes, and every prose number in its CLAIMS table must be what the
CSVs give. To add a number to a doc, add a row to CLAIMS there; after a new study run,
``python experiments/report.py --write`` rewrites the tables.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def load(name: str):
    """A script of experiments/ as a module (experiments/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


report = load("report")
relative_paths = load("relative_paths")


@pytest.fixture(scope="module")
def data():
    return report.Data(REPO)


@pytest.fixture(scope="module")
def texts():
    return {f: (REPO / f).read_text() for f in report.DOCS}


# --- (a) generated tables ---------------------------------------------------------------------


def test_generated_tables_are_current(data, texts):
    diffs = []
    for doc, text in texts.items():
        new = report.render(text, data)
        diffs += difflib.unified_diff(
            text.splitlines(True), new.splitlines(True), doc, "experiments/report.py"
        )
    assert not diffs, "run `python experiments/report.py --write`:\n" + "".join(diffs)


def test_every_generated_table_is_in_a_doc(texts):
    used = [name for text in texts.values() for name in report.block_names(text)]
    assert sorted(used) == sorted(report.BLOCKS), "each table appears exactly once"


def test_an_unknown_block_is_an_error(data):
    with pytest.raises(KeyError, match="unknown generated block"):
        report.render("<!-- generated: nonesuch -->\n<!-- end generated -->\n", data)


# --- (b) numbers in the prose ---------------------------------------------------------------


def test_every_claim_holds(data, texts):
    """Each row of report.CLAIMS: the number its file quotes is the one the CSVs give."""
    problems = [report.check_claim(c, data, texts[c.file]) for c in report.CLAIMS]
    assert [p for p in problems if p] == []
    assert len(report.CLAIMS) > 30


def test_the_whole_check_passes(data):
    assert report.check(data) == []
    assert report.main(["--check"]) == 0


# --- the check fails when text and data disagree ----------------------------------------------


def _one_digit_off(text: str) -> str:
    """``text`` with its last digit changed."""
    i = max(i for i, c in enumerate(text) if c.isdigit())
    return text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1 :]


CLAIMS_WITH_VALUES = [c for c in report.CLAIMS if isinstance(c, report.Claim)]


@pytest.mark.parametrize("index", range(0, len(CLAIMS_WITH_VALUES), 3))
def test_a_wrong_number_in_the_prose_fails(index, data, texts):
    """A claim's text with one digit changed, in place (line breaks kept): that claim fails."""
    claim = CLAIMS_WITH_VALUES[index]
    right = claim.text(data)
    if not any(ch.isdigit() for ch in right):
        pytest.skip("no number in this claim")
    where = re.compile(r"\s+".join(re.escape(word) for word in right.split()))
    found = where.search(texts[claim.file])
    assert found, right
    bad = dict(texts)
    text = texts[claim.file]
    bad[claim.file] = text[: found.start()] + _one_digit_off(found[0]) + text[found.end() :]
    problems = report.check(data, files=bad)
    assert f"{claim.file}: expected {right!r} (from the data), not found" in problems, problems


@pytest.mark.parametrize("doc", [report.README, report.LC_README, report.BC_README])
def test_a_wrong_number_in_a_generated_table_fails(doc, data, texts):
    block = report.BLOCK.search(texts[doc])
    cell = re.search(r"\| (−?\d[\d.,]*) ", block["body"])[0]
    bad = dict(texts)
    bad[doc] = texts[doc].replace(cell, _one_digit_off(cell), 1)
    problems = report.check(data, files=bad)
    assert f"{doc}: a generated table differs (python experiments/report.py --write)" in problems


def test_a_claim_with_a_wrong_number_names_the_expected_text(data):
    claim = report.Claim(
        "doc.md", "a per-pixel scale gains {}–{} nats", report.per_pixel_gain, ".1f"
    )
    right = claim.text(data)
    assert report.check_claim(claim, data, f"Over the shared scale, {right}.") is None
    wrong = _one_digit_off(right)
    assert report.check_claim(claim, data, f"Over the shared scale, {wrong}.") == (
        f"doc.md: expected {right!r} (from the data), not found"
    )


def test_a_fact_that_the_data_contradicts_fails(data):
    fact = report.Fact("doc.md", "every β", lambda d: False)
    assert "does not hold" in report.check_claim(fact, data, "better at every β")
    assert "missing" in report.check_claim(fact, data, "better at some β")


def test_changed_data_fails_the_docs(tmp_path, texts):
    """Committed docs against a copy of the results in which one configuration is worse (all
    its seeds): the tables and the findings it enters ("L1 ... for every scale treatment and
    every β") change, and the check fails."""
    path = _results_copy(tmp_path) / report.LC / "runs.csv"
    runs = pd.read_csv(path)
    row = (
        (runs["likelihood"] == "laplace")
        & (runs["likelihood.scale"] == "learned")
        & (runs["beta"] == 1.0)
    )
    runs.loc[row, "test/nll"] = 0.0  # far worse than the Gaussian's
    runs.to_csv(path, index=False)
    changed = report.Data(tmp_path)
    assert "better likelihood** in 14 of 15 scale × β points" in report.findings(changed)
    problems = report.check(changed, files=texts)
    assert (
        f"{report.README}: a generated table differs (python experiments/report.py --write)"
        in problems
    )
    assert (
        f"{report.LC_README}: a generated table differs (python experiments/report.py --write)"
        in problems
    )


def _results_copy(tmp_path: Path) -> Path:
    """A copy of docs/results/ under ``tmp_path`` (the root of a ``report.Data``)."""
    shutil.copytree(
        REPO / "docs" / "results",
        tmp_path / "docs" / "results",
        ignore=shutil.ignore_patterns("*.png", "*.pdf"),
    )
    return tmp_path


def _bc_run(runs: pd.DataFrame, likelihood: str, beta: float, seed: int) -> pd.Series:
    return (runs["likelihood"] == likelihood) & (runs["beta"] == beta) & (runs["seed"] == seed)


def test_a_run_that_did_not_complete_enters_no_number_and_fails_the_check(
    tmp_path, texts, monkeypatch, capsys
):
    """One continuous Bernoulli run at β = 1 diverged: a NaN NLL but finite MSE, KL and
    scale. It enters no mean (the completed runs only), and the check fails naming the run
    and the configuration left with 2 of its 3 seeds, instead of publishing a 2-seed cell."""
    root = _results_copy(tmp_path)
    path = root / report.BC / "runs.csv"
    runs = pd.read_csv(path)
    row = _bc_run(runs, "continuous_bernoulli", 1.0, 2)
    run_dir = runs.loc[row, "run_dir"].item()
    runs.loc[row, "status"] = "diverged"
    runs.loc[row, "test/nll"] = float("nan")
    runs.loc[row, "test/mse"] = 0.9  # finite, and far from the others'
    runs.to_csv(path, index=False)
    data = report.Data(root)
    assert len(data.bc) == 26 and run_dir not in set(data.bc["run_dir"])
    others = runs[(runs["likelihood"] == "continuous_bernoulli") & (runs["beta"] == 1.0)]
    others = others[others["seed"] != 2]
    assert report.mean(data.bc[data.bc["run_dir"].isin(others["run_dir"])], "test/mse") == (
        pytest.approx(others["test/mse"].mean())
    )
    expected = [
        f"{report.BC}: run {run_dir} is diverged, not completed: it enters no table "
        "(run it again, or remove it and say why)",
        f"{report.BC}: likelihood=continuous_bernoulli, beta=1.0 has 2 of the 3 seeds "
        f"(seed 2: {run_dir} (diverged)): its means would be over fewer seeds than the others'",
    ]
    assert data.problems == expected
    assert report.check(data, files=texts) == expected
    with pytest.raises(report.RunsError, match="is diverged, not completed"):
        report.write(data, root)
    monkeypatch.setattr(report, "REPO", root)
    assert report.main(["--check"]) == 1
    assert run_dir in capsys.readouterr().err


def test_a_configuration_with_fewer_seeds_fails_the_check(tmp_path, texts):
    """A Laplace run lost from runs.csv, and every run of a Gaussian configuration: each
    configuration is named with the seeds it lacks."""
    root = _results_copy(tmp_path)
    path = root / report.LC / "runs.csv"
    runs = pd.read_csv(path)
    lost = (
        (runs["likelihood"] == "laplace")
        & (runs["likelihood.scale"] == "decoder")
        & (runs["beta"] == 4.0)
        & (runs["seed"] == 0)
    ) | (
        (runs["likelihood"] == "gaussian")
        & (runs["likelihood.scale"] == "fixed")
        & (runs["beta"] == 0.5)
    )
    runs[~lost].to_csv(path, index=False)
    data = report.Data(root)
    expected = [
        f"{report.LC}: likelihood=gaussian, likelihood.scale=fixed, beta=0.5 has 0 of the 3 "
        "seeds (seed 0: no run; seed 1: no run; seed 2: no run): its means would be over "
        "fewer seeds than the others'",
        f"{report.LC}: likelihood=laplace, likelihood.scale=decoder, beta=4.0 has 2 of the 3 "
        "seeds (seed 0: no run): its means would be over fewer seeds than the others'",
    ]
    assert data.problems == expected
    assert report.check(data, files=texts) == expected


def test_the_mse_finding_compares_only_models_scored_against_the_same_images(tmp_path):
    """The Bernoulli's test/mse is against the binarised images (docs/math.md §6): it is
    never ranked against the grey-level MSEs of the continuous Bernoulli and the Gaussian,
    and the text says so. A Bernoulli MSE below the Gaussian's leaves the finding as it is;
    a continuous Bernoulli one below it at one β changes it."""
    root = _results_copy(tmp_path)
    path = root / report.BC / "runs.csv"
    runs = pd.read_csv(path)
    runs.loc[runs["likelihood"] == "bernoulli", "test/mse"] = 0.001  # below every other
    runs.to_csv(path, index=False)
    means = runs.groupby(["likelihood", "beta"])["test/mse"].mean()
    findings = report.bc_findings(report.Data(root))
    assert (
        "**On the same dequantised grey levels the Gaussian reconstructs with a lower MSE than "
        "the continuous Bernoulli at every β** "
        f"({means['gaussian', 1.0]:.4f} against {means['continuous_bernoulli', 1.0]:.4f} at β = 1)"
    ) in findings
    assert "The Bernoulli's MSE (0.0010 at β = 1) is against the binarised images" in findings
    table = report.bernoulli_vs_continuous(report.Data(root))
    assert (
        f"| test MSE, dequantised grey levels (CB / G) | "
        f"{means['continuous_bernoulli', 0.5]:.4f} / {means['gaussian', 0.5]:.4f} |"
    ) in table
    assert "| test MSE, binarised images (B; not comparable with CB / G) | 0.0010 |" in table

    cb_at_2 = (runs["likelihood"] == "continuous_bernoulli") & (runs["beta"] == 2.0)
    runs.loc[cb_at_2, "test/mse"] = 0.0001
    runs.to_csv(path, index=False)
    findings = report.bc_findings(report.Data(root))
    assert "lower MSE than the continuous Bernoulli at some β only**" in findings


def test_write_replaces_a_doc_whole_or_not_at_all(tmp_path, monkeypatch):
    """--write writes each doc atomically: a write that fails (here fsync: a full disk)
    leaves the doc as it was, and no temp file beside it; then it succeeds."""
    root = _results_copy(tmp_path)
    for f in report.DOCS:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f, root / f)
    doc = root / report.BC_README
    stale = doc.read_text().replace(
        "| Bernoulli (binarised), test NLL | 112.1", "| Bernoulli (binarised), test NLL | 999.9"
    )
    assert stale != doc.read_text()
    doc.write_text(stale)
    data = report.Data(root)

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device"):
        report.write(data, root)
    assert doc.read_text() == stale
    assert [p.name for p in doc.parent.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    assert report.write(data, root) == [report.BC_README]
    assert doc.read_text() == (REPO / report.BC_README).read_text()


def test_evaluate_best_collects_with_this_python_and_writes_its_record_last(tmp_path, monkeypatch):
    """experiments/evaluate_best.py runs collect as ``sys.executable -m vaesweep`` (not a
    ``vaesweep`` found on PATH), and writes evaluation.txt only after every command
    succeeded (atomically), so it never describes scores runs.csv does not hold."""
    evaluate_best = load("evaluate_best")
    record = tmp_path / "docs" / "results" / "study" / "evaluation.txt"
    calls = []

    def run(cmd, **kwargs):
        calls.append((list(cmd), record.exists()))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(evaluate_best, "ROOT", tmp_path)
    monkeypatch.setattr(evaluate_best, "best_runs", lambda work, by, select: ["/runs/a", "/runs/b"])
    monkeypatch.setattr(subprocess, "run", run)
    argv = ["evaluate_best.py", "study", "--by", "likelihood", "--examples", "5"]
    monkeypatch.setattr(sys, "argv", argv)
    evaluate_best.main()
    work = tmp_path / "outputs" / "studies" / "study"
    collect = [sys.executable, "-m", "vaesweep", "collect", str(work)]
    assert [cmd for cmd, _ in calls if "collect" in cmd] == [
        [*collect, "-o", str(record.parent / "runs.csv")]
    ]
    assert len(calls) == 4 and not any(existed for _, existed in calls)
    assert (
        "eval.test_examples=5, for the 2 runs of the β (highest mean val/elbo over seeds, "
        "chosen on the validation split) of each likelihood" in record.read_text()
    )


def test_evaluate_best_chooses_on_the_validation_split(monkeypatch):
    """The β of each configuration is the one with the highest mean val/elbo over its
    completed seeds, whatever the test split says; ``--select test/nll`` takes the lowest
    mean test/nll instead. Written out by hand: at likelihood a, β = 1 has the higher mean
    validation ELBO (−9.5 against −10), β = 4 the lower mean test NLL (9.0 against 10.5)."""
    import vaesweep

    evaluate_best = load("evaluate_best")
    rows = [
        # run, likelihood, beta, seed, status, val/elbo, test/nll
        ("a1s0", "a", 1.0, 0, "completed", -9.0, 10.0),
        ("a1s1", "a", 1.0, 1, "completed", -10.0, 11.0),
        ("a4s0", "a", 4.0, 0, "completed", -10.0, 9.0),
        ("a4s1", "a", 4.0, 1, "completed", -10.0, 9.0),
        ("b1s0", "b", 1.0, 0, "completed", -5.0, 6.0),
        ("b1s1", "b", 1.0, 1, "completed", -5.0, 6.0),
        ("b4s0", "b", 4.0, 0, "completed", -4.0, 5.0),
        ("b4s1", "b", 4.0, 1, "completed", -4.0, 5.0),
        # not completed: never counted, never chosen
        ("b9s0", "b", 9.0, 0, "failed", 100.0, -100.0),
    ]
    columns = ["run_dir", "likelihood", "beta", "seed", "status", "val/elbo", "test/nll"]
    frame = pd.DataFrame(rows, columns=columns)
    monkeypatch.setattr(vaesweep, "load_results", lambda work: frame)
    assert evaluate_best.best_runs(Path("w"), ["likelihood"]) == ["a1s0", "a1s1", "b4s0", "b4s1"]
    by_test = evaluate_best.best_runs(Path("w"), ["likelihood"], "test/nll")
    assert by_test == ["a4s0", "a4s1", "b4s0", "b4s1"]


def test_number_format():
    assert report.num(-591.3636, ".1f") == "−591.4"
    assert report.num(1296.75, ",.0f") == "1,297"
    assert report.num(10.0, "d") == "10"
    assert report.num("0.5, 1, 4", "s") == "0.5, 1, 4"
    with pytest.raises(TypeError):
        report.num(True, "s")


# --- the committed data themselves ------------------------------------------------------------


def test_summary_and_runs_agree(data):
    assert report.summary_matches_runs(data)
    assert len(data.lc) == data.lc_sweep["n_jobs"] == len(data.lc_summary)
    assert len(data.bc) == sum(s["n_jobs"] for s in data.bc_sweep.values())


@pytest.mark.parametrize("study", ["likelihood_comparison", "bernoulli_vs_continuous"])
def test_no_absolute_paths_in_published_results(study):
    assert relative_paths.absolute_paths(REPO / "docs" / "results" / study) == []
    for path in (REPO / "docs" / "results" / study).rglob("*"):
        if path.suffix in {".csv", ".json", ".txt", ".md", ".tex"}:
            assert "/work/study/" not in path.read_text().replace("(/work/study/...)", "").replace(
                "--root /work/study", ""
            ), path


STUDY_PARTS = [
    "likelihood_comparison/sweep",
    "bernoulli_vs_continuous/discrete",
    "bernoulli_vs_continuous/gaussian_optimal",
]


@pytest.mark.parametrize("part", STUDY_PARTS)
def test_provenance_names_commit_machine_wall_time_and_load(part):
    """provenance.txt (experiments/run_study.sh) says where and how each sweep ran, and the
    commit it names is the one every run's results.json recorded, with no uncommitted
    changes."""
    text = (REPO / "docs" / "results" / part / "provenance.txt").read_text()
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    assert re.fullmatch(r"[0-9a-f]{40}", fields["commit"]), fields["commit"]
    assert re.fullmatch(r"\d+ s \(sweep exit status 0\)", fields["wall time"])
    assert "CPU cores" in fields["machine"] and "load average at the end" in fields["machine"]
    study = part.split("/")[0]
    runs = pd.read_csv(REPO / "docs" / "results" / study / "runs.csv")
    assert set(runs["commit"]) == {fields["commit"]} and not runs["dirty"].any()
    assert runs["versions"].str.contains("torch=").all()
    sweep = json.loads((REPO / "docs" / "results" / part / "sweep.json").read_text())
    assert sweep["versions"]["git"] == {"commit": fields["commit"], "dirty": False}


@pytest.mark.parametrize("study", ["likelihood_comparison", "bernoulli_vs_continuous"])
def test_paper_grade_evaluation_is_recorded(study):
    """evaluation.txt says what `vaesweep evaluate` scored and how long it took; runs.csv
    holds its columns for exactly the runs it names (3 seeds of each best configuration)."""
    text = (REPO / "docs" / "results" / study / "evaluation.txt").read_text()
    assert "eval.iwae_k=5000" in text and "wall time" in text and "load average" in text
    runs = pd.read_csv(REPO / "docs" / "results" / study / "runs.csv")
    columns = report.paper_columns(runs)
    assert sorted(columns) == [100, 5000]
    evaluated = runs[runs[columns[5000]].notna()]
    n = int(re.search(r"for the (\d+) runs", text)[1])
    assert len(evaluated) == n and runs[columns[100]].notna().sum() == n
    assert (
        evaluated.groupby(
            ["likelihood", "likelihood.scale"]
            if study == "likelihood_comparison"
            else ["likelihood"]
        ).size()
        == 3
    ).all()


def test_relative_paths_rewrites_and_is_idempotent(tmp_path):
    root = "/machine/checkout"
    sweep = f"{root}/outputs/studies/s/sweep"
    runs = tmp_path / "runs.csv"
    runs.write_text(
        "run_dir,sweep_dir,config.data.root,config.other,test/nll\n"
        f'"{sweep}/beta=1,seed=0",{sweep},{root}/data,/usr/share/datasets,-1.50\n'
    )
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text(
        f'{{\n  "sweep_dir": "{sweep}",\n  "jobs": []\n}}\n'
    )
    assert len(relative_paths.rewrite(tmp_path, root)) == 2
    assert runs.read_text() == (
        "run_dir,sweep_dir,config.data.root,config.other,test/nll\n"
        '"beta=1,seed=0",outputs/studies/s/sweep,data,/usr/share/datasets,-1.50\n'
    )
    assert (
        '"sweep_dir": "outputs/studies/s/sweep"' in (tmp_path / "sweep" / "sweep.json").read_text()
    )
    assert relative_paths.rewrite(tmp_path, root) == []  # idempotent
    # a path outside the root is left and reported
    assert relative_paths.absolute_paths(tmp_path) == [
        (f"{runs}:config.other", "/usr/share/datasets")
    ]


# --- the texts ---------------------------------------------------------------------------------

CITATION = "Rybkin, Daniilidis and Levine (ICML 2021)"


def markdown_files():
    return [
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "experiments").glob("*/README.md")),
    ]


def test_sigma_vae_is_cited():
    uncited = [
        str(path.relative_to(REPO))
        for path in markdown_files()
        if "σ-VAE" in path.read_text() and CITATION not in report.normalise(path.read_text())
    ]
    assert uncited == []


def test_readme_length():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_readme_gives_the_two_setup_commands():
    """Setup is two commands: one installs everything and runs the default job, one runs the
    tests (the command CI calls). Each is a code line of the README, and what it names
    exists: the extras in pyproject.toml, the constraints file, run.py."""
    lines = [line.strip() for line in (REPO / "README.md").read_text().splitlines()]
    install = 'pip install -e ".[test]" -c constraints-cpu.txt && python run.py'
    assert install in lines
    assert "python -m pytest" in lines
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^python3 -m pytest\s*(#|$)", ci, re.MULTILINE)
    optional = (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
    assert re.search(r"^test = \[", optional, re.M) and re.search(r"^ray = \[", optional, re.M)
    assert (REPO / "constraints-cpu.txt").is_file() and (REPO / "run.py").is_file()


# Phrases the docs quoted before the audit (issue 20) that the data contradict, or that no
# committed data back.
RETRACTED = [
    "within 15 nats",
    "learned slightly ahead",
    "0.99–1.04",
    "125–185",
    "600–900",
    "against 7.13 for",
    "2.97 against 7.13",
    "4.3 s per epoch",
    "β ∈ {0.25 … 4}",
    "| checkpoints |",
    "| gaussian | null (= 10⁻³) | value | 3.44 | 272.7 |",
]


def test_retracted_phrases_are_gone():
    found = [
        (str(path.relative_to(REPO)), phrase)
        for path in markdown_files()
        for phrase in RETRACTED
        if phrase in report.normalise(path.read_text())
    ]
    assert found == []
