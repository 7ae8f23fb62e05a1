"""The loss and its phases with the options as one value (a :class:`~softiou_cuda.options.
LossOptions`, made and checked by :func:`softiou_cuda.make_options`): the form for code that
builds its options once, and that TorchScript compiles (softiou_cuda.compat's modules are
scriptable through :func:`loss`).

    opts = softiou_cuda.make_options(metric="dice", ignore_index=255)
    loss = softiou_cuda.functional.loss(logits, target, None, None, opts)

    # the phases: statistics, anything in between (an all-reduce, a replaced column), finalize
    stats, ce = softiou_cuda.functional.statistics(logits, target, None, None, opts)
    loss = softiou_cuda.functional.finalize(stats, ce, None, opts)
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import route
from .options import LossOptions


def loss(input: Tensor, target: Tensor, weight: Optional[Tensor],
         class_weight: Optional[Tensor], options: LossOptions, backend: str = "auto") -> Tensor:
    """The loss (:func:`softiou_cuda.soft_iou_loss`) of these options. Under TorchScript it is
    the operator ``softiou::loss`` (the fused kernels of the tensors' device, or ``backend``)."""
    if torch.jit.is_scripting():
        return torch.ops.softiou.loss(input, target, weight, class_weight, *options, backend)
    return _route_loss(input, target, weight, class_weight, options, backend)


def _route_loss(input, target, weight, class_weight, options, backend):
    return route.loss(input, target, weight, class_weight, options, backend)


def statistics(input: Tensor, target: Tensor, weight: Optional[Tensor],
               class_weight: Optional[Tensor], options: LossOptions,
               backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """The statistics pass (SPEC section 3): ``I, P, Y`` per (sample, class) ``[N, C, 3]``, and
    the cross-entropy's numerator and denominator per sample ``[N, 2]`` (zeros unless
    ``options.ce_weight > 0``; SPEC section 9), differentiable with respect to the input."""
    stats, ce, _ = route.statistics(input, target, weight, class_weight, options, backend)
    return stats, ce


def finalize(stats: Tensor, ce: Optional[Tensor], class_weight: Optional[Tensor],
             options: LossOptions, backend: str = "auto") -> Tensor:
    """The finalize step (SPEC sections 4, 5, 9): the loss from the statistics ``[N, C, 3]`` and
    the cross-entropy's sums ``[N', 2]`` (read when ``options.ce_weight > 0``), differentiable
    with respect to both."""
    return route.finalize(stats, ce, class_weight, options, backend)
