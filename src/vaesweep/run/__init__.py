"""Layer 3: one job: the driver, callbacks, config validation, the record (results.json),
the job policy, ranks, stop signals and loggers. Imports core, model and data."""
