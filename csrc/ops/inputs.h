// The tensors of a phase as the kernels read them, shared by the CPU and CUDA implementations: the
// input checks of SPEC sections 1 and 7, the [N, C, M] description of the tensors (kernel_args.h),
// the finalize step's arguments (finalize.h), the gradients a gradient pass reads, and the messages
// for bad values the kernels find. The options arrive parsed and checked (generated/operators.h).
//
// Nothing here copies or reshapes a tensor on the common paths: the strides of the [N, C, M] view
// are computed from the tensor's own, so a call costs the dispatcher no view or reshape op. Only
// an input whose spatial dims cannot be walked with one stride (a transposed view) is copied.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>
#include <vector>

#include "../finalize.h"
#include "../kernel_args.h"
#include "../generated/operators.h"

namespace softiou {

inline DType to_dtype(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kBool: return DType::kBool;
    case at::kByte: return DType::kUInt8;
    case at::kInt: return DType::kInt32;
    case at::kLong: return DType::kInt64;
    default: TORCH_CHECK(false, "softiou: unsupported dtype ", s);
  }
}

inline bool is_class_index_dtype(at::ScalarType s) {
  return s == at::kByte || s == at::kInt || s == at::kLong;
}

inline at::ScalarType accumulation_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

// The one stride that walks dims [d0, dim) of t in row-major order, or -1 if there is none (the
// dims are not laid out one after the other, e.g. a transposed view). Dims of size 1 are skipped.
inline int64_t collapsed_stride(const at::Tensor& t, int64_t d0) {
  int64_t stride = 1, next_extent = -1;  // next_extent: size * stride of the next non-1 dim
  bool found = false;
  for (int64_t d = t.dim() - 1; d >= d0; --d) {
    if (t.size(d) == 1) continue;
    if (found && t.stride(d) != next_extent) return -1;
    if (!found) stride = t.stride(d);
    found = true;
    next_extent = t.size(d) * t.stride(d);
  }
  return stride;
}

// The checked arguments as the kernels see them, and the tensors that own the memory.
struct Prepared {
  at::Tensor x, t, w;  // the input, and the target and weight as the kernels read them
  KernelArgs args;
  at::ScalarType acc = at::kFloat;
  int64_t N = 0, C = 0;
  bool channel = true;  // the input has a channel dim (binary [N, *S] input has none)
  bool empty = false;   // N, C or M is 0: nothing to compute
};

namespace detail {

// Points (*data, sN, sC, sM) at t viewed as [N, C, M] (channel dim ch, spatial dims from s0; ch <
// 0: no channel dim). A tensor whose spatial dims have no common stride is copied first.
inline void describe(at::Tensor& t, int64_t ch, int64_t s0, const void*& data, int64_t& sN,
                     int64_t& sC, int64_t& sM) {
  int64_t m = collapsed_stride(t, s0);
  if (m < 0) {
    t = t.contiguous();
    m = collapsed_stride(t, s0);
  }
  data = t.data_ptr();
  sN = t.stride(0);
  sC = ch < 0 || t.size(ch) == 1 ? 0 : t.stride(ch);
  sM = m;
}

}  // namespace detail

