"""The executable form of ``SPEC.md``: the soft IoU / Dice / Tversky loss in plain PyTorch.

This module is the oracle every backend is tested against. It is written to be read next to the
SPEC, one function per section, and computes everything the obvious way (it builds the one-hot
target the fused kernels never build).

It shares no code with the fused backends (softiou_cuda.options, the C++ and Triton kernels), which
it checks: sections 1 and 7 (inputs, options, errors), 2-3 (probabilities,
statistics), 4-5 (scores, loss, reduction), 9 (the cross-entropy term), 10 (the peers'
formulas) and 11 (the hard counts) are the functions below.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ._ties import tie_min

MODES = ("binary", "multiclass", "multilabel")
INTERSECTIONS = ("product", "min")
METRICS = ("jaccard", "dice", "tversky", "generalized_dice")
ABSENT = ("include", "exclude", "zero")
W_TYPES = ("square", "simple", "uniform")
REDUCTIONS = ("mean", "sum", "none")
INPUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CLASS_MAP_DTYPES = (torch.int64, torch.int32, torch.uint8)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 input accumulates in float64, every other dtype in float32 (SPEC section 3)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _choice(name: str, value, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


# --------------------------------------------------------------------------------------------
# Section 1. Inputs
# --------------------------------------------------------------------------------------------
def normalize_inputs(input: torch.Tensor, target: torch.Tensor,
                     weight: Optional[torch.Tensor], mode: str):
    """Checks shapes, dtypes and devices, and returns ``(x, t, w)``.

    ``x`` is ``[N, C, *S]`` (binary ``[N, *S]`` input becomes ``[N, 1, *S]``); ``t`` is the class
    map ``[N, *S]`` (multiclass or multilabel, integer) or ``[N, C, *S]``; ``w`` is ``[N, *S]`` or
    None.
    All are views of the arguments.
    """
    _choice("mode", mode, MODES)
    for name, value in (("input", input), ("target", target)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if input.dtype not in INPUT_DTYPES:
        raise ValueError(f"input must be float32, float64, float16 or bfloat16; got {input.dtype}")
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input is on {input.device}")
    integer = target.dtype in CLASS_MAP_DTYPES
    if not (integer or target.dtype.is_floating_point or target.dtype == torch.bool):
        raise ValueError("target must be an integer class map (int64, int32, uint8) or a dense "
                         f"float/half/bool tensor; got {target.dtype}")
    if target.requires_grad:
        raise ValueError("target requires grad, but softiou does not differentiate with respect "
                         "to the target; pass target.detach()")

    if mode == "binary":
        # [N, 1, *S] is read as one channel; anything else as [N, *S]
        x = input if input.dim() >= 3 and input.shape[1] == 1 else input.unsqueeze(1)
        if input.dim() < 2:
            raise ValueError(f"binary input must be [N, *spatial] or [N, 1, *spatial]; got shape "
                             f"{tuple(input.shape)}")
    else:
        x = input
        if input.dim() < 3:
            raise ValueError(f"{mode} input must be [N, C, *spatial] with at least one spatial "
                             f"dim; got shape {tuple(input.shape)}")
        if mode == "multiclass" and input.shape[1] < 2:
            raise ValueError(f"multiclass mode needs C >= 2 classes; got input shape "
                             f"{tuple(input.shape)} (use mode='binary' for one channel)")
    N, S = x.shape[0], tuple(x.shape[2:])
    map_shape = (N, *S)

    if mode == "multiclass" and integer:
        if tuple(target.shape) != map_shape:
            raise ValueError(f"target class map must have shape [N, *spatial] = {map_shape}; got "
                             f"{tuple(target.shape)}")
        t = target
    elif mode == "multilabel" and integer and tuple(target.shape) == map_shape:
        t = target  # a class map (section 10)
    elif mode == "binary" and tuple(target.shape) == map_shape:
        t = target.unsqueeze(1)
    elif tuple(target.shape) == tuple(x.shape):
        t = target
    else:
        shapes = f"{tuple(x.shape)}" + (f" or {map_shape}" if mode == "binary" else "")
        raise ValueError(f"target must have shape {shapes} for {mode} input of shape "
                         f"{tuple(input.shape)}; got {tuple(target.shape)}")

    w = None
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if weight.device != input.device:
            raise ValueError(f"weight is on {weight.device} but input is on {input.device}")
        if not weight.dtype.is_floating_point:
            raise ValueError(f"weight must be a floating tensor; got {weight.dtype}")
        if weight.requires_grad:
            raise ValueError("weight requires grad, but softiou does not differentiate with "
                             "respect to the pixel weights; pass weight.detach()")
        if tuple(weight.shape) == map_shape:
            w = weight
        elif tuple(weight.shape) == (N, 1, *S):
            w = weight.squeeze(1)
        else:
            raise ValueError(f"weight must have shape [N, *spatial] = {map_shape}; got "
                             f"{tuple(weight.shape)}")
    return x, t, w


def check_options(num_classes: int, device: torch.device, *, mode: str, from_logits: bool,
                  sharpness: float, intersection: str, metric: str, alpha: float, beta: float,
                  gamma: float, log_loss: bool, smooth: float, eps: float,
                  class_weight: Optional[torch.Tensor], classes: Optional[Sequence[int]],
                  include_background: bool, ignore_index: Optional[int], per_image: bool,
                  absent: str, reduction: str, ce_weight: float = 0.0,
                  label_smoothing: float = 0.0, squared: bool = False,
                  smooth_dr: Optional[float] = None, weighted_mean: bool = True,
                  w_type: str = "square", ce_pos_weight: float = 1.0) -> None:
    """Section 7 for the options: every bad value raises a ValueError naming the argument."""
    _choice("mode", mode, MODES)
    _choice("intersection", intersection, INTERSECTIONS)
    _choice("metric", metric, METRICS)
    _choice("absent", absent, ABSENT)
    _choice("reduction", reduction, REDUCTIONS)
    _choice("w_type", w_type, W_TYPES)
    for name, value in (("from_logits", from_logits), ("log_loss", log_loss),
                        ("include_background", include_background), ("per_image", per_image),
                        ("squared", squared), ("weighted_mean", weighted_mean)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool; got {value!r}")

    def number(name, value, ok, what):
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value) or not ok(value):
            raise ValueError(f"{name} must be {what}; got {value!r}")

    number("sharpness", sharpness, lambda v: v > 0, "a finite number > 0")
    number("alpha", alpha, lambda v: v >= 0, "a finite number >= 0")
    number("beta", beta, lambda v: v >= 0, "a finite number >= 0")
    number("gamma", gamma, lambda v: v > 0, "a finite number > 0")
    number("smooth", smooth, lambda v: v >= 0, "a finite number >= 0")
    if smooth_dr is not None:
        number("smooth_dr", smooth_dr, lambda v: v >= 0, "a finite number >= 0 or None")
    number("eps", eps, lambda v: v > 0, "a finite number > 0")
    number("ce_pos_weight", ce_pos_weight, lambda v: v >= 0, "a finite number >= 0")
    # section 9
    number("ce_weight", ce_weight, lambda v: v >= 0, "a finite number >= 0")
    number("label_smoothing", label_smoothing, lambda v: 0 <= v < 1, "a number in [0, 1)")
    if ce_weight > 0 and not from_logits:
        raise ValueError("ce_weight > 0 needs from_logits=True: the cross-entropy is of logits")
    if ce_weight > 0 and reduction == "none":
        raise ValueError("ce_weight > 0 needs reduction='mean' or 'sum': the cross-entropy and the "
                         "per-pair losses of reduction='none' have different shapes")
    if ce_pos_weight != 1 and mode == "multiclass":
        raise ValueError(f"ce_pos_weight is the binary cross-entropy's; it must be 1 in "
                         f"multiclass mode; got {ce_pos_weight}")
    if metric == "generalized_dice":
        if class_weight is not None:
            raise ValueError("class_weight must be None with metric='generalized_dice': its "
                             "class weights come from the target (w_type)")
        if absent != "include":
            raise ValueError(f"absent must be 'include' with metric='generalized_dice'; got "
                             f"{absent!r}")
    if label_smoothing != 0 and mode != "multiclass":
        raise ValueError(f"label_smoothing must be 0 in {mode} mode (binary cross-entropy); got "
                         f"{label_smoothing}")
    if ignore_index is not None and (not isinstance(ignore_index, int)
                                     or isinstance(ignore_index, bool)):
        raise ValueError(f"ignore_index must be an int or None; got {ignore_index!r}")
    if classes is not None:
        listed = list(classes)
        if not listed or not all(isinstance(c, int) and not isinstance(c, bool) for c in listed):
            raise ValueError(f"classes must be a non-empty sequence of class indices; got "
                             f"{classes!r}")
        if any(c < 0 or c >= num_classes for c in listed):
            raise ValueError(f"classes must be indices in [0, {num_classes}); got {listed}")
        if len(set(listed)) != len(listed):
            raise ValueError(f"classes must not repeat a class; got {listed}")
    if not include_background and num_classes == 1:
        raise ValueError("include_background=False drops class 0, the only class of this input")
    if class_weight is not None:
        if not isinstance(class_weight, torch.Tensor) or not class_weight.dtype.is_floating_point:
            raise ValueError("class_weight must be a floating tensor of shape [C]")
        if tuple(class_weight.shape) != (num_classes,):
            raise ValueError(f"class_weight must have shape [C] = ({num_classes},); got "
                             f"{tuple(class_weight.shape)}")
        if class_weight.device != device:
            raise ValueError(f"class_weight is on {class_weight.device} but input is on {device}")


# --------------------------------------------------------------------------------------------
# Section 2. Probabilities
# --------------------------------------------------------------------------------------------
def probabilities(x: torch.Tensor, mode: str, from_logits: bool = True,
                  sharpness: float = 1.0, compute_dtype: Optional[torch.dtype] = None
                  ) -> torch.Tensor:
    """``p`` of ``x = [N, C, *S]`` in the accumulation dtype (or ``compute_dtype``)."""
    x = x.to(compute_dtype or accumulation_dtype(x.dtype))
    a = sharpness
    if mode == "multiclass":
        if from_logits:
            return torch.softmax(a * x, dim=1)
        if a == 1:
            return x
        xa = x ** a
        return xa / xa.sum(dim=1, keepdim=True)
    if from_logits:
        return torch.sigmoid(a * x)
    if a == 1:
        return x
    xa = x ** a
    return xa / (xa + (1 - x) ** a)


# --------------------------------------------------------------------------------------------
# Section 3. Per-(sample, class) statistics
# --------------------------------------------------------------------------------------------
def dense_target(t: torch.Tensor, mode: str, num_classes: int, ignore_index: Optional[int],
                 dtype: torch.dtype, check_values: bool = True, class_map: Optional[bool] = None):
    """``(y, valid)``: the target as ``[N, C, *S]`` floats and a mask that broadcasts to it.
    ``class_map``: whether ``t`` is a class map ``[N, *S]`` (default: an integer multiclass
    target; a multilabel one is a class map when it has no channel dim, section 10)."""
    if class_map is None:
        class_map = mode == "multiclass" and t.dtype in CLASS_MAP_DTYPES
    note = f" and not ignore_index={ignore_index}" if ignore_index is not None else ""
    if t.dtype in CLASS_MAP_DTYPES:
        t = t.long()
        valid = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        kept = torch.where(valid, t, 0)
        if class_map:  # class map [N, *S] -> one-hot [N, C, *S]
            if check_values:
                bad = valid & ((t < 0) | (t >= num_classes))
                if bad.any():
                    raise ValueError(f"target holds class index {t[bad][0].item()}, outside "
                                     f"[0, {num_classes}){note}")
            y = F.one_hot(kept, num_classes).movedim(-1, 1).to(dtype)
            return y, valid.unsqueeze(1)
        if check_values:
            bad = valid & (t != 0) & (t != 1)
            if bad.any():
                raise ValueError(f"binary/multilabel integer target holds {t[bad][0].item()}, "
                                 f"expected 0 or 1{note}")
        return kept.to(dtype), valid
    y = t.to(dtype)
    if ignore_index is not None and mode == "multiclass":
        raise ValueError("ignore_index applies to class maps and to binary/multilabel targets; "
                         "a dense multiclass target has none (leave pixels out with weight)")
    if ignore_index is not None:  # section 10: per element
        valid = y != ignore_index
        y = torch.where(valid, y, torch.zeros_like(y))
    else:
        valid = torch.ones((), dtype=torch.bool, device=t.device)
    if check_values:
        bad = valid & ((y < 0) | (y > 1))
        if bad.any():
            raise ValueError(f"dense target holds {y[bad][0].item()}, outside [0, 1]{note}")
    return y, valid


def statistics_normalized(x: torch.Tensor, t: torch.Tensor, w: Optional[torch.Tensor],
                          mode: str, from_logits: bool = True, sharpness: float = 1.0,
                          intersection: str = "product", ignore_index: Optional[int] = None,
                          check_values: bool = True,
                          compute_dtype: Optional[torch.dtype] = None,
                          squared: bool = False) -> torch.Tensor:
    """``[N, C, 3]`` holding ``I, P, Y`` of already normalized inputs (see normalize_inputs).

    ``compute_dtype`` overrides the SPEC's accumulation dtype: the tests use it to measure this
    formulation's own error in low precision. ``squared``: the sums of p^2 and y^2 (section 10)."""
    acc = compute_dtype or accumulation_dtype(x.dtype)
    if check_values and not from_logits:
        bad = (x < 0) | (x > 1)
        if bad.any():
            raise ValueError(f"input holds {x[bad][0].item()}, outside [0, 1], with "
                             "from_logits=False")
    p = probabilities(x, mode, from_logits, sharpness, acc)
    y, valid = dense_target(t, mode, x.shape[1], ignore_index, acc, check_values,
                            class_map=t.dim() == x.dim() - 1)
    if w is None:
        w = torch.ones((), dtype=acc, device=x.device)
    else:
        if check_values and (w < 0).any():
            raise ValueError(f"weight holds {w[w < 0][0].item()}, expected weights >= 0")
        w = w.to(acc).unsqueeze(1)
    inter = p * y if intersection == "product" else tie_min(p, y)
    p_term, y_term = (p * p, y * y) if squared else (p, y)
    dims = tuple(range(2, x.dim()))
    zero = torch.zeros((), dtype=acc, device=x.device)
    I = torch.where(valid, w * inter, zero).sum(dims)
    P = torch.where(valid, w * p_term, zero).sum(dims)
    Y = torch.where(valid, w * y_term, zero).sum(dims)
    return torch.stack([I, P, Y], dim=-1)


