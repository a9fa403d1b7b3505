"""Grid sweeps: ``sweep.json``, the checks before any job runs, and the end-of-sweep summary.

A sweep directory holds one job directory per grid point, named from its overrides (so a
re-launch of the same command finds the same directories, :mod:`vaesweep.run.context`), plus:

- ``sweep.json``: the grid, the command, the launcher, and (at the end) every job's
  directory and status; a directory launched more than once (a relaunch, or another grid
  into the same ``hydra.sweep.dir``) keeps every launch's command, grid, overrides and
  time in ``launches``, and its ``grid`` is the union of theirs;
- ``summary.csv``: one row per job: swept values, status, key test metrics, duration.

The multirun's Hydra callback (:mod:`vaesweep.sweep.callback`) calls this module when the
sweep starts and ends.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from omegaconf import DictConfig, OmegaConf

from vaesweep.core.atomic import remove_stale_temps, write_csv_atomic, write_json_atomic
from vaesweep.core.checks import ConfigError
from vaesweep.core.helpers import command_again, compared_number, launcher_note, now
from vaesweep.run.config import validate_config
from vaesweep.run.context import (
    RESTARTED,
    SWEEP_FILE,
    job_dirname,
    previous_sweep,
    read_sweep,
    sweep_record_lock,
    swept_values,
)
from vaesweep.run.effective import check_distinct, check_overrides, hydra_references
from vaesweep.run.policy import REUSED, differences, mismatch
from vaesweep.run.record import (
    COMPLETED,
    DIVERGED,
    FAILED,
    INCOMPLETE,
    REFUSALS,
    RESULTS_FILE,
    SUMMARY_COLUMNS,
    UNREADABLE,
    changes_results,
    sweep_results,
    versions,
)
from vaesweep.run.record import read as read_record

log = logging.getLogger("vaesweep.sweep.grid")

SUMMARY_FILE = "summary.csv"
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


def _axes(overrides: list[str], sweeper_params: dict[str, str] | None) -> dict[str, Any]:
    """Every key of a sweep with its parsed override, as Hydra's basic sweeper reads them:
    the preset's ``hydra.sweeper.params`` first, the command line winning. A ``glob()`` of a
    config group's options (``likelihood=glob(*)``) is listed by the config loader of this
    Hydra run, as the sweeper lists it; outside one it is refused (ConfigError)."""
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    loader = hydra.config_loader() if hydra.is_initialized() else None
    parser = OverridesParser.create(config_loader=loader)
    params = [f"{k}={v}" for k, v in (sweeper_params or {}).items()]
    axes: dict[str, Any] = {}
    for override in parser.parse_overrides(params + list(overrides)):
        if loader is None and override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            raise ConfigError(
                f"{override.input_line}: glob() lists a config group's options through "
                "Hydra's config loader, and no Hydra run is active here; list the options "
                f"instead ({override.get_key_element()}=a,b,c)"
            )
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


def _config_value(result: dict[str, Any], key: str) -> Any:
    """A grid key's value in a job's recorded config (a group's option name for a group),
    for a job whose own overrides do not set it (launched with another grid)."""
    node: Any = result.get("config") or {}
    for part in key.lstrip("+").split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node.get("name") if isinstance(node, dict) else node


def summary_rows(
    results: list[dict[str, Any]], grid_keys: list[str], metrics: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """One row per job: its swept values, status, ``metrics`` (a search's objective) and the
    :data:`~vaesweep.run.record.SUMMARY_COLUMNS`, duration and error. Metrics keep full
    precision: the rows are summary.csv and the W&B summary table, data (an MSE of 3e-5
    rounded to 4 decimals would read 0.0); :func:`format_table` rounds for the screen."""
    columns = list(dict.fromkeys([*metrics, *SUMMARY_COLUMNS]))
    rows = []
    for r in results:
        row: dict[str, Any] = {"job": Path(r["run_dir"]).name}
        row.update({key: _config_value(r, key) for key in grid_keys})
        row.update(swept_values(r.get("overrides", []), grid_keys))
        row["status"] = r["status"]
        for m in columns:
            v = r["metrics"].get(m)
            row[m] = None if v is None else float(v)
        row["scale_converged"] = scale_converged(r)
        row["duration_s"] = r.get("duration_s")
        error = r.get("error") or {}
        row["error"] = f"{error.get('type')}: {error.get('message')}" if error else ""
        rows.append(row)
    return rows


def varying_keys(results: list[dict[str, Any]]) -> list[str]:
    """The override keys that tell apart the directory's jobs beyond its grid's: every key
    whose value differs between them, or that only some of them set (a fixed override that
    changed between launches, the jobs of launches a record started anew does not know),
    leaving out keys that never change a result (:data:`~vaesweep.run.record.NOT_RESULTS`)
    and Hydra's. Names without Hydra's ``+``/``++`` prefix; deletions (``~key``) are not
    columns."""
    jobs = []
    for r in results:
        if r.get("status") in (UNREADABLE, INCOMPLETE):  # nothing known of its overrides
            continue
        values = {}  # the last of a repeated key, as Hydra applies them
        for item in r.get("overrides") or []:
            key, _, value = item.partition("=")
            values[key.lstrip("+")] = value
        jobs.append(values)
    keys = {k for values in jobs for k in values}
    return sorted(
        k
        for k in keys
        if not k.startswith(("~", "hydra."))
        and changes_results(k)
        and len({values.get(k) for values in jobs}) > 1  # None: a job without the key
    )


#: Significant digits of a number in the terminal's table (summary.csv keeps them all).
TABLE_DIGITS = 6


def _shown(value: Any) -> str:
    """A cell of the terminal's table: a float to :data:`TABLE_DIGITS` significant digits
    (0.09961256 → 0.0996126, 3e-05 stays 3e-05: a fixed number of decimals would read 0),
    anything else as written."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{TABLE_DIGITS}g}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table for the terminal (columns left out when empty everywhere), numbers
    to :data:`TABLE_DIGITS` significant digits."""
    if not rows:
        return "(no jobs)"
    # The job column (its full override string) is in summary.csv; on screen the swept
    # values identify the job.
    hidden = {"error", "job"} if len(rows[0]) > len(SUMMARY_COLUMNS) + 4 else {"error"}
    columns = [
        c for c in rows[0] if c not in hidden and any(r.get(c) not in (None, "") for r in rows)
    ]
    cells = [[_shown(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def grid_jobs(overrides: list[str], sweeper_params: dict[str, str] | None) -> list[list[str]]:
    """The overrides of every job of a grid sweep (as the basic sweeper expands it)."""
    axes = [  # each value written as Hydra's sweeper writes it (false → False): its job dir
        [f"{key}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [f"{key}={o.get_value_element_as_str()}"]
        for key, o in _axes(overrides, sweeper_params).items()
    ]
    return [list(job) for job in itertools.product(*axes)]


def _warn(message: str) -> None:
    print(f"[vaesweep] warning: {message}", file=sys.stderr, flush=True)


def refuse_ineffective(config: DictConfig, overrides: list[str], params: dict | None) -> None:
    """Exits (status 2) before any job runs when a job's config does not compose (Hydra's
    basic sweeper composes every job of a batch before it launches any, and one that fails
    ends the whole launch in Hydra's words), when a command-line key changes no job or two
    jobs would compute the same thing (:mod:`vaesweep.run.effective`)."""
    all_jobs = grid_jobs(overrides, params)
    jobs, configs, broken = [], [], []
    for job in all_jobs:
        try:
            configs.append(compose_job(config, job))
            jobs.append(job)
        except Exception as e:
            broken.append((job, e))
    refusal = uncomposed_jobs(config, overrides, all_jobs, broken, parse_grid(overrides, params))
    refusal = (
        refusal
        or check_overrides(overrides, configs)
        or check_distinct(list(zip(jobs, configs, strict=True)))
    )
    refusal = refusal or invalid_jobs(configs, len(all_jobs), hydra_references(config.hydra))
    refusal = refusal or sweep_refusal(config, jobs, configs)  # job dirs of another config
    if refusal:
        print(f"[vaesweep] sweep refused, no job was run: {refusal}", file=sys.stderr, flush=True)
        sys.exit(2)


def compose_job(config: DictConfig, job: list[str], with_hydra: bool = False) -> DictConfig:
    """A job's config as Hydra's sweeper composes it (``load_sweep_config``): the multirun's
    Hydra overrides (``hydra.searchpath``, a launcher, ...; none in a config without
    ``hydra.overrides``, one composed by hand) then the job's. Without its ``hydra`` node
    unless ``with_hydra``."""
    given = OmegaConf.select(config, "hydra.overrides.hydra", default=None)
    given = [] if given is None else OmegaConf.to_container(given, resolve=False)
    return compose(
        config.hydra.job.config_name,
        overrides=[*given, *job],  # type: ignore[misc]
        return_hydra_config=with_hydra,
    )


#: Hydra's words for an override of a key that the composed config does not have.
_NOT_A_KEY = re.compile(r"Could not override '([^']+)'")


def uncomposed_jobs(
    config: DictConfig,
    overrides: list[str],
    jobs: list[list[str]],
    broken: list[tuple[list[str], Exception]],
    grid: dict[str, list],
) -> str | None:
    """The refusal of a grid some of whose jobs' configs do not compose (``broken``: each
    such job's overrides and Hydra's error), else None. An override of a key that a job's
    config does not have (``likelihood.scale`` under ``likelihood=bernoulli``) names the key,
    those jobs by their swept values, the keys their config has there and what to do; any
    other error is Hydra's first line. ``overrides``: the command line's; ``grid``: the
    swept keys and their values."""
    if not broken:
        return None
    job, error = broken[0]
    shown = "; ".join(_swept(j, grid) for j, _ in broken[:3]) + (" ..." if len(broken) > 3 else "")
    every = len(broken) == len(jobs)
    which = f"the config of {len(broken)} of the {len(jobs)} jobs ({shown})"
    missing = _NOT_A_KEY.search(str(error))
    if not missing:
        first = _first_line(error)
        which = f"every job's config ({len(jobs)} jobs)" if every else which
        return (
            f"{which} does not compose: {first} (job: {' '.join(job)}). Hydra's sweeper "
            "composes every job before it runs any; drop or correct the value in the grid"
        )
    key = missing.group(1)
    given = next((o for o in [*overrides, *job] if o.split("=", 1)[0].lstrip("+") == key), key)
    # The first missing node on the way to the key (model.hiden of model.hiden.x).
    gap = str(getattr(error.__cause__, "full_key", None) or key)
    gap = gap if key == gap or key.startswith(gap + ".") else key
    node, keys = _keys_beside(config, job, key, gap)
    above, _, name = gap.rpartition(".")
    has = f"{node} has no key {name}" if node else f"the config has no key {name}"
    if keys:
        close = difflib.get_close_matches(name, keys, n=1)
        hint = f" (did you mean {above + '.' if above else ''}{close[0]}?)" if close else ""
        allowed = ", ".join(keys) if len(keys) <= 20 else ", ".join(keys[:20]) + ", ..."
        has += f"{hint}; its keys: {allowed}"
    if every:
        return (
            f"{given}: {key} is not a key of any job's config ({len(jobs)} jobs): {has}. "
            "Drop it, or set a key the config has"
        )
    only = _only_in(broken, jobs, grid)
    apart = f" ({' '.join(only)})" if only else ""
    return (
        f"{given}: {key} is not a key of {which}: {has}. Hydra cannot set a key a config does "
        f"not have (+ or ++ would add it to a config that does not read it). Run "
        f"those jobs{apart} as a sweep of their own, without {key}, and leave them out of "
        "this one"
    )


def _first_line(error: Exception) -> str:
    """Hydra's error in one line: its first, and the options it lists for a config group
    option that does not exist (``Available options in 'likelihood': ...``)."""
    lines = [line.strip() for line in str(error).split("Config search path")[0].splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return type(error).__name__
    head = next((i for i, line in enumerate(lines) if line.startswith("Available options")), None)
    if head is None:
        return lines[0]
    return f"{lines[0]}; {lines[head].rstrip(':')}: {', '.join(lines[head + 1 :])}"


def _swept(job: list[str], grid: dict[str, list]) -> str:
    """A job named by its swept values (all its overrides when nothing is swept)."""
    keys = {k.lstrip("+") for k in grid}
    swept = [o for o in job if o.split("=", 1)[0].lstrip("+") in keys]
    return " ".join(swept or job)


def _only_in(
    broken: list[tuple[list[str], Exception]], jobs: list[list[str]], grid: dict[str, list]
) -> list[str]:
    """The swept values (``likelihood=bernoulli``) that only the ``broken`` jobs have: what
    sets those jobs apart from the ones whose configs compose."""
    bad = {o for j, _ in broken for o in _swept(j, grid).split()}
    good = {o for j in jobs if j not in [b for b, _ in broken] for o in _swept(j, grid).split()}
    return sorted(bad - good)


def _keys_beside(
    config: DictConfig, job: list[str], key: str, gap: str
) -> tuple[str | None, list[str]]:
    """Where the override of ``key`` broke in ``job``'s config (``gap``, the first missing
    node on its way, the key itself or a node above it): the node above ``gap``, named by the
    config group option that gives it (``likelihood=bernoulli``) or by its path, and the
    keys that node has (Hydra's and vaesweep's own ``_target_`` left out); (None, []) when
    the job's config without the key does not compose either."""
    parent = gap.rpartition(".")[0]
    rest = [o for o in job if o.split("=", 1)[0].lstrip("+") != key]
    try:
        cfg = compose_job(config, rest, with_hydra=True)
    except Exception:
        return (parent or None), []
    node = OmegaConf.select(cfg, parent) if parent else cfg
    keys = (
        [str(k) for k in node if not str(k).startswith("_") and k != "hydra"]
        if isinstance(node, DictConfig)
        else []
    )
    choices = cfg.hydra.runtime.choices
    group = parent
    while group and group.replace(".", "/") not in choices:  # a nested group: a/b
        group = group.rpartition(".")[0]
    option = choices.get(group.replace(".", "/")) if group else None
    if option is not None:
        named = f"{group.replace('.', '/')}={option}"
        return (named if group == parent else f"{parent} (of {named})"), keys
    return (parent or None), keys


