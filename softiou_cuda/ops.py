"""Registration of the compiled operators' fake kernels, and the autograd of the statistics op.

The schemas, the CPU/CUDA kernels and the autograd of ``softiou::loss`` and ``softiou::finalize``
are C++ (``csrc/``); importing ``softiou_cuda._C`` loads them. This module adds, in the manner of
pytorch/extension-cpp:

* ``register_fake`` for every operator, so FakeTensor tracing (``torch.compile``,
  ``torch.export``) knows their output shapes;
* ``register_autograd`` for ``softiou::stats``: its backward is ``softiou::stats_backward``
  (the same helper serves the Triton backend's ``softiou::triton_stats``);
* :class:`LossUnderTransforms`: the loss's ops under the ``torch.func`` transforms, which
  refuse C++ autograd functions.
"""

from __future__ import annotations

import torch

from .checks import LossOptions, accumulation_dtype, refuse_grad

try:
    from . import _C  # noqa: F401  (loads the library: torch.ops.softiou.*)

    HAS_EXTENSION = True
    IMPORT_ERROR = None
except ImportError as exc:  # built without the extension, or not built yet
    HAS_EXTENSION = False
    IMPORT_ERROR = exc


# read once: a call into the extension module is opaque to torch.compile (a graph break)
HAS_CUDA_KERNELS = bool(HAS_EXTENSION and _C.has_cuda())


def has_cuda_kernels() -> bool:
    """Whether the CUDA kernels were compiled into the extension."""
    return HAS_CUDA_KERNELS


def cpu_isa() -> str:
    """The instruction set the CPU kernels run with: "avx512", "avx2" or "baseline" (the best
    this processor runs, or the one the environment variable ``SOFTIOU_CPU_ISA`` names)."""
    return _C.cpu_isa() if HAS_EXTENSION else "none"


def cpu_isas() -> tuple:
    """The instruction sets of the CPU kernels this processor runs, best first."""
    return _C.cpu_isas() if HAS_EXTENSION else ()


# ---------------------------------------------------------------------------------------------
# Output shapes (shared with the Triton operators)
# ---------------------------------------------------------------------------------------------
def loss_shape(rows: int, num_classes: int, per_image: bool, reduction: str,
               metric: str = "jaccard") -> tuple:
    """The loss: [] for mean and sum; [N, C] per image or [C] pooled for none ([N, 1] or [1]
    for the generalized Dice score, one value per row)."""
    if reduction != "none":
        return ()
    cols = 1 if metric == "generalized_dice" else num_classes
    return (rows, cols) if per_image else (cols,)


def input_classes(input: torch.Tensor, mode: str) -> int:
    """C of an input as the loss takes it (binary [N, *S] input has one class)."""
    return 1 if mode == "binary" else input.shape[1]


def loss_outputs_like(input, mode, per_image, reduction, metric="jaccard"):
    """Empty (loss, coefficients) for an input of the loss: the coefficients are
    [rows * C * 3 + 1], d loss / d (I, P, Y) of every pair then d loss / d the cross-entropy's
    numerator (csrc/op_common.h: coef_elems)."""
    N, C = input.shape[0], input_classes(input, mode)
    acc = accumulation_dtype(input.dtype)
    loss = input.new_empty(loss_shape(N, C, per_image, reduction, metric), dtype=acc)
    return loss, input.new_empty(((N if per_image else 1) * C * 3 + 1,), dtype=acc)


def finalize_outputs_like(stats, per_image, reduction, metric="jaccard"):
    """Empty (loss, coefficients) of the finalize step on statistics [N, C, 3]."""
    N, C = stats.shape[0], stats.shape[1]
    loss = stats.new_empty(loss_shape(N, C, per_image, reduction, metric))
    return loss, stats.new_empty((N if per_image else 1, C, 3))


# ---------------------------------------------------------------------------------------------
# Fake kernels. Tensors on different devices reach them (a meta tensor among CPU tensors
# dispatches to Meta): they raise what the kernels raise.
# ---------------------------------------------------------------------------------------------
def _same_device(input, **others):
    for name, tensor in others.items():
        if tensor is not None and tensor.device != input.device:
            raise ValueError(f"softiou: {name} is on {tensor.device} but input is on "
                             f"{input.device}")


