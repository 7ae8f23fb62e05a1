"""The one place that routes a call: which implementation computes it, and how it is called.

=============  ===============================================================================
backend        computed by
=============  ===============================================================================
``cpu``        the fused C++ kernels (CPU tensors)
``cuda``       the fused CUDA kernels (CUDA tensors)
``triton``     the Triton kernels: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``
``reference``  ``softiou_cuda.reference``: eager PyTorch, any device
``auto``       the fused kernels for the tensor's device: cpu -> ``cpu``; cuda -> ``cuda``, else
               ``triton``; otherwise, or where none is built, ``reference`` with a one-time
               warning
=============  ===============================================================================

and the call: the reference in Python; with a process group, the statistics, their sum over the
batch and the ranks, the finalize step; under the ``torch.func`` transforms the operators from a
Python autograd function (PyTorch refuses C++ ones there); under ``torch.compile`` the operator
through ``torch.ops`` (Dynamo traces it); otherwise through the extension's own binding
(``_C.loss``: torch.ops' generic binding costs a few microseconds more per call), which hands back
to ``torch.ops`` what it does not take (tensor subclasses, a TorchFunctionMode).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import warnings

import torch

from . import distributed, operators, reference
from . import options as declared
from .options import LossOptions

BACKENDS = declared.BY_NAME["backend"].choices


# triton itself, and softiou's Triton kernels (installed as softiou_cuda.triton_kernels)
_TRITON_INSTALLED = (importlib.util.find_spec("triton") is not None
                     and importlib.util.find_spec("softiou_cuda.triton_kernels") is not None)


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device: torch.device | str) -> tuple:
    """The backends that can run on ``device`` in this installation (besides ``auto``)."""
    kind = torch.device(device).type
    names = []
    if kind == "cpu" and operators.HAS_EXTENSION:
        names.append("cpu")
    if (kind == "cuda" and operators.has_cuda_kernels()) or (kind == "cpu" and _cuda_emulated):
        names.append("cuda")
    if (triton_installed() and operators.HAS_EXTENSION
            and (kind == "cuda" or (kind == "cpu" and triton_interpreting()))):
        names.append("triton")
    names.append("reference")
    return tuple(names)


# For the tests: backend="cuda" on CPU tensors runs the CUDA kernels emulated on the CPU
# (tools/cuda_emulation.py; set by use_cuda_emulation)
_cuda_emulated = False


def use_cuda_emulation(module) -> None:
    """For the tests: ``backend="cuda"`` on CPU tensors runs the CUDA kernels' code emulated on
    the CPU (``module``: the emulation tools/cuda_emulation.py builds), or stops (``None``)."""
    global _cuda_emulated
    operators._C._set_cuda_emulation(None if module is None else module.phases())
    _cuda_emulated = module is not None
    _resolved.clear()


_warned = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=5)  # the caller of soft_iou_loss


_resolved: dict = {}


def resolve(backend: str, device: torch.device) -> str:
    """The concrete backend for ``backend`` on ``device``; a clear error if it cannot run there.
    Cached per (backend, device type): a call with a backend seen before is a dictionary lookup.
    The Triton operators are registered (softiou_cuda.triton_kernels imported) when it first
    resolves to them."""
    key = (backend, device.type)
    name = _resolved.get(key)
    if name is None:
        name = _resolve(backend, device)
        if name == "triton":
            triton_ops()
        _resolved[key] = name
    return name


def _resolve(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"softiou: backend must be one of {', '.join(map(repr, BACKENDS))}; "
                         f"got {backend!r}")
    names = available(device)
    if backend == "auto":
        kind = device.type
        preferred = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}.get(kind, ())
        for name in preferred:
            if name in names:
                return name
        why = (f"softiou was built without its kernels ({operators.IMPORT_ERROR})"
               if not operators.HAS_EXTENSION else f"no fused kernel is built for {kind} tensors")
        _warn_once(f"auto-{kind}", f"{why}; using the eager reference implementation, which is "
                   "slower and materialises a one-hot target")
        return "reference"
    if backend not in names:
        raise ValueError(f"softiou: backend={backend!r} cannot run on {device.type} tensors "
                         f"here; available: {', '.join(names)}")
    return backend


def triton_ops():
    """The Triton backend's module (``softiou_cuda.triton_kernels.ops``), imported on first use:
    importing it registers the Triton operators."""
    from .triton_kernels import ops as triton_ops_module
    return triton_ops_module


_loss_call = operators._C.loss if operators.HAS_EXTENSION else None
_loss_op = torch.ops.softiou.loss.default if operators.HAS_EXTENSION else None


def _check_input(input):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")


def check_process_group(options: LossOptions, process_group) -> None:
    if process_group is not None:  # (the rule holds without one)
        declared.check_input(options._asdict(), has_process_group=True)


def loss(input, target, weight, class_weight, options: LossOptions, backend: str,
         process_group=None) -> torch.Tensor:
    """The loss (SPEC sections 1-5, 9, 10), on the implementation and by the call that fit."""
    _check_input(input)
    name = resolve(backend, input.device)
    check_process_group(options, process_group)
    if name == "reference":
        return reference.soft_iou_loss(input, target, weight, class_weight=class_weight,
                                       process_group=process_group, **options._asdict())
    if process_group is not None:
        return _pooled_over_ranks(input, target, weight, class_weight, options, name,
                                  process_group)
    if torch._C._are_functorch_transforms_active():  # torch.func.grad, vmap, ...
        return operators.LossUnderTransforms.apply(input, target, weight, class_weight, options,
                                                   name)[0]
    if not torch.compiler.is_compiling():  # Dynamo traces the torch.ops call
        out = _loss_call(input, target, weight, class_weight, options, name)
        if out is not NotImplemented:
            return out
    return _loss_op(input, target, weight, class_weight, *options, name)


def loss_and_stat_scores(input, target, weight, class_weight, options: LossOptions, backend: str,
                         process_group, counts: tuple):
    """The loss and the hard counts ``[N, C, 4]`` (SPEC section 11) from one statistics pass: the
    statistics operator asked for the counts (``counts``: the counts' options,
    ``options.counts_args``), then the finalize step. The loss and its gradient are those of
    :func:`loss` bit for bit (the same kernels; tests/test_stat_scores.py)."""
    _check_input(input)
    name = resolve(backend, input.device)
    check_process_group(options, process_group)
    if name == "reference":
        return (loss(input, target, weight, class_weight, options, name, process_group),
                _reference_counts(input, target, options, counts))
    if torch._C._are_functorch_transforms_active():  # the C++ nodes are refused there
        with torch.no_grad():
            scores = statistics(input, target, weight, class_weight, options, name, counts)[2]
        return loss(input, target, weight, class_weight, options, name, process_group), scores
    stats, ce, scores = statistics(input, target, weight, class_weight, options, name, counts)
    if process_group is not None:
        stats = _pooled(stats, process_group)
    return finalize(stats, ce, class_weight, options, name), scores


def counts_only(input, target, options: LossOptions, backend: str, counts: tuple):
    """The hard counts alone (SPEC section 11): the statistics pass asked for them, without a
    graph."""
    _check_input(input)
    name = resolve(backend, input.device)
    with torch.no_grad():
        return statistics(input, target, None, None, options, name, counts)[2]


def statistics(input, target, weight, class_weight, options: LossOptions, backend: str,
               counts: tuple = declared.counts_args()):
    """The statistics pass: ``(stats [N, C, 3], ce [N, 2], counts)`` (SPEC sections 3, 9, 11),
    differentiable in the first two; the hard counts ``[N, C, 4]`` int64 where ``counts`` (the
    counts' options) asks for them, else an empty tensor."""
    _check_input(input)
    name = resolve(backend, input.device)
    if name == "reference":
        stats, ce = _reference_statistics(input, target, weight, class_weight, options)
        wanted = dict(zip(declared.COUNTS_FIELDS, counts))[declared.RETURNS_COUNTS]
        scores = (_reference_counts(input, target, options, counts) if wanted
                  else torch.empty(0, dtype=torch.int64, device=input.device))
        return stats, ce, scores
    return torch.ops.softiou.stats(input, target, weight, class_weight,
                                   *declared.stats_args(options), *counts, name)


def finalize(stats, ce, class_weight, options: LossOptions, backend: str) -> torch.Tensor:
    """The finalize step: the loss from the statistics and the cross-entropy's sums (SPEC
    sections 4, 5, 9), differentiable."""
    name = resolve(backend, stats.device)
    if name == "reference":
        return reference.loss_from_statistics(stats, ce, class_weight=class_weight,
                                              **options._asdict())
    return torch.ops.softiou.finalize(stats, ce, class_weight, *declared.finalize_args(options),
                                      name)[0]


def _reference_counts(input, target, options, counts):
    """reference.stat_scores with the options it takes (its keyword arguments, by name)."""
    values = dict(options._asdict(), **dict(zip(declared.COUNTS_FIELDS, counts)))
    takes = inspect.signature(reference.stat_scores).parameters
    return reference.stat_scores(input, target, **{k: v for k, v in values.items() if k in takes})


def _pooled(stats, group):
    """The statistics summed over the batch and over the ranks of `group` (differentiably)."""
    return distributed.all_reduce_sum(stats.sum(dim=0, keepdim=True), group)


def _reference_statistics(input, target, weight, class_weight, options):
    return reference.statistics_per_sample(input, target, weight, class_weight=class_weight,
                                           **options._asdict())


def _pooled_over_ranks(input, target, weight, class_weight, options, name, group):
    """``per_image=False`` over a process group: the statistics of this rank's batch, summed over
    the batch and over the ranks (a differentiable all-reduce), then the finalize step. The
    cross-entropy term (SPEC section 9) stays this rank's mean, as F.cross_entropy's does."""
    stats, ce, _ = statistics(input, target, weight, class_weight, options, name)
    return finalize(_pooled(stats, group), ce, class_weight, options, name)
