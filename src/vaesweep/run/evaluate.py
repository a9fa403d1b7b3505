"""Paper-grade evaluation of finished runs, without retraining: ``vaesweep evaluate``.

A sweep's runs are scored at training time with a modest number of importance samples
(``eval.iwae_k``, default 100). Papers report log-likelihoods with many more (Burda et al.
use K = 5000). :func:`evaluate_run` loads a completed run's checkpoint (last or best), builds
its data exactly as the run did (same split, same fixed test noise), and scores the test split
again with the IWAE bound at the requested K. The checkpoint's RNG state is restored before
testing, as in the run itself, and the same test examples are scored as the run scored (the
first batches only where its ``trainer.limit_test_batches`` cut its test split short), so the
same K reproduces the run's own test metrics exactly. Every run's refusals (not completed, no
checkpoint, a damaged one, an IWAE chunk that would not fit in memory) come before any run is
scored.

The result goes to ``<run>/evaluations/iwae_k=K,checkpoint=C.json`` (atomically), beside
results.json and never over it; that name means the run's own test examples, comparable with
its training-time ``test/*``. ``eval.test_examples=N`` scores the first N examples of the test
split instead, named ``...,test_examples=N`` unless they are exactly the run's own. An
evaluation that exists is not computed again (a relaunch continues where a stopped one ended),
unless it holds another number of test examples than its name stands for (one written before
``trainer.limit_test_batches`` was applied); ``vaesweep collect`` and ``vaesweep figures`` read
it as the columns ``test/nll@iwae_k=K,checkpoint=C`` etc.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from omegaconf import OmegaConf

from vaesweep.core.checks import ConfigError, is_int, is_number, require
from vaesweep.core.helpers import now
from vaesweep.data import VAEDataModule
from vaesweep.model.module import VAE
from vaesweep.run import record
from vaesweep.run.config import (
    check_components,
    check_test_settings,
    limited_batches,
    resolve_preprocess,
)
from vaesweep.run.console import quiet_libraries
from vaesweep.run.gpus import n_devices
from vaesweep.run.memory import check_memory
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


#: The precisions Lightning runs on a CPU (a 16-bit float one needs a GPU).
CPU_PRECISIONS = ("32-true", "64-true", "bf16-mixed", "bf16-true")


def evaluation_precision(recorded: Any, run_dir: Path) -> str:
    """The precision an evaluation scores at: the one the run's test ran at (results.json's
    ``precision``), so that its own K reproduces its test metrics; 32-true where none is
    recorded, or where this machine cannot run it (16-bit floats without a GPU: said)."""
    if not isinstance(recorded, str) or not recorded:
        return "32-true"
    if torch.cuda.is_available() or recorded in CPU_PRECISIONS:
        return recorded
    log.warning(
        "%s ran at precision %s, which needs a GPU: scored at 32-true here (its own K will "
        "not reproduce its test metrics exactly)",
        run_dir,
        recorded,
    )
    return "32-true"


def score(
    model: VAE,
    data: L.LightningDataModule,
    ckpt_path: str | None = None,
    precision: str = "32-true",
    deterministic: bool | str | None = None,
) -> dict[str, float]:
    """The test metrics of ``model`` on ``data``'s test split (the module's own test step:
    IWAE with ``model.hparams.iwae_k`` samples), restoring ``ckpt_path`` first if given, at
    ``precision`` (Lightning's name), with ``deterministic`` as the run's ``trainer``: the
    Trainer then sets what deterministic CUDA kernels need (``CUBLAS_WORKSPACE_CONFIG``;
    without it the first matrix product on a GPU raises under deterministic algorithms)."""
    trainer = L.Trainer(
        accelerator="cpu" if not torch.cuda.is_available() else "auto",
        precision=precision,
        deterministic=deterministic,
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


class Plan(NamedTuple):
    """One run's evaluation, decided before anything is scored (:func:`plan_run`)."""

    run_dir: Path
    cfg: Any  # the run's config (DictConfig)
    ckpt: Path
    name: str  # the evaluation's file stem (record.evaluation_name)
    test_examples: int | None  # as recorded: None = the run's own test examples
    examples: int  # how many of the test split's first examples are scored
    split: int  # the test split's size
    iwae_k: int
    checkpoint: str  # last or best
    iwae_chunk: int | None
    precision: str  # the run's (evaluation_precision)
    dataset: Any = None  # the data the run recorded (results.json's dataset)


def tested_examples(limit: Any, split: int, eval_batch_size: int) -> int:
    """How many of the test split's first examples a run's test scored on one process: all
    ``split`` of them unless ``trainer.limit_test_batches`` (``limit``: an integer, batches
    of ``eval_batch_size``, or a fraction of the batches, rounded down as Lightning rounds
    it) stopped it after its first batches."""
    if limit is None:
        return split
    return min(split, limited_batches(math.ceil(split / eval_batch_size), limit) * eval_batch_size)


def check_chunk_memory(cfg: Any, iwae_k: int, iwae_chunk: int | None) -> None:
    """The run's config with the evaluation's ``eval.iwae_k`` and ``eval.iwae_chunk``,
    through a run's own memory check (:func:`vaesweep.run.memory.check_memory`): a chunk
    whose decoder output would not fit is refused naming ``eval.iwae_chunk``, before
    anything is scored. Its model check counts 16 bytes a parameter, as for training: the
    checkpoint the evaluation loads holds Adam's two moments beside the weights."""
    check_memory(OmegaConf.merge(cfg, {"eval": {"iwae_k": iwae_k, "iwae_chunk": iwae_chunk}}))


def _data(cfg: Any, test_examples: int | None) -> VAEDataModule:
    """The run's data, built exactly as the run built it (same split, same fixed noise)."""
    return VAEDataModule(
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


def _processes(trainer: Any) -> int:
    """The processes a run's config trained and tested on, as far as it says: nodes ×
    devices (an explicit count or list; ``auto`` and -1 count as one)."""
    devices = n_devices(trainer.get("devices", 1)) or 1
    nodes = trainer.get("num_nodes", 1)
    return devices * (nodes if is_int(nodes) and nodes >= 1 else 1)


def _examples(
    result: dict[str, Any], cfg: Any, test_examples: int | None, run_dir: Path
) -> tuple[int, int, int | None]:
    """(the test split's size, how many of its first examples are scored, the
    ``test_examples`` the evaluation is named and recorded with: None when they are the
    run's own test examples, comparable with its training-time ``test/*``)."""
    sizes = (result.get("dataset") or {}).get("sizes") or {}
    split = sizes.get("test") if isinstance(sizes, dict) else None
    if not is_int(split):  # not recorded: the data tell
        split = _data(cfg, None).info["sizes"]["test"]
    limit = cfg.trainer.get("limit_test_batches")
    bs = cfg.data.eval_batch_size
    own = tested_examples(limit, split, bs)
    # Several processes each test the first batches of their own share: with a limit,
    # the run's examples are then not the split's first ones. Its count says so, unless the
    # shares divide evenly (2 × 5 batches of 500 = 10 × 0.5 of them): the processes the run
    # asked for say so then.
    recorded = (result.get("metrics") or {}).get("test/n_examples")
    first = not is_number(recorded) or int(recorded) == own
    processes = _processes(cfg.trainer)
    if limit is not None and processes > 1:  # did the limit cut a process's share?
        share = math.ceil((split // processes) / bs)
        if limited_batches(share, limit) < share:
            first = False
        else:  # every process tested all of its share: the whole split
            own = split
            first = not is_number(recorded) or int(recorded) == own
    if test_examples is None:
        if not first:
            why = (
                f"it was tested on {processes} processes (trainer.devices × num_nodes), each "
                f"on the first batches of its own share under trainer.limit_test_batches="
                f"{limit}"
                if processes > 1
                else f"its test metrics are over {recorded:g} examples, not the first {own} "
                f"that trainer.limit_test_batches={limit} with data.eval_batch_size={bs} "
                "leaves one process (tested on several processes?)"
            )
            raise ConfigError(
                f"{run_dir} cannot be scored on its own test examples: {why}; give "
                "eval.test_examples=N to score the first N examples of its test split "
                "(named so)"
            )
        return split, own, None
    examples = min(test_examples, split)
    if first and examples == own:
        log.info(
            "%s: eval.test_examples=%d covers the %d test examples the run was scored on: "
            "those are scored, named as the run's own",
            run_dir,
            test_examples,
            own,
        )
        return split, own, None
    if test_examples > split:
        log.info(
            "%s: eval.test_examples=%d is more than its %d test examples: the whole split is "
            "scored, named test_examples=%d",
            run_dir,
            test_examples,
            split,
            split,
        )
    return split, examples, examples


def plan_run(
    run_dir: str | os.PathLike[str],
    iwae_k: int,
    checkpoint: str = "last",
    iwae_chunk: int | None = None,
    test_examples: int | None = None,
) -> Plan | None:
    """What evaluating one run scores and under which name, decided before anything is
    scored; None when that evaluation exists (and holds as many test examples as it stands
    for). Raises ConfigError for a run that cannot be evaluated: not completed, no
    checkpoint, a damaged one, an ``eval.iwae_chunk`` that would not fit in memory."""
    check_settings(iwae_k, checkpoint, iwae_chunk, test_examples)
    run_dir = Path(run_dir)
    result = record.read(run_dir)
    status, reason = result_status(result)
    if result is None or status != record.COMPLETED:
        why = f"{status}: {reason}" if reason else status
        raise ConfigError(f"{run_dir} holds no completed result ({why}): nothing to evaluate")
    cfg = OmegaConf.create(result["config"])
    split, examples, label = _examples(result, cfg, test_examples, run_dir)
    name = record.evaluation_name(iwae_k, checkpoint, label)
    existing = record.read_evaluations(run_dir).get(name)
    if existing is not None:
        n = (existing.get("metrics") or {}).get("test/n_examples")
        if not is_number(n) or int(n) == examples:
            return None
        log.info(
            "%s: evaluations/%s.json holds %g test examples, not the %d it stands for "
            "(written before trainer.limit_test_batches was applied): scored again",
            run_dir,
            name,
            n,
            examples,
        )
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    if not ckpt.is_file():
        raise ConfigError(
            f"eval.checkpoint={checkpoint} is invalid for {run_dir}: it has no {ckpt.name} "
            "(trained with trainer.enable_checkpointing=false?)"
        )
    verify_checkpoint(ckpt, "evaluated")  # a damaged one is named, never scored
    check_components(cfg)  # first: a class that cannot be imported is named under its key
    if iwae_chunk is None:  # the run's own (its draws depend on it: its K then reproduces it)
        iwae_chunk = (cfg.get("eval") or {}).get("iwae_chunk")
    check_chunk_memory(cfg, iwae_k, iwae_chunk)
    precision = evaluation_precision(result.get("precision"), run_dir)
    return Plan(
        run_dir, cfg, ckpt, name, label, examples, split, iwae_k, checkpoint, iwae_chunk,
        precision, result.get("dataset"),
    )  # fmt: skip


def run_plan(plan: Plan) -> dict[str, Any]:
    """Scores ``plan`` (from :func:`plan_run`) and writes it."""
    cfg, ckpt, iwae_k, iwae_chunk = plan.cfg, plan.ckpt, plan.iwae_k, plan.iwae_chunk
    started = time.monotonic()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.get("deterministic"):  # as the run's Trainer set it ("warn": warn only)
        torch.use_deterministic_algorithms(True, warn_only=cfg.trainer.deterministic == "warn")
    data = _data(cfg, plan.examples if plan.examples < plan.split else None)
    changed = record.data_changed(plan.dataset, data.info)
    if changed:  # scores of other images would be named as the run's
        root = cfg.data.get("root")
        where = (
            f"where its recorded data.root={root} points"
            if root is not None
            else "where $VAESWEEP_DATA_ROOT (its data.root is null) or the default search finds it"
        )
        raise ConfigError(
            f"{plan.run_dir} was not evaluated: {changed}. Evaluate it with the copy it was "
            f"trained and tested on, {where}"
        )
    model = VAE.load_from_checkpoint(ckpt, map_location="cpu", iwae_k=iwae_k, iwae_chunk=iwae_chunk)
    metrics = score(model, data, str(ckpt), plan.precision, cfg.trainer.get("deterministic"))
    # As a run's own test: a score that is not finite is no result (never counted as done:
    # the next call scores it again; collect and figures do not read it).
    problem = record.unearned(metrics)
    evaluation = {
        "status": record.COMPLETED if problem is None else record.DIVERGED,
        "error": None if problem is None else f"not finite: {problem}",
        "iwae_k": iwae_k,
        "iwae_chunk": iwae_chunk,
        "checkpoint": plan.checkpoint,
        "precision": plan.precision,
        "test_examples": plan.test_examples,
        "limit_test_batches": cfg.trainer.get("limit_test_batches"),
        "checkpoint_file": str(ckpt.relative_to(plan.run_dir)),
        "metrics": metrics,
        "unavailable": record.not_finite(metrics),
        "evaluated_at": now(),
        "duration_s": round(time.monotonic() - started, 3),
        "versions": record.versions(),
    }
    record.write_evaluation(plan.run_dir, plan.name, evaluation)
    if problem is not None:
        raise EvaluationDiverged(
            f"scored at iwae_k={iwae_k}, but {problem}: written to "
            f"{record.EVALUATIONS_DIR}/{plan.name}.json as {record.DIVERGED}, not used by "
            "collect or figures (a larger eval.iwae_k, or another checkpoint, may score it)"
        )
    return evaluation


class EvaluationDiverged(RuntimeError):
    """An evaluation whose test score is not finite (written, as diverged, and raised)."""


def evaluate_run(
    run_dir: str | os.PathLike[str],
    iwae_k: int,
    checkpoint: str = "last",
    iwae_chunk: int | None = None,
    test_examples: int | None = None,
) -> dict[str, Any] | None:
    """Scores one completed run again (see the module doc); returns the evaluation written,
    or None when it already exists. Raises ConfigError for a run that cannot be evaluated
    (:func:`plan_run`). ``test_examples``: score the first N examples of the test split only
    (K = 5000 costs 50 times the training-time K = 100); the evaluation's name and
    ``test/n_examples`` say so."""
    plan = plan_run(run_dir, iwae_k, checkpoint, iwae_chunk, test_examples)
    return None if plan is None else run_plan(plan)


def evaluate_sweep(
    dirs: list[str | os.PathLike[str]],
    iwae_k: int,
    checkpoint: str = "last",
    iwae_chunk: int | None = None,
    test_examples: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> SweepEvaluation:
    """Evaluates every completed run below ``dirs``, as ``vaesweep collect`` counts them
    (:func:`result_status`: not a ``fast_dev_run`` nor an ``incomplete`` result). Every
    run's refusal (:func:`plan_run`) comes before any run is scored, except data that differ
    from the run's (known once they are read, when its turn comes); a refused run is a
    problem and the others go on. ``progress``: told one line per run evaluated, found
    already evaluated, or left out (with its status and why)."""
    check_settings(iwae_k, checkpoint, iwae_chunk, test_examples)
    done = skipped = 0
    problems: list[str] = []
    left_out: dict[str, str] = {}
    plans: list[Plan] = []

    def tell(line: str) -> None:
        log.info("%s", line)
        if progress is not None:
            progress(line)

    runs = sorted({p.parent for d in dirs for p in Path(d).rglob(record.RESULTS_FILE)})
    for run_dir in runs:
        status, reason = result_status(record.read(run_dir))
        if status != record.COMPLETED:
            left_out[str(run_dir)] = status
            tell(f"{run_dir}: not evaluated, {status}" + (f" ({reason})" if reason else ""))
            continue
        try:
            plan = plan_run(run_dir, iwae_k, checkpoint, iwae_chunk, test_examples)
        except Exception as e:  # one run's problem never stops the others
            problems.append(f"{run_dir}: {type(e).__name__}: {e}")
            continue
        if plan is None:
            skipped += 1
            tell(f"{run_dir}: already evaluated")
        else:
            plans.append(plan)
    for plan in plans:
        started = time.monotonic()
        try:
            with quiet_libraries():  # Lightning's Trainer, restored after each run
                evaluation = run_plan(plan)
        except Exception as e:  # one run's problem never stops the others
            problems.append(f"{plan.run_dir}: {type(e).__name__}: {e}")
            continue
        done += 1
        nll = evaluation["metrics"].get("test/nll")
        tell(
            f"{plan.run_dir}: test/nll={nll:.4f} at iwae_k={iwae_k} "
            f"({time.monotonic() - started:.1f} s)"
        )
    return SweepEvaluation(done, skipped, problems, left_out)
