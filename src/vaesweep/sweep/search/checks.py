"""The refusals that need more than the options: the trials' composed configs (keys that
change nothing, grid points that compute the same thing, an objective these jobs will not
report), a ``--config-dir`` file that Hydra would never read, and the existing studies (a
changed search). Run before any trial."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vaesweep.core.checks import ConfigError
from vaesweep.core.helpers import flatten, plain
from vaesweep.model.likelihood_base import data_label
from vaesweep.run.config import (
    likelihood_class,
    never_validates,
    resolve_preprocess,
    validate_config,
)
from vaesweep.run.context import read_sweep
from vaesweep.run.effective import check_distinct, check_overrides, hydra_references, reads
from vaesweep.sweep.grid import compose_job
from vaesweep.sweep.preflight import shadowed_config
from vaesweep.sweep.search.metrics import SCALE_METRICS, VAL_METRICS
from vaesweep.sweep.search.plan import Plan
from vaesweep.sweep.search.space import SearchError, render
from vaesweep.sweep.search.storage import is_url, open_storage, quiet_optuna
from vaesweep.sweep.search.studies import (
    SPACE_ATTR,
    SWEEP_ATTR,
    check_owner,
    check_unchanged,
    existing_study,
    journal_in_sweep_dir,
    sweep_identity,
)


def _check_objective_reported(cfg: DictConfig, objective: str, key: str) -> None:
    why = never_validates(cfg.trainer)
    if objective.startswith("val/") and why is not None:
        raise SearchError(
            f"{key}={objective}: with {why} the trials never validate, so none would report "
            f"{objective} (each would train, then count as failed); allowed: a config whose "
            "fit validates, or a test/ objective (hydra.sweeper.allow_test_objective=true)"
        )
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


#: The objectives that score every β alike (the ELBO and the likelihood bounds, which weigh
#: the KL by 1 whatever β trained the model): the only ones allowed while β is searched.
BETA_FREE_OBJECTIVES = ("val/elbo", "test/elbo", "test/nll", "test/bpd")
#: The reconstruction's scores: they improve as β falls (the KL weighs less).
RECONSTRUCTION_OBJECTIVES = ("val/rec_nll", "test/rec_nll", "test/mse", "test/mae")


def _beta_bias(objective: str) -> str:
    """Why ``objective`` cannot compare trials of different β."""
    if objective == "val/loss":
        return "val/loss = rec_nll + β·KL falls as β falls (the search would pick the smallest β)"
    if objective in RECONSTRUCTION_OBJECTIVES:
        return (
            f"{objective} scores the reconstruction alone, which improves as β falls and the "
            "KL weighs less (the search would pick the smallest β, not the best model)"
        )
    return (
        f"{objective} is one side of the trade-off that β sets, not a score of the model "
        "(the search would pick an extreme β)"
    )


def check_objective_comparable(plan: Plan) -> None:
    """Refuses an objective whose value the searched keys change by definition: with β (or
    the β schedule) searched, only an objective that scores every β alike (the ELBO, the
    NLL bound, bits/dim) compares trials; val/loss = rec_nll + β·KL, the reconstruction's
    scores and the KL would pick an extreme β, not the best model."""
    if plan.objective in BETA_FREE_OBJECTIVES:
        return
    weighting = [k for k in plan.space.searched if k == "beta" or k.startswith("beta_schedule")]
    if weighting:
        raise SearchError(
            f"{plan.objective_key}={plan.objective} with {', '.join(weighting)} searched: "
            f"{_beta_bias(plan.objective)}, so it cannot compare trials of different β; "
            "allowed: val/elbo (or, with hydra.sweeper.allow_test_objective=true, "
            "test/elbo, test/nll, test/bpd), which scores every β alike"
        )


def check_configs(config: DictConfig, plan: Plan) -> None:
    """Composes one job per grid point (searched keys at an example value), and one per
    searched key and value tried at every grid point (:func:`space_configs`), and refuses
    keys that change nothing, grid points that compute the same thing, an objective that
    these jobs will not report, and values a run refuses."""
    example = {k: p.example() for k, p in plan.space.searched.items()}
    jobs = [plan.space.trial_overrides(point, example) for point in plan.space.points()]
    try:
        configs = [compose_job(config, job) for job in jobs]
    except Exception as e:
        raise SearchError(f"the trials' config does not compose: {e}") from None
    check_objective_comparable(plan)
    for cfg in configs:
        _check_objective_reported(cfg, plan.objective, plan.objective_key)
    plan.configs = study_configs(config, plan, configs)
    composed = {tuple(p): space_configs(config, plan, p, example) for p in plan.space.points()}
    every = [*configs, *(c for tried in composed.values() for *_, c in tried if _is_config(c))]
    # The fixed and grid keys: read by some trial, at any point and searched value.
    fixed = [o for o in jobs[0] if _override_key(o) not in plan.space.searched]
    refusal = check_overrides(fixed, every)  # every job has the same keys
    if refusal is None and len(jobs) > 1:
        refusal = check_distinct(list(zip(jobs, configs, strict=True)))
    if refusal:
        raise SearchError(refusal)
    for point in plan.space.points():
        check_searched_read(plan, point, composed[tuple(point)])
    check_space_values(config, plan, example, composed)


def study_configs(
    config: DictConfig, plan: Plan, configs: list[DictConfig] | None = None
) -> dict[str, dict[str, Any]]:
    """{study: :func:`computed_config` of its trials} (``configs``: each grid point's trial at
    the example point, composed here when not given)."""
    points = plan.space.points()
    if configs is None:
        example = {k: p.example() for k, p in plan.space.searched.items()}
        try:
            configs = [
                compose_job(config, plan.space.trial_overrides(point, example)) for point in points
            ]
        except Exception as e:
            raise SearchError(f"the trials' config does not compose: {e}") from None
    return {
        plan.study(point): computed_config(cfg, plan)
        for point, cfg in zip(points, configs, strict=True)
    }


def computed_config(cfg: DictConfig, plan: Plan) -> dict[str, Any]:
    """What a study's trials compute, as its fingerprint keeps it: the value of every key a
    trial reads (:func:`vaesweep.run.effective.reads`) that can change its numbers
    (:meth:`Plan.changes_results`), resolved, as written, except the searched keys (each
    trial sets them; ``cfg`` has them at an example value). Plain JSON, by key."""
    read, _ = reads(cfg)
    values = plain(cfg)
    leaves: dict[str, Any] = {}
    for path in read:
        node = values
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        leaves.update(flatten(node, f"{path}.", as_float=False))
    kept = {
        k: v
        for k, v in sorted(leaves.items())
        if plan.changes_results(k) and not any(_reads_key({k}, s) for s in plan.space.searched)
    }
    return json.loads(json.dumps(kept, default=str))


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_config(composed: Any) -> bool:
    return isinstance(composed, DictConfig)


def space_configs(
    config: DictConfig, plan: Plan, point: list[str], example: dict
) -> list[tuple[str, Any, Any]]:
    """(key, value, its trial's composed config, or the exception composing it raised) of
    each searched key at each value tried (its bounds; every option of a ``choice``), the
    other searched keys at their example value, at the grid point ``point``."""
    out = []
    for key, param in plan.space.searched.items():
        values = param.choices if param.kind == "categorical" else (param.low, param.high)
        for value in dict.fromkeys(values):
            job = plan.space.trial_overrides(point, {**example, key: value})
            try:
                out.append((key, value, compose_job(config, job)))
            except Exception as e:
                out.append((key, value, e))
    return out


def _reads_key(read: set[str], key: str) -> bool:
    """Whether a trial that reads the config paths ``read`` reads ``key`` (or a part of it)."""
    return any(p == key or p.startswith(key + ".") or key.startswith(p + ".") for p in read)


def check_searched_read(plan: Plan, point: list[str], tried: list[tuple[str, Any, Any]]) -> None:
    """Refuses a searched key that the trials of a study (grid point) do not all read, at
    every value tried of every searched key (``tried``: :func:`space_configs`): read by no
    trial, the study would train copies of one run; read at some values of another key
    only (``beta`` with ``beta_schedule=choice(constant, capacity)``: capacity reads no
    β), the trials at the others would differ only in it, copies of one run reported as if
    it mattered. Either way, whatever the order of the choices."""
    where = f" at the grid point {' '.join(point)} (study {plan.study(point)!r})" if point else ""
    configs = [(k, v, c) for k, v, c in tried if _is_config(c)]
    paths = [reads(c)[0] for _, _, c in configs]
    for key, param in plan.space.searched.items():
        read = [_reads_key(p, key) for p in paths]
        if all(read):
            continue
        shown = f"hydra.sweeper.params.{key}={param.describe()}{where}"
        override = f"{param.key}={param.text(param.example())}"
        if not any(read):
            raise SearchError(
                f"{shown} is read by no trial of this study, at any value of the search space: "
                f"{check_overrides([override], [c for _, _, c in configs]) or override}"
                + (f" Drop that grid point from the search of {key}" if point else "")
            )
        unread = [(k, v, c) for (k, v, c), r in zip(configs, read, strict=True) if not r]
        # Named by the other keys' values where they are the cause (this key's own values
        # are unread there only as the others take their example value).
        unread = [u for u in unread if u[0] != key] or unread
        other, value, cfg = unread[0]
        why = (check_overrides([override], [cfg]) or "").split(": ", 1)[-1]
        at = ", ".join(dict.fromkeys(f"{k}={render(v)}" for k, v, _ in unread))
        reading = [v for (k, v, _), r in zip(configs, read, strict=True) if k == other and r]
        fix = f"{other}={render(reading[0] if reading else plan.space.searched[other].example())}"
        raise SearchError(
            f"{shown} is read only at some values of the search space: the trials at {at} do "
            f"not read it ({why}), so they would differ only in {key}: copies of one run, "
            f"reported as if {key} mattered. A conditional search space is not supported: "
            f"search {key} only where every trial reads it (a fixed {fix}, or a grid axis of "
            f"values that read it) and the other values in a search without {key}"
        )


def data_kind(cfg: DictConfig) -> str:
    """What a run's numbers are of: its preprocessing in force (``auto`` resolved) and its
    likelihood's ``data_kind``, labelled as the results table and the figures label a run's
    kind (vaesweep.analysis.figures.kinds.data_kind); runs of two kinds are never ranked
    against each other."""
    return data_label(likelihood_class(cfg).data_kind, resolve_preprocess(cfg))


def _dataset(cfg: DictConfig) -> str:
    """The data a trial is scored on, as its config tells them: the dataset and the split
    sizes it sets (other sizes, other validation and test examples)."""
    sizes = [
        f"data.{k}={v}" for k in ("val_size", "test_size") if (v := cfg.data.get(k)) is not None
    ]
    return str(cfg.data.name) + (f" ({', '.join(sizes)})" if sizes else "")


def _refuse_mixed_kinds(
    plan: Plan, where: str, kinds: dict[tuple[str, str], list[tuple[str, Any]]]
) -> None:
    """SearchError when the searched values give trials of different data (``kinds``:
    (dataset and splits, data kind) → the (key, value) tried that gave it): the objective of
    a Bernoulli on binarised images and of a Gaussian on dequantised ones, or of two
    datasets or splits (``data=choice(digits,mnist)``, ``data.val_size=choice(500,1000)``),
    are numbers of different data, which the sampler would
    rank against each other (and which the results frame refuses to collect together)."""
    if len(kinds) < 2:
        return
    by_key: dict[str, dict[tuple[str, str], list[Any]]] = {}
    for data, tried in kinds.items():
        for key, value in tried:
            by_key.setdefault(key, {}).setdefault(data, []).append(value)
    key = next((k for k, v in by_key.items() if len(v) > 1), next(iter(by_key)))
    param = plan.space.searched[key]
    datasets = {name for name, _ in by_key[key]}
    gives = "; ".join(
        f"{', '.join(f'{key}={render(v)}' for v in values)}: "
        + (f"{name}, {kind}" if len(datasets) > 1 else kind)
        for (name, kind), values in by_key[key].items()
    )
    never = "the results table and figures never compare them"
    if len(datasets) > 1:  # the results frame never collects two datasets together
        tried = dict.fromkeys(v for values in by_key[key].values() for v in values)
        never = "vaesweep collect refuses runs of two datasets or splits together"
        way = (
            f"run one search per dataset and split "
            f"({', then '.join(f'{key}={render(v)}' for v in tried)})"
        )
    elif param.kind == "categorical":
        values = ",".join(param.text(v) for v in dict.fromkeys(param.choices))
        way = f"make {key} a grid axis, one study per kind of data ({key}={values})"
    else:
        way = f"fix {key}"
    raise SearchError(
        f"hydra.sweeper.params.{key}={param.describe()}{where} gives trials of different "
        f"data ({gives}): their {plan.objective} are numbers of different data and cannot "
        f"be ranked against each other ({never}); {way}, or search the values of one kind only"
    )


def check_space_values(
    config: DictConfig,
    plan: Plan,
    example: dict,
    composed: dict[tuple[str, ...], list[tuple[str, Any, Any]]] | None = None,
) -> None:
    """Refuses a search space with values a run refuses (``beta=interval(-1, 1)``): each
    searched key at its bounds (every option of a ``choice``), the others at their example
    value, at every grid point, validated as each trial's run would validate it, so that
    no trial of the budget is spent on a value known to fail. A grid point refused at every
    value tried is named as the point (a fixed or grid value is the cause, not a searched
    one). (One composition per value and grid point: a value refused only in combination
    with another searched key's non-example value fails in those trials.) ``composed``:
    :func:`space_configs` of every grid point, when already composed."""
    references = hydra_references(config.hydra)  # the trials' configs have no hydra node
    for point in plan.space.points():
        where = f" at the grid point {' '.join(point)}" if point else ""
        tried: list[str] = []
        refused: list[tuple[str, Any, Any, ConfigError]] = []
        kinds: dict[tuple[str, str], list[tuple[str, Any]]] = {}  # data → (key, value) tried
        configs = (composed or {}).get(tuple(point)) or space_configs(config, plan, point, example)
        for key, value, cfg in configs:
            try:
                if not _is_config(cfg):
                    raise cfg
                validate_config(cfg, in_job=False, references=references)
                data = (_dataset(cfg), data_kind(cfg))
                kinds.setdefault(data, []).append((key, value))
            except ConfigError as e:
                refused.append((key, plan.space.searched[key], value, e))
            except Exception:  # not the value's fault: the trial reports it itself
                continue
            tried.append(f"{key}={render(value)}")
        if not refused:
            _refuse_mixed_kinds(plan, where, kinds)
            continue
        key, param, value, e = refused[0]
        check = functools.partial(_accepted, config, plan, point, example, references)
        if len(refused) == len(tried) and not check({}):  # refused whatever is searched
            what = "Drop that grid point or correct the value" if point else "Correct that value"
            raise SearchError(
                f"the trials{where} would be refused at every searched value tried "
                f"({', '.join(tried)}): {str(e).rstrip('.')}. {what}"
            )
        raise SearchError(
            f"hydra.sweeper.params.{key}={param.describe()} includes "
            f"{key}={render(value)}{where}, which a run refuses: {str(e).rstrip('.')}. Allowed: a "
            f"space whose every value a run accepts{_integer_hint(param, check)}"
        )


def _accepted(
    config: DictConfig,
    plan: Plan,
    point: list[str],
    example: dict,
    references: list[str],
    values: dict[str, Any],
) -> bool:
    """Whether a run accepts the trial of ``point`` with the searched ``values`` (the other
    searched keys at their example value); with ``values`` empty, the trial without any
    searched key set (each at the config's own value)."""
    params = {**example, **values} if values else {}
    try:
        cfg = compose_job(config, plan.space.trial_overrides(point, params))
        validate_config(cfg, in_job=False, references=references)
    except ConfigError:
        return False
    except Exception:  # not the value's fault: the trial reports it itself
        return True
    return True


def _integer_hint(param: Any, accepted: Any) -> str:
    """``; ... int(interval(16, 256))`` for a float range whose bounds a run refuses as
    floats but accepts as integers (``accepted``: :func:`_accepted` of this grid point)."""
    if param.kind != "float" or param.step is not None:
        return ""
    low, high = param.low, param.high
    if not (float(low).is_integer() and float(high).is_integer()):
        return ""
    if not all(accepted({param.name: int(v)}) for v in (low, high)):
        return ""
    expression = f"int(interval({int(low)}, {int(high)}))"
    if param.log:
        expression = f"tag(log, {expression})"
    return f" ({param.name} takes integers: hydra.sweeper.params.{param.name}={expression})"


def check_shadowed(config: DictConfig) -> None:
    """A config of the ``--config-dir`` that the search selects but Hydra never reads
    (:func:`vaesweep.sweep.preflight.shadowed_config`): SearchError."""
    problem = shadowed_config(config)
    if problem:
        raise SearchError(problem)


def _trial_numbers_on_disk(sweep_dir: Path) -> set[int]:
    """The trial numbers that the directories of a sweep directory name (``trial_0007``,
    ``likelihood=gaussian,trial_0007``)."""
    try:
        names = [p.name for p in sweep_dir.iterdir() if p.is_dir()]
    except OSError:
        return set()
    return {int(m.group(1)) for n in names if (m := re.search(r"(?:^|,)trial_(\d+)$", n))}


def check_new_study_dirs(
    plan: Plan, point: list[str], others: list[str], on_disk: set[int]
) -> None:
    """Refuses a study that is not in the storage yet when the directories its trials would
    run in exist already: they hold another study's trials (a changed study_name, storage
    or journal; a deleted journal), and its trial 0 would find ``trial_0000`` there, whose
    completed run of another configuration the job refuses and leaves as it is. ``others``:
    the studies the storage holds; ``on_disk``: the trial numbers the sweep directory's
    directories name (:func:`_trial_numbers_on_disk`)."""
    numbers = set(range(plan.n_trials)) | on_disk
    found = [
        d for n in sorted(numbers) if (plan.sweep_dir / (d := plan.trial_dir(point, n))).is_dir()
    ]
    if not found:
        return
    shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    if others:
        whose = (
            f"the storage {plan.storage} holds the studies {', '.join(map(repr, others))}; "
            "to continue one of them, launch with its hydra.sweeper.study_name"
        )
    else:
        whose = (
            f"the storage {plan.storage} holds no other study (a journal deleted, moved or "
            "replaced?); to continue their study, launch with the storage that holds it"
        )
    raise SearchError(
        f"hydra.sweeper.study_name={plan.study_name}: the study {plan.study(point)!r} is new, "
        f"but {plan.sweep_dir} holds trial directories of another study ({shown}), where "
        "its trials would run: their results are other configurations', not its trials'. "
        f"A new study needs a sweep directory of its own: another hydra.sweep.dir (or move "
        f"those directories away); {whose}"
    )


def check_studies(plan: Plan) -> None:
    """Before anything runs: an existing study of another sweep directory is refused, and
    so are a changed search space and a new study whose trial directories hold another
    study's trials."""
    names: list[str] = []
    if is_url(plan.storage) or Path(plan.storage).stat().st_size:
        import optuna

        quiet_optuna()
        storage = open_storage(plan.storage)
        names = optuna.get_all_study_names(storage)
    ours = set(plan.studies())
    others = [n for n in names if n not in ours]
    on_disk = _trial_numbers_on_disk(plan.sweep_dir)  # one listing for every grid point
    here = sweep_identity(plan)
    for point in plan.space.points():
        if plan.study(point) in names:
            study = existing_study(storage, plan.study(point))
            check_owner(study, plan, here)  # another sweep directory's: refused first
            check_unchanged(study, plan)
        else:
            check_new_study_dirs(plan, point, others, on_disk)
    stored = [n for n in others if _belongs_here(existing_study(storage, n), plan, here)]
    check_same_studies(plan, stored)


def _belongs_here(study: Any, plan: Plan, here: dict[str, Any]) -> bool:
    """Whether ``study`` is a vaesweep search's study of this launch's sweep directory (as it
    records it; a search's study that records none, an earlier vaesweep's, where the storage
    is this directory's own journal). A study no vaesweep search started is none."""
    owner = study.user_attrs.get(SWEEP_ATTR)
    if not isinstance(owner, dict):
        return SPACE_ATTR in study.user_attrs and journal_in_sweep_dir(plan)
    return owner.get("dir") == here["dir"] or bool(
        owner.get("id") and owner.get("id") == here["id"]
    )


def check_same_studies(plan: Plan, stored: list[str]) -> None:
    """Refuses a relaunch into a sweep directory whose search has a study this one does not
    (its grid axes changed, or its study_name): the two searches would mix in one
    directory (summary.csv, sweep.json), and best.json would drop the earlier studies.
    ``stored``: the storage's studies of this sweep directory that this launch does not
    have; the earlier launches' studies come from sweep.json too (another storage's).
    Adding a value to a grid axis keeps every study: accepted."""
    try:
        record = read_sweep(plan.sweep_dir) or {}
    except (OSError, ValueError):  # a damaged sweep.json: set aside when the search starts
        record = {}
    search = record.get("search") if isinstance(record, dict) else None
    search = search if isinstance(search, dict) else {}
    ours = plan.studies()
    dropped = list(
        dict.fromkeys([*stored, *(n for n in search.get("studies") or [] if n not in ours)])
    )
    if not dropped:
        return
    grid = search.get("grid")
    change = f"; grid axes: {grid or '{}'} → {plan.space.grid or '{}'}" if grid is not None else ""
    raise SearchError(
        f"hydra.sweep.dir={plan.sweep_dir} holds a search whose studies "
        f"{', '.join(map(repr, dropped))} this launch does not have (its studies: "
        f"{', '.join(map(repr, ours))}{change}): its grid axes or study_name changed, and the "
        "two searches would mix in one sweep directory (its summary, sweep.json, best.json). "
        "To continue that search, relaunch it as it was; for the new search, choose another "
        "hydra.sweep.dir (a value added to a grid axis is the same search: accepted)"
    )
