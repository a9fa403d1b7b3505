"""What a user sees when a job fails: one line in their terms on stderr; the traceback goes
to the job's log file (Hydra's ``<run_dir>/train.log``) only.

:func:`describe` turns an exception into that line, recognising what a traceback would
bury: a full disk (which file, how much space is left), a checkpoint that cannot be read
(which one, what to do), memory exhausted. :func:`quiet_console` keeps tracebacks and the
job's own error records off the terminal, and :func:`report_failure` prints the line and
writes the traceback to the log file (once per exception).
"""

from __future__ import annotations

import errno
import logging
import shutil
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from hydra.core.hydra_config import HydraConfig

from vaesweep.run.context import job_sweep_dir, read_sweep, swept_values
from vaesweep.run.gpus import share_advice

log = logging.getLogger("vaesweep")

#: A log record with this attribute set goes to the log file, never to the terminal.
FILE_ONLY = "vaesweep_file_only"
#: Errors of jobs whose directory must stay as it was (nothing is logged into it).
LEAVE_ALONE = ("JobNotRerun", "ConfigMismatch", "ClaimHeld", "ClaimLost", "ClaimLostByRank")
MAX_LINE = 400
_DISK_FULL_TEXT = ("No space left on device", "unexpected pos", "file write failed")
_OOM_TEXT = ("can't allocate memory", "out of memory", "not enough memory")
_PATH_LOCALS = ("path", "checkpoint_path", "path_or_url", "filepath", "f")


def _chain(error: BaseException) -> list[BaseException]:
    out, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _frames(error: BaseException) -> list[tuple[str, str, dict[str, Any]]]:
    """(file, function, locals) of every frame of the traceback, outermost first."""
    frames = []
    tb: TracebackType | None = error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append((code.co_filename, code.co_name, tb.tb_frame.f_locals))
        tb = tb.tb_next
    return frames


def _as_path(value: Any) -> Path | None:
    if isinstance(value, str | Path) and str(value):
        return Path(value)
    name = getattr(value, "name", None)  # an open file
    return Path(name) if isinstance(name, str) and name else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def _size(n_bytes: float) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= factor:
            return f"{n_bytes / factor:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def _free_space(path: Path) -> str:
    for directory in (path, *path.parents):
        if directory.exists():
            return f"{_size(shutil.disk_usage(directory).free)} free on its file system"
    return "free space unknown"


def disk_full_message(error: BaseException) -> str | None:
    """'disk full while writing FILE (N free ...)' when the error is a failed write for lack
    of space, else None."""
    chain = _chain(error)
    full = any(
        getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        or any(text in str(e) for text in _DISK_FULL_TEXT)
        for e in chain
    )
    if not full:
        return None
    # The file being written: the outermost of vaesweep's frames with a ``path`` (the
    # target, not its temp file), else the innermost frame with one.
    named = [
        (filename, path)
        for e in chain
        for filename, _, local in _frames(e)
        if (path := _as_path(local.get("path"))) is not None
    ]
    ours = [path for filename, path in named if "vaesweep" in filename]
    target = ours[0] if ours else (named[-1][1] if named else None)
    where = f"while writing {target} " if target is not None else ""
    space = _free_space(target.parent) if target is not None else "free space unknown"
    return (
        f"disk full {where}({space}): free some space, or write runs elsewhere "
        "(hydra.run.dir / hydra.sweep.dir), and run the same command again with "
        "sweep.rerun_failed=true"
    )


def unreadable_checkpoint_message(error: BaseException) -> str | None:
    """'checkpoint FILE cannot be read ...' when the error came from loading a checkpoint."""
    for e in _chain(error):
        for filename, function, local in reversed(_frames(e)):
            in_loader = "load" in function and (
                filename.endswith("serialization.py") or "lightning" in filename
            )
            if not in_loader:
                continue
            for name in _PATH_LOCALS:
                path = _as_path(local.get(name))
                if path is not None and path.suffix == ".ckpt":
                    reason = _first_line(e).split(". ")[0][:160]
                    return (
                        f"checkpoint {path} cannot be read ({type(e).__name__}: {reason}): it "
                        "is truncated or corrupt. Run the same command with "
                        "sweep.rerun_failed=true to train this job from the start (the "
                        "checkpoint is replaced), or delete the run directory"
                    )
    return None


