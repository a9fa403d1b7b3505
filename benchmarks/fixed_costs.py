"""The fixed costs a sweep pays besides training, each measured alone in a fresh process.

    python benchmarks/fixed_costs.py                # 3 repetitions each, medians
    python benchmarks/fixed_costs.py --repeats 5

What `benchmarks/sweep_vs_plain.py` cannot take apart, because it times whole processes:

- imports: torch; Lightning (after torch); vaesweep's training stack (what `run.py` loads
  before Hydra starts, then the driver, which the first job imports), with the garbage
  collector running as usual and as `run.py` imports them (paused, then the objects
  frozen: ``vaesweep.core.heap.frozen_imports``); `run.py`'s own imports alone (all that
  the launching process of a sweep whose jobs run in workers loads); W&B (after torch);
- what the imports leave for the collector (objects tracked, full collections during the
  imports, garbage left), and the interpreter's exit after them: from the last statement
  to the process's end, with the collector as usual and with the imports frozen (run.py);
- one Hydra composition of a mission-sweep job's config (``compose("train", ...)`` after a
  first, warm-up composition), which a sweep does three times per job;
- W&B offline: the first ``wandb.init`` of a process (it starts W&B's service), a later one,
  and a later one without W&B's listing of the installed packages (the private
  ``x_save_requirements=False``, measured only to size it);
- the sweep's W&B summary run (``log_sweep_summary``) on a finished 6-job mission sweep (1
  epoch a job), in a fresh process that has first done what a sweep's process has by then
  (the training stack's imports, W&B's import and one W&B run, which starts W&B's service), with and
  without ``logger.sweep_figures``: the difference includes importing what the figures
  need (pandas, matplotlib's drawing).

Each number is the median over the repetitions, each repetition a new interpreter.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import footer, header, median, run_cli, run_python, spread

#: The training stack's imports as (setup, statement): run.py's, then the driver's (the
#: first job's), with the collector as usual, and as run.py does.
ENTRY = {
    False: ("", "import vaesweep.sweep.entry\nimport vaesweep.run.driver"),
    True: (
        "from vaesweep.core import heap",
        "with heap.frozen_imports(): import vaesweep.sweep.entry\n"
        "with heap.frozen_imports(): import vaesweep.run.driver",
    ),
}
IMPORTS = {
    "import torch": ("", "import torch"),
    "import lightning (torch already loaded)": ("import torch", "import lightning"),
    "import entry + driver, collector as usual": ENTRY[False],
    "import entry + driver, collector paused (run.py, first job)": ENTRY[True],
    "import vaesweep.sweep.entry alone, paused (a launching process)": (
        "from vaesweep.core import heap",
        "with heap.frozen_imports(): import vaesweep.sweep.entry",
    ),
    "import wandb (torch already loaded)": ("import torch", "import wandb"),
}

COMPOSE = """
import json, time
from hydra import compose, initialize_config_dir
from vaesweep.run.config import CONF_DIR
jobs = [[f"likelihood={lik}", f"beta={b}"] for lik in ("gaussian", "laplace") for b in (0.5, 1, 4)]
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    compose("train", overrides=jobs[0])
    times = []
    for job in jobs:
        t = time.perf_counter()
        compose("train", overrides=job)
        times.append(time.perf_counter() - t)