def statistics(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
               *, mode: str = "multiclass", from_logits: bool = True, sharpness: float = 1.0,
               intersection: str = "product", ignore_index: Optional[int] = None,
               check_values: bool = True, squared: bool = False) -> torch.Tensor:
    """Section 3: ``[N, C, 3]`` holding ``I, P, Y`` per (sample, class)."""
    x, t, w = normalize_inputs(input, target, weight, mode)
    _choice("intersection", intersection, INTERSECTIONS)
    return statistics_normalized(x, t, w, mode, from_logits, sharpness, intersection,
                                 ignore_index, check_values, squared=squared)


# --------------------------------------------------------------------------------------------
# Sections 4 and 5. Scores and loss
# --------------------------------------------------------------------------------------------
def all_reduce_statistics(stats: torch.Tensor, process_group) -> torch.Tensor:
    """Sums ``stats`` over the ranks of ``process_group``, differentiably: the backward sums the
    gradients of all ranks, so with DistributedDataParallel's averaging every rank's parameters
    get the gradient of the loss of the global batch. Uses the functional collective's own
    autograd formula (torch 2.10 and later)."""
    import torch.distributed._functional_collectives as funcol
    if not torch._C._dispatch_has_kernel_for_dispatch_key("_c10d_functional::all_reduce",
                                                          "Autograd"):
        raise RuntimeError("the reference's process_group needs a torch whose functional "
                           f"all_reduce is differentiable; torch {torch.__version__} has none "
                           "(the fused backends do not need it)")
    out = funcol.all_reduce(stats, "sum", process_group)
    return out.wait() if isinstance(out, funcol.AsyncCollectiveTensor) else out


