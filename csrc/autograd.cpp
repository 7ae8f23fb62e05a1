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

}  // namespace
}  // namespace softiou

// The autograd Functions are at global scope, under names of their own: a loss prints as
// tensor(..., grad_fn=<CppNode<SoftiouLoss>>) (torch shows a node's name after its last "::").
//
// What a backward needs of the forward's arguments is kept in the context as the compiled
// autograd (torch._dynamo.compiled_autograd) can take it: values in one list, which it hashes as
// constants of the node (a capsule it cannot hash; a number at the top of saved_data it would
// make an input of its graph, which the backward then reads as a symbol).

// softiou::loss: forward _loss_forward -> (loss, coef); backward _loss_backward, one gradient pass.
// The options but class_weight (a saved tensor) are saved in schema order.
struct SoftiouLoss : public torch::autograd::Function<SoftiouLoss> {
  static constexpr int kArgs = 28;  // arguments of forward after the context

  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            SOFTIOU_LOSS_OPTION_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, coef] =
        softiou::loss_forward_op().call(input, target, weight, SOFTIOU_LOSS_OPTION_ARGS);
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()), coef,
                            class_weight.value_or(at::Tensor())});
    c10::impl::GenericList o(c10::AnyType::get());
    o.reserve(kArgs - 4);
    for (c10::IValue v : {c10::IValue(mode), c10::IValue(from_logits), c10::IValue(sharpness),
                          c10::IValue(intersection), c10::IValue(metric), c10::IValue(alpha),
                          c10::IValue(beta), c10::IValue(gamma), c10::IValue(log_loss),
                          c10::IValue(smooth), c10::IValue(eps),
                          classes.has_value() ? c10::IValue(classes->vec()) : c10::IValue(),
                          c10::IValue(include_background), c10::IValue(ignore_index),
                          c10::IValue(per_image), c10::IValue(absent), c10::IValue(reduction),
                          c10::IValue(ce_weight), c10::IValue(label_smoothing),
                          c10::IValue(squared), c10::IValue(smooth_dr),
                          c10::IValue(weighted_mean), c10::IValue(w_type),
                          c10::IValue(ce_pos_weight)}) {
      o.push_back(std::move(v));
    }
    ctx->saved_data["options"] = std::move(o);
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(kArgs);
    if (!ctx->needs_input_grad(0)) return out;
    const auto saved = ctx->get_saved_variables();
    const auto o = ctx->saved_data["options"].toList();  // in schema order, as saved
    std::vector<int64_t> class_list;
    at::OptionalIntArrayRef classes;
    if (!o.get(11).isNone()) {
      class_list = o.get(11).toIntVector();
      classes = at::IntArrayRef(class_list);
    }
    using softiou::optional;
    out[0] = softiou::loss_backward_op().call(
        grads[0], saved[0], saved[1], optional(saved[2]), saved[3], optional(saved[4]),
        o.get(0).toStringView(), o.get(1).toBool(), o.get(2).toDouble(), o.get(3).toStringView(),
        o.get(4).toStringView(), o.get(5).toDouble(), o.get(6).toDouble(), o.get(7).toDouble(),
        o.get(8).toBool(), o.get(9).toDouble(), o.get(10).toDouble(), classes, o.get(12).toBool(),
        o.get(13).toOptional<int64_t>(), o.get(14).toBool(), o.get(15).toStringView(),
        o.get(16).toStringView(), o.get(17).toDouble(), o.get(18).toDouble(), o.get(19).toBool(),
        o.get(20).toOptional<double>(), o.get(21).toBool(), o.get(22).toStringView(),
        o.get(23).toDouble());
    return out;
  }
};

