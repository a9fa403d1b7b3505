"""vaesweep: reproducible experiment sweeps for variational autoencoders."""

__version__ = "0.1.0"
