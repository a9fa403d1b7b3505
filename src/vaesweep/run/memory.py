"""Whether a run's model fits: its exact parameter count (built on the meta device) and the
IWAE chunk's decoder output against the memory this process can still use, checked before
any data are loaded (vaesweep.run.config.check_run)."""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaesweep.core.checks import ConfigError, is_int
from vaesweep.model import components

log = logging.getLogger("vaesweep")

#: Bytes per parameter while training: weights, gradients and Adam's two moments (float32).
BYTES_PER_PARAMETER = 16
#: The share of the available memory a run may plan to use for its parameters / IWAE chunk.
MEMORY_SHARE = 0.8
#: (C, H, W) of every dataset, known without loading it (vaesweep.data.DATASETS).
DATA_SHAPES = {
    "mnist_small": (1, 28, 28),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "digits": (1, 8, 8),
}


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:,.1f} GB"


def available_memory() -> int | None:
    """Bytes of memory this process can still use: the smaller of the system's available
    memory and the room left under a cgroup (v2) limit; None when unknown."""
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            candidates.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(candidates)


def count_parameters(
    cfg: DictConfig, shape: tuple[int, int, int], likelihood: Any = None
) -> tuple[int, int]:
    """(parameters of encoder, decoder and likelihood; decoder output channels per pixel),
    exact: the networks are built on the meta device, with no memory allocated.
    ``likelihood``: the config's, built (else it is built here)."""
    import torch

    model = OmegaConf.to_container(cfg.model, resolve=True)
    if likelihood is None:
        lik = OmegaConf.to_container(cfg.likelihood, resolve=True)
        likelihood = components.build("likelihood", lik, shape)  # small: at most D scales
    network = components.build("model", model)
    with torch.device("meta"):
        modules = [
            likelihood,
            network.encoder(shape),
            network.decoder(shape, likelihood.param_channels),
        ]
    n = sum(p.numel() for m in modules for p in m.parameters())
    return n, likelihood.param_channels


def _decoder_output_bytes(
    samples: int, examples: int, shape: tuple[int, int, int], channels: int
) -> int:
    """Bytes of ``samples`` × ``examples`` decoder outputs with the log-density's temporaries
    (or their gradients): ~4 float32 arrays of their size."""
    return 16 * samples * examples * math.prod(shape) * channels


def check_memory(cfg: DictConfig, available: int | None = None) -> None:
    """Refuses a model whose parameters (with gradients and Adam state), a training batch of
    ``n_samples`` samples, or an IWAE chunk, whose decoder output would not fit in the
    memory available, with the estimate."""
    shape = DATA_SHAPES.get(cfg.data.name)
    if shape is None:
        return
    m = OmegaConf.to_container(cfg.model, resolve=True)
    lik = OmegaConf.to_container(cfg.likelihood, resolve=True)
    # The classes and the likelihood first: a problem of theirs (a _target_ that cannot be
    # imported, a likelihood option) is named under its own key, not blamed on the sizes.
    try:
        unread = components.component_class("model", m).unread_options(m)
        likelihood = components.checked_build("likelihood", lik, shape)
    except ValueError as e:
        raise ConfigError(str(e)) from e.__cause__
    # The options that set the model's size (not e.g. its activation), widths first.
    options = components.constructor_options("model", m)
    sized = [k for k, v in options.items() if k not in unread and not isinstance(v, str)]
    sized.sort(
        key=lambda k: ("hidden", "latent_dim").index(k) if k in ("hidden", "latent_dim") else 2
    )
    sizes = ", ".join(f"model.{k}={options[k]}" for k in sized)
    try:
        n_params, param_channels = count_parameters(cfg, shape, likelihood)
    except ValueError as e:
        named = re.match(r"(\w+) must be", str(e))  # the network names the option it refuses
        if named and named.group(1) in options:
            key = named.group(1)
            raise ConfigError(f"model.{key}={options[key]!r} is invalid: {e}") from None
        raise ConfigError(f"{sizes} is invalid: {e}") from None
    except Exception as e:  # a user's network that cannot be built on the meta device
        log.debug("memory estimate skipped: %s: %s", type(e).__name__, e)
        return
    available = available_memory() if available is None else available
    if available is None:
        return
    budget = MEMORY_SHARE * available
    need = BYTES_PER_PARAMETER * n_params
    if need > budget:
        raise ConfigError(
            f"{sizes} is invalid: the model would have {n_params:,} parameters, "
            f"~{_gb(need)} for weights, gradients and Adam's two moments "
            f"({BYTES_PER_PARAMETER} bytes each), more than {MEMORY_SHARE:.0%} of the "
            f"{_gb(available)} of memory available; allowed: smaller layers"
        )
    samples, batch = cfg.get("n_samples"), cfg.data.batch_size
    if is_int(samples) and is_int(batch):
        need = _decoder_output_bytes(samples, batch, shape, param_channels)  # (and gradients)
        if need > budget:
            raise ConfigError(
                f"n_samples={samples} is invalid: {samples} samples × data.batch_size={batch} "
                f"examples per training batch need ~{_gb(need)}, more than "
                f"{MEMORY_SHARE:.0%} of the {_gb(available)} of memory available; allowed: "
                "fewer samples or a smaller data.batch_size"
            )
    chunk = cfg.eval.iwae_chunk
    if is_int(chunk) and is_int(cfg.eval.iwae_k) and is_int(cfg.data.eval_batch_size):
        samples = min(chunk, cfg.eval.iwae_k)
        need = _decoder_output_bytes(samples, cfg.data.eval_batch_size, shape, param_channels)
        if need > budget:
            raise ConfigError(
                f"eval.iwae_chunk={chunk} is invalid: {samples} samples × "
                f"data.eval_batch_size={cfg.data.eval_batch_size} examples per chunk need "
                f"~{_gb(need)}, more than {MEMORY_SHARE:.0%} of the {_gb(available)} of "
                "memory available; allowed: null (sized automatically) or a smaller chunk"
            )
