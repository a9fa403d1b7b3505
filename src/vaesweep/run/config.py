"""The config tree and its validation, before any data are loaded or any step is taken: the
one module that checks a run's config.

The config tree ships inside the package (``vaesweep/conf``), so a wheel install finds it
from any directory. A user's own config directory extends it with Hydra's search path
(``--config-dir DIR`` adds groups, options and experiments; ``--config-name`` picks a
primary config of theirs that extends ``train``; docs/components.md).

Validation is split by who owns the options. The components a config selects by
``_target_`` (likelihood, β schedule, network) check their own options when they are
built (:mod:`vaesweep.model.components`); here they are built once, cheaply, on a dummy shape.
The driver's own groups (run keys, data, trainer and its budget, optimizer, eval, logger)
are checked by one small function each, with :func:`vaesweep.core.checks.require`; so are the
memory the model needs (:mod:`vaesweep.run.memory`) and whether W&B can be reached
(:mod:`vaesweep.run.loggers`). Every error names the key, the value and what is allowed.

Two checks need more than the config: :func:`check_training_split` runs once the data are
loaded (before the first step), and :func:`require_training` right after the fit: a run
whose fit took no optimisation step fails instead of recording the untrained model's test
metrics as a result.
"""

from __future__ import annotations

import datetime
import difflib
import inspect
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
)

from vaesweep.core.checks import ConfigError, invalid, is_int, is_number, require
from vaesweep.core.helpers import plain
from vaesweep.data.datasets import DATASETS, check_embedded_split
from vaesweep.data.download import IDX_SOURCES
from vaesweep.model import components
from vaesweep.model.components import OPTIMIZERS
from vaesweep.run import ranks
from vaesweep.run.effective import (
    check_overrides,
    hydra_references,
    resolved_preprocess,
    unknown_config_keys,
)
from vaesweep.run.loggers import check_wandb
from vaesweep.run.memory import DATA_SHAPES, check_memory

log = logging.getLogger("vaesweep")

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: The root config of the config tree (conf/train.yaml).
CONFIG_NAME = "train"

PREPROCESS = ("auto", "dequantize", "binarize", "scale")
CHECKPOINTS = ("last", "best")
LOGGERS = ("wandb", "csv", "none")
WANDB_MODES = ("offline", "online", "disabled")
#: What W&B refuses in a project name (wandb.Settings' validator; it raises only once the
#: run starts, inside the fit).
WANDB_PROJECT_FORBIDDEN = ("/", "\\", "#", "?", "%", ":")
WANDB_PROJECT_MAX = 128
# trainer.precision values under which Lightning autocasts (its MixedPrecision plugin).
MIXED_PRECISIONS = ("16-mixed", "bf16-mixed", "16", "bf16")
#: trainer.precision: the values Lightning's Trainer takes (its _PRECISION_INPUT; null is
#: 32-true). tests/test_bad_input.py holds the tuple to Lightning's own.
PRECISIONS = (
    "16-mixed", "bf16-mixed", "32-true", "64-true", "16-true", "bf16-true",
    "transformer-engine", "transformer-engine-float16", "64", "32", "16", "bf16", 64, 32, 16,
)  # fmt: skip
#: trainer.precision values under which Lightning casts the module's weights and buffers to
#: 16 bits (its HalfPrecision and TransformerEnginePrecision plugins): the decoder then
#: meets the float32 latent vaesweep computes its posterior in, and the running statistics
#: (optimal scale, GECO/PI state, the step tracker) would lose their precision. Refused.
HALF_WEIGHT_PRECISIONS = (
    "16-true",
    "bf16-true",
    "transformer-engine",
    "transformer-engine-float16",
)
#: trainer.profiler: the names Lightning's Trainer takes (lowercased) for its profilers.
PROFILERS = ("simple", "advanced", "pytorch", "xla")
#: Trainer arguments that Lightning takes as booleans (a string "off" would be truthy);
#: those in TRAINER_NULLABLE_BOOLS may also be null (Lightning's default then). The driver
#: reads enable_checkpointing and enable_progress_bar itself: true or false only.
TRAINER_BOOLS = (
    "enable_checkpointing", "enable_progress_bar", "enable_model_summary", "benchmark",
    "inference_mode", "use_distributed_sampler", "detect_anomaly", "barebones",
    "sync_batchnorm", "enable_autolog_hparams",
)  # fmt: skip
TRAINER_NULLABLE_BOOLS = ("enable_model_summary", "benchmark")
#: Trainer arguments vaesweep sets itself (run/driver.py): what to use instead.
TRAINER_SET_BY_VAESWEEP = {
    "logger": "logger=none|csv|wandb (vaesweep makes the job's loggers)",
    "callbacks": (
        "no key (vaesweep sets the Trainer's callbacks: checkpoints, image grids, progress)"
    ),
    "default_root_dir": "hydra.run.dir=DIR (hydra.sweep.dir=DIR for a sweep): a job's "
    "files go to its directory",
}
#: eval.n_images: images per row of reconstructions.png; samples.png holds n × n samples.
MAX_IMAGES = 64
#: numpy's seeds (and so Lightning's seed_everything) are 32-bit unsigned integers.
MAX_SEED = 2**32
#: eval.iwae_k: the test split is scored with k decoder passes per example.
MAX_IWAE_K = 100_000
#: Measured IWAE throughput (test examples × samples per second), default MLP, 2 CPU cores.
IWAE_RATE = 180_000


def likelihood_class(cfg: DictConfig) -> type:
    """The likelihood class the config selects (ConfigError naming the key if it cannot)."""
    try:
        return components.component_class("likelihood", plain(cfg.likelihood))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def resolve_preprocess(cfg: DictConfig) -> str:
    """The data preprocessing in force: ``auto`` means binarize for a likelihood on binary
    data (``data_kind = "binary"``, the Bernoulli), else dequantize."""
    likelihood_class(cfg)  # ConfigError naming the key when it cannot be imported
    return resolved_preprocess(cfg)


