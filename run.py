"""Train, evaluate and record a VAE: `python run.py [overrides]`, `python run.py -m ...`.

See `python run.py --help` and README.md. The entry point is vaesweep.sweep.entry.
"""

from vaesweep.sweep.entry import cli_main

if __name__ == "__main__":
    cli_main()
