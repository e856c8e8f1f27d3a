"""Wing annotations for training and evaluation: COCO JSON or label-mask PNG folders.

* COCO JSON: ``images`` (``file_name`` relative to the images folder and inside it: an absolute
  or ``..`` path is refused, ``height``, ``width``),
  ``categories`` (class names) and ``annotations`` with ``segmentation`` as polygons or RLE
  (uncompressed ``counts`` list or the compressed string of pycocotools).
* Label masks: ``<masks>/<rel without extension><suffix>.png`` for every image
  ``<images>/<rel>``; pixel value ``k`` (1..K) is class ``classes[k - 1]``, 0 is background. A
  binary 0/255 mask is class 1 when there is one class.

Each labelled region becomes one instance of its class (one instance per class and image, which
is what wings are).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..cli import UserError
from ..imageio import IMAGE_EXTENSIONS, list_files
from ..untrusted import path_inside
from .masks import read_label_png


@dataclass(frozen=True)
class Annotated:
    """One annotated image; masks are decoded on demand (:func:`instances`).

    Attributes:
        image: image file.
        rel: its path relative to the images folder (posix).
        mask: label-mask file (mask folders), or None.
        coco: ``(class index 1..K, segmentation)`` pairs (COCO), empty otherwise.
        size: ``(height, width)`` from the COCO file, or None.
    """

    image: Path
    rel: str
    mask: Path | None = None
    coco: tuple = field(default=())
    size: tuple[int, int] | None = None


def decode_rle(rle: dict) -> np.ndarray:
    """COCO run-length encoding (``{"size": [h, w], "counts": list | str}``) -> ``(h, w)`` bool."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = _rle_string_counts(counts.decode() if isinstance(counts, bytes) else counts)
    flat = np.zeros(h * w, bool)
    pos, value = 0, False
    for run in counts:
        if value:
            flat[pos:pos + run] = True
        pos += run
        value = not value
    if pos != h * w:
        raise ValueError(f"RLE covers {pos} pixels, the mask has {h * w}")
    return flat.reshape(w, h).T  # COCO runs go down the columns


