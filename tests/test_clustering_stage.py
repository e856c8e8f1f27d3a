"""Stage 1 end to end: batch run, outputs stage 2 reads, feature/UMAP caches, the interactive loop
driven through stdin, and the clear errors for bad input.

One in-process run (the module fixture) pays UMAP's numba compile; the other runs reuse its
feature and UMAP caches, so they finish in seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, assert_one_line_error, load_stage, run_cli, run_stage

SCRIPT = "1-clustering/cluster.py"
TINY = ("--pretrained", "none", "--allow-random-features", "--input-size", "64", "--batch-size", "8",
        "--num-workers", "0", "--quiet", "--no-show")
CACHE_FILES = ("features.npy", "features_index.csv", "features.json", "umap_3d.npy", "umap_3d.json")


class ForwardCounter:
    """Wraps ``wingclr.models.build_backbone``; counts forward passes of the models it builds."""

    def __init__(self):
        from wingclr.models import build_backbone

        self.build, self.forwards, self.images = build_backbone, 0, 0

    def __call__(self, *args, **kwargs):
        model, dim = self.build(*args, **kwargs)
        model.register_forward_pre_hook(self._count)
        return model, dim

    def _count(self, module, inputs):
        self.forwards += 1
        self.images += inputs[0].shape[0]


@pytest.fixture(scope="module")
def specimens(demo_set, tmp_path_factory):
    """The 30 demo specimens, a same-named image in a subfolder, a text file and a broken PNG."""
    root = tmp_path_factory.mktemp("stage1-input") / "images"
    shutil.copytree(demo_set / "specimens", root)
    (root / "batch2").mkdir()
    shutil.copy2(demo_set / "specimens" / "specimen_00007.png", root / "batch2" / "specimen_00000.png")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


@pytest.fixture(scope="module")
def clustered(specimens, tmp_path_factory):
    """A batch run on :func:`specimens`; returns (output folder, manifest, ForwardCounter)."""
    out = tmp_path_factory.mktemp("stage1") / "1-clusters"
    counter = ForwardCounter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("wingclr.models.build_backbone", counter)
        manifest = run_stage(SCRIPT, "--input", specimens, "--output", out, *TINY,
                             "--min-cluster-size", "3", "--cluster-selection-epsilon", "0", "--yes",
                             "--sweep")
    return out, manifest, counter


def test_batch_run_writes_folders_csv_plots_and_manifest(clustered, specimens):
    out, manifest, counter = clustered
    table = pd.read_csv(out / "clusters.csv", dtype={"image": str})
    assert list(table.columns) == ["image", "cluster", "probability", "umap_1", "umap_2", "umap_3",
                                   "specimen", "source_image", "group"]
    readable = sorted(p.relative_to(specimens).as_posix() for p in specimens.rglob("specimen_*.png"))
    assert sorted(table.image) == readable and len(readable) == 31
    for image, folder in zip(table.image, table.cluster):  # cluster is the image's folder
        assert (out / folder / image).read_bytes() == (specimens / image).read_bytes()
    placed = [p for p in out.rglob("*.png") if p.parent != out]
    assert len(placed) == 31  # same-named files in different subfolders both kept
    k = manifest["counts"]["clusters"]
    sizes = table.cluster.value_counts()
    assert set(sizes.index) - {"outliers"} == {f"cluster_{i}" for i in range(k)}
    assert [sizes[f"cluster_{i}"] for i in range(k)] == sorted(sizes.drop("outliers", errors="ignore"),
                                                              reverse=True)  # largest first
    assert manifest["cluster_sizes"] == {f"cluster_{i}": int(sizes[f"cluster_{i}"]) for i in range(k)}
    assert {p.name for p in out.glob("sheet_*.png")} >= {f"sheet_cluster_{i}.png" for i in range(k)}
    for plot in ("umap_3d.png", "silhouette.png"):
        assert Image.open(out / plot).size[0] > 300
    assert manifest["counts"]["outliers"] == int((table.cluster == "outliers").sum())
    assert manifest["args"]["min_cluster_size"] == 3 and manifest["stage"] == "1-clustering"
    skipped = dict(manifest["skipped_files"])
    assert set(skipped) == {"notes.txt", "broken.png"} and "not an image" in skipped["notes.txt"]
    assert manifest["counts"]["unreadable"] == 1 and manifest["counts"]["clustered"] == 31
    if manifest["silhouette"] is not None:
        assert -1 <= manifest["silhouette"] <= 1
    assert counter.images == 32  # every image went through the network once (broken one too)
    sweep = pd.read_csv(out / "sweep.csv")
    assert list(sweep.columns) == ["min_cluster_size", "cluster_selection_epsilon", "clusters",
                                   "outliers", "silhouette"]
    row = sweep[(sweep.min_cluster_size == 3) & (sweep.cluster_selection_epsilon == 0)]
    assert row.clusters.item() == manifest["counts"]["clusters"]  # sweep and run agree


def test_same_command_again_skips_and_other_settings_are_refused(clustered, specimens, capsys):
    out, manifest, _ = clustered
    args = ("--input", specimens, "--output", out, *TINY, "--cluster-selection-epsilon", "0", "--yes")
    assert run_stage(SCRIPT, *args, "--min-cluster-size", "3", "--sweep") is None
    assert "skip:" in capsys.readouterr().out
    from wingclr.cli import UserError

    with pytest.raises(UserError, match="--overwrite"):
        run_stage(SCRIPT, *args, "--min-cluster-size", "4")
    assert json.loads((out / "manifest.json").read_text())["finished"] == manifest["finished"]


def test_stage2_reads_stage1_output(clustered, tmp_path):
    out, manifest, _ = clustered
    ds = tmp_path / "2-dataset"
    run_stage("2-create_dataset/create_dataset.py", "--input", out, "--output", ds)
    split = pd.read_csv(ds / "split.csv", dtype={"image": str})
    table = pd.read_csv(out / "clusters.csv", dtype={"image": str})
    assert sorted(split.image) == sorted(f"{f}/{img}" for img, f in zip(table.image, table.cluster))
    # one spelling of the cluster: clusters.csv and split.csv join on (specimen, cluster)
    joined = split.merge(table, on=["specimen", "cluster"], validate="one_to_one")
    assert len(joined) == len(split) == len(table)
    assert (split[split.cluster == "outliers"].split == "unlabeled").all()
    stage2 = json.loads((ds / "manifest.json").read_text())
    assert stage2["skipped_files"] == []  # plots and features.npy are not reported as stray images


def test_stage2_still_reads_a_clusters_csv_with_numbered_clusters(clustered, tmp_path):
    out, _, _ = clustered
    old = tmp_path / "1-clusters"
    shutil.copytree(out, old, symlinks=True)
    table = pd.read_csv(old / "clusters.csv", dtype=str, keep_default_na=False)
    table["cluster"] = [name.removeprefix("cluster_") if name != "outliers" else "-1"
                        for name in table.cluster]  # as stage 1 wrote it before, without group
    table.drop(columns="group").to_csv(old / "clusters.csv", index=False)
    run_stage("2-create_dataset/create_dataset.py", "--input", old, "--output", tmp_path / "2")
    split = pd.read_csv(tmp_path / "2" / "split.csv", dtype=str)
    assert (split.group == split.specimen).all() and set(split.specimen) == set(table.specimen)


def test_clusters_are_numbered_by_size_whatever_hdbscan_called_them():
    from wingclr.cluster.clustering import by_size, folder_name

    labels = np.array([2, 2, 0, 1, 1, 1, -1, 0, 0, 0, 3, 3])
    assert by_size(labels).tolist() == [2, 2, 0, 1, 1, 1, -1, 0, 0, 0, 3, 3]
    renamed = np.array([-1, 4, 9, 2, 5])[labels + 1]  # the same grouping, other numbers
    assert by_size(renamed).tolist() == by_size(labels).tolist()
    assert by_size(np.array([5, 5, 3, 3, -1])).tolist() == [0, 0, 1, 1, -1]  # tie: first image first
    assert by_size(np.array([-1, -1])).tolist() == [-1, -1]
    assert [folder_name(k) for k in (0, 3, -1)] == ["cluster_0", "cluster_3", "outliers"]


def test_the_summary_names_no_outliers_folder_when_none_is_written(tmp_path):
    from wingclr.cluster.clustering import cluster
    from wingclr.cluster.stage import wrote_line

    points = np.concatenate([np.zeros((6, 3)), np.ones((4, 3)) * 10]) + \
        np.random.default_rng(0).normal(0, 0.01, (10, 3))
    result = cluster(points.astype(np.float32), 3)
    assert result.n_outliers == 0 and result.sizes == {0: 6, 1: 4}
    line = wrote_line(result, tmp_path)
    assert "outliers" not in line and "2 cluster folders" in line
    result.labels[0] = -1
    assert "outliers/ (1 images)" in wrote_line(result, tmp_path)


def test_adjusted_rand_index_is_reported_against_phenotypes(clustered, demo_set):
    bench = load_stage("benchmarks/clustering_ari.py")
    out, manifest, _ = clustered
    report = bench.ari_report(out, demo_set / "labels.csv")
    assert report["images"] == 30  # every specimen joined its phenotype (the extra copy has none)
    assert report["clusters"] == manifest["counts"]["clusters"]
    assert -1 <= report["ari_all"] <= 1


def _copy_run(clustered, specimens, tmp_path, caches_only=True):
    """A fresh input/output pair holding the fixture run's images and caches."""
    src, _, _ = clustered
    inp, out = tmp_path / "images", tmp_path / "1-clusters"
    shutil.copytree(specimens, inp)  # copy2 keeps size and mtime: cache rows stay valid
    if caches_only:
        out.mkdir()
        for name in CACHE_FILES:
            shutil.copy2(src / name, out / name)
    else:
        shutil.copytree(src, out)
    return inp, out