class _Ratio(torch.autograd.Function):
    """``num / den`` whose backward gives ``d/dden = -(g * q) / den`` with ``q = num / den``.

    PyTorch's own division computes ``d/dnum = g / den`` but ``d/dden = -g * (q / den)``, which
    rounds differently. Where ``num == den`` (a perfect score, q = 1) the two must cancel exactly
    for the gradient at the optimum to be exactly zero (SPEC section 8); written this way they do,
    bitwise and on every device: ``-(g * 1) / den == -(g / den)``."""

    @staticmethod
    def forward(num, den):
        return num / den

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1], output)

    @staticmethod
    def backward(ctx, g):
        den, q = ctx.saved_tensors
        return g / den, -(g * q) / den


def _ratio_score(num: torch.Tensor, den: torch.Tensor, eps: float) -> torch.Tensor:
    """``num / max(den, eps)``, and 1 where both are 0 (section 4)."""
    both_zero = (num == 0) & (den == 0)
    return torch.where(both_zero, torch.ones_like(num), _Ratio.apply(num, den.clamp_min(eps)))


def scores(I: torch.Tensor, P: torch.Tensor, Y: torch.Tensor, *, metric: str = "jaccard",
           alpha: float = 0.5, beta: float = 0.5, smooth: float = 0.0,
           eps: float = 1e-7, smooth_dr: Optional[float] = None) -> torch.Tensor:
    """Section 4: the score of each pair; an empty target with an empty prediction scores 1.
    ``smooth_dr``: the denominator's smoothing (section 10; default ``smooth``)."""
    s = smooth
    sd = smooth if smooth_dr is None else smooth_dr
    if metric == "jaccard":
        num, den = I + s, P + Y - I + sd
    elif metric == "dice":
        num, den = 2 * I + s, P + Y + sd
    else:
        num, den = I + s, I + alpha * (P - I) + beta * (Y - I) + sd
    return _ratio_score(num, den, eps)


