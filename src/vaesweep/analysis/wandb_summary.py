"""The sweep's W&B summary run (each job's own W&B run is :mod:`vaesweep.run.loggers`').

- :func:`log_sweep_summary`: at the end of every sweep (a grid or a search) with the W&B
  logger, one more run in the sweep's group (job type ``summary``) holds the sweep's
  summary table (the rows of ``summary.csv``, a ``wandb.Table``) and, with
  ``logger.sweep_figures=true``, the sweep figures of ``vaesweep figures`` (``wandb.Image``;
  off by default: the mission sweep's summary run took 1.30 s with them, the imports they
  need included, and 0.26 s without, ``benchmarks/results/fixed_costs.txt``; ``vaesweep
  figures`` draws them at any time).
  It never changes the sweep's outcome: any failure is reported as a warning and
  ``summary.csv`` stays as written.

Only public W&B API (``wandb.init``, ``Run.define_metric``, ``Run.log``, ``wandb.Table``,
``wandb.Image``); W&B is imported inside the functions that need it.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vaesweep.run.context import read_sweep
from vaesweep.run.loggers import SUMMARY_JOB_TYPE, reachable, sweep_group, wandb_endpoint
from vaesweep.sweep.grid import SUMMARY_FILE

TABLE_KEY = "sweep/summary"
FIGURES_KEY = "sweep/figures"
#: sweep/figures_skipped when the figures were not asked for.
FIGURES_OFF = "not drawn (logger.sweep_figures=false); vaesweep figures {sweep_dir} draws them"


# -- the sweep's summary run ----------------------------------------------------------------


def _warn(message: str) -> None:
    print(f"[vaesweep] {message}", file=sys.stderr, flush=True)


def summary_run_id(sweep_dir: Path, created_at: str | None = None) -> str:
    """One W&B run per sweep: a relaunch of the same sweep continues it. ``created_at``: when
    the sweep's record (sweep.json) was created, so that a new sweep in the directory of a
    deleted one (a fixed ``hydra.sweep.dir``) gets a run of its own, not the old one's,
    whose later steps would hide the new table."""
    key = str(Path(sweep_dir).resolve()) + ("" if created_at is None else f"@{created_at}")
    return f"sweep-summary-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def read_summary_table(path: Path) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of ``summary.csv`` for a ``wandb.Table``: empty cells as None, and a
    column of numbers (or of booleans) as numbers (booleans); any other column as text (a
    W&B Table refuses a column of mixed types, e.g. ``likelihood.min_log_scale=null,-6``)."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        columns = next(reader, [])
        text = list(reader)
    parsed = [[_cell(v) for v in row] for row in text]
    for i in range(len(columns)):
        kinds = {_kind(row[i]) for row in parsed if i < len(row) and row[i] is not None}
        if len(kinds) > 1:
            for row, raw in zip(parsed, text, strict=True):
                if i < len(row) and row[i] is not None:
                    row[i] = raw[i]
    return columns, parsed


def _kind(value: Any) -> type:
    return bool if isinstance(value, bool) else float if isinstance(value, int | float) else str


def _cell(value: str) -> Any:
    if value == "":
        return None
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def _wandb_mode(logger: DictConfig) -> str:
    """The jobs' mode, but offline when an online server cannot be reached (the summary
    run must not wait ~90 s for W&B to give up)."""
    mode = str(logger.get("mode") or "offline")
    if mode != "online":
        return mode
    host, port = wandb_endpoint()
    problem = reachable(host, port)
    if problem is not None:
        _warn(
            f"W&B server {host}:{port} unreachable ({problem}): the sweep's summary run is "
            "written offline; upload it later with wandb sync"
        )
        return "offline"
    return mode


def draw_figures(sweep_dir: Path, out_dir: Path) -> tuple[list[Path], list[str]]:
    """The sweep figures of ``vaesweep figures`` as PNGs in out_dir; (paths, skipped)."""
    # Heavy (matplotlib, pandas): imported only when the figures are asked for.
    from vaesweep.analysis.figures import draw_sweep_pngs
    from vaesweep.analysis.results import ResultsError, load_results

    try:
        df = load_results(sweep_dir)
    except ResultsError as e:
        return [], [f"all figures: {e}"]
    report = draw_sweep_pngs(df, out_dir)
    return report.written, [*report.skipped, *(f"{f} (failed to draw)" for f in report.failed)]


def wants_summary_run(config: DictConfig) -> bool:
    """Whether a sweep with this config gets a W&B summary run (logger=wandb, not disabled,
    ``logger.sweep_summary`` not false)."""
    logger = config.get("logger") or {}
    return (
        logger.get("name") == "wandb"
        and logger.get("mode") != "disabled"
        and bool(logger.get("sweep_summary", True))
    )


def log_sweep_summary(config: DictConfig, sweep_dir: str | Path) -> str | None:
    """Writes the sweep's summary run (see the module doc) when the sweep logs to W&B;
    returns its directory (None when there is none). Never raises: a failure is a warning
    on stderr, and the sweep's files and exit status are what they were."""
    if not wants_summary_run(config):
        return None
    try:
        return _log_sweep_summary(config, Path(sweep_dir))
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a mirror must not fail the sweep
        _warn(
            f"W&B sweep summary run not written ({type(e).__name__}: {e}); summary.csv and "
            "the jobs' runs are unaffected"
        )
        return None


