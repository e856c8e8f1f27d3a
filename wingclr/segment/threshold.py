"""Classical foreground for specimens on plain backgrounds (``--method threshold``, no weights).

The background colour is modelled from the image border as a plane per Lab channel (so a lighting
gradient across the photo is absorbed); every pixel's Lab distance to that model is thresholded
(Otsu, but never below the border's own noise level), then cleaned by morphology, small holes are
filled and only the large connected pieces are kept. The result is the whole specimen (wings,
body, antennae): this method cannot tell wings from the body.
"""

from __future__ import annotations

import cv2
import numpy as np

from .masks import disk


def _border_ring(h: int, w: int, width: int) -> np.ndarray:
    ring = np.zeros((h, w), bool)
    ring[:width], ring[-width:], ring[:, :width], ring[:, -width:] = True, True, True, True
    return ring


def _background_model(lab: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Per-channel plane ``a + b x + c y`` fitted to the border, refitted without outliers.

    Args:
        lab: ``(h, w, 3)`` float32 Lab image.
        ring: ``(h, w)`` bool, the border pixels.

    Returns:
        ``(h, w, 3)`` float32 modelled background.
    """
    h, w = ring.shape
    ys, xs = np.nonzero(ring)
    design = np.stack([np.ones_like(xs), xs / w, ys / h], 1).astype(np.float32)   # (P, 3)
    values = lab[ring]                                                             # (P, 3)
    use = np.ones(len(values), bool)
    for _ in range(2):  # the second fit ignores border pixels covered by rulers, labels, wings
        coef, *_ = np.linalg.lstsq(design[use], values[use], rcond=None)
        resid = np.linalg.norm(values - design @ coef, axis=1)
        mad = np.median(np.abs(resid - np.median(resid))) + 1e-3
        use = resid <= np.median(resid) + 3 * 1.4826 * mad
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return coef[0] + (xx / w)[..., None] * coef[1] + (yy / h)[..., None] * coef[2]


def threshold_foreground(rgb: np.ndarray, work_side: int = 512, border: float = 0.04,
                         min_contrast: float = 12.0, keep_fraction: float = 0.15,
                         min_area: float = 0.002) -> np.ndarray:
    """Foreground (the specimen) of a photo on a plain background.

    Args:
        rgb: ``(H, W, 3)`` uint8.
        work_side: the analysis runs on the photo downscaled to this longer side.
        border: width of the border ring that samples the background, as a fraction of the
            shorter side.
        min_contrast: smallest Lab distance from the background that counts as foreground.
        keep_fraction: connected pieces smaller than this fraction of the largest are dropped
            (paper labels, dust, ruler marks).
        min_area: pieces smaller than this fraction of the image are dropped; an image with
            nothing larger has no foreground.

    Returns:
        ``(H, W)`` uint8, 255 foreground, 0 background.
    """
    H, W = rgb.shape[:2]
    scale = min(1.0, work_side / max(H, W))
    small = cv2.resize(rgb, (max(1, round(W * scale)), max(1, round(H * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    h, w = small.shape[:2]
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
    ring = _border_ring(h, w, max(2, round(border * min(h, w))))
    dist = np.linalg.norm(lab - _background_model(lab, ring), axis=2)             # (h, w)

    noise = dist[ring]
    floor = np.median(noise) + 5 * 1.4826 * np.median(np.abs(noise - np.median(noise)))
    dist8 = np.clip(dist, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(dist8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # hysteresis: pale wings barely differ from the background, but they touch the dark body
    # and veins, which clear Otsu's threshold; weak pixels count when connected to strong ones
    weak = (dist > max(floor, min_contrast)).astype(np.uint8)
    strong = dist > max(otsu, floor, min_contrast)
    n, comp = cv2.connectedComponents(weak, connectivity=8)
    fg = np.isin(comp, np.unique(comp[strong & (comp > 0)])).astype(np.uint8)

    r = max(1, round(0.004 * max(h, w)))
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, disk(r))
    fg = _fill_small_holes(fg, 0.05)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(fg, 8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if n <= 1 or areas.max() < min_area * h * w:
        return np.zeros((H, W), np.uint8)
    keep = np.flatnonzero(areas >= max(keep_fraction * areas.max(), min_area * h * w)) + 1
    fg = np.isin(comp, keep).astype(np.uint8) * 255
    if (h, w) != (H, W):
        fg = cv2.resize(fg, (W, H), interpolation=cv2.INTER_LINEAR)
        fg = np.where(fg >= 128, 255, 0).astype(np.uint8)
    return fg


def _fill_small_holes(fg: np.ndarray, max_fraction: float) -> np.ndarray:
    """Fill background pieces enclosed by foreground and smaller than ``max_fraction`` of it."""
    _, comp, stats, _ = cv2.connectedComponentsWithStats(1 - fg, 4)
    h, w = fg.shape
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    touches = (x == 0) | (y == 0) | (x + stats[:, cv2.CC_STAT_WIDTH] == w) | \
              (y + stats[:, cv2.CC_STAT_HEIGHT] == h)
    small = stats[:, cv2.CC_STAT_AREA] < max_fraction * max(1, int(fg.sum()))
    holes = np.flatnonzero(~touches & small)
    holes = holes[holes > 0]  # label 0 is the foreground itself
    out = fg.copy()
    out[np.isin(comp, holes)] = 1
    return out
