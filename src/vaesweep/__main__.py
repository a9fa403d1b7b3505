"""``python -m vaesweep``: the package's command line from any directory.

- ``python -m vaesweep [overrides]`` (and ``-m`` sweeps) trains, exactly like ``run.py`` in
  the checkout and the ``vaesweep-train`` console script;
- ``python -m vaesweep collect|figures|evaluate ...`` is the ``vaesweep`` results command.
"""

from __future__ import annotations

import os
import sys

from vaesweep.core import heap
from vaesweep.core.stack import FULL_ERROR, TRACEBACK_HINT, StackUnavailable


def train() -> None:
    """Training from the command line (``run.py``, ``python -m vaesweep`` and the
    ``vaesweep-train`` console script): the entry point's imports (torch, Hydra, the sweep's
    code; Lightning comes later, :mod:`vaesweep.sweep.task`) with the collector paused and
    their objects frozen (:mod:`vaesweep.core.heap`), then the Hydra entry point."""
    heap.mark_command_line()
    try:  # a second of imports: Ctrl-C there is a stop, not a traceback
        with heap.frozen_imports():
            from vaesweep.sweep.entry import cli_main
    except KeyboardInterrupt:
        print("[vaesweep] stopped by SIGINT", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as error:  # torch, Hydra or a module of their own is broken here
        if os.environ.get(FULL_ERROR) == "1":
            raise
        unavailable = StackUnavailable(error)
        print(
            f"[vaesweep] StackUnavailable: {unavailable}{TRACEBACK_HINT}",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    cli_main()


def main() -> None:
    # Each command imports only what it runs: the results commands never load the training
    # stack (Lightning, Hydra's app), and training never loads the plotting stack.
    from vaesweep.analysis.cli import COMMANDS
    from vaesweep.analysis.cli import main as results_main

    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        sys.exit(results_main(sys.argv[1:]))
    train()


if __name__ == "__main__":
    main()
