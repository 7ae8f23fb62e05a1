#!/usr/bin/env bash
# Compiles the torch-free CUDA kernel sources (csrc/cuda/kernels*.cu) with nvcc for the given
# architectures, warnings as errors, and writes the static performance report of their sm_90 code
# (tools/perf_report.py); with a Python that has triton and the built package ($PY), the Triton
# kernels' report too (tools/triton_report.py); with a Python that has torch, also checks the torch glue (csrc/cuda/*.cpp) with the host compiler
# against torch's CUDA headers (-fsyntax-only: a CPU build of torch has no CUDA libraries to link).
#   [PY=python] tools/check_cuda_compile.sh [nvcc] ["80 90"] [jobs]
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${1:-nvcc}
ARCHS=${2:-"80 90"}
JOBS=${3:-2}
OUT=build/cuda-compile-check
mkdir -p "$OUT"
# the C++ side of the option declaration, which the kernels' arguments embed
"${PY:-python3}" tools/codegen.py
# the defines torch.utils.cpp_extension passes to nvcc, so this compiles what the build compiles
TORCH_DEFINES="-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__"
GENCODE=""
for a in $ARCHS; do GENCODE="$GENCODE -gencode arch=compute_$a,code=sm_$a"; done
echo "nvcc: $($NVCC --version | tail -1); architectures: $ARCHS"
ls csrc/cuda/kernels*.cu | xargs -P "$JOBS" -I{} sh -c \
  "$NVCC -std=c++17 -O3 --expt-relaxed-constexpr $TORCH_DEFINES -Xcompiler -fPIC -Werror all-warnings $GENCODE \
   -Xptxas -v -c {} -o $OUT/\$(basename {} .cu).o > $OUT/\$(basename {} .cu).log 2>&1 \
   || { cat $OUT/\$(basename {} .cu).log; echo 'FAILED: {}'; exit 255; }"
$NVCC $GENCODE -shared $OUT/*.o -o $OUT/libsoftiou_kernels.so
echo "compiled and linked: $(ls csrc/cuda/kernels*.cu | tr '\n' ' ')"
# (awk reads its whole input: `head` would close the pipe early and, under pipefail, fail the
# script with SIGPIPE whenever sort is still writing)
{ grep -h "spill" $OUT/*.log || true; } | sort | uniq -c | sort -rn | awk 'NR <= 3 { print "  ptxas: " $0 }'
# the static performance report: registers, spills and global load/store widths per kernel
# (build/cuda-compile-check/perf-report.txt; tests/test_perf_report.py holds them to their budgets)
case " $ARCHS " in
  *" 90 "*) "${PY:-python3}" tools/perf_report.py "$OUT" --arch sm_90 ;;
esac
# the Triton kernels' report: compiled offline for sm_90 from the backend's own launches
# (build/cuda-compile-check/triton-report.txt; needs triton and the built package)
if [ -n "${PY:-}" ] && "$PY" -c "import triton, softiou_cuda" 2>/dev/null; then
  "$PY" tools/triton_report.py "$OUT"
else
  echo "triton report not made (no PY with triton and softiou_cuda)"
fi

if [ -n "${PY:-}" ] && "$PY" -c "import torch" 2>/dev/null; then
  TORCH_INC=$("$PY" -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
  PY_INC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  # the CUDA toolkit's include directory, as nvcc itself resolves it
  CUDA_INC=$(echo '#include <cuda_runtime.h>' | $NVCC -x cu -E -M - 2>/dev/null | tr ' ' '\n' \
             | awk '/\/cuda_runtime\.h$/ && !found { found = 1; print }' | xargs dirname)
  # torch's CMake generates this header; its wheels ship without it: an empty stand-in
  SHIM=$OUT/shim
  mkdir -p "$SHIM/c10/cuda/impl" && echo '#pragma once' > "$SHIM/c10/cuda/impl/cuda_cmake_macros.h"
  for f in csrc/cuda/*.cpp; do
    ${CXX:-g++} -std=c++20 -fsyntax-only -Wall -Werror -DSOFTIOU_WITH_CUDA -I"$SHIM" $TORCH_INC \
      -I"$CUDA_INC" -I"$PY_INC" "$f" || { echo "FAILED: $f"; exit 1; }
  done
  echo "torch glue checked: $(ls csrc/cuda/*.cpp | tr '\n' ' ')"
else
  echo "torch glue not checked (no PY with torch)"
fi
