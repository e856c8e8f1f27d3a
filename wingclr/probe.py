"""Frozen-feature evaluation: linear probe, weighted kNN and label-free cluster quality.

Linear probe (the SimCLR paper's transfer protocol): features standardised, L2-regularised
multinomial logistic regression fitted with L-BFGS. Its strength ``C`` is chosen by stratified
k-fold cross-validation *on the training split only* over a log-spaced grid (highest mean fold
accuracy; ties go to the lower mean fold log-loss, then to the stronger regularisation). The
validation split is used once, to score the refitted probe, so it never influences ``C``.

kNN (InstDisc / DINO protocol): cosine similarity, ``k`` neighbours, votes weighted ``exp(s / T)``.

A probe whose chosen ``C`` regularises everything away answers one class for every image; its
accuracy is then the class share, not a measure of the features. :func:`probe_collapse` flags it
(when kNN on the same features clearly does better) so it is reported as collapsed, never as a
level to beat.

Shared by stage 3 (the kNN monitor, :mod:`wingclr.train.monitor`) and stage 5 (:mod:`wingclr.evaluate`).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

C_GRID = np.logspace(-5, 3, 17)  # 1e-5 .. 1e3, half-decade steps
MAX_FOLDS = 5
MAX_ITER = 1000
CLEAR_MARGIN = 0.1  # kNN balanced accuracy this much above a collapsed probe's: "clearly better"


@dataclass
class ProbeResult:
    """Outcome of :func:`linear_probe`.

    Attributes:
        predictions: ``(M,)`` predicted labels of the validation rows.
        C: chosen inverse regularisation strength.
        cv_accuracy: mean fold accuracy at ``C`` (NaN when no CV was possible).
        cv_scores: ``{C: mean fold accuracy}`` for every grid value tried.
    """

    predictions: np.ndarray
    C: float
    cv_accuracy: float
    cv_scores: dict = field(default_factory=dict)


def _logreg(c: float, warm: bool = False):
    from sklearn.linear_model import LogisticRegression

    # lbfgs + more than two classes = multinomial; l1_ratio 0 = pure L2 penalty
    return LogisticRegression(C=c, l1_ratio=0.0, solver="lbfgs", max_iter=MAX_ITER, warm_start=warm)


@contextmanager
def _quiet():
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # weak regularisation, separable data
        warnings.simplefilter("ignore", UserWarning)  # few members per class in a fold
        yield


def select_c(x: np.ndarray, y: np.ndarray, c_grid: np.ndarray = C_GRID,
             seed: int = 0) -> tuple[float, float, dict]:
    """Choose the L2 strength by stratified cross-validation on ``(x, y)`` alone.

    Classes with a single image take no part in the CV (they cannot be stratified). Each fold
    standardises with its own training part and walks the grid from strong to weak regularisation,
    warm-starting every fit from the previous solution.

    Args:
        x: ``(N, D)`` training features; y: ``(N,)`` labels.
        c_grid: candidate values of C.

    Returns:
        ``(C, mean fold accuracy at C, {C: mean fold accuracy})``; ``(1.0, nan, {})`` when fewer
        than two classes have two or more images.
    """
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    classes, counts = np.unique(y, return_counts=True)
    keep = np.isin(y, classes[counts >= 2])
    x, y = x[keep], y[keep]
    labels = np.unique(y)
    if len(labels) < 2:
        return 1.0, float("nan"), {}
    folds = min(MAX_FOLDS, int(np.unique(y, return_counts=True)[1].min()))
    grid = np.sort(np.asarray(c_grid, float))
    acc = np.zeros((folds, len(grid)))
    loss = np.zeros((folds, len(grid)))
    with _quiet():
        for f, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)):
            scaler = StandardScaler().fit(x[tr])
            xtr, xte = scaler.transform(x[tr]), scaler.transform(x[te])
            model = _logreg(grid[0], warm=True)
            for j, c in enumerate(grid):
                model.set_params(C=c).fit(xtr, y[tr])
                acc[f, j] = (model.predict(xte) == y[te]).mean()
                loss[f, j] = log_loss(y[te], model.predict_proba(xte), labels=model.classes_)
    mean_acc, mean_loss = acc.mean(0), loss.mean(0)
    best = np.flatnonzero(np.isclose(mean_acc, mean_acc.max(), rtol=0, atol=1e-9))
    j = best[np.argmin(mean_loss[best])]  # argmin returns the first = smallest C on exact ties
    return float(grid[j]), float(mean_acc[j]), dict(zip(grid.tolist(), mean_acc.tolist()))


def fit_probe(x: np.ndarray, y: np.ndarray, c: float):
    """Standardise + logistic regression with strength ``c``, fitted on ``(x, y)``."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with _quiet():
        return make_pipeline(StandardScaler(), _logreg(c)).fit(x, y)


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, seed: int = 0,
                 c_grid: np.ndarray = C_GRID) -> ProbeResult:
    """Choose C on train (:func:`select_c`), refit on all of train, predict validation.

    Args:
        x_train: ``(N, D)``; y_train: ``(N,)``; x_val: ``(M, D)``.
    """
    c, cv_acc, scores = select_c(x_train, y_train, c_grid, seed)
    model = fit_probe(x_train, y_train, c)
    return ProbeResult(model.predict(x_val), c, cv_acc, scores)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: ``(N, D)`` -> ``(N, D)``."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_predict(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, k: int = 20,
                temperature: float = 0.07) -> np.ndarray:
    """Weighted kNN: cosine similarity, the ``k`` nearest training rows vote ``exp(sim / T)``.

    Args:
        x_train: ``(N, D)``; y_train: ``(N,)`` labels; x_val: ``(M, D)``.

    Returns:
        ``(M,)`` predicted labels.
    """
    classes, y_idx = np.unique(y_train, return_inverse=True)
    sim = l2_normalise(x_val) @ l2_normalise(x_train).T  # (M, N)
    k = min(k, len(x_train))
    nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    # subtract the row maximum before exp: same argmax, no overflow at small T
    s = np.take_along_axis(sim, nn, 1)
    weights = np.exp((s - s.max(1, keepdims=True)) / temperature)
    votes = np.zeros((len(x_val), len(classes)))
    np.add.at(votes, (np.repeat(np.arange(len(x_val)), k), y_idx[nn].ravel()), weights.ravel())
    return classes[votes.argmax(1)]


