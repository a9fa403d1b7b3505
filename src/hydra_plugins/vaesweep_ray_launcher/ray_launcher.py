"""The ``hydra/launcher=ray`` choice: config (registered in Hydra's ConfigStore) and Launcher.

Each job of a batch is one Ray task (``ray.remote(num_gpus=gpus_per_job,
num_cpus=cpus_per_job, max_retries=0, max_calls=1)``): Ray assigns it its GPU, or its share
of one (``CUDA_VISIBLE_DEVICES``), and runs it in a fresh worker process, where it is an
ordinary vaesweep job (claims, resume/skip, stop file, results.json). Written on Ray's
public API rather than on hydra-ray-launcher, whose defaults are the traps this launcher
avoids (docs/sweeps.md, "Several GPUs: the Ray launcher"):

- ``gpus_per_job`` (fractions pack jobs onto a GPU; at most 1: a job trains on one device)
  and ``cpus_per_job`` derived from the cluster's nodes so that GPUs, not CPUs, bound how
  many jobs run at once; a request no node can hold is refused before any job (Ray would
  wait for such a node for ever);
- ``max_retries=0``: a job whose process dies is not silently run again; its results.json
  keeps ``running``, the summary lists it, the same command resumes it;
- ``address=auto`` joins a running cluster with nothing else passed (no
  ``object_store_memory``, no resources); otherwise a local Ray without its dashboard;
- ``RAY_DEDUP_LOGS=0`` before Ray is first imported (:func:`import_ray`; Ray reads it
  then): every line of every job reaches the console (``log_to_driver``), and each job's
  stdout/stderr are also copied to ``<job dir>/stdout.log`` / ``stderr.log``;
- stopping: the sweep's stop file (vaesweep.run.signals.SweepGuard, parallel) reaches the
  tasks through ``runtime_env`` env_vars, so Ctrl-C / SIGTERM to the launching process
  stops running jobs at their next batch, recorded ``interrupted``; the tasks that have not
  started are cancelled (each task first tells the launching process that it started: a
  streaming generator's first item), and one that starts anyway does nothing;
- ``max_calls=1``: one job per worker process. A reused worker would keep the CUDA context
  (and device) of its first job, its memory cap and its torch threads.

Importing this module is cheap: Ray is imported when a sweep launches. (No ``from
__future__ import annotations``: Hydra executes plugin modules before they are in
``sys.modules``, where dataclasses cannot resolve string annotations.)
"""

import contextlib
import difflib
import inspect
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import DictConfig, OmegaConf

from vaesweep.core import launchers
from vaesweep.core.checks import is_number
from vaesweep.sweep.launching import (
    LauncherRefused,
    SweepLauncher,
    forwarded_environment,
    job_config,
    lost,
    run_configured,
)

log = logging.getLogger(__name__)

#: ray.init arguments that only start a local Ray (never passed when joining a cluster).
LOCAL_ONLY = ("num_cpus", "num_gpus", "object_store_memory", "resources", "include_dashboard")
STDOUT_LOG, STDERR_LOG = "stdout.log", "stderr.log"
LOG_SETTLE_S = 1.5
#: Read by Ray once, when it is first imported (ray._private.ray_constants): "0" turns off
#: the de-duplication that folds lines of different jobs into "[repeated Nx across cluster]".
DEDUP_ENV = "RAY_DEDUP_LOGS"
#: A job's task yields this first, as it starts: the launching process then knows that the
#: task runs (a task not yet started is cancelled when the sweep is stopped).
STARTED = "vaesweep: started"


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.vaesweep_ray_launcher.ray_launcher.RayLauncher"
    # null: start a local Ray for this sweep (stopped when the sweep ends). "auto" (or
    # ray://host:port, host:port): join that running cluster; then num_cpus, num_gpus and
    # the init keys that size a local Ray (object_store_memory, ...) are never passed.
    address: Any = None
    # GPUs per job: at most 1 (a job trains on one device). null: 1 when the trainer trains
    # on a GPU (accelerator gpu/cuda, or auto with GPUs in the cluster), else 0. A fraction
    # packs jobs onto one GPU: 0.25 runs 4 jobs per GPU, each capped at 25 % of its memory.
    gpus_per_job: Any = None
    # CPUs per job (> 0, at most a node's CPUs). null: with GPU jobs, the CPUs per GPU of
    # the GPU nodes (the fewest of any) × gpus_per_job (GPUs bound how many jobs run at
    # once); CPU jobs: 1 (the cores bound it). Each job gets torch threads to match
    # (threads=N overrides).
    cpus_per_job: Any = None
    # Local start only: the CPUs / GPUs Ray manages (null: what it detects).
    num_cpus: Any = None
    num_gpus: Any = None
    # Ray re-running a job whose process died: off (the job is listed, the relaunch resumes).
    max_retries: int = 0
    include_dashboard: bool = False
    # Stream every job's stdout/stderr to this console (each job's own copy is in its
    # directory either way).
    log_to_driver: bool = True
    # More ray.init keyword arguments (e.g. {object_store_memory: 2000000000} for a local
    # start, {namespace: ...}).
    init: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/launcher", name="ray", node=RayLauncherConf, provider="vaesweep"
)


