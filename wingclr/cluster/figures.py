"""Stage 1 figures: the 3-D UMAP scatter by cluster and the per-cluster silhouette plot.

Figures are always written to PNG; they are also shown in a window (close it to continue) when a
display is available and the user did not pass ``--no-show``. Without a display, or under the
non-interactive Agg backend (CI, SLURM), nothing blocks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..plotting import class_colours, pyplot, save_figure
from .clustering import Clustering

OUTLIER_COLOUR = (0.6, 0.6, 0.6, 0.35)


def display_available() -> bool:
    """A window can be opened: a display exists and matplotlib has an interactive backend."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import matplotlib

    backend = matplotlib.get_backend().lower()
    return backend not in {"agg", "pdf", "ps", "svg", "cairo", "template"} and "inline" not in backend


def plot_umap_3d(embedding: np.ndarray, result: Clustering, path: Path, show: bool = False):
    """Scatter ``(N, 3)`` UMAP points coloured by cluster (outliers grey) and save it to ``path``."""
    plt = pyplot(show)
    fig = plt.figure(figsize=(7.5, 6.5))
    ax = fig.add_subplot(projection="3d")
    out = result.labels < 0
    if out.any():
        ax.scatter(*embedding[out].T, s=6, color=OUTLIER_COLOUR, label=f"outliers ({out.sum()})")
    ids = sorted(result.sizes)
    for colour, k in zip(class_colours(len(ids)), ids):
        m = result.labels == k
        ax.scatter(*embedding[m].T, s=10, color=colour, label=f"cluster_{k} ({m.sum()})")
    if len(ids) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="upper left", bbox_to_anchor=(1.02, 1))
    ax.set(xlabel="umap_1", ylabel="umap_2", zlabel="umap_3")
    ax.set_title(f"UMAP 3-D: {result.n_clusters} clusters, {result.n_outliers} outliers\n"
                 f"min_cluster_size={result.min_cluster_size}, "
                 f"cluster_selection_epsilon={result.epsilon:g}", fontsize=10)
    save_figure(fig, path, close=not show)
    return fig


def plot_silhouette(result: Clustering, path: Path, show: bool = False):
    """Silhouette plot as in scikit-learn's silhouette-analysis example, saved to ``path``.

    One band per cluster (its images' silhouette values, sorted), a red dashed line at the mean.
    When the score is undefined the figure says why.
    """
    plt = pyplot(show)
    fig, ax = plt.subplots(figsize=(7, 6))
    if result.silhouette is None:
        ax.text(0.5, 0.5, result.note.replace(": ", ":\n", 1).replace("; ", ";\n"), ha="center",
                va="center", wrap=True, fontsize=10, transform=ax.transAxes)
        ax.set_axis_off()
        save_figure(fig, path, close=not show)
        return fig
    labels = result.labels[result.labels >= 0]
    ids = sorted(result.sizes)
    gap = max(2, len(labels) // 50)
    y_lower = gap
    for colour, k in zip(class_colours(len(ids)), ids):
        vals = np.sort(result.silhouette_values[(labels == k) & ~np.isnan(result.silhouette_values)])
        ax.fill_betweenx(np.arange(y_lower, y_lower + len(vals)), 0, vals, facecolor=colour,
                         edgecolor=colour, alpha=0.7)
        ax.text(-0.05, y_lower + 0.5 * len(vals), str(k), ha="right", va="center", fontsize=8)
        y_lower += len(vals) + gap
    in_features = ("" if result.feature_silhouette is None
                   else f" (in feature space: {result.feature_silhouette:.3f})")
    ax.axvline(x=result.silhouette, color="red", linestyle="--",
               label=f"average {result.silhouette:.3f}{in_features}")
    ax.set_xlim(min(-0.1, float(np.nanmin(result.silhouette_values)) - 0.05), 1)
    ax.set_ylim(0, y_lower)
    ax.set_yticks([])
    ax.set(xlabel="silhouette coefficient values", ylabel="cluster label",
           title=f"Silhouette in the 3-D UMAP space of the {result.n_clusters} clusters "
                 f"({result.n_outliers} outliers left out)")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path, close=not show)
    return fig


def show_figures(figures: list) -> None:
    """Show the figures in windows and wait until the user closes them."""
    plt = pyplot(True)
    print("close the plot windows to continue", flush=True)
    plt.show()
    for fig in figures:
        plt.close(fig)
