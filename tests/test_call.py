"""What one call of the loss is made of: the operator and its phases, no eager elementwise ops
around the kernels; the statistics pass and the finalize step forward, the gradient pass backward;
no warning; and the reference shares no code with the path it checks. (How long a call takes is
measured by the benchmark, not asserted here.)"""

import ast
import os
import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

import softiou_cuda
from conftest import CASES, is_interpreted
from helpers import loss_and_grad, make_inputs
from softiou_cuda import make_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# what a forward may run besides softiou's own ops: the allocation of its outputs
ALLOCATIONS = {"aten::empty", "aten::empty_strided"}


def dispatcher_ops(fn):
    """The names of the dispatcher ops ``fn`` runs (autograd engine events left out)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()
            if "::" in e.name and not e.name.startswith(("autograd::", "torch::autograd"))]


@pytest.mark.skipif(not softiou_cuda.operators.HAS_EXTENSION,
                    reason="the C++ extension is not built")
@pytest.mark.parametrize("options", [dict(), dict(per_image=False, reduction="none"),
                                     dict(metric="tversky", gamma=2.0, classes=[1, 2])],
                         ids=["defaults", "pooled-none", "tversky"])
def test_one_dispatcher_call_and_no_eager_ops(options):
    x, t, w = make_inputs("multiclass", "map-int64", torch.float32, "cpu", weight=True)
    softiou_cuda.soft_iou_loss(x, t, w, **options).sum().backward()  # warm-up
    x.grad = None
    forward = dispatcher_ops(lambda: softiou_cuda.soft_iou_loss(x, t, w, **options))
    assert forward[:3] == ["softiou::loss", "softiou::stats", "softiou::finalize"], forward
    assert set(forward[3:]) <= ALLOCATIONS, forward

    def step():
        x.grad = None
        softiou_cuda.soft_iou_loss(x, t, w, **options).sum().backward()
    both = dispatcher_ops(step)
    assert both.count("softiou::stats_backward") >= 1, both
    assert len(both) <= 16, both
    softiou_ops = [n for n in both if n.startswith("softiou::")]
    assert softiou_ops[:3] == ["softiou::loss", "softiou::stats", "softiou::finalize"], both


needs_extension = pytest.mark.skipif(not softiou_cuda.operators.HAS_EXTENSION,
                                     reason="the C++ extension is not built")

# options of every type the schema has, none at its default: strings, bools, floats, int[]?,
# int?, float?
EVERY_TYPE = dict(mode="multiclass", sharpness=1.5, intersection="min", metric="tversky",
                  alpha=0.3, beta=0.7, gamma=2.0, log_loss=True, smooth=0.25, eps=1e-5,
                  classes=(1, 3), include_background=False, ignore_index=2, per_image=False,
                  absent="zero", reduction="sum", ce_weight=0.5, label_smoothing=0.1,
                  squared=True, smooth_dr=0.5, weighted_mean=False)


@needs_extension
@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(
        not softiou_cuda.operators.has_cuda_kernels() or not torch.cuda.is_available(),
        reason="needs a GPU and the CUDA kernels"))])
@pytest.mark.parametrize("options", [{}, EVERY_TYPE, dict(mode="binary", ce_pos_weight=2.0,
                                                          ce_weight=1.0, smooth_dr=0.0)],
                         ids=["defaults", "every-type", "binary"])
def test_the_extension_binding_is_the_operator(options, device):
    """soft_iou_loss calls softiou::loss through the extension's own binding, _C.loss: the loss
    and gradient are bitwise those of torch.ops.softiou.loss with the same arguments."""
    mode = options.get("mode", "multiclass")
    kind = "map-int64" if mode == "multiclass" else "int64"
    x, t, w = make_inputs(mode, kind, torch.float32, device,
                          ignore_index=options.get("ignore_index"), weight=True)
    cw = torch.tensor([0.5, 1.0, 2.0, 1.5], device=device) if mode == "multiclass" else None
    opts = make_options(**options)
    a, ga = loss_and_grad(lambda xi, *args: softiou_cuda._C.loss(xi, *args, opts, "auto"), x, t,
                          w, cw)
    b, gb = loss_and_grad(lambda xi, *args: torch.ops.softiou.loss(xi, *args, *opts), x, t, w, cw)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    assert torch.equal(softiou_cuda.soft_iou_loss(x, t, w, class_weight=cw, **options), a)
    # a Parameter is passed on as a Tensor, as torch.ops' binding does
    p = torch.nn.Parameter(x.detach().clone())
    assert torch.equal(softiou_cuda._C.loss(p, t, w, cw, opts, "auto").detach(), a)


@needs_extension
def test_the_extension_binding_raises_what_the_operator_raises():
    x, t, _ = make_inputs("multiclass", "map-int64", torch.float32)
    opts = make_options()
    for bad in (t[:, :3], t.float(), torch.full_like(t, 9)):
        errors = []
        for call in (lambda: softiou_cuda._C.loss(x, bad, None, None, opts, "auto"),
                     lambda: torch.ops.softiou.loss(x, bad, None, None, *opts)):
            with pytest.raises(Exception) as info:
                call()
            errors.append((type(info.value), str(info.value)))
        assert errors[0] == errors[1] and errors[0][0] is ValueError, errors
        assert "target" in errors[0][1]


class _Tagged(torch.Tensor):
    """A tensor subclass with a __torch_function__, which sees every call it takes part in."""
    seen = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


class _Records:
    """A mode that records the functions it sees and calls them."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def _call(self, func, args, kwargs):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


