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
