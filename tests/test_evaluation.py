"""Stage 5 numerics: linear probe without validation leakage, weighted kNN, cluster quality."""

import numpy as np
import pytest

from wingclr.probe import (C_GRID, cluster_quality, fit_probe, knn_predict, linear_probe, score_split,
                           select_c)


def shifted_problem(seed=0):
    """Imbalanced 2-class training set and a validation set shifted across the class boundary.

    Train: 30 'a' around x0 = +2, 10 'b' around x0 = -2 (separable: cross-validation on train
    wants weak regularisation). Validation: 'a' images moved to x0 = -2, so only a probe so
    strongly regularised that it always answers the majority class 'a' scores well on it.
    """
    rng = np.random.default_rng(seed)
    y = np.array(["a"] * 30 + ["b"] * 10)
    x = rng.normal(size=(40, 2))
    x[:, 0] = np.where(y == "a", 2, -2) + rng.normal(0, 0.5, 40)
    x_shift = rng.normal(size=(10, 2))
    x_shift[:, 0] = -2 + rng.normal(0, 0.5, 10)
    y_shift = np.array(["a"] * 10)
    x_same = rng.normal(size=(20, 2))
    y_same = np.array(["a"] * 10 + ["b"] * 10)
    x_same[:, 0] = np.where(y_same == "a", 2, -2) + rng.normal(0, 0.5, 20)
    return x, y, x_shift, y_shift, x_same


def test_probe_strength_comes_from_train_cv_not_from_validation():
    x, y, x_shift, y_shift, x_same = shifted_problem()
    result = linear_probe(x, y, x_shift)
    cv_only, _, _ = select_c(x, y)  # CV on the training split alone
    assert result.C == cv_only
    # validation accuracy of every candidate: the shifted set favours other strengths
    val_acc = np.array([(fit_probe(x, y, c).predict(x_shift) == y_shift).mean() for c in C_GRID])
    val_best = C_GRID[val_acc == val_acc.max()]
    assert result.C not in val_best and val_acc.max() == 1.0
    assert (result.predictions == y_shift).mean() < val_acc.max()
    # and swapping the validation set for an unshifted one changes nothing about the choice
    assert linear_probe(x, y, x_same).C == result.C
    assert result.cv_accuracy == pytest.approx(1.0)


def test_select_c_leaves_single_image_classes_out_of_the_folds():
    x, y, *_ = shifted_problem(1)
    x1 = np.vstack([x, [[0.0, 5.0]]])
    y1 = np.append(y, "c")  # one training image: cannot be stratified
    c, cv_acc, scores = select_c(x1, y1)
    assert c in C_GRID and 0 <= cv_acc <= 1 and len(scores) == len(C_GRID)
    assert np.isnan(select_c(x1[-2:], y1[-2:])[1])  # two single-image classes: no CV possible
    assert set(linear_probe(x1, y1, x1[-1:]).predictions) <= {"a", "b", "c"}


def knn_toy():
    """Query (1, 0); its 3 nearest: 'b' at cosine 0.99 and two 'a' at cosine 0.5; 'c' far away."""
    s = np.sqrt(1 - 0.99 ** 2)
    train = np.array([[0.99, s], [0.5, np.sqrt(0.75)], [0.5, -np.sqrt(0.75)],
                      [-1, 0.1], [-1, -0.1], [-1, 0.0]])
    labels = np.array(["b", "a", "a", "c", "c", "c"])
    return train, labels, np.array([[1.0, 0.0]])


def test_knn_temperature_weighted_votes_known_answer():
    train, labels, query = knn_toy()
    # T = 0.07: exp(0.99 / T) = e^14.1 outweighs 2 * exp(0.5 / T) = 2 e^7.1 -> 'b'
    assert knn_predict(train, labels, query, k=3, temperature=0.07)[0] == "b"
    # T = 1: e^0.99 = 2.7 < 2 e^0.5 = 3.3 -> the two 'a' neighbours win
    assert knn_predict(train, labels, query, k=3, temperature=1.0)[0] == "a"
    # k = 6 lets the three far 'c' vote too; at T = 1 they outnumber: 3 e^-1 = 1.1 < 3.3, still 'a'
    assert knn_predict(train, labels, query, k=6, temperature=1.0)[0] == "a"
    # cosine: the length of a vector does not matter
    scaled = train * np.array([[10.0], [0.1], [0.1], [3], [3], [3]])
    assert knn_predict(scaled, labels, query * 7, k=3, temperature=0.07)[0] == "b"


def test_knn_accuracy_on_separable_toy_set():
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 5
    y = np.repeat(list("wxyz"), 25)
    x = centres[np.searchsorted(list("wxyz"), y)] + rng.normal(0, 0.3, (100, 4))
    val = np.arange(100) % 5 == 0
    pred = knn_predict(x[~val], y[~val], x[val], k=20)
    assert (pred == y[val]).all()
    shuffled = knn_predict(x[~val], rng.permutation(y[~val]), x[val], k=20)
    assert (shuffled == y[val]).mean() < 0.6


