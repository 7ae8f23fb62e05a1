"""The production path's option and input checks (SPEC sections 1 and 7), and the options as one
validated value.

:class:`LossOptions` holds every option of the loss except the tensors (``class_weight``) and the
process group; it is validated once when it is made (``SoftIoULoss`` makes it at construction,
``soft_iou_loss`` gets it from a cache keyed by the options) and then carried as one value to the
operator. The compiled operators check their arguments again in C++ (``csrc/op_common.h``) for the
callers of ``torch.ops.softiou.*``; :func:`normalize_inputs` checks tensors for the backends that
run in Python (Triton) and for the statistics op of the pooled data-parallel path.

The reference (``softiou_cuda.reference``) has checks of its own: it is the oracle and shares no
code with the path it checks.
"""

from __future__ import annotations

import functools
import sys
from typing import NamedTuple, Optional, Tuple

import torch

MODES = ("binary", "multiclass", "multilabel")
INTERSECTIONS = ("product", "min")
METRICS = ("jaccard", "dice", "tversky", "generalized_dice")
ABSENT = ("include", "exclude", "zero")
W_TYPES = ("square", "simple", "uniform")
REDUCTIONS = ("mean", "sum", "none")
INPUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32, torch.uint8)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the statistics and of the loss: float64 for float64 input, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class LossOptions(NamedTuple):
    """Every option of ``softiou::loss`` but the tensors, in the operator's schema order: the
    operator takes ``(input, target, weight, class_weight, *options)``."""

    mode: str = "multiclass"
    from_logits: bool = True
    sharpness: float = 1.0
    intersection: str = "product"
    metric: str = "jaccard"
    alpha: float = 0.5
    beta: float = 0.5
    gamma: float = 1.0
    log_loss: bool = False
    smooth: float = 0.0
    eps: float = 1e-7
    classes: Optional[Tuple[int, ...]] = None
    include_background: bool = True
    ignore_index: Optional[int] = None
    per_image: bool = True
    absent: str = "include"
    reduction: str = "mean"
    ce_weight: float = 0.0
    label_smoothing: float = 0.0
    # SPEC section 10, the peers' formulas
    squared: bool = False
    smooth_dr: Optional[float] = None
    weighted_mean: bool = True
    w_type: str = "square"
    ce_pos_weight: float = 1.0

    def kwargs(self) -> dict:
        """The options by name (the keyword arguments of ``soft_iou_loss``)."""
        return self._asdict()

    def stats_args(self) -> tuple:
        """The options of the statistics ops, in their schema order."""
        return (self.mode, self.from_logits, float(self.sharpness), self.intersection,
                self.ignore_index, self.squared)

    def stats_ce_args(self) -> tuple:
        """The options of the statistics ops with the cross-entropy's sums (after the class
        weights), in their schema order."""
        return (self.mode, self.from_logits, float(self.sharpness), self.intersection,
                self.ignore_index, self.label_smoothing, self.ce_pos_weight, self.squared)

    def finalize_kwargs(self) -> dict:
        """The options of the finalize step (``softiou::finalize``)."""
        return dict(metric=self.metric, alpha=self.alpha, beta=self.beta, gamma=self.gamma,
                    log_loss=self.log_loss, smooth=self.smooth, eps=self.eps,
                    classes=self.classes, include_background=self.include_background,
                    per_image=self.per_image, absent=self.absent, reduction=self.reduction,
                    smooth_dr=self.smooth_dr, weighted_mean=self.weighted_mean,
                    w_type=self.w_type)