def _stats_fake(input, target, weight, mode, from_logits, sharpness, intersection, ignore_index,
                squared=False):
    _same_device(input, target=target, weight=weight)
    acc = accumulation_dtype(input.dtype)
    return input.new_empty((input.shape[0], input.shape[1], 3), dtype=acc)


def _stats_backward_fake(grad_stats, input, target, weight, mode, from_logits, sharpness,
                         intersection, ignore_index, squared=False):
    _same_device(input, target=target, weight=weight, grad_stats=grad_stats)
    return torch.empty_like(input)


def _stats_ce_fake(input, target, weight, class_weight, mode, from_logits, sharpness,
                   intersection, ignore_index, label_smoothing, ce_pos_weight=1.0,
                   squared=False):
    _same_device(input, target=target, weight=weight, class_weight=class_weight)
    acc = accumulation_dtype(input.dtype)
    return (input.new_empty((input.shape[0], input.shape[1], 3), dtype=acc),
            input.new_empty((input.shape[0], 2), dtype=acc))


def _stats_ce_backward_fake(grad_stats, grad_ce, input, *args):
    _same_device(input, grad_stats=grad_stats, grad_ce=grad_ce)
    return torch.empty_like(input)


def _loss_options(options, named) -> LossOptions:
    """The options of a loss schema, passed in schema order and/or by name."""
    return LossOptions(*options)._replace(**named)


def _loss_forward_fake(input, target, weight=None, class_weight=None, *options, **named):
    _same_device(input, target=target, weight=weight, class_weight=class_weight)
    o = _loss_options(options, named)
    return loss_outputs_like(input, o.mode, o.per_image, o.reduction, o.metric)


def _loss_fake(*args, **kwargs):
    return _loss_forward_fake(*args, **kwargs)[0]


def _loss_backward_fake(grad, input, target, weight, coef, class_weight=None, *options, **named):
    _same_device(input, target=target, weight=weight, coef=coef, class_weight=class_weight)
    return torch.empty_like(input)


def _finalize_forward_fake(stats, class_weight=None, *, per_image=True, reduction="mean",
                           metric="jaccard", **_):
    _same_device(stats, class_weight=class_weight)
    return finalize_outputs_like(stats, per_image, reduction, metric)


def _finalize_fake(*args, **kwargs):
    return _finalize_forward_fake(*args, **kwargs)[0]


# ---------------------------------------------------------------------------------------------
# Autograd of the statistics op
# ---------------------------------------------------------------------------------------------
def register_stats_autograd(op, backward_op):
    """Registers the autograd of a statistics op (``softiou::stats``, ``softiou::triton_stats``):
    its backward is ``backward_op(grad_stats, input, target, weight, *options)``; the target and
    the weight are not differentiated (a clear error if they require grad)."""

    def setup_context(ctx, inputs, output):
        input, target, weight = inputs[:3]
        refuse_grad("target", target)
        refuse_grad("weight", weight)
        ctx.save_for_backward(input, target, weight)
        ctx.options = tuple(inputs[3:])  # mode ... ignore_index, squared

    def backward(ctx, grad_stats):
        input, target, weight = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = backward_op(grad_stats, input, target, weight, *ctx.options)
        return (grad_input,) + (None,) * (2 + len(ctx.options))

    torch.library.register_autograd(op, backward, setup_context=setup_context)


def register_stats_ce_autograd(op, backward_op):
    """The autograd of a statistics op with the cross-entropy's per-sample sums
    (``softiou::stats_ce``, ``softiou::triton_stats_ce``): its backward is
    ``backward_op(grad_stats, grad_ce, input, target, weight, class_weight, *options)``."""

    def setup_context(ctx, inputs, output):
        input, target, weight, class_weight = inputs[:4]
        for name, tensor in (("target", target), ("weight", weight),
                             ("class_weight", class_weight)):
            refuse_grad(name, tensor)
        ctx.save_for_backward(input, target, weight, class_weight)
        ctx.options = inputs[4:]

    def backward(ctx, grad_stats, grad_ce):
        input, target, weight, class_weight = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            if grad_stats is None:
                grad_stats = input.new_zeros((input.shape[0], input.shape[1], 3),
                                             dtype=accumulation_dtype(input.dtype))
            grad_input = backward_op(grad_stats, grad_ce, input, target, weight, class_weight,
                                     *ctx.options)
        return (grad_input,) + (None,) * (3 + len(ctx.options))

    torch.library.register_autograd(op, backward, setup_context=setup_context)


