"""All-gather that keeps gradients, for contrastive negatives across data-parallel processes."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_with_grad"]


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllGather(torch.autograd.Function):
    """Concatenate every process's rows; the backward pass sums the gradients of all processes."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int]) -> Tensor:
        rank = dist.get_rank()
        ctx.rows = (sum(sizes[:rank]), sizes[rank])
        # all_gather needs equal shapes: pad every shard to the largest, then drop the padding
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        shards = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(shards, padded.contiguous())
        return torch.cat([shard[:n] for shard, n in zip(shards, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        # every process holds d(its loss)/d(all rows); the local rows' gradient is the sum over processes
        # (all_reduce rather than reduce_scatter, which gloo lacks)
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, n = ctx.rows
        return grad[start : start + n], None


def gather_with_offset(x: Tensor) -> tuple[Tensor, int]:
    """All-gather rows with gradients and return where the local rows start in the result.

    Parameters
    ----------
    x
        ``(n_local, ...)`` local rows; ``n_local`` may differ between processes.

    Returns
    -------
    ``(n_total, ...)`` rows of all processes in rank order, and the index of the first local row.
    """
    if not _is_distributed():
        return x, 0
    n_local = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.empty_like(n_local) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n_local)
    sizes = [int(n) for n in torch.cat(counts).tolist()]
    return _AllGather.apply(x, sizes), sum(sizes[: dist.get_rank()])


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather rows across processes, keeping the gradient path to the local rows.

    The identity when :mod:`torch.distributed` is not initialised or has one process. Gradients that
    other processes' losses send to these rows are summed into the local gradient, so a loss averaged
    over processes (as DDP does) gets the same gradients as on the whole batch in one process.

    Parameters
    ----------
    x
        ``(n_local, ...)`` local rows; ``n_local`` may differ between processes.

    Returns
    -------
    ``(n_total, ...)`` rows of all processes, in rank order.
    """
    return gather_with_offset(x)[0]
