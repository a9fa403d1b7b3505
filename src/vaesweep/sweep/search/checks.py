"""The refusals that need more than the options: the trials' composed configs (keys that
change nothing, grid points that compute the same thing, an objective these jobs will not
report) and the existing studies (a changed search). Run before any trial."""

from __future__ import annotations

from pathlib import Path

from hydra import compose
from omegaconf import DictConfig

from vaesweep.run.config import resolve_preprocess
from vaesweep.run.effective import check_distinct, check_overrides
from vaesweep.sweep.search.metrics import SCALE_METRICS, VAL_METRICS
from vaesweep.sweep.search.plan import Plan
from vaesweep.sweep.search.space import SearchError
from vaesweep.sweep.search.storage import is_url, open_storage, quiet_optuna
from vaesweep.sweep.search.studies import check_unchanged, existing_study


def _check_objective_reported(cfg: DictConfig, objective: str) -> None:
    if objective == "test/bpd" and resolve_preprocess(cfg) != "dequantize":
        raise SearchError(
            f"hydra.sweeper.objective=test/bpd: bits/dim are reported only for "
            f"dequantised data, and likelihood={cfg.likelihood.name} has "
            f"{resolve_preprocess(cfg)}d data; allowed: {', '.join(VAL_METRICS[:4])}"
        )
    if objective in SCALE_METRICS and cfg.likelihood.get("scale") is None:
        raise SearchError(
            f"hydra.sweeper.objective={objective}: likelihood={cfg.likelihood.name} "
            f"has no scale; allowed: {', '.join(VAL_METRICS[:4])}"
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
    for cfg in configs:
        _check_objective_reported(cfg, plan.objective)
    refusal = check_overrides(jobs[0], configs)  # every job has the same keys
    if refusal is None and len(jobs) > 1:
        refusal = check_distinct(list(zip(jobs, configs, strict=True)))
    if refusal:
        raise SearchError(refusal)


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