// The arguments of a statistics or gradient pass, checked (SPEC sections 1 and 7): input
// [N, C, *S] (binary also [N, *S]), a target shaped like it or a class map [N, *S], a weight
// [N, *S].
inline Prepared prepare(const at::Tensor& input, const at::Tensor& target,
                        const std::optional<at::Tensor>& weight, const StatsOptions& o) {
  Prepared p;
  const bool multiclass = o.mode == Mode::kMulticlass, binary = o.mode == Mode::kBinary;
  const char* mode = name(o.mode);
  const auto xs = input.scalar_type();
  TORCH_CHECK_VALUE(xs == at::kFloat || xs == at::kDouble || xs == at::kHalf ||
                        xs == at::kBFloat16,
                    "softiou: input must be float32, float64, float16 or bfloat16; got ", xs);
  TORCH_CHECK_VALUE(target.device() == input.device(), "softiou: target is on ", target.device(),
                    " but input is on ", input.device());

  // binary input [N, *S] (no channel dim) is read as [N, 1, *S]
  const bool channel = !(binary && !(input.dim() >= 3 && input.size(1) == 1));
  if (channel) {
    TORCH_CHECK_VALUE(input.dim() >= 3, "softiou: ", mode, " input must be ",
                      "[N, C, *spatial] with at least one spatial dim; got shape ",
                      input.sizes());
  } else {
    TORCH_CHECK_VALUE(input.dim() >= 2, "softiou: binary input must be [N, *spatial] or ",
                      "[N, 1, *spatial]; got shape ", input.sizes());
  }
  const int64_t s0 = channel ? 2 : 1;  // first spatial dim of the input
  const int64_t N = input.size(0), C = channel ? input.size(1) : 1;
  TORCH_CHECK_VALUE(!multiclass || C >= 2, "softiou: multiclass mode needs C >= 2 channels; got ",
                    "input shape ", input.sizes(), " (use mode='binary' for one channel)");
  const at::IntArrayRef spatial = input.sizes().slice(s0);
  int64_t M = 1;
  for (auto s : spatial) M *= s;
  std::vector<int64_t> map_shape{N};  // [N, *S]
  map_shape.insert(map_shape.end(), spatial.begin(), spatial.end());
  std::vector<int64_t> with_channel{N, C};  // [N, C, *S]
  with_channel.insert(with_channel.end(), spatial.begin(), spatial.end());

  const auto ts = target.scalar_type();
  const bool integer_target = is_class_index_dtype(ts);
  const bool dense_target = at::isFloatingType(ts) || ts == at::kBool;
  TORCH_CHECK_VALUE(integer_target || dense_target, "softiou: target must be an integer class ",
                    "map (int64, int32, uint8) or a dense float/half/bool tensor; got ", ts);
  // a class map: an integer multiclass target, or an integer multilabel target without the
  // channel dim (SPEC section 10)
  const bool class_map =
      integer_target && (multiclass || (o.mode == Mode::kMultilabel &&
                                        target.sizes() == at::IntArrayRef(map_shape)));
  check_stats_input(o, /*dense_target=*/!integer_target);
  // the target's channel dim: a class map has none, nor has a binary target shaped [N, *S]
  int64_t t_channel = 1;
  if (class_map) {
    TORCH_CHECK_VALUE(target.sizes() == at::IntArrayRef(map_shape), "softiou: target class map ",
                      "must have shape [N, *spatial] = ", at::IntArrayRef(map_shape), "; got ",
                      target.sizes());
    t_channel = -1;
  } else if (target.sizes() == at::IntArrayRef(with_channel)) {
    t_channel = 1;
  } else if (binary && target.sizes() == at::IntArrayRef(map_shape)) {
    t_channel = -1;
  } else {
    TORCH_CHECK_VALUE(false, "softiou: target must have shape ", at::IntArrayRef(with_channel),
                      binary ? " or " + c10::str(at::IntArrayRef(map_shape)) : std::string(),
                      " for ", mode, " input of shape ", input.sizes(), "; got ",
                      target.sizes());
  }

  p.acc = accumulation_dtype(xs);
  std::optional<at::Tensor> w;
  int64_t w_s0 = 1;
  if (weight.has_value() && weight->defined()) {
    const auto& wt = *weight;
    TORCH_CHECK_VALUE(wt.device() == input.device(), "softiou: weight is on ", wt.device(),
                      " but input is on ", input.device());
    TORCH_CHECK_VALUE(at::isFloatingType(wt.scalar_type()), "softiou: weight must be a ",
                      "floating tensor; got ", wt.scalar_type());
    std::vector<int64_t> w_channel{N, 1};
    w_channel.insert(w_channel.end(), spatial.begin(), spatial.end());
    TORCH_CHECK_VALUE(wt.sizes() == at::IntArrayRef(map_shape) ||
                          wt.sizes() == at::IntArrayRef(w_channel),
                      "softiou: weight must have shape [N, *spatial] = ",
                      at::IntArrayRef(map_shape), "; got ", wt.sizes());
    w_s0 = wt.dim() == int64_t(map_shape.size()) ? 1 : 2;
    w = wt;
  }

  p.N = N;
  p.C = C;
  p.channel = channel;
  p.empty = N == 0 || C == 0 || M == 0;
  if (p.empty) return p;

  KernelArgs& a = p.args;
  p.x = input;
  detail::describe(p.x, channel ? 1 : -1, s0, a.x, a.x_sN, a.x_sC, a.x_sM);
  a.x_dtype = to_dtype(xs);
  // dense targets are read as the input dtype, the accumulation dtype or bool
  p.t = dense_target && ts != xs && ts != at::kBool && ts != p.acc ? target.to(p.acc) : target;
  detail::describe(p.t, t_channel, t_channel < 0 ? 1 : 2, a.t, a.t_sN, a.t_sC, a.t_sM);
  a.t_dtype = to_dtype(p.t.scalar_type());
  a.class_map = class_map;
  if (w.has_value()) {
    p.w = w->scalar_type() == p.acc ? *w : w->to(p.acc);
    int64_t unused = 0;
    detail::describe(p.w, -1, w_s0, a.w, a.w_sN, unused, a.w_sM);
  }
  a.N = N;
  a.C = C;
  a.M = M;
  a.options = o;
  a.prob = probabilities_of(o);
  return p;
}

