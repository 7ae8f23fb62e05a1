"""A small case for compute-sanitizer (memcheck, racecheck): every CUDA kernel of softiou once,
forward and backward, for each kernel family (pixel, wide/windowed pixel, row) and dtype, and
the hard counts (SPEC section 11) with their counters in shared and in global memory."""

import torch

import softiou_cuda

torch.manual_seed(0)
dev = "cuda"
for dtype in (torch.float32, torch.bfloat16, torch.float64):
    for C, mode in ((5, "multiclass"), (300, "multiclass"), (3, "multilabel"), (1, "binary")):
        x = torch.randn(2, C, 17, 33, device=dev, dtype=dtype, requires_grad=True)
        if mode == "multiclass":
            t = torch.randint(0, C, (2, 17, 33), device=dev)
            t[0, 0, :5] = 255
        else:
            t = torch.randint(0, 2, (2, C, 17, 33), device=dev)
        w = torch.rand(2, 17, 33, device=dev, dtype=torch.float32)
        for backend in ("cuda", "triton"):
            for intersection in ("product", "min"):
                loss = softiou_cuda.soft_iou_loss(x, t, w, mode=mode, backend=backend,
                                                  ignore_index=255, intersection=intersection)
                loss.backward()
            _, counts = softiou_cuda.soft_iou_loss(x, t, mode=mode, backend=backend,
                                                   ignore_index=255, return_stat_scores=True)
        # channels_last and an odd width: the unvectorised paths
        xc = x.detach()[..., :31].contiguous(memory_format=torch.channels_last).requires_grad_()
        softiou_cuda.soft_iou_loss(xc, t[..., :31], mode=mode, backend="cuda",
                                   ignore_index=255).backward()
# more classes than the counting kernel keeps in shared memory
x = torch.randn(2, 1500, 5, 7, device=dev)
t = torch.randint(0, 1500, (2, 5, 7), device=dev)
for backend in ("cuda", "triton"):
    softiou_cuda.stat_scores(x, t, backend=backend)
torch.cuda.synchronize()
print("sanitize case: done")
