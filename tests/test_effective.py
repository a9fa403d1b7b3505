"""Keys that change nothing are refused (real Hydra composition, the real CLI).

The mechanism is general: components say which of their options they do not read, and a
key reached by nothing (not even through an interpolation such as ``${beta}``) is refused;
the made-up schedule below declares nothing and is still caught.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from vaesweep.model import schedules
from vaesweep.model.schedules import BetaSchedule
from vaesweep.run.config import CONF_DIR, ConfigError, validate_config
from vaesweep.run.effective import check_distinct, check_overrides, reads, result_config
from vaesweep.sweep.grid import grid_jobs

from conftest import TINY, results_under, run_cli


def configs(*jobs: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return [compose("train", overrides=[*job, "paths.data_dir=/tmp"]) for job in jobs]


def refusal(overrides: list[str]) -> str | None:
    return check_overrides(overrides, configs(overrides))


@pytest.mark.parametrize(
    ("overrides", "key", "points_to"),
    [
        (["beta_schedule=capacity", "beta=4"], "beta=4", "beta_schedule.gamma"),
        (["beta_schedule=geco", "beta_schedule.target=-100", "beta=2"], "beta=2", "target"),
        (["likelihood.momentum=0.9"], "likelihood.momentum", "likelihood.scale=optimal"),
        (
            ["likelihood=laplace", "likelihood.optimal_reduction=example"],
            "optimal_reduction",
            "optimal",
        ),
        (
            ["likelihood.scale=optimal", "likelihood.scale_lr=0.1"],
            "scale_lr",
            "learned or per_pixel",
        ),
        (["likelihood.min_log_scale=-3"], "min_log_scale", "likelihood.scale=fixed"),
        (["model.channels=[8]"], "model.channels", "model=conv"),
        (["+note=first try"], "note", "label.note"),
        (
            [
                "likelihood.scale=learned",
                "likelihood.scale_init=data",
                "likelihood.scale_value=0.3",
            ],
            "scale_value",
            "scale_init=value",
        ),
    ],
)
def test_a_key_nothing_reads_is_refused_with_the_key_the_user_meant(overrides, key, points_to):
    message = refusal(overrides)
    assert message is not None and key in message and points_to in message, message
    assert "no effect" in message


@pytest.mark.parametrize(
    "overrides",
    [
        ["beta=4"],  # the constant schedule reads it through ${beta}
        ["beta_schedule=linear", "beta=4"],
        ["beta_schedule=pi", "beta=4"],  # read as beta_schedule.beta_max: ${beta}
        ["likelihood.scale=optimal", "likelihood.momentum=0.9"],
        ["likelihood.scale=learned", "likelihood.scale_lr=0.03", "likelihood.scale_init=data"],
        ["model=conv", "model.channels=[8]"],
        ["likelihood=laplace", "beta_schedule=capacity", "beta_schedule.gamma=10"],
        ["label.note=first try", "label.tags=[a,b]", "seed=3", "threads=1"],
        ["logger=csv", "trainer.max_epochs=2", "data.batch_size=64", "optimizer.lr=0.01"],
        ["likelihood=bernoulli", "likelihood.allow_nonbinary=true", "data.preprocess=scale"],
    ],
)
def test_keys_that_are_read_pass(overrides):
    assert refusal(overrides) is None


class FixedWeight(BetaSchedule):
    """A user's schedule that knows nothing of the check: β is its own option."""

    name = "fixed_weight"

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def beta_at(self, step: int) -> float:
        return self.weight


def test_a_made_up_component_that_declares_nothing_is_covered(monkeypatch):
    monkeypatch.setitem(schedules.SCHEDULES, "fixed_weight", FixedWeight)
    base = ["beta_schedule.name=fixed_weight", "~beta_schedule.beta", "+beta_schedule.weight=2"]
    message = refusal([*base, "beta=3"])
    assert message is not None and message.startswith("beta=3 has no effect"), message
    assert "beta_schedule=fixed_weight" in message
    assert refusal(base) is None
    read, _ = reads(configs(base)[0])
    assert "beta_schedule.weight" in read and "beta" not in read


