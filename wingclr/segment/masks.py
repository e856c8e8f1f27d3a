"""Mask arithmetic for stage 0: instance masks + foreground -> one wing label image.

A segmentation is computed at an *inference* resolution (the photo downscaled to ``--max-side``)
as two uint8 maps of the same shape:

* ``owner`` ``(h, w)``: the label (1..K) each pixel would get if it were foreground, 0 where no
  wing may be (outside the dilated Mask R-CNN masks);
* ``fg`` ``(h, w)``: soft foreground 0..255 (rembg's alpha, a Mask R-CNN probability, or a 0/255
  threshold mask).

:func:`to_full_resolution` turns them into the final label image at the photo's size: ``fg`` is
upscaled linearly and cut at 128 (smooth edges), ``owner`` by nearest neighbour, so huge photos
never get a full-resolution float copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..outputs import atomic_path


@dataclass
class Instance:
    """One detected wing.

    Attributes:
        label: class index, 1..K.
        score: detection score in [0, 1].
        prob: ``(h, w)`` uint8 mask probability x 255 at the inference resolution.
    """

    label: int
    score: float
    prob: np.ndarray


def disk(radius: int) -> np.ndarray:
    """Elliptic structuring element of the given radius (``(2r+1, 2r+1)`` uint8)."""
    r = max(0, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def instances_to_owner(instances: list[Instance], shape: tuple[int, int],
                       dilate_px: int = 0) -> np.ndarray:
    """Label map: every pixel goes to the most probable instance, within ``dilate_px`` of a mask.

    Inside the masks (probability >= 0.5) the most probable instance wins; in the dilated rim the
    instance whose (grey-dilated) probability is highest wins, i.e. roughly the nearest mask.

    Args:
        instances: detected wings (at most one per label is expected, not required).
        shape: ``(h, w)`` of the inference image.
        dilate_px: how far outside the Mask R-CNN masks a pixel may still belong to a wing.

    Returns:
        ``(h, w)`` uint8 labels, 0 where no wing may be.
    """
    owner = np.zeros(shape, np.uint8)
    if not instances:
        return owner
    probs = np.stack([inst.prob for inst in instances])                  # (N, h, w) uint8
    labels = np.array([0] + [inst.label for inst in instances], np.uint8)
    inside = probs.max(0) >= 128
    best = probs.argmax(0)
    if dilate_px > 0:
        kernel = disk(dilate_px)
        zone = cv2.dilate(inside.astype(np.uint8), kernel) > 0
        spread = np.stack([cv2.dilate(p, kernel) for p in probs])
        best = np.where(inside, best, spread.argmax(0))
    else:
        zone = inside
    owner[zone] = labels[best[zone] + 1]
    return owner


def instances_to_fg(instances: list[Instance], shape: tuple[int, int]) -> np.ndarray:
    """Soft foreground of the instances alone: the per-pixel maximum probability (uint8)."""
    if not instances:
        return np.zeros(shape, np.uint8)
    return np.max(np.stack([inst.prob for inst in instances]), axis=0)


def to_full_resolution(owner: np.ndarray, fg: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Final label image at the photo's size.

    Args:
        owner: ``(h, w)`` uint8 label per pixel (0 = never foreground).
        fg: ``(h, w)`` uint8 soft foreground, foreground where >= 128.
        shape: ``(H, W)`` of the photo.

    Returns:
        ``(H, W)`` uint8 label image, 0 background, 1..K classes.
    """
    H, W = shape
    if owner.shape != (H, W):
        owner = cv2.resize(owner, (W, H), interpolation=cv2.INTER_NEAREST)
        fg = cv2.resize(fg, (W, H), interpolation=cv2.INTER_LINEAR)
    else:
        owner = owner.copy()
    owner[fg < 128] = 0
    return owner


def remove_specks(labels: np.ndarray, min_fraction: float = 0.02) -> np.ndarray:
    """Drop, per label, connected pieces smaller than ``min_fraction`` of that label's largest piece."""
    out = labels.copy()
    for label in np.unique(labels):
        if label == 0:
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == label).astype(np.uint8), 8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        small = np.flatnonzero(areas < min_fraction * areas.max()) + 1
        if small.size:
            out[np.isin(comp, small)] = 0
    return out


def downscale(arr: np.ndarray, max_side: int) -> np.ndarray:
    """``(H, W, C)`` uint8 resized (area interpolation) so the longer side is at most ``max_side``."""
    h, w = arr.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return arr
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    return out.reshape(size[1], size[0], *arr.shape[2:])


def cutout(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGBA image: the photo where ``labels > 0``, transparent black elsewhere.

    Args:
        rgb: ``(H, W, 3)`` uint8.
        labels: ``(H, W)`` uint8.

    Returns:
        ``(H, W, 4)`` uint8.
    """
    keep = labels > 0
    out = np.zeros((*labels.shape, 4), np.uint8)
    out[keep, :3] = rgb[keep]
    out[keep, 3] = 255
    return out


# label colours of mask PNGs: 0 black, then well-separated colours (one class: white)
COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128))


def label_palette(n_classes: int) -> list[int]:
    """Flat 256-entry RGB palette: index 0 black, 1..K distinct colours (white when K == 1)."""
    colours = [(255, 255, 255)] if n_classes == 1 else [COLOURS[i % len(COLOURS)]
                                                         for i in range(max(0, n_classes))]
    flat = [0, 0, 0] + [v for c in colours for v in c]
    return flat + [0] * (768 - len(flat))


def write_label_png(path, labels: np.ndarray, n_classes: int) -> None:
    """Write a label image as a palette PNG (atomically).

    Pixel values stay the labels (``np.array(Image.open(path))`` gives 0..K back); the palette only
    makes them visible in an image viewer, where a plain 0/1 PNG looks black.
    """
    from pathlib import Path

    from PIL import Image


    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(labels, np.uint8))
    img.putpalette(label_palette(n_classes))  # "L" becomes "P" with the same values
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def read_label_png(path) -> np.ndarray:
    """A label mask as ``(H, W)`` uint8: palette PNGs by index, anything else by its first band.

    Raises:
        ImageReadError: unreadable file.
    """
    from PIL import Image

    from ..imageio import read_image

    try:
        with Image.open(path) as img:
            if img.mode == "P":
                return np.asarray(img, np.uint8)
    except (OSError, ValueError, SyntaxError):
        pass  # not something PIL opens (e.g. a TIFF stack): the common reader says why
    return read_image(path)[..., 0]
