"""The Triton multiclass kernel's in-thread tile (triton_kernels/configs.py: PIXEL_LAYOUT
"in_thread", not the default until a GPU has timed it against "split") against the float64
reference, as test_backends.py checks the default tile; and where its configuration applies."""

import pytest
import torch

import softiou_cuda
from helpers import assert_matches_reference, ignore_value, make_inputs, takes_ignore
from softiou_cuda import reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif("triton" not in softiou_cuda.available_backends(DEVICE),
                                reason="triton is not installed")

# the option grid of test_backends.STATS_OPTIONS that reaches the multiclass kernel differently
OPTIONS = [
    dict(),
    dict(intersection="min"),
    dict(from_logits=False),
    dict(sharpness=2.5),
    dict(from_logits=False, sharpness=2.0, intersection="min"),
    dict(squared=True),
    dict(ce_weight=0.5, label_smoothing=0.1,
         class_weight=torch.tensor([1.0, 2.0, 0.5, 0.0, 1.5], device=DEVICE)),
    dict(ce_weight=1.0),
]
KINDS = ["map-int64", "map-int32", "map-uint8", "soft-float", "onehot-bool"]


@pytest.fixture
def in_thread(monkeypatch):
    from softiou_cuda.triton_kernels import configs
    for direction in ("forward", "backward"):
        monkeypatch.setitem(configs.PIXEL_LAYOUT, direction, "in_thread")
    return configs


def _launched_tiles(monkeypatch):
    """The pixel kernel's launches' IN_THREAD and V, as ops launches them."""
    from softiou_cuda.triton_kernels import ops
    seen = []
    launcher = ops._launcher

    def spy(kernel):
        launch = launcher(kernel)

        class Grid:
            def __getitem__(self, grid):
                run = launch[grid]

                def call(*args, **kwargs):
                    if kernel.__name__ == "pixel_kernel":
                        seen.append((kwargs["FWD"], kwargs["IN_THREAD"], kwargs["V"]))
                    return run(*args, **kwargs)
                return call
        return Grid()
    monkeypatch.setattr(ops, "_launcher", spy)
    return seen


def _pixel_kernel_cases():
    """Those that take the multiclass kernel: a class map, or a softmax (a dense target of
    probabilities without one is elementwise: the row kernel)."""
    return [pytest.param(kind, options, id=f"{kind}-{','.join(options) or 'defaults'}")
            for kind in KINDS for options in OPTIONS
            if kind.startswith("map") or options != dict(from_logits=False)]


@pytest.mark.parametrize("kind,options", _pixel_kernel_cases())
@pytest.mark.parametrize("weighted,ignored", [(False, False), (True, True)], ids=["plain", "w,i"])
def test_in_thread_matches_reference(in_thread, monkeypatch, kind, options, weighted, ignored):
    """Several tiles per program and a ragged last tile (40 x 37 pixels), C = 5: V = 4 in
    float32; every pass but the cross-entropy's forward on a dense target takes the in-thread
    tile."""
    ignore = ignore_value(kind) if ignored and takes_ignore("multiclass", kind) else None
    x, t, w = make_inputs("multiclass", kind, torch.float32, DEVICE, shape=(2, 5, 40, 37),
                          from_logits=options.get("from_logits", True), ignore_index=ignore,
                          weight=weighted)
    seen = _launched_tiles(monkeypatch)
    assert_matches_reference(x, t, w, "triton", mode="multiclass", ignore_index=ignore,
                             **options)
    split_forward = options.get("ce_weight", 0) > 0 and not kind.startswith("map")
    assert seen == [(True, not split_forward, 1 if split_forward else 4), (False, True, 4)]


@pytest.mark.parametrize("layout", ["split", "in_thread"])
@pytest.mark.parametrize("kind", ["map-int64", "map-uint8"])
def test_cross_entropy_of_large_logits(monkeypatch, layout, kind):
    """The cross-entropy's forward of logits far from 0 (about 1e4, where a float32 spacing is
    1e-3): its sums of l_k - max_j l_j, exact here, keep the term to float32's precision, where
    the form Q lse - sum_k q_k l_k would lose three digits to cancellation."""
    from softiou_cuda.triton_kernels import configs
    for direction in ("forward", "backward"):
        monkeypatch.setitem(configs.PIXEL_LAYOUT, direction, layout)
    x, t, w = make_inputs("multiclass", kind, torch.float32, DEVICE, shape=(2, 7, 24, 21),
                          weight=True)
    x = (x.detach() * 3 + 1e4).requires_grad_()
    seen = _launched_tiles(monkeypatch)
    options = dict(mode="multiclass", ce_weight=2.0, label_smoothing=0.05,
                   class_weight=torch.tensor([1.0, 2.0, 0.5, 0.0, 1.5, 1.0, 3.0], device=DEVICE))
    loss, _ = assert_matches_reference(x, t, w, "triton", **options)
    ref = reference.soft_iou_loss(x.detach().double(), t, w if w is None else w.double(),
                                  **options)
    assert abs(loss.item() - ref.item()) <= 2e-6 * abs(ref.item())
    assert seen[0][1] == (layout == "in_thread")


