"""Rows of runs → the tidy frame: identity, swept values, metrics, the flattened config (the
columns :mod:`vaesweep.analysis.results` describes), in one order whatever the source; checked for
mixed datasets and for a completed run."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from vaesweep.core.helpers import INT_OR_FRACTION, compared_number, plural
from vaesweep.run.record import COMPLETED, DUPLICATE, changes_results

IDENTITY = (
    "run_dir",
    "sweep_dir",
    "job_name",
    "status",
    "error",
    "seed",
    "duration_s",
    "trained_steps",
    "trained_epochs",
    "stopped_by",
    "dataset",
    "dataset_fingerprint",
    "commit",
    "dirty",
    "versions",
    "changed_between_attempts",
)
CONFIG_PREFIX = "config."
RENAMED_METRICS = {"beta": "final_beta"}

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


class ResultsError(ValueError):
    """Runs that cannot be collected into one frame (none found, mixed datasets, none usable)."""


def _key_rank(key: str) -> tuple:
    head = key.split(".")[0]
    if head in LAST_KEYS:
        return (len(KEY_ORDER) + 1 + LAST_KEYS.index(head), key)
    return (KEY_ORDER.index(head) if head in KEY_ORDER else len(KEY_ORDER), key)


def _metric_rank(name: str) -> tuple:
    prefix = next((i for i, p in enumerate(METRIC_ORDER) if name.startswith(p)), len(METRIC_ORDER))
    return (prefix, name)


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


def _selects_groups(key: str, rows: list[dict[str, Any]], known: list[int]) -> bool:
    """Whether override ``key`` only selects config groups, leaving no value of its own in
    the config: no run's config holds the key or ``<key>.name`` (``experiment=...``,
    ``trainer=default``). Such a key has no value in a run that did not pass it, so it
    tells nothing of the configuration: the config values it set do."""
    return not any(key in rows[i]["config"] or f"{key}.name" in rows[i]["config"] for i in known)


def _missing(value: Any) -> bool:
    """None or NaN: a value a run does not have."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _comparable(value: Any, key: str = "") -> Any:
    """``value`` as runs are told apart by it: NaN is None; numbers compare as numbers
    (``beta`` 1 and 1.0 are one value), but for the batch-or-fraction keys
    (``trainer.limit_train_batches``, ..., :data:`INT_OR_FRACTION`) the int 1 (one batch) is
    not 1.0 (every batch), and a bool is never the number it equals (True is not 1)."""
    if _missing(value):
        return None
    if isinstance(value, bool):
        return ("bool", value)
    if key in INT_OR_FRACTION and isinstance(value, int) and value == 1:
        return ("one batch", value)
    return value


def _one_batch_apart(key: str, values: list[Any]) -> bool:
    """Whether the values of a batch-or-fraction key hold both the int 1 (one batch) and
    the float 1.0 (every batch), which a frame's column of numbers would pool."""
    if key not in INT_OR_FRACTION:
        return False
    kinds = {type(v) for v in values if not isinstance(v, bool) and v == 1}
    return {int, float} <= kinds


def _as_written(value: Any) -> Any:
    """A value of a batch-or-fraction column that holds 1 and 1.0: as a command line writes
    it (``"1"``, ``"1.0"``, ``"0.25"``); missing stays None."""
    if _missing(value):
        return None
    return str(value)


def _rank(value: Any) -> Any:
    """A value's place in an order of mixed types (``trainer.precision`` 32 and
    ``"bf16-mixed"``): numbers first, by value, then the rest by their text; missing: None."""
    if _missing(value):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _sort_key(column: pd.Series) -> pd.Series:
    """:func:`_rank` of every value of a column (``DataFrame.sort_values(key=...)``)."""
    return column.map(_rank)


