"""MONAI's ``DiceLoss``, ``TverskyLoss``, ``GeneralizedDiceLoss`` and ``DiceCELoss``
(monai.losses, 1.6) on the fused operator: the same constructor arguments and defaults, the same results.

How MONAI's arguments map onto ``soft_iou_loss`` (SPEC section 10):

* ``sigmoid=True``: multilabel logits. ``softmax=True`` with more than one channel: multiclass
  logits. Otherwise (or ``softmax`` with one channel, which MONAI ignores with a warning) the input
  is probabilities (``from_logits=False``): values outside [0, 1] are an error here, where MONAI
  computes with them. ``other_act`` (an arbitrary callable) cannot be fused: it is refused with an
  error that names it (apply it to the input yourself and pass probabilities).
* ``to_onehot_y=True``: the label map ``[B, 1, *S]`` is read as a class map, never expanded to one
  hot; its ``ignore_index`` pixels leave every class. A one-hot / soft target ``[B, C, *S]`` is read
  densely; ``ignore_index`` there is MONAI's mask: per element with one channel, the pixels whose
  channel ``ignore_index`` is set (a class index) or whose channels are all zero (a sentinel).
* ``jaccard=True``: MONAI's ``(2I + s_nr) / (2U + s_dr)`` is ``metric="jaccard"`` with
  ``smooth = s_nr / 2``, ``smooth_dr = s_dr / 2``; Dice is ``metric="dice"``.
  ``squared_pred``: ``squared=True``. ``soft_label`` (without ``squared_pred``): ``intersection="min"``.
  ``TverskyLoss``: ``metric="tversky"`` with ``smooth = s_nr``, ``smooth_dr = s_dr``.
* ``batch=True``: ``per_image=False``. ``weight``: ``class_weight`` (as MONAI, only with more than one
  class left), the mean over every (sample, class) pair: ``weighted_mean=False``.
* No ``eps`` clamp (MONAI has none): ``eps`` is float32's smallest normal number.
* Precision: softiou sums in the input's accumulation dtype. MONAI's ``to_onehot_y`` makes a
  float32 one-hot target, and with ``squared_pred`` takes its norm in float32: there the two
  differ by MONAI's float32 rounding (~1e-7 relative); elsewhere by float64 rounding.

``DiceCELoss`` with ``softmax=True`` (more than one channel) or ``sigmoid=True`` (one channel) is
one fused call: the cross-entropy (``BCEWithLogitsLoss(pos_weight=weight)`` with one channel) is
added in the same pass (SPEC section 9). Its other configurations add ``torch.nn.functional``'s
cross-entropy to the fused Dice loss, as MONAI does.

The modules' ``forward`` compile with ``torch.jit.script`` as MONAI's do (and save and load), by
way of :func:`softiou_cuda.functional.loss`; the one configuration computed in two phases (a
fractional mask on a soft target with the product intersection) runs in Python only.
"""

import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .. import functional
from ..operators import accumulation_dtype
from ..options import LossOptions

# float32's smallest normal number: the fused loss's eps without clamping any real denominator
_NO_CLAMP = float(torch.finfo(torch.float32).tiny)
_REDUCTIONS = ("mean", "sum", "none")


def _check_activation(sigmoid: bool, softmax: bool, other_act) -> None:
    if other_act is not None and not callable(other_act):
        raise TypeError(f"other_act must be None or callable but is {type(other_act).__name__}.")
    if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
        raise ValueError("Incompatible values: more than 1 of [sigmoid=True, softmax=True, "
                         "other_act is not None].")


def _check_reduction(reduction, allowed=_REDUCTIONS) -> str:
    reduction = getattr(reduction, "value", reduction)
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, allowed))}; "
                         f"got {reduction!r}")
    return reduction


