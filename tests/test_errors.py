"""SPEC section 7: bad input raises a clear error naming the argument; empty inputs give a
well-defined loss. (The CUDA device-side assert is in test_cuda.py.)"""

import re

import pytest
import torch

import softiou_cuda
from conftest import CASES, is_emulated, without_cuda_emulation
from softiou_cuda import reference

ALL = [("cpu", "reference")] + CASES
ALL_IDS = [f"{d}-{b}" for d, b in ALL]


@pytest.fixture(params=ALL, ids=ALL_IDS)
def any_backend(request):
    return request.param


def _inputs(device, N=2, C=3, H=4, W=5):
    x = torch.randn(N, C, H, W, device=device)
    t = torch.randint(0, C, (N, H, W), device=device)
    return x, t


def call(backend, *args, **kwargs):
    if backend == "reference":
        return reference.soft_iou_loss(*args, **kwargs)
    return softiou_cuda.soft_iou_loss(*args, backend=backend, **kwargs)


def raises(match, fn, *args, **kwargs):
    with pytest.raises((ValueError, RuntimeError, TypeError), match=match):
        fn(*args, **kwargs)


def raises_device_assert(message, fn, *args, **kwargs):
    """The CUDA kernels' device-side assert with its message (common.cuh: report_bad_input), as
    their emulation on the CPU raises it."""
    with pytest.raises(RuntimeError, match="device-side assert.*" + message):
        fn(*args, **kwargs)


BAD_CLASS = "target class index outside"
BAD_INTEGER = "integer target not 0, 1 or ignore_index"


BAD_OPTIONS = [
    (dict(mode="softmax"), "mode"),
    (dict(intersection="max"), "intersection"),
    (dict(metric="iou"), "metric"),
    (dict(absent="drop"), "absent"),
    (dict(reduction="avg"), "reduction"),
    (dict(sharpness=0.0), "sharpness"),
    (dict(sharpness=-1.0), "sharpness"),
    (dict(sharpness=float("nan")), "sharpness"),
    (dict(alpha=-0.1, metric="tversky"), "alpha"),
    (dict(beta=-1.0, metric="tversky"), "beta"),
    (dict(gamma=0.0), "gamma"),
    (dict(smooth=-1.0), "smooth"),
    (dict(eps=0.0), "eps"),
    (dict(classes=[0, 3]), "classes"),
    (dict(classes=[1, 1]), "classes"),
    (dict(classes=[]), "classes"),
    (dict(ignore_index=1.5), "ignore_index"),
    (dict(per_image="yes"), "per_image"),
    (dict(from_logits=1), "from_logits"),
    (dict(class_weight=torch.ones(4)), "class_weight"),
    (dict(class_weight=torch.ones(3, dtype=torch.long)), "class_weight"),
    # SPEC section 10
    (dict(metric="generalized_dice", w_type="cube"), "w_type"),
    (dict(smooth_dr=-1.0), "smooth_dr"),
    (dict(metric="generalized_dice", absent="exclude"), "absent"),
    (dict(metric="generalized_dice", class_weight=torch.ones(3)), "class_weight"),
    (dict(ce_pos_weight=2.0), "ce_pos_weight"),
    (dict(ce_pos_weight=-1.0, mode="multilabel"), "ce_pos_weight"),
]


def test_dense_multiclass_target_takes_no_ignore_index(any_backend):
    device, backend = any_backend
    x = torch.randn(2, 3, 4, 5, device=device)
    t = torch.softmax(torch.randn(2, 3, 4, 5, device=device), 1)
    raises("ignore_index", call, backend, x, t, ignore_index=-1)


