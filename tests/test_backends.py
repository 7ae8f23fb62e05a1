"""Every fused backend against the float64 reference: loss and gradient, for every option, mode,
target kind and dtype (SPEC sections 1-5)."""

import pytest
import torch

import softiou_cuda
from conftest import CASES, is_interpreted, is_triton
from helpers import (MODE_KINDS, TARGET_KINDS, assert_matches_reference, ignore_value,
                     make_inputs, takes_ignore)

# options that change the statistics, the part each backend computes
STATS_OPTIONS = [
    dict(),
    dict(intersection="min"),
    dict(from_logits=False),
    dict(from_logits=False, intersection="min"),
    dict(sharpness=2.5),
    dict(from_logits=False, sharpness=0.5),
    dict(from_logits=False, sharpness=2.0, intersection="min"),
    dict(squared=True),
    dict(squared=True, intersection="min"),
    dict(squared=True, from_logits=False, intersection="min"),
]


def _ids(options):
    return ",".join(f"{k}={v}" for k, v in options.items()) or "defaults"


def _statistics_params():
    """Every (backend, mode, target kind, options, dtype, weight, ignore_index) combination that
    applies (ignore_index where a target takes it); Triton (slow interpreted, compiling anew
    for each combination on a GPU) float32 only, and weight and ignore_index together or not
    at all."""
    params = []
    for device, backend in CASES:
        for mode, kind in MODE_KINDS:
            for options in STATS_OPTIONS:
                for dtype in (torch.float32, torch.float64):
                    for weighted, ignored in ((False, False), (True, True), (True, False),
                                              (False, True)):
                        if ignored and not takes_ignore(mode, kind):
                            continue
                        if is_triton(device, backend) and (dtype == torch.float64
                                                           or weighted != ignored):
                            continue
                        params.append(pytest.param(
                            device, backend, mode, kind, options, dtype, weighted, ignored,
                            id=f"{device}-{backend}-{mode}-{kind}-{_ids(options)}-"
                               f"{str(dtype)[6:]}-w{int(weighted)}-i{int(ignored)}"))
    return params


@pytest.mark.parametrize("device,backend,mode,kind,options,dtype,weighted,ignored",
                         _statistics_params())
def test_statistics_options(device, backend, mode, kind, options, dtype, weighted, ignored):
    ignore = ignore_value(kind) if ignored else None
    x, t, w = make_inputs(mode, kind, dtype, device, from_logits=options.get("from_logits", True),
                          ignore_index=ignore, weight=weighted)
    assert_matches_reference(x, t, w, backend, mode=mode, ignore_index=ignore, **options)


def _score_options(C):
    return [
        dict(metric="dice"),
        dict(metric="tversky", alpha=0.7, beta=0.3),
        dict(metric="tversky", alpha=1.0, beta=1.0),
        dict(log_loss=True),
        dict(gamma=2.0),
        dict(gamma=0.5, metric="dice"),
        dict(smooth=1.0),
        dict(eps=1e-3, smooth=0.5, log_loss=True),
        dict(per_image=False),
        dict(per_image=False, metric="dice", reduction="none"),
        dict(reduction="sum"),
        dict(reduction="none"),
        dict(absent="exclude"),
        dict(absent="exclude", per_image=False, reduction="sum"),
        dict(classes=[0] if C == 1 else [0, 2]),
        dict(include_background=False) if C > 1 else dict(classes=[0], reduction="none"),
        dict(class_weight=[0.5] if C == 1 else [0.5, 1.0, 2.0, 0.0]),
        dict(class_weight=[2.0] if C == 1 else [1.0, 0.0, 3.0, 1.0], absent="exclude",
             classes=[0] if C == 1 else [1, 2, 3]),
        # SPEC section 10
        dict(smooth=0.5, smooth_dr=2.0),
        dict(smooth=1.0, smooth_dr=0.0, metric="tversky", alpha=0.2, beta=0.9),
        dict(absent="zero", metric="tversky", alpha=1.0, beta=1.0, per_image=False),
        dict(absent="zero", reduction="none", log_loss=True),
        dict(weighted_mean=False, class_weight=[0.5] if C == 1 else [0.5, 1.0, 2.0, 0.0]),
        dict(weighted_mean=False, classes=[0] if C == 1 else [1, 3], absent="exclude"),
        dict(metric="generalized_dice"),
        dict(metric="generalized_dice", w_type="simple", reduction="none", smooth=0.1),
        dict(metric="generalized_dice", w_type="uniform", per_image=False, reduction="none"),
        dict(metric="generalized_dice", per_image=False, gamma=2.0, smooth_dr=1e-5,
             classes=[0] if C == 1 else [1, 2, 3]),
        dict(metric="generalized_dice", log_loss=True, reduction="sum",
             **({} if C == 1 else dict(include_background=False))),
    ]


N_SCORE_OPTIONS = len(_score_options(4))
SCORE_CASES = [(m, k, i) for m, k in [("multiclass", "map-int64"), ("binary", "int64"),
                                      ("multilabel", "float")] for i in range(N_SCORE_OPTIONS)]


@pytest.mark.parametrize("mode,kind,index", SCORE_CASES,
                         ids=[f"{m}-{k}-{i}" for m, k, i in SCORE_CASES])
