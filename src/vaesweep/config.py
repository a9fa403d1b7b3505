"""The config tree and its validation, before any data are loaded or any step is taken.

The config tree ships inside the package (``vaesweep/conf``), so a wheel install finds it
from any directory. A user's own config directory extends it with Hydra's search path
(``--config-dir DIR`` adds groups, options and experiments; ``--config-name`` picks a
primary config of theirs that extends ``train``; README "Your own components").

Validation is split by who owns the options. The components a config selects by
``_target_`` (likelihood, β schedule, network) check their own options when they are
built (:mod:`vaesweep.components`); here they are built once, cheaply, on a dummy shape.
The driver's own groups (run keys, data, trainer, optimizer, eval, logger) are checked by
one small function each. Every error names the key, the value and what is allowed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent / "conf"

PREPROCESS = ("auto", "dequantize", "binarize", "scale")
CHECKPOINTS = ("last", "best")
LOGGERS = ("wandb", "csv", "none")
WANDB_MODES = ("offline", "online", "disabled")
# trainer.precision values under which Lightning autocasts (its MixedPrecision plugin).
MIXED_PRECISIONS = ("16-mixed", "bf16-mixed", "16", "bf16")


class ConfigError(ValueError):
    """A config value that cannot work, reported before any training starts."""


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: allowed {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _prefixed(group: str, error: Exception) -> str:
    """A component's "key=value ..." message with the key made a full config path."""
    message = str(error)
    return f"{group}.{message}" if re.match(r"^\w+=", message) else message


def likelihood_class(cfg: DictConfig) -> type:
    """The likelihood class the config selects (ConfigError naming the key if it cannot)."""
    from vaesweep import components

    try:
        return components.component_class("likelihood", _plain(cfg.likelihood))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def resolve_preprocess(cfg: DictConfig) -> str:
    """The data preprocessing in force: ``auto`` means binarize for a likelihood on binary
    data (``data_kind = "binary"``, the Bernoulli), else dequantize."""
    if cfg.data.preprocess != "auto":
        return cfg.data.preprocess
    return "binarize" if likelihood_class(cfg).data_kind == "binary" else "dequantize"


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True)


