"""IoU losses for 1-D intervals (spans), SPEC section 6.

``interval_iou_loss(pred_start, pred_end, target_start, target_end)`` returns ``1 - IoU`` (plus
the GIoU or DIoU penalty) of each pair of spans. Two details make it a well-behaved loss:

* every min/max uses the 1/2 tie convention (``softiou_cuda._ties``): at ``pred == target`` the
  gradient is exactly 0, where ``torch.minimum``/``torch.maximum`` leave a non-zero gradient at the
  loss's own minimum (-0.5 and -0.1667 for (5, 5) and (2, 4), inclusive);
* a degenerate prediction (``end < start``) counts as an empty span in the union and adds the
  inversion penalty ``relu(start - end) / length(target)``, so its loss is finite and its gradient
  pushes the ends back into order. The penalty is 0 for every valid prediction.

All coordinates of a pair are divided by ``max(1, |coordinates|)`` (which cancels out of every
term), so nothing overflows: loss and gradient are finite for any finite input, half precision
included. The computation is elementwise in float32 (float64 for float64 input).
"""

from __future__ import annotations

import torch

from ._ties import tie_max, tie_min

VARIANTS = ("iou", "giou", "diou")
REDUCTIONS = ("mean", "sum", "none")

__all__ = ["interval_iou_loss", "IntervalIoULoss"]


def _check_options(variant, reduction):
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")


def interval_iou_loss(pred_start: torch.Tensor, pred_end: torch.Tensor,
                      target_start: torch.Tensor, target_end: torch.Tensor, *,
                      variant: str = "iou", inclusive: bool = False, reduction: str = "mean",
                      eps: float = 1e-7) -> torch.Tensor:
    """IoU / GIoU / DIoU loss of spans ``[start, end]`` (any broadcastable shapes).

    Args:
        inclusive: integer positions, ``length = end - start + 1``; else continuous,
            ``length = end - start``.
        variant: ``"iou"`` (``1 - IoU``), ``"giou"`` (+ ``(E - U) / E`` with ``E`` the enclosing
            span) or ``"diou"`` (+ squared centre distance over ``E^2``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        eps: lower clamp of the denominators (at least the input dtype's epsilon).
    """
    _check_options(variant, reduction)
    if not isinstance(inclusive, bool):
        raise ValueError(f"inclusive must be a bool; got {inclusive!r}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be > 0; got {eps!r}")
    names = ("pred_start", "pred_end", "target_start", "target_end")
    values = (pred_start, pred_end, target_start, target_end)
    for name, v in zip(names, values):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        if v.device != pred_start.device:
            raise ValueError(f"{name} is on {v.device} but pred_start is on {pred_start.device}")
    for name, v in zip(names[:2], values[:2]):
        if not v.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating tensor (it is differentiated); got "
                             f"{v.dtype}")
    in_dtype = torch.promote_types(pred_start.dtype, pred_end.dtype)
    dtype = torch.promote_types(in_dtype, torch.float32)
    # a denominator below the input's own precision means nothing, and its reciprocal would
    # overflow a half-precision gradient
    eps = max(eps, torch.finfo(in_dtype).eps)
    ps, pe, ts, te = (v.to(dtype) for v in values)
    try:
        ps, pe, ts, te = torch.broadcast_tensors(ps, pe, ts, te)
    except RuntimeError as exc:
        raise ValueError(f"pred_start, pred_end, target_start and target_end must broadcast; "
                         f"got shapes {[tuple(v.shape) for v in values]}") from exc

    # per-pair scale: every term below is a ratio of lengths, so it cancels out
    scale = torch.stack([ps.abs(), pe.abs(), ts.abs(), te.abs()]).amax(0).clamp_min(1).detach()
    ps, pe, ts, te = ps / scale, pe / scale, ts / scale, te / scale
    one = 1 / scale if inclusive else torch.zeros_like(scale)
    zero = torch.zeros_like(scale)

    len_p = pe - ps + one
    len_t = te - ts + one
    inter = tie_max(tie_min(pe, te) - tie_max(ps, ts) + one, zero)
    union = tie_max(len_p, zero) + len_t - inter
    loss = 1 - inter / union.clamp_min(eps)
    if variant != "iou":
        enclose = (tie_max(pe, te) - tie_min(ps, ts) + one).clamp_min(eps)
        if variant == "giou":
            loss = loss + (enclose - union) / enclose
        else:
            loss = loss + ((ps + pe) / 2 - (ts + te) / 2) ** 2 / enclose ** 2
    loss = loss + torch.relu(ps - pe) / len_t.clamp_min(eps)

    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum()  # empty: 0, not NaN
    if reduction == "sum":
        return loss.sum()
    return loss


class IntervalIoULoss(torch.nn.Module):
    """Module form of :func:`interval_iou_loss`:
    ``forward(pred_start, pred_end, target_start, target_end)``."""

    def __init__(self, variant: str = "iou", *, inclusive: bool = False,
                 reduction: str = "mean", eps: float = 1e-7):
        super().__init__()
        _check_options(variant, reduction)
        self.variant, self.inclusive, self.reduction, self.eps = variant, inclusive, reduction, eps

    def forward(self, pred_start, pred_end, target_start, target_end):
        return interval_iou_loss(pred_start, pred_end, target_start, target_end,
                                 variant=self.variant, inclusive=self.inclusive,
                                 reduction=self.reduction, eps=self.eps)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, inclusive={self.inclusive}, reduction={self.reduction!r}"
