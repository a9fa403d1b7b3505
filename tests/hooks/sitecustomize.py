"""Test-only pause points, loaded into the subprocesses the tests start (``pause.env``).

``VAESWEEP_PAUSE_AT="<point>:<marker file>"``: at that point the process appends its pid (a
line) to the marker file and waits until ``<marker file>.release`` exists, a job's stop
signal has been received, or it is killed. The tests use it to SIGKILL or signal a job in a
precise phase. The points, each a wrapper around a public function or method of vaesweep:

- ``claimed``: the job's claim is held, nothing else done yet (``claims.acquire`` returned);
- ``epoch_end``: an epoch trained, validated, checkpointed (``Resumable.on_train_epoch_end``);
- ``test``: after a test batch (``Resumable.on_test_batch_end``, before it checks signals);
- ``images``: between the two image grids (``reconstructions.png`` written);
- ``result_write``: the final results.json complete in its temp file, not yet renamed;
- ``between_jobs``: a job has finished, the next has not started (``jobs.run`` returned).

Nothing here is imported unless the variable is set, and nothing of it ships in the package.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

PAUSE_ENV = "VAESWEEP_PAUSE_AT"
_signalled = False


def _pause(point: str) -> None:
    spec = os.environ.get(PAUSE_ENV, "")
    if not spec.startswith(f"{point}:"):
        return
    marker = Path(spec.partition(":")[2])
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    release = marker.with_name(f"{marker.name}.release")
    while not release.exists() and not _signalled:
        time.sleep(0.05)


def _after(obj, name: str, point: str, when=lambda *a, **k: True) -> None:
    original = getattr(obj, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        if when(*args, **kwargs):
            _pause(point)
        return out

    setattr(obj, name, wrapper)


def _before(obj, name: str, point: str) -> None:
    original = getattr(obj, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        _pause(point)
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)


def _install() -> None:
    from vaesweep.run import callbacks, claims, jobs, record, signals

    point = os.environ[PAUSE_ENV].partition(":")[0]
    handle = signals.StopSignals._handle

    def noticing(self, signum, frame):  # a job's stop signal ends the hold
        global _signalled
        _signalled = True
        return handle(self, signum, frame)

    signals.StopSignals._handle = noticing
    if point == "claimed":
        _after(claims, "acquire", "claimed")
    elif point == "epoch_end":
        _after(callbacks.Resumable, "on_train_epoch_end", "epoch_end")
    elif point == "test":
        _before(callbacks.Resumable, "on_test_batch_end", "test")
    elif point == "images":
        _after(
            callbacks,
            "save_image_grid",
            "images",
            when=lambda grid, path, **k: Path(path).name == "reconstructions.png",
        )
    elif point == "between_jobs":
        _after(jobs, "run", "between_jobs")
    elif point == "result_write":
        finish, replace = record.RunRecord.finish, os.replace
        finishing = []

        def finish_paused(self, *args, **kwargs):
            finishing.append(True)
            try:
                return finish(self, *args, **kwargs)
            finally:
                finishing.pop()

        def replace_paused(src, dst, *args, **kwargs):
            if finishing and Path(dst).name == record.RESULTS_FILE:
                _pause("result_write")
            return replace(src, dst, *args, **kwargs)

        record.RunRecord.finish = finish_paused
        os.replace = replace_paused


if os.environ.get(PAUSE_ENV):
    _install()
