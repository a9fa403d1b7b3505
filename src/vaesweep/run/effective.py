"""What a job reads from its config, and the refusal of keys and sweeps that change nothing.

A config holds more keys than any one job reads: ``beta`` is read only through the
``${beta}`` of the schedules that use it (``capacity`` and ``geco`` don't),
``likelihood.momentum`` only by the ``optimal`` scale, ``model.channels`` only by the conv
network. A key given on the command line that the job never reads would train the same
model as without it and be reported as if it mattered (``beta=0.5,1,4`` with
``beta_schedule=capacity`` is three copies of one run). So:

- every component answers, from its own config, which of its options it does not read
  (``unread_options`` of likelihoods and schedules, ``network_unread_options``); the driver
  reads the groups and keys in :data:`READ_BY_DRIVER`; anything an interpolation in a read
  value points to (``${beta}``) is read too. Nothing here knows a component by name;
- :func:`check_overrides` refuses, before training, a command-line key that no job reads,
  naming the key, why it is not read and, where a component says so, which key does what
  the user meant;
- :func:`check_distinct` refuses a sweep in which two jobs would compute the same thing
  (the same values of every key that changes results, :func:`result_config`, with
  ``data.preprocess=auto`` resolved to what it means for the job's likelihood).

The driver's own reading of a component's keys is here too: ``likelihood.allow_nonbinary``
is read only for a likelihood on binary data whose data are not binarised.

Keys that only label a run live under ``label`` (``label.note``, ``label.tags``): they are
recorded in results.json and W&B, always allowed, and never part of what a job computes.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from vaesweep.core.helpers import flatten, plain
from vaesweep.data.datasets import EMBEDDED_SPLITS
from vaesweep.model.components import component_class
from vaesweep.run.record import changes_results

#: Groups whose keys the driver reads by name: a key added to one (``+data.batchsize=32``)
#: is read by nothing. (``paths`` are read through the interpolations that point to them.)
DRIVER_KEYS = {
    "data": (
        "name",
        "root",
        "download",
        "preprocess",
        "batch_size",
        "eval_batch_size",
        "val_size",
        "test_size",
    ),
    "eval": ("checkpoint", "iwae_k", "iwae_chunk", "active_units_threshold", "n_images"),
    "sweep": ("resume", "rerun_failed", "claim_timeout_s"),
    "paths": ("data_dir", "output_dir"),
}
#: The logger options W&B's logger reads (vaesweep.run.loggers, the sweep's summary run).
WANDB_LOGGER_KEYS = (
    "name",
    "mode",
    "project",
    "entity",
    "tags",
    "log_images",
    "sweep_summary",
    "sweep_figures",
    "offline_fallback",
)
#: Groups and keys the training driver reads in every job (everything under them).
READ_BY_DRIVER = (
    "seed",
    "n_samples",
    "threads",
    "compile",
    "trainer",
    "optimizer",
    "label",
    *(f"{group}.{key}" for group, keys in DRIVER_KEYS.items() for key in keys),
)
#: The root keys of a run's config: the groups, the run's own keys, and ``optimized_metric``
#: (hparams_search/lht_optuna.yaml: a search's objective, read by its sweeper). Another root
#: key of a config file (``seeds: 3``) is read by nothing (:func:`unknown_config_keys`).
ROOT_KEYS = (
    "seed", "beta", "n_samples", "threads", "compile", "data", "model", "likelihood",
    "beta_schedule", "optimizer", "trainer", "logger", "eval", "paths", "label", "sweep",
    "optimized_metric", "hydra",
)  # fmt: skip
#: Override keys outside the check: Hydra's own, and presets (which set keys themselves):
#: a study (experiment) and a search (hparams_search, lightning-hydra-template's group).
UNCHECKED = ("hydra", "experiment", "hparams_search")
LABEL_HINT = (
    "Keys that only label a run go under label.note and label.tags: they are recorded in "
    "results.json and W&B and never change what a run computes."
)
_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w-]*(?:\.[\w-]+)*)\}")


def _components(cfg: DictConfig) -> list[tuple[str, dict[str, Any], type | None]]:
    """(group, options, class) of each selected component (vaesweep.model.components); the class
    is None where it cannot be imported (validation reports that)."""
    out = []
    for group in ("model", "likelihood", "beta_schedule"):
        options = plain(cfg.get(group)) or {}
        try:
            cls = component_class(group, options)
        except ValueError:
            cls = None
        out.append((group, options, cls))
    return out


def resolved_preprocess(cfg: DictConfig) -> Any:
    """The data preprocessing in force: ``auto`` means binarize for a likelihood on binary
    data (``data_kind = "binary"``, the Bernoulli), else dequantize; ``auto`` itself when
    the likelihood's class cannot be imported (validation reports that)."""
    preprocess = OmegaConf.select(cfg, "data.preprocess")
    if preprocess != "auto":
        return preprocess
    try:
        cls = component_class("likelihood", plain(cfg.get("likelihood")) or {})
    except ValueError:
        return preprocess
    return "binarize" if getattr(cls, "data_kind", None) == "binary" else "dequantize"


