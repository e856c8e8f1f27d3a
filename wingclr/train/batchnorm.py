"""Global BatchNorm for multi-process training: statistics over the global batch, as one process.

With several processes each BatchNorm layer would otherwise normalise by the statistics of its
process's share of the batch only (8 of 16 images on 2 GPUs), so the loss and the learned
weights depend on the number of GPUs. The SimCLR paper (global BN) and lightly's distributed
example synchronise them. On GPUs :func:`sync_batchnorm` converts every BatchNorm layer with
timm's converter (torch's ``SyncBatchNorm``, and timm's ``SyncBatchNormAct``, which keeps the
activation of timm's ``BatchNormAct2d`` that torch's own converter would drop). torch's
``SyncBatchNorm`` runs on GPUs only; CPU processes (DDP over gloo) get :class:`GlobalBatchNorm`,
the same statistics from one autograd-aware all-reduce per layer.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of each process's share is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def global_batch_norm(layer: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s training-mode BatchNorm of ``x`` ``(B, C, ...)`` with the mean and variance of
    every process's batch: per-channel count, sum and sum of squares are summed over the
    processes (gradients flow back through the sum to every process's images)."""
    c, dims = x.shape[1], [0, *range(2, x.dim())]
    xf = x.float()
    count = torch.full((1,), x.numel() / c, dtype=xf.dtype, device=x.device)
    total = _AllReduceSum.apply(torch.cat([count, xf.sum(dims), (xf * xf).sum(dims)]), dist.group.WORLD)
    n, mean = total[0], total[1:c + 1] / total[0]
    var = (total[c + 1:] / n - mean * mean).clamp_min(0)
    if layer.track_running_stats:
        with torch.no_grad():
            layer.num_batches_tracked.add_(1)
            m = layer.momentum if layer.momentum is not None else 1 / float(layer.num_batches_tracked)
            layer.running_mean.lerp_(mean.to(layer.running_mean.dtype), m)
            unbiased = var * n / max(float(n) - 1, 1)
            layer.running_var.lerp_(unbiased.to(layer.running_var.dtype), m)
    shape = [1, c] + [1] * (x.dim() - 2)
    y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + layer.eps)
    if layer.affine:
        y = y * layer.weight.view(shape) + layer.bias.view(shape)
    return y.to(x.dtype)


class GlobalBatchNorm:
    """Mixed in before a BatchNorm layer's class: in training mode with several processes its
    forward is :func:`global_batch_norm` (then the dropout and activation of timm's
    ``BatchNormAct2d``); otherwise the layer's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        y = global_batch_norm(self, x)
        if hasattr(self, "act"):  # timm's BatchNormAct2d
            y = self.act(self.drop(y))
        return y


@cache
def _global_class(cls: type) -> type:
    return type(f"Global{cls.__name__}", (GlobalBatchNorm, cls), {"__module__": __name__})


def sync_batchnorm(module: nn.Module, *, cuda: bool) -> nn.Module:
    """Every BatchNorm layer of ``module`` normalised over the global batch of all processes.

    Args:
        cuda: the processes train on GPUs (torch's ``SyncBatchNorm``; else :class:`GlobalBatchNorm`,
            as DDP refuses ``SyncBatchNorm`` layers on a CPU).

    Returns:
        ``module`` with its layers converted (a BatchNorm ``module`` itself is returned converted).
        Weights and running statistics are kept; the state dict's keys are the same.
    """
    if cuda:
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(module)
    for layer in module.modules():
        if isinstance(layer, _BatchNorm) and not isinstance(layer, GlobalBatchNorm):
            layer.__class__ = _global_class(type(layer))
    return module