def invalid_jobs(
    configs: list[DictConfig], n_jobs: int, references: list[str] | None = None
) -> str | None:
    """The refusal of a grid some of whose jobs have a value the run would refuse (``beta=-1``
    among good ones): every job's config is validated before any job runs, rather than each
    failing when its turn comes, after the others trained. None when all pass.
    ``references``: the strings of the launching config's ``hydra`` node (what reads a key
    such as ``paths.log_dir`` through ``hydra.sweep.dir``)."""
    problems: dict[str, None] = {}
    bad = 0
    for cfg in configs:
        try:
            validate_config(cfg, in_job=False, references=references)
        except ConfigError as e:
            bad += 1
            problems[str(e)] = None
        except Exception:  # not a value the user gave: the job reports it itself
            continue
    if not bad:
        return None
    shown = "; ".join(list(problems)[:3]) + (" ..." if len(problems) > 3 else "")
    return (
        f"{bad} of the {n_jobs} jobs would be refused when their turn came: {shown} "
        "(drop or correct the value in the grid)"
    )


def finish_sweep(
    sweep_dir: Path,
    stopped_by: str | None = None,
    metrics: Sequence[str] = (),
    planned: Sequence[str] = (),
    search: bool = False,
    rerun_failed: bool = False,
) -> bool:
    """Writes the jobs' statuses into sweep.json and summary.csv, prints the table, names
    the jobs that did not complete and the command that continues the sweep; True when
    every job of the grid completed. ``search``: the jobs are an Optuna search's trials;
    ``rerun_failed``: this launch's sweep.rerun_failed (failed jobs were run again already).

    ``stopped_by``: the signal that stopped the sweep before all its jobs ran (the jobs that
    never started have no row; a relaunch of the same command continues the sweep).
    ``metrics``: columns before the usual ones (a search's objective). ``planned``: the
    directory names of this launch's jobs (:func:`planned_dirs`): one without a directory
    never started (its launcher ended early), said and not complete.
    """
    with sweep_record_lock(sweep_dir):  # another launch may be adding its own
        record, rows = _record_finish(sweep_dir, stopped_by, metrics)
    print(f"\nSweep {sweep_dir} ({len(rows)} jobs):\n{format_table(rows)}\n", flush=True)
    complete = _tell_finish(record, rows, stopped_by, planned)
    _tell_how_to_continue(sweep_dir, record, rows, stopped_by, planned, search, rerun_failed)
    return complete


