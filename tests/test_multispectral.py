"""Multispectral (7-band TIFF) and hyperspectral (408-band .npy) images through stages 2-5."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import TINY_TRAIN, assert_one_line_error, run_cli, run_stage

pytestmark = pytest.mark.filterwarnings("ignore")


def stages_2_to_5(tmp, bands: int, *train_flags: str) -> dict:
    from wingclr.demo import generate

    generate(tmp / "demo", n=20, size=32, seed=1, n_bands=bands)
    run_stage("2-create_dataset/create_dataset.py", "--input", tmp / "demo" / "clusters", "--output", tmp / "2")
    run_stage("3-training/train.py", "--data", tmp / "2", "--output", tmp / "3", "--epochs", "1",
              "--run-name", "ms", *TINY_TRAIN, *train_flags)
    run_stage("4-embed/embed.py", "--training-dir", tmp / "3", "--data", tmp / "2", "--output", tmp / "4",
              "--num-workers", "0", "--quiet")
    run_stage("5-evaluation/evaluate.py", "--embeddings", tmp / "4", "--output", tmp / "5",
              "--no-baselines", "--no-umap")
    emb = pd.read_csv(tmp / "4" / "ms" / "embeddings.csv")
    assert len(emb) == 20 and emb.filter(like="emb_").shape[1] == 512
    assert pd.read_csv(tmp / "5" / "evaluation.csv").run.tolist() == ["ms"]
    return {"train": json.loads((tmp / "3" / "ms" / "manifest.json").read_text()),
            "embed": json.loads((tmp / "4" / "ms" / "manifest.json").read_text()),
            "split": json.loads((tmp / "2" / "manifest.json").read_text())}


def test_seven_band_tiffs_with_band_selection(tmp_path):
    m = stages_2_to_5(tmp_path, 7, "--bands", "0,1,2,3,6", "--scale16", "band")
    assert m["split"]["counts"]["channels"] == 7
    model = m["train"]["model"]
    assert model["in_chans"] == 5 and model["data_channels"] == 5 and model["train_bands"] == [0, 1, 2, 3, 6]
    assert model["rgb_bands"] == [0, 1, 2] and model["embedding_dim"] == 512
    assert m["embed"]["model"]["bands"] == [0, 1, 2, 3, 6]


def test_408_band_cubes(tmp_path):
    m = stages_2_to_5(tmp_path, 408, "--rgb-bands", "")
    assert m["split"]["counts"]["channels"] == 408
    assert m["train"]["model"]["in_chans"] == 408 and m["train"]["model"]["rgb_bands"] == []


def test_cross_modal_views_pair_rgb_with_uv(tmp_path):
    m = stages_2_to_5(tmp_path, 7, "--views", "rgb,uv", "--band-group", "uv=3", "--augment-on", "device",
                      "--cache-dir", str(tmp_path / "cache"))
    views = m["train"]["model"]["views"]
    assert views == {"names": ["rgb", "uv"], "bands": [[0, 1, 2], [3, 3, 3]]}
    assert m["train"]["model"]["in_chans"] == 3 and m["embed"]["model"]["bands"] == [0, 1, 2]


def test_view_plan_rules():
    from wingclr.train.bands import plan_views
    from wingclr.cli import UserError

    plan = plan_views(7, None, "all,uv", ["uv=3,4"])
    assert plan.in_chans == 7 and plan.bands[1] == [3, 4, 3, 4, 3, 4, 3] and plan.rgb == [[0, 1, 2], []]
    with pytest.raises(UserError, match="band 9"):
        plan_views(7, None, "rgb,uv", ["uv=9"])
    with pytest.raises(UserError, match="--views"):
        plan_views(7, None, "rgb,nir", [])


def make_cluster(root, name, arrays):
    (root / name).mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        tifffile.imwrite(root / name / f"{i}.tif", a)


def test_mixed_channel_counts_are_a_one_line_error(tmp_path):
    src = tmp_path / "in"
    make_cluster(src, "a", [np.zeros((7, 16, 16), np.uint16)] * 3)
    make_cluster(src, "b", [np.zeros((5, 16, 16), np.uint16)] * 2)
    proc = run_cli("2-create_dataset/create_dataset.py", "--input", src, "--output", tmp_path / "out")
    assert_one_line_error(proc, "b/0.tif has 5 channels", "a/0.tif has 7")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_unsupported_sample_format_is_reported_not_fatal(tmp_path):
    src = tmp_path / "in"
    make_cluster(src, "a", [np.zeros((7, 16, 16), np.uint16)] * 3)
    tifffile.imwrite(src / "a" / "complex.tif", np.zeros((16, 16), np.complex64))
    proc = run_cli("2-create_dataset/create_dataset.py", "--input", src, "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "skipped: a/complex.tif" in proc.stdout and "unsupported sample format" in proc.stdout


def test_bands_out_of_range_is_a_one_line_error(tmp_path):
    src = tmp_path / "in"
    make_cluster(src, "a", [np.zeros((7, 16, 16), np.uint16)] * 10)
    proc = run_cli("3-training/train.py", "--data", src, "--output", tmp_path / "runs", "--epochs", "1",
                   *TINY_TRAIN, "--bands", "0,1,9")
    assert_one_line_error(proc, "--bands 0,1,9 asks for band 9", "numbered 0-6")
