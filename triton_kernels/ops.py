"""The Triton backend as operators, registered with ``torch.library.triton_op`` so that
torch.compile traces into the kernels, and differentiable through ``register_autograd``:

* ``softiou::triton_loss`` -> (loss, coefficients): the statistics kernel and the finalize
  kernel (two launches); its backward ``softiou::triton_loss_backward`` is one launch of the
  gradient kernel. Same options, in the same order, as ``softiou::loss``.
* ``softiou::triton_stats`` / ``softiou::triton_stats_backward``: the statistics [N, C, 3] and
  the gradient pass from their gradient (same schema as ``softiou::stats``).
* ``softiou::triton_finalize`` -> (loss, coefficients): the finalize step on statistics, for
  the pooled data-parallel path (statistics -> all-reduce -> finalize).

Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (slowly) through Triton's interpreter;
``wrap_triton`` is bypassed there.
"""

from __future__ import annotations

import os
import struct
from typing import List, Optional, Tuple

import torch
import triton.language as tl
from torch import Tensor

from .. import checks
from ..checks import LossOptions, accumulation_dtype
from ..ops import loss_shape, register_stats_autograd, register_stats_ce_autograd
from . import configs
from .kernels import ce_reduce_kernel, finalize_kernel, pixel_kernel, reduce_kernel, row_kernel

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

METRICS = {"jaccard": 0, "dice": 1, "tversky": 2, "generalized_dice": 3}
W_TYPES = {"square": 0, "simple": 1, "uniform": 2}
REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}
TINY = {torch.float32: torch.finfo(torch.float32).tiny, torch.float64: torch.finfo(torch.float64).tiny}


def _launcher(kernel):
    if _INTERPRET:
        return kernel
    return torch.library.wrap_triton(kernel)


def _cdiv(a, b):
    return (a + b - 1) // b


def _bits(value: float) -> Tuple[int, int]:
    """The bits of a float64 as two int32 (high, low): the kernels read their float64 options
    this way, exactly (Triton would pass a Python float as float32, and Inductor's codegen of user
    kernels in torch 2.11 fails on Python ints beyond 32 bits)."""
    return struct.unpack("<ii", struct.pack("<d", float(value)))[::-1]


def _prepare(input: Tensor, target: Tensor, weight: Optional[Tensor], mode: str):
    """[N, C, M] views, the target as a class map [N, M] (multiclass, or a multilabel target
    without the channel dim) or per element [N, C, M] (mirrors csrc/op_common.h), and the weight
    [N, M] in the accumulation dtype."""
    if input.dim() < 3:
        raise ValueError(f"softiou: input must be [N, C, *spatial]; got shape {tuple(input.shape)}")
    N, C = input.shape[0], input.shape[1]
    M = 1
    for s in input.shape[2:]:
        M *= s
    acc = accumulation_dtype(input.dtype)
    class_map = target.dtype in checks.INDEX_DTYPES and (
        mode == "multiclass" or (mode == "multilabel" and tuple(target.shape)
                                 == (N,) + tuple(input.shape[2:])))
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
         squared=False, coef=None, coef_strides=(0, 0, 1), grad_out=None,
         grad_out_strides=(0, 0), ce=False, class_weight=None, label_smoothing=0.0,
         ce_pos_weight=1.0, ce_coef=None, ce_stride=0):
    """The statistics pass (coef None): returns the per-program partial sums and their layout
    (part, n_chunks, pixel) for reduce_kernel or finalize_kernel; with ce, they hold the
    cross-entropy term's sums too. The gradient pass (coef given, with grad_out: the gradient of
    the loss as go * coef, see _pair_gradient; ce_coef: the cross-entropy term's gradient per
    sample, see _ce_gradient): returns the gradient of the input."""
    fwd = coef is None
    direction = "forward" if fwd else "backward"
    x, t, w, N, C, M, acc, class_map = _prepare(input, target, weight, mode)
    softmax = mode == "multiclass" and (from_logits or sharpness != 1.0)
    sigmoid = mode != "multiclass" and (from_logits or sharpness != 1.0)
    # a multilabel class map with the sigmoid runs in the row kernel (y = [t == c] per row)
    pixel = softmax or (class_map and not sigmoid)
    dummy = torch.empty(1, dtype=acc, device=input.device)  # pointer slots a launch does not use
    gx = torch.empty_like(x) if not fwd else None
    sxn, sxc, sxm = _strides(x)
    stn, stc, stm = _strides(t)
    swn, _, swm = _strides(w)
    sgn, sgc, sgm = _strides(gx) if not fwd else (0, 0, 0)
    with_ce = ce if fwd else ce_coef is not None
    cw = class_weight.to(acc).contiguous() if with_ce and class_weight is not None else None
    common = dict(FWD=fwd, HAS_W=w is not None, HAS_IGNORE=ignore_index is not None,
                  FROM_LOGITS=from_logits, USE_MIN=intersection == "min",
                  HAS_GO=grad_out is not None, CE=with_ce, HAS_CW=cw is not None,
                  SQUARED=squared, ACC=tl.float64 if acc == torch.float64 else tl.float32)
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
    part = torch.empty((rows * n_chunks * _partial_row(C, pixel),), dtype=acc,
                       device=input.device) if fwd else dummy
    args = (x, t, w if w is not None else dummy, coef if coef is not None else dummy,
            grad_out if grad_out is not None else dummy, part, gx if gx is not None else dummy,
            cw if cw is not None else dummy, ce_coef if ce_coef is not None else dummy,
            C, M, chunk, n_chunks, sxn, sxc, sxm, stn, stc, stm, swn, swm, sgn, sgc, sgm,
            *coef_strides, *grad_out_strides, ce_stride, *_bits(sharpness),
            int(ignore_index) if ignore_index is not None else 0, *_bits(label_smoothing),
            *_bits(ce_pos_weight))
    if pixel:
        _launcher(pixel_kernel)[grid](*args, CLASS_MAP=class_map, SOFTMAX=softmax,
                                      BLOCK_C=block_c, BLOCK_M=block_m, num_warps=warps, **common)
    else:
        _launcher(row_kernel)[grid](*args, INT_TARGET=not t.dtype.is_floating_point
                                    and t.dtype != torch.bool, CLASS_MAP=class_map,
                                    SIGMOID=sigmoid, BLOCK=block, num_warps=warps, **common)
    if not fwd:
        return gx.view(input.shape)
    return part, n_chunks, pixel