def _tell_how_to_continue(
    sweep_dir: Path,
    record: dict[str, Any],
    rows: list[dict[str, Any]],
    stopped_by: str | None,
    planned: Sequence[str],
    search: bool,
    rerun_failed: bool,
) -> None:
    """The command that continues the sweep, its directory named (typed again without it, a
    command starts a new directory), when a relaunch of it has something to do: jobs of
    this launch not started, interrupted, killed, unreadable or incomplete (failed and
    diverged jobs of a grid beside them: a hint to add sweep.rerun_failed=true); a grid's
    failed and diverged jobs alone: the command with sweep.rerun_failed=true. A search's
    failed trials are told to Optuna and never run again; a search short of its trials
    continues."""
    ours = [r for r in rows if not planned or r["job"] in planned]
    # A job refused before it trained (its config, its data) is checked again and run by
    # the same command once its cause is fixed: sweep.rerun_failed is not what it needs.
    refused = [r for r in ours if r["status"] == FAILED and _refusal(r["error"])]
    failed = not search and any(
        r["status"] in (FAILED, DIVERGED) and r not in refused for r in ours
    )
    settled = (COMPLETED, FAILED, DIVERGED)
    resumable = [r for r in ours if r["status"] not in settled]
    unstarted = set(planned) - {r["job"] for r in rows}
    short = search and len(rows) < (record.get("n_jobs") or 0)
    rerun = failed and not rerun_failed
    directory = sweep_dir.resolve()
    note = launcher_note()  # torchrun, srun: their prefix is not in the command line
    note = f"\n{note}" if note else ""
    if stopped_by is not None or unstarted or resumable or short:
        command = command_again("hydra.sweep.dir", directory)
        also = "\n(add sweep.rerun_failed=true to train its failed jobs again too)" if rerun else ""
        print(f"Continue this sweep:\n  {command}{also}{note}", file=sys.stderr, flush=True)
    elif rerun:
        command = command_again("hydra.sweep.dir", directory, also=["sweep.rerun_failed=true"])
        print(f"Train the failed jobs again:\n  {command}{note}", file=sys.stderr, flush=True)
    elif refused and not search:
        command = command_again("hydra.sweep.dir", directory)
        print(
            f"{len(refused)} job(s) refused before training (the reason is in their row): "
            f"once it is fixed, the same command runs them:\n  {command}{note}",
            file=sys.stderr,
            flush=True,
        )


