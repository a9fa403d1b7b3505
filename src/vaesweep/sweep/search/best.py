"""The best trial of every study: the record in ``best.json`` (and Hydra's
``optimization_results.yaml``) and the lines printed at the end of a search."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vaesweep.core.atomic import atomic_open, write_json_atomic
from vaesweep.sweep.search.plan import DIR_ATTR, Plan

BEST_FILE = "best.json"
OPTUNA_RESULTS_FILE = "optimization_results.yaml"


def best_trial(study: Any, plan: Plan, point: list[str]) -> dict[str, Any]:
    """The best trial of a study as a record for best.json (``best`` null without any
    completed trial). A trial never fully proposed (a launch killed while the sampler
    proposed it: told FAIL, never run) is not counted."""
    trials = [t for t in study.get_trials(deepcopy=False) if plan.proposed(t)]
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "FAIL", "RUNNING")}
    record: dict[str, Any] = {
        "study": study.study_name,
        "grid_point": point,
        "objective": plan.objective,
        "direction": plan.direction,
        "storage": plan.storage,
        "n_trials": len(trials),
        "n_completed": counts["COMPLETE"],
        "n_failed": counts["FAIL"],
        "n_running": counts["RUNNING"],
        "best": None,
    }
    if counts["COMPLETE"]:
        t = study.best_trial
        record["best"] = {
            "trial": t.number,
            "value": t.value,
            "params": t.params,
            "dir": t.user_attrs.get(DIR_ATTR, plan.trial_dir(point, t.number)),
            "overrides": plan.space.trial_overrides(point, t.params),
            # Trains this trial's configuration as one run, from any directory.
            "command": shlex.join(plan.reproduce(point, t.params)),
        }
    return record


def write_best(sweep_dir: Path, best: list[dict[str, Any]]) -> None:
    write_json_atomic(sweep_dir / BEST_FILE, best)
    # Hydra's Optuna sweeper writes this file (one study: name, best_params, best_value).
    yaml = [
        {
            "name": "optuna",
            "study": b["study"],
            "best_params": b["best"]["params"] if b["best"] else None,
            "best_value": b["best"]["value"] if b["best"] else None,
        }
        for b in best
    ]
    text = OmegaConf.to_yaml(OmegaConf.create(yaml[0] if len(yaml) == 1 else yaml))
    with atomic_open(sweep_dir / OPTUNA_RESULTS_FILE, "wb") as f:
        f.write(text.encode("utf-8"))


def format_best(best: list[dict[str, Any]]) -> str:
    lines = []
    for b in best:
        head = f"{b['study']}: {b['n_completed']} completed, {b['n_failed']} failed"
        if b["n_running"]:
            head += f", {b['n_running']} unfinished"
        if b["best"] is None:
            lines.append(f"{head}; no completed trial")
            continue
        best = b["best"]
        command = best.get("command") or "python -m vaesweep " + shlex.join(best["overrides"])
        lines.append(
            f"{head}; best {b['objective']} = {best['value']:.6g} ({b['direction']}) "
            f"in {best['dir']}; as one run:\n  {command}"
        )
    return "\n".join(lines)


def read_best(sweep_dir: Path) -> list[dict[str, Any]] | None:
    """The best trials written by :func:`write_best`, None when there are none (or the file
    cannot be read)."""
    try:
        return json.loads((Path(sweep_dir) / BEST_FILE).read_text())
    except (OSError, ValueError):
        return None
