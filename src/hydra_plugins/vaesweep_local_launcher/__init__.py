"""vaesweep's ``hydra/launcher=local_parallel``: jobs at once on this machine, each in a
worker process whose death is its job's alone (see local_launcher)."""
