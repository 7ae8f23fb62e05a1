"""The finalize step (SPEC sections 4-5) of every fused backend on its own: the loss and its
gradient with respect to the statistics, against the reference's ``loss_from_stats``, for every
combination of the score and reduction options, in float64."""

import itertools

import pytest
import torch

import softiou_cuda
from conftest import DEVICES
from softiou_cuda import reference


def _finalize_fns(device):
    """``softiou::finalize`` (compiled) and the Triton finalize kernel, where they run here."""
    fns = []
    ops = softiou_cuda.operators
    if ops.HAS_EXTENSION and (device == "cpu" or ops.has_cuda_kernels()):
        fns.append(("op", lambda s, cw, **kw: torch.ops.softiou.finalize(s, None, cw, **kw)[0]))
    if "triton" in softiou_cuda.available_backends(device):
        softiou_cuda.route.triton_ops()  # registers the Triton operators
        fns.append(("triton", lambda s, cw, **kw: torch.ops.softiou.finalize(
            s, None, cw, backend="triton", **kw)[0]))
    return fns


CASES = [(d, name, fn) for d in DEVICES for name, fn in _finalize_fns(d)]

GRID = list(itertools.product(
    ["jaccard", "dice", "tversky"], [False, True], [1.0, 2.5], [0.0, 0.5],
    [None, (1, 3)], [True, False], [True, False], ["include", "exclude"],
    ["mean", "sum", "none"]))


def _stats(device, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(3, 4, 3, generator=g, dtype=torch.float64) * 10
    s[1, 2, 2] = 0  # an absent class
    s[2, 0] = 0  # empty target and empty prediction
    s[..., 0] = torch.minimum(s[..., 0], torch.minimum(s[..., 1], s[..., 2]))
    s[0, 1] = torch.tensor([2.0, 2.0, 2.0])  # a perfect pair: score 1
    return s.to(device)


@pytest.mark.parametrize("device,name,fn", CASES, ids=[f"{d}-{n}" for d, n, _ in CASES])
@pytest.mark.parametrize("class_weight", [None, [0.5, 2.0, 0.0, 1.0]], ids=["cw0", "cw1"])
def test_finalize_matches_reference(device, name, fn, class_weight):
    stats = _stats(device, 0)
    cw = None if class_weight is None else torch.tensor(class_weight, dtype=torch.float64,
                                                        device=device)
    # Triton's CPU interpreter is slow: every fifth combination (5 is prime to the grid's
    # dimensions, so every value of every option still appears)
    grid = GRID[::5] if name == "triton" and device == "cpu" else GRID
    for (metric, log_loss, gamma, smooth, classes, incl, per_image, absent, reduction) in grid:
        opts = dict(metric=metric, alpha=0.3, beta=0.8, gamma=gamma, log_loss=log_loss,
                    smooth=smooth, eps=1e-7, classes=classes, include_background=incl,
                    per_image=per_image, absent=absent, reduction=reduction)
        s1 = stats.clone().requires_grad_()
        got = fn(s1, cw, **opts)
        s2 = stats.clone().requires_grad_()
        want = reference.loss_from_stats(s2, class_weight=cw, **opts)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=str(opts))
        upstream = torch.linspace(0.5, 1.5, want.numel(), dtype=torch.float64,
                                  device=device).reshape(want.shape)
        (g1,) = torch.autograd.grad(got, s1, upstream)
        (g2,) = torch.autograd.grad(want, s2, upstream)
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12, msg=str(opts))


@pytest.mark.parametrize("device,name,fn", CASES, ids=[f"{d}-{n}" for d, n, _ in CASES])
def test_finalize_of_no_pair(device, name, fn):
    """Statistics of an empty batch: a loss of 0 for mean and sum, an empty loss for none."""
    stats = torch.zeros(0, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert fn(stats, None).item() == 0.0
    assert fn(stats, None, reduction="none").shape == (0, 3)
    # pooled over no sample: every pair has an empty target and prediction, score 1
    assert torch.equal(fn(stats, None, per_image=False, reduction="none"),
                       torch.zeros(3, dtype=torch.float64, device=device))