class _MonaiLoss(torch.nn.Module):
    """The argument handling shared by MONAI's Dice losses."""

    _warned: Dict[str, bool]

    def __init__(self, include_background, to_onehot_y, sigmoid, softmax, other_act, reduction,
                 smooth_nr, smooth_dr, batch, soft_label, backend):
        super().__init__()
        _check_activation(sigmoid, softmax, other_act)
        if other_act is not None:
            raise ValueError("other_act is not supported by softiou's fused loss (an arbitrary "
                             "callable cannot run inside its kernels): apply it to the input "
                             "and pass the probabilities with other_act=None, or use "
                             "sigmoid=True / softmax=True")
        self.include_background = bool(include_background)
        self.to_onehot_y = bool(to_onehot_y)
        self.sigmoid = bool(sigmoid)
        self.softmax = bool(softmax)
        self.other_act = other_act
        self.reduction = _check_reduction(reduction)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.batch = bool(batch)
        self.soft_label = bool(soft_label)
        self.backend = backend
        self.eps = _NO_CLAMP
        self._warned = {}

    def _ignored(self, what: str) -> None:
        """MONAI's warning for an option a one-channel prediction ignores: once per module, not
        once per call."""
        if what not in self._warned:
            self._warned[what] = True
            warnings.warn(f"single channel prediction, `{what}=True` ignored.", stacklevel=4)

    def _plan(self, input: torch.Tensor,
              target: torch.Tensor) -> Tuple[torch.Tensor, str, bool, bool]:
        """(target, mode, from_logits, class_map) once the activation and the target's form
        are decided."""
        C = input.shape[1]
        if self.sigmoid:
            mode, from_logits = "multilabel", True
        elif self.softmax and C > 1:
            mode, from_logits = "multiclass", True
        else:
            if self.softmax:
                self._ignored("softmax")
            mode, from_logits = "multilabel", False
        class_map = self.to_onehot_y and C > 1
        if self.to_onehot_y and C == 1:
            self._ignored("to_onehot_y")
        if not self.include_background and C == 1:
            self._ignored("include_background")
        if class_map:
            if target.dim() != input.dim() or target.shape[1] != 1:
                raise AssertionError(f"ground truth has different shape ({target.shape}) from "
                                     f"input ({input.shape}): to_onehot_y takes a label map "
                                     "[B, 1, *spatial]")
            target = target[:, 0]
            if target.is_floating_point():  # MONAI's one_hot reads labels as long
                target = target.long()
        else:
            if target.shape != input.shape:
                raise AssertionError(f"ground truth has different shape ({target.shape}) from "
                                     f"input ({input.shape})")
            if not target.is_floating_point():  # MONAI multiplies: read as numbers
                target = target.to(input.dtype)
        return target, mode, from_logits, class_map

    def _per_pair_view(self, loss: torch.Tensor, input: torch.Tensor,
                       per_row: bool = False) -> torch.Tensor:
        """reduction="none": MONAI's shape [B, C', 1, ...] (per image) or [C', 1, ...] (batch)."""
        if not per_row and not self.include_background and input.shape[1] > 1:
            loss = loss[..., 1:]
        return loss.reshape(list(loss.shape) + [1] * (input.dim() - 2))

    def _options(self, C: int, mode: str, from_logits: bool, metric: str, smooth: float,
                 smooth_dr: float, alpha: float = 0.5, beta: float = 0.5,
                 intersection: str = "product", squared: bool = False,
                 ignore_index: Optional[int] = None, weighted_mean: bool = True,
                 w_type: str = "square", ce_weight: float = 0.0, label_smoothing: float = 0.0,
                 ce_pos_weight: float = 1.0) -> LossOptions:
        # include_background=False with one channel: ignored (MONAI warns, see _plan)
        return LossOptions(mode=mode, from_logits=from_logits, intersection=intersection,
                           metric=metric, alpha=alpha, beta=beta, smooth=smooth, eps=self.eps,
                           include_background=self.include_background or C == 1,
                           ignore_index=ignore_index, per_image=not self.batch,
                           reduction=self.reduction, ce_weight=ce_weight,
                           label_smoothing=label_smoothing, squared=squared,
                           smooth_dr=smooth_dr, weighted_mean=weighted_mean, w_type=w_type,
                           ce_pos_weight=ce_pos_weight)

    def _class_weight(self, C: int, acc: torch.dtype,
                      device: torch.device) -> Optional[torch.Tensor]:
        return None

    def _masked_loss(self, input: torch.Tensor, target: torch.Tensor,
                     ignore_index: Optional[int], squared: bool, metric: str, smooth: float,
                     smooth_dr: float, alpha: float, beta: float) -> torch.Tensor:
        """The fused loss of MONAI's DiceLoss and TverskyLoss, whose ``ignore_index`` multiplies
        input and target by a mask (monai.losses.utils.create_ignore_mask): a class map's or a
        one-channel target's ignore_index is the fused one; on a dense target it is the mask m
        by a class channel (1 - y[:, ignore_index]) or, for a sentinel, the pixels without any
        class. Returns the loss as ``soft_iou_loss`` does (reduction "none": [N, C] or [C])."""
        C = input.shape[1]
        dense_target = target
        target, mode, from_logits, class_map = self._plan(input, target)
        acc = accumulation_dtype(input.dtype)
        intersection = "min" if self.soft_label and not squared else "product"
        weight: Optional[torch.Tensor] = None
        mask: Optional[torch.Tensor] = None
        fused_ignore: Optional[int] = None
        if ignore_index is not None:
            if class_map or C == 1:
                fused_ignore = ignore_index
            elif 0 <= ignore_index < C:
                mask = 1 - dense_target[:, ignore_index].to(acc)
            else:  # a sentinel: the pixels without any class
                weight = (dense_target.sum(dim=1) > 0).to(acc)
        options = self._options(C, mode, from_logits, metric, smooth, smooth_dr, alpha, beta,
                                intersection, squared, fused_ignore, weighted_mean=False)
        cw = self._class_weight(C, acc, input.device)
        if mask is None:
            return functional.loss(input, target, weight, cw, options, self.backend)
        if squared:  # MONAI masks p and y: with squares, sums weighted by mask^2
            return functional.loss(input, target, mask * mask, cw, options, self.backend)
        if self.soft_label:  # sum min(m p, m y) = sum m min(p, y)
            return functional.loss(input, target, mask, cw, options, self.backend)
        # I = sum m^2 p y, P = sum m p, Y = sum m y
        return self._loss_with_masked_target(input, target, mask, cw, options)

    @torch.jit.unused
    def _loss_with_masked_target(self, input: torch.Tensor, target: torch.Tensor,
                                 mask: torch.Tensor, class_weight: Optional[torch.Tensor],
                                 options: LossOptions) -> torch.Tensor:
        """The loss of MONAI's mask m on a dense target with the product intersection: I and P
        are those of weight m and target m*y; Y = sum m y (the target's alone, no gradient): the
        statistics, their Y replaced, the finalize step (Python only: not under TorchScript)."""
        masked = target * mask[:, None]
        stats, ce = functional.statistics(input, masked, mask, None, options, self.backend)
        y_sums = masked.flatten(2).sum(-1).to(stats.dtype)
        stats = torch.stack((stats[..., 0], stats[..., 1], y_sums), dim=-1)
        return functional.finalize(stats, ce, class_weight, options, self.backend)


