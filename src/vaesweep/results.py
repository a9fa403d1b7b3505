"""Runs and sweeps as one tidy pandas DataFrame: one row per run.

Sources: every ``results.json`` below the given directories (:func:`load_results`), or the
runs of one W&B group (:func:`load_wandb`, online). Both give the same columns:

- identity: ``run_dir``, ``sweep_dir``, ``job_name``, ``status``, ``error``, ``seed``,
  ``duration_s`` (s), ``dataset`` (name), ``dataset_fingerprint`` (sha256; None from W&B);
- swept values: every override key whose value differs between the runs, under the key's
  own name (``likelihood``, ``likelihood.scale``, ``beta``, ``seed``, ...). A config key
  (``beta``) holds the resolved, typed value; a config group (``likelihood``) holds the
  option chosen. Their names are in ``df.attrs["swept"]``;
- metrics: the keys of ``results.json``'s ``metrics`` as they are (``test/nll``, ``scale``,
  ...; units in the README), except ``beta``, the β in force at the end of training (γ for
  ``capacity``, the controller's output for ``geco``/``pi``): it is ``final_beta`` here,
  since ``beta`` names the configured β. Their names are in ``df.attrs["metrics"]``;
- the resolved config, flattened with dots and prefixed ``config.`` (``config.model.hidden``);
  list values are JSON strings, so every column holds scalars (CSV and Parquet round-trip).

Failed, diverged and still-running runs stay in the frame with their status (``incomplete``
for a result that says completed without test metrics, ``fast_dev_run`` for Lightning's debug
runs: :func:`vaesweep.resultfile.frame_status`); :func:`aggregate`
leaves them out, with a warning that counts them.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vaesweep.dashboard import SUMMARY_JOB_TYPE, summary_value
from vaesweep.record import RESULTS_FILE

IDENTITY = (
    "run_dir",
    "sweep_dir",
    "job_name",
    "status",
    "error",
    "seed",
    "duration_s",
    "dataset",
    "dataset_fingerprint",
)
CONFIG_PREFIX = "config."
# Metric names kept from a W&B summary besides "val/..." and "test/..." (the README's result-file table).
SUMMARY_METRICS = ("scale", "beta", "effective_beta", "effective_beta_per_dim")
RENAMED_METRICS = {"beta": "final_beta"}
STATS = ("mean", "std", "sem", "count")
# W&B run states → results.json statuses.
WANDB_STATES = {
    "finished": "completed",
    "running": "running",
    "pending": "running",
    "failed": "failed",
    "crashed": "failed",
    "killed": "failed",
}
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


# Column order, the same whatever the source: swept keys by config group in the order of the
# Hydra defaults list, other keys next, then beta and seed; metrics test/, val/, then others.
KEY_ORDER = (
    "data",
    "model",
    "likelihood",
    "beta_schedule",
    "optimizer",
    "trainer",
    "logger",
    "eval",
)
LAST_KEYS = ("beta", "seed")
METRIC_ORDER = ("test/", "val/")


def _key_rank(key: str) -> tuple:
    head = key.split(".")[0]
    if head in LAST_KEYS:
        return (len(KEY_ORDER) + 1 + LAST_KEYS.index(head), key)
    return (KEY_ORDER.index(head) if head in KEY_ORDER else len(KEY_ORDER), key)


def _metric_rank(name: str) -> tuple:
    prefix = next((i for i, p in enumerate(METRIC_ORDER) if name.startswith(p)), len(METRIC_ORDER))
    return (prefix, name)


class ResultsError(ValueError):
    """Runs that cannot be collected into one frame (none found, mixed datasets, none usable)."""


# --- building rows ------------------------------------------------------------------------------


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → {"a.b.c": value}; lists become JSON strings, everything else is kept."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple | dict):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """["likelihood=gaussian", "+x.y=1"] → {"likelihood": "gaussian", "x.y": "1"} (deletions skipped)."""
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and not key.startswith("~"):
            out[key.lstrip("+")] = value
    return out


def split_job_name(name: str) -> list[str]:
    """A job name (Hydra's override_dirname, also the W&B run name) → its overrides.

    Items are joined with "," and a value may hold commas too (``model.hidden=[400,400]``),
    so a comma splits only where the next item starts with ``key=``.
    """
    return [item for item in re.split(r",(?=[+~]*[\w./-]+=)", name) if "=" in item]


def _swept_value(key: str, overrides: dict[str, str], config: dict[str, Any]) -> Any:
    """The value of an override key for one run: the typed config value, or the group option."""
    if key in config:
        return config[key]
    if key in overrides:
        return overrides[key]
    return config.get(f"{key}.name")


def _comparable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows of {"identity", "metrics", "config" (flat), "overrides"} → the tidy frame, checked."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["overrides"] if k not in keys]
    values = {
        key: [_swept_value(key, row["overrides"], row["config"]) for row in rows] for key in keys
    }
    swept = sorted((k for k in keys if len({_comparable(v) for v in values[k]}) > 1), key=_key_rank)
    records, metric_columns = [], []
    for i, row in enumerate(rows):
        metrics = {RENAMED_METRICS.get(k, k): v for k, v in row["metrics"].items()}
        metric_columns += [k for k in metrics if k not in metric_columns]
        record = dict(row["identity"])
        record.update({k: values[k][i] for k in swept if k not in IDENTITY})
        record.update(metrics)
        record.update({f"{CONFIG_PREFIX}{k}": v for k, v in row["config"].items()})
        records.append(record)
    metric_columns.sort(key=_metric_rank)
    config_columns = sorted({c for r in records for c in r if c.startswith(CONFIG_PREFIX)})
    columns = [
        *IDENTITY,
        *(k for k in swept if k not in IDENTITY),
        *metric_columns,
        *config_columns,
    ]
    df = pd.DataFrame.from_records(records, columns=columns)
    if swept:
        df = df.sort_values(swept, kind="stable", na_position="last", ignore_index=True)
    for name in metric_columns:
        df[name] = pd.to_numeric(df[name], errors="coerce").astype(float)
    df.attrs["swept"] = swept
    df.attrs["metrics"] = metric_columns
    _check(df)
    return df


def _check(df: pd.DataFrame) -> None:
    """Raises ResultsError for mixed datasets or when no run completed."""
    datasets = df[["dataset", "dataset_fingerprint"]].drop_duplicates().dropna(subset=["dataset"])
    fingerprints = datasets.dropna(subset=["dataset_fingerprint"])
    if datasets["dataset"].nunique() > 1 or fingerprints["dataset_fingerprint"].nunique() > 1:
        counts = df.groupby(["dataset", "dataset_fingerprint"], dropna=False).size()
        listing = "; ".join(
            f"{name} (fingerprint {str(fp)[:12] if isinstance(fp, str) else 'unknown'}): {n} runs"
            for (name, fp), n in counts.items()
        )
        raise ResultsError(
            f"runs of different datasets are mixed: {listing}. Collect each dataset's runs "
            "separately (pass only the sweep directories of one dataset)."
        )
    if not (df["status"] == "completed").any():
        counts = df["status"].value_counts()
        errors = df["error"].dropna().drop_duplicates().head(3).tolist()
        raise ResultsError(
            f"none of the {len(df)} runs completed ({', '.join(f'{n} {s}' for s, n in counts.items())})"
            + (f"; errors: {' | '.join(errors)}" if errors else "")
        )


def _local_row(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    from vaesweep.resultfile import frame_status

    if not isinstance(result, dict):
        raise ResultsError(f"{path}: not a valid results file (not a JSON object)")
    dataset = result.get("dataset") or {}
    config = result.get("config") or {}
    error = result.get("error")
    # "completed" without test metrics is "incomplete"; a fast_dev_run is not a result.
    status, reason = frame_status(result)
    return {
        "identity": {
            "run_dir": str(path.parent),  # where it is now (a sweep may have been moved)
            "sweep_dir": result.get("sweep_dir"),
            "job_name": result.get("job_name"),
            "status": status,
            "error": reason or (f"{error['type']}: {error['message']}" if error else None),
            "seed": result.get("seed"),
            "duration_s": result.get("duration_s"),
            "dataset": dataset.get("name") or (config.get("data") or {}).get("name"),
            "dataset_fingerprint": dataset.get("fingerprint"),
        },
        "metrics": result.get("metrics") or {},
        "config": flatten(config),
        "overrides": parse_overrides(result.get("overrides") or []),
    }


def find_results(*dirs: str | os.PathLike[str]) -> list[Path]:
    """Every results.json at or below ``dirs`` (a dir, or a results.json itself), sorted, unique."""
    found: set[Path] = set()
    for d in dirs:
        path = Path(d)
        if not path.exists():
            raise ResultsError(f"{path}: no such file or directory")
        if path.is_file():
            found.add(path.resolve())
        else:
            found.update(p.resolve() for p in path.rglob(RESULTS_FILE))
    return sorted(found)


def load_results(*dirs: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per ``results.json`` found (recursively) under ``dirs``; columns as in the module doc.

    Raises ResultsError when none is found, when one is not valid JSON, when runs of different
    datasets (name or content fingerprint) are mixed, or when no run completed.
    """
    if not dirs:
        raise ResultsError("no directory given")
    paths = find_results(*dirs)
    if not paths:
        raise ResultsError(
            f"no {RESULTS_FILE} found under {', '.join(str(d) for d in dirs)}: "
            "pass a run or sweep directory written by `python run.py`"
        )
    rows = []
    for path in paths:
        try:
            rows.append(_local_row(path, json.loads(path.read_text())))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ResultsError(f"{path}: not a valid results file ({e})") from None
    return _frame(rows)


# --- Weights & Biases ----------------------------------------------------------------------------


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
    }


