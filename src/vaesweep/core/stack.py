"""The error that says the training stack (torch, Lightning, Hydra, vaesweep's own modules, a
library such as CUDA's) does not import in this process, and the hint that ends each of the
entry point's one-line error reports. Imports nothing heavy: the entry point reports it when
torch itself is broken."""

from __future__ import annotations

import sys
import traceback

#: Set to 1, the entry point shows a traceback instead of its one-line report (Hydra's own
#: variable, which it honours the same way).
FULL_ERROR = "HYDRA_FULL_ERROR"
TRACEBACK_HINT = f" (set {FULL_ERROR}=1 for the traceback)"


class StackUnavailable(RuntimeError):
    """The driver does not import in this process: Lightning, or another module it loads
    (vaesweep's own, a library such as CUDA's). Says which interpreter, the error, and the
    file that raised it."""

    def __init__(self, error: Exception) -> None:
        first = (str(error).strip().splitlines() or ["(no message)"])[0]
        frames = [f.filename for f in traceback.extract_tb(error.__traceback__)]
        files = [f for f in frames if not f.startswith("<")]  # not importlib's own frames
        where = f" (raised in {files[-1]})" if files else ""
        super().__init__(
            f"the training stack does not import in {sys.executable}: "
            f"{type(error).__name__}: {first}{where}"
        )
        self.__cause__ = error


class StackImportFailed(BaseException):
    """Carries :class:`StackUnavailable` from the sweep's callback to the entry point: Hydra
    turns a callback's ``Exception`` into a warning and goes on to the jobs."""

    def __init__(self, error: StackUnavailable) -> None:
        super().__init__(str(error))
        self.error = error