def generalized_dice_weights(Y: torch.Tensor, keep: torch.Tensor, w_type: str) -> torch.Tensor:
    """Section 10: the class weights of the generalized Dice score of each row of ``Y``
    ``[R, C]``, over the kept classes (0 elsewhere): ``1/Y^2``, ``1/Y`` or 1, computed in float32;
    an infinite weight becomes the row's largest finite one. Constants of the gradient."""
    y32 = Y.detach().to(torch.float32)
    if w_type == "square":
        w = torch.reciprocal(y32 * y32)
    elif w_type == "simple":
        w = torch.reciprocal(y32)
    else:
        w = torch.ones_like(y32)
    keep = keep.expand_as(w)
    infinite = torch.isinf(w) & keep
    w = torch.where(keep & ~infinite, w, torch.zeros_like(w))
    largest = w.max(dim=-1, keepdim=True).values
    w = torch.where(infinite, largest.expand_as(w), w)
    return w.to(Y.dtype)


def _focal(score: torch.Tensor, *, gamma: float, log_loss: bool, eps: float) -> torch.Tensor:
    """Section 5: ``1 - score`` or ``-log(score)``, then ``^gamma``."""
    loss = -torch.log(score.clamp_min(eps)) if log_loss else 1 - score
    if gamma != 1:
        # loss**gamma, with a zero (not infinite) derivative where the loss is 0
        tiny = torch.finfo(loss.dtype).tiny
        loss = torch.where(loss > 0, loss.clamp_min(tiny) ** gamma, torch.zeros_like(loss))
    return loss