class DiceLoss(_MonaiLoss):
    """``monai.losses.DiceLoss`` on the fused operator (see the module's docstring)."""

    # TorchScript reads a class's own annotations only
    _warned: Dict[str, bool]
    class_weight: Optional[torch.Tensor]

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False,
                 other_act: Optional[Callable] = None, squared_pred: bool = False,
                 jaccard: bool = False, reduction: str = "mean", smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, weight=None,
                 soft_label: bool = False, ignore_index: Optional[int] = None, *,
                 backend: str = "auto"):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction,
                         smooth_nr, smooth_dr, batch, soft_label, backend)
        self.squared_pred = bool(squared_pred)
        self.jaccard = bool(jaccard)
        self.ignore_index = ignore_index
        weight = torch.as_tensor(weight) if weight is not None else None
        if weight is not None and weight.numel() > 0 and bool(weight.min() < 0):
            raise ValueError("the value/values of the `weight` should be no less than 0.")
        self.register_buffer("class_weight", weight)

    def _class_weight(self, C: int, acc: torch.dtype,
                      device: torch.device) -> Optional[torch.Tensor]:
        """MONAI's weight as ``class_weight`` [C]: applied only when more than one class is
        left; with include_background=False it weighs classes 1.. (class 0 is dropped)."""
        w = self.class_weight
        drop = not self.include_background and C > 1
        kept = C - 1 if drop else C
        if w is None or kept == 1:
            return None
        if w.dim() == 0:
            w = w.expand(kept)
        elif w.shape[0] != kept:
            raise ValueError("The length of the `weight` sequence should be the same as the "
                             "number of classes. If `include_background=False`, the weight "
                             "should not include the background category class 0.")
        w = w.to(device=device, dtype=acc)
        return torch.cat([w.new_ones(1), w]) if drop else w

    def _metric(self) -> Tuple[str, float, float]:
        """(metric, smooth, smooth_dr): MONAI's jaccard (2I + s) / (2U + s_dr) is the fused
        jaccard with halved smoothing."""
        if self.jaccard:
            return "jaccard", self.smooth_nr / 2, self.smooth_dr / 2
        return "dice", self.smooth_nr, self.smooth_dr

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        metric, smooth, smooth_dr = self._metric()
        loss = self._masked_loss(input, target, self.ignore_index, self.squared_pred, metric,
                                 smooth, smooth_dr, 0.5, 0.5)
        if self.reduction == "none":
            loss = self._per_pair_view(loss, input)
        return loss