class _Recording(_Records, TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self._call(func, args, kwargs)


@needs_extension
def test_what_the_extension_binding_leaves_to_torch_ops():
    """A tensor subclass with __torch_function__, a TorchFunctionMode, or an option of another
    type than the schema's: _C.loss returns NotImplemented, and soft_iou_loss calls torch.ops,
    whose binding hands the call to them; the loss is the same."""
    x, t, w = make_inputs("multiclass", "map-int64", torch.float32, weight=True)
    opts = make_options()
    want = softiou_cuda.soft_iou_loss(x, t, w).detach()

    tagged = x.detach().clone().as_subclass(_Tagged).requires_grad_()
    assert softiou_cuda._C.loss(tagged, t, w, None, opts, "auto") is NotImplemented
    _Tagged.seen.clear()
    loss = softiou_cuda.soft_iou_loss(tagged, t, w)
    assert torch.ops.softiou.loss.default in _Tagged.seen
    assert torch.equal(loss.detach().as_subclass(torch.Tensor), want)
    assert softiou_cuda._C.loss(x, t.as_subclass(_Tagged), None, None, opts,
                                "auto") is NotImplemented
    assert softiou_cuda._C.loss(x, t, w.as_subclass(_Tagged), None, opts,
                                "auto") is NotImplemented

    with _Recording() as mode:
        assert softiou_cuda._C.loss(x, t, w, None, opts, "auto") is NotImplemented
        loss = softiou_cuda.soft_iou_loss(x, t, w)
    assert torch.ops.softiou.loss.default in mode.seen and torch.equal(loss.detach(), want)

    for other in (opts._replace(sharpness=1), opts._replace(classes=[0, 1]),
                  opts._replace(from_logits=1), tuple(opts)[:-1]):
        assert softiou_cuda._C.loss(x, t, w, None, other, "auto") is NotImplemented
    assert softiou_cuda._C.loss(x, t, w, None, opts, 1) is NotImplemented
    assert torch.equal(torch.ops.softiou.loss(x, t, w, None, *opts._replace(sharpness=1)).detach(),
                       want)


class _RecordingDispatch(_Records, TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self._call(func, args, kwargs)


@needs_extension
def test_the_extension_binding_under_a_dispatch_mode():
    """A TorchDispatchMode is the dispatcher's (below autograd): _C.loss makes the call, with the
    GIL released, and the mode's Python runs inside it, as under torch.ops."""
    x, t, w = make_inputs("multiclass", "map-int64", torch.float32, weight=True)
    opts = make_options()
    want = torch.ops.softiou.loss(x, t, w, None, *opts).detach()
    with _RecordingDispatch() as mode:
        loss = softiou_cuda._C.loss(x, t, w, None, opts, "auto")
        assert loss is not NotImplemented
        loss.backward()
    assert torch.equal(loss.detach(), want)
    assert torch.ops.softiou.stats.default in mode.seen
    assert torch.ops.softiou.finalize.default in mode.seen
    assert torch.ops.softiou.stats_backward.default in mode.seen


class _CountingLauncher:
    def __init__(self, launcher, counts):
        self.launcher, self.counts = launcher, counts

    def __call__(self, kernel):
        launch = self.launcher(kernel)
        counts = self.counts

        class Grid:
            def __getitem__(self, grid):
                def run(*args, **kwargs):
                    counts.append(kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel))
                    return launch[grid](*args, **kwargs)
                return run
        return Grid()


@pytest.mark.skipif("triton" not in softiou_cuda.available_backends("cpu")
                    and "triton" not in softiou_cuda.available_backends("cuda"),
                    reason="the Triton backend does not run here")
def test_triton_launches(monkeypatch):
    """Forward: the statistics kernel, its second stage and the finalize kernel; backward: the
    gradient kernel."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tops = softiou_cuda.route.triton_ops()
    launches = []
    monkeypatch.setattr(tops, "_launcher", _CountingLauncher(tops._launcher, launches))
    x, t, w = make_inputs("multiclass", "map-int64", torch.float32, device, weight=True)
    loss = softiou_cuda.soft_iou_loss(x, t, w, backend="triton")
    assert launches == ["pixel_kernel", "reduce_kernel", "finalize_kernel"], launches
    launches.clear()
    loss.backward()
    assert launches == ["pixel_kernel"], launches


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("backend", [b for b in ("cuda", "triton")
                                     if torch.cuda.is_available()
                                     and b in softiou_cuda.available_backends("cuda")])
def test_gpu_kernel_launches(backend):
    """At most five kernel launches per forward+backward (statistics, second stage, finalize;
    the autograd engine's gradient seed; the gradient pass)."""
    x, t, _ = make_inputs("multiclass", "map-int64", torch.float32, "cuda", shape=(2, 19, 64, 64))
    softiou_cuda.soft_iou_loss(x, t, backend=backend).backward()  # compile / warm up
    torch.cuda.synchronize()
    x.grad = None
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        softiou_cuda.soft_iou_loss(x, t, backend=backend).backward()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    assert len(kernels) <= 5, [e.name for e in kernels]


def test_a_call_warns_nothing(case):
    device, backend = case
    x, t, w = make_inputs("multiclass", "map-int64", torch.float32, device, weight=True)
    module = softiou_cuda.SoftIoULoss(metric="dice", backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            softiou_cuda.soft_iou_loss(x, t, w, backend=backend).backward()
            module(x, t, w).backward()


def test_reference_shares_no_code_with_the_fused_path():
    """softiou_cuda.reference, the oracle, imports nothing of the package but the tie-aware
    min/max (which the fused backends do not use)."""
    with open(os.path.join(REPO, "softiou_cuda", "reference.py")) as f:
        tree = ast.parse(f.read())
    internal = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or
                                                 (node.module or "").startswith("softiou")):
            internal.add(node.module)
        elif isinstance(node, ast.Import):
            internal |= {a.name for a in node.names if a.name.startswith("softiou")}
    assert internal == {"_ties"}, internal
    fused = [os.path.join(REPO, "softiou_cuda", f)
             for f in ("api.py", "functional.py", "operators.py", "options.py", "route.py")]
    fused += [os.path.join(REPO, "triton_kernels", f) for f in ("inputs.py", "ops.py",
                                                                "kernels.py")]
    for path in fused:
        with open(path) as f:
            source = f.read()
        assert "_ties" not in source, path
