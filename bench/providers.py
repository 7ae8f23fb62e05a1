"""The implementations the benchmark compares. Each provider maps (logits, target) to a loss with
the same meaning as softiou's Jaccard loss (MONAI's and kornia's are checked against softiou's
reference before they are timed); F.cross_entropy is the yardstick everyone knows."""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import softiou_cuda
from softiou_cuda import reference


@dataclasses.dataclass
class Provider:
    name: str
    make: Callable  # (case) -> loss_fn(x, t) or raises Unavailable
    metric: str = "jaccard"  # what the reference check compares with ("none": not a soft IoU)
    note: str = ""


class Unavailable(Exception):
    pass


def _ce_weight(case):
    """The weight of the cross-entropy term: 1 in the "ce+iou" cases."""
    return 1.0 if case.loss == "ce+iou" else 0.0


def _iou_only(case, what):
    if case.loss != "iou":
        raise Unavailable(f"{what} computes the IoU loss only")


def _not_counts(case, what):
    if case.loss == "iou+counts":
        raise Unavailable(f"{what} does not count; the counts group times softiou's loss with "
                          "and without them, and with torchmetrics' separate pass")


def _softiou_available(backend):
    if backend not in softiou_cuda.available_backends("cuda" if backend in ("cuda", "triton")
                                                      else "cpu"):
        raise Unavailable(f"softiou backend {backend!r} is not built here")


def _softiou(backend):
    def make(case):
        _softiou_available(backend)
        mode, ce_weight = case.mode, _ce_weight(case)
        if case.loss == "iou+counts":  # the loss and its counts from one pass
            return lambda x, t: softiou_cuda.soft_iou_loss(x, t, mode=mode, backend=backend,
                                                           return_stat_scores=True)[0]
        return lambda x, t: softiou_cuda.soft_iou_loss(x, t, mode=mode, backend=backend,
                                                       ce_weight=ce_weight)
    return make


def _softiou_alone(backend, loss, where):
    """softiou's IoU loss alone, in the cases of `loss` (the cross-entropy + IoU or the counts
    cases): what the term or the counts add to it is timed on the same inputs, interleaved."""
    def make(case):
        if case.loss != loss:
            raise Unavailable(f"timed in the {where} cases")
        _softiou_available(backend)
        mode = case.mode
        return lambda x, t: softiou_cuda.soft_iou_loss(x, t, mode=mode, backend=backend)
    return make


def _softiou_and_torchmetrics(backend):
    """softiou's loss, and torchmetrics' MulticlassJaccardIndex.update as the separate pass a
    training loop makes for its metric today."""
    def make(case):
        if case.loss != "iou+counts":
            raise Unavailable("timed in the counts cases")
        _softiou_available(backend)
        if importlib.util.find_spec("torchmetrics") is None:
            raise Unavailable("torchmetrics is not installed")
        if case.mode != "multiclass":
            raise Unavailable("the multiclass cases only")
        from torchmetrics.classification import MulticlassJaccardIndex
        metric = MulticlassJaccardIndex(case.C, validate_args=False)

        def fn(x, t):
            loss = softiou_cuda.soft_iou_loss(x, t, backend=backend)
            metric.to(x.device).update(x.detach(), t)
            return loss
        return fn
    return make


def _cross_entropy_and_softiou(backend):
    """The cross-entropy and softiou called apart: what the fused term replaces."""
    def make(case):
        if case.loss != "ce+iou":
            raise Unavailable("timed in the cross-entropy + IoU cases")
        _softiou_available(backend)
        mode, ce = case.mode, _cross_entropy(case)
        return lambda x, t: ce(x, t) + softiou_cuda.soft_iou_loss(x, t, mode=mode,
                                                                   backend=backend)
    return make


def _reference(case):
    _not_counts(case, "the reference")
    mode, ce_weight = case.mode, _ce_weight(case)
    return lambda x, t: reference.soft_iou_loss(x, t, mode=mode, ce_weight=ce_weight,
                                                check_values=False)


_compiled = {}
compile_notes = {}


def _reference_compiled(case):
    """torch.compile of the reference. Where Inductor fails to build its persistent-reduction
    kernels (seen with torch 2.11 / Triton 3.6 on an H100), it retries with looped reductions
    (triton.persistent_reductions=False) and says so in the report."""
    _not_counts(case, "the reference")
    key = (case.mode, case.loss)
    if key not in _compiled:
        mode, ce_weight = case.mode, _ce_weight(case)

        def fn(x, t):
            return reference.soft_iou_loss(x, t, mode=mode, ce_weight=ce_weight,
                                           check_values=False)
        state = {"fn": torch.compile(fn)}

        def call(x, t):
            try:
                return state["fn"](x, t)
            except Exception as exc:  # noqa: BLE001 - an Inductor build failure
                if "fallback" in state:
                    raise
                state["fallback"] = True
                compile_notes[mode] = (f"default Inductor build failed ({type(exc).__name__}: "
                                       f"{str(exc)[:160]}); timed with "
                                       "triton.persistent_reductions=False")
                state["fn"] = torch.compile(fn, options={"triton.persistent_reductions": False})
                return state["fn"](x, t)
        _compiled[key] = call
    return _compiled[key]


