"""Worked examples of vaesweep components that live outside vaesweep (see ../README.md)."""
