"""Data-parallel training: with per_image=False and a process group, the statistics are summed over
the ranks by a differentiable all-reduce, so 2 gloo processes under DistributedDataParallel get
the loss and the parameter gradients of one process on the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import softiou_cuda

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _loss(model, x, t, w, group, backend):
    return softiou_cuda.soft_iou_loss(model(x), t, w, per_image=False, process_group=group,
                                      ignore_index=255, metric="dice", backend=backend)


def _worker(rank, world, port, backend, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    x, t, w = _batch()
    share = slice(rank * 2, rank * 2 + 2)
    loss = _loss(model, x[share], t[share], w[share], dist.group.WORLD, backend)
    loss.backward()
    if rank == 0:
        torch.save({"loss": loss.detach(), "grads": [p.grad for p in model.parameters()]}, out)
    dist.barrier()
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_two_gloo_ranks_equal_one_process(tmp_path, backend):
    if backend not in softiou_cuda.available_backends("cpu"):
        pytest.skip(f"{backend} backend not built")
    out = str(tmp_path / "rank0.pt")
    mp.start_processes(_worker, args=(2, _free_port(), backend, out), nprocs=2,
                       start_method="spawn")
    got = torch.load(out)
    model = _model()
    x, t, w = _batch()
    loss = _loss(model, x, t, w, None, backend)
    loss.backward()
    torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-6, atol=1e-7)
    for g, p in zip(got["grads"], model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)