def test_multilabel_class_map_out_of_range(any_backend):
    device, backend = any_backend
    if device == "cuda" and backend == "cuda":
        pytest.skip("a device-side assert (test_cuda.py, in a process of its own)")
    x = torch.randn(2, 3, 4, 5, device=device)
    t = torch.randint(0, 3, (2, 4, 5), device=device)
    t[0, 0, 0] = 3
    if is_emulated(device, backend):
        raises_device_assert(BAD_CLASS, call, backend, x, t, mode="multilabel")
    elif backend == "triton":  # no device-side assert in Triton: the statistics are NaN
        assert torch.isnan(call(backend, x, t, mode="multilabel"))
    else:
        raises("class", call, backend, x, t, mode="multilabel")


@pytest.mark.parametrize("options,name", BAD_OPTIONS, ids=[n + str(i) for i, (_, n) in
                                                            enumerate(BAD_OPTIONS)])
def test_bad_option_names_the_argument(any_backend, options, name):
    device, backend = any_backend
    x, t = _inputs(device)
    if "class_weight" in options:
        options = dict(options, class_weight=options["class_weight"].to(device))
    raises(name, call, backend, x, t, **options)


def test_bad_backend_name():
    x, t = _inputs("cpu")
    raises("backend", softiou_cuda.soft_iou_loss, x, t, backend="gpu")
    raises("backend", softiou_cuda.SoftIoULoss, backend="gpu")


def test_backend_for_the_wrong_device():
    x, t = _inputs("cpu")
    with without_cuda_emulation():
        raises(re.escape("backend='cuda' cannot run on cpu"), softiou_cuda.soft_iou_loss, x, t,
               backend="cuda")


def test_bad_shapes_and_dtypes(any_backend):
    device, backend = any_backend
    x, t = _inputs(device)
    raises("input must be float", call, backend, x.long(), t)
    raises("target must be an integer class map", call, backend, x, t.to(torch.int16))
    raises("target class map must have shape", call, backend, x, t[:, :3])
    raises("target class map must have shape", call, backend, x, t[:1])  # batch mismatch
    raises("target must have shape", call, backend, x, torch.rand(2, 2, 4, 5, device=device))
    raises("input must be .N, C, .spatial.", call, backend, x[:, :, 0, 0], t[:, 0, 0])
    raises("multiclass mode needs C >= 2", call, backend, x[:, :1], t)
    raises("binary input", call, backend, x[0, 0, 0], t[0, 0], mode="binary")
    raises("target must have shape", call, backend, x[:, :1], t[:, :3], mode="binary")
    raises("weight must have shape", call, backend, x, t, torch.rand(2, 4, 4, device=device))
    raises("weight must be a floating", call, backend, x, t, torch.ones(2, 4, 5, dtype=torch.long,
                                                                         device=device))
    raises("include_background=False", call, backend, x[:, :1], t.clamp(0, 1), mode="binary",
           include_background=False)


def test_devices_that_differ(any_backend):
    device, backend = any_backend
    x, t = _inputs(device)
    raises("target is on meta", call, backend, x, t.to("meta"))
    raises("weight is on meta", call, backend, x, t, torch.ones(2, 4, 5, device="meta"))
    raises("class_weight is on meta", call, backend, x, t, class_weight=torch.ones(3, device="meta"))


def test_grad_of_target_or_weight_is_refused(any_backend):
    device, backend = any_backend
    x, t = _inputs(device)
    soft = torch.softmax(torch.randn(2, 3, 4, 5, device=device), 1).requires_grad_()
    raises("target requires grad", call, backend, x, soft)
    w = torch.ones(2, 4, 5, device=device, requires_grad=True)
    raises("weight requires grad", call, backend, x, t, w)


def test_process_group_needs_pooled_statistics():
    x, t = _inputs("cpu")
    raises("process_group needs per_image=False", softiou_cuda.soft_iou_loss, x, t,
           process_group=object())


