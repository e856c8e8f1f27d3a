"""Nearest neighbours (stage 5): a few query specimens and what sits next to them in an embedding.

One row per query: the query (framed), then its ``k`` nearest specimens by cosine distance
(``1 - cos``, 0 = same direction), each captioned with its distance and class; a neighbour of the
query's class is captioned in green, of another class in red. Given a second embedding (the frozen
ImageNet backbone of the same run), its neighbours of the same queries follow on the same row, so
the two can be compared side by side.

Queries are drawn per class with a seed (validation images first), or named by the user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..contact_sheets import unit_rows
from ..thumbnails import Mosaic, clip, short_name, thumbnail

SAME, OTHER = "#1a7f37", "#c62828"   # caption colours: neighbour of the query's class or not


def cosine_neighbours(features: np.ndarray, queries: Sequence[int], k: int,
                      pool: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of each query by cosine distance (the query itself excluded).

    Args:
        features: ``(N, D)``.
        queries: ``(Q,)`` row indices.
        k: neighbours per query (fewer when the pool is smaller).
        pool: ``(N,)`` bool, rows that may be neighbours (default: all).

    Returns:
        ``(index (Q, k'), distance (Q, k'))``, nearest first; ``k' = min(k, pool size - 1)``.
    """
    z = unit_rows(features)
    q = np.asarray(queries, int)
    sim = z[q] @ z.T  # (Q, N)
    sim[np.arange(len(q)), q] = -np.inf
    if pool is not None:
        sim[:, ~np.asarray(pool, bool)] = -np.inf
    k = int(min(k, np.isfinite(sim).sum(1).min() if len(q) else 0))
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return idx, 1.0 - np.take_along_axis(sim, idx, 1)


def class_orders(labels: Sequence[str], seed: int = 0,
                 prefer: np.ndarray | None = None) -> list[np.ndarray]:
    """Every class's rows in a seeded order, rows in ``prefer`` first; classes sorted, '' skipped.

    Args:
        labels: ``(N,)`` class per row ('' = none).
        prefer: ``(N,)`` bool (e.g. the validation rows); other rows of a class follow them.
    """
    labels = np.asarray(list(map(str, labels)))
    prefer = np.ones(len(labels), bool) if prefer is None else np.asarray(prefer, bool)
    rng = np.random.default_rng(seed)
    orders = []
    for name in sorted(set(labels) - {""}):
        rows = np.flatnonzero(labels == name)
        orders.append(np.concatenate([rng.permutation(rows[prefer[rows]]),
                                      rng.permutation(rows[~prefer[rows]])]))
    return orders


def pick_queries(labels: Sequence[str], per_class: int = 2, seed: int = 0,
                 prefer: np.ndarray | None = None) -> np.ndarray:
    """``per_class`` rows of every class, drawn with ``seed``; rows in ``prefer`` first.

    Args:
        labels: ``(N,)`` class per row ('' = none, never a query).
        prefer: ``(N,)`` bool (e.g. the validation rows); other rows of a class fill up.

    Returns:
        ``(Q,)`` row indices, classes in sorted order.
    """
    return np.asarray([int(r) for order in class_orders(labels, seed, prefer)
                       for r in order[:per_class]], int)


def match_queries(images: Sequence[str], wanted: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Rows of the images named in ``wanted`` (relative path as in embeddings.csv, or file name).

    Returns:
        ``(rows, not found)``.
    """
    images = [str(p) for p in images]
    by_path = {p: i for i, p in enumerate(images)}
    by_name: dict[str, int] = {}
    for i, p in enumerate(images):
        by_name.setdefault(Path(p).name, i)
        by_name.setdefault(Path(p).stem, i)
    rows, missing = [], []
    for w in map(str, wanted):
        hit = by_path.get(w, by_path.get(Path(w).as_posix(), by_name.get(Path(w).name,
                                                                           by_name.get(Path(w).stem))))
        (rows if hit is not None else missing).append(hit if hit is not None else w)
    return np.asarray(rows, int), missing


def plot_neighbours(images: Sequence[Path], labels: Sequence[str], queries: Sequence[int],
                    panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str,
                    meta: dict | None = None, cell: int = 96) -> Path:
    """One row per query: the query, then each panel's neighbours.

    Args:
        images: ``(N,)`` image files; labels: ``(N,)`` classes.
        queries: ``(Q,)`` row indices.
        panels: ``(name, index (Q, k), distance (Q, k))`` per embedding, drawn left to right.
    """
    labels = np.asarray(list(map(str, labels)))
    widths = [p[1].shape[1] for p in panels]
    cols = 1 + sum(widths) + (len(panels) - 1)  # a blank column between panels
    grid = Mosaic(len(queries), cols, cell, header_px=34, title=f"{title}\ncaption: cosine "
                  "distance and class (green: the query's class, red: another class)")
    for r, q in enumerate(queries):
        grid.put(r, 0, thumbnail(images[q], cell - 8, meta),
                 f"QUERY {clip(labels[q] or '-', 12)}\n{short_name(images[q], 16)}",
                 frame="black")
        col = 1
        for (_, idx, dist), width in zip(panels, widths):
            for j in range(width):
                n = idx[r, j]
                same = labels[n] == labels[q] and labels[q] != ""
                grid.put(r, col + j, thumbnail(images[n], cell, meta),
                         f"{dist[r, j]:.3f} {clip(labels[n] or '-', 10)}\n"
                         f"{short_name(images[n], 16)}", colour=SAME if same else OTHER)
            col += width + 1
    col = 1
    for (name, _, _), width in zip(panels, widths):
        x, _ = grid.origin(0, col)
        grid.text(x, grid.title_px - 8, f"{name}:\n{width} nearest", fontsize=8, ha="left",
                  va="bottom", fontweight="bold")
        col += width + 1
    return grid.save(path)


def write_neighbours(features: np.ndarray, labels: Sequence[str], images: Sequence[Path],
                     path: Path, k: int = 5, per_class: int = 2, seed: int = 0,
                     queries: Sequence[int] | None = None, prefer: np.ndarray | None = None,
                     baseline: tuple[str, np.ndarray] | None = None, name: str = "this run",
                     title: str = "", meta: dict | None = None,
                     pool: np.ndarray | None = None) -> Path | None:
    """``neighbours.png`` for one embedding, and beside it a baseline's when given.

    Args:
        features: ``(N, D)`` the run's embeddings; labels: ``(N,)``; images: ``(N,)`` files.
        k: neighbours per query.
        per_class: queries per class when ``queries`` is not given (seeded by ``seed``).
        queries: row indices of user-chosen queries.
        prefer: ``(N,)`` bool rows preferred as queries (the validation images).
        baseline: ``(name, (N, D) features)`` of the same images in another embedding.
        pool: ``(N,)`` bool rows that may be neighbours (default: all).

    Returns:
        The file, or None when there is nothing to show (no queries or k = 0).
    """
    q = np.asarray(pick_queries(labels, per_class, seed, prefer) if queries is None else queries, int)
    if len(q) == 0 or k < 1 or len(features) < 2:
        return None
    panels = [(name, *cosine_neighbours(features, q, k, pool))]
    if baseline is not None:
        panels.append((baseline[0], *cosine_neighbours(baseline[1], q, k, pool)))
    if panels[0][1].shape[1] == 0:
        return None
    return plot_neighbours(images, labels, q, panels, path, title, meta)

