// CUDA implementation of the softiou operators (schemas in ops.cpp): the torch side of the
// torch-free kernels in kernels.cu. Runs on the current stream, takes its workspaces from torch's
// caching allocator directly (so a call allocates through the dispatcher only the tensors it
// returns, and is CUDA-graph capturable), and never synchronises with the host; bad values stop
// the kernels with a device-side assert, like F.cross_entropy.
//
//   _loss_forward:  statistics kernel(s) + second stage + finalize kernel -> (loss, coef)
//   _loss_backward: one gradient kernel reading coef and the gradient of the loss
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../op_common.h"
#include "../ops.h"
#include "kernels.h"

namespace softiou {
namespace {

// Scratch memory of one call, in accumulation-dtype elements, freed when the call returns (the
// caching allocator keeps stream order: the kernels queued on this stream finish first).
at::DataPtr workspace(int64_t elems, at::ScalarType acc) {
  const size_t bytes = size_t(std::max<int64_t>(elems, 1)) * at::elementSize(acc);
  return c10::cuda::CUDACachingAllocator::get()->allocate(bytes);
}

// The workspaces of one statistics pass: the partial sums (which also hold the cross-entropy
// term's, read by the finalize step) and the wide softmax's per-pixel values.
struct StatsWork {
  cuda::Plan plan;
  at::DataPtr partials, pixel;
};

// The statistics [N][C][3] into `out` (accumulation dtype), zeros for an empty input.
StatsWork compute_stats(const Prepared& p, void* out, int dev, cudaStream_t stream) {
  StatsWork work;
  if (p.empty) {
    C10_CUDA_CHECK(cudaMemsetAsync(out, 0, size_t(p.N * p.C * 3) * at::elementSize(p.acc),
                                   stream));
    return work;
  }
  work.plan = cuda::plan_stats(p.args, dev);
  work.partials = workspace(work.plan.partial_elems, p.acc);
  work.pixel = workspace(work.plan.pixel_elems, p.acc);
  C10_CUDA_CHECK(cuda::launch_stats(p.args, work.partials.get(), work.pixel.get(), out, dev,
                                    stream));
  return work;
}

void gradient_pass(const Prepared& p, int dev, cudaStream_t stream) {
  const cuda::Plan plan = cuda::plan_backward(p.args, dev);
  at::DataPtr pixel = workspace(plan.pixel_elems, p.acc);
  C10_CUDA_CHECK(cuda::launch_backward(p.args, pixel.get(), dev, stream));
}

void finalize(const void* stats, int64_t s_n, int64_t s_c, const Finalize& fin,
              at::ScalarType acc, const at::Tensor& loss, const at::Tensor& coef,
              cudaStream_t stream) {
  C10_CUDA_CHECK(cuda::launch_finalize(stats, s_n, s_c, fin.args, to_dtype(acc), loss.data_ptr(),
                                       coef.data_ptr(), stream));
}

at::Tensor stats_cuda(const at::Tensor& input, const at::Tensor& target,
                      const std::optional<at::Tensor>& weight, c10::string_view mode,
                      bool from_logits, double sharpness, c10::string_view intersection,
                      std::optional<int64_t> ignore_index, bool squared) {
  c10::cuda::CUDAGuard guard(input.device());
  Prepared p = prepare(input, target, weight, mode, from_logits, sharpness, intersection,
                       ignore_index, squared, Shapes::kNormalized);
  at::Tensor out = at::empty({p.N, p.C, 3}, input.options().dtype(p.acc));
  const int dev = input.get_device();
  compute_stats(p, out.data_ptr(), dev, c10::cuda::getCurrentCUDAStream(dev));
  return out;
}

std::tuple<at::Tensor, at::Tensor> stats_ce_cuda(const at::Tensor& input,
                                                 const at::Tensor& target,
                                                 const std::optional<at::Tensor>& weight,
                                                 const std::optional<at::Tensor>& class_weight,
                                                 const CrossEntropyOptions& o) {
  c10::cuda::CUDAGuard guard(input.device());
  Prepared p = prepare(input, target, weight, o.mode, o.from_logits, o.sharpness, o.intersection,
                       o.ignore_index, o.squared, Shapes::kNormalized);
  const at::Tensor cw = prepare_cross_entropy(p, o, class_weight, input.device(), true);
  at::Tensor out = at::empty({p.N, p.C, 3}, input.options().dtype(p.acc));
  at::Tensor ce = at::empty({p.N, 2}, input.options().dtype(p.acc));
  const int dev = input.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev);
  StatsWork work = compute_stats(p, out.data_ptr(), dev, stream);
  if (p.empty) {
    C10_CUDA_CHECK(cudaMemsetAsync(ce.data_ptr(), 0, ce.nbytes(), stream));
  } else {
    C10_CUDA_CHECK(cuda::launch_ce_reduce(work.partials.get(), work.plan, p.N, to_dtype(p.acc),
                                          ce.data_ptr(), stream));
  }
  return {out, ce};
}

at::Tensor stats_ce_backward_cuda(const at::Tensor& grad_stats,
                                  const std::optional<at::Tensor>& grad_ce,
                                  const at::Tensor& input, const at::Tensor& target,
                                  const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& class_weight,
                                  const CrossEntropyOptions& o) {
  c10::cuda::CUDAGuard guard(input.device());
  Prepared p = prepare(input, target, weight, o.mode, o.from_logits, o.sharpness, o.intersection,
                       o.ignore_index, o.squared, Shapes::kNormalized);
  const at::Tensor cw = prepare_cross_entropy(p, o, class_weight, input.device(), false);
  const at::Tensor g = use_grad_stats(p, grad_stats, input);
  const at::Tensor gce = use_grad_ce(p, grad_ce, input);
  if (p.empty) return at::zeros_like(input);
  at::Tensor gx = allocate_grad(p, input);
  const int dev = input.get_device();
  gradient_pass(p, dev, c10::cuda::getCurrentCUDAStream(dev));
  return gx;
}

at::Tensor stats_backward_cuda(const at::Tensor& grad_stats, const at::Tensor& input,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               c10::string_view mode, bool from_logits, double sharpness,
                               c10::string_view intersection,
                               std::optional<int64_t> ignore_index, bool squared) {
  c10::cuda::CUDAGuard guard(input.device());
  Prepared p = prepare(input, target, weight, mode, from_logits, sharpness, intersection,
                       ignore_index, squared, Shapes::kNormalized);
  const at::Tensor g = use_grad_stats(p, grad_stats, input);
  if (p.empty) return at::zeros_like(input);
  at::Tensor gx = allocate_grad(p, input);
  const int dev = input.get_device();
  gradient_pass(p, dev, c10::cuda::getCurrentCUDAStream(dev));
  return gx;
}

std::tuple<at::Tensor, at::Tensor> loss_forward_cuda(const at::Tensor& input,
                                                     const at::Tensor& target,
                                                     const std::optional<at::Tensor>& weight,
                                                     const std::optional<at::Tensor>& class_weight,
                                                     const LossOptions& o) {
  c10::cuda::CUDAGuard guard(input.device());
  Prepared p = prepare(input, target, weight, o.mode, o.from_logits, o.sharpness, o.intersection,
                       o.ignore_index, o.squared, Shapes::kUser);
  Finalize fin = prepare_loss(p, o, class_weight, input.device(), true);
  at::Tensor loss = at::empty(loss_shape(fin.args), input.options().dtype(p.acc));
  at::Tensor coef = at::empty({coef_elems(fin.args)}, input.options().dtype(p.acc));
  const int dev = input.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev);
  at::DataPtr stats = workspace(p.N * p.C * 3, p.acc);
  StatsWork work = compute_stats(p, stats.get(), dev, stream);
  if (fin.args.ce_weight > 0 && !p.empty) {  // the term's entries are in the partial sums
    fin.args.ce = static_cast<const char*>(work.partials.get()) +
                  work.plan.ce_offset * at::elementSize(p.acc);
    fin.args.ce_sN = work.plan.ce_stride;
    fin.args.ce_count = work.plan.ce_entries;
  }
  finalize(stats.get(), p.C * 3, 3, fin, p.acc, loss, coef, stream);
  return {loss, coef};
}

