"""What a job's process and the processes a spawning DDP strategy starts for its fit and
its test (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``: Lightning's multiprocessing
launcher) tell each other.

Under such a strategy the training hooks run in those processes, not in the job's. Their
exceptions reach the job's process only as torch.multiprocessing's ``ProcessRaisedException``
(the text of a traceback) or ``ProcessExitedException`` (an exit code), and a signal sent
to the job's process alone reaches none of them. So, through a private temporary directory:

- the job's process writes the stop signal it received into :meth:`SpawnChannel.relay`'s
  file; each spawned process reads it at its next safe point, as it reads a sweep's stop
  file (:class:`vaesweep.run.signals.StopSignals`), and stops;
- a spawned process that stops (a relayed signal, the sweep's stop file, a signal of its
  own) or whose loss diverges records how and at which step (:meth:`record`), before it
  ends; the job's process reads those records once the processes have ended
  (:meth:`outcomes`) and records the job ``interrupted`` or ``diverged`` with that step,
  exactly as for a fit in its own process (:mod:`vaesweep.run.driver`).

Nothing here imports Lightning or torch; the files are written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from vaesweep.core.atomic import atomic_open

STOPPED, DIVERGED = "stopped", "diverged"
_RELAY = "stop"
_OUTCOME = "outcome-"


class SpawnChannel:
    """The files between a job's process (the one that creates this object) and the
    processes its strategy spawns (which receive a pickled copy, or, forked, a copy)."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="vaesweep-spawned-"))
        self.parent_pid = os.getpid()

    def in_child(self) -> bool:
        """Whether this process is one the strategy started (not the job's own)."""
        return os.getpid() != self.parent_pid

    # --- the stop signal, passed on --------------------------------------------------------
    def relay(self, signum: int) -> None:
        """Passes a stop signal on to every spawned process (read at its next safe point).
        Never raises: it is called from a signal handler."""
        try:
            with atomic_open(self.directory / _RELAY, "w") as f:
                f.write(signal.Signals(signum).name)
        except OSError:
            pass

    def relayed(self) -> int | None:
        """The stop signal passed on, None while there is none."""
        try:
            name = (self.directory / _RELAY).read_text().strip()
        except OSError:
            return None
        return int(getattr(signal, name, signal.SIGTERM))

    # --- how a spawned process ended ---------------------------------------------------------
    def record(self, kind: str, **facts: Any) -> None:
        """A spawned process records why it ends (``stopped``: ``signum``, ``step``;
        ``diverged``: ``step``, ``values``), one file per process. Never raises: the
        exception being raised is what matters."""
        try:
            path = self.directory / f"{_OUTCOME}{os.getpid()}.json"
            with atomic_open(path, "w") as f:
                json.dump({"kind": kind, **facts}, f)
        except (OSError, TypeError, ValueError):
            pass

    def record_divergence(self, error: Any) -> None:
        """Records a DivergenceError (vaesweep.model.objective) about to be raised."""
        self.record(DIVERGED, step=error.step, values=dict(error.values))

    def outcomes(self, kind: str) -> list[dict[str, Any]]:
        """The records of one kind that the spawned processes left."""
        found = []
        for path in sorted(self.directory.glob(f"{_OUTCOME}*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("kind") == kind:
                found.append(data)
        return found

    def close(self) -> None:
        """Removes the files (the job's process, once the spawned ones have ended)."""
        if not self.in_child():
            shutil.rmtree(self.directory, ignore_errors=True)
