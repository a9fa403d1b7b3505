"""Layer 5: results as a DataFrame, figures, the W&B summary run and the ``vaesweep`` CLI."""