def cluster_quality(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Silhouette (cosine) and Davies-Bouldin index of the classes ``y`` in feature space.

    Features are L2-normalised first, so both indices see the cosine geometry that SimCLR trains
    (on the unit sphere Euclidean distance is a monotone function of cosine distance).

    Args:
        x: ``(N, D)`` features of the labelled images (outliers already excluded); y: ``(N,)``.

    Returns:
        ``(silhouette in [-1, 1], higher is better; Davies-Bouldin >= 0, lower is better)``;
        NaN when there are fewer than 2 classes or no class has 2 images.
    """
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    n_classes = len(np.unique(y))
    if n_classes < 2 or n_classes >= len(y):
        return float("nan"), float("nan")
    z = l2_normalise(np.asarray(x, np.float64))
    return float(silhouette_score(z, y, metric="cosine")), float(davies_bouldin_score(z, y))


def probe_collapse(y_val: np.ndarray, pred: np.ndarray, knn: np.ndarray,
                   margin: float = CLEAR_MARGIN) -> str | None:
    """Did the linear probe collapse? The class it collapsed to, or None.

    Collapsed: at least two classes among the validation images, the probe predicts one class
    for all of them or scores chance balanced accuracy, and kNN's balanced accuracy is more than
    ``margin`` higher.

    Args:
        y_val, pred, knn: ``(M,)`` true labels, probe predictions, kNN predictions.

    Returns:
        The single class predicted (``""`` when at chance with several), or None when not collapsed.
    """
    from sklearn.metrics import balanced_accuracy_score

    n_classes = len(np.unique(y_val))
    if n_classes < 2:
        return None
    with _quiet():
        linear = balanced_accuracy_score(y_val, pred)
        near = balanced_accuracy_score(y_val, knn)
    single = len(np.unique(pred)) == 1
    if not (single or linear <= 1 / n_classes + 1e-9) or near <= linear + margin:
        return None
    return str(pred[0]) if single else ""


def collapse_note(metrics: dict) -> str:
    """``"linear probe collapsed to the majority class (a); kNN 0.875"``, "" when not collapsed.

    Args:
        metrics: :func:`score_split` metrics (an evaluation.csv row or a baseline's metrics).
    """
    if not is_collapsed(metrics.get("probe_collapsed")):
        return ""
    to = metrics.get("probe_collapsed_to")
    to = "" if to is None or to != to else str(to)  # NaN from a CSV
    what = (f"the majority class ({to})" if to else
            f"chance (balanced accuracy {metrics['balanced_accuracy']:.3f})")
    return f"linear probe collapsed to {what}; kNN {metrics['knn_accuracy']:.3f}"


def is_collapsed(value) -> bool:
    """True for a ``probe_collapsed`` value that says so (bool or CSV text); False when unknown."""
    return value is True or (isinstance(value, (str, np.bool_)) and str(value).lower() == "true")


def score_split(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray, seed: int = 0,
                k: int = 20) -> tuple[dict, ProbeResult, np.ndarray]:
    """Linear probe, kNN and cluster quality of features ``x`` on one train/validation split.

    Args:
        x: ``(N, D)`` features; y: ``(N,)`` labels; train, val: ``(N,)`` bool masks.

    Returns:
        ``(metrics, probe result, (M,) kNN predictions)``; metrics holds n_train, n_val,
        accuracy, balanced_accuracy, macro_f1 (linear probe), knn_accuracy, silhouette,
        davies_bouldin (train + validation images), probe_C, probe_cv_accuracy, probe_collapsed
        (bool, :func:`probe_collapse`) and probe_collapsed_to (its class, "" otherwise).
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    probe = linear_probe(x[train], y[train], x[val], seed)
    knn = knn_predict(x[train], y[train], x[val], k)
    labelled = train | val
    silhouette, davies_bouldin = cluster_quality(x[labelled], y[labelled])
    yv, pred = y[val], probe.predictions
    labels = sorted(set(y[labelled]))
    with _quiet():  # "y_pred contains classes not in y_true" on small validation sets
        balanced = float(balanced_accuracy_score(yv, pred))
    metrics = {
        "n_train": int(train.sum()), "n_val": int(val.sum()),
        "accuracy": float(accuracy_score(yv, pred)),
        "balanced_accuracy": balanced,
        "macro_f1": float(f1_score(yv, pred, average="macro", labels=labels, zero_division=0)),
        "knn_accuracy": float(accuracy_score(yv, knn)),
        "silhouette": silhouette, "davies_bouldin": davies_bouldin,
        "probe_C": probe.C, "probe_cv_accuracy": probe.cv_accuracy}
    collapsed = probe_collapse(yv, pred, knn)
    metrics.update(probe_collapsed=collapsed is not None, probe_collapsed_to=collapsed or "")
    return metrics, probe, knn
