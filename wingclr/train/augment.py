"""SimCLR augmentations, in two interchangeable forms with one parameter set.

* :func:`lightly_transform`: lightly's ``SimCLRTransform`` (PIL, one image at a time, in DataLoader
  workers), the classic path for RGB images.
* :class:`BatchAugment`: the same distribution as batched tensor ops on ``(B, C, H, W)``, on any
  device (the fast "device" path), for any number of bands. Parameters are drawn per image exactly
  as torchvision draws them (:meth:`BatchAugment.sample`); colour jitter (random order of
  brightness, contrast, saturation, hue, as torchvision) and grayscale act on the RGB bands only;
  other bands get a per-band brightness/contrast jitter instead.

The ops are plain torch (one ``grid_sample`` crops, flips, turns and resizes the whole batch)
because kornia's augmentation modules cost ~10x more per batch on a CPU; on a GPU both are
negligible next to the model. They never wait for the device (no ``nonzero``, boolean-mask
indexing or host reads): each op runs on the whole batch with per-image parameters that leave an
image unchanged when its coin flip says no (factor 1, a one-tap kernel) or picks per image with
``torch.where``, as DALI's per-sample coin flips do. An op whose probability is 0 is skipped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn

GRAY = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision and kornia
CHUNK_BYTES = 256 << 20  # float32 input per slice of BatchAugment.forward


@dataclass
class AugmentConfig:
    """SimCLR augmentation parameters (lightly's SimCLRTransform defaults)."""

    input_size: int = 224
    min_scale: float = 0.08
    hf_prob: float = 0.5
    vf_prob: float = 0.0
    rr_prob: float = 0.0  # 90-degree counter-clockwise rotation (lightly's rr_prob)
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
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def lightly_transform(cfg: AugmentConfig):
    """lightly's SimCLRTransform for RGB PIL images -> ``[view0, view1]`` float tensors."""
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(
        input_size=cfg.input_size, cj_prob=cfg.cj_prob, cj_strength=cfg.cj_strength,
        cj_bright=cfg.cj_bright, cj_contrast=cfg.cj_contrast, cj_sat=cfg.cj_sat, cj_hue=cfg.cj_hue,
        min_scale=cfg.min_scale, random_gray_scale=cfg.gray_prob, gaussian_blur=cfg.blur_prob,
        sigmas=tuple(cfg.sigmas), vf_prob=cfg.vf_prob, hf_prob=cfg.hf_prob, rr_prob=cfg.rr_prob,
        normalize={"mean": list(cfg.mean), "std": list(cfg.std)})


def batch_seed(*keys: int) -> int:
    """A 64-bit seed for one batch's augmentations from whole-number keys (seed, epoch or step,
    process, ...): the same keys give the same augmentations whatever was drawn before, so a
    resumed run augments each batch as the uninterrupted run did."""
    import numpy as np

    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])


def _uniform(n: int, lo: float, hi: float, device, g=None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device, generator=g)


def _bernoulli(n: int, p: float, device, g=None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=g) < p


