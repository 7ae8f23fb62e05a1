"""The user API: ``soft_iou_loss`` and the ``SoftIoULoss`` module (and their Dice/Tversky cousins).

A call is: the options, validated once and cached as one :class:`~softiou_cuda.checks.LossOptions`
value; the backend for the tensor's device (cached); then one call of the operator, which runs the
statistics pass and the finalize step forward and one gradient pass backward, with its autograd in
C++. The operator is called through the extension's own binding, ``_C.loss`` (torch.ops' generic
binding costs about 5 us more per call); torch.ops is called under torch.compile, for tensor
subclasses and under torch function modes. The Triton backend makes the same two launches forward
and one backward, from Python. Under the ``torch.func`` transforms, which refuse C++ autograd, the
same two ops run from a Python autograd function, :class:`~softiou_cuda.ops.LossUnderTransforms`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import backends, checks, distributed, ops, reference
from .checks import LossOptions

__all__ = ["soft_iou_loss", "SoftIoULoss", "SoftDiceLoss", "SoftTverskyLoss"]

_loss_op = torch.ops.softiou.loss.default if hasattr(torch.ops.softiou, "loss") else None
_loss_call = ops._C.loss if ops.HAS_EXTENSION else None


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
                  w_type: str = "square", ce_pos_weight: float = 1.0, process_group=None,
                  backend: str = "auto") -> torch.Tensor:
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
        process_group: with ``per_image=False``, sum the statistics over the ranks of this
            ``torch.distributed`` group (differentiably): the IoU of the global batch.
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"reference"``.
    """
    if classes is not None and not isinstance(classes, tuple):
        classes = tuple(classes)
    options = checks.options(mode, from_logits, sharpness, intersection, metric, alpha, beta,
                             gamma, log_loss, smooth, eps, classes, include_background,
                             ignore_index, per_image, absent, reduction, ce_weight,
                             label_smoothing, squared, smooth_dr, weighted_mean, w_type,
                             ce_pos_weight)
    return _loss(input, target, weight, class_weight, options, process_group, backend)


def _loss(input, target, weight, class_weight, options: LossOptions, process_group, backend):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    name = backends.resolve(backend, input.device)
    if process_group is not None and options.per_image:
        raise ValueError("process_group needs per_image=False: the statistics summed over ranks "
                         "are those of the whole batch")
    if name == "reference":
        return reference.soft_iou_loss(input, target, weight, class_weight=class_weight,
                                       process_group=process_group, **options.kwargs())
    if process_group is not None:
        return _pooled_over_ranks(name, input, target, weight, class_weight, options,
                                  process_group)
    if name == "triton":
        return backends.triton_ops().loss(input, target, weight, class_weight, options)
    if torch._C._are_functorch_transforms_active():  # torch.func.grad, vmap, ...
        return ops.LossUnderTransforms.apply(input, target, weight, class_weight, options)[0]
    if not torch.compiler.is_compiling():  # Dynamo traces the torch.ops call
        out = _loss_call(input, target, weight, class_weight, options)
        if out is not NotImplemented:
            return out
    return _loss_op(input, target, weight, class_weight, *options)


def _pooled_over_ranks(name, input, target, weight, class_weight, options, group):
    """``per_image=False`` over a process group: the statistics of this rank's batch, summed over
    the batch and over the ranks (a differentiable all-reduce), then the finalize step. The
    cross-entropy term (SPEC section 9) stays this rank's mean, as F.cross_entropy's does."""
    x, t, w = checks.normalize_inputs(input, target, weight, options.mode, options.ignore_index)
    if name == "triton":
        ops = backends.triton_ops()
        stats_fn, stats_ce_fn, finalize_fn = ops.triton_stats, ops.triton_stats_ce, ops.finalize
    else:
        stats_fn, stats_ce_fn = torch.ops.softiou.stats, torch.ops.softiou.stats_ce
        finalize_fn = torch.ops.softiou.finalize
    ce = None
    if options.ce_weight > 0:
        stats, ce = stats_ce_fn(x, t, w, class_weight, *options.stats_ce_args())
    else:
        stats = stats_fn(x, t, w, *options.stats_args())
    pooled = distributed.all_reduce_sum(stats.sum(dim=0, keepdim=True), group)
    loss = finalize_fn(pooled, class_weight, **options.finalize_kwargs())
    if ce is not None:
        num, den = ce.sum(dim=0).unbind()
        term = num if options.reduction == "sum" else num / torch.where(den > 0, den, 1.0)
        loss = loss + options.ce_weight * term
    return loss


class SoftIoULoss(torch.nn.Module):
    """Module form of :func:`soft_iou_loss`; the options are checked once, at construction.

    ``forward(input, target, weight=None)``. ``class_weight`` is kept as a buffer (it follows
    ``.to(device)``) and its values are checked here.
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
                 w_type: str = "square", ce_pos_weight: float = 1.0, process_group=None,
                 backend: str = "auto"):
        super().__init__()
        self.options = checks.make_options(
            mode=mode, from_logits=from_logits, sharpness=sharpness, intersection=intersection,
            metric=metric, alpha=alpha, beta=beta, gamma=gamma, log_loss=log_loss, smooth=smooth,
            eps=eps, classes=classes, include_background=include_background,
            ignore_index=ignore_index, per_image=per_image, absent=absent, reduction=reduction,
            ce_weight=ce_weight, label_smoothing=label_smoothing, squared=squared,
            smooth_dr=smooth_dr, weighted_mean=weighted_mean, w_type=w_type,
            ce_pos_weight=ce_pos_weight)
        if class_weight is not None:
            if metric == "generalized_dice":
                raise ValueError("class_weight must be None with metric='generalized_dice': its "
                                 "class weights come from the target (w_type)")
            class_weight = torch.as_tensor(class_weight, dtype=torch.float32)
            if class_weight.dim() != 1 or not torch.isfinite(class_weight).all() \
                    or (class_weight < 0).any():
                raise ValueError("class_weight must be a 1-D tensor of finite weights >= 0; got "
                                 f"{class_weight.tolist()}")
        self.register_buffer("class_weight", class_weight)
        if backend not in backends.BACKENDS:
            raise ValueError(f"backend must be one of {backends.BACKENDS}; got {backend!r}")
        if process_group is not None and per_image:
            raise ValueError("process_group needs per_image=False: the statistics summed over "
                             "ranks are those of the whole batch")
        self.process_group = process_group
        self.backend = backend

    def forward(self, input: torch.Tensor, target: torch.Tensor,
                weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return _loss(input, target, weight, self.class_weight, self.options, self.process_group,
                     self.backend)

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.options.kwargs().items() if v is not None}
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
