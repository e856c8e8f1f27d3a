"""One identity per specimen through every stage (``specimen`` / ``source_image``), ``--labels``
matching on it, re-runs after the input changed (stages 1 and 2, ``--update``), and stage 5
refusing a ``--data`` that is not the embeddings' dataset."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import assert_one_line_error, fake_checkpoint, fake_embeddings, run_cli, run_stage
from wingclr.cli import UserError

SEGMENT, CLUSTER = "0-segmentation/segment.py", "1-clustering/cluster.py"
DATASET, EMBED = "2-create_dataset/create_dataset.py", "4-embed/embed.py"
EVALUATE = "5-evaluation/evaluate.py"
TINY_CLUSTER = ("--pretrained", "none", "--allow-random-features", "--input-size", "32",
                "--batch-size", "16", "--num-workers", "0", "--quiet", "--no-show",
                "--min-cluster-size", "3", "--cluster-selection-epsilon", "0", "--yes")
IDENTITY = ["specimen", "source_image", "group"]


@pytest.fixture
def fast_umap(monkeypatch):
    """Stage 1 without UMAP's numba compile: the first three principal axes stand in for it."""
    def project(features, **_):
        x = features - features.mean(0)
        return (np.linalg.svd(x, full_matrices=False)[0][:, :3] * 10).astype(np.float32)

    monkeypatch.setattr("wingclr.cluster.stage.project_umap", project)


def _photos(demo_set, folder):
    """The 30 demo specimens as photos: drawer1/ holds JPEGs, drawer2/ PNGs."""
    for i, src in enumerate(sorted((demo_set / "specimens").iterdir())):
        drawer = folder / f"drawer{1 + i % 2}"
        drawer.mkdir(parents=True, exist_ok=True)
        if i % 2 == 0:
            Image.open(src).convert("RGB").save(drawer / f"{src.stem}.jpg", quality=95)
        else:
            shutil.copy2(src, drawer / src.name)
    return folder


