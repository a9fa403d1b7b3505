"""hydra/launcher=ray (src/hydra_plugins/vaesweep_ray_launcher) and GPUs shared by jobs.

In process (fast, no Ray needed): how gpus_per_job / cpus_per_job are derived from the nodes,
requests no node can hold refused (several GPUs per job among them), what ray.init is given
(joining a cluster passes nothing that sizes one), Ray imported with its log de-duplication
off (a fresh interpreter), the tasks not yet started cancelled once the sweep is stopped (Ray
faked) and a task that starts after the stop making nothing, Hydra's joblib refused where it
would pile jobs onto GPU 0 (GPU count faked), DDP in a Ray job refused, the out-of-memory
message of a job given a share of a GPU, worded for its launcher.

For real (slow; skipped when ray is not importable): a local Ray started by the CLI in a
subprocess; the same metrics as the basic launcher, a failing job alone, skip/claims on
relaunch, W&B runs and summary run; Ctrl-C to the launching process and a job whose process
is SIGKILLed, both resumed to the uninterrupted metrics; Ctrl-C while a job waits for a CPU
(cancelled, no directory); a job larger than the node refused; GPUs declared to Ray assigned
one per job or K jobs per GPU, every job's lines on the console; an Optuna search batched
through Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_interrupt import BUDGET, JOB, finish, jobs, output, result, run_to_end, start, summary

from hydra_plugins.vaesweep_ray_launcher import ray_launcher
from vaesweep.run import gpus
from vaesweep.run.claims import CLAIM_FILE
from vaesweep.run.config import CONF_DIR
from vaesweep.run.failures import describe
from vaesweep.sweep.callback import refuse_bad_gpu_use

from conftest import REPO, TINY, cli_env, results_under, run_cli
from pause import pause_env

RAY = ["hydra/launcher=ray"]


@pytest.fixture(autouse=True)
def patient_ray(monkeypatch):
    """On a loaded shared machine Ray's raylet can take over its default 30 s to register."""
    monkeypatch.setenv("RAY_raylet_start_wait_time_s", "180")


def needs_ray():
    return pytest.importorskip(
        "ray", reason="hydra/launcher=ray needs ray: pip install 'vaesweep[ray]'"
    )


# -- in process -------------------------------------------------------------------------------


ONE_NODE = [{"CPU": 16.0, "GPU": 4.0}]


@pytest.mark.parametrize(
    ("options", "trainer", "nodes", "expected"),
    [
        ({}, {"accelerator": "gpu", "devices": 1}, ONE_NODE, (1.0, 4.0)),
        ({"gpus_per_job": 0.25}, {"accelerator": "gpu"}, ONE_NODE, (0.25, 1.0)),
        ({"gpus_per_job": 0.125}, {"accelerator": "gpu"}, [{"CPU": 2, "GPU": 1}], (0.125, 0.25)),
        ({}, {"accelerator": "auto", "devices": 1}, [{"CPU": 8, "GPU": 2}], (1.0, 4.0)),
        ({}, {"accelerator": "auto", "devices": 1}, [{"CPU": 8}], (0.0, 1.0)),
        ({}, {"accelerator": "cpu", "devices": 1}, [{"CPU": 8, "GPU": 2}], (0.0, 1.0)),
        ({"cpus_per_job": 2}, {"accelerator": "gpu"}, [{"CPU": 8, "GPU": 2}], (1.0, 2.0)),
        ({"cpus_per_job": 0.5}, {"accelerator": "cpu"}, [{"CPU": 2}], (0.0, 0.5)),
        # A head without GPUs beside a GPU node: the GPU node's CPUs per GPU, not the
        # cluster's (24 summed: more than the GPU node has, so no job could start).
        ({}, {"accelerator": "gpu", "devices": 1}, [{"CPU": 16}, {"CPU": 8, "GPU": 1}], (1.0, 8.0)),
        # GPU nodes of two kinds: what fits on either.
        ({}, {"accelerator": "gpu"}, [{"CPU": 8, "GPU": 2}, {"CPU": 32, "GPU": 4}], (1.0, 4.0)),
        ({"gpus_per_job": 0.5}, {"accelerator": "gpu"}, [{"CPU": 64}, {"CPU": 8, "GPU": 2}], (0.5, 2.0)),
    ],
)  # fmt: skip
def test_gpus_not_cpus_bound_how_many_jobs_run(options, trainer, nodes, expected):
    assert ray_launcher.resolve_resources(options, trainer, nodes) == expected


