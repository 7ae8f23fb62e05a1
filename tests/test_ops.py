"""The operators as PyTorch operators: torch.library.opcheck, gradcheck in float64,
torch.compile(fullgraph=True), compiled autograd and the torch.func transforms against eager."""

import warnings

import pytest
import torch

import softiou_cuda
from conftest import CASE_IDS, CASES, DEVICES, is_interpreted
from helpers import make_inputs, stats_function

pytestmark = pytest.mark.skipif(not softiou_cuda.operators.HAS_EXTENSION,
                                reason="the C++ extension is not built")

OPCHECK_INPUTS = [
    ("multiclass", "map-int64", dict(), False, None),
    ("multiclass", "map-uint8", dict(intersection="min"), True, 255),
    ("multiclass", "soft-float", dict(from_logits=False, sharpness=2.0), True, None),
    ("binary", "int64", dict(), True, -1),
    ("multilabel", "bool", dict(sharpness=0.5, intersection="min"), False, None),
]
OPCHECK_IDS = [f"{m}-{k}" for m, k, *_ in OPCHECK_INPUTS]
TRITON_DEVICES = [d for d, b in CASES if b == "triton"]


def _stats_args(mode, kind, options, weighted, ignore, device, dtype=torch.float32, shape=(2, 4, 5, 7)):
    x, t, w = make_inputs(mode, kind, dtype, device, shape=shape,
                          from_logits=options.get("from_logits", True), weight=weighted,
                          ignore_index=ignore)
    if t.dim() == x.dim() - 1 and mode != "multiclass":
        t = t.unsqueeze(1)
    return (x, t, w, mode, options.get("from_logits", True), float(options.get("sharpness", 1.0)),
            options.get("intersection", "product"), ignore)


def _op_args(args):
    """softiou::stats' arguments from _stats_args's: (input, target, weight, class_weight,
    options...)."""
    return args[:3] + (None,) + args[3:]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,kind,options,weighted,ignore", OPCHECK_INPUTS, ids=OPCHECK_IDS)
