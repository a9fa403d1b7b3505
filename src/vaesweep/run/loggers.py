"""The loggers of a job: a CSV file in its directory, and W&B (offline by default).

Every job's W&B run declares its metrics with ``define_metric`` (:func:`define_metrics`), so
W&B's runs table and charts show the right numbers by themselves: ``val/elbo`` summarised by
its maximum (the best validation ELBO, the value ``best.ckpt`` is chosen by) and its last
value (the ``val/elbo`` of results.json); ``test/*``, ``train/*`` and the other ``val/*`` keep
W&B's default summary, their final value; all are plotted against ``trainer/global_step``.

A job's W&B run id is kept in its results.json, so every attempt of an interrupted job
writes to the same W&B run; the jobs of a sweep share a W&B group named after the sweep
directory. W&B is closed with the job's status so failed runs show as failed there too.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import string
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vaesweep.core.checks import ConfigError
from vaesweep.core.helpers import bounded
from vaesweep.run.context import Job

log = logging.getLogger("vaesweep")


# --- what a job logs to W&B --------------------------------------------------------------
#: The W&B job type of a sweep's summary run (vaesweep.analysis.wandb_summary).
SUMMARY_JOB_TYPE = "summary"
#: The x axis of every metric: the optimisation step (Lightning's WandbLogger logs it).
STEP = "trainer/global_step"
#: Characters W&B keeps of a job type or a tag.
WANDB_NAME_LIMIT = 64
#: Summary of val/elbo: the best (max) over all validations and the last one.
VAL_ELBO_SUMMARY = ("max", "last")


def define_metrics(run: Any) -> None:
    """Declares the metrics of a job's W&B run (a ``wandb.Run``): step axes and summaries.

    Called in every attempt of a job (a resumed job continues the same W&B run): the
    definitions belong to the process that logs, not to the run on the server.
    """
    run.define_metric(STEP)
    # W&B's default summary is the last value logged, a plain number: the final value of
    # test/*, train/* and the other val/*. (An explicit summary="last" would turn it into
    # {"last": ...}, and where two globs match a key, W&B picks either: so no glob here has
    # a summary, only the exact name val/elbo, which takes precedence over every glob.)
    for pattern in ("train/*", "val/*", "test/*", "beta", "epoch"):
        run.define_metric(pattern, step_metric=STEP, step_sync=True)
    run.define_metric(
        "val/elbo", step_metric=STEP, step_sync=True, summary=",".join(VAL_ELBO_SUMMARY)
    )


def val_elbo_summary(best: float, last: float) -> dict[str, float]:
    """The summary value W&B keeps for val/elbo (as its define_metric summary writes it)."""
    return {"max": best, "last": last}


def summary_value(value: Any) -> Any:
    """A metric's value from a W&B summary entry: the ``last`` of a summary with several
    statistics (``{"max": ..., "last": ...}``), else the value itself."""
    if isinstance(value, dict) and "last" in value:
        return value["last"]
    return value


def quiet_wandb() -> None:
    """Under WANDB_SILENT (vaesweep's default), W&B's terminal is set up silent before a
    run starts: otherwise it warns about a setting Lightning's WandbLogger always passes
    before it reads WANDB_SILENT."""
    if os.environ.get("WANDB_SILENT", "").lower() in ("true", "1"):
        import wandb

        wandb.setup(settings=wandb.Settings(silent=True))


def make_loggers(cfg: DictConfig, job: Job, wandb_id: str | None = None) -> list:
    """The job's Lightning loggers. ``wandb_id``: the W&B run's id, kept in results.json so
    that every attempt of an interrupted job writes to the same W&B run."""
    from lightning.pytorch.loggers import CSVLogger

    if cfg.logger.name == "none":
        return []
    loggers: list = [CSVLogger(save_dir=str(job.run_dir), name="", version="")]
    if cfg.logger.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        quiet_wandb()
        scale = cfg.likelihood.get("scale")
        label = cfg.get("label") or {}
        tags = [
            cfg.likelihood.name,
            f"schedule={cfg.beta_schedule.name}",
            *cfg.logger.tags,
            *(label.get("tags") or []),
        ]
        if scale is not None:
            tags.insert(1, f"scale={scale}")
        tags += [f"{k}={v}" for k, v in job.swept.items()]
        # Seeds of one configuration share a job_type, so W&B can group them.
        config_axes = [f"{k}={v}" for k, v in job.swept.items() if k != "seed"]
        loggers.append(
            WandbLogger(
                name=job.name,
                id=wandb_id,
                resume="allow",
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                save_dir=str(job.run_dir),
                mode=cfg.logger.mode,
                group=sweep_group(job.sweep_dir),
                # W&B keeps 64 characters of each: cut with a hash, so that two
                # configurations (or two values of a key) never share one.
                job_type=bounded(",".join(config_axes) or "train", WANDB_NAME_LIMIT),
                tags=list(dict.fromkeys(bounded(str(t), WANDB_NAME_LIMIT) for t in tags)),
                notes=label.get("note"),
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


def sweep_group(sweep_dir: Path | None) -> str | None:
    """W&B group of a sweep: its directory's last two parts (date_time-id); None for runs."""
    if sweep_dir is None:
        return None
    return f"{sweep_dir.parent.name}_{sweep_dir.name}"


def finish_wandb(status: str | None, run_dir: str | os.PathLike[str] | None = None) -> None:
    """Close the job's W&B run (if any) with its status, so runs that failed or diverged
    show as failed in W&B too (summary ``status``, non-zero exit code). ``None``: the job
    was taken over by another process, which writes its status (none written here).

    Never raises: W&B is a mirror of results.json, which the job has written already. An
    error while closing the run is logged as a warning naming the run (its id and the job's
    directory ``run_dir``); the job's recorded status and its own error stand."""
    if "wandb" not in sys.modules:
        return
    import wandb

    run = wandb.run
    if run is None:
        return
    try:
        if status is not None:
            run.summary["status"] = status
        wandb.finish(exit_code=0 if status == "completed" else 1)
    except Exception as error:  # noqa: BLE001 (the job's outcome is recorded: W&B's only)
        where = f" (job {run_dir})" if run_dir is not None else ""
        log.warning(
            "W&B run %s%s was not closed cleanly: %s: %s. The job's status in its "
            "results.json (%s) stands; W&B may show the run as crashed (wandb sync uploads "
            "what it wrote)",
            getattr(run, "id", "?"),
            where,
            type(error).__name__,
            error,
            status or "written by the process that took the job over",
        )


def new_wandb_id() -> str:
    """A W&B run id (8 characters from [a-z0-9], as W&B makes them)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def resumed_wandb_summary(loggers: list, fit_metrics: dict[str, float], best: float | None) -> None:
    """The W&B summary of a resumed job's ``val/*`` (vaesweep.analysis.wandb_summary computes it from the
    logged history, but this attempt's process saw only its own validations, none at all
    when the job was resumed after its last epoch): the last values, and the best
    ``val/elbo`` of every attempt (kept in the checkpoint)."""
    values: dict[str, Any] = dict(fit_metrics)
    last = fit_metrics.get("val/elbo")
    if last is not None:
        values["val/elbo"] = {"last": last} if best is None else val_elbo_summary(best, last)
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.summary.update(values)


# --- reaching the W&B server ---
#: Seconds the W&B connectivity probe waits (name lookup and TCP connect).
WANDB_PROBE_TIMEOUT_S = 5.0
WANDB_DEFAULT_URL = "https://api.wandb.ai"


def wandb_endpoint() -> tuple[str, int]:
    """(host, port) of the W&B server this process would talk to (WANDB_BASE_URL)."""
    url = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL") or WANDB_DEFAULT_URL)
    port = url.port or (80 if url.scheme == "http" else 443)
    return url.hostname or "api.wandb.ai", port


def reachable(host: str, port: int, timeout_s: float = WANDB_PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to host:port opens within ``timeout_s`` (name lookup
    included), else why not."""
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(str(e) or type(e).__name__)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"