def _refusal(error: str) -> bool:
    """Whether a summary row's error (``Type: message``) is a refusal before training."""
    return error.partition(":")[0] in REFUSALS


def _record_finish(
    sweep_dir: Path, stopped_by: str | None, metrics: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The jobs' statuses written into sweep.json and summary.csv: the record, the rows."""
    # Their temps left by a launch killed while writing them (both are written only under
    # the sweep record's lock, which the caller holds).
    remove_stale_temps(sweep_dir, (SWEEP_FILE, SUMMARY_FILE))
    record = read_sweep(sweep_dir) or {"grid": {}}
    results = sweep_results(sweep_dir)
    grid_keys = list(record["grid"])
    named = {k.lstrip("+") for k in grid_keys}
    # Keys the grid does not name that tell jobs apart (a fixed override changed between
    # launches): a column each, or two rows would read the same.
    grid_keys += [k for k in varying_keys(results) if k not in named]
    rows = summary_rows(results, grid_keys, metrics)
    record["jobs"] = [
        {"dir": Path(r["run_dir"]).name, "overrides": r.get("overrides"), "status": r["status"]}
        for r in results
    ]
    record["finished_at"] = now()
    record["stopped_by"] = stopped_by
    write_json_atomic(sweep_dir / SWEEP_FILE, record)
    write_csv_atomic(sweep_dir / SUMMARY_FILE, rows)  # always: never an old summary left
    return record, rows


def _outcome(status: str, error: str) -> str:
    """ "failed RuntimeError: ...", "killed: results.json says ..." (not "killed Killed: ...")."""
    kind, _, message = error.partition(": ")
    if kind.lower() == status.lower():
        return f"{status}: {message}"
    return f"{status} {error}".rstrip()


def _tell_finish(
    record: dict[str, Any],
    rows: list[dict[str, Any]],
    stopped_by: str | None,
    planned: Sequence[str] = (),
) -> bool:
    """The lines after the table: unconverged scales, jobs that did not complete, jobs not
    started; True when every job completed."""
    unconverged = [r["job"] for r in rows if r.get("scale_converged") is False]
    if unconverged:
        print(
            f"{len(unconverged)} run(s) ended with a learned scale more than "
            f"{SCALE_TOLERANCE}x from the test residual scale (test/scale_ratio; raise "
            "likelihood.scale_lr or train longer): " + ", ".join(unconverged),
            file=sys.stderr,
            flush=True,
        )
    bad = [r for r in rows if r["status"] != COMPLETED]
    if bad:
        lines = [f"  {r['job']}: {_outcome(r['status'], r['error'])}" for r in bad]
        print(
            f"{len(bad)} of {len(rows)} jobs did not complete:\n" + "\n".join(lines),
            file=sys.stderr,
            flush=True,
        )
    n_jobs = record.get("n_jobs") or len(rows)
    if stopped_by is not None:
        print(
            f"Sweep stopped by {stopped_by}: {max(0, n_jobs - len(rows))} of {n_jobs} jobs not "
            "started.",
            file=sys.stderr,
            flush=True,
        )
        return not bad
    unstarted = sorted(set(planned) - {r["job"] for r in rows})
    if unstarted:  # this launch's launcher ended early (a broken pool, a cluster lost)
        shown = ", ".join(unstarted[:3]) + (" ..." if len(unstarted) > 3 else "")
        print(
            f"{len(unstarted)} of this launch's {len(planned)} jobs never started ({shown}).",
            file=sys.stderr,
            flush=True,
        )
    return not bad and not unstarted


def planned_dirs(config: DictConfig) -> list[str]:
    """The directory names of the jobs of this launch of a grid sweep (its multirun config),
    as Hydra will name them."""
    overrides = list(config.hydra.overrides.task)
    params = config.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=True) if params else {}
    return [d.name for d in job_dirs(config, grid_jobs(overrides, params))]


