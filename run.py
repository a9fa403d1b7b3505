"""Train, evaluate and record a VAE: `python run.py [overrides]`, `python run.py -m ...`.

See `python run.py --help` and README.md. The work happens in vaesweep.train.
"""

import sys

from vaesweep.search import quote_sweeper_params
from vaesweep.train import main

if __name__ == "__main__":
    # Search expressions given as hydra.sweeper.params.KEY=EXPR are strings to Hydra.
    sys.argv[1:] = quote_sweeper_params(sys.argv[1:])
    main()
