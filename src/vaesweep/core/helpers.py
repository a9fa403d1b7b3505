"""Small helpers shared by every layer: timestamps and plain views of configs."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def now() -> str:
    """The current UTC time, ISO 8601 to the second (what results and sweep files record)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: A file to append training-event timestamps to (benchmarks/: cold start, per-job overhead).
TIMESTAMPS_ENV = "VAESWEEP_TIMESTAMPS"


def append_timestamp(path: str | Path, event: str, t: float | None = None, **info: Any) -> None:
    """Appends {"event", "time" (wall clock, s since the epoch), **info} as one JSON line."""
    line = {"event": event, "time": time.time() if t is None else t, **info}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def plain(node: Any) -> Any:
    """A config node as plain data, resolved where it can be (raw where it cannot, e.g. a
    ``${hydra:...}`` outside a running job); anything else unchanged."""
    if not OmegaConf.is_config(node):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:
        return OmegaConf.to_container(node, resolve=False)


def flatten(node: Any, prefix: str = "", as_float: bool = True) -> dict[str, Any]:
    """``{"a.b.c": leaf}`` for a nested dict; numbers become floats, so that ``beta=1`` and
    ``beta=1.0`` compare equal (they are the same job). ``as_float=False``: the leaves as
    they are (to show them as the user wrote them)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}.", as_float))
        return out
    if as_float and isinstance(node, int | float) and not isinstance(node, bool):
        return {prefix[:-1]: float(node)}
    return {prefix[:-1]: node}