def _partial_row(C, pixel):
    """Values per program of the partial sums: I, P, Y per class (the pixel kernel) or of one
    class (the row kernel), then the cross-entropy's numerator and denominator."""
    return C * 3 + 2 if pixel else 5


def _partials_layout(N, C, n_chunks, pixel):
    """(sn, sc, sk) of the partial sums of pair (n, c), chunk k: [N][K][3C + 2] from the pixel
    kernel, [N][C][K][5] from the row kernel."""
    row = _partial_row(C, pixel)
    if pixel:
        return n_chunks * row, 3, row
    return C * n_chunks * row, n_chunks * row, row


def _ce_layout(C, n_chunks, pixel):
    """(entries per sample, stride, offset) of the cross-entropy's sums in the partials."""
    return (n_chunks if pixel else C * n_chunks), _partial_row(C, pixel), (C * 3 if pixel else 3)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
@torch.library.triton_op("softiou::triton_stats", mutates_args=())
def triton_stats(input: Tensor, target: Tensor, weight: Optional[Tensor], mode: str,
                 from_logits: bool, sharpness: float, intersection: str,
                 ignore_index: Optional[int], squared: bool = False) -> Tensor:
    """``[N, C, 3]`` statistics (I, P, Y) of ``input [N, C, *S]``, computed by Triton kernels."""
    N, C = input.shape[0], input.shape[1]
    acc = accumulation_dtype(input.dtype)
    if input.numel() == 0:
        return torch.zeros((N, C, 3), dtype=acc, device=input.device)
    part, n_chunks, pixel = _run(input, target, weight, mode, from_logits, sharpness,
                                 intersection, ignore_index, squared)
    return _reduce(part, N, C, n_chunks, pixel)


def _reduce(part, N, C, n_chunks, pixel):
    """The statistics [N, C, 3] from the partial sums (fixed order)."""
    out = torch.empty((N, C, 3), dtype=part.dtype, device=part.device)
    rows = N if pixel else N * C
    inner = (C if pixel else 1) * 3
    _launcher(reduce_kernel)[(rows,)](part, out, inner, _partial_row(C, pixel), n_chunks,
                                      BLOCK=configs.next_power_of_2(max(inner, 4)), num_warps=4)
    return out


@torch.library.triton_op("softiou::triton_stats_backward", mutates_args=())
def triton_stats_backward(grad_stats: Tensor, input: Tensor, target: Tensor,
                          weight: Optional[Tensor], mode: str, from_logits: bool,
                          sharpness: float, intersection: str,
                          ignore_index: Optional[int], squared: bool = False) -> Tensor:
    """The gradient of the input from the gradient of the statistics, by Triton kernels."""
    if input.numel() == 0:
        return torch.zeros_like(input)
    g = grad_stats.to(accumulation_dtype(input.dtype))
    return _run(input, target, weight, mode, from_logits, sharpness, intersection, ignore_index,
                squared, coef=g, coef_strides=g.stride())