print(json.dumps(sorted(times)[len(times) // 2]))
"""

WANDB = """
import json, os, sys, tempfile, time
import torch, wandb
out, d = {}, tempfile.mkdtemp()
def one(settings=None):
    t = time.perf_counter()
    run = wandb.init(project="p", dir=d, group="g", config={"a": 1}, reinit="create_new",
                     settings=settings)
    elapsed = time.perf_counter() - t
    run.finish()
    return elapsed
out["first"] = one()
out["later"] = sorted(one() for _ in range(5))[2]
out["later, x_save_requirements=False"] = sorted(
    one(wandb.Settings(x_save_requirements=False)) for _ in range(5))[2]
print(json.dumps(out))
"""

SUMMARY = """
import json, sys, time
from pathlib import Path
from omegaconf import OmegaConf
import tempfile
import vaesweep.sweep.entry, vaesweep.run.driver, wandb  # loaded by then (basic launcher)
from vaesweep.analysis.wandb_summary import log_sweep_summary
wandb.init(project="p", dir=tempfile.mkdtemp(), reinit="create_new").finish()  # as the jobs'
t = time.perf_counter()
logger = {"name": "wandb", "mode": "offline", "project": "vaesweep", "entity": None,
          "tags": [], "sweep_figures": sys.argv[2] == "true"}
log_sweep_summary(OmegaConf.create({"logger": logger}), Path(sys.argv[1]))
print(json.dumps(time.perf_counter() - t))
"""


def _python(code: str, *args: str, cwd: str) -> str:
    """The last line `python -c CODE ARGS` prints."""
    return run_python(["-c", code, *args], cwd)[1].stdout.strip().splitlines()[-1]


def _timed_import(setup: str, statement: str, cwd: str) -> float:
    code = f"{setup}\nimport time\nt = time.perf_counter()\n{statement}\n"
    return float(_python(code + "print(time.perf_counter() - t)", cwd=cwd))


def _exit_time(frozen: bool, cwd: str) -> float:
    """Seconds from the last statement of a process that imported run.py's stack to the
    process's end (wall clock on both sides)."""
    setup, statement = ENTRY[frozen]
    code = f"{setup}\n{statement}\nimport time\nprint(time.time())"
    last_statement = float(_python(code, cwd=cwd))
    return time.time() - last_statement


#: What the training stack's imports leave for the collector; with the argument "paused", as run.py
#: imports (the collector off, so the objects it would have untracked or freed are counted).
HEAP = """
import gc, json, sys
full = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2
                    and full.append(1))
if sys.argv[1] == "paused":
    gc.disable()
import vaesweep.sweep.entry, vaesweep.run.driver
print(json.dumps({"objects": len(gc.get_objects()), "full collections": len(full),
                  "garbage left": gc.collect()}))
"""


def _row(name: str, values: list[float]) -> None:
    print(f"{name:<62} {median(values):7.3f} s  ({spread(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    header("fixed costs of a sweep, each alone in a fresh process")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (setup, statement) in IMPORTS.items():
            _row(name, [_timed_import(setup, statement, tmp) for _ in range(args.repeats)])
        heap = json.loads(_python(HEAP, "usual", cwd=tmp))
        print(
            f"the training stack's imports, collector as usual: {heap['objects']} objects "
            f"tracked after them, {heap['full collections']} full collections during them, "
            f"{heap['garbage left']} garbage objects left by them"
        )
        paused = json.loads(_python(HEAP, "paused", cwd=tmp))
        print(
            f"the training stack's imports, collector paused: {paused['objects']} objects "
            f"tracked after them (frozen by run.py), {paused['garbage left']} of them garbage"
        )
        for frozen, how in ((False, "as Python leaves it"), (True, "imports frozen (run.py)")):
            _row(
                f"exit after the training stack's imports, {how}",
                [_exit_time(frozen, tmp) for _ in range(args.repeats)],
            )
        compose = [float(_python(COMPOSE, cwd=tmp)) for _ in range(args.repeats)]
        _row("one Hydra composition of a mission-sweep job (median of 6)", compose)
        wandb_runs = [json.loads(_python(WANDB, cwd=tmp)) for _ in range(args.repeats)]
        for key in wandb_runs[0]:
            _row(f"wandb.init, offline: {key}", [r[key] for r in wandb_runs])
        sweep = Path(tmp) / "sweep"
        run_cli(
            ["-m", "likelihood=gaussian,laplace", "beta=0.5,1,4", "trainer.max_epochs=1",
             "logger.sweep_summary=false", f"hydra.sweep.dir={sweep}"],
            Path(tmp),
        )  # fmt: skip
        for figures in ("false", "true"):
            times = []
            for _ in range(args.repeats):
                shutil.rmtree(sweep / "wandb", ignore_errors=True)  # a new summary run each time
                times.append(float(_python(SUMMARY, str(sweep), figures, cwd=tmp)))
            _row(f"W&B summary run of the 6-job sweep, sweep_figures={figures}", times)
    footer()


if __name__ == "__main__":
    main()