def loss_from_stats(stats: torch.Tensor, *, metric: str = "jaccard", alpha: float = 0.5,
                    beta: float = 0.5, gamma: float = 1.0, log_loss: bool = False,
                    smooth: float = 0.0, eps: float = 1e-7,
                    class_weight: Optional[torch.Tensor] = None,
                    classes: Optional[Sequence[int]] = None, include_background: bool = True,
                    per_image: bool = True, absent: str = "include", reduction: str = "mean",
                    process_group=None, smooth_dr: Optional[float] = None,
                    weighted_mean: bool = True, w_type: str = "square") -> torch.Tensor:
    """Sections 4, 5 and 10: the loss from the ``[N, C, 3]`` statistics."""
    if not per_image:
        stats = stats.sum(dim=0)  # [C, 3]: one score per class over the batch
        if process_group is not None:
            stats = all_reduce_statistics(stats, process_group)
    I, P, Y = stats.unbind(-1)

    num_classes = stats.shape[-2]
    keep = torch.ones(num_classes, dtype=torch.bool, device=stats.device)
    if classes is not None:
        keep = torch.zeros_like(keep)
        keep[list(classes)] = True
    if not include_background:
        keep[0] = False

    if metric == "generalized_dice":  # one score per row over the kept classes
        rows = (I, P, Y) if per_image else (I[None], P[None], Y[None])
        gw = generalized_dice_weights(rows[2], keep, w_type)
        sd = smooth if smooth_dr is None else smooth_dr
        num = 2 * (gw * rows[0]).sum(-1) + smooth
        den = (gw * (rows[1] + rows[2])).sum(-1) + sd
        loss = _focal(_ratio_score(num, den, eps), gamma=gamma, log_loss=log_loss,
                      eps=eps)
        if reduction == "none":
            return loss[:, None] if per_image else loss
        return loss.sum() if reduction == "sum" else loss.mean()

    score = scores(I, P, Y, metric=metric, alpha=alpha, beta=beta, smooth=smooth, eps=eps,
                   smooth_dr=smooth_dr)
    loss = _focal(score, gamma=gamma, log_loss=log_loss, eps=eps)
    kept = keep.expand_as(loss)
    if absent == "exclude":
        kept = kept & (Y > 0)
    elif absent == "zero":  # section 10: loss 0, the weight kept
        loss = torch.where(Y > 0, loss, torch.zeros_like(loss))
    w = kept.to(loss.dtype)
    if class_weight is not None:
        w = w * class_weight.to(loss.dtype)

    weighted = w * loss
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    wsum = w.sum() if weighted_mean else kept.sum().to(loss.dtype)
    # no kept pair: 0, still connected to the graph
    return total / torch.where(wsum > 0, wsum, torch.ones_like(wsum))


