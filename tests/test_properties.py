"""Hypothesis: random shapes (1-D, 2-D, 3-D), options and dtypes against the reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CASES, is_triton
from helpers import TARGET_KINDS, assert_matches_reference, ignore_value, make_inputs


@st.composite
def problems(draw, low_precision):
    mode = draw(st.sampled_from(["multiclass", "binary", "multilabel"]))
    kind = draw(st.sampled_from(TARGET_KINDS[mode]))
    rank = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 9)) for _ in range(rank))
    N = draw(st.integers(1, 3))
    C = 1 if mode == "binary" else draw(st.integers(2, 7))
    dtypes = [torch.float32, torch.float64] + (low_precision if kind != "map-no-channel" else [])
    dtype = draw(st.sampled_from(dtypes))
    from_logits = draw(st.booleans())
    integer = kind.startswith("map") or kind in ("int64", "uint8")
    options = dict(
        from_logits=from_logits,
        sharpness=draw(st.sampled_from([1.0, 1.0, 0.5, 2.0])),
        intersection=draw(st.sampled_from(["product", "min"])),
        metric=draw(st.sampled_from(["jaccard", "dice", "tversky"])),
        per_image=draw(st.booleans()),
        smooth=draw(st.sampled_from([0.0, 0.0, 1.0])),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
    )
    ignore = ignore_value(kind) if integer and draw(st.booleans()) else None
    if mode == "binary" and kind == "map-no-channel" and rank == 1:
        kind = "int64"
    return dict(mode=mode, kind=kind, shape=(N, C) + spatial, dtype=dtype, options=options,
                ignore=ignore, weighted=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)))


def _check(device, backend, p):
    x, t, w = make_inputs(p["mode"], p["kind"], p["dtype"], device, shape=p["shape"],
                          from_logits=p["options"]["from_logits"], ignore_index=p["ignore"],
                          weight=p["weighted"], seed=p["seed"])
    assert_matches_reference(x, t, w, backend, mode=p["mode"], ignore_index=p["ignore"],
                             **p["options"])


NATIVE = [(d, b) for d, b in CASES if not is_triton(d, b)]
TRITON = [(d, b) for d, b in CASES if is_triton(d, b)]


@pytest.mark.parametrize("device,backend", NATIVE, ids=[f"{d}-{b}" for d, b in NATIVE])
@given(data=st.data())
def test_random_problems(device, backend, data):
    _check(device, backend, data.draw(problems([torch.float16, torch.bfloat16])))


@pytest.mark.parametrize("device,backend", TRITON, ids=[f"{d}-{b}" for d, b in TRITON])
@settings(max_examples=12)
@given(data=st.data())
def test_random_problems_triton(device, backend, data):
    # the interpreter has no bfloat16 arithmetic
    lowp = [torch.float16] + ([torch.bfloat16] if device == "cuda" else [])
    _check(device, backend, data.draw(problems(lowp)))