def validate_config(
    cfg: DictConfig,
    overrides: list[str] | None = None,
    in_job: bool = True,
    references: list[str] | None = None,
) -> None:
    """Check every value that would otherwise fail (or silently mislead) mid-run.

    ``overrides``: the command line's, each of which must change what the run computes
    (:mod:`vaesweep.run.effective`; a multirun checks its overrides once, for all its jobs).
    ``in_job``: False for a sweep's check of every job in the launching process, before any
    job runs: the checks that probe the W&B server (``logger.mode=online``) or import
    Lightning (the Trainer's argument names, the strategy and how the batch divides among
    its processes) are left to each job, so that a launcher whose jobs run in workers keeps
    Lightning out of the launching process. ``references``: the strings of Hydra's config
    (:func:`vaesweep.run.effective.hydra_references`), whose interpolations read keys too;
    default: the running job's.
    """
    try:
        _validate(cfg, overrides, in_job, references)
    except InterpolationResolutionError as e:  # ${nope}, ${oc.env:UNSET}, ~beta
        key = _referring(cfg, e.full_key)
        through = f" (read through {e.full_key})" if key != e.full_key else ""
        raise ConfigError(
            f"{key}={_raw(cfg, key)!r} is invalid{through}: {_first_line(e)}: a key or "
            "variable it refers to is not there (a key removed with ~KEY? an unset "
            "environment variable?); allowed: a value, or an interpolation that resolves "
            "(${KEY} of a key in the config, ${oc.env:VAR,DEFAULT})"
        ) from None
    except (ConfigAttributeError, ConfigKeyError) as e:  # ~seed: a key the run reads
        raise ConfigError(
            f"{e.full_key} is invalid: {_first_line(e)}: the run reads this key (removed "
            f"with ~{e.full_key}?); allowed: the key back, or {e.full_key}=VALUE"
        ) from None


_PLAIN_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w-]*(?:\.[\w-]+)*)\}")


def _first_line(error: Exception) -> str:
    message = getattr(error, "msg", None) or str(error)
    return str(message).splitlines()[0]


def _raw(cfg: DictConfig, key: str) -> Any:
    """The value of ``key`` as written (an interpolation left unresolved); None if absent."""
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _referring(cfg: DictConfig, key: str) -> str:
    """The key whose own value does not resolve, following ``key``'s plain references
    (``beta_schedule.beta: ${beta}`` → ``beta`` when ``beta=${nope}``)."""
    seen = {key}
    while True:
        match = _PLAIN_REFERENCE.fullmatch(str(_raw(cfg, key)))
        ref = match.group(1) if match else None
        if ref is None or ref in seen or _raw(cfg, ref) is None:
            return key
        seen.add(ref)
        key = ref


def _validate(
    cfg: DictConfig, overrides: list[str] | None, in_job: bool, references: list[str] | None
) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))  # (a reference that does not resolve: above)
    if missing:
        raise ConfigError(
            f"{', '.join(missing)}: required but not set (???); pass e.g. {missing[0]}=VALUE"
        )
    if overrides:
        refusal = check_overrides(overrides, [cfg])
        if refusal:
            raise ConfigError(refusal)
    # A key of a config file (--config-dir, an experiment) that nothing reads.
    refusal = unknown_config_keys(cfg, hydra_references() if references is None else references)
    if refusal:
        raise ConfigError(refusal)
    check_run_keys(cfg)
    check_components(cfg)
    check_trainer(cfg, in_job)  # first: check_data divides the batch among its devices
    check_data(cfg, in_job)
    check_cpu_devices(cfg.trainer, in_job)
    check_optimizer(cfg)
    check_eval(cfg)
    check_logger(cfg)
    check_training_budget(cfg.trainer)
    check_memory(cfg)
    if in_job:
        check_wandb(cfg)


def check_run_keys(cfg: DictConfig) -> None:
    require(is_number(cfg.beta) and cfg.beta >= 0, "beta", cfg.beta, "a finite number ≥ 0")
    require(
        is_int(cfg.seed) and 0 <= cfg.seed < MAX_SEED,
        "seed",
        cfg.seed,
        f"an integer in [0, {MAX_SEED - 1}] (2**32 - 1: numpy's seeds are 32-bit)",
    )
    require(
        is_int(cfg.n_samples) and cfg.n_samples >= 1, "n_samples", cfg.n_samples, "an integer ≥ 1"
    )
    require(
        cfg.threads is None or (is_int(cfg.threads) and cfg.threads >= 1),
        "threads",
        cfg.threads,
        "null (automatic) or an integer ≥ 1",
    )
    require(isinstance(cfg.compile, bool), "compile", cfg.compile, "true or false")
    check_sweep_keys(cfg)


def check_sweep_keys(cfg: DictConfig) -> None:
    """The ``sweep`` keys, which are read before a job's config is validated (by the claim
    of its directory and Hydra's ``output_subdir``): also checked by the multirun's
    callback before any job starts."""
    s = cfg.sweep
    timeout = s.get("claim_timeout_s")
    require(
        is_number(timeout) and timeout > 0,
        "sweep.claim_timeout_s",
        timeout,
        "a number of seconds > 0",
    )
    require(
        isinstance(s.get("rerun_failed"), bool),
        "sweep.rerun_failed",
        s.get("rerun_failed"),
        "true or false",
    )


def check_components(cfg: DictConfig) -> None:
    """Builds each selected component once (the likelihood for the dataset's shape, a dummy
    1×4×4 one for a dataset whose shape is not known without loading it): its class and its
    constructor check its options."""
    name = cfg.data.name
    shape = DATA_SHAPES.get(name, (1, 4, 4)) if isinstance(name, str) else (1, 4, 4)
    for group, context in (("model", ()), ("likelihood", (shape,)), ("beta_schedule", ())):
        try:
            components.checked_build(group, plain(cfg[group]), *context)
        except ValueError as e:  # any problem, a user's constructor raising a TypeError too
            raise ConfigError(str(e)) from e.__cause__


