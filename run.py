"""Train, evaluate and record a VAE: `python run.py [overrides]`, `python run.py -m ...`.

See `python run.py --help` and README.md. The entry point is vaesweep.__main__.train
(then vaesweep.sweep.entry).
"""

from vaesweep.__main__ import train

if __name__ == "__main__":
    train()
