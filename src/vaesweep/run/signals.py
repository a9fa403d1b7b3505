"""Stopping a job cleanly when the process is asked to stop.

While a job runs, :class:`StopSignals` handles SIGINT (Ctrl-C), SIGTERM (``kill``, a
scheduler's pre-emption or time limit) and SIGUSR1 / SIGUSR2 (what clusters send shortly
before they stop or requeue a job). The first signal only records the request; the job stops
at its next safe point: after the current batch (training, validation or test, through the
``Resumable`` Lightning callback) or between two phases of the job. Then ``results.json``
says ``interrupted`` with the step reached, and the process exits with 128 + the signal
number (130 for SIGINT, 143 for SIGTERM, 138 / 140 for SIGUSR1 / SIGUSR2 on Linux). A second
signal stops the job at once (still recorded as ``interrupted``).

Lightning registers its own SIGTERM handler while it trains or tests: it sets
``trainer.received_sigterm`` and its loops raise ``SIGTERMException`` (a ``SystemExit``) at
their own safe points. It keeps the handler it found and calls it too, so both take part: a
SIGTERM reaches this module's handler through Lightning's, and whichever of the two raises
first, the job is recorded as interrupted.

A handler that was in place before the job (a scheduler library's: submitit's requeue on
its pre-emption signal, or the sweep's :class:`SweepGuard`) is not called from inside the
job. It is handed the signal once the job has stopped and ``results.json`` says
``interrupted`` (:meth:`JobInterrupted.hand_over`): submitit then requeues the job and
exits, the sweep stops. Called at once, submitit's handler would exit mid-batch, before the
job could record anything.

Nothing is written mid-epoch: the job resumes from ``checkpoints/last.ckpt``, written
atomically at the end of every epoch, and repeats the batches of the epoch it was stopped in.
A mid-epoch checkpoint would save time, but the resumed run could not reproduce the
uninterrupted one exactly (the epoch's data order, noise and running means would restart).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, overload

from vaesweep.core.atomic import atomic_open
from vaesweep.run.claims import Claim, ClaimLost, ClaimLostByRank
from vaesweep.run.spawn import STOPPED, SpawnChannel

SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")


def _install(handler: Any) -> dict[int, Any]:
    """Makes ``handler`` the handler of SIGNALS (main thread only; a signal ignored with
    SIG_IGN stays ignored); returns the handlers it replaced."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for name in SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None or signal.getsignal(signum) == signal.SIG_IGN:  # not here, ignored
            continue
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


class Stopped(BaseException):
    """Stopped by a signal. Like KeyboardInterrupt, not an ``Exception``: code that handles
    errors does not mistake it for one."""

    def __init__(self, signum: int, message: str) -> None:
        self.signum = signum
        super().__init__(message)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


class JobInterrupted(Stopped):
    """The job was stopped by a signal."""

    def __init__(
        self,
        signum: int,
        step: int | None = None,
        then: Any = None,
        finished: bool = False,
        ended_by: BaseException | None = None,
    ) -> None:
        self.step = step
        self.then = then  # the handler in place before the job (hand_over calls it)
        #: The error the job ended with before the stop was honoured (its outcome is
        #: recorded): a refusal, a divergence, a failure.
        self.ended_by = ended_by
        name = signal.Signals(signum).name
        if ended_by is not None:  # its results.json says how (failed, diverged, ...)
            message = (
                f"stopped by {name}, received while the job ran (it ended with "
                f"{type(ended_by).__name__}, above)"
            )
        elif finished:  # after the last safe point: results.json holds the job's outcome
            message = f"{name} came after the job had recorded its result: nothing to resume"
        else:
            at = "" if step is None else f" at step {step}"
            message = f"stopped by {name}{at}; the same command in the same directory resumes it"
        super().__init__(signum, message)

    def hand_over(self) -> None:
        """Passes the signal to the handler that was in place before the job, now that the
        job has stopped and recorded it: submitit's requeue (which exits the process, or
        raises ``UncompletedJobError`` when it will not requeue), the sweep's guard (which
        stops the sweep: SweepStopped). Nothing for Python's default SIGINT handler (its
        KeyboardInterrupt would only replace this exception) or a signal read from a stop
        file (no handler saw it)."""
        then = self.then
        self.then = None
        if callable(then) and then is not signal.default_int_handler:
            then(self.signum, None)