class RayLauncherError(LauncherRefused):
    """The launcher's options cannot run these jobs (before any job starts)."""


@contextlib.contextmanager
def _kept_signal_handlers() -> Iterator[None]:
    """ray.init may install its own SIGTERM handler in the launching process: the sweep's
    guard (vaesweep.run.signals.SweepGuard) must stay the one that handles it."""
    names = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
    main = threading.current_thread() is threading.main_thread()
    saved = (
        {s: signal.getsignal(s) for n in names if (s := getattr(signal, n, None))} if main else {}
    )
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:
                signal.signal(signum, handler)


def import_ray() -> Any:
    """Ray, imported with its log de-duplication off unless the environment says otherwise
    (``RAY_DEDUP_LOGS``, which Ray reads once, at its first import: set later, it changes
    nothing)."""
    if "ray" not in sys.modules:
        os.environ.setdefault(DEDUP_ENV, "0")
    elif DEDUP_ENV not in os.environ:
        log.warning(
            "ray was imported before the Ray launcher could set %s=0: Ray may fold lines of "
            "different jobs into one ('[repeated Nx across cluster]'); every job's lines are "
            "in its stdout.log / stderr.log",
            DEDUP_ENV,
        )
    import ray

    return ray


def start_ray(options: dict[str, Any]) -> dict[str, float]:
    """Starts (or joins) Ray as the options say, unless it is up; returns the cluster's
    resources."""
    ray = import_ray()

    if not ray.is_initialized():
        extra = dict(options.get("init") or {})
        kwargs: dict[str, Any] = {"log_to_driver": bool(options.get("log_to_driver", True))}
        if options.get("address"):
            kwargs["address"] = str(options["address"])
            kwargs.update({k: v for k, v in extra.items() if k not in LOCAL_ONLY})
        else:
            kwargs["include_dashboard"] = bool(options.get("include_dashboard", False))
            for key in ("num_cpus", "num_gpus"):
                if options.get(key) is not None:
                    kwargs[key] = options[key]
            kwargs.update(extra)
        with _kept_signal_handlers(), _joining_note(kwargs.get("address")):
            try:
                ray.init(**kwargs)
            except (TypeError, ValueError, AssertionError, ConnectionError) as error:
                raise RayLauncherError(_init_refused(kwargs, error)) from error
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def _init_refused(kwargs: dict[str, Any], error: BaseException) -> str:
    """The refusal of ray.init's arguments, as the launcher passed them from its options."""
    first = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else ""
    given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    if kwargs.get("address"):
        where = f"did not join the cluster at hydra.launcher.address={kwargs['address']}"
    else:
        where = "did not start"
    return (
        f"Ray {where}: ray.init({given}) raised {type(error).__name__}: {first}. These "
        "arguments are hydra.launcher's (address, num_cpus, num_gpus, include_dashboard, "
        "log_to_driver, init)"
    )