# --------------------------------------------------------------------------------------------
# Section 9. Cross-entropy in the same pass
# --------------------------------------------------------------------------------------------
def cross_entropy_sums(x: torch.Tensor, t: torch.Tensor, w: Optional[torch.Tensor], mode: str,
                       sharpness: float = 1.0, class_weight: Optional[torch.Tensor] = None,
                       ignore_index: Optional[int] = None, label_smoothing: float = 0.0,
                       compute_dtype: Optional[torch.dtype] = None,
                       ce_pos_weight: float = 1.0):
    """``(numerator, denominator)`` of the cross-entropy of normalized inputs, summed over the
    batch: the term is ``numerator / denominator`` for ``"mean"`` and ``numerator`` for
    ``"sum"``."""
    acc = compute_dtype or accumulation_dtype(x.dtype)
    C = x.shape[1]
    z = sharpness * x.to(acc)
    c = (class_weight.to(acc) if class_weight is not None
         else torch.ones(C, dtype=acc, device=x.device))
    c_b = c.reshape(1, C, *([1] * (x.dim() - 2)))  # broadcast over [N, C, *S]
    pw = torch.ones(x.shape[:1] + x.shape[2:], dtype=acc, device=x.device) if w is None \
        else w.to(acc)  # pixel weights [N, *S]
    eps = label_smoothing
    class_map = t.dim() == x.dim() - 1
    if mode == "multiclass":
        logp = torch.log_softmax(z, dim=1)
        if class_map:
            t = t.long()
            valid = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
            tk = torch.where(valid, t, 0)
            logp_t = logp.gather(1, tk.unsqueeze(1)).squeeze(1)
            c_t = c[tk]
            ell = -(1 - eps) * c_t * logp_t - (eps / C) * (c_b * logp).sum(1)
            vw = torch.where(valid, pw, torch.zeros_like(pw))
            return (vw * ell).sum(), (vw * c_t).sum()
        y = (1 - eps) * t.to(acc) + eps / C
        ell = -(c_b * y * logp).sum(1)
        return (pw * ell).sum(), pw.sum()
    # binary / multilabel: c_c * BCEWithLogits(z, y, pos_weight), per element
    y, valid = dense_target(t, mode, C, ignore_index, acc, check_values=False,
                            class_map=class_map)
    valid = valid.expand_as(z)
    softplus = torch.clamp_min(z, 0) + torch.log1p(torch.exp(-z.abs()))
    pos = ce_pos_weight
    bce = (pos * y + 1 - y) * softplus - pos * y * z
    v = valid.to(acc)
    return (v * pw.unsqueeze(1) * c_b * bce).sum(), v.sum()


