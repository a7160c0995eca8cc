"""Rank awareness: one training loop for a single process and for `torchrun` data parallelism.

Why here from the start: FairAT's hard-example scores must be global (every rank selects the same
hard examples), metrics must be reduced across ranks, and only rank 0 may write files. With one
process every helper is the identity, so the single-process path pays nothing.

Also here: BatchNorm over the global batch on CPU (gloo). PyTorch's ``SyncBatchNorm`` refuses CPU
tensors, and per-rank statistics would make N ranks train a different model from one process on
the same global batch (and leave rank-dependent running statistics, of which DDP silently keeps
rank 0's). :class:`GlobalBatchNorm2d` all-reduces per-channel sums, so every rank normalises with
the statistics of the whole global batch, exactly as one process would, up to float rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT_ENV = "FAIRAT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0  # a collective waiting this long means a peer is gone: fail the job


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: ``rank`` of ``world_size``; ``local_rank`` picks its GPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def collective_timeout() -> timedelta:
    """How long a collective may wait for the other ranks (env ``FAIRAT_DIST_TIMEOUT_S``)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}: {raw!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV}: {raw!r} must be > 0")
    return timedelta(seconds=seconds)


def init_distributed(device_type: str) -> DistContext:
    """Join the process group when launched by `torchrun` (WORLD_SIZE > 1); else a solo context.

    NCCL on GPU, gloo on CPU; collectives time out after :func:`collective_timeout`, so a job whose
    peer died fails instead of hanging (the launcher then reports the failure).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                                timeout=collective_timeout())
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_gather_cat(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate ``t`` from every rank in rank order; first dimensions may differ."""
    if not ctx.active:
        return t
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def _all_reduce(t: torch.Tensor, ctx: DistContext, op: "dist.ReduceOp") -> torch.Tensor:
    if not ctx.active:
        return t
    out = t.clone()
    dist.all_reduce(out, op=op)
    return out


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``t`` over ranks (returns a new tensor; the input is untouched)."""
    return _all_reduce(t, ctx, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise maximum of ``t`` over ranks (e.g. wall-clock seconds: the slowest rank)."""
    return _all_reduce(t, ctx, dist.ReduceOp.MAX)


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def rank_slice(n: int, ctx: DistContext) -> slice:
    """This rank's contiguous part of ``n`` items (a global batch, an attack's examples): sizes
    differ by at most one, so no rank is left empty while ``n >= world_size``."""
    return slice(ctx.rank * n // ctx.world_size, (ctx.rank + 1) * n // ctx.world_size)


def block_shard(n: int, block: int, ctx: DistContext) -> list[tuple[int, torch.Tensor]]:
    """This rank's blocks of ``range(n)``: (block number, positions) for blocks ``rank::world``.

    Work is cut into fixed blocks of ``block`` positions whatever the world size, and a block's
    randomness is seeded by its number, so per-example results do not depend on how many ranks
    share the work (see evaluation and validation).
    """
    starts = range(ctx.rank * block, n, ctx.world_size * block)
    return [(s // block, torch.arange(s, min(s + block, n))) for s in starts]


# ----------------------------------------------------------------------------- global BatchNorm

class _GlobalBatchNormFn(torch.autograd.Function):
    """Training-mode batch norm with per-channel statistics summed over every rank.

    Forward: an all-reduce of [sum, count] per channel, then one of the centred sums of squares
    (sums travel as float64). Backward:
    one all-reduce of [sum dy, sum dy * x_hat], the gradient of the *sum* of every rank's loss
    with respect to this rank's input; DDP then averages the parameter gradients, which gives the
    gradient of the global mean loss, as with PyTorch's SyncBatchNorm.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # noqa: N805 (autograd's signature)
        dims = [0] + list(range(2, x.dim()))
        c = x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        # Two passes (mean, then centred squares), as a single process computes the variance:
        # one-pass sum-of-squares would lose digits when the mean is large against the spread.
        stats = torch.cat([x.sum(dims).double(),
                           torch.tensor([x.numel() / c], dtype=torch.float64, device=x.device)])
        dist.all_reduce(stats)
        count = stats[c]
        mean = (stats[:c] / count).to(x.dtype)
        centred = x - mean.view(shape)
        sq = (centred * centred).sum(dims).double()
        dist.all_reduce(sq)
        var = sq / count
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        x_hat = centred * invstd.view(shape)
        ctx.save_for_backward(x_hat, weight, invstd, count)
        ctx.dims = dims
        out = x_hat * weight.view(shape) + bias.view(shape)
        ctx.mark_non_differentiable(mean, var, count)
        return out, mean, var, count

    @staticmethod
    def backward(ctx, grad_out, _gm, _gv, _gc):  # noqa: N805
        x_hat, weight, invstd, count = ctx.saved_tensors
        c, dims = x_hat.shape[1], ctx.dims
        shape = [1, c] + [1] * (x_hat.dim() - 2)
        local_dy = grad_out.sum(dims)
        local_dy_xhat = (grad_out * x_hat).sum(dims)
        sums = torch.cat([local_dy, local_dy_xhat]).double()
        dist.all_reduce(sums)
        mean_dy = (sums[:c] / count).to(x_hat.dtype).view(shape)
        mean_dy_xhat = (sums[c:] / count).to(x_hat.dtype).view(shape)
        grad_x = (grad_out - mean_dy - x_hat * mean_dy_xhat) * (weight * invstd).view(shape)
        return grad_x, local_dy_xhat, local_dy, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics cover the global batch of every rank (gloo/CPU).

    Same parameters, buffers and state-dict keys as ``BatchNorm2d``, so checkpoints move freely
    between world sizes and eval mode (and BatchNorm folding for attacks) is unchanged. Outside a
    process group, or in eval mode, it is plain ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        out, mean, var, count = _GlobalBatchNormFn.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype),
                                                          alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype),
                                                         alpha=momentum)
        return out


def global_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Swap every ``BatchNorm2d`` for a cross-rank one: PyTorch's SyncBatchNorm on GPU (NCCL),
    :class:`GlobalBatchNorm2d` elsewhere. Parameters and buffers are kept (shared, not copied)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            if not child.affine:
                raise ValueError(f"global BatchNorm needs affine BatchNorm layers; {name} is not")
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.weight, new.bias = child.weight, child.bias
            new.train(child.training)
            setattr(module, name, new)
        else:
            global_batchnorm(child, device_type)
    return module
