"""Sweeps: directory naming, ``sweep.json``, the end-of-sweep summary, and job-level policy.

A sweep directory holds one job directory per grid point, named from its overrides (so a
re-launch of the same command finds the same directories), plus:

- ``sweep.json``: the grid, the command, the launcher, and (at the end) every job's
  directory and status;
- ``summary.csv``: one row per job: swept values, status, key test metrics, duration.

Resolvers registered here are used by ``vaesweep/conf/train.yaml``; Hydra copies their cache into
every job, so a sweep's id is the same in the launcher and in its jobs.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import os
import secrets
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vaesweep.atomic import atomic_open
from vaesweep.claims import CLAIM_FILE, DEFAULT_TIMEOUT_S, HOST, held_by_other, wait_for_others
from vaesweep.interrupt import SweepGuard, SweepStopped, sweep_stopped
from vaesweep.record import RESULTS_FILE, write_json_atomic
from vaesweep.search import finish_search, is_search, start_search

log = logging.getLogger("vaesweep.sweep")

SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.csv"
SUMMARY_METRICS = (
    "test/nll",
    "test/elbo",
    "test/bpd",
    "test/kl",
    "test/mse",
    "scale",
    "test/scale_ratio",
)
#: A learned scale within this factor of the test residual scale counts as converged.
SCALE_TOLERANCE = 1.25
LEARNED_SCALES = ("learned", "per_pixel")


def scale_converged(result: dict[str, Any]) -> bool | None:
    """Whether a learned scale ended within SCALE_TOLERANCE of the residual scale of the
    test data (``test/scale_ratio``); None for runs without a learned scale."""
    mode = ((result.get("config") or {}).get("likelihood") or {}).get("scale")
    ratio = (result.get("metrics") or {}).get("test/scale_ratio")
    if mode not in LEARNED_SCALES or ratio is None:
        return None
    return 1.0 / SCALE_TOLERANCE <= float(ratio) <= SCALE_TOLERANCE
MAX_DIRNAME = 120  # well below the 255-byte limit of common file systems


def job_dirname(override_dirname: str) -> str:
    """A job directory name from its overrides: readable, one path component, bounded.

    ``/`` in values becomes ``_``; a name longer than MAX_DIRNAME is cut and given a short
    hash of the full name, so distinct grid points never share a directory.
    """
    name = override_dirname.replace(os.sep, "_") or "default"
    if len(name) > MAX_DIRNAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_DIRNAME - 9]}-{digest}"
    return name


def _first_set(value: Any, default: Any) -> Any:
    return default if value is None or value == "" else value


def left_alone(run_dir: str | Path, rerun_failed: bool) -> str | None:
    """The status of an earlier result that a re-launch must not touch, else None.

    ``completed`` jobs are always left alone; ``failed``/``diverged`` ones unless
    ``rerun_failed``; ``running`` (killed) and ``interrupted`` ones are resumed.
    """
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return None
    try:
        status = json.loads(path.read_text()).get("status")
    except json.JSONDecodeError:
        return None
    if status == "completed" or (status in ("failed", "diverged") and not rerun_failed):
        return status
    return None


def _config_subdir(
    run_dir: str, rerun_failed: bool, claim_timeout_s: float = DEFAULT_TIMEOUT_S
) -> str | None:
    # Hydra writes .hydra/*.yaml into every job dir before the task runs; for a job that
    # will be skipped (finished, or being run by another live process), write nothing, so
    # its files (and their mtimes) stay as they were. Nor for one handed out after the
    # launching process of a parallel sweep was stopped (it will not start).
    if sweep_stopped():
        return None
    if left_alone(run_dir, rerun_failed) or held_by_other(run_dir, claim_timeout_s):
        return None
    return ".hydra"


def register_resolvers() -> None:
    """Resolvers used by vaesweep/conf/train.yaml (idempotent)."""
    resolvers = {
        "vaesweep.job_dir": (job_dirname, False),
        "vaesweep.uid": (lambda: secrets.token_hex(2), True),  # cached: one id per sweep
        "vaesweep.either": (_first_set, False),
        "vaesweep.config_subdir": (_config_subdir, False),
    }
    for name, (fn, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


def _axes(overrides: list[str], sweeper_params: dict[str, str] | None) -> dict[str, Any]:
    """Every key of a sweep with its parsed override, as Hydra's basic sweeper reads them:
    the preset's ``hydra.sweeper.params`` first, the command line winning."""
    parser = OverridesParser.create()
    params = [f"{k}={v}" for k, v in (sweeper_params or {}).items()]
    axes: dict[str, Any] = {}
    for override in parser.parse_overrides(params + list(overrides)):
        axes[override.get_key_element()] = override
    return axes


