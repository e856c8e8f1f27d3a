"""Morphospace (stage 4): specimen thumbnails placed at their principal-component coordinates.

As in phenotype papers, each specimen's picture sits at its PC1/PC2 (and PC3/PC4) score. So that
a few hundred thumbnails do not pile up, the plane is cut into a grid of square cells (equal units
on both axes) and each occupied cell shows one specimen: the one nearest the cell's centre. Every
specimen is still drawn as a small dot at its exact position, coloured by its cluster, so the
empty-looking parts of a crowded cell are not hidden. Titles say how many specimens are shown.

Inputs are the files stage 4 writes (``embeddings_pca.csv``, ``pca_variance.csv``) and the images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .outputs import read_csv, read_manifest
from .plotting import GREY_NAMES, group_colours, pyplot, save_figure
from .thumbnails import over, thumbnail

GRID_CELLS = 18   # cells along the longer axis: at most ~18 x 18 thumbnails
CELL_PX = 72      # thumbnail cell size in the figure's canvas
NO_LABEL = "no label"  # stage 5's name for specimens without a label of the trait (grey)


def grid_pick(xy: np.ndarray, cells: int = GRID_CELLS
              ) -> tuple[np.ndarray, np.ndarray, float, tuple[int, int]]:
    """Snap points to a square grid; keep the point nearest each occupied cell's centre.

    Args:
        xy: ``(N, 2)`` coordinates.
        cells: number of cells along the longer side of the points' bounding box.

    Returns:
        ``(chosen, cell_ij, side, (nx, ny))``: ``chosen`` ``(M,)`` row indices (one per occupied
        cell), ``cell_ij`` ``(M, 2)`` their cell column and row (row 0 at the bottom), ``side``
        the cell side in data units and the grid size. The grid's lower-left corner is
        ``xy.min(0)``.
    """
    xy = np.asarray(xy, np.float64)
    lo, span = xy.min(0), np.ptp(xy, axis=0)
    side = float(max(span.max(), 1e-12)) / cells
    nx, ny = (np.maximum(1, np.ceil(span / side - 1e-9)).astype(int)).tolist()
    ij = np.clip(np.floor((xy - lo) / side).astype(int), 0, [nx - 1, ny - 1])
    dist = (((xy - lo) / side - (ij + 0.5)) ** 2).sum(1)
    key = ij[:, 0] * ny + ij[:, 1]
    order = np.lexsort((dist, key))  # by cell, nearest the centre first
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    return first, ij[first], side, (nx, ny)


def cluster_colours(clusters: Sequence[str]) -> dict[str, tuple]:
    """A colour per cluster name (:func:`wingclr.plotting.group_colours`); outliers opaque gray."""

    grey = (*GREY_NAMES, NO_LABEL)
    return {name: (0.55, 0.55, 0.55, 1.0) if name in grey else colour
            for name, colour in group_colours(clusters, grey).items()}


def plot_morphospace(scores: np.ndarray, images: Sequence[Path], clusters: Sequence[str],
                     ratio: Sequence[float], path: Path, title: str, axes: tuple[int, int] = (0, 1),
                     cells: int = GRID_CELLS, cell_px: int = CELL_PX,
                     meta: dict | None = None, legend_title: str = "cluster") -> int:
    """Draw one morphospace figure.

    Args:
        scores: ``(N, k)`` PCA scores (``k > max(axes)``).
        images: ``(N,)`` image files (absolute or relative to the working folder).
        clusters: ``(N,)`` cluster (or class) of each specimen: the colour of its dot.
        ratio: explained variance ratio of each axis (``len >= k``).
        path: output PNG.
        axes: the two score columns drawn (0-based: ``(0, 1)`` is PC1/PC2).
        cells: grid cells along the longer side (:func:`grid_pick`).
        cell_px: pixels per cell in the thumbnail canvas.
        meta: the run's model metadata (which bands of a multi-band stack are shown).
        legend_title: what the dot colours are (``cluster``, or a trait in stage 5).

    Returns:
        The number of thumbnails drawn.
    """

    plt = pyplot()
    a, b = axes
    xy = np.asarray(scores, np.float64)[:, [a, b]]
    clusters = np.asarray(list(map(str, clusters)))
    chosen, ij, side, (nx, ny) = grid_pick(xy, cells)
    canvas = np.zeros((ny * cell_px, nx * cell_px, 4), np.uint8)  # transparent: dots show through
    inner = max(8, int(cell_px * 0.94))
    for row, (i, j) in zip(chosen, ij):
        thumb = thumbnail(images[row], inner, meta)
        h, w = thumb.shape[:2]
        x0 = i * cell_px + (cell_px - w) // 2
        y0 = (ny - 1 - j) * cell_px + (cell_px - h) // 2  # canvas row 0 is the top
        over(canvas, thumb, x0, y0)
    lo = xy.min(0)
    extent = (lo[0], lo[0] + nx * side, lo[1], lo[1] + ny * side)
    width = 11.0
    fig, ax = plt.subplots(figsize=(width, max(3.5, width * ny / nx * 0.92 + 0.6)))
    colours = cluster_colours(clusters)
    for name, colour in colours.items():
        m = clusters == name
        ax.scatter(xy[m, 0], xy[m, 1], s=9, color=colour, label=f"{name} ({int(m.sum())})",
                   zorder=3, edgecolors="white", linewidths=0.3)
    ax.imshow(canvas, extent=extent, origin="upper", zorder=2, interpolation="antialiased")
    pad = 0.25 * side  # dots on the edge stay whole
    ax.set_xlim(extent[0] - pad, extent[1] + pad)
    ax.set_ylim(extent[2] - pad, extent[3] + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"PC{a + 1} ({ratio[a]:.1%} of the variance)")
    ax.set_ylabel(f"PC{b + 1} ({ratio[b]:.1%} of the variance)")
    n = len(xy)
    shown = (f"all {n} specimens" if len(chosen) == n else
             f"{len(chosen)} of {n} specimens: one per grid cell, the one nearest its centre")
    ax.set_title(f"{title}\nmorphospace PC{a + 1}/PC{b + 1}, {shown}; dots: every specimen at its "
                 "exact position", fontsize=9)
    if len(colours) <= 20:
        ax.legend(fontsize=7, markerscale=1.6, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  title=f"{legend_title} (images)", title_fontsize=7, frameon=False)
    save_figure(fig, path)
    return len(chosen)


def read_scores(run_dir: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``(ids, scores (N, k), explained variance ratio (k',))`` from a stage 4 run folder."""
    table = read_csv(Path(run_dir) / "embeddings_pca.csv", dtype={"image": str, "cluster": str,
                                                                     "split": str},
                        keep_default_na=False)
    pcs = sorted((c for c in table.columns if c.startswith("PC") and c[2:].isdigit()),
                 key=lambda c: int(c[2:]))
    variance = read_csv(Path(run_dir) / "pca_variance.csv")
    ratio = variance["explained_variance_ratio"].to_numpy(float)
    return table[["image", "cluster", "split"]], table[pcs].to_numpy(np.float64), ratio