def sample_crops(n: int, height: int, width: int, scale: tuple[float, float],
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), device="cpu", g=None) -> torch.Tensor:
    """torchvision ``RandomResizedCrop.get_params`` for ``n`` images at once.

    Returns:
        ``(n, 4)`` float boxes ``x0, y0, x1, y1`` in pixels (end exclusive).
    """
    tries = 10
    area = height * width * _uniform(n * tries, *scale, device, g).view(n, tries)
    log_r = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), device, g).view(n, tries)
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.float().argmax(1, keepdim=True)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    found = ok.any(1)
    in_ratio = width / height  # fallback: central crop, as torchvision
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    w, h = torch.where(found, w, float(fw)), torch.where(found, h, float(fh))
    y0 = torch.floor(torch.rand(n, device=device, generator=g) * (height - h + 1))
    x0 = torch.floor(torch.rand(n, device=device, generator=g) * (width - w + 1))
    y0 = torch.where(found, y0, torch.div(height - h, 2, rounding_mode="floor"))
    x0 = torch.where(found, x0, torch.div(width - w, 2, rounding_mode="floor"))
    return torch.stack([x0, y0, x0 + w, y0 + h], 1)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, 1, H, W)``."""
    return GRAY[0] * x[:, 0:1] + GRAY[1] * x[:, 1:2] + GRAY[2] * x[:, 2:3]


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's HSV hue shift with one factor per image, in closed form.

    ``x``: ``(B, 3, H, W)`` in [0, 1]; ``factor``: ``(B,)`` in [-0.5, 0.5]. Value and chroma are
    kept; the hue angle (in sixths) moves by ``6 * factor`` and each channel is
    ``v - c * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + h) mod 6``, n = 5, 3, 1 for R, G, B.
    Written with in-place ops on few buffers: on a CPU this chain is bound by memory traffic.
    """
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    v = torch.maximum(r, g)  # elementwise: much faster than max over dim 1
    torch.maximum(v, b, out=v)
    c = torch.minimum(r, g)
    torch.minimum(c, b, out=c)
    c.neg_().add_(v)  # chroma
    # hue x chroma in sixths, from the largest channel: R + 0, G + 2, B + 4 sixths (ties: R, then G)
    h = torch.where(v == r, g - b, torch.where(v == g, (b - r).add_(c, alpha=2), (r - g).add_(c, alpha=4)))
    h.div_(torch.where(c == 0, 1.0, c)).add_(6 * factor.view(-1, 1, 1, 1))
    k = h + torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)  # no host copy
    k.remainder_(6.0).sub_(2).abs_().neg_().add_(2).clamp_(0, 1)  # min(k, 4 - k) = 2 - |k - 2|
    return k.mul_(c).neg_().add_(v)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int, hflip: torch.Tensor | None = None,
                vflip: torch.Tensor | None = None, rotate: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinear crop-and-resize of each image to ``size`` x ``size`` (one ``grid_sample``).

    ``x`` ``(B, C, H, W)``; ``boxes`` ``(B, 4)`` pixel boxes ``x0, y0, x1, y1`` (end exclusive);
    ``hflip`` / ``vflip`` ``(B,)`` bool flip the output, then ``rotate`` ``(B,)`` bool turns it
    90 degrees counter-clockwise (``torch.rot90(y, 1, (2, 3))``), all by moving the sampling grid:
    the same numbers as flipping and turning the resized crop, without copying the batch again.
    """
    b, _, hgt, wid = x.shape
    x0, y0, x1, y1 = boxes.to(x.dtype).unbind(1)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = (x1 - x0) / wid, (x0 + x1) / wid - 1
    theta[:, 1, 1], theta[:, 1, 2] = (y1 - y0) / hgt, (y0 + y1) / hgt - 1
    for axis, flip in ((0, hflip), (1, vflip)):
        if flip is not None:
            theta[:, axis, axis] *= 1 - 2 * flip.to(x.dtype)
    if rotate is not None:  # the turned output at (u, v) is the unturned one at (-v, u)
        r = rotate.to(x.dtype).view(-1, 1)
        du, dv = theta[:, :, 0], theta[:, :, 1]
        theta = torch.stack([du * (1 - r) + dv * r, dv * (1 - r) - du * r, theta[:, :, 2]], 2)
    grid = nn.functional.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, sigma_max: float,
                  on: torch.Tensor | None = None) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image; ``x`` ``(B, C, H, W)``, ``sigma`` ``(B,)``.

    Each pass is a weighted sum of shifted copies (reflect padding): ~1.5x faster on a CPU than a
    grouped convolution with one group per image and band. Images where ``on`` ``(B,)`` is False
    get a one-tap kernel (1 at the centre, 0 elsewhere), which returns them exactly.
    """
    b, c, hgt, wid = x.shape
    radius = max(1, math.ceil(3 * sigma_max))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kern = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kern = kern / kern.sum(1, keepdim=True)
    if on is not None:
        kern = torch.where(on.view(-1, 1), kern, (t == 0).to(x.dtype))
    kern = kern.view(b, 1, 1, 1, -1)  # (B, 1, 1, 1, k)
    for dim, size, pad in ((3, wid, (radius, radius, 0, 0)), (2, hgt, (0, 0, radius, radius))):
        y = nn.functional.pad(x, pad, mode="reflect")
        x = y.narrow(dim, 0, size) * kern[..., 0]
        for i in range(1, 2 * radius + 1):
            x.addcmul_(y.narrow(dim, i, size), kern[..., i])
    return x


