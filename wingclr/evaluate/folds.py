"""Cross-validated scores of frozen features (stage 5's default ``--protocol cv``).

The labelled images are cut into ``folds`` parts by scikit-learn's ``StratifiedGroupKFold``
(shuffled, seeded): every photo of one group (specimen) lands in the same part, and each part has
about the class shares of the whole. Which group goes to which part depends only on the set of
``(group, label)`` pairs and the seed (scikit-learn works on the sorted unique groups), never on
the row order or the features, so every run and every baseline evaluated on the same images,
labels and groups is scored on the same folds. Each fold trains the linear probe
(:func:`wingclr.probe.linear_probe`: C chosen by CV inside the training part) and the
kNN on the other parts and scores it on its own part; the result is one score per fold, and
every image gets one out-of-fold prediction.

:func:`cross_validate` is the one place this is done: stage 5 and
``benchmarks/real_specimens.py`` both call it. :func:`paired` compares two methods' fold scores
(the same folds, so the differences are paired).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..probe import C_GRID, cluster_quality, knn_predict, linear_probe, probe_collapse

DEFAULT_FOLDS = 5
MAX_PCA = 100  # pixel-PCA axes, as the split protocol's pixel baseline


@dataclass
class CVResult:
    """Outcome of :func:`cross_validate` (``F`` folds, ``N`` labelled rows).

    Attributes:
        linear, knn, balanced, macro_f1: ``(F,)`` per-fold accuracy of the linear probe, of kNN,
            and the probe's balanced accuracy and macro F1.
        C, inner_cv: ``(F,)`` the probe strength chosen in each fold and its inner CV accuracy.
        fold: ``(N,)`` the fold each row is scored in (-1: unlabelled, not used).
        pred_linear, pred_knn: ``(N,)`` out-of-fold predictions ('' for unlabelled rows).
        n_train: ``(F,)`` training images per fold.
    """

    linear: np.ndarray
    knn: np.ndarray
    balanced: np.ndarray
    macro_f1: np.ndarray
    C: np.ndarray
    inner_cv: np.ndarray
    fold: np.ndarray
    pred_linear: np.ndarray
    pred_knn: np.ndarray
    n_train: np.ndarray


def make_folds(y: np.ndarray, groups: np.ndarray, *, folds: int = DEFAULT_FOLDS,
               seed: int = 0) -> np.ndarray:
    """Fold index per row: stratified by ``y``, grouped by ``groups``; -1 where ``y`` is ''.

    Args:
        y: ``(N,)`` labels ('' = unlabelled); groups: ``(N,)`` group (specimen) per row.
        folds: parts wanted; fewer when there are fewer groups, or when even the largest class
            has fewer images.

    Raises:
        ValueError: fewer than 2 labelled groups.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y, groups = np.asarray(y).astype(str), np.asarray(groups).astype(str)
    keep = np.flatnonzero(y != "")
    n_groups = len(np.unique(groups[keep]))
    if n_groups < 2:
        raise ValueError(f"{n_groups} labelled group(s): cross-validation needs at least 2")
    largest = int(np.unique(y[keep], return_counts=True)[1].max())
    k = min(folds, n_groups, max(2, largest))  # sklearn refuses more folds than the largest class has
    out = np.full(len(y), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class with fewer groups than folds
        cv = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        for f, (_, test) in enumerate(cv.split(np.zeros(len(keep)), y[keep], groups[keep])):
            out[keep[test]] = f
    return out


def _fold(x: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, seed: int, k: int,
          pixel_pca: bool, c_grid: np.ndarray) -> tuple:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    xt, xv = x[tr], x[te]
    if pixel_pca:  # PCA fitted on the training part only
        from sklearn.decomposition import PCA

        n = max(1, min(MAX_PCA, len(tr) - 1, x.shape[1]))
        pca = PCA(n_components=n, svd_solver="full", random_state=seed).fit(xt)
        xt, xv = pca.transform(xt), pca.transform(xv)
    if len(set(y[tr])) < 2:  # a tiny set: one class left to train on; it answers that class
        only = np.full(len(te), y[tr][0], dtype=object).astype(str)
        return only, only, float(np.mean(only == y[te])), float(np.mean(only == y[te])), \
            float(np.mean(only == y[te])), float("nan"), float("nan"), float("nan")
    probe = linear_probe(xt, y[tr], xv, seed, c_grid)
    knn = knn_predict(xt, y[tr], xv, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # predicted classes absent from a small fold
        balanced = balanced_accuracy_score(y[te], probe.predictions)
        f1 = f1_score(y[te], probe.predictions, average="macro", labels=sorted(set(y)),
                      zero_division=0)
    return (probe.predictions, knn, float(np.mean(probe.predictions == y[te])),
            float(np.mean(knn == y[te])), float(balanced), float(f1), probe.C, probe.cv_accuracy)


def cross_validate(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, folds: int = DEFAULT_FOLDS,
                   seed: int = 0, pixel_pca: bool = False, k: int = 20,
                   c_grid: np.ndarray = C_GRID, n_jobs: int = 1) -> CVResult:
    """Linear probe and kNN scored on grouped, stratified folds (:func:`make_folds`).

    Args:
        x: ``(N, D)`` features; y: ``(N,)`` labels ('' rows are left out); groups: ``(N,)``.
        pixel_pca: reduce ``x`` by PCA (<= 100 axes) fitted on each training part (pixels).
        k: kNN neighbours. c_grid: the probe's candidate strengths (stage 5's grid).
        n_jobs: folds scored in parallel (joblib).
    """
    y = np.asarray(y).astype(str)
    fold = make_folds(y, groups, folds=folds, seed=seed)
    parts = [(np.flatnonzero((fold >= 0) & (fold != f)), np.flatnonzero(fold == f))
             for f in range(fold.max() + 1)]
    if n_jobs == 1:
        done = [_fold(x, y, tr, te, seed, k, pixel_pca, c_grid) for tr, te in parts]
    else:
        from joblib import Parallel, delayed

        done = Parallel(n_jobs=n_jobs)(delayed(_fold)(x, y, tr, te, seed, k, pixel_pca, c_grid)
                                       for tr, te in parts)
    pred_linear = np.full(len(y), "", dtype=object)
    pred_knn = np.full(len(y), "", dtype=object)
    for (_, te), d in zip(parts, done):
        pred_linear[te], pred_knn[te] = d[0], d[1]
    column = lambda i: np.array([d[i] for d in done], float)  # noqa: E731
    return CVResult(linear=column(2), knn=column(3), balanced=column(4), macro_f1=column(5),
                    C=column(6), inner_cv=column(7), fold=fold, pred_linear=pred_linear.astype(str),
                    pred_knn=pred_knn.astype(str), n_train=np.array([len(tr) for tr, _ in parts]))


def join_scores(scores) -> str:
    """Per-fold scores as one CSV cell: ``0.712;0.690;0.701``."""
    return ";".join(f"{float(v):.4f}" for v in scores)


def split_scores(text) -> np.ndarray:
    """Inverse of :func:`join_scores`; empty for a blank or missing cell."""
    if not isinstance(text, str) or not text.strip():
        return np.array([])
    return np.array([float(v) for v in text.split(";")])


@dataclass
class Paired:
    """How method A compares with method B on the same folds (:func:`paired`).

    Attributes:
        mean, sd: mean and standard deviation of the per-fold differences A - B.
        better: folds where A scores higher; n: folds compared.
        p: two-sided paired t-test p-value (NaN when every difference is equal).
        verdict: ``beats``, ``is worse than`` or ``no clear difference``.
    """

    mean: float
    sd: float
    better: int
    worse: int
    n: int
    p: float
    verdict: str

    def __str__(self) -> str:
        p = "" if self.p != self.p else f", paired t-test p = {self.p:.3f}"
        return (f"{self.mean:+.3f} +- {self.sd:.3f} over {self.n} folds, higher in "
                f"{self.better} of {self.n}{p}")


def paired(a, b, *, alpha: float = 0.05) -> Paired | None:
    """Paired comparison of per-fold scores ``a`` and ``b`` (same folds, same order).

    A beats B when its mean difference is positive and either every fold agrees or a paired
    t-test gives p < ``alpha``; "is worse than" the same way round; otherwise no clear difference.

    Returns:
        None when the two have no folds in common (different lengths or none).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) == 0 or len(a) != len(b):
        return None
    d = a - b
    p = float("nan")
    if len(d) > 1 and np.ptp(d) > 0:
        from scipy.stats import ttest_rel

        p = float(ttest_rel(a, b).pvalue)
    better, worse = int((d > 0).sum()), int((d < 0).sum())
    clear = lambda n: n == len(d) or (p == p and p < alpha)  # noqa: E731
    verdict = ("beats" if d.mean() > 0 and clear(better) else
               "is worse than" if d.mean() < 0 and clear(worse) else "no clear difference")
    return Paired(float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0, better, worse,
                  len(d), p, verdict)


def score_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, folds: int = DEFAULT_FOLDS,
             seed: int = 0, k: int = 20, pixel_pca: bool = False) -> tuple[dict, CVResult]:
    """Stage 5's metrics of features ``x`` under ``--protocol cv`` (the keys of
    :func:`wingclr.probe.score_split`, as means over the folds, plus their spread).

    Args:
        x: ``(N, D)`` features; y: ``(N,)`` labels ('' = not scored: outliers, unlabelled);
        groups: ``(N,)`` group (specimen) per row.

    Returns:
        ``(metrics, result)``: metrics holds n_train (mean training images per fold), n_val
        (images scored, each once), accuracy, accuracy_sd, balanced_accuracy, macro_f1,
        knn_accuracy, knn_accuracy_sd, fold_scores and knn_fold_scores (``;``-joined),
        silhouette, davies_bouldin, probe_C (median over folds), probe_cv_accuracy,
        probe_collapsed(_to) (of the out-of-fold predictions), folds and n_groups.
    """

    y = np.asarray(y).astype(str)
    r = cross_validate(x, y, groups, folds=folds, seed=seed, pixel_pca=pixel_pca, k=k)
    used = r.fold >= 0
    silhouette, davies_bouldin = cluster_quality(x[used], y[used])
    collapsed = probe_collapse(y[used], r.pred_linear[used], r.pred_knn[used])
    metrics = {
        "n_train": int(round(r.n_train.mean())), "n_val": int(used.sum()),
        "accuracy": float(r.linear.mean()), "accuracy_sd": float(r.linear.std()),
        "balanced_accuracy": float(r.balanced.mean()), "macro_f1": float(r.macro_f1.mean()),
        "knn_accuracy": float(r.knn.mean()), "knn_accuracy_sd": float(r.knn.std()),
        "fold_scores": join_scores(r.linear), "knn_fold_scores": join_scores(r.knn),
        "silhouette": silhouette, "davies_bouldin": davies_bouldin,
        "probe_C": float(np.median(r.C)), "probe_cv_accuracy": float(np.nanmean(r.inner_cv))
        if np.isfinite(r.inner_cv).any() else float("nan"),
        "probe_collapsed": collapsed is not None, "probe_collapsed_to": collapsed or "",
        "folds": len(r.linear), "n_groups": int(len(np.unique(np.asarray(groups)[used])))}
    return metrics, r
