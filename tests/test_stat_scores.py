"""The hard counts of the statistics pass and the epoch metrics (SPEC section 11).

The reference's counts are checked against torchmetrics' own functions; every fused backend's
counts against the reference, exactly; the loss asked for the counts against the loss without
them, bit for bit; the epoch metrics against torchmetrics' classes over several batches.
"""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import (BinaryF1Score, BinaryJaccardIndex, MulticlassF1Score,
                                         MulticlassJaccardIndex, MultilabelF1Score,
                                         MultilabelJaccardIndex)
from torchmetrics.functional.classification import (binary_stat_scores, multiclass_stat_scores,
                                                    multilabel_stat_scores)

import softiou_cuda
from conftest import is_interpreted
from helpers import TARGET_KINDS, ignore_value, make_inputs, takes_ignore
from softiou_cuda import reference
from softiou_cuda.metrics import DiceScore, JaccardIndex

SPATIAL = {1: (11,), 2: (5, 7), 3: (3, 4, 5)}


def _multiclass_case(C, dims, target_dtype, ignore, seed, ties=True):
    g = torch.Generator().manual_seed(seed)
    N = 3
    S = SPATIAL[dims]
    # integer-valued logits: many ties, which the first maximal class must break
    x = torch.randint(-2, 3, (N, C, *S), generator=g).float() if ties \
        else torch.randn((N, C, *S), generator=g)
    t = torch.randint(0, C, (N, *S), generator=g)
    if ignore is not None:
        t[torch.rand(t.shape, generator=g) < 0.2] = ignore
    return x, t.to(target_dtype)


@pytest.mark.parametrize("C", [2, 3, 5, 19])
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("ignore", [None, "outside", "inside"])
def test_reference_multiclass_equals_torchmetrics(C, dims, target_dtype, ignore):
    ignore_index = {None: None, "outside": 255 if target_dtype == torch.uint8 else -100,
                    "inside": 1}[ignore]
    x, t = _multiclass_case(C, dims, target_dtype, ignore_index, seed=C * 10 + dims)
    got = reference.stat_scores(x, t, mode="multiclass", ignore_index=ignore_index)
    want = multiclass_stat_scores(x, t.long(), C, average=None, multidim_average="samplewise",
                                  ignore_index=ignore_index)[..., :4]
    assert got.dtype == torch.int64 and got.shape == (x.shape[0], C, 4)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("from_logits,threshold", [(True, 0.5), (True, 0.3), (False, 0.5),
                                                   (False, 0.7)])
@pytest.mark.parametrize("ignore_index", [None, -1])
def test_reference_binary_and_multilabel_equal_torchmetrics(dims, from_logits, threshold,
                                                            ignore_index):
    g = torch.Generator().manual_seed(dims)
    N, L, S = 3, 4, SPATIAL[dims]
    logits = torch.randn((N, L, *S), generator=g) * 3
    x = logits if from_logits else torch.sigmoid(logits)
    t = (torch.rand((N, L, *S), generator=g) < 0.4).long()
    if ignore_index is not None:
        t[torch.rand(t.shape, generator=g) < 0.2] = ignore_index
    got = reference.stat_scores(x, t, mode="multilabel", from_logits=from_logits,
                                threshold=threshold, ignore_index=ignore_index)
    want = multilabel_stat_scores(x, t, L, threshold=threshold, average=None,
                                  multidim_average="samplewise",
                                  ignore_index=ignore_index)[..., :4]
    assert torch.equal(got, want)
    got = reference.stat_scores(x[:, 0], t[:, 0], mode="binary", from_logits=from_logits,
                                threshold=threshold, ignore_index=ignore_index)
    want = binary_stat_scores(x[:, 0], t[:, 0], threshold=threshold,
                              multidim_average="samplewise", ignore_index=ignore_index)[..., :4]
    assert torch.equal(got, want.unsqueeze(1))


