#!/usr/bin/env bash
# Everything a GPU check needs, in one call on a machine that starts bare each time:
# build (pip, no network), then the stages named on the command line, each logged
# under $OUT (default ./gpu_out) with its exit status in $OUT/summary.txt.
#
#   bash benchmarks/gpu_session.sh                    # first contact, fits one call of <= 7 min:
#                                                     #   build, CUDA tests (not slow), memcheck +
#                                                     #   racecheck on one small call per kernel,
#                                                     #   bandwidth report (~1 s a kernel),
#                                                     #   extras (gpu_extras.py: training s/step,
#                                                     #   bootstrap cost, CPU vs CUDA)
#   (a wheel in .whl/ built for the machine's Python, carried with the call, replaces
#    the source build when its CUDA module imports there: ~20 s instead of minutes)
#   bash benchmarks/gpu_session.sh tests              # every test (CPU and CUDA), not slow
#   bash benchmarks/gpu_session.sh cuda-tests slow    # only the CUDA tests, then the 3e9-score ones
#   bash benchmarks/gpu_session.sh bench bandwidth    # CUDA benchmarks + bandwidth report (full size)
#   bash benchmarks/gpu_session.sh sanitize           # compute-sanitizer memcheck + racecheck, all
#                                                     #   CUDA test files (long)
#   bash benchmarks/gpu_session.sh sanitize-small bandwidth-quick   # the first-contact pieces
#
# Time: BUDGET (seconds) bounds the whole call, build included: default 400 without
# arguments (7 minutes less a margin for start-up and copying $OUT back), 36000 with
# them. Each stage gets min(its cap, what is left of BUDGET - RESERVE); a stage that
# finds less than MIN_STAGE seconds left is skipped and says so. STAGE_TIMEOUT (default
# 480) caps a named stage. The summary is printed on every exit (trap), so a timeout
# still ends with it.
#
# Without a GPU (no working nvidia-smi, or GPU_SESSION_DRY=1) it is a dry path: no build;
# if qme_ext is importable the bandwidth report's code runs on the CPU at a tiny size;
# every GPU stage is listed as skipped; exit status 0.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)   # absolute: some stages run from benchmarks/
: > "$OUT/summary.txt"
T0=$(date +%s)
if [ "$#" -eq 0 ]; then
  FIRST_CONTACT=1
  BUDGET=${BUDGET:-400}
  set -- cuda-tests sanitize-small bandwidth-quick extras
else
  FIRST_CONTACT=0
  BUDGET=${BUDGET:-36000}
fi
RESERVE=${RESERVE:-10}        # seconds kept for the summary
MIN_STAGE=${MIN_STAGE:-20}
LIMIT=${STAGE_TIMEOUT:-480}
PY=${PYTHON:-python3}

left() { echo $(( BUDGET - RESERVE - ($(date +%s) - T0) )); }
cap() {  # cap SECONDS: min(SECONDS, what is left)
  local l; l=$(left)
  if [ "$1" -lt "$l" ]; then echo "$1"; else echo "$l"; fi
}
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
summary() {
  echo "==== summary ($(( $(date +%s) - T0 ))s of a ${BUDGET}s budget; logs in $OUT)"
  cat "$OUT/summary.txt"
  # the device tool returns at most 8 files: every log and JSON also travels in one archive
  (cd "$OUT" && tar czf logs.tgz --exclude=logs.tgz -- * 2> /dev/null &&
   find . -type f ! -name logs.tgz ! -name summary.txt ! -name console.log -delete)
}
trap summary EXIT

DRY=${GPU_SESSION_DRY:-0}
if [ "$DRY" != 1 ] && ! nvidia-smi -L > /dev/null 2>&1; then DRY=1; fi
if [ "$DRY" = 1 ]; then
  note "dry path: no GPU (nvidia-smi -L failed or GPU_SESSION_DRY=1); no build"
  if (cd /tmp && "$PY" -c "import qme_ext") > /dev/null 2>&1; then
    start=$(date +%s)
    (cd benchmarks && timeout "$(cap 120)" "$PY" bandwidth_report.py --device cpu --scale 1e-4 \
       --repeat 1 --budget 60) > "$OUT/bandwidth-dry.log" 2>&1
    note "bandwidth-dry (CPU, tiny) rc=$? $(( $(date +%s) - start ))s"
  fi
  for s in build "$@"; do note "$s skipped (no GPU)"; done
  exit 0
fi

# A wheel built elsewhere for this Python (.whl/qme_ext-*-cpXY-*.whl, carried with the call)
# saves the minutes of a source build; it is used only if its CUDA module imports here.
start=$(date +%s)
TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEEL=$(ls .whl/qme_ext-*-"$TAG"-*.whl 2> /dev/null | head -1)
rc=1
if [ -n "$WHEEL" ]; then
  { nvidia-smi; "$PY" -m pip install --no-deps --no-index --force-reinstall "$WHEEL" &&
    (cd /tmp && "$PY" -c "import qme_ext, qme_ext._C_cuda as m; c = qme_ext.build_config(); assert c['cuda_compiled'] and c['cuda_device_count'] > 0, c"); } \
    > "$OUT/build.log" 2>&1
  rc=$?
  note "prebuilt wheel $WHEEL rc=$rc $(( $(date +%s) - start ))s"
fi
if [ "$rc" -ne 0 ]; then
  { nvidia-smi; timeout "$(cap 200)" "$PY" -m pip install --no-build-isolation --no-index . ; } \
    >> "$OUT/build.log" 2>&1
  rc=$?
