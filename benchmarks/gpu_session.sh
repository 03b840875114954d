#!/usr/bin/env bash
# Everything a GPU check needs, in one call on a machine that starts bare each time:
# build (pip, no network), then the stages named on the command line, each logged
# under $OUT (default ./gpu_out) with its exit status in $OUT/summary.txt.
#
#   bash benchmarks/gpu_session.sh                    # first contact, fits one call of <= 7 min:
#                                                     #   build, CUDA tests (not slow), memcheck +
#                                                     #   racecheck on one small call per kernel,
#                                                     #   bandwidth report (~1 s a kernel)
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
: > "$OUT/summary.txt"
T0=$(date +%s)
if [ "$#" -eq 0 ]; then
  FIRST_CONTACT=1
  BUDGET=${BUDGET:-400}
  set -- cuda-tests sanitize-small bandwidth-quick
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

start=$(date +%s)
{ nvidia-smi; timeout "$(cap 200)" "$PY" -m pip install --no-build-isolation --no-index . ; } \
  > "$OUT/build.log" 2>&1
rc=$?
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
    cuda-tests) timeout "$t" "$PY" "${PYTEST[@]}" tests -m "not slow" -k cuda \
                  --junitxml="$OUT/cuda-tests.xml" ;;
    slow)       timeout "$t" "$PY" "${PYTEST[@]}" tests -m slow ;;
    bench)      timeout "$t" "$PY" "${PYTEST[@]}" benchmarks -k cuda --benchmark-only -s \
                  --benchmark-json="$OUT/bench.json" ;;
    bandwidth)  (cd benchmarks && timeout "$t" "$PY" bandwidth_report.py \
                  --budget $(( t - 15 > 10 ? t - 15 : 10 )) --json "../$OUT/bandwidth.json") ;;
    bandwidth-quick)  # ~1 s a kernel: half-size problems, 3 timed calls each
                (cd benchmarks && timeout "$t" "$PY" bandwidth_report.py --scale 0.5 --repeat 3 \
                  --budget $(( t - 15 > 10 ? t - 15 : 10 )) --json "../$OUT/bandwidth.json") ;;
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
            "sanitize-small)"; return 2 ;;
  esac
}

# first contact: caps that add up to the budget (build ~2-3 min on 16 cores)
first_cap() {
  case "$1" in
    cuda-tests) echo 90 ;;
    sanitize-small) echo 100 ;;
    bandwidth-quick) echo 60 ;;
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
