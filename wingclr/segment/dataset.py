"""Mask R-CNN training data: annotated photos as ``(image, target)`` with flip augmentation.

A horizontal flip mirrors the specimen, so a left wing becomes a right wing: the class names are
swapped (``left`` <-> ``right`` in the name) along with the pixels. Scale jitter is done by the
model's own resize (several ``min_size`` values during training, see ``segmentation_train``).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..cli import UserError
from ..imageio import ImageReadError
from .annotations import Annotated, instances
from .stage import load_rgb


SWAP = {"left": "right", "right": "left"}


def mirror_name(name: str) -> str:
    """``forewing_left`` -> ``forewing_right`` (case kept); names without left/right unchanged."""
    def swap(m: re.Match) -> str:
        word, new = m.group(0), SWAP[m.group(0).lower()]
        return new.upper() if word.isupper() else new.capitalize() if word[0].isupper() else new

    return re.sub(r"(?i)left|right", swap, name)


def flip_permutation(classes: Sequence[str]) -> np.ndarray:
    """Label map of a horizontal flip: ``perm[k]`` is the label class ``k`` becomes (0 stays 0).

    A class without a mirrored partner keeps its label.
    """
    index = {name: k for k, name in enumerate(classes, start=1)}
    return np.array([0] + [index.get(mirror_name(name), k) for k, name in enumerate(classes, 1)],
                    np.int64)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` bool -> ``(N, 4)`` float32 boxes ``x0, y0, x1, y1`` (exclusive ends)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


def load_sample(item: Annotated, num_classes: int, max_side: int):
    """Read a photo and its instances, both downscaled to ``max_side``.

    Returns:
        ``rgb (H, W, 3) uint8``, ``labels (N,) int64``, ``masks (N, H, W) bool``.

    Raises:
        ImageReadError: unreadable photo, or a mask whose size differs from the photo's.
    """
    full, rgb = load_rgb(item.image, max_side, (255, 255, 255))
    labels, masks = instances(item, num_classes)
    if masks.shape[1:] != full.shape[:2]:
        raise ImageReadError(item.image, f"mask size {masks.shape[2]}x{masks.shape[1]} differs from "
                                         f"the image size {full.shape[1]}x{full.shape[0]}")
    h, w = rgb.shape[:2]
    if (h, w) != full.shape[:2] and len(masks):
        masks = np.stack([cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
                          for m in masks]).astype(bool)
    masks = masks.reshape(len(masks), h, w)
    keep = masks.reshape(len(masks), -1).any(1) if len(masks) else np.zeros(0, bool)
    return rgb, labels[keep], masks[keep]


class WingDataset(Dataset):
    """``(image (3, H, W) float in [0, 1], target)`` pairs for torchvision's Mask R-CNN.

    ``target`` holds ``boxes (N, 4) float``, ``labels (N,) int64`` and ``masks (N, H, W) uint8``.

    Args:
        items: annotated photos.
        classes: class names, label k = ``classes[k - 1]``.
        train: apply the flips.
        hflip, vflip: probabilities of a horizontal (class-swapping) and a vertical flip.
        max_side: photos are downscaled to at most this longer side when read.
    """

    def __init__(self, items: Sequence[Annotated], classes: Sequence[str], train: bool,
                 hflip: float = 0.5, vflip: float = 0.0, max_side: int = 2048):
        self.items, self.classes, self.train = list(items), list(classes), train
        self.hflip, self.vflip, self.max_side = hflip, vflip, max_side
        self.perm = flip_permutation(classes)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        rgb, labels, masks = load_sample(self.items[i], len(self.classes), self.max_side)
        if self.train and torch.rand(()) < self.hflip:
            rgb, masks, labels = rgb[:, ::-1], masks[:, :, ::-1], self.perm[labels]
        if self.train and torch.rand(()) < self.vflip:
            rgb, masks = rgb[::-1], masks[:, ::-1]
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255  # copy: read-only views
        target = {"boxes": torch.from_numpy(masks_to_boxes(masks)).reshape(-1, 4),
                  "labels": torch.from_numpy(np.asarray(labels, np.int64)),
                  "masks": torch.from_numpy(np.ascontiguousarray(masks, np.uint8))}
        return image, target


def collate(batch):
    """Lists of images and targets (Mask R-CNN takes images of different sizes)."""
    return tuple(zip(*batch))


def check_items(items: Sequence[Annotated], num_classes: int, max_side: int,
                workers: int = 2) -> tuple[list[Annotated], list[tuple[str, str]]]:
    """Read every annotated photo once before training.

    Returns:
        ``(usable, skipped)``: photos that load, and ``(file, reason)`` of those that do not
        (unreadable photo, mask of another size, no instance).

    Raises:
        UserError: a mask holds labels that the classes do not name (annotation/class mismatch).
    """
    def check(item: Annotated) -> str:
        try:
            _, labels, _ = load_sample(item, num_classes, max_side)
        except ImageReadError as e:
            return e.reason
        except ValueError as e:  # a malformed RLE or polygon
            return f"bad annotation ({e})"
        return "" if len(labels) else "no annotated wing"

    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(check, items))
    usable = [it for it, r in zip(items, reasons) if not r]
    skipped = [(it.rel, r) for it, r in zip(items, reasons) if r]
    if not usable:
        raise UserError(f"none of the {len(items)} annotated photos can be used; first problem: "
                        f"{skipped[0][0]}: {skipped[0][1]}")
    return usable, skipped


def split_items(items: Sequence[Annotated], val_fraction: float,
                seed: int) -> tuple[list[Annotated], list[Annotated]]:
    """Seeded train/validation split; validation gets ``round(n * val_fraction)`` (>= 1 when n >= 2)."""
    n = len(items)
    n_val = min(max(round(n * val_fraction), 1), n - 1) if n >= 2 and val_fraction > 0 else 0
    order = np.random.default_rng(seed).permutation(n)
    val = set(order[:n_val].tolist())
    return ([it for i, it in enumerate(items) if i not in val],
            [it for i, it in enumerate(items) if i in val])