@contextlib.contextmanager
def _joining_note(address: Any) -> Iterator[None]:
    """While ray.init joins the cluster at ``address``: one line naming the key once it has
    taken :data:`JOIN_NOTE_S` (Ray retries an address where no cluster answers, logging
    only ``Failed to connect to GCS``)."""
    if not address:
        yield
        return
    note = threading.Timer(
        JOIN_NOTE_S,
        lambda: print(
            f"[vaesweep] still joining the Ray cluster at hydra.launcher.address={address} "
            f"after {JOIN_NOTE_S:g} s: Ray retries without end where no cluster answers. "
            "Check the address (`ray status` on the head node prints it); Ctrl-C stops the "
            "sweep, no job has run",
            file=sys.stderr,
            flush=True,
        ),
    )
    note.daemon = True
    note.start()
    try:
        yield
    finally:
        note.cancel()


def node_resources() -> list[dict[str, float]]:
    """The resources of each live node of the Ray cluster (``ray.nodes()``)."""
    ray = import_ray()
    return [
        {k: float(v) for k, v in (node.get("Resources") or {}).items()}
        for node in ray.nodes()
        if node.get("Alive", node.get("alive", True))
    ]


#: What each numeric option allows, as its refusal says it.
ALLOWED = {
    "gpus_per_job": "null (1 for a GPU trainer, else 0) or a number from 0 to 1",
    "cpus_per_job": "null (derived from the cluster) or a number > 0",
    "num_cpus": "null (the CPUs Ray detects) or a whole number ≥ 1",
    "num_gpus": "null (the GPUs Ray detects) or a whole number ≥ 0",
    "max_retries": "null or 0 (a job whose process died is not run again: the relaunch "
    "resumes it), a whole number of retries ≥ 1, or -1 (without end)",
}
#: ``address`` forms, as its refusal says them.
ADDRESSES = (
    "null (a local Ray for this sweep), auto (the cluster this machine runs, or "
    "$RAY_ADDRESS), HOST:PORT (a cluster's head: its GCS port, 6379 unless set) or "
    "ray://HOST:PORT (Ray Client, 10001 unless set)"
)
#: Keys of ``init`` that are the launcher's own options.
OWN_INIT_KEYS = ("address", "num_cpus", "num_gpus", "include_dashboard", "log_to_driver")


def _number(options: dict[str, Any], key: str) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    number = float(value) if is_number(value) else math.nan
    if not math.isfinite(number):
        raise RayLauncherError(f"hydra.launcher.{key}={value!r} is invalid: allowed {ALLOWED[key]}")
    return number


def _whole(options: dict[str, Any], key: str, low: int) -> None:
    """Refuses ``key`` unless it is null or a whole number ≥ ``low`` (Ray's resource
    counts: ``num_cpus=abc`` failed as ``AssertionError: CPU (<class 'str'>): abc``,
    ``-1`` as ``Resource quantities must be nonnegative``)."""
    number = _number(options, key)
    if number is not None and not (number.is_integer() and number >= low):
        raise RayLauncherError(
            f"hydra.launcher.{key}={options[key]!r} is invalid: allowed {ALLOWED[key]}"
        )


def launcher_keys() -> list[str]:
    """The keys of ``hydra/launcher=ray`` (:class:`RayLauncherConf`), ``_target_`` aside."""
    return [f.name for f in fields(RayLauncherConf) if f.name != "_target_"]


