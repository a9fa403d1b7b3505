"""Several processes for one job: how many there are, which strategy, how they agree.

**World size.** ``data.batch_size`` is the global batch whatever the strategy: the data
module divides it by the Trainer's world size on each rank (``VAEDataModule.setup``).
Where the config tells the number of processes (``trainer.devices`` a number, a list or
"0,1"; ``trainer.num_nodes``; the tasks srun or torchrun started), a batch size that does
not divide is refused before any data is loaded (:func:`config_problem`); otherwise (e.g.
``trainer.devices=-1`` on GPUs) at setup, still before the first step. Supported strategies:
one device, or DDP in any of Lightning's variants (``auto`` picks one of the two); FSDP,
DeepSpeed and XLA are refused.

**Rank 0 decides.** When srun (one task per device, ``SLURM_NTASKS`` > 1) or torchrun starts
the processes, every rank runs the whole job, but only rank 0 looks at the job directory
(completed? claimed by another process? resume from ``checkpoints/last.ckpt``? config
refused?). It writes its decision atomically to ``<run_dir>/.rank0-decision.<launch>.json``
(train, with the checkpoint to resume from; skip; or stop, with the reason), and the other
ranks wait for that file (:func:`await_decision`, ``DECISION_TIMEOUT_S``) and do the same.
``<launch>`` names this launch: the SLURM job, step and restart count, or torchrun's run id
and restart count, so a file left by an earlier launch is never read. Each rank
acknowledges with a ``.ack.<rank>`` file; the rank that sees every acknowledgement removes
the files. A completed job is the exception: rank 0 writes nothing into its directory (not a
byte of it changes), and the other ranks read "completed" in its results.json themselves
(completed is final, so they cannot disagree). Processes that Lightning's own ``ddp``
launcher starts (it re-runs the command) are started by rank 0 when it begins training;
they get the decision in the environment (``DECISION_ENV``).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vaesweep.core.atomic import atomic_open
from vaesweep.data.loader import batch_problem
from vaesweep.run import record

DECISION_PREFIX = ".rank0-decision."
DECISION_ENV = "VAESWEEP_RANK0_DECISION"
# How long ranks > 0 wait for rank 0's decision: it comes after rank 0 has validated the
# config and built the run (data, loggers, trainer), seconds usually.
DECISION_TIMEOUT_S = 600.0
POLL_S = 0.1
# The strategies vaesweep trains with (exact classes: DeepSpeed and XLA subclass DDPStrategy).
SUPPORTED_STRATEGIES = ("SingleDeviceStrategy", "DDPStrategy")
_DDP_NAME = re.compile(r"ddp(_spawn|_fork|_notebook)?(_find_unused_parameters_(?:true|false))?")


class RankZeroStopped(RuntimeError):
    """Rank 0 did not train the job (refused it, or failed before training)."""


@dataclass(frozen=True)
class Decision:
    """What rank 0 decided for one job: ``train`` (resuming from ``resume_from`` when set),
    ``skip`` or ``stop`` (``reason`` says why)."""

    action: str
    resume_from: str | None = None
    reason: str = ""


# --- how many processes ------------------------------------------------------------------------
def launched_world_size() -> int:
    """Processes an outside launcher started for this job (srun: SLURM_NTASKS; torchrun:
    WORLD_SIZE), 1 if none did. Detected as Lightning detects its cluster environment; 1
    where Lightning does not import: rank 0 then settles the job without it and the other
    ranks stop at once (:func:`vaesweep.run.jobs.run`)."""
    try:
        from lightning.fabric.plugins.environments import (
            SLURMEnvironment,
            TorchElasticEnvironment,
        )
    except Exception:  # not only ImportError: a broken install can raise anything
        return 1

    if SLURMEnvironment.detect():
        return int(os.environ["SLURM_NTASKS"])
    if TorchElasticEnvironment.detect():
        return int(os.environ.get("WORLD_SIZE", "1"))
    return 1


def launch_id() -> str | None:
    """A name for this launch that all its ranks compute alike, None outside srun/torchrun."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    env, launch = os.environ, None
    if SLURMEnvironment.detect() and "SLURM_JOB_ID" in env:
        step, restarts = env.get("SLURM_STEP_ID", "batch"), env.get("SLURM_RESTART_COUNT", "0")
        launch = f"slurm-{env['SLURM_JOB_ID']}.{step}.{restarts}"
    elif TorchElasticEnvironment.detect():
        restarts = env.get("TORCHELASTIC_RESTART_COUNT", "0")
        launch = f"torchrun-{env['TORCHELASTIC_RUN_ID']}.{restarts}"
    return None if launch is None else re.sub(r"[^\w.-]", "_", launch)


