"""UMAP (3-D) + HDBSCAN clustering of image features, silhouette scores and parameter sweeps.

The silhouette is reported twice: in the 3-D UMAP space HDBSCAN clustered (flattering: UMAP pulls
neighbourhoods apart, so even random features score well there) and in the feature space itself
(on a sample of :data:`FEATURE_SILHOUETTE_POINTS`, with the UMAP metric).

``umap`` and ``hdbscan`` are imported inside the functions: the first ``import umap`` in a fresh
environment compiles numba code for ~25 s, and the first UMAP fit in a process ~14 s more.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SILHOUETTE_MAX_POINTS = 10_000  # silhouette is O(N^2): larger sets use a random sample
FEATURE_SILHOUETTE_POINTS = 2_000  # ... times the feature size (4096 for VGG16)
SWEEP_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
SWEEP_EPSILONS = (0.0, 0.1, 0.25, 0.5, 1.0)
OUTLIERS = "outliers"


def folder_name(label: int) -> str:
    """A cluster's one spelling in every folder and CSV: ``cluster_<k>``, ``outliers`` for -1."""
    return f"cluster_{int(label)}" if label >= 0 else OUTLIERS


def by_size(labels: np.ndarray) -> np.ndarray:
    """``labels`` renumbered so that cluster 0 is the largest, 1 the next, ... (-1 stays).

    Ties go to the cluster whose first image comes first, so the same grouping of the same images
    gets the same numbers whatever HDBSCAN called them (every try, every run).
    """
    labels = np.asarray(labels, int)
    ids, first, counts = np.unique(labels[labels >= 0], return_index=True, return_counts=True)
    if not len(ids):
        return labels
    first = np.flatnonzero(labels >= 0)[first]  # index among all images
    order = np.lexsort((first, -counts))  # size descending, then first image
    new = np.full(ids.max() + 1, -1, int)
    new[ids[order]] = np.arange(len(ids))
    return np.where(labels >= 0, new[np.maximum(labels, 0)], -1)


def identical_rows(features: np.ndarray) -> bool:
    """True when every row of ``(N, D)`` equals the first (duplicate images: nothing to project)."""
    return bool(len(features) and (features == features[0]).all())


def project_umap(features: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1,
                 seed: int = 0, metric: str = "euclidean", pca_dims: int = 0) -> np.ndarray:
    """Project ``(N, D)`` features to ``(N, 3)`` float32 with UMAP.

    Args:
        n_neighbors: UMAP neighbourhood size (capped at N - 1).
        min_dist: how tightly UMAP packs points.
        seed: random state; a seeded UMAP is reproducible but runs single-threaded.
        metric: distance in feature space (``euclidean`` or ``cosine``, ...).
        pca_dims: first reduce to this many principal axes (0: off); much faster on 4096-d input.
    """
    import umap

    x = np.asarray(features, np.float32)
    if pca_dims and pca_dims < min(x.shape):
        from sklearn.decomposition import PCA

        x = PCA(pca_dims, random_state=seed, svd_solver="randomized").fit_transform(x).astype(np.float32)
    reducer = umap.UMAP(n_components=3, n_neighbors=max(2, min(n_neighbors, len(x) - 1)),
                        min_dist=min_dist, metric=metric, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # seeded: single thread
        warnings.filterwarnings("ignore", message=".*n_neighbors is larger.*")
        warnings.filterwarnings("ignore", message=".*not fully connected.*")  # disjoint groups
        return reducer.fit_transform(x).astype(np.float32)


def run_hdbscan(embedding: np.ndarray, min_cluster_size: int, epsilon: float = 0.0,
                min_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """HDBSCAN on ``(N, 3)`` points -> ``(labels (N,) int, -1 = outlier; probabilities (N,))``."""
    import hdbscan

    # core_dist_n_jobs=1: a worker pool costs ~8 s to start and 3-D neighbours need none
    model = hdbscan.HDBSCAN(min_cluster_size=int(min_cluster_size), min_samples=min_samples,
                            cluster_selection_epsilon=float(epsilon), core_dist_n_jobs=1)
    labels = model.fit_predict(np.asarray(embedding, np.float64))
    return labels.astype(int), np.asarray(model.probabilities_, np.float32)


def silhouette(embedding: np.ndarray, labels: np.ndarray, seed: int = 0,
               max_points: int = SILHOUETTE_MAX_POINTS,
               metric: str = "euclidean") -> tuple[float | None, np.ndarray, str]:
    """Silhouette of the clustered points (outliers left out) in the embedding (or features).

    Returns:
        ``(mean or None, per-point values (M,) for the points in ``mask``, note)``. The mean is None
        with a note saying why when the score is undefined (fewer than 2 clusters, or every point
        its own cluster). The per-point values are NaN for points outside the random sample used
        above ``max_points`` clustered points.
    """
    from sklearn.metrics import silhouette_samples

    clustered = np.flatnonzero(labels >= 0)
    values = np.full(len(clustered), np.nan, np.float32)
    k = len(np.unique(labels[clustered]))
    if k < 2:
        why, fix = (("no clusters", "--min-cluster-size") if k == 0 else
                    ("only one cluster", "--min-cluster-size or --cluster-selection-epsilon"))
        return None, values, (f"silhouette undefined: {why} ({len(labels) - len(clustered)} of "
                              f"{len(labels)} images are outliers); try a smaller {fix}")
    if k >= len(clustered):
        return None, values, "silhouette undefined: every clustered image is its own cluster"
    pick = np.arange(len(clustered))
    note = ""
    if len(clustered) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(clustered), max_points, replace=False))
        note = f" (on a random sample of {max_points} images)"
    sub = clustered[pick]
    if len(np.unique(labels[sub])) < 2:
        return None, values, "silhouette undefined: the sample holds only one cluster"
    values[pick] = silhouette_samples(embedding[sub], labels[sub], metric=metric)
    return float(np.nanmean(values)), values, note