def _is_metric(key: str, value: Any) -> bool:
    # "test/reconstructions/width" and the like describe logged images, not metrics.
    split = key.startswith(("val/", "test/")) and key.count("/") == 1
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and (split or key in SUMMARY_METRICS)


def _wandb_row(record: dict[str, Any]) -> dict[str, Any]:
    config = {
        k: v
        for k, v in record["config"].items()
        if not k.startswith("_") and k not in MODULE_HPARAMS
    }
    # val/elbo's summary holds its best and last value (vaesweep.dashboard): the frame, as
    # results.json, has the last.
    summary = {k: summary_value(v) for k, v in record["summary"].items()}
    return {
        "identity": {
            "run_dir": f"wandb:{record['path']}",
            "sweep_dir": record.get("group"),
            "job_name": record.get("name"),
            "status": WANDB_STATES.get(str(record.get("state")).lower(), "failed"),
            "error": None,
            "seed": config.get("seed"),
            "duration_s": summary.get("_runtime"),
            "dataset": (config.get("data") or {}).get("name"),
            "dataset_fingerprint": None,
        },
        "metrics": {k: v for k, v in summary.items() if _is_metric(k, v)},
        "config": flatten(config),
        "overrides": parse_overrides(split_job_name(record.get("name") or "")),
    }