def _grid(mode, backend):
    kinds = TARGET_KINDS[mode]
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    if backend == "triton":  # interpreted: slow
        kinds, dtypes = kinds[::2], [torch.float32, torch.bfloat16]
    return [(k, d) for k in kinds for d in dtypes]


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_fused_counts_equal_reference(case, mode):
    device, backend = case
    shapes = [(2, 5, 9, 13), (3, 19, 4, 33)] if not is_interpreted(device, backend) \
        else [(2, 5, 3, 7)]
    for kind, dtype in _grid(mode, backend):
        for shape in shapes:
            for from_logits in (True, False):
                for ignore in ([None, ignore_value(kind)] if takes_ignore(mode, kind)
                               else [None]):
                    x, t, _ = make_inputs(mode, kind, dtype, device, shape, from_logits,
                                          ignore, seed=shape[1])
                    for threshold in ((0.5, 0.35) if mode != "multiclass" else (0.5,)):
                        got = softiou_cuda.stat_scores(
                            x, t, mode=mode, from_logits=from_logits, threshold=threshold,
                            ignore_index=ignore, backend=backend)
                        want = reference.stat_scores(
                            x.detach().cpu(), t.cpu(), mode=mode, from_logits=from_logits,
                            threshold=threshold, ignore_index=ignore)
                        assert got.dtype == torch.int64 and not got.requires_grad
                        assert torch.equal(got.cpu(), want), (kind, dtype, shape, from_logits,
                                                              ignore, threshold)


@pytest.mark.parametrize("C", [32, 33, 40])
def test_fused_counts_either_side_of_the_confusion_matrices(case, C):
    """The CPU counts up to 32 classes through confusion matrices and more through per-class
    rows (csrc/cpu/kernels.h: kConfusionClasses): both sides of the boundary, with pixels not
    kept, against the reference."""
    device, backend = case
    g = torch.Generator().manual_seed(C)
    x = torch.randn(2, C, 5, 37, generator=g)
    t = torch.randint(0, C, (2, 5, 37), generator=g)
    t[0, 1] = 255
    got = softiou_cuda.stat_scores(x.to(device), t.to(device), ignore_index=255, backend=backend)
    assert torch.equal(got.cpu(), reference.stat_scores(x, t, ignore_index=255))


def test_fused_counts_of_many_classes(case):
    """More classes than one pass of the CUDA pixel kernel holds (the wide softmax: its counts
    come from the counting kernel) and fewer, against the reference."""
    device, backend = case
    for C, dtype in ((300, torch.float32), (70, torch.bfloat16)):
        g = torch.Generator().manual_seed(C)
        x = torch.randn(2, C, 3, 29, generator=g).to(dtype)
        t = torch.randint(0, C, (2, 3, 29), generator=g)
        t[1, 0] = -1
        got = softiou_cuda.stat_scores(x.to(device), t.to(device), ignore_index=-1,
                                       backend=backend)
        assert torch.equal(got.cpu(), reference.stat_scores(x, t, ignore_index=-1))


def test_fused_counts_ties_and_layouts(case):
    """Ties go to the first maximal class; channels_last and sliced inputs are read in place."""
    device, backend = case
    x, t = _multiclass_case(7, 2, torch.int64, 255, seed=3)
    x = torch.randint(-1, 2, (3, 7, 16, 20)).float()
    t = torch.randint(0, 7, (3, 16, 20))
    t[0, :2] = 255
    for xi in (x, x.to(memory_format=torch.channels_last), x[..., 1:]):
        ti = t if xi.shape == x.shape else t[..., 1:]
        got = softiou_cuda.stat_scores(xi.to(device), ti.to(device), ignore_index=255,
                                       backend=backend)
        assert torch.equal(got.cpu(), reference.stat_scores(xi, ti, ignore_index=255))


