"""Drop-in equivalents of the peers' losses, computed by the fused operator.

Change the import, keep the arguments::

    from monai.losses import DiceLoss                      # before
    from softiou_cuda.compat.monai import DiceLoss         # after

    import segmentation_models_pytorch as smp
    smp.losses.JaccardLoss("multiclass")                   # before
    softiou_cuda.compat.smp.JaccardLoss("multiclass")      # after

``compat.monai``: ``DiceLoss``, ``TverskyLoss``, ``GeneralizedDiceLoss``, ``DiceCELoss`` (MONAI
1.6).
``compat.smp``: ``DiceLoss``, ``JaccardLoss``, ``TverskyLoss`` (segmentation_models_pytorch 0.6).

Each takes the peer's constructor arguments, with the same defaults, and returns what the peer
returns (the loss and its gradient, to float64 rounding: tests/test_compat.py runs the peers' own
code against these), through SPEC section 10's options. An option the fused path cannot honour
(MONAI's ``other_act``, an arbitrary callable) raises an error that names it; the few differences
are listed in each module's docstring. Each also takes ``backend=`` (see ``soft_iou_loss``).
"""

from . import monai, smp

__all__ = ["monai", "smp"]