class BatchAugment(nn.Module):
    """One SimCLR view of a batch, on the batch's device.

    Input: ``(B, C, S, S)`` uint8 (or float in [0, 1]). Output: ``(B, C, input_size, input_size)``
    float, normalised with ``cfg.mean`` / ``cfg.std``.
    """

    def __init__(self, cfg: AugmentConfig, in_chans: int):
        super().__init__()
        self.cfg, self.in_chans = cfg, in_chans
        rgb = [b for b in cfg.rgb_bands if b < in_chans][:3]
        self.rgb = rgb if len(rgb) == 3 else []
        self.other = [c for c in range(in_chans) if c not in self.rgb]
        for name, bands in (("rgb_index", self.rgb), ("other_index", self.other)):  # no host copy per batch
            self.register_buffer(name, torch.tensor(bands, dtype=torch.long), persistent=False)
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    def sample(self, n: int, height: int, width: int, device="cpu", g=None) -> dict:
        """Per-image parameters, drawn as torchvision / lightly draw them."""
        cfg, s = self.cfg, self.cfg.cj_strength
        jitter = [s * cfg.cj_bright, s * cfg.cj_contrast, s * cfg.cj_sat]
        factors = [_uniform(n, max(0.0, 1 - j), 1 + j, device, g) for j in jitter]
        factors.append(_uniform(n, -s * cfg.cj_hue, s * cfg.cj_hue, device, g))
        return {
            "box": sample_crops(n, height, width, (cfg.min_scale, 1.0), device=device, g=g),
            "hflip": _bernoulli(n, cfg.hf_prob, device, g),
            "vflip": _bernoulli(n, cfg.vf_prob, device, g),
            "rotate": _bernoulli(n, cfg.rr_prob, device, g),
            "jitter": _bernoulli(n, cfg.cj_prob, device, g),
            "factors": torch.stack(factors, 1),  # brightness, contrast, saturation, hue
            "order": torch.argsort(torch.rand(n, 4, device=device, generator=g), 1),
            "gray": _bernoulli(n, cfg.gray_prob, device, g),
            "blur": _bernoulli(n, cfg.blur_prob, device, g),
            "sigma": _uniform(n, *cfg.sigmas, device, g),
            "band_jitter": _bernoulli(n * len(self.other), cfg.band_jitter_prob, device, g).view(n, -1),
            "band_factors": _uniform(n * len(self.other) * 2, 1 - cfg.band_jitter,  # bright, contrast
                                     1 + cfg.band_jitter, device, g).view(n, 2, -1),
        }  # every entry has one row per image, so a batch can be augmented in slices

    def _colour(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        """Colour jitter in per-image random order, then grayscale; ``x`` ``(B, 3, H, W)``.

        The hue shift (the costly op) runs once on the whole batch, picked per image with
        ``torch.where``: first every image's ops ordered before its hue shift (three slots), then
        the hue shift, then the ops after it (three slots). Brightness, contrast and saturation
        are one blend ``x k + (1 - k) target`` (target 0, the image's mean gray or its gray); an
        image with no op in a slot gets k = 1, which leaves it exactly as it is.
        """
        if self.cfg.cj_prob > 0:
            f, order, n = p["factors"], p["order"], x.shape[0]
            hue_at = (order == 3).int().argmax(1)
            slots = torch.arange(4, device=x.device)
            before = p["jitter"].view(n, 1) & (slots.view(1, 4) < hue_at.view(n, 1))
            after = p["jitter"].view(n, 1) & (slots.view(1, 4) > hue_at.view(n, 1))
            for slot in (0, 1, 2):
                x = self._blend(x, torch.where(before[:, slot], order[:, slot], -1), f)
            x = torch.where(p["jitter"].view(n, 1, 1, 1), adjust_hue(x, f[:, 3]).clamp_(0, 1), x)
            for slot in (1, 2, 3):
                x = self._blend(x, torch.where(after[:, slot], order[:, slot], -1), f)
        if self.cfg.gray_prob > 0:
            x = torch.where(p["gray"].view(-1, 1, 1, 1), rgb_to_gray(x).expand_as(x), x)
        return x

    @staticmethod
    def _blend(x: torch.Tensor, op: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Brightness (op 0), contrast (1) or saturation (2) per image, then clamp; -1: none."""
        n = x.shape[0]
        op = op.view(n, 1, 1, 1)
        k = torch.where(op >= 0, f[:, :3].gather(1, op.view(n, 1).clamp(0, 2)).view(n, 1, 1, 1), 1.0)
        gray = rgb_to_gray(x)
        target = torch.where(op == 2, gray, gray.mean((1, 2, 3), keepdim=True) * (op == 1))
        return (x * k).add_(target.mul_(1 - k)).clamp_(0, 1)

    def _bands(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        """Per-band brightness and contrast for non-RGB bands, in place; ``x`` ``(B, K, H, W)``.

        Bands left alone get factors 1 (and x is in [0, 1], so the clamp keeps them): no copies
        of the batch, which matters for hyperspectral cubes.
        """
        b, k = x.shape[:2]
        on = p["band_jitter"].view(b, k, 1, 1)
        bright, contrast = (torch.where(on, f.view(b, k, 1, 1), 1.0) for f in p["band_factors"].unbind(1))
        mean = x.mean((2, 3), keepdim=True)
        return x.sub_(mean).mul_(contrast).add_(mean).mul_(bright).clamp_(0, 1)

    def apply(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        """``(B, C, H, W)`` uint8 or float images and :meth:`sample`'s parameters -> one view."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        cfg = self.cfg
        x = crop_resize(x, p["box"], cfg.input_size, p["hflip"], p["vflip"],
                        p["rotate"] if cfg.rr_prob > 0 else None)
        if self.rgb == [0, 1, 2] and x.shape[1] == 3:
            x = self._colour(x, p)
        elif self.rgb:
            x.index_copy_(1, self.rgb_index, self._colour(x.index_select(1, self.rgb_index), p))
        if len(self.other) == x.shape[1]:  # no RGB bands: jitter the batch itself
            self._bands(x, p)
        elif self.other:
            x.index_copy_(1, self.other_index, self._bands(x.index_select(1, self.other_index), p))
        if cfg.blur_prob > 0:
            x = gaussian_blur(x, p["sigma"], cfg.sigmas[1], p["blur"])
        return x.sub_(self.mean).div_(self.std)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """One view of ``x`` ``(B, C, S, S)``; batches of large images go through in slices.

        ``g``: the generator the random parameters come from (default: torch's global one).

        A slice holds at most ``CHUNK_BYTES`` of float32 input, so the temporaries of the ops
        stay small next to the output (hyperspectral cubes: a 408-band image at 224 px is 82 MB
        as float32); RGB batches of usual sizes go through whole.
        """
        n = x.shape[0]
        p = self.sample(n, x.shape[-2], x.shape[-1], x.device, g)
        step = max(1, CHUNK_BYTES // (x[0].numel() * 4))
        if step >= n:
            return self.apply(x, p)
        out = None
        for i in range(0, n, step):
            y = self.apply(x[i:i + step], {k: v[i:i + step] for k, v in p.items()})
            if out is None:
                out = y.new_empty((n, *y.shape[1:]))
            out[i:i + step] = y
        return out