@pytest.mark.parametrize(
    ("options", "nodes", "message"),
    [
        ({"gpus_per_job": 1.5}, [{"CPU": 8, "GPU": 2}], "gpus_per_job=1.5: a Ray job trains on one"),
        # Several GPUs per job: DDP (devices=auto) or idle GPUs (devices=1): refused.
        ({"gpus_per_job": 2}, [{"CPU": 8, "GPU": 2}], "gpus_per_job=2: a Ray job trains on one"),
        ({"gpus_per_job": -1}, [{"CPU": 8, "GPU": 2}], "gpus_per_job=-1"),
        ({"gpus_per_job": 1}, [{"CPU": 8}], "Ray sees 0 GPUs"),
        ({"gpus_per_job": "x"}, [{"CPU": 8}], "gpus_per_job='x' is invalid: allowed null"),
        ({"cpus_per_job": 0}, [{"CPU": 8, "GPU": 2}], "cpus_per_job=0: a job needs more than 0"),
        ({"cpus_per_job": -2}, [{"CPU": 8, "GPU": 2}], "cpus_per_job=-2: a job needs more than 0"),
        # More CPUs than the node has: Ray would wait for such a node for ever.
        ({"gpus_per_job": 0, "cpus_per_job": 4}, [{"CPU": 2}],
         r"cpus_per_job=4 but the largest node of this Ray has 2 CPUs.*0 < cpus_per_job <= 2"),
        # ... or than any GPU node has, for a GPU job (the head's CPUs do not count).
        ({"cpus_per_job": 16}, [{"CPU": 24}, {"CPU": 8, "GPU": 1}],
         "cpus_per_job=16 but the largest node with a GPU of this Ray has 8 CPUs"),
    ],
)  # fmt: skip
def test_requests_no_node_can_hold_are_refused(options, nodes, message):
    with pytest.raises(ray_launcher.RayLauncherError, match=message):
        ray_launcher.resolve_resources(options, {"accelerator": "gpu"}, nodes)


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
@pytest.mark.parametrize("address", [None, "auto"])
def test_a_gpu_trainer_with_no_gpu_per_job_is_refused(accelerator, address):
    """gpus_per_job=0 with a GPU trainer: Ray would give every job no GPU and each would
    fail on its own. Refused before any job, on a cluster joined with address too (no
    autoscaler can change it), naming both keys and what is allowed."""
    options = {"gpus_per_job": 0, "address": address}
    trainer = {"accelerator": accelerator, "devices": 1}
    message = (
        rf"gpus_per_job=0 but trainer.accelerator={accelerator}: Ray gives each job no GPU\. "
        r"Allowed: gpus_per_job > 0"
    )
    with pytest.raises(ray_launcher.RayLauncherError, match=message):
        ray_launcher.resolve_resources(options, trainer, ONE_NODE)
    # A CPU or auto trainer with no GPU per job is a CPU sweep.
    for other in ("cpu", "auto"):
        assert ray_launcher.resolve_resources(options, {"accelerator": other}, ONE_NODE) == (
            0.0,
            1.0,
        )


def test_what_no_cluster_could_run_is_refused_before_ray_starts():
    """launch() calls check_options before start_ray: no cluster is needed to refuse it."""
    for options in ({"gpus_per_job": 2}, {"cpus_per_job": 0}, {"cpus_per_job": "many"}):
        with pytest.raises(ray_launcher.RayLauncherError):
            ray_launcher.check_options(options)
    ray_launcher.check_options({"gpus_per_job": 0.5, "cpus_per_job": 0.5})
    ray_launcher.check_options({})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # Ray failed on them after sweep.json recorded the launch: "AssertionError: CPU
        # (<class 'str'>): abc", "Resource quantities must be nonnegative".
        ({"num_cpus": "abc"},
         "num_cpus='abc' is invalid: allowed null (the CPUs Ray detects) or a whole number ≥ 1"),
        ({"num_cpus": -1}, "num_cpus=-1 is invalid: allowed null"),
        ({"num_cpus": 2.5}, "num_cpus=2.5 is invalid: allowed null"),
        ({"num_cpus": True}, "num_cpus=True is invalid: allowed null"),
        ({"num_gpus": -1},
         "num_gpus=-1 is invalid: allowed null (the GPUs Ray detects) or a whole number ≥ 0"),
        ({"max_retries": -5}, "max_retries=-5 is invalid: allowed null or 0"),
        ({"cpus_per_job": "many"},
         "cpus_per_job='many' is invalid: allowed null (derived from the cluster) or a number"),
        # Accepted and ignored (RayLauncher takes **options).
        ({"gpu_per_job": 1},
         "gpu_per_job=1 is invalid: hydra/launcher=ray has no key gpu_per_job (did you mean "
         "hydra.launcher.gpus_per_job?). Allowed keys: address, gpus_per_job, cpus_per_job, "
         "num_cpus, num_gpus, max_retries, include_dashboard, log_to_driver, init"),
        ({"address": 6379}, "address=6379 is invalid: allowed null (a local Ray for this sweep)"),
        ({"address": "headnode"}, "address='headnode' is invalid: allowed null"),
        ({"init": {"num_cpus": 4}},
         "init.num_cpus=4 is invalid: num_cpus is an option of hydra/launcher=ray itself; set "
         "hydra.launcher.num_cpus=4 instead"),
        ({"init": 5}, "init=5 is invalid: allowed a mapping of ray.init keyword arguments"),
    ],
)  # fmt: skip
def test_options_ray_would_refuse_are_refused_naming_what_is_allowed(options, message):
    with pytest.raises(ray_launcher.RayLauncherError) as refused:
        ray_launcher.check_options(options)
    assert str(refused.value).startswith(f"hydra.launcher.{message}"), str(refused.value)


def test_init_keys_are_checked_against_ray_init():
    """init={foo: 1} failed in ray.init (RuntimeError: Unknown keyword argument(s): foo),
    after sweep.json recorded the launch; its keyword arguments are ray.init's own, with its
    documented hidden ones (_temp_dir)."""
    needs_ray()
    with pytest.raises(ray_launcher.RayLauncherError) as refused:
        ray_launcher.check_options({"init": {"namespce": "x"}})
    message = str(refused.value)
    assert message.startswith(
        "hydra.launcher.init.namespce='x' is invalid: ray.init takes no argument namespce "
        "(did you mean hydra.launcher.init.namespace?). Allowed: "
    ), message
    assert "object_store_memory" in message and "_temp_dir" in message
    good = {"num_cpus": 2, "num_gpus": 0.0, "max_retries": -1, "address": "auto"}
    ray_launcher.check_options({**good, "init": {"namespace": "x", "_temp_dir": "/tmp/r"}})
    # Ray Client hands other keys to its own builder.
    ray_launcher.check_options({"address": "ray://head:10001", "init": {"allow_multiple": True}})


