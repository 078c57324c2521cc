#!/bin/bash
# Train PRSN-only experiments on a lent GPU from a packed bank: for each config, the 5 CV folds and the all-cases
# model, all as parallel processes sharing the GPU (one CPU thread each), with a deadline. Only the PRSN stage is
# trained (--stages prsn): the other stages are reused later, where the images are, from the run the config
# derives from (docs/results.md, "Session 6"):
#   python -m training cv --data $DATA --config CFG --run-name cv5_CFG --stages prsn \
#       --reuse-from runs/gpu_long_assn --folds 0 1 2 3 4 full --resume
# after the stage folders that come back are unpacked into runs/cv5_CFG/.
#
# What comes back in $OUT (at most 64 MiB): session.tar.gz.partNN holding machine.txt, the training logs, and each
# run's config, split and finished PRSN stages (final.json + final.safetensors, float16 for the trip; the loader
# casts back to float32). Checkpoints stay behind.
#
# Inputs: PACK (python -m training pack ...), CONFIGS (space-separated config names).
# Usage: PACK=.devdata/train25.safetensors.gz CONFIGS="exp_prsn_wide exp_prsn_wide_seed2" DEADLINE_S=400 \
#        OUT=$OUT bash benchmarks/gpu_train_prsn.sh
# QUICK=1 runs 4 steps per PRSN, to try the script on a CPU machine (DEVICE is then whatever torch finds).
set -u
PACK=${PACK:-.devdata/train25.safetensors.gz}
CONFIGS=${CONFIGS:-exp_prsn_wide exp_prsn_wide_seed2}
OUT=${OUT:-out/gpu_train_prsn}
DEADLINE_S=${DEADLINE_S:-400}
RUNS=${RUNS:-/tmp/myops_gpu_runs}
W=${WORK:-/tmp/myops_gpu_train}
QUICK_SET=()
[ "${QUICK:-0}" = 1 ] && QUICK_SET=(--set prsn.steps=4 --set runtime.checkpoint_every=2)
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
rm -rf "$W" "$RUNS"
mkdir -p "$W/logs" "$OUT"
source "$(dirname "$0")/gpu_env.sh"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  echo "cpus $(nproc)"
} >"$W/machine.txt" 2>&1
cat "$W/machine.txt"

echo "== [$(elapsed) s] training the PRSN of: $CONFIGS"
pids=()
for cfg in $CONFIGS; do
  for fold in 0 1 2 3 4 full; do
    $PY -m training cv --packed "$PACK" --config "$cfg" --run-name "$cfg" --runs-dir "$RUNS" --folds "$fold" \
      --stages prsn --set runtime.num_threads=1 "${QUICK_SET[@]}" --no-progress --resume \
      >>"$W/logs/${cfg}_${fold}.log" 2>&1 &
    pids+=($!)
    sleep 0.3
  done
done
wait_or_stop "$DEADLINE_S" "$RUNS/*/*/prsn/log.jsonl" "${pids[@]}"
echo "== [$(elapsed) s] finished or stopped"
for cfg in $CONFIGS; do for fold in 0 1 2 3 4 full; do
  echo "$cfg $fold: $(tail -n 1 "$W/logs/${cfg}_${fold}.log" | cut -c1-150)"
done; done

$PY - "$RUNS" "$W/runs" <<'PYEOF'
"""Copy each run's config, split, logs and finished PRSN stages (float16 weights for the trip back)."""
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

runs, dest = Path(sys.argv[1]), Path(sys.argv[2])
n = 0
for path in sorted(runs.rglob("*")):
    rel = path.relative_to(runs)
    if not path.is_file() or path.name.startswith(("checkpoint", "rng_")) or ".tmp" in path.name:
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
tar -C "$W" -czf "$OUT/session.tar.gz" runs logs machine.txt
split -b 15000000 -d "$OUT/session.tar.gz" "$OUT/session.tar.gz.part"
rm "$OUT/session.tar.gz"
ls -la "$OUT"
echo "== [$(elapsed) s] done"