class StopSignals:
    """Installs the stop handlers for the duration of a ``with`` block (one job), then puts
    the previous handlers back.

    A signal whose handler was SIG_IGN is left ignored (``nohup``, a background job of a
    script). A previous Python handler (a scheduler library's, the sweep's guard) is handed
    the signal after the job has stopped (:meth:`JobInterrupted.hand_over`), whatever the
    job ended with: a signal received while the job ran is honoured once its outcome is
    recorded, also when that outcome is an error (a refusal, a divergence, a failure:
    ``JobInterrupted.ended_by``). Signals can only be handled in the main thread; in another
    thread only the stop file is watched.

    ``stop_file``: a file whose appearance stops the job like a signal (it names the
    signal). The launching process of a parallel sweep writes it when it is signalled
    (:class:`SweepGuard`), so that jobs in worker processes stop even when only the
    launching process was signalled. Looked for at every safe point (batch boundary): one
    failed ``open`` while there is none, a few µs against a step of milliseconds, so a job
    stops at the first batch after the launching process wrote it.

    ``spawned``: set (:mod:`vaesweep.run.driver`) while the job's fit or test runs in
    processes a spawning strategy started (``ddp_spawn``; :mod:`vaesweep.run.spawn`). The
    job's process then passes the signal it receives on to them, and in each of them a copy
    of this object (pickled with the Lightning callbacks) handles the stop signals of its
    own process (:meth:`take_over`), watches the relayed signal as a stop file,
    and records the step it stopped at before the process ends.

    **Several processes of one fit** (DDP: the processes srun, torchrun, Lightning's ddp or
    ddp_spawn started, each a rank with its own copy of this object): a signal may reach one
    rank (``kill`` of one process, Lightning's SIGTERM relay) or reach them at different
    batches, and a rank that stops alone leaves the others waiting in their next collective.
    So there, each rank's handler takes over from Lightning's (:meth:`take_over`) and the
    ranks agree on the stop (:meth:`check_together`) at the points they all reach in step:
    the end of every training batch, and the end of the fit and of the test. Mid-validation
    and mid-test (where ranks may hold unequal numbers of batches) a stop waits for the next
    such point; a second signal still stops the rank that receives it at once.
    """

    def __init__(
        self, stop_file: str | os.PathLike[str] | None = None, claim: Claim | None = None
    ) -> None:
        """``claim``: the job's claim (vaesweep.run.claims); once it is lost, the next safe
        point raises ClaimLost instead (the job's directory is another process's now)."""
        self.claim = claim
        self.signum: int | None = None
        self.trainer: Any = None  # set by the Resumable callback: the step comes from it
        self._previous: dict[int, Any] = {}
        self._then: Any = None  # the previous handler of the signal received
        self._here = False  # whether this process received its stop itself (not a rank's)
        self.stop_file = None if stop_file is None else Path(stop_file)
        self.spawned: SpawnChannel | None = None
        self._spawned_step: int | None = None  # where the spawned processes stopped

    def __getstate__(self) -> dict[str, Any]:
        """A copy for another process (ddp_spawn pickles the callbacks): the handlers of
        this process and its trainer mean nothing there."""
        state = self.__dict__.copy()
        state.update(_previous={}, _then=None, trainer=None)
        return state

    @property
    def received(self) -> bool:
        return self.signum is not None

    @property
    def step(self) -> int | None:
        """The global step of the job's trainer, None before it has one (or, for a fit in
        spawned processes, the step they stopped at: :meth:`stopped_in_spawned`)."""
        if self.trainer is None:
            return self._spawned_step
        return int(self.trainer.global_step)

    def exception(self) -> JobInterrupted:
        assert self.signum is not None
        return JobInterrupted(self.signum, self.step, self._then)

    def poll(self) -> bool:
        """Whether a stop has come: a signal, or the stop file (read now), or, in a process
        a spawning strategy started, the signal the job's process passed on."""
        if self.signum is None and self.stop_file is not None:
            self.signum = read_stop_file(self.stop_file)
        if self.signum is None and self.spawned is not None and self.spawned.in_child():
            self.signum = self.spawned.relayed()
        return self.signum is not None

    def check(self) -> None:
        """Raise JobInterrupted if a stop signal has been received or the stop file has
        appeared (call at safe points); ClaimLost if the job's claim is lost."""
        self.poll()
        if self.claim_lost:  # first: no record then (a stop signal is handed on by the job)
            self.check_claim()  # raises ClaimLost
        if self.signum is not None:
            self._stop()

    def check_together(self, trainer: Any) -> None:
        """:meth:`check` at a point every rank of ``trainer``'s fit reaches in step (the end
        of a training batch, of the fit, of the test): where there are several ranks, they
        agree first (an all-reduce of the signal numbers, the largest wins), so that a stop
        only some of them received stops all of them here. One process: :meth:`check`."""
        if not in_step(trainer):
            self.check()
            return
        self.poll()
        agreed, lost = reduced([self.signum or 0, int(self.claim_lost)], trainer, "max")
        if lost:  # rank 0's claim (its heartbeat saw it taken over): every rank stops
            self._lose_claim()
        if agreed:  # by every rank (a signal or stop file seen only now waits for the next)
            if self.signum is None:  # another rank's: handed over as if received here
                self.signum = agreed
                self._then = self._previous.get(agreed)
            self._stop()

    def check_claim_together(self, trainer: Any) -> None:
        """:meth:`check_claim` at a point every rank of ``trainer``'s fit reaches in step
        (before an epoch's checkpoint and records, before metrics are logged): where there
        are several ranks, the holder's reading of the claim file is all-reduced, so that
        every rank stops when it is lost (a rank 0 that stopped alone left the others in
        their next collective). One process: :meth:`check_claim`."""
        if not in_step(trainer):
            self.check_claim()
            return
        lost = False
        if self.claim is not None:
            try:
                self.claim.verify()
            except ClaimLost:  # raised below, once every rank knows
                lost = True
        (agreed,) = reduced([int(lost)], trainer, "max")
        if agreed:
            self._lose_claim()

    def _lose_claim(self) -> NoReturn:
        """Raises ClaimLost in a rank of a fit whose ranks agreed that the claim is lost:
        the holder's own (rank 0; a spawned process's copy of the claim reads the file),
        :class:`~vaesweep.run.claims.ClaimLostByRank` in the others."""
        if self.claim is not None:
            self.claim.verify()  # raises ClaimLost where the claim is lost
        raise ClaimLostByRank()

    def _stop(self) -> NoReturn:
        """Raises the stop. In a spawned process: records it first for the job's process,
        and ends the process quietly with 128 + n (a JobInterrupted would reach no one:
        torch.multiprocessing prints its traceback and exits 1)."""
        stop = self.exception()
        if self.spawned is not None and self.spawned.in_child():
            self.spawned.record(STOPPED, signum=stop.signum, step=stop.step)
            raise SystemExit(stop.exit_code)
        raise stop

    def stopped_in_spawned(self, step: int | None) -> None:
        """The job's process, once the spawned processes have stopped at ``step``."""
        self._spawned_step = step

    @property
    def claim_lost(self) -> bool:
        """Whether the job's claim is known to be lost (another process took the job over)."""
        return self.claim is not None and self.claim.lost.is_set()

    def check_claim(self) -> None:
        """ClaimLost if the job's claim is no longer this process's, reading the claim file
        now: call before writing into the job's directory (an epoch's checkpoint)."""
        if self.claim is not None:
            self.claim.verify()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None or not self._here:  # (a stop another rank had: its first)
            self.signum, self._here = signum, True
            self._then = self._previous.get(signum)
            if self.spawned is not None and not self.spawned.in_child():
                self.spawned.relay(signum)  # the processes of the fit stop at their next batch
            return
        self._stop()  # a second signal: at once

    def take_over(self, trainer: Any = None) -> None:
        """In a process a spawning strategy started, or in any rank of a fit of several
        processes (``trainer``'s, with torch.distributed set up): the stop signals are this
        object's, Lightning's SIGTERM handler included (call after Lightning has installed
        it). Lightning's would end a spawned process with status 0 and no result (the job's
        process then waits for one forever), and in a rank it broadcasts from inside the
        handler, a collective the other ranks do not all make, then stops at its own safe
        point: the ranks no longer agree. Elsewhere nothing changes (one process: both
        handlers take part, see the module's doc). A signal ignored stays ignored."""
        in_child = self.spawned is not None and self.spawned.in_child()
        if not in_child and not in_step(trainer):
            return
        if threading.current_thread() is not threading.main_thread():
            return
        for name in SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            current = signal.getsignal(signum)
            if current != signal.SIG_IGN and current != self._handle:
                signal.signal(signum, self._handle)

    def __enter__(self) -> StopSignals:
        self._previous = _install(self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        _restore(self._previous)
        self._previous = {}
        if isinstance(error, Stopped | ClaimLost) or (error is not None and self.claim_lost):
            # A stop already, or the job is another process's (vaesweep.run.jobs): also in a
            # rank > 0, which holds no claim and stops with rank 0 (ClaimLostByRank).
            return
        # The job ended and recorded its outcome: a signal that came meanwhile still stops
        # (128 + n, the sweep, submitit's requeue), whatever that outcome was.
        if self.signum is None and self.stop_file is not None:  # a sweep (128 + n)
            self.signum = read_stop_file(self.stop_file)
        if self.signum is None:
            return
        if error is None:
            raise JobInterrupted(self.signum, self.step, self._then, finished=True)
        raise JobInterrupted(self.signum, self.step, self._then, ended_by=error) from error


@overload
def reduced(value: int, trainer: Any, op: str) -> int: ...
@overload
def reduced(value: list[int], trainer: Any, op: str) -> list[int]: ...
def reduced(value: int | list[int], trainer: Any, op: str) -> int | list[int]:
    """``value`` (an integer, or a list of them, reduced element by element) all-reduced
    over the ranks of ``trainer``'s fit (``op``: ``max`` or ``min``): a collective every
    rank must make at the same point."""
    import torch
    import torch.distributed as dist

    values = value if isinstance(value, list) else [value]
    tensor = torch.tensor(values, device=trainer.strategy.root_device)
    dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op.upper()))
    out = [int(v) for v in tensor.tolist()]
    return out if isinstance(value, list) else out[0]


