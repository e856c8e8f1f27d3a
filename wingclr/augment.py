"""SimCLR augmentations, in two interchangeable forms with one parameter set.

* :func:`lightly_transform`: lightly's ``SimCLRTransform`` (PIL, per image, in DataLoader workers),
  the classic path for RGB images.
* :class:`BatchAugment`: the same distribution as batched kornia ops on ``(B, C, H, W)`` tensors,
  on any device ("device" path), for any number of bands. Colour jitter and grayscale act on the
  RGB bands only; other bands get an optional per-band brightness/contrast jitter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn


@dataclass
class AugmentConfig:
    """SimCLR augmentation parameters (lightly's SimCLRTransform defaults)."""

    input_size: int = 224
    min_scale: float = 0.08
    hf_prob: float = 0.5
    vf_prob: float = 0.0
    cj_prob: float = 0.8
    cj_strength: float = 1.0
    cj_bright: float = 0.8
    cj_contrast: float = 0.8
    cj_sat: float = 0.8
    cj_hue: float = 0.2
    gray_prob: float = 0.2
    blur_prob: float = 0.5
    sigmas: tuple[float, float] = (0.1, 2.0)
    band_jitter_prob: float = 0.8  # non-RGB bands: per-band brightness/contrast
    band_jitter: float = 0.4
    rgb_bands: Sequence[int] = field(default_factory=lambda: (0, 1, 2))
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def lightly_transform(cfg: AugmentConfig):
    """lightly's SimCLRTransform for RGB PIL images -> ``[view0, view1]`` float tensors."""
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(
        input_size=cfg.input_size, cj_prob=cfg.cj_prob, cj_strength=cfg.cj_strength,
        cj_bright=cfg.cj_bright, cj_contrast=cfg.cj_contrast, cj_sat=cfg.cj_sat, cj_hue=cfg.cj_hue,
        min_scale=cfg.min_scale, random_gray_scale=cfg.gray_prob, gaussian_blur=cfg.blur_prob,
        sigmas=tuple(cfg.sigmas), vf_prob=cfg.vf_prob, hf_prob=cfg.hf_prob,
        normalize={"mean": list(cfg.mean), "std": list(cfg.std)})


class BandJitter(nn.Module):
    """Independent brightness and contrast factors per sample and band, applied with prob ``p``.

    Input/Output: ``(B, C, H, W)`` float in [0, 1].
    """

    def __init__(self, strength: float, p: float):
        super().__init__()
        self.strength, self.p = strength, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        shape = (b, c, 1, 1)
        apply = torch.rand(shape, device=x.device) < self.p
        bright = 1 + (torch.rand(shape, device=x.device) * 2 - 1) * self.strength
        contrast = 1 + (torch.rand(shape, device=x.device) * 2 - 1) * self.strength
        mean = x.mean(dim=(2, 3), keepdim=True)
        out = ((x * bright - mean * bright) * contrast + mean * bright).clamp(0, 1)
        return torch.where(apply, out, x)


class BatchAugment(nn.Module):
    """One SimCLR view of a batch, on the batch's device.

    Input: ``(B, C, S, S)`` uint8 (or float in [0, 1]). Output: ``(B, C, input_size, input_size)``
    float, normalised with ``cfg.mean`` / ``cfg.std``.
    """

    def __init__(self, cfg: AugmentConfig, in_chans: int):
        super().__init__()
        import kornia.augmentation as K

        self.rgb = [b for b in cfg.rgb_bands if b < in_chans][:3]
        if len(self.rgb) != 3:
            self.rgb = []
        self.other = [c for c in range(in_chans) if c not in self.rgb]
        size = (cfg.input_size, cfg.input_size)
        self.geometric = nn.Sequential(
            K.RandomResizedCrop(size, scale=(cfg.min_scale, 1.0), align_corners=False),
            K.RandomHorizontalFlip(p=cfg.hf_prob),
            K.RandomVerticalFlip(p=cfg.vf_prob),
        )
        s = cfg.cj_strength
        self.colour = nn.Sequential(
            K.ColorJitter(s * cfg.cj_bright, s * cfg.cj_contrast, s * cfg.cj_sat, s * cfg.cj_hue,
                          p=cfg.cj_prob),
            K.RandomGrayscale(p=cfg.gray_prob),
        )
        self.band_jitter = BandJitter(cfg.band_jitter, cfg.band_jitter_prob)
        sigma_max = cfg.sigmas[1]
        kernel = 2 * int(3 * sigma_max + 0.5) + 1
        self.blur = K.RandomGaussianBlur(kernel, tuple(cfg.sigmas), p=cfg.blur_prob)
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        x = self.geometric(x)
        if self.rgb:
            x = x.clone()
            x[:, self.rgb] = self.colour(x[:, self.rgb]).clamp(0, 1)
        if self.other:
            x[:, self.other] = self.band_jitter(x[:, self.other])
        x = self.blur(x)
        return (x - self.mean) / self.std