// softiou::_loss_backward under grad mode (create_graph=True): computed below autograd;
// differentiating it again is an error.
struct SoftiouLossBackward : public torch::autograd::Function<SoftiouLossBackward> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& grad,
                            const at::Tensor& input, const at::Tensor& target,
                            const std::optional<at::Tensor>& weight, const at::Tensor& coef,
                            SOFTIOU_LOSS_OPTION_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return softiou::loss_backward_op().call(grad, input, target, weight, coef,
                                            SOFTIOU_LOSS_OPTION_ARGS);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list) {
    TORCH_CHECK(false, "softiou: the loss is differentiable once; its second derivative (double "
                "backward) is not supported");
  }
};

// softiou::finalize: forward _finalize -> (loss, coef); backward grad_stats = coef * grad.
struct SoftiouFinalize : public torch::autograd::Function<SoftiouFinalize> {
  static constexpr int kArgs = 17;  // arguments of forward after the context

  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& stats,
                            const std::optional<at::Tensor>& class_weight,
                            SOFTIOU_FINALIZE_OPTION_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, coef] =
        softiou::finalize_op().call(stats, class_weight, SOFTIOU_FINALIZE_OPTION_ARGS);
    ctx->save_for_backward({coef});
    // rows, per image, one gradient per pair, one per row (the generalized Dice score)
    ctx->saved_data["shape"] = c10::List<int64_t>(
        {stats.size(0), per_image, reduction == "none", metric == "generalized_dice"});
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(kArgs);
    if (!ctx->needs_input_grad(0)) return out;
    // the coefficients are constants of the first derivative: no second derivative through them
    at::NoGradGuard no_grad;
    const at::Tensor coef = ctx->get_saved_variables()[0];
    const at::Tensor& g = grads[0];
    const auto shape = ctx->saved_data["shape"].toIntVector();
    // the gradient of the loss: a scalar, or one value per pair ([rows, C]) or per row of the
    // generalized Dice score ([rows, 1])
    const int64_t per_row = shape[3] ? 1 : coef.size(1);
    at::Tensor gs = shape[2] ? coef * g.reshape({coef.size(0), per_row, 1}) : coef * g;
    if (!shape[1]) gs = gs.expand({shape[0], coef.size(1), 3});
    out[0] = gs;
    return out;
  }
};

namespace softiou {
namespace {

at::Tensor loss_autograd(const at::Tensor& input, const at::Tensor& target,
                         const std::optional<at::Tensor>& weight, SOFTIOU_LOSS_OPTION_PARAMS) {
  refuse_grad("target", target);
  refuse_grad("weight", weight);
  refuse_grad("class_weight", class_weight);
  return SoftiouLoss::apply(input, target, weight, SOFTIOU_LOSS_OPTION_ARGS);
}

at::Tensor loss_backward_autograd(const at::Tensor& grad, const at::Tensor& input,
                                  const at::Tensor& target,
                                  const std::optional<at::Tensor>& weight, const at::Tensor& coef,
                                  SOFTIOU_LOSS_OPTION_PARAMS) {
  if (!at::GradMode::is_enabled()) {  // a first derivative (the usual backward): no graph to keep
    at::AutoDispatchBelowADInplaceOrView guard;
    return loss_backward_op().call(grad, input, target, weight, coef, SOFTIOU_LOSS_OPTION_ARGS);
  }
  return SoftiouLossBackward::apply(grad, input, target, weight, coef, SOFTIOU_LOSS_OPTION_ARGS);
}

at::Tensor finalize_autograd(const at::Tensor& stats, const std::optional<at::Tensor>& class_weight,
                             SOFTIOU_FINALIZE_OPTION_PARAMS) {
  refuse_grad("class_weight", class_weight);
  return SoftiouFinalize::apply(stats, class_weight, SOFTIOU_FINALIZE_OPTION_ARGS);
}

}  // namespace

TORCH_LIBRARY_IMPL(softiou, Autograd, m) {
  m.impl("loss", &loss_autograd);
  m.impl("_loss_backward", &loss_backward_autograd);
  m.impl("finalize", &finalize_autograd);
}

}  // namespace softiou