def test_specimen_and_source_image_reach_every_csv(demo_set, tmp_path, fast_umap, capsys):
    photos = _photos(demo_set, tmp_path / "photos")
    seg, clusters, data = tmp_path / "0", tmp_path / "1", tmp_path / "2"
    run_stage(SEGMENT, "--input", photos, "--output", seg, "--method", "threshold", "--no-progress")
    table = pd.read_csv(seg / "segmentation.csv", dtype=str, keep_default_na=False)
    assert list(table.columns[:3]) == ["image", "output", "status"]  # old columns first
    assert list(table.columns[-3:]) == IDENTITY
    row = table.set_index("image").loc["drawer1/specimen_00000.jpg"]
    assert (row.output, row.specimen, row.source_image) == (
        "drawer1/specimen_00000.png", "drawer1/specimen_00000", "drawer1/specimen_00000.jpg")
    truth = dict(zip(table.specimen, table.source_image))

    run_stage(CLUSTER, "--input", seg, "--output", clusters, *TINY_CLUSTER)
    table = pd.read_csv(clusters / "clusters.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["image", "cluster", "probability", "umap_1", "umap_2", "umap_3",
                                   *IDENTITY]
    assert (table.specimen + ".png" == table.image).all()
    assert all(truth[s] == src for s, src in zip(table.specimen, table.source_image))

    assert (table.group == table.specimen).all()  # stage 1 groups nothing
    # stage 2 groups the photos by their last digit (3 photos a group): copied to every later CSV
    run_stage(DATASET, "--input", clusters, "--output", data, "--outliers-folder", "none",
              "--group-by", r"(\d)$")
    split = pd.read_csv(data / "split.csv", dtype=str, keep_default_na=False)
    assert list(split.columns) == ["image", "cluster", "split", "unlabeled_path", *IDENTITY]
    assert (split.group == split.specimen.str[-1]).all()
    assert len(split) == len(table) and set(split.specimen) == set(table.specimen)
    assert all(truth[s] == src for s, src in zip(split.specimen, split.source_image))
    assert all(image.split("/", 1)[1] == s + ".png" for image, s in zip(split.image, split.specimen))

    ckpt = fake_checkpoint(tmp_path / "run.ckpt")
    run_stage(EMBED, "--checkpoints", ckpt, "--data", data, "--output", tmp_path / "4",
              "--num-workers", "0", "--quiet", "--cache-dir", tmp_path / "no-cache")
    emb = pd.read_csv(tmp_path / "4" / "run" / "embeddings.csv", dtype={"image": str})
    assert list(emb.columns) == ["image", "cluster", "split", *[f"emb_{i}" for i in range(512)],
                                 *IDENTITY]
    pca = pd.read_csv(tmp_path / "4" / "run" / "embeddings_pca.csv")
    assert list(pca.columns[:3]) == ["image", "cluster", "split"] and list(pca.columns[-3:]) == IDENTITY
    assert pca.columns[3] == "PC1"
    by_image = split.set_index("image")
    for frame in (emb, pca):
        assert (frame.specimen.to_numpy() == by_image.loc[frame.image, "specimen"].to_numpy()).all()
        assert (frame.source_image.to_numpy() == by_image.loc[frame.image, "source_image"].to_numpy()).all()
        assert (frame.group.astype(str).to_numpy() == by_image.loc[frame.image, "group"].to_numpy()).all()

    # labels (the phenotypes) keyed by specimen: all but two, one by file name only, one unknown
    phenotype = pd.read_csv(demo_set / "labels.csv").set_index("image").phenotype
    labels = pd.DataFrame({"specimen": split.specimen, "label": [
        phenotype[s.rsplit("/", 1)[1] + ".png"] for s in split.specimen]}).iloc[2:].copy()
    labels.iloc[0, 0] = split.source_image[2].rsplit("/", 1)[1].upper()  # SPECIMEN_000NN.JPG
    labels = pd.concat([labels, pd.DataFrame({"specimen": ["drawer9/nobody"], "label": ["x"]})])
    labels.to_csv(tmp_path / "labels.csv", index=False)
    capsys.readouterr()
    run_stage(EVALUATE, "--runs", tmp_path / "4" / "run", "--embeddings", tmp_path / "4",
              "--output", tmp_path / "5", "--labels", tmp_path / "labels.csv", "--no-baselines",
              "--no-umap", "--num-workers", "0", "--neighbours", "0")
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("labels:"))
    n = len(split)
    assert line.startswith(f"labels: {n - 2} of {n} images matched (by specimen: {n - 3}, "
                           "by file name: 1); unmatched: "), line
    assert split.specimen[0] in line and split.specimen[1] in line
    assert "1 labelled name in" in line and "match no image: drawer9/nobody" in line
    pred = pd.read_csv(tmp_path / "5" / "run" / "predictions.csv", dtype=str)
    assert list(pred.columns) == ["image", "label", "linear", "knn", "fold", *IDENTITY]
    assert (pred.specimen.to_numpy() == by_image.loc[pred.image, "specimen"].to_numpy()).all()
    assert all(truth[s] == src for s, src in zip(pred.specimen, pred.source_image))
    assert (pred.group.to_numpy() == by_image.loc[pred.image, "group"].to_numpy()).all()


def test_hand_made_folders_and_older_csvs_get_identities_from_paths(tmp_path):
    from wingclr.identity import clusters_identity, identify, segmentation_identity

    # segmentation.csv of an older stage 0: photo (image) beside cut-out (output), no identity
    seg = tmp_path / "seg"
    (seg / "images").mkdir(parents=True)
    pd.DataFrame({"image": ["a/x.jpg", "a/x.tif", "b/y.jpeg", "c/z.jpg"],
                  "output": ["a/x.jpg.png", "a/x.tif.png", "b/y.png", ""],
                  "status": ["ok", "ok", "ok", "no_wings"]}).to_csv(seg / "segmentation.csv", index=False)
    known = segmentation_identity(seg / "images")
    assert known == {"a/x.jpg.png": ("a/x.jpg", "a/x.jpg", "a/x.jpg"),  # group = specimen
                     "a/x.tif.png": ("a/x.tif", "a/x.tif", "a/x.tif"),
                     "b/y.png": ("b/y", "b/y.jpeg", "b/y")}
    assert segmentation_identity(tmp_path / "elsewhere" / "images") is None
    # clusters.csv of an older stage 1 is completed through its input's segmentation.csv
    one = tmp_path / "one"
    one.mkdir()
    pd.DataFrame({"image": ["b/y.png"], "cluster": [0]}).to_csv(one / "clusters.csv", index=False)
    (one / "manifest.json").write_text(json.dumps({"input": str(seg / "images")}))
    assert clusters_identity(one) == known
    assert clusters_identity(tmp_path / "hand-made") is None
    ids = identify(["groupA/IMG 1.JPG", "groupB/sub/y.tar.gz"], None)
    assert ids.values.tolist() == [["groupA/IMG 1", "groupA/IMG 1.JPG", "groupA/IMG 1"],
                                   ["groupB/sub/y.tar", "groupB/sub/y.tar.gz", "groupB/sub/y.tar"]]
    # two photos that differ only in extension keep it, so they never share a specimen
    assert identify(["a/x.jpg", "a/x.tif"], None).specimen.tolist() == ["a/x.jpg", "a/x.tif"]

    # stage 2 on hand-made cluster folders: source_image is the path below --input
    src = tmp_path / "groups"
    for group, names in {"male": ["m1.png", "m2.png", "m3.png"], "female": ["f1.png", "f2.png"]}.items():
        (src / group).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (8, 8), (len(name) * 20, 90, 30)).save(src / group / name)
    run_stage(DATASET, "--input", src, "--output", tmp_path / "ds", "--quiet")
    split = pd.read_csv(tmp_path / "ds" / "split.csv", dtype=str)
    assert (split.source_image == split.image).all()
    assert (split.specimen == split.image.str.removesuffix(".png")).all()
    assert (split.group == split.specimen).all()  # no grouping: one photo, one group