def _driver_unread(cfg: DictConfig, cls: type | None) -> dict[str, str]:
    """{likelihood key the driver reads only under a condition: why it is not read here}.

    ``likelihood.allow_nonbinary`` (a meta key of the likelihood group, read by the config
    check) matters only for a likelihood on binary data given data that are not binarised."""
    name = OmegaConf.select(cfg, "likelihood.name")
    if cls is None:
        return {}
    if getattr(cls, "data_kind", None) != "binary":
        return {
            "likelihood.allow_nonbinary": (
                f"it is read only for a likelihood on binary data (data_kind='binary', e.g. "
                f"likelihood=bernoulli), and likelihood={name} is a density on continuous data"
            )
        }
    if resolved_preprocess(cfg) == "binarize":
        given = OmegaConf.select(cfg, "data.preprocess")
        shown = "binarize" if given == "binarize" else f"{given} (binarize for likelihood={name})"
        return {
            "likelihood.allow_nonbinary": (
                "it is read only when the data are not binarised (data.preprocess=dequantize "
                f"or scale), and data.preprocess={shown}"
            )
        }
    return {}


def reads(cfg: DictConfig) -> tuple[set[str], dict[str, str]]:
    """(the config paths a job with this config reads, {path it does not read: why})."""
    read, unread = set(READ_BY_DRIVER), {}
    for group, options, cls in _components(cfg):
        skipped = cls.unread_options(options) if cls is not None else {}
        if group == "likelihood":
            driver = _driver_unread(cfg, cls)
            skipped = {**skipped, **{p.split(".", 1)[1]: why for p, why in driver.items()}}
        unread.update({f"{group}.{k}": why for k, why in skipped.items() if k in options})
        read.update(f"{group}.{k}" for k in options if k not in skipped)
    logger = plain(cfg.get("logger")) or {}
    # Only W&B reads the logger options (project, mode, tags, ...), and only its own: a key
    # added to them (+logger.group=x) is passed to nothing.
    known = WANDB_LOGGER_KEYS if logger.get("name") == "wandb" else ("name",)
    read.update(f"logger.{k}" for k in logger if k in known)
    raw = OmegaConf.to_container(cfg, resolve=False)
    return _follow_references(read, raw), unread


def _follow_references(read: set[str], raw: dict[str, Any]) -> set[str]:
    """``read`` plus every path an interpolation in a read value points to, transitively."""
    todo, seen = list(read), set(read)
    while todo:
        node = _lookup(raw, todo.pop())
        for text in _strings(node):
            for ref in _REFERENCE.findall(text):
                if ref not in seen:
                    seen.add(ref)
                    todo.append(ref)
    return seen