register_stats_autograd(triton_stats, triton_stats_backward)


@torch.library.triton_op("softiou::triton_stats_ce", mutates_args=())
def triton_stats_ce(input: Tensor, target: Tensor, weight: Optional[Tensor],
                    class_weight: Optional[Tensor], mode: str, from_logits: bool,
                    sharpness: float, intersection: str, ignore_index: Optional[int],
                    label_smoothing: float, ce_pos_weight: float = 1.0,
                    squared: bool = False) -> Tuple[Tensor, Tensor]:
    """The statistics [N, C, 3] and the cross-entropy term's per-sample sums [N, 2] (SPEC
    section 9), in one pass."""
    N, C = input.shape[0], input.shape[1]
    acc = accumulation_dtype(input.dtype)
    if input.numel() == 0:
        return (torch.zeros((N, C, 3), dtype=acc, device=input.device),
                torch.zeros((N, 2), dtype=acc, device=input.device))
    part, n_chunks, pixel = _run(input, target, weight, mode, from_logits, sharpness,
                                 intersection, ignore_index, squared, ce=True,
                                 class_weight=class_weight, label_smoothing=label_smoothing,
                                 ce_pos_weight=ce_pos_weight)
    ce = torch.empty((N, 2), dtype=acc, device=input.device)
    per_sample, stride, off = _ce_layout(C, n_chunks, pixel)
    _launcher(ce_reduce_kernel)[(N,)](part, ce, per_sample, stride, off,
                                      ACC=tl.float64 if acc == torch.float64 else tl.float32,
                                      BLOCK=128, num_warps=4)
    return _reduce(part, N, C, n_chunks, pixel), ce


@torch.library.triton_op("softiou::triton_stats_ce_backward", mutates_args=())
def triton_stats_ce_backward(grad_stats: Tensor, grad_ce: Optional[Tensor], input: Tensor,
                             target: Tensor, weight: Optional[Tensor],
                             class_weight: Optional[Tensor], mode: str, from_logits: bool,
                             sharpness: float, intersection: str, ignore_index: Optional[int],
                             label_smoothing: float, ce_pos_weight: float = 1.0,
                             squared: bool = False) -> Tensor:
    """The gradient of the input from the gradients of the statistics and of the
    cross-entropy's sums (only the numerator's depends on the input)."""
    if input.numel() == 0:
        return torch.zeros_like(input)
    acc = accumulation_dtype(input.dtype)
    g = grad_stats.to(acc)
    gce = grad_ce.to(acc) if grad_ce is not None else None
    return _run(input, target, weight, mode, from_logits, sharpness, intersection, ignore_index,
                squared, coef=g, coef_strides=g.stride(), class_weight=class_weight,
                label_smoothing=label_smoothing, ce_pos_weight=ce_pos_weight, ce_coef=gce,
                ce_stride=gce.stride(0) if gce is not None else 0)


register_stats_ce_autograd(triton_stats_ce, triton_stats_ce_backward)


def stats(x, t, w, mode, from_logits, sharpness, intersection, ignore_index, squared=False):
    """The Triton statistics on normalized inputs (see softiou_cuda.checks.normalize_inputs)."""
    return triton_stats(x, t, w, mode, from_logits, sharpness, intersection, ignore_index,
                        squared)


# ---------------------------------------------------------------------------------------------
# The finalize step
# ---------------------------------------------------------------------------------------------
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