# (what the error says, the options, the corruption of valid inputs)
BAD_VALUES = [
    ("class index 7", dict(), lambda x, t, w: (x, t.index_fill(1, torch.tensor([1]), 7), w)),
    ("class index -3", dict(), lambda x, t, w: (x, t.index_fill(1, torch.tensor([1]), -3), w)),
    ("weight", dict(), lambda x, t, w: (x, t, -w)),
    ("outside \\[0, 1\\]", dict(from_logits=False), lambda x, t, w: (x.sigmoid() + 0.5, t, w)),
    ("holds 2", dict(mode="multilabel"),
     lambda x, t, w: (x, torch.nn.functional.one_hot(t, 3).movedim(-1, 1) * 2, w)),
    ("dense target holds", dict(),
     lambda x, t, w: (x, torch.nn.functional.one_hot(t, 3).movedim(-1, 1).float() * 1.5, w)),
    # binary: the CPU kernels' per-element sigmoid path, which hands a bad item to the tiles
    ("holds 2", dict(mode="binary"), lambda x, t, w: (x[:, :1], (t[:, None] > 0).long() * 2, w)),
    ("weight", dict(mode="binary"), lambda x, t, w: (x[:, :1], (t[:, None] > 0).long(), -w)),
    ("dense target holds", dict(mode="binary"),
     lambda x, t, w: (x[:, :1], (t[:, None] > 0).float() * 1.5, w)),
]


# what the CUDA kernels' device-side assert says for each
DEVICE_ASSERT = {"class index 7": BAD_CLASS, "class index -3": BAD_CLASS, "weight": "weight < 0",
                 "outside \\[0, 1\\]": "input outside \\[0, 1\\] with from_logits=False",
                 "holds 2": BAD_INTEGER, "dense target holds": "dense target outside \\[0, 1\\]"}


@pytest.mark.parametrize("match,options,corrupt", BAD_VALUES, ids=[m[:12] for m, _, _ in BAD_VALUES])
def test_bad_values(any_backend, match, options, corrupt):
    """Out-of-range values: a ValueError from the reference and the CPU kernels, a device-side
    assert from the CUDA kernels; the Triton kernels, which have no always-on device assert,
    return NaN statistics."""
    device, backend = any_backend
    if device == "cuda" and backend == "cuda":
        pytest.skip("the CUDA kernels stop with a device-side assert (test_cuda.py)")
    x, t = _inputs("cpu")
    w = torch.rand(2, 4, 5) + 0.1
    x, t, w = (v.to(device) for v in corrupt(x, t, w))
    if is_emulated(device, backend):
        raises_device_assert(DEVICE_ASSERT[match], call, backend, x, t, w, **options)
    elif backend == "triton":
        loss = call(backend, x, t, w, **options)
        assert torch.isnan(loss).item()
    else:
        raises(match, call, backend, x, t, w, **options)


@pytest.mark.parametrize("dtype,bad,ignore", [
    (torch.int64, 2 ** 32 + 1, None),   # 1 in its low half
    (torch.int64, 2 ** 32 - 1, -1),     # -1 in its low half
    (torch.int64, -(2 ** 32), 0),       # 0 in its low half, not 0
    (torch.int32, 2, 2 ** 40),          # ignore_index beyond int32 equals no value
    (torch.uint8, 7, 255),
], ids=["i64-high-1", "i64-high-neg1", "i64-high-0", "i32-big-ignore", "u8"])
def test_binary_target_values_in_full_tiles(any_backend, dtype, bad, ignore):
    """Integer binary targets in full 64-pixel rows (the CPU kernels compare them 32 bits at a
    time, an int64 by its halves): a value is 0, 1 or ignore_index only if all its bits say so,
    and an ignore_index with high bits set ignores exactly its own value."""
    device, backend = any_backend
    x = torch.randn(2, 1, 4, 64, device=device)
    t = (torch.rand(2, 1, 4, 64, device=device) > 0.5).to(dtype)
    t_bad = t.clone()
    t_bad[1, 0, 2, 17] = bad
    if device == "cuda" and backend == "cuda":
        pass  # a device-side assert, which ends the process's CUDA context: test_cuda.py
    elif is_emulated(device, backend):
        raises_device_assert(BAD_INTEGER, call, backend, x, t_bad, mode="binary",
                             ignore_index=ignore)
    elif backend == "triton":
        assert torch.isnan(call(backend, x, t_bad, mode="binary", ignore_index=ignore))
    else:
        raises("not in \\{0, 1\\}|holds", call, backend, x, t_bad, mode="binary",
               ignore_index=ignore)
    # an element that holds ignore_index is left out: the loss with its weight 0. An int64
    # target's bad value is its ignore_index; a value no uint8/int32 holds ignores nothing.
    ignored = bad if dtype == torch.int64 else ignore
    t_ign, w = t.clone(), torch.ones(2, 4, 64, device=device)
    if dtype == torch.int64 or ignored < 256:
        t_ign[1, 0, 2, 17] = ignored
        w[1, 2, 17] = 0
    torch.testing.assert_close(call(backend, x, t_ign, mode="binary", ignore_index=ignored),
                               reference.soft_iou_loss(x, t, w, mode="binary"))


