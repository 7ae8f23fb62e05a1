"""The differentiable all-reduce of the pooled data-parallel path (``per_image=False`` with a
``process_group``): the statistics of every rank are summed, and the backward sums the gradients
of every rank, so that with DistributedDataParallel's averaging each rank's parameters get the
gradient of the loss of the global batch.

It goes through ``torch.distributed``'s functional collectives (``_c10d_functional::all_reduce``),
which torch.compile traces. Where that collective has an autograd formula of its own (torch 2.10
and later register one), it is used as is; on older versions :class:`_AllReduceSum` gives it the
same formula: an all-reduce forward and an all-reduce of the gradient backward.
"""

from __future__ import annotations

import torch

_DIFFERENTIABLE = None


@torch.compiler.assume_constant_result
def collective_is_differentiable() -> bool:
    """Whether this torch's functional all_reduce has an autograd formula (asked once; a
    constant for torch.compile)."""
    global _DIFFERENTIABLE
    if _DIFFERENTIABLE is None:
        # importing the module registers the collectives' autograd formulas (where torch has them)
        from torch.distributed import _functional_collectives  # noqa: F401
        _DIFFERENTIABLE = torch._C._dispatch_has_kernel_for_dispatch_key(
            "_c10d_functional::all_reduce", "Autograd")
    return _DIFFERENTIABLE


def _sum_over_ranks(tensor: torch.Tensor, group) -> torch.Tensor:
    from torch.distributed import _functional_collectives as funcol
    out = funcol.all_reduce(tensor, "sum", group)
    # eager: an AsyncCollectiveTensor, waited here; traced: already a plain tensor
    return out.wait() if isinstance(out, funcol.AsyncCollectiveTensor) else out


class _AllReduceSum(torch.autograd.Function):
    """The sum over ranks with its gradient (the sum over ranks of the gradients), for torch
    versions whose functional collective is not differentiable."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return _sum_over_ranks(tensor, group)

    @staticmethod
    def backward(ctx, grad):
        return _sum_over_ranks(grad.contiguous(), ctx.group), None


def all_reduce_sum(tensor: torch.Tensor, group, *, fallback: bool | None = None) -> torch.Tensor:
    """``tensor`` summed over the ranks of ``group``, differentiably. ``fallback`` forces
    (``True``) or forbids (``False``) the autograd.Function formula; by default it is used only
    where the collective itself is not differentiable."""
    if fallback is None:
        fallback = not collective_is_differentiable()
    if fallback:
        return _AllReduceSum.apply(tensor, group)
    return _sum_over_ranks(tensor, group)


def all_reduce_counts(counts: torch.Tensor, group) -> torch.Tensor:
    """Integer counts (the metrics' ``[C, 4]``) summed over the ranks of ``group``: exact, so the
    same on every rank whatever the order of the additions. A new tensor; ``counts`` is kept."""
    import torch.distributed as dist
    out = counts.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out