def start_sweep(config: DictConfig) -> None:
    """Before any job of a grid runs: refuses a sweep whose keys change nothing or whose
    jobs repeat one another (exits 2), then writes ``sweep.json`` (keeping the earlier
    launches' history when the same sweep is launched again)."""
    sweep_dir = Path(config.hydra.sweep.dir)
    overrides = list(config.hydra.overrides.task)
    params = config.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=True) if params else {}
    refuse_ineffective(config, overrides, params)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    grid = parse_grid(overrides, params)
    with sweep_record_lock(sweep_dir):
        _add_launch(config, sweep_dir, overrides, params, grid)


def _add_launch(
    config: DictConfig, sweep_dir: Path, overrides: list[str], params: dict, grid: dict
) -> None:
    """This launch added to ``sweep.json`` (under :func:`sweep_record_lock`)."""
    previous = previous_sweep(sweep_dir)
    launch = {
        "command": launch_command(),
        "grid": grid,
        "overrides": overrides,
        "launcher": config.hydra.launcher.get("_target_"),
        "launched_at": now(),
        "job_dirs": planned_dirs(config),
        # Python, packages and the source tree's commit and dirty flag (as results.json).
        "versions": versions(),
    }
    launches = [*earlier_launches(previous), launch]
    record = {
        "sweep_dir": str(sweep_dir.resolve()),
        # The latest launch's, as before; every launch's are in `launches`.
        "command": launch["command"],
        "grid": union_grid([la.get("grid") or {} for la in launches]),
        "n_jobs": len({d for la in launches for d in la.get("job_dirs") or []}) or 1,
        "overrides": overrides,
        "launcher": launch["launcher"],
        "versions": launch["versions"],
        "created_at": previous.get("created_at") or now(),
        "launched_at": [*previous.get("launched_at", []), launch["launched_at"]],
        "launches": launches,
        "jobs": previous.get("jobs", []),
    }
    if previous.get(RESTARTED):  # the jobs of the lost launches stay unknown to the record
        record[RESTARTED] = previous[RESTARTED]
    write_json_atomic(sweep_dir / SWEEP_FILE, record)