def frame_from_wandb(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """W&B runs, as dicts of path, name, group, state, config and summary → the tidy frame.

    The run's name is its job name (the overrides), so the swept values come from it; the
    status comes from the W&B state (finished → completed; failed, crashed, killed → failed);
    ``run_dir`` is ``wandb:ENTITY/PROJECT/RUN_ID`` and ``sweep_dir`` the W&B group. The
    sweep's summary run (job type ``summary``) is left out.
    """
    # The sweep's summary run (a table and figures, no metrics of its own) is not a job.
    rows = [_wandb_row(r) for r in records if r.get("job_type") != SUMMARY_JOB_TYPE]
    if not rows:
        raise ResultsError("no W&B runs given")
    return _frame(rows)


def load_wandb(project: str, group: str) -> pd.DataFrame:
    """The runs of W&B group ``group`` in ``project`` ("entity/project"), through wandb.Api().

    Needs a network and ``wandb login``; a sweep's group is printed in each run's W&B page and
    is the sweep directory's last two parts joined by "_" (``2026-01-31_12-00-00-123456-ab12``).
    """
    import wandb

    runs = wandb.Api().runs(project, filters={"group": group})
    records = [wandb_record(run) for run in runs]
    if not records:
        raise ResultsError(f"no W&B runs in {project} with group {group!r}")
    return frame_from_wandb(records)


# --- aggregation and output --------------------------------------------------------------------


def excluded_message(df: pd.DataFrame) -> str | None:
    """ "N of M runs excluded ... (k failed, ...)" when some runs did not complete, else None."""
    bad = df[df["status"] != "completed"]
    if bad.empty:
        return None
    counts = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
    return f"{len(bad)} of {len(df)} runs excluded from the aggregates ({counts})"


def completed(df: pd.DataFrame, warn: bool = False) -> pd.DataFrame:
    """The completed runs only (attrs kept); with ``warn``, warns with the count of the others."""
    message = excluded_message(df)
    if warn and message:
        warnings.warn(message, stacklevel=3)
    return df[df["status"] == "completed"]


def _attr(df: pd.DataFrame, name: str) -> list[str]:
    if name not in df.attrs:
        raise ResultsError(
            f"df.attrs[{name!r}] is missing (a frame not made by load_results, or read back "
            "from a file): pass by=[...] and metrics=[...] explicitly"
        )
    return list(df.attrs[name])


def swept_keys(df: pd.DataFrame) -> list[str]:
    """The swept keys of a frame made by this module (``df.attrs["swept"]``)."""
    return _attr(df, "swept")


def metric_names(df: pd.DataFrame) -> list[str]:
    """The metric columns of a frame made by this module (``df.attrs["metrics"]``)."""
    return _attr(df, "metrics")


def config_keys(df: pd.DataFrame) -> list[str]:
    """Swept keys that define a configuration: all but ``seed``."""
    return [k for k in swept_keys(df) if k != "seed"]


def aggregate(
    df: pd.DataFrame,
    by: list[str] | None = None,
    metrics: list[str] | None = None,
) -> pd.DataFrame:
    """Mean, std (ddof=1), sem = std/√count and count of each metric over the runs of a group.

    by: grouping columns (default: the swept keys except ``seed``, so groups pool seeds);
    metrics: metric columns (default: all). Only completed runs count; the others are left
    out with a warning. Columns: the ``by`` keys, then ``METRIC.mean``, ``METRIC.std``,
    ``METRIC.sem``, ``METRIC.count`` per metric (count of non-missing values).
    """
    by = config_keys(df) if by is None else list(by)
    metrics = metric_names(df) if metrics is None else list(metrics)
    missing = [c for c in [*by, *metrics] if c not in df.columns]
    if missing:
        raise KeyError(f"columns not in the frame: {missing}")
    done = completed(df, warn=True)
    groups = done.groupby(by, dropna=False, sort=True) if by else [((), done)]
    rows = []
    for key, group in groups:
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        for m in metrics:
            values = group[m].dropna().to_numpy(dtype=float)
            std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
            row[f"{m}.mean"] = float(np.mean(values)) if len(values) else math.nan
            row[f"{m}.std"] = std
            row[f"{m}.sem"] = std / math.sqrt(len(values)) if len(values) > 1 else math.nan
            row[f"{m}.count"] = len(values)
        rows.append(row)
    out = pd.DataFrame(rows, columns=[*by, *(f"{m}.{s}" for m in metrics for s in STATS)])
    out.attrs = {"by": by, "metrics": metrics}
    return out


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns mixing types (e.g. ``trainer.devices`` = 1 or "auto") become strings."""
    out = df.copy()
    for name in out.select_dtypes(include="object").columns:
        kinds = {type(v) for v in out[name] if v is not None and v == v}
        if len(kinds) > 1:
            out[name] = out[name].map(lambda v: None if v is None or v != v else str(v))
    return out


def write_frame(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``df`` as CSV (``.csv``) or Parquet (``.parquet``), atomically; returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ResultsError(f"{path}: unknown output format {suffix!r}; use .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            _parquet_safe(df).to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