def _count_devices(devices: Any) -> int | None:
    """Devices per node that ``trainer.devices`` asks for; None when only the hardware
    tells (-1, "auto")."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:  # "0,1": device indices
            return len([d for d in text.split(",") if d.strip()])
        return int(text) if text.isdigit() and int(text) > 0 else None
    try:
        return len(list(devices))  # a list of device indices
    except TypeError:
        return None


def strategy_problem(strategy: str) -> str | None:
    """Why vaesweep cannot train with the strategy named ``strategy``, or None."""
    from lightning.pytorch.strategies import StrategyRegistry

    if strategy == "auto" or strategy not in StrategyRegistry:  # unknown: Lightning says so
        return None
    cls = StrategyRegistry[strategy]["strategy"].__name__
    if cls in SUPPORTED_STRATEGIES:
        return None
    return _unsupported(strategy, cls)


def _unsupported(strategy: str, cls: str) -> str:
    return (
        f"trainer.strategy={strategy!r} ({cls}) is not supported: vaesweep trains on one device "
        "or data-parallel with DDP (allowed: auto, ddp, ddp_spawn, ddp_fork, ddp_notebook and "
        "their _find_unused_parameters_true/false variants)"
    )


def configured_world_size(trainer: Mapping[str, Any]) -> int | None:
    """Number of data-parallel processes the trainer config asks for, None when only the
    hardware can tell (``trainer.devices=-1`` or ``auto``). Under srun/torchrun: the
    processes they started."""
    launched = launched_world_size()
    if launched > 1:
        return launched
    strategy = str(trainer.get("strategy", "auto"))
    if strategy == "single_device":
        return 1
    devices, nodes = _count_devices(trainer.get("devices", 1)), trainer.get("num_nodes", 1)
    if devices is None or not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        return None
    return devices * nodes


def config_problem(trainer: Mapping[str, Any], batch_size: int) -> str | None:
    """What in the trainer config cannot work with several processes, or None: an
    unsupported strategy, a device count that does not match the processes srun/torchrun
    started, several nodes without such a launcher, a global batch that does not divide."""
    strategy = str(trainer.get("strategy", "auto"))
    problem = strategy_problem(strategy)
    if problem:
        return problem
    launched, nodes = launched_world_size(), trainer.get("num_nodes", 1)
    devices = _count_devices(trainer.get("devices", 1))
    asked = devices * nodes if devices is not None and isinstance(nodes, int) else None
    if launched > 1 and asked is not None and asked != launched:
        return (
            f"trainer.devices={trainer.get('devices')!r} × trainer.num_nodes={nodes} = {asked} "
            f"processes, but {launched} were started (srun/torchrun): one process per device "
            "is needed (SLURM: trainer.devices = the tasks per node)"
        )
    if launched == 1 and isinstance(nodes, int) and nodes > 1:
        return (
            f"trainer.num_nodes={nodes} is invalid here: several nodes need srun (SLURM, one "
            "task per device) or torchrun to start the processes"
        )
    n = configured_world_size(trainer)
    if n is not None and batch_size % n:
        return batch_problem(batch_size, n)
    return None


# --- strategy -------------------------------------------------------------------------------
def resolve_strategy(strategy: str, reexecution_breaks: bool) -> str:
    """The strategy to give the Trainer for the ``trainer.strategy`` of the config.

    Under srun/torchrun (several processes started) any DDP variant becomes plain ``ddp``:
    the processes exist, a spawning variant would start more in each. Otherwise plain
    ``ddp`` re-executes the command in its child processes, which breaks inside a multirun,
    a parallel launcher and pytest (``reexecution_breaks``): ``ddp_spawn`` there.
    """
    match = _DDP_NAME.fullmatch(strategy)
    if match is None:
        return strategy
    start, unused = match.group(1), match.group(2) or ""
    if launched_world_size() > 1:
        return f"ddp{unused}"
    if start is None and reexecution_breaks:
        return f"ddp_spawn{unused}"
    return strategy


def start_method(trainer: Any, strategy: str) -> str | None:
    """How the Trainer's DDP strategy starts its processes: ``popen`` (re-runs the command),
    ``spawn``, ``fork`` or ``forkserver``; None when the strategy is not DDP. ``strategy``:
    the name the Trainer was given.

    Decided from public information: a registered name's ``start_method`` (DDPStrategy's
    default, ``popen``, when the registry gives none); for ``auto``, what Lightning picks
    for several devices: ``ddp`` (popen), or in an interactive session ``ddp_fork``, whose
    launcher is the one of them that is interactive-compatible."""
    import inspect

    from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

    if not isinstance(trainer.strategy, DDPStrategy):
        return None
    if strategy in StrategyRegistry:
        default = inspect.signature(DDPStrategy).parameters["start_method"].default
        return StrategyRegistry[strategy]["init_params"].get("start_method", default)
    launcher = trainer.strategy.launcher
    return "fork" if launcher is not None and launcher.is_interactive_compatible else "popen"


def reexecutes_command(trainer: Any, strategy: str) -> bool:
    """Whether the Trainer (given the strategy named ``strategy``) would start its other
    processes by re-running the command (Lightning's plain ``ddp``, e.g. what ``auto`` picks
    for several devices), rather than srun/torchrun having started them."""
    return (
        start_method(trainer, strategy) == "popen"
        and not trainer.strategy.cluster_environment.creates_processes_externally
    )


def trainer_problem(trainer: Any, strategy: str) -> str | None:
    """What makes a built Trainer unusable for vaesweep (checked before training), or None."""
    cls = type(trainer.strategy).__name__
    if cls not in SUPPORTED_STRATEGIES:
        return _unsupported(strategy, cls)
    launched, n = launched_world_size(), trainer.num_devices * trainer.num_nodes
    if launched > 1 and n != launched:
        return (
            f"the trainer uses {trainer.num_devices} device(s) × {trainer.num_nodes} node(s) = "
            f"{n} processes, but {launched} were started (srun/torchrun): one process per "
            "device is needed (SLURM: trainer.devices = the tasks per node)"
        )
    return None


# --- rank 0's decision -----------------------------------------------------------------------
def _decision_path(run_dir: Path, launch: str) -> Path:
    return run_dir / f"{DECISION_PREFIX}{launch}.json"


def _ack_path(run_dir: Path, launch: str, rank: int) -> Path:
    return run_dir / f"{DECISION_PREFIX}{launch}.ack.{rank}"


def _completed(run_dir: Path) -> bool:
    """A completed job rank 0 skips (one recorded completed without a test score is tested
    again: rank 0 publishes that decision)."""
    result = record.read(run_dir)
    return (
        isinstance(result, dict)
        and result.get("status") == record.COMPLETED
        and not record.untested(result)
    )


def _publish(run_dir: Path, decision: Decision) -> None:
    launch = launch_id()
    if launch is None:
        return
    with atomic_open(_decision_path(run_dir, launch)) as f:
        json.dump({"launch": launch, **asdict(decision)}, f)


_announced: set[str] = set()  # run dirs for which this process announced training


def _key(run_dir: str | os.PathLike[str]) -> str:
    return os.path.realpath(run_dir)


def announce_training(run_dir: str | os.PathLike[str], resume_from: str | Path | None) -> None:
    """Rank 0, just before it trains: tells the other ranks to train too (from the same
    checkpoint). Also puts the decision in the environment for the processes Lightning's
    ``ddp`` launcher starts from this one."""
    run_dir = Path(run_dir)
    decision = Decision("train", None if resume_from is None else str(resume_from))
    os.environ[DECISION_ENV] = json.dumps({"run_dir": _key(run_dir), **asdict(decision)})
    if launched_world_size() > 1:
        launch = launch_id()
        # This rank holds the job's claim: files of earlier launches are leftovers.
        for old in run_dir.glob(f"{DECISION_PREFIX}*"):
            if launch is None or not old.name.startswith(f"{DECISION_PREFIX}{launch}."):
                old.unlink(missing_ok=True)
        _publish(run_dir, decision)
    _announced.add(_key(run_dir))


@contextmanager
def rank_zero_decides(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Rank 0's handling of one job, under srun/torchrun: if the block ends without having
    announced training, the other ranks are told to skip (a normal end) or to stop (an
    exception, whose message they report). Nothing is written for a completed job: the
    other ranks skip it by themselves. Does nothing for a single process."""
    run_dir = Path(run_dir)
    if launched_world_size() <= 1:
        yield
        return
    key = _key(run_dir)
    _announced.discard(key)
    try:
        yield
    except BaseException as error:
        if key not in _announced and not _completed(run_dir):
            reason = f"{type(error).__name__}: {error}".strip().rstrip(":")
            _publish(run_dir, Decision("stop", reason=reason))
        raise
    else:
        if key not in _announced and not _completed(run_dir):
            _publish(run_dir, Decision("skip", reason="rank 0 skipped the job"))
    finally:
        _announced.discard(key)


