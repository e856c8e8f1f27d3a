"""Weight-space interpolation between the ImageNet start and the SimCLR-trained backbone.

``--interpolate a`` makes the run's checkpoint hold ``(1 - a) * start + a * trained`` for every
floating-point backbone tensor (weights, biases and BatchNorm running statistics); integer
buffers (``num_batches_tracked``) and the projection head are the trained ones. This is WiSE-FT
(Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): fine-tuned and
pretrained weights of one network lie in one low-loss basin, and points between them often beat
both ends. On skewed specimen collections SimCLR's last epoch scored below frozen ImageNet on
every task while ``a = 0.25`` scored at or above it (README "Real specimens").

Example:
    >>> start = start_state(backbone="resnet18", in_chans=3, rgb_bands=(0, 1, 2), input_size=64)
    >>> mixed = interpolated(model.backbone.state_dict(), start, alpha=0.25)
    >>> model.backbone.load_state_dict(mixed)
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from ..models import build_backbone


def state_copy(model: torch.nn.Module) -> dict:
    """A CPU copy of ``model``'s state dict (the start, kept while training changes the model)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def start_state(*, backbone: str, in_chans: int, rgb_bands: Sequence[int], input_size: int) -> dict:
    """The pretrained backbone's state dict, built again from its weights file (the same tensors
    the run started from: building is deterministic), on the CPU. A run that resumes needs it; a
    fresh run copies its just-built backbone instead (:func:`state_copy`)."""
    model, _ = build_backbone(backbone, True, in_chans, list(rgb_bands), input_size)
    return state_copy(model)


def interpolated(trained: dict, start: dict, *, alpha: float) -> dict:
    """``(1 - alpha) * start + alpha * trained`` for floating-point tensors, ``trained`` otherwise.

    Args:
        trained: the backbone's state dict after training (any device).
        start: :func:`start_state` (same keys and shapes).
        alpha: weight of the trained tensors, in [0, 1] (1: ``trained`` unchanged).

    Returns:
        A new state dict on ``trained``'s devices and dtypes.
    """
    out = {}
    for key, value in trained.items():
        if value.is_floating_point():
            begin = start[key].to(device=value.device, dtype=value.dtype)
            out[key] = torch.lerp(begin, value.detach(), alpha)
        else:
            out[key] = value
    return out


def interpolated_copy(backbone: torch.nn.Module, start: dict | None, *, alpha: float) -> torch.nn.Module:
    """``backbone`` itself when there is nothing to mix (``start`` None or ``alpha`` 1), else a
    copy holding :func:`interpolated` weights (the training weights stay untouched)."""
    if start is None or alpha >= 1:
        return backbone
    mixed = copy.deepcopy(backbone)
    mixed.load_state_dict(interpolated(backbone.state_dict(), start, alpha=alpha))
    return mixed
