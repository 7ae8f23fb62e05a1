"""The input checks of SPEC sections 1 and 7 for the Triton operators, which run in Python (the
C++ operators have theirs, csrc/ops/inputs.h; the rules between options and inputs are the
declaration's, softiou_cuda/options.py). The reference (``softiou_cuda.reference``) has its own:
it is the oracle and shares no code with the path it checks."""

from __future__ import annotations

from typing import Optional

import torch

from .. import options as declared

INPUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32, torch.uint8)


def refuse_grad(name, tensor):
    """A ValueError if an argument that softiou does not differentiate requires grad."""
    if tensor is not None and tensor.requires_grad:
        raise ValueError(f"softiou: {name} requires grad, but softiou does not differentiate "
                         f"with respect to the {name}; pass {name}.detach()")


def normalize_inputs(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                     options: dict):
    """``(x, t, w)`` as the kernels take them: ``x`` is ``[N, C, *S]`` (binary ``[N, *S]``
    input gains its channel dim), ``t`` a class map ``[N, *S]`` (multiclass or multilabel,
    integer) or shaped like ``x``, ``w`` is ``[N, *S]`` or None. Views of the arguments; a clear
    error for anything else. ``options``: the statistics' options by name."""
    mode = options["mode"]
    for name, value in (("input", input), ("target", target)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if input.dtype not in INPUT_DTYPES:
        raise ValueError(f"softiou: input must be float32, float64, float16 or bfloat16; got "
                         f"{input.dtype}")
    for name, value in (("target", target), ("weight", weight)):
        if value is not None and value.device != input.device:
            raise ValueError(f"softiou: {name} is on {value.device} but input is on "
                             f"{input.device}")
    refuse_grad("target", target)
    refuse_grad("weight", weight)
    integer = target.dtype in INDEX_DTYPES
    declared.check_input(options, dense_target=not integer)
    if not (integer or target.dtype.is_floating_point or target.dtype == torch.bool):
        raise ValueError("softiou: target must be an integer class map (int64, int32, uint8) or "
                         f"a dense float/half/bool tensor; got {target.dtype}")
    channel = mode != "binary" or (input.dim() >= 3 and input.shape[1] == 1)
    if input.dim() < (3 if channel else 2):
        what = "[N, C, *spatial] with at least one spatial dim" if channel else \
            "[N, *spatial] or [N, 1, *spatial]"
        raise ValueError(f"softiou: {mode} input must be {what}; got shape "
                         f"{tuple(input.shape)}")
    x = input if channel else input.unsqueeze(1)
    if mode == "multiclass" and x.shape[1] < 2:
        raise ValueError(f"softiou: multiclass mode needs C >= 2 channels; got input shape "
                         f"{tuple(input.shape)} (use mode='binary' for one channel)")
    spatial = tuple(x.shape[2:])
    map_shape = (x.shape[0], *spatial)
    if mode == "multiclass" and integer:
        if tuple(target.shape) != map_shape:
            raise ValueError(f"softiou: target class map must have shape [N, *spatial] = "
                             f"{map_shape}; got {tuple(target.shape)}")
        t = target
    elif tuple(target.shape) == tuple(x.shape):
        t = target
    elif mode == "multilabel" and integer and tuple(target.shape) == map_shape:
        t = target  # a class map (SPEC section 10)
    elif mode == "binary" and tuple(target.shape) == map_shape:
        t = target.unsqueeze(1)
    else:
        also = f" or {map_shape}" if mode == "binary" else ""
        raise ValueError(f"softiou: target must have shape {tuple(x.shape)}{also} for {mode} "
                         f"input of shape {tuple(input.shape)}; got {tuple(target.shape)}")
    w = weight
    if weight is not None:
        if not weight.dtype.is_floating_point:
            raise ValueError(f"softiou: weight must be a floating tensor; got {weight.dtype}")
        if tuple(weight.shape) == (x.shape[0], 1, *spatial):
            w = weight.squeeze(1)
        elif tuple(weight.shape) != map_shape:
            raise ValueError(f"softiou: weight must have shape [N, *spatial] = {map_shape}; got "
                             f"{tuple(weight.shape)}")
    return x, t, w


def check_class_weight(class_weight: Optional[torch.Tensor], num_classes: int,
                       device: torch.device) -> None:
    """``class_weight`` as the kernels take it: a floating ``[C]`` tensor on the device."""
    if class_weight is None:
        return
    if not isinstance(class_weight, torch.Tensor) or not class_weight.dtype.is_floating_point:
        raise ValueError("softiou: class_weight must be a floating tensor of shape [C]")
    if tuple(class_weight.shape) != (num_classes,):
        raise ValueError(f"softiou: class_weight must have shape [C] = ({num_classes},); got "
                         f"{tuple(class_weight.shape)}")
    if class_weight.device != device:
        raise ValueError(f"softiou: class_weight is on {class_weight.device} but input is on "
                         f"{device}")
    refuse_grad("class_weight", class_weight)
