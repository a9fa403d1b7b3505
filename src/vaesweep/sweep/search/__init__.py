"""Search: a resumable Optuna study whose trials are ordinary vaesweep jobs.

``python run.py -m hydra/sweeper=optuna ...`` selects the sweeper of
``hydra_plugins.vaesweep_optuna_sweeper``, which calls :func:`run_search`:

- the search space comes from ``hydra.sweeper.params`` and the command line's overrides
  (:func:`parse_space`): ``interval(a, b)``, ``tag(log, interval(a, b))``,
  ``int(interval(a, b))``, ``choice(...)``, ``range(...)`` are searched; a plain list
  ``a,b,c`` is a grid axis (one study per grid point); anything else is fixed;
- every study lives in one storage in the sweep directory (default: Optuna's journal file
  ``optuna_journal.log``), so the same command continues it: ``n_trials`` is the total per
  study, finished trials are not run again, a trial left ``RUNNING`` by a killed launch is
  run again in its own directory (``trial_0007``), where the job resumes from its
  checkpoint, and a changed search (its space, fixed overrides, the trials' composed
  config, objective: kept in the study's user attrs) is refused;
- each trial is a job launched through ``self.launcher`` in batches of ``n_jobs``; the
  objective is read from the trial's ``results.json`` (default ``val/elbo``, maximised);
  failed and diverged trials are told as FAIL and the search goes on (so is a trial whose
  directory holds a result recorded with other overrides: never told as its value);
- a stop signal at any moment is recorded by the sweep's guard; a running trial stops at
  its next batch (``interrupted``), the search at its next safe point (between two steps,
  never inside Hydra's or Optuna's code), and the entry point writes the summary;
- at the end the best trial of every study and the command that trains it as one run are
  printed and written to ``best.json`` and ``optimization_results.yaml``.

A lightning-hydra-template ``hparams_search`` file runs as written: the group is in the root
config, its ``optimized_metric`` is the objective, its ``_target_`` (Hydra's own Optuna
sweeper) is this one (:func:`~vaesweep.sweep.search.plan.adopt_sweeper`).

Bad input (an unknown expression, an empty or inverted range, an objective no result will
hold, ``n_trials`` < 1, a storage that cannot be written, a sampler that cannot be built, a
``--config-dir`` file Hydra never reads, a changed search, searched values of different
kinds of data, a searched key some trials do not read, a study no vaesweep search started, a
new study where another study's trial directories are, a relaunch that drops a study of its
sweep directory, a pruner: trials run to completion, see :func:`check_pruner`) is refused
by :func:`start_search` (from the sweep callback) before any trial runs. Optuna is imported
only inside the functions that need it.

The modules, in the order data flows through them:

- ``space``: the search space (:class:`Space`, :class:`Param`, :func:`parse_space`) and
  :class:`SearchError`;
- ``metrics``: the objectives a search may optimise and their directions;
- ``storage``: the journal file or RDB URL, checked and opened;
- ``plan``: the options checked into a :class:`Plan` (trials, jobs, objective, sampler,
  pruner, study names, the command that trains a trial as one run);
- ``studies``: one study per grid point, created or continued, a changed search refused;
- ``checks``: refusals that compose the trials' configs or read the existing studies;
- ``trials``: a study's trials launched as jobs and told from their results.json;
- ``best``: the best trial of every study (best.json, optimization_results.yaml, printed);
- ``driver``: start (callback), run (sweeper), finish (callback) of a search;
- ``load``: a search's studies opened again for the figures.
"""

from vaesweep.sweep.search.best import BEST_FILE
from vaesweep.sweep.search.driver import finish_search, run_search, start_search
from vaesweep.sweep.search.load import load_studies
from vaesweep.sweep.search.plan import is_search
from vaesweep.sweep.search.space import SearchError, quote_sweeper_params
from vaesweep.sweep.search.storage import JOURNAL_FILE

__all__ = [
    "BEST_FILE",
    "JOURNAL_FILE",
    "SearchError",
    "finish_search",
    "is_search",
    "load_studies",
    "quote_sweeper_params",
    "run_search",
    "start_search",
]
