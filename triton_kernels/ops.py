"""The Triton backend's operators: the phases of softiou::stats, stats_backward and finalize as
``softiou::triton_stats``, ``triton_stats_backward`` and ``triton_finalize``, with the schemas
of the declaration (softiou_cuda/options.py) but the backend. The C++ operators call them for
``backend="triton"``: their autograd, their option checks and the loss's composition are the C++
operators' (csrc/ops/), so this module only checks the tensors (inputs.py) and launches
the kernels. Registered with ``torch.library.triton_op``, so that torch.compile sees the kernels.

Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (slowly) through Triton's interpreter;
``wrap_triton`` is bypassed there, and the operators are plain custom operators (``custom_op``):
AOTAutograd would trace into a triton_op's body, whose interpreted kernels cannot run on fake
tensors, so that opcheck and torch.compile take them whole, with their fake kernels.
"""

from __future__ import annotations

import inspect
import math
import os
import struct
from typing import List, Optional, Tuple

import torch
import triton.language as tl
from torch import Tensor

from .. import operators
from .. import options as declared
from ..operators import accumulation_dtype
from . import configs, inputs
from .kernels import counts_kernel, finalize_kernel, pixel_kernel, reduce_kernel, row_kernel

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# the enum options as the kernels take them: their index among the declared choices
METRICS = {c: i for i, c in enumerate(declared.BY_NAME["metric"].choices)}
W_TYPES = {c: i for i, c in enumerate(declared.BY_NAME["w_type"].choices)}
REDUCTIONS = {c: i for i, c in enumerate(declared.BY_NAME["reduction"].choices)}
TINY = {torch.float32: torch.finfo(torch.float32).tiny,
        torch.float64: torch.finfo(torch.float64).tiny}


_TYPES = {"Tensor": Tensor, "Tensor?": Optional[Tensor], "str": str, "bool": bool,
          "float": float, "float?": Optional[float], "int?": Optional[int],
          "int[]?": Optional[List[int]]}


def _declared(phase: str):
    """Gives the decorated function the arguments of the phase's operator in the declaration
    (its tensors, then its options, with their types and defaults; the backend left out):
    torch.library infers the operator's schema from them. The function takes the
    options as ``*options``, in that order."""
    op = next(o for o in declared.OPERATORS if o.name == phase)
    params = []
    for arg in op.tensors.split(", "):
        kind, rest = arg.split(" ", 1)
        name, _, default = rest.partition("=")
        params.append(inspect.Parameter(
            name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_TYPES[kind],
            default=None if default == "None" else inspect.Parameter.empty))
    for o in declared.options_of(op.phases):
        params.append(inspect.Parameter(o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        annotation=_TYPES[o.type], default=o.default))
    outputs = op.returns.count("Tensor")
    returns = Tensor if outputs == 1 else Tuple[(Tensor,) * outputs]

    def decorate(fn):
        fn.__signature__ = inspect.Signature(params, return_annotation=returns)
        return fn
    return decorate


def _launcher(kernel):
    if _INTERPRET:
        return kernel
    return torch.library.wrap_triton(kernel)


# how the operators are registered (see the module's docstring)
_operator = torch.library.custom_op if _INTERPRET else torch.library.triton_op


def _cdiv(a, b):
    return (a + b - 1) // b


def _bits(value: float) -> Tuple[int, int]:
    """The bits of a float64 as two int32 (high, low): the kernels read their float64 options
    this way, exactly (Triton would pass a Python float as float32, and Inductor's codegen of user
    kernels in torch 2.11 fails on Python ints beyond 32 bits)."""
    return struct.unpack("<ii", struct.pack("<d", float(value)))[::-1]


def _collapsed_stride(t: Tensor, d0: int) -> int:
    """The one stride that walks dims [d0, dim) of t in row-major order, or -1 if there is none
    (as csrc/ops/inputs.h: collapsed_stride). Dims of size 1 are skipped."""
    stride, next_extent, found = 1, -1, False
    for d in range(t.dim() - 1, d0 - 1, -1):
        if t.shape[d] == 1:
            continue
        if found and t.stride(d) != next_extent:
            return -1
        if not found:
            stride = t.stride(d)
        found = True
        next_extent = t.shape[d] * t.stride(d)
    return stride


