"""Runs and sweeps as one tidy pandas DataFrame: one row per run.

Sources: every ``results.json`` below the given directories (:func:`load_results`), or the
runs of one W&B group (:func:`load_wandb`, online). Both give the same columns:

- identity: ``run_dir``, ``sweep_dir``, ``job_name``, ``status``, ``error``, ``seed``,
  ``duration_s`` (s), ``dataset`` (name), ``dataset_fingerprint`` (sha256; None from
  W&B), ``commit``, ``dirty``, ``versions`` (provenance from results.json: the source
  tree's git commit and dirty flag, and "name=version ..." of Python and the packages;
  None from W&B), ``changed_between_attempts`` (what a resumed run computed with that
  changed between its attempts, "versions.torch: 2.12.0 → 2.13.0; ..."; None when nothing
  did, and from W&B);
- swept values: every override key whose value differs between the runs, under the key's
  own name (``likelihood``, ``likelihood.scale``, ``beta``, ``seed``, ...; not one that only
  selects config groups and has no value in the config, ``experiment=...``), and every config
  key that can change a result (:func:`vaesweep.run.record.changes_results`) whose value
  differs between the runs although no command line swept it (two sweeps pooled, one with
  a primary config that sets ``trainer.max_epochs``; named in a note). A config key
  (``beta``) holds the resolved, typed value; a config group (``likelihood``) holds the
  option chosen. Their names are in ``df.attrs["swept"]``; :func:`config_keys` (all but
  ``seed`` and the keys that change no result) are what the aggregates, figures and table
  group by;
- metrics: the keys of ``results.json``'s ``metrics`` as they are (``test/nll``, ``scale``,
  ...; units in docs/results-and-figures.md), except ``beta``, the β in force at the end of training (γ for
  ``capacity``, the controller's output for ``geco``/``pi``): it is ``final_beta`` here,
  since ``beta`` names the configured β. Their names are in ``df.attrs["metrics"]``;
- the resolved config, flattened with dots and prefixed ``config.`` (``config.model.hidden``);
  list values are JSON strings, so every column holds scalars (CSV and Parquet round-trip).

Failed, diverged and still-running runs stay in the frame with their status (``incomplete``
for a result that says completed without test metrics, ``fast_dev_run`` for Lightning's debug
runs: :func:`vaesweep.run.record.frame_status`; ``unreadable`` for a results.json that cannot
be read; ``killed`` for one that says running while no live process holds the run's claim,
:mod:`vaesweep.run.claims`; ``duplicate`` for a completed run found twice, e.g. in two
sweeps); :func:`aggregate`
leaves them out, with a warning that counts them. ``df.attrs["notes"]`` holds what else the
commands tell the user (jobs of a sweep.json without a result, ...).

The modules: ``frame`` (rows → the frame, its columns and checks) is fed by ``files``
(results.json files, :func:`load_results`) or ``from_wandb`` (a W&B group,
:func:`load_wandb`); ``aggregation`` (:func:`aggregate`) and ``output``
(:func:`write_frame`) take the frame.
"""

from vaesweep.analysis.results.aggregation import (
    STATS,
    aggregate,
    completed,
    config_keys,
    evaluations,
    excluded_message,
    metric_names,
    swept_keys,
    unaggregated_message,
    use_evaluation,
)
from vaesweep.analysis.results.files import find_results, load_results
from vaesweep.analysis.results.frame import (
    CONFIG_PREFIX,
    IDENTITY,
    KEY_ORDER,
    LAST_KEYS,
    METRIC_ORDER,
    RENAMED_METRICS,
    ResultsError,
    flatten,
    parse_overrides,
    split_job_name,
)
from vaesweep.analysis.results.from_wandb import (
    MODULE_HPARAMS,
    RUN_SUMMARY_KEYS,
    WANDB_STATES,
    frame_from_wandb,
    load_wandb,
    wandb_record,
)
from vaesweep.analysis.results.output import write_frame
from vaesweep.run.record import KILLED

__all__ = [
    "CONFIG_PREFIX",
    "IDENTITY",
    "KEY_ORDER",
    "KILLED",
    "LAST_KEYS",
    "METRIC_ORDER",
    "MODULE_HPARAMS",
    "RENAMED_METRICS",
    "STATS",
    "RUN_SUMMARY_KEYS",
    "WANDB_STATES",
    "ResultsError",
    "aggregate",
    "completed",
    "config_keys",
    "evaluations",
    "excluded_message",
    "find_results",
    "flatten",
    "frame_from_wandb",
    "load_results",
    "load_wandb",
    "metric_names",
    "parse_overrides",
    "split_job_name",
    "swept_keys",
    "unaggregated_message",
    "use_evaluation",
    "wandb_record",
    "write_frame",
]
