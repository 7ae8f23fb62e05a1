"""Inputs for every mode and target kind, and the comparisons against the float64 reference."""

from __future__ import annotations

import torch

import softiou_cuda
from softiou_cuda import reference

# target kinds per mode (SPEC section 1)
TARGET_KINDS = {
    "multiclass": ["map-int64", "map-int32", "map-uint8", "onehot-float", "soft-float",
                   "onehot-bool"],
    "binary": ["int64", "uint8", "float", "soft-float", "bool", "map-no-channel"],
    "multilabel": ["int64", "uint8", "float", "soft-float", "bool", "map-classes"],
}
MODE_KINDS = [(m, k) for m, kinds in TARGET_KINDS.items() for k in kinds]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def ignore_value(kind: str) -> int:
    return 255 if "uint8" in kind else -1


def takes_ignore(mode: str, kind: str) -> bool:
    """ignore_index applies to class maps, integer targets and (per element) dense binary and
    multilabel targets (SPEC section 10); a bool target cannot hold it."""
    if mode == "multiclass":
        return kind.startswith("map")
    return kind != "bool"


def make_inputs(mode: str, kind: str, dtype=torch.float32, device="cpu", shape=(2, 4, 5, 7),
                from_logits=True, ignore_index=None, weight=False, seed=0, scale=2.0):
    """``(input, target, weight)``: input is a leaf that requires grad, of shape ``shape``
    ([N, C, *S]; binary uses C = 1)."""
    g = torch.Generator().manual_seed(seed)
    N, C, S = shape[0], shape[1], tuple(shape[2:])
    if mode == "binary":
        C = 1
    logits = torch.randn((N, C, *S), generator=g, dtype=torch.float64) * scale
    if from_logits:
        x = logits
    elif mode == "multiclass":
        x = torch.softmax(logits, dim=1).clamp(0.01, 0.99)
    else:
        x = torch.sigmoid(logits).clamp(0.02, 0.98)

    if mode == "multilabel" and kind == "map-classes":  # a class map [N, *S] (SPEC section 10)
        target = torch.randint(0, C, (N, *S), generator=g)
        if ignore_index is not None:
            target[torch.rand(target.shape, generator=g) < 0.2] = ignore_index
    elif mode == "multiclass":
        cls = torch.randint(0, C, (N, *S), generator=g)
        if kind.startswith("map"):
            itype = {"map-int64": torch.int64, "map-int32": torch.int32,
                     "map-uint8": torch.uint8}[kind]
            t = cls.clone()
            if ignore_index is not None:
                t[torch.rand(cls.shape, generator=g) < 0.2] = ignore_index
            target = t.to(itype)
        elif kind == "soft-float":
            target = torch.softmax(torch.randn((N, C, *S), generator=g, dtype=torch.float64) * 2,
                                   dim=1)
        else:
            onehot = torch.nn.functional.one_hot(cls, C).movedim(-1, 1)
            target = onehot.bool() if kind == "onehot-bool" else onehot.double()
    else:
        bits = (torch.rand((N, C, *S), generator=g) < 0.4).long()
        if kind in ("int64", "uint8", "map-no-channel"):
            if ignore_index is not None:
                bits[torch.rand(bits.shape, generator=g) < 0.2] = ignore_index
            target = bits.to(torch.uint8 if kind == "uint8" else torch.int64)
        elif kind == "soft-float":
            target = torch.rand((N, C, *S), generator=g, dtype=torch.float64)
        elif kind == "bool":
            target = bits.bool()
        else:
            target = bits.double()
        if ignore_index is not None and target.is_floating_point():  # per element
            target[torch.rand(target.shape, generator=g) < 0.2] = ignore_index
        if mode == "binary" and kind == "map-no-channel":
            target = target.squeeze(1)  # [N, *S] target with [N, 1, *S] input
    if target.dtype == torch.float64:
        target = target.to(dtype if dtype == torch.float64 else torch.float32)
    w = None
    if weight:
        w = torch.rand((N, *S), generator=g, dtype=torch.float64) * 2
        w[..., 0] = 0  # a zero weight too
        w = w.to(dtype if dtype == torch.float64 else torch.float32).to(device)
    x = x.to(dtype).to(device).requires_grad_(True)
    return x, target.to(device), w


def loss_and_grad(fn, x, *args, **kwargs):
    x = x.detach().requires_grad_(True)
    loss = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def reference_loss_and_grad(x, target, weight, **options):
    """The reference in float64 on the same (already rounded) inputs."""
    w64 = None if weight is None else weight.double()
    return loss_and_grad(reference.soft_iou_loss, x.double(), target, w64, **options)


def fused_loss_and_grad(x, target, weight, backend, **options):
    return loss_and_grad(softiou_cuda.soft_iou_loss, x, target, weight, backend=backend,
                         **options)


def tolerance(dtype):
    return {torch.float64: (1e-9, 1e-12), torch.float32: (2e-5, 2e-6)}[dtype]


def assert_matches_reference(x, target, weight, backend, **options):
    """Loss and gradient of the fused backend against the float64 reference.

    float32/float64: close within the dtype's tolerance. float16/bfloat16, as flash-attention
    tests: the fused error against the float64 reference is at most twice the error of the
    reference computed in that dtype, plus one unit in the last place."""
    loss, grad = fused_loss_and_grad(x, target, weight, backend, **options)
    ref_loss, ref_grad = reference_loss_and_grad(x, target, weight, **options)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert loss.shape == ref_loss.shape
    if x.dtype in LOW_PRECISION:
        lp_loss, lp_grad = loss_and_grad(reference.soft_iou_loss, x, target, weight,
                                         compute_dtype=x.dtype, **options)
        ulp = torch.finfo(x.dtype).eps
        for got, want, own in ((loss, ref_loss, lp_loss), (grad, ref_grad, lp_grad)):
            err = (got.double() - want).abs().max().item()
            own_err = (own.double() - want).abs().max().item()
            scale = want.abs().max().item()
            assert err <= 2 * own_err + ulp * scale + 1e-6, (err, own_err, scale)
        return loss, grad
    rtol, atol = tolerance(x.dtype)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=atol)
    gscale = max(ref_grad.abs().max().item(), 1e-3)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol * 10, atol=atol * 10 * gscale)
    return loss, grad


def stats_function(backend):
    """``f(x, t, w, mode, from_logits, sharpness, intersection, ignore_index, squared=False)``:
    the statistics ``[N, C, 3]`` of a backend (differentiable with respect to ``x``)."""
    def stats(x, t, w, mode, from_logits, sharpness, intersection, ignore_index, squared=False):
        o = softiou_cuda.make_options(mode=mode, from_logits=from_logits, sharpness=sharpness,
                                      intersection=intersection, ignore_index=ignore_index,
                                      squared=squared)
        if backend == "reference":
            return reference.statistics_normalized(x, t, w, mode, from_logits, sharpness,
                                                   intersection, ignore_index, squared=squared)
        return softiou_cuda.functional.statistics(x, t, w, None, o, backend)[0]
    return stats
