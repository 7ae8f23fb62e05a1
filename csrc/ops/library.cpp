// The softiou operators (TORCH_LIBRARY), their schemas generated from the option declaration
// (softiou_cuda/options.py), and their kernels below autograd:
//
//   softiou::stats           the statistics pass                 the phases: on each device the
//   softiou::stats_backward  the gradient pass                   native kernels or the Triton
//   softiou::finalize        from the statistics to the loss     backend's
//   softiou::loss            the loss, their composition
//
// Each kernel parses and checks its options (the rules and messages of the declaration), then
// runs the native kernels of the tensors' device (cpu/phases.cpp, cuda/phases.cpp) or, for
// backend="triton", the Triton backend's operator of the same phase (softiou::triton_*,
// registered by softiou_cuda.triton_kernels with the same arguments): the policy of "auto" beyond
// "the native kernels of the device" (a fallback to Triton or to the reference) is
// softiou_cuda/route.py's. The autograd of the four operators is in autograd.cpp, their fake
// kernels in softiou_cuda/operators.py.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <atomic>

#include "../generated/operators.h"
#include "library.h"
#include "phases.h"

namespace softiou {

using StatsKernelSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, SOFTIOU_STATS_KERNEL_OPTIONS);
using StatsBackwardKernelSig = at::Tensor(
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, SOFTIOU_STATS_BACKWARD_KERNEL_OPTIONS);
using FinalizeKernelSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    SOFTIOU_FINALIZE_KERNEL_OPTIONS);

#ifndef SOFTIOU_WITH_CUDA
const Phases* cuda_phases() { return nullptr; }  // built without the CUDA kernels
#endif

namespace {
std::atomic<const Phases*> emulated_cuda{nullptr};
}  // namespace
void set_cuda_emulation(const Phases* phases) { emulated_cuda.store(phases); }
const Phases* cuda_emulation() { return emulated_cuda.load(); }

