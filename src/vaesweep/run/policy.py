"""The job policy: what a launch does with a job directory, decided before anything in it is
touched. This module owns every such decision:

- a ``completed`` result → skipped (:func:`left_alone`; not a byte of the directory changes);
- a ``failed``/``diverged`` result → re-run only with ``sweep.rerun_failed=true``, except one
  whose config was refused before it trained (run again, and so checked again); one that
  failed after its fit had completed is then tested again from its last checkpoint, not
  trained again (:func:`retest_from`);
- ``running``/``interrupted`` → resumed from ``checkpoints/last.ckpt`` (:mod:`vaesweep.run.jobs`
  opens the record);
- a result of another config → refused (:func:`refuse_other_config`, below);
- a job claimed by another live process → skipped (:func:`claimed_elsewhere`; the claim
  mechanism is :mod:`vaesweep.run.claims`);
- Hydra's ``.hydra`` files are not written into a job directory that will be skipped
  (:func:`config_subdir`), nor into one whose results.json is lost until it is identified,
  nor into one that holds a result of another config (refused).

Another config in the directory.

A relaunch finds a job's earlier result in its directory (``hydra.run.dir=DIR``, or a sweep's
job directory) and skips a completed job or resumes an interrupted one. That is right only
when the earlier result was computed with the config now asked for: otherwise the old
metrics would be reported as the new run's, or a checkpoint trained under one config would be
resumed under another. So the config stored in ``results.json`` is compared with the
requested one, key by key, over every key that can change a job's numbers; a difference is
refused before anything in the directory is touched, naming the keys that differ.

Not compared: the keys of :data:`vaesweep.run.record.NOT_RESULTS` (where a job runs and how it
logs: ``data.root``, ``data.download``, ``paths.*``, ``threads``, ``sweep.*``, ``label.*``,
``logger.*``, the progress bar and the model summary), and keys that no job with either
config reads (:func:`vaesweep.run.effective.result_config`).
"""

from __future__ import annotations

import contextlib
import copy
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from vaesweep.core.checks import ConfigError
from vaesweep.core.helpers import flatten, plain, same_value
from vaesweep.model.components import with_targets
from vaesweep.run import record
from vaesweep.run.claims import ClaimInfo, held_by_other
from vaesweep.run.effective import result_config
from vaesweep.run.record import (
    COMPLETED,
    DIVERGED,
    FAILED,
    INTERRUPTED,
    RUNNING,
    changes_results,
)
from vaesweep.run.signals import sweep_stopped

#: Earlier results a job must match before it is skipped or resumed.
REUSED = (COMPLETED, RUNNING, INTERRUPTED)
MAX_LISTED = 8


class ConfigMismatch(ConfigError):
    """A job directory holds a result of another config."""


def left_alone(run_dir: str | Path, rerun_failed: bool) -> str | None:
    """The status of an earlier result that a re-launch must not touch, else None.

    ``completed`` jobs are always left alone; ``failed``/``diverged`` ones unless
    ``rerun_failed``, except a job refused before it trained (:func:`record.refused`: run
    again); ``running`` (killed) and ``interrupted`` ones are resumed.
    """
    status = record.status(run_dir)
    if status == FAILED and record.refused(record.read(run_dir)):
        return None  # its config was refused: nothing was computed, checked again
    if status == COMPLETED and record.untested(record.read(run_dir)):
        return None  # resumed from its last checkpoint and tested again
    if status == COMPLETED or (status in (FAILED, DIVERGED) and not rerun_failed):
        return status
    return None


def claimed_elsewhere(run_dir: str | Path, claim_timeout_s: float) -> ClaimInfo | None:
    """The live claim another process holds on the job, None when there is none."""
    return held_by_other(run_dir, claim_timeout_s)


def config_subdir(
    run_dir: str, rerun_failed: bool, claim_timeout_s: float, config: DictConfig | None = None
) -> str | None:
    """Where Hydra writes a job's ``.hydra/*.yaml`` (before the task runs): nowhere for a job
    that will be skipped (finished, or being run by another live process), so its files
    (and their mtimes) stay as they were; nor for one handed out after the launching
    process of a parallel sweep was stopped (it will not start); nor, given the job's
    ``config`` (Hydra's, its ``hydra`` node included), for one whose directory holds a
    running or interrupted result of another config, which the task refuses
    (ConfigMismatch: nothing in the directory changes). That comparison is made only for a
    result the job would continue: a new job's directory costs no more than before."""
    if sweep_stopped():
        return None
    if left_alone(run_dir, rerun_failed) or claimed_elsewhere(run_dir, claim_timeout_s):
        return None
    status = record.status(run_dir)
    if status in (None, record.UNREADABLE) and record.run_files(run_dir):
        return None  # files whose results.json is lost: kept as they are until identified
    if config is not None and status in REUSED and _other_config_in(run_dir, config):
        return None
    return ".hydra"


