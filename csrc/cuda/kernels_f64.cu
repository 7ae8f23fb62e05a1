// softiou CUDA kernels instantiated for double input (see kernels.cuh).
#include "kernels.cuh"

namespace softiou {
namespace cuda {
namespace detail {
template cudaError_t run_input<double, true>(const KernelArgs&, void*, void*, void*, void*,
                                             int, cudaStream_t);
template cudaError_t run_input<double, false>(const KernelArgs&, void*, void*, void*, void*,
                                              int, cudaStream_t);
}  // namespace detail
}  // namespace cuda
}  // namespace softiou