def _described(t: Tensor, channel: bool):
    """(t, sN, sC, sM): t read as [N, C, M] (channel: dim 1 is C; else [N, M]) through its own
    strides, without a view op; copied first where its spatial dims have no common stride."""
    s0 = 2 if channel else 1
    m = _collapsed_stride(t, s0)
    if m < 0:
        t = t.contiguous()
        m = _collapsed_stride(t, s0)
    sc = t.stride(1) if channel and t.shape[1] != 1 else 0
    return t, t.stride(0), sc, m


def _prepare(input: Tensor, target: Tensor, weight: Optional[Tensor], mode: str):
    """Checked inputs (inputs.normalize_inputs) as the kernels read them (as csrc/ops/inputs.h
    does), each as (tensor, sN, sC, sM): the input [N, C, M]; the target a class map [N, M]
    (multiclass, or a multilabel target without the channel dim) or per element [N, C, M]; the
    weight [N, M] in the accumulation dtype (None: none)."""
    N, C = input.shape[0], input.shape[1]
    M = 1
    for s in input.shape[2:]:
        M *= s
    acc = accumulation_dtype(input.dtype)
    class_map = target.dtype in inputs.INDEX_DTYPES and (
        mode == "multiclass" or (mode == "multilabel" and tuple(target.shape)
                                 == (N,) + tuple(input.shape[2:])))
    if not class_map and target.dtype.is_floating_point \
            and target.dtype not in (input.dtype, acc):
        target = target.to(acc)
    w = None
    if weight is not None:
        w = _described(weight if weight.dtype == acc else weight.to(acc), False)
    return (_described(input, True), _described(target, not class_map), w, N, C, M, acc,
            class_map)


