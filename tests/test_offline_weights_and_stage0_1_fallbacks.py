"""A new user's first day: one command for the weights (fetch / check, offline mode),
stage 0 without a wing model (rembg fallback, coverage flags, contact sheet, palette masks),
labelme annotations for train_maskrcnn.py, and stage 1 refusing random features unless asked."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, assert_one_line_error, load_stage, run_cli, run_stage
from wingclr.cli import UserError

SEGMENT = "0-segmentation/segment.py"
CLUSTER = "1-clustering/cluster.py"
FETCH = "python -m wingclr.weights fetch"


# --- A. weights: fetch / check ------------------------------------------------------------------

def test_weights_catalogue_matches_the_stages_defaults_and_published_files():
    from wingclr.weights import __main__ as w

    vgg = w.entry("vgg16")
    assert vgg.url == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert vgg.checksum == "sha256:397923af" and w.entry("vgg16-397923af.pth").key == "vgg16"
    u2net = w.entry("u2net")
    assert u2net.url == "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx"
    assert u2net.file == "u2net.onnx" and u2net.checksum.startswith("md5:")
    assert w.entry("birefnet-general").url.endswith("/BiRefNet-general-epoch_244.onnx")
    assert w.entry("maskrcnn_resnet50_fpn").file == "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    assert w.entry("timm/resnet18").file == "timm/resnet18.safetensors"
    assert w.entry("maskrcnn_wings").howto  # made by the user, never downloaded
    with pytest.raises(UserError, match="unknown weights"):
        w.entry("resnet51")
    # --stage N fetches what the stage parsers use by default
    from wingclr.segment.methods import DEFAULT_REMBG

    defaults = {0: load_stage(SEGMENT).get_args_parser().get_default("rembg_model") or DEFAULT_REMBG,
                1: load_stage(CLUSTER).get_args_parser().get_default("backbone"),
                3: load_stage("3-training/train.py").get_args_parser().get_default("backbone")}
    arch = load_stage("0-segmentation/train_maskrcnn.py").get_args_parser().get_default("arch")
    assert set(w.STAGE_NEEDS[0]) == {defaults[0], arch, "maskrcnn_wings"}
    assert w.STAGE_NEEDS[1] == (defaults[1],) and w.STAGE_NEEDS[3] == w.STAGE_NEEDS[5] == (defaults[3],)


@pytest.fixture
def online(tmp_path, monkeypatch):
    """An empty weights folder with downloads switched on; network calls go to fakes."""
    from wingclr.weights import __main__ as w

    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("WINGCLR_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def fake_download(url, dest):
        calls.append(url)
        dest.write_bytes(b"content of " + url.encode())

    def fake_hf(hub_id, filename):
        calls.append(f"hf:{hub_id}/{filename}")
        path = tmp_path / "hf" / filename
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"safetensors of " + hub_id.encode())
        return path

    monkeypatch.setattr(w, "download_url", fake_download)
    monkeypatch.setattr(w, "hf_download", fake_hf)
    return tmp_path / "weights", calls


def test_fetch_downloads_verifies_checksums_and_check_lists_the_rest(online, monkeypatch, capsys):
    from wingclr.weights import __main__ as w

    folder, calls = online
    url = w.REMBG_RELEASES + "u2net.onnx"
    good = hashlib.md5(b"content of " + url.encode()).hexdigest()
    monkeypatch.setitem(w.REMBG_CHECKSUMS, "u2net", f"md5:{good}")
    assert w.main(["fetch", "--rembg-model", "u2net", "--backbone", "timm/resnet18"]) == 0
    assert (folder / "u2net.onnx").read_bytes() == b"content of " + url.encode()
    assert (folder / "timm" / "resnet18.safetensors").is_file()
    # a download that fails its checksum (the fake is not VGG16) is not kept
    assert w.main(["fetch", "--stage", "1"]) == 1
    printed = capsys.readouterr().out
    assert "checksum" in printed and "sha256:397923af" in printed
    assert not list(folder.glob("vgg16*")) and calls[-1].endswith("vgg16-397923af.pth")
    n = len(calls)
    assert w.main(["fetch", "u2net"]) == 0 and len(calls) == n  # present and verified: no download
    assert "present" in capsys.readouterr().out
    assert w.main(["check", "u2net", "timm/resnet18", "vgg16"]) == 1  # vgg16 missing
    lines = capsys.readouterr().out.splitlines()
    missing = [line for line in lines if line.startswith("missing")]
    assert len(missing) == 1 and "vgg16-397923af.pth" in missing[0]
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in missing[0]
    assert any(f"{FETCH} vgg16" in line for line in lines)
    # torchvision names carry the SHA-256 prefix of their content
    named = folder / f"thing-{hashlib.sha256(b'abc').hexdigest()[:8]}.pth"
    named.write_bytes(b"abc")
    assert w.verify(named, w.url_entry("thing", f"https://x/{named.name}", "").checksum) is True
    assert w.verify(named, "md5:0000") is False


def test_fetch_offline_fails_fast_and_errors_name_the_fetch_command(tmp_path, monkeypatch, capsys):
    from wingclr.weights import __main__ as w
    from wingclr.segment.rembg import model_path
    from wingclr.weights import resolve

    monkeypatch.setattr(w, "download_url", lambda *a: pytest.fail("downloaded while offline"))
    assert w.main(["fetch", "--stage", "1"]) == 2  # conftest sets WINGCLR_OFFLINE=1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "offline" in err and f"{FETCH} vgg16" in err
    assert "machine with internet" in err
    with pytest.raises(UserError, match=f"{FETCH} vgg16-397923af.pth"):
        resolve("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth")
    with pytest.raises(UserError) as e:
        model_path("u2net")
    assert f"{FETCH} u2net" in str(e.value) and 'rembg[cli]' in str(e.value)
    from wingclr.models import build_backbone

    with pytest.raises(UserError, match=f"{FETCH} timm/resnet18"):
        build_backbone("timm/resnet18", pretrained=True)
    # python -m wingclr.weights works as a command
    proc = subprocess.run([sys.executable, "-m", "wingclr.weights", "check", "--stage", "1"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "missing" in proc.stdout and "vgg16-397923af.pth" in proc.stdout


# --- B-E. stage 0 without a wing model ---------------------------------------------------------

def _photo(path, radius):
    img = np.full((150, 200, 3), 240, np.uint8)
    cv2.ellipse(img, (100, 75), (radius, radius * 3 // 5), 0, 0, 360, (30, 40, 50), -1)
    Image.fromarray(img).save(path)


def test_default_method_without_wing_model_cuts_out_specimens_with_rembg(rembg_home, tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "seg"
    photos.mkdir()
    _photo(photos / "blob.png", 60)
    _photo(photos / "speck.png", 5)   # a fragment: well under 2 % of the photo
    manifest = run_stage(SEGMENT, "--input", photos, "--output", out, "--no-progress")
    printed = capsys.readouterr().out
    note = [line for line in printed.splitlines() if "no wing Mask R-CNN" in line]
    assert len(note) == 1 and "rembg" in note[0] and "train_maskrcnn.py" in note[0]
    assert manifest["args"]["method"] == "rembg" and manifest["counts"]["low_coverage"] == 1
    table = pd.read_csv(out / "segmentation.csv", keep_default_na=False).set_index("image")
    assert table["method"].tolist() == ["rembg", "rembg"]
    assert table.loc["blob.png", "status"] == "ok" and table.loc["speck.png", "status"] == "low_coverage"
    assert "--min-coverage" in table.loc["speck.png", "reason"]
    for name in ("blob.png", "speck.png"):
        row = table.loc[name]
        assert row["coverage"] == pytest.approx(row["mask_area"] / (150 * 200), abs=1e-4)
    assert 0.1 < table.loc["blob.png", "coverage"] < 0.5 and table.loc["speck.png", "coverage"] < 0.02
    # the fragment stays out of images/ (stage 1's input) and waits in rejected/
    assert sorted(p.name for p in (out / "images").iterdir()) == ["blob.png"]
    assert (out / "rejected" / "images" / "speck.png").is_file()
    assert (out / "rejected" / "masks" / "speck.png").is_file()
    # masks are palette PNGs whose values are still the labels
    mask = Image.open(out / "masks" / "blob.png")
    assert mask.mode == "P" and set(np.unique(np.array(mask))) == {0, 1}
    assert tuple(mask.getpalette()[3:6]) != (0, 0, 0)
    # contact sheet: the flagged photo first, framed red
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    assert sheet.shape[:2] == (96 + 14, 2 * 96)
    assert tuple(sheet[1, 1]) == (220, 0, 0) and tuple(sheet[1, 96 + 1]) != (220, 0, 0)
    assert manifest["contact_sheets"] == ["contact_sheet.png"]
    # same command again: flagged photos count as done
    run_stage(SEGMENT, "--input", photos, "--output", out, "--no-progress")
    assert "0 to segment" in capsys.readouterr().out


def test_default_method_without_any_model_names_both_files_and_the_way_out(demo_set, tmp_path):
    proc = run_cli(SEGMENT, "--input", demo_set / "specimens", "--output", tmp_path / "o")
    assert_one_line_error(proc, "maskrcnn_wings.pth", "u2net.onnx", f"{FETCH} u2net",
                          "train_maskrcnn.py", "--method threshold")
    assert not (tmp_path / "o").exists()


def test_coverage_limits_and_contact_sheet_cap(tmp_path, monkeypatch):
    from wingclr.segment import sheet as sheets
    from wingclr.segment.stage import coverage_status

    assert coverage_status(0.001, (0.02, 0.95))[0] == "low_coverage"
    assert coverage_status(0.5, (0.02, 0.95)) == ("ok", "")
    status, reason = coverage_status(0.99, (0.02, 0.95))
    assert status == "high_coverage" and "--max-coverage" in reason
    monkeypatch.setattr(sheets, "PER_SHEET", 4)
    monkeypatch.setattr(sheets, "MAX_SHEETS", 2)
    rows = [{"image": f"p{i}.png", "output": "", "status": "no_wings" if i == 7 else "ok"}
            for i in range(10)]
    (tmp_path / "contact_sheet_5.png").write_bytes(b"stale")
    written = sheets.write_contact_sheets(tmp_path, rows, tmp_path / "photos")
    assert [p.name for p in written] == ["contact_sheet.png", "contact_sheet_2.png"]
    assert not (tmp_path / "contact_sheet_5.png").exists()
    first = np.asarray(Image.open(written[0]).convert("RGB"))
    assert tuple(first[1, 1]) == (220, 0, 0)  # the photo without wings comes first
    assert Image.open(written[1]).height > 96 + 14  # footer: photos left out


def test_palette_masks_read_back_as_labels(tmp_path):
    from wingclr.segment.annotations import read_label_mask
    from wingclr.segment.masks import write_label_png

    labels = np.zeros((20, 30), np.uint8)
    labels[2:8, 2:8], labels[10:18, 5:25], labels[0, 29] = 1, 3, 4
    write_label_png(tmp_path / "m.png", labels, 4)
    img = Image.open(tmp_path / "m.png")
    assert img.mode == "P" and (np.array(img) == labels).all()
    colours = {tuple(img.getpalette()[3 * k:3 * k + 3]) for k in range(5)}
    assert len(colours) == 5  # background and each class tell apart
    assert (read_label_mask(tmp_path / "m.png", 4) == labels).all()  # training reads the labels


# --- F. labelme annotations ------------------------------------------------------------------

def test_labelme_polygons_train_like_coco(tmp_path):
    from wingclr.segment.annotations import decode_segmentation, instances
    from wingclr.segment.train_maskrcnn import load_annotations

    photos, ann = tmp_path / "photos", tmp_path / "labelme"
    (photos / "a").mkdir(parents=True)
    (ann / "a").mkdir(parents=True)
    Image.new("RGB", (160, 120), (200, 200, 200)).save(photos / "a" / "x.jpg")
    Image.new("RGB", (160, 120), (200, 200, 200)).save(photos / "y.png")
    ellipse = cv2.ellipse2Poly((50, 60), (30, 20), 0, 0, 360, 5).astype(float).tolist()
    shapes = [{"label": "forewing_left", "points": ellipse, "shape_type": "polygon"},
              {"label": "hindwing_left", "points": [[100, 20], [140, 90]], "shape_type": "rectangle"},
              {"label": "forewing_left", "points": [[5, 5], [15, 5], [10, 12]], "shape_type": "polygon"}]
    (ann / "a" / "x.json").write_text(json.dumps({
        "shapes": shapes, "imagePath": "../../photos/a/x.jpg", "imageHeight": 120, "imageWidth": 160}))
    (ann / "y.json").write_text(json.dumps({"shapes": shapes[1:2], "imagePath": "y.png",
                                            "imageHeight": None, "imageWidth": None}))
    (ann / "gone.json").write_text(json.dumps({"shapes": shapes[:1], "imagePath": "gone.png"}))
    args = argparse.Namespace(annotations=ann, images=photos, classes=None, masks=None, mask_suffix="")
    classes, items, skipped = load_annotations(args, None)
    assert classes == ["forewing_left", "hindwing_left"]
    assert [it.rel for it in items] == ["a/x.jpg", "y.png"] and [s[0] for s in skipped] == ["gone.json"]
    labels, masks = instances(items[0], 2)
    assert labels.tolist() == [1, 2] and masks.shape == (2, 120, 160)
    flat = [v for p in ellipse for v in p]
    expected = decode_segmentation([flat, [5, 5, 15, 5, 10, 12]], 120, 160)
    assert (masks[0] == expected).all()  # rasterised exactly like COCO polygons, shapes merged
    assert masks[1][20:90, 100:140].all() and not masks[1][:, :95].any()
    args.classes = ["forewing_left", "forewing_right", "hindwing_left", "hindwing_right"]
    assert load_annotations(args, None)[0] == args.classes  # --classes keeps its label order
    args.classes = ["wing"]
    with pytest.raises(UserError, match="forewing_left.*--classes"):
        load_annotations(args, None)


# --- G. stage 1 refuses random features unless asked --------------------------------------------

def test_feature_space_silhouette_beside_the_umap_one():
    from sklearn.metrics import silhouette_score

    from wingclr.cluster.clustering import cluster

    rng = np.random.default_rng(0)
    emb = np.concatenate([c + rng.normal(0, 0.3, (15, 3)) for c in ((0, 0, 0), (9, 0, 0), (0, 9, 0))])
    feats = rng.normal(size=(45, 16)).astype(np.float32)  # features in which nothing separates
    result = cluster(emb.astype(np.float32), 5, features=feats)
    kept = result.labels >= 0
    assert result.feature_silhouette == pytest.approx(silhouette_score(feats[kept], result.labels[kept]),
                                                      abs=1e-5)
    assert result.silhouette > 0.7 > result.feature_silhouette
    line = result.summary()
    assert "in the 3-D UMAP space" in line and "in feature space" in line
    assert result.record()["silhouette_features"] == round(result.feature_silhouette, 4)


def test_random_features_are_refused_unless_allowed_then_marked(demo_set, tmp_path, monkeypatch, capsys):
    common = ("--input", demo_set / "specimens", "--input-size", "32", "--num-workers", "0",
              "--no-show", "--quiet", "--min-cluster-size", "6", "--yes")
    proc = run_cli(CLUSTER, *common, "--output", tmp_path / "a", "--pretrained", "none")
    assert_one_line_error(proc, "--allow-random-features", f"{FETCH} vgg16", "2-create_dataset")
    proc = run_cli(CLUSTER, *common, "--output", tmp_path / "b")  # ImageNet weights missing
    assert_one_line_error(proc, "vgg16-397923af.pth", f"{FETCH} vgg16-397923af.pth", "2-create_dataset")

    import wingclr.cluster.stage as stage

    def three_blobs(features, **kwargs):  # stands in for UMAP (no numba compile in this test)
        rng = np.random.default_rng(0)
        return (np.arange(len(features))[:, None] % 3 * 10.0 + rng.normal(0, 0.2, (len(features), 3))
                ).astype(np.float32)

    monkeypatch.setattr(stage, "project_umap", three_blobs)
    manifest = run_stage(CLUSTER, *common, "--output", tmp_path / "c", "--pretrained", "none",
                         "--allow-random-features")
    printed = capsys.readouterr().out
    assert printed.count("WARNING: random (untrained) vgg16 features") >= 2
    assert manifest["random_features"] is True and manifest["counts"]["clusters"] == 3
    assert manifest["silhouette_umap"] == manifest["silhouette"] > 0.8
    assert manifest["silhouette_features"] is not None and manifest["silhouette_features"] < 0.8
    assert "in the 3-D UMAP space" in printed and "in feature space" in printed