def parse_grid(overrides: list[str], sweeper_params: dict[str, str] | None) -> dict[str, list]:
    """The grid of a sweep: {key: [values]} from the preset's ``hydra.sweeper.params`` and
    the command line's sweep overrides (``key=a,b,c``); the command line wins."""
    return {
        key: list(o.sweep_string_iterator())
        for key, o in _axes(overrides, sweeper_params).items()
        if o.is_sweep_override()
    }


def swept_values(job_overrides: list[str], grid_keys: list[str]) -> dict[str, str]:
    """This job's value of every swept key, from its own overrides."""
    values = {}
    for item in job_overrides:
        key, _, value = item.partition("=")
        if key in grid_keys:
            values[key] = value
    return values


def read_sweep(sweep_dir: str | Path) -> dict[str, Any] | None:
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.exists() else None


def job_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """results.json of every job directly under the sweep dir, sorted by directory; a
    damaged or incomplete file, or a job directory without one, is listed with status
    ``unreadable`` / ``incomplete`` and the reason (vaesweep.resultfile)."""
    from vaesweep.resultfile import sweep_results

    return sweep_results(sweep_dir)


def summary_rows(results: list[dict[str, Any]], grid_keys: list[str]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row: dict[str, Any] = {"job": Path(r["run_dir"]).name}
        row.update(swept_values(r.get("overrides", []), grid_keys))
        row["status"] = r["status"]
        for m in SUMMARY_METRICS:
            v = r["metrics"].get(m)
            row[m] = None if v is None else round(float(v), 4)
        row["scale_converged"] = scale_converged(r)
        row["duration_s"] = r.get("duration_s")
        error = r.get("error") or {}
        row["error"] = f"{error.get('type')}: {error.get('message')}" if error else ""
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table for the terminal (columns left out when empty everywhere)."""
    if not rows:
        return "(no jobs)"
    # The job column (its full override string) is in summary.csv; on screen the swept
    # values identify the job.
    hidden = {"error", "job"} if len(rows[0]) > len(SUMMARY_METRICS) + 4 else {"error"}
    columns = [
        c for c in rows[0] if c not in hidden and any(r.get(c) not in (None, "") for r in rows)
    ]
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def write_csv_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    fieldnames = list(dict.fromkeys(k for r in rows for k in r)) or ["job", "status", "error"]
    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def grid_jobs(overrides: list[str], sweeper_params: dict[str, str] | None) -> list[list[str]]:
    """The overrides of every job of a grid sweep (as the basic sweeper expands it)."""
    axes = [
        [f"{key}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for key, o in _axes(overrides, sweeper_params).items()
    ]
    return [list(job) for job in itertools.product(*axes)]


def refuse_ineffective(config: DictConfig, overrides: list[str], params: dict | None) -> None:
    """Exits (status 2) before any job runs when a command-line key changes no job or two
    jobs would compute the same thing (:mod:`vaesweep.effective`)."""
    from hydra import compose

    from vaesweep.effective import check_distinct, check_overrides
    from vaesweep.jobdir import sweep_refusal

    jobs = grid_jobs(overrides, params)
    try:
        configs = [compose(config.hydra.job.config_name, overrides=job) for job in jobs]
    except Exception as e:  # the jobs will report a config that does not compose
        log.debug("sweep check skipped: %s", e)
        return
    refusal = check_overrides(overrides, configs) or check_distinct(
        list(zip(jobs, configs, strict=True))
    )
    refusal = refusal or sweep_refusal(config, jobs, configs)  # job dirs of another config
    if refusal:
        print(f"[vaesweep] sweep refused, no job was run: {refusal}", file=sys.stderr, flush=True)
        sys.exit(2)


def finish_sweep(sweep_dir: Path, stopped_by: str | None = None) -> bool:
    """Writes the jobs' statuses into sweep.json and summary.csv, prints the table and names
    the jobs that did not complete; True when every job of the grid completed.

    ``stopped_by``: the signal that stopped the sweep before all its jobs ran (the jobs that
    never started have no row; a relaunch of the same command continues the sweep).
    """
    record = read_sweep(sweep_dir) or {"grid": {}}
    grid_keys = list(record["grid"])
    results = job_results(sweep_dir)
    rows = summary_rows(results, grid_keys)
    record["jobs"] = [
        {"dir": Path(r["run_dir"]).name, "overrides": r.get("overrides"), "status": r["status"]}
        for r in results
    ]
    record["finished_at"] = _now()
    record["stopped_by"] = stopped_by
    write_json_atomic(sweep_dir / SWEEP_FILE, record)
    write_csv_atomic(sweep_dir / SUMMARY_FILE, rows)  # always: never an old summary left
    print(f"\nSweep {sweep_dir} ({len(rows)} jobs):\n{format_table(rows)}\n", flush=True)
    unconverged = [r["job"] for r in rows if r.get("scale_converged") is False]
    if unconverged:
        print(
            f"{len(unconverged)} run(s) ended with a learned scale more than "
            f"{SCALE_TOLERANCE}x from the test residual scale (test/scale_ratio; raise "
            "likelihood.scale_lr or train longer): " + ", ".join(unconverged),
            file=sys.stderr,
            flush=True,
        )
    bad = [r for r in rows if r["status"] != "completed"]
    if bad:
        lines = [f"  {r['job']}: {r['status']} {r['error']}".rstrip() for r in bad]
        print(
            f"{len(bad)} of {len(rows)} jobs did not complete:\n" + "\n".join(lines),
            file=sys.stderr,
            flush=True,
        )
    n_jobs = record.get("n_jobs") or len(rows)
    if stopped_by is not None:
        print(
            f"Sweep stopped by {stopped_by}: {max(0, n_jobs - len(rows))} of {n_jobs} jobs not "
            "started. Run the same command again to continue it.",
            file=sys.stderr,
            flush=True,
        )
    return not bad


@dataclass
class _Running:
    """The multirun this (launching) process runs: its signal guard and where it writes."""

    guard: SweepGuard
    config: DictConfig
    search: bool

    @property
    def sweep_dir(self) -> Path:
        return Path(self.config.hydra.sweep.dir)

    def finish(self) -> bool:
        """Puts the previous signal handlers back, then writes the summary (naming the
        signal that stopped the sweep, if one did) and its W&B copy; True when every job
        completed."""
        self.guard.uninstall()
        stopped_by = self.guard.signal_name
        try:  # Hydra turns a callback's exception into a warning (and the sweep exits 0)
            if self.search:
                done = finish_search(self.sweep_dir, stopped_by=stopped_by)
            else:
                done = finish_sweep(self.sweep_dir, stopped_by=stopped_by)
        except Exception as e:
            print(f"[vaesweep] sweep summary failed: {type(e).__name__}: {e}", file=sys.stderr)
            done = False
        from vaesweep.dashboard import log_sweep_summary

        log_sweep_summary(self.config, self.sweep_dir)  # W&B's copy of the summary; never raises
        return done


_RUNNING: _Running | None = None


def finish_stopped(stop: SweepStopped) -> int:
    """What the entry point does when a signal stopped the sweep (SweepStopped: in a job it
    interrupted, which recorded it, or between two jobs): the summary of what finished,
    with the signal named; returns the exit status, 128 + the signal number."""
    global _RUNNING
    running, _RUNNING = _RUNNING, None
    if running is not None:
        running.guard.signum = running.guard.signum or stop.signum
        running.finish()
    return stop.exit_code


def launch_command() -> str:
    """The command that launched this process, as a user would type it again (``python -m
    vaesweep ...`` when it ran as a module, ``run.py ...`` or ``vaesweep-train ...``)."""
    program = Path(sys.argv[0]).name
    if program == "__main__.py":
        program = "python -m vaesweep"
        return f"{program} {shlex.join(sys.argv[1:])}".strip()
    return shlex.join([program, *sys.argv[1:]])


class SweepCallback(Callback):
    """Refuses sweeps with ineffective keys, writes sweep.json when a multirun starts;
    summary.csv, the table, the W&B summary run (logger=wandb) and the exit code when it
    ends (non-zero, naming the jobs, when any job did not complete).

    From start to end the launching process handles the stop signals (SweepGuard): a
    signal stops the sweep, in a job or between two, sequential or parallel; the summary of
    what finished is written and the process exits with 128 + the signal number.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = list(config.hydra.overrides.task)
        params = config.hydra.sweeper.get("params")
        params = OmegaConf.to_container(params, resolve=True) if params else {}
        from vaesweep.guards import refuse_bad_resume

        refuse_bad_resume(config.sweep.get("resume"))
        if is_search(config):  # hydra/sweeper=optuna: vaesweep.search checks and records
            start_search(config)
            self._guard(config, sweep_dir, search=True)
            return
        refuse_ineffective(config, overrides, params)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        grid = parse_grid(overrides, params)
        previous = read_sweep(sweep_dir)
        record = {
            "sweep_dir": str(sweep_dir.resolve()),
            "command": launch_command(),
            "grid": grid,
            "n_jobs": len(list(itertools.product(*grid.values()))) if grid else 1,
            "overrides": overrides,
            "launcher": config.hydra.launcher.get("_target_"),
            "created_at": (previous or {}).get("created_at") or _now(),
            "launched_at": [*(previous or {}).get("launched_at", []), _now()],
            "jobs": (previous or {}).get("jobs", []),
        }
        write_json_atomic(sweep_dir / SWEEP_FILE, record)
        self._guard(config, sweep_dir, search=False)

    @staticmethod
    def _guard(config: DictConfig, sweep_dir: Path, search: bool) -> None:
        global _RUNNING
        launcher = str(config.hydra.launcher.get("_target_") or "")
        stop_file = sweep_dir / f".stop-{HOST}-{os.getpid()}"  # this launch's only
        guard = SweepGuard(stop_file, parallel="joblib" in launcher).install()
        _RUNNING = _Running(guard, config, search)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Jobs this launch skipped because another live launch of the same sweep was
        running them (vaesweep.claims) are waited for first, so that the summary reports
        them with their final status, not as unfinished (not when a signal stopped this
        launch)."""
        global _RUNNING
        sweep_dir = Path(config.hydra.sweep.dir)
        running, _RUNNING = _RUNNING, None
        if running is None:  # not started by on_multirun_start (another callback order)
            running = _Running(SweepGuard(sweep_dir / ".stop", False), config, is_search(config))
        if running.guard.signum is None:
            timeout_s = float(config.sweep.get("claim_timeout_s") or DEFAULT_TIMEOUT_S)
            claimed = [p.parent for p in sorted(sweep_dir.glob(f"*/{CLAIM_FILE}"))]
            wait_for_others(claimed, timeout_s, poll_s=min(1.0, timeout_s / 10))
        done = running.finish()
        if running.guard.signum is not None:
            sys.exit(128 + running.guard.signum)
        if not done:
            sys.exit(1)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
