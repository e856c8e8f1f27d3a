"""Stage 5's protocols and labels: grouped cross-validation (default), stage 2's split, labels
from a spreadsheet with several trait columns, pictures by trait, and the faults around them."""

import contextlib
import io

import numpy as np
import pandas as pd
import pytest

from conftest import fake_embeddings, run_stage
from wingclr.cli import UserError

EVALUATE = "5-evaluation/evaluate.py"
QUIET = ("--no-umap", "--num-workers", "0", "--neighbours", "0")


def evaluate(*argv) -> tuple[pd.DataFrame, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        table = run_stage(EVALUATE, *argv)
    return table, stdout.getvalue()


def with_groups(emb, pairs: bool = True):
    """Give ``emb``'s embeddings.csv a ``group`` column: images of a cluster paired two by two."""
    csv = pd.read_csv(emb / "embeddings.csv", dtype={"image": str, "cluster": str, "split": str})
    rank = csv.groupby("cluster").cumcount() // (2 if pairs else 1)
    csv["group"] = csv["cluster"] + "-" + rank.astype(str)
    csv.to_csv(emb / "embeddings.csv", index=False)
    return dict(zip(csv["image"], csv["group"]))


@pytest.fixture(scope="module")
def two_runs(dataset_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols") / "4-embeddings"
    runs = [fake_embeddings(root / f"run{i}", dataset_dir, seed=i)[0] for i in (1, 2)]
    groups = [with_groups(r) for r in runs]
    return runs, groups[0]


def test_cv_folds_keep_specimens_together_and_are_the_same_for_every_run_and_baseline(two_runs, tmp_path):
    runs, groups = two_runs
    out = tmp_path / "5"
    table, printed = evaluate("--runs", *runs, "--output", out, "--baselines", "pixel", *QUIET)
    folds = []
    for run in runs:
        pred = pd.read_csv(out / run.name / "predictions.csv", dtype=str)
        assert len(pred) == 30 and set(pred.fold) == set("01234")  # every image scored once
        assert (pred.group == pred.image.map(groups)).all()
        assert (pred.groupby("group").fold.nunique() == 1).all()  # a specimen's photos together
        folds.append(dict(zip(pred.image, pred.fold)))
    assert folds[0] == folds[1]
    csv = pd.read_csv(out / "evaluation.csv")
    assert (csv.protocol == "cv").all() and (csv.folds == 5).all() and (csv.n_groups == 15).all()
    assert (csv.groups == "group").all() and (csv.labels == "clusters").all()
    for row in csv.itertuples():
        scores = [float(v) for v in row.fold_scores.split(";")]
        assert len(scores) == 5 and np.mean(scores) == pytest.approx(row.accuracy, abs=1e-4)
        assert np.std(scores) == pytest.approx(row.accuracy_sd, abs=1e-4)
        assert len(row.pixel_pca_fold_scores.split(";")) == 5
    assert csv.dataset.nunique() == 1 and len(list((out / "baselines").glob("pixel_pca-*"))) == 1
    verdict = [ln for ln in printed.splitlines() if ln.startswith("best run")]
    assert len(verdict) == 1 and "over 5 folds, higher in" in verdict[0]
    assert "30 images in 5 grouped folds" in verdict[0]
    assert any(w in verdict[0] for w in (" beats ", "no clear difference", "does worse than"))
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "5-fold cross-validation" in page and "grouped by group" in page and "per fold" in page


def test_split_protocol_scores_exactly_as_stage_2s_train_and_validation(two_runs, tmp_path):
    from wingclr.evaluate.inputs import load_embeddings
    from wingclr.probe import score_split
    from wingclr.outputs import read_manifest

    run = two_runs[0][0]
    out = tmp_path / "5"
    table, _ = evaluate("--runs", run, "--output", out, "--protocol", "split", "--no-baselines", *QUIET)
    ids, feats = load_embeddings(run, read_manifest(run))
    y = ids.cluster.to_numpy(str)
    train, val = (ids.split == "train").to_numpy(), (ids.split == "validation").to_numpy()
    metrics, probe, knn = score_split(feats, y, train, val, 0, 20)
    row = table.iloc[0]
    for key, value in metrics.items():
        assert row[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert row.protocol == "split" and pd.isna(row.get("fold_scores")) and pd.isna(row.get("folds"))
    pred = pd.read_csv(out / run.name / "predictions.csv", dtype=str)
    assert list(pred.columns[:4]) == ["image", "label", "linear", "knn"] and "fold" not in pred
    assert pred.image.tolist() == ids.image[val].tolist()
    assert pred.linear.tolist() == list(probe.predictions) and pred.knn.tolist() == list(knn)
    manifest = read_manifest(out / run.name)
    assert "protocol" not in manifest["args"]  # outputs finished before --protocol still match


def papilionidae_like(dataset_dir, path):
    """A labels.csv as ../shared/data/papilionidae's: filename,id,view,genus,species,sex."""
    split = pd.read_csv(dataset_dir / "split.csv", dtype=str)
    stems = split.image.str.rsplit("/", n=1).str[-1].str.removesuffix(".png")
    pair = split.groupby("cluster").cumcount() // 2
    ids = split.cluster.str.upper() + pair.astype(str)
    sex = np.where(pair % 2 == 0, "M", "F")
    sex[:2] = ""  # an unsexed specimen: left out of sex, still scored for genus
    table = pd.DataFrame({"filename": "images/" + split.cluster.str.title() + "/" + stems + ".jpg",
                          "id": ids, "view": np.where(split.index % 2 == 0, "D", "V"),
                          "genus": split.cluster.str.title(), "species": split.cluster, "sex": sex})
    table.to_csv(path, index=False)
    return table


def test_labels_spreadsheet_with_several_traits_scores_each_with_groups_from_a_column(
        dataset_dir, tmp_path):
    run, _ = fake_embeddings(tmp_path / "4" / "run", dataset_dir)
    labels = papilionidae_like(dataset_dir, tmp_path / "labels.csv")
    out = tmp_path / "5"
    table, printed = evaluate("--runs", run, "--output", out, "--labels", tmp_path / "labels.csv",
                              "--label-column", "sex,Genus", "--id-column", "filename",
                              "--group-column", "id", "--no-baselines", "--num-workers", "0",
                              "--neighbours", "0")
    assert "labels: 30 of 30 images matched (by file name)" in printed
    assert f"labels: 2 rows of {tmp_path / 'labels.csv'} leave sex empty: left out of sex" in printed
    csv = pd.read_csv(out / "evaluation.csv").set_index("trait")
    assert sorted(csv.index) == ["genus", "sex"] and (csv.labels == "labels.csv").all()
    assert csv.loc["sex", "n_val"] == 28 and csv.loc["genus", "n_val"] == 30
    assert (csv.groups == "labels.csv: id").all() and csv.loc["genus", "n_groups"] == 15
    by_id = dict(zip(labels.filename.str.rsplit("/", n=1).str[-1].str[:-4], labels.id))
    for trait in ("sex", "genus"):
        pred = pd.read_csv(out / run.name / trait / "predictions.csv", dtype=str)
        stems = pred.image.str.rsplit("/", n=1).str[-1].str[:-4]
        assert (pred.group == stems.map(by_id)).all()
        assert (pred.groupby("group").fold.nunique() == 1).all()
        assert set(pred.label) == (set("MF") if trait == "sex" else set(labels.genus))
        for picture in ("umap.png", "umap_clusters.png", "pca.png", "morphospace.png",
                        "confusion_matrix.png"):
            assert (out / run.name / trait / picture).is_file(), (trait, picture)
    summary = (out / "summary.txt").read_text()
    assert "== sex ==" in summary and "== genus ==" in summary
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "labels: labels.csv, column sex" in page and "labels: labels.csv, column genus" in page
    assert "Trait sex" in page and f"{run.name}/sex/umap.png" in page


def test_pictures_of_a_trait_name_the_labels_file_and_column(dataset_dir, tmp_path):
    from wingclr.evaluate.figures import confusion_figure
    from wingclr.plotting import pca_figure
    from wingclr.morphospace import plot_morphospace

    y = np.array(["M", "F", "M", "F", "", "M"])
    fig = confusion_figure(y[:4], y[:4], ["F", "M"], "run", "labels.csv: sex",
                           what="images scored out of 5 grouped folds")
    assert "labels: labels.csv: sex" in fig.axes[0].get_title()
    assert "4 images scored out of 5 grouped folds" in fig.axes[0].get_title()
    groups = np.where(y == "", "no label", y)
    scores = np.random.default_rng(0).normal(size=(6, 3))
    fig = pca_figure(scores, groups, np.array([0.5, 0.3, 0.2]), "run: coloured by labels.csv: sex",
                     "sex (labels.csv)", grey=("no label",))
    ax = fig.axes[0]
    assert ax.get_legend().get_title().get_text() == "sex (labels.csv) (images)"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["F (2)", "M (3)", "no label (1)"]
    images = sorted((dataset_dir / "unlabeled").rglob("*.png"))[:6]
    plot_morphospace(scores, images, groups, [0.5, 0.3, 0.2], tmp_path / "m.png",
                     "run: coloured by labels.csv: sex", legend_title="sex (labels.csv)")
    assert (tmp_path / "m.png").is_file()


def test_edited_embeddings_csv_says_once_how_many_images_it_lacks_and_which(dataset_dir, tmp_path):
    run, _ = fake_embeddings(tmp_path / "4" / "run", dataset_dir)
    csv = pd.read_csv(run / "embeddings.csv", dtype={"image": str})
    csv[["image", "cluster", "split"]].to_csv(run / "embeddings_pca.csv", index=False)  # as stage 4
    gone = csv.image[csv.split == "train"].iloc[0]
    csv[csv.image != gone].to_csv(run / "embeddings.csv", index=False)
    table, printed = evaluate("--runs", run, "--output", tmp_path / "5", "--no-baselines",
                              "--neighbours", "2", "--no-umap", "--num-workers", "0")
    notes = [ln for ln in printed.splitlines() if "embeddings.csv" in ln and ln.startswith("note:")]
    assert len(notes) == 1, printed
    assert f"lacks 1 of the 30 embedded images: {gone}; scored on the 29" in notes[0]
    assert table.n_val.iloc[0] == 29


def test_query_naming_no_embedded_image_is_refused(dataset_dir, tmp_path):
    run, _ = fake_embeddings(tmp_path / "4" / "run", dataset_dir)
    with pytest.raises(UserError, match="--query: none of nothing.png, gone is among the 30 images"):
        evaluate("--runs", run, "--output", tmp_path / "5", "--no-baselines", *QUIET,
                 "--query", "nothing.png", "gone")
    assert not (tmp_path / "5" / "evaluation.csv").exists()


def test_group_and_id_columns_need_a_labels_file(tmp_path):
    with pytest.raises(UserError, match="--group-column id names a column of --labels"):
        evaluate("--runs", tmp_path, "--output", tmp_path / "5", "--group-column", "id")


def test_imagenet_line_and_verdict_say_beats_only_when_the_paired_folds_do():
    from wingclr.evaluate.gridplot import verdict
    from wingclr.evaluate.stage import imagenet_beside

    row = {"run": "r1", "accuracy": 0.72, "accuracy_sd": 0.02, "knn_accuracy": 0.7,
           "imagenet_accuracy": 0.70, "imagenet_knn_accuracy": 0.6, "imagenet_probe_collapsed": False,
           "fold_scores": "0.70;0.74;0.72;0.70;0.74", "imagenet_fold_scores": "0.72;0.70;0.70;0.72;0.66",
           "protocol": "cv", "n_val": 300, "folds": 5}
    line = imagenet_beside(row)
    assert "SimCLR +0.020 +- 0.042 over 5 folds, higher in 3 of 5" in line
    assert line.endswith("no clear difference), kNN 0.600")
    base = {"label": "ImageNet x", "metrics": {"accuracy": 0.70, "accuracy_sd": 0.02,
                                               "fold_scores": row["imagenet_fold_scores"]}}
    text = verdict(row, [base])
    assert "shows no clear difference to the best baseline" in text and " beats " not in text
    assert text.endswith("on 300 images in 5 grouped folds")
    row["fold_scores"] = "0.75;0.73;0.72;0.74;0.70"  # higher in every fold
    assert "r1 (linear 0.720 +- 0.020) beats the best baseline" in verdict(row, [base])
    assert ": beats)" in imagenet_beside(row)