def _as_long(case, fn):
    """A class map of another integer dtype as the peers and F.cross_entropy take it (int64), the
    conversion timed with the call: what a user holding uint8 or int32 maps pays."""
    if case.mode != "multiclass" or case.target == "int64":
        return fn
    return lambda x, t: fn(x, t.long())


def _monai(case):
    if importlib.util.find_spec("monai") is None:
        raise Unavailable("monai is not installed")
    _not_counts(case, "monai's loss")
    from monai.losses import DiceCELoss, DiceLoss
    # ce+iou: DiceCELoss(jaccard=True), its Jaccard plus the cross-entropy
    cls = DiceCELoss if case.loss == "ce+iou" else DiceLoss
    if case.mode == "multiclass":
        loss = cls(jaccard=True, softmax=True, to_onehot_y=True, smooth_nr=0.0, smooth_dr=1e-7)
        return _as_long(case, lambda x, t: loss(x, t.unsqueeze(1)))
    loss = cls(jaccard=True, sigmoid=True, smooth_nr=0.0, smooth_dr=1e-7)
    return lambda x, t: loss(x, t.to(x.dtype))


def _kornia(case):
    _iou_only(case, "kornia's dice_loss")
    if importlib.util.find_spec("kornia") is None:
        raise Unavailable("kornia is not installed")
    if case.mode != "multiclass" or len(case.spatial) != 2:
        raise Unavailable("kornia's dice_loss takes 2-D multiclass maps only")
    from kornia.losses import dice_loss
    return _as_long(case, lambda x, t: dice_loss(x, t, average="macro", eps=1e-7))


def _smp(case):
    _iou_only(case, "segmentation_models_pytorch's JaccardLoss")
    if importlib.util.find_spec("segmentation_models_pytorch") is None:
        raise Unavailable("segmentation_models_pytorch is not installed")
    from segmentation_models_pytorch.losses import JaccardLoss
    loss = JaccardLoss(case.mode, from_logits=True, smooth=0.0, eps=1e-7)
    return _as_long(case, lambda x, t: loss(x, t))


def _cross_entropy(case):
    if case.mode == "multiclass":
        return _as_long(case, lambda x, t: F.cross_entropy(x, t))
    return lambda x, t: F.binary_cross_entropy_with_logits(x, t.to(x.dtype))


def _yardstick(case):
    _iou_only(case, "the yardstick")
    return _cross_entropy(case)


def providers(device: str):
    names = {"cpu": ["cpu"], "cuda": ["cuda", "triton"]}[device]
    out = [Provider(f"softiou-{b}", _softiou(b)) for b in names]
    out += [Provider(f"softiou-{b}-without-ce",
                     _softiou_alone(b, "ce+iou", "cross-entropy + IoU"), metric="jaccard-only",
                     note="softiou's IoU loss alone (the cross-entropy + IoU cases)")
            for b in names]
    out += [Provider(f"softiou-{b}-without-counts", _softiou_alone(b, "iou+counts", "counts"),
                     note="softiou's IoU loss alone (the counts cases)") for b in names]
    out += [Provider(f"softiou-{b}+torchmetrics", _softiou_and_torchmetrics(b),
                     note="softiou's loss and torchmetrics' MulticlassJaccardIndex.update, the "
                          "separate pass (the counts cases)") for b in names]
    out += [Provider(f"cross_entropy+softiou-{b}", _cross_entropy_and_softiou(b),
                     note="F.cross_entropy and softiou called apart (the cross-entropy + IoU "
                          "cases)") for b in names]
    out += [
        Provider("reference-eager", _reference, note="softiou_cuda.reference, eager"),
        Provider("reference-compiled", _reference_compiled,
                 note="torch.compile of the reference"),
        Provider("monai", _monai, note="monai.losses.DiceLoss(jaccard=True)"),
        Provider("kornia", _kornia, metric="dice-macro",
                 note="kornia.losses.dice_loss(average='macro'): Dice, not Jaccard"),
        Provider("smp", _smp, metric="jaccard-pooled",
                 note="segmentation_models_pytorch JaccardLoss (batch-pooled, absent classes 0)"),
        Provider("cross_entropy", _yardstick, metric="none",
                 note="F.cross_entropy (binary: BCE with logits), the yardstick"),
    ]
    return out


def expected_loss(metric: str, case, x, t) -> Optional[torch.Tensor]:
    """The reference value a provider must reproduce before it is timed."""
    x64 = x.detach().double()
    if metric == "jaccard":
        return reference.soft_iou_loss(x64, t, mode=case.mode, ce_weight=_ce_weight(case))
    if metric == "jaccard-only":
        return reference.soft_iou_loss(x64, t, mode=case.mode)
    if metric == "dice-macro":
        return reference.soft_iou_loss(x64, t, mode=case.mode, metric="dice")
    if metric == "jaccard-pooled":
        s = reference.statistics(x64, t, mode=case.mode).sum(0)
        I, P, Y = s.unbind(-1)
        return ((1 - I / (P + Y - I).clamp_min(1e-7)) * (Y > 0)).mean()
    return None
