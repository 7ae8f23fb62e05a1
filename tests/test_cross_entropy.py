"""SPEC section 9: the cross-entropy term computed in the same fused passes (``ce_weight``,
``label_smoothing``). The reference equals F.cross_entropy / F.binary_cross_entropy_with_logits
where the SPEC says it does; every fused backend equals the reference, loss and gradient, for
every mode, target kind, option and dtype; the operator passes opcheck, gradcheck and
torch.compile; bad values raise errors that name the argument."""

import pytest
import torch
import torch.nn.functional as F

import softiou_cuda
from conftest import CASES, DEVICES, is_interpreted, is_triton
from helpers import (LOW_PRECISION, MODE_KINDS, assert_matches_reference, ignore_value,
                     make_inputs, takes_ignore)
from softiou_cuda import reference


def _ce(x, t, w=None, mode="multiclass", sharpness=1.0, class_weight=None, ignore_index=None,
        label_smoothing=0.0, reduction="mean", ce_pos_weight=1.0):
    """The reference's cross-entropy term alone."""
    num, den = reference.cross_entropy_sums(x, t, w, mode, sharpness, class_weight,
                                            ignore_index, label_smoothing,
                                            ce_pos_weight=ce_pos_weight)
    return reference.cross_entropy_term(num, den, reduction)


