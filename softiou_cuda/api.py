"""The user API: ``soft_iou_loss`` and the ``SoftIoULoss`` module (and their Dice/Tversky cousins).

A call is: the options, validated once and cached as one :class:`~softiou_cuda.options.LossOptions`
value, then :mod:`softiou_cuda.route`, which picks the implementation and the call (the operator
``softiou::loss``: the statistics pass and the finalize step forward, one gradient pass backward,
its autograd in C++).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

from . import route
from .options import LOSS_FIELDS, LossOptions, check, counts_args, make_options

__all__ = ["soft_iou_loss", "SoftIoULoss", "SoftDiceLoss", "SoftTverskyLoss", "stat_scores"]


# typed: True and 1, or 1 and 1.0, are different options (a bool is checked to be a bool)
@functools.lru_cache(maxsize=512, typed=True)
def _cached_options(*values) -> LossOptions:
    return make_options(**dict(zip(LOSS_FIELDS, values)))


def options(*values) -> LossOptions:
    """:func:`~softiou_cuda.options.make_options` of the options' values in the declaration's
    order (``LossOptions._fields``; tests/test_layout.py checks the callers), from a cache: a call
    with options seen before costs a dictionary lookup (by position: half the cost of one by
    name). Under torch.compile the options are made directly: they are constants of the traced
    graph."""
    if torch.compiler.is_compiling():
        return make_options(**dict(zip(LOSS_FIELDS, values)))
    try:
        return _cached_options(*values)
    except TypeError as error:  # an unhashable option (a list of classes): made without the cache
        if "unhashable" not in str(error):
            raise
        return make_options(**dict(zip(LOSS_FIELDS, values)))


def soft_iou_loss(input: torch.Tensor, target: torch.Tensor,
                  weight: Optional[torch.Tensor] = None, *, mode: str = "multiclass",
                  from_logits: bool = True, sharpness: float = 1.0, intersection: str = "product",
                  metric: str = "jaccard", alpha: float = 0.5, beta: float = 0.5,
                  gamma: float = 1.0, log_loss: bool = False, smooth: float = 0.0,
                  eps: float = 1e-7, class_weight: Optional[torch.Tensor] = None,
                  classes: Optional[Sequence[int]] = None, include_background: bool = True,
                  ignore_index: Optional[int] = None, per_image: bool = True,
                  absent: str = "include", reduction: str = "mean", ce_weight: float = 0.0,
                  label_smoothing: float = 0.0, squared: bool = False,
                  smooth_dr: Optional[float] = None, weighted_mean: bool = True,
                  w_type: str = "square", ce_pos_weight: float = 1.0, threshold: float = 0.5,
                  return_stat_scores: bool = False, process_group=None,
                  backend: str = "auto"):
    """Soft IoU (Jaccard), Dice or Tversky loss, fused (see SPEC.md and the README).

    Args:
        input: logits (or probabilities with ``from_logits=False``), ``[N, C, *spatial]``;
            binary mode also takes ``[N, *spatial]``. float32/float64/float16/bfloat16.
        target: integer class map ``[N, *spatial]`` (multiclass, or multilabel: one-hot of the
            map), integer 0/1 tensor shaped like the input (binary/multilabel), or a dense
            float/half/bool tensor shaped like the input.
        weight: optional per-pixel weights ``[N, *spatial]``, >= 0.
        mode: ``"binary"``, ``"multiclass"`` (softmax over C) or ``"multilabel"`` (sigmoid per C).
        from_logits: apply softmax/sigmoid to the input (else it holds probabilities).
        sharpness: ``a`` in ``softmax(a*x)`` / ``sigmoid(a*x)`` / ``x^a`` normalisation; > 0.
        intersection: ``"product"`` (p*y) or ``"min"`` (min(p, y), exact for soft labels).
        metric: ``"jaccard"``, ``"dice"``, ``"tversky"`` (with ``alpha``, ``beta``) or
            ``"generalized_dice"`` (one score per image, class weights by ``w_type``).
        gamma: focal exponent on each pair's loss.
        log_loss: ``-log(score)`` instead of ``1 - score``.
        smooth, eps: additive smoothing, and the clamp of the denominators.
        smooth_dr: the denominators' smoothing, if not ``smooth`` (MONAI's ``smooth_dr``).
        class_weight: ``[C]`` weights of each class's loss, as in ``F.cross_entropy``.
        classes: class indices that enter the loss (the softmax still spans all C).
        include_background: ``False`` drops class 0.
        ignore_index: target value whose pixels (class maps) or elements (binary/multilabel
            targets) are left out entirely.
        per_image: one score per (image, class) (default) or per class over the batch.
        absent: ``"include"`` every selected pair, ``"exclude"`` pairs with no target pixel, or
            ``"zero"``: their loss is 0 but they count in the mean (smp).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[N, C]``, or ``[C]`` pooled).
        weighted_mean: the mean divides by the sum of the class weights (default, as
            ``F.cross_entropy``) or, ``False``, by the number of pairs (MONAI).
        ce_weight: ``λ >= 0``: add ``λ`` times the cross-entropy (multiclass; binary
            cross-entropy with logits in binary/multilabel mode), computed in the same passes
            (SPEC section 9): with ``class_weight``, ``weight``, ``ignore_index`` and
            ``sharpness``, like ``F.cross_entropy``. Needs logits, and ``"mean"`` or ``"sum"``.
        label_smoothing: ``ε`` in ``[0, 1)`` of the cross-entropy (multiclass).
        squared: ``P`` and ``Y`` sum ``p²`` and ``y²`` (MONAI's ``squared_pred``).
        w_type: ``"square"``, ``"simple"`` or ``"uniform"``: the generalized Dice score's class
            weights ``1/Y²``, ``1/Y`` or 1.
        ce_pos_weight: ``pos_weight`` of the binary cross-entropy term.
        return_stat_scores: also return the hard ``(tp, fp, tn, fn)`` per (sample, class),
            int64 ``[N, C, 4]``, counted in the same pass (SPEC section 11; see
            :func:`stat_scores`): ``(loss, stat_scores)``. The loss and its gradient are those
            of the call without it.
        threshold: the hard prediction of binary/multilabel counts, ``sigmoid(x) > threshold``
            (``x > threshold`` for probabilities).
        process_group: with ``per_image=False``, sum the statistics over the ranks of this
            ``torch.distributed`` group (differentiably): the IoU of the global batch.
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"reference"``.
    """
    if classes is not None and not isinstance(classes, tuple):
        classes = tuple(classes)
    o = options(mode, from_logits, sharpness, intersection, metric, alpha, beta, gamma, log_loss,
                smooth, eps, classes, include_background, ignore_index, per_image, absent,
                reduction, ce_weight, label_smoothing, squared, smooth_dr, weighted_mean, w_type,
                ce_pos_weight)
    if return_stat_scores or threshold != 0.5:  # (the default is valid: no check per call)
        _check_counts(threshold, return_stat_scores)
    if return_stat_scores:
        return route.loss_and_stat_scores(input, target, weight, class_weight, o, backend,
                                          process_group, counts_args(threshold, True))
    return route.loss(input, target, weight, class_weight, o, backend, process_group)


def _check_counts(threshold, return_stat_scores) -> None:
    check({"threshold": threshold, "return_stat_scores": return_stat_scores})


def stat_scores(input: torch.Tensor, target: torch.Tensor, *, mode: str = "multiclass",
                from_logits: bool = True, threshold: float = 0.5,
                ignore_index: Optional[int] = None, backend: str = "auto") -> torch.Tensor:
    """The hard true positives, false positives, true negatives and false negatives per
    (sample, class), int64 ``[N, C, 4]`` in the order ``(tp, fp, tn, fn)``, from one pass over
    the input and the target (SPEC section 11); no gradient.

    The prediction is the first maximal class of the input (multiclass, as ``torch.argmax``), or
    ``sigmoid(x) > threshold`` (``x > threshold`` with ``from_logits=False``) per element; the
    target a class map, a 0/1 integer tensor, or a dense one (its first maximal class, or
    ``y > 0.5``). Pixels (elements) at ``ignore_index`` count nowhere. Equal to torchmetrics'
    ``multiclass_stat_scores`` / ``binary_stat_scores`` / ``multilabel_stat_scores`` with
    ``average=None, multidim_average="samplewise"`` (their first four columns; binary ``C = 1``).
    """
    _check_counts(threshold, True)
    o = make_options(mode=mode, from_logits=from_logits, ignore_index=ignore_index)
    return route.counts_only(input, target, o, backend, counts_args(threshold, True))


class SoftIoULoss(torch.nn.Module):
    """Module form of :func:`soft_iou_loss`; the options are checked once, at construction.

    ``forward(input, target, weight=None)``; with ``return_stat_scores=True`` it returns
    ``(loss, stat_scores)`` (see :func:`soft_iou_loss`). ``class_weight`` is kept as a buffer
    (it follows ``.to(device)``) and its values are checked here.
    """

    def __init__(self, mode: str = "multiclass", *, from_logits: bool = True,
                 sharpness: float = 1.0, intersection: str = "product", metric: str = "jaccard",
                 alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0,
                 log_loss: bool = False, smooth: float = 0.0, eps: float = 1e-7,
                 class_weight=None, classes: Optional[Sequence[int]] = None,
                 include_background: bool = True, ignore_index: Optional[int] = None,
                 per_image: bool = True, absent: str = "include", reduction: str = "mean",
                 ce_weight: float = 0.0, label_smoothing: float = 0.0, squared: bool = False,
                 smooth_dr: Optional[float] = None, weighted_mean: bool = True,
                 w_type: str = "square", ce_pos_weight: float = 1.0, threshold: float = 0.5,
                 return_stat_scores: bool = False, process_group=None, backend: str = "auto"):
        super().__init__()
        self.options = make_options(
            mode=mode, from_logits=from_logits, sharpness=sharpness, intersection=intersection,
            metric=metric, alpha=alpha, beta=beta, gamma=gamma, log_loss=log_loss, smooth=smooth,
            eps=eps, classes=classes, include_background=include_background,
            ignore_index=ignore_index, per_image=per_image, absent=absent, reduction=reduction,
            ce_weight=ce_weight, label_smoothing=label_smoothing, squared=squared,
            smooth_dr=smooth_dr, weighted_mean=weighted_mean, w_type=w_type,
            ce_pos_weight=ce_pos_weight)
        check(dict(self.options._asdict(), backend=backend),
              has_class_weight=class_weight is not None)
        route.check_process_group(self.options, process_group)
        _check_counts(threshold, return_stat_scores)
        self.threshold, self.return_stat_scores = threshold, return_stat_scores
        if class_weight is not None:
            class_weight = torch.as_tensor(class_weight, dtype=torch.float32)
            if class_weight.dim() != 1 or not torch.isfinite(class_weight).all() \
                    or (class_weight < 0).any():
                raise ValueError("softiou: class_weight must be a 1-D tensor of finite weights "
                                 f">= 0; got {class_weight.tolist()}")
        self.register_buffer("class_weight", class_weight)
        self.process_group = process_group
        self.backend = backend

    def forward(self, input: torch.Tensor, target: torch.Tensor,
                weight: Optional[torch.Tensor] = None):
        if self.return_stat_scores:  # (loss, stat_scores)
            return route.loss_and_stat_scores(input, target, weight, self.class_weight,
                                              self.options, self.backend, self.process_group,
                                              counts_args(self.threshold, True))
        return route.loss(input, target, weight, self.class_weight, self.options, self.backend,
                          self.process_group)

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.options._asdict().items() if v is not None}
        return ", ".join(f"{k}={v!r}" for k, v in shown.items()) + f", backend={self.backend!r}"


class SoftDiceLoss(SoftIoULoss):
    """:class:`SoftIoULoss` with ``metric="dice"``."""

    def __init__(self, mode: str = "multiclass", **kwargs):
        super().__init__(mode, metric="dice", **kwargs)


class SoftTverskyLoss(SoftIoULoss):
    """:class:`SoftIoULoss` with ``metric="tversky"`` (``alpha`` weighs false positives,
    ``beta`` false negatives)."""

    def __init__(self, mode: str = "multiclass", alpha: float = 0.5, beta: float = 0.5,
                 **kwargs):
        super().__init__(mode, metric="tversky", alpha=alpha, beta=beta, **kwargs)