class TverskyLoss(_MonaiLoss):
    """``monai.losses.TverskyLoss`` on the fused operator: ``metric="tversky"`` (SPEC section 2)
    with MONAI's ``alpha`` (false positives) and ``beta`` (false negatives), ``smooth = smooth_nr``
    and ``smooth_dr``. MONAI's false positives and negatives are ``P - I`` and ``Y - I`` (its
    ``sum p (1 - y)`` and ``sum (1 - p) y``); ``soft_label=True`` is ``intersection="min"`` (its
    ``(|p| + |y| - |p - y|) / 2``). ``alpha`` and ``beta`` are weights: a negative one, which
    MONAI computes with, is refused here. ``reduction="none"`` returns MONAI's ``[B, C']`` (``[C']``
    with ``batch=True``)."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False,
                 other_act: Optional[Callable] = None, alpha: float = 0.5, beta: float = 0.5,
                 reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, soft_label: bool = False,
                 ignore_index: Optional[int] = None, *, backend: str = "auto"):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction,
                         smooth_nr, smooth_dr, batch, soft_label, backend)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.ignore_index = ignore_index

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self._masked_loss(input, target, self.ignore_index, False, "tversky",
                                 self.smooth_nr, self.smooth_dr, self.alpha, self.beta)
        if self.reduction == "none" and not self.include_background and input.shape[1] > 1:
            loss = loss[..., 1:]
        return loss


class GeneralizedDiceLoss(_MonaiLoss):
    """``monai.losses.GeneralizedDiceLoss`` on the fused operator: ``metric="generalized_dice"``
    (SPEC section 10), the class weights from the target's volume in float32 as MONAI's."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False,
                 other_act: Optional[Callable] = None, w_type: str = "square",
                 reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, soft_label: bool = False, *, backend: str = "auto"):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction,
                         smooth_nr, smooth_dr, batch, soft_label, backend)
        w_type = getattr(w_type, "value", w_type)
        if w_type not in ("square", "simple", "uniform"):
            raise ValueError(f"w_type must be one of 'square', 'simple', 'uniform'; got {w_type!r}")
        self.w_type = w_type

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        C = input.shape[1]
        target, mode, from_logits, class_map = self._plan(input, target)
        options = self._options(C, mode, from_logits, "generalized_dice", self.smooth_nr,
                                self.smooth_dr, w_type=self.w_type,
                                intersection="min" if self.soft_label else "product")
        loss = functional.loss(input, target, None, None, options, self.backend)
        if self.reduction == "none":
            loss = self._per_pair_view(loss, input, per_row=True)
        return loss


