// The softiou operators as C++ calls them (through the dispatcher, so that autograd, tracing and
// dispatch modes see them): their signatures and handles.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

#include "../generated/operators.h"

namespace softiou {

using LossSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           const std::optional<at::Tensor>&, SOFTIOU_LOSS_OPTIONS);
using StatsSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, SOFTIOU_STATS_OPTIONS);
using StatsBackwardSig = at::Tensor(
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, SOFTIOU_STATS_BACKWARD_OPTIONS);
using FinalizeSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    SOFTIOU_FINALIZE_OPTIONS);

const c10::TypedOperatorHandle<LossSig>& loss_op();
const c10::TypedOperatorHandle<StatsSig>& stats_op();
const c10::TypedOperatorHandle<StatsBackwardSig>& stats_backward_op();
const c10::TypedOperatorHandle<FinalizeSig>& finalize_op();

}  // namespace softiou
