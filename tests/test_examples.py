"""The worked example of a user's own component: examples/vaesweep_examples/student_t.py.

It is selected from the command line by its config in examples/conf (``--config-dir``),
goes through the same checks as the built-ins, trains, sweeps and appears in the figures.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from scipy import stats

from vaesweep.model import components
from vaesweep.run.config import CONF_DIR, ConfigError, validate_config

from conftest import REPO, RUN_PY, TINY, cli_env

EXAMPLES = REPO / "examples"
STUDENT_T = EXAMPLES / "conf" / "likelihood" / "student_t.yaml"


@pytest.fixture(autouse=True)
def examples_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def _options(**changes) -> dict:
    options = OmegaConf.to_container(OmegaConf.load(STUDENT_T))
    return {**options, **changes}


@pytest.mark.parametrize("dof", [1.0, 2.5, 30.0])
def test_log_prob_is_scipys_student_t(dof):
    shape = (1, 3, 2)
    likelihood = components.build("likelihood", _options(dof=dof, scale_value=0.2), shape)
    likelihood.double()
    generator = torch.Generator().manual_seed(0)
    loc = torch.rand(4, *shape, generator=generator, dtype=torch.float64)
    x = torch.rand(4, *shape, generator=generator, dtype=torch.float64)
    ours = likelihood.log_prob(x, loc)
    scale = float(likelihood.scale())  # 0.2 as held in float32 before .double()
    reference = stats.t.logpdf(x.numpy(), df=dof, loc=loc.numpy(), scale=scale).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(ours.detach().numpy(), reference, rtol=1e-12, atol=1e-12)
    assert likelihood.scale_parameters() == [likelihood.log_scale]
    assert math.isclose(scale, 0.2, rel_tol=1e-7)


def _config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", *overrides])
    with open_dict(cfg):
        cfg.likelihood = OmegaConf.load(STUDENT_T)  # what --config-dir likelihood=student_t selects
    return cfg


def test_a_user_component_is_validated_like_the_built_ins():
    validate_config(_config())  # the example as shipped is valid
    cases = [
        ("dof", -1.0, "likelihood.dof=-1.0 is invalid: allowed a finite number > 0"),
        ("dgf", 3.0, "likelihood 'student_t' has no option(s) ['dgf']: accepted options are"),
        ("_target_", "vaesweep_examples.nope.T", "likelihood._target_='vaesweep_examples.nope.T'"),
        ("_target_", "torch.nn.Linear", "is not a subclass of vaesweep."),
        ("name", "gaussian", "likelihood.name='gaussian' is invalid: it labels results"),
        ("name", None, "likelihood.name is not set"),
    ]
    for key, value, message in cases:
        cfg = _config()
        with open_dict(cfg):
            cfg.likelihood[key] = value
        with pytest.raises(ConfigError) as error:
            validate_config(cfg)
        assert message in str(error.value), str(error.value)


def test_a_fixed_scale_refuses_its_learning_rate_as_the_built_ins_do(tmp_path):
    """``unread_options``: with ``learn_scale=false`` the scale is not trained, so
    ``scale_lr`` changes nothing; set on the command line it is refused (a sweep over it
    would run identical jobs), as ``likelihood.scale_lr`` is with a fixed Gaussian scale."""
    fixed = ["likelihood=student_t", "likelihood.learn_scale=false", "likelihood.scale_lr=0.1"]
    cfg = _config()
    with open_dict(cfg):
        cfg.likelihood.learn_scale, cfg.likelihood.scale_lr = False, 0.1
    validate_config(cfg)  # the file's scale_lr, not given: nothing refused
    with pytest.raises(ConfigError) as refused:
        validate_config(cfg, fixed)
    assert str(refused.value).startswith(
        "likelihood.scale_lr=0.1 has no effect on what this run computes: it is read only "
        "with likelihood.learn_scale=true, and this run has likelihood.learn_scale=false"
    ), str(refused.value)
    cfg.likelihood.learn_scale = True
    validate_config(cfg, ["likelihood=student_t", "likelihood.scale_lr=0.1"])
    args = [
        "--config-dir",
        str(EXAMPLES / "conf"),
        "-m",
        *fixed[:2],
        "likelihood.scale_lr=0.01,0.1",
    ]
    sweep = _python([str(RUN_PY), *args, *TINY, "logger=csv", "hydra.sweep.dir=sweep"], tmp_path)
    assert sweep.returncode != 0
    assert "sweep refused, no job was run: likelihood.scale_lr=0.01,0.1 has no effect" in (
        sweep.stderr
    ), sweep.stderr[-3000:]
    assert not (tmp_path / "sweep").exists() or not list((tmp_path / "sweep").rglob("*.json"))


def _python(args: list[str], cwd) -> subprocess.CompletedProcess:
    """``python ARGS`` with the examples package importable, as the user's PYTHONPATH."""
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(EXAMPLES), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_user_likelihood_sweeps_and_appears_in_the_figures(tmp_path):
    sweep = ["--config-dir", str(EXAMPLES / "conf"), "-m", "likelihood=gaussian,student_t"]
    run = _python([str(RUN_PY), *sweep, *TINY, "logger=csv", "hydra.sweep.dir=sweep"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    records = {
        r["config"]["likelihood"]["name"]: r
        for r in (json.loads(p.read_text()) for p in (tmp_path / "sweep").rglob("results.json"))
    }
    assert sorted(records) == ["gaussian", "student_t"]
    student = records["student_t"]
    assert student["status"] == "completed"
    assert math.isfinite(student["metrics"]["test/nll"])
    assert student["config"]["likelihood"]["_target_"] == (
        "vaesweep_examples.student_t.StudentTLikelihood"
    )
    # Figures read the runs' files only: the user's module need not be importable for them.
    figures = subprocess.run(
        [sys.executable, "-m", "vaesweep", "figures", "sweep"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert figures.returncode == 0, figures.stderr[-3000:]
    table = (tmp_path / "sweep" / "figures" / "results_table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| student_t"))
    assert f"{student['metrics']['test/nll']:.2f}" in row
    for name in ("reconstructions.png", "samples.png", "rate_distortion.png"):
        assert (tmp_path / "sweep" / "figures" / name).stat().st_size > 0


@pytest.mark.slow
def test_a_metric_a_component_cannot_give_is_named_not_nulled(tmp_path):
    """A Cauchy (Student-t with one degree of freedom) has no mean, so no MSE or MAE: the
    run completes on its finite NLL and ELBO, and results.json names the two metrics it
    could not compute, with their value, instead of recording them as null."""
    args = ["--config-dir", str(EXAMPLES / "conf"), "likelihood=student_t"]
    proc = _python(
        [str(RUN_PY), *args, "likelihood.dof=1.0", *TINY, "logger=none", "hydra.run.dir=run"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["status"] == "completed"
    assert {"test/mse", "test/mae"} <= set(result["unavailable"])
    assert "test/mse" not in result["metrics"] and math.isfinite(result["metrics"]["test/nll"])
    assert "could not be computed" in proc.stdout + proc.stderr
