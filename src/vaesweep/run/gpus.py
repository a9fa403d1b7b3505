"""Which GPUs a job runs on, and GPUs shared between jobs.

- :func:`device_info`: what a job records in results.json (``devices``): the visible device
  ids (``CUDA_VISIBLE_DEVICES``, as a launcher such as Ray assigned them), the device
  names, the CUDA and driver versions, the fraction of a GPU it was given, and what the
  bits of a CPU run depend on beside the config and seed: the CPU's model, the vector
  instructions torch's CPU kernels use, and torch's thread count.
- :func:`cap_memory`: a job given a fraction of a GPU (the Ray launcher's
  ``gpus_per_job`` < 1, or ``local_parallel``'s 1/k for k jobs on one GPU, passed in
  :data:`FRACTION_ENV`; a whole GPU sets none) may allocate at most that fraction of the
  GPU's memory, so it cannot starve the jobs beside it; beyond it, it fails alone (its
  out-of-memory message names the fraction and the launcher's way to a larger one,
  :func:`share_advice`, used by vaesweep.run.failures).
- :func:`local_gpus` and :func:`spread`: the GPUs ``local_parallel`` spreads its jobs over
  (``hydra.launcher.gpus``, or every visible one when the trainer trains on a GPU), and
  which one (and what share of it) each of its worker slots gets.
- :func:`piled_gpus_problem`: Hydra's own ``joblib`` launcher cannot assign GPUs (every
  job would train on the first visible one): with several jobs at once, a GPU trainer and
  more than one visible GPU it is refused before any job, naming the launchers that can.
- :func:`one_device_problem`: a job whose launcher assigned its GPU (Ray, local_parallel)
  trains on one device (its share of one GPU, or one whole GPU); ``trainer.devices`` > 1
  inside it is refused before training.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import Any

from vaesweep.core import launchers

#: The fraction of a GPU the launcher gave this job (Ray, local_parallel).
FRACTION_ENV = "VAESWEEP_GPU_FRACTION"
#: Set in the process of a job whose launcher assigned its GPU: the launcher's name.
ASSIGNED_ENV = "VAESWEEP_GPUS_ASSIGNED_BY"
#: How each launcher that assigns GPUs names a job's share.
SHARE_KEYS = {"ray": "hydra.launcher.gpus_per_job", "local_parallel": "hydra.launcher.gpus"}


def gpu_fraction() -> float | None:
    """The fraction of a GPU this job was given (None: no launcher said)."""
    value = os.environ.get(FRACTION_ENV)
    try:
        return None if not value else float(value)
    except ValueError:
        return None


def share_advice() -> str | None:
    """What to change when this job ran out of its share of a GPU, worded for the launcher
    that gave it the share (:data:`ASSIGNED_ENV`); None when it was given a whole GPU or
    none (no share to blame)."""
    fraction = gpu_fraction()
    if fraction is None or not 0 < fraction < 1:
        return None
    launcher = os.environ.get(ASSIGNED_ENV)
    given = f"this job may use {fraction:g} of the GPU's memory"
    if launcher == "ray":
        return f"{given} (hydra.launcher.gpus_per_job={fraction:g}); give it a larger share"
    if launcher == "local_parallel":
        return (
            f"{given} (local_parallel runs {round(1 / fraction)} jobs at once on its GPU); run "
            "fewer jobs per GPU (lower hydra.launcher.n_jobs, or list more GPUs in "
            "hydra.launcher.gpus)"
        )
    return f"{given} ({FRACTION_ENV}={fraction:g}); give it a larger share"


def nvidia_smi() -> list[list[str]] | None:
    """``nvidia-smi``'s driver version, index, UUID and name of every GPU (PCI order), one
    row each; None without nvidia-smi or when it fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,index,uuid,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [[f.strip() for f in line.split(",", 3)] for line in out.stdout.splitlines()]
    rows = [row for row in rows if len(row) == 4]
    return rows if out.returncode == 0 and rows else None


def visible_names(rows: list[list[str]], visible: str | None) -> list[str]:
    """The names of the GPUs ``CUDA_VISIBLE_DEVICES=visible`` shows, in its order, from
    :func:`nvidia_smi`'s rows: every GPU when it is unset; an entry is an index or (a prefix
    of) a UUID, and, as CUDA reads it, the list ends at the first entry that names no GPU.
    (Indices are nvidia-smi's PCI order, which is CUDA's where ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
    or the GPUs are alike.)"""
    if visible is None:
        return [row[3] for row in rows]
    names = []
    for entry in (e.strip() for e in visible.split(",")):
        match = [r for r in rows if entry and (r[1] == entry or r[2].startswith(entry))]
        if len(match) != 1:
            break
        names.append(match[0][3])
    return names


