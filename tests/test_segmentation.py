"""Stage 0 without neural networks: threshold method, mask arithmetic, the stage's bookkeeping
(resume, bad input), annotations (COCO RLE / polygons, label masks) and evaluation."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import assert_one_line_error, run_cli, run_stage
from wingclr.cli import UserError
from wingclr.demo import WING_CLASSES, make_specimen
from wingclr.segment.annotations import (decode_rle, decode_segmentation, instances, load_coco,
                                              load_mask_folder)
from wingclr.segment.dataset import WingDataset, flip_permutation
from wingclr.segment.masks import Instance, instances_to_owner, to_full_resolution
from wingclr.segment.threshold import threshold_foreground

SEGMENT = "0-segmentation/segment.py"
EVALUATE = "0-segmentation/evaluate_segmentation.py"


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def specimen(seed, size=96):
    return make_specimen(np.random.default_rng(seed), "band", size, clutter=1.0)


def test_threshold_finds_specimen_and_nothing_on_blank_background():
    scores = []
    for seed in range(4):
        spec = specimen(seed)
        fg = threshold_foreground(spec.image) > 0
        scores.append(iou(fg, spec.foreground))
    assert np.mean(scores) > 0.7, scores
    rng = np.random.default_rng(0)
    blank = np.clip(rng.normal(225, 3, (80, 90, 3)), 0, 255).astype(np.uint8)
    assert threshold_foreground(blank).max() == 0


def test_owner_gives_rim_to_nearest_wing_and_keeps_body_out():
    h, w = 40, 60
    left, right = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    left[10:30, 5:25], right[10:30, 35:55] = 255, 255  # wings; the body lies between them
    owner = instances_to_owner([Instance(1, 0.9, left), Instance(2, 0.8, right)], (h, w), dilate_px=3)
    assert (owner[10:30, 5:25] == 1).all() and (owner[10:30, 35:55] == 2).all()
    assert (owner[10:30, 25:28] == 1).all() and (owner[10:30, 32:35] == 2).all()  # rim
    assert (owner[:, 29:31] == 0).all()  # body, farther than 3 px from both wings
    fg = np.zeros((h, w), np.uint8)
    fg[12:28, 3:57] = 255  # rembg: the whole specimen, a bit outside the wing masks
    labels = to_full_resolution(owner, fg, (h, w))
    assert labels[20, 4] == 1 and labels[20, 56] == 2  # edge follows the foreground
    assert labels[11, 10] == 0  # inside the Mask R-CNN mask but background for rembg
    assert (labels[:, 29:31] == 0).all()
    big = to_full_resolution(owner, fg, (400, 600))
    assert big.shape == (400, 600) and set(np.unique(big)) == {0, 1, 2}


def _write_inputs(root):
    """Photos with every kind of trouble; returns the expected status per relative path."""
    a, b = specimen(1), specimen(2)
    for rel, arr in (("a/x.png", a.image), ("b/x.png", b.image), ("c/y.png", a.image)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / rel)
    Image.fromarray(b.image).save(root / "c" / "y.jpg", quality=95)  # same stem as c/y.png
    Image.fromarray(np.asarray(Image.fromarray(a.image).convert("L"))).save(root / "gray.png")
    import cv2

    cv2.imwrite(str(root / "deep16.png"), (b.image[..., ::-1].astype(np.uint16) * 257))
    huge = np.full((300, 8200, 3), 235, np.uint8)
    cv2.ellipse(huge, (4100, 150), (1500, 100), 0, 0, 360, (40, 90, 160), -1)
    Image.fromarray(huge).save(root / "huge.png")
    rng = np.random.default_rng(5)
    Image.fromarray(np.clip(rng.normal(230, 2, (64, 64, 3)), 0, 255).astype(np.uint8)).save(root / "blank.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    np.save(root / "stack.npy", np.zeros((20, 20, 5), np.uint8))
    (root / "notes.txt").write_text("not an image")
    return {"a/x.png": "ok", "b/x.png": "ok", "c/y.png": "ok", "c/y.jpg": "ok", "gray.png": "ok",
            "deep16.png": "ok", "huge.png": "ok", "blank.png": "no_wings",
            "broken.jpg": "unreadable", "stack.npy": "unreadable"}


def test_threshold_stage_handles_bad_input(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "seg"
    expected = _write_inputs(photos)
    manifest = run_stage(SEGMENT, "--input", photos, "--output", out, "--method", "threshold",
                         "--no-progress")
    table = pd.read_csv(out / "segmentation.csv", keep_default_na=False)
    assert dict(zip(table.image, table.status)) == expected
    rows = table.set_index("image")
    # same-named files in different folders and same stems in one folder never collide
    assert rows.loc["a/x.png", "output"] == "a/x.png" and rows.loc["b/x.png", "output"] == "b/x.png"
    assert {rows.loc["c/y.png", "output"], rows.loc["c/y.jpg", "output"]} == {"c/y.png.png", "c/y.jpg.png"}
    for rel in ("a/x.png", "gray.png", "deep16.png", "huge.png"):
        name = rows.loc[rel, "output"]
        rgba = np.asarray(Image.open(out / "images" / name))
        mask = np.asarray(Image.open(out / "masks" / name))
        assert rgba.shape[2] == 4 and rgba.shape[:2] == mask.shape
        assert ((rgba[..., 3] > 0) == (mask > 0)).all() and mask.max() == 1
        assert rows.loc[rel, "mask_area"] == (mask > 0).sum()
    assert np.asarray(Image.open(out / "masks" / "huge.png")).shape == (300, 8200)  # full size back
    assert not (out / "images" / "blank.png").exists() and not (out / "masks" / "blank.png").exists()
    assert "bands" in rows.loc["stack.npy", "reason"]
    assert rows.loc["broken.jpg", "reason"]
    assert [f for f, _ in manifest["unreadable_files"]] == ["broken.jpg", "stack.npy"]
    assert [f for f, _ in manifest["no_wings_files"]] == ["blank.png"]
    assert manifest["not_image_files"][0][0] == "notes.txt" and manifest["classes"] == ["specimen"]


def test_stage_resumes_after_interruption_and_guards_settings(tmp_path, demo_set, monkeypatch):
    out = tmp_path / "seg"
    args = ["--input", demo_set / "specimens", "--output", out, "--method", "threshold",
            "--no-progress", "--flush-every", "1"]
    from wingclr.segment import methods as segmentation_methods

    calls, original = [], segmentation_methods.Segmenter.__call__

    def interrupted(self, images):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return original(self, images)

    monkeypatch.setattr(segmentation_methods.Segmenter, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_stage(SEGMENT, *args)
    monkeypatch.setattr(segmentation_methods.Segmenter, "__call__", original)
    assert not (out / "manifest.json").exists()
    done = pd.read_csv(out / "segmentation.csv")
    assert len(done) == 5 and (done.status == "ok").all()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert len(stamps) == 5
    manifest = run_stage(SEGMENT, *args)
    assert manifest["counts"]["images"] == 30 and manifest["counts"]["ok"] == 30
    assert len(pd.read_csv(out / "segmentation.csv")) == 30
    assert all((out / "images" / n).stat().st_mtime_ns == t for n, t in stamps.items())
    proc = run_cli(SEGMENT, *args[:-2], "--max-side", "64")
    assert_one_line_error(proc, "other settings", "--overwrite")
    run_stage(SEGMENT, *args[:-2], "--max-side", "64", "--overwrite")
    assert json.loads((out / "manifest.json").read_text())["args"]["max_side"] == 64


def test_unfinished_output_with_other_settings_is_refused(tmp_path, demo_set, monkeypatch):
    out = tmp_path / "seg"
    from wingclr.segment import methods as segmentation_methods

    def stop(self, images):
        raise KeyboardInterrupt

    monkeypatch.setattr(segmentation_methods.Segmenter, "__call__", stop)
    with pytest.raises(KeyboardInterrupt):
        run_stage(SEGMENT, "--input", demo_set / "specimens", "--output", out, "--method", "threshold")
    with pytest.raises(UserError, match="unfinished segmentation made with other settings"):
        run_stage(SEGMENT, "--input", demo_set / "specimens", "--output", out, "--method",
                  "threshold", "--max-side", "100")


def test_missing_checkpoint_and_rembg_model_are_one_line_errors(tmp_path, demo_set):
    proc = run_cli(SEGMENT, "--input", demo_set / "specimens", "--output", tmp_path / "o",
                   "--method", "maskrcnn")
    assert_one_line_error(proc, "maskrcnn_wings.pth", "train_maskrcnn.py", "--method threshold")
    proc = run_cli(SEGMENT, "--input", demo_set / "specimens", "--output", tmp_path / "o",
                   "--method", "rembg", "--rembg-model", "isnet-general-use")
    assert_one_line_error(proc, "isnet-general-use.onnx", "rembg d isnet-general-use", "copy")


def _pred_folder(root, masks: dict, statuses: dict, classes):
    (root / "masks").mkdir(parents=True)
    rows = []
    for name, status in statuses.items():
        if name in masks:
            Image.fromarray(masks[name]).save(root / "masks" / name)
        rows.append({"image": name, "output": name if name in masks else "", "status": status})
    pd.DataFrame(rows).to_csv(root / "segmentation.csv", index=False)
    (root / "manifest.json").write_text(json.dumps({"classes": classes}))


def test_evaluation_per_image_per_class_and_mean(tmp_path):
    pred = np.zeros((10, 10), np.uint8)
    pred[:5, :5], pred[:, 5:] = 1, 2        # class 1: top-left quarter; class 2: right half
    gt = np.zeros((10, 10), np.uint8)
    gt[:, :5], gt[:, 5:] = 1, 2             # class 1: left half
    _pred_folder(tmp_path / "pred", {"p.png": pred}, {"p.png": "ok", "q.png": "no_wings",
                                                      "r.png": "ok"}, ["fl", "fr"])
    (tmp_path / "gt").mkdir()
    Image.fromarray(gt).save(tmp_path / "gt" / "p.png")
    Image.fromarray(gt).save(tmp_path / "gt" / "q.png")  # no prediction: scores 0
    table = run_stage(EVALUATE, "--pred", tmp_path / "pred", "--gt", tmp_path / "gt")
    rows = table.set_index("image")
    assert rows.loc["p.png", "fl_iou"] == pytest.approx(0.5)
    assert rows.loc["p.png", "fl_dice"] == pytest.approx(2 * 25 / 75)
    assert rows.loc["p.png", "fr_iou"] == 1.0
    assert rows.loc["p.png", "union_iou"] == pytest.approx(75 / 100)
    assert rows.loc["q.png", "union_iou"] == 0 and "r.png" not in rows.index  # r has no ground truth
    assert "MEAN" not in rows.index  # the means have their own file: integer columns stay integers
    written = pd.read_csv(tmp_path / "pred" / "evaluation.csv")
    assert written.image.tolist() == ["p.png", "q.png"]
    summary = pd.read_csv(tmp_path / "pred" / "evaluation_summary.csv")
    assert len(summary) == 1 and summary.loc[0, "images"] == 2
    assert summary.loc[0, "union_iou"] == pytest.approx(0.375)
    assert pd.api.types.is_integer_dtype(summary["images"])
    # ground truth with the classes in another order is remapped by name
    swapped = np.where(gt == 1, 2, np.where(gt == 2, 1, 0)).astype(np.uint8)
    Image.fromarray(swapped).save(tmp_path / "gt" / "p.png")
    out = tmp_path / "remapped.csv"
    run_stage(EVALUATE, "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--gt-classes",
              "fr,fl", "--output", out)
    assert pd.read_csv(out).set_index("image").loc["p.png", "fl_iou"] == pytest.approx(0.5)


def test_evaluation_of_binary_masks_with_suffix(tmp_path):
    pred = np.zeros((8, 8), np.uint8)
    pred[2:6, 2:6] = 1
    _pred_folder(tmp_path / "pred", {"a.png": pred}, {"a.png": "ok"}, ["specimen"])
    (tmp_path / "gt").mkdir()
    gt = np.zeros((16, 16), bool)  # twice the size: the prediction is scaled to it
    gt[4:12, 4:16] = True
    Image.fromarray(gt).save(tmp_path / "gt" / "a_mask.png")  # 1-bit PNG like Leeds
    table = run_stage(EVALUATE, "--pred", tmp_path / "pred", "--gt", tmp_path / "gt",
                      "--gt-suffix", "_mask")
    assert table.set_index("image").loc["a.png", "union_iou"] == pytest.approx(64 / 96)
    proc = run_cli(EVALUATE, "--pred", tmp_path / "pred", "--gt", tmp_path / "gt")
    assert_one_line_error(proc, "no ground-truth mask", "--gt-suffix")


def rle_encode(mask: np.ndarray) -> str:
    """pycocotools' compressed RLE string, written independently of the decoder under test."""
    flat = mask.T.ravel().astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    chars = []
    for i, x in enumerate(counts):
        x = x - counts[i - 2] if i > 2 else x
        more = True
        while more:
            c, x = x & 0x1F, x >> 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    return "".join(chars)


