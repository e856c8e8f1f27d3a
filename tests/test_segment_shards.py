"""Stage 0 split over processes: --shard K/N (or a SLURM array) then a merge
gives the single-process output byte for byte."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import run_stage
from wingclr.cli import UserError

SEGMENT = "0-segmentation/segment.py"


@pytest.fixture
def photos(tmp_path):
    """12 small photo files in nested folders (a name collision, a fragment, an unreadable file)."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for i in range(10):
        img = np.full((60, 80, 3), 235, np.uint8)
        radius = 4 if i == 7 else int(rng.integers(12, 25))
        cv2.ellipse(img, (40, 30), (radius, radius * 3 // 5), 0, 0, 360,
                    tuple(int(c) for c in rng.integers(0, 90, 3)), -1)
        path = root / f"drawer{i % 3}" / f"specimen_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
    Image.open(root / "drawer0" / "specimen_0.png").save(root / "drawer0" / "specimen_0.jpg")
    (root / "drawer1" / "broken.png").write_bytes(b"not a png")
    return root


def files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix in (".png", ".csv")}


def test_four_shards_then_merge_equal_one_process_byte_for_byte(photos, tmp_path, monkeypatch,
                                                                 capsys):
    common = ("--input", photos, "--method", "threshold", "--quiet")
    single = run_stage(SEGMENT, *common, "--output", tmp_path / "single")
    out = tmp_path / "sharded"
    for k in (1, 2, 3):
        marker = run_stage(SEGMENT, *common, "--output", out, "--shard", f"{k}/4")
        assert "classes" in marker and not (out / "manifest.json").exists()
        assert f"{k} of 4 shards finished" in capsys.readouterr().out
    assert (out / "parts" / "segmentation_2_of_4.csv").is_file()
    with pytest.raises(UserError, match="4/4 not finished"):
        run_stage(SEGMENT, "--output", out, "--merge")
    # the last shard, as task 3 of a SLURM array --array=0-3, merges
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    merged = run_stage(SEGMENT, *common, "--output", out)
    assert "merging 4 shards" in capsys.readouterr().out
    assert not (out / "parts").exists()
    assert files(out) == files(tmp_path / "single")  # segmentation.csv, masks, cut-outs, sheets
    assert single["counts"]["ok"] >= 8 and single["counts"]["unreadable"] == 1
    assert {**merged["args"], "output": None} == {**single["args"], "output": None}
    for key in ("counts", "classes", "model", "unreadable_files", "low_coverage_files",
                "contact_sheets", "not_image_files"):
        assert merged[key] == single[key], key
    assert json.loads((out / "manifest.json").read_text())["counts"] == single["counts"]
    # a requeued shard of a merged output changes nothing
    again = run_stage(SEGMENT, *common, "--output", out, "--shard", "2/4")
    assert again["finished"] == merged["finished"] and files(out) == files(tmp_path / "single")
    assert run_stage(SEGMENT, "--output", out, "--merge")["finished"] == merged["finished"]


def test_shard_spec_from_flag_or_slurm_array_and_split_covers_every_photo():
    from pathlib import Path

    from wingclr.segment.shards import parse_shard, shard_images

    assert parse_shard("2/4") == (2, 4) and parse_shard("none") is None
    assert parse_shard("auto", {}) is None  # not an array: one process
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "2"}
    assert parse_shard("auto", env) == (4, 4)
    for bad in ("0/4", "5/4", "2"):
        with pytest.raises(UserError, match="K/N"):
            parse_shard(bad)
    images = [Path(f"d{i % 3}/x{i}.png") for i in range(10)]
    parts = [shard_images(images, k, 4) for k in range(1, 5)]
    assert sorted(p for part in parts for p in part) == sorted(images)
    assert [len(p) for p in parts] == [3, 3, 2, 2]


def test_one_process_takes_over_an_abandoned_split_without_redoing_its_photos(photos, tmp_path,
                                                                               capsys):
    common = ("--input", photos, "--output", tmp_path / "o", "--method", "threshold", "--quiet")
    run_stage(SEGMENT, *common, "--shard", "1/3")
    capsys.readouterr()
    manifest = run_stage(SEGMENT, *common, "--shard", "none")
    assert "4 already done, 8 to segment" in capsys.readouterr().out
    assert manifest["counts"]["images"] == 12 and not (tmp_path / "o" / "parts").exists()


def test_overwrite_with_a_shard_is_refused(photos, tmp_path):
    with pytest.raises(UserError, match="--overwrite with --shard 1/2"):
        run_stage(SEGMENT, "--input", photos, "--output", tmp_path / "o", "--method", "threshold",
                  "--shard", "1/2", "--overwrite")


def test_rembg_device_picks_the_onnxruntime_provider_or_says_why_not():
    from wingclr.segment.rembg import onnx_providers

    cpu_only = ["CPUExecutionProvider"]
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("auto", gpu) == (None, "")  # rembg's choice: CUDA when it is there
    assert onnx_providers("cpu", gpu) == (["CPUExecutionProvider"], "")
    assert onnx_providers("cuda:1", gpu)[0][0] == ("CUDAExecutionProvider", {"device_id": 1})
    providers, note = onnx_providers("cuda", cpu_only)
    assert providers == ["CPUExecutionProvider"] and "pip install onnxruntime-gpu" in note