def cpu_model() -> str | None:
    """The CPU's model name (Linux's /proc/cpuinfo, else platform.processor(); None when
    neither says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def device_info(accelerator: str | None = None) -> dict[str, Any]:
    """What results.json records under ``devices`` (see the module doc); ``accelerator``:
    the device the Trainer trains on (``cpu``, ``cuda:0``)."""
    import torch

    # Without initialising CUDA in this process (before the fit, whose fork-based DDP needs
    # it uninitialised): the count from NVML, the names from torch only once CUDA is up.
    count = torch.cuda.device_count()
    smi = nvidia_smi()
    if count and torch.cuda.is_initialized():
        names = [torch.cuda.get_device_name(i) for i in range(count)]
    else:
        names = visible_names(smi, os.environ.get("CUDA_VISIBLE_DEVICES"))[:count] if smi else []
    return {
        "accelerator": accelerator,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "names": names,
        "cuda": torch.version.cuda,
        "driver": smi[0][0] if smi else None,
        "fraction": gpu_fraction(),
        "cpu": cpu_model(),
        # torch's CPU kernels differ by instruction set (AVX2, AVX512, ...): so do the bits.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }


_capped = False  # whether cap_memory capped this process (a worker keeps it between jobs)


def cap_memory() -> float | None:
    """Caps this process's CUDA memory at its fraction of the GPU (when it was given less
    than a whole one and CUDA is available); returns the fraction applied, else None. A
    worker capped for an earlier job and given a whole GPU now gets the whole GPU back."""
    global _capped
    fraction = gpu_fraction()
    share = fraction is not None and 0 < fraction < 1
    if not share and not _capped:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    for device in range(torch.cuda.device_count()):
        torch.cuda.set_per_process_memory_fraction(fraction if share else 1.0, device)
    _capped = share
    return fraction if share else None


def uses_gpu(accelerator: Any, device_count: int) -> bool:
    """Whether a Trainer with this accelerator trains on a GPU here."""
    name = str(accelerator or "auto").lower()
    return name in ("gpu", "cuda") or (name == "auto" and device_count > 0)


def visible_gpus() -> int:
    """How many CUDA devices this process sees (torch imported only here)."""
    import torch

    return int(torch.cuda.device_count())


def visible_ids() -> list[str]:
    """The ids of the GPUs this process sees, as a child's ``CUDA_VISIBLE_DEVICES`` names
    them: this process's own list when it has one (numbers or UUIDs), else 0..n-1."""
    count = visible_gpus()
    listed = _listed_visible()
    return listed[:count] if listed else [str(i) for i in range(count)]


def _listed_visible() -> list[str]:
    """This process's own ``CUDA_VISIBLE_DEVICES`` as a list ([] when it has none)."""
    return [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]


def named_gpus(option: Any) -> list[str]:
    """``hydra.launcher.gpus`` as the ids a child's ``CUDA_VISIBLE_DEVICES`` takes: an index
    counts among the GPUs this process sees (through its own ``CUDA_VISIBLE_DEVICES``, as
    torch numbers them: under a scheduler that gave it 2,3, index 0 is GPU 2); a UUID is
    itself. ValueError for an index beyond that list."""
    items = option.split(",") if isinstance(option, str) else option
    items = [items] if isinstance(items, int) else list(items)
    names = [str(x).strip() for x in items if str(x).strip()]
    listed = _listed_visible()
    if not listed:
        return names
    out = []
    for name in names:
        if not name.isdigit():
            out.append(name)
        elif int(name) < len(listed):
            out.append(listed[int(name)])
        else:
            raise ValueError(
                f"hydra.launcher.gpus names GPU {name}, but this process sees "
                f"{len(listed)} (CUDA_VISIBLE_DEVICES={','.join(listed)}; indices count "
                f"from 0 among them)"
            )
    return out


def local_gpus(option: Any, trainer: dict[str, Any]) -> list[str]:
    """The GPUs ``local_parallel`` spreads its jobs over: ``hydra.launcher.gpus`` when given
    (:func:`named_gpus`; [] for none), else every visible GPU when the trainer trains on a
    GPU, else none. Torch is imported only in that last case, to count them."""
    if option is not None:
        return named_gpus(option)
    accelerator = trainer.get("accelerator")
    if str(accelerator or "auto").lower() == "cpu":
        return []
    ids = visible_ids()
    return ids if uses_gpu(accelerator, len(ids)) else []


