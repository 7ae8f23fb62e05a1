"""Epoch metrics from the hard counts of the statistics pass (SPEC section 11): the IoU (Jaccard
index) and the Dice score (F1), accumulated over batches as int64 ``(tp, fp, tn, fn)`` per class.

    metric = softiou_cuda.metrics.JaccardIndex(num_classes=19, ignore_index=255)
    for logits, target in loader:
        loss, counts = softiou_cuda.soft_iou_loss(logits, target, ignore_index=255,
                                                  return_stat_scores=True)   # one pass
        loss.backward()
        metric.update(counts)
    miou = metric.compute()

``update(input, target)`` counts a batch itself (:func:`softiou_cuda.stat_scores`). The reductions
are torchmetrics 1.9's (``MulticlassJaccardIndex`` and ``MulticlassF1Score``, and their binary and
multilabel forms), which the tests compare against; torchmetrics is not needed to run them.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from . import distributed
from .api import stat_scores

__all__ = ["JaccardIndex", "DiceScore"]

AVERAGES = ("macro", "micro", "none")
MODES = ("binary", "multiclass", "multilabel")


def _safe_divide(num: torch.Tensor, den: torch.Tensor, zero_division: float = 0.0) -> torch.Tensor:
    """``num / den``, ``zero_division`` where ``den`` is 0 (float32, as torchmetrics)."""
    num, den = num.float(), den.float()
    return torch.where(den != 0, num / den, torch.tensor(zero_division, dtype=num.dtype,
                                                         device=num.device))


class _CountsMetric:
    """Int64 ``(tp, fp, tn, fn)`` per class ``[C, 4]``, summed over the batches and, with a
    process group, over the ranks; :meth:`compute` reduces them (the subclasses' rule)."""

    def __init__(self, num_classes: int, *, mode: str = "multiclass", average: str = "macro",
                 ignore_index: Optional[int] = None, zero_division: float = 0.0,
                 from_logits: bool = True, threshold: float = 0.5, process_group=None,
                 backend: str = "auto"):
        if mode not in MODES:
            raise ValueError(f"softiou: mode must be one of {', '.join(map(repr, MODES))}; got "
                             f"{mode!r}")
        least = 2 if mode == "multiclass" else 1
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) \
                or num_classes < least or (mode == "binary" and num_classes != 1):
            what = "1 in binary mode" if mode == "binary" else f"an int >= {least}"
            raise ValueError(f"softiou: num_classes must be {what}; got {num_classes!r}")
        if average not in AVERAGES:
            raise ValueError(f"softiou: average must be one of {', '.join(map(repr, AVERAGES))}; "
                             f"got {average!r}")
        if not (isinstance(zero_division, (int, float)) and not isinstance(zero_division, bool)
                and math.isfinite(zero_division)):
            raise ValueError(f"softiou: zero_division must be a finite number; got "
                             f"{zero_division!r}")
        if ignore_index is not None and (not isinstance(ignore_index, int)
                                         or isinstance(ignore_index, bool)):
            raise ValueError(f"softiou: ignore_index must be an int or None; got "
                             f"{ignore_index!r}")
        if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
                and 0 < threshold < 1):
            raise ValueError(f"softiou: threshold must be a number in (0, 1); got {threshold!r}")
        self.num_classes, self.mode, self.average = num_classes, mode, average
        self.ignore_index, self.zero_division = ignore_index, float(zero_division)
        self.from_logits, self.threshold = from_logits, threshold
        self.process_group, self.backend = process_group, backend
        self.counts: Optional[torch.Tensor] = None  # [C, 4] int64, on the counts' device

    def reset(self) -> None:
        self.counts = None

    def update(self, input: torch.Tensor, target: Optional[torch.Tensor] = None) -> None:
        """Adds a batch: its counts ``[N, C, 4]`` (or ``[C, 4]``) as the loss returned them, or
        the input and target to count (:func:`softiou_cuda.stat_scores`)."""
        if target is not None:
            counts = stat_scores(input, target, mode=self.mode, from_logits=self.from_logits,
                                 threshold=self.threshold, ignore_index=self.ignore_index,
                                 backend=self.backend)
            if counts.shape[1] != self.num_classes:
                raise ValueError(f"softiou: num_classes is {self.num_classes} but the input has "
                                 f"{counts.shape[1]} classes")
        else:
            counts = input
            C = self.num_classes
            if not isinstance(counts, torch.Tensor) or counts.dtype != torch.int64 or not (
                    tuple(counts.shape[-2:]) == (C, 4) and counts.dim() in (2, 3)):
                got = (f"{counts.dtype} of shape {tuple(counts.shape)}"
                       if isinstance(counts, torch.Tensor) else type(counts).__name__)
                raise ValueError(f"softiou: update takes the counts as int64 [N, {C}, 4] or "
                                 f"[{C}, 4] (tp, fp, tn, fn; num_classes={C}), or input and "
                                 f"target; got {got}")
        counts = counts.detach()
        batch = counts.sum(dim=0) if counts.dim() == 3 else counts
        self.counts = batch.clone() if self.counts is None else self.counts + batch

    def sync(self, process_group=None) -> None:
        """Sums the counts over the ranks of ``process_group`` (or the metric's), in place: an
        all-reduce of the int64 counts."""
        group = process_group if process_group is not None else self.process_group
        self.counts = distributed.all_reduce_counts(self._counts(), group)

    def _counts(self) -> torch.Tensor:
        if self.counts is None:
            return torch.zeros(self.num_classes, 4, dtype=torch.int64)
        return self.counts

    def compute(self) -> torch.Tensor:
        """The metric of the counts so far (summed over the ranks of the metric's process
        group, which leaves the local counts as they are)."""
        counts = self._counts()
        if self.process_group is not None:
            counts = distributed.all_reduce_counts(counts, self.process_group)
        tp, fp, tn, fn = counts.unbind(-1)
        return self._reduce(tp, fp, tn, fn)

    def _ignored_class(self) -> Optional[int]:
        i = self.ignore_index
        return i if i is not None and 0 <= i < self.num_classes else None

    def _reduce(self, tp, fp, tn, fn) -> torch.Tensor:
        raise NotImplementedError


