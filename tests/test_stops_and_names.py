"""Long file names, stops by signal and resume, and warnings that must not reach the terminal."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, assert_one_line_error, fake_meta, run_cli, run_stage

SEGMENT = "0-segmentation/segment.py"
LONG = "w" * 245  # + ".jpg": a legal 249-byte name


def _specimen(path: Path, size: int = 48, seed: int = 0) -> Path:
    """A dark ellipse on a plain light background (what ``--method threshold`` cuts out)."""
    yy, xx = np.mgrid[:size, :size]
    inside = ((yy - size / 2) / (size * 0.3)) ** 2 + ((xx - size / 2) / (size * 0.4)) ** 2 < 1
    arr = np.full((size, size, 3), 235, np.uint8)
    arr[inside] = np.random.default_rng(seed).integers(20, 120, (int(inside.sum()), 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


# long but legal names

def test_atomic_writes_work_for_the_longest_legal_name(tmp_path):
    from wingclr.outputs import write_text

    name = "n" * 251 + ".png"  # 255 bytes: any prefix on the temporary file would not fit
    write_text(tmp_path / name, "x")
    assert os.listdir(tmp_path) == [name]


def test_a_file_name_too_long_for_the_file_system_is_shortened_with_a_hash(tmp_path):
    from wingclr.outputs import fit_name

    short = "sheet_a.png"
    assert fit_name(short) == short
    one, two = fit_name("sheet_" + "é" * 300 + "a.png"), fit_name("sheet_" + "é" * 300 + "b.png")
    assert one != two and one.endswith(".png") and one.startswith("sheet_éé")
    assert max(len(one.encode()), len(two.encode())) <= 255
    one.encode().decode("utf-8")  # never cut inside a character


def test_stage0_segments_a_photo_with_a_245_character_name(tmp_path):
    photos = tmp_path / "photos"
    _specimen(photos / f"{LONG}.jpg")
    _specimen(photos / "short.jpg", seed=1)
    out = tmp_path / "out"
    manifest = run_stage(SEGMENT, "--input", photos, "--output", out, "--method", "threshold",
                         "--no-progress")
    table = pd.read_csv(out / "segmentation.csv")
    assert (table.status == "ok").all() and manifest["counts"]["ok"] == 2
    assert (out / "images" / f"{LONG}.png").is_file() and (out / "masks" / f"{LONG}.png").is_file()


def test_contact_sheet_of_a_300_character_label_is_written(tmp_path):
    from wingclr.contact_sheets import write_contact_sheets

    images = [_specimen(tmp_path / "img" / f"{i}.png", 32, i) for i in range(4)]
    label = "L" * 300
    written = write_contact_sheets(np.random.default_rng(0).normal(size=(4, 5)),
                                   [label, label, "b", "b"], images, tmp_path / "sheets")
    names = sorted(p.name for p in written)
    assert len(names) == 2 and all(p.is_file() for p in written)
    long = [n for n in names if n.startswith("sheet_LLL")]
    assert len(long) == 1 and len(long[0].encode()) <= 255


def test_gradcam_figures_of_images_with_long_names_are_written(tmp_path):
    import torch

    from wingclr.evaluate.gradcam import write_gradcam
    from wingclr.models import build_backbone

    images = [_specimen(tmp_path / "img" / f"{'g' * 250}{i}.png", 40, i) for i in range(6)]
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", False)
    features = np.random.default_rng(0).normal(size=(6, dim)).astype(np.float32)
    labels = ["a", "b"] * 3
    train = np.array([True] * 4 + [False] * 2)
    written = write_gradcam(backbone, fake_meta(), features, labels, images, train, ~train, 1.0,
                            tmp_path / "gradcam", n=2)
    assert len(written) == 2 and all(p.is_file() and len(p.name.encode()) <= 255 for p in written)


# bad flags

def test_unknown_timm_pretrained_tag_is_one_line_listing_the_known_tags(capsys):
    from conftest import load_stage

    for script in ("3-training/train.py", "1-clustering/cluster.py"):
        parser = load_stage(script).get_args_parser()
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(["--backbone", "timm/resnet18.nosuch"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "Invalid pretrained tag" not in err
        line = [s for s in err.splitlines() if "error:" in s]
        assert len(line) == 1 and "'nosuch'" in line[0] and "a1_in1k" in line[0] and "tv_in1k" in line[0]
    assert load_stage("3-training/train.py").get_args_parser().parse_args(
        ["--backbone", "timm/resnet18.a1_in1k"]).backbone == "timm/resnet18.a1_in1k"


def test_an_output_that_is_an_existing_file_is_one_line_in_every_stage(tmp_path):
    photos = tmp_path / "photos"
    for i in range(6):
        _specimen(photos / f"{i}.png", 40, i)
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    commands = {SEGMENT: ("--input", photos, "--method", "threshold", "--output", taken),
                "1-clustering/cluster.py": ("--input", photos, "--output", taken, "--yes"),
                "0-segmentation/train_maskrcnn.py": ("--images", photos, "--annotations", taken,
                                                     "--work-dir", taken)}
    for script, args in commands.items():
        proc = run_cli(script, *args, timeout=300)
        assert_one_line_error(proc, str(taken), "is a file, not a folder")
    assert taken.read_text() == "not a folder"


# warnings that must not reach the terminal

def test_a_garbage_tiff_is_listed_unreadable_without_decoder_warnings(tmp_path):
    photos = tmp_path / "photos"
    _specimen(photos / "good.png")
    (photos / "bad.tif").write_bytes(b"II*\x00\x08\x00\x00\x00")  # a TIFF header, then nothing
    proc = run_cli(SEGMENT, "--input", photos, "--output", tmp_path / "out", "--method", "threshold",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "unreadable: bad.tif" in proc.stdout
    for noise in ("Corrupt EXIF", "UserWarning", "invalid offset", "tifffile"):
        assert noise not in proc.stderr, proc.stderr


def test_unicode_labels_draw_without_glyph_warnings(tmp_path):
    code = ("import numpy as np; from wingclr.evaluate.plots import plot_confusion, plot_pca; "
            "y = ['蝶', 'クラス', 'Ω'] * 4; "
            f"plot_confusion(y, y[::-1], sorted(set(y)), {str(tmp_path / 'c.png')!r}, 'ラン', 'labels'); "
            f"plot_pca(np.random.default_rng(0).normal(size=(12, 2)), y, np.array([0.5, 0.2]), "
            f"{str(tmp_path / 'p.png')!r}, '蝶')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "c.png").is_file() and (tmp_path / "p.png").is_file()
    assert "Glyph" not in proc.stderr and "missing from font" not in proc.stderr, proc.stderr
