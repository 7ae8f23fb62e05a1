#!/usr/bin/env bash
# Compiles the torch-free CUDA kernel sources (csrc/cuda/kernels*.cu) with nvcc for the given
# architectures, warnings as errors, and reports registers and spills of the pixel kernels.
#   tools/check_cuda_compile.sh [nvcc] ["80 90"] [jobs]
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${1:-nvcc}
ARCHS=${2:-"80 90"}
JOBS=${3:-2}
OUT=build/cuda-compile-check
mkdir -p "$OUT"
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
grep -h "spill" $OUT/*.log | sort | uniq -c | sort -rn | head -3 | sed 's/^/  ptxas: /'