def _run(input, target, weight, o, coef=None, coef_strides=(0, 0, 1), grad_out=None,
         grad_out_strides=(0, 0), ce=False, class_weight=None, ce_coef=None, ce_stride=0,
         counts=None):
    """One pass over checked inputs, with the statistics' options `o` (by name). The statistics
    pass (coef None): returns the per-program partial sums and their layout (part, n_chunks,
    pixel) for reduce_kernel; with ce, they hold the cross-entropy term's sums too. The gradient
    pass (coef given, with grad_out: the gradient of the loss as go * coef, see _pair_gradient;
    ce_coef: the cross-entropy term's gradient per sample, see _ce_gradient): returns the
    gradient of the input, shaped like it (contiguous). counts: the statistics pass adds the
    hard counts to it ([N, C, 4] int64, zeros), where _counts_in_pass says it can."""
    mode, from_logits, sharpness = o["mode"], o["from_logits"], o["sharpness"]
    ignore_index = o["ignore_index"]
    fwd = coef is None
    direction = "forward" if fwd else "backward"
    x, t, w, N, C, M, acc, class_map = _prepare(input, target, weight, mode)
    softmax = mode == "multiclass" and (from_logits or sharpness != 1.0)
    sigmoid = mode != "multiclass" and (from_logits or sharpness != 1.0)
    # a multilabel class map with the sigmoid runs in the row kernel (y = [t == c] per row)
    pixel = softmax or (class_map and not sigmoid)
    dummy = _dummy(input.device, acc)
    (x, sxn, sxc, sxm), (t, stn, stc, stm) = x, t
    w, swn, _, swm = w if w is not None else (None, 0, 0, 0)
    gx = torch.empty(input.shape, dtype=input.dtype, device=input.device) if not fwd else None
    sgn, sgc, sgm = _described(gx, True)[1:] if not fwd else (0, 0, 0)
    with_ce = ce if fwd else ce_coef is not None
    cw = None
    if with_ce and class_weight is not None:
        cw = class_weight if class_weight.dtype == acc and class_weight.is_contiguous() \
            else class_weight.to(acc).contiguous()
    common = dict(FWD=fwd, HAS_W=w is not None, HAS_IGNORE=ignore_index is not None,
                  FROM_LOGITS=from_logits, USE_MIN=o["intersection"] == "min",
                  HAS_GO=grad_out is not None, CE=with_ce, HAS_CW=cw is not None,
                  SQUARED=o["squared"], ACC=tl.float64 if acc == torch.float64 else tl.float32)
    target_programs = configs.programs_target(input.device, direction)
    if pixel:
        config = configs.pixel_config(
            C, direction, input.element_size(),
            split_only=counts is not None or (fwd and with_ce and not class_map))
        rows, tile = N, configs.pixel_block(config)
    else:
        block, warps = configs.row_config(direction)
        rows, tile = N * C, block
    tiles = _cdiv(M, tile)
    per_row = max(1, min(tiles, _cdiv(target_programs, max(rows, 1))))
    chunk = _cdiv(tiles, per_row) * tile
    n_chunks = _cdiv(M, chunk)
    grid = (rows * n_chunks,)
    part = torch.empty((rows * n_chunks * _partial_row(C, pixel),), dtype=acc,
                       device=input.device) if fwd else dummy
    count = counts is not None and _counts_in_pass(mode, pixel)
    args = (x, t, w if w is not None else dummy, coef if coef is not None else dummy,
            grad_out if grad_out is not None else dummy, part, gx if gx is not None else dummy,
            cw if cw is not None else dummy, ce_coef if ce_coef is not None else dummy,
            counts if count else dummy,
            C, M, chunk, n_chunks, sxn, sxc, sxm, stn, stc, stm, swn, swm, sgn, sgc, sgm,
            *coef_strides, *grad_out_strides, ce_stride, *_bits(sharpness),
            int(ignore_index) if ignore_index is not None else 0, *_bits(o["label_smoothing"]),
            *_bits(o["ce_pos_weight"]), *_bits(_count_threshold(o, input.dtype) if count else 0))
    common.update(COUNT=count, COUNT_FOLD=configs.COUNT_FOLD if count else 1)
    if pixel:
        _launcher(pixel_kernel)[grid](*args, CLASS_MAP=class_map, SOFTMAX=softmax,
                                      MULTICLASS=mode == "multiclass",
                                      CLASSES=C if config["IN_THREAD"] else 0, **config, **common)
    else:
        _launcher(row_kernel)[grid](*args, INT_TARGET=not t.dtype.is_floating_point
                                    and t.dtype != torch.bool, CLASS_MAP=class_map,
                                    SIGMOID=sigmoid, BLOCK=block, num_warps=warps, **common)
    if not fwd:
        return gx
    return part, n_chunks, pixel


def _partial_row(C, pixel):
    """Values per program of the partial sums: I, P, Y per class (the pixel kernel) or of one
    class (the row kernel), then the cross-entropy's numerator and denominator."""
    return C * 3 + 2 if pixel else 5


def _ce_layout(C, n_chunks, pixel):
    """(entries per sample, stride, offset) of the cross-entropy's sums in the partials."""
    return (n_chunks if pixel else C * n_chunks), _partial_row(C, pixel), (C * 3 if pixel else 3)


# ---------------------------------------------------------------------------------------------
# The phases
# ---------------------------------------------------------------------------------------------
_dummies = {}


def _dummy(device, dtype):
    """A one-element tensor for the pointer arguments a launch does not use (made once)."""
    key = (str(device), dtype)
    t = _dummies.get(key)
    if t is None:
        t = _dummies[key] = torch.empty(1, dtype=dtype, device=device)
    return t


def _broadcast_stride(t: Tensor, d: int, extent: int, name: str) -> int:
    if t.shape[d] not in (1, extent):
        raise ValueError(f"softiou: {name} must broadcast over {extent} along dim {d}; got "
                         f"shape {tuple(t.shape)}")
    return 0 if t.shape[d] == 1 else t.stride(d)