class JaccardIndex(_CountsMetric):
    """The IoU over an epoch, ``tp / (tp + fp + fn)`` from the summed counts, as torchmetrics'
    ``MulticlassJaccardIndex`` (and ``BinaryJaccardIndex``, ``MultilabelJaccardIndex``).

    ``average``: ``"macro"`` the mean of the per-class IoUs over the classes present in the
    target or the prediction (multiclass; multilabel: all labels), ``"micro"`` the IoU of the
    summed counts, ``"none"`` the per-class IoUs. An ``ignore_index`` inside ``[0, C)`` also
    leaves that class out of the macro mean and out of the micro denominator. A zero
    denominator gives ``zero_division``."""

    def _reduce(self, tp, fp, tn, fn):
        num, den = tp, tp + fp + fn
        if self.mode == "binary":
            score = _safe_divide(num, den, self.zero_division)
            return score if self.average == "none" else score[0]
        ignored = self._ignored_class()
        if self.average == "micro":
            den_sum = den.sum() - (den[ignored] if ignored is not None else 0)
            return _safe_divide(num.sum(), den_sum, self.zero_division)
        score = _safe_divide(num, den, self.zero_division)
        if self.average == "none":
            return score
        weights = torch.ones_like(score)
        if ignored is not None:
            weights[ignored] = 0.0
        if self.mode == "multiclass":
            weights[den == 0] = 0.0
        return ((weights * score) / weights.sum()).sum()


class DiceScore(_CountsMetric):
    """The Dice score (F1) over an epoch, ``2tp / (2tp + fp + fn)`` from the summed counts, as
    torchmetrics' ``MulticlassF1Score`` (and ``BinaryF1Score``, ``MultilabelF1Score``).

    ``average``: ``"macro"`` the mean over the classes present in the target or the prediction
    (multiclass; multilabel: all labels), ``"micro"`` the score of the summed counts, ``"none"``
    per class. Pixels at ``ignore_index`` count nowhere (the class itself stays, as in
    torchmetrics' F1). A zero denominator gives ``zero_division``."""

    def _reduce(self, tp, fp, tn, fn):
        if self.mode == "binary":
            score = _safe_divide(2 * tp, 2 * tp + fn + fp, self.zero_division)
            return score if self.average == "none" else score[0]
        if self.average == "micro":
            tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
            return _safe_divide(2 * tp, 2 * tp + fn + fp, self.zero_division)
        score = _safe_divide(2 * tp, 2 * tp + fn + fp, self.zero_division)
        if self.average == "none":
            return score
        weights = torch.ones_like(score)
        if self.mode == "multiclass":
            weights[tp + fp + fn == 0] = 0.0
        return _safe_divide(weights * score, weights.sum(-1, keepdim=True)).sum(-1)
