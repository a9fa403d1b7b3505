"""The garbage collector around the command line's imports.

Importing the training stack (torch, Lightning, Hydra, W&B) leaves about 420 000 objects
that CPython's cyclic collector tracks and that live until the process ends (684 000
while no collection has run: the collector stops tracking some containers the first time
it walks them). It walks every one of them in each full collection: 6 times while they
are being imported, as the heap grows, and once more while the interpreter shuts down.
On the 2-core benchmark VM that was 0.45-0.52 s of the imports and 0.6-0.85 s of the exit
of every run and sweep (``benchmarks/results/fixed_costs.txt``).

:func:`gc.freeze` moves the objects that exist into a permanent generation that no later
collection walks, the one at exit included. Nothing else changes: objects created
afterwards (a run's models, loggers, files) are collected as before, and what a run
computes does not depend on when the collector runs. The cost: garbage among the frozen
objects is never freed (the paused imports leave 12 659 such objects, a few MB), and a
frozen object still alive at exit gets no finalizer from the exit's collection (the
modules' own objects; ``atexit`` handlers, logging's flush among them, run as before).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager

#: Set by the command line (:func:`mark_command_line`) to its process id; a process that
#: inherits it with another id is one of the sweep's workers.
SWEEP_PID_ENV = "VAESWEEP_SWEEP_PID"


@contextmanager
def frozen_imports() -> Iterator[None]:
    """Runs a block of imports with the collector paused, then freezes every object alive.

    The garbage the imports leave is frozen with the modules instead of being collected:
    collecting it would cost one more full walk of the heap. The collector's previous
    state is restored, also when the block raises."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def mark_command_line() -> None:
    """Tells the processes this one starts (a launcher's workers inherit the environment)
    that they work for the command line's process."""
    os.environ[SWEEP_PID_ENV] = str(os.getpid())


def freeze_in_worker() -> None:
    """In a launcher's worker (joblib's, submitit's, a local Ray's: a process that inherited
    :data:`SWEEP_PID_ENV` from the command line's process and is not it), freezes what is
    alive at its first job: mostly the imports it made to unpickle the task. Its later
    collections, and its exit, which the sweep's process waits for (joblib), then skip
    them. What the first job holds at that moment (its config) stays frozen after it: a
    one-time, bounded cost. Anywhere else (the command line's own process, a Python
    session that runs the task itself) and once something is frozen, it does nothing."""
    marked = os.environ.get(SWEEP_PID_ENV)
    if marked and marked != str(os.getpid()) and gc.get_freeze_count() == 0:
        gc.freeze()