def test_a_key_read_by_some_jobs_of_a_sweep_is_accepted_but_not_duplicates():
    # momentum is read by the optimal jobs: the sweep keeps it...
    fixed_key = ["likelihood.scale=fixed,optimal", "likelihood.momentum=0.9"]
    jobs = grid_jobs(fixed_key, {})
    assert len(jobs) == 2
    assert check_overrides(fixed_key, configs(*jobs)) is None
    assert check_distinct(list(zip(jobs, configs(*jobs), strict=True))) is None
    # ...but sweeping it makes the two fixed jobs identical.
    swept = ["likelihood.scale=fixed,optimal", "likelihood.momentum=0.9,0.99"]
    jobs = grid_jobs(swept, {})
    message = check_distinct(list(zip(jobs, configs(*jobs), strict=True)))
    assert message is not None and "likelihood.momentum" in message and "optimal" in message
    # The key is named once, though both of its values differ between the two jobs.
    assert message.count("likelihood.momentum (") == 1, message


def test_equal_values_are_one_job_and_labels_are_not_what_a_job_computes():
    jobs = grid_jobs(["beta=1,1.0"], {})
    message = check_distinct(list(zip(jobs, configs(*jobs), strict=True)))
    assert message is not None and "equal values" in message
    jobs = grid_jobs(["label.note=a,b"], {})
    assert check_distinct(list(zip(jobs, configs(*jobs), strict=True))) is not None
    jobs = grid_jobs(["beta=1,2", "seed=0,1"], {})
    assert check_distinct(list(zip(jobs, configs(*jobs), strict=True))) is None


def test_result_config_holds_what_changes_numbers_only():
    (cfg,) = configs(["beta=2", "label.note=x", "threads=1"])
    values: dict[str, Any] = result_config(cfg)
    assert values["beta"] == 2.0 and values["beta_schedule.beta"] == 2.0
    assert values["likelihood.scale_value"] == 1.0
    assert not any(k.startswith(("label", "threads", "logger", "sweep", "paths")) for k in values)
    assert "likelihood.momentum" not in values and "model.channels" not in values


def test_validate_config_refuses_given_keys_only():
    (cfg,) = configs(["beta_schedule=capacity", "beta=4"])
    with pytest.raises(ConfigError, match=r"beta=4 has no effect.*beta_schedule\.gamma"):
        validate_config(cfg, ["beta_schedule=capacity", "beta=4"])
    validate_config(cfg)  # without overrides (the API, or a multirun's jobs): no check


def test_cli_refuses_a_no_op_sweep_before_any_job(workdir):
    proc = run_cli(
        [
            "-m",
            "beta_schedule=capacity",
            "beta=0.5,1,4",
            *TINY,
            "logger=none",
            "hydra.sweep.dir=sweep",
        ],
        workdir,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "sweep refused, no job was run: beta=0.5,1,4 has no effect" in proc.stderr
    assert "beta_schedule.gamma" in proc.stderr
    assert not (workdir / "sweep").exists()


@pytest.mark.slow
def test_cli_label_is_recorded_and_an_unknown_key_is_refused(workdir):
    proc = run_cli([*TINY, "logger=none", "+note=hello", "hydra.run.dir=a"], workdir)
    assert proc.returncode != 0
    assert "note=hello has no effect" in proc.stderr and "label.note" in proc.stderr
    (failed,) = results_under(workdir / "a")
    assert failed["status"] == "failed" and failed["metrics"] == {}
    proc = run_cli([*TINY, "logger=none", "label.note=hello", "hydra.run.dir=b"], workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (done,) = results_under(workdir / "b")
    assert done["status"] == "completed" and done["config"]["label"]["note"] == "hello"
    assert json.dumps(done["config"]["label"]["tags"]) == "[]"