def _choice(name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _number(name, value, ok, what):
    # finite by comparisons, not math.isfinite: under torch.compile a float that changes between
    # calls (a schedule), or every float with dynamic=True, is symbolic; the comparisons are
    # guards, and the operator's call specializes the value
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not -sys.float_info.max <= value <= sys.float_info.max or not ok(value):
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return float(value)


def _flag(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool; got {value!r}")
    return value


def make_options(mode="multiclass", from_logits=True, sharpness=1.0, intersection="product",
                 metric="jaccard", alpha=0.5, beta=0.5, gamma=1.0, log_loss=False, smooth=0.0,
                 eps=1e-7, classes=None, include_background=True, ignore_index=None,
                 per_image=True, absent="include", reduction="mean", ce_weight=0.0,
                 label_smoothing=0.0, squared=False, smooth_dr=None, weighted_mean=True,
                 w_type="square", ce_pos_weight=1.0) -> LossOptions:
    """Validates the options (SPEC section 7: a ValueError naming the argument) and returns them
    as one :class:`LossOptions`. The number of classes is checked by the operator."""
    _choice("mode", mode, MODES)
    _choice("intersection", intersection, INTERSECTIONS)
    _choice("metric", metric, METRICS)
    _choice("absent", absent, ABSENT)
    _choice("reduction", reduction, REDUCTIONS)
    _choice("w_type", w_type, W_TYPES)
    if classes is not None:
        listed = tuple(classes)
        if not listed or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                 for c in listed):
            raise ValueError(f"classes must be a non-empty sequence of class indices >= 0; got "
                             f"{classes!r}")
        if len(set(listed)) != len(listed):
            raise ValueError(f"classes must not repeat a class; got {list(listed)}")
        classes = listed
    if ignore_index is not None and (not isinstance(ignore_index, int)
                                     or isinstance(ignore_index, bool)):
        raise ValueError(f"ignore_index must be an int or None; got {ignore_index!r}")
    # SPEC section 9
    ce_weight = _number("ce_weight", ce_weight, lambda v: v >= 0, "a finite number >= 0")
    label_smoothing = _number("label_smoothing", label_smoothing, lambda v: 0 <= v < 1,
                              "a number in [0, 1)")
    if ce_weight > 0 and from_logits is not True:
        raise ValueError("ce_weight > 0 needs from_logits=True: the cross-entropy is of logits")
    if ce_weight > 0 and reduction == "none":
        raise ValueError("ce_weight > 0 needs reduction='mean' or 'sum': the cross-entropy and the "
                         "per-pair losses of reduction='none' have different shapes")
    if label_smoothing != 0 and mode != "multiclass":
        raise ValueError(f"label_smoothing must be 0 in {mode} mode (binary cross-entropy); got "
                         f"{label_smoothing}")
    # SPEC section 10
    ce_pos_weight = _number("ce_pos_weight", ce_pos_weight, lambda v: v >= 0,
                            "a finite number >= 0")
    if ce_pos_weight != 1 and mode == "multiclass":
        raise ValueError(f"ce_pos_weight is the binary cross-entropy's; it must be 1 in "
                         f"multiclass mode; got {ce_pos_weight}")
    if smooth_dr is not None:
        smooth_dr = _number("smooth_dr", smooth_dr, lambda v: v >= 0,
                            "a finite number >= 0 or None")
    if metric == "generalized_dice" and absent != "include":
        raise ValueError(f"absent must be 'include' with metric='generalized_dice'; got "
                         f"{absent!r}")
    return LossOptions(
        mode=mode, from_logits=_flag("from_logits", from_logits),
        sharpness=_number("sharpness", sharpness, lambda v: v > 0, "a finite number > 0"),
        intersection=intersection, metric=metric,
        alpha=_number("alpha", alpha, lambda v: v >= 0, "a finite number >= 0"),
        beta=_number("beta", beta, lambda v: v >= 0, "a finite number >= 0"),
        gamma=_number("gamma", gamma, lambda v: v > 0, "a finite number > 0"),
        log_loss=_flag("log_loss", log_loss),
        smooth=_number("smooth", smooth, lambda v: v >= 0, "a finite number >= 0"),
        eps=_number("eps", eps, lambda v: v > 0, "a finite number > 0"),
        classes=classes, include_background=_flag("include_background", include_background),
        ignore_index=ignore_index, per_image=_flag("per_image", per_image), absent=absent,
        reduction=reduction, ce_weight=ce_weight, label_smoothing=label_smoothing,
        squared=_flag("squared", squared), smooth_dr=smooth_dr,
        weighted_mean=_flag("weighted_mean", weighted_mean), w_type=w_type,
        ce_pos_weight=ce_pos_weight)


# typed: True and 1, or 1 and 1.0, are different options (a bool is checked to be a bool)
@functools.lru_cache(maxsize=512, typed=True)
def _cached_options(*values) -> LossOptions:
    return make_options(*values)


def options(*values) -> LossOptions:
    """:func:`make_options` with positional values in :class:`LossOptions` order, from a cache:
    a call with options seen before costs a dictionary lookup. (Under torch.compile the options
    are made directly: they are constants of the traced graph.)"""
    if torch.compiler.is_compiling():
        return make_options(*values)
    try:
        return _cached_options(*values)
    except TypeError:  # an unhashable option (a list of classes): validated without the cache
        return make_options(*values)


# ---------------------------------------------------------------------------------------------
# Inputs (SPEC section 1), for the backends that run in Python
# ---------------------------------------------------------------------------------------------
def refuse_grad(name, tensor):
    """A ValueError if an argument that softiou does not differentiate requires grad."""
    if tensor is not None and tensor.requires_grad:
        raise ValueError(f"{name} requires grad, but softiou does not differentiate with respect "
                         f"to the {name}; pass {name}.detach()")


def normalize_inputs(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                     mode: str, ignore_index: Optional[int] = None):
    """``(x, t, w)`` as the statistics ops take them: ``x`` is ``[N, C, *S]`` (binary ``[N, *S]``
    input gains its channel dim), ``t`` a class map ``[N, *S]`` (multiclass or multilabel,
    integer) or shaped like ``x``, ``w`` is ``[N, *S]`` or None. Views of the arguments; a clear
    error for anything else."""
    for name, value in (("input", input), ("target", target)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if input.dtype not in INPUT_DTYPES:
        raise ValueError(f"input must be float32, float64, float16 or bfloat16; got {input.dtype}")
    for name, value in (("target", target), ("weight", weight)):
        if value is not None and value.device != input.device:
            raise ValueError(f"{name} is on {value.device} but input is on {input.device}")
    refuse_grad("target", target)
    refuse_grad("weight", weight)
    integer = target.dtype in INDEX_DTYPES
    if not (integer or target.dtype.is_floating_point or target.dtype == torch.bool):
        raise ValueError("target must be an integer class map (int64, int32, uint8) or a dense "
                         f"float/half/bool tensor; got {target.dtype}")
    channel = mode != "binary" or (input.dim() >= 3 and input.shape[1] == 1)
    if input.dim() < (3 if channel else 2):
        what = "[N, C, *spatial] with at least one spatial dim" if channel else \
            "[N, *spatial] or [N, 1, *spatial]"
        raise ValueError(f"{mode} input must be {what}; got shape {tuple(input.shape)}")
    x = input if channel else input.unsqueeze(1)
    if mode == "multiclass" and x.shape[1] < 2:
        raise ValueError(f"multiclass mode needs C >= 2 classes; got input shape "
                         f"{tuple(input.shape)} (use mode='binary' for one channel)")
    spatial = tuple(x.shape[2:])
    map_shape = (x.shape[0], *spatial)
    if mode == "multiclass" and integer:
        if tuple(target.shape) != map_shape:
            raise ValueError(f"target class map must have shape [N, *spatial] = {map_shape}; got "
                             f"{tuple(target.shape)}")
        t = target
    elif tuple(target.shape) == tuple(x.shape):
        t = target
        if mode == "multiclass" and ignore_index is not None:
            raise ValueError("ignore_index applies to class maps and to binary/multilabel "
                             "targets; a dense multiclass target has none (leave pixels out "
                             "with weight)")
    elif mode == "multilabel" and integer and tuple(target.shape) == map_shape:
        t = target  # a class map (SPEC section 10)
    elif mode == "binary" and tuple(target.shape) == map_shape:
        t = target.unsqueeze(1)
    else:
        also = f" or {map_shape}" if mode == "binary" else ""
        raise ValueError(f"target must have shape {tuple(x.shape)}{also} for {mode} input of "
                         f"shape {tuple(input.shape)}; got {tuple(target.shape)}")
    w = weight
    if weight is not None:
        if not weight.dtype.is_floating_point:
            raise ValueError(f"weight must be a floating tensor; got {weight.dtype}")
        if tuple(weight.shape) == (x.shape[0], 1, *spatial):
            w = weight.squeeze(1)
        elif tuple(weight.shape) != map_shape:
            raise ValueError(f"weight must have shape [N, *spatial] = {map_shape}; got "
                             f"{tuple(weight.shape)}")
    return x, t, w


def check_class_weight(class_weight: Optional[torch.Tensor], num_classes: int,
                       device: torch.device, metric: str = "jaccard") -> None:
    """``class_weight`` as the finalize step takes it: a floating ``[C]`` tensor on the device
    (none with the generalized Dice score)."""
    if class_weight is None:
        return
    if metric == "generalized_dice":
        raise ValueError("class_weight must be None with metric='generalized_dice': its class "
                         "weights come from the target (w_type)")
    if not isinstance(class_weight, torch.Tensor) or not class_weight.dtype.is_floating_point:
        raise ValueError("class_weight must be a floating tensor of shape [C]")
    if tuple(class_weight.shape) != (num_classes,):
        raise ValueError(f"class_weight must have shape [C] = ({num_classes},); got "
                         f"{tuple(class_weight.shape)}")
    if class_weight.device != device:
        raise ValueError(f"class_weight is on {class_weight.device} but input is on {device}")
    refuse_grad("class_weight", class_weight)


def check_classes(classes, num_classes: int, include_background: bool) -> None:
    """The class selection against the number of classes of the input."""
    if classes is not None and any(c >= num_classes for c in classes):
        raise ValueError(f"classes must be indices in [0, {num_classes}); got {list(classes)}")
    if not include_background and num_classes == 1:
        raise ValueError("include_background=False drops class 0, the only class of this input")
