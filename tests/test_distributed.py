"""Data-parallel training: with per_image=False and a process group, the statistics are summed over
the ranks by a differentiable all-reduce (torch.distributed's functional collective, or the
fallback formula where this torch's collective has no autograd), so 2 gloo processes under
DistributedDataParallel get the loss and the parameter gradients of one process on the whole
batch (the cross-entropy term of SPEC section 9 stays each rank's own). Each configuration runs
several times per session (a rank that dies at shutdown, or a
warning in a training step, fails the test), and the pooled path traces with
torch.compile(fullgraph=True). The hard counts of the same pass (SPEC section 11), summed over the
ranks by the epoch metric, are those of the whole batch."""

import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import softiou_cuda
from softiou_cuda import distributed as sdist
from softiou_cuda import reference
from softiou_cuda.metrics import JaccardIndex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = 3  # 2-rank runs per configuration and session


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv2d(8, 4, 1))


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 12, 10, generator=g)
    t = torch.randint(0, 4, (4, 12, 10), generator=g)
    t[0, :3] = 255
    w = torch.rand(4, 12, 10, generator=g)
    return x, t, w


def _loss(model, x, t, w, group, backend, ce_weight=0.0):
    """(loss, the hard counts of the same pass)."""
    return softiou_cuda.soft_iou_loss(model(x), t, w, per_image=False, process_group=group,
                                      ignore_index=255, metric="dice", backend=backend,
                                      ce_weight=ce_weight, return_stat_scores=True)


def _use_fallback_formula():
    """The autograd.Function formula, as on a torch without differentiable collectives."""
    real = sdist.all_reduce_sum
    sdist.all_reduce_sum = lambda tensor, group: real(tensor, group, fallback=True)


def _run_rank(rank, world, port, fn, *args):
    """One rank: ``fn(rank, *args)``, then a clean shutdown. Everything fn made (DDP's reducer
    holds the process group) is freed before the group is destroyed; destroying the group under
    a live DistributedDataParallel can hang the process at exit."""
    import faulthandler
    import gc
    import sys
    faulthandler.dump_traceback_later(120, exit=True, file=sys.stderr)  # a hang fails the test
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, *args)
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    faulthandler.cancel_dump_traceback_later()


def _ddp_step(rank, backend, fallback, ce_weight, out):
    if fallback:
        _use_fallback_formula()
    model = torch.nn.parallel.DistributedDataParallel(_model())
    x, t, w = _batch()
    share = slice(rank * 2, rank * 2 + 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss, counts = _loss(model, x[share], t[share], w[share], dist.group.WORLD, backend,
                             ce_weight)
        loss.backward()
        metric = JaccardIndex(4, average="none", ignore_index=255,
                              process_group=dist.group.WORLD)
        metric.update(counts)
        iou = metric.compute()  # over the ranks; the metric's own counts stay this rank's
        local = metric.counts.clone()
        metric.sync()
    result = {"loss": loss.detach(), "grads": [p.grad.clone() for p in model.parameters()],
              "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
              "iou": iou, "local": local, "synced": metric.counts, "mine": counts.sum(0)}
    torch.save(result, f"{out}.{rank}")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_process(ce_weight):
    """One process on the whole batch: the loss of each rank (the IoU of the whole batch, plus
    the rank's own cross-entropy, SPEC section 9) and the gradient DDP averages to (the IoU's,
    plus the mean over ranks of the cross-entropy's)."""
    model = _model()
    x, t, w = _batch()
    logits = model(x)
    iou = softiou_cuda.soft_iou_loss(logits, t, w, per_image=False, ignore_index=255,
                                     metric="dice")
    ces = []
    for rank in range(2):
        share = slice(rank * 2, rank * 2 + 2)
        num, den = reference.cross_entropy_sums(logits[share], t[share], w[share], "multiclass",
                                                ignore_index=255)
        ces.append(ce_weight * reference.cross_entropy_term(num, den, "mean"))
    (iou + sum(ces) / 2).backward()
    return [(iou + ce).detach() for ce in ces], [p.grad for p in model.parameters()]


CONFIGS = [("cpu", False, 0.0), ("cpu", True, 0.0), ("reference", False, 0.0),
           ("cpu", False, 0.5)]


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("backend,fallback,ce_weight", CONFIGS,
                         ids=["cpu", "cpu-fallback-formula", "reference", "cpu-cross-entropy"])
def test_two_gloo_ranks_equal_one_process(tmp_path, backend, fallback, ce_weight, run):
    if backend not in softiou_cuda.available_backends("cpu"):
        pytest.skip(f"{backend} backend not built")
    if backend == "reference" and not sdist.collective_is_differentiable():
        pytest.skip("the reference's process_group needs a differentiable functional all_reduce")
    out = str(tmp_path / "rank")
    # raises if a rank fails or dies (a signal at shutdown included)
    mp.start_processes(_run_rank,
                       args=(2, _free_port(), _ddp_step, backend, fallback, ce_weight, out),
                       nprocs=2, start_method="spawn")
    want_losses, want_grads = _one_process(ce_weight)
    x, t, _ = _batch()
    with torch.no_grad():  # each rank's share through the model as the rank computes it
        all_counts = sum(reference.stat_scores(_model()(x[s]), t[s], ignore_index=255).sum(0)
                         for s in (slice(0, 2), slice(2, 4)))
    want_iou = JaccardIndex(4, average="none", ignore_index=255)
    want_iou.update(all_counts)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        assert got["warnings"] == [], got["warnings"]
        assert torch.equal(got["local"], got["mine"])
        assert torch.equal(got["synced"], all_counts)
        assert torch.equal(got["iou"], want_iou.compute())
        torch.testing.assert_close(got["loss"], want_losses[rank], rtol=1e-6, atol=1e-7)
        for g, want in zip(got["grads"], want_grads):
            torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-7)


def _compile_step(rank, fallback, out):
    if fallback:
        _use_fallback_formula()
    x, t, w = _batch()
    logits = torch.randn(2, 4, 12, 10, generator=torch.Generator().manual_seed(rank),
                         requires_grad=True)
    share = slice(rank * 2, rank * 2 + 2)

    def step(logits):
        return softiou_cuda.soft_iou_loss(logits, t[share], w[share], per_image=False,
                                          process_group=dist.group.WORLD, ignore_index=255)
    eager = step(logits)
    (g_eager,) = torch.autograd.grad(eager, logits)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(logits)
    (g_compiled,) = torch.autograd.grad(compiled, logits)
    torch.save({"eager": (eager.detach(), g_eager), "compiled": (compiled.detach(), g_compiled)},
               f"{out}.{rank}")


@pytest.mark.parametrize("fallback", [False, True], ids=["collective", "fallback-formula"])
def test_pooled_path_compiles_fullgraph(tmp_path, fallback):
    """statistics -> all-reduce -> finalize traces without a graph break (fullgraph=True) and
    gives eager's loss and gradient on every rank."""
    if not softiou_cuda.operators.HAS_EXTENSION:
        pytest.skip("the C++ extension is not built")
    out = str(tmp_path / "rank")
    mp.start_processes(_run_rank, args=(2, _free_port(), _compile_step, fallback, out),
                       nprocs=2, start_method="spawn")
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        torch.testing.assert_close(got["compiled"][0], got["eager"][0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got["compiled"][1], got["eager"][1], rtol=1e-5, atol=1e-7)
