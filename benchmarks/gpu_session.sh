#!/usr/bin/env bash
# Everything a GPU check needs, in one call on a machine that starts bare each time:
# build (pip, no network), then the stages named on the command line, each logged
# under $OUT (default ./gpu_out) with its exit status in $OUT/summary.txt.
#
#   bash benchmarks/gpu_session.sh tests              # every test (CPU and CUDA), not slow
#   bash benchmarks/gpu_session.sh cuda-tests slow    # only the CUDA tests, then the 3e9-score ones
#   bash benchmarks/gpu_session.sh bench bandwidth    # CUDA benchmarks + bandwidth report
#   bash benchmarks/gpu_session.sh sanitize           # compute-sanitizer memcheck + racecheck
#
# STAGE_TIMEOUT (seconds, default 480) bounds each stage so that a hang still leaves logs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
LIMIT=${STAGE_TIMEOUT:-480}

{ nvidia-smi || true; python3 -m pip install --no-build-isolation --no-index . ; } \
  > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; echo "build failed"; exit 1; }
# from outside the repository, so that the installed package is the one imported
(cd /tmp && python3 -c "import json, qme_ext; print(json.dumps(qme_ext.build_config()))") \
  | tee "$OUT/build_config.json"

PYTEST=(timeout "$LIMIT" python3 -m pytest -q -p no:cacheprovider -rfE)
SANITIZED=("tests/test_cuda.py" "tests/test_qme_ops.py -k cuda" "tests/test_quality.py -k cuda"
           "tests/test_topk.py -k cuda" "tests/test_distributed.py -k cuda"
           "tests/test_robustness.py -k cuda")

stage() {
  case "$1" in
    tests)      "${PYTEST[@]}" tests -m "not slow" --junitxml="$OUT/tests.xml" ;;
    cuda-tests) "${PYTEST[@]}" tests -m "not slow" -k cuda --junitxml="$OUT/cuda-tests.xml" ;;
    slow)       "${PYTEST[@]}" tests -m slow ;;
    bench)      "${PYTEST[@]}" benchmarks -k cuda --benchmark-only -s \
                  --benchmark-json="$OUT/bench.json" ;;
    bandwidth)  timeout "$LIMIT" python3 benchmarks/bandwidth_report.py --json "$OUT/bandwidth.json" ;;
    sanitize)
      export PYTORCH_NO_CUDA_MEMORY_CACHING=1
      local rc=0 sel tool
      for sel in "${SANITIZED[@]}"; do
        for tool in memcheck racecheck; do
          echo "== $tool: $sel"
          # shellcheck disable=SC2086  # $sel holds a path and its -k selection
          timeout "$LIMIT" compute-sanitizer --tool "$tool" --error-exitcode 1 \
            python3 -m pytest $sel -q -x -p no:cacheprovider -m "not slow" || rc=1
        done
      done
      return $rc ;;
    *) echo "unknown stage $1 (tests, cuda-tests, slow, bench, bandwidth, sanitize)"; return 2 ;;
  esac
}

for s in "$@"; do
  start=$(date +%s)
  stage "$s" > "$OUT/$s.log" 2>&1
  rc=$?
  echo "$s rc=$rc $(( $(date +%s) - start ))s" | tee -a "$OUT/summary.txt"
  tail -15 "$OUT/$s.log"
done
