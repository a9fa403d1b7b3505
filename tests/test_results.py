"""Results as a DataFrame: collect a real tiny sweep, aggregate over seeds, bad input, W&B.

Expected values are read back from the results.json files with the json module, and the
aggregates recomputed with numpy, independently of vaesweep.analysis.results.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from vaesweep.analysis.results import (
    ResultsError,
    aggregate,
    frame_from_wandb,
    load_results,
    split_job_name,
    write_frame,
)
from vaesweep.run.config import CONF_DIR

from tiny_sweeps import copy_results, vaesweep
from wandb_offline import read_offline_run

SWEPT = ["likelihood", "likelihood.scale", "beta", "seed"]


def config_of(result: dict) -> tuple:
    """(likelihood, scale, β) of a results.json: the configuration, seeds pooled."""
    c = result["config"]
    return c["likelihood"]["name"], c["likelihood"]["scale"], c["beta"]


def raw_results(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))]


def test_collect_has_one_row_per_run_with_values_from_results_json(sweep):
    df = load_results(sweep)
    raw = {str(p.parent.resolve()): json.loads(p.read_text()) for p in sweep.rglob("results.json")}
    assert len(df) == len(raw) == 16
    assert df.attrs["swept"] == SWEPT
    # Keys overridden with one value for every run are not swept values.
    assert not {"data", "trainer.max_epochs", "logger", "eval.iwae_k"} & set(df.columns)
    for _, row in df.iterrows():
        r = raw[row["run_dir"]]  # run_dir: the directory the results.json was found in
        assert row["run_dir"] == r["run_dir"]  # ... which is where the run wrote it
        assert row["status"] == r["status"] == "completed"
        assert row["seed"] == r["seed"] and row["duration_s"] == r["duration_s"]
        assert row["job_name"] == r["job_name"] and row["sweep_dir"] == r["sweep_dir"]
        assert row["dataset"] == r["dataset"]["name"] == "digits"
        assert row["dataset_fingerprint"] == r["dataset"]["fingerprint"]
        # provenance: the source tree's commit and dirty flag, and the versions
        assert row["commit"] == r["versions"]["git"]["commit"]
        assert row["dirty"] == r["versions"]["git"]["dirty"]
        assert f"torch={r['versions']['torch']}" in row["versions"].split()
        assert f"vaesweep={r['versions']['vaesweep']}" in row["versions"].split()
        assert row["likelihood"] == r["config"]["likelihood"]["name"]
        assert row["likelihood.scale"] == r["config"]["likelihood"]["scale"]
        assert row["beta"] == r["config"]["beta"]
        for name, value in r["metrics"].items():
            assert row["final_beta" if name == "beta" else name] == pytest.approx(value, rel=0)
        assert row["config.likelihood.scale"] == r["config"]["likelihood"]["scale"]
        assert row["config.optimizer.lr"] == r["config"]["optimizer"]["lr"]
        assert json.loads(row["config.model.hidden"]) == r["config"]["model"]["hidden"]


def test_aggregate_over_two_seeds_equals_hand_computation(sweep):
    df = load_results(sweep)
    agg = aggregate(df, metrics=["test/nll", "test/elbo"])
    assert list(agg.columns[:3]) == ["likelihood", "likelihood.scale", "beta"]
    assert len(agg) == 8
    groups: dict[tuple, list[dict]] = {}
    for r in raw_results(sweep):
        groups.setdefault(config_of(r), []).append(r["metrics"])
    for _, row in agg.iterrows():
        runs = groups[(row["likelihood"], row["likelihood.scale"], row["beta"])]
        for metric in ("test/nll", "test/elbo"):
            values = np.array([m[metric] for m in runs])
            assert len(values) == 2 and row[f"{metric}.count"] == 2
            assert row[f"{metric}.mean"] == pytest.approx(np.mean(values), rel=1e-12)
            assert row[f"{metric}.std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
            assert row[f"{metric}.sem"] == pytest.approx(
                np.std(values, ddof=1) / math.sqrt(2), rel=1e-12
            )


def test_aggregate_counts_only_the_values_a_run_has(sweep):
    """A group of three completed runs, one of which has no test/bpd (as a Bernoulli run
    has none): test/nll pools all three, test/bpd the two that have it, with count, mean,
    std (ddof = 1) and sem = std / √count each over its own values (numpy)."""
    df = load_results(sweep)
    keys = ["likelihood", "likelihood.scale", "beta"]
    first = df.iloc[0]
    group = df[(df[keys] == first[keys]).all(axis=1)]
    assert len(group) == 2
    extra = group.iloc[[0]].copy()
    extra["seed"] = 99
    extra["test/nll"] += 3.0
    extra["test/bpd"] = np.nan
    frame = pd.concat([df, extra], ignore_index=True)
    frame.attrs = df.attrs
    agg = aggregate(frame, by=keys, metrics=["test/nll", "test/bpd"])
    row = agg.set_index(keys).loc[tuple(first[keys])]
    expected = {
        "test/nll": np.r_[group["test/nll"].to_numpy(), extra["test/nll"].to_numpy()],
        "test/bpd": group["test/bpd"].to_numpy(),
    }
    for metric, values in expected.items():
        assert row[f"{metric}.count"] == len(values)
        assert row[f"{metric}.mean"] == pytest.approx(np.mean(values), rel=1e-12)
        std = np.std(values, ddof=1)
        assert row[f"{metric}.std"] == pytest.approx(std, rel=1e-12)
        assert row[f"{metric}.sem"] == pytest.approx(std / math.sqrt(len(values)), rel=1e-12)


def test_failed_runs_stay_in_the_frame_but_not_in_the_aggregates(sweep, tmp_path):
    copies = copy_results(sweep, tmp_path)
    first = json.loads(copies[0].read_text())["config"]
    other = next(
        p for p in copies if config_of(json.loads(p.read_text())) != config_of({"config": first})
    )
    broken = {}
    for path, status in zip([copies[0], other], ("failed", "diverged"), strict=True):
        result = json.loads(path.read_text())
        result.update(status=status, metrics={}, error={"type": "E", "message": "m", "step": 1})
        path.write_text(json.dumps(result))
        broken[result["job_name"]] = result
    df = load_results(tmp_path)
    assert len(df) == 16
    assert sorted(df.loc[df["job_name"].isin(broken), "status"]) == ["diverged", "failed"]
    with pytest.warns(UserWarning, match=r"2 of 16 runs excluded from the aggregates \(.*1 failed"):
        agg = aggregate(df, metrics=["test/nll"])
    assert agg["test/nll.count"].sum() == 14
    for r in broken.values():
        row = agg.set_index(["likelihood", "likelihood.scale", "beta"]).loc[config_of(r)]
        others = [
            o["metrics"]["test/nll"]
            for o in raw_results(sweep)
            if o["job_name"] not in broken and config_of(o) == config_of(r)
        ]
        assert row["test/nll.count"] == len(others) == 1
        assert row["test/nll.mean"] == pytest.approx(others[0], rel=1e-12)
        assert math.isnan(row["test/nll.std"])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_collect_cli_writes_a_table_that_reads_back(sweep, tmp_path, suffix):
    out = tmp_path / f"runs{suffix}"
    proc = vaesweep(["collect", str(sweep), "-o", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "16 runs (16 completed)" in proc.stderr
    back = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    df = load_results(sweep)
    assert list(back.columns) == list(df.columns)
    for metric in ("test/nll", "test/elbo", "test/kl", "scale", "final_beta"):
        np.testing.assert_allclose(back[metric], df[metric], rtol=1e-12)
    assert list(back["likelihood.scale"]) == list(df["likelihood.scale"])


def test_parquet_without_an_engine_is_one_clear_line(sweep, tmp_path):
    """pyarrow is not a dependency: without it (nor fastparquet), `-o runs.parquet` is
    refused with what to install, before any file is written (not pandas' traceback). The
    command runs in a Python where both are hidden from its first line (a None entry in
    sys.modules makes their import fail, as if not installed)."""
    out = tmp_path / "runs.parquet"
    code = (
        "import sys; sys.modules.update(pyarrow=None, fastparquet=None); "
        "from vaesweep.analysis.cli import main; "
        f"sys.exit(main(['collect', {str(sweep)!r}, '-o', {str(out)!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "vaesweep: error:" in proc.stderr and "pip install pyarrow" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*runs.parquet*"))


def test_collect_cli_aggregate_prints_one_row_per_configuration(sweep, tmp_path):
    proc = vaesweep(["collect", str(sweep), "--aggregate"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "test/nll.mean" in lines[0] and len(lines) == 1 + 8


def _mixed_datasets(tmp_path: Path, sweep: Path) -> None:
    path = copy_results(sweep, tmp_path)[0]
    result = json.loads(path.read_text())
    result["dataset"]["name"] = "mnist_small"
    path.write_text(json.dumps(result))


def _other_fingerprint(tmp_path: Path, sweep: Path) -> None:
    path = copy_results(sweep, tmp_path)[0]
    result = json.loads(path.read_text())
    result["dataset"]["fingerprint"] = "0" * 64
    path.write_text(json.dumps(result))


def _only_failed(tmp_path: Path, sweep: Path) -> None:
    copies = copy_results(sweep, tmp_path)
    for path in copies[:2]:
        result = json.loads(path.read_text())
        result.update(status="failed", metrics={}, error={"type": "ConfigError", "message": "bad"})
        path.write_text(json.dumps(result))
    for path in copies[2:]:
        path.unlink()


BAD_INPUTS = {
    "empty": (lambda tmp, sweep: None, "no results.json found"),
    "mixed_datasets": (_mixed_datasets, "runs of different datasets are mixed"),
    "mixed_fingerprints": (_other_fingerprint, "runs of different datasets are mixed"),
    "only_failed": (
        _only_failed,
        "none of the 2 runs completed (2 failed); errors: ConfigError: bad",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_a_clear_error(sweep, tmp_path, case):
    make, message = BAD_INPUTS[case]
    make(tmp_path, sweep)
    with pytest.raises(ResultsError, match=re.escape(message)):
        load_results(tmp_path)


@pytest.mark.parametrize("command", ["collect --aggregate", "figures"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_cli_exits_nonzero_and_writes_nothing(sweep, tmp_path, case, command):
    make, message = BAD_INPUTS[case]
    runs = tmp_path / "runs"
    runs.mkdir()
    make(runs, sweep)
    out = tmp_path / "out"
    flag = "-o" if command.startswith("collect") else "--out"
    target = out / "runs.csv" if command.startswith("collect") else out
    proc = vaesweep([*command.split(), str(runs), flag, str(target)], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("vaesweep: error: ") and message in proc.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # no temp files either


def test_a_listing_shows_the_runs_of_a_sweep_none_of_whose_jobs_completed(sweep, tmp_path):
    """``collect`` without --aggregate lists the runs whatever their status, with their
    errors when none completed (the aggregate and the figures still refuse: above)."""
    _only_failed(tmp_path, sweep)
    out = tmp_path / "out" / "runs.csv"
    proc = vaesweep(["collect", str(tmp_path), "-o", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = pd.read_csv(out)
    assert list(listed["status"]) == ["failed", "failed"]
    assert set(listed["error"]) == {"ConfigError: bad"}
    proc = vaesweep(["collect", str(tmp_path)], tmp_path)
    assert proc.returncode == 0 and "2 runs (2 failed)" in proc.stderr
    assert proc.stdout.count("ConfigError: bad") == 2


def test_missing_directory_is_an_error(tmp_path):
    proc = vaesweep(["collect", str(tmp_path / "nope")], tmp_path)
    assert proc.returncode == 1 and "no such file or directory" in proc.stderr


def test_unknown_output_format_is_an_error(sweep, tmp_path):
    with pytest.raises(ResultsError, match=r"unknown output format '\.xlsx'"):
        write_frame(load_results(sweep), tmp_path / "runs.xlsx")
    assert not list(tmp_path.iterdir())


def test_cli_help_and_usage_errors(tmp_path):
    proc = vaesweep(["--help"], tmp_path)
    assert proc.returncode == 0 and "collect" in proc.stdout and "figures" in proc.stdout
    proc = vaesweep(["collect", "--help"], tmp_path)
    assert proc.returncode == 0 and "--wandb" in proc.stdout and ".parquet" in proc.stdout
    proc = vaesweep(["figures"], tmp_path)
    assert proc.returncode == 2 and "SWEEP_DIR... or --analytic" in proc.stderr
    # A command's usage error shows that command's usage, not the top-level one.
    assert proc.stderr.startswith("usage: vaesweep figures ")
    proc = vaesweep(["collect"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: vaesweep collect ")
    assert "vaesweep collect: error: give SWEEP_DIR..." in proc.stderr


def test_job_names_split_into_overrides_even_with_commas_in_values():
    name = "beta=0.5,likelihood=gaussian,model.hidden=[400,400],+x.y=a"
    assert split_job_name(name) == [
        "beta=0.5",
        "likelihood=gaussian",
        "model.hidden=[400,400]",
        "+x.y=a",
    ]


def test_study_presets_expand_their_grids():
    sizes = {"likelihood_comparison": 90, "bernoulli_vs_continuous": 18, "beta_schedules": 15}
    for study, size in sizes.items():
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={study}"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert math.prod(len(str(v).split(",")) for v in params.values()) == size, study


@pytest.mark.slow
def test_beta_schedules_preset_runs_its_grid(schedules):
    df = load_results(schedules)
    assert df.attrs["swept"] == ["beta_schedule"]
    assert sorted(df["beta_schedule"]) == ["capacity", "constant", "cyclical", "linear", "pi"]
    assert set(df["config.likelihood.scale"]) == {"optimal"}
    assert set(df["dataset"]) == {"digits"}  # the command line overrides the preset's data


def offline_records(sweep: Path) -> list[dict]:
    """The offline W&B runs of a sweep in the shape wandb.Api() runs are read into."""
    records = []
    for path in sorted(sweep.glob("*/wandb/offline-run-*")):
        run = read_offline_run(path)
        records.append(
            {**run, "state": "finished", "path": f"offline/{run['project']}/{run['run_id']}"}
        )
    return records


def test_wandb_frame_has_the_same_columns_and_values_as_the_local_one(schedules):
    local = load_results(schedules).set_index("job_name", drop=False)
    records = offline_records(schedules)
    assert len(records) == 5
    wb = frame_from_wandb(records).set_index("job_name", drop=False)
    assert list(wb.columns) == list(local.columns)
    assert wb.attrs == local.attrs
    wb = wb.loc[local.index]
    identity = {"run_dir", "sweep_dir", "duration_s", "dataset_fingerprint", "error"}
    identity |= {"commit", "dirty", "versions"}  # W&B's config and summary do not hold them
    identity |= {"trained_steps", "trained_epochs", "stopped_by"}  # nor these
    for column in local.columns:
        if column in identity:
            continue
        a, b = local[column], wb[column]
        if pd.api.types.is_float_dtype(a):
            np.testing.assert_allclose(b.astype(float), a, rtol=1e-12, err_msg=column)
        else:
            assert list(a.fillna("<na>")) == list(b.fillna("<na>")), column
    assert all(wb["run_dir"].str.startswith("wandb:offline/vaesweep/"))
    assert wb["sweep_dir"].nunique() == 1


def test_dirty_means_a_change_under_the_source_directory(tmp_path):
    """A run's git state: the checkout's commit, and "dirty" only for changes under the
    package's source directory (src/ in a checkout), not for results or notes beside it."""
    import shutil
    import subprocess

    from vaesweep.run.record import git_state

    if shutil.which("git") is None:
        pytest.skip("no git")

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "code.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("notes\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    commit = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert git_state(tmp_path / "src") == {"commit": commit, "dirty": False}
    (tmp_path / "notes.md").unlink()  # deleted results or notes elsewhere: still clean
    (tmp_path / "outputs.csv").write_text("new\n")
    assert git_state(tmp_path / "src") == {"commit": commit, "dirty": False}
    (tmp_path / "src" / "code.py").write_text("x = 2\n")  # the code changed: dirty
    assert git_state(tmp_path / "src")["dirty"] is True
    git("checkout", "-q", "--", "src")
    (tmp_path / "src" / "new.py").write_text("y = 1\n")  # a new source file: dirty
    assert git_state(tmp_path / "src")["dirty"] is True
    assert git_state(tmp_path.parent / "elsewhere") == {"commit": None, "dirty": None}


class _FakeRun:
    """What wandb.Api().runs() yields, as far as vaesweep reads it: a run that failed before
    its test metrics."""

    def __init__(self, seed: int, state: str):
        self.path = ["ent", "proj", f"run{seed}"]
        self.name = f"seed={seed}"
        self.group = "g"
        self.state = state
        self.config = {"seed": seed, "beta": 1.0, "data": {"name": "digits"}}
        self.summary_metrics = {"_runtime": 2.0}
        self.job_type = "train"


def test_a_wandb_listing_shows_the_runs_of_a_group_none_of_whose_runs_completed(
    tmp_path, monkeypatch, capsys
):
    """``collect --wandb`` without --aggregate lists the runs whatever their status, as the
    local listing does; --aggregate still refuses with the statuses counted."""
    import wandb

    from vaesweep.analysis.cli import main

    class Api:
        def runs(self, project, filters):
            assert project == "ent/proj" and filters == {"group": "g"}
            return [_FakeRun(0, "failed"), _FakeRun(1, "crashed")]

    monkeypatch.setattr(wandb, "Api", Api)
    out = tmp_path / "runs.csv"
    assert main(["collect", "--wandb", "ent/proj", "--group", "g", "-o", str(out)]) == 0
    listed = pd.read_csv(out)
    assert list(listed["run_dir"]) == ["wandb:ent/proj/run0", "wandb:ent/proj/run1"]
    assert list(listed["status"]) == ["failed", "failed"]
    assert "2 runs (2 failed) from W&B ent/proj, group g" in capsys.readouterr().err
    assert main(["collect", "--wandb", "ent/proj", "--group", "g", "--aggregate"]) == 1
    assert "vaesweep: error: none of the 2 runs completed (2 failed)" in capsys.readouterr().err


def test_infinite_values_count_as_missing_in_the_aggregates():
    """A seed's +inf or −inf (a W&B summary, a foreign results.json) is missing, as NaN is:
    mean, std and count are those of the finite values (numpy on those by hand)."""
    inf = math.inf
    values = {0.5: [1.0, 2.0, inf], 1.0: [-inf, 4.0, 7.0], 2.0: [inf, -inf, float("nan")]}
    df = pd.DataFrame(
        [
            {"status": "completed", "beta": beta, "seed": seed, "test/nll": value}
            for beta, seeds in values.items()
            for seed, value in enumerate(seeds)
        ]
    )
    df.attrs = {"swept": ["beta", "seed"], "metrics": ["test/nll"], "notes": []}
    stats = aggregate(df).set_index("beta")
    for beta, finite in ((0.5, [1.0, 2.0]), (1.0, [4.0, 7.0])):
        assert stats.loc[beta, "test/nll.count"] == 2
        assert stats.loc[beta, "test/nll.mean"] == pytest.approx(np.mean(finite))
        assert stats.loc[beta, "test/nll.std"] == pytest.approx(np.std(finite, ddof=1))
        assert stats.loc[beta, "test/nll.sem"] == pytest.approx(np.std(finite, ddof=1) / 2**0.5)
    assert stats.loc[2.0, "test/nll.count"] == 0
    assert np.isnan(stats.loc[2.0, ["test/nll.mean", "test/nll.std", "test/nll.sem"]]).all()


def _closed_state(offline_run: Path) -> str:
    """The state W&B gives an offline run once it is synced: ``finished`` for exit code 0
    (the run's exit record, as wandb.finish(exit_code=...) wrote it), else ``failed``."""
    from wandb.proto import wandb_internal_pb2 as pb

    from wandb_offline import iter_payloads

    for payload in iter_payloads(next(offline_run.glob("*.wandb"))):
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "exit":
            return "finished" if record.exit.exit_code == 0 else "failed"
    return "crashed"  # never closed: W&B marks it crashed


def test_a_wandb_run_has_the_status_the_job_wrote_not_only_its_state(tmp_path):
    """A diverged job closes its W&B run with exit code 1 (state ``failed``) and its status
    in the summary: from W&B it is ``diverged``, as load_results says, not ``failed``. A
    summary status is the job's only for a run it closed: a resumed run's summary keeps
    the earlier attempt's ``interrupted`` while it runs, or once it crashed."""
    from conftest import TINY, run_cli

    proc = run_cli([*TINY, "optimizer.lr=1e30", "logger=wandb", "hydra.run.dir=r"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (offline,) = (tmp_path / "r" / "wandb").glob("offline-run-*")
    run = read_offline_run(offline)
    assert _closed_state(offline) == "failed" and run["summary"]["status"] == "diverged"
    record = {**run, "state": "failed", "path": f"offline/{run['project']}/{run['run_id']}"}
    wb = frame_from_wandb([record], completed_required=False)
    local = load_results(tmp_path / "r", completed_required=False)
    assert list(wb["status"]) == list(local["status"]) == ["diverged"]

    def status(state: str, summary: dict) -> str:
        fake = {**record, "state": state, "summary": {**run["summary"], **summary}}
        return frame_from_wandb([fake], completed_required=False)["status"].iloc[0]

    assert status("failed", {"status": "interrupted"}) == "interrupted"
    scores = {"test/nll": 90.0, "test/elbo": -95.0}
    assert status("finished", {"status": "completed", **scores}) == "completed"
    # the diverged run's summary has no finite test score: not completed, as results.json
    assert status("finished", {"status": "completed"}) == "incomplete"
    assert status("running", {"status": "interrupted"}) == "running"  # resumed, running
    assert status("crashed", {"status": "interrupted"}) == "failed"  # resumed, then lost
    assert status("failed", {"status": "exploded"}) == "failed"  # no status of vaesweep's


@pytest.mark.parametrize(
    ("outcome", "args", "error"),
    [("completed", [], None), ("diverged", ["optimizer.lr=1e30"], "DivergenceError")],
)
@pytest.mark.slow
def test_a_wandb_run_that_fails_to_close_changes_no_outcome(tmp_path, outcome, args, error):
    """W&B raises while it closes the job's run (its service gone, a finish timeout: the
    test hook wandb_finish). It used to be closed first, unguarded: a completed job's
    results.json stayed ``running`` although its test metrics existed, and a failed job's
    error was replaced by W&B's. Now results.json has the outcome before W&B is closed, and
    the close error is a warning naming the W&B run, whatever the outcome."""
    from conftest import TINY, cli_env, run_cli
    from pause import fail_env

    env = {**cli_env(), **fail_env("wandb_finish")}
    proc = run_cli([*TINY, *args, "logger=wandb", "hydra.run.dir=r"], tmp_path, env=env)
    assert proc.returncode == (0 if outcome == "completed" else 1), proc.stderr[-3000:]
    result = json.loads((tmp_path / "r" / "results.json").read_text())
    assert result["status"] == outcome
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[vaesweep]")]
    if outcome == "completed":
        assert math.isfinite(result["metrics"]["test/nll"])
        assert "completed: " in (tmp_path / "r" / "train.log").read_text()
        assert not lines, proc.stderr[-3000:]  # no failure said
    else:
        assert result["error"]["type"] == error
        assert len(lines) == 1 and lines[0].startswith(f"[vaesweep] {error}: "), lines
    warning = (
        f"W&B run {result['wandb_run_id']} (job {tmp_path / 'r'}) was not closed cleanly: "
        "RuntimeError: the W&B service went away (test hook wandb_finish). The job's status "
        f"in its results.json ({outcome}) stands"
    )
    assert warning in (tmp_path / "r" / "train.log").read_text()
    (offline,) = (tmp_path / "r" / "wandb").glob("offline-run-*")
    assert read_offline_run(offline)["summary"]["status"] == outcome  # closed all the same


def test_a_finished_wandb_run_is_checked_as_a_results_file_is():
    """From W&B, as from results.json: a finished ``trainer.fast_dev_run`` run is
    ``fast_dev_run`` and a finished run without a finite test NLL is ``incomplete``, each
    with the reason, not ``completed`` rows of the aggregates."""

    def record(name: str, trainer: dict, summary: dict) -> dict:
        return {
            "path": f"entity/project/{name}",
            "name": f"beta={name}",
            "group": "g",
            "state": "finished",
            "config": {"seed": 0, "beta": 1.0, "data": {"name": "digits"}, "trainer": trainer},
            "summary": {"status": "completed", **summary},
            "job_type": "train",
        }

    scores = {"test/nll": 90.0, "test/elbo": -95.0}
    df = frame_from_wandb(
        [
            record("1", {"max_epochs": 2}, scores),
            record("2", {"max_epochs": 2, "fast_dev_run": True}, scores),
            record("4", {"max_epochs": 2}, {"test/elbo": -95.0}),
        ]
    ).set_index("job_name")
    assert df.loc["beta=1", "status"] == "completed" and pd.isna(df.loc["beta=1", "error"])
    assert df.loc["beta=2", "status"] == "fast_dev_run"
    assert "fast_dev_run" in df.loc["beta=2", "error"]
    assert df.loc["beta=4", "status"] == "incomplete"
    assert "test/nll" in df.loc["beta=4", "error"]


def test_group_without_wandb_is_refused_not_ignored(tmp_path, capsys):
    """``collect DIR --group G`` read every run under DIR, saying nothing of the group: the
    group selects W&B runs, so without --wandb it is a usage error naming both."""
    from vaesweep.analysis.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["collect", str(tmp_path), "--group", "mysweep"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--group mysweep selects a W&B group: it needs --wandb ENTITY/PROJECT" in err


def test_a_job_trained_again_under_a_new_wandb_id_is_one_row_from_wandb():
    """A job trained again from its start (``sweep.rerun_failed=true``; interrupted before
    its first checkpoint) logs to a new W&B run in the same group, under the same job name:
    the local frame (one results.json per job directory) has one row, the W&B frame had
    two (``failed`` and ``completed``). Now the newest run of each job is its row, whatever
    order the API lists them in, and a note names the earlier one."""

    def record(run_id: str, name: str, state: str, created: str, summary: dict) -> dict:
        return {
            "path": f"ent/proj/{run_id}",
            "name": name,
            "group": "g",
            "state": state,
            "config": {"seed": 0, "beta": float(name[5:]), "data": {"name": "digits"}},
            "summary": summary,
            "job_type": "beta=" + name[5:],
            "created_at": created,
        }

    done = {"status": "completed", "test/nll": 90.0, "test/elbo": -95.0}
    runs = [
        record("new1", "beta=1", "finished", "2026-12-07T10:00:00Z", done),
        record("old1", "beta=1", "failed", "2026-12-07T09:00:00Z", {"status": "failed"}),
        record("only2", "beta=2", "finished", "2026-12-07T09:30:00Z", done),
    ]
    for listed in (runs, runs[::-1]):
        df = frame_from_wandb(listed, completed_required=False)
        assert sorted(df["run_dir"]) == ["wandb:ent/proj/new1", "wandb:ent/proj/only2"]
        assert list(df["status"]) == ["completed", "completed"]
        (note,) = [n for n in df.attrs["notes"] if "earlier W&B run" in n]
        assert "ent/proj/old1 (beta=1)" in note
    # Two search trials that drew the same values share a job name: both completed, both
    # kept (each a job of its own; the frame counts the second as a duplicate seed, as
    # from directories), where the newest alone was kept.
    twin = record("twin", "beta=1", "finished", "2026-12-07T11:00:00Z", done)
    df = frame_from_wandb([*runs, twin], completed_required=False)
    assert sorted(df["run_dir"]) == [f"wandb:ent/proj/{r}" for r in ("new1", "only2", "twin")]
    assert sorted(df["status"]) == ["completed", "completed", "duplicate"]


def test_values_near_the_largest_float_aggregate_without_overflow():
    """A run's test/mse of 1e300 made np.std overflow (a RuntimeWarning on the terminal,
    std inf); a mean of two values near the largest float overflowed too. Now both are the
    finite numbers they are, and only a spread beyond the largest float is inf. By hand:
    two values a, b have mean (a + b)/2 and std (ddof = 1) |a − b|/√2."""
    import warnings

    values = {1.0: [1e300, 0.05], 2.0: [1.7e308, 1.7e308], 3.0: [1.5e308, -1.5e308]}
    df = pd.DataFrame(
        [
            {"status": "completed", "beta": beta, "seed": seed, "test/mse": value}
            for beta, seeds in values.items()
            for seed, value in enumerate(seeds)
        ]
    )
    df.attrs = {"swept": ["beta", "seed"], "metrics": ["test/mse"], "notes": []}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning fails the test
        stats = aggregate(df).set_index("beta")
    assert stats.loc[1.0, "test/mse.mean"] == pytest.approx(1e300 / 2, rel=1e-12)
    assert stats.loc[1.0, "test/mse.std"] == pytest.approx(1e300 / math.sqrt(2), rel=1e-12)
    assert stats.loc[1.0, "test/mse.sem"] == pytest.approx(1e300 / 2, rel=1e-12)
    assert stats.loc[2.0, "test/mse.mean"] == pytest.approx(1.7e308, rel=1e-12)
    assert stats.loc[2.0, "test/mse.std"] == 0.0
    assert stats.loc[3.0, "test/mse.mean"] == 0.0
    assert stats.loc[3.0, "test/mse.std"] == math.inf  # 3e308 / √2 > the largest float
    assert stats["test/mse.count"].tolist() == [2, 2, 2]
