// softiou CUDA kernels instantiated for float input (see kernels.cuh).
#include "kernels.cuh"

namespace softiou {
namespace cuda {
namespace detail {
template cudaError_t run_input<float, true>(const KernelArgs&, void*, void*, void*, void*,
                                            int, cudaStream_t);
template cudaError_t run_input<float, false>(const KernelArgs&, void*, void*, void*, void*,
                                             int, cudaStream_t);
}  // namespace detail
}  // namespace cuda
}  // namespace softiou
