"""vaesweep's ``hydra/sweeper=optuna``: a resumable Optuna search run as ordinary jobs.

Hydra finds this package in the ``hydra_plugins`` namespace; the search itself lives in
:mod:`vaesweep.sweep.search`.
"""
