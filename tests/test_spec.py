"""SPEC section 8 and hand-computed values, on the reference and on every fused backend, plus the
scores and reduction (sections 4-5) against an independent per-pair computation."""

import itertools
import math

import pytest
import torch

import softiou_cuda
from conftest import CASES
from helpers import stats_function
from softiou_cuda import reference

ALL = [("cpu", "reference")] + CASES
ALL_IDS = [f"{d}-{b}" for d, b in ALL]


@pytest.fixture(params=ALL, ids=ALL_IDS)
def any_backend(request):
    return request.param


def loss_fn(backend):
    if backend == "reference":
        return reference.soft_iou_loss
    return lambda *a, **k: softiou_cuda.soft_iou_loss(*a, backend=backend, **k)


def test_spec_binary_two_thirds(any_backend):
    """binary, logits [[0, 0]], target [[1, 0]], product jaccard: p = (.5, .5), I = .5,
    U = 1.5, loss 2/3."""
    device, backend = any_backend
    x = torch.tensor([[0.0, 0.0]], dtype=torch.float64, device=device, requires_grad=True)
    t = torch.tensor([[1, 0]], device=device)
    loss = loss_fn(backend)(x, t, mode="binary")
    assert abs(loss.item() - 2 / 3) <= 1e-12
    # the statistics themselves
    if backend == "reference":
        s = reference.statistics(x, t, mode="binary")
    else:
        stats_fn = stats_function(backend)
        s = stats_fn(x.unsqueeze(1), t.unsqueeze(1), None, "binary", True, 1.0, "product", None)
    I, P, Y = s[0, 0].tolist()
    assert abs(I - 0.5) <= 1e-12 and abs(P + Y - I - 1.5) <= 1e-12
    # gradient of 1 - I/U by hand: dL/dp = -(y U - I (1 - y)) / U^2, dp/dx = p(1-p) = 1/4
    (g,) = torch.autograd.grad(loss, x)
    U, I = 1.5, 0.5
    expect = [-(1 * U - I * 0) / U ** 2 * 0.25, -(0 * U - I * 1) / U ** 2 * 0.25]
    assert torch.allclose(g.cpu(), torch.tensor([expect], dtype=torch.float64), atol=1e-12)


def _soft_labels(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.softmax(torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64) * 2, dim=1)
    return y.to(device)


@pytest.mark.parametrize("metric", ["jaccard", "dice", "tversky"])
def test_spec_min_intersection_soft_labels(any_backend, metric):
    """multiclass min, from_logits=False, input = target = a soft-label map: loss 0 and gradient
    exactly 0 (for Tversky with alpha = beta); the product form is > 0 there."""
    device, backend = any_backend
    y = _soft_labels(device)
    x = y.clone().requires_grad_(True)
    f = loss_fn(backend)
    loss = f(x, y, mode="multiclass", from_logits=False, intersection="min", metric=metric)
    (g,) = torch.autograd.grad(loss, x)
    assert abs(loss.item()) <= 1e-12
    assert torch.count_nonzero(g).item() == 0
    product = f(x, y, mode="multiclass", from_logits=False, intersection="product")
    assert product.item() > 0.1


def test_dice_and_tversky_values(any_backend):
    device, backend = any_backend
    x = torch.tensor([[0.0, 0.0]], dtype=torch.float64, device=device)
    t = torch.tensor([[1, 0]], device=device)
    f = loss_fn(backend)
    # I = .5, P = 1, Y = 1
    assert abs(f(x, t, mode="binary", metric="dice").item() - 0.5) <= 1e-12
    tv = f(x, t, mode="binary", metric="tversky", alpha=0.3, beta=0.7).item()
    assert abs(tv - (1 - 0.5 / (0.5 + 0.3 * 0.5 + 0.7 * 0.5))) <= 1e-12
    assert abs(f(x, t, mode="binary", metric="tversky", alpha=1.0, beta=1.0).item()
               - 2 / 3) <= 1e-12
    assert abs(f(x, t, mode="binary", smooth=1.0).item() - (1 - 1.5 / 2.5)) <= 1e-12
    assert abs(f(x, t, mode="binary", log_loss=True).item() + math.log(1 / 3)) <= 1e-12
    assert abs(f(x, t, mode="binary", gamma=2.0).item() - (2 / 3) ** 2) <= 1e-12


def test_empty_target_and_prediction_scores_one(any_backend):
    """SPEC section 4: an empty target with an empty prediction scores 1, never NaN."""
    device, backend = any_backend
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    t = torch.zeros(2, 1, 4, 4, device=device)
    f = loss_fn(backend)
    for metric in ("jaccard", "dice", "tversky"):
        loss = f(x, t, mode="binary", from_logits=False, metric=metric, reduction="none")
        assert torch.equal(loss.cpu(), torch.zeros(2, 1, dtype=torch.float64)), metric
        (g,) = torch.autograd.grad(loss.sum(), x)
        assert torch.isfinite(g).all()
    # empty target, non-empty prediction: score 0
    x2 = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64, device=device)
    assert f(x2, t[:1, :, :2, :2], mode="binary", from_logits=False).item() == 1.0


