"""Stage 5 figures of one run: confusion matrix of the linear probe and a 2-D UMAP of the embeddings.

``umap`` is imported inside :func:`umap_2d`: its first import in a fresh environment compiles
numba code (~25 s), and the first fit in each process costs another ~8-14 s.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .stage import save_figure

OUTLIER_COLOUR = (0.6, 0.6, 0.6, 0.4)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(y_true, y_pred, labels, path: Path, title: str) -> None:
    """Confusion matrix of validation labels vs probe predictions, saved to ``path``."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    size = 3 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=labels, ax=ax, colorbar=False,
                                            xticks_rotation=45)
    ax.set_title(title)
    save_figure(fig, path)


def umap_2d(features: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """Cosine-metric UMAP of ``(N, D)`` features to ``(N, 2)`` float32 (seeded, single thread)."""
    import umap

    x = np.asarray(features, np.float32)
    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, len(x) - 1)),
                        metric="cosine", random_state=seed, n_jobs=1,
                        init="spectral" if len(x) > 20 else "random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba / small-data chatter
        return reducer.fit_transform(x).astype(np.float32)


def plot_umap(features: np.ndarray, clusters, outliers: str, path: Path, title: str,
              seed: int = 0) -> None:
    """2-D UMAP of ``(N, D)`` features coloured by cluster (``outliers`` grey), saved to ``path``.

    Args:
        clusters: ``(N,)`` cluster name per row.
        outliers: the cluster name drawn in grey (stage 2's outliers folder).
    """
    plt = pyplot()
    xy = umap_2d(features, seed)
    clusters = np.asarray(clusters, str)
    names = sorted(set(clusters) - {outliers})
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7, 6))
    out = clusters == outliers
    if out.any():
        ax.scatter(*xy[out].T, s=8, color=OUTLIER_COLOUR, label=f"{outliers} ({out.sum()})")
    for i, name in enumerate(names):
        m = clusters == name
        ax.scatter(*xy[m].T, s=12, color=cmap(i % cmap.N), label=f"{name} ({m.sum()})")
    if len(names) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set(xlabel="UMAP 1", ylabel="UMAP 2", title=f"{title} (cosine UMAP)", xticks=[], yticks=[])
    save_figure(fig, path)