def ray_init_keywords() -> list[str]:
    """The keyword arguments ``ray.init`` takes: its signature's, and the hidden ones its
    docstring lists under ``**kwargs`` (``_temp_dir``, ``object_spilling_directory``, ...),
    which it takes from ``**kwargs`` and refuses others of (``Unknown keyword
    argument(s)``)."""
    ray = import_ray()
    parameters = inspect.signature(ray.init).parameters
    named = [
        n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    doc = inspect.getdoc(ray.init) or ""
    hidden = re.findall(r"``(\w+)``", doc.split("**kwargs", 1)[1]) if "**kwargs" in doc else []
    return list(dict.fromkeys(named + hidden))


def check_init(options: dict[str, Any]) -> None:
    """Refuses an ``init`` that is not a mapping of ``ray.init``'s keyword arguments
    (:func:`ray_init_keywords`), or that sets one of the launcher's own options. Ray Client
    (``address=ray://...``) hands other keys to its own builder: only the launcher's own are
    refused there."""
    init = options.get("init")
    if init is None:
        return
    if not isinstance(init, Mapping):  # a DictConfig from Hydra's instantiate
        raise RayLauncherError(
            f"hydra.launcher.init={init!r} is invalid: allowed a mapping of ray.init keyword "
            "arguments, e.g. {namespace: my_sweeps}"
        )
    for key, value in init.items():
        if key in OWN_INIT_KEYS:
            raise RayLauncherError(
                f"hydra.launcher.init.{key}={value!r} is invalid: {key} is an option of "
                f"hydra/launcher=ray itself; set hydra.launcher.{key}={value!r} instead"
            )
    if not init or "://" in str(options.get("address") or ""):
        return
    allowed = [k for k in ray_init_keywords() if k not in OWN_INIT_KEYS]
    for key, value in init.items():
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean hydra.launcher.init.{close[0]}?)" if close else ""
            raise RayLauncherError(
                f"hydra.launcher.init.{key}={value!r} is invalid: ray.init takes no argument "
                f"{key}{hint}. Allowed: {', '.join(allowed)}"
            )


def check_address(address: Any) -> None:
    """Refuses an ``address`` that is no address Ray takes (a number, a name without a
    port)."""
    if address is None or address == "":
        return
    text = str(address)
    if not isinstance(address, str) or (text not in ("auto", "local") and ":" not in text):
        raise RayLauncherError(
            f"hydra.launcher.address={address!r} is invalid: allowed {ADDRESSES}"
        )


def check_options(options: dict[str, Any]) -> None:
    """Refuses (RayLauncherError) what no cluster could run, before Ray starts: a key the
    launcher does not take; a job takes at most one GPU (a share of one, or a whole one) and
    more than 0 CPUs; what ``ray.init`` would refuse (``num_cpus``, ``num_gpus``,
    ``max_retries``, ``init`` keys, an ``address`` that is none)."""
    problem = launchers.unknown_key("ray", options, launcher_keys())
    if problem:
        raise RayLauncherError(problem)
    gpus = _number(options, "gpus_per_job")
    if gpus is not None and not 0 <= gpus <= 1:
        raise RayLauncherError(
            f"hydra.launcher.gpus_per_job={gpus:g}: a Ray job trains on one device, so it "
            "takes one GPU (1) or a share of one (0 < f < 1: 0.25 runs 4 jobs per GPU), or "
            "none (0: CPU jobs). Several GPUs for one job would run DDP on them "
            "(trainer.devices=auto) or leave all but one idle (trainer.devices=1), and DDP "
            "inside a Ray job is not supported: run DDP jobs with hydra/launcher=slurm or a "
            "plain multirun"
        )
    cpus = _number(options, "cpus_per_job")
    if cpus is not None and cpus <= 0:
        raise RayLauncherError(
            f"hydra.launcher.cpus_per_job={cpus:g}: a job needs more than 0 CPUs (a fraction "
            "such as 0.5 is allowed; null: derived from the cluster)"
        )
    _whole(options, "num_cpus", 1)
    _whole(options, "num_gpus", 0)
    _whole(options, "max_retries", -1)
    check_address(options.get("address"))
    check_init(options)


#: Seconds :func:`address_problem` waits for the cluster's address to answer.
CONNECT_TIMEOUT_S = 5.0
#: Seconds after which a ray.init still joining a cluster is said on the console (Ray retries
#: an address where no cluster answers without an end of its own).
JOIN_NOTE_S = 15.0


