"""The frame from the runs of one W&B group (a mirror of the results.json files: the same
columns, ``run_dir`` = ``wandb:ENTITY/PROJECT/RUN_ID``, ``sweep_dir`` = the group)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from vaesweep.analysis.results.frame import (
    ResultsError,
    build_frame,
    flatten,
    parse_overrides,
    split_job_name,
)
from vaesweep.run.loggers import SUMMARY_JOB_TYPE, summary_value
from vaesweep.run.record import STATUSES, frame_status

# Metric names kept from a W&B summary besides "val/..." and "test/..." (docs/results-and-figures.md, the result file).
RUN_SUMMARY_KEYS = ("scale", "beta", "effective_beta", "effective_beta_per_dim")
# W&B run states → results.json statuses.
WANDB_STATES = {
    "finished": "completed",
    "running": "running",
    "pending": "running",
    "failed": "failed",
    "crashed": "failed",
    "killed": "failed",
}
# The states of a run that wandb.finish() closed: W&B says only "finished" (exit code 0) or
# "failed", while the job wrote its own status into the summary just before
# (vaesweep.run.loggers.finish_wandb: diverged, interrupted, ...). Any other state's summary
# status is an earlier attempt's (a resumed run keeps its summary): "running" now, or
# "crashed"/"killed", ended without a status of its own.
CLOSED_STATES = ("finished", "failed")


def _status(state: Any, summary: dict[str, Any]) -> str:
    """A W&B run's status as results.json says it: the job's own ``summary["status"]`` for a
    run it closed, so an interrupted or diverged job is not listed as failed (W&B's state
    for every non-zero exit); else the W&B state's status."""
    state = str(state).lower()
    recorded = summary.get("status")
    if state in CLOSED_STATES and isinstance(recorded, str) and recorded in STATUSES:
        return recorded
    return WANDB_STATES.get(state, "failed")


# Lightning's WandbLogger also writes the LightningModule's hyperparameters into the W&B
# config, at top level. These are the ones that are not keys of the Hydra config; they are
# dropped so that both sources give the same ``config.`` columns.
MODULE_HPARAMS = (
    "shape",
    "schedule",
    "iwae_k",
    "iwae_chunk",
    "active_units_threshold",
    "report_bpd",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "optimization",
)


def wandb_record(run: Any) -> dict[str, Any]:
    """The parts of a ``wandb.apis.public.Run`` that :func:`frame_from_wandb` reads."""
    return {
        "path": "/".join(run.path),
        "name": run.name,
        "group": run.group,
        "state": run.state,
        "config": dict(run.config),
        "summary": dict(run.summary_metrics),  # public: the run's summary as a dict
        "job_type": run.job_type,
        "created_at": getattr(run, "created_at", None),
    }


def _is_metric(key: str, value: Any) -> bool:
    # "test/reconstructions/width" and the like describe logged images, not metrics.
    split = key.startswith(("val/", "test/")) and key.count("/") == 1
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and (split or key in RUN_SUMMARY_KEYS)


def _wandb_row(record: dict[str, Any]) -> dict[str, Any]:
    config = {
        k: v
        for k, v in record["config"].items()
        if not k.startswith("_") and k not in MODULE_HPARAMS
    }
    # val/elbo's summary holds its best and last value (vaesweep.analysis.wandb_summary): the frame, as
    # results.json, has the last.
    summary = {k: summary_value(v) for k, v in record["summary"].items()}
    metrics = {k: v for k, v in summary.items() if _is_metric(k, v)}
    # As load_results does for a results.json: a "completed" debug run (fast_dev_run) or one
    # without a finite test score is not counted as completed.
    status, reason = frame_status(
        {"status": _status(record.get("state"), summary), "metrics": metrics, "config": config}
    )
    return {
        "identity": {
            "run_dir": f"wandb:{record['path']}",
            "sweep_dir": record.get("group"),
            "job_name": record.get("name"),
            "status": status,
            "error": reason,
            "seed": config.get("seed"),
            "duration_s": summary.get("_runtime"),
            "dataset": (config.get("data") or {}).get("name"),
            "dataset_fingerprint": None,
            # not in a W&B run's config or summary
            "commit": None,
            "dirty": None,
            "versions": None,
            "changed_between_attempts": None,
        },
        "metrics": metrics,
        "config": flatten(config),
        "overrides": parse_overrides(split_job_name(record.get("name") or "")),
    }