@pytest.mark.parametrize("sharpness", [1.0, 0.7])
def test_loss_with_counts_ties_and_minus_infinity(case, sharpness):
    """The prediction found beside the softmax's maximum (the CPU's search at sharpness 1 also
    gives the maximum): integer logits with ties, classes at -inf and pixels at -inf in every
    class; the loss and its gradient bitwise those without the counts, the counts the
    reference's."""
    device, backend = case
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-2, 3, (2, 6, 4, 64), generator=g).float()
    x[x == -2] = float("-inf")
    x[0, :, 1, :5] = float("-inf")
    t = torch.randint(0, 6, (2, 4, 64), generator=g)
    x = x.to(device)
    plain = x.clone().requires_grad_(True)
    counted = x.clone().requires_grad_(True)
    loss = softiou_cuda.soft_iou_loss(plain, t.to(device), sharpness=sharpness, backend=backend)
    loss2, counts = softiou_cuda.soft_iou_loss(counted, t.to(device), sharpness=sharpness,
                                               return_stat_scores=True, backend=backend)
    assert torch.isfinite(loss) and torch.equal(loss, loss2)
    (g1,) = torch.autograd.grad(loss, plain)
    (g2,) = torch.autograd.grad(loss2, counted)
    assert torch.equal(g1, g2)
    assert torch.equal(counts.cpu(), reference.stat_scores(x.cpu(), t))


# (mode, target kind, from_logits, ignore_index): each kernel and target path of the Triton
# statistics pass that counts (pixel_kernel: multiclass through histograms, a multilabel class map
# of probabilities through codes; row_kernel: binary and multilabel through codes)
FOLD_CASES = [("multiclass", "map-int64", True, 255), ("multiclass", "soft-float", True, None),
              ("multilabel", "map-classes", False, -1), ("binary", "float", False, -1),
              ("multilabel", "int64", True, -1)]


@pytest.mark.parametrize("fold", [1, 2])
@pytest.mark.parametrize("mode,kind,from_logits,ignore", FOLD_CASES,
                         ids=[f"{m}-{k}" for m, k, *_ in FOLD_CASES])
def test_triton_counts_fold_their_codes(monkeypatch, mode, kind, from_logits, ignore, fold):
    """The Triton statistics pass counts over several tiles a program: multiclass through
    histograms of the pixels' classes, the rest as 8-bit fields of an int32 per tile element
    folded into int64 totals every configs.COUNT_FOLD tiles (127), lowered here so that a program
    folds several times and ends between two folds (3 tiles per program or more); against the
    reference."""
    pytest.importorskip("triton")
    from softiou_cuda.triton_kernels import configs
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(configs, "COUNT_FOLD", fold)
    # 3 tiles per program of 16 (the interpreter's programs_target) or more
    C = 1 if mode == "binary" else 3
    pixel = kind.startswith("map") or mode == "multiclass"
    block = configs.pixel_block(configs.pixel_config(C, "forward", 4, split_only=True)) if pixel \
        else configs.row_config("forward")[0]
    x, t, _ = make_inputs(mode, kind, torch.float32, device, (1, C, 40 * block - 5), from_logits,
                          ignore, seed=fold)
    got = softiou_cuda.stat_scores(x, t, mode=mode, from_logits=from_logits, ignore_index=ignore,
                                   backend="triton")
    want = reference.stat_scores(x.detach().cpu(), t.cpu(), mode=mode, from_logits=from_logits,
                                 ignore_index=ignore)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("options", [
    dict(), dict(mode="binary"), dict(mode="multilabel", ignore_index=-1),
    dict(mode="multilabel", kind="float"), dict(ce_weight=0.5, ignore_index=-1),
    dict(metric="dice", per_image=False, reduction="sum"), dict(sharpness=2.0),
    dict(from_logits=False), dict(reduction="none", metric="tversky", alpha=0.3, beta=0.7),
])
def test_loss_with_counts_is_the_loss(case, options):
    """return_stat_scores changes neither the loss nor its gradient by a bit, and the counts are
    those of stat_scores."""
    device, backend = case
    options = dict(options)
    mode = options.setdefault("mode", "multiclass")
    kind = options.pop("kind", {"multiclass": "map-int64", "binary": "int64",
                                "multilabel": "int64"}[mode])
    x, t, w = make_inputs(mode, kind, torch.float32, device, (2, 5, 8, 67),
                          options.get("from_logits", True), options.get("ignore_index"),
                          weight=True)
    plain = x.detach().clone().requires_grad_(True)
    counted = x.detach().clone().requires_grad_(True)
    loss = softiou_cuda.soft_iou_loss(plain, t, w, backend=backend, **options)
    loss2, counts = softiou_cuda.soft_iou_loss(counted, t, w, backend=backend,
                                               return_stat_scores=True, **options)
    assert torch.equal(loss, loss2)
    (g1,) = torch.autograd.grad(loss.sum(), plain)
    (g2,) = torch.autograd.grad(loss2.sum(), counted)
    assert torch.equal(g1, g2)
    assert not counts.requires_grad
    want = softiou_cuda.stat_scores(x.detach(), t, mode=mode,
                                    from_logits=options.get("from_logits", True),
                                    ignore_index=options.get("ignore_index"), backend=backend)
    assert torch.equal(counts, want)