def test_rerun_uses_feature_cache_and_recomputes_only_changed_images(clustered, specimens,
                                                                     tmp_path, monkeypatch):
    inp, out = _copy_run(clustered, specimens, tmp_path, caches_only=False)
    counter = ForwardCounter()
    monkeypatch.setattr("wingclr.models.build_backbone", counter)
    fits = []
    import wingclr.cluster.stage as stage

    monkeypatch.setattr(stage, "project_umap", lambda *a, **k: fits.append(1) or np.zeros((0, 3)))
    before = np.load(out / "features.npy")
    manifest = run_stage(SCRIPT, "--input", inp, "--output", out, *TINY, "--min-cluster-size", "4",
                         "--cluster-selection-epsilon", "0.5", "--yes", "--overwrite")
    assert counter.forwards == 0 and fits == []  # features and UMAP both from the caches
    assert manifest["counts"]["features_computed"] == 0
    assert manifest["args"]["min_cluster_size"] == 4
    np.testing.assert_array_equal(np.load(out / "features.npy"), before)

    monkeypatch.setattr(stage, "project_umap", lambda f, **k: np.random.default_rng(0).normal(size=(len(f), 3)).astype(np.float32))
    arr = np.asarray(Image.open(inp / "specimen_00003.png").convert("RGB")).copy()
    Image.fromarray(255 - arr).save(inp / "specimen_00003.png")  # changed image
    shutil.copy2(inp / "specimen_00004.png", inp / "batch2" / "new.png")  # new image
    manifest = run_stage(SCRIPT, "--input", inp, "--output", out, *TINY, "--min-cluster-size", "4",
                         "--cluster-selection-epsilon", "0.5", "--yes", "--overwrite")
    assert counter.images == 2 and manifest["counts"]["features_computed"] == 2
    index = pd.read_csv(out / "features_index.csv", dtype={"image": str})
    old_index = pd.read_csv(clustered[0] / "features_index.csv", dtype={"image": str})
    after = np.load(out / "features.npy")
    same = index.image.isin(old_index.image) & (index.image != "specimen_00003.png")
    rows_old = old_index.reset_index().set_index("image").loc[index.image[same], "index"]
    np.testing.assert_array_equal(after[same.to_numpy()], before[rows_old.to_numpy()])


