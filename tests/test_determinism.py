"""Deterministic: the same inputs give bitwise the same loss and gradient, run to run, and on the
CPU for any number of threads (fixed-order two-stage reductions, no float atomics)."""

import pytest
import torch

import softiou_cuda
from conftest import is_interpreted
from helpers import make_inputs

KINDS = [("multiclass", "map-int64"), ("multiclass", "soft-float"), ("multilabel", "int64")]


def _run(x, t, w, backend, mode):
    x = x.detach().requires_grad_()
    loss = softiou_cuda.soft_iou_loss(x, t, w, mode=mode, backend=backend, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss, g


@pytest.mark.parametrize("mode,kind", KINDS, ids=[m + "-" + k for m, k in KINDS])
def test_bitwise_repeatable(case, mode, kind):
    device, backend = case
    shape = (2, 5, 12, 20) if is_interpreted(device, backend) else (3, 7, 96, 160)
    x, t, w = make_inputs(mode, kind, torch.float32, device, shape=shape, weight=True)
    first = _run(x, t, w, backend, mode)
    for _ in range(3):
        again = _run(x, t, w, backend, mode)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.skipif(not softiou_cuda.operators.HAS_EXTENSION, reason="extension not built")
@pytest.mark.parametrize("mode,kind", KINDS, ids=[m + "-" + k for m, k in KINDS])
def test_cpu_threads_do_not_change_bits(mode, kind):
    """The items are cut by the shape alone: 1 and 2 threads add the same partial sums in the
    same order."""
    x, t, w = make_inputs(mode, kind, torch.float32, "cpu", shape=(3, 7, 150, 200), weight=True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(x, t, w, "cpu", mode)
        torch.set_num_threads(2)
        two = _run(x, t, w, "cpu", mode)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
