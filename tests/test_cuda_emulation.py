"""The CUDA kernels' code on the CPU (tools/cuda_emulation.py; what it checks and what it cannot:
csrc/cuda/emulation/emulation.h).

The backend grids of the other files run the emulated kernels as the case "cpu-cuda" on their
small inputs, where a sample is one block's one iteration. Here: inputs of several blocks per
sample and several iterations per block, with and without tails and 16-byte groups, the general
and the basic kernels, the wide softmax's class windows, the hard counts, another multiprocessor
count (another cut into blocks), against the float64 reference; and the rewriting of the CUDA
sources the emulation compiles.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys

import pytest
import torch

import softiou_cuda
from conftest import CUDA_EMULATED
from helpers import assert_matches_reference, fused_loss_and_grad, make_inputs
from softiou_cuda import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import cuda_emulation  # noqa: E402

needs_emulation = pytest.mark.skipif(not CUDA_EMULATED,
                                     reason="the emulation runs where no GPU is present")

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]

# (options, weighted, ignore_index): the basic kernels (a class map, the default options), with
# the cross-entropy, and the general kernel's options
PIXEL_OPTIONS = [
    (dict(), False, None),
    (dict(ce_weight=1.0, label_smoothing=0.1), False, None),
    (dict(squared=True), False, None),
    (dict(intersection="min", ce_weight=0.5), True, -1),
    (dict(from_logits=False), False, -1),
    (dict(sharpness=2.0), True, None),
]


def _ids(options):
    return ",".join(f"{k}={v}" for k, v in options.items()) or "defaults"


# [1, 19, 96, 96]: 16-byte groups, several blocks of several iterations per sample;
# [2, 19, 37, 41]: no 16-byte group (a row of 1517 pixels), a tail in every block's last group
@needs_emulation
@pytest.mark.parametrize("shape", [(1, 19, 96, 96), (2, 19, 37, 41)], ids=["vec", "tails"])
@pytest.mark.parametrize("options,weighted,ignore", PIXEL_OPTIONS,
                         ids=[_ids(o) + f"-w{int(w)}-i{int(i is not None)}"
                              for o, w, i in PIXEL_OPTIONS])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_pixel_kernels_over_many_blocks(shape, options, weighted, ignore, dtype):
    x, t, w = make_inputs("multiclass", "map-int64", dtype, "cpu", shape,
                          from_logits=options.get("from_logits", True), ignore_index=ignore,
                          weight=weighted, seed=shape[-1])
    assert_matches_reference(x, t, w, "cuda", mode="multiclass", ignore_index=ignore, **options)


@needs_emulation
@pytest.mark.parametrize("kind", ["map-uint8", "map-int32", "onehot-float", "soft-float",
                                  "onehot-bool"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_pixel_kernels_of_each_target_kind(kind, dtype):
    x, t, w = make_inputs("multiclass", kind, dtype, "cpu", (2, 7, 48, 64), seed=7)
    assert_matches_reference(x, t, w, "cuda", mode="multiclass", ce_weight=0.5)


@needs_emulation
@pytest.mark.parametrize("C,dtype", [(300, torch.float32), (150, torch.bfloat16),
                                     (70, torch.float64)], ids=["f32-300", "bf16-150", "f64-70"])
@pytest.mark.parametrize("ce", [False, True], ids=["iou", "iou+ce"])
def test_wide_softmax_in_class_windows(C, dtype, ce):
    """More classes than one pass holds: the prepass, then one launch per class window."""
    x, t, w = make_inputs("multiclass", "map-int64", dtype, "cpu", (2, C, 12, 20),
                          ignore_index=-1, weight=True, seed=C)
    assert_matches_reference(x, t, w, "cuda", mode="multiclass", ignore_index=-1,
                             ce_weight=1.0 if ce else 0.0)


@needs_emulation
@pytest.mark.parametrize("C,dtype", [(200, torch.float32), (100, torch.bfloat16),
                                     (100, torch.float64)], ids=["f32-200", "bf16-100", "f64-100"])
@pytest.mark.parametrize("weighted", [False, True], ids=["basic", "general"])
def test_classes_of_one_basic_pass_in_general_windows(C, dtype, weighted):
    """More classes than the general kernel's pass holds and fewer than the basic kernel's
    (common.cuh: kClassesPerLane): without pixel weights the basic kernel in one pass, with them
    the prepass and the general kernel's class windows; the cross-entropy with class weights and
    label smoothing (the basic forward's Q from the class, not a sum over lanes)."""
    x, t, w = make_inputs("multiclass", "map-int64", dtype, "cpu", (2, C, 12, 20),
                          ignore_index=-1, weight=weighted, seed=C + weighted)
    cw = torch.rand(C, generator=torch.Generator().manual_seed(C), dtype=torch.float64) + 0.5
    assert_matches_reference(x, t, w, "cuda", mode="multiclass", ignore_index=-1,
                             ce_weight=1.0, label_smoothing=0.1, class_weight=cw.float())


@needs_emulation
@pytest.mark.parametrize("mode,kind", [("binary", "uint8"), ("binary", "float"),
                                       ("multilabel", "int64"), ("multilabel", "soft-float"),
                                       ("multilabel", "map-classes")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_row_kernels_over_many_blocks(mode, kind, dtype):
    x, t, w = make_inputs(mode, kind, dtype, "cpu", (2, 5, 64, 72), weight=True, seed=3)
    assert_matches_reference(x, t, w, "cuda", mode=mode, ce_weight=0.5)


@needs_emulation
def test_channels_last_and_sliced_inputs():
    x, t, _ = make_inputs("multiclass", "map-int64", torch.float32, "cpu", (2, 19, 40, 48),
                          seed=5)
    for xi, ti in ((x.detach().to(memory_format=torch.channels_last), t),
                   (x.detach()[..., 3:], t[..., 3:])):
        assert_matches_reference(xi.requires_grad_(), ti, None, "cuda", ce_weight=1.0)


@needs_emulation
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("C", [5, 19, 300])
def test_counts_over_many_blocks(dtype, C):
    """The hard counts, in the statistics pass (a block's counters in shared memory, added to
    the totals with integer atomics) or, for the wide softmax, the counting kernel: exact."""
    g = torch.Generator().manual_seed(C)
    H, W = (64, 80) if C < 300 else (8, 30)
    x = torch.randn(2, C, H, W, generator=g).to(dtype)
    t = torch.randint(0, C, (2, H, W), generator=g)
    t[1, :3] = 255
    got = softiou_cuda.stat_scores(x, t, ignore_index=255, backend="cuda")
    assert torch.equal(got, reference.stat_scores(x, t, ignore_index=255))


_OTHER_CUT = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import cuda_emulation, softiou_cuda
softiou_cuda.route.use_cuda_emulation(cuda_emulation.load())
x, t = torch.load(sys.argv[2])
x = x.requires_grad_()
loss = softiou_cuda.soft_iou_loss(x, t, backend="cuda", ce_weight=1.0)
loss.backward()
torch.save((loss.detach(), x.grad), sys.argv[3])
"""


@needs_emulation
def test_another_multiprocessor_count(tmp_path):
    """The plan cuts a sample's pixels by the device's multiprocessor count: 7 (in a process of
    its own: the count is read once) cuts them into other blocks, and the loss and gradient are
    the reference's as with the tests' 2."""
    x, t, _ = make_inputs("multiclass", "map-int64", torch.float32, "cpu", (3, 19, 50, 64),
                          seed=11)
    torch.save((x.detach(), t), tmp_path / "in.pt")
    env = dict(os.environ, SOFTIOU_EMULATED_SMS="7")
    done = subprocess.run([sys.executable, "-c", _OTHER_CUT, os.path.join(ROOT, "tools"),
                           str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    loss, grad = torch.load(tmp_path / "out.pt")
    xr = x.detach().double().requires_grad_()
    want = reference.soft_iou_loss(xr, t, ce_weight=1.0)
    (want_grad,) = torch.autograd.grad(want, xr)
    torch.testing.assert_close(loss.double(), want.detach(), rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(grad.double(), want_grad, rtol=2e-4,
                               atol=2e-5 * want_grad.abs().max().item())


# The emulation's own checks, each on a kernel that breaks its rule (emulation/selftest.cu)
@needs_emulation
def test_a_kernel_that_keeps_the_rules_runs():
    error, message, out = cuda_emulation.load().selftest("exchange")
    assert (error, message) == ("no error", "")
    assert out == [float((i + 1) % 64) for i in range(64)] * 2


@contextlib.contextmanager
def thread_order(order):
    module = cuda_emulation.load()
    module.set_thread_order(order)
    try:
        yield module
    finally:
        module.set_thread_order("alternate")


@needs_emulation
def test_a_missing_barrier_reads_the_poison_in_every_block():
    """Without its __syncthreads each thread reads its neighbour's slot s[t + 1]: in index order
    before the neighbour writes it, NaN, in the second block too (a block does not see the
    previous block's values); in reverse order only thread 63's read of slot 0 is early."""
    with thread_order("forward") as module:
        error, _, out = module.selftest("exchange_without_barrier")
    assert error == "no error"
    for block in (0, 1):
        row = out[block * 64:(block + 1) * 64]
        assert all(v != v for v in row[:63]), row  # NaN
        assert row[63] == 0.0  # slot 0, written before thread 63 runs
    with thread_order("reverse") as module:
        error, _, out = module.selftest("exchange_without_barrier")
    assert error == "no error"
    for block in (0, 1):
        row = out[block * 64:(block + 1) * 64]
        assert row[:63] == [float(i + 1) for i in range(63)]
        assert row[63] != row[63]


@needs_emulation
def test_the_default_order_alternates_from_block_to_block():
    module = cuda_emulation.load()
    with pytest.raises(ValueError, match="thread order sideways"):
        module.set_thread_order("sideways")
    _, _, out = module.selftest("exchange_without_barrier")
    early = [sum(v != v for v in out[b * 64:(b + 1) * 64]) for b in (0, 1)]
    assert sorted(early) == [1, 63]  # one block in each order


# Kernels whose results depended on the order of a block's threads would race on a GPU: every
# kind of kernel, bitwise the same in both orders
ORDER_CASES = [
    ("multiclass", "map-int64", torch.float32, dict(ce_weight=1.0)),
    ("multiclass", "map-uint8", torch.bfloat16, dict()),
    ("multiclass", "soft-float", torch.float16, dict(squared=True)),
    ("multilabel", "soft-float", torch.float32, dict(ce_weight=0.5)),
    ("binary", "uint8", torch.bfloat16, dict()),
]


@needs_emulation
@pytest.mark.parametrize("mode,kind,dtype,options", ORDER_CASES,
                         ids=[f"{m}-{k}-{str(d)[6:]}" for m, k, d, _ in ORDER_CASES])
def test_results_do_not_depend_on_the_threads_order(mode, kind, dtype, options):
    x, t, w = make_inputs(mode, kind, dtype, "cpu", (2, 7, 40, 56), weight=True, seed=9)
    got = {}
    for order in ("forward", "reverse"):
        with thread_order(order):
            got[order] = fused_loss_and_grad(x, t, w, "cuda", mode=mode, **options)
    assert torch.equal(got["forward"][0], got["reverse"][0])
    assert torch.equal(got["forward"][1], got["reverse"][1])
    if mode == "multiclass" and kind.startswith("map"):
        with thread_order("forward"):
            fwd = softiou_cuda.stat_scores(x.detach(), t, backend="cuda")
        with thread_order("reverse"):
            assert torch.equal(softiou_cuda.stat_scores(x.detach(), t, backend="cuda"), fwd)


@needs_emulation
@pytest.mark.parametrize("kernel,error,message", [
    ("divergent_barrier", "unspecified launch failure",
     r"divergent __syncthreads: thread \d+ at .*selftest\.cu:\d+, 1 thread\(s\) waiting at "
     r".*selftest\.cu:\d+"),
    ("shuffle_with_returned_lane", "unspecified launch failure",
     r"a warp shuffle waits for a lane that has returned \(thread 5\)"),
    ("deadlock", "unspecified launch failure", r"deadlock: every thread of the block waits"),
    ("failing_assert", "device-side assert triggered",
     r"selftest\.cu:\d+: failing_assert: device-side assert `selftest` failed"),
])
def test_a_broken_rule_stops_the_launch_with_its_reason(kernel, error, message):
    module = cuda_emulation.load()
    got_error, got_message, out = module.selftest(kernel)
    assert got_error == error
    assert re.search(message, got_message), got_message
    assert set(out) == {-1.0}  # the launch stopped before any thread went past the break
    # and the next one runs (the error was taken)
    assert module.selftest("exchange")[:2] == ("no error", "")


@needs_emulation
def test_an_unknown_self_test_is_an_error():
    with pytest.raises(ValueError, match="no self-test kernel named nope"):
        cuda_emulation.load().selftest("nope")


def test_launches_rewritten():
    src = ("  pixel_kernel<S, TT, V, CM, FWD, CE, true>\n"
           "      <<<unsigned(grid), kPixelThreads<FWD>, 0, stream>>>(L);\n"
           "  detail::finish<<<unsigned(b < 1024 ? b : 1024), kThreads, 0,\n"
           "                  stream>>>(p, n);\n"
           "  ns::k<<<g, b>>>(a);\n")
    assert cuda_emulation.rewrite(src) == (
        "  ::softiou_emu::launch(&pixel_kernel<S, TT, V, CM, FWD, CE, true>, unsigned(grid), "
        "kPixelThreads<FWD>, 0)(L);\n"
        "  ::softiou_emu::launch(&detail::finish, unsigned(b < 1024 ? b : 1024), kThreads, 0)"
        "(p, n);\n"
        "  ::softiou_emu::launch(&ns::k, g, b, 0)(a);\n")


def test_shared_memory_and_noinline_rewritten():
    src = ("extern __shared__ unsigned long long counts[];\n"
           "  __shared__ A sm[3][kThreads];\n"
           "  __shared__ A a[FWD ? 1 : 2 * 32], b[kThreads];\n"
           "static __device__ __noinline__ void f();\n")
    assert cuda_emulation.rewrite(src) == (
        "unsigned long long* counts = static_cast<unsigned long long*>("
        "::softiou_emu::dynamic_shared());\n"
        "  static A sm[3][kThreads]; ::softiou_emu::fresh_shared(sm, sizeof sm);\n"
        "  static A a[FWD ? 1 : 2 * 32], b[kThreads]; ::softiou_emu::fresh_shared(a, sizeof a); "
        "::softiou_emu::fresh_shared(b, sizeof b);\n"
        "static __device__ __attribute__((noinline)) void f();\n")


@pytest.mark.parametrize("src", ["k<<<g>>>(a);", "<<<g, b>>>(a);", "extern __shared__ float x[4];",
                                 "__shared__ float x[4]"])
def test_what_the_rewrite_cannot_read_is_an_error(src):
    with pytest.raises(ValueError, match="launch|left after|shared memory"):
        cuda_emulation.rewrite(src, "x.cu")


def test_every_cuda_source_rewrites():
    """Every launch in csrc/cuda is one the rewrite reads (the build would stop on one it
    cannot); the counts of launches are the sources' own."""
    total = 0
    for base, _, names in os.walk(os.path.join(ROOT, "csrc", "cuda")):
        for n in names:
            if n.endswith((".cu", ".cuh")):
                text = open(os.path.join(base, n)).read()
                out = cuda_emulation.rewrite(text, n)
                assert out.count("::softiou_emu::launch(") == text.count("<<<")
                total += text.count("<<<")
    assert total > 10
