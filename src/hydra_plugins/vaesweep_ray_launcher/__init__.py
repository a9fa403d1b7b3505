"""vaesweep's ``hydra/launcher=ray``: a sweep's jobs as Ray tasks, GPUs assigned by Ray.

Hydra finds this package in the ``hydra_plugins`` namespace; Ray itself is imported only
when a sweep launches (``pip install "vaesweep[ray]"``). See docs/sweeps.md.
"""
