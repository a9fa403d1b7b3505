"""``python -m vaesweep``: the package's command line from any directory.

- ``python -m vaesweep [overrides]`` (and ``-m`` sweeps) trains, exactly like ``run.py`` in
  the checkout and the ``vaesweep-train`` console script;
- ``python -m vaesweep collect|figures ...`` is the ``vaesweep`` results command.
"""

from __future__ import annotations

import sys


def main() -> None:
    from vaesweep.cli import COMMANDS

    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        from vaesweep.cli import main as results_main

        sys.exit(results_main(sys.argv[1:]))
    from vaesweep.train import cli_main

    cli_main()


if __name__ == "__main__":
    main()
