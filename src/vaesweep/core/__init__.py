"""Layer 0: helpers every other layer may use; imports nothing of vaesweep."""