@_operator("softiou::triton_stats", mutates_args=())
@_declared("stats")
def triton_stats(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                 class_weight: Optional[Tensor] = None,
                 *options) -> Tuple[Tensor, Tensor, Tensor]:
    """The statistics [N, C, 3], the cross-entropy's per-sample sums [N, 2] (zeros without the
    term) and, with return_stat_scores, the hard counts [N, C, 4] (else [0]), by the Triton kernels."""
    o = declared.named(declared.STATS_FIELDS + declared.COUNTS_FIELDS, options, {})
    x, t, w = inputs.normalize_inputs(input, target, weight, o)
    N, C = x.shape[0], x.shape[1]
    acc = accumulation_dtype(x.dtype)
    with_ce = o["ce_weight"] > 0
    if with_ce:
        inputs.check_class_weight(class_weight, C, x.device)
    counting = o["return_stat_scores"]
    counts = torch.zeros((N, C, 4) if counting else (0,), dtype=torch.int64,
                         device=x.device)
    if x.numel() == 0:
        return (torch.zeros((N, C, 3), dtype=acc, device=x.device),
                torch.zeros((N, 2), dtype=acc, device=x.device), counts)
    part, n_chunks, pixel = _run(x, t, w, o, ce=with_ce, class_weight=class_weight,
                                 counts=counts if counting else None)
    stats, ce = _reduce(part, N, C, n_chunks, pixel, with_ce)
    if counting and not _counts_in_pass(o["mode"], pixel):
        _count(x, t, o, counts)
    return stats, ce, counts


def _counts_in_pass(mode: str, pixel: bool) -> bool:
    """Whether the statistics pass counts too: everywhere but in row_kernel on a multiclass input
    (probabilities with a dense target), which it reads a class at a time: no argmax there."""
    return pixel or mode != "multiclass"


def _count_threshold(o, dtype) -> float:
    """The input-space threshold of the binary/multilabel hard prediction (as csrc/kernel_args.h:
    count_threshold_of): log(t / (1 - t)) for logits, t rounded to the input dtype for
    probabilities (as PyTorch compares a tensor with a number)."""
    t = o["threshold"]
    if o["from_logits"]:
        return math.log(t) - math.log1p(-t)
    if dtype == torch.float16:
        return struct.unpack("<e", struct.pack("<e", t))[0]
    if dtype in (torch.float32, torch.bfloat16):
        t = struct.unpack("<f", struct.pack("<f", t))[0]
    if dtype == torch.bfloat16:  # round to nearest even on the high 16 bits
        bits = struct.unpack("<I", struct.pack("<f", t))[0]
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        t = struct.unpack("<f", struct.pack("<I", bits))[0]
    return t


def _count(input, target, o, out):
    """The hard counts (SPEC section 11) into out [N, C, 4] (zeros): one launch of
    counts_kernel."""
    mode = o["mode"]
    (x, sxn, sxc, sxm), (t, stn, stc, stm), _, N, C, M, acc, class_map = _prepare(
        input, target, None, mode)
    block_c, block_m, warps = configs.split_config(C, "forward")
    tiles = _cdiv(M, block_m)
    per_row = max(1, min(tiles, _cdiv(configs.programs_target(input.device, "forward"), N)))
    chunk = _cdiv(tiles, per_row) * block_m
    n_chunks = _cdiv(M, chunk)
    ignore = o["ignore_index"]
    _launcher(counts_kernel)[(N * n_chunks,)](
        x, t, out, C, M, chunk, n_chunks, sxn, sxc, sxm, stn, stc, stm,
        *_bits(_count_threshold(o, input.dtype)), int(ignore) if ignore is not None else 0,
        MULTICLASS=mode == "multiclass", CLASS_MAP=class_map,
        INT_TARGET=not t.dtype.is_floating_point and t.dtype != torch.bool,
        HAS_IGNORE=ignore is not None, ACC=tl.float64 if acc == torch.float64 else tl.float32,
        BLOCK_C=block_c, BLOCK_M=block_m, num_warps=warps)


triton_stats.register_fake(operators.stats_fake)