def stats(x, t, w, mode, from_logits, sharpness, intersection, ignore_index, squared=False):
    """The compiled statistics op on normalized inputs (see checks.normalize_inputs)."""
    return torch.ops.softiou.stats(x, t, w, mode, from_logits, sharpness, intersection,
                                   ignore_index, squared)


if HAS_EXTENSION:
    for _name, _fake in (("stats", _stats_fake), ("stats_backward", _stats_backward_fake),
                         ("loss", _loss_fake), ("_loss_forward", _loss_forward_fake),
                         ("_loss_backward", _loss_backward_fake), ("finalize", _finalize_fake),
                         ("_finalize", _finalize_forward_fake), ("stats_ce", _stats_ce_fake),
                         ("stats_ce_backward", _stats_ce_backward_fake)):
        torch.library.register_fake(f"softiou::{_name}")(_fake)
    register_stats_autograd("softiou::stats",
                            lambda *args: torch.ops.softiou.stats_backward(*args))
    register_stats_ce_autograd("softiou::stats_ce",
                               lambda *args: torch.ops.softiou.stats_ce_backward(*args))


# ---------------------------------------------------------------------------------------------
# The loss under the torch.func transforms
# ---------------------------------------------------------------------------------------------
class LossUnderTransforms(torch.autograd.Function):
    """``softiou::loss`` as ``torch.func`` (grad, vjp, jacrev, vmap) takes it: PyTorch refuses
    C++ autograd functions under those transforms, so while one is active the loss's two ops
    run from this Python function instead (the same forward and backward ops, so the same
    results); under vmap the ops run once per slice of the vmapped dim. Off the usual path:
    ``soft_iou_loss`` uses it only when ``torch._C._are_functorch_transforms_active()``.

    ``apply(input, target, weight, class_weight, options) -> (loss, coef)``."""

    @staticmethod
    def forward(input, target, weight, class_weight, options: LossOptions):
        return torch.ops.softiou._loss_forward(input, target, weight, class_weight, *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, class_weight, options = inputs
        for name, tensor in (("target", target), ("weight", weight),
                             ("class_weight", class_weight)):
            refuse_grad(name, tensor)
        ctx.save_for_backward(input, target, weight, class_weight, output[1])
        ctx.options = options
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad, _grad_coef):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        input, target, weight, class_weight, coef = ctx.saved_tensors
        return (_LossGradient.apply(grad, input, target, weight, coef, class_weight, ctx.options),
                None, None, None, None)

    @staticmethod
    def vmap(info, in_dims, *args):
        return _per_slice(info, in_dims, args, LossUnderTransforms.apply)


class _LossGradient(torch.autograd.Function):
    """The gradient pass of :class:`LossUnderTransforms`: differentiable no further, as the
    C++ autograd's (a second derivative is an error, not a silent zero)."""

    @staticmethod
    def forward(grad, input, target, weight, coef, class_weight, options: LossOptions):
        return torch.ops.softiou._loss_backward(grad, input, target, weight, coef, class_weight,
                                                *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("softiou: the loss is differentiable once; its second derivative "
                           "(double backward) is not supported")

    @staticmethod
    def vmap(info, in_dims, *args):
        return _per_slice(info, in_dims, args, _LossGradient.apply)


def _per_slice(info, in_dims, args, fn):
    """The vmap rule of the functions above: ``fn`` on each slice of the vmapped dim (the ops
    have no batching rule; PyTorch's fallback would do the same, with a warning), the results
    stacked along dim 0."""
    results = [fn(*(a.select(d, i) if isinstance(d, int) else a  # the options: a tree of None
                    for a, d in zip(args, in_dims)))
               for i in range(info.batch_size)]
    if isinstance(results[0], tuple):
        return tuple(torch.stack(r) for r in zip(*results)), (0,) * len(results[0])
    return torch.stack(results), 0
