"""The ``softiou::`` operators, where the three folders meet.

* ``csrc/`` defines them (schemas generated from :mod:`softiou_cuda.options`), with their CPU and
  CUDA kernels and their autograd in C++: importing ``softiou_cuda._C`` loads them.
* ``triton_kernels/`` registers the Triton backend's operators of the same phases
  (``softiou::triton_stats``, ``triton_stats_backward``, ``triton_finalize``, same schemas but the
  backend), which the C++ operators call for ``backend="triton"``.
* This module gives every operator its fake kernel (torch.compile and torch.export trace with it;
  shared with the Triton operators), and :class:`LossUnderTransforms`, the loss under the
  ``torch.func`` transforms, which refuse C++ autograd functions.

===================== ===========================================================================
``loss``              the loss: ``stats`` then ``finalize`` forward, ``stats_backward`` backward
``stats``             the statistics pass: ``(stats [N, C, 3], ce [N, 2])``
``stats_backward``    the gradient pass: the input's gradient from the statistics' (and sums')
``finalize``          the finalize step: ``(loss, coef [rows, C, 3], ce_coef [1, 2])``
===================== ===========================================================================
"""

from __future__ import annotations

import torch

from . import options as declared

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


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the statistics and of the loss: float64 for float64 input, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# Fake kernels. Tensors on different devices reach them (a meta tensor among CPU tensors
# dispatches to Meta): they raise what the kernels raise.
# ---------------------------------------------------------------------------------------------
def _same_device(first, **others):
    for name, tensor in others.items():
        if tensor is not None and tensor.device != first.device:
            raise ValueError(f"softiou: {name} is on {tensor.device} but input is on "
                             f"{first.device}")


def stats_fake(input, target, weight=None, class_weight=None, *args, **kwargs):
    _same_device(input, target=target, weight=weight, class_weight=class_weight)
    fields = declared.STATS_FIELDS + declared.COUNTS_FIELDS
    stats, ce, counts = declared.stats_shapes(input.shape, declared.named(fields, args, kwargs))
    acc = accumulation_dtype(input.dtype)
    return (input.new_empty(stats, dtype=acc), input.new_empty(ce, dtype=acc),
            input.new_empty(counts, dtype=torch.int64))


def stats_backward_fake(grad_stats, grad_ce, grad_out, input, target, weight=None,
                        class_weight=None, *args, **kwargs):
    _same_device(input, grad_stats=grad_stats, grad_ce=grad_ce, grad_out=grad_out,
                 target=target, weight=weight)
    return torch.empty_like(input)


def finalize_fake(stats, ce=None, class_weight=None, *args, **kwargs):
    _same_device(stats, ce=ce, class_weight=class_weight)
    shapes = declared.finalize_shapes(stats.shape[0], stats.shape[1],
                                      declared.named(declared.FINALIZE_FIELDS, args, kwargs))
    return tuple(stats.new_empty(shape) for shape in shapes)


FAKES = {"stats": stats_fake, "stats_backward": stats_backward_fake, "finalize": finalize_fake}

if HAS_EXTENSION:
    for _name, _fake in FAKES.items():
        torch.library.register_fake(f"softiou::{_name}")(_fake)


# ---------------------------------------------------------------------------------------------
# The loss under the torch.func transforms
# ---------------------------------------------------------------------------------------------
def _below_autograd_loss(input, target, weight, class_weight, options, backend):
    stats, ce, _ = torch.ops.softiou.stats(input, target, weight, class_weight,
                                           *declared.stats_args(options),
                                           *declared.counts_args(), backend)
    return torch.ops.softiou.finalize(stats, ce, class_weight,
                                      *declared.finalize_args(options), backend)


class LossUnderTransforms(torch.autograd.Function):
    """``softiou::loss`` as ``torch.func`` (grad, vjp, jacrev, vmap) takes it: PyTorch refuses
    C++ autograd functions under those transforms, so while one is active the loss's operators
    run from this Python function instead: the forward and backward of the C++ node
    (csrc/ops/autograd.cpp), the same operators, so the same results; under vmap they run once
    per slice of the vmapped dim.

    ``apply(input, target, weight, class_weight, options, backend) -> (loss, coef, ce_coef)``."""

    @staticmethod
    def forward(input, target, weight, class_weight, options, backend):
        return _below_autograd_loss(input, target, weight, class_weight, options, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, class_weight, options, backend = inputs
        for name, tensor in (("target", target), ("weight", weight),
                             ("class_weight", class_weight)):
            if tensor is not None and tensor.requires_grad:
                raise ValueError(f"softiou: {name} requires grad, but softiou does not "
                                 f"differentiate with respect to the {name}; pass "
                                 f"{name}.detach()")
        _, coef, ce_coef = output
        ctx.save_for_backward(input, target, weight, class_weight, coef, ce_coef)
        ctx.options, ctx.backend = options, backend
        ctx.mark_non_differentiable(coef, ce_coef)

    @staticmethod
    def backward(ctx, grad, _grad_coef, _grad_ce_coef):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        input, target, weight, class_weight, coef, ce_coef = ctx.saved_tensors
        return (_LossGradient.apply(coef, ce_coef, grad, input, target, weight, class_weight,
                                    ctx.options, ctx.backend),
                None, None, None, None, None)

    @staticmethod
    def vmap(info, in_dims, *args):
        return _per_slice(info, in_dims, args, LossUnderTransforms.apply)


class _LossGradient(torch.autograd.Function):
    """The gradient pass of :class:`LossUnderTransforms`: differentiable no further, as the
    C++ autograd's (a second derivative is an error, not a silent zero)."""

    @staticmethod
    def forward(coef, ce_coef, grad, input, target, weight, class_weight, options, backend):
        return torch.ops.softiou.stats_backward(coef, ce_coef, grad, input, target, weight,
                                                class_weight, *declared.stats_args(options),
                                                backend)

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
