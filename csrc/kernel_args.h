// Torch-free description of one softiou kernel call, shared by the CPU and CUDA kernels.
//
// The torch glue (op_common.h) turns tensors into this struct: the input is viewed as [N, C, M]
// (M = the flattened spatial extent) with three strides, so contiguous, channels_last and most
// sliced tensors are read in place without a copy.
#pragma once

#include <cmath>
#include <cstdint>

#include "generated/options.h"

namespace softiou {

enum class DType : int32_t {
  kFloat32 = 0,
  kFloat64 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
  kBool = 4,
  kUInt8 = 5,
  kInt32 = 6,
  kInt64 = 7,
};

// How the probabilities p are made from the input (SPEC section 2).
enum class Prob : int32_t {
  kSoftmax = 0,   // multiclass: p = softmax(l) over C, l = a*x (logits) or a*log(x) (probabilities, a != 1)
  kSigmoid = 1,   // binary/multilabel: p = sigmoid(z), z = a*x (logits) or a*logit(x) (probabilities, a != 1)
  kIdentity = 2,  // probabilities with sharpness 1: p = x
};

// Why a kernel rejected its input (SPEC section 7). The CPU kernels report the first one;
// the CUDA kernels raise a device-side assert.
enum class InputError : int32_t {
  kNone = 0,
  kClassIndex = 1,    // class map value outside [0, C) and not the ignored value
  kBinaryTarget = 2,  // integer binary/multilabel target not in {0, 1} and not the ignored value
  kDenseTarget = 3,   // dense target outside [0, 1]
  kNegativeWeight = 4,
  kProbability = 5,   // from_logits=False and an input value outside [0, 1]
};

struct KernelArgs {
  // input [N, C, M]
  const void* x = nullptr;
  DType x_dtype = DType::kFloat32;
  int64_t x_sN = 0, x_sC = 0, x_sM = 0;

  // target: class map [N, M] (class_map = true; t_sC unused) or per element [N, C, M]
  const void* t = nullptr;
  DType t_dtype = DType::kInt64;
  int64_t t_sN = 0, t_sC = 0, t_sM = 0;
  bool class_map = false;

  // per-pixel weight [N, M] stored in the accumulation dtype (float, or double for float64 input);
  // nullptr means weight 1
  const void* w = nullptr;
  int64_t w_sN = 0, w_sM = 0;

  int64_t N = 0, C = 0, M = 0;

  // the statistics phase's options (softiou_cuda/options.py), and what follows from them and the
  // tensors: how p is made (probabilities_of), and whether the forward sums the cross-entropy
  StatsOptions options;
  Prob prob = Prob::kSoftmax;

  // backward only. The gradient of the loss with respect to I and P of pair (n, c) is
  //   go * coef[n*co_sN + c*co_sC] (I) and go * coef[n*co_sN + c*co_sC + co_sK] (P),
  //   go = grad_out[n*go_sN + c*go_sC], or 1 when grad_out is null
  // (accumulation dtype; a zero stride broadcasts: pooled coefficients, a scalar grad_out).
  // stats_backward passes grad_stats [N, C, 3] as coef; the loss passes the finalize step's
  // coefficients and the gradient of its output.
  const void* coef = nullptr;
  int64_t co_sN = 0, co_sC = 0, co_sK = 1;
  const void* grad_out = nullptr;
  int64_t go_sN = 0, go_sC = 0;
  // the gradient of the input [N, C, M] (input dtype, strides g_s*)
  void* grad_x = nullptr;

  // SPEC section 9, the cross-entropy term. Forward (ce = true): the statistics pass also adds
  // up, per item, its numerator sum v w l and its denominator (the two values after an item's
  // C x 3 statistics). Backward: ce_coef[n * ce_sN] times the gradient of the loss is
  // d loss / d numerator of sample n (null: no term). class_weight: the term's class weights
  // c_k, [C], accumulation dtype, contiguous (null: 1).
  bool ce = false;
  const void* class_weight = nullptr;
  const void* ce_coef = nullptr;
  int64_t ce_sN = 0;
  int64_t g_sN = 0, g_sC = 0, g_sM = 0;

  // SPEC section 11, the hard counts (statistics pass, stat_scores): where counts is not null,
  // each work item also counts, per class, [tp, predicted, target, kept] into its own row of
  // counts (int64; the CPU's rows are per item, laid out as cpu/kernels.h's counts_row says, and
  // the glue adds them per sample). A binary or
  // multilabel element is predicted where x > count_threshold: log(t / (1 - t)) for logits (the
  // exact order of sigmoid(x) > t), t rounded to the input dtype for probabilities.
  int64_t* counts = nullptr;
  double count_threshold = 0.0;
};

// Whether a statistics pass counts (SPEC section 11).
inline bool counts_wanted(const CountsOptions& c) { return c.return_stat_scores; }

// The input-space threshold of the binary/multilabel hard prediction (SPEC section 11), for an
// input dtype whose rounding of t is round_to_input.
template <class Round>
inline double count_threshold_of(const StatsOptions& o, const CountsOptions& c,
                                 Round&& round_to_input) {
  if (o.from_logits) return std::log(c.threshold) - std::log1p(-c.threshold);
  return round_to_input(c.threshold);
}

inline bool accumulates_in_double(const KernelArgs& a) { return a.x_dtype == DType::kFloat64; }

// Whether a statistics pass sums the cross-entropy term (SPEC section 9).
inline bool sums_cross_entropy(const StatsOptions& o) { return o.ce_weight > 0; }

// How the probabilities are made (SPEC section 2): a softmax over the classes or a sigmoid per
// element, of logits or of probabilities raised to the sharpness; probabilities with sharpness 1
// are used as they are.
inline Prob probabilities_of(const StatsOptions& o) {
  if (!o.from_logits && o.sharpness == 1.0) return Prob::kIdentity;
  return o.mode == Mode::kMulticlass ? Prob::kSoftmax : Prob::kSigmoid;
}

}  // namespace softiou