@dataclass
class Clustering:
    """One HDBSCAN result on a UMAP embedding.

    Attributes:
        labels: ``(N,)`` cluster per image, -1 = outlier.
        probabilities: ``(N,)`` HDBSCAN membership strength.
        silhouette: mean silhouette of clustered images in the UMAP space, None when undefined.
        silhouette_values: ``(M,)`` per clustered image (labels >= 0, in order), NaN if unsampled.
        note: why the silhouette is undefined, or how it was sampled.
        feature_silhouette: the same in the feature space (None: undefined or not computed).
    """

    min_cluster_size: int
    epsilon: float
    labels: np.ndarray
    probabilities: np.ndarray
    silhouette: float | None
    silhouette_values: np.ndarray
    note: str = ""
    sizes: dict = field(default_factory=dict)
    feature_silhouette: float | None = None

    @property
    def n_clusters(self) -> int:
        return len(self.sizes)

    @property
    def n_outliers(self) -> int:
        return int((self.labels < 0).sum())

    def summary(self) -> str:
        score = f"{self.silhouette:.3f}{self.note}" if self.silhouette is not None else "undefined"
        feats = "" if self.feature_silhouette is None else f", {self.feature_silhouette:.3f} in feature space"
        return (f"min_cluster_size={self.min_cluster_size} cluster_selection_epsilon={self.epsilon:g}: "
                f"{self.n_clusters} cluster{'s' * (self.n_clusters != 1)}, {self.n_outliers} outliers, "
                f"average silhouette {score} in the 3-D UMAP space{feats}")

    def record(self) -> dict:
        return {"min_cluster_size": self.min_cluster_size, "cluster_selection_epsilon": self.epsilon,
                "clusters": self.n_clusters, "outliers": self.n_outliers,
                "silhouette": None if self.silhouette is None else round(self.silhouette, 4),
                "silhouette_features": (None if self.feature_silhouette is None
                                        else round(self.feature_silhouette, 4))}


def cluster(embedding: np.ndarray, min_cluster_size: int, epsilon: float = 0.0,
            min_samples: int | None = None, seed: int = 0, degenerate: bool = False,
            max_points: int = SILHOUETTE_MAX_POINTS, features: np.ndarray | None = None,
            metric: str = "euclidean") -> Clustering:
    """HDBSCAN plus silhouette on ``(N, 3)`` points; clusters numbered by size (:func:`by_size`).

    With ``degenerate`` (all images gave identical features) everything forms one cluster: there
    is nothing to separate, and the silhouette is undefined. With ``features`` (``(N, D)``, the
    rows of ``embedding``) the silhouette is also computed there, with ``metric``.
    """
    if degenerate:
        labels, probs = np.zeros(len(embedding), int), np.ones(len(embedding), np.float32)
    else:
        labels, probs = run_hdbscan(embedding, min_cluster_size, epsilon, min_samples)
        labels = by_size(labels)
    score, values, note = silhouette(embedding, labels, seed, max_points)
    if degenerate:
        note = ("silhouette undefined: all images give identical features (duplicate images?); "
                "they form one cluster")
    in_features = None
    if features is not None and score is not None:
        points = min(max_points, FEATURE_SILHOUETTE_POINTS)
        try:
            in_features = silhouette(features, labels, seed, points, metric)[0]
        except ValueError:  # a UMAP metric scikit-learn does not know
            in_features = silhouette(features, labels, seed, points)[0]
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    return Clustering(int(min_cluster_size), float(epsilon), labels, probs, score, values, note,
                      {int(i): int(c) for i, c in zip(ids, counts)}, in_features)


def sweep_grid(min_cluster_size: int, n_images: int, epsilon: float | None = None) -> list[tuple[int, float]]:
    """A few min_cluster_size values around the given one x a few epsilons."""
    sizes = sorted({max(2, round(min_cluster_size * f)) for f in SWEEP_FACTORS} & set(range(2, n_images + 1)))
    epsilons = sorted(set(SWEEP_EPSILONS) | ({float(epsilon)} if epsilon is not None else set()))
    return [(m, e) for m in sizes for e in epsilons]


def sweep(embedding: np.ndarray, grid: list[tuple[int, float]], min_samples: int | None = None,
          seed: int = 0, degenerate: bool = False, max_points: int = 3000) -> pd.DataFrame:
    """Cluster once per grid point; one row per point with clusters, outliers and silhouette."""
    rows = [cluster(embedding, m, e, min_samples, seed, degenerate, max_points).record() for m, e in grid]
    return pd.DataFrame(rows, columns=["min_cluster_size", "cluster_selection_epsilon", "clusters",
                                       "outliers", "silhouette"])
