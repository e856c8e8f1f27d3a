"""Contact sheets: one image per cluster (or class) showing its specimens, nearest its centre first.

The centre of a group is the mean of its members' L2-normalised features; members are ordered by
cosine distance to it, so the first thumbnails are the group's typical specimens and the last its
doubtful ones. A group larger than a sheet is shown by an evenly spaced sample along that order
(the title says so), so the far end is always visible. Outliers (cluster ``-1`` of stage 1, the
``outliers`` folder of stage 2) get a sheet of their own, each captioned with its nearest cluster.

Used by stage 1 (features.npy + clusters.csv, :func:`write_stage1_sheets`) and stage 5 (the run's
embeddings and the classes it was evaluated on, :func:`write_contact_sheets`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .outputs import fit_name, read_csv, read_manifest
from .thumbnails import Mosaic, grid_columns, short_name, thumbnail

OUTLIER_NAMES = ("-1", "outliers")
MAX_PER_SHEET = 48
COLUMNS = 8


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``(N, D)`` rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def centre_order(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ordered by cosine distance to their mean direction.

    Args:
        features: ``(n, D)`` features of one group.

    Returns:
        ``(order (n,), distance (n,))``: ``distance[order]`` is ascending; distances are
        ``1 - cos`` to the normalised mean of the unit rows (0 .. 2).
    """
    z = unit_rows(features)
    centre = unit_rows(z.mean(0, keepdims=True))[0]
    dist = 1.0 - z @ centre
    return np.argsort(dist, kind="stable"), dist


def spread_sample(n: int, m: int) -> np.ndarray:
    """``min(n, m)`` evenly spaced positions in ``range(n)``, first and last included."""
    if n <= m:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, m)).astype(int))


def safe_name(name: str) -> str:
    """A file-name-safe version of a cluster or class name."""
    return re.sub(r"[^\w.-]+", "_", str(name)).strip("_") or "unnamed"


def plot_sheet(images: Sequence[Path], captions: Sequence[str], path: Path, title: str,
               meta: dict | None = None, columns: int = COLUMNS, cell: int = 104) -> Path:
    """A grid of thumbnails (row by row) with a caption under each and a title on top."""
    cols = grid_columns(len(images), columns, least=4)  # near-square; >= 4: room for the title
    rows = max(1, -(-len(images) // cols))
    sheet = Mosaic(rows, cols, cell, title=title)
    for k, (image, caption) in enumerate(zip(images, captions)):
        sheet.put(k // cols, k % cols, thumbnail(image, cell, meta), caption)
    return sheet.save(path)


def write_contact_sheets(features: np.ndarray, groups: Sequence[str], images: Sequence[Path],
                         out_dir: Path, title: str = "", meta: dict | None = None,
                         max_per_sheet: int = MAX_PER_SHEET, outliers: Sequence[str] = OUTLIER_NAMES,
                         what: str = "cluster") -> list[Path]:
    """One PNG per group (``sheet_<group>.png``) and ``sheet_outliers.png`` when there are any.

    Args:
        features: ``(N, D)`` features or embeddings.
        groups: ``(N,)`` cluster or class of each image; '' rows are left out.
        images: ``(N,)`` image files.
        out_dir: folder of the sheets (created).
        title: prefix of every title (e.g. the run name).
        meta: model metadata (bands shown for multi-band stacks).
        max_per_sheet: larger groups are shown by an evenly spaced sample (said in the title).
        outliers: group names gathered on the outlier sheet.
        what: ``"cluster"`` or ``"class"`` (titles).

    Returns:
        The files written, groups in sorted order, the outlier sheet last.
    """
    groups = np.asarray(list(map(str, groups)))
    feats = np.asarray(features)
    out_dir = Path(out_dir)
    prefix = f"{title}: " if title else ""
    names = sorted(set(groups) - set(outliers) - {""})
    written, centres = [], {}
    for name in names:
        rows = np.flatnonzero(groups == name)
        order, dist = centre_order(feats[rows])
        centres[name] = unit_rows(unit_rows(feats[rows]).mean(0, keepdims=True))[0]
        picks = order[spread_sample(len(rows), max_per_sheet)]
        shown = (f"all {len(rows)} specimens" if len(picks) == len(rows) else
                 f"{len(picks)} of {len(rows)} specimens, evenly spaced along the order")
        captions = [f"{short_name(images[rows[p]])}\ndist {dist[p]:.3f}" for p in picks]
        written.append(plot_sheet([images[rows[p]] for p in picks], captions,
                                  out_dir / fit_name(f"sheet_{safe_name(name)}.png"),
                                  f"{prefix}{what} {name}: {shown}; nearest the {what} centre first "
                                  "(dist = cosine distance to the centre)", meta))
    rows = np.flatnonzero(np.isin(groups, list(outliers)))
    if len(rows):
        z = unit_rows(feats[rows])
        if centres:
            names_c = list(centres)
            d = 1.0 - z @ np.stack([centres[n] for n in names_c]).T  # (n, clusters)
            near, dist = d.argmin(1), d.min(1)
            labels = [names_c[k] for k in near]
        else:
            dist, labels = np.zeros(len(rows)), [""] * len(rows)
        order = np.argsort(dist, kind="stable")
        picks = order[spread_sample(len(rows), max_per_sheet)]
        shown = (f"all {len(rows)}" if len(picks) == len(rows) else
                 f"{len(picks)} of {len(rows)}, evenly spaced along the order")
        captions = [f"{short_name(images[rows[p]])}\n→ {labels[p]} {dist[p]:.3f}"
                    if labels[p] else short_name(images[rows[p]]) for p in picks]
        written.append(plot_sheet([images[rows[p]] for p in picks], captions,
                                  out_dir / "sheet_outliers.png",
                                  f"{prefix}outliers: {shown}; nearest to a {what} centre first "
                                  f"(→ that {what}, cosine distance)", meta))
    return written


def write_stage1_sheets(stage1_dir: Path, image_root: Path | None = None,
                        out_dir: Path | None = None, max_per_sheet: int = MAX_PER_SHEET) -> list[Path]:
    """Contact sheets of a stage 1 output folder (``clusters.csv`` + the cached features).

    Args:
        stage1_dir: stage 1 output (``clusters.csv``, ``features.npy``, ``features_index.csv``).
        image_root: folder of the clustered images (default: the manifest's ``input``).
        out_dir: where the sheets go (default ``<stage1_dir>/sheets``).

    Returns:
        The files written.
    """

    stage1_dir = Path(stage1_dir)
    clusters = read_csv(stage1_dir / "clusters.csv", dtype={"image": str, "cluster": str},
                           keep_default_na=False)
    index = read_csv(stage1_dir / "features_index.csv", dtype={"image": str}, keep_default_na=False)
    values = np.load(stage1_dir / "features.npy", mmap_mode="r")
    row_of = dict(zip(index["image"], range(len(index))))
    rows = clusters["image"].map(row_of)
    clusters = clusters[rows.notna()]
    feats = np.asarray(values[rows.dropna().astype(int).to_numpy()], np.float32)
    if image_root is None:
        image_root = ((read_manifest(stage1_dir) or {}).get("args") or {}).get("input") or stage1_dir
    images = [Path(image_root) / p for p in clusters["image"]]
    return write_contact_sheets(feats, clusters["cluster"].tolist(), images,
                                out_dir or stage1_dir / "sheets", title=stage1_dir.name,
                                max_per_sheet=max_per_sheet)
