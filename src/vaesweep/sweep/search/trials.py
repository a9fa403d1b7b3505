"""A study's trials as vaesweep jobs: asked (or resumed) in batches of ``n_jobs``, launched
through Hydra's launcher in their own directories, told from their ``results.json``."""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import sys
import time
import weakref
from collections.abc import Iterator
from typing import Any

from vaesweep.core.helpers import quoted_value
from vaesweep.run import record
from vaesweep.run.claims import ClaimHeld, acquire, held_by_other
from vaesweep.run.record import COMPLETED, DIVERGED, FAILED
from vaesweep.run.signals import stop_signal, stop_sweep
from vaesweep.sweep.search.plan import DIR_ATTR, Plan

log = logging.getLogger("vaesweep.sweep.search")

_FINISHED = ("COMPLETE", "FAIL", "PRUNED")
#: Where a launch claims the right to propose trials (two levels down: not a job directory).
PROPOSING_DIR = ".search/proposing"
#: The studies whose sampler asked to stop in this launch (a GridSampler or BruteForceSampler
#: whose space is exhausted): no new trial is asked of them.
_SAMPLER_STOPPED: weakref.WeakSet = weakref.WeakSet()


def _by_key(plan: Plan, overrides: list[Any]) -> dict[str, str]:
    """The overrides that can change a trial's numbers, by key (each as written)."""
    out = {}
    for override in overrides:
        text = str(override)
        key = text.split("=", 1)[0].lstrip("+")
        if plan.changes_results(key.lstrip("~")):
            out[key] = text
    return out


def other_configuration(
    plan: Plan, result: dict[str, Any] | None, expected: list[str] | None
) -> str | None:
    """Why ``result`` (a trial directory's results.json) is not the result of the trial whose
    overrides are ``expected``, None when it is (or cannot be told: no result, no overrides
    recorded, none expected). A directory of another study of the same sweep directory, or
    of a study whose journal was replaced, holds another configuration's run: its job
    refuses it (ConfigMismatch) and leaves it as it was, and its metrics must not be
    reported as this trial's."""
    recorded = (result or {}).get("overrides")
    if expected is None or not isinstance(recorded, list):
        return None
    old, new = _by_key(plan, recorded), _by_key(plan, expected)
    differ = [k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k)]
    if not differ:
        return None
    shown = "; ".join(
        f"{k}: {old.get(k, '<absent>')} → {new.get(k, '<absent>')}" for k in differ[:4]
    ) + ("; ..." if len(differ) > 4 else "")
    return (
        f"its directory holds a {result.get('status')} run of another configuration ({shown}), "
        "not this trial's"
    )


def tell_once(study: Any, number: int, value: float | None = None, state: Any = None) -> str:
    """Tells Optuna the outcome of trial ``number`` unless it is already finished; returns
    the state the storage holds afterwards (COMPLETE | FAIL | PRUNED). Two launches of one
    search running at once may both settle a trial (each from the same results.json): the
    first one tells it, the second finds it finished, whether before it tells (Optuna's
    ``skip_if_finished``) or while it does (the storage refuses the second write:
    UpdateFinishedTrialError). Whoever is second keeps the stored outcome and never
    tells another one.

    A sampler that ends the study when the tell exhausts its space (GridSampler,
    BruteForceSampler: ``study.stop()`` in ``after_trial``) raises RuntimeError outside
    ``study.optimize``, after the trial is stored: the study is marked done
    (:func:`sampler_stopped`) and the stored state returned."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        told = study.tell(number, value, state=state, skip_if_finished=True)
        return told.state.name
    except UpdateFinishedTrialError:  # told by another launch between the check and the write
        pass
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
        _SAMPLER_STOPPED.add(study)
        log.info("%s: the sampler has no new point to propose: study done", study.study_name)
    (trial,) = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return trial.state.name


def sampler_stopped(study: Any) -> bool:
    """Whether the study's sampler asked to stop in this launch (its space is exhausted)."""
    return study in _SAMPLER_STOPPED