def validate_config(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Check every value that would otherwise fail (or silently mislead) mid-run.

    ``overrides``: the command line's, each of which must change what the run computes
    (:mod:`vaesweep.effective`; a multirun checks its overrides once, for all its jobs).
    """
    from vaesweep.effective import check_overrides
    from vaesweep.guards import check_run

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{', '.join(missing)}: required but not set (???); pass e.g. {missing[0]}=VALUE"
        )
    if overrides:
        refusal = check_overrides(overrides, [cfg])
        if refusal:
            raise ConfigError(refusal)
    check_run_keys(cfg)
    check_components(cfg)
    check_data(cfg)
    check_trainer(cfg)
    check_optimizer(cfg)
    check_eval(cfg)
    check_logger(cfg)
    check_run(cfg)  # budget, evaluation, optimizer, memory estimate, W&B reachable


def check_run_keys(cfg: DictConfig) -> None:
    _require(_is_number(cfg.beta) and cfg.beta >= 0, "beta", cfg.beta, "a finite number ≥ 0")
    _require(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "an integer ≥ 0")
    _require(_is_int(cfg.n_samples) and cfg.n_samples >= 1, "n_samples", cfg.n_samples, "≥ 1")
    _require(
        cfg.threads is None or (_is_int(cfg.threads) and cfg.threads >= 1),
        "threads",
        cfg.threads,
        "null (automatic) or an integer ≥ 1",
    )
    _require(isinstance(cfg.compile, bool), "compile", cfg.compile, "true or false")


def check_components(cfg: DictConfig) -> None:
    """Builds each selected component once (the likelihood for the dataset's shape, a dummy
    1×4×4 one for a dataset whose shape is not known without loading it): its class and its
    constructor check its options."""
    from vaesweep import components
    from vaesweep.memory import DATA_SHAPES

    shape = DATA_SHAPES.get(cfg.data.name, (1, 4, 4))
    for group, context in (("model", ()), ("likelihood", (shape,)), ("beta_schedule", ())):
        try:
            components.build(group, _plain(cfg[group]), *context)
        except ValueError as e:
            raise ConfigError(_prefixed(group, e)) from None


def check_data(cfg: DictConfig) -> None:
    from vaesweep import ranks

    d = cfg.data
    _require(d.preprocess in PREPROCESS, "data.preprocess", d.preprocess, f"one of {PREPROCESS}")
    for key in ("batch_size", "eval_batch_size"):
        _require(_is_int(d[key]) and d[key] > 0, f"data.{key}", d[key], "an integer > 0")
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
    # Strategy, processes and the global batch (again at setup, from the Trainer itself).
    problem = ranks.config_problem(cfg.trainer, d.batch_size)
    if problem:
        raise ConfigError(problem)


def check_trainer(cfg: DictConfig) -> None:
    t = cfg.trainer
    _require(
        _is_int(t.accumulate_grad_batches) and t.accumulate_grad_batches >= 1,
        "trainer.accumulate_grad_batches",
        t.accumulate_grad_batches,
        "an integer ≥ 1",
    )
    _require(
        t.gradient_clip_val is None
        or (_is_number(t.gradient_clip_val) and t.gradient_clip_val >= 0),
        "trainer.gradient_clip_val",
        t.gradient_clip_val,
        "null (no clipping) or a finite number ≥ 0",
    )
    _require(
        t.gradient_clip_algorithm in (None, "norm", "value"),
        "trainer.gradient_clip_algorithm",
        t.gradient_clip_algorithm,
        "null (= norm), norm or value",
    )


def check_optimizer(cfg: DictConfig) -> None:
    from vaesweep.module import OPTIMIZERS

    o, t = cfg.optimizer, cfg.trainer
    _require(o.name in OPTIMIZERS, "optimizer.name", o.name, f"one of {list(OPTIMIZERS)}")
    _require(_is_number(o.lr) and o.lr > 0, "optimizer.lr", o.lr, "a finite number > 0")
    fused = o.get("fused", False)
    _require(isinstance(fused, bool), "optimizer.fused", fused, "true or false")
    if fused and t.gradient_clip_val and str(t.precision) in MIXED_PRECISIONS:
        # Lightning would raise at the first optimisation step, after data, model and loggers.
        raise ConfigError(
            f"trainer.gradient_clip_val={t.gradient_clip_val!r} with "
            f"trainer.precision={t.precision!r} is invalid with optimizer.fused=true: a fused "
            "optimiser unscales the mixed-precision gradients inside its step, so they cannot "
            "be clipped before it. Allowed: optimizer.fused=false, no clipping, or a "
            "precision without autocast (e.g. 32-true)"
        )


def check_eval(cfg: DictConfig) -> None:
    e = cfg.eval
    _require(e.checkpoint in CHECKPOINTS, "eval.checkpoint", e.checkpoint, f"one of {CHECKPOINTS}")
    _require(
        e.checkpoint == "last" or cfg.trainer.enable_checkpointing,
        "eval.checkpoint",
        e.checkpoint,
        "'last' when trainer.enable_checkpointing=false (no best checkpoint is kept)",
    )
    _require(_is_int(e.iwae_k) and e.iwae_k >= 1, "eval.iwae_k", e.iwae_k, "an integer ≥ 1")
    _require(
        e.iwae_chunk is None or (_is_int(e.iwae_chunk) and e.iwae_chunk >= 1),
        "eval.iwae_chunk",
        e.iwae_chunk,
        "null or an integer ≥ 1",
    )


def check_logger(cfg: DictConfig) -> None:
    _require(cfg.logger.name in LOGGERS, "logger.name", cfg.logger.name, f"one of {LOGGERS}")
    if cfg.logger.name == "wandb":
        mode = cfg.logger.mode
        _require(mode in WANDB_MODES, "logger.mode", mode, f"one of {WANDB_MODES}")