def _log_sweep_summary(config: DictConfig, sweep_dir: Path) -> str:
    started = time.perf_counter()
    columns, rows = read_summary_table(sweep_dir / SUMMARY_FILE)
    record = read_sweep(sweep_dir) or {}
    logger = config.logger
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    keep = ("command", "grid", "n_jobs", "overrides", "launcher", "created_at", "search")
    run = wandb.init(
        project=logger.get("project"),
        entity=logger.get("entity"),
        mode=_wandb_mode(logger),
        dir=str(sweep_dir),
        group=sweep_group(sweep_dir.resolve()),
        job_type=SUMMARY_JOB_TYPE,
        name=f"summary {sweep_dir.name}"[:128],
        id=summary_run_id(sweep_dir, record.get("created_at")),
        resume="allow",
        tags=["sweep-summary", *map(str, logger.get("tags") or [])],
        config={k: record[k] for k in keep if k in record} | {"sweep_dir": str(sweep_dir)},
        reinit="create_new",
    )
    ok = False
    try:
        statuses = [row[columns.index("status")] for row in rows] if "status" in columns else []
        data: dict[str, Any] = {TABLE_KEY: wandb.Table(columns=columns, data=rows)}
        drawn = bool(logger.get("sweep_figures", False))
        with tempfile.TemporaryDirectory(prefix="vaesweep-figures-") as tmp:
            figures, skipped = (
                [],
                [f"all figures: {FIGURES_OFF.format(sweep_dir=sweep_dir.resolve())}"],
            )
            try:
                if drawn:
                    figures, skipped = draw_figures(sweep_dir, Path(tmp))
            except Exception as e:  # the table goes to W&B all the same
                figures, skipped = [], [f"all figures: {type(e).__name__}: {e}"]
                _warn(f"W&B sweep summary run without figures: {type(e).__name__}: {e}")
            for path in figures:
                data[f"{FIGURES_KEY}/{path.stem}"] = wandb.Image(str(path), caption=path.stem)
            # One step per launch: a relaunch of the sweep adds a step to the same run.
            launch = max(0, len(record.get("launched_at") or []) - 1)
            run.log(data, step=launch)
        run.summary.update(
            {
                "sweep/n_jobs": len(rows),
                "sweep/n_completed": statuses.count("completed"),
                "sweep/figures_skipped": skipped,
            }
        )
        ok = True
    finally:
        run.finish(exit_code=0 if ok else 1)
    where = run.settings.sync_dir if hasattr(run.settings, "sync_dir") else run.dir
    print(
        f"W&B sweep summary: run {run.id} in group {run.group} (table of {len(rows)} jobs, "
        f"{f'{len(figures)} figures' if drawn else 'no figures: logger.sweep_figures=false'}, "
        f"{time.perf_counter() - started:.1f} s) in {where}",
        flush=True,
    )
    return str(where)


class WandbSweepSummary:
    """The sweep callback's finisher (``hydra.callbacks.sweep.finishers``) that writes the
    sweep's W&B summary run: :func:`log_sweep_summary`, which never raises."""

    def __call__(self, config: DictConfig, sweep_dir: Path) -> str | None:
        return log_sweep_summary(config, sweep_dir)
