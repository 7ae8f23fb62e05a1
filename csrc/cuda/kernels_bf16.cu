// softiou CUDA kernels instantiated for __nv_bfloat16 input (see kernels.cuh).
#include "kernels.cuh"

namespace softiou {
namespace cuda {
namespace detail {
template cudaError_t run_input<__nv_bfloat16, true>(const KernelArgs&, void*, void*, void*, void*,
                                                    int, cudaStream_t);
template cudaError_t run_input<__nv_bfloat16, false>(const KernelArgs&, void*, void*, void*, void*,
                                                     int, cudaStream_t);
}  // namespace detail
}  // namespace cuda
}  // namespace softiou
