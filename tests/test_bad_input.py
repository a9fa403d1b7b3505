"""Bad and unusual input: refused before training with the key, the value and what is
allowed, or ending with a truthful status, one line on stderr and a non-zero exit (the
traceback only in the run's train.log). Real Hydra composition, real Lightning, the real
CLI in subprocesses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from test_data import make_idx_dataset
from test_train import compose_cfg, validate

from vaesweep.analysis.results import load_results
from vaesweep.data.datasets import check_available
from vaesweep.data.download import DatasetNotFoundError
from vaesweep.run import record
from vaesweep.run.config import (
    CONF_DIR,
    ConfigError,
    NothingTrained,
    require_training,
    validate_config,
)
from vaesweep.run.failures import describe
from vaesweep.run.memory import DATA_SHAPES, count_parameters
from vaesweep.run.record import NOT_RESULTS

from conftest import RUN_PY, TINY, cli_env, results_under, run_cli

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connection refused at once
CPU_DEVICES = r"trainer.devices={} is invalid: allowed on the CPU \(trainer.accelerator=cpu\) an"
SPLIT = r"{} is invalid: allowed null \(the dataset's default split\) or an integer ≥ 1"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_epochs=0"], r"trainer.max_epochs=0 is invalid.*optimisation step"),
        (["trainer.max_steps=0"], r"trainer.max_steps=0 is invalid.*optimisation step"),
        (["trainer.limit_train_batches=0"], r"limit_train_batches=0 is invalid"),
        (["trainer.limit_train_batches=0.0"], r"limit_train_batches=0.0 is invalid"),
        (["trainer.max_time=00:00:00:00"], r"trainer.max_time='00:00:00:00' is invalid"),
        (["trainer.limit_test_batches=0"], r"limit_test_batches=0 is invalid.*test split"),
        (["trainer.max_epochs=abc"], r"trainer.max_epochs='abc' is invalid: allowed an integer"),
        (["trainer.max_steps=1.5"], r"trainer.max_steps=1.5 is invalid"),
        (["trainer.max_epochs=-1"], r"max_epochs=-1 is invalid.*train forever"),
        (["eval.n_images=0"], r"eval.n_images=0 is invalid: allowed an integer in \[1, 64\]"),
        (["eval.n_images=1000"], r"eval.n_images=1000 is invalid"),
        (["eval.iwae_k=1000000"], r"eval.iwae_k=1000000 is invalid.*100000.* h per 1000 test"),
        (["eval.active_units_threshold=-1"], r"eval.active_units_threshold=-1 is invalid"),
        (["optimizer.weight_decay=-1"], r"optimizer.weight_decay=-1 is invalid: allowed a finite"),
        (["optimizer.betas=[0.9,1.5]"], r"optimizer.betas=\[0.9, 1.5\] is invalid"),
        (["model.hidden=[200000,200000]"], r"model.hidden=\[200000, 200000\].*parameters.*GB"),
        (["model=conv", "model.channels=[0]"], r"^model.channels=\[0\] is invalid: channels must"),
        (["model.hidden=abc"], r"^model.hidden='abc' is invalid: hidden must be a sequence"),
        (
            ["likelihood.scale=optimal", "likelihood.min_log_scale=100"],
            r"likelihood.min_log_scale=100 is invalid: allowed null or a number < 0",
        ),
        (["eval.iwae_k=100000", "eval.iwae_chunk=100000"], r"eval.iwae_chunk=100000 is inv.*GB"),
        (["eval.iwae_k=1000", "eval.iwae_chunk=1000"], None),  # sized to the memory: passes
        # Options compared raw (a TypeError naming nothing allowed), or booleans taken for
        # numbers (scale_lr=true trained the scale at a learning rate of 1).
        (["likelihood.scale=optimal", "likelihood.momentum=null"],
         r"^likelihood.momentum=None is invalid: allowed a number in \[0, 1\)$"),
        (["likelihood.scale=optimal", "likelihood.momentum=abc"],
         r"^likelihood.momentum='abc' is invalid: allowed a number in \[0, 1\)$"),
        (["likelihood.scale=optimal", "likelihood.momentum=false"],
         r"^likelihood.momentum=False is invalid"),
        (["likelihood.scale=learned", "likelihood.scale_lr=true"],
         r"^likelihood.scale_lr=True is invalid: allowed null"),
        (["likelihood.scale_value=true"], r"^likelihood.scale_value=True is invalid"),
        (["model.activation=[relu]"], r"^model.activation=\['relu'\] is invalid: allowed one of"),
        (["beta_schedule=cyclical", "beta_schedule.shape=[linear]"],
         r"^beta_schedule.shape=\['linear'\] is invalid"),
        # Refused by Lightning once the data were loaded (recorded failed).
        (["trainer.barebones=true"], r"^trainer.barebones=True is invalid: allowed false: "),
        # The training batch's samples (was killed by the kernel's OOM killer mid-training).
        (["n_samples=100000"], r"^n_samples=100000 is invalid: 100000 samples × data.batch_s.*GB"),
        (["n_samples=100"], None),
        # Lightning's default when null: 1000 epochs, said in one line of its log.
        (["trainer.max_epochs=null"],
         r"^trainer.max_epochs=None is invalid: allowed an integer ≥ 1, or null .*1000 epochs$"),
        (["trainer.max_epochs=null", "trainer.max_steps=10"], None),
        (["trainer.max_epochs=null", "trainer.max_time=00:00:01:00"], None),
        # A quoted 'false' would be truthy: a switch is a boolean.
        (["logger.sweep_figures='false'"], r"logger.sweep_figures='false' is inv.*true or false"),
        (["logger.sweep_summary=1"], r"logger.sweep_summary=1 is invalid: allowed true or false"),
        (["logger.sweep_figures=true", "logger.sweep_summary=false"], None),
        (["data.download=maybe"], r"data.download='maybe' is invalid: allowed true or false"),
        (["logger.log_images=maybe"], r"logger.log_images='maybe' is invalid: allowed true or"),
        (["trainer.deterministic=maybe"], r"trainer.deterministic='maybe' is invalid: allowed"),
        (["trainer.deterministic=warn"], None),
        (["trainer.log_every_n_steps=-5"], r"trainer.log_every_n_steps=-5 is invalid"),
        # Keys the Trainer or the optimiser does not take: before the data, with the nearest.
        (
            ["+trainer.max_epoch=3"],
            r"trainer.max_epoch is invalid: Lightning's Trainer takes no argument 'max_epoch' "
            r"\(did you mean trainer.max_epochs\?\). Allowed: accelerator, ",
        ),
        (["+trainer.gradient_clip_val=1.0"], None),  # a Trainer argument the file lacks
        (
            ["+optimizer.momentum=0.9"],
            r"optimizer.momentum is invalid: torch.optim.adam.Adam takes no argument 'momentum'. "
            r"Allowed: lr, betas, eps, weight_decay, amsgrad",
        ),
        (["optimizer=adamw", "+optimizer.amsgrad=true"], None),
        # What W&B would refuse after the data are loaded, naming no key.
        (["logger.project=123"], r"logger.project=123 is invalid: allowed text"),
        (["logger.entity=123"], r"logger.entity=123 is invalid: allowed null or text"),
        (["logger.tags=abc"], r"logger.tags='abc' is invalid: allowed a list"),  # not a, b, c
        (["label.tags=abc"], r"label.tags='abc' is invalid: allowed a list"),
        (["label.note=true"], r"label.note=True is invalid: allowed null or text"),
        (["label.tags=[a,2]", "+label.note=x"], None),
        # What Lightning refuses after the data load (or at its timer's first step, naming no
        # key); test_lightning_refuses_what_is_refused_here holds the two to each other.
        (["trainer.max_time=bogus"], r"trainer.max_time='bogus' is invalid: allowed null, \"DD:"),
        (["trainer.max_time=0:0:0:5"], r"trainer.max_time='0:0:0:5' is invalid"),
        (["trainer.max_time=3600"], r"trainer.max_time=3600 is invalid"),
        (["trainer.max_time={fortnights:1}"], r"max_time=\{'fortnights': 1\} is inv.*among weeks"),
        (["trainer.max_time={minutes:1.5}"], None),
        (["trainer.max_time=00:00:01:30"], None),
        (["trainer.overfit_batches=-1"], r"trainer.overfit_batches=-1 is invalid: allowed 0 \(off"),
        (["trainer.overfit_batches=1.5"], r"trainer.overfit_batches=1.5 is invalid"),
        (["trainer.devices=0"], r"trainer.devices=0 is invalid: allowed an integer ≥ 1 \(how"),
        (["trainer.devices=-2"], r"trainer.devices=-2 is invalid"),
        (["trainer.devices=abc"], r"trainer.devices='abc' is invalid"),
        (["trainer.devices=[0,0]"], r"trainer.devices=\[0, 0\] is invalid"),
        (["trainer.devices=[]"], r"trainer.devices=\[\] is invalid"),
        (["trainer.devices='2'"], None),
        # What Lightning's CPU accelerator refuses when it builds the Trainer (a TypeError);
        # -1 and device ids are GPU forms (test_devices_follow_the_accelerator: auto).
        (["trainer.accelerator=cpu", "trainer.devices=-1"], CPU_DEVICES.format("-1")),
        (["trainer.accelerator=cpu", "trainer.devices=[0]"], CPU_DEVICES.format(r"\[0\]")),
        (["trainer.accelerator=cpu", "trainer.devices='0,'"], CPU_DEVICES.format("'0,'")),
        (["trainer.accelerator=cpu", "trainer.devices=2"], None),
        (["trainer.num_nodes=0"], r"trainer.num_nodes=0 is invalid: allowed an integer ≥ 1"),
        (["trainer.num_nodes=true"], r"trainer.num_nodes=True is invalid"),
        (
            ["trainer.precision=bf16-mix"],
            r"trainer.precision='bf16-mix' is invalid: allowed null \(32-true\) or one of "
            r"16-mixed, bf16-mixed, 32-true, 64-true, 64, 32, 16, bf16; did you mean "
            r"bf16-mixed\?$",  # (the precisions refused below are not offered)
        ),
        (["trainer.precision=32.0"], r"trainer.precision=32.0 is invalid"),
        (["trainer.precision=64"], None),
        (["trainer.precision=bf16-mixed"], None),
        (
            ["trainer.accelerator=gpus"],
            r"trainer.accelerator='gpus' is invalid: allowed one of auto, gpu, cpu, .*did you "
            r"mean gpu\?",
        ),
        (
            ["trainer.strategy=dpp"],
            r"trainer.strategy='dpp' is invalid: allowed one of auto, ddp, ddp_spawn, .*did "
            r"you mean ddp\?",
        ),
        # Trainer switches: a string would be truthy ("off" kept checkpoints and let
        # eval.checkpoint=best through).
        (
            ["trainer.enable_checkpointing=off", "eval.checkpoint=best"],
            r"trainer.enable_checkpointing='off' is invalid: allowed true or false",
        ),
        (["trainer.inference_mode=1"], r"trainer.inference_mode=1 is invalid: allowed true or"),
        (["trainer.detect_anomaly='no'"], r"trainer.detect_anomaly='no' is invalid"),
        (["trainer.benchmark=null", "trainer.enable_model_summary=true"], None),
        # Keys vaesweep gives the Trainer itself ("got multiple values for keyword argument").
        (
            ["+trainer.logger=false"],
            r"trainer.logger=False is invalid: vaesweep sets the Trainer's logger itself; "
            r"allowed: logger=none\|csv\|wandb",
        ),
        (["+trainer.callbacks=[]"], r"trainer.callbacks=\[\] is invalid: vaesweep sets the"),
        (
            ["+trainer.default_root_dir=/tmp/elsewhere"],
            r"trainer.default_root_dir='/tmp/elsewhere' is invalid: .*allowed: hydra.run.dir=DIR",
        ),
        # Validation by a fraction of an epoch needs epochs; a time (Lightning 2.6) is taken.
        (
            ["trainer.check_val_every_n_epoch=null", "trainer.val_check_interval=0.5"],
            r"trainer.val_check_interval=0.5 is invalid: allowed an integer ≥ 1 .* with "
            r"trainer.check_val_every_n_epoch=null",
        ),
        (["trainer.val_check_interval=00:00:00:01"], None),
        (["trainer.val_check_interval={minutes:1}", "trainer.check_val_every_n_epoch=null"], None),
        (["trainer.val_check_interval=0:0:0:1"], None),  # Lightning's parser takes it
        (["trainer.val_check_interval=1:00"], r"val_check_interval='1:00' is invalid: allowed n"),
        (["trainer.val_check_interval={seconds:0}"], r"val_check_interval=\{'seconds': 0\} is"),
        # Durations past datetime.timedelta's limit (an OverflowError in Lightning's Timer).
        (
            ["trainer.max_time={hours:1e20}"],
            r"trainer.max_time=\{'hours': 1e\+20\} is invalid: allowed a duration of at most "
            r"999999999 days",
        ),
        (['trainer.max_time="9999999999:00:00:00"'], r"max_time='9999999999:00:00:00' is inv"),
        (['trainer.max_time="999999999:00:00:00"'], None),
        # The optimiser's other arguments: by the type of their default, then built.
        (
            ["+optimizer.eps=-1"],
            r"optimizer.eps=-1 is invalid: torch.optim.adam.Adam refuses it \(Invalid epsilon",
        ),
        (["+optimizer.eps=abc"], r"optimizer.eps='abc' is invalid: allowed a finite number"),
        (["+optimizer.amsgrad=off"], r"optimizer.amsgrad='off' is invalid: allowed true or false"),
        (
            ["+optimizer.foreach=true"],  # with the default optimizer.fused=true
            r"optimizer.fused=True with optimizer.foreach=True is invalid: .*Adam refuses them "
            r"\(`fused` and `foreach` cannot be `True` together",
        ),
        (["+optimizer.foreach=true", "optimizer.fused=false"], None),
        (["+optimizer.eps=1e-6", "+optimizer.maximize=false"], None),
        # Data: before the data load (the data module's ValueError was a plain failure).
        (["data=digits", "data.val_size=-5"], SPLIT.format("data.val_size=-5")),
        (["data.val_size=abc"], SPLIT.format("data.val_size='abc'")),
        (["data.val_size=0.5"], SPLIT.format("data.val_size=0.5")),
        (["data.test_size=true"], SPLIT.format("data.test_size=True")),
        (["data.test_size=0"], SPLIT.format("data.test_size=0")),
        (
            ["data.name=digit"],
            r"data.name='digit' is invalid: allowed one of mnist_small, mnist, fashion_mnist, "
            r"digits \(vaesweep.data.DATASETS",
        ),
        (
            ["data=mnist", "data.test_size=100"],
            r"data.test_size=100 is invalid: allowed null: data=mnist is tested on its official",
        ),
        (["data=digits", "data.val_size=100", "data.test_size=50"], None),
        # An embedded dataset's size is known: a split it cannot hold is refused up front.
        (
            ["data=digits", "data.val_size=1597"],
            r"data.val_size=1597 is invalid: allowed an integer in \[1, 1596\] \(data=digits's ",
        ),
        (
            ["data.test_size=4999"],
            r"data.test_size=4999 is invalid: allowed an integer in \[1, 4998\] \(data=mnist_sm",
        ),
        (
            ["data.val_size=4000", "data.test_size=1000"],
            r"data.val_size=4000 is invalid: allowed an integer in \[1, 3999\]",
        ),
        (["data.val_size=3999", "data.test_size=1000"], None),  # one training example left
        # Keys of the composed config that nothing reads (a config file's; the command
        # line's are refused by check_overrides, test_a_key_added_to_a_group...).
        (["+seeds=3"], r"^seeds=3 is invalid: the config has no root key seeds \(did you mean"),
        (["+data.batchsize=16"], r"^data.batchsize=16 is invalid: data has no key batchsize \(d"),
        (["+eval.iwae_K=5000"], r"^eval.iwae_K=5000 is invalid: eval has no key iwae_K \(did y"),
        (["+sweep.rerun=true"], r"^sweep.rerun=True is invalid: sweep has no key rerun"),
        (["+paths.log_dir=/tmp/x"], r"^paths.log_dir='/tmp/x' is invalid: paths has no key"),
        (["+optimized_metric=val/elbo"], None),  # hparams_search/lht_optuna.yaml's key
        (["+paths.mine=/tmp/x", "data.root=${paths.mine}", "+mine=1", "beta=${mine}"], None),
        # A reference that does not resolve, a key removed: named, with the value as written.
        (
            ["~beta"],
            r"^beta_schedule.beta='\$\{beta\}' is invalid: Interpolation key 'beta' not found",
        ),
        (
            ["beta=${nope}"],
            r"^beta='\$\{nope\}' is invalid \(read through beta_schedule.beta\): Interpolation "
            r"key 'nope' not found",
        ),
        (
            ["seed=${oc.env:VAESWEEP_TEST_UNSET}"],
            r"^seed='\$\{oc.env:VAESWEEP_TEST_UNSET\}' is invalid: .*Environment variable "
            r"'VAESWEEP_TEST_UNSET' not found",
        ),
        (["~seed"], r"^seed is invalid: Key 'seed' is not in struct: the run reads this key"),
        (["~data.batch_size"], r"^data.batch_size is invalid: .*\(removed with ~data.batch_size"),
        # Trainer values Lightning refused only when the Trainer was built (after the data
        # load and the W&B start), or took silently (-5 sanity steps: none).
        (["trainer.num_sanity_val_steps=abc"],
         r"^trainer.num_sanity_val_steps='abc' is invalid: allowed null \(Lightning's 2\)"),
        (["trainer.num_sanity_val_steps=-5"], r"^trainer.num_sanity_val_steps=-5 is invalid"),
        (["trainer.num_sanity_val_steps=-1"], None),  # every validation batch
        (["trainer.reload_dataloaders_every_n_epochs=-1"],
         r"^trainer.reload_dataloaders_every_n_epochs=-1 is invalid: allowed an integer ≥ 0"),
        (["trainer.profiler=foo"],
         r"^trainer.profiler='foo' is invalid: allowed null \(none\) or one of simple, advanced"),
        (["trainer.profiler=Simple"], None),  # Lightning lowercases it
        (["trainer.limit_predict_batches=abc"], r"^trainer.limit_predict_batches='abc' is invalid"),
        # W&B refused these only once the fit had begun (recorded failed, a relaunch refused).
        (["logger.project='me/vae'"],
         r"^logger.project='me/vae' is invalid: allowed a W&B project name: at most 128 "
         r"characters, none of / \\ # \? % : \(an entity/project pair: logger.entity=ENTITY "
         r"logger.project=PROJECT\)$"),
        (["logger.project='vae:v2'"], r"^logger.project='vae:v2' is invalid: allowed a W&B"),
        ([f"logger.project={'p' * 129}"], r"^logger.project='p+' is invalid"),
        ([f"logger.project={'p' * 128}"], None),
        # A list where a scale mode's name belongs (was: TypeError: unhashable type).
        (["likelihood.scale=[fixed]"],
         r"^likelihood.scale=\['fixed'\] is invalid: allowed one of \['fixed', 'learned'"),
    ],
)  # fmt: skip
def test_refused_before_training(overrides, message):
    if message is None:
        validate(overrides)
        return
    with pytest.raises(ConfigError, match=message):
        validate(overrides)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_time", "bogus"),
        ("max_time", "0:0:0:5"),
        ("max_time", 3600),
        ("max_time", {"fortnights": 1}),
        ("overfit_batches", -1),
        ("overfit_batches", 1.5),
        ("devices", 0),
        ("devices", -2),
        ("devices", "abc"),
        ("max_time", "9999999999:00:00:00"),
        ("max_time", {"hours": 1e20}),
        ("precision", "bf16-mix"),
        ("precision", 32.0),
        ("accelerator", "gpus"),
        ("strategy", "dpp"),
        ("num_nodes", 0),
        ("devices", -1),  # with accelerator=cpu
        ("devices", [0]),
        ("devices", "0,"),
        ("val_check_interval", "1:00"),
        ("val_check_interval", 0.5),  # with check_val_every_n_epoch=None
    ],
)
def test_lightning_refuses_what_is_refused_here(key, value):
    """The values refused above are ones Lightning's own Trainer refuses (so none is a
    restriction of vaesweep's); the forms allowed above it takes."""
    kw = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False}
    kw["check_val_every_n_epoch"] = None
    with pytest.raises(Exception) as refused:
        L.Trainer(**kw, **{key: value})
    assert not isinstance(refused.value, ConfigError)
    for allowed in ("00:00:01:30", {"minutes": 1.5}):
        timer = L.pytorch.callbacks.Timer(duration=allowed)
        assert timer.time_remaining() == 90.0  # as max_time_seconds reads it
    L.Trainer(**kw, overfit_batches=0.5, devices="2")
    for interval in ("00:00:00:01", "0:0:0:1", {"minutes": 1}, 2):
        L.Trainer(**kw, val_check_interval=interval)


