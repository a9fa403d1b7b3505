"""The refusals that need more than the options: the trials' composed configs (keys that
change nothing, grid points that compute the same thing, an objective these jobs will not
report), a ``--config-dir`` file that Hydra would never read, and the existing studies (a
changed search). Run before any trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig

from vaesweep.core.checks import ConfigError
from vaesweep.run.config import resolve_preprocess, validate_config
from vaesweep.run.effective import check_distinct, check_overrides, hydra_references
from vaesweep.sweep.preflight import shadowed_config
from vaesweep.sweep.search.metrics import SCALE_METRICS, VAL_METRICS
from vaesweep.sweep.search.plan import Plan
from vaesweep.sweep.search.space import SearchError, render
from vaesweep.sweep.search.storage import is_url, open_storage, quiet_optuna
from vaesweep.sweep.search.studies import check_unchanged, existing_study


def _check_objective_reported(cfg: DictConfig, objective: str, key: str) -> None:
    if objective == "test/bpd" and resolve_preprocess(cfg) != "dequantize":
        raise SearchError(
            f"{key}=test/bpd: bits/dim are reported only for "
            f"dequantised data, and likelihood={cfg.likelihood.name} has "
            f"{resolve_preprocess(cfg)}d data; allowed: {', '.join(VAL_METRICS[:4])}"
        )
    if objective in SCALE_METRICS and cfg.likelihood.get("scale") is None:
        raise SearchError(
            f"{key}={objective}: likelihood={cfg.likelihood.name} "
            f"has no scale; allowed: {', '.join(VAL_METRICS[:4])}"
        )


#: Objectives that weight the KL by β: trials with different β are not comparable by them.
WEIGHTED_OBJECTIVES = ("val/loss",)


def check_objective_comparable(plan: Plan) -> None:
    """Refuses an objective whose value the searched keys change by definition: val/loss =
    rec_nll + β·KL falls as β falls, so a search over β (or the schedule) would pick the
    smallest β, not the best model."""
    if plan.objective not in WEIGHTED_OBJECTIVES:
        return
    weighting = [k for k in plan.space.searched if k == "beta" or k.startswith("beta_schedule")]
    if weighting:
        raise SearchError(
            f"{plan.objective_key}={plan.objective} with {', '.join(weighting)} searched: "
            f"{plan.objective} = rec_nll + β·KL falls as β falls, so it cannot compare trials "
            "of different β (the search would pick the smallest); allowed: val/elbo (or "
            "val/rec_nll), which every β is scored by alike"
        )


def check_configs(config: DictConfig, plan: Plan) -> None:
    """Composes one job per grid point (searched keys at an example value) and refuses keys
    that change nothing, grid points that compute the same thing, and an objective that
    these jobs will not report."""
    example = {k: p.example() for k, p in plan.space.searched.items()}
    jobs = [plan.space.trial_overrides(point, example) for point in plan.space.points()]
    try:
        configs = [compose(config.hydra.job.config_name, overrides=job) for job in jobs]
    except Exception as e:
        raise SearchError(f"the trials' config does not compose: {e}") from None
    check_objective_comparable(plan)
    for cfg in configs:
        _check_objective_reported(cfg, plan.objective, plan.objective_key)
    refusal = check_overrides(jobs[0], configs)  # every job has the same keys
    if refusal is None and len(jobs) > 1:
        refusal = check_distinct(list(zip(jobs, configs, strict=True)))
    if refusal:
        raise SearchError(refusal)
    check_space_values(config, plan, example)


def check_space_values(config: DictConfig, plan: Plan, example: dict) -> None:
    """Refuses a search space with values a run refuses (``beta=interval(-1, 1)``): each
    searched key at its bounds (every option of a ``choice``), the others at their example
    value, at every grid point, validated as each trial's run would validate it, so that
    no trial of the budget is spent on a value known to fail. A grid point refused at every
    value tried is named as the point (a fixed or grid value is the cause, not a searched
    one). (One composition per value and grid point: a value refused only in combination
    with another searched key's non-example value fails in those trials.)"""
    references = hydra_references(config.hydra)  # the trials' configs have no hydra node
    for point in plan.space.points():
        where = f" at the grid point {' '.join(point)}" if point else ""
        tried: list[str] = []
        refused: list[tuple[str, Any, Any, ConfigError]] = []
        for key, param in plan.space.searched.items():
            values = param.choices if param.kind == "categorical" else (param.low, param.high)
            for value in dict.fromkeys(values):
                job = plan.space.trial_overrides(point, {**example, key: value})
                try:
                    cfg = compose(config.hydra.job.config_name, overrides=job)
                    validate_config(cfg, in_job=False, references=references)
                except ConfigError as e:
                    refused.append((key, param, value, e))
                except Exception:  # not the value's fault: the trial reports it itself
                    continue
                tried.append(f"{key}={render(value)}")
        if not refused:
            continue
        key, param, value, e = refused[0]
        if len(refused) == len(tried) and (len(tried) > 1 or point):
            raise SearchError(
                f"the trials{where} would be refused at every searched value tried "
                f"({', '.join(tried)}): {str(e).rstrip('.')}. Drop that grid point or "
                "correct the value"
            )
        raise SearchError(
            f"hydra.sweeper.params.{key}={param.describe()} includes "
            f"{key}={render(value)}{where}, which a run refuses: {str(e).rstrip('.')}. Allowed: a "
            "space whose every value a run accepts"
        )


def check_shadowed(config: DictConfig) -> None:
    """A config of the ``--config-dir`` that the search selects but Hydra never reads
    (:func:`vaesweep.sweep.preflight.shadowed_config`): SearchError."""
    problem = shadowed_config(config)
    if problem:
        raise SearchError(problem)


def check_studies(plan: Plan) -> None:
    """A changed search space is refused before anything runs (existing studies only)."""
    if not is_url(plan.storage) and not Path(plan.storage).stat().st_size:
        return
    quiet_optuna()
    storage = open_storage(plan.storage)
    for point in plan.space.points():
        study = existing_study(storage, plan.study(point))
        if study is not None:
            check_unchanged(study, plan)