def test_ignore_index_is_not_out_of_range(any_backend):
    """A value equal to ignore_index is ignored; any other out-of-range value is an error."""
    device, backend = any_backend
    if device == "cuda" and backend == "cuda":
        pytest.skip("the CUDA kernels stop with a device-side assert (test_cuda.py)")
    x, t = _inputs(device)
    t[0, 0, 0] = 255
    assert torch.isfinite(call(backend, x, t, ignore_index=255))
    if is_emulated(device, backend):
        raises_device_assert(BAD_CLASS, call, backend, x, t, ignore_index=254)
    elif backend == "triton":
        assert torch.isnan(call(backend, x, t, ignore_index=254))
    else:
        raises("class index 255, outside \\[0, 3\\) and not ignore_index=254", call, backend,
               x, t, ignore_index=254)


@pytest.mark.parametrize("shape,tshape", [((0, 3, 4, 5), (0, 4, 5)), ((2, 3, 0, 5), (2, 0, 5)),
                                          ((2, 3, 0), (2, 0))], ids=["no-images", "no-pixels",
                                                                     "1d-no-pixels"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_inputs_give_connected_zero(any_backend, shape, tshape, reduction):
    device, backend = any_backend
    x = torch.randn(shape, device=device, requires_grad=True)
    t = torch.zeros(tshape, dtype=torch.long, device=device)
    loss = call(backend, x, t, reduction=reduction)
    assert torch.isfinite(loss).all()
    if reduction != "none":
        assert loss.item() == 0.0 or shape[0] != 0
        assert loss.requires_grad
        (g,) = torch.autograd.grad(loss, x)
        assert g.shape == x.shape and torch.count_nonzero(g).item() == 0


def test_direct_op_calls_check_their_arguments():
    if not softiou_cuda.operators.HAS_EXTENSION:
        pytest.skip("extension not built")
    x, t = _inputs("cpu")
    stats = torch.ops.softiou.stats
    raises("mode must be", stats, x, t, None, None, "softmax", True, 1.0, "product", None)
    raises("intersection must be", stats, x, t, None, None, "multiclass", True, 1.0, "max", None)
    raises("sharpness must be", stats, x, t, None, None, "multiclass", True, 0.0, "product", None)
    raises("target class map must have shape", stats, x, t[:, :2], None, None, "multiclass", True,
           1.0, "product", None)
    # the operators take what the loss takes: [N, 3, 4, 5] binary input is [N, *spatial]
    raises("target must have shape .* for binary input", stats, x, t, None, None, "binary", True,
           1.0, "product", None)
    raises("input must be .N, C, .spatial.", stats, x[:, :, 0, 0], t[:, 0, 0], None, None,
           "multiclass", True, 1.0, "product", None)
    raises("grad_stats must have shape", torch.ops.softiou.stats_backward, torch.ones(2, 3),
           None, None, x, t, None, None, "multiclass", True, 1.0, "product", None)
    raises("class index 9", stats, x, t.index_fill(1, torch.tensor([0]), 9), None, None,
           "multiclass", True, 1.0, "product", None)
