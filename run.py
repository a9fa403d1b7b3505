"""Train, evaluate and record a VAE: `python run.py [overrides]`, `python run.py -m ...`.

See `python run.py --help` and README.md. The work happens in vaesweep.train.
"""

from vaesweep.train import main

if __name__ == "__main__":
    main()
