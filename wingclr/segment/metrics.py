"""IoU / Dice of predicted wing masks against ground truth, per image and per class.

Ground truth is either a label image (0 background, 1..K classes, like the demo's ``masks/``) or a
binary mask (0/255 or a 1-bit PNG, like the Leeds ``<id>_mask.png``); binary ground truth is scored
on the union of the wings only. An image whose prediction is missing (``no_wings``, unreadable)
scores 0 where its ground truth has foreground, so failures pull the mean down instead of vanishing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd

from ..cli import UserError
from ..imageio import ImageReadError, list_files
from ..outputs import read_csv, read_manifest, write_csv
from ..untrusted import check_paths
from .annotations import find_mask
from .masks import read_label_png


def iou_dice(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """IoU and Dice of two boolean masks; ``(nan, nan)`` when both are empty."""
    inter = np.count_nonzero(pred & gt)
    p, g = np.count_nonzero(pred), np.count_nonzero(gt)
    if p + g == 0:
        return math.nan, math.nan
    return inter / (p + g - inter), 2 * inter / (p + g)


def score_masks(pred: np.ndarray, gt: np.ndarray, classes: Sequence[str] | None) -> dict:
    """Scores of one image.

    Args:
        pred: ``(H, W)`` uint8 predicted labels (0 background).
        gt: ``(H, W)`` uint8 ground-truth labels, or bool for binary ground truth.
        classes: names of labels 1..K when both sides are labelled; None scores the union only.

    Returns:
        ``{"union_iou", "union_dice", "<class>_iou", "<class>_dice", ...}``.
    """
    row = dict(zip(("union_iou", "union_dice"), iou_dice(pred > 0, gt > 0)))
    for k, name in enumerate(classes or (), start=1):
        row[f"{name}_iou"], row[f"{name}_dice"] = iou_dice(pred == k, gt == k)
    return row


def read_gt(path: Path, gt_type: str, remap: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """Ground-truth mask as ``(labels uint8, is_binary)``."""
    arr = read_label_png(path)
    values = set(np.unique(arr).tolist())
    binary = gt_type == "binary" or (gt_type == "auto" and values <= {0, 255})
    if binary:
        return (arr > 0).astype(np.uint8), True
    return (remap[arr] if remap is not None else arr), False


def _pred_classes(pred_dir: Path) -> list[str] | None:
    """Class names of a stage 0 output: from its manifest, or (unfinished) its CSV columns."""
    manifest = read_manifest(pred_dir) or {}
    if manifest.get("classes"):
        return manifest["classes"]
    table = pred_dir / "segmentation.csv"
    if table.is_file():
        columns = read_csv(table, nrows=0).columns
        return [c[:-5] for c in columns if c.endswith("_area") and c != "mask_area"] or None
    return None


def _label_remap(gt_classes: Sequence[str] | None, classes: Sequence[str] | None) -> np.ndarray | None:
    """Lookup table taking ground-truth labels to the prediction's labels (matched by name)."""
    if not gt_classes or not classes:
        return None
    unknown = [c for c in gt_classes if c not in classes]
    if unknown:
        raise UserError(f"--gt-classes names {', '.join(unknown)}, which the segmentation does not "
                        f"have (its classes: {', '.join(classes)})")
    table = np.zeros(256, np.uint8)
    for k, name in enumerate(gt_classes, start=1):
        table[k] = classes.index(name) + 1
    return table


def summary_path(output: Path) -> Path:
    """Where the means of the per-photo table ``output`` go: ``<stem>_summary.csv`` beside it."""
    return output.with_name(f"{output.stem}_summary.csv")


def summarise(table: pd.DataFrame) -> pd.Series:
    """``images`` (photos scored) and the mean of every ``*_iou`` / ``*_dice`` column (a photo
    without a class in its ground truth does not count for that class)."""
    scores = [c for c in table.columns if c.endswith(("_iou", "_dice"))]
    return pd.Series({"images": len(table), **{c: table[c].mean(skipna=True) for c in scores}},
                     dtype=object)


