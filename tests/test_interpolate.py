"""Stage 3's --interpolate (WiSE-FT): the checkpoint's backbone mixes the ImageNet start and the
trained weights, and the monitor scores the mixed weights the checkpoint will hold."""

import pandas as pd
import pytest
import torch

from conftest import assert_one_line_error, run_cli, run_stage
from test_monitor import LITE0


def backbone_state(ckpt) -> dict:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}


def test_interpolated_mixes_float_tensors_and_keeps_integer_buffers():
    from wingclr.train.interpolate import interpolated

    start = {"w": torch.zeros(3), "n": torch.tensor(0)}
    trained = {"w": torch.tensor([4.0, 8.0, -4.0]), "n": torch.tensor(7)}
    mixed = interpolated(trained, start, alpha=0.25)
    assert torch.equal(mixed["w"], torch.tensor([1.0, 2.0, -1.0])) and int(mixed["n"]) == 7
    assert torch.equal(interpolated(trained, start, alpha=1.0)["w"], trained["w"])


def test_interpolate_mixes_the_start_and_the_trained_weights(dataset_dir, tmp_path, lite0_weights, monkeypatch):
    from wingclr.train.interpolate import interpolated, start_state

    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(lite0_weights))
    common = ("--data", dataset_dir, "--output", tmp_path, "--epochs", "1", "--lr", "0.5", "--monitor-every", "0",
              *LITE0)
    run_stage("3-training/train.py", *common, "--run-name", "raw", "--interpolate", "1")
    run_stage("3-training/train.py", *common, "--run-name", "mix", "--interpolate", "0.25")
    raw, mix = backbone_state(tmp_path / "raw" / "raw.ckpt"), backbone_state(tmp_path / "mix" / "mix.ckpt")
    start = start_state(backbone="timm/efficientnet_lite0", in_chans=3, rgb_bands=(0, 1, 2), input_size=48)
    want = interpolated(raw, start, alpha=0.25)
    assert set(mix) == set(want)
    for key in want:
        torch.testing.assert_close(mix[key], want[key], rtol=1e-5, atol=1e-6)
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.allclose(raw[k], start[k])]
    assert moved, "training changed no weight: the test would prove nothing"


def test_interpolate_zero_keeps_the_start_and_the_monitor_scores_what_is_kept(dataset_dir, tmp_path,
                                                                                lite0_weights, monkeypatch):
    from wingclr.train.interpolate import start_state

    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(lite0_weights))
    run_stage("3-training/train.py", "--data", dataset_dir, "--output", tmp_path, "--epochs", "2",
              "--lr", "0.5", "--monitor-every", "1", "--run-name", "zero", "--interpolate", "0", *LITE0)
    kept = backbone_state(tmp_path / "zero" / "zero.ckpt")
    start = start_state(backbone="timm/efficientnet_lite0", in_chans=3, rgb_bands=(0, 1, 2), input_size=48)
    for key, value in start.items():
        if value.is_floating_point():
            torch.testing.assert_close(kept[key], value, rtol=0, atol=1e-6)
    scores = pd.read_csv(tmp_path / "zero" / "metrics.csv").knn_accuracy
    assert len(scores) == 3 and scores.nunique() == 1  # epochs 0, 1, 2: the start each time


def test_interpolate_out_of_range_is_a_one_line_error(dataset_dir, tmp_path):
    from conftest import TINY_TRAIN

    proc = run_cli("3-training/train.py", "--data", dataset_dir, "--output", tmp_path, "--epochs", "1",
                   "--interpolate", "1.5", *TINY_TRAIN)
    assert_one_line_error(proc, "--interpolate must be in [0, 1]")
