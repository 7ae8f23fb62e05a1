#!/usr/bin/env bash
# The device check (DEVELOPERS.md). On a machine with a GPU and a preinstalled torch: build the
# CUDA extension against that torch, run the whole test suite with CUDA tensors, run
# compute-sanitizer (memcheck and racecheck) on a small case, run the benchmark and the Triton
# tuning sweep. Everything lands in $OUT (default ./device-results): summary.txt, the logs, and
# results.tar.gz with all of it (bench JSON and plots included); commit what it shows under
# bench/results/ and device-results/.
#
#   SOFTIOU_COMMIT=$(git rev-parse HEAD) bash tools/device_check.sh [env] [build] [test] [sanitize] [bench] [tune]
#   (no stage: all of them; each stage builds first if the extension is not built)
#
# `quick` (make device-check-quick) is the check sized for a 15-minute lease, so that a lease
# holds a run, a fix and a second run. Each of its stages runs under a wall-clock cap (seconds;
# override by the variables named):
#   env; build (sm_90 only, the CPU kernels at -O1: their instruction-set builds are the slowest
#   units, and the check does not time them); gputest (the suite's CUDA and Triton cases, -v so
#   that a capped run still names every test it ran, SIGINT at the cap so that pytest still
#   reports the failures; QUICK_TEST_CAP=100); sanitize (memcheck and racecheck on the small
#   case; QUICK_SANITIZE_CAP=60 each); benchbars (the GPU bar cases, 256x256 and C=150: softiou,
#   the eager reference, the peers and F.cross_entropy; QUICK_BENCH_CAP=130; then the Triton
#   backend's bar cases with its multiclass kernel's candidate layout, QUICK_LAYOUT_CAP=40).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device-results}
WORK=${WORK:-/tmp/softiou-device}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
STAGES=${*:-env build test sanitize bench tune}
[ "$STAGES" = quick ] && STAGES="env build gputest sanitize benchbars" && QUICK=1

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$WORK/summary.txt"; }
pack() {
  cp "$WORK/summary.txt" "$OUT/" 2>/dev/null
  cp "$WORK"/bench/*.json "$WORK"/bench/*.txt "$WORK"/bench/*.png "$OUT/" 2>/dev/null
  tar -C "$WORK" -czf "$OUT/results.tar.gz" . ; }

# optional peer wheels carried in .whl (monai, kornia, smp) for the benchmark
if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && log "peer wheels installed: $(ls .whl | tr '\n' ' ')"
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}

built() { $PY -c "import softiou_cuda, sys; sys.exit(0 if softiou_cuda.operators.has_cuda_kernels() else 1)" 2>/dev/null; }

stage_env() {
  log "commit ${SOFTIOU_COMMIT:-unknown}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$WORK/summary.txt"
  $PY -c "import torch, platform; print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0))" 2>&1 | tee -a "$WORK/summary.txt"
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1 | tee -a "$WORK/summary.txt"
  nvcc --version | tail -1 | tee -a "$WORK/summary.txt"
}

stage_build() {
  BUILD_TRIED=1
  local t0=$SECONDS
  MAX_JOBS=$(nproc) TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
    SOFTIOU_CXX_OPT=${SOFTIOU_CXX_OPT:-${QUICK:+-O1}} \
    $PY -m pip install -v --no-build-isolation --no-deps -e . > "$WORK/build.log" 2>&1
  local rc=$?
  log "build: rc=$rc in $((SECONDS - t0)) s"
  [ $rc -ne 0 ] && tail -40 "$WORK/build.log"
  $PY -c "import softiou_cuda as s; print('cuda kernels:', s.operators.has_cuda_kernels(), '| cpu isa:', s.operators.cpu_isa(), '| backends:', s.available_backends('cuda'))" 2>&1 | tee -a "$WORK/summary.txt"
}

# one build attempt per run: a failed build is logged once, not retried by every stage
ensure_built() { built || [ -n "${BUILD_TRIED:-}" ] || stage_build; }

stage_test() {
  ensure_built
  local t0=$SECONDS
  OMP_NUM_THREADS=2 $PY -m pytest tests -q -ra -p no:cacheprovider -n ${TEST_WORKERS:-8} --dist load \
    --max-worker-restart 16 \
    --junitxml="$WORK/junit.xml" ${PYTEST_ARGS:-} > "$WORK/tests.log" 2>&1
  local rc=$?
  log "tests: rc=$rc in $((SECONDS - t0)) s: $(tail -1 "$WORK/tests.log")"
  grep -E "^(FAILED|ERROR)" "$WORK/tests.log" | head -30 | tee -a "$WORK/summary.txt"
}

stage_gputest() {
  ensure_built
  local t0=$SECONDS
  # SIGINT at the cap: pytest stops as on Ctrl-C and still prints the failures' tracebacks
  OMP_NUM_THREADS=1 timeout -s INT -k 20 ${QUICK_TEST_CAP:-100} $PY -m pytest tests -v -ra --tb=short \
    -p no:cacheprovider -n ${TEST_WORKERS:-14} --dist load --max-worker-restart 16 \
    -k "${QUICK_TEST_K:-cuda or triton}" ${PYTEST_ARGS:-} > "$WORK/tests.log" 2>&1
  local rc=$?
  local passed failed
  passed=$(grep -c " PASSED " "$WORK/tests.log")
  failed=$(grep -cE " (FAILED|ERROR) " "$WORK/tests.log")
  log "gpu tests (-k '${QUICK_TEST_K:-cuda or triton}'): rc=$rc$([ $rc -eq 124 ] && echo ' (stopped at the cap)') in $((SECONDS - t0)) s: $passed passed, $failed failed or errors; $(tail -1 "$WORK/tests.log")"
  grep -E " (FAILED|ERROR) " "$WORK/tests.log" | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | sort -u \
    | head -40 | tee -a "$WORK/summary.txt"
}

stage_benchbars() {
  ensure_built
  local t0=$SECONDS
  SOFTIOU_COMMIT=${SOFTIOU_COMMIT:-unknown} timeout -k 5 ${QUICK_BENCH_CAP:-130} $PY -m bench \
    --device cuda --out "$WORK/bench" --tag "${BENCH_TAG:-h200}" --reps 10 --budget 1 \
    --cases "${QUICK_BENCH_CASES:-gpu-bar,call-256x256,classes-150}" \
    --providers "${QUICK_BENCH_PROVIDERS:-softiou-cuda,softiou-triton,softiou-cuda-without-ce,cross_entropy+softiou-cuda,softiou-cuda-without-counts,softiou-triton-without-counts,softiou-cuda+torchmetrics,reference-eager,monai,kornia,smp,cross_entropy}" \
    > "$WORK/bench.log" 2>&1
  log "bench (bar cases): rc=$? in $((SECONDS - t0)) s"
  sed -n '/^bars:/,/^}/p' "$WORK/bench.log" | tee -a "$WORK/summary.txt"
  # the Triton multiclass kernel's candidate layout (triton_kernels/configs.py: PIXEL_LAYOUT
  # "in_thread"), on the same GPU: the default switches once it is faster here
  t0=$SECONDS
  SOFTIOU_COMMIT=${SOFTIOU_COMMIT:-unknown} timeout -k 5 ${QUICK_LAYOUT_CAP:-40} $PY -m bench \
    --device cuda --out "$WORK/bench" --tag "${BENCH_TAG:-h200}-triton-in-thread" --reps 10 \
    --budget 1 --no-memory --cases gpu-bar --providers softiou-triton \
    --triton-pixel-layout in_thread > "$WORK/bench-in-thread.log" 2>&1
  log "bench (bar cases, Triton in_thread layout): rc=$? in $((SECONDS - t0)) s"
  sed -n '/^bars:/,/^}/p' "$WORK/bench-in-thread.log" | tee -a "$WORK/summary.txt"
}

stage_sanitize() {
  ensure_built
  for tool in memcheck racecheck; do
    local t0=$SECONDS
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 ${QUICK:+timeout -k 5 ${QUICK_SANITIZE_CAP:-60}} compute-sanitizer --tool $tool --error-exitcode 3 \
      $PY tools/sanitize_case.py > "$WORK/sanitizer-$tool.log" 2>&1
    local rc=$?
    log "compute-sanitizer $tool: rc=$rc in $((SECONDS - t0)) s: $(grep -E '(ERROR|RACECHECK) SUMMARY' "$WORK/sanitizer-$tool.log" | tail -1)"
  done
}

stage_bench() {
  ensure_built
  local t0=$SECONDS
  SOFTIOU_COMMIT=${SOFTIOU_COMMIT:-unknown} $PY -m bench --device cuda --out "$WORK/bench" \
    ${BENCH_ARGS:-} > "$WORK/bench.log" 2>&1
  log "bench: rc=$? in $((SECONDS - t0)) s"
  sed -n '/^bars:/,/^}/p' "$WORK/bench.log" | tee -a "$WORK/summary.txt"
}

stage_tune() {
  ensure_built
  local t0=$SECONDS
  $PY -m bench --tune-triton --out "$WORK/bench" > "$WORK/tune.log" 2>&1
  log "triton tuning: rc=$? in $((SECONDS - t0)) s"
  sed -n '/fastest per shape class/,$p' "$WORK/tune.log" | tee -a "$WORK/summary.txt"
}

for s in $STAGES; do
  "stage_$s"
  pack
done
log "done: $STAGES"
pack