def _other_config_in(run_dir: str, config: DictConfig) -> bool:
    """Whether ``run_dir`` holds a result of a config other than the job's (``config``,
    with or without its ``hydra`` node). False when the comparison cannot be made here:
    the task makes it again, and refuses the job then."""
    try:
        job = config
        if "hydra" in config:  # the job's own config, as Hydra hands it to the task
            job = copy.deepcopy(config)
            with read_write(job), open_dict(job):
                del job["hydra"]
        return mismatch(Path(run_dir), job) is not None
    except Exception:  # noqa: BLE001 (decided by the task's own check)
        return False


class DamagedCheckpoint(RuntimeError):
    """A checkpoint whose bytes are not those that were written (a zip CRC mismatch)."""


_TRAIN_AGAIN = (
    "Run the same command with sweep.rerun_failed=true to train this job from the start (the "
    "checkpoint is replaced), or delete the run directory"
)
#: What a damaged checkpoint was not used for, and what to do (verify_checkpoint's ``use``).
DAMAGED_ADVICE = {
    "resumed": f"it was not resumed. {_TRAIN_AGAIN}",
    "tested": f"it was not tested. {_TRAIN_AGAIN}",
    "evaluated": (
        "it was not evaluated, and nothing was written. The run's own test metrics in its "
        "results.json stand; evaluate its other checkpoint (eval.checkpoint=last or best) if "
        "that one is intact, or move the run directory away and run its command again to "
        "train it anew"
    ),
}


def verify_checkpoint(path: Path, use: str = "resumed") -> None:
    """Raises DamagedCheckpoint, naming the file, unless every member of the checkpoint (a
    zip archive, torch.save's format) matches the CRC-32 written with it. Reads the whole
    file once (milliseconds for vaesweep's models). ``use``: what it was not, being damaged
    (``resumed``, ``tested`` by a job; ``evaluated`` by ``vaesweep evaluate``), which says
    what to do (:data:`DAMAGED_ADVICE`). torch.load checks no CRC: a damaged tensor loads
    silently."""
    advice = DAMAGED_ADVICE[use]
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged ({e}): {advice}") from None
    if bad is not None:
        raise DamagedCheckpoint(
            f"checkpoint {path} is damaged (its member {bad} fails its CRC-32 check): {advice}"
        )


#: Config keys that change only a job's test (its evaluation settings): a job tested again
#: from its fit's checkpoint may have them changed (a smaller eval.iwae_chunk after an out
#: of memory), never a key its training read.
TEST_ONLY = ("eval.",)


def retest_from(run_dir: str | Path, cfg: DictConfig) -> Path | None:
    """The checkpoint to test a failed job again from, without training it again: its
    ``checkpoints/last.ckpt`` when it failed after its fit had completed
    (:func:`record.failed_after_fit`: the checkpoint holds the fit's final weights), every
    checkpoint in the directory is intact (one damaged is tested, or resumed, by no one: the
    job trains from step 0) and ``cfg`` asks for the config it trained (evaluation settings
    aside, :data:`TEST_ONLY`). None otherwise: the job is trained from step 0."""
    result = record.read(run_dir)
    if not record.failed_after_fit(result) or not isinstance(result.get("config"), dict):
        return None
    directory = Path(run_dir) / "checkpoints"
    last = directory / "last.ckpt"
    if not last.is_file():
        return None
    try:
        for checkpoint in sorted(directory.glob("*.ckpt")):
            verify_checkpoint(checkpoint)
        diffs = differences(result["config"], cfg)
    except Exception:  # noqa: BLE001 (damaged, or a config this version cannot compare)
        return None
    if any(not key.startswith(TEST_ONLY) for key, _, _ in diffs):
        return None
    return last


#: Where a checkpoint keeps the run's own state (val metrics, best val/elbo, identity): the
#: ``state_key`` of the :class:`~vaesweep.run.callbacks.Resumable` callback that saves it.
RUN_STATE_KEY = "Resumable"


def stored_run_state(checkpoint: str | Path | None) -> dict[str, Any]:
    """The run state kept in a checkpoint file ({} without one): read here, without the
    training stack, by the launching process, and by a process whose callback never saw the
    checkpoint loaded (the fit ran in spawned processes)."""
    if checkpoint is None or not Path(checkpoint).exists():
        return {}
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # our own file
    return dict(state.get("callbacks", {}).get(RUN_STATE_KEY, {}))


def stored_identity(run_dir: str | Path) -> tuple[dict[str, Any] | None, str]:
    """(the config the run files in ``run_dir`` belong to, where it was read): identity.json,
    else the copy every checkpoint keeps (the Resumable callback's state); (None, "") when
    neither can be read (a damaged checkpoint identifies nothing)."""
    config = record.read_identity(run_dir)
    if config is not None:
        return config, record.IDENTITY_FILE
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        try:
            verify_checkpoint(last)
            identity = stored_run_state(last).get("identity")
        except Exception:  # damaged or not ours: it identifies nothing
            identity = None
        if isinstance(identity, dict):
            return identity, "checkpoints/last.ckpt"
    return None, ""


