"""Backbone factory: torchvision and timm networks as feature extractors for C-channel images.

Backbones are named by a key of :data:`BACKBONES` (torchvision) or ``timm/<model>`` for any timm
model (``timm/efficientnet_lite0``, ``timm/resnet50``, ``timm/vit_small_patch14_dinov2``; a
pretrained tag such as ``timm/resnet50.a1_in1k`` picks the weights). timm weights are looked up by
:func:`wingclr.weights.timm_weights` (``weights/timm/<model>.safetensors|.pth`` -> Hugging Face
cache -> download when online). Every backbone returns ``(B, D)`` features (classifier removed)
and is normalised with its own pretraining statistics (:func:`rgb_stats`). For ``in_chans != 3`` the first
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

from .cli import UserError
from .weights import (RANDOM_ADVICE, TIMM_SUFFIXES, hub_checkpoint_dir, instead, timm_weights,
                      torchvision_state_dict, weights_dir)

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


TIMM_PREFIX = "timm/"


def is_timm(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def timm_arch(name: str) -> str:
    """``timm/resnet50.a1_in1k`` -> ``resnet50.a1_in1k`` (what ``timm.create_model`` takes)."""
    return name[len(TIMM_PREFIX):]


def timm_cfg(name: str):
    """timm's pretrained config of ``timm/<model>`` (mean, std, first_conv, hf_hub_id, ...)."""
    import timm

    arch = timm_arch(name)
    if not timm.is_model(arch.split(".")[0]):
        raise UserError(f"unknown timm model {arch!r} in --backbone {name}; list them with "
                        "python -c \"import timm; print(timm.list_models('*lite*'))\"")
    model, _, tag = arch.partition(".")
    known = [t.partition(".")[2] for t in timm.list_pretrained(f"{model}.*")]
    if tag and tag not in known:  # timm would stop with "RuntimeError: Invalid pretrained tag"
        raise UserError(f"timm has no pretrained tag {tag!r} for {model} (--backbone {name}); its tags: "
                        f"{', '.join(known) or 'none'} (e.g. --backbone {TIMM_PREFIX}{model}"
                        f"{'.' + known[0] if known else ''})")
    return timm.models.get_pretrained_cfg(arch, allow_unregistered=False)


def check_backbone(name: str) -> str:
    """argparse type for ``--backbone``: a torchvision key or ``timm/<model>``."""
    import argparse

    if name in BACKBONES:
        return name
    if is_timm(name) and timm_arch(name):
        try:
            timm_cfg(name)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return name
    raise argparse.ArgumentTypeError(f"unknown backbone {name!r}: choose {', '.join(sorted(BACKBONES))} "
                                     "or timm/<model> (e.g. timm/efficientnet_lite0)")


def rgb_stats(backbone: str | None = None) -> tuple[tuple, tuple]:
    """Mean and std of the R, G, B inputs the backbone was pretrained with (ImageNet's for
    torchvision; timm's config, e.g. 0.5 / 0.5 for Inception-style models)."""
    if backbone and is_timm(backbone):
        cfg = timm_cfg(backbone)
        return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


