"""The Triton backend as operators: ``softiou::triton_stats`` and ``softiou::triton_stats_backward``,
registered with ``torch.library.triton_op`` so that torch.compile traces into the kernels, and
differentiable through ``register_autograd``. Same schema and semantics as ``softiou::stats``.

Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (slowly) through Triton's interpreter;
``wrap_triton`` is bypassed there.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton.language as tl
from torch import Tensor

from ..ops import register_stats_autograd
from ..reference import accumulation_dtype
from . import configs
from .kernels import pixel_kernel, reduce_kernel, row_kernel

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _launcher(kernel):
    if _INTERPRET:
        return kernel
    return torch.library.wrap_triton(kernel)


def _cdiv(a, b):
    return (a + b - 1) // b


def _prepare(input: Tensor, target: Tensor, weight: Optional[Tensor], mode: str):
    """[N, C, M] views, the target as a class map [N, M] or per element [N, C, M] (mirrors
    csrc/op_common.h), and the weight [N, M] in the accumulation dtype."""
    if input.dim() < 3:
        raise ValueError(f"softiou: input must be [N, C, *spatial]; got shape {tuple(input.shape)}")
    N, C = input.shape[0], input.shape[1]
    M = 1
    for s in input.shape[2:]:
        M *= s
    acc = accumulation_dtype(input.dtype)
    class_map = mode == "multiclass" and target.dtype in (torch.int64, torch.int32, torch.uint8)
    x = input.reshape(N, C, M)
    if class_map:
        t = target.reshape(N, M)
    else:
        t = target.reshape(N, C, M)
        if t.dtype.is_floating_point and t.dtype not in (input.dtype, acc):
            t = t.to(acc)
    w = None if weight is None else weight.reshape(N, M).to(acc)
    return x, t, w, N, C, M, acc, class_map


def _strides(t: Optional[Tensor]):
    if t is None:
        return 0, 0, 0
    if t.dim() == 2:
        return t.stride(0), 0, t.stride(1)
    return t.stride(0), t.stride(1), t.stride(2)


def _run(input, target, weight, mode, from_logits, sharpness, intersection, ignore_index,
         grad_stats=None):
    fwd = grad_stats is None
    direction = "forward" if fwd else "backward"
    x, t, w, N, C, M, acc, class_map = _prepare(input, target, weight, mode)
    softmax = mode == "multiclass" and (from_logits or sharpness != 1.0)
    sigmoid = mode != "multiclass" and (from_logits or sharpness != 1.0)
    pixel = softmax or class_map
    dummy = torch.empty(1, dtype=acc, device=input.device)  # pointer slots a launch does not use
    gx = torch.empty_like(x) if not fwd else None
    gs = grad_stats.to(acc).contiguous() if not fwd else dummy
    sxn, sxc, sxm = _strides(x)
    stn, stc, stm = _strides(t)
    swn, _, swm = _strides(w)
    sgn, sgc, sgm = _strides(gx) if not fwd else (0, 0, 0)
    common = dict(FWD=fwd, HAS_W=w is not None, HAS_IGNORE=ignore_index is not None,
                  FROM_LOGITS=from_logits, USE_MIN=intersection == "min",
                  ACC=tl.float64 if acc == torch.float64 else tl.float32)
    target_programs = configs.programs_target(input.device, direction)
    if pixel:
        block_c, block_m, warps = configs.pixel_config(C, direction)
        rows, tile = N, block_m
    else:
        block, warps = configs.row_config(direction)
        rows, tile = N * C, block
    tiles = _cdiv(M, tile)
    per_row = max(1, min(tiles, _cdiv(target_programs, max(rows, 1))))
    chunk = _cdiv(tiles, per_row) * tile
    n_chunks = _cdiv(M, chunk)
    grid = (rows * n_chunks,)
    part = torch.empty((rows * n_chunks * (C if pixel else 1) * 3,), dtype=acc,
                       device=input.device) if fwd else dummy
    args = (x, t, w if w is not None else dummy, gs, part, gx if gx is not None else dummy,
            C, M, chunk, n_chunks, sxn, sxc, sxm, stn, stc, stm, swn, swm, sgn, sgc, sgm,
            float(sharpness),
            int(ignore_index) if ignore_index is not None else 0)
    if pixel:
        _launcher(pixel_kernel)[grid](*args, CLASS_MAP=class_map, SOFTMAX=softmax,
                                      BLOCK_C=block_c, BLOCK_M=block_m, num_warps=warps, **common)
    else:
        _launcher(row_kernel)[grid](*args, INT_TARGET=not t.dtype.is_floating_point
                                    and t.dtype != torch.bool, SIGMOID=sigmoid, BLOCK=block,
                                    num_warps=warps, **common)
    if not fwd:
        return gx.view(input.shape)
    out = torch.empty((N, C, 3), dtype=acc, device=input.device)
    inner = (C if pixel else 1) * 3
    _launcher(reduce_kernel)[(rows,)](part, out, inner, n_chunks,
                                      BLOCK=configs.next_power_of_2(max(inner, 4)), num_warps=4)
    return out


@torch.library.triton_op("softiou::triton_stats", mutates_args=())
def triton_stats(input: Tensor, target: Tensor, weight: Optional[Tensor], mode: str,
                 from_logits: bool, sharpness: float, intersection: str,
                 ignore_index: Optional[int]) -> Tensor:
    """``[N, C, 3]`` statistics (I, P, Y) of ``input [N, C, *S]``, computed by Triton kernels."""
    if input.numel() == 0:
        return torch.zeros((input.shape[0], input.shape[1], 3),
                           dtype=accumulation_dtype(input.dtype), device=input.device)
    return _run(input, target, weight, mode, from_logits, sharpness, intersection, ignore_index)


@torch.library.triton_op("softiou::triton_stats_backward", mutates_args=())
def triton_stats_backward(grad_stats: Tensor, input: Tensor, target: Tensor,
                          weight: Optional[Tensor], mode: str, from_logits: bool,
                          sharpness: float, intersection: str,
                          ignore_index: Optional[int]) -> Tensor:
    """The gradient of the input from the gradient of the statistics, by Triton kernels."""
    if input.numel() == 0:
        return torch.zeros_like(input)
    return _run(input, target, weight, mode, from_logits, sharpness, intersection, ignore_index,
                grad_stats=grad_stats)


register_stats_autograd(triton_stats, triton_stats_backward)


def stats(x, t, w, mode, from_logits, sharpness, intersection, ignore_index):
    """The Triton statistics on normalized inputs (the ``stats_fn`` of softiou_cuda.ops.fused_loss)."""
    return triton_stats(x, t, w, mode, from_logits, sharpness, intersection, ignore_index)