def settle(
    study: Any,
    number: int,
    result: dict[str, Any] | None,
    objective: str,
    plan: Plan | None = None,
    expected: list[str] | None = None,
) -> str | None:
    """Tells Optuna the outcome of one trial from its results.json; returns the state it has
    then (COMPLETE | FAIL), or None for a trial with no final result (left RUNNING, resumed
    by the next launch). ``expected``: the trial's overrides; a result recorded with others
    (another configuration's run in the trial's directory) is told FAIL, with the reason,
    never as this trial's value. A trial another launch of the search already told is
    left as it was told (:func:`tell_once`)."""
    from optuna.trial import TrialState

    status = (result or {}).get("status")
    foreign = other_configuration(plan, result, expected) if plan is not None else None
    if foreign is not None:
        print(
            f"[vaesweep] {study.study_name}: trial {number} told as failed: {foreign} (a "
            "study of its own runs in a sweep directory of its own: hydra.sweep.dir)",
            file=sys.stderr,
            flush=True,
        )
        return tell_once(study, number, state=TrialState.FAIL)
    if status == COMPLETED:
        value = (result.get("metrics") or {}).get(objective)
        if value is not None and math.isfinite(float(value)):
            return tell_once(study, number, float(value))
        log.warning("trial %d: %s missing or not finite: told as failed", number, objective)
        return tell_once(study, number, state=TrialState.FAIL)
    if status in (FAILED, DIVERGED):
        return tell_once(study, number, state=TrialState.FAIL)
    return None


def _drop_unproposed(study: Any, plan: Plan, trials: list[Any]) -> list[Any]:
    """Tells FAIL the RUNNING trials an earlier launch left half-proposed (killed while the
    sampler proposed them; never run, and never counted towards n_trials); returns the
    study's trials, updated."""
    from optuna.trial import TrialState

    cut = [t for t in trials if t.state == TrialState.RUNNING and not plan.proposed(t)]
    for t in cut:
        tell_once(study, t.number, state=TrialState.FAIL)
    if cut:
        log.info("%s: trials %s were never fully proposed: not run", study.study_name,
                 [t.number for t in cut])  # fmt: skip
        return study.get_trials(deepcopy=False)
    return trials


def held_elsewhere(plan: Plan, trial: Any) -> str | None:
    """How another live process holds the job directory of a RUNNING trial (its claim,
    vaesweep.run.claims: another launch of the search runs it now), None when none does
    (a trial left unfinished by a launch that is gone, or not started yet)."""
    directory = trial.user_attrs.get(DIR_ATTR)
    if directory is None:
        return None
    holder = held_by_other(plan.sweep_dir / directory, plan.claim_timeout_s)
    return None if holder is None else holder.describe()


@contextlib.contextmanager
def proposing(plan: Plan) -> Iterator[None]:
    """Holds the search's proposal claim (vaesweep.run.claims, on ``.search/proposing/`` in
    the sweep directory) while this launch chooses a batch: one launch at a time asks
    Optuna for trials. Another launch of the search therefore never sees a trial that a
    live launch is proposing (RUNNING, some searched values still missing), and tells FAIL
    only one that a dead launch left so. Waits while another live launch proposes (a matter
    of milliseconds to seconds); a stop signal meanwhile stops the search."""
    directory = plan.sweep_dir / PROPOSING_DIR
    while True:
        try:
            claim = acquire(directory, plan.claim_timeout_s)
            break
        except ClaimHeld:
            stop_if_signalled()
            time.sleep(0.05)
    with claim:
        yield


def _next_batch(
    study: Any, plan: Plan, point: list[str], dists: dict[str, Any], unsettled: set[int]
) -> list[tuple[int, dict[str, Any]]]:
    with proposing(plan):
        return _choose_batch(study, plan, point, dists, unsettled)


def _choose_batch(
    study: Any, plan: Plan, point: list[str], dists: dict[str, Any], unsettled: set[int]
) -> list[tuple[int, dict[str, Any]]]:
    """Up to n_jobs trials to launch: those left RUNNING by an earlier launch first, then new
    ones while the study has fewer than n_trials; [] when the study is done. A RUNNING trial
    whose job another live launch of the search runs (a claim on its directory) is that
    launch's: it counts towards n_trials and is not launched here."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    trials = _drop_unproposed(study, plan, study.get_trials(deepcopy=False))
    running = [t for t in trials if t.state == TrialState.RUNNING]
    finished = [t for t in trials if t.state.name in _FINISHED and plan.proposed(t)]
    held = {t.number: h for t in running if (h := held_elsewhere(plan, t)) is not None}
    left = [t for t in running if t.number not in unsettled and t.number not in held]
    batch = [(t.number, dict(t.params)) for t in left][: plan.n_jobs]
    resumed = [n for n, _ in batch]
    n_new = min(plan.n_jobs - len(batch), plan.n_trials - len(finished) - len(running))
    if sampler_stopped(study):
        n_new = 0
    for _ in range(max(0, n_new)):
        try:
            trial = study.ask(dists)
            trial.set_user_attr(DIR_ATTR, plan.trial_dir(point, trial.number))
        except UpdateFinishedTrialError:
            # Told FAIL as half-proposed by another launch, which judged this one's proposal
            # claim stale (this process was suspended): not run, not counted.
            continue
        batch.append((trial.number, trial.params))
    if held:
        log.info("%s: trials %s are run by another launch: %s", study.study_name, sorted(held),
                 "; ".join(held.values()))  # fmt: skip
    if resumed:
        log.info("%s: running again trials %s (left unfinished)", study.study_name, resumed)
    return batch


def job_numbers(
    study: Any, plan: Plan, batch: list[tuple[int, dict[str, Any]]], first_job: int
) -> list[int]:
    """Hydra's job number of each trial of a batch: ``first_job`` + the study's proposed
    trials before it (a half-proposed trial, never run, takes no number). A relaunch's batch
    may hold a trial left unfinished beside new ones: their numbers do not follow it."""
    proposed = sorted(t.number for t in study.get_trials(deepcopy=False) if plan.proposed(t))
    return [first_job + bisect.bisect_left(proposed, number) for number, _ in batch]


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive job numbers in ``numbers``."""
    runs, start = [], 0
    for i in range(1, len(numbers) + 1):
        if i == len(numbers) or numbers[i] != numbers[i - 1] + 1:
            runs.append((start, i))
            start = i
    return runs


