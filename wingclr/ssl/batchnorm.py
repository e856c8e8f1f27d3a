"""Global BatchNorm for multi-process training: statistics over the global batch, as one process.

With several processes each BatchNorm layer would otherwise normalise by the statistics of its
process's share of the batch only (8 of 16 images on 2 GPUs), so the loss and the learned
weights depend on the number of GPUs. The SimCLR paper (global BN) and lightly's distributed
example synchronise them. :func:`sync_batchnorm` converts every BatchNorm layer with timm's
converter (torch's ``SyncBatchNorm``, and timm's ``SyncBatchNormAct``, which keeps the activation
of timm's ``BatchNormAct2d`` that torch's own converter would drop). torch's ``SyncBatchNorm``
runs on GPUs only; on CPU processes (DDP over gloo) :class:`GlobalBatchNorm` computes the same
statistics with one autograd-aware all-reduce per layer.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


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


class GlobalBatchNorm(nn.SyncBatchNorm):
    """``SyncBatchNorm`` that also runs on CPU tensors (mixed into each converted layer's class).

    On a CPU in training mode with several processes: the per-channel count, sum and sum of
    squares of the input ``(B, C, ...)`` are summed over the processes (gradients flow back
    through the sum to every process's images); anything else goes to ``SyncBatchNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda or not (self.training and dist.is_available() and dist.is_initialized()
                             and dist.get_world_size(self.process_group) > 1):
            return super().forward(x)
        c, dims = x.shape[1], [0, *range(2, x.dim())]
        xf = x.float()
        count = torch.full((1,), x.numel() / c, dtype=xf.dtype, device=x.device)
        total = _AllReduceSum.apply(torch.cat([count, xf.sum(dims), (xf * xf).sum(dims)]),
                                    self.process_group or dist.group.WORLD)
        n, mean = total[0], total[1:c + 1] / total[0]
        var = (total[c + 1:] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * n / max(float(n) - 1, 1)).to(self.running_var.dtype), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def _with_cpu_path(layer: nn.SyncBatchNorm) -> None:
    """Give a converted layer :class:`GlobalBatchNorm`'s forward (timm's subclass keeps its act)."""
    cls = type(layer)
    if cls is nn.SyncBatchNorm:
        layer.__class__ = GlobalBatchNorm
    elif not issubclass(cls, GlobalBatchNorm):
        layer.__class__ = type(f"Global{cls.__name__}", (cls, GlobalBatchNorm), {})


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm layer of ``module`` normalised over the global batch of all processes.

    Returns:
        ``module`` with its layers replaced (a BatchNorm ``module`` itself is returned converted).
        Weights and running statistics are kept; the state dict's keys are the same.
    """
    from timm.layers import convert_sync_batchnorm

    module = convert_sync_batchnorm(module)
    for layer in module.modules():
        if isinstance(layer, nn.SyncBatchNorm):
            _with_cpu_path(layer)
    return module
