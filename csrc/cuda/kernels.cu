// softiou CUDA kernels: the launch plans and the dtype dispatch (torch-free). The kernels are in
// kernels.cuh, instantiated per input dtype by kernels_<dtype>.cu.
#include "kernels.cuh"

namespace softiou {
namespace cuda {
namespace detail {
// instantiated in kernels_f32.cu, kernels_f64.cu, kernels_f16.cu, kernels_bf16.cu
#define SOFTIOU_DECLARE(S)                                                                   \
  extern template cudaError_t run_input<S, true>(const KernelArgs&, void*, void*, void*, void*, \
                                                 int, cudaStream_t);                           \
  extern template cudaError_t run_input<S, false>(const KernelArgs&, void*, void*, void*, void*, \
                                                  int, cudaStream_t);
SOFTIOU_DECLARE(float)
SOFTIOU_DECLARE(double)
SOFTIOU_DECLARE(__half)
SOFTIOU_DECLARE(__nv_bfloat16)
#undef SOFTIOU_DECLARE

template <bool FWD>
cudaError_t run(const KernelArgs& a, void* partials, void* pixel, void* out, void* counts,
                int device, cudaStream_t stream) {
  switch (a.x_dtype) {
    case DType::kFloat32:
      return run_input<float, FWD>(a, partials, pixel, out, counts, device, stream);
    case DType::kFloat64:
      return run_input<double, FWD>(a, partials, pixel, out, counts, device, stream);
    case DType::kFloat16:
      return run_input<__half, FWD>(a, partials, pixel, out, counts, device, stream);
    case DType::kBFloat16:
      return run_input<__nv_bfloat16, FWD>(a, partials, pixel, out, counts, device, stream);
    default: return cudaErrorInvalidValue;
  }
}
}  // namespace detail

using namespace detail;

Plan plan_stats(const KernelArgs& a, int device) {
  const Launch L = plan_launch(a, device, true);
  Plan p;
  const bool pixel = pixel_mode(a);
  const int64_t warps_per_row = L.blocks_per_row * kWarps;  // per sample, or per (sample, class)
  const int64_t rows = pixel ? a.N : a.N * a.C;
  p.partial_elems = rows * warps_per_row * partial_row(a.C, pixel);
  p.pixel_elems = pixel && needs_prepass(a) ? a.N * a.M * kPixelValues : 0;
  p.ce_entries = rows * warps_per_row;
  p.ce_per_sample = pixel ? warps_per_row : a.C * warps_per_row;
  p.ce_stride = partial_row(a.C, pixel);
  p.ce_offset = pixel ? a.C * 3 : 3;
  return p;
}

Plan plan_backward(const KernelArgs& a, int device) {
  (void)device;
  Plan p;
  p.pixel_elems = pixel_mode(a) && needs_prepass(a) ? a.N * a.M * kPixelValues : 0;
  return p;
}

cudaError_t launch_ce_reduce(const void* partials, const Plan& plan, int64_t N, DType acc,
                             void* out, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  if (acc == DType::kFloat64) {
    ce_reduce_kernel<double><<<unsigned(N), kThreads, 0, stream>>>(
        static_cast<const double*>(partials) + plan.ce_offset, plan.ce_per_sample,
        plan.ce_stride, static_cast<double*>(out));
  } else {
    ce_reduce_kernel<float><<<unsigned(N), kThreads, 0, stream>>>(
        static_cast<const float*>(partials) + plan.ce_offset, plan.ce_per_sample,
        plan.ce_stride, static_cast<float*>(out));
  }
  return cudaGetLastError();
}

bool counts_in_stats(const KernelArgs& a, int device) { return counting_pass(a, device); }

cudaError_t launch_stats(const KernelArgs& a, void* partials, void* pixel, void* out, void* counts,
                         int device, cudaStream_t stream) {
  if (counts == nullptr) return run<true>(a, partials, pixel, out, nullptr, device, stream);
  cudaError_t err = cudaMemsetAsync(counts, 0, size_t(a.N * a.C * 4) * sizeof(int64_t), stream);
  if (err == cudaSuccess) err = run<true>(a, partials, pixel, out, counts, device, stream);
  if (err == cudaSuccess) err = finish_counts(counts, a.N * a.C, stream);
  return err;
}

cudaError_t launch_backward(const KernelArgs& a, void* pixel, int device, cudaStream_t stream) {
  return run<false>(a, nullptr, pixel, nullptr, nullptr, device, stream);
}

cudaError_t launch_finalize(const void* stats, int64_t s_n, int64_t s_c, const FinalizeArgs& f,
                            DType acc, void* loss, void* coef, void* coef_ce,
                            cudaStream_t stream) {
  if (acc == DType::kFloat64) {
    finalize_kernel<double><<<1, kThreads, 0, stream>>>(
        static_cast<const double*>(stats), s_n, s_c, f, static_cast<double*>(loss),
        static_cast<double*>(coef), static_cast<double*>(coef_ce));
  } else {
    finalize_kernel<float><<<1, kThreads, 0, stream>>>(
        static_cast<const float*>(stats), s_n, s_c, f, static_cast<float*>(loss),
        static_cast<float*>(coef), static_cast<float*>(coef_ce));
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace softiou
