"""The garbage collector around the command line (``vaesweep.core.heap``): what exists after
the imports is frozen and no later collection walks it, garbage made afterwards is still
collected, the collector's state comes back even when an import fails, ``run.py``'s
process runs with its imports frozen and its collector on, and a process started by the
command line freezes the driver's imports at its first job, once."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref

import pytest

from vaesweep.core import heap
from vaesweep.run.driver import task as driver_task
from vaesweep.sweep.task import load_driver

from conftest import RUN_PY, cli_env


class Cycle:
    """An object in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _collector_as_it_was(monkeypatch):
    if gc.get_freeze_count():
        pytest.skip("something in this process froze objects already")
    monkeypatch.delenv(heap.SWEEP_PID_ENV, raising=False)
    enabled = gc.isenabled()
    yield
    gc.unfreeze()  # what the test froze goes back to the oldest generation
    if enabled:
        gc.enable()
    else:
        gc.disable()


def _garbage_cycle() -> weakref.ref:
    return weakref.ref(Cycle())


def test_what_exists_after_the_block_is_frozen_and_left_out_of_collections():
    with heap.frozen_imports():
        assert not gc.isenabled()
        ref = _garbage_cycle()
    assert gc.get_freeze_count() > 0
    gc.collect()
    assert ref() is not None  # frozen: no collection walks it


def test_garbage_made_afterwards_is_still_collected():
    with heap.frozen_imports():
        pass
    frozen = gc.get_freeze_count()
    assert gc.isenabled()
    ref = _garbage_cycle()
    gc.collect()
    assert ref() is None
    assert gc.get_freeze_count() == frozen


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_comes_back_as_it_was_also_when_an_import_fails(enabled):
    if not enabled:
        gc.disable()
    with pytest.raises(ImportError), heap.frozen_imports():
        import vaesweep_no_such_module  # noqa: F401
    assert gc.isenabled() is enabled


@pytest.mark.slow
def test_a_launched_process_imports_the_driver_frozen_and_once(tmp_path):
    """A process the command line started (a launcher's worker; the command line's own
    process alike: both carry the mark) imports the driver, Lightning included, with the
    collector paused and then frozen; a second job imports and freezes nothing more, and
    garbage made after it is collected. In a fresh interpreter, so that the import is real."""
    code = (
        "import gc, json, sys, weakref\n"
        "from vaesweep.sweep.task import load_driver\n"
        "before = ('lightning' in sys.modules, gc.get_freeze_count())\n"
        "class Cycle:\n"
        "    def __init__(self): self.me = self\n"
        "alive = Cycle()\n"
        "task = load_driver()\n"
        "first = gc.get_freeze_count()\n"
        "listed = any(o is alive for o in gc.get_objects())\n"
        "again = load_driver() is task and gc.get_freeze_count() == first\n"
        "ref = weakref.ref(Cycle()); gc.collect()\n"
        "print(json.dumps([*before, 'lightning' in sys.modules, first, listed, again,\n"
        "                  ref() is None, gc.isenabled()]))\n"
    )
    env = {**cli_env(), heap.SWEEP_PID_ENV: "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    had, frozen_before, has, first, listed, again, collected, enabled = json.loads(
        proc.stdout.strip().splitlines()[-1]
    )
    assert not had and frozen_before == 0 and has  # the import happened here
    assert first > 100_000 and not listed  # Lightning's objects and what was alive: frozen
    assert again and collected and enabled


def test_a_python_session_that_runs_the_task_freezes_nothing():
    load_driver.cache_clear()
    assert load_driver() is driver_task
    assert gc.get_freeze_count() == 0


def test_run_py_runs_with_its_imports_frozen_and_its_collector_on(tmp_path):
    # An atexit handler registered first runs last: after run.py's own exit work.
    code = (
        "import atexit, gc, os, runpy, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count(), gc.isenabled(),\n"
        "                              os.environ['VAESWEEP_SWEEP_PID'] == str(os.getpid())))\n"
        f"sys.argv = [{str(RUN_PY)!r}, '--help']\n"
        f"runpy.run_path({str(RUN_PY)!r}, run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "likelihood" in proc.stdout  # the help, as before
    _, count, enabled, marked = proc.stdout.strip().splitlines()[-1].split()
    assert int(count) > 100_000  # torch, Hydra: out of every later collection
    assert enabled == "True"
    assert marked == "True"  # its workers will know they are workers
