"""The ``hydra/launcher=local_parallel`` choice: ``n_jobs`` jobs at once on this machine, each
in a worker process of its own, where one job's death is that job's alone.

Hydra's joblib launcher (on which ``local_parallel`` was built before) runs its jobs in a
loky pool: when the kernel kills one worker (out of memory, SIGKILL), loky breaks the whole
pool, kills the other workers mid-job and the sweep ends with ``TerminatedWorkerError``, the
jobs not yet started never listed. Here each worker is a process of its own, fed one job at a
time through its own pipe, and watched through its sentinel:

- a worker that ends without a result loses its job alone
  (:func:`vaesweep.sweep.launching.lost`): said on the console; its results.json keeps
  ``running``, which the summary and ``collect`` show as ``killed``; the next job starts in
  a fresh worker; the same command resumes it. Workers that die before they are ready
  (:data:`MAX_FAILED_STARTS` in a row: a broken install) lose the jobs still waiting, each
  said, instead of being started again for ever;
- workers are started with ``spawn`` (a fresh interpreter, as loky's), not daemonic (a job's
  DataLoader workers are its children), and kept for the jobs of later launches (an Optuna
  search's batches) until the launching process exits. Each starts with its GPU
  (``CUDA_VISIBLE_DEVICES``, its share) and the BLAS/OpenMP thread counts loky set (cores /
  the jobs its launch runs at once, unless set already) in its environment from the first
  line of its interpreter; each job's torch threads (``threads: null``) are the cores / the
  jobs its launch runs at once, min(n_jobs, the launch's jobs) (a search's batch of one
  under n_jobs=8 gets every core). A
  launch of k jobs runs them in the first min(k, n_jobs) of the n_jobs places (each a GPU,
  round robin), one job per place at a time, and each job's share of its GPU is 1/(the
  places of this launch on that GPU): a worker kept from an earlier launch moves, idle, to
  a place of this one on its own GPU, and a place with none gets a new worker (so a
  worker lost in an earlier batch never leaves two jobs on one GPU, uncapped, beside an
  idle one);
- stopping: the sweep's guard (vaesweep.run.signals.SweepGuard, parallel) writes the stop
  file that running jobs read at their next batch; SIGINT or SIGTERM that reaches a worker
  between jobs (Ctrl-C in a terminal reaches the whole process group, as does a scheduler's
  SIGTERM) is ignored there, one during a job is the job's own. A second signal stops the
  launcher at once: its workers get SIGTERM (a job records ``interrupted`` at its next
  batch), and SIGKILL after ``stop_grace_s`` seconds. A worker whose launching process died
  (SIGKILL) stops its job the same way (one SIGTERM to itself) and exits.

Importing this module is cheap (Hydra imports every plugin module when it starts). No ``from
__future__ import annotations``: Hydra executes plugin modules before they are in
``sys.modules``.
"""

import atexit
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides

from vaesweep.core.launchers import JOBS_AT_ONCE_KEY
from vaesweep.run.signals import sweep_stopped
from vaesweep.sweep.launching import (
    SweepLauncher,
    adopt_environment,
    forwarded_environment,
    job_config,
    lost,
    run_configured,
)

log = logging.getLogger(__name__)

#: How long the launching process waits between looks at its workers: its signal handlers
#: run in between.
POLL_S = 1.0
#: Workers that die before they are ready, in a row, after which the waiting jobs are lost.
MAX_FAILED_STARTS = 3
#: What a worker sends once it can take jobs, and how long it may take to start.
READY = b"ready"
#: What a worker sends for a job it was given after the sweep was stopped: it made nothing.
NOT_STARTED = b"not started"
READY_TIMEOUT_S = 300.0
#: Signals a worker ignores between jobs (a job installs its own handlers for its lifetime).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The thread counts loky gives each of its workers (cores / jobs at once), unless already set.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _serve(conn: Connection) -> None:
    """A worker: says it is ready, then runs the jobs its pipe brings, one at a time, and
    sends back each result; ends at None or when the pipe closes (the launching process is
    gone). Its GPU and thread variables are in its environment from its start."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _between_jobs)  # a job's own handlers replace it
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the parent's start
    _watch_parent(os.getppid())
    import cloudpickle

    conn.send_bytes(READY)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        idx, overrides, payload, env, launcher_values = message
        shared = pickle.loads(payload)  # each launch's own (an Optuna search has several)
        adopt_environment(env)
        if sweep_stopped():  # given just before the stop: no directory, no log, no result
            reply = NOT_STARTED
        else:
            sweep_config = job_config(idx, overrides, shared, **launcher_values)
            reply = _reply(run_configured(sweep_config, shared), cloudpickle)
        try:
            conn.send_bytes(reply)
        except (BrokenPipeError, EOFError, OSError):
            return  # the launching process is gone


def _reply(result: JobReturn, cloudpickle: Any) -> bytes:
    """The result as bytes the launching process can read: a return value (or a task's
    exception) that does not pickle, or does not unpickle, is sent as a RuntimeError naming
    it, with the job's status kept."""
    try:
        reply = cloudpickle.dumps(result)
        pickle.loads(reply)
        return reply
    except Exception as error:
        value = result._return_value
        result._return_value = RuntimeError(
            f"{value!r} (its return value could not be sent back: {type(error).__name__}: {error})"
        )
        return cloudpickle.dumps(result)


