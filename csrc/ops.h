// The operators' options as one value, and the adapters that turn a schema's flat argument list
// into it (shared by the CPU, CUDA and autograd registrations; schemas in ops.cpp).
//
// The loss options appear in the schemas of softiou::loss, _loss_forward and _loss_backward in
// one order, written once below (SOFTIOU_LOSS_OPTION_*); the finalize options likewise for
// softiou::finalize and _finalize.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace softiou {

// SPEC sections 4-5 (the finalize step)
struct FinalizeOptions {
  c10::string_view metric;
  double alpha, beta, gamma;
  bool log_loss;
  double smooth, eps;
  at::OptionalIntArrayRef classes;
  bool include_background, per_image;
  c10::string_view absent, reduction;
  // SPEC section 10
  std::optional<double> smooth_dr;
  bool weighted_mean;
  c10::string_view w_type;
};

// SPEC sections 2-5 (probabilities, statistics, finalize)
struct LossOptions : FinalizeOptions {
  c10::string_view mode;
  bool from_logits;
  double sharpness;
  c10::string_view intersection;
  std::optional<int64_t> ignore_index;
  double ce_weight, label_smoothing;  // SPEC section 9
  bool squared;                       // SPEC section 10
  double ce_pos_weight;
};

// The statistics with the cross-entropy term's sums (softiou::stats_ce, the pooled path)
struct CrossEntropyOptions {
  c10::string_view mode;
  bool from_logits;
  double sharpness;
  c10::string_view intersection;
  std::optional<int64_t> ignore_index;
  double label_smoothing;
  double ce_pos_weight;
  bool squared;
};

// The loss options in schema order: the declarations (with the defaults of softiou::loss), the
// C++ parameters, and the names to pass them on. They are positional (they may also be passed by
// name): Python passes them as one tuple, without the cost of matching keyword names.
#define SOFTIOU_LOSS_OPTION_SCHEMA                                                              \
  "Tensor? class_weight=None, str mode=\"multiclass\", bool from_logits=True, "               \
  "float sharpness=1.0, str intersection=\"product\", str metric=\"jaccard\", "               \
  "float alpha=0.5, float beta=0.5, float gamma=1.0, bool log_loss=False, float smooth=0.0, "   \
  "float eps=1e-07, int[]? classes=None, bool include_background=True, "                        \
  "int? ignore_index=None, bool per_image=True, str absent=\"include\", str reduction=\"mean\", " \
  "float ce_weight=0.0, float label_smoothing=0.0, bool squared=False, float? smooth_dr=None, "  \
  "bool weighted_mean=True, str w_type=\"square\", float ce_pos_weight=1.0"
#define SOFTIOU_LOSS_OPTION_PARAMS                                                              \
  const std::optional<at::Tensor>&class_weight, c10::string_view mode, bool from_logits,        \
      double sharpness, c10::string_view intersection, c10::string_view metric, double alpha,    \
      double beta, double gamma, bool log_loss, double smooth, double eps,                       \
      at::OptionalIntArrayRef classes, bool include_background,                                  \
      std::optional<int64_t> ignore_index, bool per_image, c10::string_view absent,              \
      c10::string_view reduction, double ce_weight, double label_smoothing, bool squared,         \
      std::optional<double> smooth_dr, bool weighted_mean, c10::string_view w_type,             \
      double ce_pos_weight
#define SOFTIOU_LOSS_OPTION_ARGS                                                                \
  class_weight, mode, from_logits, sharpness, intersection, metric, alpha, beta, gamma, log_loss, \
      smooth, eps, classes, include_background, ignore_index, per_image, absent, reduction,      \
      ce_weight, label_smoothing, squared, smooth_dr, weighted_mean, w_type, ce_pos_weight

#define SOFTIOU_FINALIZE_OPTION_SCHEMA                                                          \
  "str metric=\"jaccard\", float alpha=0.5, float beta=0.5, float gamma=1.0, "                  \
  "bool log_loss=False, float smooth=0.0, float eps=1e-07, int[]? classes=None, "               \
  "bool include_background=True, bool per_image=True, str absent=\"include\", "                 \
  "str reduction=\"mean\", float? smooth_dr=None, bool weighted_mean=True, "                     \
  "str w_type=\"square\""
#define SOFTIOU_FINALIZE_OPTION_PARAMS                                                          \
  c10::string_view metric, double alpha, double beta, double gamma, bool log_loss,               \
      double smooth, double eps, at::OptionalIntArrayRef classes, bool include_background,       \
      bool per_image, c10::string_view absent, c10::string_view reduction,                       \
      std::optional<double> smooth_dr, bool weighted_mean, c10::string_view w_type
#define SOFTIOU_FINALIZE_OPTION_ARGS                                                            \
  metric, alpha, beta, gamma, log_loss, smooth, eps, classes, include_background, per_image,     \
      absent, reduction, smooth_dr, weighted_mean, w_type

inline LossOptions loss_options(SOFTIOU_LOSS_OPTION_PARAMS) {
  LossOptions o;
  static_cast<FinalizeOptions&>(o) = FinalizeOptions{
      metric, alpha, beta, gamma, log_loss, smooth, eps, classes, include_background, per_image,
      absent, reduction, smooth_dr, weighted_mean, w_type};
  o.mode = mode;
  o.from_logits = from_logits;
  o.sharpness = sharpness;
  o.intersection = intersection;
  o.ignore_index = ignore_index;
  o.ce_weight = ce_weight;
  o.label_smoothing = label_smoothing;
  o.squared = squared;
  o.ce_pos_weight = ce_pos_weight;
  (void)class_weight;
  return o;
}

