"""NT-Xent (SimCLR's normalised temperature-scaled cross-entropy) that knows which image each row is.

lightly's ``NTXentLoss`` treats every other row of the batch as a negative. When a balanced
sampler draws an image twice (or a user's folders hold one file twice), the image's own second
copy becomes a negative and the loss pushes it away from itself. Here every pair of rows whose
image index is equal is masked out of the negatives (solo-learn's SimCLR loss builds its masks
from gathered indexes the same way); with distinct indexes the loss equals lightly's exactly
(``tests/test_loss.py``). The similarities are computed in float32 even under bf16 autocast: at
T = 0.1 a bf16 similarity matrix gives gradients a few per cent off. The mask is built on the
device from the indexes, so the loss needs no host-device synchronisation.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020 (arXiv:2002.05709), eq. 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows ``(world * B, ...)`` (gradients flow back to this process's rows) and
    the offset of this process's rows in them. Outside DDP: ``(x, 0)``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from lightly.utils.dist import gather

    return torch.cat(gather(x), 0), dist.get_rank() * x.shape[0]


class IndexedNTXentLoss(nn.Module):
    """NT-Xent over two views, with rows of the same image never used as each other's negatives.

    Args:
        temperature: the softmax temperature T (> 0).
        gather_distributed: gather every process's projections, so the negatives are the global
            batch and the loss equals the single-process loss on it.

    Shapes:
        z0, z1: ``(B, D)`` projections of view 0 and view 1 of the same B images (any dtype).
        index: ``(B,)`` integer id of each row's image (the dataset index), or None when every
            row is a different image.
        output: scalar float32, the mean over the 2B anchors.

    Example:
        >>> loss_fn = IndexedNTXentLoss(temperature=0.5)
        >>> z0, z1 = torch.randn(8, 128), torch.randn(8, 128)
        >>> loss = loss_fn(z0, z1, torch.tensor([0, 1, 2, 3, 4, 5, 6, 0]))  # rows 0 and 7: one image
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.gather_distributed = temperature, gather_distributed

    def forward(self, z0: torch.Tensor, z1: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        b = z0.shape[0]
        with torch.autocast(z0.device.type, enabled=False):
            z0 = F.normalize(z0.float(), dim=1)
            z1 = F.normalize(z1.float(), dim=1)
            if self.gather_distributed:
                z0_all, offset = gather_rows(z0)
                z1_all, _ = gather_rows(z1)
            else:
                z0_all, z1_all, offset = z0, z1, 0
            if index is None:  # every row its own image, across processes too
                index = offset + torch.arange(b, device=z0.device)
            index = index.to(z0.device).long()
            index_all = gather_rows(index)[0] if self.gather_distributed else index
            same = index[:, None] == index_all[None, :]  # (B, world * B): rows of one image
            rows = offset + torch.arange(b, device=z0.device)  # this process's rows among all
            positive = rows[:, None] == torch.arange(len(index_all), device=z0.device)[None, :]
            # anchor view 0: candidates are view 1 (the positive among them) then view 0 (no positive)
            block = torch.cat([same & ~positive, same], dim=1)
            logits0 = torch.cat([z0 @ z1_all.T, z0 @ z0_all.T], dim=1) / self.temperature
            logits1 = torch.cat([z1 @ z0_all.T, z1 @ z1_all.T], dim=1) / self.temperature
            logits = torch.cat([logits0, logits1]).masked_fill(torch.cat([block, block]), float("-inf"))
            return F.cross_entropy(logits, rows.repeat(2))
