# Sourced by the GPU scripts (benchmarks/gpu_*.sh) on the lent machine, whose image has torch but no SimpleITK.
# - SITK_TARBALL (optional): the unpacked SimpleITK wheel as .tar.xz (it travels in an ignored, carried folder:
#   the wheel itself is 53 MB, its xz 28 MB). It is unpacked into /tmp/site, which goes on PYTHONPATH.
# - Otherwise, when SimpleITK is missing, an import stand-in that fails on any use: training from a pack reads
#   no image, so it only needs `import SimpleITK` to succeed.
# - WHEEL_DIR (optional): pure-Python wheels of declared dependencies the image lacks (slicerio, pynrrd),
#   installed into /tmp/site as well.
# Then the engine and training packages go on PYTHONPATH.
PY=${PY:-python3}
site_used=0
if [ -n "${SITK_TARBALL:-}" ] && [ -f "$SITK_TARBALL" ]; then
  mkdir -p /tmp/site && tar -xJf "$SITK_TARBALL" -C /tmp/site && site_used=1
fi
if [ -n "${WHEEL_DIR:-}" ] && ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEEL_DIR"/*.whl && site_used=1
fi
[ "$site_used" = 1 ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
if ! $PY -c "import SimpleITK" 2>/dev/null; then
  mkdir -p /tmp/nositk
  printf '%s\n' '"""Stand-in: SimpleITK is not installed on this machine."""' \
    'def __getattr__(name):' \
    '    raise AttributeError(f"SimpleITK is not installed here (SimpleITK.{name} was asked for)")' \
    >/tmp/nositk/SimpleITK.py
  export PYTHONPATH=/tmp/nositk${PYTHONPATH:+:$PYTHONPATH}
fi
# absolute: subprocesses (the CLI tests, the cold-start benchmark) run in other folders
export PYTHONPATH=$PWD/MyoPSSegmentation:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

# wait_or_stop DEADLINE_S LOG_GLOB PID...: wait for the training processes; every 30 s print how many still run
# and the last line of each log matching LOG_GLOB (quoted; expanded here); DEADLINE_S seconds after the caller's
# START (date +%s), stop those still running.
wait_or_stop() {
  local deadline=$1 logs=$2 last=0 running p f now
  shift 2
  while :; do
    running=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && running=$((running + 1)); done
    [ "$running" -eq 0 ] && return 0
    now=$(( $(date +%s) - START ))
    if [ "$now" -ge "$deadline" ]; then
      echo "deadline: stopping $running unfinished processes"
      for p in "$@"; do kill "$p" 2>/dev/null; done
      sleep 3
      return 1
    fi
    if [ $(( now - last )) -ge 30 ]; then
      last=$now
      echo "-- [$now s] $running running"
      for f in $logs; do
        [ -f "$f" ] && echo "   $f $(tail -n 1 "$f" | cut -c1-70)"
      done
    fi
    sleep 5
  done
}
