"""What a run prints: each message once, no library noise, and a sweep that reads as a story.

- Lightning installs its own terminal handlers on the ``lightning`` loggers; Hydra
  configures the root logger (terminal and ``train.log``). Both printed every Lightning
  message. :func:`tidy_logging` removes Lightning's handlers so each message goes once,
  through Hydra's, to the terminal and to the job's log file.
- Library messages that concern our own calls and never the user's config are dropped: the
  promotional "Tip" lines, a deprecation inside Lightning, the warning that the run directory
  (which is also the CSV logger's) is not empty, the logging-interval hint for short
  epochs, and W&B's notice about a setting Lightning passes.
- Without a terminal (a log file, a SLURM output file) a progress bar would leave one
  ``\\r``-separated chunk per redraw: the driver's
  :class:`~vaesweep.run.callbacks.EpochLines` writes one line per epoch instead.
- In a multirun, :func:`job_story` gives each job's outcome as one line, after Hydra's
  ``#k : overrides`` line and before the sweep's summary table.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("vaesweep")

#: Library loggers that come with a terminal handler of their own.
LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
#: Start of messages dropped everywhere (not the user's business, said on every run).
DROPPED_PREFIXES = ("💡 Tip:",)
#: Start of messages kept in the job's log file but not shown on the terminal: Lightning's
#: account of what vaesweep asked it to do (no accelerator, the budget reached, the
#: checkpoint the test phase loads), repeated by every job of a sweep.
FILE_ONLY_PREFIXES = (
    "GPU available: False",
    "TPU available: False",
    "HPU available: False",
    "`Trainer.fit` stopped:",
    "Restoring states from the checkpoint path",
    "Loaded model weights from the checkpoint",
    "`Trainer(limit_",  # "`Trainer(limit_val_batches=1)` was configured so 1 batch ..."
)
#: Warnings caused by how vaesweep calls its libraries, not by the user's config.
IGNORED_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Experiment logs directory .* exists and is not empty",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)
#: Warnings ``vaesweep evaluate`` causes: it restores a checkpoint into a Trainer without the
#: training callbacks, on purpose (in training the same warning would mean a lost state).
EVALUATE_WARNINGS = (r"Be aware that when using `ckpt_path`, callbacks used to create the",)


class _DropNoise(logging.Filter):
    """Drops the messages that start with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def _add_filter(handler: logging.Handler, prefixes: tuple[str, ...]) -> None:
    if not any(isinstance(f, _DropNoise) and f.prefixes == prefixes for f in handler.filters):
        handler.addFilter(_DropNoise(prefixes))


def tidy_logging() -> None:
    """Each library message once, through the root logger's handlers (Hydra's terminal and
    file handlers), and without the noise listed above. Idempotent; call at every job's
    start (Hydra configures logging anew for each job)."""
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            if type(handler) is logging.StreamHandler:  # their own terminal handler
                library.removeHandler(handler)
        library.propagate = True
    for handler in logging.getLogger().handlers:
        _add_filter(handler, DROPPED_PREFIXES)
        if not isinstance(handler, logging.FileHandler):
            _add_filter(handler, FILE_ONLY_PREFIXES)
    for pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """For ``vaesweep evaluate`` (no Hydra job): inside the block, Lightning's messages from
    warnings up only (not its account of the Trainer it was asked for, nor its tips), and
    the warnings listed above ignored; the loggers' levels and the warning filters are
    restored after it (a notebook that evaluates, then trains, sees Lightning as before)."""
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for pattern in (*IGNORED_WARNINGS, *EVALUATE_WARNINGS):
            warnings.filterwarnings("ignore", message=pattern)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def is_terminal() -> bool:
    """Whether progress output goes to an interactive terminal (Lightning's bar: stdout)."""
    return sys.stdout.isatty()


def finite_value(v: Any) -> float | None:
    """``v`` as a float when it is a finite number, else None."""
    try:
        value = float(v)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def job_story(
    index: int, total: int | None, status: str, seconds: float, metrics: dict[str, float] | None
) -> str:
    """One line for a finished job of a sweep: ``job 2/6 completed in 12.3 s: test/nll=…``."""
    where = f"job {index + 1}/{total}" if total else f"job {index + 1}"
    line = f"{where} {status} in {seconds:.1f} s"
    shown = [
        f"{key}={value:.4g}"
        for key in ("test/nll", "test/elbo", "val/elbo")
        if metrics and (value := finite_value(metrics.get(key))) is not None
    ]
    return f"{line}: {' '.join(shown[:2])}" if shown else line