_RELEASE_AT_EXIT = False  # whether release_at_exit registered this process's handler


def release_at_exit() -> None:
    """Destroys this process's torch.distributed process group when the interpreter exits,
    before it finalizes (registered once per process; call in each rank of a fit of several
    processes, once the group is set up).

    Lightning destroys it at exit for NCCL only. A gloo group left to the interpreter's
    finalization aborted a rank at exit now and then (SIGABRT, "terminate called without an
    active exception"; 2 ddp_spawn jobs in 76 on the idle 2-core VM): gloo's worker thread
    can drop its last reference to a finished all-reduce's tensor after the main thread has
    moved on, and where that tensor was made in Python (the ranks' checks, metrics synced
    with sync_dist), releasing it takes the GIL; taken during finalization, that ends the
    thread inside a C++ destructor, which terminates the process. Destroyed at exit (atexit
    runs before finalization), the group joins its worker threads while they still can take
    the GIL. A collective still pending then (a rank that failed) is aborted, not waited
    for."""
    global _RELEASE_AT_EXIT
    if _RELEASE_AT_EXIT:
        return
    import atexit

    atexit.register(_destroy_process_group)
    _RELEASE_AT_EXIT = True


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def in_step(trainer: Any) -> bool:
    """Whether ``trainer`` is one rank of several in a fit whose ranks are connected now
    (torch.distributed set up): their stops must be agreed (StopSignals.check_together)."""
    if trainer is None or getattr(trainer, "world_size", 1) <= 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


