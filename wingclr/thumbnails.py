"""Specimen thumbnails and image mosaics for the visual outputs (stages 1, 4 and 5).

Thumbnails are RGBA: stage 0's transparent PNGs keep their alpha (the specimen without its
background), every other image is opaque. Multi-band stacks (TIFF, ``.npy``) are shown through the
run's RGB bands (``rgb_bands`` of the bands the model reads), or as gray when it has none.

A mosaic is one ``(H, W, 3)`` uint8 canvas with a (wrapped) title strip, cells of equal size and
a caption strip under each cell; it is drawn with a single ``imshow`` (fast for hundreds of thumbnails) and
its text placed in pixel coordinates.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from .outputs import atomic_path
from .plotting import pyplot

CAPTION_PX = 30    # height of the caption strip under each cell (two lines of 7 pt text)
DPI = 100


def display_bands(meta: dict | None) -> tuple[int, ...] | None:
    """File bands shown as R, G, B (or one gray band) for a run's model metadata.

    Args:
        meta: stage 3/4 model metadata with ``bands`` (file bands the model reads, or None for
            all) and ``rgb_bands`` (positions of R, G, B among them, or []).

    Returns:
        Indices into the file's bands, or None (the file's first three bands, or gray).
    """
    if not meta or "rgb_bands" not in meta:
        return None
    bands, rgb = meta.get("bands"), list(meta.get("rgb_bands") or [])
    pick = rgb if len(rgb) == 3 else [0]
    try:
        return tuple(int(bands[b]) if bands else int(b) for b in pick)
    except (IndexError, TypeError):
        return None


def read_rgba(path: Path | str, bands: Sequence[int] | None = None,
              scale16: str = "full") -> np.ndarray:
    """An image as ``(H, W, 4)`` uint8 RGBA for display.

    Args:
        path: any image :func:`wingclr.imageio.read_image` reads.
        bands: file bands shown as R, G, B (3) or gray (1); default: the first three, or gray.
        scale16: how data wider than 8 bits becomes uint8 (as the stage read it).

    Raises:
        ImageReadError: the file cannot be read.
    """
    from .imageio import read_image, sniff_format

    arr = read_image(path, keep_alpha=True, scale16=scale16)
    alpha = None
    if arr.shape[-1] in (2, 4) and sniff_format(Path(path)) == "pil":  # PNG/WebP with alpha
        alpha, arr = arr[..., -1], arr[..., :-1]
    c = arr.shape[-1]
    if bands is not None and len(bands) in (1, 3) and max(bands) < c:
        arr = arr[..., list(bands)]
    else:
        arr = arr[..., :3] if c >= 3 else arr[..., :1]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if alpha is None:
        alpha = np.full(arr.shape[:2], 255, np.uint8)
    return np.ascontiguousarray(np.dstack([arr, alpha]))


def fit_size(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """``(h, w)`` of an image of ``shape`` scaled so its longer side is ``size``."""
    h, w = shape
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


@lru_cache(maxsize=4096)
def _thumbnail(path: str, size: int, bands: tuple[int, ...] | None, scale16: str,
               mtime_ns: int) -> np.ndarray:
    import cv2

    from .imageio import ImageReadError

    try:
        rgba = read_rgba(path, bands, scale16)
    except ImageReadError:
        return placeholder(size)
    h, w = fit_size(rgba.shape[:2], size)
    interp = cv2.INTER_AREA if max(rgba.shape[:2]) > size else cv2.INTER_LINEAR
    out = cv2.resize(rgba, (w, h), interpolation=interp)
    out.setflags(write=False)
    return out


def thumbnail(path: Path | str, size: int, meta: dict | None = None) -> np.ndarray:
    """``(h, w, 4)`` uint8 RGBA, longer side ``size``; a crossed gray box when unreadable.

    Cached per file, size and modification time (one process draws the same specimen in several
    figures).
    """
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError:
        return placeholder(size)
    return _thumbnail(str(path), int(size), display_bands(meta), (meta or {}).get("scale16", "full"),
                      mtime)


def placeholder(size: int) -> np.ndarray:
    """``(size, size, 4)`` gray box with a cross: an image that could not be read."""
    out = np.full((size, size, 4), (200, 200, 200, 255), np.uint8)
    idx = np.arange(size)
    out[idx, idx, :3] = out[idx, size - 1 - idx, :3] = 120
    return out


def over(canvas: np.ndarray, thumb: np.ndarray, x0: int, y0: int) -> None:
    """Composite RGBA ``thumb`` over ``canvas`` ``(H, W, 3|4)`` at top-left ``(x0, y0)``, in place.

    Both are straight (not premultiplied) alpha; an RGB canvas is opaque.
    """
    h, w = thumb.shape[:2]
    y1, x1 = min(y0 + h, canvas.shape[0]), min(x0 + w, canvas.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    t = thumb[: y1 - y0, : x1 - x0].astype(np.float32)
    a = t[..., 3:] / 255.0
    region = canvas[y0:y1, x0:x1]
    if canvas.shape[-1] == 4:
        ca = region[..., 3:].astype(np.float32) / 255.0
        out_a = a + ca * (1 - a)
        rgb = (t[..., :3] * a + region[..., :3] * ca * (1 - a)) / np.maximum(out_a, 1e-6)
        region[..., 3:] = np.round(out_a * 255).astype(np.uint8)
    else:
        rgb = t[..., :3] * a + region[..., :3] * (1 - a)
    region[..., :3] = np.round(np.clip(rgb, 0, 255)).astype(np.uint8)


def wrap(text: str, width_px: int, px_per_char: float = 6.4) -> str:
    """``text`` broken into lines that fit ``width_px`` at 9 pt (each given line kept apart)."""
    import textwrap

    chars = max(20, int(width_px / px_per_char))
    # at spaces only: a run name or path is never cut in two (a longer one gets its own line)
    return "\n".join(textwrap.fill(line, chars, break_long_words=False, break_on_hyphens=False)
                     for line in text.split("\n"))


class Mosaic:
    """A grid of ``rows x cols`` cells of ``cell`` px, each with a caption strip, and a title.

    Attributes:
        canvas: ``(H, W, 3)`` uint8, white.
        texts: ``(x, y, text, kwargs)`` in canvas pixels, drawn by :meth:`save`.
    """

    def __init__(self, rows: int, cols: int, cell: int = 112, gap: int = 6, title: str = "",
                 header_px: int = 0, caption_px: int = CAPTION_PX):
        self.rows, self.cols, self.cell, self.gap = rows, cols, cell, gap
        self.caption_px = caption_px
        self.pitch_x, self.pitch_y = cell + gap, cell + caption_px + gap
        width = cols * self.pitch_x + gap
        self.title_text = wrap(title, width - 2 * gap)
        lines = self.title_text.count("\n") + 1 if title else 0
        self.title_px = 16 * lines + 12 + header_px  # title lines, then a header strip
        height = self.title_px + rows * self.pitch_y + gap
        self.canvas = np.full((height, width, 3), 255, np.uint8)
        self.texts: list[tuple[float, float, str, dict]] = []
        if title:
            self.text(gap, 6, self.title_text, ha="left", va="top", fontsize=9)

    def origin(self, row: int, col: int) -> tuple[int, int]:
        """Top-left pixel ``(x, y)`` of a cell."""
        return self.gap + col * self.pitch_x, self.title_px + row * self.pitch_y

    def put(self, row: int, col: int, thumb: np.ndarray, caption: str = "", colour: str = "black",
            frame: str | None = None) -> None:
        """Centre ``thumb`` (RGBA, longer side <= cell) in a cell; caption under it."""
        x0, y0 = self.origin(row, col)
        h, w = thumb.shape[:2]
        over(self.canvas, thumb, x0 + (self.cell - w) // 2, y0 + (self.cell - h) // 2)
        if frame:
            self.frame(row, col, frame)
        if caption:
            self.text(x0 + self.cell / 2, y0 + self.cell + 2, caption, ha="center", va="top",
                      fontsize=7, color=colour)

    def frame(self, row: int, col: int, colour: str, width: int = 3) -> None:
        """A coloured border around a cell (e.g. the query of a neighbour row)."""
        from matplotlib.colors import to_rgb

        x0, y0 = self.origin(row, col)
        rgb = np.round(np.array(to_rgb(colour)) * 255).astype(np.uint8)
        c, x1, y1 = self.canvas, x0 + self.cell, y0 + self.cell
        c[y0:y0 + width, x0:x1] = c[y1 - width:y1, x0:x1] = rgb
        c[y0:y1, x0:x0 + width] = c[y0:y1, x1 - width:x1] = rgb

    def text(self, x: float, y: float, text: str, **kwargs) -> None:
        self.texts.append((x, y, text, kwargs))

    def save(self, path: Path) -> Path:
        """Write the mosaic as PNG at :data:`DPI` (one canvas pixel = one image pixel)."""

        plt = pyplot()
        h, w = self.canvas.shape[:2]
        fig = plt.figure(figsize=(w / DPI, h / DPI), dpi=DPI)
        ax = fig.add_axes([0, 0, 1, 1])
        ax.imshow(self.canvas, interpolation="nearest")
        ax.set_axis_off()
        for x, y, text, kwargs in self.texts:
            ax.text(x, y, text, **kwargs)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # no bbox_inches="tight": the canvas keeps its pixel size
            fig.savefig(tmp, dpi=DPI, format="png")
        plt.close(fig)
        return path


def clip(text: str, width: int = 18) -> str:
    """``text`` cut to ``width`` characters with an ellipsis (captions)."""
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def middle_clip(text: str, width: int = 18) -> str:
    """``text`` cut to ``width`` characters by an ellipsis in the middle, keeping more of the end
    (a specimen name's subspecies, year or number are at its end)."""
    text = str(text)
    if len(text) <= width:
        return text
    head = (width - 1) // 3
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def grid_columns(n: int, most: int, least: int = 1) -> int:
    """Columns for ``n`` tiles: near-square (ceil(sqrt(n))), between ``least`` and ``most``."""
    import math

    return max(least, min(most, math.ceil(math.sqrt(max(n, 1)))))


def short_name(image: str, width: int = 18) -> str:
    """File stem of an image path, cut in the middle to ``width`` characters (captions)."""
    return middle_clip(Path(str(image)).stem, width)
