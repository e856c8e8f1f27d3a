"""Figures of stages 4 and 5 and the one categorical palette every scatter uses.

Stage 5 draws, per run, the confusion matrix of the linear probe and a 2-D UMAP of the
embeddings; stage 4 draws the PCA scatter (pca.png). Categorical colours come from
:func:`class_colours` (also used by :mod:`wingclr.cluster.plots` and :mod:`wingclr.morphospace`),
and legends sit outside the axes so they never cover points.

``umap`` is imported inside :func:`umap_2d`: its first import in a fresh environment compiles
numba code (~25 s), and the first fit in each process costs another ~8-14 s.
"""

from __future__ import annotations

import colorsys
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..outputs import save_figure

OUTLIER_COLOUR = (0.6, 0.6, 0.6, 0.4)
GREY_NAMES = ("-1", "outliers")  # stage 1/2 names of the images no cluster took
MAX_LEGEND = 20  # more entries than this and the legend is left out


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _palette() -> list[tuple]:
    """20 fixed colours: tab10 and 7 of tab20's light shades (no greys: grey means outlier; no
    light cyan or purple: too close to light blue), then black, navy, teal and maroon."""
    from matplotlib import colormaps

    dark, light = colormaps["tab10"].colors, colormaps["tab20"].colors[1::2]
    extra = [(0.0, 0.0, 0.0), (0.0, 0.25, 0.5), (0.0, 0.45, 0.4), (0.5, 0.0, 0.15)]
    return ([tuple(dark[i]) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
            + [tuple(light[i]) for i in (0, 1, 2, 3, 5, 6, 8)] + extra)


def class_colours(n: int) -> list[tuple]:
    """``n`` RGBA colours for categories, neighbours in the list clearly different.

    The first 20 are a fixed list (:func:`_palette`; no grey, which is kept for outliers), so a class keeps its colour when more classes are added. Beyond 20,
    colours step round the hue circle by the golden angle, alternating dark and light.
    """
    base = _palette()
    out = [(*c, 1.0) for c in base[:n]]
    for i in range(n - len(base)):
        h = (0.11 + i * 0.618034) % 1.0
        out.append((*colorsys.hsv_to_rgb(h, 0.85 if i % 2 else 0.55, 0.55 if i % 2 else 0.95), 1.0))
    return out


def natural_key(name: str) -> list:
    """Sort key putting ``cluster_2`` before ``cluster_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def group_colours(groups: Sequence, grey: Sequence[str] = GREY_NAMES) -> dict[str, tuple]:
    """Colour per group name (natural order; names in ``grey`` get :data:`OUTLIER_COLOUR`)."""
    names = sorted(set(map(str, groups)), key=natural_key)
    named = [n for n in names if n not in grey]
    colours = dict(zip(named, class_colours(len(named))))
    return {n: colours.get(n, OUTLIER_COLOUR) for n in names}


def legend_outside(ax, title: str | None = None, n: int | None = None, **kw):
    """Legend to the right of ``ax`` (outside the points); none when ``n`` > :data:`MAX_LEGEND`."""
    if n is not None and n > MAX_LEGEND:
        return None
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=7,
                     markerscale=1.5, title=title, title_fontsize=7, frameon=False, **kw)


def scatter_groups(ax, xy: np.ndarray, groups, grey: Sequence[str] = GREY_NAMES, s: float = 12,
                   **kw) -> dict[str, tuple]:
    """Scatter ``(N, 2)`` points one colour per group, grey groups first (underneath)."""
    groups = np.asarray(groups, str)
    colours = group_colours(groups, grey)
    order = [n for n in colours if n in grey] + [n for n in colours if n not in grey]
    for name in order:
        m = groups == name
        ax.scatter(*xy[m].T, s=s * (0.7 if name in grey else 1), color=colours[name],
                   label=f"{name} ({int(m.sum())})", **kw)
    return colours


def confusion_figure(y_true, y_pred, labels, run: str, labels_from: str):
    """Confusion matrix of validation labels vs linear-probe predictions (matplotlib Figure).

    Args:
        run: run name; labels_from: where the classes come from (``clusters`` or a CSV name).
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
    ax.set_title(f"linear probe on {run}: {len(y_true)} validation images, labels: {labels_from}\n"
                 f"balanced accuracy {balanced:.3f}, accuracy {accuracy_score(y_true, y_pred):.3f}",
                 fontsize=9)
    ax.set(xlabel="predicted by the linear probe", ylabel="true label")
    return fig


def plot_confusion(y_true, y_pred, labels, path: Path, run: str, labels_from: str):
    """Save :func:`confusion_figure` to ``path`` and return the figure."""
    fig = confusion_figure(y_true, y_pred, labels, run, labels_from)
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
    save_figure(umap_figure(umap_2d(features, seed), groups, grey, title, legend_title), path)


def pca_figure(scores: np.ndarray, groups, ratio: np.ndarray, title: str):
    """PC1/PC2 scatter coloured by cluster, legend outside the axes (stage 4's pca.png)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    y = scores[:, 1] if scores.shape[1] > 1 else np.zeros(len(scores))
    colours = scatter_groups(ax, np.c_[scores[:, 0], y], groups, s=10, alpha=0.8)
    legend_outside(ax, "cluster (images)", len(colours))
    ax.set(xlabel=f"PC1 ({ratio[0]:.1%})", ylabel=f"PC2 ({ratio[1]:.1%})" if len(ratio) > 1 else "",
           title=title)
    return fig


def plot_pca(scores: np.ndarray, groups, ratio: np.ndarray, path: Path, title: str) -> None:
    """Save :func:`pca_figure` to ``path``."""
    save_figure(pca_figure(scores, groups, ratio, title), path)