def test_an_address_where_nothing_listens_is_refused_and_a_silent_one_said(monkeypatch, capsys):
    """Ray retries an address where no cluster answers without end ("Failed to connect to
    GCS", for minutes), naming no key: refused when the connection is refused or the host
    unknown; said in one line, not refused, when it does not answer in time."""
    import socket

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    assert ray_launcher.address_problem(f"127.0.0.1:{port}") is None
    listening.close()
    message = ray_launcher.address_problem(f"127.0.0.1:{port}")
    assert message is not None and message.startswith(
        f"hydra.launcher.address=127.0.0.1:{port} is invalid: no Ray cluster answers there "
        f"(127.0.0.1:{port}: Connection refused"
    ), message
    assert message.endswith("or null for a local Ray for this sweep")
    message = ray_launcher.address_problem("ray://nosuchhost.invalid:10001")
    assert message is not None and "unknown host nosuchhost.invalid" in message
    assert ray_launcher.address_problem("auto") is None
    assert ray_launcher.address_problem(None) is None

    def silent(*args, **kwargs):
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    assert ray_launcher.address_problem("10.0.0.1:6379", timeout_s=0.1) is None
    assert (
        "[vaesweep] note: hydra.launcher.address=10.0.0.1:6379 did not answer within 0.1 s"
        in capsys.readouterr().err
    )


