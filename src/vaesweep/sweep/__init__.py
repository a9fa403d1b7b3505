"""Layer 4: sweeps: grids (sweep.json, summary.csv), the sweep callback, the Optuna search
and the Hydra entry point. Imports core, model, data and run."""