def _launch(
    study: Any,
    plan: Plan,
    point: list[str],
    batch: list[tuple[int, dict[str, Any]]],
    launcher: Any,
    numbers: list[int],
) -> list[str | None]:
    """Launches one batch and tells each trial's outcome; returns the states told.
    ``numbers``: Hydra's job number of each trial (:func:`job_numbers`). vaesweep's
    launchers take them as they are, in one launch; another launcher numbers a launch's
    jobs from its first, so each run of consecutive numbers is a launch of its own."""
    dirs = [plan.trial_dir(point, number) for number, _ in batch]
    overrides = [
        [*plan.space.trial_overrides(point, params), f"hydra.sweep.subdir={quoted_value(d)}"]
        for (_, params), d in zip(batch, dirs, strict=True)
    ]
    if callable(getattr(launcher, "launch_numbered", None)):
        launcher.launch_numbered(overrides, numbers)
    else:
        for start, end in _runs(numbers):
            launcher.launch(overrides[start:end], initial_job_idx=numbers[start])
    return [
        settle(study, number, record.read(plan.sweep_dir / d), plan.objective, plan, job[:-1])
        for (number, _), d, job in zip(batch, dirs, overrides, strict=True)
    ]


def settle_finished_on_disk(study: Any, plan: Plan, point: list[str]) -> list[int]:
    """Tells Optuna the trials an earlier launch left RUNNING whose job did finish (the
    launch was killed after the job wrote its result, before telling it): they are settled
    from their results.json (one of another configuration: FAIL), not launched again.
    Returns their numbers."""
    from optuna.trial import TrialState

    settled = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        directory = trial.user_attrs.get(DIR_ATTR)
        if directory is None:
            continue
        result = record.read(plan.sweep_dir / directory)
        expected = plan.space.trial_overrides(point, trial.params)
        if settle(study, trial.number, result, plan.objective, plan, expected) is not None:
            settled.append(trial.number)
    if settled:
        log.info("%s: trials %s had finished: told from their results", study.study_name, settled)
    return settled


def stop_if_signalled() -> None:
    """A safe point of the search: when a signal has told it to stop (the sweep's guard
    recorded it, vaesweep.run.signals), SweepStopped is raised here, between two steps of
    the search, never inside Hydra's composition of a trial's config or Optuna's proposal
    of one (where the signal itself may have come)."""
    signum = stop_signal()
    if signum is not None:
        stop_sweep(signum)


def run_study(study: Any, plan: Plan, point: list[str], launcher: Any, first_job: int) -> None:
    """Runs one study to n_trials trials in total. Its k-th trial (counting the proposed
    ones) is job ``first_job + k``, in a relaunch too (Hydra's job number, as in a job's line
    ``job 3/8 completed``). Stops (at its safe points) when a signal has told it to stop."""
    dists = {k: p.distribution() for k, p in plan.space.searched.items()}
    settle_finished_on_disk(study, plan, point)
    unsettled: set[int] = set()
    while True:
        stop_if_signalled()
        batch = _next_batch(study, plan, point, dists, unsettled)
        if not batch:
            return
        stop_if_signalled()  # proposed (RUNNING, with their directory): run by the relaunch
        numbers = job_numbers(study, plan, batch, first_job)
        states = _launch(study, plan, point, batch, launcher, numbers)
        unsettled.update(number for (number, _), s in zip(batch, states, strict=True) if s is None)
        failed = states.count("FAIL")
        if failed / len(batch) > plan.max_failure_rate:
            raise RuntimeError(
                f"{failed} of {len(batch)} trials of a batch failed "
                f"(hydra.sweeper.max_failure_rate={plan.max_failure_rate}): search stopped"
            )
