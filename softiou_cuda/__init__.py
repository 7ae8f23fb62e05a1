"""softiou: the soft IoU (Jaccard), Dice and Tversky losses as fused PyTorch operators.

    import softiou_cuda
    loss = softiou_cuda.soft_iou_loss(logits, class_map)            # function
    criterion = softiou_cuda.SoftIoULoss("multiclass", ignore_index=255)
    torch.ops.softiou.loss(logits, class_map)                         # the operator

See SPEC.md for the semantics and the README for every option (declared in
softiou_cuda/options.py).
"""

from . import operators  # loads the compiled operators and registers their fake kernels
from . import functional, reference
from . import metrics
from .api import SoftDiceLoss, SoftIoULoss, SoftTverskyLoss, soft_iou_loss, stat_scores
from .interval import IntervalIoULoss, interval_iou_loss
from .options import LossOptions, make_options
from .route import available as available_backends

__version__ = "0.1.0"

__all__ = [
    "soft_iou_loss", "SoftIoULoss", "SoftDiceLoss", "SoftTverskyLoss", "stat_scores", "metrics",
    "interval_iou_loss",
    "IntervalIoULoss", "LossOptions", "make_options", "functional", "available_backends",
    "reference", "operators", "__version__",
]
