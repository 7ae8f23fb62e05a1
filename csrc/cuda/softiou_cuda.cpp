// CUDA implementation of softiou::stats and softiou::stats_backward: the torch side of the
// torch-free kernels in kernels.cu. Runs on the current stream, allocates its workspace from
// torch's caching allocator (so it is CUDA-graph capturable) and never synchronises with the host;
// bad values stop the kernels with a device-side assert, like F.cross_entropy.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../op_common.h"
#include "kernels.h"

namespace softiou {
namespace {

at::Tensor workspace(int64_t elems, const Prepared& p, const at::Tensor& like) {
  return at::empty({std::max<int64_t>(elems, 1)}, like.options().dtype(p.acc));
}

at::Tensor stats_cuda(const at::Tensor& input, const at::Tensor& target,
                      const std::optional<at::Tensor>& weight, c10::string_view mode,
                      bool from_logits, double sharpness, c10::string_view intersection,
                      std::optional<int64_t> ignore_index) {
  c10::cuda::CUDAGuard guard(input.device());
  Prepared p = prepare(input, target, weight, mode, from_logits, sharpness, intersection,
                       ignore_index);
  if (p.empty) return stats_output(input, p).zero_();
  at::Tensor out = stats_output(input, p);
  const int dev = input.get_device();
  const cuda::Plan plan = cuda::plan_stats(p.args, dev);
  at::Tensor partials = workspace(plan.partial_elems, p, input);
  at::Tensor pixel = workspace(plan.pixel_elems, p, input);
  C10_CUDA_CHECK(cuda::launch_stats(p.args, partials.data_ptr(), pixel.data_ptr(),
                                    out.data_ptr(), dev, c10::cuda::getCurrentCUDAStream(dev)));
  return out;
}

at::Tensor stats_backward_cuda(const at::Tensor& grad_stats, const at::Tensor& input,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               c10::string_view mode, bool from_logits, double sharpness,
                               c10::string_view intersection,
                               std::optional<int64_t> ignore_index) {
  c10::cuda::CUDAGuard guard(input.device());
  Prepared p = prepare(input, target, weight, mode, from_logits, sharpness, intersection,
                       ignore_index);
  check_grad_stats(grad_stats, input);
  if (p.empty) return at::zeros_like(input);
  at::Tensor gx = prepare_backward(p, grad_stats);
  const int dev = input.get_device();
  const cuda::Plan plan = cuda::plan_backward(p.args, dev);
  at::Tensor pixel = workspace(plan.pixel_elems, p, input);
  C10_CUDA_CHECK(cuda::launch_backward(p.args, pixel.data_ptr(), dev,
                                       c10::cuda::getCurrentCUDAStream(dev)));
  return gx.view(input.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(softiou, CUDA, m) {
  m.impl("stats", &stats_cuda);
  m.impl("stats_backward", &stats_backward_cuda);
}

}  // namespace softiou