def _finalize(part, layout, N, C, K, class_weight, metric, alpha, beta, gamma, log_loss,
              smooth, eps, classes, include_background, per_image, absent, reduction,
              smooth_dr=None, weighted_mean=True, w_type="square", ce_weight=0.0,
              ce_layout=None, flat_coef=False):
    """Launches finalize_kernel on partial sums (layout (sn, sc, sk), K chunks per pair; with
    ce_weight > 0 the cross-entropy term from its sums at ce_layout (count, stride, offset)):
    returns (loss, coefficients [rows, C, 3], or flat [rows * C * 3 + 1] with d loss / d the
    cross-entropy's numerator last)."""
    acc = part.dtype
    device = part.device
    rows = N if per_image else 1
    loss = torch.empty(loss_shape(rows, C, per_image, reduction, metric), dtype=acc,
                       device=device)
    coef = torch.empty((rows * C * 3 + 1,) if flat_coef else (rows, C, 3), dtype=acc,
                       device=device)
    ce = ce_weight > 0
    ce_count, ce_stride, ce_off = ce_layout if ce else (0, 1, 0)
    cw = None if class_weight is None else class_weight.to(acc).contiguous()
    keep = _keep_mask(classes, C, device) if classes is not None else None
    dummy = coef
    _launcher(finalize_kernel)[(1,)](
        part, cw if cw is not None else dummy, keep if keep is not None else dummy, loss, coef,
        C, rows, N, K, *layout, ce_count, ce_stride, ce_off, *_bits(alpha), *_bits(beta),
        *_bits(gamma), *_bits(smooth), *_bits(smooth if smooth_dr is None else smooth_dr),
        *_bits(eps), *_bits(ce_weight), METRIC=METRICS[metric], LOG_LOSS=log_loss,
        GAMMA_ONE=gamma == 1.0, PER_IMAGE=per_image, ABSENT_EXCLUDE=absent == "exclude",
        ABSENT_ZERO=absent == "zero", WEIGHTED_MEAN=weighted_mean, W_TYPE=W_TYPES[w_type],
        REDUCTION=REDUCTIONS[reduction],
        HAS_CW=cw is not None, DROP_BG=not include_background, SUBSET=keep is not None, CE=ce,
        FLAT_COEF=flat_coef,
        ACC=tl.float64 if acc == torch.float64 else tl.float32, TINY=TINY[acc], BLOCK=128,
        num_warps=4)
    return loss, coef


@torch.library.triton_op("softiou::triton_finalize", mutates_args=())
def triton_finalize(stats: Tensor, class_weight: Optional[Tensor], metric: str, alpha: float,
                    beta: float, gamma: float, log_loss: bool, smooth: float, eps: float,
                    classes: Optional[List[int]], include_background: bool, per_image: bool,
                    absent: str, reduction: str, smooth_dr: Optional[float] = None,
                    weighted_mean: bool = True,
                    w_type: str = "square") -> Tuple[Tensor, Tensor]:
    """The finalize step (SPEC sections 4-5, 10) on statistics [N, C, 3]: (loss,
    coefficients)."""
    N, C = stats.shape[0], stats.shape[1]
    s = stats.contiguous()
    return _finalize(s, (C * 3, 3, 0), N, C, 1, class_weight, metric, alpha, beta, gamma,
                     log_loss, smooth, eps, classes, include_background, per_image, absent,
                     reduction, smooth_dr, weighted_mean, w_type)


def _finalize_setup(ctx, inputs, output):
    stats, class_weight, metric = inputs[0], inputs[1], inputs[2]
    per_image, reduction = inputs[11], inputs[13]
    checks.check_class_weight(class_weight, stats.shape[1], stats.device, metric)
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.rows, ctx.per_image, ctx.per_pair = stats.shape[0], per_image, reduction == "none"
    ctx.n_options = len(inputs) - 1


def _finalize_backward(ctx, grad, _grad_coef):
    (coef,) = ctx.saved_tensors
    # reduction="none": [rows, C] per pair, or [rows, 1] per row (generalized Dice)
    g = grad.reshape(coef.shape[0], -1, 1) if ctx.per_pair else grad
    gs = coef * g
    if not ctx.per_image:
        gs = gs.expand(ctx.rows, coef.shape[1], 3)
    return (gs,) + (None,) * ctx.n_options


triton_finalize.register_autograd(_finalize_backward, setup_context=_finalize_setup)


def finalize(stats, class_weight=None, **options):
    """The finalize step with the keyword arguments (and defaults) of ``softiou::finalize``:
    the loss."""
    o = LossOptions(**options)
    checks.check_classes(o.classes, stats.shape[1], o.include_background)
    checks.check_class_weight(class_weight, stats.shape[1], stats.device, o.metric)
    return triton_finalize(stats, class_weight, o.metric, o.alpha, o.beta, o.gamma, o.log_loss,
                           o.smooth, o.eps, None if o.classes is None else list(o.classes),
                           o.include_background, o.per_image, o.absent, o.reduction,
                           o.smooth_dr, o.weighted_mean, o.w_type)[0]


