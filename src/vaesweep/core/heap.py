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

Two blocks are frozen: the command line's imports (``vaesweep.__main__.train``: torch,
Hydra, W&B's hooks, the sweep's own code), and the driver's (Lightning), which a process
that runs jobs imports once (:mod:`vaesweep.sweep.task`): the command line's process before
its first job (a single run, the basic launcher), each worker of the other launchers at its
first job, its own imports, made to unpickle the task, frozen with it. What is alive at that
moment (the sweep's state, a worker's first config) stays frozen after it: a one-time,
bounded cost. A Python session that imports vaesweep and runs the task itself freezes
nothing (:func:`launched`).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager

#: Set by the command line (:func:`mark_command_line`) to its process id; the processes it
#: starts (a launcher's workers) inherit it.
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


def launched() -> bool:
    """Whether this process is the command line's or one of its workers (not a Python
    session that imported vaesweep)."""
    return SWEEP_PID_ENV in os.environ
