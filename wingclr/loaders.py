"""DataLoaders and model set-up for stage 3 (training) and stage 4 (embedding)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from .augment import AugmentConfig, BatchAugment, lightly_transform
from .cli import UserError
from .data import FolderDataset, ImageSet, ReadSpec, probe_channels, scan_clusters
from .models import BACKBONES, channel_stats


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


class TwoViews:
    """Picklable per-image transform for DataLoader workers: ``(S, S, C)`` uint8 -> [view0, view1].

    RGB images go through lightly's SimCLRTransform; other band counts through the batched
    kornia pipeline applied to a batch of one.
    """

    def __init__(self, cfg: AugmentConfig, in_chans: int):
        self.cfg, self.in_chans = cfg, in_chans
        self.rgb = in_chans == 3 and list(cfg.rgb_bands) == [0, 1, 2]
        self._t = None

    def __call__(self, arr: np.ndarray):
        if self._t is None:  # built lazily, inside the worker process
            self._t = lightly_transform(self.cfg) if self.rgb else BatchAugment(self.cfg, self.in_chans)
        if self.rgb:
            from PIL import Image

            return self._t(Image.fromarray(arr))
        x = torch.from_numpy(arr).permute(2, 0, 1)[None]
        return [self._t(x)[0], self._t(x)[0]]


def balanced_sampler(clusters: list[str]) -> WeightedRandomSampler:
    """Every cluster is drawn equally often (weights 1 / cluster size), with replacement."""
    counts = Counter(clusters)
    weights = torch.tensor([1.0 / counts[c] for c in clusters], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples=len(clusters), replacement=True)


def training_images(data: Path) -> ImageSet:
    """The images SimCLR trains on: ``<data>/unlabeled/`` (all images, by cluster)."""
    data = Path(data)
    root = data / "unlabeled" if (data / "unlabeled").is_dir() else data
    return scan_clusters(root, what="training data")


def model_meta(args, in_chans: int) -> dict:
    """What stage 4 needs to rebuild the backbone and read images the same way."""
    rgb = [int(b) for b in args.rgb_bands.split(",")] if args.rgb_bands else (
        [0, 1, 2] if in_chans >= 3 else [])
    if any(b >= in_chans for b in rgb):
        raise UserError(f"--rgb-bands {args.rgb_bands} names a band beyond the {in_chans} "
                        "channels of the data (bands are numbered from 0)")
    mean, std = channel_stats(in_chans, rgb)
    return {"backbone": args.backbone, "in_chans": in_chans, "rgb_bands": rgb,
            "bands": args.bands, "input_size": args.input_size,
            "cache_size": args.cache_size or args.input_size, "mean": mean, "std": std,
            "background": list(args.background), "scale16": args.scale16,
            "embedding_dim": BACKBONES[args.backbone].dim}


def read_spec(meta: dict, size: int | None = None) -> ReadSpec:
    return ReadSpec(size=size or meta["input_size"], channels=meta["in_chans"], bands=meta["bands"],
                    background=tuple(meta["background"]), scale16=meta["scale16"])


def build_training(args, trainer, pretrained: bool):
    """Model, DataLoader and metadata for a training run.

    Returns:
        ``(module, loader, meta)``; the loader yields per-process batches of
        ``args.batch_size // world_size`` images.
    """
    from .simclr import WEIGHT_DECAY, SimCLR, scaled_lr

    images = training_images(args.data)
    in_chans = probe_channels(images.root, images.images, args.bands)
    meta = model_meta(args, in_chans)
    world = trainer.world_size
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} is not divisible by the {world} processes")
    per_device = args.batch_size // world
    if len(images) < args.batch_size:
        raise UserError(f"{images.root} holds {len(images)} images, fewer than --batch-size "
                        f"{args.batch_size}; pass a smaller --batch-size")
    cfg = AugmentConfig(input_size=args.input_size, rgb_bands=meta["rgb_bands"], mean=meta["mean"],
                        std=meta["std"])
    on_device = args.augment_on == "device" or (
        args.augment_on == "auto" and trainer.strategy.root_device.type == "cuda")
    spec = read_spec(meta, meta["cache_size"])
    dataset = FolderDataset(images.root, images.images, spec,
                            transform=None if on_device else TwoViews(cfg, in_chans))
    sampler = balanced_sampler(images.clusters) if args.balance == "clusters" else None
    workers = default_workers() if args.num_workers is None else args.num_workers
    loader = DataLoader(dataset, batch_size=per_device, shuffle=sampler is None, sampler=sampler,
                        num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                        pin_memory=trainer.strategy.root_device.type == "cuda")
    lr = scaled_lr(args.optimizer, args.batch_size, args.lr)
    module = SimCLR(
        backbone=args.backbone, in_chans=in_chans, rgb_bands=meta["rgb_bands"],
        input_size=args.input_size, temperature=args.temperature, optimizer=args.optimizer, lr=lr,
        weight_decay=WEIGHT_DECAY[args.optimizer] if args.weight_decay is None else args.weight_decay,
        warmup_epochs=args.warmup_epochs, gather_distributed=world > 1,
        augment=cfg.to_dict() if on_device else None, channels_last=args.channels_last,
        pretrained=pretrained and args.pretrained == "imagenet")
    meta.update(augment_on="device" if on_device else "workers", lr=lr, world_size=world,
                images=len(images), clusters=dict(Counter(images.clusters)))
    return module, loader, meta
