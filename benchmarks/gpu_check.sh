#!/usr/bin/env bash
# One GPU check (docs/benchmarks.md, "GPU check"): on a machine with one CUDA GPU, in < 8 min:
#   1. one job on CUDA against a plain PyTorch loop (benchmarks/train_throughput.py, short);
#   2. the mission sweep (likelihood=gaussian,laplace beta=0.5,1,4; two seeds: 12 jobs) under
#      hydra/launcher=ray at 1, 2, 4 and 8 jobs per GPU: wall time, aggregate samples/s, and
#      the GPU ids / shares the jobs recorded in results.json;
#   2b. the same sweep under hydra/launcher=local_parallel (no Ray), 2 jobs on the GPU;
#   3. determinism on CUDA: the same job twice with trainer=gpu (deterministic: true), metrics
#      compared bit for bit, and the CUDA settings it needed (CUBLAS_WORKSPACE_CONFIG).
# Needs ray (pip install "vaesweep[ray]"). Usage: bash benchmarks/gpu_check.sh [python]
# GPU_CHECK_DRY_RUN=1: the same steps and reports on the CPU, small (one GPU declared to Ray,
# 2 jobs, 1 epoch): a check of the script itself, for a machine without a GPU (a slow test).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
export WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
OUT=${GPU_CHECK_DIR:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
START=$(date +%s)
say() { printf '\n== %s (t=%ds)\n' "$1" $(( $(date +%s) - START )); }
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
  echo "DRY RUN on the CPU (GPU_CHECK_DRY_RUN=1): no figure below is a GPU's"
  DEVICE=cpu EPOCHS=1 TRAINER=(trainer.accelerator=cpu) DECLARE=(hydra.launcher.num_gpus=1)
  JOBS=(likelihood=gaussian,laplace data=digits)
else
  DEVICE=cuda EPOCHS=3 TRAINER=(trainer=gpu) DECLARE=()
  JOBS=(likelihood=gaussian,laplace beta=0.5,1,4 seed=0,1)
fi

say "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}, "
      f"devices: {torch.cuda.device_count()}")
try:
    import ray
    print(f"ray {ray.__version__}")
except ImportError:
    print("ray: NOT INSTALLED (pip install 'vaesweep[ray]'): step 2 will fail")
EOF

say "1. one job on $DEVICE vs a plain PyTorch loop (samples/s, ratio)"
"$PY" benchmarks/train_throughput.py --device "$DEVICE" --models mlp conv --batches 128 \
    --likelihoods gaussian --epochs "$EPOCHS" --warmup 1 2>&1 | tail -n 25

say "2. the mission sweep under the Ray launcher, K jobs per GPU"
GRID=("${JOBS[@]}" "${TRAINER[@]}" ${DECLARE[@]+"${DECLARE[@]}"} trainer.max_epochs="$EPOCHS"
      trainer.enable_progress_bar=false logger=csv eval.iwae_k=100)
report() {  # report DIR LABEL T0 T1: what the sweep's jobs recorded
  "$PY" - "$@" <<'EOF'
import json, sys
from collections import Counter
from datetime import datetime
from pathlib import Path
sweep, k, t0, t1 = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
done = [r for r in results if r["status"] == "completed"]
samples = sum(r["dataset"]["sizes"]["train"] * r["config"]["trainer"]["max_epochs"] for r in done)
train_s = sum(r["duration_s"] for r in done)
ids = Counter((r.get("devices") or {}).get("cuda_visible_devices") for r in results)
share = {(r.get("devices") or {}).get("fraction") for r in results}
name = {tuple((r.get("devices") or {}).get("names") or ()) for r in results}
wall = t1 - t0
at = lambda key: [datetime.fromisoformat(r[key]).timestamp() for r in done]
span = max(at("finished_at")) - min(at("started_at")) if done else 0.0
print(f"K={k} jobs/GPU: {len(done)}/{len(results)} completed, wall {wall:.1f} s, "
      f"aggregate {samples / wall:,.0f} training samples/s over the wall time "
      f"({samples / max(span, 1):,.0f}/s over the jobs' span of {span:.0f} s, Ray's start "
      f"excluded, ±1 s), job time summed {train_s:.1f} s, CUDA_VISIBLE_DEVICES {dict(ids)}, "
      f"share {share}, device {name}")
EOF
}
for K in 1 2 4 8; do
  FRACTION=$("$PY" -c "print(1 / $K)")
  DIR="$OUT/sweep_k$K"
  T0=$(date +%s.%N)
  "$PY" run.py -m "${GRID[@]}" hydra/launcher=ray "hydra.launcher.gpus_per_job=$FRACTION" \
      "hydra.sweep.dir=$DIR" > "$OUT/sweep_k$K.log" 2>&1 || echo "  (exit $?: see $OUT/sweep_k$K.log)"
  report "$DIR" "$K" "$T0" "$(date +%s.%N)"
done

say "2b. the same sweep under local_parallel (no Ray), 2 jobs per GPU"
LOCAL=("${JOBS[@]}" "${TRAINER[@]}" trainer.max_epochs="$EPOCHS" trainer.enable_progress_bar=false
       logger=csv eval.iwae_k=100 hydra/launcher=local_parallel hydra.launcher.n_jobs=2)
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then LOCAL+=("hydra.launcher.gpus=[0]"); fi
T0=$(date +%s.%N)
"$PY" run.py -m "${LOCAL[@]}" "hydra.sweep.dir=$OUT/local_k2" > "$OUT/local_k2.log" 2>&1 \
    || echo "  (exit $?: see $OUT/local_k2.log)"
report "$OUT/local_k2" "2 (local_parallel)" "$T0" "$(date +%s.%N)"

say "3. determinism on $DEVICE (${TRAINER[*]}: deterministic: true)"
echo "CUBLAS_WORKSPACE_CONFIG in this shell: ${CUBLAS_WORKSPACE_CONFIG:-<unset>} (Lightning sets :4096:8 when deterministic)"
JOB=("${TRAINER[@]}" trainer.max_epochs=2 trainer.enable_progress_bar=false logger=csv
     likelihood=laplace)
for i in 1 2; do
  "$PY" run.py "${JOB[@]}" "hydra.run.dir=$OUT/det$i" > "$OUT/det$i.log" 2>&1 || echo "  run $i: exit $?"
done
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
a, b = (json.loads((out / f"det{i}" / "results.json").read_text()) for i in (1, 2))
same = a["metrics"] == b["metrics"]
print(f"two runs: bit-identical metrics: {same}; devices: {a.get('devices')}")
if not same:
    diff = {k: (a["metrics"][k], b["metrics"].get(k)) for k in a["metrics"] if a["metrics"][k] != b["metrics"].get(k)}
    print(f"  differing: {dict(list(diff.items())[:8])}")
logs = " ".join((out / f"det{i}" / "train.log").read_text() for i in (1, 2))
for word in ("CUBLAS_WORKSPACE_CONFIG", "deterministic", "nondeterministic"):
    if word in logs:
        print(f"  train.log mentions {word!r}: see {out}/det1/train.log")
EOF

say "done in $(( $(date +%s) - START )) s; files in $OUT"