def _reduce(part, N, C, n_chunks, pixel, with_ce):
    """The statistics [N, C, 3] and the cross-entropy's sums [N, 2] from the partial sums, in a
    fixed order: one launch."""
    stats = torch.empty((N, C, 3), dtype=part.dtype, device=part.device)
    ce = torch.empty((N, 2), dtype=part.dtype, device=part.device)
    rows = N if pixel else N * C
    inner = (C if pixel else 1) * 3
    per_sample, stride, off = _ce_layout(C, n_chunks, pixel)
    _launcher(reduce_kernel)[(rows + N,)](
        part, stats, ce, inner, _partial_row(C, pixel), n_chunks, rows, per_sample, stride, off,
        CE=with_ce, ACC=tl.float64 if part.dtype == torch.float64 else tl.float32,
        BLOCK=configs.next_power_of_2(max(inner, 4)), CE_BLOCK=128, num_warps=4)
    return stats, ce


@_operator("softiou::triton_stats_backward", mutates_args=())
@_declared("stats_backward")
def triton_stats_backward(grad_stats: Tensor, grad_ce: Optional[Tensor],
                          grad_out: Optional[Tensor], input: Tensor, target: Tensor,
                          weight: Optional[Tensor] = None, class_weight: Optional[Tensor] = None,
                          *options) -> Tensor:
    """The gradient of the input (softiou::stats_backward), by the Triton kernels."""
    o = declared.named(declared.STATS_FIELDS, options, {})
    x, t, w = inputs.normalize_inputs(input, target, weight, o)
    if x.numel() == 0:
        return torch.zeros_like(input)
    N, C = x.shape[0], x.shape[1]
    acc = accumulation_dtype(x.dtype)
    if grad_stats.dim() != 3 or grad_stats.shape[1:] != (C, 3):
        raise ValueError(f"softiou: grad_stats must have shape [N, C, 3] or [1, C, 3] with N, "
                         f"C = {N}, {C}; got {tuple(grad_stats.shape)}")
    g = grad_stats if grad_stats.dtype == acc else grad_stats.to(acc)
    coef_strides = (_broadcast_stride(g, 0, N, "grad_stats"), g.stride(1), g.stride(2))
    go, go_strides = None, (0, 0)
    if grad_out is not None:
        go = grad_out if grad_out.dtype == acc else grad_out.to(acc)
        if go.dim() > 2:
            raise ValueError("softiou: grad_out must be the gradient of a loss of shape [], "
                             f"[C], [rows, C] or [rows, 1]; got {tuple(go.shape)}")
        go_strides = (_broadcast_stride(go, 0, N, "grad_out") if go.dim() == 2 else 0,
                      _broadcast_stride(go, go.dim() - 1, C, "grad_out") if go.dim() else 0)
    gce, ce_stride = None, 0
    if grad_ce is not None and o["ce_weight"] > 0:  # read where the term is on, as csrc's
        gce = grad_ce if grad_ce.dtype == acc else grad_ce.to(acc)
        ce_stride = _broadcast_stride(gce, 0, N, "grad_ce")
        inputs.check_class_weight(class_weight, C, x.device)
    gx = _run(x, t, w, o, coef=g, coef_strides=coef_strides, grad_out=go,
              grad_out_strides=go_strides, class_weight=class_weight, ce_coef=gce,
              ce_stride=ce_stride)
    return gx if gx.dim() == input.dim() else gx.squeeze(1)  # binary [N, *S]: no channel dim


triton_stats_backward.register_fake(operators.stats_backward_fake)


# triton_stats's own autograd, as softiou::stats's (csrc/ops/autograd.cpp): the C++ operators call
# it below autograd, so this serves a direct call (and opcheck's check of it under AOTAutograd).
# The counts are integers: autograd gives them no gradient.
def _stats_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])
    ctx.options = declared.named(declared.STATS_FIELDS + declared.COUNTS_FIELDS, inputs[4:], {})


