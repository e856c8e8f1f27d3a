"""Issue 14, "nothing silently wrong, nothing lost": one test per fault case, named after it."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, assert_one_line_error, run_cli, run_stage
from wingclr.imageio import ImageReadError, image_channels, list_files, read_image, try_read


def _tree_with_loops(root, loops: int):
    """``root/a/{x,y}.png`` plus ``loops`` links back up the tree (``root/a/up_<i> -> ..``)."""
    (root / "a").mkdir(parents=True)
    for name in ("x", "y"):
        Image.new("RGB", (8, 8), (200, 30, 30)).save(root / "a" / f"{name}.png")
    for i in range(loops):
        os.symlink("..", root / "a" / f"up_{i}")
    return root


def test_case02_symlink_loops(tmp_path, demo_set):
    # one loop: each photo listed once, the link reported instead of followed
    images, skipped = list_files(_tree_with_loops(tmp_path / "one", 1))
    assert [p.as_posix() for p in images] == ["a/x.png", "a/y.png"]
    assert [str(p) for p, _ in skipped] == [os.path.join("a", "up_0")]
    # two loops used to recurse exponentially: listing must finish at once
    code = f"from wingclr.imageio import list_files; print(len(list_files({str(tmp_path / 'two')!r})[0]))"
    _tree_with_loops(tmp_path / "two", 2)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "2", done.stderr[-2000:]
    # a loop inside a cluster folder: stage 2 keeps each image once, never in train and validation
    clusters = tmp_path / "clusters"
    shutil.copytree(demo_set / "clusters", clusters)
    os.symlink("..", clusters / "band" / "loop")
    out = tmp_path / "2-dataset"
    run_stage("2-create_dataset/create_dataset.py", "--input", clusters, "--output", out)
    split = pd.read_csv(out / "split.csv")
    assert len(split) == 30 and not split.image.str.contains("loop").any()
    real = {s: {os.path.realpath(clusters / p) for p in split.image[split.split == s]}
            for s in ("train", "validation")}
    assert not real["train"] & real["validation"]


def _garbage_tiff(path):
    """A valid little-endian TIFF header whose body is garbage (here: nothing at all)."""
    path.write_bytes(b"II*\x00\x08\x00\x00\x00")
    return path


def test_case08_garbage_tiff_is_reported_and_skipped(tmp_path, demo_set):
    bad = _garbage_tiff(tmp_path / "bad.tif")
    with pytest.raises(ImageReadError, match="bad.tif"):
        read_image(bad)
    with pytest.raises(ImageReadError):
        image_channels(bad)
    assert try_read(bad)[0] is None
    # stage 2 with one such file in a cluster folder: reported and skipped, not aborted
    clusters = tmp_path / "clusters"
    shutil.copytree(demo_set / "clusters", clusters)
    _garbage_tiff(clusters / "band" / "scan.tif")
    out = tmp_path / "2-dataset"
    run_stage("2-create_dataset/create_dataset.py", "--input", clusters, "--output", out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 30
    assert [p for p, _ in manifest["skipped_files"]] == [os.path.join("band", "scan.tif")]


def test_case21_file_input_and_format_by_content(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 12), (10, 120, 240)).save(photo, format="JPEG")
    proc = run_cli("0-segmentation/segment.py", "--input", photo, "--output", tmp_path / "out")
    assert_one_line_error(proc, str(photo), "is a file", "folder")
    proc = run_cli("2-create_dataset/create_dataset.py", "--input", photo,
                   "--output", tmp_path / "out2")
    assert_one_line_error(proc, str(photo), "is a file", "folder")
    # the decoder follows the content, not the name
    for name in ("jpeg_named.TIF", "photo.jpe", "photo.jfif"):
        shutil.copy(photo, tmp_path / name)
        assert read_image(tmp_path / name).shape == (12, 16, 3), name
        assert image_channels(tmp_path / name) == 3
    import tifffile

    tifffile.imwrite(tmp_path / "tiff_named.png", np.zeros((5, 6, 4), np.uint8), planarconfig="contig")
    assert read_image(tmp_path / "tiff_named.png").shape == (5, 6, 4)
    np.save(tmp_path / "cube.npy", np.zeros((5, 6, 7), np.uint8))
    shutil.move(tmp_path / "cube.npy", tmp_path / "cube_named.tif")
    assert read_image(tmp_path / "cube_named.tif").shape == (5, 6, 7)
    images, _ = list_files(tmp_path)
    assert {p.name for p in images} >= {"photo.jpe", "photo.jfif"}


def _meta(backbone="resnet18", in_chans=3):
    from wingclr.models import channel_stats

    mean, std = channel_stats(in_chans, [0, 1, 2])
    return {"backbone": backbone, "in_chans": in_chans, "rgb_bands": [0, 1, 2], "bands": None,
            "input_size": 32, "mean": mean, "std": std, "background": [255, 255, 255],
            "scale16": "full", "settings": {"batch_size": 8, "epochs": 1, "temperature": 0.5}}


def _checkpoint(path, seed, meta=None, in_chans=3):
    """A stage 3 checkpoint as stage 4 reads it: ``wingclr`` metadata plus backbone weights."""
    import torch

    from wingclr.models import build_backbone

    torch.manual_seed(seed)
    backbone, _ = build_backbone("resnet18", False, in_chans)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    torch.save({"wingclr": meta or _meta(), "state_dict": state}, path)
    return path


def _embed(ckpt, dataset_dir, out, capsys) -> str:
    """Stage 4 in-process; returns what it printed."""
    capsys.readouterr()
    run_stage("4-embed/embed.py", "--checkpoints", ckpt, "--data", dataset_dir, "--output", out,
              "--num-workers", "0", "--quiet", "--cache-dir", out / "no-cache")
    return capsys.readouterr().out


def _one_line_user_error(call, *needles) -> str:
    from wingclr.cli import UserError

    with pytest.raises(UserError) as e:
        call()
    text = str(e.value)
    assert "\n" not in text and all(n in text for n in needles), text
    return text


def test_case04_retrained_checkpoint_is_embedded_again(tmp_path, dataset_dir, capsys):
    ckpt = _checkpoint(tmp_path / "run.ckpt", seed=0)
    out = tmp_path / "4-embeddings"
    _embed(ckpt, dataset_dir, out, capsys)
    first = np.load(out / "run" / "embeddings.npy")
    _checkpoint(ckpt, seed=1)  # stage 3 --overwrite re-trained the run in place
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    printed = _embed(ckpt, dataset_dir, out, capsys)
    assert "skip:" not in printed and "changed" in printed, printed
    assert not np.allclose(np.load(out / "run" / "embeddings.npy"), first)
    assert "skip:" in _embed(ckpt, dataset_dir, out, capsys)  # unchanged since: finished


def test_case11_checkpoint_metadata_disagrees_with_weights(tmp_path, dataset_dir, capsys):
    four = _checkpoint(tmp_path / "four.ckpt", 0, in_chans=4)  # metadata says 3
    text = _one_line_user_error(lambda: _embed(four, dataset_dir, tmp_path / "out", capsys),
                                "four.ckpt", "resnet18", "3 channels", "4 channels")
    assert "load_state_dict" not in text
    r50 = _checkpoint(tmp_path / "r50.ckpt", 0, meta=_meta("resnet50"))
    _one_line_user_error(lambda: _embed(r50, dataset_dir, tmp_path / "out", capsys),
                         "r50.ckpt", "resnet50", "3 channels")


def test_case05_outputs_of_removed_photos_are_removed(tmp_path, demo_set, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in sorted(p.name for p in (demo_set / "specimens").iterdir())[:4]:
        shutil.copy(demo_set / "specimens" / name, photos / name)
    out = tmp_path / "seg"
    args = ("--input", photos, "--output", out, "--method", "threshold", "--no-progress")
    run_stage("0-segmentation/segment.py", *args)
    gone = sorted(photos.iterdir())[0].name
    assert (out / "images" / gone).is_file()
    (photos / gone).unlink()
    capsys.readouterr()
    manifest = run_stage("0-segmentation/segment.py", *args)
    printed = capsys.readouterr().out
    assert not (out / "images" / gone).exists() and not (out / "masks" / gone).exists()
    assert gone not in set(pd.read_csv(out / "segmentation.csv").image)
    assert [line for line in printed.splitlines() if gone in line and "removed" in line], printed
    assert manifest["removed_outputs"] == [gone] and manifest["counts"]["images"] == 3


def _fake_embeddings(out, dataset_dir, seed=0):
    """A stage 4 folder (CSV, .npy, manifest with the CSV's digest): separable class centres."""
    from wingclr.eval_inputs import file_digest
    from wingclr.stage import write_manifest

    split = pd.read_csv(dataset_dir / "split.csv", dtype=str)[["image", "cluster", "split"]]
    rng = np.random.default_rng(seed)
    codes = pd.factorize(split.cluster, sort=True)[0]
    feats = (rng.normal(size=(codes.max() + 1, 8))[codes]
             + rng.normal(0, 0.05, (len(split), 8))).astype(np.float32)
    out.mkdir(parents=True)
    np.save(out / "embeddings.npy", feats)
    pd.concat([split, pd.DataFrame(feats, columns=[f"emb_{i}" for i in range(8)])],
              axis=1).to_csv(out / "embeddings.csv", index=False, float_format="%.6g")
    write_manifest(out, "4-embed", {"checkpoint": "run.ckpt", "data": str(dataset_dir)},
                   counts={"images": len(split)}, model=_meta(),
                   embeddings_csv=file_digest(out / "embeddings.csv"))
    return out, dict(zip(split.image, feats))


def _evaluate(emb_dir, out, *extra):
    run_stage("5-evaluation/evaluate.py", "--runs", emb_dir, "--embeddings", emb_dir.parent,
              "--output", out, "--no-baselines", "--no-umap", "--num-workers", "0", *extra)
    return pd.read_csv(out / emb_dir.name / "predictions.csv")


def test_case01_sorted_embeddings_csv(tmp_path, dataset_dir):
    from wingclr.eval_inputs import load_embeddings
    from wingclr.stage import read_manifest

    emb, vectors = _fake_embeddings(tmp_path / "4" / "run", dataset_dir)
    before = _evaluate(emb, tmp_path / "5a")
    csv = pd.read_csv(emb / "embeddings.csv")
    by_name = csv.image.str.rsplit("/", n=1).str[-1].argsort(kind="stable")  # a spreadsheet sort
    csv = csv.iloc[by_name].reset_index(drop=True)
    csv.to_csv(emb / "embeddings.csv", index=False)
    ids, feats = load_embeddings(emb, read_manifest(emb))
    for image, vector in zip(ids.image, feats):
        np.testing.assert_allclose(vector, vectors[image], rtol=1e-5, atol=1e-6)
    after = _evaluate(emb, tmp_path / "5b")
    pd.testing.assert_frame_equal(before.sort_values("image", ignore_index=True),
                                  after.sort_values("image", ignore_index=True))
    # an edited number is used, not the stale .npy value
    csv.loc[3, "emb_5"] = 42.0
    csv.to_csv(emb / "embeddings.csv", index=False)
    ids, feats = load_embeddings(emb, read_manifest(emb))
    assert feats[ids.image.tolist().index(csv.image[3]), 5] == 42.0
    # a blanked cell is refused in one line naming the image and the column
    csv["emb_2"] = csv["emb_2"].astype(object)
    csv.loc[7, "emb_2"] = ""
    csv.to_csv(emb / "embeddings.csv", index=False)
    _one_line_user_error(lambda: load_embeddings(emb, read_manifest(emb)), "emb_2", csv.image[7])


def test_case06_partial_labels_are_counted_and_refused(tmp_path, dataset_dir, capsys):
    from wingclr.eval_inputs import attach_labels

    emb, _ = _fake_embeddings(tmp_path / "4" / "run", dataset_dir)
    ids = pd.read_csv(emb / "embeddings.csv", dtype=str)[["image", "cluster", "split"]]
    labels = tmp_path / "labels.csv"
    ids.iloc[:10].rename(columns={"cluster": "label"}).to_csv(labels, index=False)
    capsys.readouterr()
    _one_line_user_error(lambda: _evaluate(emb, tmp_path / "5", "--labels", labels),
                         "10 of 30", str(labels), "--allow-partial-labels")
    assert "labels: 10 of 30" in capsys.readouterr().out
    assert (attach_labels(ids, labels, allow_partial=True) != "").sum() == 10
    printed = capsys.readouterr().out
    assert "10 of 30" in printed and ids.image[10] in printed  # names images without a label
    ids.iloc[:20].rename(columns={"cluster": "label"}).to_csv(labels, index=False)
    assert (attach_labels(ids, labels) != "").sum() == 20  # most matched: accepted, still counted
    assert "20 of 30" in capsys.readouterr().out


def test_case12_spreadsheet_saved_embeddings_csv(tmp_path, dataset_dir):
    from wingclr.eval_inputs import load_embeddings

    emb, vectors = _fake_embeddings(tmp_path / "4" / "run", dataset_dir)
    csv = pd.read_csv(emb / "embeddings.csv")
    csv.rename(columns={"cluster": "Cluster"}).to_csv(emb / "embeddings.csv", index=False)
    ids, feats = load_embeddings(emb)
    assert list(ids.columns) == ["image", "cluster", "split"]
    # ;-separated with decimal commas, as a German/French spreadsheet saves it
    csv.to_csv(emb / "embeddings.csv", index=False, sep=";", decimal=",")
    ids, feats = load_embeddings(emb)
    for image, vector in zip(ids.image, feats):
        np.testing.assert_allclose(vector, vectors[image], rtol=1e-5, atol=1e-6)
    _evaluate(emb, tmp_path / "5")
    csv.rename(columns={"cluster": "class"}).to_csv(emb / "embeddings.csv", index=False)
    _one_line_user_error(lambda: load_embeddings(emb), "embeddings.csv", "image, cluster, split")
