"""The ``hydra/launcher=local_parallel`` choice: ``n_jobs`` jobs at once on this machine, each
in a worker process of its own, where one job's death is that job's alone.

Hydra's joblib launcher (on which ``local_parallel`` was built before) runs its jobs in a
loky pool: when the kernel kills one worker (out of memory, SIGKILL), loky breaks the whole
pool, kills the other workers mid-job and the sweep ends with ``TerminatedWorkerError``, the
jobs not yet started never listed. Here each worker is a process of its own, fed one job at a
time through its own pipe, and watched through its sentinel:

- a worker that ends without a result loses its job alone (:func:`vaesweep.sweep.launching.lost`):
  said on the console; its results.json keeps ``running``, which the summary and ``collect``
  show as ``killed``; the next job starts in a fresh worker; the same command resumes it;
- workers are started with ``spawn`` (a fresh interpreter, as loky's), not daemonic (a job's
  DataLoader workers are its children), and kept for the jobs of later launches (an Optuna
  search's batches) until the launching process exits; one whose launching process died
  sees its pipe close and exits;
- stopping: the sweep's guard (vaesweep.run.signals.SweepGuard, parallel) writes the stop
  file that running jobs read at their next batch; a signal that reaches a worker between
  jobs (Ctrl-C in a terminal reaches the whole process group) is ignored there, one during a
  job is the job's own. A second signal stops the launcher at once: its workers get SIGTERM
  (a job records ``interrupted``), and SIGKILL after ``stop_grace_s`` seconds.

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
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: How long the launching process waits between looks at its workers: its signal handlers
#: run in between.
POLL_S = 1.0


def _serve(conn: Connection, gpu_env: dict[str, str]) -> None:
    """A worker: runs the jobs its pipe brings, one at a time, and sends back each result;
    ends at None or when the pipe closes (the launching process is gone). ``gpu_env``: its
    GPU (``CUDA_VISIBLE_DEVICES``) and share, set before anything could start CUDA."""
    os.environ.update(gpu_env)
    signal.signal(signal.SIGINT, _between_jobs)  # a job's own handlers replace it
    import cloudpickle

    from vaesweep.sweep.launching import adopt_environment, job_config, run_configured

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        idx, overrides, payload, env, n_jobs = message
        shared = pickle.loads(payload)  # each launch's own (an Optuna search has several)
        adopt_environment(env)
        sweep_config = job_config(idx, overrides, shared, n_jobs=n_jobs)
        result = run_configured(sweep_config, shared)
        try:
            reply = cloudpickle.dumps(result)
        except Exception as error:  # a return value that does not pickle: its status is sent
            result._return_value = None
            result.return_value = f"<not picklable: {type(error).__name__}: {error}>"
            reply = cloudpickle.dumps(result)
        conn.send_bytes(reply)


def _between_jobs(signum: int, frame: Any) -> None:
    """SIGINT in a worker between two jobs: the launching process got it too, and stops the
    sweep through its stop file."""


class _Worker:
    def __init__(self, context: Any, number: int, slot: int, gpu_env: dict[str, str]) -> None:
        self.slot = slot  # which of the n_jobs places it fills (its GPU, when there are some)
        self.gpu_env = gpu_env
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child, gpu_env), name=f"vaesweep-worker-{number}", daemon=False
        )
        self.process.start()
        child.close()
        self.job: int | None = None  # the position (in this launch) of the job it runs

    def give(self, position: int, message: tuple) -> bool:
        """Sends it a job; False when its pipe is closed (it has died)."""
        try:
            self.conn.send(message)
        except (BrokenPipeError, OSError):
            return False
        self.job = position
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.conn.close()


class LocalParallelLauncher(Launcher):
    """See the module doc."""

    def __init__(self, n_jobs: Any = 2, gpus: Any = None, stop_grace_s: float = 30.0) -> None:
        self.n_jobs = n_jobs
        self.gpus = gpus
        self.stop_grace_s = float(stop_grace_s)
        self._slot_env: list[dict[str, str]] = []
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._started = 0
        atexit.register(self.shutdown)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from vaesweep.core.launchers import jobs_at_once
        from vaesweep.sweep.launching import forwarded_environment, lost

        setup_globals()
        assert self.config is not None and self.task_function is not None
        assert self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        n_jobs = jobs_at_once(self.n_jobs)
        self._slot_env = self._gpu_slots(n_jobs)
        placed = [e["CUDA_VISIBLE_DEVICES"] for e in self._slot_env if e]
        log.info(
            "local_parallel is launching %d jobs, %d at once%s",
            len(job_overrides),
            n_jobs,
            f" (GPU of each: {', '.join(placed)})" if placed else "",
        )
        log.info("Launching jobs, sweep output dir : %s", sweep_dir)
        for i, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(overrides)))
        import cloudpickle

        # By value where pickle's references fail (a task function decorated in a script,
        # Hydra's plugin dataclasses), as loky sends them.
        payload = cloudpickle.dumps(
            (self.hydra_context, self.config, self.task_function, Singleton.get_state())
        )
        env = forwarded_environment()

        results: list[JobReturn | None] = [None] * len(job_overrides)
        waiting = list(range(len(job_overrides)))
        try:
            while waiting or any(w.job is not None for w in self._workers):
                self._hand_out(waiting, job_overrides, initial_job_idx, (payload, env, n_jobs))
                ready = wait(
                    [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers],
                    timeout=POLL_S,
                )
                for worker in list(self._workers):
                    if worker.conn in ready or worker.process.sentinel in ready:
                        self._collect(worker, results, job_overrides, initial_job_idx, lost)
        except BaseException:
            self._stop_all()
            raise
        return [r for r in results if r is not None]

    def _hand_out(
        self,
        waiting: list[int],
        job_overrides: Sequence[Sequence[str]],
        initial_job_idx: int,
        launch: tuple[bytes, dict[str, str], int],
    ) -> None:
        """Gives waiting jobs to idle workers, starting workers up to n_jobs (``launch``:
        the shared payload, the forwarded environment, n_jobs)."""
        payload, env, n_jobs = launch
        while waiting:
            idle = [w for w in self._workers if w.job is None and w.process.is_alive()]
            if not idle and len(self._workers) < n_jobs:
                free = sorted(set(range(n_jobs)) - {w.slot for w in self._workers})
                if not free:
                    return
                slot = free[0]
                self._started += 1
                idle = [_Worker(self._context, self._started, slot, self._slot_env[slot])]
                self._workers.extend(idle)
            if not idle:
                return
            position = waiting[0]
            worker_env = {**env, **idle[0].gpu_env}
            message = (
                initial_job_idx + position,
                list(job_overrides[position]),
                payload,
                worker_env,
                n_jobs,
            )
            if idle[0].give(position, message):
                waiting.pop(0)
            else:
                self._drop(idle[0])

    def _collect(
        self,
        worker: _Worker,
        results: list[JobReturn | None],
        job_overrides: Sequence[Sequence[str]],
        initial_job_idx: int,
        lost: Any,
    ) -> None:
        """A worker's result, or its end: a job it held without a result is lost."""
        position = worker.job
        with contextlib.suppress(EOFError, OSError):
            if worker.conn.poll():
                result = pickle.loads(worker.conn.recv_bytes())
                if position is not None:
                    results[position] = result
                worker.job = None
                return
        if worker.process.is_alive():
            return
        worker.process.join()
        if position is not None:
            code = worker.process.exitcode
            how = (
                f"killed by {signal.Signals(-code).name}"
                if code is not None and code < 0 and -code in signal.valid_signals()
                else f"exit status {code}"
            )
            results[position] = lost(
                initial_job_idx + position,
                job_overrides[position],
                f"its worker process ended without a result ({how})",
            )
        self._drop(worker)

    def _gpu_slots(self, n_jobs: int) -> list[dict[str, str]]:
        """The environment of each of the n_jobs worker places: its GPU and its share of it
        (vaesweep.run.gpus.spread), or nothing when there is no GPU to assign. Workers of
        an earlier launch keep theirs (an Optuna search's batches share one config)."""
        from omegaconf import OmegaConf

        from vaesweep.run import gpus

        assert self.config is not None
        node = OmegaConf.select(self.config, "trainer")  # an app of its own may have none
        trainer = OmegaConf.to_container(node, resolve=True) if node is not None else {}
        ids = gpus.local_gpus(self.gpus, trainer)  # type: ignore[arg-type]
        if not ids:
            return [{} for _ in range(n_jobs)]
        slots = []
        for gpu, share in gpus.spread(ids, n_jobs):
            env = {"CUDA_VISIBLE_DEVICES": gpu, gpus.ASSIGNED_ENV: "local_parallel"}
            if share is not None:
                env[gpus.FRACTION_ENV] = f"{share:g}"
            slots.append(env)
        return slots

    def _drop(self, worker: _Worker) -> None:
        with contextlib.suppress(ValueError):
            self._workers.remove(worker)
        worker.conn.close()
        worker.process.join(timeout=0)

    def shutdown(self) -> None:
        """At the launching process's exit: the workers end (between jobs: none runs one)."""
        for worker in list(self._workers):
            worker.close()
            worker.process.join(timeout=self.stop_grace_s)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            self._workers.remove(worker)

    def _stop_all(self) -> None:
        """Stops every worker now: SIGTERM (a running job records interrupted), then SIGKILL
        after stop_grace_s."""
        for worker in self._workers:
            with contextlib.suppress(ProcessLookupError, OSError):
                if worker.process.pid is not None:
                    os.kill(worker.process.pid, signal.SIGTERM)
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
        deadline = time.monotonic() + self.stop_grace_s
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers = []
