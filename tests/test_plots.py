"""Figures of stages 4 and 5: palette, legends outside, confusion title, UMAP by labels, baselines."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_stage
from wingclr.plotting import OUTLIER_COLOUR, class_colours

EVALUATE = "5-evaluation/evaluate.py"


def rgb(colours) -> np.ndarray:
    return np.array([c[:3] for c in colours], float)


def legend_outside_axes(fig, ax) -> bool:
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    return legend.x0 >= ax.get_window_extent().x1


@pytest.mark.parametrize("n", range(2, 21))
def test_palette_colours_are_distinct_and_neighbours_differ(n):
    c = rgb(class_colours(n))
    assert len(c) == n
    dist = np.linalg.norm(c[:, None] - c[None], axis=-1) + np.eye(n) * 9
    assert dist.min() > 0.15  # any two classes
    assert np.linalg.norm(np.diff(c, axis=0), axis=1).min() > 0.2  # neighbours in sorted order
    assert np.linalg.norm(c - np.array(OUTLIER_COLOUR[:3]), axis=1).min() > 0.15  # grey = outliers
    assert class_colours(n + 5)[:n] == class_colours(n)  # a class keeps its colour


def test_palette_beyond_twenty_stays_distinct():
    c = rgb(class_colours(45))
    dist = np.linalg.norm(c[:, None] - c[None], axis=-1) + np.eye(45) * 9
    assert dist.min() > 0.02 and np.linalg.norm(np.diff(c, axis=0), axis=1).min() > 0.2


def test_every_categorical_plot_uses_the_shared_palette(tmp_path):
    from wingclr.cluster.clustering import Clustering
    from wingclr.cluster.figures import plot_silhouette
    from wingclr.morphospace import cluster_colours as morpho_colours

    labels = np.repeat(np.arange(12), 3)
    result = Clustering(5, 0.0, labels, np.ones(36), 0.1, np.linspace(-0.2, 0.6, 36),
                        sizes={k: 3 for k in range(12)})
    bands = plot_silhouette(result, tmp_path / "silhouette.png").axes[0].collections
    assert [tuple(b.get_facecolor()[0][:3]) for b in bands] == [c[:3] for c in class_colours(12)]
    names = [f"cluster_{i}" for i in range(12)] + ["outliers"]
    morpho = morpho_colours(names)
    assert [morpho[f"cluster_{i}"] for i in range(12)] == class_colours(12)
    assert morpho["outliers"][:3] == (0.55, 0.55, 0.55)


def test_pca_plot_legend_lies_outside_the_axes_and_uses_the_palette():
    from wingclr.plotting import pca_figure

    rng = np.random.default_rng(0)
    groups = np.repeat([f"cluster_{i}" for i in range(12)], 5)
    fig = pca_figure(rng.normal(size=(60, 3)), pd.Series(groups), np.array([0.5, 0.3, 0.2]), "run")
    ax = fig.axes[0]
    assert legend_outside_axes(fig, ax)
    colours = [tuple(col.get_facecolor()[0][:3]) for col in ax.collections]
    assert colours == [tuple(c[:3]) for c in class_colours(12)]


def test_confusion_matrix_title_says_probe_run_images_labels_and_balanced_accuracy():
    from wingclr.evaluate.figures import confusion_figure

    y_true = np.array(["a", "a", "b", "b"])
    y_pred = np.array(["a", "a", "b", "a"])  # recall a 1.0, b 0.5: balanced 0.750
    fig = confusion_figure(y_true, y_pred, ["a", "b"], "simclr_bs_64", "labels.csv")
    title = fig.axes[0].get_title()
    assert "linear probe on simclr_bs_64" in title
    assert "4 validation images" in title and "labels: labels.csv" in title
    assert "balanced accuracy 0.750" in title and "accuracy 0.750" in title


def test_stage5_umap_is_coloured_by_the_user_labels_when_given():
    from wingclr.evaluate.baselines import SplitData
    from wingclr.evaluate.figures import umap_figure
    from wingclr.plotting import group_colours
    from wingclr.evaluate.stage import umap_colouring

    ids = pd.DataFrame({"image": [f"i{k}.png" for k in range(6)],
                        "cluster": ["c0", "c0", "c0", "c1", "c1", "outliers"]})
    y = np.array(["male", "female", "male", "female", "", "male"])  # not the clusters
    split = SplitData(None, ids["image"].to_numpy(str), y, y != "", np.zeros(6, bool))
    groups, grey, legend = umap_colouring(ids, split, labels=Path("somewhere/labels.csv"),
                                          outliers_folder="outliers")
    assert legend == "label (labels.csv)" and grey == "no label"
    xy = np.arange(12, dtype=float).reshape(6, 2)
    fig = umap_figure(xy, groups, grey, "run", legend)
    ax = fig.axes[0]
    entries = [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_legend().get_title().get_text() == "label (labels.csv) (images)"
    assert sorted(entries) == ["female (2)", "male (3)", "no label (1)"]
    colours = group_colours(groups, (grey,))
    for col in ax.collections:  # each label's points, in its colour
        name = col.get_label().split(" (")[0]
        assert sorted(map(tuple, col.get_offsets().data)) == sorted(map(tuple, xy[groups == name]))
        assert tuple(col.get_facecolor()[0]) == pytest.approx(colours[name])
    assert legend_outside_axes(fig, ax)
    # without --labels: the clusters, outliers grey
    groups, grey, legend = umap_colouring(ids, split, labels=None, outliers_folder="outliers")
    assert list(groups) == list(ids.cluster) and grey == "outliers" and legend == "cluster"


def test_grid_summary_baselines_at_equal_levels_stay_distinguishable():
    from wingclr.evaluate.gridplot import BASELINE_LINES, LABEL_GAP, grid_figure

    table = pd.DataFrame({"run": ["r1", "r2"], "batch_size": [64, 128], "epochs": [50, 50],
                          "temperature": [0.1, 0.5], "accuracy": [0.7, 0.6],
                          "pixel_pca_accuracy": [0.5, 0.5], "imagenet_accuracy": [0.5, 0.5],
                          "random_init_accuracy": [0.52, 0.52]})
    ax = grid_figure(table).axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines() if ln.get_label().endswith("baseline")}
    assert set(lines) == {f"{name} baseline" for name, _ in BASELINE_LINES.values()}
    assert len({ln.get_linestyle() for ln in lines.values()}) == 3
    assert len({ln.get_color() for ln in lines.values()}) == 3
    assert len({ln.get_linewidth() for ln in lines.values()}) == 3
    labels = {t.get_text(): t.get_position()[1] for t in ax.texts}
    assert set(labels) == {"pixel PCA 0.500", "ImageNet 0.500", "random init 0.520"}
    heights = np.sort(list(labels.values()))
    assert np.diff(heights).min() >= LABEL_GAP - 1e-9  # stacked, not drawn over each other


def xor_features(n_a, n_b, rng):
    """Class a in quadrants 1 and 3, b in 2 and 4: kNN separates them, no linear probe can."""
    qa, qb = np.array([[1, 1], [-1, -1]]), np.array([[-1, 1], [1, -1]])
    a = qa[np.arange(n_a) % 2] + rng.normal(0, 0.15, (n_a, 2))
    b = qb[np.arange(n_b) % 2] + rng.normal(0, 0.15, (n_b, 2))
    return np.r_[a, b], np.array(["a"] * n_a + ["b"] * n_b)


def test_collapsed_probe_is_flagged_by_score_split():
    from wingclr.probe import collapse_note, score_split

    rng = np.random.default_rng(0)
    (xt, yt), (xv, yv) = xor_features(24, 16, rng), xor_features(4, 4, rng)
    train = np.r_[np.ones(40, bool), np.zeros(8, bool)]
    metrics, probe, knn = score_split(np.r_[xt, xv], np.r_[yt, yv], train, ~train, k=5)
    assert set(probe.predictions) == {"a"} and metrics["knn_accuracy"] == 1.0
    assert metrics["probe_collapsed"] is True and metrics["probe_collapsed_to"] == "a"
    assert collapse_note(metrics) == "linear probe collapsed to the majority class (a); kNN 1.000"
    # separable classes: not collapsed
    x = np.r_[xt, xv] + np.where(np.r_[yt, yv] == "a", 3.0, -3.0)[:, None] * [1, 0]
    metrics, _, _ = score_split(x, np.r_[yt, yv], train, ~train, k=5)
    assert metrics["probe_collapsed"] is False and collapse_note(metrics) == ""


def test_probe_collapse_needs_one_class_or_chance_and_a_clearly_better_knn():
    from wingclr.probe import probe_collapse

    y = np.array(["a", "a", "b", "b"])
    assert probe_collapse(y, np.array(["a"] * 4), y) == "a"
    assert probe_collapse(y, np.array(["b", "a", "a", "b"]), y) == ""  # at chance, two classes
    assert probe_collapse(y, np.array(["a"] * 4), np.array(["a"] * 4)) is None  # kNN no better
    assert probe_collapse(y, np.array(["a", "a", "b", "a"]), y) is None  # above chance
    assert probe_collapse(np.array(["a"] * 4), np.array(["a"] * 4), np.array(["a"] * 4)) is None


def test_summary_says_a_collapsed_baseline_probe_collapsed_instead_of_a_margin():
    from wingclr.evaluate.gridplot import summary_table

    table = pd.DataFrame([{"run": "r1", "accuracy": 0.875, "knn_accuracy": 0.875, "n_val": 16}])
    base = {"label": "pixel PCA (32 px)", "metrics": {
        "accuracy": 0.5, "balanced_accuracy": 0.5, "knn_accuracy": 0.875,
        "probe_collapsed": True, "probe_collapsed_to": "cluster_0"}}
    text = summary_table(table, [base])
    assert "+0.375" not in text and "beats" not in text
    assert ("pixel PCA (32 px) (0.500): no difference given, the baseline's linear probe collapsed "
            "to the majority class (cluster_0); kNN 0.875") in text
    base["metrics"]["probe_collapsed"] = False
    assert "beats the best baseline, pixel PCA (32 px) (0.500): +0.375" in summary_table(table, [base])


def test_run_and_imagenet_lines_name_a_collapsed_probe():
    from wingclr.evaluate.stage import imagenet_beside, run_line

    row = {"run": "r1", "accuracy": 0.5, "balanced_accuracy": 0.5, "knn_accuracy": 0.875,
           "silhouette": 0.1, "probe_collapsed": True, "probe_collapsed_to": "x",
           "imagenet_accuracy": 0.7, "imagenet_knn_accuracy": 0.8, "imagenet_probe_collapsed": False}
    line = run_line(row)
    assert "r1: linear accuracy 0.500 (linear probe collapsed to the majority class (x); kNN 0.875)" in line
    assert "SimCLR -0.200" not in line and "the run's linear probe collapsed" in line
    row.update(probe_collapsed=False, accuracy=0.8, imagenet_accuracy=0.5, imagenet_probe_collapsed=True)
    assert "(its linear probe collapsed), kNN 0.800" in imagenet_beside(row)
    row["imagenet_probe_collapsed"] = False
    assert "(SimCLR +0.300)" in imagenet_beside(row)


def test_stage5_records_probe_collapsed_as_a_last_column(tmp_path):
    """evaluate.py on XOR embeddings: evaluation.csv says so, the printed line too."""
    from wingclr.outputs import write_manifest

    rng = np.random.default_rng(0)
    (xt, yt), (xv, yv) = xor_features(24, 16, rng), xor_features(4, 4, rng)
    feats = np.r_[xt, xv].astype(np.float32)
    ids = pd.DataFrame({"image": [f"img{i}.png" for i in range(48)], "cluster": np.r_[yt, yv],
                        "split": ["train"] * 40 + ["validation"] * 8})
    run = tmp_path / "emb" / "xor_run"
    run.mkdir(parents=True)
    np.save(run / "embeddings.npy", feats)
    pd.concat([ids, pd.DataFrame(feats, columns=["emb_0", "emb_1"])], axis=1).to_csv(
        run / "embeddings.csv", index=False)
    write_manifest(run, "4-embed", {"checkpoint": "x.ckpt", "data": str(tmp_path)}, counts={})
    out = tmp_path / "eval"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        run_stage(EVALUATE, "--runs", run, "--output", out, "--no-baselines", "--no-umap",
                  "--knn-k", "5", "--neighbours", "0", "--protocol", "split")
    assert "linear probe collapsed to the majority class (a); kNN 1.000" in stdout.getvalue()
    csv = pd.read_csv(out / "evaluation.csv")
    contract = ["run", "backbone", "batch_size", "epochs", "temperature", "n_train", "n_val",
                "accuracy", "balanced_accuracy", "macro_f1", "knn_accuracy"]  # DESIGN.md
    assert list(csv.columns[:len(contract)]) == contract
    cols = list(csv.columns)
    assert cols.index("probe_collapsed") > cols.index("dataset")
    assert bool(csv.probe_collapsed.iloc[0]) and csv.probe_collapsed_to.iloc[0] == "a"