def address_problem(address: Any, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``) cannot be a running Ray
    cluster: nothing listens there (connection refused) or its host is unknown, as a
    refusal; else None. Ray itself would retry such an address without end (``Failed to
    connect to GCS``, for minutes), and its public API has no bound on that wait. An address
    that does not answer within ``timeout_s`` (a firewall that drops packets) is said in one
    line and not refused: Ray may still reach it. A loopback host counts as this machine's
    address too, as Ray takes it."""
    import socket

    text = str(address or "")
    if text in ("", "auto", "local"):
        return None
    host, _, port = text.split("://", 1)[-1].rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return None  # Ray's own error names it
    hosts = [host]
    if host in ("localhost", "::1") or host.startswith("127."):
        with contextlib.suppress(Exception):
            hosts.append(import_ray().util.get_node_ip_address())
    reasons = []
    for name in hosts:
        try:
            socket.create_connection((name, int(port)), timeout=timeout_s).close()
            return None
        except TimeoutError:
            print(
                f"[vaesweep] note: hydra.launcher.address={text} did not answer within "
                f"{timeout_s:g} s; Ray will keep trying to join it (Ctrl-C stops the sweep, no "
                "job has run)",
                file=sys.stderr,
                flush=True,
            )
            return None
        except socket.gaierror as error:
            reasons.append(f"unknown host {name} ({error.strerror})")
        except OSError as error:
            reasons.append(f"{name}:{port}: {error.strerror or error}")
    return (
        f"hydra.launcher.address={text} is invalid: no Ray cluster answers there "
        f"({'; '.join(reasons)}). Allowed: the address of a "
        "running cluster's head (`ray status` on it prints it), auto for the cluster this "
        "machine runs, or null for a local Ray for this sweep"
    )


def resolve_resources(
    options: dict[str, Any], trainer: dict[str, Any], nodes: Sequence[dict[str, float]]
) -> tuple[float, float]:
    """(gpus_per_job, cpus_per_job) from the options (null: derived, see RayLauncherConf)
    and the resources of the cluster's nodes (:func:`node_resources`). A job that no node
    could hold is refused (RayLauncherError) where Ray started here: Ray would wait for such
    a node for ever. On a cluster joined with ``address`` it is only warned about (an
    autoscaler may add the node)."""
    check_options(options)
    cluster_gpus = sum(node.get("GPU", 0.0) for node in nodes)
    gpus = _number(options, "gpus_per_job")
    if gpus is None:
        accelerator = str(trainer.get("accelerator") or "auto").lower()
        wants = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cluster_gpus > 0)
        gpus = 1.0 if wants else 0.0
    # The nodes a job can run on as far as its GPUs go.
    hosts = [node for node in nodes if node.get("GPU", 0.0) >= gpus] if gpus > 0 else nodes
    cpus = _number(options, "cpus_per_job")
    if cpus is None:
        cpus = 1.0
        # Per node: what the GPU nodes have (a head without GPUs does not count).
        per_gpu = [n.get("CPU", 0.0) / n["GPU"] for n in hosts if n.get("GPU", 0.0) > 0]
        if gpus > 0 and per_gpu:
            cpus = math.floor(100 * min(per_gpu) * gpus) / 100 or 0.01
    problem = None
    if gpus > 0 and not hosts:
        most = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        problem = (
            f"hydra.launcher.gpus_per_job={gpus:g} but no node of this Ray has that many "
            f"GPUs (Ray sees {cluster_gpus:g} GPUs, at most {most:g} on a node): no job could "
            "start (hydra.launcher.gpus_per_job=0 for CPU jobs)"
        )
    elif cpus > (most := max((n.get("CPU", 0.0) for n in hosts), default=0.0)):
        where = " with a GPU" if gpus > 0 else ""
        problem = (
            f"hydra.launcher.cpus_per_job={cpus:g} but the largest node{where} of this Ray has "
            f"{most:g} CPUs: no job could start. Allowed: 0 < cpus_per_job <= {most:g}, or "
            "null (derived from the nodes)"
        )
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    if problem is None and gpus == 0 and accelerator in ("gpu", "cuda"):
        # Ray gives a task without GPUs none (its CUDA_VISIBLE_DEVICES is empty or not
        # set for it): each job would fail on its own, or train on a GPU no one assigned.
        raise RayLauncherError(
            f"hydra.launcher.gpus_per_job=0 but trainer.accelerator={accelerator}: Ray gives "
            "each job no GPU. Allowed: gpus_per_job > 0 (0.25 packs 4 jobs per GPU; null: "
            "1 for a GPU trainer) or a CPU trainer (trainer.accelerator=cpu)"
        )
    if problem and not options.get("address"):
        raise RayLauncherError(problem)
    if problem:
        log.warning("%s, unless the cluster adds such a node (Ctrl-C cancels them)", problem)
    return gpus, cpus


@contextlib.contextmanager
def tee_output(directory: Path | None) -> Iterator[None]:
    """Copies everything written to this process's stdout / stderr (file descriptors 1 and
    2: Python, C extensions, subprocesses) to ``directory/stdout.log`` / ``stderr.log`` as
    well, while the block runs; nothing when ``directory`` is None."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    copies = []
    for fd, name in ((1, STDOUT_LOG), (2, STDERR_LOG)):
        out = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        sink = open(directory / name, "ab", buffering=0)  # noqa: SIM115 (closed by _copy)
        thread = threading.Thread(target=_copy, args=(read_end, sink, out), daemon=True)
        thread.start()
        copies.append((fd, out, thread))
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, out, _ in copies:
            os.dup2(out, fd)  # the pipe's last write end closes: its reader sees the end
        for _, out, thread in copies:
            thread.join(timeout=10)
            os.close(out)


