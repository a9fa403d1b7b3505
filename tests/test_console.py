"""What a run and the mission sweep print when the output is not a terminal (a log file, a
SLURM output file): each message once, no library noise, one line per epoch, and a sweep
that reads as a story (job k/n, its overrides, its outcome, then the summary table)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import TINY, run_cli

NOISE = (
    "Tip:",
    "Warning",
    "WARNING",
    "deprecated",
    "exists and is not empty",
    "logging interval",
    "GPU available",
    "Traceback",
)
EPOCHS = 2
ARGS = [a for a in TINY if not a.startswith(("trainer.max_epochs", "trainer.enable_progress"))]
ARGS += [f"trainer.max_epochs={EPOCHS}", "trainer.enable_progress_bar=true"]


def _messages(text: str) -> list[str]:
    """The console's lines without their timestamps."""
    return [re.sub(r"^\[[\d\-:, ]+\]", "", line).strip() for line in text.splitlines()]


def _check_clean(console: str) -> None:
    assert "\r" not in console  # no progress-bar redraws in a file
    for word in NOISE:
        assert word not in console, f"{word!r} on the console:\n{console}"
    repeated = [m for m, n in Counter(_messages(console)).items() if n > 1 and m]
    assert not repeated, repeated


@pytest.mark.slow
def test_a_run_prints_each_message_once_and_one_line_per_epoch(tmp_path):
    proc = run_cli([*ARGS, "logger=wandb", "hydra.run.dir=run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    _check_clean(console)
    epochs = [re.search(r" - epoch (\d+/\d+) ", m) for m in _messages(console)]
    assert [e.group(1) for e in epochs if e] == [f"{e}/{EPOCHS}" for e in range(1, EPOCHS + 1)]
    result = tmp_path / "run" / "results.json"
    assert any(m.endswith(f"completed: {result}") for m in _messages(console))
    # What the console leaves out is still in the job's log file, once.
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("`Trainer.fit` stopped") == 1
    assert "Tip:" not in log


@pytest.mark.slow
def test_the_mission_sweep_reads_as_a_story(tmp_path):
    proc = run_cli(
        [
            "-m",
            "likelihood=gaussian,laplace",
            "beta=0.5,1,4",
            *ARGS,
            "logger=wandb",
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    _check_clean(console)
    lines = _messages(console)
    story = [m for m in lines if re.match(r"^\[HYDRA\]\s+#\d+ :|^\[vaesweep\]\[INFO\] - job ", m)]
    assert len(story) == 12
    for k in range(6):
        launched, outcome = story[2 * k], story[2 * k + 1]
        assert launched.startswith("[HYDRA]") and f"#{k} :" in launched
        assert "likelihood=" in launched and "beta=" in launched
        assert re.search(rf"job {k + 1}/6 completed in [\d.]+ s: test/nll=", outcome), outcome
    epochs = [m for m in lines if re.search(r" - epoch \d+/\d+ ", m)]
    assert len(epochs) == 6 * EPOCHS
    table = lines.index(next(m for m in lines if m.startswith("Sweep ") and "(6 jobs)" in m))
    assert table > lines.index(story[-1])
    assert sum(" completed " in m for m in lines[table:]) == 6
    for log in Path(tmp_path, "sweep").glob("*/train.log"):
        assert log.read_text().count("`Trainer.fit` stopped") == 1


def test_quiet_libraries_restores_the_levels_and_filters_it_changed():
    """``vaesweep evaluate``'s quieting holds inside its block only: a notebook that
    evaluates and then trains sees Lightning's messages and warnings as before."""
    import logging
    import warnings

    from vaesweep.run.console import quiet_libraries

    logger = logging.getLogger("lightning.pytorch")
    logger.setLevel(logging.DEBUG)
    filters = list(warnings.filters)
    message = "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint"
    with quiet_libraries():
        assert logger.getEffectiveLevel() == logging.WARNING
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn(message, UserWarning, stacklevel=1)
        assert not seen  # ignored inside (record=True keeps the filters it found)
    assert logger.level == logging.DEBUG
    assert warnings.filters == filters
    logger.setLevel(logging.NOTSET)
