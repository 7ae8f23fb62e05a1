// The phases of a call as a device implements them (cpu/phases.cpp, cuda/phases.cpp), with the
// options parsed and checked. The operators' kernels (ops/library.cpp) run them, or the Triton
// backend's operators when the backend argument says so.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "../generated/options.h"

namespace softiou {

struct Phases {
  // the statistics pass: ([N, C, 3] I, P, Y; [N, 2] the cross-entropy's sums, zeros without it;
  // with counts.return_stat_scores [N, C, 4] int64 tp, fp, tn, fn, else [0])
  std::tuple<at::Tensor, at::Tensor, at::Tensor> (*stats)(
      const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
      const std::optional<at::Tensor>& class_weight, const StatsOptions& o,
      const CountsOptions& counts);
  // the gradient pass (softiou::stats_backward's arguments)
  at::Tensor (*stats_backward)(const at::Tensor& grad_stats,
                               const std::optional<at::Tensor>& grad_ce,
                               const std::optional<at::Tensor>& grad_out,
                               const at::Tensor& input, const at::Tensor& target,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& class_weight,
                               const StatsOptions& o);
  // the finalize step: (loss, coef [rows, C, 3], ce_coef [1, 2])
  std::tuple<at::Tensor, at::Tensor, at::Tensor> (*finalize)(
      const at::Tensor& stats, const std::optional<at::Tensor>& ce,
      const std::optional<at::Tensor>& class_weight, const FinalizeOptions& o);
};

const Phases& cpu_phases();
const Phases* cuda_phases();  // null where the CUDA kernels were not built

// The CUDA kernels emulated on the CPU (csrc/cuda/emulation, built by tools/cuda_emulation.py
// for the tests): once set, backend="cuda" on CPU tensors runs them. Null: not set.
void set_cuda_emulation(const Phases* phases);
const Phases* cuda_emulation();

}  // namespace softiou
