"""Paper-grade evaluation of finished runs, without retraining: ``vaesweep evaluate``.

A sweep's runs are scored at training time with a modest number of importance samples
(``eval.iwae_k``, default 100). Papers report log-likelihoods with many more (Burda et al.
use K = 5000). :func:`evaluate_run` loads a completed run's checkpoint (last or best), builds
its data exactly as the run did (same split, same fixed test noise), and scores the test split
again with the IWAE bound at the requested K. The checkpoint's RNG state is restored before
testing, as in the run itself, so the same K reproduces the run's own test metrics exactly.

The result goes to ``<run>/evaluations/iwae_k=K,checkpoint=C.json`` (atomically), beside
results.json and never over it. An evaluation that exists is not computed again (a relaunch
continues where a stopped one ended); ``vaesweep collect`` and ``vaesweep figures`` read it as
the columns ``test/nll@iwae_k=K,checkpoint=C`` etc.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from omegaconf import OmegaConf

from vaesweep.core.checks import ConfigError, is_int, require
from vaesweep.core.helpers import now
from vaesweep.data import VAEDataModule
from vaesweep.model.module import VAE
from vaesweep.run import record
from vaesweep.run.config import check_test_settings, resolve_preprocess
from vaesweep.run.console import quiet_libraries
from vaesweep.run.policy import verify_checkpoint

log = logging.getLogger("vaesweep")


def check_settings(
    iwae_k: Any, checkpoint: Any, iwae_chunk: Any, test_examples: Any = None
) -> None:
    """The evaluation's keys, refused in the config's own words (as a run's config)."""
    check_test_settings(checkpoint=checkpoint, iwae_k=iwae_k, iwae_chunk=iwae_chunk)
    require(
        test_examples is None or (is_int(test_examples) and test_examples >= 1),
        "eval.test_examples",
        test_examples,
        "null (the whole test split) or an integer ≥ 1",
    )


def score(
    model: VAE, data: L.LightningDataModule, ckpt_path: str | None = None
) -> dict[str, float]:
    """The test metrics of ``model`` on ``data``'s test split (the module's own test step:
    IWAE with ``model.hparams.iwae_k`` samples), restoring ``ckpt_path`` first if given."""
    trainer = L.Trainer(
        accelerator="cpu" if not torch.cuda.is_available() else "auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    tested = trainer.test(model, datamodule=data, ckpt_path=ckpt_path, verbose=False)[0]
    return {k: float(v) for k, v in tested.items()}


def result_status(result: dict[str, Any] | None) -> tuple[str, str | None]:
    """(status, why it differs from the recorded one or None) that ``vaesweep collect``
    gives ``result`` (as :func:`vaesweep.run.record.read` returns it): ``frame_status``, so
    a ``fast_dev_run`` (completed, but one batch of each split) or an ``incomplete`` result
    is not a result to score; ``unreadable`` for a results.json that is not a JSON object."""
    if result is None:
        return record.UNREADABLE, f"its {record.RESULTS_FILE} is not a JSON object"
    return record.frame_status(result)


class SweepEvaluation(NamedTuple):
    """What :func:`evaluate_sweep` did: runs evaluated, runs already evaluated, the problems
    of runs that could not be (one line each), and the runs left out as not a completed
    result, {run_dir: status}."""

    done: int
    skipped: int
    problems: list[str]
    left_out: dict[str, str]


def _within_split(
    result: dict[str, Any] | None, test_examples: int | None, run_dir: Path
) -> int | None:
    """``test_examples``, or None (the whole split) when it is at least the run's test split:
    the evaluation is then the whole split's, named and recorded as such (not as N examples
    that were never there)."""
    sizes = ((result or {}).get("dataset") or {}).get("sizes") or {}
    size = sizes.get("test") if isinstance(sizes, dict) else None
    if test_examples is None or not isinstance(size, int) or test_examples < size:
        return test_examples
    log.info(
        "%s: eval.test_examples=%d is at least its %d test examples: the whole split is scored",
        run_dir,
        test_examples,
        size,
    )
    return None


def evaluate_run(
    run_dir: str | os.PathLike[str],
    iwae_k: int,
    checkpoint: str = "last",
    iwae_chunk: int | None = None,
    test_examples: int | None = None,
) -> dict[str, Any] | None:
    """Scores one completed run again (see the module doc); returns the evaluation written,
    or None when it already exists. Raises ConfigError for a run that cannot be evaluated
    (not completed, no checkpoint, a damaged one). ``test_examples``: score the first N
    examples of the test split only (K = 5000 costs 50 times the training-time K = 100);
    the evaluation's name and ``test/n_examples`` say so."""
    check_settings(iwae_k, checkpoint, iwae_chunk, test_examples)
    run_dir = Path(run_dir)
    result = record.read(run_dir)
    test_examples = _within_split(result, test_examples, run_dir)
    name = record.evaluation_name(iwae_k, checkpoint, test_examples)
    if name in record.read_evaluations(run_dir):
        return None
    status, reason = result_status(result)
    if result is None or status != record.COMPLETED:
        why = f"{status}: {reason}" if reason else status
        raise ConfigError(f"{run_dir} holds no completed result ({why}): nothing to evaluate")
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    if not ckpt.is_file():
        raise ConfigError(
            f"eval.checkpoint={checkpoint} is invalid for {run_dir}: it has no {ckpt.name} "
            "(trained with trainer.enable_checkpointing=false?)"
        )
    verify_checkpoint(ckpt)
    cfg = OmegaConf.create(result["config"])
    started = time.monotonic()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    data = VAEDataModule(
        name=cfg.data.name,
        root=cfg.data.root,
        download=cfg.data.download,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        preprocess=resolve_preprocess(cfg),
        seed=cfg.seed,
        val_size=cfg.data.val_size,
        test_size=cfg.data.test_size,
        test_examples=test_examples,
    )
    model = VAE.load_from_checkpoint(ckpt, map_location="cpu", iwae_k=iwae_k, iwae_chunk=iwae_chunk)
    metrics = score(model, data, str(ckpt))
    evaluation = {
        "status": record.COMPLETED,
        "iwae_k": iwae_k,
        "checkpoint": checkpoint,
        "test_examples": test_examples,
        "checkpoint_file": str(ckpt.relative_to(run_dir)),
        "metrics": metrics,
        "unavailable": record.not_finite(metrics),
        "evaluated_at": now(),
        "duration_s": round(time.monotonic() - started, 3),
        "versions": record.versions(),
    }
    record.write_evaluation(run_dir, name, evaluation)
    return evaluation


def evaluate_sweep(
    dirs: list[str | os.PathLike[str]],
    iwae_k: int,
    checkpoint: str = "last",
    iwae_chunk: int | None = None,
    test_examples: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> SweepEvaluation:
    """Evaluates every completed run below ``dirs``, as ``vaesweep collect`` counts them
    (:func:`result_status`: not a ``fast_dev_run`` nor an ``incomplete`` result).
    ``progress``: told one line per run evaluated, found already evaluated, or left out
    (with its status and why)."""
    check_settings(iwae_k, checkpoint, iwae_chunk, test_examples)
    done = skipped = 0
    problems: list[str] = []
    left_out: dict[str, str] = {}
    runs = sorted({p.parent for d in dirs for p in Path(d).rglob(record.RESULTS_FILE)})
    for run_dir in runs:
        status, reason = result_status(record.read(run_dir))
        if status != record.COMPLETED:
            left_out[str(run_dir)] = status
            line = f"{run_dir}: not evaluated, {status}" + (f" ({reason})" if reason else "")
            log.info("%s", line)
            if progress is not None:
                progress(line)
            continue
        started = time.monotonic()
        try:
            with quiet_libraries():  # Lightning's Trainer, restored after each run
                evaluation = evaluate_run(run_dir, iwae_k, checkpoint, iwae_chunk, test_examples)
        except Exception as e:  # one run's problem never stops the others
            problems.append(f"{run_dir}: {type(e).__name__}: {e}")
            continue
        if evaluation is None:
            skipped += 1
            line = f"{run_dir}: already evaluated"
        else:
            done += 1
            nll = evaluation["metrics"].get("test/nll")
            line = f"{run_dir}: test/nll={nll:.4f} at iwae_k={iwae_k} ({time.monotonic() - started:.1f} s)"
        log.info("%s", line)
        if progress is not None:
            progress(line)
    return SweepEvaluation(done, skipped, problems, left_out)