def test_module_returns_counts():
    x, t, _ = make_inputs("multiclass", "map-int64", shape=(2, 4, 6, 6), ignore_index=-1)
    crit = softiou_cuda.SoftIoULoss("multiclass", ignore_index=-1, return_stat_scores=True)
    loss, counts = crit(x, t)
    assert torch.equal(loss, softiou_cuda.soft_iou_loss(x, t, ignore_index=-1))
    assert torch.equal(counts, reference.stat_scores(x.detach(), t, ignore_index=-1))


def test_reference_backend_counts():
    x, t, _ = make_inputs("multilabel", "int64", shape=(2, 3, 4, 5))
    loss, counts = softiou_cuda.soft_iou_loss(x, t, mode="multilabel", threshold=0.4,
                                              return_stat_scores=True, backend="reference")
    assert torch.equal(counts, reference.stat_scores(x.detach(), t, mode="multilabel",
                                                     threshold=0.4))
    assert torch.equal(loss, reference.soft_iou_loss(x, t, mode="multilabel"))


def test_stats_operator_with_counts_passes_opcheck():
    x, t, _ = make_inputs("multiclass", "map-int64", shape=(2, 4, 5, 7), ignore_index=-1)
    args = (x, t, None, None, *softiou_cuda.options.stats_args(
        softiou_cuda.make_options(ignore_index=-1)), *softiou_cuda.options.counts_args(0.5, True))
    torch.library.opcheck(torch.ops.softiou.stats.default, args)
    stats, ce, counts = torch.ops.softiou.stats(*args)
    assert torch.equal(counts, reference.stat_scores(x.detach(), t, ignore_index=-1))


def test_loss_with_counts_under_compile():
    x, t, _ = make_inputs("multiclass", "map-int64", shape=(2, 4, 5, 7))

    def step(x, t):
        return softiou_cuda.soft_iou_loss(x, t, return_stat_scores=True)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss, counts = compiled(x, t)
    want_loss, want_counts = step(x, t)
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=0)
    assert torch.equal(counts, want_counts)


# ---------------------------------------------------------------------------------------------
# The epoch metrics against torchmetrics' classes
# ---------------------------------------------------------------------------------------------
def _batches(mode, C, ignore_index, seed):
    g = torch.Generator().manual_seed(seed)
    for b in range(3):
        x = torch.randn((2, C, 6, 5), generator=g) * 2
        if mode == "binary":
            x = x[:, 0]
        if mode == "multiclass":
            t = torch.randint(0, C, (2, 6, 5), generator=g)
            if b == 1:
                t[t == C - 1] = 0  # a class absent from one batch
        else:
            t = (torch.rand(x.shape, generator=g) < 0.4).long()
        if ignore_index is not None:
            t[torch.rand(t.shape, generator=g) < 0.15] = ignore_index
        yield x, t


def _torchmetrics(kind, mode, C, average, ignore_index):
    if mode == "binary":
        cls = {"iou": BinaryJaccardIndex, "dice": BinaryF1Score}[kind]
        return cls(ignore_index=ignore_index)
    avg = None if average == "none" else average
    if mode == "multiclass":
        cls = {"iou": MulticlassJaccardIndex, "dice": MulticlassF1Score}[kind]
        return cls(num_classes=C, average=avg, ignore_index=ignore_index)
    cls = {"iou": MultilabelJaccardIndex, "dice": MultilabelF1Score}[kind]
    return cls(num_labels=C, average=avg, ignore_index=ignore_index)


