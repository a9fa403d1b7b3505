"""W&B dashboards, for real: Hydra sweeps and searches in subprocesses, W&B offline, the
offline run files read back (wandb_offline): metric definitions and summaries of
every job's run, and the sweep's summary run with its table and figures."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import pytest

from vaesweep.analysis.results import frame_from_wandb
from vaesweep.analysis.wandb_summary import (
    FIGURES_KEY,
    TABLE_KEY,
    log_sweep_summary,
    read_summary_table,
)
from vaesweep.core.atomic import write_csv_atomic
from vaesweep.run.loggers import STEP, SUMMARY_JOB_TYPE
from vaesweep.sweep.grid import SUMMARY_FILE

from conftest import TINY, run_cli
from tiny_sweeps import vaesweep
from wandb_offline import read_offline_run

# Two epochs, so val/elbo has a history; at lr = 0.02 the second validation is worse than the
# first (−78.8 against −68.6 nats on these 3 batches), so its best and last values differ.
TWO_EPOCHS = [a for a in TINY if not a.startswith("trainer.max_epochs")] + [
    "trainer.max_epochs=2",
    "threads=1",
    "logger=wandb",
    "hydra.sweep.dir=sweep",
]
PNG = b"\x89PNG\r\n\x1a\n"


def job_runs(sweep: Path) -> dict[str, dict]:
    """Job directory name → its (single) offline W&B run."""
    runs = {}
    for path in sorted(sweep.glob("*/wandb/offline-run-*")):
        assert path.parent.parent.name not in runs, "one W&B run per job"
        runs[path.parent.parent.name] = read_offline_run(path)
    return runs


def summary_run(sweep: Path) -> dict:
    found = sorted((sweep / "wandb").glob("offline-run-*"))
    assert len(found) == 1, f"one summary run expected in {sweep / 'wandb'}: {found}"
    return read_offline_run(found[0])


def written_run(path: Path, timeout: float = 30.0) -> dict:
    """The offline run at ``path`` once W&B's service wrote its run record (see
    :func:`finished_summary_run`: after ``finish`` returns, within milliseconds)."""
    deadline = time.monotonic() + timeout
    while True:
        run = read_offline_run(path)
        if "job_type" in run or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def finished_summary_run(sweep: Path, keys: tuple[str, ...], timeout: float = 30.0) -> dict:
    """The summary run of an in-process ``log_sweep_summary`` once W&B wrote ``keys`` into
    it. ``Run.finish`` returns when W&B's service has the run's last records; the service
    writes them to the offline file a few milliseconds later (its log then says "stream: all
    finished"). A process that exits waits for that; a test that reads at once may not see
    them (it did: twice in full runs on 2026-12-05, once on 2026-12-06)."""
    deadline = time.monotonic() + timeout
    while True:
        run = summary_run(sweep)
        if all(k in run["summary"] for k in keys) or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def where_wandb_failed(sweep: Path, capsys) -> str:
    """For a failing in-process summary run: the captured output, the files under the
    sweep, and the end of W&B's own logs there."""
    captured = capsys.readouterr()
    files = sorted(str(p.relative_to(sweep)) for p in sweep.rglob("*"))
    logs = [
        f"--- {p.relative_to(sweep)} (end)\n"
        + "\n".join(p.read_text(errors="replace").splitlines()[-40:])
        for p in sorted(sweep.rglob("debug*.log"))
    ]
    return "\n".join(
        [f"stdout: {captured.out[-2000:]}", f"stderr: {captured.err[-4000:]}",
         f"files: {files}", *logs]
    )  # fmt: skip


def summary_csv(sweep: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(sweep / SUMMARY_FILE, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def logged_table(run: dict, key: str) -> dict:
    entry = run["summary"][key]
    assert entry["_type"] == "table-file"
    return json.loads((Path(run["dir"]) / "files" / entry["path"]).read_text())


def same_cell(logged, written: str) -> bool:
    """A table cell against the same cell of summary.csv (written as text)."""
    if written == "":
        return logged is None
    if isinstance(logged, bool):
        return str(logged) == written
    if isinstance(logged, int | float):
        both_nan = math.isnan(logged) and math.isnan(float(written))
        return both_nan or math.isclose(logged, float(written), rel_tol=1e-12)
    return logged == written


def check_summary_run(sweep: Path, n_jobs: int, figures: set[str], exact: bool = True) -> dict:
    """The sweep's summary run: in the jobs' group, the table equal to summary.csv (one row
    per job), PNG figures (exactly ``figures``, or at least them); returns it."""
    run = summary_run(sweep)
    groups = {r["group"] for r in job_runs(sweep).values()}
    assert len(groups) == 1 and run["group"] in groups
    assert run["job_type"] == SUMMARY_JOB_TYPE and run["project"] == "vaesweep"
    columns, rows = summary_csv(sweep)
    table = logged_table(run, TABLE_KEY)
    assert table["columns"] == columns
    assert len(table["data"]) == len(rows) == n_jobs
    for logged, written in zip(table["data"], rows, strict=True):
        for column, value in zip(columns, logged, strict=True):
            assert same_cell(value, written[column]), (column, value, written[column])
    prefix = f"{FIGURES_KEY}/"
    images = {k[len(prefix) :]: v for k, v in run["summary"].items() if k.startswith(prefix)}
    assert figures == set(images) if exact else figures <= set(images), sorted(images)
    for name, image in images.items():
        assert image["_type"] == "image-file" and image["format"] == "png", name
        assert (Path(run["dir"]) / "files" / image["path"]).read_bytes()[:8] == PNG
    assert run["summary"]["sweep/n_jobs"] == n_jobs
    return run


def test_summary_table_keeps_one_type_per_column(tmp_path):
    """summary.csv as sweep.py writes it → a wandb.Table, which refuses mixed columns: a
    column of numbers stays numbers, a mixed one (null and -6) becomes text."""
    import wandb

    rows = [
        {"job": "a", "likelihood.min_log_scale": "null", "beta": "0.5", "status": "completed",
         "test/nll": 1.25, "scale_converged": True, "error": ""},
        {"job": "b", "likelihood.min_log_scale": "-6", "beta": "2", "status": "failed",
         "test/nll": None, "scale_converged": None, "error": "ValueError: x, y"},
    ]  # fmt: skip
    write_csv_atomic(tmp_path / SUMMARY_FILE, rows)
    columns, data = read_summary_table(tmp_path / SUMMARY_FILE)
    assert columns == list(rows[0])
    assert data == [
        ["a", "null", 0.5, "completed", 1.25, True, None],
        ["b", "-6", 2, "failed", None, None, "ValueError: x, y"],
    ]
    table = wandb.Table(columns=columns, data=data)
    assert table.data == data


@pytest.mark.slow
def test_grid_sweep_dashboard(workdir):
    """Every job's run defines its metrics (step axis, best and last val/elbo); its summary
    holds the maximum of the val/elbo it logged and the final test/* values, as
    results.json; the sweep's summary run holds summary.csv and the figures."""
    proc = run_cli(
        ["-m", "optimizer.lr=0.001,0.02", "logger.sweep_figures=true", *TWO_EPOCHS],
        workdir,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = workdir / "sweep"
    runs = job_runs(sweep)
    assert len(runs) == 2
    best_is_last = []
    for job, run in runs.items():
        result = json.loads((sweep / job / "results.json").read_text())
        metrics = run["metrics"]
        assert metrics["val/elbo"] == {"step_metric": STEP, "summary": ["last", "max"]}
        for pattern in ("train/*", "val/*", "test/*"):
            assert metrics[pattern]["step_metric"] == STEP
        history = [row["val/elbo"] for row in run["history"] if "val/elbo" in row]
        assert len(history) == 2  # one per epoch
        assert all(STEP in row for row in run["history"])
        summary = run["summary"]
        assert summary["val/elbo"] == {"max": max(history), "last": history[-1]}
        assert history[-1] == pytest.approx(result["metrics"]["val/elbo"], rel=1e-12)
        best_is_last.append(max(history) == history[-1])
        tests = [k for k in result["metrics"] if k.startswith("test/")]
        assert len(tests) >= 8
        for key in tests:
            logged = [row[key] for row in run["history"] if key in row]
            assert summary[key] == logged[-1], key  # the final value, a plain number
            assert summary[key] == pytest.approx(result["metrics"][key], rel=1e-12), key
    assert sorted(best_is_last) == [False, True]  # lr = 0.02 got worse in its second epoch

    # The figures are those `vaesweep figures` draws for the sweep, every one of them.
    drawn = vaesweep(["figures", str(sweep), "--out", str(workdir / "figures")], workdir)
    assert drawn.returncode == 0, drawn.stderr
    expected = {p.stem for p in (workdir / "figures").glob("*.png")}
    assert {"rate_distortion", "reconstructions", "samples"} <= expected
    images = check_summary_run(sweep, 2, expected)["summary"]
    assert set(images["sweep/figures_skipped"]) == {
        line.removeprefix("skipped ") for line in drawn.stderr.splitlines() if "skipped" in line
    }
    assert "W&B sweep summary" in proc.stdout
    # Read back as the W&B API would give them, the runs make the jobs' frame: the summary
    # run is left out, val/elbo is its last value (as in results.json).
    records = [
        {**r, "state": "finished", "path": f"offline/vaesweep/{r['run_id']}"}
        for r in [*runs.values(), summary_run(sweep)]
    ]
    frame = frame_from_wandb(records).set_index("job_name")
    assert len(frame) == 2
    for job in runs:
        result = json.loads((sweep / job / "results.json").read_text())
        row = frame.loc[result["job_name"]]
        assert row["val/elbo"] == pytest.approx(result["metrics"]["val/elbo"], rel=1e-12)
        assert row["test/nll"] == pytest.approx(result["metrics"]["test/nll"], rel=1e-12)


@pytest.mark.slow
def test_search_dashboard(workdir):
    """A search (hydra/sweeper=optuna) ends with the same summary run: one row per trial
    and the search's own figure (optimisation history) among the images."""
    proc = run_cli(
        [
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.params.beta=tag(log, interval(0.1, 10))",
            "logger.sweep_figures=true",
            *TWO_EPOCHS,
        ],
        workdir,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = workdir / "sweep"
    assert sorted(job_runs(sweep)) == ["trial_0000", "trial_0001"]
    run = check_summary_run(sweep, 2, {"optimization_history", "nll_elbo_vs_beta"}, exact=False)
    table = logged_table(run, TABLE_KEY)
    assert [row[0] for row in table["data"]] == ["trial_0000", "trial_0001"]
    assert "beta" in table["columns"]  # the searched key is a column
    assert run["config"]["search"]["objective"] == "val/elbo"


@pytest.mark.slow
def test_a_failing_summary_run_changes_nothing(workdir):
    """The summary run cannot be written (``<sweep>/wandb`` is a file): a warning, and the
    sweep's exit status, summary.csv and the job's own W&B run are as without it."""
    sweep = workdir / "sweep"
    sweep.mkdir()
    (sweep / "wandb").write_text("in the way\n")
    args = [a for a in TWO_EPOCHS if a != "trainer.max_epochs=2"] + ["trainer.max_epochs=1"]
    proc = run_cli(["-m", "beta=0.5", *args], workdir, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "W&B sweep summary run not written" in proc.stderr
    _, rows = summary_csv(sweep)
    assert [r["status"] for r in rows] == ["completed"]
    assert len(job_runs(sweep)) == 1
    assert (sweep / "wandb").read_text() == "in the way\n"


def test_summary_run_only_with_wandb_and_never_raises(tmp_path, capsys):
    """In process (fast): no summary run without W&B or with mode=disabled or
    logger.sweep_summary=false; one that W&B cannot write warns and returns None."""
    from omegaconf import OmegaConf

    def config(**logger):
        base = {"name": "wandb", "mode": "offline", "project": "vaesweep", "entity": None}
        return OmegaConf.create({"logger": {**base, "tags": [], **logger}})

    for cfg in (config(name="csv"), config(name="none"), config(mode="disabled"),
                config(sweep_summary=False)):  # fmt: skip
        assert log_sweep_summary(cfg, tmp_path) is None
    assert not list(tmp_path.iterdir())  # nothing written, not even summary.csv read
    write_csv_atomic(tmp_path / SUMMARY_FILE, [{"job": "a", "status": "completed"}])
    (tmp_path / "wandb").write_text("in the way\n")
    assert log_sweep_summary(config(), tmp_path) is None
    assert "W&B sweep summary run not written" in capsys.readouterr().err


def test_summary_run_draws_figures_only_when_asked(tmp_path, monkeypatch, capsys):
    """In process, W&B offline: by default the summary run holds the table and says how to
    draw the figures (no image logged, the figures not drawn); logger.sweep_figures=true asks
    for them (here the sweep has no results.json, so the reason they are missing is that).
    The shipped config says false."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from vaesweep.run.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        shipped = compose("train", overrides=["paths.data_dir=/tmp"]).logger
    assert shipped.name == "wandb" and shipped.sweep_figures is False
    assert shipped.sweep_summary is True

    from vaesweep.analysis.wandb_summary import FIGURES_OFF

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = {"name": "wandb", "mode": "offline", "project": "vaesweep", "entity": None}
    for figures, sweep in ((None, tmp_path / "default"), (True, tmp_path / "asked")):
        sweep.mkdir()
        write_csv_atomic(sweep / SUMMARY_FILE, [{"job": "beta=1", "status": "completed"}])
        asked = {} if figures is None else {"sweep_figures": figures}
        cfg = OmegaConf.create({"logger": {**logger, "tags": [], **asked}})
        # A failure shows what W&B said and left (where_wandb_failed).
        try:
            assert log_sweep_summary(cfg, sweep) is not None
            run = finished_summary_run(sweep, (TABLE_KEY, "sweep/figures_skipped"))
            assert logged_table(run, TABLE_KEY)["data"] == [["beta=1", "completed"]]
            assert not [k for k in run["summary"] if k.startswith(f"{FIGURES_KEY}/")]
            (skipped,) = run["summary"]["sweep/figures_skipped"]
            if figures is None:
                assert skipped == f"all figures: {FIGURES_OFF.format(sweep_dir=sweep.resolve())}"
                assert f"vaesweep figures {sweep.resolve()}" in skipped
            else:
                assert skipped.startswith("all figures: ") and "sweep_figures" not in skipped
        except Exception as failure:  # an assertion, or a file that cannot be read
            raise AssertionError(
                f"{type(failure).__name__}: {failure}\n{where_wandb_failed(sweep, capsys)}"
            ) from None


def test_long_configurations_keep_distinct_wandb_job_types_and_tags(tmp_path, monkeypatch):
    """W&B keeps 64 characters of a job type or a tag. Two configurations whose swept
    values agree in their first 64 characters had one job type (cut, not told apart): W&B
    grouped the seeds of both as one. Now a cut name ends in a hash of the whole. Real
    W&B runs (offline), read back from their files."""
    from hydra import compose, initialize_config_dir

    import vaesweep
    from vaesweep.run.context import Job
    from vaesweep.run.loggers import finish_wandb, make_loggers

    monkeypatch.setenv("WANDB_MODE", "offline")
    conf = Path(vaesweep.__file__).parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["paths.data_dir=/tmp", "logger=wandb"])
    long_note = "x" * 70
    runs = []
    for dim in (16, 32):
        swept = {
            "likelihood": "continuous_bernoulli",
            "beta_schedule": "cyclical",
            "model.latent_dim": str(dim),
            "beta": "0.5",
            "label.note": long_note + str(dim),
        }
        run_dir = tmp_path / f"dim{dim}"
        run_dir.mkdir()
        job = Job(run_dir, f"dim={dim}", [], tmp_path / "sweep", swept, 1)
        (wandb_logger,) = [
            lg for lg in make_loggers(cfg, job) if type(lg).__name__ == "WandbLogger"
        ]
        assert wandb_logger.experiment.job_type  # starts the run
        finish_wandb("completed")
        runs.append(written_run(next(run_dir.glob("wandb/offline-run-*"))))
    job_types = [r["job_type"] for r in runs]
    assert job_types[0] != job_types[1] and all(len(t) == 64 for t in job_types)
    full = "likelihood=continuous_bernoulli,beta_schedule=cyclical,model.latent_dim=16"
    assert job_types[0].startswith(full[:55])
    tags = [{t for t in r["tags"] if t.startswith("label.note=")} for r in runs]
    assert len(tags[0]) == len(tags[1]) == 1 and tags[0] != tags[1]
    assert all(len(t) <= 64 for r in runs for t in r["tags"])


def test_a_new_sweep_in_a_deleted_sweeps_directory_gets_its_own_summary_run(tmp_path, monkeypatch):
    """The summary run's id came from the sweep directory alone: a fixed
    ``hydra.sweep.dir`` deleted and swept again resumed the old sweep's summary run and
    logged its table at step 0, below the steps the old one reached (W&B drops such rows),
    so the run kept showing the old table. Now the id also carries when the sweep's record
    was created: a relaunch of one sweep continues its run, a new sweep starts another."""
    from vaesweep.analysis.wandb_summary import summary_run_id

    first = summary_run_id(tmp_path, "2026-12-07T10:00:00+00:00")
    assert summary_run_id(tmp_path, "2026-12-07T10:00:00+00:00") == first  # a relaunch
    assert summary_run_id(tmp_path, "2026-12-07T11:00:00+00:00") != first  # a new sweep
    assert summary_run_id(tmp_path / "other", "2026-12-07T10:00:00+00:00") != first
    assert first.startswith("sweep-summary-") and len(first) == len("sweep-summary-") + 12
    # The run written in process (W&B offline) takes the id of its sweep's record.
    import shutil

    from omegaconf import OmegaConf

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = {"name": "wandb", "mode": "offline", "project": "vaesweep", "entity": None}
    cfg = OmegaConf.create({"logger": {**logger, "tags": []}})
    sweep, ids = tmp_path / "sweep", []
    for created in ("2026-12-07T10:00:00+00:00", "2026-12-07T11:00:00+00:00"):
        shutil.rmtree(sweep, ignore_errors=True)  # the sweep directory deleted, swept again
        sweep.mkdir()
        (sweep / "sweep.json").write_text(json.dumps({"created_at": created}))
        write_csv_atomic(sweep / SUMMARY_FILE, [{"job": "beta=1", "status": "completed"}])
        assert log_sweep_summary(cfg, sweep) is not None
        run = finished_summary_run(sweep, (TABLE_KEY,))
        assert run["run_id"] == summary_run_id(sweep, created)
        ids.append(run["run_id"])
    assert ids[0] != ids[1]
