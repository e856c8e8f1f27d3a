"""Figures of stage 5: confusion matrix and 2-D UMAP.

Stage 5 draws, per run, the confusion matrix of the linear probe and a 2-D UMAP of the
embeddings; the PCA scatter (stage 4's pca.png, stage 5's trait views) is
:func:`wingclr.plotting.pca_figure`. Categorical colours come from
:func:`wingclr.plotting.class_colours` (also used by :mod:`wingclr.cluster.figures` and
:mod:`wingclr.morphospace`), and legends sit outside the axes so they never cover points.

``umap`` is imported inside :func:`umap_2d`: its first import in a fresh environment compiles
numba code (~25 s), and the first fit in each process costs another ~8-14 s.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..plotting import legend_outside, pyplot, save_figure, scatter_groups


def confusion_figure(y_true, y_pred, labels, run: str, labels_from: str,
                     what: str = "validation images"):
    """Confusion matrix of true labels vs linear-probe predictions (matplotlib Figure).

    Args:
        run: run name; labels_from: where the classes come from (``clusters`` or a CSV name and
            column); what: the images scored (``validation images``, or out-of-fold ones).
    """
    from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, balanced_accuracy_score

    plt = pyplot()
    size = 3 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(max(size, 6), size))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=labels, ax=ax, colorbar=False,
                                            xticks_rotation=45)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # predicted classes absent from a small validation set
        balanced = balanced_accuracy_score(y_true, y_pred)
    ax.set_title(f"linear probe on {run}: {len(y_true)} {what}, labels: {labels_from}\n"
                 f"balanced accuracy {balanced:.3f}, accuracy {accuracy_score(y_true, y_pred):.3f}",
                 fontsize=9)
    ax.set(xlabel="predicted by the linear probe", ylabel="true label")
    return fig


def plot_confusion(y_true, y_pred, labels, path: Path, run: str, labels_from: str,
                   what: str = "validation images"):
    """Save :func:`confusion_figure` to ``path`` and return the figure."""
    fig = confusion_figure(y_true, y_pred, labels, run, labels_from, what)
    save_figure(fig, path)
    return fig


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


def umap_figure(xy: np.ndarray, groups, grey: str, title: str, legend_title: str = "cluster"):
    """Scatter of ``(N, 2)`` UMAP points coloured by ``groups`` (group ``grey`` in grey)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    colours = scatter_groups(ax, xy, groups, (grey,))
    legend_outside(ax, f"{legend_title} (images)", len(colours))
    ax.set(xlabel="UMAP 1", ylabel="UMAP 2", title=f"{title} (cosine UMAP)", xticks=[], yticks=[])
    return fig


def plot_umap(features: np.ndarray, groups, grey: str, path: Path, title: str, seed: int = 0,
              legend_title: str = "cluster") -> None:
    """2-D UMAP of ``(N, D)`` features coloured by ``groups``, saved to ``path``.

    Args:
        groups: ``(N,)`` cluster or user label per row.
        grey: the group drawn in grey (stage 2's outliers folder, or images without a label).
        legend_title: what the colours are, e.g. ``cluster`` or ``label (labels.csv)``.
    """
    save_umap(umap_2d(features, seed), groups, grey, path, title, legend_title)


def save_umap(xy: np.ndarray, groups, grey: str, path: Path, title: str,
              legend_title: str = "cluster") -> None:
    """:func:`umap_figure` of ready ``(N, 2)`` UMAP points, saved to ``path`` (one UMAP, several
    colourings: by each trait and by cluster)."""
    save_figure(umap_figure(xy, groups, grey, title, legend_title), path)