_told_modes: set[tuple[str, str]] = set()


def tell_wandb_mode(lg: DictConfig) -> None:
    """W&B's mode is ``logger.mode``, which vaesweep passes to W&B: it wins over a
    ``WANDB_MODE`` in the environment. Says so (once per process) when they differ, rather
    than log offline, say, while the environment asked for online."""
    env = os.environ.get("WANDB_MODE")
    mode = str(lg.get("mode"))
    if lg.get("name") != "wandb" or not env or env == mode or (env, mode) in _told_modes:
        return
    _told_modes.add((env, mode))
    log.warning(
        "WANDB_MODE=%s in the environment is not used: this run logs with logger.mode=%s "
        "(the config decides W&B's mode; pass logger.mode=%s to use that)",
        env,
        mode,
        env,
    )


def check_wandb(cfg: DictConfig) -> None:
    """``logger.mode=online`` without a way to the W&B server: refuse now, naming it, or
    with ``logger.offline_fallback=true`` switch this run to offline with a warning
    (``wandb sync`` uploads it later). Otherwise W&B gives up only after ~90 s."""
    lg = cfg.logger
    tell_wandb_mode(lg)
    if lg.get("name") != "wandb" or lg.get("mode") != "online":
        return
    host, port = wandb_endpoint()
    problem = reachable(host, port)
    if problem is None:
        return
    if lg.get("offline_fallback"):
        log.warning(
            "W&B server %s:%d unreachable (%s): logging offline instead "
            "(logger.offline_fallback=true); upload later with wandb sync",
            host,
            port,
            problem,
        )
        cfg.logger.mode = "offline"
        return
    raise ConfigError(
        f"logger.mode='online' is invalid here: the W&B server {host}:{port} cannot be "
        f"reached ({problem}). Allowed: logger.mode=offline (upload later with wandb sync), "
        "logger.offline_fallback=true (offline when the server cannot be reached), or "
        "logger=csv"
    )
