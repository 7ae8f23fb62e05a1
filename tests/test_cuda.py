"""What only a GPU can show: CUDA-graph capture, the device-side assert, 64-bit indexing
(tensors of more than 2^31 elements) and stream semantics."""

import subprocess
import sys
import textwrap

import pytest
import torch

import softiou_cuda
from helpers import stats_function
from softiou_cuda import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

GPU_BACKENDS = [b for b in softiou_cuda.available_backends("cuda") if b != "reference"] \
    if torch.cuda.is_available() else []


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_capture(backend):
    """Forward and backward capture into a CUDA graph and replay on new data."""
    torch.manual_seed(0)
    N, C, H, W = 2, 5, 64, 96
    x = torch.randn(N, C, H, W, device="cuda", requires_grad=True)
    t = torch.randint(0, C, (N, H, W), device="cuda")
    w = torch.rand(N, H, W, device="cuda")

    def step():
        loss = softiou_cuda.soft_iou_loss(x, t, w, backend=backend, ignore_index=4)
        (g,) = torch.autograd.grad(loss, x)
        return loss, g

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss, static_grad = step()
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            x.copy_(torch.randn_like(x))
            t.copy_(torch.randint(0, C, t.shape, device="cuda"))
        graph.replay()
        eager_loss, eager_grad = step()
        assert torch.equal(static_loss, eager_loss)
        assert torch.equal(static_grad, eager_grad)


@pytest.mark.parametrize("mode,target,message", [
    ("multiclass", "torch.randint(0, 3, (2, 8, 8), device='cuda')",
     "softiou: target class index outside [0, C)"),
    ("multilabel", "torch.randint(0, 3, (2, 8, 8), device='cuda')",
     "softiou: target class index outside [0, C)"),
    # a full 64-pixel row of an int64 binary target whose bad value has 1 in its low half
    ("binary", "torch.randint(0, 2, (2, 1, 8, 64), device='cuda')",
     "softiou: binary/multilabel integer target not 0, 1 or ignore_index"),
], ids=["multiclass", "multilabel", "binary-int64-high"])
def test_bad_target_is_a_device_side_assert(mode, target, message):
    """In a process of its own: a device-side assert leaves the CUDA context unusable."""
    script = textwrap.dedent(f"""
        import torch, softiou_cuda
        t = {target}
        x = torch.randn(t.shape[0], 3 if t.dim() == 3 else 1, *t.shape[-2:], device="cuda")
        t[1, ..., 2, 3] = 7 if t.dim() == 3 else 2 ** 32 + 1
        softiou_cuda.soft_iou_loss(x, t, backend="cuda", mode="{mode}")
        torch.cuda.synchronize()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "device-side assert" in text, text[-2000:]
    assert message in text, text[-2000:]


def _reference_stats_in_slices(x, t, mode, step=1 << 25):
    total = 0
    for m0 in range(0, x.shape[-1], step):
        xs, ts = x[..., m0:m0 + step].double(), t[..., m0:m0 + step]
        total = total + reference.statistics(xs, ts, mode=mode)
    return total


@pytest.mark.xdist_group("large-gpu-memory")  # ~13 GB each: one at a time under pytest-xdist
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_more_than_2_31_elements(backend, mode):
    """64-bit indexing: float16 logits of 2^31 + 8192 elements (4 GiB) and their gradient."""
    torch.manual_seed(0)
    C = 2 if mode == "multiclass" else 1
    M = (2 ** 31 + 8192) // C
    x = torch.randn(1, C, M, device="cuda", dtype=torch.float16)
    if mode == "multiclass":
        t = (torch.rand(1, M, device="cuda") < 0.3).to(torch.uint8)
    else:
        t = (torch.rand(1, 1, M, device="cuda") < 0.3).to(torch.uint8)
    stats_fn = stats_function(backend)
    got = stats_fn(x, t, None, mode, True, 1.0, "product", None)
    want = _reference_stats_in_slices(x, t, mode)
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1.0)
    # the gradient at the end (flat index past 2^31) against the reference on that slice
    gs = torch.randn(1, C, 3, device="cuda")
    grad = torch.ops.softiou.stats_backward(gs, None, None, x, t, mode=mode, backend=backend)
    assert grad.shape == x.shape
    tail = slice(M - 4096, M)
    xt = x[..., tail].double().requires_grad_()
    ref_tail = (reference.statistics(xt, t[..., tail], mode=mode) * gs.double()).sum()
    (g_ref,) = torch.autograd.grad(ref_tail, xt)
    torch.testing.assert_close(grad[..., tail].double(), g_ref, rtol=1e-2, atol=1e-3)
    del grad


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_runs_on_the_current_stream(backend):
    torch.manual_seed(0)
    x = torch.randn(2, 7, 128, 128, device="cuda", requires_grad=True)
    t = torch.randint(0, 7, (2, 128, 128), device="cuda")
    base = softiou_cuda.soft_iou_loss(x, t, backend=backend)
    (g0,) = torch.autograd.grad(base, x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        loss = softiou_cuda.soft_iou_loss(x, t, backend=backend)
        (g1,) = torch.autograd.grad(loss, x)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    assert torch.equal(base, loss) and torch.equal(g0, g1)
