"""The run's record on disk, ``results.json``: this module is its only writer and reader.

Schema: status (one of :data:`STATUSES`), metrics (flat dict of floats), config (resolved,
plain dict), overrides, seed, run_dir, sweep_dir, job_name, started_at, finished_at,
duration_s, attempts, wandb_run_id, versions, dataset (name, shape, sizes, fingerprint,
preprocess in force, source: where its files were read), precision (the one Lightning
used, which the config's ``trainer.precision`` need not say: ``16`` runs as
``bf16-mixed`` on a CPU), tested_checkpoint (the weights the test metrics are of:
``best``, ``last``, or ``last`` for ``eval.checkpoint=best`` when the fit never
validated), trained (the optimisation steps and epochs the fit trained, and the budget that
ended it: ``max_epochs``, ``max_steps``, ``max_time`` or ``other``;
vaesweep.run.driver.trained_budget; set once the fit has returned), devices,
changed_between_attempts, error.

``devices`` (set by the driver once the Trainer is built, vaesweep.run.gpus.device_info):
the accelerator, the visible CUDA device ids (``CUDA_VISIBLE_DEVICES``, as a launcher
assigned them), the device names, CUDA and driver versions, and the fraction of a GPU the
job was given (a share below 1: the Ray launcher's ``gpus_per_job``, local_parallel's jobs per GPU;
None for a whole GPU, or when no launcher said).

A job that continues an interrupted attempt (its results.json says running or interrupted)
keeps the first attempt's ``started_at`` and W&B run id; ``duration_s`` adds up the time of
every attempt and ``attempts`` counts them. ``versions`` and ``devices`` are the last
attempt's; where an attempt resumed from a checkpoint ran with other ones than the attempt
before it (another torch, vaesweep commit or CPU kernels; a GPU where it trained on the CPU),
``changed_between_attempts`` names each fact that changed with its values in attempt order
(``{"versions.cpu_capability": ["AVX2", "AVX512"]}``): its numbers can differ from an
uninterrupted run's. Empty otherwise.

Reading: :func:`read` gives the file's object as written (None when there is none or it is
not a JSON object), :func:`status` the status it records, and :func:`read_result` the result
normalised for summaries and frames, with a status that says what the file is worth:

- ``unreadable``: not a JSON object (the reason is in ``error``);
- ``incomplete``: a status that is not one of vaesweep's, or ``completed`` without test
  metrics (a run that recorded nothing it earned);
- otherwise the file's own status.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from vaesweep.core.atomic import write_json_atomic
from vaesweep.core.helpers import now
from vaesweep.run.claims import CLAIM_FILE, DEFAULT_TIMEOUT_S, read_claim

log = logging.getLogger("vaesweep")

RESULTS_FILE = "results.json"
#: The run's config in a file of its own, written before its first checkpoint: a directory
#: whose results.json is lost or damaged still says which config its files belong to.
IDENTITY_FILE = "identity.json"
#: Paper-grade evaluations of a finished run (vaesweep evaluate), one JSON file each, beside
#: results.json and never over it.
EVALUATIONS_DIR = "evaluations"
#: Files (or directories) a run writes into its directory beside results.json; Hydra's own
#: (``.hydra/``, ``train.log``) are written for any launch, so they do not count.
RUN_FILES = (
    IDENTITY_FILE,
    "checkpoints",
    "images.npz",
    "reconstructions.png",
    "samples.png",
    "metrics.csv",
    "wandb",
)
RUNNING, COMPLETED, FAILED, DIVERGED, INTERRUPTED = (
    "running",
    "completed",
    "failed",
    "diverged",
    "interrupted",
)
#: Every status a job records, in the order of a job's life.
STATUSES = (RUNNING, COMPLETED, FAILED, DIVERGED, INTERRUPTED)
#: The metrics a ``completed`` result must hold, finite: the run's score.
EARNED_METRICS = ("test/nll", "test/elbo")
#: Earlier results a new attempt continues (resumes) rather than replaces.
CONTINUED = (RUNNING, INTERRUPTED)
#: What a reader calls a file it cannot trust (never written by a job).
UNREADABLE, INCOMPLETE, FAST_DEV_RUN = "unreadable", "incomplete", "fast_dev_run"
#: ``vaesweep collect``'s status of a completed run collected twice (the same configuration,
#: seed and metrics as another run found): counted once.
DUPLICATE = "duplicate"
#: ``vaesweep collect``'s status of a run whose results.json says ``running`` while no live
#: process holds its claim (vaesweep.run.claims): killed outright (SIGKILL, out of memory, a
#: node lost). Never aggregated; the sweep's command resumes it.
KILLED = "killed"
#: Config keys that do not change what a job computes (where and how it runs and logs;
#: ``threads`` may change the last bits of a float: devices.torch_threads records the count).
NOT_RESULTS = (
    "threads",
    "sweep",
    "paths",
    "label",
    "logger",
    "data.root",
    "data.download",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)


def changes_results(key: str) -> bool:
    """False for a config key (dotted) under :data:`NOT_RESULTS`."""
    return not any(key == p or key.startswith(p + ".") for p in NOT_RESULTS)


#: The metrics that sum a result up: the columns of a sweep's summary.csv and table, and
#: of what ``vaesweep collect`` prints.
SUMMARY_COLUMNS = (
    "test/nll",
    "test/elbo",
    "test/bpd",
    "test/kl",
    "test/mse",
    "scale",
    "test/scale_ratio",
)


def json_safe(value: Any) -> Any:
    """Floats that JSON cannot hold (nan, ±inf) become None; containers recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def git_state(directory: Path) -> dict[str, Any]:
    """Commit of the git work tree holding ``directory``, and whether anything under
    ``directory`` differs from it (tracked changes or new files; None outside git). Files
    elsewhere in the checkout (results, notes) do not make a run "dirty"."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10
        )
        if out.returncode:
            raise RuntimeError(out.stderr)
        return out.stdout.strip()

    try:
        changed = git("status", "--porcelain", "--", ".")
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changed)}
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def versions() -> dict[str, Any]:
    """Python and package versions, the CPU kernels torch runs (``cpu_capability``), and the
    git state of the vaesweep source tree (the directory holding the package: ``src/`` in a
    checkout).

    ``cpu_capability`` is the vector instruction set torch dispatches its CPU kernels to
    (``AVX2``, ``AVX512``, ...; ``ATEN_CPU_CAPABILITY`` lowers it): kernels of two sets can
    sum in another order, so the same config and seed can train to other last bits on two
    machines, which training amplifies."""
    out: dict[str, Any] = {"python": platform.python_version()}
    for package in ("torch", "lightning", "hydra-core", "omegaconf", "wandb", "vaesweep"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    torch = sys.modules.get("torch")  # loaded in a job (not imported here for it: slow)
    backend = getattr(getattr(torch, "backends", None), "cpu", None)
    out["cpu_capability"] = backend.get_cpu_capability() if backend is not None else None
    out["git"] = git_state(Path(__file__).resolve().parent.parent)
    return out


#: The versions a resumed attempt compares with the attempt before it (with the vaesweep
#: source's git commit and dirty flag): the code that computes. Hydra, OmegaConf and W&B
#: compute nothing of a run's numbers.
COMPARED_VERSIONS = ("torch", "lightning", "vaesweep")


def attempt_facts(versions: Any, devices: Any) -> dict[str, Any]:
    """What an attempt computed with, flat (``versions.torch``, ``devices.type``, ...), from
    the ``versions`` and ``devices`` of a results.json (either may be None: not known): the
    code (:data:`COMPARED_VERSIONS`, the git state), the device type, and for a GPU run the
    GPUs' names and CUDA version, for a CPU run the CPU's model and the instruction set of
    torch's kernels (``cpu_capability``). Where one differs between two attempts, the run's
    numbers can differ from an uninterrupted run's."""
    facts: dict[str, Any] = {}
    versions = versions if isinstance(versions, dict) else {}
    facts.update({f"versions.{k}": versions[k] for k in COMPARED_VERSIONS if k in versions})
    git = versions.get("git")
    if isinstance(git, dict):
        facts.update({f"versions.git.{k}": git.get(k) for k in ("commit", "dirty")})
    if not isinstance(devices, dict):
        return facts
    kind = str(devices.get("accelerator") or "").partition(":")[0] or None
    facts["devices.type"] = kind
    if kind == "cuda":
        facts.update({"devices.names": devices.get("names"), "devices.cuda": devices.get("cuda")})
    elif kind == "cpu":
        facts["devices.cpu"] = devices.get("cpu")
        if "cpu_capability" in versions:
            facts["versions.cpu_capability"] = versions["cpu_capability"]
    return facts


