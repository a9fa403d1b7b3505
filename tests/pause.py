"""Arming the test-only pause points and failures (tests/hooks/sitecustomize.py) in a
subprocess."""

from __future__ import annotations

import os
from pathlib import Path

PAUSE_ENV = "VAESWEEP_PAUSE_AT"
IMPORT_ENV = "VAESWEEP_RECORD_IMPORT"
FAIL_ENV = "VAESWEEP_FAIL_AT"
HOOKS = Path(__file__).resolve().parent / "hooks"


def pythonpath_with(directory: str | os.PathLike[str]) -> str:
    """This process's PYTHONPATH with ``directory`` first."""
    return os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH", "")) if p)


def import_env(module: str, marker: str | os.PathLike[str]) -> dict[str, str]:
    """The environment entries that make every process started with them (and their
    children) append its pid to ``marker`` when it imports ``module``."""
    return {IMPORT_ENV: f"{module}:{marker}", "PYTHONPATH": _with_hooks()}


def pause_env(point: str, marker: str | os.PathLike[str]) -> dict[str, str]:
    """The environment entries that make a subprocess wait at ``point`` (marker file
    ``marker``; release it by creating ``<marker>.release``)."""
    return {PAUSE_ENV: f"{point}:{marker}", "PYTHONPATH": _with_hooks()}


def fail_env(point: str) -> dict[str, str]:
    """The environment entries that make a subprocess fail at ``point`` (the hooks'
    ``VAESWEEP_FAIL_AT``)."""
    return {FAIL_ENV: point, "PYTHONPATH": _with_hooks()}


def _with_hooks() -> str:
    """PYTHONPATH with the hooks' directory first (its sitecustomize.py loads at start)."""
    return pythonpath_with(HOOKS)