def test_opcheck_stats(device, mode, kind, options, weighted, ignore):
    args = _op_args(_stats_args(mode, kind, options, weighted, ignore, device))
    torch.library.opcheck(torch.ops.softiou.stats.default, args)
    # a channels_last input keeps its layout through the backward op
    x = args[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.softiou.stats.default, (x,) + args[1:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,kind,options,weighted,ignore", OPCHECK_INPUTS, ids=OPCHECK_IDS)
def test_opcheck_stats_backward(device, mode, kind, options, weighted, ignore):
    args = _op_args(_stats_args(mode, kind, options, weighted, ignore, device))
    x = args[0].detach()
    grad = torch.randn(x.shape[0], x.shape[1], 3, device=device)
    torch.library.opcheck(torch.ops.softiou.stats_backward.default,
                          (grad, None, None, x) + args[1:])
    # the loss's form: coefficients shared by the samples, times a per-pair gradient
    coef = torch.randn(1, x.shape[1], 3, device=device)
    go = torch.randn(x.shape[0], x.shape[1], device=device)
    torch.library.opcheck(torch.ops.softiou.stats_backward.default,
                          (coef, None, go, x) + args[1:])


LOSS_KWARGS = [
    dict(),
    dict(metric="dice", per_image=False, reduction="none"),
    dict(metric="tversky", alpha=0.3, beta=0.7, gamma=2.0, log_loss=True, smooth=1.0),
    dict(classes=[1, 2], absent="exclude", reduction="sum", include_background=False),
    dict(squared=True, smooth=0.5, smooth_dr=1.0, absent="zero", weighted_mean=False),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction,per_image", [("none", True), ("none", False), ("mean", True)])
def test_opcheck_and_gradcheck_generalized_dice(device, reduction, per_image):
    """metric="generalized_dice" (SPEC section 10): one loss per row, its gradient through the
    C++ autograd against finite differences."""
    x, t, w = make_inputs("multiclass", "map-int64", torch.float64, device, weight=True,
                          ignore_index=-1)
    t[0][t[0] == 2] = 0  # an absent class: an infinite weight replaced
    kwargs = dict(metric="generalized_dice", reduction=reduction, per_image=per_image,
                  ignore_index=-1, w_type="square", smooth=1e-5)
    torch.library.opcheck(torch.ops.softiou.loss.default, (x, t, w), kwargs)
    assert torch.autograd.gradcheck(
        lambda x: softiou_cuda.soft_iou_loss(x, t, w, **kwargs), (x,), eps=1e-6, atol=1e-7,
        rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_multilabel_class_map_with_pos_weight(device):
    """A multilabel class map, squared sums, and the binary cross-entropy's pos_weight."""
    x, t, w = make_inputs("multilabel", "map-classes", torch.float64, device, weight=True,
                          ignore_index=-1)
    kwargs = dict(mode="multilabel", ignore_index=-1, squared=True, ce_weight=0.5,
                  ce_pos_weight=2.5)
    torch.library.opcheck(torch.ops.softiou.loss.default, (x, t, w), kwargs)
    assert torch.autograd.gradcheck(
        lambda x: softiou_cuda.soft_iou_loss(x, t, w, **kwargs), (x,), eps=1e-6, atol=1e-7,
        rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kwargs", LOSS_KWARGS, ids=range(len(LOSS_KWARGS)))
def test_opcheck_loss(device, kwargs):
    x, t, w = make_inputs("multiclass", "map-int64", torch.float32, device, weight=True,
                          ignore_index=-1)
    cw = torch.tensor([1.0, 2.0, 0.5, 1.0], device=device)
    torch.library.opcheck(torch.ops.softiou.loss.default, (x, t, w),
                          dict(kwargs, class_weight=cw, ignore_index=-1))


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("mode,kind,options,weighted,ignore", OPCHECK_INPUTS, ids=OPCHECK_IDS)
def test_opcheck_triton_ops(device, mode, kind, options, weighted, ignore):
    """The Triton backend's operators: triton_ops on a GPU, custom operators under the
    interpreter (triton_kernels/ops.py)."""
    from softiou_cuda.triton_kernels import ops as tops
    args = _op_args(_stats_args(mode, kind, options, weighted, ignore, device))
    torch.library.opcheck(tops.triton_stats, args)
    grad = torch.randn(args[0].shape[0], args[0].shape[1], 3, device=device)
    torch.library.opcheck(tops.triton_stats_backward,
                          (grad, None, None, args[0].detach()) + args[1:])


# the opcheck inputs, and those of logits again with the cross-entropy term
AUTOGRAD_INPUTS = [i + (0.0,) for i in OPCHECK_INPUTS] + [
    i + (0.5,) for i in OPCHECK_INPUTS if i[2].get("from_logits", True)]


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("mode,kind,options,weighted,ignore,ce_weight", AUTOGRAD_INPUTS,
                         ids=[f"{m}-{k}-ce{c}" for m, k, *_, c in AUTOGRAD_INPUTS])
def test_triton_stats_op_autograd(device, mode, kind, options, weighted, ignore, ce_weight):
    """softiou::triton_stats called directly differentiates as softiou::stats(backend="triton")
    does (bitwise: the same gradient pass), and against finite differences."""
    from softiou_cuda.triton_kernels import ops as tops
    args = _op_args(_stats_args(mode, kind, options, weighted, ignore, device, torch.float64,
                                (2, 3, 3, 4)))
    x, rest = args[0], args[1:]
    if ce_weight and mode == "multiclass":
        rest = rest[:2] + (torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64, device=device),) \
            + rest[3:]

    def sums(x):
        return tops.triton_stats(x, *rest, ce_weight=ce_weight)[:2]
    s, ce = sums(x)
    s2, ce2, _ = torch.ops.softiou.stats(x, *rest, ce_weight=ce_weight, backend="triton")
    assert torch.equal(s, s2) and torch.equal(ce, ce2)
    gs, gce = torch.randn_like(s), torch.randn_like(ce)
    grad, = torch.autograd.grad((s, ce), x, (gs, gce))
    expected, = torch.autograd.grad((s2, ce2), x, (gs, gce))
    assert torch.equal(grad, expected)
    assert torch.autograd.gradcheck(sums, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device,backend", CASES, ids=CASE_IDS)
def test_sums_without_the_cross_entropy_carry_no_gradient(device, backend):
    """Without the cross-entropy term its sums are constant zeros: a gradient given for them
    changes nothing (the gradient pass reads grad_ce only where the term is on)."""
    x, t, w = make_inputs("multiclass", "map-int64", torch.float64, device, shape=(2, 3, 3, 4),
                          weight=True)
    s, ce, _ = torch.ops.softiou.stats(x, t, w, backend=backend)
    assert not ce.any()
    gs = torch.randn_like(s)
    with_ce, = torch.autograd.grad((s, ce), x, (gs, torch.randn_like(ce)), retain_graph=True)
    alone, = torch.autograd.grad(s, x, gs)
    assert torch.equal(with_ce, alone)


GRADCHECK_INPUTS = [
    ("multiclass", "map-int64", dict(), True, -1),
    ("multiclass", "soft-float", dict(intersection="min"), True, None),
    ("multiclass", "soft-float", dict(from_logits=False, sharpness=1.7), False, None),
    ("multiclass", "map-int32", dict(from_logits=False), False, None),
    ("binary", "soft-float", dict(intersection="min", sharpness=0.6), True, None),
    ("multilabel", "int64", dict(from_logits=False, sharpness=2.5), True, -1),
    ("multilabel", "float", dict(from_logits=False), False, None),
]


@pytest.mark.parametrize("device,backend", CASES, ids=[f"{d}-{b}" for d, b in CASES])
@pytest.mark.parametrize("mode,kind,options,weighted,ignore", GRADCHECK_INPUTS,
                         ids=[f"{m}-{k}-{i}" for i, (m, k, *_) in enumerate(GRADCHECK_INPUTS)])
def test_gradcheck_stats(device, backend, mode, kind, options, weighted, ignore):
    """The statistics op's backward against finite differences, float64."""
    shape = (2, 3, 3, 4) if is_interpreted(device, backend) else (2, 4, 5, 6)
    args = _stats_args(mode, kind, options, weighted, ignore, device, torch.float64, shape)
    stats_fn = stats_function(backend)
    assert torch.autograd.gradcheck(lambda x: stats_fn(x, *args[1:]), (args[0],), eps=1e-6,
                                    atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_loss_op(device):
    x, t, w = make_inputs("multiclass", "map-int64", torch.float64, device, weight=True)
    assert torch.autograd.gradcheck(
        lambda x: torch.ops.softiou.loss(x, t, w, metric="dice", gamma=1.5, log_loss=True),
        (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_loss_op_is_the_api_loss():
    x, t, w = make_inputs("multiclass", "map-int64", torch.float64, "cpu", weight=True,
                          ignore_index=-1)
    opts = dict(metric="tversky", alpha=0.2, beta=0.9, classes=[0, 2], ignore_index=-1,
                per_image=False, reduction="none")
    a = torch.ops.softiou.loss(x, t, w, **opts)
    b = softiou_cuda.soft_iou_loss(x, t, w, backend="cpu", **opts)
    assert torch.equal(a, b)
    # binary input without a channel dim goes through the op too
    xb = torch.randn(3, 7, dtype=torch.float64)
    tb = (torch.rand(3, 7) > 0.5).long()
    assert torch.equal(torch.ops.softiou.loss(xb, tb, mode="binary"),
                       softiou_cuda.soft_iou_loss(xb, tb, mode="binary", backend="cpu"))


class TinyNet(torch.nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def _compiled_vs_eager(device, backend, use_op):
    """A training step's forward compiled with fullgraph=True (no graph break) against eager:
    the same loss and the same parameter gradients (the backward graph holds the fused
    backward op)."""
    torch.manual_seed(0)
    net = TinyNet().to(device)
    img = torch.randn(2, 3, 16, 16, device=device)
    target = torch.randint(0, 4, (2, 16, 16), device=device)
    weight = torch.rand(2, 16, 16, device=device)

    def forward(model):
        logits = model(img)
        if use_op:
            loss = torch.ops.softiou.loss(logits, target, weight, ignore_index=3, metric="dice")
        else:
            loss = softiou_cuda.soft_iou_loss(logits, target, weight, ignore_index=3,
                                              metric="dice", backend=backend)
        return loss + 0.1 * torch.nn.functional.cross_entropy(logits, target)

    def grads_of(loss):
        net.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in net.parameters()]

    eager_loss = forward(net)
    eager_grads = grads_of(eager_loss)
    torch._dynamo.reset()
    loss = torch.compile(forward, fullgraph=True)(net)
    grads = grads_of(loss)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device,backend",
                         [(d, b) for d, b in CASES if not is_interpreted(d, b)],
                         ids=[f"{d}-{b}" for d, b in CASES if not is_interpreted(d, b)])
def test_compile_fullgraph_matches_eager(device, backend):
    _compiled_vs_eager(device, backend, use_op=False)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_loss_op(device):
    _compiled_vs_eager(device, "auto", use_op=True)


@pytest.mark.parametrize("device,backend",
                         [(d, b) for d, b in CASES if not is_interpreted(d, b)],
                         ids=[f"{d}-{b}" for d, b in CASES if not is_interpreted(d, b)])
@pytest.mark.parametrize("dynamic", [None, True], ids=["auto", "dynamic"])
def test_compile_fullgraph_with_changing_float_options(device, backend, dynamic):
    """A float option that changes between the calls of a compiled step (a schedule of
    ce_weight or sharpness) is symbolic to Dynamo from its second value on, and every float is
    with dynamic=True (shapes too): the options' checks trace without a graph break and each
    call has eager's loss and gradient."""
    x = torch.randn(2, 4, 6, 5, device=device, requires_grad=True)
    t = torch.randint(0, 4, (2, 6, 5), device=device)

    def step(x, t, lam, a):
        return softiou_cuda.soft_iou_loss(x, t, ce_weight=lam, sharpness=a, metric="dice",
                                          ignore_index=3, backend=backend)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for lam, a, n in ((0.5, 1.0, 2), (0.25, 1.5, 2), (0.125, 2.0, 3)):
        xs, ts = x[:, :, :n], t[:, :n]
        got, want = compiled(xs, ts, lam, a), step(xs, ts, lam, a)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(torch.autograd.grad(got, x)[0],
                                   torch.autograd.grad(want, x)[0], rtol=1e-5, atol=1e-7)


def _pooled_loss(x, t, reduction):
    """The pooled path's operators: statistics, their batch sum, the finalize step."""
    stats, _, _ = torch.ops.softiou.stats(x, t, None, None, "multiclass", True, 1.0, "product", 1)
    return torch.ops.softiou.finalize(stats.sum(0, keepdim=True), None, per_image=False,
                                      reduction=reduction, metric="dice", classes=[0, 2])[0]


COMPILED_AUTOGRAD_LOSSES = {
    "loss": lambda x, t, cw, backend: softiou_cuda.soft_iou_loss(
        x, t, class_weight=cw, classes=[0, 2], ignore_index=1, ce_weight=0.3, sharpness=1.5,
        per_image=False, smooth_dr=0.5, backend=backend),
    "loss-none": lambda x, t, cw, backend: softiou_cuda.soft_iou_loss(
        x, t, metric="tversky", alpha=0.2, reduction="none", backend=backend).sum(),
    "pooled-none": lambda x, t, cw, backend: _pooled_loss(x, t, "none").sum(),
    "pooled-mean": lambda x, t, cw, backend: _pooled_loss(x, t, "mean"),
}
# the loss on every backend that torch.compile can trace; the pooled path's operators per device
COMPILED_AUTOGRAD_CASES = (
    [(d, b, name) for d, b in CASES if not is_interpreted(d, b) for name in ("loss", "loss-none")]
    + [(d, "auto", name) for d in DEVICES for name in ("pooled-none", "pooled-mean")])


@pytest.mark.parametrize("device,backend,name", COMPILED_AUTOGRAD_CASES,
                         ids=["-".join(c) for c in COMPILED_AUTOGRAD_CASES])
def test_compiled_autograd_takes_the_eager_nodes(device, backend, name):
    """torch._dynamo.config.compiled_autograd: a compiled step's backward captures the whole
    autograd graph, the nodes of a loss computed in eager included (the C++ nodes' saved
    options are hashed as constants); the gradient is eager autograd's, bit for bit."""
    torch.manual_seed(0)
    dtype = torch.float32 if backend == "triton" else torch.float64
    x = torch.randn(2, 3, 6, 5, device=device, dtype=dtype, requires_grad=True)
    t = torch.randint(0, 3, (2, 6, 5), device=device)
    cw = torch.tensor([1.0, 2.0, 0.5], device=device, dtype=dtype)
    loss_fn = COMPILED_AUTOGRAD_LOSSES[name]
    (want,) = torch.autograd.grad(loss_fn(x * 1.0, t, cw, backend), x)
    eager_loss = torch._dynamo.disable(loss_fn)

    def step(x):
        loss = eager_loss(x * 1.0, t, cw, backend)
        loss.backward()
        return loss.detach()

    torch._dynamo.reset()
    with torch._dynamo.config.patch(compiled_autograd=True):
        torch.compile(step, backend="aot_eager")(x)
    assert torch.equal(x.grad, want)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_func_transforms(device):
    """torch.func.grad, vjp and jacrev of the fused loss give eager autograd's gradient, bit for
    bit; vmap(grad) gives per-sample gradients, each that of its sample alone, with no warning;
    a second derivative, or a gradient with respect to the weight, is refused as in eager."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 6, 5, device=device, dtype=torch.float64)
    t = torch.randint(0, 3, (3, 6, 5), device=device)
    w = torch.rand(3, 6, 5, device=device, dtype=torch.float64)
    kwargs = dict(classes=[0, 2], ce_weight=0.3, ignore_index=1, metric="dice")

    def loss(x, t=t, w=w):
        return softiou_cuda.soft_iou_loss(x, t, w, **kwargs)

    def eager_grad(x, t=t, w=w):
        x = x.clone().requires_grad_()
        return torch.autograd.grad(loss(x, t, w), x)[0]

    want = eager_grad(x)
    assert torch.equal(torch.func.grad(loss)(x), want)
    one = torch.ones((), device=device, dtype=torch.float64)
    assert torch.equal(torch.func.vjp(loss, x)[1](one)[0], want)
    assert torch.equal(torch.func.jacrev(loss)(x), want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per_sample = torch.func.vmap(torch.func.grad(
            lambda xi, ti, wi: loss(xi[None], ti[None], wi[None])))(x, t, w)
    for i in range(3):
        assert torch.equal(per_sample[i], eager_grad(x[i:i + 1], t[i:i + 1], w[i:i + 1])[0])
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.func.grad(lambda x: torch.func.grad(loss)(x).sum())(x)
    with pytest.raises(ValueError, match="weight requires grad"):
        torch.func.grad(lambda w: loss(x, t, w))(w)


def test_grad_fn_names_the_operator():
    """A loss prints with its node's name: grad_fn=<CppNode<SoftiouLoss>>."""
    x, t, _ = make_inputs("multiclass", "map-int64", torch.float32, "cpu")
    assert "grad_fn=<CppNode<SoftiouLoss>>" in repr(softiou_cuda.soft_iou_loss(x, t))
    stats = torch.rand(2, 4, 3, requires_grad=True)
    assert "grad_fn=<CppNode<SoftiouFinalize>>" in repr(torch.ops.softiou.finalize(stats)[0])
    assert "grad_fn=<CppNode<SoftiouStats>>" in repr(torch.ops.softiou.stats(x, t)[0])


# ---- the loss operator's phases: stats, finalize, stats_backward ------------------------------
def _loss_args(device, dtype=torch.float32, reduction="mean", per_image=True, ce_weight=0.0):
    x, t, w = make_inputs("multiclass", "map-int64", dtype, device, weight=True, ignore_index=-1)
    o = softiou_cuda.make_options(metric="dice", gamma=1.5, classes=[0, 2, 3],
                                  ignore_index=-1, per_image=per_image, reduction=reduction,
                                  ce_weight=ce_weight)
    cw = torch.tensor([1.0, 2.0, 0.5, 1.0], device=device, dtype=dtype)
    return x, t, w, cw, o


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction,per_image,ce_weight", [
    ("mean", True, 0.0), ("none", True, 0.0), ("none", False, 0.0), ("sum", False, 0.0),
    ("mean", True, 0.5)])
def test_opcheck_loss_phases(device, reduction, per_image, ce_weight):
    """The loss with its options positional, in schema order, and each of its phases as the loss
    calls them: the statistics (with the cross-entropy's sums), the finalize step (options by
    name and positional), the gradient pass from the finalize step's coefficients and the loss's
    gradient."""
    x, t, w, cw, o = _loss_args(device, reduction=reduction, per_image=per_image,
                                ce_weight=ce_weight)
    xd = x.detach()
    torch.library.opcheck(torch.ops.softiou.loss.default, (x, t, w, cw, *o))
    stats_args = softiou_cuda.options.stats_args(o)
    torch.library.opcheck(torch.ops.softiou.stats.default, (x, t, w, cw, *stats_args))
    stats, ce, _ = torch.ops.softiou.stats(xd, t, w, cw, *stats_args)
    fin = {k: getattr(o, k) for k in softiou_cuda.options.FINALIZE_FIELDS}
    stats_g, ce_g = stats.clone().requires_grad_(), ce.clone().requires_grad_()
    torch.library.opcheck(torch.ops.softiou.finalize.default, (stats_g, ce_g, cw), fin)
    torch.library.opcheck(torch.ops.softiou.finalize.default,
                          (stats, ce, cw, *softiou_cuda.options.finalize_args(o)))
    loss, coef, ce_coef = torch.ops.softiou.finalize(stats, ce, cw, **fin)
    grad = torch.randn_like(loss)
    torch.library.opcheck(torch.ops.softiou.stats_backward.default,
                          (coef, ce_coef if ce_weight > 0 else None, grad, xd, t, w, cw,
                           *stats_args))


GRADCHECK_LOSS_OPTIONS = [
    dict(),
    dict(reduction="none"),
    dict(per_image=False, reduction="none", metric="tversky", alpha=0.2, beta=0.9),
    dict(per_image=False, log_loss=True, smooth=0.5),
    dict(reduction="sum", gamma=2.0, classes=[1, 3], absent="exclude"),
    dict(include_background=False, intersection="min", metric="dice"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", GRADCHECK_LOSS_OPTIONS, ids=range(len(GRADCHECK_LOSS_OPTIONS)))
def test_gradcheck_loss_options(device, options):
    """The C++ autograd of softiou::loss against finite differences, float64: every reduction,
    pooled and per image (the gradient pass reads the gradient of each output element)."""
    x, t, w = make_inputs("multiclass", "map-int64", torch.float64, device, weight=True)
    cw = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(
        lambda x: softiou_cuda.soft_iou_loss(x, t, w, class_weight=cw, backend="auto",
                                             **options),
        (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_finalize_op(device):
    """softiou::finalize's backward (coefficients times the gradient) against finite
    differences, including d/dY, which the statistics' backward does not use."""
    g = torch.Generator().manual_seed(0)
    stats = (torch.rand(3, 4, 3, generator=g, dtype=torch.float64) * 5 + 0.5).to(device)
    stats[..., 0] = torch.minimum(stats[..., 0], stats[..., 1:].amin(-1))
    for kwargs in (dict(), dict(per_image=False, reduction="none", metric="dice"),
                   dict(reduction="none", gamma=2.0, log_loss=True, classes=[0, 3])):
        assert torch.autograd.gradcheck(
            lambda s: torch.ops.softiou.finalize(s, None, **kwargs)[0],
            (stats.clone().requires_grad_(),), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_loss_op_in_inference_mode():
    """Inference tensors skip autograd: the op's CPU kernel computes the loss alone."""
    x, t, w = make_inputs("multiclass", "map-int64", torch.float64, "cpu", weight=True)
    want = softiou_cuda.soft_iou_loss(x.detach(), t, w, metric="dice")
    with torch.inference_mode():
        got = torch.ops.softiou.loss(x.detach().clone(), t.clone(), w.clone(), metric="dice")
        got_fin = torch.ops.softiou.finalize(
            torch.ops.softiou.stats(x.detach().clone(), t.clone(), w.clone())[0],
            metric="dice")[0]
    assert torch.equal(got, want) and torch.equal(got_fin, want)


def test_double_backward_is_refused():
    """The loss is differentiable once: asking for its second derivative is an error, while a
    first derivative with create_graph=True is allowed."""
    x, t, w = make_inputs("multiclass", "map-int64", torch.float64, "cpu")
    (g,) = torch.autograd.grad(softiou_cuda.soft_iou_loss(x, t), x, create_graph=True)
    want = torch.autograd.grad(softiou_cuda.soft_iou_loss(x, t), x)[0]
    assert torch.equal(g.detach(), want)
    with pytest.raises(RuntimeError, match="differentiable once"):
        g.sum().backward()


def test_class_weight_that_requires_grad_is_refused():
    x, t, _ = make_inputs("multiclass", "map-int64", torch.float32, "cpu")
    cw = torch.ones(4, requires_grad=True)
    with pytest.raises(ValueError, match="class_weight requires grad"):
        softiou_cuda.soft_iou_loss(x, t, class_weight=cw)


class LossModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.loss = softiou_cuda.SoftIoULoss(metric="dice", ignore_index=3, classes=[0, 1, 2],
                                             class_weight=[1.0, 2.0, 0.5, 1.0])

    def forward(self, img, target, weight):
        return self.loss(self.conv(img), target, weight)


def test_torch_export_keeps_the_operator():
    """torch.export traces the module into a graph that holds softiou::loss (its fake kernel
    gives the shapes) and runs the same as eager."""
    torch.manual_seed(0)
    module = LossModule()
    args = (torch.randn(2, 3, 12, 10), torch.randint(0, 4, (2, 12, 10)), torch.rand(2, 12, 10))
    exported = torch.export.export(module, args)
    assert any(node.target == torch.ops.softiou.loss.default
               for node in exported.graph.nodes), exported.graph
    torch.testing.assert_close(exported.module()(*args), module(*args), rtol=0, atol=0)
