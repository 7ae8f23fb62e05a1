// The phases on CUDA (ops/phases.h): the torch side of the torch-free kernels in kernels.cu. Runs
// on the current stream, takes its workspaces from torch's caching allocator directly (so a call
// allocates through the dispatcher nothing but its outputs, and is CUDA-graph capturable), and
// never synchronises with the host; bad values stop the kernels with a device-side assert, like
// F.cross_entropy.
//
//   stats:          statistics kernel(s) + second stage (+ the cross-entropy's per-sample sums)
//                   (with stat_scores, the hard counts: in the statistics kernel where
//                   cuda::counts_in_stats, else a counting kernel of their own)
//   stats_backward: one gradient kernel
//   finalize:       one kernel of one block
#include <algorithm>

#ifdef SOFTIOU_CUDA_EMULATION
#include <c10/core/CPUAllocator.h>
#else
#include <ATen/cuda/EmptyTensor.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "../ops/inputs.h"
#include "../ops/phases.h"
#include "kernels.h"

namespace softiou {
namespace {

#ifdef SOFTIOU_CUDA_EMULATION
// The CUDA emulation (emulation/emulation.h, for the tests): the same phases on host memory, the
// kernels run when launched; a failed launch raises with the emulation's reason.
#define SOFTIOU_CUDA_CHECK(expr)                                                            \
  do {                                                                                      \
    const cudaError_t err_ = (expr);                                                        \
    TORCH_CHECK(err_ == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(err_),  \
                ": ", softiou_emu::last_error_message());                                 \
  } while (0)
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
cudaStream_t current_stream(int) { return nullptr; }

at::Tensor new_empty(at::IntArrayRef sizes, at::ScalarType dtype, const at::Device&) {
  return at::empty(sizes, at::TensorOptions().dtype(dtype));
}
c10::Allocator* workspace_allocator() { return c10::GetCPUAllocator(); }
#else
#define SOFTIOU_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream(int device) { return c10::cuda::getCurrentCUDAStream(device); }

at::Tensor new_empty(at::IntArrayRef sizes, at::ScalarType dtype, const at::Device& device) {
  return at::detail::empty_cuda(sizes, dtype, device, std::nullopt);
}

c10::Allocator* workspace_allocator() { return c10::cuda::CUDACachingAllocator::get(); }
#endif

// Scratch memory of one call, in accumulation-dtype elements, freed when the call returns (the
// caching allocator keeps stream order: the kernels queued on this stream finish first).
at::DataPtr workspace(int64_t elems, at::ScalarType acc) {
  const size_t bytes = size_t(std::max<int64_t>(elems, 1)) * at::elementSize(acc);
  return workspace_allocator()->allocate(bytes);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stats(const at::Tensor& input,
                                                     const at::Tensor& target,
                                                     const std::optional<at::Tensor>& weight,
                                                     const std::optional<at::Tensor>& class_weight,
                                                     const StatsOptions& o,
                                                     const CountsOptions& counts) {
  DeviceGuard guard(input.device());
  Prepared p = prepare(input, target, weight, o);
  const at::Tensor cw = use_cross_entropy(p, class_weight, input.device(), true);
  const bool counting = use_counts(p, counts, input);
  at::Tensor out = new_empty({p.N, p.C, 3}, p.acc, input.device());
  at::Tensor ce = new_empty({p.N, 2}, p.acc, input.device());
  at::Tensor scores = new_empty(counting ? std::vector<int64_t>{p.N, p.C, 4}
                                         : std::vector<int64_t>{0},
                                at::kLong, input.device());
  const int dev = input.get_device();
  const cudaStream_t stream = current_stream(dev);
  const bool in_pass = counting && cuda::counts_in_stats(p.args, dev);
  if (counting && !in_pass) {  // (the pixels' checks are the statistics kernels')
    SOFTIOU_CUDA_CHECK(cuda::launch_counts(p.args, scores.data_ptr(), dev, stream));
  }
  if (p.empty) {
    SOFTIOU_CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0, out.nbytes(), stream));
    SOFTIOU_CUDA_CHECK(cudaMemsetAsync(ce.data_ptr(), 0, ce.nbytes(), stream));
    return {out, ce, scores};
  }
  const cuda::Plan plan = cuda::plan_stats(p.args, dev);
  at::DataPtr partials = workspace(plan.partial_elems, p.acc);
  at::DataPtr pixel = workspace(plan.pixel_elems, p.acc);
  SOFTIOU_CUDA_CHECK(cuda::launch_stats(p.args, partials.get(), pixel.get(), out.data_ptr(),
                                        in_pass ? scores.data_ptr() : nullptr, dev, stream));
  if (p.args.ce) {  // the term's entries are in the partial sums
    SOFTIOU_CUDA_CHECK(cuda::launch_ce_reduce(partials.get(), plan, p.N, to_dtype(p.acc),
                                              ce.data_ptr(), stream));
  } else {
    SOFTIOU_CUDA_CHECK(cudaMemsetAsync(ce.data_ptr(), 0, ce.nbytes(), stream));
  }
  return {out, ce, scores};
}

at::Tensor stats_backward(const at::Tensor& grad_stats, const std::optional<at::Tensor>& grad_ce,
                          const std::optional<at::Tensor>& grad_out, const at::Tensor& input,
                          const at::Tensor& target, const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& class_weight, const StatsOptions& o) {
  DeviceGuard guard(input.device());
  Prepared p = prepare(input, target, weight, o);
  const auto owned = use_gradients(p, grad_stats, grad_ce, grad_out, input);
  const at::Tensor cw = use_cross_entropy(p, class_weight, input.device(), false);
  if (p.empty) return at::zeros_like(input);
  at::Tensor gx = allocate_grad(p, input);
  const int dev = input.get_device();
  const cuda::Plan plan = cuda::plan_backward(p.args, dev);
  at::DataPtr pixel = workspace(plan.pixel_elems, p.acc);
  SOFTIOU_CUDA_CHECK(cuda::launch_backward(p.args, pixel.get(), dev, current_stream(dev)));
  return gx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> finalize(
    const at::Tensor& stats, const std::optional<at::Tensor>& ce,
    const std::optional<at::Tensor>& class_weight, const FinalizeOptions& o) {
  DeviceGuard guard(stats.device());
  const Finalize fin = prepare_finalize(stats, ce, class_weight, o);
  const FinalizeArgs& f = fin.args;
  const at::ScalarType acc = stats.scalar_type();
  at::Tensor loss = new_empty(loss_shape(f), acc, stats.device());
  at::Tensor coef = new_empty({f.rows(), f.C, 3}, acc, stats.device());
  at::Tensor ce_coef = new_empty({1, 2}, acc, stats.device());
  const at::Tensor s = stats.contiguous();
  SOFTIOU_CUDA_CHECK(cuda::launch_finalize(s.data_ptr(), f.C * 3, 3, f, to_dtype(acc),
                                           loss.data_ptr(), coef.data_ptr(), ce_coef.data_ptr(),
                                           current_stream(stats.get_device())));
  return {loss, coef, ce_coef};
}

}  // namespace

const Phases* cuda_phases() {
  static const Phases phases{&stats, &stats_backward, &finalize};
  return &phases;
}

}  // namespace softiou