def test_score_and_reduction_options(case, mode, kind, index):
    device, backend = case
    C = 1 if mode == "binary" else 4
    options = dict(_score_options(C)[index])
    dtype = torch.float32 if is_interpreted(device, backend) else torch.float64
    if "class_weight" in options:
        options["class_weight"] = torch.tensor(options["class_weight"], dtype=dtype,
                                               device=device)
    x, t, w = make_inputs(mode, kind, dtype, device, shape=(3, 4, 6, 5), seed=index)
    if options.get("absent") in ("exclude", "zero") or options.get("metric") == "generalized_dice":
        if t.dtype.is_floating_point:
            t[0, 1:] = 0
        elif mode == "multiclass":
            t[0][t[0] == 3] = 0  # class 3 absent from image 0
        else:
            t[0] = 0
    assert_matches_reference(x, t, w, backend, mode=mode, **options)


LOWP_KINDS = [("multiclass", "map-int64"), ("multiclass", "soft-float"), ("multiclass", "map-uint8"),
              ("binary", "int64"), ("multilabel", "float"), ("multilabel", "bool")]


LOWP_OPTIONS = [dict(), dict(intersection="min"), dict(from_logits=False)]


@pytest.mark.parametrize("device,backend,mode,kind,dtype,options", [
    pytest.param(d, b, m, k, dt, o, id=f"{d}-{b}-{m}-{k}-{str(dt)[6:]}-{_ids(o)}")
    for d, b in CASES for m, k in LOWP_KINDS for dt in (torch.float16, torch.bfloat16)
    for o in LOWP_OPTIONS
    if not (is_interpreted(d, b) and dt == torch.bfloat16)])  # the interpreter has no bfloat16
def test_low_precision(device, backend, mode, kind, dtype, options):
    """flash-attention style: the fused error is within 2x of the reference's own error when it
    computes in that dtype."""
    x, t, w = make_inputs(mode, kind, dtype, device, shape=(2, 5, 16, 24),
                          from_logits=options.get("from_logits", True), weight=True)
    assert_matches_reference(x, t, w, backend, mode=mode, **options)


SHAPES = [(3, 4, 50), (2, 3, 4, 5, 6), (1, 2, 1, 1), (2, 3, 33, 17), (4, 2, 129)]


@pytest.mark.parametrize("shape", SHAPES, ids=["1d", "3d", "1px", "odd", "long1d"])
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_spatial_ranks(case, shape, mode):
    device, backend = case
    kind = TARGET_KINDS[mode][0]
    x, t, w = make_inputs(mode, kind, torch.float32, device, shape=shape, weight=True)
    assert_matches_reference(x, t, w, backend, mode=mode)


@pytest.mark.parametrize("shape", [(3, 40), (2, 6, 7), (2, 3, 4, 5)], ids=["1d", "2d", "3d"])
def test_binary_input_without_channel(case, shape):
    """Binary mode reads [N, *S] input as one channel."""
    device, backend = case
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g).to(device)
    t = (torch.rand(shape, generator=g) < 0.3).long().to(device)
    loss = softiou_cuda.soft_iou_loss(x, t, mode="binary", backend=backend, reduction="none")
    ref = softiou_cuda.reference.soft_iou_loss(x.double(), t, mode="binary", reduction="none")
    assert loss.shape == (shape[0], 1)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    # identical to the explicit channel
    explicit = softiou_cuda.soft_iou_loss(x.unsqueeze(1), t, mode="binary", backend=backend,
                                          reduction="none")
    torch.testing.assert_close(loss, explicit, rtol=0, atol=0)


def _layouts(x, t, w, device):
    """Strided variants of the same data: channels_last, a slice, a transposed view."""
    yield "channels_last", x.detach().contiguous(memory_format=torch.channels_last), t, w
    big = torch.zeros(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3], dtype=x.dtype,
                      device=device)
    big[..., ::2] = x.detach()
    yield "strided", big[..., ::2], t, w
    xt = x.detach().transpose(2, 3).contiguous().transpose(2, 3)
    tt = t.transpose(-2, -1).contiguous().transpose(-2, -1)
    wt = None if w is None else w.transpose(-2, -1).contiguous().transpose(-2, -1)
    yield "transposed", xt, tt, wt


@pytest.mark.parametrize("mode,kind", [("multiclass", "map-int64"), ("multiclass", "soft-float"),
                                       ("multilabel", "int64")], ids=["map", "soft", "multilabel"])
def test_memory_layouts(case, mode, kind):
    device, backend = case
    x, t, w = make_inputs(mode, kind, torch.float32, device, shape=(2, 3, 6, 10), weight=True)
    for name, xs, ts, ws in _layouts(x, t, w, device):
        loss, grad = assert_matches_reference(xs, ts, ws, backend, mode=mode)
        if backend != "triton" and name == "channels_last":
            # the gradient keeps the input's layout
            assert grad.is_contiguous(memory_format=torch.channels_last), name


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
@pytest.mark.parametrize("magnitude", [1e2, 1e4])
def test_large_logits_are_stable(case, mode, magnitude):
    """SPEC section 2: no NaN or Inf for |x| up to 1e4."""
    device, backend = case
    kind = TARGET_KINDS[mode][0]
    x, t, w = make_inputs(mode, kind, torch.float32, device, shape=(2, 4, 8, 8), scale=magnitude)
    for sharpness in (1.0, 3.0):
        assert_matches_reference(x, t, w, backend, mode=mode, sharpness=sharpness)


def test_many_classes(case):
    """More classes than one CUDA lane group holds in registers (C > 256): the windowed path."""
    device, backend = case
    x, t, w = make_inputs("multiclass", "map-int64", torch.float32, device, shape=(2, 300, 3, 5),
                          weight=True, ignore_index=-1)
    assert_matches_reference(x, t, w, backend, mode="multiclass", ignore_index=-1)
    x, t, w = make_inputs("multiclass", "soft-float", torch.float32, device, shape=(1, 520, 2, 3))
    assert_matches_reference(x, t, w, backend, mode="multiclass", intersection="min")