def test_the_fixed_trainer_values_are_lightnings():
    """trainer.precision and the Trainer's switches are checked without importing Lightning
    (a sweep's launching process): the fixed tuples are Lightning's own."""
    import inspect
    import typing

    from lightning.fabric import connector

    from vaesweep.run.config import PRECISIONS, TRAINER_BOOLS, TRAINER_NULLABLE_BOOLS

    lightnings = {
        *typing.get_args(connector._PRECISION_INPUT_STR),
        *typing.get_args(connector._PRECISION_INPUT_INT),
        *typing.get_args(connector._PRECISION_INPUT_STR_ALIAS),
    }
    assert set(PRECISIONS) == lightnings
    parameters = inspect.signature(L.Trainer.__init__).parameters
    switches = {
        name
        for name, p in parameters.items()
        if p.annotation in (bool, bool | None, typing.Optional[bool])  # noqa: UP045
    }
    assert set(TRAINER_BOOLS) == switches
    assert all(parameters[name].default is None for name in TRAINER_NULLABLE_BOOLS)


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="a GPU is visible"
)
@pytest.mark.parametrize("devices", ["-1", "[0]", "'0,1'"])
def test_devices_follow_the_accelerator(devices):
    """trainer.accelerator=auto is the CPU where no GPU is visible, whose accelerator takes
    no -1 (all) and no device ids (Lightning: a TypeError once the data are loaded); a
    sweep's launching process, whose jobs may run where there is a GPU, lets them through."""
    cfg = compose_cfg([f"trainer.devices={devices}", "paths.data_dir=/tmp"])
    with pytest.raises(ConfigError, match=r"allowed on the CPU \(trainer.accelerator=auto, and "):
        validate_config(cfg)
    validate_config(cfg, in_job=False)