def _copy(read_end: int, sink: Any, out: int) -> None:
    try:
        while chunk := os.read(read_end, 1 << 16):
            sink.write(chunk)
            with contextlib.suppress(OSError):
                os.write(out, chunk)
    finally:
        os.close(read_end)
        sink.close()


def _job_dir(sweep_config: DictConfig) -> Path:
    """The job's directory, as Hydra's run_job will compute it."""
    root = str(OmegaConf.select(sweep_config, "hydra.sweep.dir"))
    return Path(root) / str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))


def execute_job(
    idx: int,
    overrides: Sequence[str],
    shared: Any,
    gpus_per_job: float,
    cpus_per_job: float,
) -> JobReturn | None:
    """One job in its Ray worker: Hydra's job config, then ``run_job``, its output copied
    into its directory (a job that will be skipped writes nothing there). None, before
    anything is made, when the sweep was stopped before the job began (it starts nothing:
    no directory, no log)."""
    from vaesweep.run.gpus import ASSIGNED_ENV, FRACTION_ENV
    from vaesweep.run.policy import config_subdir
    from vaesweep.run.signals import sweep_stopped

    if sweep_stopped():
        return None
    os.environ[ASSIGNED_ENV] = "ray"
    if gpus_per_job == 0:
        # A CPU job sees no GPU: Ray (since 2.4x) leaves CUDA_VISIBLE_DEVICES unset for a
        # task given none, and the job would train on GPU 0 beside every other one.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if 0 < gpus_per_job < 1:  # a share of a GPU (capped at it); a whole GPU records None
        os.environ[FRACTION_ENV] = f"{gpus_per_job:g}"
    # gpus_per_job / cpus_per_job: what the job was given
    sweep_config = job_config(
        idx, overrides, shared, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job
    )
    job_dir = _job_dir(sweep_config)
    runs = config_subdir(
        str(job_dir),
        bool(sweep_config.sweep.rerun_failed),
        sweep_config.sweep.claim_timeout_s,
        sweep_config,
    )
    with tee_output(job_dir if runs else None):
        try:
            return run_configured(sweep_config, shared)
        finally:
            _close_wandb()


def job_task(
    idx: int,
    overrides: Sequence[str],
    shared: Any,
    gpus_per_job: float,
    cpus_per_job: float,
) -> Iterator[Any]:
    """The Ray task of one job (a streaming generator): :data:`STARTED` as soon as it runs,
    then :func:`execute_job`'s result."""
    yield STARTED
    yield execute_job(idx, overrides, shared, gpus_per_job, cpus_per_job)