def _rle_string_counts(s: str) -> list[int]:
    """pycocotools' compressed counts: 5-bit groups, +48, counts after the 2nd stored as deltas."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_segmentation(seg, height: int, width: int) -> np.ndarray:
    """COCO ``segmentation`` (polygons or RLE) -> ``(height, width)`` bool."""
    if isinstance(seg, dict):
        mask = decode_rle(seg)
        if mask.shape != (height, width):
            raise ValueError(f"RLE of size {mask.shape} in an image of size {(height, width)}")
        return mask
    mask = np.zeros((height, width), np.uint8)
    # COCO coordinates put pixel centres at +0.5; fill with 1/8 px precision (shift=3)
    polys = [np.round((np.asarray(p, np.float64).reshape(-1, 2) - 0.5) * 8).astype(np.int32)
             for p in seg if len(p) >= 6]
    cv2.fillPoly(mask, polys, 1, shift=3)
    return mask > 0


def load_coco(path: Path | str, images_root: Path | str,
              classes: Sequence[str] | None = None) -> tuple[list[str], list[Annotated], list]:
    """Read a COCO JSON file.

    Args:
        path: the JSON file.
        images_root: folder that ``file_name`` is relative to.
        classes: expected class names (e.g. a checkpoint's); the categories must be the same set.

    Returns:
        ``(classes, items, skipped)``; ``skipped`` lists ``(file, reason)`` of images that are
        missing or have no annotation.

    Raises:
        UserError: unreadable JSON, or categories that do not match ``classes``.
    """
    path, root = Path(path), Path(images_root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cats = sorted(data["categories"], key=lambda c: c["id"])
        names = [c["name"] for c in cats]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a readable COCO JSON file ({type(e).__name__}: {e}); "
                        "it needs 'images', 'annotations' and 'categories'") from None
    names = check_classes(names, classes, str(path))
    label_of = {c["id"]: names.index(c["name"]) + 1 for c in cats}
    per_image: dict[int, list] = {}
    for ann in data.get("annotations", []):
        if ann.get("category_id") not in label_of:
            raise UserError(f"{path}: annotation {ann.get('id')} has category_id "
                            f"{ann.get('category_id')}, which is not in 'categories'")
        per_image.setdefault(ann["image_id"], []).append((label_of[ann["category_id"]],
                                                          ann["segmentation"]))
    items, skipped = [], []
    for img in data.get("images", []):
        file = path_inside(root, img["file_name"], source=path,
                           entry=f"image {img.get('id')!r} file_name")  # nothing outside --images
        if not file.is_file():
            skipped.append((img["file_name"], f"image not found under {root}"))
        elif img["id"] not in per_image:
            skipped.append((img["file_name"], "no annotation"))
        else:
            items.append(Annotated(file, file.relative_to(root).as_posix(),
                                   coco=tuple(per_image[img["id"]]),
                                   size=(int(img["height"]), int(img["width"]))))
    return names, items, skipped


def check_classes(found: Sequence[str], expected: Sequence[str] | None, where: str) -> list[str]:
    """``found`` in the order of ``expected`` when both name the same classes.

    Raises:
        UserError: the class names differ (names both sides).
    """
    if expected is None:
        return list(found)
    if sorted(found) != sorted(expected):
        raise UserError(f"classes of {where} ({', '.join(found)}) do not match the expected "
                        f"classes ({', '.join(expected)}); use a checkpoint trained on these "
                        "classes, or start a new one (drop --init) with matching --classes")
    return list(expected)


def find_mask(masks_root: Path, rel: Path, suffix: str = "") -> Path | None:
    """The mask of image ``rel``: ``<masks_root>/<rel minus extension><suffix>.<ext>``."""
    base = masks_root / rel.parent / f"{rel.stem}{suffix}"
    for ext in (".png", *sorted(IMAGE_EXTENSIONS - {".png"})):
        if base.with_name(base.name + ext).is_file():
            return base.with_name(base.name + ext)
    return None


def load_mask_folder(images_root: Path | str, masks_root: Path | str, classes: Sequence[str],
                     suffix: str = "") -> tuple[list[Annotated], list]:
    """Pair every image with its label mask.

    Returns:
        ``(items, skipped)``; ``skipped`` lists ``(image, reason)`` for images without a mask.

    Raises:
        UserError: a folder is missing, or no image has a mask.
    """
    images_root, masks_root = Path(images_root), Path(masks_root)
    for folder, what in ((images_root, "--images"), (masks_root, "--masks")):
        if not folder.is_dir():
            raise UserError(f"{what} folder {folder} does not exist")
    images, _ = list_files(images_root)
    items, skipped = [], []
    for rel in images:
        mask = find_mask(masks_root, rel, suffix)
        if mask is None:
            skipped.append((rel.as_posix(), f"no mask {rel.with_suffix('')}{suffix}.png in {masks_root}"))
        else:
            items.append(Annotated(images_root / rel, rel.as_posix(), mask=mask))
    if not items:
        raise UserError(f"no image in {images_root} has a mask in {masks_root} (expected "
                        f"<name>{suffix}.png beside the same relative path; see --mask-suffix)")
    return items, skipped


def read_label_mask(path: Path, num_classes: int) -> np.ndarray:
    """A label mask as ``(H, W)`` uint8 with values 0..K.

    Raises:
        UserError: the mask holds labels above K (names the file and the classes count).
    """
    labels = read_label_png(path)
    values = np.unique(labels)
    if num_classes == 1 and set(values.tolist()) <= {0, 255}:
        return (labels > 0).astype(np.uint8)
    if values.max() > num_classes:
        raise UserError(f"mask {path} holds label {int(values.max())} but only {num_classes} "
                        "classes are given; pass --classes naming every label 1..K in order")
    return labels


def instances(item: Annotated, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode an item's instances.

    Returns:
        ``(labels, masks)``: ``(N,)`` int64 class indices 1..K and ``(N, H, W)`` bool masks, one
        instance per class present (COCO polygons of one class are merged).
    """
    if item.mask is not None:
        lab = read_label_mask(item.mask, num_classes)
        present = [v for v in np.unique(lab) if v > 0]
        masks = np.stack([lab == v for v in present]) if present else np.zeros((0, *lab.shape), bool)
        return np.array(present, np.int64), masks
    h, w = item.size
    merged: dict[int, np.ndarray] = {}
    for label, seg in item.coco:
        m = decode_segmentation(seg, h, w)
        merged[label] = merged[label] | m if label in merged else m
    labels = sorted(merged)
    masks = np.stack([merged[k] for k in labels]) if labels else np.zeros((0, h, w), bool)
    return np.array(labels, np.int64), masks
