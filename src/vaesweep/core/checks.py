"""The one validation helper: every refusal of a value names the key, the value and what is
allowed, in the same words (``key=value is invalid: allowed ...``).

Components (likelihoods, β schedules, networks) call :func:`require` on their own options in
their constructors; the run's config checks (:mod:`vaesweep.run.config`) call it on the
driver's keys. ``ConfigError`` is a ``ValueError``, so code that builds a component outside a
config (a notebook) catches it as one.
"""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work, reported before any training starts."""


def invalid(key: str, value: Any, allowed: str) -> ConfigError:
    """The refusal of ``key=value`` (to raise), saying what is allowed."""
    return ConfigError(f"{key}={value!r} is invalid: allowed {allowed}")


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raises :func:`invalid` (``key``, ``value``, ``allowed``) unless ``ok``."""
    if not ok:
        raise invalid(key, value, allowed)


def is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is not a batch size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool (an int too large for a float is not: no
    float holds it, and ``math.isfinite`` would raise OverflowError)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond ~1.8e308
        return False