at::Tensor loss_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                              const at::Tensor& target, const std::optional<at::Tensor>& weight,
                              const at::Tensor& coef,
                              const std::optional<at::Tensor>& class_weight,
                              const LossOptions& o) {
  c10::cuda::CUDAGuard guard(input.device());
  Prepared p = prepare(input, target, weight, o.mode, o.from_logits, o.sharpness, o.intersection,
                       o.ignore_index, o.squared, Shapes::kUser);
  if (p.empty) return at::zeros_like(input);
  const Finalize fin = prepare_loss(p, o, class_weight, input.device(), false);
  const at::Tensor g = use_loss_grad(p, coef, grad, fin.args);
  at::Tensor gx = allocate_grad(p, input);
  const int dev = input.get_device();
  gradient_pass(p, dev, c10::cuda::getCurrentCUDAStream(dev));
  return gx;
}

std::tuple<at::Tensor, at::Tensor> finalize_cuda(const at::Tensor& stats,
                                                 const std::optional<at::Tensor>& class_weight,
                                                 const FinalizeOptions& o) {
  c10::cuda::CUDAGuard guard(stats.device());
  check_stats(stats);
  const at::ScalarType acc = stats.scalar_type();
  const Finalize fin = parse_finalize(stats.size(0), stats.size(1), stats.device(), acc, o,
                                      class_weight);
  at::Tensor loss = at::empty(loss_shape(fin.args), stats.options());
  at::Tensor coef = at::empty({fin.args.rows(), fin.args.C, 3}, stats.options());
  const at::Tensor s = stats.contiguous();
  finalize(s.data_ptr(), fin.args.C * 3, 3, fin, acc, loss, coef,
           c10::cuda::getCurrentCUDAStream(stats.get_device()));
  return {loss, coef};
}

}  // namespace

TORCH_LIBRARY_IMPL(softiou, CUDA, m) {
  m.impl("loss", &loss_kernel<&loss_forward_cuda>);
  m.impl("finalize", &finalize_loss_kernel<&finalize_cuda>);
  m.impl("stats", &stats_cuda);
  m.impl("stats_backward", &stats_backward_cuda);
  m.impl("stats_ce", &stats_ce_kernel<&stats_ce_cuda>);
  m.impl("stats_ce_backward", &stats_ce_backward_kernel<&stats_ce_backward_cuda>);
  m.impl("_loss_forward", &loss_forward_kernel<&loss_forward_cuda>);
  m.impl("_loss_backward", &loss_backward_kernel<&loss_backward_cuda>);
  m.impl("_finalize", &finalize_kernel<&finalize_cuda>);
}

}  // namespace softiou
