"""A job directory that already holds a result is reused only for the same config.

A relaunch finds a job's earlier result in its directory (``hydra.run.dir=DIR``, or a sweep's
job directory) and skips a completed job or resumes an interrupted one. That is right only
when the earlier result was computed with the config now asked for: otherwise the old
metrics would be reported as the new run's, or a checkpoint trained under one config would be
resumed under another. So the config stored in ``results.json`` is compared with the
requested one, key by key, over every key that can change a job's numbers; a difference is
refused before anything in the directory is touched, naming the keys that differ.

Not compared: the keys of :data:`vaesweep.effective.NOT_RESULTS` (where a job runs and how it
logs: ``data.root``, ``data.download``, ``paths.*``, ``threads``, ``sweep.*``, ``label.*``,
``logger.*``, the progress bar and the model summary), and keys that no job with either
config reads (:func:`vaesweep.effective.result_config`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaesweep.config import ConfigError
from vaesweep.record import RESULTS_FILE

#: Earlier results a job must match before it is skipped or resumed.
REUSED = ("completed", "running", "interrupted")
MAX_LISTED = 8


class ConfigMismatch(ConfigError):
    """A job directory holds a result of another config."""


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    if isinstance(node, int | float) and not isinstance(node, bool):
        return {prefix[:-1]: float(node)}  # beta=1 and beta=1.0 are the same job
    return {prefix[:-1]: node}


def _compared(cfg: DictConfig) -> set[str]:
    from vaesweep.effective import result_config

    return set(result_config(cfg))


def differences(stored: dict[str, Any], requested: DictConfig) -> list[tuple[str, Any, Any]]:
    """(key, stored value, requested value) for every compared key whose values differ; a
    key missing on one side has the value ``<absent>``."""
    from vaesweep.components import with_targets
    from vaesweep.effective import NOT_RESULTS, _plain

    stored = with_targets(stored)
    wanted = _plain(requested)
    keys = _compared(requested)
    with contextlib.suppress(Exception):  # a config this version cannot analyse
        keys |= _compared(OmegaConf.create(stored))
    keys = {k for k in keys if not any(k == p or k.startswith(p + ".") for p in NOT_RESULTS)}
    old, new = _flat(stored), _flat(wanted)
    absent = "<absent>"
    return [
        (key, old.get(key, absent), new.get(key, absent))
        for key in sorted(keys)
        if old.get(key, absent) != new.get(key, absent)
    ]


def describe_differences(diffs: list[tuple[str, Any, Any]]) -> str:
    shown = [f"{key}: {old!r} → {new!r}" for key, old, new in diffs[:MAX_LISTED]]
    if len(diffs) > MAX_LISTED:
        shown.append(f"and {len(diffs) - MAX_LISTED} more")
    return "; ".join(shown)


def mismatch(run_dir: Path, cfg: DictConfig) -> str | None:
    """Why ``run_dir``'s earlier result may not be reused for ``cfg``, else None (no result,
    one that is replaced anyway, or the same config)."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        stored = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(stored, dict) or stored.get("status") not in REUSED:
        return None
    config = stored.get("config")
    if not isinstance(config, dict):
        return None  # not written by vaesweep: nothing to compare with
    diffs = differences(config, cfg)
    if not diffs:
        return None
    status = stored["status"]
    what = (
        "its metrics would be reported as this run's"
        if status == "completed"
        else "its checkpoint would be resumed under another config"
    )
    return (
        f"{run_dir} holds a {status} run of a different config ({what}): "
        f"{describe_differences(diffs)}. Use another directory (hydra.run.dir=, "
        "hydra.sweep.dir=), or move this one away to replace it"
    )


def refuse_other_config(run_dir: Path, cfg: DictConfig) -> None:
    """Raises ConfigMismatch when ``run_dir`` holds a completed, running or interrupted
    result of a config other than ``cfg`` (nothing in the directory is touched)."""
    reason = mismatch(run_dir, cfg)
    if reason:
        raise ConfigMismatch(reason)


def sweep_refusal(
    config: DictConfig, jobs: list[list[str]], configs: list[DictConfig]
) -> str | None:
    """The first job of a sweep (its overrides and composed config) whose directory holds a
    result of another config, as a refusal message; None when there is none. ``config``:
    the multirun's config (with ``hydra``)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vaesweep.sweep import job_dirname

    sweep_dir = Path(config.hydra.sweep.dir)
    if not any(sweep_dir.glob(f"*/{RESULTS_FILE}")):
        return None
    naming = config.hydra.job.config.override_dirname
    parser = OverridesParser.create()
    for overrides, cfg in zip(jobs, configs, strict=True):
        name = get_overrides_dirname(
            parser.parse_overrides(overrides),
            list(naming.exclude_keys),
            naming.item_sep,
            naming.kv_sep,
        )
        reason = mismatch(sweep_dir / job_dirname(name), cfg)
        if reason:
            return reason
    return None
