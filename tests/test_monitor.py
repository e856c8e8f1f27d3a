"""Stage 3's monitor: the kNN accuracy of stage 2's validation images before and during training,
the warning when training makes it worse, and --select best."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_TRAIN, assert_one_line_error, run_cli, run_stage

LITE0 = ("--backbone", "timm/efficientnet_lite0", "--pretrained", "imagenet", "--input-size", "48",
         "--batch-size", "8", "--num-workers", "0", "--warmup-epochs", "0")


def frozen_knn(dataset_dir, backbone: str, size: int, meta: dict) -> float:
    """Stage 5's frozen-ImageNet kNN on the same train / validation images, computed apart."""
    from wingclr.features import embed_images, image_table
    from wingclr.probe import knn_predict
    from wingclr.models import build_backbone

    root, table = image_table(dataset_dir)
    tr, va = table[table.split == "train"], table[table.split == "validation"]
    model, _ = build_backbone(backbone, True, image_size=size)
    x, _ = embed_images(model, meta, root, tr.image.tolist() + va.image.tolist(), num_workers=0, progress=False)
    pred = knn_predict(x[:len(tr)], tr.cluster.to_numpy(), x[len(tr):], k=min(20, len(tr)))
    return float(np.mean(pred == va.cluster.to_numpy()))


def test_epoch_zero_score_is_frozen_imagenets_knn_on_the_same_images(dataset_dir, tmp_path, lite0_weights,
                                                                      monkeypatch):
    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(lite0_weights))
    run_stage("3-training/train.py", "--data", dataset_dir, "--output", tmp_path, "--epochs", "1",
              "--run-name", "mon", *LITE0)
    metrics = pd.read_csv(tmp_path / "mon" / "metrics.csv")
    assert metrics.epoch.tolist() == [0, 1]
    meta = torch.load(tmp_path / "mon" / "mon.ckpt", map_location="cpu", weights_only=False)["wingclr"]
    assert metrics.knn_accuracy[0] == pytest.approx(frozen_knn(dataset_dir, "timm/efficientnet_lite0", 48, meta))
    manifest = json.loads((tmp_path / "mon" / "manifest.json").read_text())
    assert manifest["monitor"]["start"] == metrics.knn_accuracy[0]
    assert manifest["monitor"]["classes"] == "stage 1 clusters" and manifest["monitor"]["selected_epoch"] == 1


def test_select_best_keeps_the_best_scoring_epochs_weights(dataset_dir, tmp_path, capsys):
    from wingclr.train.checkpoint_files import load_backbone
    from wingclr.train.monitor import knn_score, monitor_set

    run_stage("3-training/train.py", "--data", dataset_dir, "--output", tmp_path, "--epochs", "3",
              "--run-name", "sel", "--select", "best", "--monitor-every", "1", "--lr", "0.5", *TINY_TRAIN)
    metrics = pd.read_csv(tmp_path / "sel" / "metrics.csv")
    monitor = json.loads((tmp_path / "sel" / "manifest.json").read_text())["monitor"]
    best = int(metrics.epoch[metrics.knn_accuracy.idxmax()])
    assert monitor["best_epoch"] == monitor["selected_epoch"] == best
    assert not (tmp_path / "sel" / ".best.ckpt").exists()
    backbone, meta = load_backbone(tmp_path / "sel" / "sel.ckpt")
    score = knn_score(backbone, meta, monitor_set(dataset_dir), "cpu")
    assert score == pytest.approx(metrics.knn_accuracy.max())


def test_a_score_below_the_start_is_a_one_line_warning(dataset_dir, tmp_path, capsys):
    from wingclr.train.monitor import KnnMonitor

    class Trainer:
        is_global_zero = True

    class History:
        history = [{"epoch": 0, "knn_accuracy": 0.8}]
        stop_requested = False

    mon = KnnMonitor(None, {}, History(), every=1, best_path=None)
    mon.mset = type("M", (), {"images": ["a"] * 10, "n_train": 6, "source": "stage 1 clusters"})()
    mon._record(Trainer(), 3, 0.5)
    out = capsys.readouterr().out.splitlines()
    warning = [line for line in out if line.startswith("warning:")]
    assert len(warning) == 1 and "epoch 3" in warning[0] and "0.500 < 0.800" in warning[0]


def test_monitor_flags_need_a_stage2_split(demo_set, tmp_path):
    proc = run_cli("3-training/train.py", "--data", demo_set / "clusters", "--output", tmp_path,
                   "--select", "best", *TINY_TRAIN)
    assert_one_line_error(proc, "--select best", "split.csv")
    assert not any(tmp_path.iterdir())


def test_monitor_scores_the_labels_of_a_spreadsheet_column(dataset_dir, tmp_path):
    from pathlib import PurePosixPath

    split = pd.read_csv(dataset_dir / "split.csv", dtype=str, keep_default_na=False)
    labels = pd.DataFrame({"filename": [PurePosixPath(p).name for p in split.source_image],
                           "sex": ["M" if i % 2 else "F" for i in range(len(split))],
                           "genus": split.cluster})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    run_stage("3-training/train.py", "--data", dataset_dir, "--output", tmp_path / "runs", "--epochs", "1",
              "--run-name", "lab", "--labels", tmp_path / "labels.csv", "--label-column", "sex",
              "--id-column", "filename", *TINY_TRAIN)
    monitor = json.loads((tmp_path / "runs" / "lab" / "manifest.json").read_text())["monitor"]
    assert monitor["classes"] == f"labels {tmp_path / 'labels.csv'} (sex)"
    assert pd.read_csv(tmp_path / "runs" / "lab" / "metrics.csv").knn_accuracy.notna().all()