def test_ray_init_refusing_its_arguments_is_a_refusal_and_a_slow_join_is_said(monkeypatch, capsys):
    """What ray.init refuses (a value no check knew) is a refusal naming the arguments, not
    a sweep stopped with "Continue this sweep" (the same command would fail again). A join
    that takes long is said, naming the key. (Ray faked.)"""

    def refuse(**kwargs):
        raise ValueError("Resource quantities must be nonnegative.")

    fake = SimpleNamespace(is_initialized=lambda: False, init=refuse)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    with pytest.raises(ray_launcher.RayLauncherError) as refused:
        ray_launcher.start_ray({"init": {"object_store_memory": -1}})
    assert str(refused.value).startswith(
        "Ray did not start: ray.init(log_to_driver=True, include_dashboard=False, "
        "object_store_memory=-1) raised ValueError: Resource quantities must be nonnegative. "
        "These arguments are hydra.launcher's"
    ), str(refused.value)

    def slow(**kwargs):
        time.sleep(0.5)

    monkeypatch.setattr(ray_launcher, "JOIN_NOTE_S", 0.1)
    fake.init, fake.cluster_resources = slow, lambda: {"CPU": 2}
    assert ray_launcher.start_ray({"address": "10.0.0.1:6379"}) == {"CPU": 2.0}
    assert (
        "[vaesweep] still joining the Ray cluster at hydra.launcher.address=10.0.0.1:6379 "
        "after 0.1 s" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.launcher.num_cpus=abc",
         "hydra.launcher.num_cpus='abc' is invalid: allowed null (the CPUs Ray detects) or a "
         "whole number ≥ 1"),
        ("+hydra.launcher.init={foo:1}",
         "hydra.launcher.init.foo=1 is invalid: ray.init takes no argument foo. Allowed: "),
        ("hydra.launcher.address=127.0.0.1:CLOSED",
         "hydra.launcher.address=127.0.0.1:CLOSED is invalid: no Ray cluster answers there"),
    ],
)  # fmt: skip
@pytest.mark.slow
def test_ray_options_are_refused_before_anything_is_written(workdir, override, message):
    """Each failed in Ray after sweep.json recorded the launch, the first ones followed by
    "Continue this sweep" with the same bad value, the address after minutes of Ray's
    retries. Now the sweep's checks refuse them before Ray starts (exit 2, nothing
    written)."""
    needs_ray()
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = str(closed.getsockname()[1])
    closed.close()
    override, message = override.replace("CLOSED", port), message.replace("CLOSED", port)
    args = ["-m", "seed=0,1", *TINY, "logger=none", *RAY, override, "hydra.sweep.dir=sweep"]
    proc = run_cli(args, workdir, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"[vaesweep] sweep refused, no job was run: {message}" in proc.stderr
    assert "Continue this sweep" not in proc.stderr
    assert not (workdir / "sweep").exists()


def test_a_joined_cluster_may_grow_a_node_large_enough(caplog):
    """address=auto: an autoscaler may add the node; warned, not refused."""
    options = {"address": "auto", "cpus_per_job": 64}
    assert ray_launcher.resolve_resources(options, {"accelerator": "cpu"}, [{"CPU": 8}]) == (
        0.0,
        64.0,
    )
    assert "cpus_per_job=64 but the largest node" in caplog.text


def test_ray_is_imported_with_its_log_deduplication_off():
    """Ray reads RAY_DEDUP_LOGS once, at its first import: the launcher's import of it must
    come with the variable set, else Ray folds different jobs' lines into one ("[repeated
    3x across cluster]"). A fresh interpreter, as a launching process is; Ray's own flag
    is checked, not the variable."""
    needs_ray()
    code = (
        "from hydra_plugins.vaesweep_ray_launcher import ray_launcher\n"
        "ray = ray_launcher.import_ray()\n"
        "from ray._private import ray_logging\n"
        "print('dedup', ray_logging.RAY_DEDUP_LOGS)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_DEDUP_LOGS"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dedup False" in proc.stdout


class FakeTask:
    """A Ray task's streaming generator, faked: ``items`` come out one per wait once
    ``starts_at`` waits have passed (never, for None)."""

    def __init__(self, name, items, starts_at):
        self.name, self.items, self.starts_at = name, list(items), starts_at
        self.cancelled = False

    def next_ready(self):
        return bool(self.items) and self.starts_at is not None and self.starts_at <= FakeRay.now

    def __next__(self):
        if self.cancelled:
            return ("cancelled", self.name)
        return ("value", self.items.pop(0))


class FakeRay:
    now = 0

    class exceptions:  # noqa: N801 (ray.exceptions)
        class RayError(Exception):
            pass

        class TaskCancelledError(RayError):
            pass

    def __init__(self):
        self.cancelled = []

    def wait(self, pending, num_returns, timeout):
        FakeRay.now += 1
        ready = [t for t in pending if t.cancelled or t.next_ready()][:num_returns]
        return ready, [t for t in pending if t not in ready]

    def get(self, item):
        kind, value = item
        if kind == "cancelled":
            raise self.exceptions.TaskCancelledError(value)
        return value

    def cancel(self, task):
        task.cancelled = True
        self.cancelled.append(task.name)


def test_a_stopped_sweep_cancels_the_tasks_that_have_not_started(monkeypatch):
    """Two jobs running, a third waiting (for a CPU, or a node that never comes); the stop
    comes: the waiting task is cancelled (it would start a worker and make its directory,
    or wait for ever), the running ones are not (they stop at their next batch and return
    their result), and the gather ends."""
    FakeRay.now = 0
    ray = FakeRay()
    done = SimpleNamespace(status="interrupted")
    running = [FakeTask(n, [ray_launcher.STARTED, done], starts_at=1) for n in ("a", "b")]
    waiting = FakeTask("c", [ray_launcher.STARTED, done], starts_at=None)
    tasks = {t: i for i, t in enumerate([*running, waiting])}
    launcher = ray_launcher.RayLauncher()
    stopped = lambda: FakeRay.now >= 3  # noqa: E731 (after both have started)
    results = launcher._gather(ray, tasks, [["beta=1"], ["beta=2"], ["beta=4"]], 0, stopped)
    assert ray.cancelled == ["c"]
    assert results == [done, done, None]


def test_a_task_that_starts_after_the_stop_makes_nothing(tmp_path, monkeypatch):
    """It returns before Hydra's job config (which makes the job's directory and its
    train.log) and before it says it was given a GPU."""
    from vaesweep.run.signals import STOP_FILE_ENV

    stop_file = tmp_path / ".stop-host-1"
    stop_file.write_text("SIGINT")
    monkeypatch.setenv(STOP_FILE_ENV, str(stop_file))
    monkeypatch.delenv(gpus.ASSIGNED_ENV, raising=False)
    monkeypatch.delenv(gpus.FRACTION_ENV, raising=False)
    assert ray_launcher.execute_job(0, ["beta=1"], None, 0.5, 1.0) is None
    assert list(ray_launcher.job_task(0, ["beta=1"], None, 0.5, 1.0)) == [
        ray_launcher.STARTED,
        None,
    ]
    assert gpus.ASSIGNED_ENV not in os.environ and gpus.FRACTION_ENV not in os.environ
    assert list(tmp_path.iterdir()) == [stop_file]


@pytest.mark.parametrize("address", [None, "auto"])
def test_ray_init_arguments(monkeypatch, address):
    """A local start: no dashboard, the declared resources; joining a cluster
    (address=auto): nothing that sizes a cluster, object_store_memory included. (Ray faked,
    imported already: RAY_DEDUP_LOGS matters only before its first import,
    test_ray_is_imported_with_its_log_deduplication_off.)"""
    calls = []
    fake = SimpleNamespace(
        is_initialized=lambda: False,
        init=lambda **kw: calls.append((kw, os.environ.get("RAY_DEDUP_LOGS"))),
        cluster_resources=lambda: {"CPU": 4, "GPU": 2},
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    options = {
        "address": address,
        "num_gpus": 2,
        "include_dashboard": False,
        "init": {"object_store_memory": 10**9, "namespace": "x"},
    }
    assert ray_launcher.start_ray(options) == {"CPU": 4.0, "GPU": 2.0}
    ((kwargs, _),) = calls
    if address:
        assert kwargs == {"address": "auto", "log_to_driver": True, "namespace": "x"}
    else:
        assert kwargs == {
            "log_to_driver": True,
            "include_dashboard": False,
            "num_gpus": 2,
            "object_store_memory": 10**9,
            "namespace": "x",
        }


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("sweep_dir", [None, "sweep"])
def test_a_jobs_sweep_directory_is_the_launching_processes_wherever_it_runs(
    tmp_path, monkeypatch, sweep_dir
):
    """A Ray worker of a cluster joined with address=auto runs where that cluster was
    started, not in the launching process's directory: the job's hydra.sweep.dir (relative
    by default: outputs/multirun/...) is made absolute from the launching process's; the
    job directory's name is Hydra's, unchanged."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton
    from hydra.types import HydraContext

    from vaesweep.run.jobs import register_resolvers
    from vaesweep.sweep.launching import job_config

    register_resolvers()
    launching, elsewhere = tmp_path / "launching", tmp_path / "elsewhere"
    launching.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(launching)
    given = [] if sweep_dir is None else [f"hydra.sweep.dir={sweep_dir}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("train", given, return_hydra_config=True)
        context = HydraContext(GlobalHydra.instance().config_loader(), Callbacks())
        monkeypatch.chdir(elsewhere)  # the worker's directory
        job = job_config(3, ["beta=2"], (context, config, None, Singleton.get_state()))
    directory = Path(job.hydra.sweep.dir)
    assert directory.is_absolute() and directory.is_relative_to(launching)
    if sweep_dir is None:
        assert directory.relative_to(launching).parts[:2] == ("outputs", "multirun")
    else:
        assert directory == launching / sweep_dir
    assert job.hydra.sweep.subdir == "beta=2" and job.hydra.job.num == 3


@pytest.mark.parametrize(
    ("n_gpus", "overrides", "refused"),
    [
        (4, ["hydra.launcher.n_jobs=4", "trainer=gpu"], True),
        (2, ["hydra.launcher.n_jobs=2"], True),  # accelerator auto: Lightning takes GPU 0
        (1, ["hydra.launcher.n_jobs=4", "trainer=gpu"], False),  # one GPU: nothing to pick
        (4, ["hydra.launcher.n_jobs=1", "trainer=gpu"], False),
        (4, ["hydra.launcher.n_jobs=4", "trainer.accelerator=cpu"], False),
    ],
)
def test_hydras_joblib_launcher_is_refused_where_it_would_pile_jobs_onto_gpu_0(
    monkeypatch, capsys, n_gpus, overrides, refused
):
    """Hydra's joblib launcher cannot assign GPUs (vaesweep's local_parallel can:
    test_local_parallel)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n_gpus)
    cfg = composed("hydra/launcher=joblib", *overrides)
    if not refused:
        refuse_bad_gpu_use(cfg)
        return
    with pytest.raises(SystemExit) as exit_:
        refuse_bad_gpu_use(cfg)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "hydra/launcher=ray" in err and f"first visible GPU of the {n_gpus}" in err
    assert "hydra/launcher=local_parallel" in err


def test_ddp_in_a_ray_job_is_refused_before_any_job(capsys):
    with pytest.raises(SystemExit):
        refuse_bad_gpu_use(composed("hydra/launcher=ray", "trainer.devices=2"))
    assert "DDP inside a Ray job is not supported" in capsys.readouterr().err
    refuse_bad_gpu_use(composed("hydra/launcher=ray", "trainer.devices=1"))
    assert gpus.one_device_problem({"devices": "0,1", "num_nodes": 1}, "ray")
    assert gpus.one_device_problem({"devices": "auto", "num_nodes": 1}, "ray") is None


@pytest.mark.parametrize(
    ("launcher", "fraction", "expected", "not_expected"),
    [
        ("ray", "0.25", ["0.25 of the GPU's memory", "hydra.launcher.gpus_per_job=0.25",
                         "give it a larger share"], ["n_jobs"]),
        ("local_parallel", "0.5", ["0.5 of the GPU's memory", "runs 2 jobs at once on its GPU",
                                   "lower hydra.launcher.n_jobs", "more GPUs in hydra.launcher.gpus"],
         ["gpus_per_job"]),
        ("ray", None, [], ["gpus_per_job", "share"]),  # a whole GPU: no share to blame
        ("ray", "1", [], ["gpus_per_job", "share"]),
        (None, None, [], ["gpus_per_job", "share"]),
    ],
)  # fmt: skip
def test_out_of_memory_names_the_gpu_share_as_its_launcher_gave_it(
    monkeypatch, launcher, fraction, expected, not_expected
):
    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    for name, value in ((gpus.ASSIGNED_ENV, launcher), (gpus.FRACTION_ENV, fraction)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    line = describe(error)
    assert line.startswith("out of memory (OutOfMemoryError: CUDA out of memory")
    assert "lower data.batch_size" in line
    for text in expected:
        assert text in line, line
    for text in not_expected:
        assert text not in line, line


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at alloc_cpu.cpp:114] DefaultCPUAllocator: can't allocate memory"),
        MemoryError(),
    ],
)  # fmt: skip
def test_the_hosts_memory_running_out_is_not_blamed_on_the_gpu_share(monkeypatch, error):
    monkeypatch.setenv(gpus.ASSIGNED_ENV, "ray")
    monkeypatch.setenv(gpus.FRACTION_ENV, "0.25")
    line = describe(error)
    assert line.startswith("out of memory") and "lower data.batch_size" in line
    assert "GPU" not in line and "gpus_per_job" not in line


