"""Which implementation of the statistics (SPEC section 3) runs for a tensor.

=============  ===============================================================================
backend        statistics computed by
=============  ===============================================================================
``cpu``        the fused C++ kernels (``torch.ops.softiou.stats`` on CPU tensors)
``cuda``       the fused CUDA kernels (``torch.ops.softiou.stats`` on CUDA tensors)
``triton``     the Triton kernels (``torch.ops.softiou.triton_stats``); CUDA tensors, or CPU
               tensors under ``TRITON_INTERPRET=1``
``reference``  ``softiou_cuda.reference.statistics``: eager PyTorch, any device
``auto``       the fused kernel for the tensor's device: cpu -> ``cpu``; cuda -> ``cuda``, else
               ``triton``; otherwise, or where none is built, ``reference`` with a one-time
               warning
=============  ===============================================================================
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from . import ops, reference

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")


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
    if kind == "cpu" and ops.HAS_EXTENSION:
        names.append("cpu")
    if kind == "cuda" and ops.has_cuda_kernels():
        names.append("cuda")
    if triton_installed() and (kind == "cuda" or (kind == "cpu" and triton_interpreting())):
        names.append("triton")
    names.append("reference")
    return tuple(names)


_warned = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=6)  # the caller of soft_iou_loss


_resolved: dict = {}


def resolve(backend: str, device: torch.device) -> str:
    """The concrete backend for ``backend`` on ``device``; a clear error if it cannot run there.
    Cached per (backend, device type): a call with a backend seen before is a dictionary lookup."""
    key = (backend, device.type)
    name = _resolved.get(key)
    if name is None:
        name = _resolved[key] = _resolve(backend, device)
    return name


def _resolve(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; "
                         f"got {backend!r}")
    names = available(device)
    if backend == "auto":
        kind = device.type
        preferred = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}.get(kind, ())
        for name in preferred:
            if name in names:
                return name
        why = (f"softiou was built without its kernels ({ops.IMPORT_ERROR})"
               if not ops.HAS_EXTENSION else f"no fused kernel is built for {kind} tensors")
        _warn_once(f"auto-{kind}", f"{why}; using the eager reference implementation, which is "
                   "slower and materialises a one-hot target")
        return "reference"
    if backend not in names:
        raise ValueError(f"backend={backend!r} cannot run on {device.type} tensors here; "
                         f"available: {', '.join(names)}")
    return backend


def triton_ops():
    """The Triton operators (``softiou_cuda.triton_kernels.ops``), imported on first use."""
    from .triton_kernels import ops as triton_ops_module
    return triton_ops_module


def _reference_stats(x, t, w, mode, from_logits, sharpness, intersection, ignore_index):
    return reference.statistics_normalized(x, t, w, mode, from_logits, sharpness, intersection,
                                           ignore_index)


def stats_function(name: str):
    """``f(x, t, w, mode, from_logits, sharpness, intersection, ignore_index) -> [N, C, 3]``,
    the statistics (SPEC section 3) of a backend, on normalized inputs."""
    if name in ("cpu", "cuda"):
        return ops.stats
    if name == "triton":
        return triton_ops().stats
    return _reference_stats