# ---------------------------------------------------------------------------------------------
# The loss: statistics + finalize forward, one gradient pass backward
# ---------------------------------------------------------------------------------------------
@torch.library.triton_op("softiou::triton_loss", mutates_args=())
def triton_loss(input: Tensor, target: Tensor, weight: Optional[Tensor],
                class_weight: Optional[Tensor], mode: str, from_logits: bool, sharpness: float,
                intersection: str, metric: str, alpha: float, beta: float, gamma: float,
                log_loss: bool, smooth: float, eps: float, classes: Optional[List[int]],
                include_background: bool, ignore_index: Optional[int], per_image: bool,
                absent: str, reduction: str, ce_weight: float, label_smoothing: float,
                squared: bool, smooth_dr: Optional[float], weighted_mean: bool, w_type: str,
                ce_pos_weight: float) -> Tuple[Tensor, Tensor]:
    """The loss of normalized inputs [N, C, *S] and the coefficients of its gradient
    ([rows * C * 3 + 1], as softiou::_loss_forward's)."""
    N, C = input.shape[0], input.shape[1]
    acc = accumulation_dtype(input.dtype)
    if input.numel() == 0:
        part = torch.zeros(N * _partial_row(C, True), dtype=acc, device=input.device)
        n_chunks, pixel = 1, True
    else:
        part, n_chunks, pixel = _run(input, target, weight, mode, from_logits, sharpness,
                                     intersection, ignore_index, squared, ce=ce_weight > 0,
                                     class_weight=class_weight, label_smoothing=label_smoothing,
                                     ce_pos_weight=ce_pos_weight)
    per_sample, stride, off = _ce_layout(C, n_chunks, pixel)
    return _finalize(part, _partials_layout(N, C, n_chunks, pixel), N, C, n_chunks,
                     class_weight, metric, alpha, beta, gamma, log_loss, smooth, eps, classes,
                     include_background, per_image, absent, reduction, smooth_dr, weighted_mean,
                     w_type, ce_weight=ce_weight, ce_layout=(N * per_sample, stride, off),
                     flat_coef=True)


@torch.library.triton_op("softiou::triton_loss_backward", mutates_args=())
def triton_loss_backward(grad: Tensor, input: Tensor, target: Tensor, weight: Optional[Tensor],
                         coef: Tensor, class_weight: Optional[Tensor], mode: str,
                         from_logits: bool, sharpness: float, intersection: str,
                         ignore_index: Optional[int], per_image: bool, reduction: str,
                         ce_weight: float, label_smoothing: float, metric: str, squared: bool,
                         ce_pos_weight: float) -> Tensor:
    """The gradient of the input: one launch of the gradient kernel, reading the pairs'
    coefficients, the cross-entropy term's (the last value) and the gradient of the loss."""
    if input.numel() == 0:
        return torch.zeros_like(input)
    C = input.shape[1]
    g = grad.to(coef.dtype)
    per_row = metric == "generalized_dice"  # reduction="none": one value per row, not per pair
    if reduction != "none":
        go_strides = (0, 0)
    elif per_image:
        go_strides = (g.stride(0), 0 if per_row else g.stride(1))
    else:
        go_strides = (0, 0 if per_row else g.stride(0))
    ce_coef = coef[-1:] if ce_weight > 0 else None
    return _run(input, target, weight, mode, from_logits, sharpness, intersection, ignore_index,
                squared, coef=coef, coef_strides=(C * 3 if per_image else 0, 3, 1), grad_out=g,
                grad_out_strides=go_strides, class_weight=class_weight,
                label_smoothing=label_smoothing, ce_pos_weight=ce_pos_weight, ce_coef=ce_coef)


_LOSS_OPTIONS = LossOptions._fields


def _loss_setup(ctx, inputs, output):
    input, target, weight, class_weight = inputs[:4]
    options = LossOptions(*inputs[4:])
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(input, target, weight, output[1], class_weight)
    ctx.options = options


def _loss_backward(ctx, grad, _grad_coef):
    input, target, weight, coef, class_weight = ctx.saved_tensors
    o = ctx.options
    grad_input = None
    if ctx.needs_input_grad[0]:
        grad_input = triton_loss_backward(grad, input, target, weight, coef, class_weight,
                                          o.mode, o.from_logits, o.sharpness, o.intersection,
                                          o.ignore_index, o.per_image, o.reduction, o.ce_weight,
                                          o.label_smoothing, o.metric, o.squared,
                                          o.ce_pos_weight)
    return (grad_input,) + (None,) * (3 + len(_LOSS_OPTIONS))


triton_loss.register_autograd(_loss_backward, setup_context=_loss_setup)


def loss(input: Tensor, target: Tensor, weight: Optional[Tensor],
         class_weight: Optional[Tensor], options: LossOptions) -> Tensor:
    """The loss through the Triton operators, with the checks of SPEC section 7 (in Python:
    softiou_cuda.checks)."""
    x, t, w = checks.normalize_inputs(input, target, weight, options.mode, options.ignore_index)
    checks.check_classes(options.classes, x.shape[1], options.include_background)
    checks.check_class_weight(class_weight, x.shape[1], x.device, options.metric)
    return triton_loss(x, t, w, class_weight, *options._replace(
        classes=None if options.classes is None else list(options.classes)))[0]
