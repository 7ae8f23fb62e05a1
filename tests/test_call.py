"""What one call of the loss is made of: the operator and its allocations, no eager elementwise
ops around the kernels; two kernel launches forward and one backward (the statistics pass with the
finalize step, then the gradient pass); no warning; and the reference shares no code with the path
it checks. (How long a call takes is measured by the benchmark, not asserted here.)"""

import ast
import os
import warnings

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import softiou_cuda
from conftest import CASES, is_interpreted
from helpers import make_inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# what a forward may run besides softiou's own ops: the allocation of its outputs
ALLOCATIONS = {"aten::empty", "aten::empty_strided"}


def dispatcher_ops(fn):
    """The names of the dispatcher ops ``fn`` runs (autograd engine events left out)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()
            if "::" in e.name and not e.name.startswith(("autograd::", "torch::autograd"))]


@pytest.mark.skipif(not softiou_cuda.ops.HAS_EXTENSION, reason="the C++ extension is not built")
@pytest.mark.parametrize("options", [dict(), dict(per_image=False, reduction="none"),
                                     dict(metric="tversky", gamma=2.0, classes=[1, 2])],
                         ids=["defaults", "pooled-none", "tversky"])
def test_one_dispatcher_call_and_no_eager_ops(options):
    x, t, w = make_inputs("multiclass", "map-int64", torch.float32, "cpu", weight=True)
    softiou_cuda.soft_iou_loss(x, t, w, **options).sum().backward()  # warm-up
    x.grad = None
    forward = dispatcher_ops(lambda: softiou_cuda.soft_iou_loss(x, t, w, **options))
    assert forward[:2] == ["softiou::loss", "softiou::_loss_forward"], forward
    assert set(forward[2:]) <= ALLOCATIONS, forward

    def step():
        x.grad = None
        softiou_cuda.soft_iou_loss(x, t, w, **options).sum().backward()
    both = dispatcher_ops(step)
    assert both.count("softiou::_loss_backward") >= 1, both
    assert len(both) <= 16, both
    softiou_ops = [n for n in both if n.startswith("softiou::")]
    assert softiou_ops[:2] == ["softiou::loss", "softiou::_loss_forward"], both


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
    """Forward: the statistics kernel and the finalize kernel; backward: the gradient kernel."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tops = softiou_cuda.backends.triton_ops()
    launches = []
    monkeypatch.setattr(tops, "_launcher", _CountingLauncher(tops._launcher, launches))
    x, t, w = make_inputs("multiclass", "map-int64", torch.float32, device, weight=True)
    loss = softiou_cuda.soft_iou_loss(x, t, w, backend="triton")
    assert launches == ["pixel_kernel", "finalize_kernel"], launches
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
    fused = [os.path.join(REPO, "softiou_cuda", f) for f in ("api.py", "checks.py", "ops.py")]
    fused += [os.path.join(REPO, "triton_kernels", f) for f in ("ops.py", "kernels.py")]
    for path in fused:
        with open(path) as f:
            source = f.read()
        assert "_ties" not in source, path