def check_data(cfg: DictConfig, with_lightning: bool = True) -> None:
    d = cfg.data
    name = d.name
    require(
        isinstance(name, str) and name in DATASETS,
        "data.name",
        name,
        f"one of {', '.join(DATASETS)} (vaesweep.data.DATASETS, where a dataset of your own "
        "is registered)",
    )
    for key in ("val_size", "test_size"):
        size = d[key]
        require(
            size is None or (is_int(size) and size >= 1),
            f"data.{key}",
            size,
            "null (the dataset's default split) or an integer ≥ 1 (at most the examples the "
            "other splits leave)",
        )
    check_embedded_split(name, d.val_size, d.test_size)  # others: when loaded
    if d.test_size is not None and name in IDX_SOURCES:
        raise invalid(
            "data.test_size",
            d.test_size,
            f"null: data={name} is tested on its official test set (its t10k files)",
        )
    for key, value in (
        ("data.download", d.get("download", False)),
        ("likelihood.allow_nonbinary", cfg.likelihood.get("allow_nonbinary", False)),
    ):  # a quoted 'false' would be truthy
        require(isinstance(value, bool), key, value, "true or false")
    require(d.preprocess in PREPROCESS, "data.preprocess", d.preprocess, f"one of {PREPROCESS}")
    for key in ("batch_size", "eval_batch_size"):
        require(is_int(d[key]) and d[key] > 0, f"data.{key}", d[key], "an integer > 0")
    preprocess = resolve_preprocess(cfg)
    name = cfg.likelihood.get("name")
    if (
        likelihood_class(cfg).data_kind == "binary"
        and preprocess != "binarize"
        and not cfg.likelihood.get("allow_nonbinary")
    ):
        raise ConfigError(
            f"data.preprocess={preprocess!r} with likelihood={name} is invalid: it is a "
            "likelihood only on binary data (data_kind='binary'). Allowed: data.preprocess=binarize (or auto), or opt in with "
            "likelihood.allow_nonbinary=true (no bits/dim is reported then)."
        )
    if likelihood_class(cfg).data_kind == "continuous" and preprocess == "binarize":
        raise invalid(
            "data.preprocess",
            preprocess,
            f"dequantize, scale or auto with likelihood={name}: it is a density on "
            "continuous data (data_kind='continuous'), not a likelihood of binarised data "
            "(0/1 pixels); for binarised data use likelihood=bernoulli",
        )
    # Strategy, processes and the global batch (again at setup, from the Trainer itself).
    # It reads Lightning's strategy registry: not in a parallel sweep's launching process.
    problem = ranks.config_problem(cfg.trainer, d.batch_size) if with_lightning else None
    if problem:
        raise ConfigError(problem)