def test_interactive_loop_through_stdin_retry_then_keep(clustered, specimens, tmp_path):
    from wingclr.cluster.clustering import by_size, folder_name, run_hdbscan

    inp, out = _copy_run(clustered, specimens, tmp_path)
    emb = np.load(out / "umap_3d.npy")
    # the second answer can never repeat the first: no split of the 31 images gives two clusters
    # of more than half of them, so it marks every image an outlier, whatever the embedding
    first, second = (2, 0.0), (len(emb) // 2 + 1, 0.0)
    assert not np.array_equal(run_hdbscan(emb, *first)[0], run_hdbscan(emb, *second)[0])
    answers = f"{first[0]}\n{first[1]}\n0\n{second[0]}\n{second[1]}\n1\n"
    proc = subprocess.run([sys.executable, str(REPO / SCRIPT), "--input", str(inp), "--output", str(out),
                           *TINY, "--interactive"], input=answers, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("keep (1) or retry (0)") == 2
    assert proc.stdout.count("min_cluster_size [") == 2
    assert "32 from the cache, 0 computed" in proc.stdout  # no feature extraction
    assert proc.stdout.count("UMAP:") == 1 and "UMAP: reusing" in proc.stdout  # no refit on retry
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(t["min_cluster_size"], t["cluster_selection_epsilon"]) for t in manifest["tried"]] == [first, second]
    assert (manifest["args"]["min_cluster_size"], manifest["args"]["cluster_selection_epsilon"]) == second
    kept = pd.read_csv(out / "clusters.csv").cluster.tolist()
    assert kept == [folder_name(k) for k in by_size(run_hdbscan(emb, *second)[0])]  # the second kept


def test_without_terminal_or_parameters_it_stops_with_the_flags_to_pass(tmp_path):
    proc = run_cli(SCRIPT, "--input", tmp_path, "--output", tmp_path / "out", timeout=120)
    assert_one_line_error(proc, "--min-cluster-size", "--cluster-selection-epsilon", "--yes")
    assert not (tmp_path / "out").exists()


def test_stdin_ending_mid_question_is_a_clear_error(clustered, specimens, tmp_path):
    inp, out = _copy_run(clustered, specimens, tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / SCRIPT), "--input", str(inp), "--output", str(out),
                           *TINY, "--interactive"], input="5\n", capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert_one_line_error(proc, "cluster_selection_epsilon", "--yes")