def run_image_root(manifest: dict | None) -> Path | None:
    """The folder a stage 4 run's image paths are relative to (from its manifest).

    As :func:`wingclr.features.image_table`: ``<data>/unlabeled`` for stage 2 output (it has a
    split.csv), else ``<data>`` itself.
    """
    data = ((manifest or {}).get("args") or {}).get("data")
    if not data:
        return None
    data = Path(data)
    return data / "unlabeled" if (data / "split.csv").exists() else data


def write_morphospace(run_dir: Path, root: Path | None = None, meta: dict | None = None,
                      cells: int = GRID_CELLS) -> list[Path]:
    """``morphospace.png`` (PC1/PC2) and, with >= 4 PCA axes, ``morphospace_pc3_pc4.png``.

    Args:
        run_dir: stage 4 output of one run (``embeddings_pca.csv``, ``pca_variance.csv``).
        root: folder the image paths are relative to (default: the one in its manifest.json).
        meta: the run's model metadata (default: from its manifest.json).

    Returns:
        The files written ([] when there are fewer than 2 PCA axes or no images).
    """

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir) if root is None or meta is None else None
    root = Path(root) if root is not None else run_image_root(manifest)
    meta = meta if meta is not None else (manifest or {}).get("model")
    ids, scores, ratio = read_scores(run_dir)
    if scores.shape[1] < 2 or len(ids) < 2:
        return []
    images = [(root / p) if root else Path(p) for p in ids["image"]]
    written = []
    for axes, name in (((0, 1), "morphospace.png"), ((2, 3), "morphospace_pc3_pc4.png")):
        if scores.shape[1] > axes[1]:
            plot_morphospace(scores, images, ids["cluster"], ratio, run_dir / name, run_dir.name,
                             axes, cells, meta=meta)
            written.append(run_dir / name)
    return written