class RunRecord:
    """Owns ``<run_dir>/results.json`` for one run; every update rewrites it atomically."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        config: dict[str, Any],
        overrides: list[str],
        seed: int,
        job_name: str,
        sweep_dir: str | None,
        previous: dict[str, Any] | None = None,
        wandb_run_id: str | None = None,
        resumed: bool = False,
    ) -> None:
        """``previous``: the result of the earlier attempts this one continues, if any;
        ``resumed``: whether this attempt resumes their weights from a checkpoint (then
        what it computes with is compared with theirs: ``changed_between_attempts``)."""
        self.path = Path(run_dir) / RESULTS_FILE
        self._t0 = time.monotonic()
        previous = previous or {}
        #: What the attempt before this one computed with (empty: nothing to compare).
        self._earlier = (
            attempt_facts(previous.get("versions"), previous.get("devices")) if resumed else {}
        )
        self._told = False
        self._earlier_s = float(previous.get("duration_s") or 0.0)
        self.data: dict[str, Any] = {
            "status": RUNNING,
            "metrics": {},
            "config": config,
            "overrides": list(overrides),
            "seed": seed,
            "run_dir": str(Path(run_dir).resolve()),
            "sweep_dir": sweep_dir,
            "job_name": job_name,
            "started_at": previous.get("started_at") or now(),
            "finished_at": None,
            "duration_s": None,
            "attempts": int(previous.get("attempts") or 1) + 1 if previous else 1,
            "wandb_run_id": wandb_run_id,
            "versions": versions(),
            # The earlier attempt's until this one has read its data (a resume checks them
            # against it first): a kill in between must not lose what the run trained on.
            "dataset": previous.get("dataset"),
            "precision": None,
            "tested_checkpoint": None,
            "trained": None,
            "devices": None,
            "changed_between_attempts": dict(
                (previous.get("changed_between_attempts") or {}) if resumed else {}
            ),
            "error": None,
        }
        #: Whether this attempt has begun to compute (:meth:`begin_training`;
        #: not written to the file). A failure before that computed nothing, so an earlier
        #: attempt's record and checkpoints stay as they were (vaesweep.run.jobs).
        self.training = False
        self.write()

    def begin_training(self) -> None:
        """This attempt has begun to compute (see :attr:`training`): its first training
        batch has run, or its fit has returned (a resumed one may have nothing left to
        train), or a fit in spawned processes starts (whose batches this process does not
        see). A failure before that, inside the fit too (W&B's start, DDP's setup, an out of
        memory in the first batch on a smaller GPU), changed nothing of the run."""
        self.training = True

    def set_facts(self, **facts: Any) -> None:
        """Records how the run was computed where its config does not say it (``precision``,
        ``tested_checkpoint``, ``trained``)."""
        self.data.update(facts)
        self.write()

    def write(self) -> None:
        """Rewrite results.json; ``duration_s`` becomes the time spent so far."""
        self.data["duration_s"] = round(self._earlier_s + time.monotonic() - self._t0, 3)
        write_json_atomic(self.path, json_safe(self.data))

    def set_dataset(self, info: dict[str, Any]) -> None:
        """Records the data the run reads now (until then ``data["dataset"]`` is the earlier
        attempt's, for :func:`data_changed`)."""
        self.data["dataset"] = info
        self.write()

    def set_devices(self, info: dict[str, Any]) -> None:
        """Records the devices the run computes on; a resumed attempt that computes with
        other versions or devices than the attempt before it says so (a warning)."""
        self.data["devices"] = info
        changed = self._compare(self.data["versions"], info)
        self.write()
        if changed and not self._told:
            self._told = True
            log.warning(
                "%s resumes with other versions or devices than its earlier attempt (%s): "
                "its metrics can differ from an uninterrupted run's; results.json names "
                "them under changed_between_attempts",
                self.path.parent.name,
                "; ".join(f"{k}: {' → '.join(map(str, v[-2:]))}" for k, v in changed.items()),
            )

    def _compare(self, versions: Any, devices: Any) -> dict[str, list[Any]]:
        """Adds the facts of this attempt that differ from the earlier attempt's to
        ``changed_between_attempts``; returns all this attempt changed so far."""
        changes = self.data["changed_between_attempts"]
        for key, value in attempt_facts(versions, devices).items():
            if key not in self._earlier or self._earlier[key] == value:
                continue
            values = changes.setdefault(key, [self._earlier[key]])
            if values[-1] != value:
                values.append(value)
        return {
            k: v for k, v in changes.items() if k in self._earlier and v[-1] != self._earlier[k]
        }

    def finish(
        self,
        status: str,
        metrics: dict[str, float] | None = None,
        error: BaseException | None = None,
        step: int | None = None,
    ) -> None:
        """Record the final status, metrics and (for failed / diverged / interrupted runs)
        the error, with the step for diverged and interrupted ones. A metric that is not a
        finite number is not stored as a number: it is named under ``unavailable`` with its
        value (``nan``, ``inf``), never silently null."""
        if status not in STATUSES[1:]:
            raise ValueError(f"status={status!r}: allowed {list(STATUSES[1:])}")
        self.data["status"] = status
        if metrics:
            values = {k: float(v) for k, v in metrics.items()}
            self.data["metrics"].update({k: v for k, v in values.items() if math.isfinite(v)})
            lost = not_finite(values)
            if lost:
                self.data["unavailable"] = {**(self.data.get("unavailable") or {}), **lost}
        if error is not None:
            self.data["error"] = {"type": type(error).__name__, "message": str(error), "step": step}
        self.data["finished_at"] = now()
        self.write()


def evaluation_name(iwae_k: int, checkpoint: str, test_examples: int | None = None) -> str:
    """The file stem (and the metric suffix in frames) of one evaluation setting; one on the
    first N test examples only ends in ``,test_examples=N``."""
    name = f"iwae_k={iwae_k},checkpoint={checkpoint}"
    return name if test_examples is None else f"{name},test_examples={test_examples}"


def write_evaluation(run_dir: str | os.PathLike[str], name: str, data: dict[str, Any]) -> Path:
    """Writes one evaluation of the run (atomically) under ``evaluations/``."""
    return write_json_atomic(Path(run_dir) / EVALUATIONS_DIR / f"{name}.json", json_safe(data))


def read_evaluations(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """{name: evaluation} of every readable, completed evaluation of the run."""
    out = {}
    for path in sorted((Path(run_dir) / EVALUATIONS_DIR).glob("*.json")):
        data, _ = _load(path)
        if isinstance(data, dict) and data.get("status") == COMPLETED:
            out[path.stem] = data
    return out


def not_finite(metrics: dict[str, float]) -> dict[str, str]:
    """{key: "nan" | "inf" | "-inf"} for every metric that is not a finite number."""
    return {k: str(float(v)) for k, v in metrics.items() if not math.isfinite(float(v))}


def unearned(metrics: dict[str, float]) -> str | None:
    """Why these metrics cannot make a ``completed`` result (a score of
    :data:`EARNED_METRICS` missing or not finite), else None."""
    problems = []
    for key in EARNED_METRICS:
        value = metrics.get(key)
        if value is None:
            problems.append(f"{key} missing")
        elif not math.isfinite(float(value)):
            problems.append(f"{key} is {float(value)}")
    return "; ".join(problems) or None


def write_identity(run_dir: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    """Records which config the files of ``run_dir`` belong to (atomically)."""
    return write_json_atomic(Path(run_dir) / IDENTITY_FILE, json_safe({"config": config}))


def read_identity(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The config recorded by :func:`write_identity`, None when absent or unreadable."""
    identity, _ = _load(Path(run_dir) / IDENTITY_FILE)
    config = identity.get("config") if isinstance(identity, dict) else None
    return config if isinstance(config, dict) else None


def run_files(run_dir: str | os.PathLike[str]) -> list[str]:
    """The run files (:data:`RUN_FILES`) present in ``run_dir``, an empty directory aside."""
    present = []
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            present.append(name)
    return present


# --- reading ---------------------------------------------------------------------------------


def _load(path: Path) -> tuple[Any, str | None]:
    """(the file's JSON value, None) or (None, why it cannot be read)."""
    try:
        return json.loads(path.read_text()), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path} is not valid JSON ({e})"


def read(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The result in ``run_dir`` as written; None when there is none, or when the file is not
    a JSON object (never written by vaesweep: results are written atomically)."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return None
    result, _ = _load(path)
    return result if isinstance(result, dict) else None


def status(run_dir: str | os.PathLike[str]) -> str | None:
    """The status recorded in ``run_dir`` (None without a results.json; :data:`UNREADABLE`
    when it is not a JSON object)."""
    if not (Path(run_dir) / RESULTS_FILE).exists():
        return None
    result = read(run_dir)
    return UNREADABLE if result is None else result.get("status")


#: The error a job records when its config is refused before it trains (the name of
#: :class:`vaesweep.core.checks.ConfigError`).
#: The errors of a job refused before it trained: by its config, or by data files that
#: were not there.
REFUSALS = ("ConfigError", "DatasetNotFoundError")


def refused(result: dict[str, Any] | None) -> bool:
    """Whether ``result`` is that of a job refused before it trained: ``failed`` with a
    config error or data not found. Nothing of it was computed, so a relaunch checks it
    again and runs it, without sweep.rerun_failed (the same config is refused again at
    once)."""
    if not isinstance(result, dict) or result.get("status") != FAILED:
        return False
    error = result.get("error")
    return isinstance(error, dict) and error.get("type") in REFUSALS


def failed_after_fit(result: dict[str, Any] | None) -> bool:
    """Whether ``result`` is that of a job that failed once its fit had completed (in its
    test, writing its images, logging them to W&B, ...): ``failed`` with ``trained`` set,
    which the driver records when the fit returns. Its last checkpoint holds the fit's
    final weights: sweep.rerun_failed=true tests it again from there rather than training
    it from step 0 (vaesweep.run.policy.retest_from)."""
    return (
        isinstance(result, dict)
        and result.get("status") == FAILED
        and isinstance(result.get("trained"), dict)
        and not refused(result)
    )


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "message": message, "step": None}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def checked_status(result: dict[str, Any]) -> tuple[str, str | None]:
    """(the status a result is worth, why it differs from the recorded one or None)."""
    recorded = result.get("status")
    if recorded not in STATUSES:
        return INCOMPLETE, f"status {recorded!r} is not one of {', '.join(STATUSES)}"
    metrics = result.get("metrics")
    if recorded == COMPLETED:
        metrics = metrics if isinstance(metrics, dict) else {}
        missing = [k for k in EARNED_METRICS if _number(metrics.get(k)) is None]
        if missing:
            return INCOMPLETE, f"says completed but holds no finite {', '.join(missing)}"
    return recorded, None


def untested(result: dict[str, Any] | None) -> bool:
    """Whether ``result`` says ``completed`` without a finite test score (what versions
    before the non-finite check recorded for a NaN ``test/nll``; ``vaesweep collect`` lists
    it ``incomplete``). A relaunch resumes it from its last checkpoint, so its test runs
    again and is recorded as it comes out (``diverged`` when it is still not finite)."""
    return (
        isinstance(result, dict)
        and result.get("status") == COMPLETED
        and checked_status(result)[0] != COMPLETED
    )


def frame_status(result: dict[str, Any]) -> tuple[str, str | None]:
    """The status ``vaesweep collect`` gives a result: :func:`checked_status`, and
    ``fast_dev_run`` for a completed Lightning debug run (one batch of each split: its
    metrics are a smoke test, so aggregates and figures leave it out)."""
    checked, reason = checked_status(result)
    trainer = ((result.get("config") or {}).get("trainer")) or {}
    if checked == COMPLETED and isinstance(trainer, dict) and trainer.get("fast_dev_run"):
        return FAST_DEV_RUN, "trainer.fast_dev_run: one batch of each split, not a result"
    return checked, reason


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The result at ``path`` (a results.json), normalised for summaries: ``run_dir`` is
    the directory it was found in, ``status`` as :func:`checked_status` says, ``metrics`` a
    dict of finite floats, ``overrides`` a list of strings, ``error`` a dict or None. Never
    raises for what the file holds."""
    path = Path(path)
    run_dir = str(path.parent)
    result, problem = _load(path)
    if problem is None and not isinstance(result, dict):
        problem = f"{path} is not a JSON object"
    if problem is not None:
        return {
            "run_dir": run_dir,
            "status": UNREADABLE,
            "metrics": {},
            "overrides": [],
            "error": _error("UnreadableResult", problem),
        }
    checked, reason = checked_status(result)
    metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
    overrides = result.get("overrides") if isinstance(result.get("overrides"), list) else []
    error = result.get("error")
    if reason is not None:
        error = _error("IncompleteResult", f"{path} {reason}")
    elif error is not None and not isinstance(error, dict):
        error = _error("Error", str(error))
    return {
        **result,
        "run_dir": run_dir,
        "status": checked,
        "metrics": {k: n for k, v in metrics.items() if (n := _number(v)) is not None},
        "overrides": [str(o) for o in overrides],
        "error": error,
    }


def missing_result(run_dir: Path) -> dict[str, Any]:
    """The summary's entry for a job directory without a results.json."""
    return {
        "run_dir": str(run_dir),
        "status": INCOMPLETE,
        "metrics": {},
        "overrides": [],
        "error": _error(
            "MissingResult",
            f"{run_dir} holds no {RESULTS_FILE}: the job never started its run, or was "
            "refused before it",
        ),
    }


def _claim_timeout(result: dict[str, Any]) -> float:
    """The run's ``sweep.claim_timeout_s``: how old another host's heartbeat may be."""
    sweep = (result.get("config") or {}).get("sweep")
    timeout = sweep.get("claim_timeout_s") if isinstance(sweep, dict) else None
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
        return float(timeout)
    return DEFAULT_TIMEOUT_S


def process_gone(run_dir: Path, result: dict[str, Any]) -> str | None:
    """Why no process runs a job whose result says ``running``, or None while one may. A
    job holds ``<run_dir>/.claim`` while it runs and removes it when it ends, however it
    ends, unless it is killed outright (SIGKILL, out of memory, a node lost): then the claim
    is left, stale by vaesweep.run.claims' own rules."""
    claim = read_claim(run_dir)
    if claim is None:
        return f"{RESULTS_FILE} says running, but no process holds its {CLAIM_FILE}"
    if not claim.is_stale(_claim_timeout(result)):
        return None
    return f"{RESULTS_FILE} says running, but its claim is stale ({claim.describe()})"


def settled(
    path: Path, result: dict[str, Any], read: Callable[[Path], dict[str, Any]]
) -> tuple[dict[str, Any], str | None]:
    """For a result that says running: (the result, why its process is gone, or None). A
    job writes its final status before it removes its claim, so the file is read again
    (``read``) once the claim says the process is gone: a job that ended in between is not
    killed."""
    gone = process_gone(path.parent, result)
    if gone is None:
        return result, None
    try:
        again = read(path)
    except (OSError, ValueError):  # gone since the first read: what that read said stands
        return result, gone
    return again, gone if checked_status(again)[0] == RUNNING else None


def sweep_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per job directory of a sweep (a directory holding a results.json or
    Hydra's ``.hydra``), sorted by directory; never raises for what the files hold. A job
    whose results.json says running while no process holds its claim is :data:`KILLED`, as
    ``vaesweep collect`` says."""
    out = []
    for job_dir in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()):
        path = job_dir / RESULTS_FILE
        if path.exists():
            result = read_result(path)
            if result["status"] == RUNNING:
                result, gone = settled(path, result, read_result)
                if gone is not None:
                    result = {**result, "status": KILLED, "error": _error("Killed", gone)}
            out.append(result)
        elif (job_dir / ".hydra").is_dir():
            out.append(missing_result(job_dir))
    return out


def data_changed(recorded: Any, now: dict[str, Any]) -> str | None:
    """How the data read now (a datamodule's ``info``) differ from those a run recorded
    (results.json's ``dataset``), in words; None when their content fingerprints agree or
    the run recorded none. The fingerprint covers every split's images (their bytes, the
    split sizes and shapes): the same name and size read from another copy (``data.root``,
    ``$VAESWEEP_DATA_ROOT``, a Debian package, a download) differs when the images do."""
    old = recorded.get("fingerprint") if isinstance(recorded, dict) else None
    if not isinstance(old, str) or old == now.get("fingerprint"):
        return None

    def described(info: dict[str, Any], fingerprint: Any) -> str:
        source = info.get("source") or "a source not recorded"
        return (
            f"{info.get('name')} read from {source}, splits {info.get('sizes')}, content "
            f"fingerprint {str(fingerprint)[:12]}"
        )

    return (
        f"the run's data were {described(recorded, old)}; the data read now are "
        f"{described(now, now.get('fingerprint'))}"
    )