def _unknown_keys(
    group: str, keys: Any, target: Any, what: str, exclude: tuple[str, ...] = ()
) -> None:
    """ConfigError for a key of ``group`` that ``target`` (a class, its constructor's
    parameters) does not take, naming the nearest allowed one, before any data are loaded.
    ``exclude``: parameters that are not allowed keys (set by vaesweep itself)."""
    allowed = [
        n
        for n, p in inspect.signature(target).parameters.items()
        if n not in ("self", "params", *exclude)
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    for key in keys:
        if key == "name" or key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f" (did you mean {group}.{close[0]}?)" if close else ""
        raise ConfigError(
            f"{group}.{key} is invalid: {what} takes no argument {key!r}{hint}. Allowed: "
            f"{', '.join(allowed)}"
        )


def check_trainer(cfg: DictConfig, with_lightning: bool = True) -> None:
    t = cfg.trainer
    for key, instead in TRAINER_SET_BY_VAESWEEP.items():
        if key in t:  # Lightning: "Trainer() got multiple values for keyword argument"
            raise ConfigError(
                f"trainer.{key}={plain(t[key])!r} is invalid: vaesweep sets the Trainer's "
                f"{key} itself; allowed: {instead}"
            )
    if with_lightning:  # imports Lightning (2 s): not in a parallel sweep's launching process
        from lightning import Trainer

        _unknown_keys(
            "trainer",
            list(t.keys()),
            Trainer.__init__,
            "Lightning's Trainer",
            exclude=tuple(TRAINER_SET_BY_VAESWEEP),
        )
        _check_registered(t)
    _check_devices(t, with_lightning)
    nodes = t.get("num_nodes", 1)
    require(is_int(nodes) and nodes >= 1, "trainer.num_nodes", nodes, "an integer ≥ 1")
    precision = t.get("precision")
    if not (
        precision is None
        or (isinstance(precision, str) and precision in PRECISIONS)
        or (is_int(precision) and precision in PRECISIONS)
    ):
        usable = list(dict.fromkeys(str(p) for p in PRECISIONS if p not in HALF_WEIGHT_PRECISIONS))
        hint = difflib.get_close_matches(str(precision).lower(), usable, n=1)
        raise invalid(
            "trainer.precision",
            precision,
            f"null (32-true) or one of {', '.join(usable)}"
            + (f"; did you mean {hint[0]}?" if hint else ""),
        )
    require(
        precision not in HALF_WEIGHT_PRECISIONS,
        "trainer.precision",
        precision,
        "a precision that keeps float32 weights: 32-true, 64-true, or bf16-mixed / 16-mixed "
        "for 16-bit compute (under 16-true, bf16-true and transformer-engine* Lightning casts "
        "the weights and buffers to 16 bits, which vaesweep's float32 posterior, running "
        "scale statistics and β controllers do not support)",
    )
    sanity = t.get("num_sanity_val_steps")
    require(
        sanity is None or (is_int(sanity) and sanity >= -1),
        "trainer.num_sanity_val_steps",
        sanity,
        "null (Lightning's 2), an integer ≥ 0 (validation batches before training) or -1 (all)",
    )
    reload = t.get("reload_dataloaders_every_n_epochs", 0)
    require(
        is_int(reload) and reload >= 0,
        "trainer.reload_dataloaders_every_n_epochs",
        reload,
        "an integer ≥ 0 (0: never)",
    )
    profiler = t.get("profiler")
    require(
        profiler is None or (isinstance(profiler, str) and profiler.lower() in PROFILERS),
        "trainer.profiler",
        plain(profiler),
        f"null (none) or one of {', '.join(PROFILERS)}",
    )
    for key in TRAINER_BOOLS:  # a string ("off", 'false') would be truthy
        nullable = key in TRAINER_NULLABLE_BOOLS
        _require_switch(f"trainer.{key}", t.get(key, False), nullable, " (Lightning's default)")
    require(
        t.get("barebones", False) is False,
        "trainer.barebones",
        t.get("barebones"),
        "false: Lightning's barebones Trainer takes no callbacks, logger or profiler, which "
        "every vaesweep run has (its checkpoints, stop handling, results and metrics)",
    )
    deterministic = t.get("deterministic")
    require(
        deterministic in (None, "warn") or isinstance(deterministic, bool),
        "trainer.deterministic",
        deterministic,
        "true, false, warn or null",
    )
    _check_val_interval(t)
    for key, null in (
        ("check_val_every_n_epoch", "null (validate by trainer.val_check_interval batches)"),
        ("log_every_n_steps", "null"),
    ):
        every = t.get(key)
        require(
            every is None or (is_int(every) and every >= 1),
            f"trainer.{key}",
            every,
            f"{null} or an integer ≥ 1",
        )
    require(
        is_int(t.accumulate_grad_batches) and t.accumulate_grad_batches >= 1,
        "trainer.accumulate_grad_batches",
        t.accumulate_grad_batches,
        "an integer ≥ 1",
    )
    require(
        t.gradient_clip_val is None
        or (is_number(t.gradient_clip_val) and t.gradient_clip_val >= 0),
        "trainer.gradient_clip_val",
        t.gradient_clip_val,
        "null (no clipping) or a finite number ≥ 0",
    )
    require(
        t.gradient_clip_algorithm in (None, "norm", "value"),
        "trainer.gradient_clip_algorithm",
        t.gradient_clip_algorithm,
        "null (= norm), norm or value",
    )


def _check_registered(t: DictConfig) -> None:
    """``trainer.accelerator`` and ``trainer.strategy`` against Lightning's registries (the
    names its Trainer takes; Lightning lowercases a strategy's name, vaesweep does not). A
    registered strategy vaesweep does not train with is refused by check_data (ranks)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    accelerators = ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]
    strategies = ["auto", *StrategyRegistry.available_strategies()]
    supported = [  # the allowed ones named, without the ddp names' variants
        name
        for name in strategies[1:]
        if StrategyRegistry[name]["strategy"].__name__ in ranks.SUPPORTED_STRATEGIES
        and "find_unused" not in name
    ]
    for key, names, shown in (
        ("accelerator", accelerators, ", ".join(accelerators)),
        (
            "strategy",
            strategies,
            f"auto, {', '.join(supported)} (and the ddp names' "
            "_find_unused_parameters_true/false variants)",
        ),
    ):
        value = t.get(key, "auto")
        if isinstance(value, str) and value in names:
            continue
        hint = difflib.get_close_matches(str(value).lower(), names, n=1)
        raise invalid(
            f"trainer.{key}",
            plain(value),
            f"one of {shown}" + (f"; did you mean {hint[0]}?" if hint else ""),
        )


def _check_val_interval(t: DictConfig) -> None:
    """``trainer.val_check_interval``: batches, a fraction of an epoch (validation every
    epoch only), or a time (Lightning 2.6: the same forms as trainer.max_time)."""
    interval = t.get("val_check_interval")
    every = t.get("check_val_every_n_epoch")
    if isinstance(interval, str | dict | DictConfig):
        seconds = duration_seconds("trainer.val_check_interval", interval, _LOOSE_DURATION)
        require(
            seconds > 0,
            "trainer.val_check_interval",
            plain(interval),
            "a positive duration (DD:HH:MM:SS or a mapping such as {minutes: 5})",
        )
        return
    if isinstance(interval, float) and 0.0 < interval <= 1.0 and every is None:
        raise invalid(
            "trainer.val_check_interval",
            interval,
            "an integer ≥ 1 (training batches between validations) or a duration "
            "(DD:HH:MM:SS) with trainer.check_val_every_n_epoch=null (validation counted "
            "across epochs); a fraction of an epoch needs trainer.check_val_every_n_epoch ≥ 1",
        )
    require(
        interval is None
        or (is_int(interval) and interval >= 1)
        or (isinstance(interval, float) and 0.0 < interval <= 1.0),
        "trainer.val_check_interval",
        interval,
        "null (once per epoch), an integer ≥ 1 (training batches between validations), a "
        "fraction of an epoch in (0, 1], or a duration (DD:HH:MM:SS or a mapping such as "
        "{minutes: 5})",
    )


def _devices_ok(devices: Any) -> bool:
    """Whether Lightning takes ``trainer.devices``: how many (≥ 1, or -1: all), auto, or
    which (a list of ids, or a string of them with a comma: "0,1", "1,")."""
    if is_int(devices):
        return devices >= 1 or devices == -1
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            ids = [part.strip() for part in text.split(",")]
            return all(i.isdigit() for i in ids[:-1]) and (ids[-1] == "" or ids[-1].isdigit())
        return text in ("auto", "-1") or (text.isdigit() and int(text) >= 1)
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        ids = list(devices)
        return bool(ids) and all(is_int(i) and i >= 0 for i in ids) and len(set(ids)) == len(ids)
    return False


def _cpu_devices_ok(devices: Any) -> bool:
    """Whether Lightning's CPUAccelerator takes ``trainer.devices``: how many processes
    (≥ 1) or auto; -1 (all) and device ids are GPU forms."""
    if is_int(devices):
        return devices >= 1
    return isinstance(devices, str) and (
        devices.strip() == "auto" or (devices.strip().isdigit() and int(devices) >= 1)
    )


def _check_devices(t: DictConfig, here: bool) -> None:
    """``trainer.devices`` and ``trainer.accelerator``; ``here``: the process that trains (a
    GPU asked for must be visible to it, and auto is the CPU where none is; a sweep's
    launching process may have none)."""
    devices = t.get("devices", "auto")
    require(
        _devices_ok(devices),
        "trainer.devices",
        plain(devices),
        "an integer ≥ 1 (how many), auto, or on GPUs -1 (all) or the device ids: a list such "
        'as [0, 1] or a string with a comma ("0,1")',
    )
    accelerator = str(t.get("accelerator") or "auto").lower()
    if not here or accelerator not in ("gpu", "cuda", "mps"):
        return
    # device_count, not is_available: it asks NVML and initialises no CUDA in this process,
    # whose fork-based DDP (ddp_fork, ddp_notebook) would fail once CUDA is initialised.
    cuda, mps = torch.cuda.device_count() > 0, torch.backends.mps.is_available()
    if (
        (accelerator == "cuda" and not cuda)
        or (accelerator == "mps" and not mps)
        or not (cuda or mps)
    ):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = "" if visible is None else f", CUDA_VISIBLE_DEVICES={visible!r}"
        raise ConfigError(
            f"trainer.accelerator={t.accelerator!r} is invalid here: this process sees no such "
            f"device (torch {torch.__version__}{seen}); allowed here: cpu or auto "
            "(trainer=default; trainer=gpu asks for a GPU)"
        )


def check_cpu_devices(t: DictConfig, here: bool) -> None:
    """``trainer.devices`` on the CPU (``trainer.accelerator=cpu``, or ``auto`` in a process
    that sees no GPU; ``here``: the process that trains, as for :func:`_check_devices`):
    Lightning's CPUAccelerator takes a count or auto, and raises a TypeError at the Trainer
    for -1 (all) and device ids. After check_data, whose refusal of a batch that does not
    divide among the devices is named first."""
    devices = t.get("devices", "auto")
    accelerator = str(t.get("accelerator") or "auto").lower()
    if accelerator != "cpu" and not (here and accelerator == "auto"):
        return  # a sweep's jobs may run where there is a GPU
    if accelerator == "auto" and (
        torch.cuda.device_count() > 0 or torch.backends.mps.is_available()
    ):
        return
    why = f"trainer.accelerator={t.get('accelerator')}"
    why += "" if accelerator == "cpu" else ", and this process sees no GPU"
    require(
        _cpu_devices_ok(devices),
        "trainer.devices",
        plain(devices),
        f"on the CPU ({why}) an integer ≥ 1 (how many processes) or auto: -1 (all) and "
        "device ids are for GPUs",
    )


def _require_switch(key: str, value: Any, nullable: bool, null_is: str = "") -> None:
    """A switch is true or false (or null where ``nullable``): a string such as "off" or
    'false' would be truthy."""
    require(
        isinstance(value, bool) or (nullable and value is None),
        key,
        value,
        f"true, false or null{null_is}" if nullable else "true or false",
    )


def check_optimizer(cfg: DictConfig) -> None:
    o, t = cfg.optimizer, cfg.trainer
    require(o.name in OPTIMIZERS, "optimizer.name", o.name, f"one of {list(OPTIMIZERS)}")
    cls = OPTIMIZERS[o.name]
    _unknown_keys("optimizer", list(o.keys()), cls.__init__, f"{cls.__module__}.{cls.__name__}")
    require(is_number(o.lr) and o.lr > 0, "optimizer.lr", o.lr, "a finite number > 0")
    fused = o.get("fused", False)
    require(isinstance(fused, bool), "optimizer.fused", fused, "true or false")
    if fused and t.gradient_clip_val and str(t.precision) in MIXED_PRECISIONS:
        # Lightning would raise at the first optimisation step, after data, model and loggers.
        raise ConfigError(
            f"trainer.gradient_clip_val={t.gradient_clip_val!r} with "
            f"trainer.precision={t.precision!r} is invalid with optimizer.fused=true: a fused "
            "optimiser unscales the mixed-precision gradients inside its step, so they cannot "
            "be clipped before it. Allowed: optimizer.fused=false, no clipping, or a "
            "precision without autocast (e.g. 32-true)"
        )
    require(
        is_number(o.get("weight_decay", 0.0)) and o.get("weight_decay", 0.0) >= 0,
        "optimizer.weight_decay",
        o.get("weight_decay"),
        "a finite number ≥ 0",
    )
    betas = o.get("betas")
    if betas is not None:
        betas = list(betas) if OmegaConf.is_list(betas) or isinstance(betas, list) else betas
        require(
            isinstance(betas, list)
            and len(betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in betas),
            "optimizer.betas",
            betas,
            "two numbers in [0, 1), e.g. [0.9, 0.999]",
        )
    _check_optimizer_arguments(cls, plain(o))


def _check_optimizer_arguments(cls: type, options: dict[str, Any]) -> None:
    """The optimizer's other arguments by the type of their default in its signature (a
    bool default takes true or false: "off" would be truthy; a number default a finite
    number), then the optimizer built on a dummy parameter, whose own refusals (eps < 0,
    foreach with fused) would otherwise come in configure_optimizers or its first step."""
    options = {k: v for k, v in options.items() if k != "name"}
    parameters = inspect.signature(cls.__init__).parameters
    for key, value in options.items():
        parameter = parameters.get(key)
        if parameter is None or key in ("lr", "betas", "weight_decay", "fused"):
            continue  # checked above
        default, annotation = parameter.default, str(parameter.annotation)
        if isinstance(default, bool) or (default is None and "bool" in annotation):
            _require_switch(f"optimizer.{key}", value, default is None)
        elif isinstance(default, int | float):
            require(is_number(value), f"optimizer.{key}", value, "a finite number")
    if "betas" in options and isinstance(options["betas"], list):
        options["betas"] = tuple(options["betas"])  # as the module builds it
    try:
        cls([torch.zeros(1, requires_grad=True)], **options)
    except (ValueError, RuntimeError, TypeError) as e:
        # The arguments without which it builds are the ones it refuses.
        blamed = [k for k in options if _builds(cls, {o: v for o, v in options.items() if o != k})]
        blamed = blamed or list(options)
        given = " with ".join(f"optimizer.{k}={options[k]!r}" for k in blamed)
        raise ConfigError(
            f"{given} is invalid: {cls.__module__}.{cls.__name__} refuses "
            f"{'it' if len(blamed) == 1 else 'them'} ({str(e).splitlines()[0]}); allowed: "
            f"values {cls.__name__} accepts (torch's documentation of {cls.__name__})"
        ) from None


def _builds(cls: type, options: dict[str, Any]) -> bool:
    try:
        cls([torch.zeros(1, requires_grad=True)], **options)
    except (ValueError, RuntimeError, TypeError):
        return False
    return True


def check_test_settings(*, checkpoint: Any, iwae_k: Any, iwae_chunk: Any) -> None:
    """``eval.checkpoint``, ``eval.iwae_k`` and ``eval.iwae_chunk``, refused in the config's
    own words: a run's config, and ``vaesweep evaluate``'s options."""
    require(checkpoint in CHECKPOINTS, "eval.checkpoint", checkpoint, f"one of {CHECKPOINTS}")
    require(is_int(iwae_k) and iwae_k >= 1, "eval.iwae_k", iwae_k, "an integer ≥ 1")
    require(
        iwae_chunk is None or (is_int(iwae_chunk) and iwae_chunk >= 1),
        "eval.iwae_chunk",
        iwae_chunk,
        "null or an integer ≥ 1",
    )
    if iwae_k > MAX_IWAE_K:
        hours = 1000 * iwae_k / IWAE_RATE / 3600
        raise invalid(
            "eval.iwae_k",
            iwae_k,
            f"an integer in [1, {MAX_IWAE_K}]: the test split is scored with k decoder passes "
            f"per example; k={iwae_k} takes ~{hours:,.1f} h per 1000 test examples at the "
            f"~{IWAE_RATE // 1000}k examples×samples/s measured for the default MLP on 2 CPU "
            "cores",
        )


def check_eval(cfg: DictConfig) -> None:
    e = cfg.eval
    check_test_settings(checkpoint=e.checkpoint, iwae_k=e.iwae_k, iwae_chunk=e.iwae_chunk)
    require(
        e.checkpoint == "last" or cfg.trainer.enable_checkpointing,
        "eval.checkpoint",
        e.checkpoint,
        "'last' when trainer.enable_checkpointing=false (no best checkpoint is kept)",
    )
    if e.checkpoint == "best":
        _require_validation(cfg.trainer)
    require(
        is_int(e.n_images) and 1 <= e.n_images <= MAX_IMAGES,
        "eval.n_images",
        e.n_images,
        f"an integer in [1, {MAX_IMAGES}] (samples.png holds n_images² samples)",
    )
    threshold = e.active_units_threshold
    require(
        is_number(threshold) and threshold >= 0,
        "eval.active_units_threshold",
        threshold,
        "a finite number ≥ 0 (a variance of the posterior means)",
    )


def never_validates(t: DictConfig) -> str | None:
    """The trainer settings (``t``: the config's trainer) under which a fit never validates,
    as ``key=value`` text, else None."""
    limit, every = t.get("limit_val_batches"), t.get("check_val_every_n_epoch")
    max_epochs = t.get("max_epochs")
    if t.get("fast_dev_run"):
        return None
    if limit == 0:
        return f"trainer.limit_val_batches={limit}"
    if is_int(every) and is_int(max_epochs) and 0 < max_epochs < every:
        return f"trainer.check_val_every_n_epoch={every} > trainer.max_epochs={max_epochs}"
    return None


def _require_validation(t: DictConfig) -> None:
    """eval.checkpoint=best: the best checkpoint is the one with the best validation ELBO,
    so the fit must validate. Refused where the config says it will not; a fit that ends
    before its first validation all the same (max_steps, max_time) is tested on its last
    weights and results.json says so (``tested_checkpoint``)."""
    why = never_validates(t)
    if why is not None:
        raise invalid(
            "eval.checkpoint",
            "best",
            f"'last' with {why}: the best checkpoint is chosen by the validation ELBO and "
            "this fit never validates",
        )


def _is_text_list(value: Any) -> bool:
    return (OmegaConf.is_list(value) or isinstance(value, list)) and all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in value
    )


def check_labels(cfg: DictConfig) -> None:
    """``label.note`` (text) and ``label.tags`` (a list), which results.json and W&B record."""
    label = cfg.get("label") or {}
    note, tags = label.get("note"), label.get("tags") or []
    require(note is None or isinstance(note, str), "label.note", note, "null or text (quote it)")
    require(_is_text_list(tags), "label.tags", tags, "a list, e.g. label.tags=[ablation,v2]")


def check_logger(cfg: DictConfig) -> None:
    require(cfg.logger.name in LOGGERS, "logger.name", cfg.logger.name, f"one of {LOGGERS}")
    check_labels(cfg)
    if cfg.logger.name == "wandb":
        lg = cfg.logger
        # W&B's own check of these comes after the data are loaded, naming no key.
        require(isinstance(lg.project, str) and lg.project, "logger.project", lg.project, "text")
        bad = [c for c in WANDB_PROJECT_FORBIDDEN if c in lg.project]
        require(
            not bad and len(lg.project) <= WANDB_PROJECT_MAX,
            "logger.project",
            lg.project,
            f"a W&B project name: at most {WANDB_PROJECT_MAX} characters, none of "
            f"{' '.join(WANDB_PROJECT_FORBIDDEN)}"
            + (
                " (an entity/project pair: logger.entity=ENTITY logger.project=PROJECT)"
                if "/" in bad
                else ""
            ),
        )
        entity = lg.get("entity")
        require(entity is None or isinstance(entity, str), "logger.entity", entity, "null or text")
        tags = lg.get("tags") or []
        require(_is_text_list(tags), "logger.tags", tags, "a list, e.g. logger.tags=[ablation,v2]")
        mode = cfg.logger.mode
        require(mode in WANDB_MODES, "logger.mode", mode, f"one of {WANDB_MODES}")
        # A quoted 'false' would be truthy: switches are booleans.
        for key in ("sweep_summary", "sweep_figures", "log_images", "offline_fallback"):
            value = cfg.logger.get(key, False)
            require(isinstance(value, bool), f"logger.{key}", value, "true or false")


# --- training budget -----------------------------------------------------------------------------


def _limit_ok(value: Any) -> bool:
    """Lightning's limit_*_batches: None, a number of batches or a fraction of them."""
    if value is None or (is_int(value) and value >= 0):
        return True
    return is_number(value) and 0.0 <= value <= 1.0


#: trainer.max_time as a string: what Lightning's Timer parses (days, then two digits each).
_DURATION = re.compile(r"(\d+):(\d\d):(\d\d):(\d\d)")
#: trainer.val_check_interval as a string: Lightning's own parser takes any digits.
_LOOSE_DURATION = re.compile(r"(\d+):(\d+):(\d+):(\d+)")
#: trainer.max_time as a mapping: the keyword arguments of datetime.timedelta.
_DURATION_UNITS = ("weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds")


#: datetime.timedelta's limit, which Lightning's Timer builds from trainer.max_time.
MAX_DURATION_DAYS = datetime.timedelta.max.days


def max_time_seconds(value: Any) -> float | None:
    """``trainer.max_time`` in seconds (None when unset): "DD:HH:MM:SS" or a mapping of
    :class:`datetime.timedelta`'s units, the forms Lightning's Timer takes. ConfigError for
    any other value (Lightning would refuse it after the data load, or fail at the first step
    of its timer without naming the key)."""
    return None if value is None else duration_seconds("trainer.max_time", value)


def duration_seconds(key: str, value: Any, pattern: re.Pattern = _DURATION) -> float:
    """A duration in seconds, as Lightning reads ``trainer.max_time`` and (Lightning 2.6)
    a time-based ``trainer.val_check_interval``: "DD:HH:MM:SS" or a mapping of
    :class:`datetime.timedelta`'s units, at most timedelta's limit; ConfigError naming
    ``key`` for any other value."""
    allowed = 'null, "DD:HH:MM:SS" (e.g. 00:12:00:00) or a mapping such as {hours: 12}'
    if isinstance(value, str):
        match = pattern.fullmatch(value.strip())
        require(match is not None, key, value, allowed)
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        units = {"days": days, "hours": hours, "minutes": minutes, "seconds": seconds}
    elif isinstance(value, dict | DictConfig):
        units = plain(value)
        require(
            set(units) <= set(_DURATION_UNITS) and all(is_number(v) for v in units.values()),
            key,
            units,
            f"{allowed}, whose keys are among {', '.join(_DURATION_UNITS)} and whose values "
            "are numbers",
        )
    else:
        raise invalid(key, value, allowed)
    try:
        return datetime.timedelta(**units).total_seconds()
    except OverflowError:  # Lightning's Timer would raise it at its start, naming no key
        raise invalid(
            key, value, f"a duration of at most {MAX_DURATION_DAYS} days (datetime.timedelta)"
        ) from None


def check_training_budget(t: DictConfig) -> None:
    """Types of the trainer's budget keys, and budgets that train nothing or never stop: a
    run that takes no optimisation step would test (and record) an untrained model."""
    require(
        t.max_epochs is None or (is_int(t.max_epochs) and t.max_epochs >= -1),
        "trainer.max_epochs",
        t.max_epochs,
        "an integer ≥ 1 (or -1: no limit, with trainer.max_steps or trainer.max_time)",
    )
    require(
        is_int(t.max_steps) and t.max_steps >= -1,
        "trainer.max_steps",
        t.max_steps,
        "an integer ≥ 1, or -1 (no limit)",
    )
    for key in ("min_epochs", "min_steps"):
        require(
            t[key] is None or (is_int(t[key]) and t[key] >= 0),
            f"trainer.{key}",
            t[key],
            "null or an integer ≥ 0",
        )
    for low, high in (("min_epochs", "max_epochs"), ("min_steps", "max_steps")):
        lo, hi = t[low], t[high]
        if is_int(lo) and is_int(hi) and hi >= 0 and lo > hi:  # -1: no limit
            raise invalid(
                f"trainer.{low}",
                lo,
                f"at most trainer.{high}={hi}: training stops at trainer.{high}, so a "
                f"larger trainer.{low} would be ignored",
            )
    limits = ("limit_train_batches", "limit_val_batches", "limit_test_batches")
    for key in (*limits, *(["limit_predict_batches"] if "limit_predict_batches" in t else [])):
        require(
            _limit_ok(t[key]),
            f"trainer.{key}",
            t[key],
            "null (all), an integer ≥ 1 (batches) or a fraction in (0, 1]",
        )
    overfit = t.get("overfit_batches", 0.0)
    require(
        overfit is not None and _limit_ok(overfit),
        "trainer.overfit_batches",
        overfit,
        "0 (off), an integer ≥ 1 (batches) or a fraction in (0, 1]",
    )
    fast = t.fast_dev_run
    require(
        isinstance(fast, bool) or (is_int(fast) and fast >= 0),
        "trainer.fast_dev_run",
        fast,
        "true, false or a number of batches ≥ 1",
    )
    untrained = "a run must take at least one optimisation step (its test metrics would be "
    untrained += "those of the randomly initialised model)"
    if fast:  # Lightning's debug run: one batch (or N) of each split, whatever the limits
        return
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        require(t[key] != 0, f"trainer.{key}", t[key], f"a value other than 0: {untrained}")
    seconds = max_time_seconds(t.max_time)
    require(
        seconds is None or seconds > 0,
        "trainer.max_time",
        t.max_time,
        f"null or a positive duration (DD:HH:MM:SS): {untrained}",
    )
    require(
        t.limit_test_batches != 0,
        "trainer.limit_test_batches",
        t.limit_test_batches,
        "a value other than 0: a run is scored on its test split",
    )
    if t.max_epochs == -1 and t.max_steps == -1 and seconds is None:
        raise invalid(
            "trainer.max_epochs",
            -1,
            "-1 (no epoch limit) only with trainer.max_steps or trainer.max_time: this run "
            "would train forever",
        )
    if t.max_epochs is None and t.max_steps == -1 and seconds is None:
        raise invalid(
            "trainer.max_epochs",
            None,
            "an integer ≥ 1, or null (Lightning's default) only with trainer.max_steps or "
            "trainer.max_time: alone, Lightning would train 1000 epochs",
        )


def require_training(trainer: Any, strategy: str = "auto") -> None:
    """Raises NothingTrained when a fit ended without a single optimisation step (stopped
    by trainer.max_time before the first batch, say); warns about fast_dev_run metrics.
    ``strategy``: the name the Trainer was given.

    A spawned data-parallel fit (``ddp_spawn``, ``ddp_fork``) trains in child processes and
    this process's ``global_step`` stays 0: there the last checkpoint the children wrote is
    the evidence (with checkpoints off, this process cannot tell, and nothing is raised)."""
    spawned = ranks.start_method(trainer, strategy) not in (None, "popen")
    if trainer.global_step == 0 and spawned:
        ckpt = trainer.checkpoint_callback
        if ckpt is None or getattr(ckpt, "dirpath", None) is None:
            return
        if (Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}").exists():
            return
    if trainer.global_step == 0:
        raise NothingTrained(
            "training ended after 0 optimisation steps (trainer.max_epochs="
            f"{trainer.max_epochs}, max_steps={trainer.max_steps}, "
            f"limit_train_batches={trainer.limit_train_batches}; trainer.max_time can stop "
            "a fit before its first batch): the model is untrained, so no metrics are "
            "recorded. Give the run a training budget."
        )
    if trainer.fast_dev_run:
        log.warning(
            "trainer.fast_dev_run: one batch of each split; the metrics check that the run "
            "works, they are not a result (vaesweep collect lists the run as fast_dev_run, "
            "outside aggregates and figures)"
        )


class NothingTrained(RuntimeError):
    """The fit ended without a single optimisation step."""


def check_training_split(cfg: DictConfig, data: Any, world_size: int = 1) -> None:
    """Refuses a global batch larger than the training split (``data``: the loaded
    ``VAEDataModule``): every step would see the whole split, not a batch of it. Then the
    trainer's batch limits against the batches each split has (``world_size`` processes):
    :func:`check_batch_limits`."""
    n_train = int(data.info["sizes"]["train"])
    require(
        cfg.data.batch_size <= n_train,
        "data.batch_size",
        cfg.data.batch_size,
        f"at most the {n_train} examples of the training split of data={cfg.data.name}",
    )
    check_batch_limits(cfg, data.info["sizes"], data.test_examples, world_size)


def _batches(examples: int, batch_size: int, world_size: int) -> int:
    """Batches per epoch of the process with the fewest examples (vaesweep.data.loader:
    each holds ⌊n / world_size⌋ or one more, in batches of ``batch_size``, the last short)."""
    return math.ceil((examples // world_size) / batch_size)


def limited_batches(batches: int, limit: Any) -> int:
    """The batches Lightning runs of ``batches`` under a limit_*_batches value (an int: that
    many at most; a float: that fraction, rounded down; None: all)."""
    if limit is None:
        return batches
    if is_int(limit):
        return min(batches, int(limit))
    return int(batches * float(limit))


def check_batch_limits(
    cfg: DictConfig, sizes: dict[str, Any], test_examples: int | None, world_size: int
) -> None:
    """Refuses, once the split sizes are known and before the fit, a ``trainer.limit_*_batches``
    or ``overfit_batches`` fraction that leaves a split less than one batch, and a
    ``trainer.val_check_interval`` of more batches than an epoch trains (validation counted
    per epoch). Lightning raises either only when it reaches that split: a test fraction
    after the whole fit. A ``fast_dev_run`` replaces every limit (one batch of each)."""
    t = cfg.trainer
    if t.get("fast_dev_run"):
        return
    n_test = int(sizes["test"]) if test_examples is None else min(test_examples, int(sizes["test"]))
    splits = {
        "train": (int(sizes["train"]), cfg.data.batch_size // world_size, "data.batch_size"),
        "val": (int(sizes["val"]), cfg.data.eval_batch_size, "data.eval_batch_size"),
        "test": (n_test, cfg.data.eval_batch_size, "data.eval_batch_size"),
    }
    batches = {s: _batches(n, b, world_size) for s, (n, b, _) in splits.items()}
    overfit = t.get("overfit_batches") or 0
    limits = {s: t.get(f"limit_{s}_batches") for s in splits}
    keys = {s: f"trainer.limit_{s}_batches" for s in splits}
    if overfit:  # Lightning trains and validates on that many training batches instead
        for s in ("train", "val"):
            limits[s], keys[s] = overfit, "trainer.overfit_batches"
    for split, limit in limits.items():
        if not isinstance(limit, float) or limit == 0.0 or batches[split] == 0:
            continue  # Lightning runs an empty split as none, whatever its limit
        if limited_batches(batches[split], limit) >= 1:
            continue
        examples, batch_size, batch_key = splits[split]
        raise invalid(
            keys[split],
            limit,
            f"a fraction of at least 1/{batches[split]} = {1 / batches[split]:.4g}, or an "
            f"integer number of batches ≥ 1: the {split} split has {batches[split]} batch"
            f"{'es' if batches[split] != 1 else ''} ({examples} examples, {batch_key}="
            f"{batch_size}{f' per process of {world_size}' if world_size > 1 else ''}), and "
            f"{limit:g} of them is less than one (Lightning would stop the run when it "
            f"reaches the {split} split{', after the whole fit' if split == 'test' else ''})",
        )
    interval, every = t.get("val_check_interval"), t.get("check_val_every_n_epoch")
    if is_int(interval) and every is not None and limits["val"] != 0:
        per_epoch = limited_batches(batches["train"], limits["train"])
        require(
            interval <= per_epoch,
            "trainer.val_check_interval",
            interval,
            f"at most the {per_epoch} training batches of an epoch (validation is counted "
            "within each epoch; trainer.check_val_every_n_epoch=null counts the batches "
            "across epochs)",
        )