def test_the_keys_vaesweep_sets_are_not_offered():
    """+trainer.max_epoch's nearest-name refusal lists the Trainer's arguments without the
    ones vaesweep gives the Trainer itself (which are refused: test_refused_before_training)."""
    with pytest.raises(ConfigError) as refused:
        validate(["+trainer.max_epoch=3"])
    allowed = str(refused.value).split("Allowed: ", 1)[1].split(", ")
    assert "max_epochs" in allowed and "plugins" in allowed
    assert not {"logger", "callbacks", "default_root_dir"} & set(allowed)


@pytest.mark.parametrize(
    "preset",
    [
        *(f"experiment={p.stem}" for p in sorted((CONF_DIR / "experiment").glob("*.yaml"))),
        *(f"hparams_search={p.stem}" for p in sorted((CONF_DIR / "hparams_search").glob("*.yaml"))),
    ],
)
def test_every_preset_holds_only_keys_the_run_reads(preset):
    """The shipped presets pass the check of the composed config's keys (optimized_metric
    included); one with a key nothing reads is refused (a user's, --config-dir: the CLI
    test below)."""
    validate([preset])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_asked_for_where_there_is_none_is_refused_in_the_job(accelerator):
    cfg = compose_cfg([f"trainer.accelerator={accelerator}"])
    with pytest.raises(ConfigError, match=rf"trainer.accelerator='{accelerator}' is invalid here"):
        validate_config(cfg)
    validate_config(cfg, in_job=False)  # a sweep's launching process may have no GPU
    with pytest.raises(Exception, match="gpu|GPU|CUDA|cuda"):  # and Lightning agrees
        L.Trainer(accelerator=accelerator, logger=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+data.batchsize=32",
            "data.batchsize=32 has no effect on what this run computes: data has no key "
            "batchsize (did you mean data.batch_size?). Allowed keys of data: name, root,",
        ),
        (
            "+eval.iwae_samples=5000",
            "eval.iwae_samples=5000 has no effect on what this run computes: eval has no key "
            "iwae_samples. Allowed keys of eval: checkpoint, iwae_k,",
        ),
        ("+sweep.foo=1", "sweep has no key foo. Allowed keys of sweep: resume, rerun_failed"),
        (  # the embedded datasets read no files: mnist_small was trained on, not a full MNIST
            "data.root=/data",
            "data.root=/data has no effect on what this run computes: data=mnist_small is "
            "embedded in vaesweep and reads no files (data.root is for datasets read from "
            "files: data=mnist, data=fashion_mnist)",
        ),
        ("data.download=true", "data.download=true has no effect on what this run computes"),
        (  # W&B's logger was given neither (every logger.* key counted as read)
            "+logger.projet=x",
            "logger=wandb has no key projet (did you mean logger.project?). Allowed keys of "
            "logger=wandb: name, mode, project, entity, tags,",
        ),
        ("+logger.log_model=true", "logger.log_model=true has no effect on what this run"),
    ],
)
def test_a_key_added_to_a_group_the_driver_reads_by_name_is_refused(override, message):
    """Before, the whole group counted as read: +data.batchsize=32 trained with the batch
    size of 128 and no word."""
    cfg = compose_cfg([override, "paths.data_dir=/tmp"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(cfg, [override])
    extra = ["data=mnist", "+paths.mine=/tmp/data", "data.root=${paths.mine}"]  # read through
    validate_config(compose_cfg(extra), extra)


def test_a_logger_key_of_a_config_file_that_nothing_reads_is_refused():
    """A config file's (a preset's) logger keys: W&B's options are fine whatever logger a
    run picks (a preset names its project, the run logs to CSV); any other key was never
    checked (every logger.* key counted as read)."""
    from vaesweep.run.effective import unknown_config_keys

    cfg = compose_cfg(["logger=csv", "+logger.project=mine", "paths.data_dir=/tmp"])
    assert unknown_config_keys(cfg) is None
    cfg = compose_cfg(["+logger.projct=mine", "paths.data_dir=/tmp"])
    assert "logger has no key projct (did you mean logger.project?)" in unknown_config_keys(cfg)


def test_fast_dev_run_stays_allowed():
    validate(["trainer.fast_dev_run=true"])


def test_a_key_given_twice_is_refused():
    overrides = ["seed=1", "beta=2", "seed=2"]
    cfg = compose_cfg([*overrides, "paths.data_dir=/tmp"])
    with pytest.raises(ConfigError, match=r"seed is given twice.*seed=1 and seed=2"):
        validate_config(cfg, overrides)


def test_memory_estimate_counts_the_real_parameters():
    from vaesweep.model.components import build_components
    from vaesweep.model.module import VAE

    cases = ([], ["model=conv", "likelihood.scale=decoder"], ["likelihood.scale=per_pixel"])
    for overrides in (*cases, ["data=digits"]):
        cfg = compose_cfg([*overrides, "paths.data_dir=/tmp"])
        shape = DATA_SHAPES[cfg.data.name]
        n, _ = count_parameters(cfg, shape)
        plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "likelihood")}
        plain["beta_schedule"] = {"name": "constant", "beta": 1.0}
        built = build_components(shape, plain["likelihood"], plain["beta_schedule"], plain["model"])
        real = VAE(**built)
        assert n == sum(p.numel() for p in real.parameters())