def test_rle_decoding_matches_coco_format():
    # hand-worked: counts [1, 3, 2] on a 3 x 2 mask, runs going down the columns
    assert decode_rle({"size": [3, 2], "counts": "132"}).astype(int).tolist() == [[0, 1], [1, 0], [1, 0]]
    # delta-coded 4th count (7 - 40 = -33 -> "oN") and a 2-char count (40 -> "X1")
    expected = decode_rle({"size": [5, 11], "counts": [5, 40, 3, 7]})
    assert (decode_rle({"size": [5, 11], "counts": "5X13oN"}) == expected).all()
    square = decode_segmentation([[2, 2, 7, 2, 7, 7, 2, 7]], 10, 10)
    assert square[3:7, 3:7].all() and not square[0].any() and not square[:, 9].any()


def test_coco_and_mask_folder_annotations(tmp_path, demo_set):
    names = sorted(p.name for p in (demo_set / "masks").iterdir())[:3]
    images, anns = [], []
    for i, name in enumerate(names):
        lab = np.asarray(Image.open(demo_set / "masks" / name))
        images.append({"id": i, "file_name": name, "height": lab.shape[0], "width": lab.shape[1]})
        for k in np.unique(lab[lab > 0]):
            seg = {"size": list(lab.shape), "counts": rle_encode(lab == k)}
            anns.append({"id": len(anns), "image_id": i, "category_id": 10 + int(k), "segmentation": seg})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 10 + k, "name": n} for k, n in enumerate(WING_CLASSES, 1)]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    classes, items, skipped = load_coco(tmp_path / "coco.json", demo_set / "specimens")
    assert classes == list(WING_CLASSES) and len(items) == 3 and not skipped
    folder_items, _ = load_mask_folder(demo_set / "specimens", demo_set / "masks", WING_CLASSES)
    by_rel = {it.rel: it for it in folder_items}
    for item in items:
        labels, masks = instances(item, 4)
        ref_labels, ref_masks = instances(by_rel[item.rel], 4)
        assert labels.tolist() == ref_labels.tolist() and (masks == ref_masks).all()
    with pytest.raises(UserError, match="do not match"):
        load_coco(tmp_path / "coco.json", demo_set / "specimens", classes=["wing", "body"])
    with pytest.raises(UserError, match="label 4 but only 2 classes"):
        instances(folder_items[0], 2)


def test_horizontal_flip_swaps_left_and_right(demo_set):
    assert flip_permutation(WING_CLASSES).tolist() == [0, 2, 1, 4, 3]
    items, _ = load_mask_folder(demo_set / "specimens", demo_set / "masks", WING_CLASSES)
    plain = WingDataset(items[:1], WING_CLASSES, train=False)[0]
    flipped = WingDataset(items[:1], WING_CLASSES, train=True, hflip=1.0)[0]
    assert (flipped[0] == plain[0].flip(-1)).all()
    swap = {1: 2, 2: 1, 3: 4, 4: 3}
    ref = {swap[k]: m.flip(-1) for k, m in zip(plain[1]["labels"].tolist(), plain[1]["masks"])}
    got = dict(zip(flipped[1]["labels"].tolist(), flipped[1]["masks"]))
    assert got.keys() == ref.keys() and all((got[k] == ref[k]).all() for k in ref)
    box = flipped[1]["boxes"][0]
    assert (box[2] > box[0]) and (box[3] > box[1])