def _between_jobs(signum: int, frame: Any) -> None:
    """SIGINT or SIGTERM in a worker between two jobs: the launching process, signalled
    too, stops the sweep through its stop file; once its pipe closes, the worker ends."""


def _watch_parent(parent: int) -> None:
    """A thread that stops this worker's job when the launching process is gone (killed
    outright), instead of running on holding the job's claim and GPU: one SIGTERM to itself,
    once a job's own handler is in place (the job records ``interrupted`` at its next
    batch). Once only: a second SIGTERM tells a job to stop at once, which would cut short
    its record of the stop or W&B's finish. While the worker's own handler is in place (a
    job starting, or between jobs) it waits: a starting job gets the signal when its
    handlers are in, and between jobs the closed pipe ends the worker."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_S)
        while signal.getsignal(signal.SIGTERM) is _between_jobs:
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="vaesweep-parent-watch", daemon=True).start()


@contextlib.contextmanager
def _child_environment(env: dict[str, str]) -> Iterator[None]:
    """While a worker is spawned: ``env`` in this process's environment (the child inherits
    it at exec) and the stop signals blocked (the child inherits the mask, so a Ctrl-C during
    its start is held until its handlers are in place; here it is delivered right after)."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    main = threading.current_thread() is threading.main_thread()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if main else None
    try:
        yield
    finally:
        for key, value in saved.items():  # before the mask: a held signal's handler runs then
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class _Worker:
    def __init__(self, context: Any, number: int, slot: int, env: dict[str, str]) -> None:
        self.slot = slot  # which of the n_jobs places it fills (its GPU, when there are some)
        self.env = env  # what its environment starts with (GPU, share, thread counts)
        self.conn, self._child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(self._child,), name=f"vaesweep-worker-{number}", daemon=False
        )
        self.ready = False
        self.started_at = time.monotonic()  # again at its start
        self.job: int | None = None  # the position (in this launch) of the job it runs

    def start(self) -> None:
        with _child_environment(self.env):
            self.process.start()
        self._child.close()
        self.started_at = time.monotonic()

    def give(self, position: int, message: tuple) -> bool:
        """Sends it a job; False when its pipe is closed (it has died)."""
        try:
            self.conn.send(message)
        except (BrokenPipeError, OSError):
            return False
        self.job = position
        return True

    def exit_reason(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0 and -code in signal.valid_signals():
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"


class LocalParallelLauncher(SweepLauncher):
    """See the module doc."""

    def __init__(self, n_jobs: Any = 2, gpus: Any = None, stop_grace_s: float = 30.0) -> None:
        super().__init__()
        self.n_jobs = n_jobs
        self.gpus = gpus
        self.stop_grace_s = float(stop_grace_s)
        self._context = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []
        self.places_env: list[dict[str, str]] = []
        self._started = 0
        self.failed_starts = 0
        atexit.register(self.shutdown)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        import cloudpickle

        from vaesweep.core.launchers import jobs_at_once

        sweep_dir = self.begin_launch()
        n_jobs = jobs_at_once(self.n_jobs)
        # Each launch its shares (a search's batches differ in size); a place's GPU is the
        # same whatever the launch, so workers kept from an earlier one stay where they are.
        at_once = _places_used(n_jobs, job_overrides)
        self.places_env = self._places(n_jobs, at_once)
        resource_tracker.ensure_running()  # started here, not inside a worker's start
        placed = [e["CUDA_VISIBLE_DEVICES"] for e in self.places_env if "CUDA_VISIBLE_DEVICES" in e]
        log.info(
            "local_parallel is launching %d jobs, %d at once%s",
            len(job_overrides),
            at_once,
            f" (the GPU of each place: {', '.join(placed)})" if placed else "",
        )
        log.info("Launching jobs, sweep output dir : %s", sweep_dir)
        for i, overrides in enumerate(job_overrides):
            number = self.job_number(initial_job_idx, i)
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        # By value where pickle's references fail (a task function decorated in a script,
        # Hydra's plugin dataclasses), as loky sends them.
        payload = cloudpickle.dumps(self.shared())
        env = forwarded_environment()
        run = _Launch(self, job_overrides, initial_job_idx, payload, env, n_jobs)
        try:
            return run.until_done()
        except BaseException:
            self._stop_all()
            raise

    def _places(self, n_jobs: int, n_used: int) -> list[dict[str, str]]:
        """The starting environment of each of the n_jobs worker places: its GPU and share
        (vaesweep.run.gpus.spread over the ``n_used`` places this launch fills), and the
        BLAS/OpenMP thread counts as loky sets them, for the ``n_used`` jobs this launch
        runs at once (a search's batch of 1 under n_jobs=8: the cores, not an eighth)."""
        from omegaconf import OmegaConf

        from vaesweep.core.launchers import usable_cores
        from vaesweep.run import gpus

        assert self.config is not None
        threads = str(max(1, usable_cores() // n_used))
        base = {k: threads for k in THREAD_VARIABLES if k not in os.environ}
        node = OmegaConf.select(self.config, "trainer")  # an app of its own may have none
        trainer = OmegaConf.to_container(node, resolve=True) if node is not None else {}
        ids = gpus.local_gpus(self.gpus, trainer)  # type: ignore[arg-type]
        if not ids:
            return [dict(base) for _ in range(n_jobs)]
        places = []
        for gpu, share in gpus.spread(ids, n_jobs, n_used):
            env = {**base, "CUDA_VISIBLE_DEVICES": gpu, gpus.ASSIGNED_ENV: "local_parallel"}
            if share is not None:
                env[gpus.FRACTION_ENV] = f"{share:g}"
            places.append(env)
        return places

    def start_worker(self, slots: Sequence[int]) -> _Worker | None:
        """A new worker in the first free place of ``slots``, or None when all are taken."""
        free = sorted(set(slots) - {w.slot for w in self.workers})
        if not free:
            return None
        self._started += 1
        worker = _Worker(self._context, self._started, free[0], self.places_env[free[0]])
        self.workers.append(worker)  # first: a signal during its start stops it too
        worker.start()
        return worker

    def fill_from_idle(self, slots: Sequence[int]) -> None:
        """Each free place of ``slots`` taken by an idle worker from outside them that runs
        on the same GPU (its ``CUDA_VISIBLE_DEVICES``, fixed at its start; none without
        GPUs): the workers kept from an earlier launch serve this one's places before any
        new one starts, and a job's GPU and share are its place's."""
        for slot in sorted(set(slots) - {w.slot for w in self.workers}):
            gpu = self.places_env[slot].get("CUDA_VISIBLE_DEVICES")
            for worker in self.workers:
                if (
                    worker.slot not in slots
                    and worker.job is None
                    and worker.env.get("CUDA_VISIBLE_DEVICES") == gpu
                ):
                    worker.slot = slot
                    break

    def drop(self, worker: _Worker) -> None:
        with contextlib.suppress(ValueError):
            self.workers.remove(worker)
        worker.conn.close()
        worker.process.join(timeout=0)

    def shutdown(self) -> None:
        """At the launching process's exit: every worker is told to end, then each is waited
        for against one deadline (between jobs: none runs one)."""
        self._end(signal_first=False)

    def _stop_all(self) -> None:
        """Stops every worker now: SIGTERM (a running job records interrupted at its next
        batch), then SIGKILL after stop_grace_s."""
        self._end(signal_first=True)

    def _end(self, signal_first: bool) -> None:
        for worker in self.workers:
            if signal_first and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError, OSError):
                    os.kill(worker.process.pid, signal.SIGTERM)
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
        deadline = time.monotonic() + self.stop_grace_s
        for worker in self.workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self.workers = []


def _places_used(n_jobs: int, job_overrides: Sequence[Sequence[str]]) -> int:
    """How many of the n_jobs places a launch of these jobs fills: the first ones."""
    return max(1, min(n_jobs, len(job_overrides)))


class _Launch:
    """One launch's jobs handed out to the launcher's workers and their results gathered:
    only to the workers in the places this launch fills (:func:`_places_used`), whose GPUs
    and shares the launcher computed for it."""

    def __init__(
        self,
        launcher: LocalParallelLauncher,
        job_overrides: Sequence[Sequence[str]],
        initial_job_idx: int,
        payload: bytes,
        env: dict[str, str],
        n_jobs: int,
    ) -> None:
        self.launcher = launcher
        self.job_overrides = job_overrides
        self.first = initial_job_idx
        self.payload, self.env, self.n_jobs = payload, env, n_jobs
        self.slots = range(_places_used(n_jobs, job_overrides))
        self.results: list[JobReturn | None] = [None] * len(job_overrides)
        self.waiting = list(range(len(job_overrides)))

    def until_done(self) -> list[JobReturn]:
        workers = self.launcher.workers
        while self.waiting or any(w.job is not None for w in workers):
            for worker in workers:  # stuck while it starts: ended, counted as a failed start
                if not worker.ready and time.monotonic() - worker.started_at > READY_TIMEOUT_S:
                    worker.process.kill()
            self._hand_out()
            ready = wait(
                [w.conn for w in workers] + [w.process.sentinel for w in workers], timeout=POLL_S
            )
            for worker in list(workers):
                if worker.conn in ready or worker.process.sentinel in ready:
                    self._collect(worker)
        return [r for r in self.results if r is not None]

    def number(self, position: int) -> int:
        """Hydra's job number of the job at ``position`` of this launch."""
        return self.launcher.job_number(self.first, position)

    def _ours(self) -> list[_Worker]:
        """The workers in this launch's places."""
        return [w for w in self.launcher.workers if w.slot in self.slots]

    def _hand_out(self) -> None:
        """Gives waiting jobs to the ready idle workers of this launch's places, filling its
        free places with idle workers of the same GPU, else with new workers. Once the sweep
        is stopped (its guard wrote the stop file), none: the waiting jobs never start (no
        directory; the summary lists them as not started)."""
        if self.waiting and sweep_stopped():
            self.waiting = []
            return
        launcher = self.launcher
        launcher.fill_from_idle(self.slots)
        while len(self._ours()) < min(len(self.slots), len(self.waiting) + self._busy()):
            if launcher.start_worker(self.slots) is None:
                break
        while self.waiting:
            idle = [w for w in self._ours() if w.ready and w.job is None]
            if not idle:
                return
            worker, position = idle[0], self.waiting[0]
            place = launcher.places_env[worker.slot]
            own = {k: v for k, v in place.items() if k.startswith("VAESWEEP_")}  # its share now
            message = (
                self.number(position),
                list(self.job_overrides[position]),
                self.payload,
                {**self.env, **own},
                # Under hydra.launcher: the jobs of this launch at once set the job's threads.
                {"n_jobs": self.n_jobs, JOBS_AT_ONCE_KEY: len(self.slots)},
            )
            if worker.give(position, message):
                self.waiting.pop(0)
            else:
                launcher.drop(worker)

    def _busy(self) -> int:
        return sum(w.job is not None for w in self.launcher.workers)

    def _collect(self, worker: _Worker) -> None:
        """A worker's message (ready, or a result), or its end: a job it held without a
        result is lost; workers that keep dying before they are ready lose the waiting jobs."""
        position = worker.job
        with contextlib.suppress(EOFError, OSError):
            if worker.conn.poll():
                data = worker.conn.recv_bytes()
                if not worker.ready and data == READY:
                    worker.ready = True
                    self.launcher.failed_starts = 0
                    return
                if position is not None and data != NOT_STARTED:
                    self.results[position] = self._read(data, position)
                worker.job = None
                return
        if worker.process.is_alive():
            return
        worker.process.join()
        how = worker.exit_reason()
        if position is not None:
            self.results[position] = lost(
                self.number(position),
                self.job_overrides[position],
                f"its worker process ended without a result ({how})",
            )
        elif not worker.ready:
            self.launcher.failed_starts += 1
        self.launcher.drop(worker)
        if self.launcher.failed_starts >= MAX_FAILED_STARTS and self.waiting:
            for waiting in self.waiting:
                self.results[waiting] = lost(
                    self.number(waiting),
                    self.job_overrides[waiting],
                    f"no worker process could start ({MAX_FAILED_STARTS} in a row ended "
                    f"before they were ready, the last with {how}; see the lines above)",
                )
            self.waiting = []

    def _read(self, data: bytes, position: int) -> JobReturn:
        """A result as the worker sent it; one this process cannot read is a failed job."""
        try:
            return pickle.loads(data)
        except Exception as error:
            return JobReturn(
                overrides=list(self.job_overrides[position]),
                status=JobStatus.FAILED,
                _return_value=RuntimeError(
                    f"job #{self.number(position)}: its result could not be read here "
                    f"({type(error).__name__}: {error})"
                ),
            )