def test_cluster_quality_is_cosine_and_rewards_separation():
    rng = np.random.default_rng(0)
    y = np.repeat(["p", "q", "r"], 20)
    directions = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    x = directions[np.searchsorted(["p", "q", "r"], y)] + rng.normal(0, 0.1, (60, 3))
    sil, db = cluster_quality(x, y)
    assert sil > 0.7 and 0 < db < 0.5
    lengths = rng.uniform(0.1, 10, (60, 1))  # cosine geometry: per-image scale is irrelevant
    assert cluster_quality(x * lengths, y) == pytest.approx((sil, db))
    sil_shuffled, db_shuffled = cluster_quality(x, rng.permutation(y))
    assert sil_shuffled < 0.1 and db_shuffled > 3 * db
    assert all(np.isnan(cluster_quality(x, np.array(["p"] * 60))))


def test_score_split_excludes_unlabelled_rows_from_cluster_quality():
    rng = np.random.default_rng(1)
    y = np.repeat(["p", "q", "outliers"], 10)
    x = np.vstack([rng.normal(0, 0.1, (10, 3)) + [1, 0, 0], rng.normal(0, 0.1, (10, 3)) + [0, 1, 0],
                   rng.normal(0, 1, (10, 3))])
    train = np.r_[np.arange(10) < 8, np.arange(10) < 8, np.zeros(10, bool)]
    val = np.r_[np.arange(10) >= 8, np.arange(10) >= 8, np.zeros(10, bool)]
    metrics, probe, knn = score_split(x, y, train, val, k=5)
    assert metrics["silhouette"] == pytest.approx(cluster_quality(x[:20], y[:20])[0])
    assert (metrics["n_train"], metrics["n_val"]) == (16, 4)
    assert metrics["accuracy"] == 1.0 and metrics["knn_accuracy"] == 1.0
    assert set(probe.predictions) | set(knn) <= {"p", "q"}


# --- cross-validated scores (--protocol cv) ---------------------------------------------------

def grouped_problem(seed=0, n_groups=24, photos=2):
    """``n_groups`` specimens of 3 classes, ``photos`` photos each (dorsal/ventral-like twins)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"s{g:02d}" for g in range(n_groups)], photos)
    y = np.repeat(np.array(["a", "b", "c"])[np.arange(n_groups) % 3], photos)
    centres = {"a": [2, 0, 0, 0], "b": [0, 2, 0, 0], "c": [0, 0, 2, 0]}
    x = np.array([centres[c] for c in y], float) + rng.normal(0, 1.0, (len(y), 4))
    return x, y, groups


def test_folds_keep_each_specimen_together_and_ignore_row_order_and_features():
    from wingclr.evaluate.folds import make_folds

    x, y, groups = grouped_problem()
    y = y.copy()
    y[:2] = ""  # an unlabelled specimen takes no part
    fold = make_folds(y, groups, folds=5, seed=3)
    assert (fold[:2] == -1).all() and set(fold[2:]) == set(range(5))
    for g in np.unique(groups[2:]):  # every photo of a specimen in one fold
        assert len(set(fold[groups == g])) == 1
    for f in range(5):  # stratified: every class in every fold's test part
        assert set(y[fold == f]) == {"a", "b", "c"}
    order = np.random.default_rng(1).permutation(len(y))  # another run lists its rows otherwise
    again = make_folds(y[order], groups[order], folds=5, seed=3)
    assert (again == fold[order]).all()
    assert not (make_folds(y, groups, folds=5, seed=4) == fold).all()  # the seed draws them


def test_every_method_is_scored_on_the_same_folds_and_paired_differences_decide():
    from wingclr.evaluate.folds import cross_validate, paired

    x, y, groups = grouped_problem()
    good = cross_validate(x, y, groups, folds=4, seed=0, k=5)
    rng = np.random.default_rng(5)
    noise = cross_validate(rng.normal(size=x.shape), y, groups, folds=4, seed=0, k=5)
    assert (good.fold == noise.fold).all() and len(good.linear) == 4
    assert (good.pred_linear != "").all()  # each image predicted once, out of fold
    for f in range(4):  # the accuracy of a fold is that of its own images' predictions
        assert good.linear[f] == pytest.approx(np.mean((good.pred_linear == y)[good.fold == f]))
    assert good.n_train.tolist() == [int((good.fold != f).sum()) for f in range(4)]
    assert paired(good.linear, noise.linear).verdict == "beats"
    assert paired(noise.linear, good.linear).verdict == "is worse than"
    assert paired([0.7, 0.6, 0.8, 0.7], [0.68, 0.65, 0.75, 0.71]).verdict == "no clear difference"
    same = paired([0.5, 0.6], [0.4, 0.5])  # every fold agrees: beats, even with 2 folds
    assert same.verdict == "beats" and same.better == 2 and same.mean == pytest.approx(0.1)
    assert paired([0.5], []) is None



def test_a_fold_left_with_one_training_class_answers_it_instead_of_failing():
    from wingclr.evaluate.folds import cross_validate

    x = np.arange(8, dtype=float).reshape(4, 2)
    r = cross_validate(x, np.array(["a", "a", "b", "b"]), np.array(["g1", "g1", "g2", "g2"]), folds=5)
    assert len(r.linear) == 2 and (r.linear == 0).all()  # each fold trains on the other class only
    assert set(r.pred_linear) == {"a", "b"}
