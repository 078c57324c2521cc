#!/bin/bash
# Train one stage (ASSN or PRSN) of several experiment configs on a lent GPU from a packed bank: for each config
# the requested folds, all as parallel processes sharing the GPU (one CPU thread each), with a deadline. Only that
# stage is trained (--stages STAGE); the other stages are reused later, where the images are, from the run the
# config derives from (docs/results.md):
#   python -m training cv --data $DATA --config CFG --run-name cv5_CFG --stages STAGE \
#       --reuse-from runs/gpu_long_assn --folds 0 1 2 3 4 --resume
# after the stage folders that come back are unpacked into runs/cv5_CFG/.
#
# What comes back in $OUT (at most 8 files, 16 MiB each): session.tar.gz.partNN holding machine.txt, the
# training logs, the optional network benchmark, and each run's config, split and stages: finished ones as
# final.json + final.safetensors (float16 for the trip; the loader casts back to float32), unfinished ones
# (stopped at the deadline) as their last checkpoint with its random state, so `--resume` continues them here.
#
# Inputs:
#   PACK      python -m training pack ... (default .devdata/train25.safetensors.gz)
#   STAGE     assn | prsn (default prsn)
#   CONFIGS   space-separated config names
#   FOLDS     space-separated folds (default "0 1 2 3 4 full")
#   REUSE     space-separated CFG=DIR pairs: a run folder (config.json, split.json, fold_K/STAGE) whose completed
#             stages a config needs to train (the DAE of an ASSN with the shape prior)
#   BENCH     1: first time the shipped model's network passes (bench_networks.py) on CUDA and on the CPU
#   DEADLINE_S seconds after the start at which unfinished training is stopped (default 400)
# Usage: STAGE=assn CONFIGS="exp_a exp_b" FOLDS="0 1 2 3 4" DEADLINE_S=420 OUT=$OUT bash benchmarks/gpu_train_stage.sh
# QUICK=1 runs 4 steps per stage, to try the script on a CPU machine (DEVICE is then whatever torch finds).
set -u
PACK=${PACK:-.devdata/train25.safetensors.gz}
STAGE=${STAGE:-prsn}
CONFIGS=${CONFIGS:-exp_prsn_wide exp_prsn_wide_seed2}
FOLDS=${FOLDS:-0 1 2 3 4 full}
REUSE=${REUSE:-}
OUT=${OUT:-out/gpu_train_$STAGE}
DEADLINE_S=${DEADLINE_S:-400}
RUNS=${RUNS:-/tmp/myops_gpu_runs}
W=${WORK:-/tmp/myops_gpu_train}
case "$STAGE" in assn | prsn) ;; *) echo "STAGE must be assn or prsn, got $STAGE" >&2; exit 2 ;; esac
QUICK_SET=()
[ "${QUICK:-0}" = 1 ] && QUICK_SET=(--set "$STAGE.steps=4" --set runtime.checkpoint_every=2)
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
rm -rf "$W" "$RUNS"
mkdir -p "$W/logs" "$OUT"
source "$(dirname "$0")/gpu_env.sh"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  echo "cpus $(nproc)"
} >"$W/machine.txt" 2>&1
cat "$W/machine.txt"

if [ "${BENCH:-0}" = 1 ]; then
  echo "== [$(elapsed) s] network passes of the shipped model"
  dev=cuda
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || dev=cpu
  timeout 75 $PY benchmarks/bench_networks.py --device "$dev" --repeats 50 --json "$W/bench_networks_$dev.json" 2>&1 | tail -n 12
  timeout 75 $PY benchmarks/bench_networks.py --device cpu --repeats 5 --json "$W/bench_networks_cpu.json" 2>&1 | tail -n 12
fi

reuse_of() {  # reuse_of CFG: the --reuse-from arguments REUSE names for CFG
  local pair
  for pair in $REUSE; do
    [ "${pair%%=*}" = "$1" ] && echo "--reuse-from ${pair#*=}"
  done
}

echo "== [$(elapsed) s] training the $STAGE of: $CONFIGS (folds $FOLDS)"
pids=()
for cfg in $CONFIGS; do
  for fold in $FOLDS; do
    # shellcheck disable=SC2046
    $PY -m training cv --packed "$PACK" --config "$cfg" --run-name "$cfg" --runs-dir "$RUNS" --folds "$fold" \
      --stages "$STAGE" $(reuse_of "$cfg") --set runtime.num_threads=1 "${QUICK_SET[@]}" --no-progress --resume \
      >>"$W/logs/${cfg}_${fold}.log" 2>&1 &
    pids+=($!)
    sleep 0.3
  done
done
wait_or_stop "$DEADLINE_S" "$RUNS/*/*/$STAGE/log.jsonl" "${pids[@]}"
echo "== [$(elapsed) s] finished or stopped"
for cfg in $CONFIGS; do for fold in $FOLDS; do
  echo "$cfg $fold: $(tail -n 1 "$W/logs/${cfg}_${fold}.log" | cut -c1-150)"
done; done

$PY - "$RUNS" "$W/runs" <<'PYEOF'
"""Copy each run's config, split, logs and stages: finished ones as float16 final weights, unfinished ones as
their last checkpoint and random state (float32: resuming needs them exact)."""
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

runs, dest = Path(sys.argv[1]), Path(sys.argv[2])
n = 0
for path in sorted(runs.rglob("*")):
    rel = path.relative_to(runs)
    if not path.is_file() or ".tmp" in path.name:
        continue
    finished = (path.parent / "final.safetensors").is_file()
    if path.name.startswith(("checkpoint", "rng_")) and finished:
        continue
    out = dest / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    if path.name == "final.safetensors":
        state = load_file(str(path))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(out),
                  metadata={"transfer": "float16"})
    else:
        shutil.copy2(path, out)
    n += 1
print("packed", n, "files")
PYEOF
cp "$W/machine.txt" "$W/runs/" 2>/dev/null
cp "$W"/bench_networks_*.json "$W/runs/" 2>/dev/null
tar -C "$W" -czf "$OUT/session.tar.gz" runs logs machine.txt
split -b 15000000 -d "$OUT/session.tar.gz" "$OUT/session.tar.gz.part"
rm "$OUT/session.tar.gz"
ls -la "$OUT"
echo "== [$(elapsed) s] done"
