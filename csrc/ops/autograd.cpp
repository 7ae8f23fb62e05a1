// The autograd of the softiou operators, in C++ (as torchvision's ops have theirs): a call from
// Python is one dispatcher call, with no Python autograd and no Python tensor work around it.
//
//   loss            forward: stats, then finalize -> (loss, coef, ce_coef); backward: one
//                   stats_backward from coef and ce_coef times the loss's gradient (the
//                   gradient pass reads ce_coef where the options have the cross-entropy)
//   stats           backward: stats_backward from the gradients of the statistics and sums
//   finalize        backward: coef and ce_coef times the loss's gradient
//   stats_backward  differentiable once: a second derivative is an error
//
// Every node calls the operators through the dispatcher below autograd, so torch.compile
// (AOTAutograd) and torch.export trace them with the fake kernels of softiou_cuda/operators.py.
// PyTorch refuses C++ autograd functions under the torch.func transforms: there
// softiou_cuda/route.py applies the same operators from a Python autograd function
// (operators.LossUnderTransforms).
//
// What a backward needs of the forward's options is kept as compiled autograd
// (torch._dynamo.compiled_autograd) can take it: values in one list, which it hashes as constants
// of the node (a capsule it cannot hash; a number at the top of saved_data it would make an input
// of its graph, which the backward then reads as a symbol).
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "library.h"

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace softiou {
namespace {

void refuse_grad(const char* name, const std::optional<at::Tensor>& t) {
  TORCH_CHECK_VALUE(!(t.has_value() && t->defined() && t->requires_grad()), "softiou: ", name,
                    " requires grad, but softiou does not differentiate with respect to the ",
                    name, "; pass ", name, ".detach()");
}

std::optional<at::Tensor> optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Whether a call must record a node: grad mode on and the input requiring grad.
bool records(const at::Tensor& input) {
  return at::GradMode::is_enabled() && input.requires_grad();
}

}  // namespace
}  // namespace softiou

// The autograd Functions are at global scope, under names of their own: a loss prints as
// tensor(..., grad_fn=<CppNode<SoftiouLoss>>) (torch shows a node's name after its last "::").

// softiou::loss: forward stats + finalize, backward one gradient pass.
struct SoftiouLoss : public torch::autograd::Function<SoftiouLoss> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& class_weight, SOFTIOU_LOSS_OPTIONS) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const auto [stats, ce, counts] =
        softiou::stats_op().call(input, target, weight, class_weight,
                                 SOFTIOU_PHASE_STATISTICS_ARGS, SOFTIOU_COUNTS_DEFAULTS, backend);
    auto [loss, coef, ce_coef] = softiou::finalize_op().call(stats, ce, class_weight,
                                                             SOFTIOU_FINALIZE_ARGS);
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()), coef, ce_coef,
                            class_weight.value_or(at::Tensor())});
    ctx->saved_data["options"] =
        softiou::save_stats_options(SOFTIOU_PHASE_STATISTICS_ARGS, backend);
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(softiou::kLossArguments);
    if (!ctx->needs_input_grad(0)) return out;
    const auto saved = ctx->get_saved_variables();
    using softiou::optional;
    out[0] = softiou::call_with_stats_options(
        softiou::stats_backward_op(), ctx->saved_data["options"].toList(), saved[3],
        optional(saved[4]), std::optional<at::Tensor>(grads[0]), saved[0], saved[1],
        optional(saved[2]), optional(saved[5]));
    return out;
  }
};

// softiou::stats: backward, one gradient pass from the gradients of its two floating outputs. The
// counts are integers, which autograd leaves without a gradient; stats_autograd hands them out
// detached (marked non-differentiable instead, the node would not go through compiled autograd).
struct SoftiouStats : public torch::autograd::Function<SoftiouStats> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& class_weight,
                               SOFTIOU_STATS_OPTIONS) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [stats, ce, counts] =
        softiou::stats_op().call(input, target, weight, class_weight, SOFTIOU_STATS_ARGS);
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()),
                            class_weight.value_or(at::Tensor())});
    ctx->saved_data["options"] =
        softiou::save_stats_options(SOFTIOU_PHASE_STATISTICS_ARGS, backend);
    ctx->saved_data["shape"] = c10::List<int64_t>({stats.size(0), stats.size(1)});
    ctx->set_materialize_grads(false);  // an unused output: no pass over its zeros
    return {stats, ce, counts};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(softiou::kStatsArguments);
    if (!ctx->needs_input_grad(0) || (!grads[0].defined() && !grads[1].defined())) return out;
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_stats = grads[0];
    if (!grad_stats.defined()) {  // only the cross-entropy's sums were used
      const auto shape = ctx->saved_data["shape"].toIntVector();
      grad_stats = at::zeros({1, shape[1], 3}, grads[1].options());
    }
    using softiou::optional;
    out[0] = softiou::call_with_stats_options(
        softiou::stats_backward_op(), ctx->saved_data["options"].toList(), grad_stats,
        optional(grads[1]), std::optional<at::Tensor>(), saved[0], saved[1], optional(saved[2]),
        optional(saved[3]));
    return out;
  }
};