# ---- the reference is torch's cross-entropy where the SPEC says so ----------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("sharpness", [1.0, 1.7])
def test_reference_is_torch_cross_entropy_for_a_class_map(reduction, smoothing, weighted,
                                                         sharpness):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, 6, generator=g, dtype=torch.float64)
    t = torch.randint(0, 5, (3, 4, 6), generator=g)
    t[0, :2] = -100
    cw = torch.rand(5, generator=g, dtype=torch.float64) + 0.2 if weighted else None
    want = F.cross_entropy(sharpness * x, t, weight=cw, ignore_index=-100,
                           label_smoothing=smoothing, reduction=reduction)
    got = _ce(x, t, sharpness=sharpness, class_weight=cw, ignore_index=-100,
              label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("weighted", [False, True])
def test_reference_is_torch_cross_entropy_for_probabilities(reduction, smoothing, weighted):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    y = torch.softmax(torch.randn(3, 5, 7, generator=g, dtype=torch.float64), dim=1)
    cw = torch.rand(5, generator=g, dtype=torch.float64) + 0.2 if weighted else None
    want = F.cross_entropy(x, y, weight=cw, label_smoothing=smoothing, reduction=reduction)
    got = _ce(x, y, class_weight=cw, label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("pos_weight", [1.0, 2.5, 0.3])
def test_reference_is_torch_bce_with_logits(mode, reduction, weighted, pos_weight):
    g = torch.Generator().manual_seed(2)
    C = 1 if mode == "binary" else 3
    x = torch.randn(2, C, 5, 4, generator=g, dtype=torch.float64) * 3
    y = torch.rand(2, C, 5, 4, generator=g, dtype=torch.float64)
    cw = torch.rand(C, generator=g, dtype=torch.float64) + 0.2 if weighted else None
    want = F.binary_cross_entropy_with_logits(
        1.5 * x, y, weight=None if cw is None else cw.view(1, C, 1, 1).expand_as(x),
        reduction=reduction, pos_weight=torch.tensor(pos_weight, dtype=torch.float64))
    got = _ce(x, y, mode=mode, sharpness=1.5, class_weight=cw, reduction=reduction,
              ce_pos_weight=pos_weight)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_the_loss_adds_the_weighted_term():
    x, t, w = make_inputs("multiclass", "map-int64", torch.float64, "cpu", ignore_index=-1)
    iou = reference.soft_iou_loss(x, t, ignore_index=-1)
    both = reference.soft_iou_loss(x, t, ignore_index=-1, ce_weight=0.7, label_smoothing=0.1)
    ce = F.cross_entropy(x, t, ignore_index=-1, label_smoothing=0.1)
    torch.testing.assert_close(both, iou + 0.7 * ce, rtol=1e-12, atol=1e-12)


# ---- every fused backend against the reference ------------------------------------------------
def _options(mode, C):
    cw = [0.5, 1.0, 2.0, 1.5][:C]
    opts = [
        dict(ce_weight=0.5),
        dict(ce_weight=1.0, reduction="sum", metric="dice"),
        dict(ce_weight=2.0, class_weight=cw, sharpness=1.5, per_image=False),
        dict(ce_weight=0.7, intersection="min", gamma=2.0, class_weight=cw, reduction="sum"),
    ]
    if mode == "multiclass":
        opts += [dict(ce_weight=0.3, label_smoothing=0.1),
                 dict(ce_weight=1.0, label_smoothing=0.2, class_weight=cw, reduction="sum")]
    else:  # SPEC section 10: pos_weight, with the squared sums
        opts += [dict(ce_weight=0.8, ce_pos_weight=3.0),
                 dict(ce_weight=0.5, ce_pos_weight=0.25, class_weight=cw, squared=True),
                 dict(ce_weight=0.6, intersection="min", squared=True)]
    return opts


def _params():
    params = []
    for device, backend in CASES:
        for mode, kind in MODE_KINDS:
            C = 1 if mode == "binary" else 4
            for i, options in enumerate(_options(mode, C)):
                for dtype in (torch.float32, torch.float64):
                    for weighted, ignored in ((False, False), (True, True)):
                        if ignored and not takes_ignore(mode, kind):
                            continue
                        if is_triton(device, backend) and (dtype == torch.float64 or i % 2):
                            continue
                        params.append(pytest.param(
                            device, backend, mode, kind, i, dtype, weighted, ignored,
                            id=f"{device}-{backend}-{mode}-{kind}-{i}-{str(dtype)[6:]}"
                               f"-w{int(weighted)}-i{int(ignored)}"))
    return params


@pytest.mark.parametrize("device,backend,mode,kind,index,dtype,weighted,ignored", _params())
def test_fused_cross_entropy(device, backend, mode, kind, index, dtype, weighted, ignored):
    C = 1 if mode == "binary" else 4
    options = dict(_options(mode, C)[index])
    if "class_weight" in options:
        options["class_weight"] = torch.tensor(options["class_weight"], dtype=dtype,
                                               device=device)
    ignore = ignore_value(kind) if ignored else None
    x, t, w = make_inputs(mode, kind, dtype, device, ignore_index=ignore, weight=weighted,
                          seed=index)
    assert_matches_reference(x, t, w, backend, mode=mode, ignore_index=ignore, **options)


LOWP = [("multiclass", "map-int64"), ("multiclass", "soft-float"), ("multilabel", "float"),
        ("binary", "int64")]


@pytest.mark.parametrize("device,backend,mode,kind,dtype", [
    pytest.param(d, b, m, k, dt, id=f"{d}-{b}-{m}-{k}-{str(dt)[6:]}")
    for d, b in CASES for m, k in LOWP for dt in LOW_PRECISION
    if not (is_interpreted(d, b) and dt == torch.bfloat16)])
def test_fused_cross_entropy_low_precision(device, backend, mode, kind, dtype):
    """flash-attention style: the fused error within 2x of the reference's own in that dtype."""
    x, t, w = make_inputs(mode, kind, dtype, device, shape=(2, 5, 16, 24), weight=True)
    smoothing = 0.1 if mode == "multiclass" else 0.0
    assert_matches_reference(x, t, w, backend, mode=mode, ce_weight=0.8,
                             label_smoothing=smoothing)


@pytest.mark.parametrize("magnitude", [1e2, 1e4])
def test_confident_logits_give_finite_large_cross_entropy(case, magnitude):
    """A confidently wrong pixel's cross-entropy is large and finite (log-sum-exp, not log of an
    underflowed probability)."""
    device, backend = case
    for mode, kind in (("multiclass", "map-int64"), ("multilabel", "int64")):
        x, t, w = make_inputs(mode, kind, torch.float32, device, shape=(2, 4, 8, 8),
                              scale=magnitude)
        assert_matches_reference(x, t, w, backend, mode=mode, ce_weight=1.0)


def test_zero_denominator_gives_connected_zero(case):
    """Every pixel ignored: the cross-entropy is 0 and stays connected to the graph."""
    device, backend = case
    x = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    t = torch.full((2, 4, 5), 255, dtype=torch.long, device=device)
    loss = softiou_cuda.soft_iou_loss(x, t, ignore_index=255, ce_weight=1.0, backend=backend,
                                      classes=[1], absent="exclude")
    assert loss.item() == 0.0 and loss.requires_grad
    (g,) = torch.autograd.grad(loss, x)
    assert torch.count_nonzero(g).item() == 0


# ---- the operator ----------------------------------------------------------------------------
@pytest.mark.skipif(not softiou_cuda.operators.HAS_EXTENSION,
                    reason="the C++ extension is not built")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,kind", [("multiclass", "map-int64"), ("multiclass", "soft-float"),
                                       ("multilabel", "int64")])
