#!/usr/bin/env bash
# One GPU check (docs/benchmarks.md, "GPU check"): on a machine with one CUDA GPU, in < 8 min:
#   1. one job on CUDA against a plain PyTorch loop (benchmarks/train_throughput.py, short);
#   2. the mission sweep (likelihood=gaussian,laplace beta=0.5,1,4; two seeds: 12 jobs) under
#      hydra/launcher=ray at 1, 2, 4 and 8 jobs per GPU: wall time, aggregate samples/s (over
#      the wall time, and over the jobs' training phases alone), and the GPU ids / shares the
#      jobs recorded in results.json;
#   2b. the same sweep under hydra/launcher=local_parallel (no Ray), 2 jobs on the GPU;
#   3. determinism on CUDA: the same job twice with trainer=gpu (deterministic: true), metrics
#      compared bit for bit, and the CUDA settings it needed (CUBLAS_WORKSPACE_CONFIG).
# Needs ray (pip install "vaesweep[ray]"). Usage: bash benchmarks/gpu_check.sh [python]
# Everything it prints is also written to $OUT/gpu_check.txt: commit that file as
# benchmarks/results/gpu_check.txt. Each step has a time limit; a failed step is reported and
# the next one runs. GPU_CHECK_BUDGET (default 450 s) bounds the whole check: each step's limit
# is cut to what the budget leaves (a quarter of it plus 20 s kept for step 3, determinism),
# and a step with under 10 s left is skipped and says so. GPU_CHECK_DIR (default: a new
# /tmp/gpu_check.XXXXXX) must be new or empty: completed jobs found there would be skipped and
# counted again.
# GPU_CHECK_DRY_RUN=1: the same steps and reports on the CPU, small (one GPU declared to Ray,
# 2 jobs, 1 epoch): a check of the script itself, for a machine without a GPU (a slow test).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
export WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
OUT=${GPU_CHECK_DIR:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
if [ -n "$(ls -A "$OUT")" ]; then
  echo "GPU_CHECK_DIR=$OUT is not empty: its completed jobs would be skipped and counted again" >&2
  exit 2
fi
exec > >(tee "$OUT/gpu_check.txt") 2>&1
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-450}
GRACE=20  # a step cut at its limit gets SIGTERM, then SIGKILL this many seconds later
# Kept for step 3 while steps 1-2b run: a quarter of the budget, plus the grace a step cut at
# its limit may take to end (a Ray sweep records its jobs interrupted and shuts Ray down).
KEEP3=$(( BUDGET / 4 + GRACE ))
limit() {  # limit OWN [KEEP]: OWN seconds, or what the budget leaves after KEEP, if less
  local left=$(( BUDGET - ($(date +%s) - START) - ${2:-0} ))
  if (( left < $1 )); then echo "$left"; else echo "$1"; fi
}
skipped() {  # skipped LEFT
  local left=$1
  if (( left < 0 )); then left=0; fi
  echo "  (skipped: $left s left of GPU_CHECK_BUDGET=$BUDGET s)"
}
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
"$PY" - <<'EOF' || echo "  (exit $?)"
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
# The plain loop and the Lightning floor run in the product's process after its Trainer, so
# under its deterministic algorithms (trainer.deterministic: true) too.
L=$(limit 150 "$KEEP3")
if (( L < 10 )); then skipped "$L"; else
{ timeout -k "$GRACE" "$L" "$PY" benchmarks/train_throughput.py --device "$DEVICE" --models mlp conv \
    --batches 128 --likelihoods gaussian --epochs "$EPOCHS" --warmup 1 2>&1 \
    || echo "  (exit $?: step 1 failed; 124: over its $L s)"; } | tail -n 25
fi

say "2. the mission sweep under the Ray launcher, K jobs per GPU"
GRID=("${JOBS[@]}" "${TRAINER[@]}" ${DECLARE[@]+"${DECLARE[@]}"} trainer.max_epochs="$EPOCHS"
      trainer.enable_progress_bar=false logger=csv eval.iwae_k=100)
report() {  # report DIR LABEL T0 T1 STAMPS: what the sweep's jobs recorded
  "$PY" - "$@" <<'EOF' || echo "  (report failed: exit $?)"
import json, statistics, sys
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
sweep, k, t0, t1 = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
stamps = Path(sys.argv[5])
results = []
for p in sorted(sweep.glob("*/results.json")):
    try:
        results.append(json.loads(p.read_text()))
    except ValueError as e:
        print(f"  {p}: unreadable ({e})")
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
# Training alone (each job's first epoch start to its last epoch end, VAESWEEP_TIMESTAMPS):
# what the jobs got from the GPU while they trained, without imports, test and files.
events = defaultdict(list)
if stamps.exists():
    for line in stamps.read_text().splitlines():
        e = json.loads(line)
        if e["event"] in ("epoch_start", "epoch_end"):
            events[e["job"]].append(e)
by_name = {r.get("job_name"): r for r in done}
rates, phases, trained = [], [], 0
for job, evs in events.items():
    starts = [e["time"] for e in evs if e["event"] == "epoch_start"]
    ends = [e["time"] for e in evs if e["event"] == "epoch_end"]
    r = by_name.get(job)
    if not starts or not ends or r is None or max(ends) <= min(starts):
        continue
    n = r["dataset"]["sizes"]["train"] * r["config"]["trainer"]["max_epochs"]
    rates.append(n / (max(ends) - min(starts)))
    phases.append((min(starts), max(ends)))
    trained += n
if rates:
    busy = max(e for _, e in phases) - min(s for s, _ in phases)
    print(f"  training only: per job median {statistics.median(rates):,.0f} samples/s "
          f"(range {min(rates):,.0f}-{max(rates):,.0f}, {len(rates)} jobs); all jobs' training "
          f"samples over the span of their training phases ({busy:.1f} s): {trained / busy:,.0f}/s")
else:
    print("  training only: no epoch timestamps")
EOF
}
for K in 1 2 4 8; do
  FRACTION=$("$PY" -c "print(1 / $K)")
  DIR="$OUT/sweep_k$K"
  L=$(limit 240 "$KEEP3")
  if (( L < 10 )); then echo "K=$K jobs/GPU:"; skipped "$L"; continue; fi
  T0=$(date +%s.%N)
  VAESWEEP_TIMESTAMPS="$OUT/stamps_k$K.jsonl" timeout -k "$GRACE" "$L" "$PY" run.py -m "${GRID[@]}" \
      hydra/launcher=ray "hydra.launcher.gpus_per_job=$FRACTION" "hydra.sweep.dir=$DIR" \
      > "$OUT/sweep_k$K.log" 2>&1 || echo "  (exit $?: see $OUT/sweep_k$K.log; 124: over its $L s)"
  report "$DIR" "$K" "$T0" "$(date +%s.%N)" "$OUT/stamps_k$K.jsonl"
