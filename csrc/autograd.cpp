// Autograd of softiou::loss and softiou::finalize in C++ (as torchvision's ops have theirs): a call
// from Python is one dispatcher call, with no Python autograd and no Python tensor work around it.
//
//   loss      forward: _loss_forward -> (loss, coef), coef = d loss / d (I, P, Y) of every pair
//             backward: _loss_backward(grad, input, ..., coef): one gradient pass
//   finalize  forward: _finalize -> (loss, coef); backward: grad_stats = coef * grad
//
// Both call their ops through the dispatcher below autograd, so torch.compile (AOTAutograd) and
// torch.export trace them with the fake kernels registered in softiou_cuda/ops.py. The loss is
// differentiable once: _loss_backward's own autograd kernel raises if a second derivative is
// asked for (create_graph=True, then differentiating the gradient).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "ops.h"

namespace softiou {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using LossForwardSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    SOFTIOU_LOSS_OPTION_PARAMS);
using LossBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const std::optional<at::Tensor>&, const at::Tensor&,
                                   SOFTIOU_LOSS_OPTION_PARAMS);
using FinalizeSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, SOFTIOU_FINALIZE_OPTION_PARAMS);

const c10::TypedOperatorHandle<LossForwardSig>& loss_forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("softiou::_loss_forward", "")
                             .typed<LossForwardSig>();
  return op;
}

const c10::TypedOperatorHandle<LossBackwardSig>& loss_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("softiou::_loss_backward", "")
                             .typed<LossBackwardSig>();
  return op;
}

const c10::TypedOperatorHandle<FinalizeSig>& finalize_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("softiou::_finalize", "").typed<FinalizeSig>();
  return op;
}

void refuse_grad(const char* name, const std::optional<at::Tensor>& t) {
  TORCH_CHECK_VALUE(!(t.has_value() && t->defined() && t->requires_grad()), "softiou: ", name,
                    " requires grad, but softiou does not differentiate with respect to the ",
                    name, "; pass ", name, ".detach()");
}

std::optional<at::Tensor> optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The options of a loss call, owned: what the backward needs of the forward's arguments. Kept in
// the autograd context as one value (a capsule).
struct SavedLossOptions : torch::CustomClassHolder {
  std::string mode, intersection, metric, absent, reduction;
  bool from_logits, log_loss, include_background, per_image;
  double sharpness, alpha, beta, gamma, smooth, eps;
  std::optional<std::vector<int64_t>> classes;
  std::optional<int64_t> ignore_index;
  double ce_weight, label_smoothing;
  bool squared, weighted_mean;
  std::optional<double> smooth_dr;
  std::string w_type;
  double ce_pos_weight;
};

constexpr int kLossArgs = 28;  // arguments of LossFunction::forward after the context

class LossFunction : public torch::autograd::Function<LossFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            SOFTIOU_LOSS_OPTION_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, coef] =
        loss_forward_op().call(input, target, weight, SOFTIOU_LOSS_OPTION_ARGS);
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()), coef,
                            class_weight.value_or(at::Tensor())});
    auto o = c10::make_intrusive<SavedLossOptions>();
    o->mode = std::string(mode);
    o->intersection = std::string(intersection);
    o->metric = std::string(metric);
    o->absent = std::string(absent);
    o->reduction = std::string(reduction);
    o->from_logits = from_logits;
    o->log_loss = log_loss;
    o->include_background = include_background;
    o->per_image = per_image;
    o->sharpness = sharpness;
    o->alpha = alpha;
    o->beta = beta;
    o->gamma = gamma;
    o->smooth = smooth;
    o->eps = eps;
    if (classes.has_value()) o->classes = classes->vec();
    o->ignore_index = ignore_index;
    o->ce_weight = ce_weight;
    o->label_smoothing = label_smoothing;
    o->squared = squared;
    o->smooth_dr = smooth_dr;
    o->weighted_mean = weighted_mean;
    o->w_type = std::string(w_type);
    o->ce_pos_weight = ce_pos_weight;
    ctx->saved_data["options"] = c10::IValue::make_capsule(std::move(o));
    ctx->mark_non_differentiable({coef});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(kLossArgs);
    if (!ctx->needs_input_grad(0)) return out;
    const auto saved = ctx->get_saved_variables();
    const auto holder = ctx->saved_data["options"].toCapsule();
    const auto& o = *static_cast<const SavedLossOptions*>(holder.get());
    at::OptionalIntArrayRef classes;
    if (o.classes.has_value()) classes = at::IntArrayRef(*o.classes);
    out[0] = loss_backward_op().call(
        grads[0], saved[0], saved[1], optional(saved[2]), saved[3], optional(saved[4]), o.mode,
        o.from_logits, o.sharpness, o.intersection, o.metric, o.alpha, o.beta, o.gamma,
        o.log_loss, o.smooth, o.eps, classes, o.include_background, o.ignore_index, o.per_image,
        o.absent, o.reduction, o.ce_weight, o.label_smoothing, o.squared, o.smooth_dr,
        o.weighted_mean, o.w_type, o.ce_pos_weight);
    return out;
  }
};

