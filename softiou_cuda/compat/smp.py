"""segmentation_models_pytorch's ``DiceLoss``, ``JaccardLoss`` and ``TverskyLoss``
(smp.losses, 0.6) on the fused operator: the same constructor arguments and defaults, the same
results.

smp computes every score as a Tversky index of the whole batch (``dims=(0, 2)``) with the
intersection ``(sum p + sum y - |p - y|_1) / 2 = sum min(p, y)``: here ``metric="tversky"``
(``alpha = beta = 1`` for Jaccard, ``0.5`` for Dice), ``intersection="min"``,
``per_image=False``, and ``absent="zero"`` (smp sets the loss of a class without target pixels to
0, SPEC section 10). ``classes`` and ``class_weights`` become ``class_weight`` (a class listed twice
counts twice, as smp's indexing does). ``eps`` clamps the denominator as smp's ``clamp_min``.
Binary targets ``[N, *S]`` or ``[N, 1, *S]``; multiclass class maps; multilabel ``[N, C, *S]``.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ..api import soft_iou_loss
from ..operators import accumulation_dtype

_MODES = ("binary", "multiclass", "multilabel")


class DiceLoss(torch.nn.Module):
    """``segmentation_models_pytorch.losses.DiceLoss`` on the fused operator."""

    _alpha = _beta = 0.5

    def __init__(self, mode: str, classes: Optional[List[int]] = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0,
                 ignore_index: Optional[int] = None, eps: float = 1e-7,
                 class_weights: Optional[List[float]] = None, *, backend: str = "auto"):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}; got {mode!r}")
        if class_weights is not None and mode == "binary":
            raise ValueError("class_weights are not supported with mode=binary")
        if classes is not None and mode == "binary":
            raise ValueError("Masking classes is not supported with mode=binary")
        self.mode = mode
        self.classes = None if classes is None else [int(c) for c in classes]
        self.log_loss = log_loss
        self.from_logits = from_logits
        self.smooth = float(smooth)
        self.ignore_index = ignore_index
        self.eps = float(eps)
        self.class_weights = (None if class_weights is None
                              else torch.as_tensor(class_weights, dtype=torch.float))
        self.backend = backend
        self._cw_cache = {}

    def _class_weight(self, C: int, acc: torch.dtype, device):
        """(class_weight, reduction): smp's selection and weights as one weight per class."""
        key = (C, acc, str(device))
        cached = self._cw_cache.get(key)
        if cached is not None:
            return cached
        w, reduction = None, "mean"
        selected = list(range(C)) if self.classes is None else self.classes
        if self.classes is not None:
            if any(not -C <= c < C for c in self.classes):
                raise ValueError(f"classes must be indices in [-{C}, {C}); got {self.classes}")
            counts = torch.zeros(C, dtype=torch.float64)
            for c in self.classes:
                counts[c % C] += 1
            w = counts
        cws = self.class_weights
        if cws is not None:
            if cws.numel() == 1 and self.classes is None:
                # smp: sum(loss * w) / sum(w) with a single weight broadcast is the sum
                reduction = "sum"
            else:
                if cws.numel() != C:
                    raise ValueError(f"class_weights must have one weight per class ({C}); "
                                     f"got {cws.numel()}")
                # smp divides sum(w_c L_c) by its float32 weights' sum: the same divisor
                total = cws[torch.tensor(selected)].sum()
                cw = cws.to(torch.float64) / total.to(torch.float64)
                w = cw if w is None else w * cw
                reduction = "sum"
        if w is not None:
            w = w.to(device=device, dtype=acc)
        self._cw_cache[key] = (w, reduction)
        return w, reduction

    def _score(self) -> dict:
        return dict(metric="tversky", alpha=self._alpha, beta=self._beta)

    def _loss(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        assert y_true.size(0) == y_pred.size(0)
        N, C = y_pred.shape[0], y_pred.shape[1]
        spatial = tuple(y_pred.shape[2:])
        if self.mode == "binary":  # [N, 1, *S] or [N, *S]: one class of every element
            y_pred = y_pred.reshape(N, 1, -1)
            y_true = y_true.reshape(N, 1, -1)
            C = 1
            mode = "multilabel"
        elif self.mode == "multiclass":
            y_true = y_true.reshape((N,) + spatial)
            mode = "multiclass"
        else:
            y_true = y_true.reshape((N, C) + spatial)
            mode = "multilabel"
        if mode == "multilabel" and y_true.dtype == torch.bool:
            y_true = y_true.to(y_pred.dtype)
        w, reduction = self._class_weight(C, accumulation_dtype(y_pred.dtype), y_pred.device)
        eps = self.eps if self.eps > 0 else float(torch.finfo(torch.float32).tiny)
        return soft_iou_loss(y_pred, y_true, mode=mode, from_logits=self.from_logits,
                             intersection="min", smooth=self.smooth, eps=eps,
                             log_loss=self.log_loss, class_weight=w,
                             ignore_index=self.ignore_index, per_image=False, absent="zero",
                             reduction=reduction, backend=self.backend, **self._score())

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        return self._loss(y_pred, y_true)


class JaccardLoss(DiceLoss):
    """``segmentation_models_pytorch.losses.JaccardLoss`` on the fused operator."""

    _alpha = _beta = 1.0


class TverskyLoss(DiceLoss):
    """``segmentation_models_pytorch.losses.TverskyLoss`` on the fused operator: the (weighted)
    mean of the classes' losses, to the power ``gamma``."""

    def __init__(self, mode: str, classes: Optional[List[int]] = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0,
                 ignore_index: Optional[int] = None, eps: float = 1e-7, alpha: float = 0.5,
                 beta: float = 0.5, gamma: float = 1.0,
                 class_weights: Optional[List[float]] = None, *, backend: str = "auto"):
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps,
                         class_weights, backend=backend)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.gamma = float(gamma)

    def _score(self) -> dict:
        return dict(metric="tversky", alpha=self.alpha, beta=self.beta)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        loss = self._loss(y_pred, y_true)
        return loss if self.gamma == 1.0 else loss ** self.gamma