def _class_map_counts_target(t, C, ignore_index):
    """A class map's one-hot target [N, C, M] for the hard counts, and the kept pixels [N, 1, M]
    (in range and not ignore_index)."""
    t = t.reshape(t.shape[0], -1).long()
    keep = (t >= 0) & (t < C)
    if ignore_index is not None:
        keep &= t != ignore_index
    true = F.one_hot(torch.where(keep, t, 0), C).movedim(-1, 1).bool()
    return true, keep.unsqueeze(1)


def stat_scores(input: torch.Tensor, target: torch.Tensor, *, mode: str = "multiclass",
                from_logits: bool = True, threshold: float = 0.5,
                ignore_index: Optional[int] = None) -> torch.Tensor:
    """Section 11: the hard ``(tp, fp, tn, fn)`` per (sample, class), int64 ``[N, C, 4]``: the
    prediction the first maximal class (multiclass) or ``sigmoid(x) > threshold`` (``x >
    threshold`` for probabilities), counted over the kept pixels (elements) of the target."""
    x, t, _ = normalize_inputs(input, target, None, mode)
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
            and 0 < threshold < 1):
        raise ValueError(f"threshold must be a number in (0, 1); got {threshold!r}")
    N, C = x.shape[0], x.shape[1]
    class_map = t.dim() < x.dim()  # [N, *S]: a class map (multiclass, or multilabel's)
    x = x.reshape(N, C, -1)
    if mode == "multiclass":
        pred = F.one_hot(x.argmax(dim=1), C).movedim(-1, 1).bool()  # torch.argmax: the first
        if t.dtype in CLASS_MAP_DTYPES:
            true, keep = _class_map_counts_target(t, C, ignore_index)
        else:  # a dense target's first maximal class
            y = t.reshape(N, C, -1)
            y = y if y.is_floating_point() else y.to(torch.uint8)  # (argmax takes no bool)
            true = F.one_hot(y.argmax(dim=1), C).movedim(-1, 1).bool()
            keep = torch.ones_like(true)
    else:
        pred = (torch.sigmoid(x.double()) > threshold) if from_logits else (x > threshold)
        if class_map:  # multilabel of a class map
            true, keep = _class_map_counts_target(t, C, ignore_index)
        elif t.dtype in CLASS_MAP_DTYPES:
            t = t.reshape(N, C, -1).long()
            keep = (t == 0) | (t == 1)
            if ignore_index is not None:
                keep &= t != ignore_index
            true = t == 1
        else:
            t = t.reshape(N, C, -1)
            keep = (t != ignore_index) if ignore_index is not None else torch.ones_like(t).bool()
            true = t.double() > 0.5
    keep = keep.expand_as(pred)
    count = lambda m: (m & keep).sum(dim=-1)  # noqa: E731
    return torch.stack((count(pred & true), count(pred & ~true), count(~pred & ~true),
                        count(~pred & true)), dim=-1)


def statistics_per_sample(input: torch.Tensor, target: torch.Tensor,
                          weight: Optional[torch.Tensor] = None, *, mode: str = "multiclass",
                          from_logits: bool = True, sharpness: float = 1.0,
                          intersection: str = "product", ignore_index: Optional[int] = None,
                          squared: bool = False, ce_weight: float = 0.0,
                          label_smoothing: float = 0.0, ce_pos_weight: float = 1.0,
                          class_weight: Optional[torch.Tensor] = None, **finalize_options):
    """The statistics pass as the fused operators return it (sections 3 and 9): ``I, P, Y`` per
    (sample, class) ``[N, C, 3]``, and the cross-entropy's numerator and denominator per sample
    ``[N, 2]`` (zeros with ``ce_weight = 0``). The finalize step's options are accepted and left
    alone."""
    x, t, w = normalize_inputs(input, target, weight, mode)
    _choice("intersection", intersection, INTERSECTIONS)
    stats = statistics_normalized(x, t, w, mode, from_logits, sharpness, intersection,
                                  ignore_index, squared=squared)
    if ce_weight <= 0:
        return stats, stats.new_zeros((x.shape[0], 2))
    sums = [torch.stack(cross_entropy_sums(
        x[n:n + 1], t[n:n + 1], None if w is None else w[n:n + 1], mode, sharpness, class_weight,
        ignore_index, label_smoothing, ce_pos_weight=ce_pos_weight)) for n in range(x.shape[0])]
    return stats, torch.stack(sums).to(stats.dtype)