def channel_stats(in_chans: int, rgb_bands: Sequence[int],
                  backbone: str | None = None) -> tuple[list[float], list[float]]:
    """Per-channel normalisation: the backbone's RGB statistics (:func:`rgb_stats`) for RGB bands,
    0.45 / 0.225 for others."""
    rgb_mean, rgb_std = rgb_stats(backbone)
    mean, std = [0.45] * in_chans, [0.225] * in_chans
    for i, band in enumerate(list(rgb_bands)[:3]):
        mean[band], std[band] = float(rgb_mean[i]), float(rgb_std[i])
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
                   state_loader: Callable | None = None, *, advice: str | None = None,
                   alternatives: bool = True) -> tuple[nn.Module, int]:
    """Build a feature extractor.

    Args:
        name: key of :data:`BACKBONES` or ``timm/<model>``.
        pretrained: load ImageNet weights through :mod:`wingclr.weights` (error if missing).
        in_chans: number of input channels C.
        rgb_bands: which of the C inputs are R, G, B (for first-layer adaptation).
        image_size: input size (ViT position embeddings are interpolated to it).
        state_loader: override for loading the weights enum (tests).
        advice: last clause of a missing-weights error: what else the calling stage accepts
            (default: ``--pretrained none``).
        alternatives: name the installed backbones (``--backbone ...``) in that error; False
            for callers without a ``--backbone`` flag.

    Returns:
        ``(module, D)``: module maps ``(B, C, H, W)`` float to ``(B, D)``.
    """
    import torchvision.models as tvm

    advice = RANDOM_ADVICE if advice is None else advice
    installed = (instead("--backbone", installed_backbones(exclude=name))
                 if pretrained and alternatives else "")
    rgb_bands = [b for b in rgb_bands if b < in_chans]
    if is_timm(name):
        model = timm_model(name, pretrained, image_size=image_size, advice=advice, installed=installed)
        first = timm_cfg(name).first_conv
        if in_chans != 3 or list(rgb_bands) != [0, 1, 2]:
            _set(model, first, adapt_first_conv(_get(model, first), in_chans, rgb_bands))
        return model, model.num_features
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} or "
                        "timm/<model>")
    spec = BACKBONES[name]
    kwargs = {"image_size": image_size} if name.startswith("vit") else {}
    model = getattr(tvm, spec.builder)(weights=None, **kwargs)
    if pretrained:
        if state_loader is None:
            state = torchvision_state_dict(_weights_enum(spec), advice, installed=installed)
        else:
            state = state_loader(_weights_enum(spec), hint=advice)
        if name.startswith("vit") and image_size != 224:
            from torchvision.models.vision_transformer import interpolate_embeddings

            state = interpolate_embeddings(image_size, 16, state)
        model.load_state_dict(state)
    if in_chans != 3 or list(rgb_bands) != [0, 1, 2]:
        _set(model, spec.first_conv, adapt_first_conv(_get(model, spec.first_conv), in_chans, rgb_bands))
    head = _get(model, spec.head)
    _set(model, spec.head, head[: spec.keep_head] if spec.keep_head else nn.Identity())
    return model, spec.dim


def timm_model(name: str, pretrained: bool, num_classes: int = 0, image_size: int | None = None, *,
               advice: str | None = None, installed: str = "") -> nn.Module:
    """A timm network, its ImageNet weights found by :func:`wingclr.weights.timm_weights`.

    Args:
        name: ``timm/<model>[.<tag>]``.
        pretrained: load weights (a missing file is a :class:`~wingclr.cli.UserError`).
        num_classes: 0 drops the classifier (``(B, C, H, W)`` -> ``(B, num_features)``).
        image_size: for fixed-size models (ViTs): build for this side, position embeddings
            resampled from the pretrained ones.
        advice, installed: clauses of the missing-weights error (:func:`build_backbone`).
    """
    import timm

    advice = RANDOM_ADVICE if advice is None else advice
    cfg = timm_cfg(name)
    kwargs = {"num_classes": num_classes}
    if image_size and getattr(cfg, "fixed_input_size", False):
        kwargs["img_size"] = image_size
    if not pretrained:
        return timm.create_model(timm_arch(name), pretrained=False, **kwargs)
    path = timm_weights(name, cfg, advice=advice, installed=installed)
    overlay = {"file": str(path)} if path is not None else None  # None: timm downloads (online)
    try:
        return timm.create_model(timm_arch(name), pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as e:  # noqa: BLE001 - network and file errors come in many types
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        if path is None:
            raise UserError(f"could not download the weights of {name} ({why}); on a machine without "
                            f"internet put {timm_arch(name).split('.')[0]}.safetensors into "
                            "weights/timm/ (see weights/README.md)" + (f", {advice}" if advice else "")) from None
        raise UserError(f"{path}: weights do not fit timm's {timm_arch(name)} ({why}); "
                        "replace the file") from None


def installed_backbones(*, exclude: str = "") -> list[str]:
    """``--backbone`` values whose ImageNet weights are on this machine (weights/ or hub cache)."""
    found = []
    for name, spec in BACKBONES.items():
        file = _weights_enum(spec).url.rsplit("/", 1)[-1]
        if any((d / file).is_file() for d in (weights_dir(), hub_checkpoint_dir())):
            found.append(name)
    folder = weights_dir() / "timm"
    if folder.is_dir():
        found += sorted({f"timm/{p.name[:-len(suffix)]}" for p in folder.iterdir()
                         for suffix in TIMM_SUFFIXES if p.name.endswith(suffix) and p.is_file()})
    return [n for n in found if n != exclude]