fi
note "build rc=$rc $(( $(date +%s) - start ))s"
if [ "$rc" -ne 0 ]; then
  tail -40 "$OUT/build.log"
  for s in "$@"; do note "$s skipped (build failed)"; done
  exit 1
fi
# from outside the repository, so that the installed package is the one imported
(cd /tmp && "$PY" -c "import json, qme_ext; print(json.dumps(qme_ext.build_config()))") \
  | tee "$OUT/build_config.json"

PYTEST=(-m pytest -q -p no:cacheprovider -rfE)
SANITIZED=("tests/test_cuda.py" "tests/test_qme_ops.py -k cuda" "tests/test_quality.py -k cuda"
           "tests/test_topk.py -k cuda" "tests/test_distributed.py -k cuda"
           "tests/test_robustness.py -k cuda")

# stage NAME SECONDS
stage() {
  local t=$2
  case "$1" in
    tests)      timeout "$t" "$PY" "${PYTEST[@]}" tests -m "not slow" --junitxml="$OUT/tests.xml" ;;
    cuda-tests)  # SHARDS pytest processes share the GPU (the tests are mostly CPU-side
                 # references); SIGINT at the limit still prints each one's failures
      "$PY" -m pytest tests -m "not slow" -k cuda --collect-only -q -p no:cacheprovider \
        | grep '::' > "$OUT/cuda-ids.txt"
      local n=${SHARDS:-4} i rc=0 pids=()
      echo "$(wc -l < "$OUT/cuda-ids.txt") CUDA tests in $n shards"
      for ((i = 0; i < n; i++)); do
        awk -v n="$n" -v i="$i" 'NR % n == i' "$OUT/cuda-ids.txt" > "$OUT/cuda-ids.$i.txt"
        local ids=()
        mapfile -t ids < "$OUT/cuda-ids.$i.txt"   # one argument per test id (ids hold spaces)
        timeout -s INT -k 20 "$t" "$PY" "${PYTEST[@]}" --tb=short --durations=5 \
          "${ids[@]}" > "$OUT/cuda-tests.$i.log" 2>&1 &
        pids+=($!)
      done
      for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || rc=1
        grep -E "FAILED|ERROR|passed|failed" "$OUT/cuda-tests.$i.log" | tail -30
      done
      return $rc ;;
    slow)       timeout "$t" "$PY" "${PYTEST[@]}" tests -m slow ;;
    bench)      timeout "$t" "$PY" "${PYTEST[@]}" benchmarks -k cuda --benchmark-only -s \
                  --benchmark-json="$OUT/bench.json" ;;
    bandwidth)  (cd benchmarks && timeout "$t" "$PY" bandwidth_report.py \
                  --budget $(( t - 15 > 10 ? t - 15 : 10 )) --json "$OUT/bandwidth.json") ;;
    bandwidth-quick)  # ~1 s a kernel: half-size problems, 3 timed calls each
                (cd benchmarks && timeout "$t" "$PY" bandwidth_report.py --scale 0.5 --repeat 3 \
                  --budget $(( t - 15 > 10 ? t - 15 : 10 )) --json "$OUT/bandwidth.json") ;;
    extras)     # training s/step and bootstrap cost, CPU and CUDA in one process
                (cd benchmarks && timeout "$t" "$PY" gpu_extras.py --json "$OUT/extras.json") ;;
    sanitize-small)  # one small call of every kernel through its op, memcheck then racecheck
      export PYTORCH_NO_CUDA_MEMORY_CACHING=1
      local rc=0 tool per=$(( t / 2 ))
      for tool in memcheck racecheck; do
        echo "== $tool: bandwidth_report.py --once --scale 1e-4"
        (cd benchmarks && timeout "$per" compute-sanitizer --tool "$tool" --error-exitcode 1 \
           "$PY" bandwidth_report.py --once --scale 1e-4) || rc=1
      done
      return $rc ;;
    sanitize)
      export PYTORCH_NO_CUDA_MEMORY_CACHING=1
      local rc=0 sel tool
      for sel in "${SANITIZED[@]}"; do
        for tool in memcheck racecheck; do
          echo "== $tool: $sel"
          # shellcheck disable=SC2086  # $sel holds a path and its -k selection
          timeout "$t" compute-sanitizer --tool "$tool" --error-exitcode 1 \
            "$PY" -m pytest $sel -q -x -p no:cacheprovider -m "not slow" || rc=1
        done
      done
      return $rc ;;
    *) echo "unknown stage $1 (tests, cuda-tests, slow, bench, bandwidth, bandwidth-quick, sanitize," \
            "sanitize-small, extras)"; return 2 ;;
  esac
}

# first contact: caps that add up to the budget (build ~2-3 min on 16 cores)
first_cap() {
  case "$1" in
    cuda-tests) echo 120 ;;
    sanitize-small) echo 90 ;;
    bandwidth-quick) echo 60 ;;
    extras) echo 60 ;;
    *) echo "$LIMIT" ;;
  esac
}

for s in "$@"; do
  if [ "$FIRST_CONTACT" = 1 ]; then c=$(first_cap "$s"); else c=$LIMIT; fi
  t=$(cap "$c")
  if [ "$t" -lt "$MIN_STAGE" ]; then
    note "$s skipped (budget: ${t}s left)"
    continue
  fi
  start=$(date +%s)
  stage "$s" "$t" > "$OUT/$s.log" 2>&1
  rc=$?
  note "$s rc=$rc $(( $(date +%s) - start ))s (limit ${t}s)$([ "$rc" -eq 124 ] && echo ' TIMED OUT')"
  tail -15 "$OUT/$s.log"
done