inline FinalizeOptions finalize_options(SOFTIOU_FINALIZE_OPTION_PARAMS) {
  return FinalizeOptions{metric,  alpha,     beta,      gamma,         log_loss,
                         smooth,  eps,       classes,   include_background, per_image,
                         absent,  reduction, smooth_dr, weighted_mean, w_type};
}

// Adapters from the schemas' flat arguments to the implementations of a device, which take the
// options as one value:
//   _loss_forward  -> (loss, coefficients of the gradient)
//   _loss_backward -> the gradient of the input
//   _finalize      -> (loss, coefficients)
using LossForwardImpl = std::tuple<at::Tensor, at::Tensor> (*)(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& class_weight, const LossOptions& o);
using LossBackwardImpl = at::Tensor (*)(const at::Tensor& grad, const at::Tensor& input,
                                        const at::Tensor& target,
                                        const std::optional<at::Tensor>& weight,
                                        const at::Tensor& coef,
                                        const std::optional<at::Tensor>& class_weight,
                                        const LossOptions& o);
using FinalizeImpl = std::tuple<at::Tensor, at::Tensor> (*)(
    const at::Tensor& stats, const std::optional<at::Tensor>& class_weight,
    const FinalizeOptions& o);

using StatsCeImpl = std::tuple<at::Tensor, at::Tensor> (*)(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& class_weight, const CrossEntropyOptions& o);
using StatsCeBackwardImpl = at::Tensor (*)(const at::Tensor& grad_stats,
                                           const std::optional<at::Tensor>& grad_ce,
                                           const at::Tensor& input, const at::Tensor& target,
                                           const std::optional<at::Tensor>& weight,
                                           const std::optional<at::Tensor>& class_weight,
                                           const CrossEntropyOptions& o);

#define SOFTIOU_STATS_CE_PARAMS                                                                 \
  const at::Tensor &input, const at::Tensor &target, const std::optional<at::Tensor>&weight,    \
      const std::optional<at::Tensor>&class_weight, c10::string_view mode, bool from_logits,     \
      double sharpness, c10::string_view intersection, std::optional<int64_t> ignore_index,      \
      double label_smoothing, double ce_pos_weight, bool squared

template <StatsCeImpl F>
std::tuple<at::Tensor, at::Tensor> stats_ce_kernel(SOFTIOU_STATS_CE_PARAMS) {
  return F(input, target, weight, class_weight,
           CrossEntropyOptions{mode, from_logits, sharpness, intersection, ignore_index,
                               label_smoothing, ce_pos_weight, squared});
}

template <StatsCeBackwardImpl F>
at::Tensor stats_ce_backward_kernel(const at::Tensor& grad_stats,
                                    const std::optional<at::Tensor>& grad_ce,
                                    SOFTIOU_STATS_CE_PARAMS) {
  return F(grad_stats, grad_ce, input, target, weight, class_weight,
           CrossEntropyOptions{mode, from_logits, sharpness, intersection, ignore_index,
                               label_smoothing, ce_pos_weight, squared});
}

template <LossForwardImpl F>
std::tuple<at::Tensor, at::Tensor> loss_forward_kernel(const at::Tensor& input,
                                                       const at::Tensor& target,
                                                       const std::optional<at::Tensor>& weight,
                                                       SOFTIOU_LOSS_OPTION_PARAMS) {
  return F(input, target, weight, class_weight, loss_options(SOFTIOU_LOSS_OPTION_ARGS));
}

template <LossBackwardImpl F>
at::Tensor loss_backward_kernel(const at::Tensor& grad, const at::Tensor& input,
                                const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                const at::Tensor& coef, SOFTIOU_LOSS_OPTION_PARAMS) {
  return F(grad, input, target, weight, coef, class_weight,
           loss_options(SOFTIOU_LOSS_OPTION_ARGS));
}

template <FinalizeImpl F>
std::tuple<at::Tensor, at::Tensor> finalize_kernel(const at::Tensor& stats,
                                                   const std::optional<at::Tensor>& class_weight,
                                                   SOFTIOU_FINALIZE_OPTION_PARAMS) {
  return F(stats, class_weight, finalize_options(SOFTIOU_FINALIZE_OPTION_ARGS));
}

// softiou::loss and softiou::finalize below autograd (inference-mode tensors): the loss alone.
template <LossForwardImpl F>
at::Tensor loss_kernel(const at::Tensor& input, const at::Tensor& target,
                       const std::optional<at::Tensor>& weight, SOFTIOU_LOSS_OPTION_PARAMS) {
  return std::get<0>(
      F(input, target, weight, class_weight, loss_options(SOFTIOU_LOSS_OPTION_ARGS)));
}

template <FinalizeImpl F>
at::Tensor finalize_loss_kernel(const at::Tensor& stats,
                                const std::optional<at::Tensor>& class_weight,
                                SOFTIOU_FINALIZE_OPTION_PARAMS) {
  return std::get<0>(F(stats, class_weight, finalize_options(SOFTIOU_FINALIZE_OPTION_ARGS)));
}

// The statistics a finalize step takes: [N, C, 3], floating.
inline void check_stats(const at::Tensor& stats) {
  TORCH_CHECK_VALUE(stats.dim() == 3 && stats.size(2) == 3, "softiou: stats must have shape ",
                    "[N, C, 3] (I, P, Y per sample and class); got ", stats.sizes());
  TORCH_CHECK_VALUE(stats.scalar_type() == at::kFloat || stats.scalar_type() == at::kDouble,
                    "softiou: stats must be float32 or float64; got ", stats.scalar_type());
}

}  // namespace softiou
