"""The garbage collector around the command line's imports and its exit.

Importing the training stack (torch, Lightning, Hydra, W&B) creates about 680 000 objects
that live until the process ends. CPython's cyclic collector walks every one of them in
each full collection: about eight times while they are being imported, as the heap grows,
and again while the interpreter shuts down. On the 2-core benchmark VM that was about
0.45 s of the imports and 0.6 s of the exit of every run and sweep
(``benchmarks/results/fixed_costs.txt``).

:func:`gc.freeze` moves the objects that exist into a permanent generation that no later
collection walks. Nothing else changes: garbage created afterwards is collected as
before, and what a run computes does not depend on when the collector runs.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_imports() -> Iterator[None]:
    """Runs a block of imports with the collector paused, then freezes what they created.

    The cyclic garbage the imports leave (about 13 000 objects for the training stack, a
    few MB) is frozen with the modules instead of being collected: collecting it would
    cost one more full walk of the heap. The collector's previous state is restored, also
    when the block raises."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def freeze_for_exit() -> None:
    """Collects the garbage that exists now (running its finalizers), then freezes the
    rest, so that the interpreter's own collections at exit walk nothing. Objects still
    alive at exit were never guaranteed finalizers; ``atexit`` handlers run as before."""
    gc.collect()
    gc.freeze()


def freeze_in_worker() -> None:
    """In a process that did not start through the command line (a launcher's worker:
    joblib's, Ray's, submitit's), freezes what is alive at its first job: the imports it
    made to unpickle the task. Its later collections, and its exit, which the sweep's own
    process waits for (joblib), then skip them. A no-op where something is frozen already.
    What the first job holds at that moment (its config) stays frozen after the job: a
    one-time, bounded cost."""
    if gc.get_freeze_count() == 0:
        gc.freeze()