def earlier_launches(previous: dict[str, Any]) -> list[dict[str, Any]]:
    """The launches a sweep.json records (one rebuilt from the top-level keys for a file
    written before ``launches`` was kept)."""
    if isinstance(previous.get("launches"), list):
        return list(previous["launches"])
    if not previous.get("command"):
        return []
    grid = previous.get("grid") or {}
    return [
        {
            "command": previous.get("command"),
            "grid": grid,
            "overrides": previous.get("overrides"),
            "launcher": previous.get("launcher"),
            "launched_at": (previous.get("launched_at") or [previous.get("created_at")])[-1],
            "job_dirs": [j.get("dir") for j in previous.get("jobs") or [] if j.get("dir")],
        }
    ]


def union_grid(grids: list[dict[str, list]]) -> dict[str, list]:
    """Every key swept by any of ``grids`` with every value any of them gives it (in order
    of first appearance): the summary of a sweep directory launched with several grids
    has a column for each."""
    out: dict[str, list] = {}
    for grid in grids:
        for key, values in grid.items():
            out.setdefault(key, [])
            out[key] += [v for v in values if v not in out[key]]
    return out


def launch_command() -> str:
    """The command that launched this process, as a user would type it again (``python -m
    vaesweep ...`` when it ran as a module, ``run.py ...`` or ``vaesweep-train ...``)."""
    program = Path(sys.argv[0]).name
    if program == "__main__.py":
        program = "python -m vaesweep"
        return f"{program} {shlex.join(sys.argv[1:])}".strip()
    return shlex.join([program, *sys.argv[1:]])