// The gradient of the input, laid out like the input where its spatial dims share one stride
// (contiguous, channels_last, slices) and contiguous otherwise; points the kernel arguments at it.
inline at::Tensor allocate_grad(Prepared& p, const at::Tensor& input) {
  const int64_t s0 = p.channel ? 2 : 1;
  at::Tensor gx = input.is_contiguous() ? at::empty(input.sizes(), input.options())
                                        : at::empty_like(input);
  if (collapsed_stride(gx, s0) < 0) gx = at::empty(input.sizes(), input.options());
  const void* data = nullptr;
  detail::describe(gx, p.channel ? 1 : -1, s0, data, p.args.g_sN, p.args.g_sC, p.args.g_sM);
  p.args.grad_x = gx.data_ptr();
  return gx;
}

namespace detail {

// The stride of a tensor's dim d as a broadcast against `extent`: 0 where the dim has size 1.
inline int64_t broadcast_stride(const at::Tensor& t, int64_t d, int64_t extent, const char* name,
                                const char* what) {
  TORCH_CHECK_VALUE(t.size(d) == 1 || t.size(d) == extent, "softiou: ", name, " must have shape ",
                    what, "; got ", t.sizes());
  return t.size(d) == 1 ? 0 : t.stride(d);
}

inline at::Tensor in_accumulation_dtype(const at::Tensor& t, at::ScalarType acc,
                                        const at::Tensor& input, const char* name) {
  TORCH_CHECK_VALUE(t.device() == input.device(), "softiou: ", name, " is on ", t.device(),
                    " but input is on ", input.device());
  return t.scalar_type() == acc ? t : t.to(acc);
}

}  // namespace detail