def _lookup(raw: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return None
        raw = raw[part]
    return raw


def _strings(node: Any) -> Iterable[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _covers(path: str, key: str) -> bool:
    """Whether reading ``path`` reads (part of) ``key``, or the reverse."""
    return path == key or path.startswith(key + ".") or key.startswith(path + ".")


def override_keys(overrides: list[str]) -> list[tuple[str, str]]:
    """(config path, value as written) of each override outside :data:`UNCHECKED`;
    deletions (``~key``) and overrides of a package (``group@pkg=...``) are not checked."""
    out = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group.replace("/", ".")
        if o.is_delete() or o.package is not None or key.split(".")[0] in UNCHECKED:
            continue
        out.append((key, o.input_line.split("=", 1)[1] if o.input_line else ""))
    return out


def repeated_key(overrides: list[str]) -> str | None:
    """A refusal message when a key is given twice on the command line (Hydra would keep
    only the last value, silently), else None. Hydra's own keys (``hydra.run.dir``) count
    too: the launch checks them with the task's (:mod:`vaesweep.sweep.preflight`)."""
    seen: dict[str, str] = {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.is_delete():
            continue
        key = o.get_key_element().lstrip("+")
        if key in seen:
            hint = f" (sweep several values with {key}=A,B)"
            if key.split(".")[0].split("/")[0] in UNCHECKED:
                hint = ""
            return (
                f"{key} is given twice on the command line ({seen[key]} and {o.input_line}): "
                f"only the last, {o.input_line}, would be used. Give each key once{hint}."
            )
        seen[key] = o.input_line or key
    return None


def _given_reads(cfg: DictConfig) -> tuple[set[str], dict[str, str]]:
    """:func:`reads`, for what the command line gives: ``data.root`` and ``data.download``
    are not read for an embedded dataset, which reads no files (a config file may set them
    for every run: they are read there, for the runs of a dataset read from files)."""
    read, unread = reads(cfg)
    dataset = OmegaConf.select(cfg, "data.name")
    if dataset in EMBEDDED_SPLITS:
        for key, default in (("data.root", None), ("data.download", False)):
            if OmegaConf.select(cfg, key) == default:  # the default asks for no files
                continue
            read.discard(key)
            unread[key] = (
                f"data={dataset} is embedded in vaesweep and reads no files ({key} is for "
                "datasets read from files: data=mnist, data=fashion_mnist)"
            )
    return read, unread


def check_overrides(overrides: list[str], configs: list[DictConfig]) -> str | None:
    """A refusal message for a key given twice, or for the first override that no job (one
    config per job) reads, else None."""
    repeated = repeated_key(overrides)
    if repeated:
        return repeated
    analyses = [(cfg, *_given_reads(cfg)) for cfg in configs]
    for key, value in override_keys(overrides):
        if any(any(_covers(p, key) for p in read) for _, read, _ in analyses):
            continue
        return _refusal(key, value, analyses)
    return None


def _did_you_mean(name: str, known: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean PREFIX.KEY?)`` for the known key nearest ``name``, else ``""``."""
    close = difflib.get_close_matches(name.split(".")[0], list(known), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _named_keys(cfg: Any) -> dict[str, tuple[str, ...]]:
    """The groups whose keys are read by name, with those keys: :data:`DRIVER_KEYS`, and the
    logger's (W&B's options; only ``name`` for the others)."""
    logger = cfg.get("logger") if isinstance(cfg, dict | DictConfig) else None
    wandb = (logger or {}).get("name") == "wandb"
    return {**DRIVER_KEYS, "logger": WANDB_LOGGER_KEYS if wandb else ("name",)}


def _refusal(key: str, value: str, analyses: list) -> str:
    head = f"{key}={value} has no effect on what this run computes"
    group, _, name = key.partition(".")
    named = _named_keys(analyses[0][0])
    if group in named and name and name.split(".")[0] not in named[group]:
        known = named[group]
        hint = _did_you_mean(name, known, f"{group}.")
        if group == "logger":  # whose keys depend on the logger chosen
            group = f"logger={(analyses[0][0].get('logger') or {}).get('name')}"
        return (
            f"{head}: {group} has no key {name}{hint}. Allowed keys of {group}: {', '.join(known)}"
        )
    for _, _, unread in analyses:
        for path, why in unread.items():
            if _covers(path, key):
                return f"{head}: {why}. Drop it, or set the key that is read."
    cfg = analyses[0][0]
    hints = [
        f"{group}={options.get('name')}: {cls.hints[key]}"
        for group, options, cls in _components(cfg)
        if cls is not None and key in cls.hints
    ]
    selected = ", ".join(f"{group}={options.get('name')}" for group, options, _ in _components(cfg))
    message = f"{head}: no selected component reads `{key}` ({selected})"
    if hints:
        return f"{message}; {'; '.join(hints)}."
    return f"{message}. Drop it. {LABEL_HINT}"


def hydra_references(hydra: Any = None) -> list[str]:
    """The strings of Hydra's own config (``hydra.run.dir: ${paths.log_dir}/...`` reads
    ``paths.log_dir``): of ``hydra`` (a launching process's ``config.hydra``: the configs it
    composes for its jobs have none), else of the running job's; none outside a Hydra run."""
    if hydra is None:
        if not HydraConfig.initialized():
            return []
        hydra = HydraConfig.get()
    return list(_strings(OmegaConf.to_container(hydra, resolve=False)))


def unknown_config_keys(cfg: DictConfig, references: Iterable[str] = ()) -> str | None:
    """A refusal message for a key of the composed config that nothing reads, else None: a
    root key outside :data:`ROOT_KEYS`, or a key of a group the driver reads by name
    (:data:`DRIVER_KEYS`) outside its keys, wherever it was set (a config file of
    ``--config-dir``, an experiment preset). A key an interpolation in a read value (or in
    ``references``: Hydra's own config) points to is read (``paths.mine`` through
    ``data.root: ${paths.mine}``). The command line's keys are refused first, by
    :func:`check_overrides`, in its words."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    read, _ = reads(cfg)
    for text in references:
        read.update(_REFERENCE.findall(text))
    read = _follow_references(read | ({"hydra"} & set(raw)), raw)

    def unread(key: str) -> bool:
        return not any(_covers(path, key) for path in read)

    for name, value in raw.items():
        if name not in ROOT_KEYS and unread(name):
            return (
                f"{name}={_shown(value)} is invalid: the config has no root key "
                f"{name}{_did_you_mean(name, ROOT_KEYS)}, and nothing reads it (results.json "
                "would record it, the run would not use it). Allowed root keys: "
                f"{', '.join(k for k in ROOT_KEYS if k != 'hydra')}. {LABEL_HINT}"
            )
    # A config file may hold W&B's options whatever logger a run picks (a preset's project).
    for group, known in {**DRIVER_KEYS, "logger": WANDB_LOGGER_KEYS}.items():
        options = raw.get(group)
        for name, value in options.items() if isinstance(options, dict) else ():
            if name not in known and unread(f"{group}.{name}"):
                return (
                    f"{group}.{name}={_shown(value)} is invalid: {group} has no key "
                    f"{name}{_did_you_mean(name, known, f'{group}.')}, and nothing reads it "
                    "(results.json would record it, the run would not use it). Allowed keys "
                    f"of {group}: {', '.join(known)}"
                )
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def result_config(cfg: DictConfig) -> dict[str, Any]:
    """The values of every read key that can change a job's numbers (for comparing jobs)."""
    read, _ = reads(cfg)
    values = plain(cfg)
    leaves: dict[str, Any] = {}
    for path in read:
        leaves.update(flatten(_lookup(values, path), f"{path}."))
    if "data.preprocess" in leaves:  # what the job does: auto is binarize or dequantize
        leaves["data.preprocess"] = resolved_preprocess(cfg)
    return {path: value for path, value in sorted(leaves.items()) if changes_results(path)}


def check_distinct(jobs: list[tuple[list[str], DictConfig]]) -> str | None:
    """A refusal message when two jobs (overrides, config) of a sweep compute the same
    thing, else None."""
    seen: dict[str, list[str]] = {}
    for overrides, cfg in jobs:
        fingerprint = json.dumps(result_config(cfg), sort_keys=True, default=str)
        if fingerprint in seen:
            first = seen[fingerprint]
            differ = sorted(set(overrides) ^ set(first))
            _, unread = reads(cfg)
            keys = dict.fromkeys(o.split("=")[0] for o in differ)  # each key once
            why = [f"{key} ({unread[key]})" for key in keys if key in unread]
            if why:
                reason = f"they differ only in keys that change no result: {'; '.join(why)}"
            else:
                reason = f"{', '.join(differ)} give equal values"
                if "data.preprocess=auto" in differ:
                    name = OmegaConf.select(cfg, "likelihood.name")
                    reason += (
                        f": data.preprocess=auto is {resolved_preprocess(cfg)} for "
                        f"likelihood={name}"
                    )
            return (
                f"the sweep's jobs [{' '.join(first)}] and [{' '.join(overrides)}] compute "
                f"the same thing ({reason}). Remove the repeated values from the sweep."
            )
        seen[fingerprint] = overrides
    return None