def test_labels_match_on_any_key_and_report_what_did_not(tmp_path, capsys):
    from wingclr.evaluate.inputs import attach_labels

    ids = pd.DataFrame({
        "image": ["c0/d1/a.png", "c0/d1/b.png", "c1/d1/c.png", "c1/d2/c.png", "c1/d2/e.png"],
        "cluster": ["c0", "c0", "c1", "c1", "c1"], "split": "train",
        "specimen": ["d1/a", "d1/b", "d1/c", "d2/c", "d2/e"],
        "source_image": ["d1/a.jpg", "d1/b.jpg", "d1/c.jpg", "d2/c.jpg", "d2/e.tif"]})
    path = tmp_path / "labels.csv"

    def labels(frame, **kwargs):
        frame.to_csv(path, index=False)
        capsys.readouterr()
        out = attach_labels(ids, path, **kwargs).tolist()
        return out, capsys.readouterr().out.strip()

    out, line = labels(pd.DataFrame({"Source_Image": ["d1/a.jpg", "d1\\b.jpg", "d2/e.tif"],
                                     "label": ["p", "q", "r"]}))
    assert out == ["p", "q", "", "", "r"]
    assert line == ("labels: 3 of 5 images matched (by source_image); unmatched: d1/c.jpg, "
                    "d2/c.jpg")
    # the current keys (image) and file names, with or without extension, any case
    out, line = labels(pd.DataFrame({"image": ["c0/d1/a.png", "B.JPG", "e", "c", "zz"],
                                     "label": ["p", "q", "r", "s", "t"]}), allow_partial=True)
    assert out == ["p", "q", "", "", "r"]  # "c" names two specimens (d1/c, d2/c): neither
    assert line.startswith("labels: 3 of 5 images matched (by image: 1, by file name: 2); "
                           "unmatched: c1/d1/c.png, c1/d2/c.png")
    assert line.endswith("1 labelled name in " + str(path) + " match no image: zz; ambiguous: "
                         "c (2 images share this name); use specimen or source_image")
    # a specimen column naming images (not specimens) still matches them
    out, _ = labels(pd.DataFrame({"specimen": ["c0/d1/a.png", "d1/b", "d2/c", "d1/c"],
                                  "label": ["p", "q", "r", "s"]}))
    assert out == ["p", "q", "s", "r", ""]
    with pytest.raises(UserError, match="two different labels"):
        labels(pd.DataFrame({"specimen": ["d1/a", "a.jpg"], "label": ["p", "q"]}))
    with pytest.raises(UserError, match="specimen, source_image or image"):
        labels(pd.DataFrame({"name": ["d1/a"], "label": ["p"]}))
    with pytest.raises(UserError, match="--allow-partial-labels"):
        labels(pd.DataFrame({"specimen": ["d1/a"], "label": ["p"]}))


