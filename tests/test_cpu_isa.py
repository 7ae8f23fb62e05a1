"""The CPU kernels are compiled once per instruction set (AVX-512, AVX2, baseline x86-64) and the
best one the processor runs is chosen at run time: the rest of the suite tests that one. Here
every build this processor runs is tested against the float64 reference, on shapes with full
tiles of 64 pixels as well as a tail (the paths that read and write rows in place), and for
bitwise determinism across thread counts."""

import os
import subprocess
import sys

import pytest
import torch

import softiou_cuda
from helpers import (MODE_KINDS, assert_matches_reference, ignore_value, loss_and_grad,
                     make_inputs, takes_ignore)

pytestmark = pytest.mark.skipif(not softiou_cuda.operators.HAS_EXTENSION,
                                reason="the C++ extension is not built")

ISAS = list(softiou_cuda.operators.cpu_isas())


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test with the CPU kernels of one instruction set."""
    from softiou_cuda import _C
    before = softiou_cuda.operators.cpu_isa()
    _C._set_cpu_isa(request.param)
    try:
        assert softiou_cuda.operators.cpu_isa() == request.param
        yield request.param
    finally:
        _C._set_cpu_isa(before)


def test_the_best_build_is_chosen():
    assert ISAS[-1] == "baseline"
    assert set(ISAS) <= {"avx512", "avx2", "baseline"}
    if "SOFTIOU_CPU_ISA" not in os.environ:
        assert softiou_cuda.operators.cpu_isa() == ISAS[0]


def test_an_unknown_build_is_refused_by_name():
    from softiou_cuda import _C
    before = softiou_cuda.operators.cpu_isa()
    with pytest.raises(ValueError, match="isa is 'sse9'.*choose one of: .*baseline"):
        _C._set_cpu_isa("sse9")
    assert softiou_cuda.operators.cpu_isa() == before


def test_the_environment_variable_chooses_the_build():
    code = ("import torch, softiou_cuda as s; print(s.operators.cpu_isa()); "
            "s.soft_iou_loss(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long))")
    env = dict(os.environ, SOFTIOU_CPU_ISA="baseline")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "baseline"
    env["SOFTIOU_CPU_ISA"] = "sse9"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "SOFTIOU_CPU_ISA is 'sse9'" in out.stderr and "ValueError" in out.stderr


# two full tiles and a tail of 16 pixels per image; a 1-D row of 3 tiles and a tail
SHAPES = [(2, 5, 9, 16), (3, 3, 200)]

OPTIONS = [
    dict(),
    dict(intersection="min", metric="dice"),
    dict(from_logits=False),
    dict(sharpness=2.5, metric="tversky", alpha=0.7, beta=0.3),
    dict(squared=True, per_image=False),
    dict(ce_weight=0.7),
]


CASES = [(m, k, i, s) for m, k in MODE_KINDS for i in range(len(OPTIONS))
         for s in range(len(SHAPES))]


@pytest.mark.parametrize("mode,kind,index,shape", CASES,
                         ids=[f"{m}-{k}-{i}-s{s}" for m, k, i, s in CASES])
def test_build_matches_reference(isa, mode, kind, index, shape):
    options = OPTIONS[index]
    ignore = ignore_value(kind) if takes_ignore(mode, kind) and index % 2 == 0 else None
    x, t, w = make_inputs(mode, kind, torch.float32, "cpu", shape=SHAPES[shape],
                          from_logits=options.get("from_logits", True), ignore_index=ignore,
                          weight=index % 3 != 1, seed=index)
    assert_matches_reference(x, t, w, "cpu", mode=mode, ignore_index=ignore, **options)


DTYPE_KINDS = [("multiclass", "map-int64"), ("multiclass", "soft-float"), ("binary", "int64"),
               ("multilabel", "float")]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16],
                         ids=["float64", "float16", "bfloat16"])
@pytest.mark.parametrize("mode,kind", DTYPE_KINDS, ids=[f"{m}-{k}" for m, k in DTYPE_KINDS])
def test_build_matches_reference_in_other_dtypes(isa, mode, kind, dtype):
    x, t, w = make_inputs(mode, kind, dtype, "cpu", shape=SHAPES[0], weight=True)
    assert_matches_reference(x, t, w, "cpu", mode=mode)
    assert_matches_reference(x, t, w, "cpu", mode=mode, ce_weight=0.5)


@pytest.mark.parametrize("mode,kind", DTYPE_KINDS, ids=[f"{m}-{k}" for m, k in DTYPE_KINDS])
def test_build_is_bitwise_the_same_for_any_thread_count(isa, mode, kind):
    x, t, w = make_inputs(mode, kind, torch.float32, "cpu", shape=(3, 7, 150, 200), weight=True)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(loss_and_grad(softiou_cuda.soft_iou_loss, x, t, w, mode=mode,
                                         reduction="none", backend="cpu"))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
