// Torch glue shared by the CPU and CUDA operators: the argument checks of SPEC section 7, the
// [N, C, M] description of the tensors that the kernels read (kernel_args.h), the finalize options
// (finalize.h), and the messages for bad values found by the kernels.
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

#include "finalize.h"
#include "kernel_args.h"
#include "ops.h"

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

// Which shapes an operator takes. kNormalized: the statistics ops, input [N, C, *S] and a target
// [N, *S] (class map) or shaped like the input. kUser: the loss, which also takes binary input
// [N, *S] and a binary target [N, *S] (SPEC section 1).
enum class Shapes { kNormalized, kUser };

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

inline void check_choice(bool ok, const char* name, c10::string_view value, const char* allowed) {
  TORCH_CHECK_VALUE(ok, "softiou: ", name, " must be one of ", allowed, "; got '",
                    std::string(value), "'");
}

// Points (*data, sN, sC, sM) at t viewed as [N, C, M] (channel dim ch, spatial dims from s0; ch < 0:
// no channel dim). A tensor whose spatial dims have no common stride is copied first.
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

inline Prepared prepare(const at::Tensor& input, const at::Tensor& target,
                        const std::optional<at::Tensor>& weight, c10::string_view mode,
                        bool from_logits, double sharpness, c10::string_view intersection,
                        std::optional<int64_t> ignore_index, bool squared, Shapes shapes) {
  Prepared p;
  const bool multiclass = mode == "multiclass", binary = mode == "binary";
  detail::check_choice(multiclass || binary || mode == "multilabel", "mode", mode,
                       "'binary', 'multiclass', 'multilabel'");
  detail::check_choice(intersection == "product" || intersection == "min", "intersection",
                       intersection, "'product', 'min'");
  TORCH_CHECK_VALUE(sharpness > 0.0 && sharpness < 1e30,
                    "softiou: sharpness must be a finite number > 0; got ", sharpness);
  const auto xs = input.scalar_type();
  TORCH_CHECK_VALUE(xs == at::kFloat || xs == at::kDouble || xs == at::kHalf ||
                        xs == at::kBFloat16,
                    "softiou: input must be float32, float64, float16 or bfloat16; got ", xs);
  TORCH_CHECK_VALUE(target.device() == input.device(), "softiou: target is on ", target.device(),
                    " but input is on ", input.device());

  // binary input [N, *S] (no channel dim) is read as [N, 1, *S]
  const bool channel = !(binary && shapes == Shapes::kUser &&
                         !(input.dim() >= 3 && input.size(1) == 1));
  if (channel) {
    TORCH_CHECK_VALUE(input.dim() >= 3, "softiou: ", std::string(mode), " input must be ",
                      "[N, C, *spatial] with at least one spatial dim; got shape ",
                      input.sizes());
  } else {
    TORCH_CHECK_VALUE(input.dim() >= 2, "softiou: binary input must be [N, *spatial] or ",
                      "[N, 1, *spatial]; got shape ", input.sizes());
  }
  const int64_t s0 = channel ? 2 : 1;  // first spatial dim of the input
  const int64_t N = input.size(0), C = channel ? input.size(1) : 1;
  TORCH_CHECK_VALUE(!multiclass || C >= 2, "softiou: multiclass mode needs C >= 2 classes; got ",
                    "input shape ", input.sizes(), " (use mode='binary' for one channel)");
  TORCH_CHECK_VALUE(!binary || C == 1, "softiou: binary mode needs C = 1; got input shape ",
                    input.sizes());
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
      integer_target && (multiclass || (mode == "multilabel" &&
                                        target.sizes() == at::IntArrayRef(map_shape)));
  TORCH_CHECK_VALUE(!(multiclass && !integer_target && ignore_index.has_value()),
                    "softiou: ignore_index applies to class maps and to binary/multilabel ",
                    "targets; a dense multiclass target has none (leave pixels out with weight)");
  // the target's channel dim: a class map has none, nor has a binary target shaped [N, *S]
  int64_t t_channel = 1;
  if (class_map) {
    TORCH_CHECK_VALUE(target.sizes() == at::IntArrayRef(map_shape), "softiou: target class map ",
                      "must have shape [N, *spatial] = ", at::IntArrayRef(map_shape), "; got ",
                      target.sizes());
    t_channel = -1;
  } else if (target.sizes() == at::IntArrayRef(with_channel)) {
    t_channel = 1;
  } else if (binary && shapes == Shapes::kUser && target.sizes() == at::IntArrayRef(map_shape)) {
    t_channel = -1;
  } else {
    TORCH_CHECK_VALUE(false, "softiou: target must have shape ", at::IntArrayRef(with_channel),
                      binary && shapes == Shapes::kUser
                          ? " or " + c10::str(at::IntArrayRef(map_shape)) : std::string(),
                      " for ", std::string(mode), " input of shape ", input.sizes(), "; got ",
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
  if (multiclass) {
    a.prob = (from_logits || sharpness != 1.0) ? Prob::kSoftmax : Prob::kIdentity;
  } else {
    a.prob = (from_logits || sharpness != 1.0) ? Prob::kSigmoid : Prob::kIdentity;
  }
  a.from_logits = from_logits;
  a.sharpness = sharpness;
  a.min_intersection = intersection == "min";
  a.squared = squared;
  a.has_ignore = ignore_index.has_value();
  a.ignore_index = ignore_index.value_or(0);
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

// Points the kernel arguments at the gradient of the statistics [N, C, 3] (any strides).
inline at::Tensor use_grad_stats(Prepared& p, const at::Tensor& grad_stats,
                                 const at::Tensor& input) {
  TORCH_CHECK_VALUE(grad_stats.dim() == 3 && grad_stats.size(0) == p.N &&
                        grad_stats.size(1) == p.C && grad_stats.size(2) == 3,
                    "softiou: grad_stats must have shape [N, C, 3] = [", p.N, ", ", p.C,
                    ", 3]; got ", grad_stats.sizes());
  TORCH_CHECK_VALUE(grad_stats.device() == input.device(), "softiou: grad_stats is on ",
                    grad_stats.device(), " but input is on ", input.device());
  at::Tensor g = grad_stats.scalar_type() == p.acc ? grad_stats : grad_stats.to(p.acc);
  p.args.coef = g.data_ptr();
  p.args.co_sN = g.stride(0);
  p.args.co_sC = g.stride(1);
  p.args.co_sK = g.stride(2);
  return g;
}

// ---------------------------------------------------------------------------------------------
// The finalize options (SPEC sections 4 and 5)
// ---------------------------------------------------------------------------------------------
struct Finalize {
  FinalizeArgs args;
  at::Tensor class_weight;  // in the accumulation dtype, contiguous (owns args.class_weight)
};

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

inline Finalize parse_finalize(int64_t N, int64_t C, const at::Device& device,
                               at::ScalarType acc, const FinalizeOptions& o,
                               const std::optional<at::Tensor>& class_weight) {
  const c10::string_view metric = o.metric, reduction = o.reduction, absent = o.absent;
  const double alpha = o.alpha, beta = o.beta, gamma = o.gamma, smooth = o.smooth, eps = o.eps;
  Finalize out;
  FinalizeArgs& f = out.args;
  f.N = N;
  f.C = C;
  if (metric == "jaccard") {
    f.metric = Metric::kJaccard;
  } else if (metric == "dice") {
    f.metric = Metric::kDice;
  } else if (metric == "tversky") {
    f.metric = Metric::kTversky;
  } else {
    detail::check_choice(metric == "generalized_dice", "metric", metric,
                         "'jaccard', 'dice', 'tversky', 'generalized_dice'");
    f.metric = Metric::kGeneralizedDice;
  }
  if (o.w_type == "square") {
    f.w_type = WType::kSquare;
  } else if (o.w_type == "simple") {
    f.w_type = WType::kSimple;
  } else {
    detail::check_choice(o.w_type == "uniform", "w_type", o.w_type,
                         "'square', 'simple', 'uniform'");
    f.w_type = WType::kUniform;
  }
  if (reduction == "mean") {
    f.reduction = Reduction::kMean;
  } else if (reduction == "sum") {
    f.reduction = Reduction::kSum;
  } else {
    detail::check_choice(reduction == "none", "reduction", reduction, "'mean', 'sum', 'none'");
    f.reduction = Reduction::kNone;
  }
  detail::check_choice(absent == "include" || absent == "exclude" || absent == "zero", "absent",
                       absent, "'include', 'exclude', 'zero'");
  f.absent_exclude = absent == "exclude";
  f.absent_zero = absent == "zero";
  TORCH_CHECK_VALUE(!f.generalized() || absent == "include", "softiou: absent must be 'include' ",
                    "with metric='generalized_dice'; got '", std::string(absent), "'");
  f.weighted_mean = o.weighted_mean;
  auto finite = [](double v) { return v == v && v < 1e308 && v > -1e308; };
  TORCH_CHECK_VALUE(finite(alpha) && alpha >= 0, "softiou: alpha must be a finite number >= 0; got ",
                    alpha);
  TORCH_CHECK_VALUE(finite(beta) && beta >= 0, "softiou: beta must be a finite number >= 0; got ",
                    beta);
  TORCH_CHECK_VALUE(finite(gamma) && gamma > 0, "softiou: gamma must be a finite number > 0; got ",
                    gamma);
  TORCH_CHECK_VALUE(finite(smooth) && smooth >= 0,
                    "softiou: smooth must be a finite number >= 0; got ", smooth);
  TORCH_CHECK_VALUE(finite(eps) && eps > 0, "softiou: eps must be a finite number > 0; got ", eps);
  const double smooth_dr = o.smooth_dr.value_or(smooth);
  TORCH_CHECK_VALUE(finite(smooth_dr) && smooth_dr >= 0,
                    "softiou: smooth_dr must be a finite number >= 0 or None; got ", smooth_dr);
  f.alpha = alpha;
  f.beta = beta;
  f.gamma = gamma;
  f.smooth = smooth;
  f.smooth_dr = smooth_dr;
  f.eps = eps;
  f.log_loss = o.log_loss;
  f.per_image = o.per_image;
  TORCH_CHECK_VALUE(o.include_background || C != 1, "softiou: include_background=False drops ",
                    "class 0, the only class of this input");
  f.drop_background = !o.include_background;
  if (o.classes.has_value()) {
    const auto list = *o.classes;
    TORCH_CHECK_VALUE(!list.empty(), "softiou: classes must be a non-empty list of class "
                      "indices; got []");
    for (size_t i = 0; i < list.size(); ++i) {
      const int64_t c = list[i];
      TORCH_CHECK_VALUE(c >= 0 && c < C, "softiou: classes must be indices in [0, ", C, "); got ",
                        list);
      TORCH_CHECK_VALUE(c < kMaxListedClass, "softiou: classes lists indices below ",
                        kMaxListedClass, "; got ", c);
      TORCH_CHECK_VALUE(!((f.keep[c >> 6] >> (c & 63)) & 1u),
                        "softiou: classes must not repeat a class; got ", list);
      f.keep[c >> 6] |= uint64_t(1) << (c & 63);
    }
    f.subset = true;
  }
  out.class_weight = class_weights(C, device, acc, class_weight);
  TORCH_CHECK_VALUE(!(f.generalized() && out.class_weight.defined()), "softiou: class_weight ",
                    "must be None with metric='generalized_dice': its class weights come from ",
                    "the target (w_type)");
  if (out.class_weight.defined()) f.class_weight = out.class_weight.data_ptr();
  return out;
}

// SPEC section 10: the binary cross-entropy's pos_weight.
inline void check_pos_weight(double pos_weight, c10::string_view mode) {
  TORCH_CHECK_VALUE(pos_weight >= 0 && pos_weight < 1e308,
                    "softiou: ce_pos_weight must be a finite number >= 0; got ", pos_weight);
  TORCH_CHECK_VALUE(pos_weight == 1.0 || mode != "multiclass", "softiou: ce_pos_weight is the ",
                    "binary cross-entropy's; it must be 1 in multiclass mode; got ", pos_weight);
}

// The cross-entropy term's own options, shared by softiou::loss and softiou::stats_ce:
// label_smoothing (multiclass) and pos_weight (binary cross-entropy).
inline void check_term_options(double label_smoothing, double pos_weight, c10::string_view mode) {
  TORCH_CHECK_VALUE(label_smoothing >= 0 && label_smoothing < 1,
                    "softiou: label_smoothing must be a number in [0, 1); got ", label_smoothing);
  TORCH_CHECK_VALUE(label_smoothing == 0 || mode == "multiclass", "softiou: label_smoothing ",
                    "must be 0 in ", std::string(mode), " mode (binary cross-entropy); got ",
                    label_smoothing);
  check_pos_weight(pos_weight, mode);
}

// SPEC section 9: the checks of ce_weight and label_smoothing (label_smoothing is checked even
// with the term off: a value that would be refused with it on is refused).
inline void check_cross_entropy(const LossOptions& o) {
  TORCH_CHECK_VALUE(o.ce_weight >= 0 && o.ce_weight < 1e308,
                    "softiou: ce_weight must be a finite number >= 0; got ", o.ce_weight);
  check_term_options(o.label_smoothing, o.ce_pos_weight, o.mode);
  if (o.ce_weight > 0) {
    TORCH_CHECK_VALUE(o.from_logits, "softiou: ce_weight > 0 needs from_logits=True: the ",
                      "cross-entropy is of logits");
    TORCH_CHECK_VALUE(o.reduction != "none", "softiou: ce_weight > 0 needs reduction='mean' or ",
                      "'sum': the cross-entropy and the per-pair losses of reduction='none' ",
                      "have different shapes");
  }
}

// The loss's options checked and parsed, and the kernel arguments of its cross-entropy term (the
// statistics pass accumulates it when `forward` and ce_weight > 0).
inline Finalize prepare_loss(Prepared& p, const LossOptions& o,
                             const std::optional<at::Tensor>& class_weight,
                             const at::Device& device, bool forward) {
  check_cross_entropy(o);
  Finalize fin = parse_finalize(p.N, p.C, device, p.acc, o, class_weight);
  fin.args.ce_weight = o.ce_weight;
  fin.args.ce_slot = true;
  p.args.ce = forward && o.ce_weight > 0;
  p.args.label_smoothing = o.label_smoothing;
  p.args.ce_pos_weight = o.ce_pos_weight;
  p.args.class_weight = fin.args.class_weight;
  return fin;
}

// softiou::stats_ce: the statistics with the cross-entropy term's sums (accumulate: forward).
// Returns the class weights as the kernels read them (the tensor owns their memory).
inline at::Tensor prepare_cross_entropy(Prepared& p, const CrossEntropyOptions& o,
                                        const std::optional<at::Tensor>& class_weight,
                                        const at::Device& device, bool accumulate) {
  TORCH_CHECK_VALUE(o.from_logits, "softiou: the cross-entropy term needs from_logits=True");
  check_term_options(o.label_smoothing, o.ce_pos_weight, o.mode);
  at::Tensor cw = class_weights(p.C, device, p.acc, class_weight);
  p.args.ce = accumulate;
  p.args.label_smoothing = o.label_smoothing;
  p.args.ce_pos_weight = o.ce_pos_weight;
  p.args.class_weight = cw.defined() ? cw.data_ptr() : nullptr;
  return cw;
}

// The shape of the loss: [] for mean and sum; [N, C] (per image) or [C] (pooled) for none, with
// one column instead of C for the generalized Dice score.
inline std::vector<int64_t> loss_shape(const FinalizeArgs& f) {
  if (f.reduction != Reduction::kNone) return {};
  if (f.per_image) return {f.N, f.loss_cols()};
  return {f.loss_cols()};
}

// The coefficients the loss's forward saves for its backward: d loss / d (I, P, Y) of every pair
// ([rows][C][3]), then d loss / d (the cross-entropy's numerator).
inline int64_t coef_elems(const FinalizeArgs& f) { return f.rows() * f.C * 3 + 1; }

// Points the kernel arguments at the saved coefficients and at the gradient of the loss (a
// scalar, [N, C] or [C], any strides).
inline at::Tensor use_loss_grad(Prepared& p, const at::Tensor& coef, const at::Tensor& grad,
                                const FinalizeArgs& f) {
  TORCH_CHECK_VALUE(coef.dim() == 1 && coef.numel() == coef_elems(f) &&
                        coef.scalar_type() == p.acc && coef.is_contiguous(),
                    "softiou: coef must be the coefficients of the loss's forward, ",
                    coef_elems(f), " contiguous ", p.acc, " values; got ", coef.sizes(), " ",
                    coef.scalar_type());
  at::Tensor g = grad.scalar_type() == p.acc ? grad : grad.to(p.acc);
  KernelArgs& a = p.args;
  a.coef = coef.data_ptr();
  a.co_sN = f.per_image ? f.C * 3 : 0;
  a.co_sC = 3;
  a.co_sK = 1;
  a.grad_out = g.data_ptr();
  if (f.reduction != Reduction::kNone) {
    a.go_sN = a.go_sC = 0;
  } else if (f.per_image) {  // [N, C], or [N, 1] for the generalized Dice score
    a.go_sN = g.stride(0);
    a.go_sC = f.generalized() ? 0 : g.stride(1);
  } else {
    a.go_sN = 0;
    a.go_sC = f.generalized() ? 0 : g.stride(0);
  }
  if (f.ce_weight > 0) {
    a.ce_coef = static_cast<const char*>(coef.data_ptr()) +
                (coef_elems(f) - 1) * at::elementSize(p.acc);
    a.ce_sN = 0;
  }
  return g;
}

// The gradient of softiou::stats_ce's per-sample cross-entropy sums [N, 2]: its first column,
// d loss / d numerator, is what the gradient pass reads (the denominator does not depend on
// the input). Undefined: no term.
inline at::Tensor use_grad_ce(Prepared& p, const std::optional<at::Tensor>& grad_ce,
                              const at::Tensor& input) {
  if (!grad_ce.has_value() || !grad_ce->defined()) return at::Tensor();
  TORCH_CHECK_VALUE(grad_ce->dim() == 2 && grad_ce->size(0) == p.N && grad_ce->size(1) == 2,
                    "softiou: grad_ce must have shape [N, 2] = [", p.N, ", 2]; got ",
                    grad_ce->sizes());
  TORCH_CHECK_VALUE(grad_ce->device() == input.device(), "softiou: grad_ce is on ",
                    grad_ce->device(), " but input is on ", input.device());
  at::Tensor g = grad_ce->scalar_type() == p.acc ? *grad_ce : grad_ce->to(p.acc);
  p.args.ce_coef = g.data_ptr();
  p.args.ce_sN = g.stride(0);
  return g;
}

inline void raise_input_error(InputError code, double value, int64_t C,
                              std::optional<int64_t> ignore_index) {
  const std::string ign =
      ignore_index.has_value() ? " and not ignore_index=" + std::to_string(*ignore_index) : "";
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