// softiou::finalize: backward, the coefficients times the loss's gradient. Its coefficient
// outputs are derivatives of the loss, constants of the graph: finalize_autograd hands them out
// detached (marked non-differentiable instead, the node would not go through compiled
// autograd).
struct SoftiouFinalize : public torch::autograd::Function<SoftiouFinalize> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& stats,
                               const std::optional<at::Tensor>& ce,
                               const std::optional<at::Tensor>& class_weight,
                               SOFTIOU_FINALIZE_OPTIONS) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, coef, ce_coef] =
        softiou::finalize_op().call(stats, ce, class_weight, SOFTIOU_FINALIZE_ARGS);
    ctx->save_for_backward({coef, ce_coef});
    ctx->set_materialize_grads(false);
    // the rows of the statistics and of the sums (0: none given)
    const bool has_ce = ce.has_value() && ce->defined();
    ctx->saved_data["shape"] = c10::List<int64_t>({stats.size(0), has_ce ? ce->size(0) : 0});
    return {loss, coef, ce_coef};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(softiou::kFinalizeArguments);
    const at::Tensor& g = grads[0];
    if (!g.defined()) return out;
    // the coefficients are constants of the first derivative: no second derivative through them
    at::NoGradGuard no_grad;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& coef = saved[0];
    const auto shape = ctx->saved_data["shape"].toIntVector();
    if (ctx->needs_input_grad(0)) {
      // the gradient of the loss: a scalar, or one value per pair ([rows, C] or [C]) or per row
      // of the generalized Dice score ([rows, 1] or [1])
      const at::Tensor gv = g.dim() == 0 ? g : g.reshape({coef.size(0), -1, 1});
      out[0] = (coef * gv).expand({shape[0], coef.size(1), 3});
    }
    if (shape[1] > 0 && ctx->needs_input_grad(1)) {  // (an edge only where ce was given)
      // the cross-entropy term exists with a scalar loss only: otherwise ce_coef is 0
      out[1] = g.dim() == 0 ? (saved[1] * g).expand({shape[1], 2})
                            : at::zeros({shape[1], 2}, coef.options());
    }
    return out;
  }
};

// softiou::stats_backward under grad mode (create_graph=True): computed below autograd;
// differentiating it again is an error.
struct SoftiouStatsBackward : public torch::autograd::Function<SoftiouStatsBackward> {
  static at::Tensor forward(AutogradContext*, const at::Tensor& grad_stats,
                            const std::optional<at::Tensor>& grad_ce,
                            const std::optional<at::Tensor>& grad_out, const at::Tensor& input,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& class_weight,
                            SOFTIOU_STATS_BACKWARD_OPTIONS) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return softiou::stats_backward_op().call(grad_stats, grad_ce, grad_out, input, target, weight,
                                             class_weight, SOFTIOU_STATS_BACKWARD_ARGS);
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false, "softiou: the loss is differentiable once; its second derivative (double "
                "backward) is not supported");
  }
};

namespace softiou {
namespace {

at::Tensor loss_autograd(const at::Tensor& input, const at::Tensor& target,
                         const std::optional<at::Tensor>& weight,
                         const std::optional<at::Tensor>& class_weight, SOFTIOU_LOSS_OPTIONS) {
  refuse_grad("target", target);
  refuse_grad("weight", weight);
  refuse_grad("class_weight", class_weight);
  if (!records(input)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return loss_op().call(input, target, weight, class_weight, SOFTIOU_LOSS_ARGS);
  }
  return SoftiouLoss::apply(input, target, weight, class_weight, SOFTIOU_LOSS_ARGS);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stats_autograd(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& class_weight, SOFTIOU_STATS_OPTIONS) {
  refuse_grad("target", target);
  refuse_grad("weight", weight);
  refuse_grad("class_weight", class_weight);
  if (!records(input)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return stats_op().call(input, target, weight, class_weight, SOFTIOU_STATS_ARGS);
  }
  const auto out = SoftiouStats::apply(input, target, weight, class_weight, SOFTIOU_STATS_ARGS);
  return {out[0], out[1], out[2].detach()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> finalize_autograd(
    const at::Tensor& stats, const std::optional<at::Tensor>& ce,
    const std::optional<at::Tensor>& class_weight, SOFTIOU_FINALIZE_OPTIONS) {
  refuse_grad("class_weight", class_weight);
  const bool grad = at::GradMode::is_enabled() &&
                    (stats.requires_grad() || (ce.has_value() && ce->defined() &&
                                               ce->requires_grad()));
  if (!grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return finalize_op().call(stats, ce, class_weight, SOFTIOU_FINALIZE_ARGS);
  }
  const auto out = SoftiouFinalize::apply(stats, ce, class_weight, SOFTIOU_FINALIZE_ARGS);
  return {out[0], out[1].detach(), out[2].detach()};
}

at::Tensor stats_backward_autograd(const at::Tensor& grad_stats,
                                   const std::optional<at::Tensor>& grad_ce,
                                   const std::optional<at::Tensor>& grad_out,
                                   const at::Tensor& input, const at::Tensor& target,
                                   const std::optional<at::Tensor>& weight,
                                   const std::optional<at::Tensor>& class_weight,
                                   SOFTIOU_STATS_BACKWARD_OPTIONS) {
  if (!at::GradMode::is_enabled()) {  // a first derivative (the usual backward): no graph to keep
    at::AutoDispatchBelowADInplaceOrView guard;
    return stats_backward_op().call(grad_stats, grad_ce, grad_out, input, target, weight,
                                    class_weight, SOFTIOU_STATS_BACKWARD_ARGS);
  }
  return SoftiouStatsBackward::apply(grad_stats, grad_ce, grad_out, input, target, weight,
                                     class_weight, SOFTIOU_STATS_BACKWARD_ARGS);
}

}  // namespace

TORCH_LIBRARY_IMPL(softiou, Autograd, m) {
  m.impl("loss", &loss_autograd);
  m.impl("stats", &stats_autograd);
  m.impl("finalize", &finalize_autograd);
  m.impl("stats_backward", &stats_backward_autograd);
}

}  // namespace softiou
