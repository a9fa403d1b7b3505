"""The ``hydra/sweeper=optuna`` choice: config (registered in Hydra's ConfigStore) and Sweeper.

Importing this module is cheap (Hydra imports every plugin module at start-up): Optuna is
imported only when a search starts. The keys follow Hydra's own Optuna sweeper where they
apply; docs/search.md lists the differences. A config that names Hydra's own sweeper class
(``hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper``, as
lightning-hydra-template's ``hparams_search`` files do) with ``hydra/sweeper=optuna`` gets
this one (vaesweep.sweep.search.plan.adopt_sweeper). (No ``from __future__ import annotations``:
Hydra executes plugin modules before they are in ``sys.modules``, where dataclasses cannot
resolve string annotations.)
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


def _default_sampler() -> dict[str, Any]:
    # The run's own seed by default: the same command proposes the same trials.
    return {"_target_": "optuna.samplers.TPESampler", "seed": "${seed}"}


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.vaesweep_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # Trials per study (per grid point) in total, over every launch of the same command.
    n_trials: int = 20
    # Trials per launcher batch; null: the launcher's n_jobs (local_parallel), else 1.
    n_jobs: Any = None
    # maximize | minimize; null: from the objective (maximise an ELBO, minimise the rest).
    direction: Any = None
    # The metric of each trial's results.json that the search optimises; null: the config's
    # optimized_metric (lightning-hydra-template's key) if it has one, else val/elbo.
    objective: Any = None
    # test/* objectives select the model on the test split: refused unless this is true.
    allow_test_objective: bool = False
    # null: a journal file, optuna_journal.log, in the sweep directory. A path: a journal
    # file there (relative paths inside the sweep directory). A URL (sqlite:///...): RDB.
    storage: Any = None
    # null: "search" (with grid axes: "search[<grid point>]").
    study_name: Any = None
    # An Optuna sampler: _target_ and any arguments of its constructor (n_startup_trials,
    # multivariate, ...), in a file or on the command line (hydra.sweeper.sampler.KEY=V).
    sampler: Any = field(default_factory=_default_sampler)
    # null (or optuna.pruners.NopPruner): trials are whole jobs that tell Optuna only their
    # final objective, so any other pruner would never prune and is refused (docs/search.md).
    pruner: Any = None
    # The search stops when more than this fraction of a batch's trials failed.
    max_failure_rate: float = 1.0
    # key: search-space expression (interval, tag(log, interval), int(interval), choice,
    # range, a,b,... grid axis, or a fixed value).
    params: dict[str, Any] = field(default_factory=dict)
    # Hydra's Optuna sweeper's Python search-space function and its deprecated search_space
    # key: not supported (the space is params alone). Keys here so that a file that sets
    # them gets vaesweep's refusal, which says what to write, rather than a schema error.
    custom_search_space: Any = None
    search_space: Any = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="vaesweep"
)


class OptunaSweeper(Sweeper):
    """Asks Optuna for trials, runs each as a job through the configured launcher (in
    batches of ``n_jobs``), and tells Optuna the objective read from its results.json."""

    def __init__(self, sampler: Any = None, pruner: Any = None, **options: Any) -> None:
        self.sampler = sampler
        self.pruner = pruner
        self.options = options
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from vaesweep.sweep.search import run_search

        assert self.config is not None and self.launcher is not None
        return run_search(self.config, self.launcher, arguments, self.sampler, self.pruner)