def evaluate_folder(pred_dir: Path | str, gt_dir: Path | str, output: Path | str | None = None,
                    gt_suffix: str = "", gt_type: str = "auto",
                    gt_classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Score stage 0's ``masks/`` against ground-truth masks and write a CSV.

    Args:
        pred_dir: stage 0 output (``masks/``, ``segmentation.csv``, ``manifest.json``).
        gt_dir: folder of ground-truth masks, ``<rel minus extension><gt_suffix>.png``.
        output: CSV path (default ``<pred_dir>/evaluation.csv``), one row per photo; the means
            go to ``<output stem>_summary.csv`` beside it (:func:`summarise`).
        gt_suffix: e.g. ``_mask`` for ``<id>_mask.png``.
        gt_type: ``auto`` (0/255 masks are binary), ``labels`` or ``binary``.
        gt_classes: class names of the ground-truth labels 1..K when they differ from the
            prediction's order.

    Returns:
        The per-photo table written.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not (pred_dir / "masks").is_dir():
        raise UserError(f"{pred_dir} has no masks/ folder; pass the output folder of segment.py")
    if not gt_dir.is_dir():
        raise UserError(f"ground-truth folder {gt_dir} does not exist")
    classes = _pred_classes(pred_dir)
    per_class = classes if classes and classes != ["specimen"] else None
    remap = _label_remap(gt_classes, per_class)
    table_path = pred_dir / "segmentation.csv"
    if table_path.is_file():
        seg = read_csv(table_path, dtype=str, keep_default_na=False)
        check_paths(seg, ["image", "output"], source=table_path)  # masks are opened by these
        entries = list(zip(seg["image"], seg["output"], seg["status"]))
    else:  # masks only: every mask is a finished prediction
        entries = [(p.as_posix(), p.as_posix(), "ok") for p in list_files(pred_dir / "masks")[0]]
    rows, no_gt = [], []
    for image, out_name, status in entries:
        gt_path = find_mask(gt_dir, Path(image), gt_suffix)
        if gt_path is None:
            no_gt.append(image)
            continue
        pred_path = pred_dir / "masks" / out_name if out_name else None
        rows.append(_score_one(pred_path, gt_path, image, status, gt_type, remap, per_class))
    if not rows:
        raise UserError(f"no ground-truth mask found in {gt_dir} for the images of {pred_dir} "
                        f"(looked for <name>{gt_suffix}.png; see --gt-suffix)")
    table = pd.DataFrame(rows)
    output = Path(output or pred_dir / "evaluation.csv")
    write_csv(output, table)
    write_csv(summary_path(output), summarise(table).to_frame().T)
    for rel in no_gt:
        print(f"no ground truth: {rel} (not scored)")
    return table


def _score_one(pred_path: Path | None, gt_path: Path, image: str, status: str, gt_type: str,
               remap: np.ndarray | None, classes: Sequence[str] | None) -> dict:
    row = {"image": image, "status": status}
    try:
        gt, binary = read_gt(gt_path, gt_type, remap)
    except ImageReadError as e:
        return {**row, "status": f"unreadable ground truth ({e.reason})"}
    if pred_path is not None and pred_path.is_file():
        pred = read_label_png(pred_path)
        if pred.shape != gt.shape:
            if pred.shape[0] * gt.shape[1] != pred.shape[1] * gt.shape[0]:
                return {**row, "status": f"size {pred.shape} differs from ground truth {gt.shape}"}
            pred = cv2.resize(pred, gt.shape[::-1], interpolation=cv2.INTER_NEAREST)
    else:
        pred = np.zeros_like(gt)
    scores = score_masks(pred, gt, None if binary else classes)
    return {**row, "gt_area": int(np.count_nonzero(gt)), "pred_area": int(np.count_nonzero(pred)),
            **scores}
