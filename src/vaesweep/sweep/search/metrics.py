"""What a search may optimise: the metrics a results.json holds and the direction that
improves each (:func:`objective_direction` refuses the others)."""

from __future__ import annotations

from typing import Any

from omegaconf import ListConfig

from vaesweep.sweep.search.space import SearchError

#: Every metric a results.json can hold that a search may optimise (docs/math.md).
VAL_METRICS = ("val/elbo", "val/rec_nll", "val/kl", "val/loss", "val/scale")
TEST_METRICS = (
    "test/nll",
    "test/elbo",
    "test/rec_nll",
    "test/kl",
    "test/bpd",
    "test/mse",
    "test/mae",
    "test/active_units",
    "test/scale_ratio",
)
#: The direction that improves a metric, by its name after the split prefix.
DIRECTIONS = {
    "elbo": "maximize",
    "nll": "minimize",
    "rec_nll": "minimize",
    "bpd": "minimize",
    "loss": "minimize",
    "mse": "minimize",
    "mae": "minimize",
}
SCALE_METRICS = ("val/scale", "test/scale_ratio")


def _check_objective(objective: str, allow_test: bool, key: str) -> None:
    known = VAL_METRICS + TEST_METRICS
    if objective not in known:
        raise SearchError(
            f"{key}={objective}: no result holds this metric; allowed: " + ", ".join(known)
        )
    if objective.startswith("test/") and not allow_test:
        raise SearchError(
            f"{key}={objective}: choosing hyperparameters on the test split "
            "reports an optimistic test score; use a val/* metric (allowed: "
            + ", ".join(VAL_METRICS)
            + "), or opt in with hydra.sweeper.allow_test_objective=true"
        )


def objective_direction(
    objective: str, direction: Any, allow_test: bool, key: str = "hydra.sweeper.objective"
) -> str:
    """The checked direction of an objective (SearchError for a metric no result holds, a
    test metric without the opt-in, or a direction that contradicts the metric). ``key``:
    where the objective was set (hydra.sweeper.objective or optimized_metric)."""
    _check_objective(objective, allow_test, key)
    natural = DIRECTIONS.get(objective.split("/", 1)[1])
    if direction is None:
        if natural is None:
            raise SearchError(
                f"hydra.sweeper.direction=null: {objective} has no natural direction; "
                "allowed: maximize or minimize"
            )
        return natural
    if isinstance(direction, list | ListConfig):
        raise SearchError(
            f"hydra.sweeper.direction={list(direction)}: one objective, one direction; "
            "allowed: maximize or minimize"
        )
    direction = str(direction).lower()
    if direction not in ("maximize", "minimize"):
        raise SearchError(
            f"hydra.sweeper.direction={direction}: allowed: maximize, minimize or null "
            "(from the objective)"
        )
    if natural is not None and direction != natural:
        raise SearchError(
            f"hydra.sweeper.direction={direction} contradicts {key}="
            f"{objective}, which improves when it gets {'larger' if natural == 'maximize' else 'smaller'}; "
            f"allowed: {natural} or null"
        )
    return direction
