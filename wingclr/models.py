"""Backbone factory: torchvision networks as feature extractors for C-channel images.

Every backbone returns ``(B, D)`` features (classifier removed). For ``in_chans != 3`` the first
convolution is rebuilt; with ImageNet weights its filters are set as follows (README "Bands"):

* input bands listed in ``rgb_bands`` keep the pretrained R, G, B filters;
* every other band gets the mean of the three RGB filters;
* a single band with no RGB bands gets their sum (what a gray image copied to RGB would see).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    builder: str       # torchvision.models function name
    weights: str       # torchvision weights enum member, e.g. "ResNet50_Weights.IMAGENET1K_V2"
    dim: int           # feature size
    first_conv: str    # dotted path of the first convolution
    head: str          # dotted path of the classifier part replaced by Identity
    keep_head: int = 0  # for Sequential heads: keep this many leading layers


BACKBONES = {
    "resnet18": BackboneSpec("resnet18", "ResNet18_Weights.IMAGENET1K_V1", 512, "conv1", "fc"),
    "resnet50": BackboneSpec("resnet50", "ResNet50_Weights.IMAGENET1K_V2", 2048, "conv1", "fc"),
    "efficientnet_b0": BackboneSpec("efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1",
                                    1280, "features.0.0", "classifier"),
    "vit_b_16": BackboneSpec("vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1", 768, "conv_proj", "heads"),
    # VGG16's fc7 (4096-d), the classic clustering feature
    "vgg16": BackboneSpec("vgg16", "VGG16_Weights.IMAGENET1K_V1", 4096, "features.0", "classifier",
                          keep_head=5),
}


def channel_stats(in_chans: int, rgb_bands: Sequence[int]) -> tuple[list[float], list[float]]:
    """Per-channel normalisation: ImageNet statistics for RGB bands, 0.45 / 0.225 for others."""
    mean, std = [0.45] * in_chans, [0.225] * in_chans
    for i, band in enumerate(list(rgb_bands)[:3]):
        mean[band], std[band] = IMAGENET_MEAN[i], IMAGENET_STD[i]
    return mean, std


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _set(module: nn.Module, dotted: str, value: nn.Module) -> None:
    parent, _, last = dotted.rpartition(".")
    owner = _get(module, parent) if parent else module
    if last.isdigit():
        owner[int(last)] = value
    else:
        setattr(owner, last, value)


def adapt_first_conv(conv: nn.Conv2d, in_chans: int, rgb_bands: Sequence[int]) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_chans`` inputs, filters set by the module's rules.

    Args:
        conv: pretrained 3-input convolution, weight ``(O, 3, k, k)``.
        in_chans: new number of input channels C.
        rgb_bands: indices (within C) of the R, G, B bands, in that order; may be empty.

    Returns:
        Convolution with weight ``(O, C, k, k)``.
    """
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        w = conv.weight  # (O, 3, k, k)
        if in_chans == 1 and not rgb_bands:
            new.weight.copy_(w.sum(1, keepdim=True))
        else:
            new.weight.copy_(w.mean(1, keepdim=True).expand(-1, in_chans, -1, -1))
            for i, band in enumerate(list(rgb_bands)[:3]):
                new.weight[:, band] = w[:, i]
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _weights_enum(spec: BackboneSpec):
    import torchvision.models as tvm

    enum_name, member = spec.weights.split(".")
    return getattr(getattr(tvm, enum_name), member)


def build_backbone(name: str, pretrained: bool, in_chans: int = 3,
                   rgb_bands: Sequence[int] = (0, 1, 2), image_size: int = 224,
                   state_loader: Callable | None = None) -> tuple[nn.Module, int]:
    """Build a feature extractor.

    Args:
        name: key of :data:`BACKBONES`.
        pretrained: load ImageNet weights through :mod:`wingclr.weights` (error if missing).
        in_chans: number of input channels C.
        rgb_bands: which of the C inputs are R, G, B (for first-layer adaptation).
        image_size: input size (ViT position embeddings are interpolated to it).
        state_loader: override for loading the weights enum (tests).

    Returns:
        ``(module, D)``: module maps ``(B, C, H, W)`` float to ``(B, D)``.
    """
    import torchvision.models as tvm

    from .cli import UserError
    from .weights import torchvision_state_dict

    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    kwargs = {"image_size": image_size} if name.startswith("vit") else {}
    model = getattr(tvm, spec.builder)(weights=None, **kwargs)
    if pretrained:
        loader = state_loader or torchvision_state_dict
        state = loader(_weights_enum(spec), hint="or pass --pretrained none for random initialisation")
        if name.startswith("vit") and image_size != 224:
            from torchvision.models.vision_transformer import interpolate_embeddings

            state = interpolate_embeddings(image_size, 16, state)
        model.load_state_dict(state)
    rgb_bands = [b for b in rgb_bands if b < in_chans]
    if in_chans != 3 or list(rgb_bands) != [0, 1, 2]:
        _set(model, spec.first_conv, adapt_first_conv(_get(model, spec.first_conv), in_chans, rgb_bands))
    head = _get(model, spec.head)
    _set(model, spec.head, head[: spec.keep_head] if spec.keep_head else nn.Identity())
    return model, spec.dim
