"""Small helpers shared by every layer: timestamps, plain views of configs, the command
that continues a run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
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


#: Characters a directory may hold and still be written bare in a Hydra override: ASCII
#: only (Hydra's lexer takes no other letter, ``/home/jörg`` is quoted).
_BARE = re.compile(r"[\w/.:+@%-]+", re.ASCII)


def bounded(text: str, limit: int) -> str:
    """``text`` when it has at most ``limit`` characters, else its first ``limit − 9`` and a
    short hash of the whole (``-1a2b3c4d``): names that differ stay different when cut."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 9]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``3 epochs``: a count and its noun (a regular plural)."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def override_value(value: str) -> str:
    """``value`` as Hydra's override grammar reads it back unchanged: bare when it is plain,
    else quoted (a comma would make a sweep of it, ``=``, brackets, ``~`` or ``#`` a parse
    error). Meant for paths: bare, ``1`` or ``true`` would read back as a number or a
    boolean (:func:`quoted_value` always reads back as the string)."""
    if _BARE.fullmatch(value):
        return value
    return quoted_value(value)


def quoted_value(value: str) -> str:
    """``value`` quoted as Hydra's override grammar reads it back: always the string itself."""
    # In a quoted value a backslash escapes only a quote or backslashes before one: double
    # the backslashes before a quote (and at the end, before the closing quote).
    quoted = re.sub(r"(\\*)'", lambda m: m[1] * 2 + "\\'", value)
    trailing = len(quoted) - len(quoted.rstrip("\\"))
    return "'" + quoted + "\\" * trailing + "'"


def _python() -> str:
    """How to call this interpreter: ``python`` where that name finds it, else its path."""
    found = shutil.which("python")
    if found and Path(found).resolve() == Path(sys.executable).resolve():
        return "python"
    return sys.executable or "python"


def command_again(
    key: str,
    directory: str | Path,
    argv: Sequence[str] | None = None,
    also: Sequence[str] = (),
) -> str:
    """This process's command line (``argv``, default sys.argv) pointed at ``directory``:
    ``key=directory`` (``hydra.sweep.dir`` for a sweep, ``hydra.run.dir`` for a run) in
    place of any directory it named, plus the overrides ``also`` (each in place of one with
    its key). What continues a stopped run or sweep: the command as typed would start a new
    directory, whose default name carries the launch time. A launcher prefix (torchrun,
    srun) is not part of the command line and must be given again."""
    argv = list(sys.argv if argv is None else argv) or ["run.py"]
    own = {key, "sweep.resume"} | {a.split("=", 1)[0] for a in also}
    kept = [a for a in argv[1:] if a.split("=", 1)[0].lstrip("+~") not in own]
    program = Path(argv[0]).name
    if program == "__main__.py":
        start = [_python(), "-m", "vaesweep"]
    elif program.endswith(".py"):
        start = [_python(), argv[0]]
    else:
        start = [argv[0] if os.sep in argv[0] and not shutil.which(program) else program]
    return shlex.join([*start, *kept, f"{key}={override_value(str(directory))}", *also])


def launcher_note(env: Mapping[str, str] | None = None) -> str:
    """A line for a continue command printed inside a launch that torchrun or srun started
    (its prefix is not part of this process's command line), "" otherwise."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" in env:
        n = env.get("LOCAL_WORLD_SIZE") or env.get("WORLD_SIZE") or "N"
        return (
            f"(this launch ran under torchrun, {env.get('WORLD_SIZE', '?')} processes: start "
            f"the command the same way, e.g. torchrun --nproc-per-node={n} ... with its "
            "other options as before)"
        )
    tasks = env.get("SLURM_NTASKS", "")
    if "SLURM_STEP_ID" in env and tasks.isdigit() and int(tasks) > 1:
        return (
            f"(this launch ran under srun, {tasks} tasks: start the command the same way, "
            f"srun with the same options (e.g. --ntasks={tasks}) in an allocation of the "
            "same shape)"
        )
    return ""


def plain(node: Any) -> Any:
    """A config node as plain data, resolved where it can be (raw where it cannot, e.g. a
    ``${hydra:...}`` outside a running job); anything else unchanged."""
    if not OmegaConf.is_config(node):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:
        return OmegaConf.to_container(node, resolve=False)


#: Keys whose int and float Lightning reads differently: an int is a number of batches, a
#: float a fraction of the epoch. Only at 1 do the two name different settings
#: (``trainer.limit_train_batches=1``: one batch; ``=1.0``: all of them): 0 and 0.0 both
#: turn it off, and a float above 1 is refused. See :func:`compared_number`.
INT_OR_FRACTION = frozenset(
    f"trainer.{key}"
    for key in (
        "limit_train_batches",
        "limit_val_batches",
        "limit_test_batches",
        "limit_predict_batches",
        "val_check_interval",
        "overfit_batches",
    )
)


def compared_number(key: str, value: Any) -> Any:
    """A config value as two jobs' configs are compared: a number as a float (``beta=1`` and
    ``beta=1.0`` are one job), except the int 1 of an INT_OR_FRACTION key (one batch, not
    the whole epoch), which stays an int; anything else unchanged."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return value
    if key in INT_OR_FRACTION and isinstance(value, int) and value == 1:
        return value
    return float(value)


def flatten(node: Any, prefix: str = "", as_float: bool = True) -> dict[str, Any]:
    """``{"a.b.c": leaf}`` for a nested dict; numbers become floats, so that ``beta=1`` and
    ``beta=1.0`` compare equal (they are the same job), except the int 1 of an
    INT_OR_FRACTION key (:func:`compared_number`). ``as_float=False``: the leaves as they
    are (to show them as the user wrote them)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}.", as_float))
        return out
    key = prefix[:-1]
    return {key: compared_number(key, node) if as_float else node}


def same_value(a: Any, b: Any) -> bool:
    """``a == b`` for leaves of :func:`flatten`, where an int is left only where it differs
    from the float of the same value (:func:`compared_number`): 1 is not 1.0 there."""
    return a == b and isinstance(a, int) == isinstance(b, int)