def test_old_embeddings_csv_without_identity_is_still_evaluated(dataset_dir, tmp_path):
    from wingclr.evaluate.inputs import load_embeddings
    from wingclr.outputs import read_manifest

    emb, _ = fake_embeddings(tmp_path / "4" / "run", dataset_dir)  # as before the identity columns
    ids, _ = load_embeddings(emb, read_manifest(emb))  # the .npy path (CSV as written)
    assert list(ids.columns) == ["image", "cluster", "split", *IDENTITY]
    assert (ids.source_image == ids.image).all() and ids.specimen[0] == ids.image[0][:-4]
    csv = pd.read_csv(emb / "embeddings.csv")
    csv.iloc[::-1].to_csv(emb / "embeddings.csv", index=False)  # sorted in a spreadsheet
    ids, _ = load_embeddings(emb, read_manifest(emb))
    assert list(ids.columns) == ["image", "cluster", "split", *IDENTITY]
    run_stage(EVALUATE, "--runs", emb, "--embeddings", emb.parent, "--output", tmp_path / "5",
              "--no-baselines", "--no-umap", "--num-workers", "0", "--neighbours", "0")
    pred = pd.read_csv(tmp_path / "5" / "run" / "predictions.csv", dtype=str)
    assert list(pred.columns) == ["image", "label", "linear", "knn", "fold", *IDENTITY]
    assert (pred.source_image == pred.image).all() and (pred.group == pred.specimen).all()


def test_other_dataset_is_refused_in_one_line_and_a_failed_run_is_not_finished(dataset_dir, demo_set,
                                                                                tmp_path):
    emb, _ = fake_embeddings(tmp_path / "4" / "run", dataset_dir)  # as before the identity columns
    hand = tmp_path / "hand"  # another dataset: the same photos under other group names
    for i, folder in enumerate(sorted((demo_set / "clusters").iterdir())):
        shutil.copytree(folder, hand / f"group{i}")
    run_stage(DATASET, "--input", hand, "--output", tmp_path / "other", "--quiet")
    out = tmp_path / "5"
    args = ("--runs", emb, "--embeddings", emb.parent, "--output", out, "--baselines", "pixel",
            "--no-umap", "--num-workers", "0")
    proc = run_cli(EVALUATE, *args, "--data", tmp_path / "other")
    assert_one_line_error(proc, f"--data {tmp_path / 'other'}", str(dataset_dir),
                                 "30 of the 30", "drop --data", "4-embed/embed.py")
    assert "warning" not in proc.stderr.lower(), proc.stderr
    assert not (out / "run" / "manifest.json").exists() and not (out / "evaluation.csv").exists()
    proc = run_cli(EVALUATE, *args, "--data", tmp_path / "nowhere")
    assert_one_line_error(proc, "not a stage 2 dataset", str(dataset_dir))
    # the same dataset, moved: accepted; the re-run evaluates (nothing was marked finished)
    moved = tmp_path / "moved"
    shutil.copytree(dataset_dir, moved)
    proc = run_cli(EVALUATE, *args, "--data", moved)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skip:" not in proc.stdout and (out / "evaluation.csv").is_file()
    assert (out / "run" / "manifest.json").is_file()


# --- re-runs after the input changed ----------------------------------------------------------------

def _image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


def _touch_later(path):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))


def test_stage1_refuses_to_skip_when_photos_were_added_removed_or_changed(demo_set, tmp_path,
                                                                           fast_umap, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(demo_set / "specimens", photos)
    out = tmp_path / "1"
    args = ("--input", photos, "--output", out, *TINY_CLUSTER)
    run_stage(CLUSTER, *args)
    finished = (out / "manifest.json").read_text()
    assert run_stage(CLUSTER, *args) is None and "skip:" in capsys.readouterr().out
    names = sorted(p.name for p in photos.iterdir())
    shutil.copy2(photos / names[0], photos / "new.png")
    (photos / names[1]).unlink()
    _touch_later(photos / names[2])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UserError) as e:
        run_stage(CLUSTER, *args)
    text = str(e.value)
    assert text.startswith(f"{out}: input changed since this clustering (1 new, 1 removed, 1 changed "
                           "images; new: new.png; removed: " + names[1]), text
    assert "--overwrite" in text and "--update" in text and "\n" not in text
    assert (out / "manifest.json").read_text() == finished  # nothing touched
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    manifest = run_stage(CLUSTER, *args, "--overwrite")
    assert manifest["counts"]["images"] == 30 and manifest["counts"]["features_computed"] == 2
    table = pd.read_csv(out / "clusters.csv", dtype=str)
    assert "new.png" in set(table.image) and names[1] not in set(table.image)
    assert run_stage(CLUSTER, *args) is None
    # an output finished before inputs.csv existed is compared by the images it lists
    (out / "inputs.csv").unlink()
    assert run_stage(CLUSTER, *args) is None
    shutil.copy2(photos / names[0], photos / "newer.png")
    with pytest.raises(UserError, match=r"\(1 new, 0 removed, 0 changed images; new: newer.png\)"):
        run_stage(CLUSTER, *args)