def _on_gpu(error: BaseException) -> bool:
    """Whether an out-of-memory error is a GPU's (CUDA's allocator), not the host's."""
    text = str(error).lower()
    return type(error).__name__ == "OutOfMemoryError" or "cuda" in text or "cublas" in text


def out_of_memory_message(error: BaseException) -> str | None:
    for e in _chain(error):
        if isinstance(e, MemoryError) or any(t in str(e).lower() for t in _OOM_TEXT):
            what = f"out of memory ({type(e).__name__}: {_first_line(e)[:160]})"
            lower = "data.batch_size, data.eval_batch_size, eval.iwae_chunk or the model sizes"
            share = share_advice() if _on_gpu(e) else None  # the host's memory: no GPU share
            if share:
                return f"{what}: {share}, or lower {lower}"
            return f"{what}: lower {lower}"
    return None


def describe(error: BaseException) -> str:
    """One line saying what went wrong, in the user's terms."""
    name = type(error).__name__
    if name in (
        "ConfigError",
        "ConfigMismatch",
        "DivergenceError",
        "JobNotRerun",
        "ClaimHeld",
        "ClaimLost",
        "ClaimLostByRank",
        "DamagedCheckpoint",
        "NonFiniteScore",
    ):
        return f"{name}: {_first_line(error)}"
    for special in (disk_full_message, unreadable_checkpoint_message, out_of_memory_message):
        message = special(error)
        if message:
            return message
    return f"{name}: {_first_line(error) or '(no message)'}"


def job_log_file() -> Path | None:
    """The file the job's log records go to (Hydra's job log), if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


def job_label() -> str | None:
    """In a multirun, the job's swept values (``beta=4,seed=1``; its directory name when
    there are none); None in a single run."""
    hc = HydraConfig.get()
    if hc.mode is None or hc.mode.name != "MULTIRUN":
        return None
    try:
        grid = list((read_sweep(job_sweep_dir(hc)) or {}).get("grid") or [])
    except (OSError, ValueError):
        grid = []
    swept = swept_values(list(hc.overrides.task), grid)
    return ",".join(f"{k}={v}" for k, v in swept.items()) or Path(hc.runtime.output_dir).name


def report_failure(error: BaseException, job: str | None = None) -> str:
    """Prints the one line to stderr and writes the traceback to the job's log file (unless
    the job's directory must stay untouched); returns the line."""
    line = describe(error)
    logfile = job_log_file()
    # A bad config and a divergence are logged by the run itself, without a traceback.
    quiet = (*LEAVE_ALONE, "ConfigError", "DivergenceError", "NonFiniteScore")
    if type(error).__name__ not in quiet and logfile is not None:
        log.error("%s", line, exc_info=error, extra={FILE_ONLY: True})
        line += f" (traceback in {logfile})"
    prefix = f"{job}: " if job else ""
    print(f"[vaesweep] {prefix}{line}", file=sys.stderr, flush=True)
    return line


class _ConsoleFilter(logging.Filter):
    """Keeps the job's own error records (summed up by :func:`report_failure`) and records
    meant for the log file off the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, FILE_ONLY, False):
            return False
        return not (record.name.startswith("vaesweep") and record.levelno >= logging.ERROR)


class _NoTraceback(logging.Formatter):
    """A console formatter that leaves out tracebacks (the log file has them)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class _TracebackOnce(logging.Filter):
    """Writes each exception's traceback to the log file once: a record about an exception
    whose traceback is already there is dropped."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        key = id(record.exc_info[1])
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def quiet_console() -> None:
    """Installs the console filter and formatter on the root logger's terminal handlers
    and the traceback-once filter on its file handlers (idempotent; Hydra configures
    logging anew for every job, so call it at the start of each)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            if not any(isinstance(f, _TracebackOnce) for f in handler.filters):
                handler.addFilter(_TracebackOnce())
        elif isinstance(handler, logging.StreamHandler) and not any(
            isinstance(f, _ConsoleFilter) for f in handler.filters
        ):
            handler.addFilter(_ConsoleFilter())
            handler.setFormatter(_NoTraceback(handler.formatter))