# --- the launching process of a sweep ---------------------------------------------------------
STOP_FILE_ENV = "VAESWEEP_STOP_FILE"


def read_stop_file(path: str | os.PathLike[str] | None) -> int | None:
    """The signal a stop file names, None when there is none."""
    if path is None:
        return None
    try:
        name = Path(path).read_text().strip()
    except OSError:
        return None
    return int(getattr(signal, name, signal.SIGTERM))


class SweepStopped(Stopped):
    """The launching process of a sweep was stopped by a signal (raised by SweepGuard; the
    entry point writes the summary and exits with 128 + the signal number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum, f"sweep stopped by {signal.Signals(signum).name}")


class SweepGuard:
    """The stop handlers of a sweep's launching process, from the start of the multirun to
    its end (vaesweep.sweep.callback.SweepCallback installs it).

    Jobs run in this process (Hydra's basic launcher) install their own StopSignals on top
    and hand the signal over once they have stopped; a signal that arrives between two jobs
    reaches this guard directly. Either way the guard raises SweepStopped: no further job
    starts, and the entry point writes the summary of what finished.

    ``parallel`` (jobs in worker processes: local_parallel, joblib, Ray), or ``deferred`` (an
    Optuna search, whose own loop stops at its safe points): the first signal only writes
    ``stop_file`` naming it. The running jobs see it (StopSignals' stop file, through the
    environment variable STOP_FILE_ENV, which the workers inherit), stop at their next
    safe point and record ``interrupted``; jobs handed out after it start nothing. The
    launcher then returns normally; a search stops at its next safe point
    (:func:`stop_signal`: between two trials, never inside Hydra's composition of a
    trial's config or Optuna's proposal of one) and the end of the multirun writes the
    summary and exits with 128 + the signal number. A second signal raises SweepStopped
    at once. Once SweepStopped is raised (:func:`stop_sweep`) or the summary is being
    written (:meth:`quiet`), a signal is only recorded: nothing interrupts the stop.
    """

    def __init__(
        self, stop_file: str | os.PathLike[str], parallel: bool, deferred: bool = False
    ) -> None:
        self.stop_file = Path(stop_file)
        self.parallel = parallel
        self.deferred = parallel or deferred
        self.signum: int | None = None
        self._quiet = False
        self._previous: dict[int, Any] = {}

    @property
    def signal_name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if self._quiet:  # stopping already: recorded, never a second SweepStopped
            return
        if first and self.deferred:
            with atomic_open(self.stop_file, "w") as f:
                f.write(signal.Signals(signum).name)
            return
        stop_sweep(self.signum)

    def quiet(self) -> None:
        """From now on a signal is only recorded (the sweep is stopping, or writing its
        summary): no SweepStopped is raised into that work."""
        self._quiet = True

    def install(self) -> SweepGuard:
        global _ACTIVE
        self._previous = _install(self._handle)
        if self.deferred:
            os.environ[STOP_FILE_ENV] = str(self.stop_file)
        _ACTIVE = self
        return self

    def uninstall(self) -> None:
        global _ACTIVE
        _restore(self._previous)
        self._previous = {}
        if _ACTIVE is self:
            _ACTIVE = None
        if os.environ.get(STOP_FILE_ENV) == str(self.stop_file):
            del os.environ[STOP_FILE_ENV]
        self.stop_file.unlink(missing_ok=True)


_ACTIVE: SweepGuard | None = None


def stop_sweep(signum: int) -> NoReturn:
    """Raises SweepStopped; the sweep's guard (if one is installed) only records the
    signals that come after it, so that none interrupts the stop."""
    if _ACTIVE is not None:
        _ACTIVE.quiet()
    raise SweepStopped(signum)


def sweep_stopped() -> bool:
    """Whether the launching process of this (parallel) sweep has been told to stop."""
    return stop_signal() is not None


def stop_signal() -> int | None:
    """The signal that told this sweep to stop (its guard is deferred: a parallel sweep or
    a search), None while none has."""
    return read_stop_file(os.environ.get(STOP_FILE_ENV))