def result_config(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a flat config that can change a result (all but those under
    :data:`vaesweep.run.record.NOT_RESULTS`): what makes two runs one configuration."""
    return {k: v for k, v in config.items() if changes_results(k)}


def _swept(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[Any]], list[str]]:
    """The keys whose value differs between the rows (in column order), every such key's
    value per row, and notes. The keys: the override keys whose value differs (but for those
    that only select config groups, :func:`_selects_groups`), and the config keys no command
    line swept that split runs the override keys would pool (:func:`_unswept`)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["overrides"] if k not in keys]
    values = {
        key: [_swept_value(key, row["overrides"], row["config"]) for row in rows] for key in keys
    }
    # A row without a config or overrides (an unreadable results.json) has no say.
    known = [i for i, row in enumerate(rows) if row["config"] or row["overrides"]]
    differ = [k for k in keys if len({_comparable(values[k][i], k) for i in known}) > 1]
    # The launch's own controls (sweep.resume, sweep.rerun_failed, ...) are no setting of a
    # run; an override that only selects config groups is told by the config values it set.
    selections = [k for k in differ if _selects_groups(k, rows, known)]
    swept = [k for k in differ if not k.startswith("sweep.") and k not in selections]
    hidden = _unswept(rows, values, swept, known)
    for key in hidden:
        if key not in values:  # (config groups chosen are given theirs by _unswept)
            values[key] = [_swept_value(key, row["overrides"], row["config"]) for row in rows]
    notes = [
        f"{k} ({_listing((values[k][i] for i in known), k)}) differs between the runs but only "
        "selects config groups (no value of its own in the config): runs are told apart by "
        "the config values that differ, not by it"
        for k in selections
        if not k.startswith("sweep.")
    ]
    if hidden:
        listed = [f"{k} ({_listing(_held(k, rows, values, known), k)})" for k in hidden]
        named = listed[0] if len(listed) == 1 else f"{', '.join(listed[:-1])} and {listed[-1]}"
        notes.append(
            f"runs differ in {named}, which no command line swept: grouped by "
            + ("it" if len(hidden) == 1 else "them")
        )
    return sorted([*swept, *hidden], key=_key_rank), values, notes


def _held(
    key: str, rows: list[dict[str, Any]], values: dict[str, list[Any]], known: list[int]
) -> list[Any]:
    """The values of ``key`` in the runs that hold it (a config key), or of every run (a
    config group: its option)."""
    if any(key in rows[i]["config"] for i in known):
        return [rows[i]["config"][key] for i in known if key in rows[i]["config"]]
    return [values[key][i] for i in known]


def _listing(values: Iterable[Any], key: str = "") -> str:
    """The distinct values (as :func:`_comparable` tells them apart), sorted (numbers as
    numbers), None as "null" (last), joined by ", "; at most 5."""
    distinct: dict[Any, Any] = {}
    for v in values:
        distinct.setdefault(_comparable(v, key), v)
    found = [v for c, v in distinct.items() if c is not None]
    found.sort(key=_rank)
    apart = _one_batch_apart(key, found)
    shown = [str(v) if apart else f"{v:g}" if isinstance(v, float) else str(v) for v in found]
    shown += ["null"] if None in distinct else []
    return ", ".join(shown[:5]) + (" ..." if len(shown) > 5 else "")