def test_opcheck_with_cross_entropy(device, mode, kind):
    x, t, w = make_inputs(mode, kind, torch.float32, device, weight=True)
    cw = torch.tensor([1.0, 2.0, 0.5, 1.0], device=device)
    smoothing = 0.1 if mode == "multiclass" else 0.0
    o = softiou_cuda.make_options(mode=mode, ce_weight=0.5, label_smoothing=smoothing)
    torch.library.opcheck(torch.ops.softiou.loss.default, (x, t, w, cw, *o))
    args = (x, t, w, cw, *softiou_cuda.options.stats_args(o))
    torch.library.opcheck(torch.ops.softiou.stats.default, args)
    stats, ce, _ = torch.ops.softiou.stats(x.detach(), *args[1:])
    torch.library.opcheck(torch.ops.softiou.stats_backward.default,
                          (torch.randn_like(stats), torch.randn_like(ce), None, x.detach(),
                           *args[1:]))


@pytest.mark.parametrize("device,backend", CASES, ids=[f"{d}-{b}" for d, b in CASES])
@pytest.mark.parametrize("mode,kind,options", [
    ("multiclass", "map-int64", dict(ce_weight=0.7, label_smoothing=0.2, ignore_index=-1)),
    ("multiclass", "soft-float", dict(ce_weight=1.3, label_smoothing=0.1, reduction="sum")),
    ("multilabel", "float", dict(ce_weight=0.4, sharpness=1.5)),
], ids=["map", "soft", "multilabel"])
def test_gradcheck_with_cross_entropy(device, backend, mode, kind, options):
    shape = (2, 3, 3, 4) if is_interpreted(device, backend) else (2, 4, 5, 6)
    x, t, w = make_inputs(mode, kind, torch.float64, device, shape=shape, weight=True,
                          ignore_index=options.get("ignore_index"))
    cw = torch.rand(shape[1], dtype=torch.float64, device=device) + 0.5
    assert torch.autograd.gradcheck(
        lambda x: softiou_cuda.soft_iou_loss(x, t, w, class_weight=cw, backend=backend,
                                             mode=mode, **options),
        (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device,backend",
                         [(d, b) for d, b in CASES if not is_interpreted(d, b)],
                         ids=[f"{d}-{b}" for d, b in CASES if not is_interpreted(d, b)])
def test_compile_fullgraph_with_cross_entropy(device, backend):
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 3, padding=1).to(device)
    img = torch.randn(2, 3, 12, 10, device=device)
    target = torch.randint(0, 4, (2, 12, 10), device=device)

    def step(model):
        return softiou_cuda.soft_iou_loss(model(img), target, ce_weight=0.5, label_smoothing=0.1,
                                          ignore_index=3, backend=backend)
    eager = step(net)
    eager_grads = torch.autograd.grad(eager, list(net.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)(net)
    grads = torch.autograd.grad(compiled, list(net.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


# ---- errors ----------------------------------------------------------------------------------
BAD = [
    (dict(ce_weight=-1.0), "ce_weight"),
    (dict(ce_weight=float("nan")), "ce_weight"),
    (dict(ce_weight=True), "ce_weight"),
    (dict(ce_weight=1.0, label_smoothing=1.0), "label_smoothing"),
    (dict(ce_weight=1.0, label_smoothing=-0.1), "label_smoothing"),
    (dict(ce_weight=1.0, from_logits=False), "from_logits"),
    (dict(ce_weight=1.0, reduction="none"), "reduction"),
    (dict(ce_weight=1.0, mode="multilabel", label_smoothing=0.1), "label_smoothing"),
]


@pytest.mark.parametrize("options,name", BAD, ids=[f"{n}{i}" for i, (_, n) in enumerate(BAD)])
def test_bad_cross_entropy_options(options, name):
    x = torch.rand(2, 3, 4, 5)
    t = torch.randint(0, 3, (2, 4, 5)) if options.get("mode", "multiclass") == "multiclass" \
        else torch.randint(0, 2, (2, 3, 4, 5))
    for fn in (softiou_cuda.soft_iou_loss, reference.soft_iou_loss):
        with pytest.raises(ValueError, match=name):
            fn(x, t, **options)


@pytest.mark.skipif(not softiou_cuda.operators.HAS_EXTENSION,
                    reason="the C++ extension is not built")
@pytest.mark.parametrize("options,name", [b for b in BAD if b[0].get("ce_weight") is not True],
                         ids=[f"{n}{i}" for i, (o, n) in enumerate(BAD) if o.get("ce_weight")
                              is not True])
def test_the_operator_checks_cross_entropy_options(options, name):
    x = torch.rand(2, 3, 4, 5)
    mode = options.get("mode", "multiclass")
    t = torch.randint(0, 3, (2, 4, 5)) if mode == "multiclass" else torch.randint(0, 2, (2, 3, 4, 5))
    with pytest.raises(ValueError, match=name):
        torch.ops.softiou.loss(x, t, **options)