def await_decision(
    run_dir: str | os.PathLike[str],
    rank: int,
    timeout_s: float = DECISION_TIMEOUT_S,
    completed: Callable[[Path], bool] = _completed,
) -> Decision:
    """Ranks > 0: rank 0's decision for the job in ``run_dir`` (``train`` or ``skip``).

    Raises RankZeroStopped when rank 0 stopped (with its reason), or when no decision came
    within ``timeout_s`` (rank 0 died, or the ranks do not share ``run_dir``).
    """
    run_dir = Path(run_dir)
    if launched_world_size() <= 1:  # started by Lightning's ddp launcher from rank 0
        given = json.loads(os.environ.get(DECISION_ENV, "{}"))
        if given.pop("run_dir", None) != _key(run_dir):
            raise RankZeroStopped(
                f"rank {rank}: no decision of rank 0 for {run_dir} (processes of one job are "
                "started by srun (SLURM), torchrun or Lightning's ddp launcher)"
            )
        return Decision(**given)
    launch = launch_id()
    if launch is None:
        raise RankZeroStopped(f"rank {rank}: cannot tell this launch from another (no job id)")
    path, deadline = _decision_path(run_dir, launch), time.monotonic() + timeout_s
    while True:
        if path.exists():
            data = json.loads(path.read_text())
            decision = Decision(data["action"], data["resume_from"], data["reason"])
            _acknowledge(run_dir, launch, rank)
            break
        if completed(run_dir):
            return Decision("skip", reason="completed")
        if time.monotonic() > deadline:
            raise RankZeroStopped(
                f"rank {rank}: rank 0 decided nothing for {run_dir} within {timeout_s:g} s "
                "(did it fail? do all ranks have the same run directory: hydra.run.dir?)"
            )
        time.sleep(POLL_S)
    if decision.action == "stop":
        raise RankZeroStopped(f"rank 0 did not train {run_dir.name}: {decision.reason}")
    return decision


def _acknowledge(run_dir: Path, launch: str, rank: int) -> None:
    """Marks the decision read by ``rank``; the rank that finds every rank's mark removes
    the decision and the marks."""
    _ack_path(run_dir, launch, rank).touch()
    others = range(1, launched_world_size())
    if all(_ack_path(run_dir, launch, r).exists() for r in others):
        _decision_path(run_dir, launch).unlink(missing_ok=True)
        for r in others:
            _ack_path(run_dir, launch, r).unlink(missing_ok=True)