def _unswept(
    rows: list[dict[str, Any]], values: dict[str, list[Any]], swept: list[str], known: list[int]
) -> list[str]:
    """The config keys on no command line whose value differs between the runs (two sweeps
    pooled, one with a primary config that sets ``trainer.max_epochs``): keys that can change
    a result (:func:`result_config`) other than ``seed`` (what the aggregates average over),
    and not set by what the command lines swept. Set by them: a key whose value follows the
    option of a swept config group (``likelihood._target_`` when ``likelihood`` is swept, every
    key of ``experiment=...``), or equals a swept key in every run (``beta_schedule.beta`` =
    ``${beta}``). A key that differs together with a swept config key (``trainer.max_epochs``
    on the command line, ``likelihood`` in a primary config) is one: the runs do not say
    which made the difference.

    Values compare as Python values (20 == 20.0); NaN is None. A key absent from a run's
    config (a run of an older version, before the key existed) gives that run no say: the
    key differs only where the runs that hold it hold different values (None included: an
    explicit null is a setting). The absent key meant its default then, the same as the
    others' in the common case; the runs that hold the key still tell where it changed.

    A config group whose option differs (``likelihood.name``) is named like the group
    (``likelihood``), as on a command line; the keys of its group are then set by it."""
    configs = {i: result_config(rows[i]["config"]) for i in known}
    candidates = sorted(
        {k for config in configs.values() for k in config} - set(values) - {"seed"},
        key=_key_rank,
    )
    # Swept override keys that are config groups (not keys of the config): their options
    # set other keys.
    groups = [k for k in swept if all(k not in rows[i]["config"] for i in known)]

    def unexplained(key: str, by: list[str]) -> bool:
        held = [i for i in known if key in configs[i]]  # absent: no say
        if len({_comparable(configs[i][key], key) for i in held}) < 2:
            return False
        for k in swept:
            if all(
                _comparable(configs[i][key], key) == _comparable(values[k][i], key) for i in held
            ):
                return False  # an interpolation of a swept key
        seen: dict[tuple, set] = {}
        for i in held:
            option = tuple(_comparable(values[k][i], k) for k in by)
            seen.setdefault(option, set()).add(_comparable(configs[i][key], key))
        return any(len(found) > 1 for found in seen.values())

    chosen = [
        key.removesuffix(".name")
        for key in candidates
        if key.endswith(".name")
        and key.removesuffix(".name") in set(KEY_ORDER) - set(values)
        and unexplained(key, groups)
    ]
    for group in chosen:
        values[group] = [_swept_value(group, row["overrides"], row["config"]) for row in rows]
    # An option chosen in a primary config sets the keys of its group (a command line's may
    # set others: experiment=...).
    return chosen + [
        k
        for k in candidates
        if unexplained(k, [*groups, *(g for g in chosen if k.startswith(f"{g}."))])
    ]


def build_frame(rows: list[dict[str, Any]], completed_required: bool = True) -> pd.DataFrame:
    """Rows of {"identity", "metrics", "config" (flat), "overrides"} → the tidy frame, checked
    (one dataset; at least one completed run unless not ``completed_required``)."""
    swept, values, unswept_notes = _swept(rows)
    as_text = [k for k in swept if _one_batch_apart(k, values[k])]
    for key in as_text:  # a column of numbers would pool them
        values[key] = [_as_written(v) for v in values[key]]
        unswept_notes.append(
            f"{key} holds 1 (one batch) and 1.0 (every batch), which Lightning reads apart: "
            "its column holds the values as written (text), so they stay apart"
        )
    records, metric_columns = [], []
    for i, row in enumerate(rows):
        metrics = {RENAMED_METRICS.get(k, k): v for k, v in row["metrics"].items()}
        metric_columns += [k for k in metrics if k not in metric_columns]
        record = dict(row["identity"])
        record.update({k: values[k][i] for k in swept if k not in IDENTITY})
        record.update(metrics)
        record.update({f"{CONFIG_PREFIX}{k}": v for k, v in row["config"].items()})
        records.append(record)
    caveats = [
        *_mark_duplicates(records, rows),
        *_code_states(records),
        *_changed_between_attempts(records),
        *_cut_by_time(records),
    ]
    notes = [*unswept_notes, *caveats]
    metric_columns.sort(key=_metric_rank)
    config_columns = sorted({c for r in records for c in r if c.startswith(CONFIG_PREFIX)})
    columns = [
        *IDENTITY,
        *(k for k in swept if k not in IDENTITY),
        *metric_columns,
        *config_columns,
    ]
    df = pd.DataFrame.from_records(records, columns=columns)
    # Lightning reads trainer.limit_*_batches=1 (one batch) and 1.0 (all of them) apart: kept
    # as recorded (a column of ints with a missing value would hold floats).
    for name in (c for c in config_columns if c.startswith(f"{CONFIG_PREFIX}trainer.limit_")):
        df[name] = pd.Series([r.get(name) for r in records], dtype=object)
    if swept:
        order = {"kind": "stable", "na_position": "last", "ignore_index": True}
        try:
            df = df.sort_values(swept, **order)
        except TypeError:  # a column of numbers and text (trainer.precision=32,bf16-mixed)
            df = df.sort_values(swept, key=_sort_key, **order)
    for name in metric_columns:
        df[name] = pd.to_numeric(df[name], errors="coerce").astype(float)
    df.attrs["swept"] = swept
    df.attrs["metrics"] = metric_columns
    df.attrs["notes"] = notes
    df.attrs["caveats"] = caveats  # what a table of these numbers must say (table notes)
    _check(df, completed_required)
    return df