def test_no_kept_pair_gives_connected_zero(any_backend):
    """SPEC section 5: every pair dropped -> loss 0, still connected to the graph."""
    device, backend = any_backend
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    t = torch.zeros(2, 4, 4, dtype=torch.long, device=device)  # only class 0 present
    loss = loss_fn(backend)(x, t, classes=[1, 2], absent="exclude")
    assert loss.item() == 0.0 and loss.requires_grad
    (g,) = torch.autograd.grad(loss, x)
    assert torch.count_nonzero(g).item() == 0


def test_ignored_pixels_contribute_nothing(any_backend):
    """Ignored pixels get a zero gradient, and changing them changes nothing."""
    device, backend = any_backend
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    t = torch.randint(0, 3, (2, 5, 5), generator=g).to(device)
    t[:, :2] = 255
    f = loss_fn(backend)
    loss = f(x, t, ignore_index=255)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.count_nonzero(grad[:, :, :2]).item() == 0
    x2 = x.detach().clone()
    x2[:, :, :2] = 1e3 * torch.randn_like(x2[:, :, :2])
    assert abs(f(x2, t, ignore_index=255).item() - loss.item()) <= 1e-12


# ---- scores and reduction against an independent per-pair computation ------------------------
def brute_force(stats, metric, alpha, beta, gamma, log_loss, smooth, eps, class_weight, classes,
                include_background, per_image, absent, reduction):
    """Section 4-5, one pair at a time in Python floats."""
    s = stats.tolist()
    if not per_image:
        s = [[[sum(s[n][c][k] for n in range(len(s))) for k in range(3)]
              for c in range(len(s[0]))]]
    rows = []
    for row in s:
        out = []
        for c, (I, P, Y) in enumerate(row):
            if metric == "jaccard":
                num, den = I + smooth, P + Y - I + smooth
            elif metric == "dice":
                num, den = 2 * I + smooth, P + Y + smooth
            else:
                num, den = I + smooth, I + alpha * (P - I) + beta * (Y - I) + smooth
            score = 1.0 if num == 0 and den == 0 else num / max(den, eps)
            L = -math.log(max(score, eps)) if log_loss else 1 - score
            L = L ** gamma if L > 0 else 0.0
            kept = (classes is None or c in classes) and (include_background or c != 0)
            if absent == "exclude" and Y <= 0:
                kept = False
            w = (class_weight[c] if class_weight is not None else 1.0) if kept else 0.0
            out.append((w, L))
        rows.append(out)
    if reduction == "none":
        vals = [[w * L for w, L in r] for r in rows]
        return torch.tensor(vals[0] if not per_image else vals, dtype=torch.float64)
    total = sum(w * L for r in rows for w, L in r)
    if reduction == "sum":
        return torch.tensor(total, dtype=torch.float64)
    wsum = sum(w for r in rows for w, _ in r)
    return torch.tensor(total / wsum if wsum > 0 else 0.0, dtype=torch.float64)


SCORE_GRID = list(itertools.product(
    ["jaccard", "dice", "tversky"], [False, True], [1.0, 2.0], [0.0, 0.5],
    [None, [0.5, 2.0, 0.0, 1.0]], [None, [1, 3]], [True, False], [True, False],
    ["include", "exclude"], ["mean", "sum", "none"]))


@pytest.mark.parametrize("seed", range(2))
def test_loss_from_stats_matches_per_pair(seed):
    g = torch.Generator().manual_seed(seed)
    stats = torch.rand(3, 4, 3, generator=g, dtype=torch.float64) * 10
    stats[1, 2, 2] = 0  # an absent class
    stats[2, 0] = 0  # empty target and empty prediction
    # a valid I is at most min(P, Y)
    stats[..., 0] = torch.minimum(stats[..., 0], torch.minimum(stats[..., 1], stats[..., 2]))
    for (metric, log_loss, gamma, smooth, cw, classes, incl, per_image, absent,
         reduction) in SCORE_GRID:
        opts = dict(metric=metric, alpha=0.3, beta=0.8, gamma=gamma, log_loss=log_loss,
                    smooth=smooth, eps=1e-7, classes=classes, include_background=incl,
                    per_image=per_image, absent=absent, reduction=reduction)
        got = reference.loss_from_stats(
            stats, class_weight=None if cw is None else torch.tensor(cw, dtype=torch.float64),
            **opts)
        want = brute_force(stats, class_weight=cw, **opts)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=str(opts))
