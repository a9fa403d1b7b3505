"""Shared helpers of the benchmark scripts: machine/version header, statistics, subprocesses.

Every benchmark prints a header (machine, load average, versions) before its numbers, so a
pasted output says where and under which load it was measured. Load matters: torch's
OpenMP threads slow down by up to 10× when another process keeps a core busy.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_PY = REPO / "run.py"
PACKAGES = ("torch", "lightning", "hydra-core", "wandb", "vaesweep")


def cpu_model() -> str:
    """The CPU's model name, as a job records it in results.json (``devices.cpu``)."""
    from vaesweep.run.gpus import cpu_model as recorded

    return recorded() or "unknown"


def load_average() -> str:
    """1, 5 and 15 minute load averages, e.g. '0.12 0.30 0.41'."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Fraction of all cores' time that was not idle during `seconds` (Linux /proc/stat;
    None elsewhere). Unlike the load average, it does not count sleeping (D-state) tasks."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def header(title: str, device: str = "cpu") -> None:
    """Prints what was measured, on which machine, under which load, with which versions."""
    import torch

    versions = ", ".join(f"{p} {_version(p)}" for p in PACKAGES)
    print(f"== {title}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"
    )
    if device.startswith("cuda"):
        print(f"gpu: {torch.cuda.get_device_name(torch.device(device))}")
    print(f"python {platform.python_version()}, {versions}")
    busy = cpu_busy()
    shown = "n/a" if busy is None else f"{100 * busy:.0f} %"
    print(
        f"torch threads: {torch.get_num_threads()}, load average (1/5/15 min): {load_average()}, "
        f"CPU busy before the start (1 s sample): {shown}"
    )
    if busy is not None and busy > 0.1:
        print("WARNING: the CPU was over 10 % busy before the start: other processes compete")
    print(f"started: {time.strftime('%Y-%m-%d %H:%M:%S')}")


def footer() -> None:
    """The load average at the end (a rise during the run means other processes competed)."""
    print(f"load average at the end (1/5/15 min): {load_average()}")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """'min..max' of the repetitions, to judge the noise of a median."""
    return f"{min(values):.3g}..{max(values):.3g}"


def cli_env(**extra: str) -> dict[str, str]:
    """Environment of a `python run.py` child: W&B offline and silent, no API key."""
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="1")
    env.pop("WANDB_API_KEY", None)
    env.update(extra)
    return env


def run_python(
    args: Sequence[str], cwd: str | Path, env: dict[str, str] | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    """Runs `python ARGS` in `cwd` (W&B offline by default, output captured); returns (wall
    seconds from spawn to exit, process). Raises with the child's stderr tail when it exits
    non-zero."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(
            f"python {' '.join(map(str, args))[:200]} failed:\n{proc.stderr[-3000:]}"
        )
    return wall, proc


def run_cli(
    args: Sequence[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    """Runs `python run.py ARGS` in `cwd` (see :func:`run_python`)."""
    return run_python([RUN_PY, *args], cwd, env)


def trainer_device(device: str) -> tuple[str, list[int] | int]:
    """(trainer.accelerator, trainer.devices) that train on ``device`` ("cpu", "cuda",
    "cuda:1"): the GPU of that index, not the first one (the plain loop runs there too)."""
    if not device.startswith("cuda"):
        return "cpu", 1
    _, _, index = device.partition(":")
    return "gpu", [int(index)] if index else 1