def override_dirname(
    overrides: list[str], exclude_keys: Iterable[str], item_sep: str, kv_sep: str
) -> str:
    """The ``hydra.job.override_dirname`` Hydra composes for a job launched with these
    command-line overrides, under ``hydra.job.config.override_dirname``'s exclude_keys,
    item_sep and kv_sep: the overrides as they were typed, less those whose key (for a
    config group, the group) is excluded, in sorted order, joined by item_sep, with every
    ``=`` replaced by kv_sep (also one inside a value). Hydra's own function is internal."""
    excluded = list(exclude_keys)
    kept = [
        override.input_line
        for override in OverridesParser.create().parse_overrides(list(overrides))
        if override.key_or_group not in excluded
    ]
    # A regular-expression replacement, as Hydra's: kv_sep's backslash escapes act alike.
    return re.sub("=", kv_sep, item_sep.join(sorted(kept)))


def sweep_refusal(
    config: DictConfig, jobs: list[list[str]], configs: list[DictConfig]
) -> str | None:
    """The first job of a sweep (its overrides and composed config) whose directory holds a
    result of another config, as a refusal message; None when there is none. ``config``:
    the multirun's config (with ``hydra``)."""
    sweep_dir = Path(config.hydra.sweep.dir)
    if not any(sweep_dir.glob(f"*/{RESULTS_FILE}")):
        return None
    for job_dir, cfg in zip(job_dirs(config, jobs), configs, strict=True):
        reason = mismatch(job_dir, cfg)
        if reason:
            return reason
    return written_again(config, jobs, configs)