done

say "2b. the same sweep under local_parallel (no Ray), 2 jobs per GPU"
LOCAL=("${JOBS[@]}" "${TRAINER[@]}" trainer.max_epochs="$EPOCHS" trainer.enable_progress_bar=false
       logger=csv eval.iwae_k=100 hydra/launcher=local_parallel hydra.launcher.n_jobs=2)
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then LOCAL+=("hydra.launcher.gpus=[0]"); fi
L=$(limit 180 "$KEEP3")
if (( L < 10 )); then skipped "$L"; else
T0=$(date +%s.%N)
VAESWEEP_TIMESTAMPS="$OUT/stamps_local_k2.jsonl" timeout -k "$GRACE" "$L" "$PY" run.py -m "${LOCAL[@]}" \
    "hydra.sweep.dir=$OUT/local_k2" > "$OUT/local_k2.log" 2>&1 \
    || echo "  (exit $?: see $OUT/local_k2.log; 124: over its $L s)"
report "$OUT/local_k2" "2 (local_parallel)" "$T0" "$(date +%s.%N)" "$OUT/stamps_local_k2.jsonl"
fi

say "3. determinism on $DEVICE (${TRAINER[*]}: deterministic: true)"
# trainer.deterministic: true is PyTorch's strict mode (Lightning turns it on, and sets
# CUBLAS_WORKSPACE_CONFIG=:4096:8 whatever the shell had): an operation without a
# deterministic CUDA kernel fails the job, and its error names the operation.
echo "CUBLAS_WORKSPACE_CONFIG in this shell: ${CUBLAS_WORKSPACE_CONFIG:-<unset>} (a deterministic job runs with :4096:8, set by Lightning)"
JOB=("${TRAINER[@]}" trainer.max_epochs=2 trainer.enable_progress_bar=false logger=csv
     likelihood=laplace)
for i in 1 2; do
  KEEP=0
  # Half of what is left kept for run 2, plus the grace run 1 may take to end if cut.
  if (( i == 1 )); then KEEP=$(( (BUDGET - ($(date +%s) - START)) / 2 + GRACE )); fi
  L=$(limit 120 "$KEEP")
  if (( i == 1 && L < 10 )); then L=$(limit 120); fi  # too little for two runs: run 1 alone
  if (( L < 10 )); then echo "  run $i:"; skipped "$L"; continue; fi
  timeout -k "$GRACE" "$L" "$PY" run.py "${JOB[@]}" "hydra.run.dir=$OUT/det$i" > "$OUT/det$i.log" 2>&1 \
      || echo "  run $i: exit $? (124: over its $L s)"
done
"$PY" - "$OUT" <<'EOF' || echo "  (determinism report failed: exit $?)"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = []
for i in (1, 2):
    path = out / f"det{i}" / "results.json"
    try:
        runs.append(json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        print(f"  run {i}: no readable results.json ({e}); see {out}/det{i}.log")
done = [r for r in runs if r.get("status") == "completed" and r.get("metrics")]
for r in runs:
    if r not in done:
        print(f"  {r.get('run_dir')}: {r.get('status')}, {r.get('error')}")
if len(done) == 2:
    a, b = done
    same = a["metrics"] == b["metrics"]
    print(f"two runs: bit-identical metrics: {same}; devices: {a.get('devices')}")
    if not same:
        diff = {k: (a["metrics"][k], b["metrics"].get(k)) for k in a["metrics"] if a["metrics"][k] != b["metrics"].get(k)}
        print(f"  differing: {dict(list(diff.items())[:8])}")
else:
    print(f"two runs: not compared ({len(done)} of 2 completed)")
for i in (1, 2):
    log = out / f"det{i}" / "train.log"
    text = log.read_text() if log.exists() else ""
    for word in ("CUBLAS_WORKSPACE_CONFIG", "nondeterministic", "does not have a deterministic"):
        if word in text:
            print(f"  run {i}: train.log mentions {word!r}: see {log}")
EOF

say "done in $(( $(date +%s) - START )) s; files in $OUT (this report: $OUT/gpu_check.txt)"