def _close_wandb() -> None:
    """Shuts W&B's service down after a job, while the worker still runs: left to W&B's
    exit hook, it printed a 30-line ``ConnectionResetError`` traceback from each worker as
    Ray stopped them (the service was gone first). The next job in this worker starts it
    again (a fraction of a second)."""
    if "wandb" in sys.modules:
        import wandb

        try:
            wandb.teardown()
        except Exception as error:  # its files are written: only the shutdown failed
            print(f"[vaesweep] W&B did not shut down cleanly: {error}", file=sys.stderr)


class RayLauncher(SweepLauncher):
    """See the module doc."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from vaesweep.run.signals import sweep_stopped

        sweep_dir = self.begin_launch()
        assert self.config is not None
        if sweep_stopped():  # a later batch of a stopped sweep: nothing starts
            return []
        check_options(self.options)  # before Ray starts
        ray = import_ray()
        cluster = start_ray(self.options)
        trainer = OmegaConf.to_container(self.config.trainer, resolve=True)
        gpus, cpus = resolve_resources(self.options, trainer, node_resources())
        env = forwarded_environment()
        remote = ray.remote(max_calls=1)(job_task).options(
            name="vaesweep_job",
            num_returns="streaming",
            num_gpus=gpus,
            num_cpus=cpus,
            max_retries=int(self.options.get("max_retries") or 0),
            runtime_env={"env_vars": env},
        )
        log.info(
            "Ray is launching %d jobs (gpus_per_job=%g, cpus_per_job=%g; cluster: %g CPUs, "
            "%g GPUs)",
            len(job_overrides),
            gpus,
            cpus,
            cluster.get("CPU", 0),
            cluster.get("GPU", 0),
        )
        log.info("Launching jobs, sweep output dir : %s", sweep_dir)
        shared = ray.put(self.shared())
        tasks = {}
        for i, overrides in enumerate(job_overrides):
            idx = self.job_number(initial_job_idx, i)
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            tasks[remote.remote(idx, list(overrides), shared, gpus, cpus)] = i
        results = self._gather(ray, tasks, job_overrides, initial_job_idx, sweep_stopped)
        if self.options.get("log_to_driver", True):
            # Ray forwards the jobs' last lines to this console a moment after they are
            # written (its log monitor polls): let them arrive before the sweep's summary.
            time.sleep(LOG_SETTLE_S)
        return [r for r in results if r is not None]

    def _gather(
        self,
        ray: Any,
        tasks: dict[Any, int],
        job_overrides: Sequence[Sequence[str]],
        initial_job_idx: int,
        stopped: Any,
    ) -> list[JobReturn | None]:
        """Each task's result (None: it never ran a job). Once the sweep is stopped
        (``stopped()``: its guard wrote the stop file), the tasks that have not started are
        cancelled, so that the sweep ends when the running ones have stopped."""
        results: list[JobReturn | None] = [None] * len(tasks)
        started: set[Any] = set()
        cancelling = False
        pending = list(tasks)
        while pending:  # short waits: the sweep's signal handlers run in between
            if not cancelling and stopped():
                cancelling = True
                waiting = [t for t in pending if t not in started and not t.next_ready()]
                for task in waiting:
                    ray.cancel(task)
                if waiting:
                    print(
                        f"[vaesweep] the sweep is stopping: {len(waiting)} job(s) not yet "
                        "started are cancelled (the same command runs them)",
                        file=sys.stderr,
                        flush=True,
                    )
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for task in ready:
                i = tasks[task]
                try:
                    value = ray.get(next(task))
                except StopIteration:
                    continue
                except ray.exceptions.TaskCancelledError:
                    continue  # cancelled before it ran: it made nothing
                except ray.exceptions.RayError as error:
                    number = self.job_number(initial_job_idx, i)
                    results[i] = self._lost(number, job_overrides[i], error)
                    continue
                if isinstance(value, str) and value == STARTED:
                    started.add(task)
                    pending.append(task)  # its result is next
                else:
                    results[i] = value
        return results

    def _lost(self, idx: int, overrides: Sequence[str], error: BaseException) -> JobReturn:
        """A job whose worker died (killed, out of host memory) or that raised outside the
        task (vaesweep.sweep.launching.lost)."""
        kind = type(error).__name__
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return lost(idx, overrides, f"its Ray task ended without a result ({kind}: {first[:300]})")
