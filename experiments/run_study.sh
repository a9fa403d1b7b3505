#!/usr/bin/env bash
# Run a study and publish what the product wrote under docs/results/<name>/:
#   experiments/run_study.sh NAME SWEEP_ARGS...          (one sweep)
# e.g. experiments/run_study.sh likelihood_comparison experiment=likelihood_comparison seed=0
# Several sweeps of one study (bernoulli_vs_continuous): STUDY_PART=<part> names each one's
# directory; the figures and the table are drawn from every part at the end of each call.
#
# docs/results/<name>/ then holds, all written by vaesweep itself:
#   <part>/sweep.json, <part>/summary.csv    the sweep record (command, launch and finish
#                                             times, every job's status) and its table
#   runs.csv                                  every run's config and metrics (vaesweep collect)
#   figures/                                  vaesweep figures (PNG + PDF, results_table.md)
#   provenance.txt                            commit, command, start/end, wall time, machine
# with the machine's absolute paths in runs.csv and sweep.json made relative
# (experiments/relative_paths.py: run_dir to its sweep_dir, the others to this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1
shift
part=${STUDY_PART:-sweep}
work=outputs/studies/$name
out=docs/results/$name
mkdir -p "$work" "$out/$part"

start=$(date -u +%s)
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
status=0
python run.py -m "$@" logger=csv trainer.enable_progress_bar=false \
    "hydra.sweep.dir=$work/$part" || status=$?
end=$(date -u +%s)

cp "$work/$part/sweep.json" "$work/$part/summary.csv" "$out/$part/"
vaesweep collect "$work" -o "$out/runs.csv"
python experiments/relative_paths.py "$out" --root "$(pwd -P)"
vaesweep figures "$work" --out "$out/figures"
{
  echo "study: $name ($part)"
  echo "command: python run.py -m $* logger=csv trainer.enable_progress_bar=false hydra.sweep.dir=$work/$part"
  echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- src conf || echo ' (with uncommitted changes)')"
  echo "started: $started_at"
  echo "wall time: $((end - start)) s (sweep exit status $status)"
  echo "machine: $(nproc) CPU cores, $(uname -m), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) memory"
} > "$out/$part/provenance.txt"
cat "$out/$part/provenance.txt"
exit "$status"