def _mark_duplicates(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """Counts every configuration and seed once. Among the completed runs with the same
    configuration (every key that can change a result, the seed included) and the same
    data, one run counts: the newest (its ``finished_at``; of runs that finished alike, such
    as copies of one run, the one holding the most ``vaesweep evaluate`` results, so that
    ``--evaluation`` finds them, then the first one read), and every other gets the status
    ``duplicate``: a copy with the same metrics (a run collected twice, e.g. from two
    sweeps that both ran it), or a run with other metrics (other code, or a device that is
    not deterministic): a seed run twice is one sample, not two, for the means, the std
    and the seed counts. Returns a note naming the runs with other metrics left out."""
    groups: dict[str, list[int]] = {}
    for i, (record, row) in enumerate(zip(records, rows, strict=True)):
        if record["status"] != COMPLETED or not row["config"]:
            continue
        # As two jobs' configs are compared: beta 1 and 1.0 are one value, the int 1 of a
        # batch-or-fraction key is not 1.0 (core.helpers.compared_number).
        config = {k: compared_number(k, v) for k, v in result_config(row["config"]).items()}
        key = json.dumps([config, record["dataset_fingerprint"]], sort_keys=True, default=str)
        groups.setdefault(key, []).append(i)
    differ: list[str] = []

    def trained(i: int) -> str:  # its metrics, not those of later evaluations
        values = {k: v for k, v in rows[i]["metrics"].items() if "@" not in k}
        return json.dumps(values, sort_keys=True, default=str)

    def evaluated(i: int) -> int:  # how many evaluations (vaesweep evaluate) the run holds
        return len({k.split("@", 1)[1] for k in rows[i]["metrics"] if "@" in k})

    for members in groups.values():
        # The newest run counts; of runs that finished alike (copies), the one with the most
        # evaluations, then the first one read.
        kept = max(
            members,
            key=lambda i: (str(rows[i].get("finished_at") or ""), evaluated(i), -i),
        )
        for i in members:
            if i == kept:
                continue
            records[i]["status"] = DUPLICATE
            if trained(i) == trained(kept):
                records[i]["error"] = (
                    f"the same configuration, seed and metrics as {records[kept]['run_dir']}: "
                    "counted once"
                )
                continue
            records[i]["error"] = (
                f"the same configuration and seed as {records[kept]['run_dir']}, which "
                "finished later, but other metrics: counted once, as that run"
            )
            differ.append(f"{records[i]['run_dir']} (left out) and {records[kept]['run_dir']}")
    if not differ:
        return []
    return [
        f"{len(differ)} pair(s) of runs share a configuration and seed but not their metrics "
        "(other code, or a device that is not deterministic): each seed is counted once, as "
        f"its newest run: {'; '.join(differ[:3])}" + (" ..." if len(differ) > 3 else "")
    ]


def _code_states(records: list[dict[str, Any]]) -> list[str]:
    """A note when the completed runs come from more than one code state (git commit, dirty
    flag, Python and package versions, the CPU kernels torch ran (``cpu_capability``), as
    results.json records them; unknown for W&B rows):
    their numbers are aggregated and compared together, which only holds if the code did
    not change them. Names each state, the packages that differ, and its runs' count."""
    states: dict[tuple[Any, Any, Any], int] = {}
    for r in records:
        if r["status"] == COMPLETED and (r.get("commit") or r.get("versions")):
            state = (r.get("commit"), r.get("dirty"), r.get("versions"))
            states[state] = states.get(state, 0) + 1
    if len(states) < 2:
        return []
    packages = [dict(p.split("=", 1) for p in (v or "").split() if "=" in p) for *_, v in states]
    differ = sorted({k for p in packages for k in p if len({q.get(k) for q in packages}) > 1})

    def label(commit: Any, dirty: Any, versions: dict[str, str]) -> str:
        code = f"commit {str(commit)[:8]}" if commit else "no git commit"
        code += " (uncommitted changes)" if dirty else ""
        return ", ".join([code, *(f"{k}={versions.get(k, '?')}" for k in differ)])

    listing = "; ".join(
        f"{label(commit, dirty, p)}: {plural(n, 'run')}"
        for ((commit, dirty, _), n), p in zip(states.items(), packages, strict=True)
    )
    return [
        f"the completed runs come from {len(states)} code states, aggregated and compared "
        f"together: {listing}. Their numbers are comparable only if those changes left them "
        "alike (the frame's commit, dirty and versions columns tell the runs apart)"
    ]


def _changed_between_attempts(records: list[dict[str, Any]]) -> list[str]:
    """A note when completed runs were resumed with other versions or devices than they
    started with (results.json ``changed_between_attempts``): their numbers can differ
    from an uninterrupted run's, so from their seeds' and neighbours'."""
    mixed = [r for r in records if r["status"] == COMPLETED and r.get("changed_between_attempts")]
    if not mixed:
        return []
    shown = "; ".join(
        f"{Path(str(r['run_dir'])).name} ({r['changed_between_attempts']})" for r in mixed[:3]
    )
    return [
        f"{plural(len(mixed), 'completed run')} resumed with other versions or devices than "
        f"their earlier attempts computed with, so their numbers can differ from an "
        f"uninterrupted run's: {shown}"
        + (" ..." if len(mixed) > 3 else "")
        + " (the frame's changed_between_attempts column)"
    ]


def _cut_by_time(records: list[dict[str, Any]]) -> list[str]:
    """A note when trainer.max_time ended completed runs (results.json ``trained``): how
    far each got depends on the machine and its load, so the seeds of one configuration may
    have trained different budgets and the numbers do not reproduce."""
    cut = [r for r in records if r["status"] == COMPLETED and r.get("stopped_by") == "max_time"]
    if not cut:
        return []
    epochs = sorted(int(r["trained_epochs"]) for r in cut if r.get("trained_epochs") is not None)
    span = (
        f" after {epochs[0]}–{epochs[-1]} epochs"
        if len(set(epochs)) > 1
        else (f" after {plural(epochs[0], 'epoch')}" if epochs else "")
    )
    done = sum(r["status"] == COMPLETED for r in records)
    return [
        f"trainer.max_time ended {len(cut)} of the {done} completed runs{span}: how far a run "
        "gets depends on the machine and its load, so these numbers do not reproduce and "
        "seeds of one configuration may have trained different budgets (the frame's "
        "trained_epochs, trained_steps and stopped_by columns)"
    ]


def _check(df: pd.DataFrame, completed_required: bool) -> None:
    """Raises ResultsError for mixed datasets or, if ``completed_required``, when no run
    completed."""
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
    if completed_required and not (df["status"] == COMPLETED).any():
        counts = df["status"].value_counts()
        errors = df["error"].dropna().drop_duplicates().head(3).tolist()
        raise ResultsError(
            f"none of the {len(df)} runs completed ({', '.join(f'{n} {s}' for s, n in counts.items())})"
            + (f"; errors: {' | '.join(errors)}" if errors else "")
        )
