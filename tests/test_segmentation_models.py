"""Stage 0 with real models: a tiny Mask R-CNN trained here for a few steps (saved, loaded by
segment.py), COCO weights loading from a file the test writes, and the real rembg code path with
a tiny ONNX model the test exports (no download anywhere)."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, run_cli, run_stage, trust_weights
from wingclr.cli import UserError
from wingclr.demo import WING_CLASSES

SEGMENT = "0-segmentation/segment.py"
TRAIN = "0-segmentation/train_maskrcnn.py"
TINY = ("--pretrained", "none", "--min-size", "96", "--max-size", "96", "--batch-size", "2",
        "--num-workers", "0", "--lr", "0.005", "--warmup-steps", "1")


def _subset(demo_set, root, n):
    """The first ``n`` demo specimens with their label masks."""
    for sub in ("specimens", "masks"):
        (root / sub).mkdir(parents=True)
        for path in sorted((demo_set / sub).iterdir())[:n]:
            shutil.copy(path, root / sub / path.name)
    return root / "specimens", root / "masks"


@pytest.fixture(scope="module")
def tiny_model(demo_set, tmp_path_factory):
    """A Mask R-CNN trained for 2 steps on 8 generated specimens; ``(checkpoint, work dir)``."""
    root = tmp_path_factory.mktemp("maskrcnn")
    images, masks = _subset(demo_set, root / "data", 8)
    ckpt, work = root / "tiny.pth", root / "work"
    run_stage(TRAIN, "--images", images, "--masks", masks, "--output", ckpt, "--work-dir", work,
              "--epochs", "1", "--max-steps", "2", "--val-fraction", "0.25", *TINY)
    return ckpt, work


def test_training_saves_best_checkpoint_with_classes_and_metrics(tiny_model):
    ckpt_path, work = tiny_model
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["classes"] == list(WING_CLASSES) and ckpt["arch"] == "maskrcnn_resnet50_fpn"
    assert ckpt["min_size"] == 96 and ckpt["epoch"] == 1
    metrics = pd.read_csv(work / "metrics.csv")
    assert metrics["step"].tolist() == [2] and np.isfinite(metrics["loss"]).all()
    assert {f"val_{c}_iou" for c in WING_CLASSES} | {"val_mean_iou"} <= set(metrics.columns)
    assert (work / "manifest.json").is_file()


def test_segment_with_trained_checkpoint(tiny_model, demo_set, tmp_path):
    photos = tmp_path / "photos"
    for sub in ("one", "two"):  # same file name in two folders
        (photos / sub).mkdir(parents=True)
        shutil.copy(demo_set / "specimens" / "specimen_00000.png", photos / sub / "s.png")
    gray = np.asarray(Image.open(demo_set / "specimens" / "specimen_00001.png").convert("L"))
    Image.fromarray(gray).save(photos / "gray.png")
    out = tmp_path / "seg"
    args = ("--input", photos, "--output", out, "--method", "maskrcnn", "--checkpoint",
            tiny_model[0], "--score-threshold", "0", "--batch-size", "2", "--no-progress")
    manifest = run_stage(SEGMENT, *args)
    assert manifest["classes"] == list(WING_CLASSES) and manifest["counts"]["ok"] == 3
    table = pd.read_csv(out / "segmentation.csv", keep_default_na=False).set_index("image")
    for rel in ("one/s.png", "two/s.png", "gray.png"):
        mask = np.asarray(Image.open(out / "masks" / rel))
        rgba = np.asarray(Image.open(out / "images" / rel))
        assert mask.shape == rgba.shape[:2] == gray.shape and rgba.shape[2] == 4
        assert set(np.unique(mask)) <= {0, 1, 2, 3, 4} and mask.any()
        row = table.loc[rel]
        assert row["wings_found"] == len(row["wings"].split(";")) >= 1
        for k, c in enumerate(WING_CLASSES, 1):
            assert row[f"{c}_area"] == (mask == k).sum()
    stamp = (out / "masks" / "gray.png").stat().st_mtime_ns
    run_stage(SEGMENT, *args)  # same command: nothing redone
    assert (out / "masks" / "gray.png").stat().st_mtime_ns == stamp


def test_no_detection_is_listed_not_written(tiny_model, demo_set, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(demo_set / "specimens" / "specimen_00002.png", photos / "a.png")
    out = tmp_path / "seg"
    manifest = run_stage(SEGMENT, "--input", photos, "--output", out, "--method", "maskrcnn",
                         "--checkpoint", tiny_model[0], "--score-threshold", "1", "--no-progress")
    assert manifest["no_wings_files"] == [["a.png", "no wing found above --score-threshold"]]
    assert not (out / "images").exists() or not any((out / "images").rglob("*.png"))
    assert pd.read_csv(out / "segmentation.csv")["status"].tolist() == ["no_wings"]


def test_checkpoint_with_other_classes_is_refused(tiny_model, demo_set, tmp_path):
    images, masks = _subset(demo_set, tmp_path / "data", 3)
    proc = run_cli(TRAIN, "--images", images, "--masks", masks, "--classes", "wing,body",
                   "--init", tiny_model[0], "--output", tmp_path / "x.pth", "--work-dir",
                   tmp_path / "w", *TINY)
    assert_one_line_error(proc, "do not match", "forewing_left", "wing, body")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    proc = run_cli(SEGMENT, "--input", images, "--output", tmp_path / "o", "--method", "maskrcnn",
                   "--checkpoint", tmp_path / "junk.pth")
    assert_one_line_error(proc, "junk.pth", "is not a readable Mask R-CNN checkpoint")


def test_training_resumes_after_interruption(demo_set, tmp_path, monkeypatch):
    images, masks = _subset(demo_set, tmp_path / "data", 3)  # 2 train (1 step/epoch), 1 validation
    args = ("--images", images, "--masks", masks, "--output", tmp_path / "m.pth", "--work-dir",
            tmp_path / "work", "--epochs", "2", "--val-fraction", "0.34", *TINY)
    from wingclr.segment import train_maskrcnn as segmentation_train

    original = segmentation_train._train_epoch

    def stop_in_epoch_2(model, loader, optimizer, scheduler, spec, a, state, device):
        if state["epoch"] == 1:
            raise KeyboardInterrupt
        return original(model, loader, optimizer, scheduler, spec, a, state, device)

    monkeypatch.setattr(segmentation_train, "_train_epoch", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_stage(TRAIN, *args)
    first = pd.read_csv(tmp_path / "work" / "metrics.csv")
    assert first["epoch"].tolist() == [1] and (tmp_path / "m.pth").is_file()
    monkeypatch.setattr(segmentation_train, "_train_epoch", original)
    manifest = run_stage(TRAIN, *args)
    metrics = pd.read_csv(tmp_path / "work" / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2] and metrics["step"].tolist() == [1, 2]
    assert metrics.iloc[0]["loss"] == first.iloc[0]["loss"]  # epoch 1 kept, not retrained
    assert manifest["counts"]["epochs"] == 2
    assert run_stage(TRAIN, *args) is None  # finished: skipped


def test_coco_weights_are_loaded_from_weights_folder(tmp_path, monkeypatch):
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    from torchvision.ops import FrozenBatchNorm2d

    from wingclr.segment.maskrcnn import ModelSpec, build_model

    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(tmp_path))
    spec = ModelSpec(tuple(WING_CLASSES), min_size=96, max_size=96, frozen_bn=True)
    with pytest.raises(UserError, match="maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth.*--pretrained none"):
        build_model(spec, "coco")
    torch.manual_seed(1)
    coco = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    torch.save(coco, tmp_path / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    trust_weights(tmp_path / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")  # a stand-in file
    model = build_model(spec, "coco", trainable_layers=2)
    assert torch.equal(model.backbone.body.conv1.weight, coco["backbone.body.conv1.weight"])
    assert torch.equal(model.roi_heads.mask_head[0][0].weight, coco["roi_heads.mask_head.0.0.weight"])
    assert model.roi_heads.box_predictor.cls_score.out_features == 5  # heads replaced
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 5
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert torch.equal(model.backbone.body.bn1.running_mean, coco["backbone.body.bn1.running_mean"])
    trainable = {n.split(".")[0] for n, p in model.backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}


def test_rembg_method_runs_real_rembg_with_local_model(rembg_home, tmp_path):
    import cv2

    photos = tmp_path / "photos"
    photos.mkdir()
    img = np.full((150, 200, 3), 240, np.uint8)
    cv2.ellipse(img, (100, 75), (60, 35), 0, 0, 360, (30, 40, 50), -1)
    Image.fromarray(img).save(photos / "dark_blob.png")
    Image.fromarray(img[..., 0]).save(photos / "gray.png")
    manifest = run_stage(SEGMENT, "--input", photos, "--output", tmp_path / "seg", "--method",
                         "rembg", "--no-progress")
    assert manifest["counts"]["ok"] == 2 and manifest["model"]["rembg_model"] == "u2net"
    truth = img[..., 0] < 128
    for name in ("dark_blob.png", "gray.png"):
        mask = np.asarray(Image.open(tmp_path / "seg" / "masks" / name)) > 0
        assert (mask & truth).sum() / (mask | truth).sum() > 0.9
    onnx_copy = rembg_home / "mine.onnx"  # a custom U^2-Net-style file by path
    shutil.copy(rembg_home / "u2net.onnx", onnx_copy)
    manifest = run_stage(SEGMENT, "--input", photos, "--output", tmp_path / "seg2", "--method",
                         "rembg", "--rembg-model", onnx_copy, "--no-progress")
    assert manifest["counts"]["ok"] == 2


def test_maskrcnn_plus_rembg_keeps_rembg_edge_inside_wing_masks(tiny_model, rembg_home, demo_set,
                                                                tmp_path):
    import cv2

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in (3, 4):
        shutil.copy(demo_set / "specimens" / f"specimen_0000{i}.png", photos / f"s{i}.png")
    common = ("--input", photos, "--checkpoint", tiny_model[0], "--score-threshold", "0",
              "--no-progress")
    outs = {}
    for method in ("maskrcnn+rembg", "maskrcnn", "rembg"):
        outs[method] = tmp_path / method.replace("+", "_")
        run_stage(SEGMENT, *common, "--output", outs[method], "--method", method, "--dilate", "0.1")
    for name in ("s3.png", "s4.png"):
        both, rcnn, rem = (np.asarray(Image.open(outs[m] / "masks" / name))
                           if (outs[m] / "masks" / name).exists() else None
                           for m in ("maskrcnn+rembg", "maskrcnn", "rembg"))
        assert both is not None and both.any()
        assert not (both & (rem == 0)).any()  # never outside rembg's foreground
        zone = cv2.dilate((rcnn > 0).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        assert not ((both > 0) & ~zone).any()  # never far from a Mask R-CNN wing
        inside = (both > 0) & (rcnn > 0)
        assert (both[inside] == rcnn[inside]).mean() > 0.95  # pixels keep their wing's label
