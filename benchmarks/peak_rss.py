"""Peak resident memory (max RSS) of a default `python run.py`.

    python benchmarks/peak_rss.py
    python benchmarks/peak_rss.py --device cuda

Product: the default run (mnist_small, mlp, Gaussian, 20 epochs, test with K = 100, image
grids, W&B offline + CSV) in a subprocess. Its max RSS is the kernel's ru_maxrss of the
python process (os.wait4); the whole process tree (python plus W&B's service process) is
also sampled from /proc every 50 ms, and the peak of its summed RSS is reported.

References in the same run, interleaved: the plain PyTorch script of cold_start.py (the
same MLP VAE, one Adam step on mnist_small) and `python -c "import torch, lightning, hydra,
wandb, pandas"`, measured the same way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cold_start import IMPORTS, PLAIN_SCRIPT
from common import REPO, RUN_PY, cli_env, footer, header, median, spread

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def tree_rss_kb(root: int) -> int:
    """Summed RSS (KiB) of process `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            statm = (entry / "statm").read_text()
        except OSError:  # the process ended meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
        rss[int(entry.name)] = int(statm.split()[1]) * PAGE_KB
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def max_rss(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Runs cmd; returns (max RSS of the process, peak summed RSS of its tree), MiB."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    peak_tree = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not done.is_set():
            peak_tree = max(peak_tree, tree_rss_kb(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return usage.ru_maxrss / 1024, peak_tree / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    header("peak resident memory of a default run", args.device)
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    rows: dict[str, list[tuple[float, float]]] = {"run": [], "plain": [], "imports": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            run = [f"hydra.run.dir={Path(tmp) / f'run{i}'}", f"trainer.accelerator={accelerator}"]
            rows["run"].append(max_rss([sys.executable, str(RUN_PY), *run], Path(tmp), cli_env()))
            plain = [sys.executable, "-c", PLAIN_SCRIPT, args.device]
            rows["plain"].append(max_rss(plain, REPO))
            rows["imports"].append(max_rss([sys.executable, "-c", IMPORTS], REPO))
    labels = {
        "run": "python run.py (default run)",
        "plain": "plain PyTorch script (one step)",
        "imports": f"python -c '{IMPORTS}'",
    }
    print(f"{args.repeats} repetitions, medians (min..max), MiB")
    print(f"{'':<58} {'max RSS':>17} {'process tree peak':>21}")
    for key, label in labels.items():
        own = [r[0] for r in rows[key]]
        tree = [r[1] for r in rows[key]]
        print(
            f"{label:<58} {median(own):6.0f} ({spread(own):>9}) {median(tree):6.0f} ({spread(tree):>11})"
        )
    run_rss = median([r[0] for r in rows["run"]])
    ratio = run_rss / median([r[0] for r in rows["plain"]])
    print(f"ratio default run / plain script (max RSS): {ratio:.2f}")
    print(f"target: max RSS ≤ 1.5 GB (1536 MiB) -> {'met' if run_rss <= 1536 else 'NOT met'}")
    footer()


if __name__ == "__main__":
    main()