def _stats_grad(ctx, grad_stats, grad_ce, grad_counts):
    tensors = ctx.saved_tensors
    grads = [None] * (len(tensors) + len(declared.STATS_FIELDS + declared.COUNTS_FIELDS))
    if ctx.needs_input_grad[0]:
        grads[0] = triton_stats_backward(grad_stats, grad_ce, None, *tensors,
                                         *(ctx.options[name] for name in declared.STATS_FIELDS))
    return tuple(grads)


triton_stats.register_autograd(_stats_grad, setup_context=_stats_setup_context)


_keep_masks = {}


def _keep_mask(classes, num_classes, device):
    """The classes that enter the loss as an int8 mask [C] on the device, made once per
    selection (so that a call does not copy it to the device again)."""
    key = (tuple(classes), num_classes, str(device))
    mask = _keep_masks.get(key)
    if mask is None:
        mask = torch.zeros(num_classes, dtype=torch.int8)
        mask[list(classes)] = 1
        mask = _keep_masks[key] = mask.to(device)
    return mask


@_operator("softiou::triton_finalize", mutates_args=())
@_declared("finalize")
def triton_finalize(stats: Tensor, ce: Optional[Tensor] = None,
                    class_weight: Optional[Tensor] = None,
                    *options) -> Tuple[Tensor, Tensor, Tensor]:
    """The finalize step (SPEC sections 4-5, 9, 10) on statistics [N, C, 3] and the
    cross-entropy's sums [N', 2]: (loss, coef [rows, C, 3], ce_coef [1, 2]), by one Triton
    kernel."""
    o = declared.named(declared.FINALIZE_FIELDS, options, {})
    N, C = stats.shape[0], stats.shape[1]
    inputs.check_class_weight(class_weight, C, stats.device)
    acc = stats.dtype
    device = stats.device
    per_image, reduction, metric = o["per_image"], o["reduction"], o["metric"]
    rows = N if per_image else 1
    loss, coef, ce_coef = (torch.empty(shape, dtype=acc, device=device)
                           for shape in declared.finalize_shapes(N, C, o))
    with_ce = o["ce_weight"] > 0 and ce is not None and ce.shape[0] > 0
    ce_part = (ce if ce.dtype == acc and ce.is_contiguous() else ce.to(acc).contiguous()) \
        if with_ce else coef
    cw = None
    if class_weight is not None:
        cw = class_weight if class_weight.dtype == acc and class_weight.is_contiguous() \
            else class_weight.to(acc).contiguous()
    classes = o["classes"]
    keep = _keep_mask(classes, C, device) if classes is not None else None
    smooth_dr = o["smooth"] if o["smooth_dr"] is None else o["smooth_dr"]
    s = stats if stats.is_contiguous() else stats.contiguous()
    _launcher(finalize_kernel)[(1,)](
        s, ce_part, cw if cw is not None else coef, keep if keep is not None else coef, loss, coef,
        ce_coef, C, rows, N, 1, C * 3, 3, 0, ce_part.shape[0] if with_ce else 0, 2, 0,
        *_bits(o["alpha"]), *_bits(o["beta"]), *_bits(o["gamma"]), *_bits(o["smooth"]),
        *_bits(smooth_dr), *_bits(o["eps"]), *_bits(o["ce_weight"]),
        METRIC=METRICS[metric], LOG_LOSS=o["log_loss"], GAMMA_ONE=o["gamma"] == 1.0,
        PER_IMAGE=per_image, ABSENT_EXCLUDE=o["absent"] == "exclude",
        ABSENT_ZERO=o["absent"] == "zero", WEIGHTED_MEAN=o["weighted_mean"],
        W_TYPE=W_TYPES[o["w_type"]], REDUCTION=REDUCTIONS[reduction], HAS_CW=cw is not None,
        DROP_BG=not o["include_background"], SUBSET=keep is not None, CE=with_ce,
        ACC=tl.float64 if acc == torch.float64 else tl.float32, TINY=TINY[acc], BLOCK=128,
        num_warps=4)
    return loss, coef, ce_coef


triton_finalize.register_fake(operators.finalize_fake)