def _compared(cfg: DictConfig) -> set[str]:
    return set(result_config(cfg))


def differences(stored: dict[str, Any], requested: DictConfig) -> list[tuple[str, Any, Any]]:
    """(key, stored value, requested value) for every compared key whose values differ; a
    key missing on one side has the value ``<absent>``."""
    stored = with_targets(stored)
    wanted = plain(requested)
    keys = _compared(requested)
    with contextlib.suppress(Exception):  # a config this version cannot analyse
        keys |= _compared(OmegaConf.create(stored))
    keys = {k for k in keys if changes_results(k)}
    # What each job computes: data.preprocess=auto is compared as what it resolves to.
    old, new = flatten(stored), {**flatten(wanted), **result_config(requested)}
    with contextlib.suppress(Exception):
        old.update(result_config(OmegaConf.create(stored)))
    absent = "<absent>"
    # Shown as written (max_epochs 20, not 20.0) where that is the value compared.
    written_old, written_new = flatten(stored, as_float=False), flatten(wanted, as_float=False)
    return [
        (
            key,
            _as_written(written_old, old, key, absent),
            _as_written(written_new, new, key, absent),
        )
        for key in sorted(keys)
        if not same_value(old.get(key, absent), new.get(key, absent))
    ]


def _as_written(written: dict[str, Any], compared: dict[str, Any], key: str, absent: str) -> Any:
    """The value of ``key`` as the config holds it when it is the compared value (an int
    stays an int), else the compared value (data.preprocess=auto: what it resolves to)."""
    value, used = written.get(key, absent), compared.get(key, absent)
    return value if flatten({"v": value}) == {"v": used} else used


def describe_differences(diffs: list[tuple[str, Any, Any]]) -> str:
    shown = [f"{key}: {old!r} → {new!r}" for key, old, new in diffs[:MAX_LISTED]]
    if len(diffs) > MAX_LISTED:
        shown.append(f"and {len(diffs) - MAX_LISTED} more")
    return "; ".join(shown)


def mismatch(run_dir: Path, cfg: DictConfig) -> str | None:
    """Why the files in ``run_dir`` may not be reused for ``cfg``, else None (no earlier run,
    one that is replaced anyway, or the same config).

    The earlier config comes from results.json, or, when that is missing or unreadable and
    the directory holds run files (checkpoints, images, metrics), from identity.json; a
    directory with run files that neither identifies is refused too."""
    stored = record.read(run_dir)
    if stored is not None:
        if stored.get("status") not in REUSED:
            return None
        config = stored.get("config")
        if not isinstance(config, dict):
            return None  # not written by vaesweep: nothing to compare with
        return _other_config(run_dir, config, cfg, f"a {stored['status']} run")
    files = record.run_files(run_dir)
    if not files:
        return None
    lost = "unreadable" if (Path(run_dir) / record.RESULTS_FILE).exists() else "missing"
    config, where = stored_identity(run_dir)
    if config is None:
        return (
            f"{run_dir} holds the files of a run ({', '.join(files)}) but its "
            f"{record.RESULTS_FILE} is {lost} and no {record.IDENTITY_FILE} (nor a readable "
            "checkpoint) says which config they belong to, so they could be another config's: "
            "nothing in the directory was "
            "changed. To start over there, move the directory away (or delete it); to keep "
            "it, use another directory (hydra.run.dir=, hydra.sweep.dir=)"
        )
    return _other_config(
        run_dir, config, cfg, f"the files of a run ({record.RESULTS_FILE} {lost}; {where} says)"
    )


def _other_config(run_dir: Path, stored: dict[str, Any], cfg: DictConfig, what: str) -> str | None:
    diffs = differences(stored, cfg)
    if not diffs:
        return None
    harm = (
        "its metrics would be reported as this run's"
        if what.startswith("a completed")
        else "its checkpoint would be resumed under another config, or overwritten"
    )
    return (
        f"{run_dir} holds {what} of a different config ({harm}): "
        f"{describe_differences(diffs)}. Nothing in it was changed. Use another directory "
        "(hydra.run.dir=, hydra.sweep.dir=), or move this one away to replace it"
    )


def refuse_other_config(run_dir: Path, cfg: DictConfig) -> None:
    """Raises ConfigMismatch when ``run_dir`` holds a completed, running or interrupted
    result of a config other than ``cfg`` (nothing in the directory is touched)."""
    reason = mismatch(run_dir, cfg)
    if reason:
        raise ConfigMismatch(reason)