# an ignore_index inside [0, C) is a class index: multiclass only
MODE_IGNORE = [("multiclass", None), ("multiclass", -1), ("multiclass", 1), ("multilabel", None),
               ("multilabel", -1), ("binary", None), ("binary", -1)]


@pytest.mark.parametrize("kind", ["iou", "dice"])
@pytest.mark.parametrize("mode,ignore_index", MODE_IGNORE)
@pytest.mark.parametrize("average", ["macro", "micro", "none"])
def test_epoch_metrics_equal_torchmetrics(kind, mode, ignore_index, average):
    C = 1 if mode == "binary" else 5
    ours = (JaccardIndex if kind == "iou" else DiceScore)(
        C, mode=mode, average=average, ignore_index=ignore_index)
    theirs = _torchmetrics(kind, mode, C, average, ignore_index)
    by_counts = (JaccardIndex if kind == "iou" else DiceScore)(
        C, mode=mode, average=average, ignore_index=ignore_index)
    for x, t in _batches(mode, C, ignore_index, seed=7):
        ours.update(x, t)
        theirs.update(x, t)
        _, counts = softiou_cuda.soft_iou_loss(x, t, mode=mode, ignore_index=ignore_index,
                                               return_stat_scores=True)
        by_counts.update(counts)
    want = theirs.compute()
    got = ours.compute()
    if mode == "binary" and average == "none":
        got = got[0]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(by_counts.compute(), ours.compute(), rtol=0, atol=0)
    ours.reset()
    assert torch.equal(ours._counts(), torch.zeros(C, 4, dtype=torch.int64))


def test_metric_zero_division():
    m = JaccardIndex(3, average="none", zero_division=1.0)
    m.update(torch.tensor([[5, 0, 0, 0], [0, 0, 4, 0], [0, 2, 2, 1]]))
    torch.testing.assert_close(m.compute(), torch.tensor([1.0, 1.0, 0.0]))
    d = DiceScore(3, average="none", zero_division=0.5)
    d.update(torch.tensor([[[5, 0, 0, 0], [0, 0, 4, 0], [1, 1, 2, 1]]]))
    torch.testing.assert_close(d.compute(), torch.tensor([1.0, 0.5, 0.5]))


# ---------------------------------------------------------------------------------------------
# Errors (SPEC section 7): the message names the argument
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0.0, 1.0, float("nan"), -0.5, "0.5", True])
def test_bad_threshold(threshold):
    x, t, _ = make_inputs("binary", "int64", shape=(2, 1, 4, 4))
    with pytest.raises(ValueError, match="threshold"):
        softiou_cuda.stat_scores(x, t, mode="binary", threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        softiou_cuda.soft_iou_loss(x, t, mode="binary", threshold=threshold,
                                   return_stat_scores=True)
    with pytest.raises(ValueError, match="threshold"):
        JaccardIndex(1, mode="binary", threshold=threshold)


def test_bad_threshold_at_the_operator():
    x, t, _ = make_inputs("binary", "int64", shape=(2, 1, 4, 4))
    args = (x.detach(), t, None, None, *softiou_cuda.options.stats_args(
        softiou_cuda.make_options(mode="binary")))
    with pytest.raises(ValueError, match="threshold must be a number in \\(0, 1\\)"):
        torch.ops.softiou.stats(*args, 1.5, True)


def test_metric_errors():
    with pytest.raises(ValueError, match="average"):
        JaccardIndex(3, average="weighted")
    with pytest.raises(ValueError, match="num_classes"):
        DiceScore(1)  # multiclass needs 2 or more
    with pytest.raises(ValueError, match="num_classes"):
        JaccardIndex(3, mode="binary")
    with pytest.raises(ValueError, match="zero_division"):
        JaccardIndex(3, zero_division=float("nan"))
    m = JaccardIndex(3)
    x, t, _ = make_inputs("multiclass", "map-int64", shape=(2, 4, 5, 5))
    with pytest.raises(ValueError, match="num_classes is 3 but the input has 4 classes"):
        m.update(x.detach(), t)
    with pytest.raises(ValueError, match="update takes the counts"):
        m.update(torch.zeros(2, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="update takes the counts"):
        m.update(torch.zeros(2, 3, 4))  # float counts