def frame_from_wandb(
    records: Iterable[dict[str, Any]], completed_required: bool = True
) -> pd.DataFrame:
    """W&B runs, as dicts of path, name, group, state, config and summary → the tidy frame.

    The run's name is its job name (the overrides), so the swept values come from it; the
    status is the one the job wrote into the summary when it closed its run (finished or
    failed: ``completed``, ``diverged``, ``interrupted``, ...), else the W&B state's
    (finished → completed; running, pending → running; failed, crashed, killed → failed);
    then checked as a results.json is (:func:`vaesweep.run.record.frame_status`): a
    completed run without a finite test score is ``incomplete``, a ``trainer.fast_dev_run``
    one ``fast_dev_run``;
    ``run_dir`` is ``wandb:ENTITY/PROJECT/RUN_ID`` and ``sweep_dir`` the W&B group. The
    sweep's summary run (job type ``summary``) is left out. ResultsError when no run
    completed, unless not ``completed_required`` (a listing of the runs, as
    :func:`vaesweep.analysis.results.load_results`).
    """
    # The sweep's summary run (a table and figures, no metrics of its own) is not a job.
    jobs = [r for r in records if r.get("job_type") != SUMMARY_JOB_TYPE]
    jobs, notes = _latest_attempts(jobs)
    rows = [_wandb_row(r) for r in jobs]
    if not rows:
        raise ResultsError("no W&B runs given")
    df = build_frame(rows, completed_required)
    df.attrs["notes"] = [*notes, *df.attrs.get("notes", [])]
    return df


def _latest_attempts(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The W&B runs that are jobs' results, as a sweep directory holds one results.json per
    job. A job trained again from its start (``sweep.rerun_failed=true``, an interruption
    before its first checkpoint, a results.json lost) logs to a new W&B run in the same group
    under the same job name: of a job's runs that did not complete, only the newest
    (``created_at``; of equal ones, the last listed) is its current state, and only when no
    completed run is newer; the others are left out, with a note naming them. A completed
    run is always kept: a completed job is never trained again, and two search trials that
    drew the same values share a job name, each a job of its own (a duplicate seed then, as
    from directories)."""
    jobs: dict[tuple[Any, Any], list[int]] = {}
    for i, record in enumerate(records):
        name = record.get("name")
        jobs.setdefault((record.get("group"), name) if name is not None else ("", i), []).append(i)
    kept: list[int] = []
    for members in jobs.values():
        order = sorted(members, key=lambda i: (str(records[i].get("created_at") or ""), i))
        done = [
            i
            for i in order
            if _status(records[i].get("state"), records[i].get("summary") or {}) == "completed"
        ]
        kept += done
        if order[-1] not in done:  # the job's latest attempt, not completed (yet)
            kept.append(order[-1])
    kept.sort()
    kept_set = set(kept)
    left = [r for i, r in enumerate(records) if i not in kept_set]
    notes = []
    if left:
        shown = ", ".join(f"{r.get('path')} ({r.get('name')})" for r in left[:6])
        more = f" and {len(left) - 6} more" if len(left) > 6 else ""
        notes.append(
            f"{len(left)} earlier W&B run(s) of a job that was trained again from its start "
            f"under a new run id (its latest run is listed) left out: {shown}{more}"
        )
    return [records[i] for i in kept], notes


def load_wandb(project: str, group: str, completed_required: bool = True) -> pd.DataFrame:
    """The runs of W&B group ``group`` in ``project`` ("entity/project"), through wandb.Api().

    Needs a network and ``wandb login``; a sweep's group is printed in each run's W&B page and
    is the sweep directory's last two parts joined by "_" (``2026-01-31_12-00-00-123456-ab12``).
    ResultsError when no run completed, unless not ``completed_required`` (listing the runs
    of a sweep none of whose jobs completed).
    """
    import wandb

    try:
        runs = wandb.Api().runs(project, filters={"group": group})
        records = [wandb_record(run) for run in runs]
    except wandb.errors.Error as e:  # no API key, refused, no network, no such project
        raise ResultsError(
            f"W&B {project}, group {group!r}: {type(e).__name__}: {e} (check the login and "
            "the entity/project, as on the W&B page)"
        ) from None
    if not records:
        raise ResultsError(f"no W&B runs in {project} with group {group!r}")
    return frame_from_wandb(records, completed_required)