def spread(
    ids: list[str], n_places: int, n_used: int | None = None
) -> list[tuple[str, float | None]]:
    """The GPU of each of ``n_places`` worker places, round robin over ``ids``, with the
    share of it each gets: 1/k when k of the first ``n_used`` places (default: all) are on
    that GPU (its memory capped at that share, :func:`cap_memory`), None for a whole GPU."""
    used = n_places if n_used is None else max(1, min(n_used, n_places))
    on_gpu = {gpu: sum(ids[p % len(ids)] == gpu for p in range(used)) for gpu in ids}
    shares = {gpu: None if k <= 1 else round(1 / k, 4) for gpu, k in on_gpu.items()}
    return [(ids[place % len(ids)], shares[ids[place % len(ids)]]) for place in range(n_places)]


def piled_gpus_problem(launcher: dict[str, Any], trainer: dict[str, Any]) -> str | None:
    """Why a sweep with Hydra's ``joblib`` launcher and this trainer would pile its jobs
    onto one GPU, else None: several jobs at once, a GPU trainer and more than one visible
    GPU. Cheap when it cannot apply (torch is imported only for a joblib launcher with
    n_jobs > 1)."""
    if not launchers.is_hydra_joblib(launcher):
        return None
    try:
        n_jobs = int(launcher.get("n_jobs") or 1)
    except (TypeError, ValueError):
        return None
    if n_jobs == 1 or str(trainer.get("accelerator") or "auto").lower() == "cpu":
        return None
    n_gpus = visible_gpus()
    if n_gpus <= 1 or not uses_gpu(trainer.get("accelerator"), n_gpus):
        return None
    return (
        f"hydra/launcher=joblib runs {n_jobs if n_jobs > 0 else 'all'} jobs at once but "
        f"cannot assign GPUs: each would train on the first visible GPU of the {n_gpus} here. "
        "Use hydra/launcher=local_parallel, which gives each job its own GPU (or a share of "
        "one) on this machine, or hydra/launcher=ray (pip install 'vaesweep[ray]'; also a "
        "cluster; hydra.launcher.gpus_per_job=0.25 packs 4 jobs per GPU), or train on CPU "
        "(trainer.accelerator=cpu)"
    )


def n_devices(devices: Any) -> int | None:
    """The number of devices a ``trainer.devices`` value asks for (None: auto / -1)."""
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        if text in ("auto", "-1", ""):
            return None
        try:
            return int(text)
        except ValueError:
            return None
    if isinstance(devices, int):
        return None if devices == -1 else devices
    return None


def missing_gpu_problem(accelerator: Any) -> str | None:
    """Why a job whose launcher gave it a GPU (:data:`ASSIGNED_ENV`, ``CUDA_VISIBLE_DEVICES``)
    cannot train as asked, else None: it sees no CUDA device while its trainer is not told
    to train on the CPU (``auto`` would silently fall back to it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not os.environ.get(ASSIGNED_ENV) or not visible:  # Ray's CPU jobs: ""
        return None
    if str(accelerator or "auto").lower() == "cpu" or visible_gpus() > 0:
        return None
    launcher = os.environ[ASSIGNED_ENV]
    return (
        f"the {launcher} launcher gave this job GPU {visible} (CUDA_VISIBLE_DEVICES), but it "
        f"sees no CUDA device, so trainer.accelerator={accelerator} would not train on a GPU: "
        f"name GPUs this machine has ({SHARE_KEYS.get(launcher, 'hydra.launcher')}), or "
        "train on the CPU (trainer.accelerator=cpu)"
    )


def one_device_problem(trainer: dict[str, Any], launcher: str) -> str | None:
    """Why this trainer cannot run as a job whose GPU the launcher (``ray``,
    ``local_parallel``) assigned, else None: such a job trains on one device (a GPU or its
    share of one, or the CPU)."""
    devices = trainer.get("devices")
    count = n_devices(devices)
    label = {"ray": "Ray"}.get(launcher, launcher)
    if isinstance(devices, list | tuple) or (isinstance(devices, str) and "," in devices):
        return (
            f"trainer.devices={devices} picks GPUs by index, but a job of the {label} "
            "launcher sees only the GPU it is given (as device 0). Use trainer.devices=1, "
            f"and choose the GPUs with {SHARE_KEYS.get(launcher, 'hydra.launcher')}"
            + (" (e.g. hydra.launcher.gpus=[1])" if launcher == "local_parallel" else "")
        )
    if (count is None or count == 1) and int(trainer.get("num_nodes") or 1) == 1:
        return None  # one device, or "auto": the devices the launcher made visible to the job
    return (
        f"trainer.devices={trainer.get('devices')} (num_nodes={trainer.get('num_nodes')}): "
        f"a job of the {label} launcher trains on the one device it is given (a GPU, or "
        f"its share of one: {SHARE_KEYS.get(launcher, 'hydra.launcher')}); DDP inside a "
        f"{label} job is not supported. Use trainer.devices=1, or run DDP jobs with "
        "hydra/launcher=slurm or a plain multirun"
    )
