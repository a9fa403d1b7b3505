"""Components of a user's own, as a user writes them (a module outside vaesweep, selected by
``_target_``): what vaesweep refuses before training, and what it must not trip over.

- a likelihood with neither ``distribution`` nor the methods the VAE calls without it
  (``log_prob``, ``mean``) is refused when built, naming the class and what to implement;
- any exception a constructor raises (a TypeError, not only a ValueError) is a ConfigError
  under the group's key, recorded in results.json as a refusal;
- a β schedule without a class-level ``name`` (its config sets it) and with ``settles()``
  is named by its config in the schedule-length warning;
- ``repr`` of a schedule that keeps an argument under another attribute name.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from vaesweep.data import VAEDataModule
from vaesweep.model import components
from vaesweep.model.module import VAE
from vaesweep.model.networks import MLP
from vaesweep.model.schedules import ConstantBeta
from vaesweep.run.callbacks import ScheduleLength
from vaesweep.run.config import CONF_DIR, ConfigError, validate_config

from conftest import TINY, cli_env, run_cli

MODULE = "vaesweep_user_components_test"
SOURCE = '''
from torch.distributions import Independent, Normal

from vaesweep.model.likelihoods import Likelihood
from vaesweep.model.schedules import BetaSchedule


class NoDistribution(Likelihood):
    data_kind = "continuous"
    param_channels = 1


class LogProbOnly(Likelihood):
    data_kind = "continuous"
    param_channels = 1

    def log_prob(self, x, params):
        (loc,) = self.split(params)
        return Normal(loc, 0.1).log_prob(x).sum((-3, -2, -1))


class LogProbAndMean(LogProbOnly):
    def mean(self, params):
        return params


class Warmup(BetaSchedule):
    """No class-level name: its config sets it. Keeps `weight` as `w`."""

    def __init__(self, weight: float = 1.0, steps: int = 1000):
        super().__init__()
        self.w, self.steps = float(weight), int(steps)

    def beta_at(self, step):
        return self.w * min(1.0, step / self.steps)

    def settles(self):
        return ("steps", self.steps)
'''
CONFIGS = {
    "likelihood/nodist.yaml": {"_target_": f"{MODULE}.NoDistribution", "name": "nodist"},
    "likelihood/lponly.yaml": {"_target_": f"{MODULE}.LogProbOnly", "name": "lponly"},
    "likelihood/lpmean.yaml": {"_target_": f"{MODULE}.LogProbAndMean", "name": "lpmean"},
    "beta_schedule/warm.yaml": {
        "_target_": f"{MODULE}.Warmup",
        "name": "warm",
        "weight": 1.0,
        "steps": 1000,
    },
}


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A directory with the user's module and a config dir (``conf``) selecting its classes."""
    root = tmp_path_factory.mktemp("user")
    (root / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    for name, config in CONFIGS.items():
        path = root / "conf" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(OmegaConf.to_yaml(config))
    return root


@pytest.fixture(autouse=True)
def importable(user, monkeypatch):
    monkeypatch.syspath_prepend(str(user))


def _config(**groups):
    """The default config (logger=none) with groups replaced by the user's configs."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", "data=digits"])
    with open_dict(cfg):
        for group, config in groups.items():
            cfg[group] = OmegaConf.create(config)
    return cfg


def _cli_env(user) -> dict[str, str]:
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(user), env.get("PYTHONPATH")) if p)
    return env


def test_a_likelihood_without_distribution_or_mean_is_refused_when_built():
    cases = {
        "nodist": "NoDistribution implements neither distribution(params) nor log_prob(...) "
        "and mean(...), which vaesweep calls",
        "lponly": "LogProbOnly implements neither distribution(params) nor mean(...)",
    }
    for name, message in cases.items():
        with pytest.raises(ConfigError) as refused:
            validate_config(_config(likelihood=CONFIGS[f"likelihood/{name}.yaml"]))
        text = str(refused.value)
        assert text.startswith(f"likelihood._target_='{MODULE}.") and message in text, text
        assert "Implement distribution(params)" in text
    validate_config(_config(likelihood=CONFIGS["likelihood/lpmean.yaml"]))  # what is called


def test_a_likelihood_with_log_prob_and_mean_trains_and_tests(tmp_path):
    """What the VAE calls without ``distribution``: log_prob (and nll, from it) and mean."""
    likelihood = components.build("likelihood", CONFIGS["likelihood/lpmean.yaml"], (1, 8, 8))
    model = VAE(likelihood, ConstantBeta(1.0), MLP(latent_dim=2, hidden=[8]), iwae_k=2)
    trainer = L.Trainer(
        max_steps=1, limit_val_batches=0, limit_test_batches=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    data = VAEDataModule("digits", batch_size=64, seed=0)
    trainer.fit(model, data)
    (metrics,) = trainer.test(model, data, verbose=False)
    assert torch.isfinite(torch.tensor(metrics["test/nll"]))
    with pytest.raises(NotImplementedError, match="LogProbAndMean implements no distribution"):
        likelihood.sample(torch.zeros(1, 1, 8, 8))


def test_any_exception_of_a_constructor_is_a_config_error_under_its_key():
    schedule = {**CONFIGS["beta_schedule/warm.yaml"], "weight": [1]}
    with pytest.raises(ConfigError) as refused:
        validate_config(_config(beta_schedule=schedule))
    text = str(refused.value)
    assert text.startswith(
        f"beta_schedule._target_='{MODULE}.Warmup' cannot be built from its options "
        "{'weight': [1], 'steps': 1000}: the constructor raised TypeError: float() argument"
    ), text
    assert f"{MODULE}.py, line " in text
    # A ValueError keeps its "key=value" message, under the group's key.
    with pytest.raises(ConfigError, match=r"^beta_schedule\.beta=-1 is invalid"):
        validate_config(_config(beta_schedule={**_config().beta_schedule, "beta": -1}))


def test_a_constructor_raising_a_type_error_is_recorded_as_a_refusal(user, tmp_path):
    args = ["--config-dir", str(user / "conf"), "beta_schedule=warm", "beta_schedule.weight=[1]"]
    proc = run_cli([*args, *TINY, "logger=csv", "hydra.run.dir=run"], tmp_path, env=_cli_env(user))
    assert proc.returncode == 1
    assert "ConfigError: beta_schedule._target_=" in proc.stderr, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["status"] == "failed" and result["error"]["type"] == "ConfigError"
    assert "the constructor raised TypeError" in result["error"]["message"]


def test_a_schedule_named_by_its_config_is_named_in_the_length_warning(caplog):
    schedule = components.build("beta_schedule", CONFIGS["beta_schedule/warm.yaml"])
    assert "name" not in type(schedule).__dict__
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, estimated_stepping_batches=3)
    with caplog.at_level(logging.WARNING, logger="vaesweep"):
        ScheduleLength().on_train_start(trainer, SimpleNamespace(schedule=schedule))
    assert "beta_schedule=warm settles at step 1000 (beta_schedule.steps)" in caplog.text
    caplog.clear()
    in_python = sys.modules[MODULE].Warmup(steps=1000)  # no config: the class's name
    with caplog.at_level(logging.WARNING, logger="vaesweep"):
        ScheduleLength().on_train_start(trainer, SimpleNamespace(schedule=in_python))
    assert "beta_schedule=Warmup settles at step 1000" in caplog.text


def test_repr_of_a_schedule_keeping_an_argument_under_another_name():
    built = components.build("beta_schedule", {**CONFIGS["beta_schedule/warm.yaml"], "weight": 2})
    assert "Warmup(weight=2, steps=1000)" in repr(built)
    in_python = sys.modules[MODULE].Warmup(weight=3.0)  # no config: what it has
    assert "Warmup(steps=1000)" in repr(in_python)
    assert "steps=1000" in repr(torch.nn.ModuleDict({"s": in_python}))