def _as_values(overrides: list[str]) -> tuple | None:
    """The overrides as (key, value) pairs, numbers as floats, sorted: ``beta=1.0`` and
    ``beta=1`` give the same pairs (not so ``trainer.limit_train_batches=1`` and ``=1.0``:
    compared_number); keys that change no result (``logger=csv``,
    ``trainer.enable_progress_bar=false``: NOT_RESULTS) left out. None when one does not
    parse."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:
        return None
    pairs = []
    for o in parsed:
        value = o.value()
        value = compared_number(o.key_or_group, value)
        if changes_results(o.key_or_group):
            pairs.append((o.get_key_element(), repr(value)))
    return tuple(sorted(pairs))


def written_again(
    config: DictConfig, jobs: list[list[str]], configs: list[DictConfig]
) -> str | None:
    """A job of this launch with no directory yet whose config is that of a run already in
    the sweep directory, its overrides written another way (``beta=1.0`` after ``beta=1``:
    Hydra names the directory from the text) or with a setting that changes no result added,
    dropped or changed (``logger=csv``, ``trainer.enable_progress_bar=false``: also in the
    directory's name), as a refusal message; else None. It would train the same thing again
    beside the first, and `collect` would count one of them."""
    sweep_dir = Path(config.hydra.sweep.dir)
    earlier: dict[tuple, list[tuple[Path, dict[str, Any]]]] = {}
    for path in sorted(sweep_dir.glob(f"*/{RESULTS_FILE}")):
        stored = read_record(path.parent)
        if not stored or stored.get("status") not in REUSED:
            continue
        if not isinstance(stored.get("config"), dict) or not stored.get("overrides"):
            continue
        key = _as_values([str(o) for o in stored["overrides"]])
        if key is not None:
            earlier.setdefault(key, []).append((path.parent, stored))
    if not earlier:
        return None
    for job, job_dir, cfg in zip(jobs, job_dirs(config, jobs), configs, strict=True):
        if job_dir.exists():
            continue
        for run_dir, stored in earlier.get(_as_values(job) or (), []):
            if differences(stored["config"], cfg):
                continue  # the same text, another base config: a new job
            before = sorted(set(stored["overrides"]) - set(job))
            now_ = sorted(set(job) - set(stored["overrides"]))
            how = (
                f"({' '.join(before)} there)"
                if before
                else "(a setting that changes no result added)"
            )
            return (
                f"the job [{' '.join(now_)}] is the run {run_dir.name} of this sweep "
                f"({stored['status']}), written another way {how}: it "
                "would be "
                "trained again in a directory of its own. Write the values as that launch "
                "did (the same command continues the sweep), or use another hydra.sweep.dir"
            )
    return None


def job_dirs(config: DictConfig, jobs: list[list[str]]) -> list[Path]:
    """The directory of every job (its overrides) of a grid sweep, as Hydra names it."""
    sweep_dir = Path(config.hydra.sweep.dir)
    naming = config.hydra.job.config.override_dirname
    return [
        sweep_dir
        / job_dirname(
            override_dirname(overrides, naming.exclude_keys, naming.item_sep, naming.kv_sep)
        )
        for overrides in jobs
    ]


def resume_refusal(resume: Any) -> str | None:
    """Why ``sweep.resume`` cannot be continued (it must name an existing sweep directory
    holding sweep.json), else None. The path is checked as Hydra uses it (the sweep's
    directory): a ``~`` on the command line is expanded before (``sweep.entry.home_expanded``),
    one from a config file is not."""
    if resume is None or resume == "":
        return None
    path = Path(str(resume))
    if not path.is_dir():
        home = " (~ is expanded on the command line only)" if str(resume)[:1] == "~" else ""
        return (
            f"sweep.resume={resume} is invalid: no such directory{home}. Allowed: an existing "
            "sweep directory (with sweep.json); to start a new sweep there, use "
            f"hydra.sweep.dir={resume}"
        )
    if not (path / SWEEP_FILE).is_file():
        return (
            f"sweep.resume={resume} is invalid: {path} holds no {SWEEP_FILE}, so it is not a "
            f"sweep directory. Allowed: a directory a multirun wrote; to start a new sweep "
            f"there, use hydra.sweep.dir={resume}"
        )
    return None


def refuse_bad_resume(resume: Any) -> None:
    """Exits (status 2) before any job runs when ``sweep.resume`` names no sweep."""
    refusal = resume_refusal(resume)
    if refusal:
        print(f"[vaesweep] sweep refused, no job was run: {refusal}", file=sys.stderr, flush=True)
        sys.exit(2)