def test_fewer_images_than_min_cluster_size(demo_set, tmp_path):
    for name in sorted((demo_set / "specimens").iterdir())[:6]:
        shutil.copy2(name, tmp_path / name.name)
    proc = run_cli(SCRIPT, "--input", tmp_path, "--output", tmp_path.parent / "few-out", *TINY,
                   "--min-cluster-size", "10", "--cluster-selection-epsilon", "0", "--yes")
    assert_one_line_error(proc, str(tmp_path), "6 images", "--min-cluster-size")


def test_missing_weights_names_file_and_url(demo_set, tmp_path):
    proc = run_cli(SCRIPT, "--input", demo_set / "specimens", "--output", tmp_path / "out",
                   "--input-size", "64", "--num-workers", "0", "--no-show", "--yes")
    assert_one_line_error(proc, "vgg16-397923af.pth",
                          "https://download.pytorch.org/models/vgg16-397923af.pth", "--pretrained none")


def test_identical_images_give_one_cluster_and_a_clear_silhouette_message(demo_set, tmp_path, capsys):
    inp = tmp_path / "same"
    inp.mkdir()
    for i in range(8):
        shutil.copy2(demo_set / "specimens" / "specimen_00001.png", inp / f"copy_{i}.png")
    manifest = run_stage(SCRIPT, "--input", inp, "--output", tmp_path / "out", *TINY,
                         "--min-cluster-size", "3", "--cluster-selection-epsilon", "0", "--yes")
    printed = capsys.readouterr().out
    assert "silhouette undefined" in printed and "identical" in printed
    assert manifest["silhouette"] is None and manifest["counts"]["clusters"] == 1
    assert len(list((tmp_path / "out" / "cluster_0").iterdir())) == 8
    assert (tmp_path / "out" / "silhouette.png").stat().st_size > 0


def test_interactive_overwrite_keeps_the_finished_clustering_until_a_new_one_is_kept(
        clustered, specimens, tmp_path):
    inp, out = _copy_run(clustered, specimens, tmp_path, caches_only=False)
    before = {name: (out / name).read_bytes()
              for name in ("manifest.json", "clusters.csv", "umap_3d.png", "silhouette.png")}
    command = [sys.executable, str(REPO / SCRIPT), "--input", str(inp), "--output", str(out), *TINY,
               "--interactive", "--overwrite"]
    # stdin ends at the first question, then after a try that was drawn but not kept
    for answers in ("", "2\n0.0\n"):
        proc = subprocess.run(command, input=answers, capture_output=True, text=True, timeout=300,
                              cwd=REPO)
        assert_one_line_error(proc, "stdin ended", "--yes")
        assert {name: (out / name).read_bytes() for name in before} == before
    proc = subprocess.run(command, input="2\n0.0\n1\n", capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["args"]["min_cluster_size"] == 2
    assert (out / "umap_3d.png").read_bytes() != before["umap_3d.png"]
    assert not (out / ".tries").exists()