@pytest.mark.parametrize("C,dtype,forward,backward", [
    (2, torch.float32, 4, 4), (3, torch.float16, 8, 8), (10, torch.float32, 4, 4),
    (19, torch.float32, 2, 2), (20, torch.float16, 2, 2), (24, torch.float32, None, 2),
    (25, torch.float32, None, None), (10, torch.float64, 2, 2), (11, torch.float64, None, 2),
], ids=lambda v: str(v).replace("torch.", ""))
def test_in_thread_class_counts(in_thread, monkeypatch, C, dtype, forward, backward):
    """The class counts where a thread holds every class (V pixels of each), and past them the
    default tile, per direction, against the reference."""
    x, t, w = make_inputs("multiclass", "map-int64", dtype, DEVICE, shape=(2, C, 23, 29),
                          weight=True)
    seen = _launched_tiles(monkeypatch)
    assert_matches_reference(x, t, w, "triton", mode="multiclass")
    assert seen == [(True, forward is not None, forward or 1),
                    (False, backward is not None, backward or 1)]


def test_in_thread_multilabel_class_map_and_counts(in_thread):
    """The kernel's multilabel class map (no sigmoid) and the hard counts beside the loss."""
    x, t, w = make_inputs("multilabel", "map-classes", torch.float32, DEVICE, shape=(2, 6, 30, 21),
                          from_logits=False, ignore_index=-1, weight=True)
    assert_matches_reference(x, t, w, "triton", mode="multilabel", from_logits=False,
                             ignore_index=-1)
    xm, tm, _ = make_inputs("multiclass", "map-int64", torch.float32, DEVICE,
                            shape=(2, 6, 30, 21), ignore_index=-1)
    loss, counts = softiou_cuda.soft_iou_loss(xm, tm, ignore_index=-1, backend="triton",
                                              return_stat_scores=True)
    want = reference.stat_scores(xm.detach().cpu(), tm.cpu(), mode="multiclass",
                                 ignore_index=-1)
    assert torch.equal(counts.cpu(), want)


def test_in_thread_is_deterministic(in_thread):
    x, t, w = make_inputs("multiclass", "map-int64", torch.float32, DEVICE, shape=(2, 7, 33, 31),
                          weight=True)
    runs = [softiou_cuda.soft_iou_loss(x, t, w, backend="triton") for _ in range(2)]
    grads = [torch.autograd.grad(r, x)[0] for r in runs]
    assert torch.equal(runs[0], runs[1]) and torch.equal(grads[0], grads[1])


def test_pixel_config_bounds(in_thread):
    """In-thread: V >= 2 pixels of at most 16 bytes per class, within the class bounds (halved
    in float64), not for the passes left to the default tile; elsewhere the default tile
    (V = 1)."""
    configs = in_thread
    for direction in ("forward", "backward"):
        most = configs.IN_THREAD_CLASSES[direction]
        for size in (2, 4, 8):
            bound = most // 2 if size == 8 else most
            for C in range(1, bound + 3):
                cfg = configs.pixel_config(C, direction, size)
                if C <= bound:
                    assert cfg["IN_THREAD"] and 2 <= cfg["V"] and cfg["V"] * size <= 16
                    assert cfg["V"] == 2 or cfg["V"] * C <= configs.PIXEL_THREAD_INPUTS[direction]
                    assert cfg["BLOCK_R"] == 32 * cfg["num_warps"]
                    assert not configs.pixel_config(C, direction, size,
                                                   split_only=True)["IN_THREAD"]
                else:
                    assert not cfg["IN_THREAD"] and cfg["V"] == 1
    configs.PIXEL_LAYOUT.update(forward="split", backward="split")
    assert not configs.pixel_config(5, "forward", 4)["IN_THREAD"]