def test_a_gpu_share_caps_the_memory_of_every_visible_gpu(monkeypatch):
    """A job given a share of a GPU caps its CUDA memory at that share on each device it
    sees; a whole GPU, no share, or no CUDA: no cap (lifted in a worker an earlier job of
    which was capped). CUDA is faked (its calls recorded), so
    the test means the same with or without a GPU."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d))
    )
    monkeypatch.setattr(gpus, "_capped", False)  # a fresh process
    monkeypatch.delenv(gpus.FRACTION_ENV, raising=False)
    assert gpus.cap_memory() is None and calls == []
    monkeypatch.setenv(gpus.FRACTION_ENV, "1")
    assert gpus.cap_memory() is None and calls == []
    monkeypatch.setenv(gpus.FRACTION_ENV, "0.25")
    assert gpus.cap_memory() == 0.25 and calls == [(0.25, 0), (0.25, 1)]
    # The same worker's next job, given a whole GPU (local_parallel reuses its workers):
    # the cap is lifted, once; a job after it changes nothing.
    calls.clear()
    monkeypatch.setenv(gpus.FRACTION_ENV, "1")
    assert gpus.cap_memory() is None and calls == [(1.0, 0), (1.0, 1)]
    calls.clear()
    monkeypatch.delenv(gpus.FRACTION_ENV)
    assert gpus.cap_memory() is None and calls == []
    monkeypatch.setenv(gpus.FRACTION_ENV, "0.25")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpus.cap_memory() is None and calls == []


# -- for real: a local Ray in the CLI's process -----------------------------------------------


def job_results(sweep: Path) -> dict[str, dict]:
    return {
        p.parent.name.split(",")[0]: json.loads(p.read_text()) for p in sweep.glob("*/results.json")
    }


@pytest.mark.slow
def test_ray_sweep_matches_the_basic_launcher_and_a_failure_stays_alone(workdir):
    """The mission sweep's launcher swapped: the same metrics, bit for bit, as the basic
    launcher; a failing job fails alone; W&B runs (offline) and the summary run, the
    summary, sweep.json; each job's output in its own directory; the relaunch skips the
    completed jobs (not a byte changed) and leaves the failed one alone."""
    needs_ray()
    grid = [
        "likelihood=gaussian,laplace",
        "data.batch_size=64,5000",
        *TINY,
        "threads=1",
        "logger=wandb",
    ]
    t0 = time.monotonic()
    proc = run_cli(["-m", *grid, *RAY, "hydra.sweep.dir=ray"], workdir, timeout=600)
    print(f"ray sweep: {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 of 4 jobs did not complete" in proc.stderr
    # No traceback from the workers, W&B's exit hook included (its service was gone first).
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    sweep = workdir / "ray"
    meta = json.loads((sweep / "sweep.json").read_text())
    assert "ray_launcher" in meta["launcher"] and len(meta["jobs"]) == 4
    assert (sweep / "summary.csv").exists() and "completed" in proc.stdout
    done = {
        r["config"]["likelihood"]["name"]: r
        for r in results_under(sweep)
        if r["config"]["data"]["batch_size"] == 64
    }
    failed = [
        r for r in results_under(sweep) if r["config"]["data"]["batch_size"] == 5000
    ]  # > the split
    assert {r["status"] for r in failed} == {"failed"} and len(failed) == 2
    for r in done.values():
        assert r["status"] == "completed"
        assert r["devices"]["accelerator"] == "cpu" and r["devices"]["fraction"] is None
        run_dir = Path(r["run_dir"])
        assert list(run_dir.glob("wandb/offline-run-*"))
        own = (run_dir / "stdout.log").read_text() + (run_dir / "stderr.log").read_text()
        assert "completed in" in own  # its own output, in its own directory
    assert list(sweep.glob("wandb/offline-run-*"))  # the sweep's W&B summary run

    mtimes = {
        p: p.stat().st_mtime_ns
        for p in sweep.rglob("*")
        if p.is_file() and "data.batch_size=64," in str(p)
    }
    again = run_cli(["-m", *grid, *RAY, "hydra.sweep.dir=ray"], workdir, timeout=600)
    assert again.returncode == 1, again.stderr[-3000:]
    # The completed jobs skipped; the refused ones (ConfigError) checked again, refused again.
    assert "already completed" in again.stderr and "2 of 4 jobs did not complete" in again.stderr
    assert "data.batch_size=5000 is invalid" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    basic = run_cli(
        ["-m", *grid[:1], "data.batch_size=64", *grid[2:], "hydra.sweep.dir=basic"], workdir
    )
    assert basic.returncode == 0, basic.stderr[-3000:]
    reference = {r["config"]["likelihood"]["name"]: r for r in results_under(workdir / "basic")}
    assert sorted(reference) == sorted(done) == ["gaussian", "laplace"]
    for name, r in done.items():
        assert r["metrics"] == reference[name]["metrics"], name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run of test_interrupt's JOB (beta=2)."""
    root = tmp_path_factory.mktemp("reference")
    rc, out = run_to_end([*JOB, "hydra.run.dir=reference"], root)
    assert rc == 0, out[-3000:]
    return result(root / "reference")