at::Tensor loss_autograd(const at::Tensor& input, const at::Tensor& target,
                         const std::optional<at::Tensor>& weight, SOFTIOU_LOSS_OPTION_PARAMS) {
  refuse_grad("target", target);
  refuse_grad("weight", weight);
  refuse_grad("class_weight", class_weight);
  return LossFunction::apply(input, target, weight, SOFTIOU_LOSS_OPTION_ARGS);
}

// _loss_backward: computed below autograd; differentiating it again is an error.
class LossBackwardFunction : public torch::autograd::Function<LossBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& grad, const at::Tensor& input,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            const at::Tensor& coef, SOFTIOU_LOSS_OPTION_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return loss_backward_op().call(grad, input, target, weight, coef, SOFTIOU_LOSS_OPTION_ARGS);
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false, "softiou: the loss is differentiable once; its second derivative (double "
                "backward) is not supported");
  }
};

at::Tensor loss_backward_autograd(const at::Tensor& grad, const at::Tensor& input,
                                  const at::Tensor& target,
                                  const std::optional<at::Tensor>& weight, const at::Tensor& coef,
                                  SOFTIOU_LOSS_OPTION_PARAMS) {
  if (!at::GradMode::is_enabled()) {  // a first derivative (the usual backward): no graph to keep
    at::AutoDispatchBelowADInplaceOrView guard;
    return loss_backward_op().call(grad, input, target, weight, coef, SOFTIOU_LOSS_OPTION_ARGS);
  }
  return LossBackwardFunction::apply(grad, input, target, weight, coef,
                                     SOFTIOU_LOSS_OPTION_ARGS);
}

constexpr int kFinalizeArgs = 17;  // arguments of FinalizeFunction::forward after the context

class FinalizeFunction : public torch::autograd::Function<FinalizeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& stats,
                            const std::optional<at::Tensor>& class_weight,
                            SOFTIOU_FINALIZE_OPTION_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, coef] = finalize_op().call(stats, class_weight, SOFTIOU_FINALIZE_OPTION_ARGS);
    ctx->save_for_backward({coef});
    ctx->saved_data["rows"] = stats.size(0);
    ctx->saved_data["per_image"] = per_image;
    ctx->saved_data["per_pair"] = reduction == "none";
    ctx->saved_data["per_row"] = metric == "generalized_dice";
    ctx->mark_non_differentiable({coef});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(kFinalizeArgs);
    if (!ctx->needs_input_grad(0)) return out;
    // the coefficients are constants of the first derivative: no second derivative through them
    at::NoGradGuard no_grad;
    const at::Tensor coef = ctx->get_saved_variables()[0];
    const at::Tensor& g = grads[0];
    // the gradient of the loss: a scalar, or one value per pair ([rows, C]) or per row of the
    // generalized Dice score ([rows, 1])
    const int64_t per_row = ctx->saved_data["per_row"].toBool() ? 1 : coef.size(1);
    at::Tensor gs = ctx->saved_data["per_pair"].toBool()
                        ? coef * g.reshape({coef.size(0), per_row, 1})
                        : coef * g;
    if (!ctx->saved_data["per_image"].toBool()) {
      gs = gs.expand({ctx->saved_data["rows"].toInt(), coef.size(1), 3});
    }
    out[0] = gs;
    return out;
  }
};

at::Tensor finalize_autograd(const at::Tensor& stats, const std::optional<at::Tensor>& class_weight,
                             SOFTIOU_FINALIZE_OPTION_PARAMS) {
  refuse_grad("class_weight", class_weight);
  return FinalizeFunction::apply(stats, class_weight, SOFTIOU_FINALIZE_OPTION_ARGS);
}

}  // namespace

TORCH_LIBRARY_IMPL(softiou, Autograd, m) {
  m.impl("loss", &loss_autograd);
  m.impl("_loss_backward", &loss_backward_autograd);
  m.impl("finalize", &finalize_autograd);
}

}  // namespace softiou
