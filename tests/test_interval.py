"""Interval (span) IoU losses, SPEC section 6."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import DEVICES
from softiou_cuda import IntervalIoULoss, interval_iou_loss

VARIANTS = ["iou", "giou", "diou"]


def naive(ps, pe, ts, te, variant, inclusive):
    """The plain formula with torch.minimum / torch.maximum (valid spans only)."""
    one = 1.0 if inclusive else 0.0
    inter = (torch.minimum(pe, te) - torch.maximum(ps, ts) + one).clamp_min(0)
    union = (pe - ps + one) + (te - ts + one) - inter
    loss = 1 - inter / union
    enclose = torch.maximum(pe, te) - torch.minimum(ps, ts) + one
    if variant == "giou":
        loss = loss + (enclose - union) / enclose
    elif variant == "diou":
        loss = loss + ((ps + pe) / 2 - (ts + te) / 2) ** 2 / enclose ** 2
    return loss


def _leaf(values, device="cpu", dtype=torch.float64):
    return torch.tensor(values, dtype=dtype, device=device, requires_grad=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("span", [(5.0, 5.0), (2.0, 4.0)])
def test_spec_zero_gradient_at_the_optimum(device, variant, span):
    """inclusive: pred (5,5) vs target (5,5) and (2,4) vs (2,4): loss 0, gradient 0."""
    ps, pe = _leaf([span[0]], device), _leaf([span[1]], device)
    ts, te = torch.tensor([span[0]], device=device), torch.tensor([span[1]], device=device)
    loss = interval_iou_loss(ps, pe, ts, te, variant=variant, inclusive=True)
    gs, ge = torch.autograd.grad(loss, (ps, pe))
    assert loss.item() == 0.0
    assert gs.item() == 0.0 and ge.item() == 0.0


@pytest.mark.parametrize("span,expected", [((5.0, 5.0), -0.5), ((2.0, 4.0), -1 / 6)])
def test_a_plain_formulation_has_a_gradient_at_its_minimum(span, expected):
    """What the tie convention fixes. A common formulation: the intersection with
    torch.minimum/torch.maximum and the union as the hull with torch.max/torch.min over the
    pair; at pred == target its gradient is -0.5 (a point span) and -1/6 (a span of length 2),
    not 0."""
    ps, pe = _leaf([span[0]]), _leaf([span[1]])
    ts, te = torch.tensor([span[0]], dtype=torch.float64), torch.tensor([span[1]],
                                                                         dtype=torch.float64)
    inter = (torch.minimum(pe, te) - torch.maximum(ps, ts) + 1).clamp(min=0)
    hull = torch.stack([pe, te]).max(0).values - torch.stack([ps, ts]).min(0).values + 1
    (g,) = torch.autograd.grad((1 - inter / hull).sum(), ps)
    assert abs(g.item() - expected) < 1e-12
    ours = interval_iou_loss(ps, pe, ts, te, inclusive=True)
    assert torch.autograd.grad(ours, ps)[0].item() == 0.0


def _valid_spans(n, seed, inclusive):
    g = torch.Generator().manual_seed(seed)
    ps = torch.rand(n, generator=g, dtype=torch.float64) * 10
    pe = ps + torch.rand(n, generator=g, dtype=torch.float64) * 5 + 0.1
    ts = torch.rand(n, generator=g, dtype=torch.float64) * 10
    te = ts + torch.rand(n, generator=g, dtype=torch.float64) * 5 + 0.1
    return ps, pe, ts, te


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("inclusive", [False, True])
def test_agrees_with_the_plain_formula_away_from_ties(variant, inclusive):
    ps, pe, ts, te = _valid_spans(200, 0, inclusive)
    a = [v.clone().requires_grad_() for v in (ps, pe)]
    b = [v.clone().requires_grad_() for v in (ps, pe)]
    ours = interval_iou_loss(a[0], a[1], ts, te, variant=variant, inclusive=inclusive,
                             reduction="none")
    plain = naive(b[0], b[1], ts, te, variant, inclusive)
    torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    g_ours = torch.autograd.grad(ours.sum(), a)
    g_plain = torch.autograd.grad(plain.sum(), b)
    for x, y in zip(g_ours, g_plain):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("inclusive", [False, True])
def test_gradcheck_off_ties(variant, inclusive):
    ps, pe, ts, te = _valid_spans(6, 1, inclusive)
    ps[0], pe[0] = 9.0, 2.0  # a degenerate prediction too
    inputs = (ps.requires_grad_(), pe.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda s, e: interval_iou_loss(s, e, ts, te, variant=variant, inclusive=inclusive,
                                       reduction="none"), inputs)


finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(st.lists(st.tuples(finite, finite, finite, finite), min_size=1, max_size=8),
       st.sampled_from(VARIANTS), st.booleans(), st.sampled_from([torch.float32, torch.float16,
                                                                  torch.float64]))
def test_never_nan_for_finite_inputs(spans, variant, inclusive, dtype):
    vals = torch.tensor(spans, dtype=torch.float64)
    if dtype == torch.float16:
        vals = vals.clamp(-6e4, 6e4)
    ps, pe = (vals[:, i].to(dtype).requires_grad_() for i in (0, 1))
    ts, te = vals[:, 2].to(dtype), vals[:, 3].to(dtype)
    loss = interval_iou_loss(ps, pe, ts, te, variant=variant, inclusive=inclusive)
    gs, ge = torch.autograd.grad(loss, (ps, pe))
    assert torch.isfinite(loss) and torch.isfinite(gs).all() and torch.isfinite(ge).all()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("inclusive", [False, True])
def test_degenerate_prediction_is_pushed_back(variant, inclusive):
    """end < start: finite loss, and descending the gradient lowers start and raises end."""
    ps, pe = _leaf([7.0]), _leaf([3.0])
    ts, te = torch.tensor([2.0]), torch.tensor([9.0])
    loss = interval_iou_loss(ps, pe, ts, te, variant=variant, inclusive=inclusive)
    gs, ge = torch.autograd.grad(loss, (ps, pe))
    assert torch.isfinite(loss)
    assert gs.item() > 0 and ge.item() < 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_optimisation_drives_spans_onto_their_targets(device, variant):
    g = torch.Generator().manual_seed(0)
    ts = (torch.rand(64, generator=g, dtype=torch.float64) * 50).to(device)
    te = ts + (torch.rand(64, generator=g, dtype=torch.float64) * 20 + 2).to(device)
    if variant == "iou":  # plain IoU has no gradient without overlap: start overlapping
        ps = (ts + (te - ts) * 0.4).clone()
        pe = (te + 3).clone()
    else:  # GIoU / DIoU pull even disjoint (and inverted) spans
        ps = (torch.rand(64, generator=g, dtype=torch.float64) * 80).to(device)
        pe = (torch.rand(64, generator=g, dtype=torch.float64) * 80).to(device)
    ps.requires_grad_()
    pe.requires_grad_()
    # a short second-moment memory: the early gradients of far-off spans are large, the last
    # ones of a span that contains its target small
    opt = torch.optim.Adam([ps, pe], lr=0.5, betas=(0.9, 0.9))
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.01 ** (1 / 2500))
    for _ in range(2500):
        opt.zero_grad()
        interval_iou_loss(ps, pe, ts, te, variant=variant, inclusive=True,
                          reduction="sum").backward()
        opt.step()
        decay.step()
    assert (ps - ts).abs().max().item() < 0.02
    assert (pe - te).abs().max().item() < 0.02


@pytest.mark.parametrize("device", DEVICES)
def test_compiles_fullgraph(device):
    ps, pe, ts, te = (v.to(device) for v in _valid_spans(32, 3, True))
    module = IntervalIoULoss("diou", inclusive=True)
    eager = module(ps, pe, ts, te)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)(ps, pe, ts, te)
    torch.testing.assert_close(compiled, eager)


def test_bad_arguments():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="variant"):
        interval_iou_loss(x, x, x, x, variant="ciou")
    with pytest.raises(ValueError, match="reduction"):
        interval_iou_loss(x, x, x, x, reduction="avg")
    with pytest.raises(ValueError, match="pred_start must be a floating"):
        interval_iou_loss(x.long(), x, x, x)
    with pytest.raises(ValueError, match="broadcast"):
        interval_iou_loss(x, torch.zeros(2), x, x)