def held(marker: Path, n: int, proc) -> list[int]:
    """The pids of the n jobs held at the pause point (waits for them)."""
    deadline = time.monotonic() + 400
    while len(pids := marker.read_text().split() if marker.exists() else []) < n:
        assert proc.poll() is None and time.monotonic() < deadline, output(proc)[-3000:]
        time.sleep(0.05)
    return [int(p) for p in pids]


@pytest.mark.slow
def test_ctrl_c_to_the_launching_process_interrupts_ray_jobs_and_the_relaunch_resumes(
    workdir, reference
):
    """Two jobs at once in Ray workers, both held after their first epoch; SIGINT to the
    launching process only (the workers are in their own process groups): the stop file
    reaches them, both record interrupted at the next batch, summary, exit 130; the same
    command resumes both, to the reference's metrics."""
    needs_ray()
    args = ["-m", "beta=2,4", *BUDGET, "logger=none", *RAY, "hydra.sweep.dir=sweep"]
    sweep, marker = workdir / "sweep", workdir / "epoch_end"
    proc = start(args, workdir, env=pause_env("epoch_end", marker))
    held(marker, 2, proc)
    os.kill(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while not list(sweep.glob(".stop-*")):
        assert time.monotonic() < deadline and proc.poll() is None, output(proc)[-3000:]
        time.sleep(0.02)
    marker.with_name(f"{marker.name}.release").touch()
    assert finish(proc) == 130, output(proc)[-3000:]
    first = {k: result(v) for k, v in jobs(sweep).items()}
    assert sorted(first) == ["beta=2", "beta=4"]
    for r in first.values():
        assert r["status"] == "interrupted", r["error"]
        assert "SIGINT" in r["error"]["message"]
    assert summary(sweep) == [("2", "interrupted"), ("4", "interrupted")]
    assert not list(sweep.glob(".stop-*")) and not list(sweep.glob(f"*/{CLAIM_FILE}"))

    rc, out = run_to_end(args, workdir)
    assert rc == 0, out[-3000:]
    final = {k: result(v) for k, v in jobs(sweep).items()}
    assert [final[k]["attempts"] for k in sorted(final)] == [2, 2]
    assert final["beta=2"]["metrics"] == reference["metrics"]


@pytest.mark.slow
def test_ctrl_c_cancels_the_ray_jobs_not_yet_started(workdir):
    """Three jobs, two CPUs: two held after their claim, the third waiting for a CPU. SIGINT
    to the launching process: the third task is cancelled (no worker, no directory, no
    train.log), the two stop and record interrupted, exit 130 at once; the summary says the
    third never started."""
    needs_ray()
    args = [
        "-m", "beta=2,4,8", *TINY, "logger=none", "trainer.accelerator=cpu", *RAY,
        "hydra.launcher.num_cpus=2", "hydra.launcher.cpus_per_job=1", "hydra.sweep.dir=sweep",
    ]  # fmt: skip
    sweep, marker = workdir / "sweep", workdir / "claimed"
    proc = start(args, workdir, env=pause_env("claimed", marker))
    held(marker, 2, proc)
    os.kill(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while "not yet started are cancelled" not in output(proc):
        assert time.monotonic() < deadline and proc.poll() is None, output(proc)[-3000:]
        time.sleep(0.05)
    marker.with_name(f"{marker.name}.release").touch()
    assert finish(proc, timeout=120) == 130, output(proc)[-3000:]
    out = output(proc)
    assert "1 job(s) not yet started are cancelled" in out
    assert "1 of 3 jobs not started" in out, out[-3000:]
    assert len(jobs(sweep)) == 2, sorted(jobs(sweep))  # the cancelled job made nothing
    assert {result(d)["status"] for d in jobs(sweep).values()} == {"interrupted"}
    assert len(marker.read_text().split()) == 2  # the third never claimed its job


@pytest.mark.slow
def test_a_job_larger_than_the_node_is_refused_before_any_job(workdir):
    """cpus_per_job=4 on a 2-CPU Ray: Ray would wait for a 4-CPU node for ever ("No
    available node types can fulfill resource request"); refused (exit 2), naming what is
    allowed."""
    needs_ray()
    args = [
        "-m", "beta=1", *TINY, "logger=none", "trainer.accelerator=cpu", *RAY,
        "hydra.launcher.num_cpus=2", "hydra.launcher.cpus_per_job=4", "hydra.sweep.dir=sweep",
    ]  # fmt: skip
    proc = run_cli(args, workdir, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]  # a refusal, as the sweep's checks
    assert (
        "[vaesweep] sweep refused, no job was run: hydra.launcher.cpus_per_job=4 but the "
        "largest node of this Ray has 2 CPUs" in proc.stderr
    )
    assert "Continue this sweep" not in proc.stderr  # the same command would fail again
    assert "0 < cpus_per_job <= 2" in proc.stderr
    assert not [p for p in (workdir / "sweep").iterdir() if p.is_dir()]


@pytest.mark.slow
def test_a_ray_job_whose_process_dies_is_listed_and_resumed(workdir, reference):
    """SIGKILL to one job's worker process mid-training: not retried (max_retries=0), the
    other job completes, results.json keeps running, the summary lists it killed, exit 1;
    the same command resumes it (claim of a dead process taken over) to the reference's
    metrics."""
    needs_ray()
    args = ["-m", "beta=2,4", *BUDGET, "logger=none", *RAY, "hydra.sweep.dir=sweep"]
    out = kill_a_held_job(args, workdir, reference)
    assert "job #0" in out and "not retried" in out


def kill_a_held_job(args: list[str], workdir: Path, reference: dict) -> str:
    """Runs the sweep ``args`` (beta=2 among its jobs, two at once) until two jobs are held
    after their first epoch, SIGKILLs beta=2's process and releases the other: the sweep
    exits 1, results.json still says running, the summary says killed; the same command
    resumes it to the reference's metrics. Returns the first launch's output."""
    sweep, marker = workdir / "sweep", workdir / "epoch_end"
    proc = start(args, workdir, env=pause_env("epoch_end", marker))
    held(marker, 2, proc)
    victim = jobs(sweep)["beta=2"]
    os.kill(json.loads((victim / CLAIM_FILE).read_text())["pid"], signal.SIGKILL)
    marker.with_name(f"{marker.name}.release").touch()
    assert finish(proc) == 1, output(proc)[-3000:]
    out = output(proc)
    assert result(victim)["status"] == "running"
    statuses = dict(summary(sweep))
    assert statuses.pop("2") == "killed" and set(statuses.values()) == {"completed"}

    rc, again = run_to_end(args, workdir)
    assert rc == 0, again[-3000:]
    assert result(victim)["status"] == "completed" and result(victim)["attempts"] == 2
    assert result(victim)["metrics"] == reference["metrics"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("gpus_per_job", "n_jobs"), [(1, 2), (0.5, 4), (0, 2)])
def test_gpus_declared_to_ray_are_assigned(workdir, gpus_per_job, n_jobs):
    """Ray told of 2 GPUs (none here: the jobs train on CPU but record what Ray assigned):
    one GPU per job gives distinct ids; 0.5 per job runs 4 jobs at once, 2 on each id; 0
    per job (CPU jobs) sees none (Ray 2.60 left CUDA_VISIBLE_DEVICES unset for such a
    task: every GPU visible, an auto trainer on GPU 0)."""
    needs_ray()
    betas = ",".join(str(b) for b in (0.5, 1, 2, 4)[:n_jobs])
    args = [
        "-m", f"beta={betas}", *TINY, "logger=none", "trainer.accelerator=cpu", *RAY,
        "hydra.launcher.num_gpus=2", f"hydra.launcher.gpus_per_job={gpus_per_job}",
        "hydra.sweep.dir=sweep",
    ]  # fmt: skip
    marker = workdir / "claimed"
    proc = start(args, workdir, env=pause_env("claimed", marker))
    held(marker, n_jobs, proc)  # all at once
    marker.with_name(f"{marker.name}.release").touch()
    assert finish(proc) == 0, output(proc)[-3000:]
    devices = [r["devices"] for r in results_under(workdir / "sweep")]
    assert len(devices) == n_jobs
    assigned = {"": n_jobs} if gpus_per_job == 0 else {"0": n_jobs // 2, "1": n_jobs // 2}
    assert Counter(d["cuda_visible_devices"] for d in devices) == assigned
    # The share of a GPU; a whole GPU records None (as under local_parallel).
    assert {d["fraction"] for d in devices} == {gpus_per_job if 0 < gpus_per_job < 1 else None}
    # Every job's lines reach the console: Ray's de-duplication folded the jobs' alike
    # lines (their epochs' metrics) into "[repeated 3x across cluster]".
    out = output(proc)
    assert "across cluster" not in out, out[-3000:]
    assert out.count("completed in") >= n_jobs, out[-3000:]


@pytest.mark.slow
def test_an_optuna_search_batches_its_trials_through_ray(workdir):
    needs_ray()
    proc = run_cli(
        [
            "-m",
            "hydra/sweeper=optuna",
            *TINY,
            "logger=none",
            "threads=1",
            *RAY,
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.params.beta=tag(log, interval(0.1, 10))",
            "hydra.sweep.dir=sweep",
        ],  # fmt: skip
        workdir,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = sorted((workdir / "sweep").glob("trial_*"))
    assert len(trials) == 2
    for t in trials:
        assert json.loads((t / "results.json").read_text())["status"] == "completed"
        assert (t / "stdout.log").exists()  # run by a Ray worker
    assert "ray_launcher" in json.loads((workdir / "sweep" / "sweep.json").read_text())["launcher"]


def gpu_check(workdir: Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    """benchmarks/gpu_check.sh's dry run (GPU_CHECK_DRY_RUN=1) into ``workdir``/check,
    with the extra environment ``env``."""
    env = {**cli_env(), "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_DIR": str(workdir / "check"), **env}
    return subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), sys.executable],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_the_gpu_check_skips_every_step_once_its_budget_is_spent(workdir):
    """GPU_CHECK_BUDGET bounds the whole check (the steps' own limits add up to ~25 min):
    with no budget left, every step says it was skipped, none starts, and the script ends."""
    proc = gpu_check(workdir, timeout=120, GPU_CHECK_BUDGET="1")
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-3000:]
    # step 1, the four Ray sweeps, local_parallel, and the two determinism runs
    assert out.count("(skipped: 0 s left of GPU_CHECK_BUDGET=1 s)") == 1 + 4 + 1 + 2, out
    assert (
        not list((workdir / "check").glob("sweep_k*")) and not (workdir / "check" / "det1").exists()
    )
    assert "two runs: not compared (0 of 2 completed)" in out


@pytest.mark.slow
def test_the_gpu_check_ends_within_its_budget(workdir):
    """A budget that cuts the check short: the script still ends within it (plus the
    reports' few seconds), a step cut by its limit or skipped says so, and step 3 ran
    (a quarter of the budget is kept for it, plus the 20 s a step cut at its
    limit may take to end)."""
    needs_ray()
    budget = 75
    t0 = time.monotonic()
    proc = gpu_check(workdir, timeout=600, GPU_CHECK_BUDGET=str(budget))
    wall = time.monotonic() - t0
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-3000:]
    assert wall < budget + 20, (wall, out)
    assert "(skipped:" in out or "over its" in out, out
    assert (workdir / "check" / "det1.log").exists(), out  # step 3 was started


@pytest.mark.slow
def test_the_gpu_check_script_runs_through_on_the_cpu(workdir):
    """benchmarks/gpu_check.sh has never met a GPU here; its dry run takes every step on
    the CPU (one GPU declared to Ray), so that its shell, its Ray sweeps and the reports it
    reads from results.json are known to work before a GPU's minutes are spent on it."""
    needs_ray()
    env = {**cli_env(), "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_DIR": str(workdir / "check")}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), sys.executable],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-3000:]
    assert "DRY RUN on the CPU" in out and "RATIO" in out  # the throughput table
    for k, share in ((1, None), (2, 0.5), (4, 0.25), (8, 0.125)):
        line = next(x for x in out.splitlines() if x.startswith(f"K={k} jobs/GPU:"))
        assert "2/2 completed" in line and f"share {{{share}}}" in line, line
        assert "CUDA_VISIBLE_DEVICES {'0': 2}" in line, line  # the declared GPU, both jobs
        below = out.splitlines()[out.splitlines().index(line) + 1]
        assert below.startswith("  training only: per job median") and "2 jobs" in below
    line = next(x for x in out.splitlines() if x.startswith("K=2 (local_parallel) jobs/GPU:"))
    assert "2/2 completed" in line and "share {0.5}" in line, line
    assert "CUDA_VISIBLE_DEVICES {'0': 2}" in line, line
    assert "two runs: bit-identical metrics: True" in out
    assert "(exit" not in out and "run 1: exit" not in out and "failed" not in out
    assert (workdir / "check" / "gpu_check.txt").read_text() == out  # the file to commit
    # A directory that holds a check already is refused: its jobs would be counted again.
    again = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), sys.executable],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 2 and "is not empty" in again.stderr
