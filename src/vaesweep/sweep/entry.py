"""The Hydra entry point that ``vaesweep.__main__.train`` calls for ``run.py`` in a
checkout, ``python -m vaesweep`` and the ``vaesweep-train`` console script. One run or a
multirun (``-m``) of the driver's task (:func:`vaesweep.sweep.task.task`); the multirun's
own work is :mod:`vaesweep.sweep.callback`. The training stack (Lightning, the driver) is
not imported here: :mod:`vaesweep.sweep.task` says when it is.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from omegaconf.errors import OmegaConfBaseException

from vaesweep.core.helpers import override_value
from vaesweep.core.stack import FULL_ERROR
from vaesweep.run import context
from vaesweep.run.config import CONF_DIR, CONFIG_NAME
from vaesweep.run.jobs import register_resolvers
from vaesweep.run.signals import SweepStopped
from vaesweep.sweep import preflight
from vaesweep.sweep.callback import (
    SweepStartFailed,
    finish_aborted,
    finish_stopped,
    start_failed,
)
from vaesweep.sweep.launching import LauncherRefused
from vaesweep.sweep.search import quote_sweeper_params
from vaesweep.sweep.task import StackImportFailed, task

register_resolvers()
_hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=CONFIG_NAME)


def main() -> None:
    """``python run.py``: Hydra's entry point for the driver's task. A signal that stopped a
    sweep (in a job or between two) ends here: the summary of what finished is written and
    the process exits with 128 + the signal number.

    An error outside the task (Hydra making a directory or writing its files, a launcher
    that cannot start, a Lightning that does not import) is one line here, not Hydra's
    traceback: ``[vaesweep] <what>`` (a full disk names the file and the free space), the
    summary of what finished when a sweep was running, exit status 1.
    ``HYDRA_FULL_ERROR=1`` shows the traceback instead."""
    context.mark_command_line()
    full_error = os.environ.get(FULL_ERROR) == "1"
    os.environ[FULL_ERROR] = "1"  # Hydra re-raises what it would print: reported below
    try:
        _hydra_main(task)()
    except SweepStopped as stop:
        raise SystemExit(finish_stopped(stop)) from None  # the summary says what was stopped
    except LauncherRefused as refused:  # before any job: a refusal, as the preflight's
        preflight.refuse(str(refused), multirun=True)
    except SweepStartFailed as failed:  # the sweep's own start failed: before any job
        if full_error:
            raise  # its cause, the error's own traceback, is printed first
        raise SystemExit(start_failed(failed)) from None
    except StackImportFailed as failed:  # the driver does not import: before any job
        if full_error:
            raise  # its cause, the import's own traceback, is printed first
        raise SystemExit(finish_aborted(failed.error)) from None
    except KeyboardInterrupt:  # Ctrl-C where no sweep or job handles it (Hydra starting)
        print("[vaesweep] stopped by SIGINT", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGINT) from None
    except CompactHydraException as error:  # a config that does not compose: Hydra's words
        if full_error:
            raise
        print(str(error), file=sys.stderr)
        if isinstance(error.__cause__, OmegaConfBaseException):
            print(str(error.__cause__), file=sys.stderr)
        print(
            f"\nSet the environment variable {FULL_ERROR}=1 for a complete stack trace.",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(1) from None
    except Exception as error:
        if full_error:
            raise
        raise SystemExit(finish_aborted(error)) from None
    finally:
        if not full_error:
            os.environ.pop(FULL_ERROR, None)


#: The overrides that name a directory, whose leading ``~`` is the user's home.
HOME_KEYS = (
    "sweep.resume",
    "hydra.sweep.dir",
    "hydra.run.dir",
    "paths.output_dir",
    "paths.data_dir",
)
#: The directory overrides that cannot be empty: ``paths.output_dir=`` (an unset variable
#: in a script) put the runs in /runs at the file system's root, ``hydra.run.dir=`` wrote a
#: run's files into the directory the command was started from, null a directory "None".
REQUIRED_DIRECTORIES = ("hydra.sweep.dir", "hydra.run.dir", "paths.output_dir")


def _given(parser: OverridesParser, arg: str, keys: tuple[str, ...]) -> tuple[str, Any] | None:
    """(the key as written, its value) of ``arg`` when it overrides one of ``keys``, else
    None. The value is :data:`SWEPT` for a sweep (``a,b``), the text as typed where Hydra's
    lexer refuses it (a bare ``~``: Hydra says what is wrong with it later)."""
    key, sep, text = arg.partition("=")
    if not sep or key.lstrip("+") not in keys:
        return None
    try:
        override = parser.parse_override(arg)
    except Exception:
        return key, text
    return key, SWEPT if override.is_sweep_override() else override.value()


#: The value :func:`_given` gives a swept directory override.
SWEPT = object()


def empty_directory(argv: list[str]) -> str | None:
    """A refusal for a directory override (:data:`REQUIRED_DIRECTORIES`) given empty or
    null, else None."""
    parser = OverridesParser.create()
    for given in (_given(parser, arg, REQUIRED_DIRECTORIES) for arg in argv):
        if given is None:
            continue
        key, value = given
        if value is SWEPT or (isinstance(value, str) and value.strip()):
            continue
        return (
            f"{key.lstrip('+')}={value!r} is invalid: allowed a directory (relative to where the "
            "command runs, or absolute; a leading ~ is your home)"
        )
    return None


def home_expanded(argv: list[str]) -> list[str]:
    """The command line with a leading ``~`` (``~user``) of a directory override
    (:data:`HOME_KEYS`) expanded to the home directory. The shell leaves ``~`` alone in
    ``sweep.resume=~/x`` (no variable name before the ``=``) and so does Hydra, whose lexer
    refuses it bare and takes it quoted (``sweep.resume='~/x'``) as a relative directory
    named ``~``: a sweep meant to be continued in ``$HOME/x`` would be trained again in
    ``./~/x``. The expanded path is the one every part of the launch sees: its checks,
    Hydra's directories, the recorded command."""
    parser = OverridesParser.create()
    out = []
    for arg in argv:
        given = _given(parser, arg, HOME_KEYS)  # (~ bare: the text, Hydra's lexer refuses it)
        if given is not None and isinstance(given[1], str) and given[1].startswith("~"):
            key, value = given
            expanded = os.path.expanduser(value)
            if expanded != value:
                arg = f"{key}={override_value(expanded)}"
        out.append(arg)
    return out


def cli_main() -> None:
    """The command line's training entry (``vaesweep.__main__.train`` calls it after the
    imports), same arguments as ``run.py``; a directory given from ``~`` is the home's
    (:func:`home_expanded`)."""
    sys.argv[1:] = home_expanded(quote_sweeper_params(sys.argv[1:]))
    refusal = empty_directory(sys.argv[1:])
    if refusal:
        preflight.refuse(refusal, multirun=any(a in ("-m", "--multirun") for a in sys.argv[1:]))
    main()