def test_stage2_update_keeps_every_split_and_places_new_images(tmp_path, capsys):
    src = tmp_path / "in"
    for cluster, n in {"a": 10, "b": 6, "outliers": 2}.items():
        for i in range(n):
            _image(src / cluster / f"{cluster}{i:02d}.png", hash((cluster, i)) % 1000)
    out = tmp_path / "out"
    args = ("--input", src, "--output", out, "--seed", "3", "--quiet")
    run_stage(DATASET, *args)
    first = pd.read_csv(out / "split.csv", dtype=str).set_index("image")
    embed = ("--checkpoints", fake_checkpoint(tmp_path / "run.ckpt"), "--data", out, "--output",
             tmp_path / "4", "--num-workers", "0", "--quiet", "--cache-dir", tmp_path / "no-cache")
    run_stage(EMBED, *embed)
    # 4 new images in a, a new cluster z, one removed from b, one changed in a
    for i in range(10, 14):
        _image(src / "a" / f"a{i:02d}.png", 500 + i)
    for i in range(5):
        _image(src / "z" / f"z{i}.png", 900 + i)
    removed = first[(first.cluster == "b") & (first.split == "validation")].index[0]
    (src / removed).unlink()
    changed = first[first.cluster == "a"].index[0]
    _image(src / changed, 777)
    _touch_later(src / changed)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    proc = run_cli(DATASET, *args)
    assert_one_line_error(proc, f"{out}: input changed since this dataset (9 new, 1 removed, "
                                "1 changed images", "--update", "--overwrite")
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert_one_line_error(run_cli(DATASET, *args, "--update", "--overwrite"), "exclude each other")

    run_stage(DATASET, *args, "--update")
    manifest = json.loads((out / "manifest.json").read_text())
    assert "update: 9 new images placed" in capsys.readouterr().out
    after = pd.read_csv(out / "split.csv", dtype=str).set_index("image")
    kept = first.index.drop(removed)
    pd.testing.assert_series_equal(after.loc[kept, "split"], first.loc[kept, "split"])
    assert removed not in after.index and len(after) == len(first) - 1 + 9
    assert not (out / "unlabeled" / removed).exists() and not (out / "validation" / removed).exists()
    assert (out / "unlabeled" / changed).read_bytes() == (src / changed).read_bytes()
    split_of = after.split.to_dict()
    for image, split in split_of.items():  # every image in unlabeled/ and in its split folder
        assert (out / "unlabeled" / image).is_file()
        assert (out / "train" / image).is_file() == (split == "train")
        assert (out / "validation" / image).is_file() == (split == "validation")
    a = after[after.cluster == "a"].split.value_counts()
    assert a["validation"] == round(14 * 0.2) and a["train"] == 14 - a["validation"]
    fresh = tmp_path / "fresh"  # a new cluster is split as a fresh run splits it
    run_stage(DATASET, "--input", src, "--output", fresh, "--seed", "3", "--quiet")
    again = pd.read_csv(fresh / "split.csv", dtype=str).set_index("image")
    z = [i for i in again.index if i.startswith("z/")]
    assert (after.loc[z, "split"] == again.loc[z, "split"]).all()
    assert manifest["updated"]["removed"] == [removed] and len(manifest["updated"]["new"]) == 9
    assert manifest["counts"]["images"] == len(after)
    capsys.readouterr()
    run_stage(DATASET, *args)  # the update is the finished dataset now
    assert "skip:" in capsys.readouterr().out
    run_stage(EMBED, *embed)  # stage 4 embeds the updated dataset again instead of skipping
    assert "split.csv changed since" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "4" / "run" / "embeddings.csv")) == len(after)
    run_stage(EMBED, *embed)
    assert "skip:" in capsys.readouterr().out
    # a dataset finished before inputs.csv existed is compared by the images split.csv lists
    (out / "inputs.csv").unlink()
    run_stage(DATASET, *args)
    assert "skip:" in capsys.readouterr().out
    _image(src / "b" / "b99.png", 99)
    assert_one_line_error(run_cli(DATASET, *args), "(1 new, 0 removed, 0 changed images; new: b/b99.png)")
    assert list(after.columns[-3:]) == IDENTITY and after.loc["z/z0.png", "specimen"] == "z/z0"