class DiceCELoss(torch.nn.Module):
    """``monai.losses.DiceCELoss`` on the fused operator: ``lambda_dice`` times the Dice loss plus
    ``lambda_ce`` times the cross-entropy of the logits (``nn.CrossEntropyLoss(weight,
    label_smoothing)``, or ``nn.BCEWithLogitsLoss(pos_weight=weight)`` with one channel).

    One fused call (SPEC section 9) with ``softmax=True`` and more than one channel, or
    ``sigmoid=True`` and one. MONAI's other configurations pair a cross-entropy the fused pass does
    not compute with that Dice loss (the softmax cross-entropy with a sigmoid Dice loss, or
    ``lambda_dice=0``): there the fused Dice loss is added to ``torch.nn.functional``'s
    cross-entropy, MONAI's own. As MONAI's, no ``reduction="none"``."""

    ce_weight: Optional[torch.Tensor]

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False,
                 other_act: Optional[Callable] = None, squared_pred: bool = False,
                 jaccard: bool = False, reduction: str = "mean", smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False,
                 weight: Optional[torch.Tensor] = None, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, label_smoothing: float = 0.0, *,
                 backend: str = "auto"):
        super().__init__()
        reduction = _check_reduction(reduction, ("mean", "sum"))
        if lambda_dice < 0.0:
            raise ValueError("lambda_dice should be no less than 0.0.")
        if lambda_ce < 0.0:
            raise ValueError("lambda_ce should be no less than 0.0.")
        weight = torch.as_tensor(weight) if weight is not None else None
        dice_weight = weight[1:] if weight is not None and not include_background else weight
        self.dice = DiceLoss(include_background=include_background, to_onehot_y=to_onehot_y,
                             sigmoid=sigmoid, softmax=softmax, other_act=other_act,
                             squared_pred=squared_pred, jaccard=jaccard, reduction=reduction,
                             smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch,
                             weight=dice_weight, backend=backend)
        self.register_buffer("ce_weight", weight)
        self.reduction = reduction
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self.label_smoothing = float(label_smoothing)
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1]; got {label_smoothing}")

    def _fused(self, C: int) -> bool:
        d = self.dice
        w = self.ce_weight
        if self.lambda_dice == 0.0:
            return False
        if d.softmax and C > 1:
            # the fused call shares the class weights between the two terms: MONAI's Dice term
            # ignores them when one class is left
            kept = C - 1 if not d.include_background else C
            return w is None or kept > 1
        return d.sigmoid and C == 1 and (w is None or w.numel() == 1)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() != target.dim():
            raise ValueError("the number of dimensions for input and target should be the same, "
                             f"got shape {input.shape} (nb dims: {len(input.shape)}) and "
                             f"{target.shape} (nb dims: {len(target.shape)}).")
        C = input.shape[1]
        if target.shape[1] != 1 and target.shape[1] != C:
            raise ValueError("number of channels for target is neither 1 (without one-hot "
                             "encoding) nor the same as input, "
                             f"got shape {input.shape} and {target.shape}.")
        if not self._fused(C):
            dice = self.dice(input, target)
            ce = self._ce(input, target) if C != 1 else self._bce(input, target)
            return self.lambda_dice * dice + self.lambda_ce * ce
        d = self.dice
        t, mode, from_logits, _ = d._plan(input, target)
        acc = accumulation_dtype(input.dtype)
        ratio = self.lambda_ce / self.lambda_dice
        cw: Optional[torch.Tensor] = None
        pos_weight, smoothing = 1.0, 0.0
        ce_weight = self.ce_weight
        if C == 1:
            if ce_weight is not None:
                pos_weight = float(ce_weight.reshape(-1)[0])
        else:
            if ce_weight is not None:
                cw = ce_weight.to(input.device, acc)
            smoothing = self.label_smoothing
        metric, smooth, smooth_dr = d._metric()
        options = d._options(C, mode, from_logits, metric, smooth, smooth_dr,
                             squared=d.squared_pred, weighted_mean=False, ce_weight=ratio,
                             label_smoothing=smoothing, ce_pos_weight=pos_weight)
        return self.lambda_dice * functional.loss(input, t, None, cw, options, d.backend)

    def _ce(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # MONAI's
        if input.shape[1] != target.shape[1] and target.shape[1] == 1:
            target = torch.squeeze(target, dim=1).long()
        elif not torch.is_floating_point(target):
            target = target.to(dtype=input.dtype)
        return F.cross_entropy(input, target, weight=self.ce_weight, reduction=self.reduction,
                               label_smoothing=self.label_smoothing)

    def _bce(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # MONAI's
        if not torch.is_floating_point(target):
            target = target.to(dtype=input.dtype)
        return F.binary_cross_entropy_with_logits(input, target, pos_weight=self.ce_weight,
                                                  reduction=self.reduction)