namespace {

// The native kernels for `backend` on `device`, or nullptr where the Triton backend's operator
// runs the phase; a clear error where neither can.
const Phases* native_phases(c10::string_view backend, const at::Device& device) {
  const Backend b = parse_backend(backend);
  if (b == Backend::kTriton) return nullptr;
  TORCH_CHECK_VALUE(b != Backend::kReference, "softiou: backend='reference' is the eager PyTorch ",
                    "reference, which the operators do not run: call softiou_cuda.soft_iou_loss");
  if (device.is_cpu()) {
    if (b == Backend::kCuda && cuda_emulation() != nullptr) return cuda_emulation();
    TORCH_CHECK_VALUE(b != Backend::kCuda, "softiou: backend='cuda' cannot run on cpu tensors");
    return &cpu_phases();
  }
  TORCH_CHECK_VALUE(device.is_cuda() && b != Backend::kCpu, "softiou: backend='", name(b),
                    "' cannot run on ", device.type(), " tensors");
  const Phases* cuda = cuda_phases();
  TORCH_CHECK_VALUE(cuda != nullptr, "softiou: the extension was built without its CUDA kernels; "
                    "pass backend='triton' (with triton installed) or rebuild with FORCE_CUDA=1");
  return cuda;
}

// The Triton backend's operator of a phase (registered when softiou_cuda.triton_kernels loads).
template <class Sig>
const c10::TypedOperatorHandle<Sig>& triton_op(const char* name) {
  static const auto op = [name] {
    const auto handle = c10::Dispatcher::singleton().findOp({name, ""});
    TORCH_CHECK_VALUE(handle.has_value(), "softiou: backend='triton' needs softiou's Triton ",
                      "kernels, which are registered when triton is installed and ",
                      "softiou_cuda.triton_kernels is imported; ", name, " is not registered");
    return handle->typed<Sig>();
  }();
  return op;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stats_kernel(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& class_weight, SOFTIOU_STATS_OPTIONS) {
  const StatsOptions o = parse_stats_options(SOFTIOU_PHASE_STATISTICS_ARGS);
  const CountsOptions counts = parse_counts_options(SOFTIOU_PHASE_COUNTS_ARGS);
  const Phases* native = native_phases(backend, input.device());
  if (native == nullptr) {
    return triton_op<StatsKernelSig>(kTritonStatsName)
        .call(input, target, weight, class_weight, SOFTIOU_STATS_KERNEL_ARGS);
  }
  return native->stats(input, target, weight, class_weight, o, counts);
}

at::Tensor stats_backward_kernel(const at::Tensor& grad_stats,
                                 const std::optional<at::Tensor>& grad_ce,
                                 const std::optional<at::Tensor>& grad_out,
                                 const at::Tensor& input, const at::Tensor& target,
                                 const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& class_weight,
                                 SOFTIOU_STATS_BACKWARD_OPTIONS) {
  const StatsOptions o = parse_stats_options(SOFTIOU_PHASE_STATISTICS_ARGS);
  const Phases* native = native_phases(backend, input.device());
  if (native == nullptr) {
    return triton_op<StatsBackwardKernelSig>(kTritonStatsBackwardName)
        .call(grad_stats, grad_ce, grad_out, input, target, weight, class_weight,
              SOFTIOU_STATS_BACKWARD_KERNEL_ARGS);
  }
  return native->stats_backward(grad_stats, grad_ce, grad_out, input, target, weight,
                                class_weight, o);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> finalize_kernel(
    const at::Tensor& stats, const std::optional<at::Tensor>& ce,
    const std::optional<at::Tensor>& class_weight, SOFTIOU_FINALIZE_OPTIONS) {
  const FinalizeOptions o = parse_finalize_options(SOFTIOU_FINALIZE_KERNEL_ARGS);
  const Phases* native = native_phases(backend, stats.device());
  if (native == nullptr) {
    if (stats.dim() == 3) {
      check_finalize_input(o, stats.size(1), class_weight.has_value() && class_weight->defined());
    }
    return triton_op<FinalizeKernelSig>(kTritonFinalizeName)
        .call(stats, ce, class_weight, SOFTIOU_FINALIZE_KERNEL_ARGS);
  }
  return native->finalize(stats, ce, class_weight, o);
}

// softiou::loss below autograd, on any device (fake tensors included): the statistics, then the
// finalize step.
at::Tensor loss_composite(const at::Tensor& input, const at::Tensor& target,
                          const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& class_weight, SOFTIOU_LOSS_OPTIONS) {
  const auto [stats, ce, counts] = stats_op().call(
      input, target, weight, class_weight, SOFTIOU_PHASE_STATISTICS_ARGS, SOFTIOU_COUNTS_DEFAULTS,
      backend);
  return std::get<0>(finalize_op().call(stats, ce, class_weight, SOFTIOU_FINALIZE_ARGS));
}

}  // namespace

const c10::TypedOperatorHandle<StatsSig>& stats_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("softiou::stats", "").typed<StatsSig>();
  return op;
}

const c10::TypedOperatorHandle<StatsBackwardSig>& stats_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("softiou::stats_backward", "")
                             .typed<StatsBackwardSig>();
  return op;
}

const c10::TypedOperatorHandle<FinalizeSig>& finalize_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("softiou::finalize", "")
                             .typed<FinalizeSig>();
  return op;
}

const c10::TypedOperatorHandle<LossSig>& loss_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("softiou::loss", "").typed<LossSig>();
  return op;
}

TORCH_LIBRARY(softiou, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(kLossSchema, tags);
  m.def(kStatsSchema, tags);
  m.def(kStatsBackwardSchema, tags);
  m.def(kFinalizeSchema, tags);
}

// The phases' kernels for both devices (a build without the CUDA kernels still routes CUDA
// tensors to the Triton backend, or says why it cannot).
TORCH_LIBRARY_IMPL(softiou, CPU, m) {
  m.impl("stats", &stats_kernel);
  m.impl("stats_backward", &stats_backward_kernel);
  m.impl("finalize", &finalize_kernel);
}

TORCH_LIBRARY_IMPL(softiou, CUDA, m) {
  m.impl("stats", &stats_kernel);
  m.impl("stats_backward", &stats_backward_kernel);
  m.impl("finalize", &finalize_kernel);
}

TORCH_LIBRARY_IMPL(softiou, CompositeExplicitAutograd, m) { m.impl("loss", &loss_composite); }

}  // namespace softiou