// Points the kernel arguments at the gradients a gradient pass reads (softiou::stats_backward):
// d / d(I, P, Y) of every pair, grad_stats [N or 1, C, 3]; d / d(the cross-entropy's numerator,
// denominator) of every sample, grad_ce [N or 1, 2] (read where the term is on); both times
// grad_out, the
// gradient of a loss of shape [], [C], [rows, C] or [rows, 1] (none: 1), broadcast over the
// pairs [N, C]. Returns the tensors that own the memory.
inline std::vector<at::Tensor> use_gradients(Prepared& p, const at::Tensor& grad_stats,
                                             const std::optional<at::Tensor>& grad_ce,
                                             const std::optional<at::Tensor>& grad_out,
                                             const at::Tensor& input) {
  KernelArgs& a = p.args;
  std::vector<at::Tensor> owned;
  TORCH_CHECK_VALUE(grad_stats.dim() == 3 && grad_stats.size(1) == p.C && grad_stats.size(2) == 3,
                    "softiou: grad_stats must have shape [N, C, 3] or [1, C, 3] with N, C = ", p.N,
                    ", ", p.C, "; got ", grad_stats.sizes());
  const at::Tensor g = detail::in_accumulation_dtype(grad_stats, p.acc, input, "grad_stats");
  a.coef = g.data_ptr();
  a.co_sN = detail::broadcast_stride(g, 0, p.N, "grad_stats", "[N, C, 3] or [1, C, 3]");
  a.co_sC = g.stride(1);
  a.co_sK = g.stride(2);
  owned.push_back(g);
  if (grad_out.has_value() && grad_out->defined()) {
    const at::Tensor go = detail::in_accumulation_dtype(*grad_out, p.acc, input, "grad_out");
    TORCH_CHECK_VALUE(go.dim() <= 2, "softiou: grad_out must be the gradient of a loss of shape "
                      "[], [C], [rows, C] or [rows, 1]; got ", go.sizes());
    const char* what = "[], [C], [rows, C] or [rows, 1]";
    a.grad_out = go.data_ptr();
    a.go_sN = go.dim() == 2 ? detail::broadcast_stride(go, 0, p.N, "grad_out", what) : 0;
    a.go_sC = go.dim() >= 1 ? detail::broadcast_stride(go, go.dim() - 1, p.C, "grad_out", what)
                            : 0;
    owned.push_back(go);
  }
  if (grad_ce.has_value() && grad_ce->defined() && sums_cross_entropy(a.options)) {
    TORCH_CHECK_VALUE(grad_ce->dim() == 2 && grad_ce->size(1) == 2, "softiou: grad_ce must ",
                      "have shape [N, 2] or [1, 2] with N = ", p.N, "; got ", grad_ce->sizes());
    const at::Tensor gce = detail::in_accumulation_dtype(*grad_ce, p.acc, input, "grad_ce");
    a.ce_coef = gce.data_ptr();  // the numerator's column: the denominator is not the input's
    a.ce_sN = detail::broadcast_stride(gce, 0, p.N, "grad_ce", "[N, 2] or [1, 2]");
    owned.push_back(gce);
  }
  return owned;
}

// class_weight as the kernels read it: [C], accumulation dtype, contiguous (undefined: none).
inline at::Tensor class_weights(int64_t C, const at::Device& device, at::ScalarType acc,
                                const std::optional<at::Tensor>& class_weight) {
  if (!class_weight.has_value() || !class_weight->defined()) return at::Tensor();
  const auto& cw = *class_weight;
  TORCH_CHECK_VALUE(cw.device() == device, "softiou: class_weight is on ", cw.device(),
                    " but input is on ", device);
  TORCH_CHECK_VALUE(at::isFloatingType(cw.scalar_type()), "softiou: class_weight must be a ",
                    "floating tensor of shape [C]; got ", cw.scalar_type());
  TORCH_CHECK_VALUE(cw.dim() == 1 && cw.size(0) == C, "softiou: class_weight must have ",
                    "shape [C] = (", C, ",); got ", cw.sizes());
  return cw.scalar_type() == acc && cw.is_contiguous() ? cw : cw.to(acc).contiguous();
}

// The cross-entropy term of a statistics or gradient pass (SPEC section 9): its class weights
// as the kernels read them (the returned tensor owns them), read only where the term is on.
// `forward`: a statistics pass, which sums the term where the options ask for it.
inline at::Tensor use_cross_entropy(Prepared& p, const std::optional<at::Tensor>& class_weight,
                                    const at::Device& device, bool forward) {
  const bool accumulate = forward && sums_cross_entropy(p.args.options);
  p.args.ce = accumulate;
  if (!accumulate && p.args.ce_coef == nullptr) return at::Tensor();
  at::Tensor cw = class_weights(p.C, device, p.acc, class_weight);
  p.args.class_weight = cw.defined() ? cw.data_ptr() : nullptr;
  return cw;
}

// The hard counts of a statistics pass (SPEC section 11): whether the options ask for them, and
// then the input-space threshold of a binary/multilabel prediction (the device's glue points
// args.counts at the counts' memory). The threshold of probabilities is rounded to the input's
// dtype, as a comparison of the input with a number is in PyTorch.
inline bool use_counts(Prepared& p, const CountsOptions& counts, const at::Tensor& input) {
  if (!counts_wanted(counts)) return false;
  p.args.count_threshold = count_threshold_of(p.args.options, counts, [&](double t) {
    double rounded = t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "softiou_threshold",
                                    [&] { rounded = double(static_cast<scalar_t>(t)); });
    return rounded;
  });
  return true;
}

