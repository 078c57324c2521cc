#!/bin/bash
# One GPU session, as run on the lent H100/H200 machine (docs/results.md, "GPU session"):
#   1. the network passes of one case on the GPU and on that machine's CPU (benchmarks/bench_networks.py);
#   2. the benchmark of the issue: one fold (fold 0) of the whole default cascade (localiser, DAE, ASSN, PRSN),
#      alone on the GPU, timed;
#   3. the gpu_long and gpu_wide configs, 5 folds + the all-cases model each, 12 processes sharing the GPU, with a
#      deadline (unfinished runs are stopped and reported);
#   4. the trained stages, packed for the trip back (float16 weights for 3, float32 for 2), split in <=15 MB parts.
# Validation needs the images and SimpleITK, which that machine lacks: it happens afterwards, where the data is,
# with `python -m training cv --data FOLDER --run-name NAME --resume ...` (docs/results.md gives the commands).
#
# Inputs (prepared where the data is; neither is committed):
#   $PACK   python -m training pack --data ../shared/data/myops2020/train25 --out $PACK
#   $REUSE  a slim copy of runs/cv5 (config.json, split.json, fold_*/ and all/ with localizer/ and dae/ finals)
# Usage: PACK=... REUSE=... OUT=... DEADLINE_S=500 bash benchmarks/gpu_session.sh
set -u
PACK=${PACK:-.devdata/train25.safetensors.gz}
REUSE=${REUSE:-.devdata/cv5}
OUT=${OUT:-out/gpu_session}
DEADLINE_S=${DEADLINE_S:-500}
RUNS=${RUNS:-runs}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
# QUICK=1: a few steps per stage, to try the script itself on a CPU machine
QUICK_ALL=() QUICK_NEW=()
if [ "${QUICK:-0}" = 1 ]; then
  QUICK_NEW=(--set assn.steps=4 --set prsn.steps=4 --set runtime.checkpoint_every=2)
  QUICK_ALL=("${QUICK_NEW[@]}" --set localizer.steps=4 --set dae.steps=4)
fi
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
W=${WORK:-/tmp/myops_gpu_session}
[ "${RESUME:-0}" = 1 ] || rm -rf "$W"
mkdir -p "$W/logs" "$OUT"
# SimpleITK stand-in (training from a pack never reads an image) and PYTHONPATH
source "$(dirname "$0")/gpu_env.sh"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc; uname -r
} >"$W/machine.txt" 2>&1
cat "$W/machine.txt"

# RESUME=1: a second call on the same (warm) machine continues stopped runs of step 3 and packs again.
if [ "${RESUME:-0}" != 1 ]; then
echo "== [$(elapsed) s] 1. network passes of one case (shipped model)"
$PY benchmarks/bench_networks.py --device "$DEVICE" --repeats 50 --json "$W/bench_networks_$DEVICE.json" >/dev/null
$PY benchmarks/bench_networks.py --device cpu --repeats 10 --json "$W/bench_networks_cpu.json" >/dev/null
grep -A5 median_s "$W"/bench_networks_*.json

echo "== [$(elapsed) s] 2. fold 0 of the whole default cascade, alone on the GPU"
t0=$(date +%s%N)
$PY -m training cv --packed "$PACK" --config default --run-name gpu_default --runs-dir "$RUNS" --folds 0 \
  "${QUICK_ALL[@]}" --no-progress >"$W/logs/gpu_default_0.log" 2>&1
rc=$?
t1=$(date +%s%N)
echo "{\"run\": \"gpu_default\", \"fold\": 0, \"rc\": $rc, \"wall_ms\": $(( (t1 - t0) / 1000000 ))}" \
  | tee "$W/fold0_default_timing.json"
tail -n 3 "$W/logs/gpu_default_0.log"
fi

echo "== [$(elapsed) s] 3. gpu_long and gpu_wide, 5 folds + all cases, 12 processes"
pids=()
for cfg in gpu_long gpu_wide; do
  for fold in 0 1 2 3 4 full; do
    $PY -m training cv --packed "$PACK" --config "$cfg" --run-name "$cfg" --runs-dir "$RUNS" --folds "$fold" \
      --stages assn,prsn --reuse-from "$REUSE" --set runtime.num_threads=1 "${QUICK_NEW[@]}" --no-progress --resume \
      >>"$W/logs/${cfg}_${fold}.log" 2>&1 &
    pids+=($!)
    sleep 0.5
  done
done
wait_or_stop "$DEADLINE_S" "$RUNS/gpu_long/*/*/log.jsonl $RUNS/gpu_wide/*/*/log.jsonl" "${pids[@]}"
echo "== [$(elapsed) s] runs finished or stopped"
for cfg in gpu_long gpu_wide; do for fold in 0 1 2 3 4 full; do
  echo "$cfg $fold: $(tail -n 1 "$W/logs/${cfg}_${fold}.log" | cut -c1-150)"
done; done

echo "== [$(elapsed) s] 4. network passes of the new all-cases models"
for cfg in gpu_long gpu_wide; do
  if [ -f "$RUNS/$cfg/all/model/manifest.json" ]; then
    $PY benchmarks/bench_networks.py --model "$RUNS/$cfg/all/model" --device "$DEVICE" --repeats 30 \
      --json "$W/bench_networks_${DEVICE}_$cfg.json" >/dev/null
    $PY benchmarks/bench_networks.py --model "$RUNS/$cfg/all/model" --device cpu --repeats 5 \
      --json "$W/bench_networks_cpu_$cfg.json" >/dev/null
  fi
done

echo "== [$(elapsed) s] packing"
$PY - "$RUNS" "$W/runs" <<'EOF'
"""Copy what validation needs of each run: configs, logs, fold summaries and stage finals (no checkpoints)."""
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

runs, dest = Path(sys.argv[1]), Path(sys.argv[2])
half = {"gpu_long", "gpu_wide"}  # float16 for the trip back (size); gpu_default stays float32
for name in ("gpu_default", "gpu_long", "gpu_wide"):
    src = runs / name
    if not src.is_dir():
        continue
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or "model" in rel.parts or "predictions" in rel.parts:
            continue
        if path.name.startswith(("checkpoint.safetensors", "rng_")) or ".tmp" in path.name:
            continue
        out = dest / name / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "final.safetensors" and name in half:
            state = load_file(str(path))
            save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(out),
                      metadata={"transfer": "float16"})
        else:
            shutil.copy2(path, out)
print("packed", sum(1 for _ in dest.rglob("*") if _.is_file()), "files")
EOF
tar -C "$W" -czf "$OUT/session.tar.gz" .
split -b 15000000 -d "$OUT/session.tar.gz" "$OUT/session.tar.gz.part"
rm "$OUT/session.tar.gz"
rm -rf "$W/runs"
ls -la "$OUT"
echo "== [$(elapsed) s] done"