def loss_from_statistics(stats: torch.Tensor, ce: Optional[torch.Tensor], *,
                         ce_weight: float = 0.0, reduction: str = "mean",
                         class_weight: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """The finalize step as the fused operators compute it (sections 4, 5, 9): the loss from the
    statistics ``[N, C, 3]`` and the cross-entropy's sums per sample ``[N', 2]`` (read with
    ``ce_weight > 0``). The statistics pass's options are accepted and left alone."""
    names = ("metric", "alpha", "beta", "gamma", "log_loss", "smooth", "eps", "classes",
             "include_background", "per_image", "absent", "smooth_dr", "weighted_mean", "w_type")
    loss = loss_from_stats(stats, class_weight=class_weight, reduction=reduction,
                           **{k: v for k, v in options.items() if k in names})
    if ce_weight > 0 and ce is not None:
        num, den = ce.sum(dim=0).unbind()
        loss = loss + ce_weight * cross_entropy_term(num, den, reduction)
    return loss


def cross_entropy_term(num: torch.Tensor, den: torch.Tensor, reduction: str) -> torch.Tensor:
    """The term of section 9 from its sums: the mean (0, connected to the graph, for a zero
    denominator) or the sum."""
    if reduction == "sum":
        return num
    return num / torch.where(den > 0, den, torch.ones_like(den))


def soft_iou_loss(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  *, mode: str = "multiclass", from_logits: bool = True, sharpness: float = 1.0,
                  intersection: str = "product", metric: str = "jaccard", alpha: float = 0.5,
                  beta: float = 0.5, gamma: float = 1.0, log_loss: bool = False,
                  smooth: float = 0.0, eps: float = 1e-7,
                  class_weight: Optional[torch.Tensor] = None,
                  classes: Optional[Sequence[int]] = None, include_background: bool = True,
                  ignore_index: Optional[int] = None, per_image: bool = True,
                  absent: str = "include", reduction: str = "mean", process_group=None,
                  ce_weight: float = 0.0, label_smoothing: float = 0.0, squared: bool = False,
                  smooth_dr: Optional[float] = None, weighted_mean: bool = True,
                  w_type: str = "square", ce_pos_weight: float = 1.0,
                  check_values: bool = True,
                  compute_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The whole SPEC in eager PyTorch (the oracle). ``check_values=False`` skips the data checks
    of section 7 (they synchronise with the device), as the benchmark's eager baseline does;
    ``compute_dtype`` computes everything in another dtype (see statistics_normalized)."""
    x, t, w = normalize_inputs(input, target, weight, mode)
    check_options(x.shape[1], x.device, mode=mode, from_logits=from_logits, sharpness=sharpness,
                  intersection=intersection, metric=metric, alpha=alpha, beta=beta, gamma=gamma,
                  log_loss=log_loss, smooth=smooth, eps=eps, class_weight=class_weight,
                  classes=classes, include_background=include_background,
                  ignore_index=ignore_index, per_image=per_image, absent=absent,
                  reduction=reduction, ce_weight=ce_weight, label_smoothing=label_smoothing,
                  squared=squared, smooth_dr=smooth_dr, weighted_mean=weighted_mean,
                  w_type=w_type, ce_pos_weight=ce_pos_weight)
    stats = statistics_normalized(x, t, w, mode, from_logits, sharpness, intersection,
                                  ignore_index, check_values, compute_dtype, squared)
    loss = loss_from_stats(stats, metric=metric, alpha=alpha, beta=beta, gamma=gamma,
                           log_loss=log_loss, smooth=smooth, eps=eps, class_weight=class_weight,
                           classes=classes, include_background=include_background,
                           per_image=per_image, absent=absent, reduction=reduction,
                           process_group=process_group, smooth_dr=smooth_dr,
                           weighted_mean=weighted_mean, w_type=w_type)
    if ce_weight > 0:  # section 9; under a process group the local mean
        num, den = cross_entropy_sums(x, t, w, mode, sharpness, class_weight, ignore_index,
                                      label_smoothing, compute_dtype, ce_pos_weight)
        loss = loss + ce_weight * cross_entropy_term(num, den, reduction)
    return loss
