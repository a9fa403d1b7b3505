"""The analysis commands on the directories users really have: a run collected twice, a
results.json cut short or lost, a run whose process was killed outright (it still says
running), a configuration none of whose runs completed, sweeps gathered
through symbolic links, a damaged metrics.csv, figures drawn again into the same folder, the
numbers of ``vaesweep evaluate`` in the figures, and output paths that cannot be written."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from vaesweep.analysis.figures import write_sweep_figures
from vaesweep.analysis.figures.table import results_table
from vaesweep.analysis.results import (
    ResultsError,
    aggregate,
    config_keys,
    excluded_message,
    frame,
    load_results,
    unaggregated_message,
    use_evaluation,
    write_frame,
)
from vaesweep.run import claims, record

from tiny_sweeps import copy_results, vaesweep

KEYS = ["likelihood", "likelihood.scale", "beta"]


def _edit(path: Path, **changes) -> dict:
    result = json.loads(path.read_text())
    result.update(changes)
    path.write_text(json.dumps(result))
    return result


def _aggregate(df: pd.DataFrame) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the count of excluded runs: asserted elsewhere
        return aggregate(df, metrics=["test/nll", "test/elbo"]).set_index(KEYS)


def _key(result: dict) -> tuple:
    config = result["config"]
    return (config["likelihood"]["name"], config["likelihood"]["scale"], config["beta"])


def test_a_run_collected_twice_counts_once(sweep, tmp_path):
    """Two copies of a sweep (as when a second sweep re-ran some configurations): every run
    of the second is a duplicate, and the aggregates equal those of one copy; a copy that
    differs only in where it logged is still the same run. One with other metrics (other
    code, a device that is not deterministic) is the same seed again, not one more: the
    newest run counts, the other is a duplicate, and the note (the table's too) names them."""
    first = copy_results(sweep, tmp_path / "a")
    second = copy_results(sweep, tmp_path / "b")
    for path in second[:2]:  # other logger and paths: not part of the result
        result = json.loads(path.read_text())
        result["config"]["logger"] = {"name": "wandb", "mode": "offline"}
        result["config"]["paths"] = {"output_dir": "/elsewhere"}
        path.write_text(json.dumps(result))
    changed = json.loads(second[2].read_text())
    changed["metrics"]["test/nll"] += 1.0  # same config and seed, other numbers
    second[2].write_text(json.dumps(changed))

    alone = load_results(tmp_path / "a")
    for newer, older, nll in ((first[2], second[2], None), (second[2], first[2], changed)):
        _edit(newer, finished_at="2099-01-01T00:00:00+00:00")  # finished after the other
        _edit(older, finished_at="2000-01-01T00:00:00+00:00")
        both = load_results(tmp_path / "a", tmp_path / "b")
        assert len(both) == 32 and (both["status"] == "duplicate").sum() == 16
        dup = both[both["status"] == "duplicate"]
        in_b = 15 + (older == second[2])  # the identical copies, and the older one
        assert sum(str(tmp_path / "b") in d for d in dup["run_dir"]) == in_b
        left_out = dup[dup["run_dir"] == str(older.parent)]
        assert (
            f"as {newer.parent}, which finished later, but other metrics"
            in left_out["error"].item()
        )
        (note,) = both.attrs["notes"]
        assert "1 pair(s) of runs share a configuration and seed but not their metrics" in note
        assert f"{older.parent} (left out) and {newer.parent}" in note
        assert both.attrs["caveats"] == [note]
        assert any(n.startswith("Note: 1 pair(s)") for n in results_table(both).notes)

        one, two = _aggregate(alone), _aggregate(both)
        for key, row in one.iterrows():
            other = two.loc[key]
            assert other["test/nll.count"] == row["test/nll.count"] == 2  # seeds, not runs
            if key == _key(changed) and nll is not None:  # the newer run's numbers
                assert other["test/nll.mean"] != row["test/nll.mean"]
                continue
            assert other["test/nll.mean"] == row["test/nll.mean"]
            assert other["test/nll.std"] == row["test/nll.std"]

    proc = vaesweep(["collect", str(tmp_path / "a"), str(tmp_path / "b"), "--aggregate"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "32 runs (16 completed, 16 duplicate)" in proc.stderr
    assert "not their metrics" in proc.stderr


def test_runs_that_differ_only_where_they_logged_are_one_configuration(sweep, tmp_path):
    copy_results(sweep, tmp_path / "csv")
    for path in copy_results(sweep, tmp_path / "wandb"):
        result = json.loads(path.read_text())
        result["overrides"].append("logger=wandb")
        result["config"]["logger"] = {"name": "wandb", "mode": "offline"}
        path.write_text(json.dumps(result))
    for path in (tmp_path / "wandb").rglob("results.json"):  # relaunched with sweep.resume
        result = json.loads(path.read_text())
        result["overrides"].append(f"sweep.resume={tmp_path / 'wandb'}")
        result["config"]["sweep"]["resume"] = str(tmp_path / "wandb")
        path.write_text(json.dumps(result))
    df = load_results(tmp_path)
    assert "logger" in df.attrs["swept"] and "logger" not in config_keys(df)
    assert "sweep.resume" not in df.attrs["swept"] and "sweep.resume" not in df.columns
    assert (df["status"] == "duplicate").sum() == 16
    stats = _aggregate(df)
    assert len(stats) == 8 and (stats["test/nll.count"] == 2).all()


def test_an_unreadable_results_file_is_listed_and_the_others_collected(sweep, tmp_path):
    copies = copy_results(sweep, tmp_path)
    whole = copies[3].read_bytes()
    copies[3].write_bytes(whole[: len(whole) // 2])  # cut short mid-write by another tool
    copies[5].write_text("[1, 2]")  # JSON, but not a result
    reference = load_results(sweep)
    df = load_results(tmp_path)
    assert list(df["status"].value_counts().items()) == [("completed", 14), ("unreadable", 2)]
    assert df.attrs["swept"] == reference.attrs["swept"]  # the lost rows change no column
    bad = df[df["status"] == "unreadable"].set_index("job_name")
    assert set(bad.index) == {copies[3].parent.name, copies[5].parent.name}
    assert all(isinstance(e, str) and "not a valid results file" in e for e in bad["error"])
    (note,) = df.attrs["notes"]
    assert note.startswith("2 results.json could not be read") and str(copies[3]) in note
    proc = vaesweep(["collect", str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "16 runs (14 completed, 2 unreadable)" in proc.stderr and str(copies[5]) in proc.stderr


def test_a_results_file_with_fields_of_the_wrong_type_is_unreadable_and_named(sweep, tmp_path):
    """Valid JSON whose fields hold types vaesweep never writes there (edited by hand, or
    written by another tool): each such file is an unreadable row naming its field, and
    the other runs are collected and drawn, where collect and figures used to stop with a
    traceback (a string for the dataset or the error) or a garbled note (a string of
    overrides: every character an override)."""
    copies = copy_results(sweep, tmp_path / "runs")
    _edit(copies[2], dataset="mnist_small")
    _edit(copies[4], status="failed", error="boom")
    _edit(copies[6], overrides="beta=1")
    _edit(copies[8], metrics={**json.loads(copies[8].read_text())["metrics"], "test/nll": "low"})
    df = load_results(tmp_path / "runs")
    assert list(df["status"].value_counts().items()) == [("completed", 12), ("unreadable", 4)]
    bad = df[df["status"] == "unreadable"].set_index("job_name")["error"]
    for path, field in (
        (copies[2], "'dataset' is a string, not an object"),
        (copies[4], "'error' is a string, not an object"),
        (copies[6], "'overrides' is a string, not an array"),
        (copies[8], "metric 'test/nll' is a string, not a number"),
    ):
        assert bad[path.parent.name] == f"{path} is not a valid results file ({field})"
    assert "" not in df.columns and not any("(, " in n for n in df.attrs["notes"])
    (note,) = [n for n in df.attrs["notes"] if "results.json" in n]
    assert note.startswith("4 results.json hold a field of a type vaesweep never writes")
    assert f"{copies[2]} ('dataset' is a string, not an object)" in note
    reference = _aggregate(load_results(sweep))
    stats = _aggregate(df)
    assert (stats["test/nll.count"] <= reference["test/nll.count"]).all()
    assert stats["test/nll.count"].sum() == 12
    proc = vaesweep(["collect", str(tmp_path / "runs")], tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "16 runs (12 completed, 4 unreadable)" in proc.stderr and str(copies[4]) in proc.stderr
    proc = vaesweep(["figures", str(tmp_path / "runs"), "--out", str(tmp_path / "fig")], tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "fig" / "nll_elbo_vs_beta.pdf").is_file()


# A job's process as vaesweep.run.jobs runs one: it claims its directory, then records
# ``running`` (a new attempt of the configuration found there), then trains (sleeps).
# ``claim``: it only claims the directory, whose result is left as it is.
JOB = """
import sys, time
from vaesweep.run import claims, record
run_dir, what = sys.argv[1:]
claim = claims.acquire(run_dir)
if what == "run":
    old = record.read(run_dir)
    keys = ("config", "overrides", "seed", "job_name", "sweep_dir")
    record.RunRecord(run_dir, *(old[k] for k in keys))
print("ready", flush=True)
time.sleep(600)
"""


def _job(run_dir: Path, what: str = "run") -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", JOB, str(run_dir), what], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _status(df: pd.DataFrame, run_dir: Path) -> tuple[str, str | None]:
    row = df.set_index("run_dir").loc[str(run_dir)]
    return row["status"], row["error"] if isinstance(row["error"], str) else None


def _killed_notes(df: pd.DataFrame) -> list[str]:
    return [n for n in df.attrs["notes"] if "say running but no process runs them" in n]


def test_a_job_killed_outright_is_killed_not_running(sweep, tmp_path):
    """A SIGKILLed job's results.json says running for ever; collect calls it killed (its
    claim is left with a dead pid), names it in a note, and counts it nowhere. While its
    process lives it is running."""
    copies = copy_results(sweep, tmp_path)
    job = copies[0].parent
    proc = _job(job)
    try:
        assert record.status(job) == "running" and (job / claims.CLAIM_FILE).is_file()
        df = load_results(tmp_path)
        assert _status(df, job) == ("running", None)
        assert _killed_notes(df) == []
    finally:
        proc.kill()
        proc.wait()
    assert record.status(job) == "running"  # what the file says for ever
    assert claims.read_claim(job).pid == proc.pid  # left by the killed process
    df = load_results(tmp_path)
    status, error = _status(df, job)
    assert status == "killed"
    assert "says running, but its claim is stale" in error and f":{proc.pid} " in error
    (note,) = _killed_notes(df)
    assert note.startswith("1 run(s) say running but no process runs them (killed outright")
    assert note.endswith(f"the same command in the same directory resumes them: {job.name}")
    assert "1 killed" in excluded_message(df)
    stats = _aggregate(df)
    assert stats["test/nll.count"].sum() == 15  # the killed run counted nowhere
    cli = vaesweep(["collect", str(tmp_path)], tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert "16 runs (15 completed, 1 killed)" in cli.stderr
    assert f"note: {note}" in cli.stderr


def test_a_running_result_without_a_live_claim_is_killed(sweep, tmp_path):
    """No claim at all (the job ended without removing it, or the file was copied away from
    its process): killed. Another host's claim is stale by its heartbeat, as old as the
    run's own sweep.claim_timeout_s allows."""
    copies = copy_results(sweep, tmp_path)
    old = [json.loads(p.read_text()) for p in copies[:3]]
    assert all(o["config"]["sweep"]["claim_timeout_s"] == 300 for o in old)
    for path, result, timeout in zip(copies[:3], old, (300, 300, 60), strict=True):
        result["config"]["sweep"]["claim_timeout_s"] = timeout
        keys = ("config", "overrides", "seed", "job_name", "sweep_dir")
        record.RunRecord(path.parent, *(result[k] for k in keys))  # what a job writes first
    unclaimed, busy, quiet = (p.parent for p in copies[:3])
    for run_dir in (busy, quiet):  # claimed 100 s ago on another host (as claims.py writes)
        holder = {"host": "node-elsewhere", "pid": 4242, "process_start": "1",
                  "token": run_dir.name[:8], "started_at": "2026-12-06T00:00:00+00:00"}  # fmt: skip
        (run_dir / claims.CLAIM_FILE).write_text(json.dumps(holder))
        beat = time.time() - 100
        os.utime(run_dir / claims.CLAIM_FILE, (beat, beat))
    df = load_results(tmp_path)
    status, error = _status(df, unclaimed)
    assert status == "killed" and "no process holds its .claim" in error
    assert _status(df, busy) == ("running", None)  # 100 s < its claim_timeout_s = 300
    status, error = _status(df, quiet)  # 100 s > its claim_timeout_s = 60
    assert status == "killed" and "held by node-elsewhere:4242" in error
    (note,) = _killed_notes(df)
    assert note.startswith("2 run(s) say running") and unclaimed.name in note
    assert quiet.name in note and busy.name not in note
    assert list(df["status"].value_counts().items()) == [
        ("completed", 13),
        ("killed", 2),
        ("running", 1),
    ]


def test_a_completed_run_is_completed_whatever_its_claim(sweep, tmp_path):
    """A completed result is not judged by its claim: one left by a process killed after
    the job ended, or one a live process holds (a relaunch looking at it)."""
    copies = copy_results(sweep, tmp_path)
    left, held = copies[0].parent, copies[1].parent
    proc = _job(left, "claim")
    proc.kill()
    proc.wait()
    assert claims.read_claim(left).is_stale(claims.DEFAULT_TIMEOUT_S)
    live = _job(held, "claim")
    try:
        df = load_results(tmp_path)
    finally:
        live.kill()
        live.wait()
    assert (df["status"] == "completed").all() and df["error"].isna().all()
    assert _killed_notes(df) == []
    assert df.drop(columns="run_dir").equals(load_results(sweep).drop(columns="run_dir"))


def test_jobs_of_a_sweep_record_without_a_result_are_named(sweep, tmp_path):
    copies = copy_results(sweep, tmp_path)
    record = json.loads((sweep / "sweep.json").read_text())
    (tmp_path / "sweep.json").write_text(json.dumps(record))
    assert load_results(tmp_path).attrs["notes"] == []
    copies[0].unlink()
    lost = copies[0].parent.name
    record["n_jobs"] = 18  # two more that never started
    (tmp_path / "sweep.json").write_text(json.dumps(record))
    (note,) = load_results(tmp_path).attrs["notes"]
    assert note.startswith(f"{tmp_path}: sweep.json counts 18 jobs, 15 have a results.json")
    assert f"lost from jobs that ran: {lost}" in note


def test_a_configuration_without_a_completed_run_is_named_in_the_table(sweep, tmp_path):
    copies = copy_results(sweep, tmp_path)
    key = _key(json.loads(copies[0].read_text()))
    hit = 0
    for path in copies:
        if _key(json.loads(path.read_text())) == key:
            _edit(
                path,
                status="diverged",
                metrics={},
                error={"type": "NonFiniteScore", "message": "nan"},
            )
            hit += 1
    assert hit == 2  # both seeds
    df = load_results(tmp_path)
    label = f"likelihood={key[0]},likelihood.scale={key[1]},beta={key[2]}"
    assert unaggregated_message(df) == (
        f"1 configuration(s) without a completed run, so not in the aggregates: {label} (2 diverged)"
    )
    assert unaggregated_message(load_results(sweep)) is None
    table = results_table(df)
    assert len(table.rows) == 7
    assert "Not shown: 1 configuration(s) without a completed run" in table.to_markdown()


def test_sweeps_gathered_through_symbolic_links_are_found(sweep, tmp_path):
    copy_results(sweep, tmp_path / "real")
    links = tmp_path / "links"
    links.mkdir()
    (links / "s1").symlink_to(tmp_path / "real")
    (links / "loop").symlink_to(links)  # a cycle is walked once
    df = load_results(links)
    assert len(df) == 16 and (df["status"] == "completed").all()


def _copy_sweep(sweep: Path, dest: Path, keep=lambda run: True) -> Path:
    """A copy of the sweep's run directories (all files), those ``keep`` accepts."""
    dest.mkdir()
    for run in sorted(p.parent for p in sweep.glob("*/results.json")):
        if keep(run):
            shutil.copytree(run, dest / run.name)
    return dest


@pytest.mark.slow
def test_a_damaged_history_is_named_and_the_figures_still_drawn(sweep, tmp_path):
    runs = _copy_sweep(sweep, tmp_path / "runs")
    optimal = next(p for p in sorted(runs.iterdir()) if "likelihood.scale=optimal" in p.name)
    (optimal / "metrics.csv").write_text("")
    report = write_sweep_figures(load_results(runs), tmp_path / "fig")
    assert any(
        n.startswith(f"{optimal / 'metrics.csv'} not read") and "EmptyDataError" in n
        for n in report.notes
    )
    assert (tmp_path / "fig" / "scale_history.pdf").is_file()


@pytest.mark.slow
def test_figures_drawn_again_name_the_files_left_from_before(sweep, tmp_path):
    out = tmp_path / "fig"
    write_sweep_figures(load_results(sweep), out)
    assert (out / "reconstructions_beta2.png").is_file()
    copy_results(sweep, tmp_path / "half")
    for path in (tmp_path / "half").rglob("results.json"):
        if json.loads(path.read_text())["config"]["beta"] == 2:
            path.unlink()
    before = {p.name for p in out.iterdir()}
    report = write_sweep_figures(load_results(tmp_path / "half"), out)
    stale = before - {p.name for p in report.written}  # β no longer swept; no images copied
    assert {"nll_elbo_vs_beta.pdf", "reconstructions_beta2.png"} <= stale
    (note,) = [n for n in report.notes if "from an earlier run" in n]
    assert note.startswith(f"{len(stale)} file(s) in {out} are from an earlier run")
    assert ", ".join(sorted(stale)[:6]) in note
    assert (out / "reconstructions_beta2.png").is_file()  # kept: only named


def _evaluate_by_hand(copies: list[Path], name: str, shift: float) -> dict[str, float]:
    """An evaluation file beside each result (as vaesweep evaluate writes one), its test/nll
    the recorded one plus ``shift``; returns {run_dir: that value}."""
    values = {}
    for path in copies:
        result = json.loads(path.read_text())
        metrics = {k: v for k, v in result["metrics"].items() if k.startswith("test/")}
        metrics["test/nll"] += shift
        (path.parent / "evaluations").mkdir()
        (path.parent / "evaluations" / f"{name}.json").write_text(
            json.dumps({"status": "completed", "metrics": metrics})
        )
        values[str(path.parent)] = metrics["test/nll"]
    return values


def test_figures_can_use_the_numbers_of_an_evaluation(sweep, tmp_path):
    copies = copy_results(sweep, tmp_path / "runs")
    name = "iwae_k=5000,checkpoint=last"
    values = _evaluate_by_hand(copies, name, -0.5)
    df = load_results(tmp_path / "runs")
    assert (
        "Test metrics: at training time, NLL by the IWAE bound with K = "
        in results_table(df).to_markdown()
    )
    assert f"also evaluated: {name}" in results_table(df).to_markdown()
    used = use_evaluation(df, name)
    assert used["test/nll"].tolist() == [values[r] for r in used["run_dir"]]
    assert (used["test/elbo"] == df["test/elbo"]).all()  # the evaluation's own, unchanged here
    assert f"Test metrics: vaesweep evaluate, {name}." in results_table(used).to_markdown()
    with pytest.raises(
        ResultsError, match=r"iwae_k=50: no run holds it; evaluations found: iwae_k=5000"
    ):
        use_evaluation(df, "iwae_k=50")
    shutil.rmtree(copies[0].parent / "evaluations")
    partly = load_results(tmp_path / "runs")
    with pytest.raises(
        ResultsError,
        match=r"1 of 16 completed runs lack it .* eval\.iwae_k=5000 eval\.checkpoint=last",
    ):
        use_evaluation(partly, name)
    proc = vaesweep(
        ["figures", str(tmp_path / "runs"), "--evaluation", name, "--out", str(tmp_path / "f")],
        tmp_path,
    )
    assert proc.returncode == 1 and "1 of 16 completed runs lack it" in proc.stderr
    assert not (tmp_path / "f").exists()


def test_the_table_file_is_readable_by_the_group_and_bad_paths_are_named(sweep, tmp_path):
    df = load_results(sweep)
    old = os.umask(0o022)
    try:
        for suffix in (".csv", ".parquet"):
            path = write_frame(df, tmp_path / f"runs{suffix}")
            assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(ResultsError, match=r"d\.csv: a directory"):
        write_frame(df, tmp_path / "d.csv")
    with pytest.raises(ResultsError, match=r"is a file, not a directory"):
        write_frame(df, tmp_path / "runs.csv" / "x.csv")
    proc = vaesweep(["figures", str(sweep), "--out", str(tmp_path / "runs.csv")], tmp_path)
    assert proc.returncode == 1 and "a file, not a directory" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "runs.csv", "runs.parquet"]


@pytest.mark.slow
def test_evaluate_says_when_there_is_nothing_to_evaluate(sweep, tmp_path):
    proc = vaesweep(["evaluate", str(tmp_path / "nope"), "eval.iwae_k=10"], tmp_path)
    assert proc.returncode == 1 and "nope: no such file or directory" in proc.stderr
    copies = copy_results(sweep, tmp_path / "failed")
    for path in copies[:2]:
        _edit(path, status="failed", metrics={}, error={"type": "E", "message": "m"})
    for path in copies[2:]:
        path.unlink()
    proc = vaesweep(["evaluate", str(tmp_path / "failed"), "eval.iwae_k=10"], tmp_path)
    assert proc.returncode == 1
    assert "2 not completed, not evaluated (2 failed)" in proc.stderr
    for path in copies[:2]:  # each named, with its status
        assert f"{path.parent.resolve()}: not evaluated, failed\n" in proc.stderr
    assert "none of the 2 run(s) found completed (2 failed): nothing to evaluate" in proc.stderr


# Two sweeps of one configuration (gaussian, fixed scale, β = 0.5): "F", seeds 0 and 1 with
# the default config, and "G", seeds 2 and 3, as `python run.py -m seed=2,3 ...` with a user
# primary config (--config-dir D --config-name mine) that may set other values. Made from
# the real sweep's results; trainer.max_epochs is on no command line (the default's 20).
ONE = ("gaussian", "fixed", 0.5)


def _sweeps_of_one_configuration(sweep: Path, root: Path, edit_g=lambda result: None) -> tuple:
    for name, shift in (("F", 0), ("G", 2)):
        for path in copy_results(sweep, root / name):
            result = json.loads(path.read_text())
            if _key(result) != ONE:
                shutil.rmtree(path.parent)
                continue
            seed = result["seed"] + shift
            result["overrides"] = [
                f"seed={seed}" if o.startswith("seed=") else o
                for o in result["overrides"]
                if not o.startswith("trainer.max_epochs=")
            ]
            result.update(seed=seed, job_name=f"seed={seed}")
            result["config"]["seed"] = seed
            result["config"]["trainer"]["max_epochs"] = 20
            if name == "G":
                edit_g(result)
            path.write_text(json.dumps(result))
    return root / "F", root / "G"


def _max_epochs(value):
    def edit(result: dict) -> None:
        result["config"]["trainer"]["max_epochs"] = value

    return edit


def test_runs_whose_configs_differ_off_the_command_line_are_not_pooled(sweep, tmp_path):
    """Sweep G's primary config set trainer.max_epochs: 3 where F ran the default 20: the
    aggregates, the table and the CLI give one row per max_epochs, two seeds each, and a note
    names the key no command line swept."""
    f, g = _sweeps_of_one_configuration(sweep, tmp_path, _max_epochs(3))
    df = load_results(f, g)
    assert len(df) == 4 and (df["status"] == "completed").all()
    assert sorted(df["config.trainer.max_epochs"]) == [3, 3, 20, 20]
    assert df.attrs["swept"] == ["trainer.max_epochs", "seed"]
    assert config_keys(df) == ["trainer.max_epochs"]
    note = "runs differ in trainer.max_epochs (3, 20), which no command line swept: grouped by it"
    assert df.attrs["notes"] == [note]
    stats = aggregate(df, metrics=["test/nll"])
    assert stats["trainer.max_epochs"].tolist() == [3, 20]
    assert stats["test/nll.count"].tolist() == [2, 2]
    table = results_table(df)  # what `vaesweep figures` writes as results_table.md|.tex
    assert table.keys == ["trainer.max_epochs"] and [r[0] for r in table.rows] == ["3", "20"]
    assert "over 2 seeds" in table.to_markdown() and "4 seeds" not in table.to_markdown()
    proc = vaesweep(["collect", str(f), str(g), "--aggregate"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"note: {note}" in proc.stderr
    head, *lines = proc.stdout.strip().splitlines()
    assert head.split()[0] == "trainer.max_epochs" and len(lines) == 2
    assert [line.split()[0] for line in lines] == ["3", "20"]


def test_seeds_of_one_configuration_in_two_sweeps_still_pool(sweep, tmp_path):
    """Identical configs: one group of 4 seeds. Values that differ only in how they are
    written (20 and 20.0), or a key a run lacks (an older version's results.json) where the
    others hold one value, or null, split nothing; a key that is null in one sweep and set
    in the other does."""
    f, g = _sweeps_of_one_configuration(sweep, tmp_path / "same")
    df = load_results(f, g)
    assert df.attrs["swept"] == ["seed"] and df.attrs["notes"] == []
    stats = aggregate(df, metrics=["test/nll"])
    assert len(stats) == 1 and stats["test/nll.count"].tolist() == [4]

    def older(result: dict) -> None:
        result["config"]["trainer"]["max_epochs"] = 20.0
        del result["config"]["likelihood"]["scale_lr"]  # 0.01 in F
        del result["config"]["eval"]["iwae_chunk"]  # null in F

    f, g = _sweeps_of_one_configuration(sweep, tmp_path / "older", older)
    df = load_results(f, g)
    assert df.attrs["swept"] == ["seed"] and df.attrs["notes"] == []
    assert results_table(df).rows == results_table(load_results(tmp_path / "same")).rows

    def null_lr(result: dict) -> None:
        result["config"]["likelihood"]["scale_lr"] = None  # the networks' lr: a setting

    f, g = _sweeps_of_one_configuration(sweep, tmp_path / "null", null_lr)
    df = load_results(f, g)
    assert config_keys(df) == ["likelihood.scale_lr"]
    assert df.attrs["notes"] == [
        "runs differ in likelihood.scale_lr (0.01, null), which no command line swept: "
        "grouped by it"
    ]
    assert aggregate(df, metrics=["test/nll"])["test/nll.count"].tolist() == [2, 2]


def test_keys_that_change_no_result_never_split_a_configuration(sweep, tmp_path):
    def elsewhere(result: dict) -> None:
        config = result["config"]
        config["logger"] = {"name": "wandb", "project": "other", "mode": "offline"}
        config["paths"]["output_dir"] = "/elsewhere"
        config["threads"] = 4
        config["label"]["note"] = "second sweep"
        config["trainer"]["enable_model_summary"] = not config["trainer"]["enable_model_summary"]

    f, g = _sweeps_of_one_configuration(sweep, tmp_path, elsewhere)
    df = load_results(f, g)
    assert set(df["config.logger.project"].fillna("-")) == {"-", "other"}
    assert df.attrs["swept"] == ["seed"] and df.attrs["notes"] == []
    assert aggregate(df, metrics=["test/nll"])["test/nll.count"].tolist() == [4]
    assert len(results_table(df).rows) == 1


def test_a_config_group_chosen_off_the_command_line_is_named_like_the_group(sweep, tmp_path):
    """G's primary config chose likelihood: laplace (F: gaussian, the default; neither on a
    command line): the column is ``likelihood``, as when swept, and the keys the option sets
    (likelihood._target_) are not keys of their own; a key that differs with it outside the
    group (optimizer.lr) is."""

    def laplace(result: dict) -> None:
        ours = result["config"]["likelihood"]
        theirs = next(
            r["config"]["likelihood"]
            for r in map(json.loads, map(Path.read_text, sorted(sweep.rglob("results.json"))))
            if _key(r) == ("laplace", *ONE[1:])
        )
        ours.update(theirs)
        result["config"]["optimizer"]["lr"] = 0.002

    f, g = _sweeps_of_one_configuration(sweep, tmp_path, laplace)
    for path in tmp_path.rglob("results.json"):
        _edit(path, overrides=[o for o in json.loads(path.read_text())["overrides"]
                               if not o.startswith("likelihood=")])  # fmt: skip
    df = load_results(f, g)
    assert df.attrs["swept"] == ["likelihood", "optimizer.lr", "seed"]
    assert df.attrs["notes"] == [
        "runs differ in likelihood (gaussian, laplace) and optimizer.lr (0.001, 0.002), "
        "which no command line swept: grouped by them"
    ]
    stats = aggregate(df, metrics=["test/nll"])
    assert stats["likelihood"].tolist() == ["gaussian", "laplace"]
    assert stats["test/nll.count"].tolist() == [2, 2]


def _hand_row(seed: int, overrides: list[str], nll: float, max_epochs: int = 20) -> dict:
    """A completed run as build_frame takes it (what load_results reads from a
    results.json), built by hand: the Gaussian, σ fixed, β = 1, ``max_epochs`` epochs."""
    config = {
        "seed": seed,
        "beta": 1.0,
        "data": {"name": "digits", "batch_size": 64},
        "likelihood": {"name": "gaussian", "scale": "fixed"},
        "trainer": {"max_epochs": max_epochs},
        "logger": {"name": "csv"},
    }
    return {
        "identity": {
            "run_dir": f"runs/{len(overrides)}-{seed}",
            "job_name": ",".join(overrides),
            "status": "completed",
            "seed": seed,
            "dataset": "digits",
            "dataset_fingerprint": "f" * 64,
        },
        "metrics": {"test/nll": nll},
        "config": frame.flatten(config),
        "overrides": frame.parse_overrides(overrides),
    }


def test_an_override_that_only_selects_config_groups_splits_no_configuration():
    """Seeds 0, 1 ran with experiment=likelihood_comparison on their command line, seeds 2,
    3 with trainer=default: neither key is in a config (no value of its own, not even a
    ``name``), so the runs of identical configs are one configuration of 4 seeds; when
    seeds 2, 3 ran 3 epochs, they split by trainer.max_epochs, the config key that differs."""
    nlls = [10.0, 11.0, 13.0, 14.0]
    rows = [
        _hand_row(s, ["experiment=likelihood_comparison", f"seed={s}"], nlls[s]) for s in (0, 1)
    ] + [_hand_row(s, ["trainer=default", f"seed={s}"], nlls[s]) for s in (2, 3)]
    df = frame.build_frame(rows)
    assert df.attrs["swept"] == ["seed"] and config_keys(df) == []
    assert "experiment" not in df.columns and "trainer" not in df.columns
    stats = aggregate(df, metrics=["test/nll"])
    assert stats["test/nll.count"].tolist() == [4]
    assert stats["test/nll.mean"].tolist() == [12.0]
    assert len(results_table(df).rows) == 1
    assert df.attrs["notes"] == [
        f"{key} ({value}, null) differs between the runs but only selects config groups (no "
        "value of its own in the config): runs are told apart by the config values that "
        "differ, not by it"
        for key, value in (("experiment", "likelihood_comparison"), ("trainer", "default"))
    ]

    rows = [
        _hand_row(s, ["experiment=likelihood_comparison", f"seed={s}"], nlls[s]) for s in (0, 1)
    ] + [_hand_row(s, ["trainer=default", f"seed={s}"], nlls[s], max_epochs=3) for s in (2, 3)]
    df = frame.build_frame(rows)
    assert df.attrs["swept"] == ["trainer.max_epochs", "seed"]
    stats = aggregate(df, metrics=["test/nll"])
    assert stats["trainer.max_epochs"].tolist() == [3, 20]
    assert stats["test/nll.count"].tolist() == [2, 2]
    assert stats["test/nll.mean"].tolist() == [13.5, 10.5]


def test_runs_of_two_cpu_kernel_sets_are_named_in_the_notes():
    """One commit, the same packages, but runs on an AVX-512 and an AVX2 machine (torch's
    kernels sum in other orders, and per-pixel scales trained to other numbers): the note
    names the cpu_capability of each."""
    rows = [_hand_row(s, [f"seed={s}"], 10.0 + s) for s in range(3)]
    for i, row in enumerate(rows):
        row["identity"].update(
            commit="89ef4567" + "0" * 32, dirty=False,
            versions=f"python=3.11.7 torch=2.13.0 cpu_capability={'AVX2' if i else 'AVX512'}",
        )  # fmt: skip
    (note,) = frame.build_frame(rows).attrs["caveats"]
    assert (
        "commit 89ef4567, cpu_capability=AVX512: 1 run; commit 89ef4567, cpu_capability=AVX2: 2 runs"
        in note
    )


def test_an_int_batch_limit_stays_an_int_beside_a_run_without_one():
    """trainer.limit_train_batches=1 (one batch an epoch) in two completed runs, beside a
    failed run whose config lacks the key (an older results.json): the column kept the
    ints, so the caption says one batch, not the whole training set (1.0, as a float column
    with a missing value had it)."""
    from vaesweep.analysis.figures.captions import setting

    rows = [_hand_row(s, [f"seed={s}"], 10.0 + s) for s in (0, 1, 2)]
    for row in rows[:2]:
        row["config"]["trainer.limit_train_batches"] = 1
    rows[2]["identity"]["status"] = "failed"
    df = frame.build_frame(rows)
    column = df["config.trainer.limit_train_batches"].tolist()
    assert column[:2] == [1, 1] and all(type(v) is int for v in column[:2])
    assert column[2] is None or math.isnan(column[2])
    assert setting(df).startswith("Setting: digits, 20 epochs of 1 batch")


def test_runs_of_several_code_states_are_named_in_the_notes_and_the_table():
    """Runs of two commits (one with uncommitted changes and another torch) pooled in one
    frame: aggregated together, as the user asked, but the notes and the table say so,
    naming each state, the package that differs and the runs of each; runs of one state,
    or W&B rows (which do not record it), say nothing."""
    rows = [_hand_row(s, [f"seed={s}"], 10.0 + s) for s in range(4)]
    for i, row in enumerate(rows):
        old = i >= 3
        row["identity"].update(
            commit=("0123abcd" if old else "89ef4567") + "0" * 32,
            dirty=old,
            versions=f"python=3.11.7 torch={'2.0.0' if old else '2.13.0'} vaesweep=0.1.0",
        )
    df = frame.build_frame(rows)
    (note,) = df.attrs["caveats"]
    assert note == (
        "the completed runs come from 2 code states, aggregated and compared together: commit "
        "89ef4567, torch=2.13.0: 3 runs; commit 0123abcd (uncommitted changes), torch=2.0.0: "
        "1 run. Their numbers are comparable only if those changes left them alike (the "
        "frame's commit, dirty and versions columns tell the runs apart)"
    )
    assert note in df.attrs["notes"]
    assert f"Note: T{note[1:]}." in results_table(df).notes
    assert aggregate(df, metrics=["test/nll"])["test/nll.count"].tolist() == [4]

    same = frame.build_frame(rows[:3])
    assert same.attrs["caveats"] == [] and not any(
        "code state" in n for n in results_table(same).notes
    )
    for row in rows:
        row["identity"].update(commit=None, dirty=None, versions=None)  # as W&B rows
    assert frame.build_frame(rows).attrs["caveats"] == []


@pytest.mark.slow
def test_the_figures_of_a_moved_search_are_drawn_or_their_journal_named(tmp_path):
    """A 3-trial search, its directory moved (as results are archived): its optimisation
    history and importances are drawn from where its journal is now, not from the path
    results.json recorded (they used to vanish without a word); and a search whose journal
    is gone says so as a skipped figure, naming where it looked."""
    from conftest import TINY, run_cli

    proc = run_cli(
        [
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.params.beta=tag(log, interval(0.1, 10))",
            "hydra.sweeper.params.optimizer.lr=tag(log, interval(1e-4, 1e-2))",
            *TINY,
            "logger=csv",
            "threads=1",
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tmp_path / "archive").mkdir()
    moved = (tmp_path / "sweep").rename(tmp_path / "archive" / "search")
    proc = vaesweep(["figures", str(moved), "--out", str(tmp_path / "fig")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("optimization_history", "param_importances"):
        assert (tmp_path / "fig" / f"{name}.pdf").is_file(), proc.stderr
    assert "skipped optimization_history" not in proc.stderr

    (moved / "optuna_journal.log").rename(tmp_path / "journal.log")  # lost
    proc = vaesweep(["figures", str(moved), "--out", str(tmp_path / "fig2")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "fig2" / "optimization_history.pdf").exists()
    assert (
        f"skipped optimization_history_search: {moved}: the search's Optuna journal is not "
        f"at {moved / 'optuna_journal.log'} (beside sweep.json)"
    ) in proc.stderr


def test_runs_cut_short_by_max_time_are_captioned_with_what_they_trained():
    """trainer.max_time ended two seeds after 7 and 2 of their 20 epochs (results.json
    ``trained``): the setting line says what they trained, not max_epochs, and the notes and
    the table say the numbers depend on the machine; runs that trained their epochs, or
    results.json files without ``trained`` (older versions), say nothing of it."""
    from vaesweep.analysis.figures.captions import setting

    rows = [_hand_row(s, [f"seed={s}"], 10.0 + s) for s in range(3)]
    budgets = [(140, 7, "max_time"), (40, 2, "max_time"), (400, 20, "max_epochs")]
    for row, (steps, epochs, by) in zip(rows, budgets, strict=True):
        row["identity"].update(trained_steps=steps, trained_epochs=epochs, stopped_by=by)
    df = frame.build_frame(rows)
    assert df["trained_epochs"].tolist() == [7, 2, 20]
    assert setting(df).startswith(
        "Setting: digits, 2–7 epochs of at most 20 (trainer.max_time ended 2 of 3 runs)"
    )
    (note,) = df.attrs["caveats"]
    assert note.startswith(
        "trainer.max_time ended 2 of the 3 completed runs after 2–7 epochs: how far a run "
        "gets depends on the machine and its load"
    )
    assert f"Note: T{note[1:]}." in results_table(df).notes

    for row in rows:
        row["identity"].update(stopped_by="max_epochs", trained_epochs=20)
    assert frame.build_frame(rows).attrs["caveats"] == []
    assert setting(frame.build_frame(rows)).startswith("Setting: digits, 20 epochs")
    for row in rows:
        for key in ("trained_steps", "trained_epochs", "stopped_by"):
            del row["identity"][key]
    assert setting(frame.build_frame(rows)).startswith("Setting: digits, 20 epochs")


def test_of_three_runs_of_one_seed_the_newest_counts_whatever_its_metrics():
    """Runs A (metrics m1, oldest), B (m2) and C (m1, newest) of one configuration and seed:
    C counts (it was left out when only the first of each metrics group could be kept), A
    and B are duplicates of it, B named as the one with other metrics."""
    rows = [_hand_row(0, ["seed=0"], nll) for nll in (10.0, 11.0, 10.0)]
    for row, day in zip(rows, ("01", "02", "03"), strict=True):
        row["identity"]["run_dir"] += f"-{day}"
        row["finished_at"] = f"2026-12-{day}T00:00:00+00:00"
    df = frame.build_frame(rows)
    assert df["status"].tolist() == ["duplicate", "duplicate", "completed"]
    newest = df["run_dir"].iloc[2]
    assert (
        df["error"].iloc[0] == f"the same configuration, seed and metrics as {newest}: counted once"
    )
    assert df["error"].iloc[1].startswith(f"the same configuration and seed as {newest}, which")
    (note,) = df.attrs["caveats"]
    assert f"{df['run_dir'].iloc[1]} (left out) and {newest}" in note
    assert aggregate(df, metrics=["test/nll"])["test/nll.mean"].tolist() == [10.0]


def test_one_batch_and_the_whole_training_set_are_not_one_setting():
    """trainer.limit_train_batches=1 (one batch) in one run and 1.0 (all of them) in
    another: the frame keeps them apart, and so does the setting line (1 == 1.0 made it say
    "of 1 batch" for both)."""
    from vaesweep.analysis.figures.captions import setting

    rows = [_hand_row(s, [f"seed={s}"], 10.0 + s) for s in (0, 1)]
    rows[0]["config"]["trainer.limit_train_batches"] = 1
    rows[1]["config"]["trainer.limit_train_batches"] = 1.0
    df = frame.build_frame(rows)
    said = setting(df)
    assert "of 1 batch" not in said and "(trainer.limit_train_batches varies)" in said


def test_a_seed_recorded_once_as_beta_1_and_once_as_1_0_counts_once():
    """Hydra records ``beta=1`` (a grid's value) as the int 1 and the default ``beta: 1.0``
    as a float: the same run collected from both sweeps is one seed, a duplicate, not two
    (the text of the configs differed, so it was counted twice: mean 10.67 over 3 seeds
    instead of 11 over 2)."""
    rows = [
        _hand_row(0, ["beta=1", "seed=0"], 10.0),
        _hand_row(0, ["beta=1.0", "seed=0"], 10.0),
        _hand_row(1, ["beta=1.0", "seed=1"], 12.0),
    ]
    rows[0]["config"]["beta"] = 1  # as Hydra records the grid's "1"
    for row, name in zip(rows, ("a", "b", "c"), strict=True):
        row["identity"]["run_dir"] = f"runs/{name}"
    df = frame.build_frame(rows)
    assert sorted(df["status"]) == ["completed", "completed", "duplicate"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the excluded duplicate: asserted above
        stats = aggregate(df, metrics=["test/nll"])
    assert stats["test/nll.count"].tolist() == [2]
    assert stats["test/nll.mean"].tolist() == [11.0]
    assert stats["test/nll.std"].tolist() == [pytest.approx(math.sqrt(2.0))]


def test_a_sweep_of_one_batch_and_every_batch_aggregates_them_apart():
    """``trainer.limit_train_batches=1,1.0`` with two seeds each: Lightning trains one batch
    an epoch at 1 and every batch at 1.0, so the aggregates have two rows of two seeds (a
    column of numbers pooled them: one row of four); the column holds the values as
    written, and a note says why."""
    rows = []
    for limit, nlls in ((1, (100.0, 102.0)), (1.0, (50.0, 52.0))):
        for seed, nll in enumerate(nlls):
            row = _hand_row(seed, [f"trainer.limit_train_batches={limit}", f"seed={seed}"], nll)
            row["config"]["trainer.limit_train_batches"] = limit
            row["identity"]["run_dir"] = f"runs/{limit}-{seed}"
            rows.append(row)
    df = frame.build_frame(rows)
    assert df.attrs["swept"] == ["trainer.limit_train_batches", "seed"]
    stats = aggregate(df, metrics=["test/nll"])
    assert stats["trainer.limit_train_batches"].tolist() == ["1", "1.0"]
    assert stats["test/nll.mean"].tolist() == [101.0, 51.0]
    assert stats["test/nll.count"].tolist() == [2, 2]
    assert any("holds 1 (one batch) and 1.0 (every batch)" in n for n in df.attrs["notes"])
    assert len(results_table(df).rows) == 2


def test_a_swept_key_of_numbers_and_text_is_collected_in_order(sweep, tmp_path):
    """``trainer.precision=32,bf16-mixed`` (an int and a str) with one seed: the frame sorts
    numbers before text (sorting the column raised TypeError, a traceback from collect)."""
    rows = [
        _hand_row(0, [f"trainer.precision={p}"], nll) for p, nll in (("bf16-mixed", 2.0), (32, 1.0))
    ]
    for row, p in zip(rows, ("bf16-mixed", 32), strict=True):
        row["config"]["trainer.precision"] = p
        row["identity"]["run_dir"] = f"runs/{p}"
    df = frame.build_frame(rows)
    assert df["trainer.precision"].tolist() == [32, "bf16-mixed"]
    assert df["test/nll"].tolist() == [1.0, 2.0]


def _write_run(run_dir: Path, seed: int, nll: float) -> None:
    """A completed run's results.json, as a job writes it, made by hand (β = 1, ``seed``
    on its command line, test NLL ``nll``, ELBO −nll − 1)."""
    run_dir.mkdir(parents=True)
    config = {
        "seed": seed,
        "beta": 1.0,
        "data": {"name": "digits", "batch_size": 64},
        "likelihood": {"name": "gaussian", "scale": "fixed"},
        "logger": {"name": "csv"},
    }
    (run_dir / "results.json").write_text(
        json.dumps(
            {
                "status": "completed",
                "seed": seed,
                "job_name": f"seed={seed}",
                "overrides": [f"seed={seed}"],
                "config": config,
                "metrics": {"test/nll": nll, "test/elbo": -nll - 1, "test/kl": 2.0},
                "dataset": {"name": "digits", "fingerprint": "f" * 64},
                "finished_at": "2026-01-01T00:00:00+00:00",
            }
        )
    )


def test_of_copies_of_a_run_the_one_holding_evaluations_counts(tmp_path):
    """A sweep copied (s1 → s1e) and evaluated in the copy only: every run is in both, with
    the same finished_at. The first path read (s1) counted, so ``vaesweep figures s1e s1
    --evaluation NAME`` failed, claiming the runs lack it. The copies with the evaluation
    now count, whatever the order the directories are read in."""
    name = "iwae_k=10,checkpoint=last"
    nlls = {0: 80.0, 1: 82.0}
    for seed, nll in nlls.items():
        for sweep in ("s1", "s1e"):
            _write_run(tmp_path / sweep / f"seed={seed}", seed, nll)
        evaluations = tmp_path / "s1e" / f"seed={seed}" / "evaluations"
        evaluations.mkdir()
        (evaluations / f"{name}.json").write_text(
            json.dumps({"status": "completed", "metrics": {"test/nll": nll - 1.5}})
        )
    df = load_results(tmp_path / "s1e", tmp_path / "s1")
    counted = df[df["status"] == "completed"]
    assert sorted(counted["run_dir"]) == [str(tmp_path / "s1e" / f"seed={s}") for s in (0, 1)]
    assert (df["status"] == "duplicate").sum() == 2
    out = tmp_path / "figures"
    proc = vaesweep(
        ["figures", str(tmp_path / "s1e"), str(tmp_path / "s1"), "--evaluation", name,
         "--out", str(out)],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    md = (out / "results_table.md").read_text()
    # By hand: the evaluation's NLL, 78.5 and 80.5: mean 79.5, std √2 = 1.41.
    assert "| **79.50 ± 1.41** |" in md
    assert f"Test metrics: vaesweep evaluate, {name}." in md
