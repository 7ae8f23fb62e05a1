// Torch-free interface of the CUDA kernels (csrc/cuda/kernels.cu). The torch glue is
// softiou_cuda.cpp; this header and kernels.cu compile with nvcc alone, without PyTorch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../finalize.h"
#include "../kernel_args.h"

namespace softiou {
namespace cuda {

// How a call is cut into launches. Depends only on the shape, the dtypes and the device's
// multiprocessor count, so the reduction order (and every bit of the result) is the same
// run to run.
struct Plan {
  int64_t partial_elems = 0;  // workspace of partial sums, in accumulation-dtype elements
  int64_t pixel_elems = 0;    // per-pixel workspace (softmax over more classes than registers hold)
  // where the cross-entropy term's (numerator, denominator) entries are in the partial sums:
  // entry i at partials[ce_offset + i * ce_stride], ce_per_sample entries per sample
  int64_t ce_entries = 0, ce_per_sample = 0, ce_stride = 0, ce_offset = 0;
};

// Statistics: writes out[N][C][3] (accumulation dtype). `partials` and `pixel` must hold
// plan.partial_elems and plan.pixel_elems accumulation-dtype elements. counts: null, or where
// counts_in_stats(a) the hard counts as launch_counts writes them, from the same pass.
Plan plan_stats(const KernelArgs& a, int device);
cudaError_t launch_stats(const KernelArgs& a, void* partials, void* pixel, void* out,
                         void* counts, int device, cudaStream_t stream);
// Whether the statistics pass counts too: a multiclass class map whose classes fit one pass of
// the pixel kernel (no wide-softmax prepass), and the binary and multilabel rows. Elsewhere
// (dense multiclass targets, the wide softmax, a multilabel class map of probabilities)
// launch_counts reads the input again.
bool counts_in_stats(const KernelArgs& a, int device);

// The hard counts (SPEC section 11): out[N][C][4] int64 (tp, fp, tn, fn), with
// a.count_threshold set (kernels_counts.cu).
cudaError_t launch_counts(const KernelArgs& a, void* out, int device, cudaStream_t stream);
// counts[pairs][4] from (tp, predicted, target, kept) to (tp, fp, tn, fn), in place.
cudaError_t finish_counts(void* counts, int64_t pairs, cudaStream_t stream);

// Gradient: writes a.grad_x. `pixel` must hold plan_backward(a).pixel_elems elements.
Plan plan_backward(const KernelArgs& a, int device);
cudaError_t launch_backward(const KernelArgs& a, void* pixel, int device, cudaStream_t stream);

// The cross-entropy term's sums per sample, out[N][2], from the statistics' partial sums.
cudaError_t launch_ce_reduce(const void* partials, const Plan& plan, int64_t N, DType acc,
                             void* out, cudaStream_t stream);

// The finalize step (finalize.h) on statistics of dtype `acc` (float32 or float64): value j of
// pair (n, c) at stats[n * s_n + c * s_c + j]. Writes the loss, the coefficients
// [f.rows()][f.C][3] and the cross-entropy term's [2]. One launch of one block.
cudaError_t launch_finalize(const void* stats, int64_t s_n, int64_t s_c, const FinalizeArgs& f,
                            DType acc, void* loss, void* coef, void* coef_ce,
                            cudaStream_t stream);

}  // namespace cuda
}  // namespace softiou