def test_the_memory_check_names_a_likelihood_problem_under_the_likelihood():
    """The memory check builds the likelihood to count its parameters: a likelihood that
    cannot be imported or built is named under its own key, not blamed on model.hidden."""
    from vaesweep.run.memory import check_memory

    cfg = compose_cfg(["paths.data_dir=/tmp"])
    cfg.likelihood._target_ = "not_installed_anywhere.MyLikelihood"
    with pytest.raises(ConfigError, match=r"^likelihood._target_='not_installed_anywhere\.") as e:
        check_memory(cfg)
    assert "model." not in str(e.value)
    cfg = compose_cfg(["paths.data_dir=/tmp", "likelihood.scale_value=-1"])
    with pytest.raises(ConfigError, match=r"^likelihood.scale_value=-1") as e:
        check_memory(cfg)
    assert "model." not in str(e.value)


def test_data_shapes_are_the_datasets():
    from vaesweep.data import load_dataset

    for name in ("digits", "mnist_small"):
        assert load_dataset(name).shape == DATA_SHAPES[name]


def test_online_wandb_without_a_server_fails_fast_or_falls_back(monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", UNREACHABLE)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"logger.mode='online'.*127.0.0.1:9 cannot be reached"):
        validate(["logger.mode=online"])
    cfg = compose_cfg(["logger.mode=online", "logger.offline_fallback=true", "paths.data_dir=/tmp"])
    validate_config(cfg)
    assert cfg.logger.mode == "offline"
    assert time.monotonic() - start < 10


def test_a_fit_without_a_step_is_not_a_result():
    """Lightning stops a fit before its first batch (here max_epochs=0, which validation
    refuses; trainer.max_time can do it at run time): the run fails instead of testing."""

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(4, 2), batch_size=2)

    trainer = L.Trainer(
        max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(Tiny())
    with pytest.raises(NothingTrained, match="0 optimisation steps"):
        require_training(trainer)


def test_disk_full_message_names_the_file_and_the_free_space(tmp_path):
    def save(path):  # a real torch write to a full device
        with open("/dev/full", "wb") as f:
            torch.save({"w": torch.zeros(10_000)}, f)

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    target = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(Exception) as caught:
        save(target)
    line = describe(caught.value)
    assert line.startswith(f"disk full while writing {target} (") and "free" in line


IWAE_MEMORY = """
import resource, sys, torch
from vaesweep.model.components import build_likelihood
from vaesweep.model.networks import build_decoder, build_encoder
from vaesweep.model.objective import importance_estimates
torch.set_num_threads(1)
shape = (1, 28, 28)
lik = build_likelihood("gaussian", shape)
enc, dec = build_encoder("mlp", shape, 20), build_decoder("mlp", shape, 20, 1)
x = torch.rand(100, *shape)
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
importance_estimates(x, enc, dec, lik, k=200, chunk_size=10)
before = peak()
importance_estimates(x, enc, dec, lik, k=2000, chunk_size=10)
print(peak() - before)
"""


@pytest.mark.slow
def test_iwae_memory_does_not_grow_with_k():
    """200 chunks of 10 samples: keeping one small tensor per chunk held ~1 MB each."""
    proc = subprocess.run(
        [sys.executable, "-c", IWAE_MEMORY], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) < 60  # MiB of peak growth from k = 200 to 2000


# --- the CLI ---------------------------------------------------------------------------------


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The single [vaesweep] line of a failed run's stderr (no traceback)."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[vaesweep]")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def line_and_kept(proc: subprocess.CompletedProcess, job: str) -> str:
    """The [vaesweep] line of a relaunch that failed before it computed anything, whose
    second and last line says that the earlier attempt's record and checkpoints are kept."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[vaesweep]")]
    assert len(lines) == 2, proc.stderr[-3000:]
    assert lines[1].startswith(
        f"[vaesweep] {job}: nothing of this attempt was computed; the earlier attempt's record "
        "and checkpoints are kept: "
    ), lines[1]
    return lines[0]


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> Path:
    """A real completed run of the TINY budget (CSV logger)."""
    root = tmp_path_factory.mktemp("completed")
    proc = run_cli([*TINY, "logger=csv", "hydra.run.dir=run"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


@pytest.mark.slow
def test_a_directory_of_another_config_is_refused(completed, tmp_path):
    before = {p: p.read_bytes() for p in completed.rglob("*") if p.is_file()}
    args = [*TINY, "logger=csv", f"hydra.run.dir={completed}"]
    proc = run_cli([*args, "beta=4", "likelihood=laplace"], tmp_path)
    line = one_line(proc)
    assert "ConfigMismatch" in line and "holds a completed run of a different config" in line
    assert "beta: 1.0 → 4" in line and "likelihood.name: 'gaussian' → 'laplace'" in line
    assert {p: p.read_bytes() for p in completed.rglob("*") if p.is_file()} == before
    # Keys that change no result are not compared: the same run is still skipped.
    quiet = [a for a in args if "progress_bar" not in a]
    proc = run_cli([*quiet, "trainer.enable_progress_bar=true", "label.note=again"], tmp_path)
    assert proc.returncode == 0 and "already completed" in proc.stderr, proc.stderr[-2000:]
    assert "trainer.enable_progress_bar" in NOT_RESULTS


def test_a_corrupt_checkpoint_fails_in_one_line(completed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(completed, run)
    result = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**result, "status": "interrupted"}))
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    proc = run_cli([*TINY, "logger=csv", "hydra.run.dir=run"], tmp_path)
    line = one_line(proc)
    # Caught before Lightning reads it: its zip archive does not check out.
    assert f"DamagedCheckpoint: checkpoint {last} is damaged" in line, line
    assert "sweep.rerun_failed=true" in line
    (result,) = results_under(run)
    assert result["status"] == "failed" and result["metrics"] == {}
    assert (run / "train.log").read_text().count("Traceback") == 1


@pytest.mark.slow
def test_a_refused_run_is_checked_again_when_relaunched(tmp_path):
    """A single run refused by its config records ``failed`` with the refusal; the corrected
    command into the same directory runs it (no sweep.rerun_failed: nothing was computed),
    and the same bad command is refused again, never skipped as an earlier failure."""
    args = [*TINY, "logger=csv", "hydra.run.dir=run"]
    for _ in range(2):
        line = one_line(run_cli([*args, "beta=-1"], tmp_path))
        assert line == "[vaesweep] ConfigError: beta=-1 is invalid: allowed a finite number ≥ 0"
        (result,) = results_under(tmp_path / "run")
        assert result["status"] == "failed" and result["error"]["type"] == "ConfigError"
        assert result["attempts"] == 1 and not (tmp_path / "run" / "checkpoints").exists()
    proc = run_cli([*args, "beta=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = results_under(tmp_path / "run")
    assert result["status"] == "completed" and result["error"] is None
    assert result["config"]["beta"] == 2.0 and result["attempts"] == 1
    # A failure that is not a refusal is still left alone without sweep.rerun_failed.
    (tmp_path / "run" / "results.json").write_text(
        json.dumps(
            {
                **result,
                "status": "failed",
                "error": {"type": "RuntimeError", "message": "boom", "step": None},
            }
        )  # fmt: skip
    )
    line = one_line(run_cli([*args, "beta=2"], tmp_path))
    assert "holds a failed result: not re-run" in line and "sweep.rerun_failed=true" in line
    # (this result says its fit completed: the one line says a re-run tests it again)
    assert "its fit had completed: it is then tested again from checkpoints/last.ckpt" in line


@pytest.mark.slow  # CLI runs of a minute; validate_config's tests above check the messages
def test_a_bad_data_value_or_a_removed_key_is_a_refusal_a_relaunch_checks_again(tmp_path):
    """data.val_size=-5 was refused by the data module alone (a ValueError, after the record
    opened): a plain failure, which the relaunch left alone (JobNotRerun: pass
    sweep.rerun_failed=true); ~eval.n_images, ~seed and an override whose interpolation does
    not resolve failed with no results.json. Each is now a ConfigError
    recorded as a refusal, checked again by every launch, before anything is computed (a
    split larger than the embedded dataset holds, too)."""
    args = [*TINY, "logger=none", "hydra.run.dir=run"]
    for bad, message in (
        ("data.val_size=-5", "data.val_size=-5 is invalid: allowed null (the dataset's default"),
        ("data.val_size=-5", "data.val_size=-5 is invalid"),  # again: not JobNotRerun
        ("~eval.n_images", "eval.n_images is invalid: Key 'n_images' is not in struct: the"),
        ("~seed", "seed is invalid: Key 'seed' is not in struct: the run reads this key"),
        ("beta=${nope}", "beta='${nope}' is invalid (read through beta_schedule.beta)"),
        ("data.val_size=5000", "data.val_size=5000 is invalid: allowed an integer in [1, 1596]"),
    ):
        line = one_line(run_cli([*args, bad], tmp_path))
        assert line.startswith(f"[vaesweep] ConfigError: {message}"), line
        (result,) = results_under(tmp_path / "run")
        assert result["status"] == "failed" and result["error"]["type"] == "ConfigError"
        assert message in result["error"]["message"] and record.refused(result)
        assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow  # CLI runs of a minute; validate_config's tests above check the messages
def test_a_config_file_key_that_nothing_reads_is_refused(tmp_path):
    """A key of a user's config file (--config-dir: a primary config extending train, an
    experiment preset) that nothing reads was recorded in results.json as if it had been
    used (data.batchsize=16, while batch_size=64 trained); a key Hydra's own config reads
    (hydra.run.dir: ${paths.log_dir}/run) is read."""
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True)
    extend = "defaults:\n  - train\n  - _self_\n"
    (conf / "typo.yaml").write_text(f"{extend}data:\n  batchsize: 16\n")
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\neval:\n  iwae_K: 5\n")
    (conf / "mine.yaml").write_text(
        f"{extend}paths:\n  log_dir: ${{paths.output_dir}}/logs\n"
        "hydra:\n  run:\n    dir: ${paths.log_dir}/run\n  sweep:\n    dir: ${paths.log_dir}/multi\n"
    )
    base, tiny = ["--config-dir", str(conf)], [*TINY, "logger=none"]
    args = [*base, "--config-name", "typo", *tiny, "hydra.run.dir=a"]
    line = one_line(run_cli(args, tmp_path))
    assert line.startswith(
        "[vaesweep] ConfigError: data.batchsize=16 is invalid: data has no key batchsize (did "
        "you mean data.batch_size?)"
    ), line
    args = ["-m", *base, *tiny, "experiment=typo", "seed=0,1", "hydra.sweep.dir=s"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        "sweep refused, no job was run: 2 of the 2 jobs would be refused when their turn came: "
        "eval.iwae_K=5 is invalid: eval has no key iwae_K (did you mean eval.iwae_k?)"
    ) in proc.stderr
    # The key check passes (paths.log_dir is read by hydra.run.dir): the next one refuses.
    line = one_line(run_cli([*base, "--config-name", "mine", *tiny, "beta=-1"], tmp_path))
    assert line == "[vaesweep] ConfigError: beta=-1 is invalid: allowed a finite number ≥ 0"
    assert (tmp_path / "outputs" / "logs" / "run" / "results.json").exists()
    # So in a sweep's check of its jobs, whose composed configs have no hydra node: the
    # launching config's hydra.sweep.dir reads paths.log_dir (lightning-hydra-template's way).
    proc = run_cli(["-m", *base, "--config-name", "mine", *tiny, "beta=-1,-2"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "beta=-1 is invalid: allowed a finite number ≥ 0" in proc.stderr
    assert "log_dir" not in proc.stderr
    # An interpolation of a config file that does not resolve: an error of OmegaConf's,
    # which wrote no results.json; a refusal now, naming the key as written.
    (conf / "env.yaml").write_text(f"{extend}beta: ${{oc.env:VAESWEEP_TEST_UNSET}}\n")
    line = one_line(run_cli([*base, "--config-name", "env", *tiny, "hydra.run.dir=e"], tmp_path))
    assert line.startswith(
        "[vaesweep] ConfigError: beta='${oc.env:VAESWEEP_TEST_UNSET}' is invalid (read through "
        "beta_schedule.beta): KeyError raised while resolving interpolation"
    ), line
    (result,) = results_under(tmp_path / "e")
    assert result["error"]["type"] == "ConfigError" and record.refused(result)


@pytest.mark.slow
def test_data_that_are_not_there_lose_nothing_and_are_checked_again(tmp_path):
    """IDX files that are not there refuse a job before its record opens: a new job records
    failed (DatasetNotFoundError) and the same command runs it once they are there, without
    sweep.rerun_failed; an interrupted job keeps its record and checkpoint (it used to become
    failed, and sweep.rerun_failed trained it from the start), and the same command resumes
    it then."""
    data, run = tmp_path / "data", tmp_path / "run"
    tiny = [a for a in TINY if not a.startswith("data=")]
    args = [*tiny, "data=mnist", f"data.root={data}", "data.val_size=10", "data.batch_size=8",
            "data.eval_batch_size=9", "logger=csv", "hydra.run.dir=run"]  # fmt: skip
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "DatasetNotFoundError: dataset 'mnist': no directory holds all of" in proc.stderr
    (result,) = results_under(run)
    assert result["status"] == "failed" and result["error"]["type"] == "DatasetNotFoundError"
    assert not (run / "checkpoints").exists()
    make_idx_dataset(data / "mnist")
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = results_under(run)
    assert result["status"] == "completed" and result["attempts"] == 1
    # An interrupted job whose data went away: not a byte of it changes.
    interrupted = {**result, "status": "interrupted", "metrics": {}}
    (run / "results.json").write_text(json.dumps(interrupted))
    files = {p: p.read_bytes() for p in [run / "results.json", *run.glob("checkpoints/*")]}
    (data / "mnist").rename(tmp_path / "away")
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 1 and "DatasetNotFoundError" in proc.stderr, proc.stderr[-3000:]
    assert {p: p.read_bytes() for p in files} == files
    assert "the same command, once they are there, resumes it" in (run / "train.log").read_text()
    (tmp_path / "away").rename(data / "mnist")
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (resumed,) = results_under(run)
    assert resumed["status"] == "completed" and resumed["attempts"] == 2
    assert resumed["metrics"] == result["metrics"]  # resumed after its last epoch: re-tested


def offline_env() -> dict[str, str]:
    """The CLI's environment on a node without internet: every download goes through a
    proxy that refuses the connection at once."""
    env = {k: v for k, v in cli_env().items() if k.lower() not in ("no_proxy", "all_proxy")}
    return {**env, **{k: UNREACHABLE for k in ("http_proxy", "https_proxy", "HTTP_PROXY",
                                                "HTTPS_PROXY")}}  # fmt: skip


@pytest.mark.parametrize("failure", ["download", "unreadable"])
@pytest.mark.slow
def test_a_relaunch_that_fails_before_its_fit_keeps_an_interrupted_job_resumable(tmp_path, failure):
    """An interrupted job relaunched where its data cannot be had, found out only in the
    driver: with data.download=true on a node without internet or data, check_available lets
    it through (the job downloads) and the download fails; or its IDX files are there but one
    cannot be read (a truncated .gz). The DatasetNotFoundError used to replace the
    interrupted record with failed, which the next launch read as refused before training:
    it deleted last.ckpt and best.ckpt and trained from step 0; the read error left a failed
    record only sweep.rerun_failed=true (from step 0 too) would run again. Nothing of this
    attempt was computed: now nothing of the job changes (the error in one line), and the
    command that finds the data resumes it."""
    data, run = tmp_path / "data", tmp_path / "run"
    make_idx_dataset(data / "mnist")
    tiny = [a for a in TINY if not a.startswith("data=")]
    args = [*tiny, "data=mnist", "data.val_size=10", "data.batch_size=8",
            "data.eval_batch_size=9", "logger=csv", "hydra.run.dir=run"]  # fmt: skip
    proc = run_cli([*args, f"data.root={data}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = results_under(run)
    stop = {"type": "JobInterrupted", "message": "stopped by SIGTERM", "step": 3}
    interrupted = {**result, "status": "interrupted", "metrics": {}, "error": stop}
    (run / "results.json").write_text(json.dumps(interrupted))
    mtime = (run / "results.json").stat().st_mtime_ns
    files = {p: p.read_bytes() for p in run.glob("checkpoints/*")}
    assert {p.name for p in files} == {"last.ckpt", "best.ckpt"}
    if failure == "download":
        relaunch = [*args, f"data.root={tmp_path / 'nothing'}", "data.download=true"]
        line = line_and_kept(run_cli(relaunch, tmp_path, env=offline_env()), "run")
        assert "DatasetNotFoundError: dataset 'mnist': no directory holds all of" in line, line
        then = "the same command, once they are there, resumes it"
    else:
        damaged = tmp_path / "damaged"
        shutil.copytree(data, damaged)
        images = damaged / "mnist" / "train-images-idx3-ubyte.gz"
        images.write_bytes(images.read_bytes()[:40])
        line = line_and_kept(run_cli([*args, f"data.root={damaged}"], tmp_path), "run")
        assert f"ValueError: {images}: corrupt or truncated gzip file" in line, line
        then = "the same command, once that is fixed, resumes it"
    assert {p: p.read_bytes() if p.exists() else None for p in files} == files
    assert json.loads((run / "results.json").read_text()) == interrupted  # the record as it was
    assert (run / "results.json").stat().st_mtime_ns == mtime  # and its time
    log = (run / "train.log").read_text()
    assert f"checkpoints are kept: {then}" in log, log[-3000:]
    if failure == "download":
        assert "download failed" in log
    proc = run_cli([*args, f"data.root={data}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming {run} from" in (run / "train.log").read_text()
    (resumed,) = results_under(run)
    assert resumed["status"] == "completed" and resumed["attempts"] == result["attempts"] + 1
    assert resumed["metrics"] == result["metrics"]  # resumed after its last epoch: re-tested


def test_a_missing_dataset_is_a_refusal_a_relaunch_checks_again(tmp_path):
    """check_available fails as loading would, before anything is read; its record counts
    as refused (nothing computed), other failures do not."""
    with pytest.raises(DatasetNotFoundError, match="no directory holds all of"):
        check_available("mnist", tmp_path)
    check_available("mnist", tmp_path, download=True)  # the job downloads: not refused here
    check_available("digits", tmp_path)  # shipped: nothing to find
    make_idx_dataset(tmp_path / "mnist")
    check_available("mnist", tmp_path)
    failed = {"status": "failed", "error": {"type": "DatasetNotFoundError", "message": "m"}}
    assert record.refused(failed) and record.refused({**failed, "error": {"type": "ConfigError"}})
    assert not record.refused({**failed, "error": {"type": "RuntimeError"}})
    assert not record.refused({**failed, "status": "diverged"})


@pytest.mark.slow
def test_a_refused_relaunch_keeps_the_interrupted_record_and_checkpoint(completed, tmp_path):
    """A relaunch of an interrupted job whose config is now refused (a value that changes
    no result, so not a config mismatch) touches neither its record nor its checkpoint: the
    corrected command resumes it."""
    run = tmp_path / "run"
    shutil.copytree(completed, run)
    result = json.loads((run / "results.json").read_text())
    interrupted = {**result, "status": "interrupted", "metrics": {}}
    (run / "results.json").write_text(json.dumps(interrupted))
    # (Hydra writes .hydra/*.yaml of a job it will resume before the task runs.)
    files = {p: p.read_bytes() for p in [run / "results.json", *run.glob("checkpoints/*")]}
    args = [*TINY, "logger=csv", "hydra.run.dir=run"]
    line = line_and_kept(run_cli([*args, "threads=-1"], tmp_path), "run")
    assert "ConfigError: threads=-1 is invalid" in line
    assert {p: p.read_bytes() for p in files} == files  # not a byte changed
    assert "the corrected command resumes it" in (run / "train.log").read_text()
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (resumed,) = results_under(run)
    assert resumed["status"] == "completed" and resumed["attempts"] == result["attempts"] + 1
    assert resumed["metrics"] == result["metrics"]  # resumed after its last epoch: re-tested


@pytest.mark.slow
def test_a_full_disk_is_named_with_the_free_space(tmp_path):
    """A real full file system: a 400 kB tmpfs, mounted in a user namespace."""
    probe = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=4k none {tmp_path}"],
        capture_output=True,
    )
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (unshare)")
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    args = " ".join([*TINY, "logger=none", f"hydra.run.dir={mnt}/run"])
    script = (
        f"mount -t tmpfs -o size=400k none {mnt} && cd {tmp_path} && "
        f"{sys.executable} {RUN_PY} {args}; rc=$?; cp {mnt}/run/results.json "
        f"{mnt}/run/train.log {out}/; exit $rc"
    )
    proc = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = one_line(proc)
    assert f"disk full while writing {mnt}/run/checkpoints/" in line and "kB free" in line
    result = json.loads((out / "results.json").read_text())
    assert result["status"] == "failed" and result["metrics"] == {}
    assert "Traceback" in (out / "train.log").read_text()


@pytest.mark.slow
def test_sweep_summary_lists_every_job_and_fails(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "stray").mkdir(parents=True)
    (sweep / "stray" / "results.json").write_text('{"status": "completed"}')
    (sweep / "junk").mkdir()
    (sweep / "junk" / "results.json").write_text("not json")
    (sweep / "summary.csv").write_text("an,old,summary\n")
    proc = run_cli(
        [
            "-m",
            *TINY,
            "logger=none",
            "eval.n_images=4,8",
            "data.batch_size=2000",
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "raised" not in proc.stderr
    # Refused once the data are loaded, before the first step: each job fails alone.
    for n in (4, 8):
        assert (
            f"[vaesweep] eval.n_images={n}: ConfigError: data.batch_size=2000 is invalid: "
            "allowed at most the 1397 examples of the training split of data=digits"
        ) in proc.stderr
    assert not list(sweep.glob("*/checkpoints"))
    rows = (sweep / "summary.csv").read_text().splitlines()
    statuses = {row.split(",")[0].strip('"')[:5]: row for row in rows[1:]}
    assert len(rows) == 5 and "an,old" not in rows[0]
    assert ",unreadable," in statuses["junk"] and "not valid JSON" in statuses["junk"]
    assert ",incomplete," in statuses["stray"]
    assert "holds no finite test/nll, test/elbo" in statuses["stray"]
    assert sum(",failed," in row for row in rows) == 2
    assert "4 of 4 jobs did not complete" in proc.stderr


def test_collect_does_not_count_a_result_without_metrics(completed, tmp_path):
    shutil.copytree(completed, tmp_path / "good")
    for name in ("empty", "dev"):
        result = json.loads((completed / "results.json").read_text())
        if name == "dev":
            result["config"]["trainer"]["fast_dev_run"] = True
        else:
            result["metrics"] = {}
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(result))
    df = load_results(tmp_path).set_index("run_dir")
    assert df.loc[str(tmp_path / "good"), "status"] == "completed"
    assert df.loc[str(tmp_path / "empty"), "status"] == "incomplete"
    assert df.loc[str(tmp_path / "dev"), "status"] == "fast_dev_run"


def test_a_grid_with_one_bad_value_is_refused_before_any_job(tmp_path):
    """Every job's config is validated before the first trains: a bad value among good ones
    names itself at once, rather than failing when its turn comes after the others."""
    grid = ["-m", "beta=0.5,-1,2", "likelihood.scale=learned,bogus"]
    proc = run_cli([*grid, *TINY, "logger=none", "hydra.sweep.dir=sweep"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_line(proc)
    assert line.startswith(
        "[vaesweep] sweep refused, no job was run: 4 of the 6 jobs would be refused when their "
        "turn came: "
    ), line
    assert "beta=-1 is invalid: allowed a finite number ≥ 0" in line
    assert "likelihood.scale='bogus' is invalid: allowed one of ['fixed', 'learned'" in line
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "seed=0,1", "seed=2"], "seed is given twice on the command line"),
        (["-m", "sweep.resume=nonexistent"], "sweep.resume=nonexistent is invalid: no such"),
        # Refused by the data module only, once the first job had trained.
        (
            ["-m", "data.val_size=100,-5"],
            "1 of the 2 jobs would be refused when their turn came: data.val_size=-5 is invalid",
        ),
        (
            ["-m", "data.val_size=100,5000"],  # more than the dataset holds, known up front
            "1 of the 2 jobs would be refused when their turn came: data.val_size=5000 is inva",
        ),
    ],
)
def test_sweeps_refused_before_any_job(tmp_path, args, message):
    proc = run_cli([*args, *TINY, "logger=none"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"sweep refused, no job was run: {message}" in proc.stderr
    assert not (tmp_path / "nonexistent").exists() and not results_under(tmp_path)


@pytest.mark.slow
def test_a_study_preset_without_multirun_says_it_trains_one_run(tmp_path):
    """experiment=bernoulli_vs_continuous holds a grid that only -m runs: a single run of it
    trains the defaults (a Gaussian, no run of the study), and says so."""
    proc = run_cli(["experiment=bernoulli_vs_continuous", *TINY, "logger=none"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "[vaesweep] note: experiment=bernoulli_vs_continuous defines a grid (likelihood, beta, "
        "seed) that only a multirun runs: this is one run with the defaults; add -m"
    ) in proc.stderr
    plain = run_cli([*TINY, "logger=none"], tmp_path)
    assert plain.returncode == 0 and "note:" not in plain.stderr


DIGITS_SIZES = {"train": 1397, "val": 200, "test": 200}  # the digits split


@pytest.mark.parametrize(
    ("trainer", "world_size", "test_examples", "refused"),
    [
        # 22 training batches of 64 (⌈1397 / 64⌉): 0.04 × 22 rounds down to 0, 0.05 to 1.
        ({"limit_train_batches": 0.04}, 1, None, ("trainer.limit_train_batches", "1/22")),
        ({"limit_train_batches": 0.05}, 1, None, None),
        ({"overfit_batches": 0.04}, 1, None, ("trainer.overfit_batches", "1/22")),
        ({"overfit_batches": 2}, 1, None, None),
        # One validation / test batch of 500 (200 examples): any fraction below 1 is none.
        ({"limit_val_batches": 0.5}, 1, None, ("trainer.limit_val_batches", "1/1")),
        ({"limit_test_batches": 0.99}, 1, None, ("trainer.limit_test_batches", "1/1")),
        ({"limit_test_batches": 1.0}, 1, None, None),
        ({"limit_val_batches": 0.0}, 1, None, None),  # validation off
        # eval.test_examples=100 in batches of 50: 2 batches, so 0.5 is one, 0.4 none.
        ({"limit_test_batches": 0.5}, 1, 100, None),
        ({"limit_test_batches": 0.4}, 1, 100, ("trainer.limit_test_batches", "1/2")),
        # Validation every 22 batches fits an epoch of 22, 23 never comes within one ...
        ({"val_check_interval": 22}, 1, None, None),
        ({"val_check_interval": 23}, 1, None, ("trainer.val_check_interval", "at most the 22")),
        # ... nor within half an epoch (11 batches), nor with 2 processes of 349 examples
        # (⌊1397 / 4⌋) in batches of 16: 22 each.
        ({"val_check_interval": 12, "limit_train_batches": 0.5}, 1, None,
         ("trainer.val_check_interval", "at most the 11")),
        ({"val_check_interval": 23}, 4, None, ("trainer.val_check_interval", "at most the 22")),
        # Counted across epochs, or without validation: any count.
        ({"val_check_interval": 1000, "check_val_every_n_epoch": None}, 1, None, None),
        ({"val_check_interval": 1000, "limit_val_batches": 0}, 1, None, None),
        ({"limit_test_batches": 0.5, "fast_dev_run": True}, 1, None, None),  # one batch each
        ({"limit_test_batches": 0.5}, 1, 0, None),  # no test example: Lightning runs none
    ],
)  # fmt: skip
def test_batch_limits_that_leave_a_split_no_batch_are_refused(
    trainer, world_size, test_examples, refused
):
    """Lightning rounds a limit_*_batches (or overfit_batches) fraction of a split's batches
    down, and refuses 0 batches only when it reaches that split (the test split: after the
    whole fit); an integer val_check_interval above the batches of an epoch, when the fit
    starts. Checked against the batch counts worked out by hand from the digits split."""
    from vaesweep.run.config import check_batch_limits

    limits = {
        "fast_dev_run": False,
        "limit_train_batches": None,
        "limit_val_batches": None,
        "limit_test_batches": None,
        "overfit_batches": 0.0,
        "val_check_interval": None,
        "check_val_every_n_epoch": 1,
        **trainer,
    }
    cfg = OmegaConf.create(
        {"data": {"batch_size": 64, "eval_batch_size": 50 if test_examples else 500},
         "trainer": limits}
    )  # fmt: skip
    if refused is None:
        check_batch_limits(cfg, DIGITS_SIZES, test_examples, world_size)
        return
    key, allowed = refused
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(key)}=\S+ is invalid: allowed .*{allowed}"
    ):
        check_batch_limits(cfg, DIGITS_SIZES, test_examples, world_size)


def test_a_test_fraction_of_no_batch_is_refused_before_training(tmp_path):
    """trainer.limit_test_batches=0.5 on digits (its test split is one batch): refused once
    the data are loaded, before the first step, naming the split's batches (Lightning
    refused it only at the test, after the whole fit), and recorded as a failed run."""
    proc = run_cli(
        [*TINY, "logger=none", "trainer.limit_test_batches=0.5", "hydra.run.dir=r"], tmp_path
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (
        "ConfigError: trainer.limit_test_batches=0.5 is invalid: allowed a fraction of at "
        "least 1/1 = 1, or an integer number of batches ≥ 1: the test split has 1 batch (200 "
        "examples, data.eval_batch_size=500)"
    ) in proc.stderr
    result = json.loads((tmp_path / "r" / "results.json").read_text())
    assert result["status"] == "failed" and result["error"]["type"] == "ConfigError"
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing trained


@pytest.mark.parametrize(
    "precision", ["16-true", "bf16-true", "transformer-engine", "transformer-engine-float16"]
)
def test_a_precision_that_casts_the_weights_to_16_bits_is_refused(precision):
    """Under 16-true, bf16-true and transformer-engine* Lightning casts the module to 16
    bits: bf16-true crashed at the first step (``mat1 and mat2 must have the same dtype``,
    the float32 latent meeting the bf16 decoder), and the optimal scale's running σ*, the
    β controllers' state and the step tracker would have lost their precision. Refused
    before the data load (in the launching process too), naming what works."""
    message = (
        rf"^trainer.precision='{precision}' is invalid: allowed a precision that keeps float32 "
        r"weights: 32-true, 64-true, or bf16-mixed / 16-mixed"
    )
    with pytest.raises(ConfigError, match=message):
        validate([f"trainer.precision={precision}"])
    cfg = compose_cfg([f"trainer.precision={precision}", "paths.data_dir=/tmp"])
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg, in_job=False)


def test_bf16_true_really_fails_in_the_model(tmp_path):
    """What the refusal prevents, shown on the model itself under Lightning's bf16-true
    plugin (one training step on a CPU): the decoder's bf16 weights meet the float32
    latent."""
    from vaesweep.model.likelihoods import GaussianLikelihood
    from vaesweep.model.module import VAE
    from vaesweep.model.networks import MLP
    from vaesweep.model.schedules import ConstantBeta

    model = VAE(
        likelihood=GaussianLikelihood((1, 4, 4)),
        schedule=ConstantBeta(1.0),
        network=MLP(latent_dim=2, hidden=[8]),
    )
    data = torch.utils.data.DataLoader(torch.rand(8, 1, 4, 4), batch_size=4)
    trainer = L.Trainer(
        precision="bf16-true", max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="same dtype"):
        trainer.fit(model, data)


@pytest.mark.parametrize("key", ["beta", "optimizer.lr", "trainer.gradient_clip_val"])
def test_an_integer_too_large_for_a_float_is_refused_by_name(key):
    """``beta=1000…0`` (401 digits, an int no float holds): the number check raised
    OverflowError from math.isfinite, which the run printed as such (no key named); now it
    is refused as any other value out of range."""
    huge = 10**400
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=1000+ is invalid: allowed"):
        validate([f"{key}={huge}"])


def test_a_directory_given_empty_or_null_is_refused_before_hydra_writes_anything(tmp_path):
    """paths.output_dir= (an unset variable in a script) put the runs in /runs at the file
    system's root, null in a directory named None, and hydra.run.dir= wrote a run's files into
    the directory the command ran from. A leading ~ of paths.output_dir was a directory
    named ~."""
    from vaesweep.sweep.entry import empty_directory, home_expanded

    for arg in (
        "paths.output_dir=",
        "paths.output_dir=null",
        "hydra.run.dir=''",
        "++hydra.sweep.dir=",
    ):
        key = arg.lstrip("+").partition("=")[0]
        assert empty_directory(["seed=1", arg]).startswith(f"{key}=")
    for fine in ("paths.output_dir=out", "hydra.sweep.dir=a,b", "label.note=", "beta=1"):
        assert empty_directory([fine]) is None
    home = str(Path.home())
    assert home_expanded(["paths.output_dir=~/o", "+paths.data_dir=~/d"]) == [
        f"paths.output_dir={home}/o",
        f"+paths.data_dir={home}/d",
    ]
    proc = run_cli([*TINY, "paths.output_dir="], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip() == (
        "[vaesweep] run refused, nothing was written: paths.output_dir='' is invalid: allowed a "
        "directory (relative to where the command runs, or absolute; a leading ~ is your home)"
    )
    assert list(tmp_path.iterdir()) == []
