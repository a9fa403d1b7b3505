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

Nothing is written mid-epoch: the job resumes from ``checkpoints/last.ckpt``, written
atomically at the end of every epoch, and repeats the batches of the epoch it was stopped in.
A mid-epoch checkpoint would save time, but the resumed run could not reproduce the
uninterrupted one exactly (the epoch's data order, noise and running means would restart).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")


class JobInterrupted(BaseException):
    """The job was stopped by a signal. Like KeyboardInterrupt, not an ``Exception``: code
    that handles errors does not mistake it for one."""

    def __init__(self, signum: int, step: int | None = None) -> None:
        self.signum = signum
        self.step = step
        at = "" if step is None else f" at step {step}"
        super().__init__(f"stopped by {self.signal_name}{at}; run the same command to resume")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


class StopSignals:
    """Installs the stop handlers for the duration of a ``with`` block (one job), then puts
    the previous handlers back.

    A signal whose handler was SIG_IGN is left ignored (``nohup``, a background job of a
    script). A previous Python handler is still called after this one (a scheduler
    library's, say), except Python's default SIGINT handler, whose KeyboardInterrupt would
    stop the job at an arbitrary point. Signals can only be handled in the main thread; in
    another thread this does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.trainer: Any = None  # set by the Resumable callback: the step comes from it
        self._previous: dict[int, Any] = {}

    @property
    def received(self) -> bool:
        return self.signum is not None

    @property
    def step(self) -> int | None:
        """The global step of the job's trainer, None before it has one."""
        return None if self.trainer is None else int(self.trainer.global_step)

    def exception(self) -> JobInterrupted:
        assert self.signum is not None
        return JobInterrupted(self.signum, self.step)

    def check(self) -> None:
        """Raise JobInterrupted if a stop signal has been received (call at safe points)."""
        if self.signum is not None:
            raise self.exception()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        previous = self._previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)
        if not first:
            raise self.exception()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None:  # not on this platform
                continue
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN:
                continue
            self._previous[signum] = previous
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous = {}
        if exc_type is None:
            self.check()  # a signal that came after the job's last safe point


# --- test hook -------------------------------------------------------------------------------
# "<point>:<marker file>": at that point the process writes its pid to the marker file and
# sleeps until it is killed. The tests use it to SIGKILL a job in a precise phase
# (points: "test" (after a test batch), "images" (between the two image grids),
# "result_write" (the final results.json complete in its temp file, not yet renamed)).
PAUSE_ENV = "VAESWEEP_PAUSE_AT"
_PAUSE = os.environ.get(PAUSE_ENV, "")


def pause_point(name: str) -> None:
    if not _PAUSE or not _PAUSE.startswith(f"{name}:"):
        return
    Path(_PAUSE.partition(":")[2]).write_text(str(os.getpid()))
    while True:
        time.sleep(60)
