#!/usr/bin/env bash
# Bit-identity of metrics between two checkouts: the default run, the mission sweep
# (likelihood=gaussian,laplace beta=0.5,1,4), W&B offline, and the other scale modes
# (learned, per_pixel, decoder, optimal; 3 epochs, CSV), on this machine.
#   benchmarks/identity.sh BEFORE_CHECKOUT AFTER_CHECKOUT OUT_DIR
# (e.g. `git worktree add /tmp/before <commit>`). Prints the runs compared and any metric
# that differs; each side imports the package of its own checkout (PYTHONPATH).
set -u
before=$1 after=$2 out=$3
export WANDB_MODE=offline WANDB_SILENT=true
for side in before after; do
  root=${!side}
  dir=$out/$side
  rm -rf "$dir"; mkdir -p "$dir"
  ( cd "$dir" && PYTHONPATH=$root/src python "$root/run.py" trainer.enable_progress_bar=false hydra.run.dir="$dir/default" > "$dir/default.log" 2>&1; echo "$side default rc=$?" )
  ( cd "$dir" && PYTHONPATH=$root/src python "$root/run.py" -m likelihood=gaussian,laplace beta=0.5,1,4 trainer.enable_progress_bar=false hydra.sweep.dir="$dir/mission" > "$dir/mission.log" 2>&1; echo "$side mission rc=$?" )
  ( cd "$dir" && PYTHONPATH=$root/src python "$root/run.py" -m likelihood.scale=learned,per_pixel,decoder,optimal trainer.max_epochs=3 trainer.enable_progress_bar=false logger=csv hydra.sweep.dir="$dir/scales" > "$dir/scales.log" 2>&1; echo "$side scales rc=$?" )
done
OUT=$out python - <<'PY'
import json, os, pathlib
def metrics(side):
    root = pathlib.Path(os.environ["OUT"]) / side
    return {str(p.parent.relative_to(root)): json.loads(p.read_text())["metrics"] for p in sorted(root.rglob("results.json"))}
a, b = metrics("before"), metrics("after")
assert a.keys() == b.keys(), (sorted(a), sorted(b))
n = sum(len(v) for v in a.values())
diff = {k: {m: (a[k][m], b[k].get(m)) for m in a[k] if a[k][m] != b[k].get(m)} for k in a}
diff = {k: v for k, v in diff.items() if v}
print(f"{len(a)} runs compared, {n} metrics; differing: {diff or 'none'}")
PY