// The statistics a finalize step takes: [N, C, 3], floating; the cross-entropy sums [N', 2].
inline void check_stats(const at::Tensor& stats, const std::optional<at::Tensor>& ce) {
  TORCH_CHECK_VALUE(stats.dim() == 3 && stats.size(2) == 3, "softiou: stats must have shape ",
                    "[N, C, 3] (I, P, Y per sample and class); got ", stats.sizes());
  TORCH_CHECK_VALUE(stats.scalar_type() == at::kFloat || stats.scalar_type() == at::kDouble,
                    "softiou: stats must be float32 or float64; got ", stats.scalar_type());
  if (ce.has_value() && ce->defined()) {
    TORCH_CHECK_VALUE(ce->dim() == 2 && ce->size(1) == 2, "softiou: ce must have shape [N, 2] ",
                      "(the cross-entropy's numerator and denominator per sample); got ",
                      ce->sizes());
    TORCH_CHECK_VALUE(ce->scalar_type() == stats.scalar_type() && ce->device() == stats.device(),
                      "softiou: ce must be ", stats.scalar_type(), " on ", stats.device(),
                      " like stats; got ", ce->scalar_type(), " on ", ce->device());
  }
}

// The finalize step's arguments (finalize.h) for statistics [N, C, 3] and the cross-entropy
// sums ce [N', 2] (read where the term is on), with the rules that read the input.
struct Finalize {
  FinalizeArgs args;
  at::Tensor class_weight, ce;  // own the memory args point at
};

inline Finalize prepare_finalize(const at::Tensor& stats, const std::optional<at::Tensor>& ce,
                                 const std::optional<at::Tensor>& class_weight,
                                 const FinalizeOptions& o) {
  check_stats(stats, ce);
  const int64_t N = stats.size(0), C = stats.size(1);
  const bool has_cw = class_weight.has_value() && class_weight->defined();
  check_finalize_input(o, C, has_cw);
  Finalize out;
  FinalizeArgs& f = out.args;
  f.options = o;
  f.N = N;
  f.C = C;
  out.class_weight = class_weights(C, stats.device(), stats.scalar_type(), class_weight);
  if (out.class_weight.defined()) f.class_weight = out.class_weight.data_ptr();
  if (f.reads_cross_entropy() && ce.has_value() && ce->defined() && ce->size(0) > 0) {
    out.ce = ce->contiguous();
    f.ce = out.ce.data_ptr();
    f.ce_sN = 2;
    f.ce_count = out.ce.size(0);
  }
  return out;
}

// The shape of the loss (finalize.h: FinalizeArgs::loss_shape).
inline std::vector<int64_t> loss_shape(const FinalizeArgs& f) {
  std::vector<int64_t> shape(2);
  shape.resize(f.loss_shape(shape.data()));
  return shape;
}

// The error for the first bad value a kernel found (SPEC section 7).
inline void raise_input_error(InputError code, double value, const KernelArgs& a) {
  const int64_t C = a.C;
  const Maybe<int64_t>& ignored = a.options.ignore_index;
  const std::string ign =
      ignored.has ? " and not ignore_index=" + std::to_string(ignored.value) : "";
  switch (code) {
    case InputError::kNone:
      return;
    case InputError::kClassIndex:
      TORCH_CHECK_VALUE(false, "softiou: target holds class index ", int64_t(value),
                        ", outside [0, ", C, ")", ign);
    case InputError::kBinaryTarget:
      TORCH_CHECK_VALUE(false, "softiou: binary/multilabel integer target holds ",
                        int64_t(value), ", expected 0 or 1", ign);
    case InputError::kDenseTarget:
      TORCH_CHECK_VALUE(false, "softiou: dense target holds ", value, ", outside [0, 1]");
    case InputError::kNegativeWeight:
      TORCH_CHECK_VALUE(false, "softiou: weight holds ", value, ", expected weights >= 0");
    case InputError::kProbability:
      TORCH_CHECK_VALUE(false, "softiou: input holds ", value,
                        ", outside [0, 1], with from_logits=False");
  }
}

}  // namespace softiou
