"""Registration of the compiled operators: fake kernels, autograd, and the body of ``softiou::loss``.

The schemas and the CPU/CUDA kernels are C++ (``csrc/ops.cpp``, ``csrc/cpu``, ``csrc/cuda``);
importing ``softiou_cuda._C`` loads them. This module adds, in the manner of
pytorch/extension-cpp:

* ``register_fake`` for ``softiou::stats`` and ``softiou::stats_backward``, so FakeTensor tracing
  (``torch.compile``, ``torch.export``) knows their output shapes;
* ``register_autograd`` for ``softiou::stats``: its backward is ``softiou::stats_backward``;
* the ``CompositeImplicitAutograd`` body of ``softiou::loss``: the statistics op followed by the
  scores and reduction of SPEC sections 4-5, so autograd and torch.compile see through it.
"""

from __future__ import annotations

import torch

from . import reference

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
    """The instruction set the CPU kernels run with ("avx2" or "baseline")."""
    return _C.cpu_isa() if HAS_EXTENSION else "none"


def _stats_fake(input, target, weight, mode, from_logits, sharpness, intersection, ignore_index):
    acc = reference.accumulation_dtype(input.dtype)
    return input.new_empty((input.shape[0], input.shape[1], 3), dtype=acc)


def _stats_backward_fake(grad_stats, input, target, weight, mode, from_logits, sharpness,
                         intersection, ignore_index):
    return torch.empty_like(input)


def register_stats_autograd(op, backward_op):
    """Registers the autograd of a statistics op (``softiou::stats``, ``softiou::triton_stats``):
    its backward is ``backward_op(grad_stats, input, target, weight, *options)``; the target and
    the weight are not differentiated (a clear error if they require grad)."""

    def setup_context(ctx, inputs, output):
        input, target, weight, mode, from_logits, sharpness, intersection, ignore_index = inputs
        for name, tensor in (("target", target), ("weight", weight)):
            if tensor is not None and tensor.requires_grad:
                raise ValueError(f"{name} requires grad, but softiou does not differentiate with "
                                 f"respect to the {name}; pass {name}.detach()")
        ctx.save_for_backward(input, target, weight)
        ctx.options = (mode, from_logits, sharpness, intersection, ignore_index)

    def backward(ctx, grad_stats):
        input, target, weight = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = backward_op(grad_stats, input, target, weight, *ctx.options)
        return grad_input, None, None, None, None, None, None, None

    torch.library.register_autograd(op, backward, setup_context=setup_context)


def stats(x, t, w, mode, from_logits, sharpness, intersection, ignore_index):
    """The compiled statistics op on normalized inputs (see reference.normalize_inputs)."""
    return torch.ops.softiou.stats(x, t, w, mode, from_logits, sharpness, intersection,
                                   ignore_index)


def fused_loss(stats_fn, input, target, weight=None, *, mode="multiclass", from_logits=True,
               sharpness=1.0, intersection="product", metric="jaccard", alpha=0.5, beta=0.5,
               gamma=1.0, log_loss=False, smooth=0.0, eps=1e-7, class_weight=None, classes=None,
               include_background=True, ignore_index=None, per_image=True, absent="include",
               reduction="mean", process_group=None):
    """SPEC sections 1, 4, 5 and 7 around a fused statistics function ``stats_fn``."""
    x, t, w = reference.normalize_inputs(input, target, weight, mode)
    reference.check_options(
        x.shape[1], x.device, mode=mode, from_logits=from_logits, sharpness=sharpness,
        intersection=intersection, metric=metric, alpha=alpha, beta=beta, gamma=gamma,
        log_loss=log_loss, smooth=smooth, eps=eps, class_weight=class_weight, classes=classes,
        include_background=include_background, ignore_index=ignore_index, per_image=per_image,
        absent=absent, reduction=reduction)
    s = stats_fn(x, t, w, mode, from_logits, float(sharpness), intersection, ignore_index)
    return reference.loss_from_stats(
        s, metric=metric, alpha=alpha, beta=beta, gamma=gamma, log_loss=log_loss,
        smooth=smooth, eps=eps, class_weight=class_weight, classes=classes,
        include_background=include_background, per_image=per_image, absent=absent,
        reduction=reduction, process_group=process_group)


def _loss_composite(input, target, weight=None, **options):
    return fused_loss(stats, input, target, weight, **options)


if HAS_EXTENSION:
    torch.library.register_fake("softiou::stats")(_stats_fake)
    torch.library.register_fake("softiou::stats_backward")(_stats_backward_fake)
    register_stats_autograd("softiou::stats",
                            lambda *args: torch.ops.softiou.stats_backward(*args))
    torch.library.impl("softiou::loss", "CompositeImplicitAutograd")(_loss_composite)
