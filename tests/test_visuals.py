"""Stage 4 and 5 pictures: morphospace, contact sheets, nearest neighbours, Grad-CAM and report.html."""

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import load_stage, run_stage, trust_weights
from wingclr.models import build_backbone, channel_stats

EVALUATE = "5-evaluation/evaluate.py"
MEAN, STD = channel_stats(3, [0, 1, 2])
META = {"backbone": "resnet18", "in_chans": 3, "rgb_bands": [0, 1, 2], "bands": None,
        "input_size": 64, "mean": MEAN, "std": STD, "background": [255, 255, 255],
        "scale16": "full"}


def rgba_specimen(path: Path, h: int = 40, w: int = 50, seed: int = 0) -> np.ndarray:
    """A transparent PNG: a coloured ellipse (the specimen) on alpha 0; returns its alpha."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    alpha = ((((yy - h / 2) / (h * 0.35)) ** 2 + ((xx - w / 2) / (w * 0.4)) ** 2) < 1) * 255
    rgb = rng.integers(0, 255, (h, w, 3))
    rgb[..., 0] = 200 * (xx > w / 2)
    arr = np.dstack([rgb, alpha]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGBA").save(path)
    return alpha.astype(np.uint8)


@pytest.fixture(scope="module")
def specimens(tmp_path_factory):
    """12 RGBA specimens in 3 classes: (root, relative paths, classes)."""
    root = tmp_path_factory.mktemp("specimens")
    rels, classes = [], []
    for i in range(12):
        cls = f"class_{i % 3}"
        rel = f"{cls}/s{i:02d}.png"
        rgba_specimen(root / rel, 30 + i, 44, seed=i)
        rels.append(rel)
        classes.append(cls)
    return root, rels, classes


# thumbnails and morphospace

def test_thumbnails_keep_alpha_and_show_the_rgb_bands(tmp_path):
    import tifffile

    from wingclr.thumbnails import display_bands, read_rgba, thumbnail

    alpha = rgba_specimen(tmp_path / "a.png")
    thumb = thumbnail(tmp_path / "a.png", 20)
    assert thumb.shape == (16, 20, 4) and thumb[0, 0, 3] == 0 and thumb[8, 10, 3] == 255
    assert (read_rgba(tmp_path / "a.png")[..., 3] == alpha).all()
    cube = np.stack([np.full((8, 10), v, np.uint8) for v in (10, 20, 30, 40, 50)])  # 5 bands
    tifffile.imwrite(tmp_path / "cube.tif", cube)
    bands = display_bands({"bands": [4, 3, 2, 1], "rgb_bands": [3, 1, 0]})  # R = file band 1
    assert bands == (1, 3, 4)
    shown = read_rgba(tmp_path / "cube.tif", bands)
    assert shown.shape == (8, 10, 4) and shown[0, 0].tolist() == [20, 40, 50, 255]
    gray = read_rgba(tmp_path / "cube.tif", display_bands({"bands": None, "rgb_bands": []}))
    assert gray[0, 0, :3].tolist() == [10] * 3
    assert thumbnail(tmp_path / "missing.png", 12).shape == (12, 12, 4)  # placeholder


def test_grid_pick_keeps_one_specimen_per_cell_nearest_its_centre():
    from wingclr.morphospace import grid_pick

    xy = np.array([[0.0, 0.0], [0.45, 0.5], [0.2, 0.9], [10.0, 10.0], [9.9, 9.5], [5.0, 0.1]])
    chosen, ij, side, (nx, ny) = grid_pick(xy, cells=10)
    assert side == pytest.approx(1.0) and (nx, ny) == (10, 10)
    assert len({tuple(c) for c in ij}) == len(chosen)  # one per cell
    assert 1 in chosen and 0 not in chosen and 2 not in chosen  # (0.45, 0.5) is nearest (0.5, 0.5)
    assert {3, 4} & set(chosen.tolist()) and not {3, 4} <= set(chosen.tolist())
    many = np.random.default_rng(0).normal(size=(500, 2))
    chosen, ij, _, _ = grid_pick(many, cells=12)
    assert len(chosen) < 144 and len(np.unique(ij, axis=0)) == len(chosen)


def fake_stage4(run: Path, root: Path, rels: list, classes: list, pcs: int) -> None:
    rng = np.random.default_rng(1)
    run.mkdir(parents=True)
    ids = pd.DataFrame({"image": rels, "cluster": classes, "split": "train"})
    scores = pd.DataFrame(rng.normal(size=(len(rels), pcs)), columns=[f"PC{i + 1}" for i in range(pcs)])
    pd.concat([ids, scores], axis=1).to_csv(run / "embeddings_pca.csv", index=False)
    ratio = np.array([0.4, 0.3, 0.2, 0.1, 0.004][:pcs])
    pd.DataFrame({"component": [f"PC{i + 1}" for i in range(pcs)], "explained_variance_ratio": ratio,
                  "cumulative": ratio.cumsum(), "kept": ratio > 0.005}).to_csv(
        run / "pca_variance.csv", index=False)


def test_morphospace_pc1_pc2_and_pc3_pc4_from_stage4_files(specimens, tmp_path):
    from wingclr.morphospace import write_morphospace

    root, rels, classes = specimens
    fake_stage4(tmp_path / "four", root, rels, classes, 4)
    written = write_morphospace(tmp_path / "four", root, META)
    assert [p.name for p in written] == ["morphospace.png", "morphospace_pc3_pc4.png"]
    assert all(Image.open(p).size[0] > 500 for p in written)
    fake_stage4(tmp_path / "two", root, rels, classes, 2)
    assert [p.name for p in write_morphospace(tmp_path / "two", root, META)] == ["morphospace.png"]
    # on its own, a run folder finds its images through manifest.json (stage 2's unlabeled/)
    from wingclr.outputs import write_manifest

    data = tmp_path / "2-dataset"
    data.mkdir()
    (data / "split.csv").write_text("image,cluster,split\n")
    (data / "unlabeled").symlink_to(root, target_is_directory=True)
    write_manifest(tmp_path / "two", "4-embed", {"data": str(data)}, counts={}, model=META)
    assert write_morphospace(tmp_path / "two") == [tmp_path / "two" / "morphospace.png"]


# contact sheets

def test_contact_sheets_put_the_centre_first_and_outliers_apart(specimens, tmp_path):
    from wingclr.contact_sheets import centre_order, spread_sample, write_contact_sheets, write_stage1_sheets

    feats = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [1.0, 1.0]])
    order, dist = centre_order(feats)
    assert order.tolist() == [3, 2, 0, 1] and (np.diff(dist[order]) >= 0).all() and dist.max() < 1
    assert spread_sample(10, 4).tolist() == [0, 3, 6, 9] and spread_sample(3, 4).tolist() == [0, 1, 2]
    root, rels, classes = specimens
    groups = list(classes)
    groups[0] = groups[5] = "-1"
    x = np.random.default_rng(0).normal(size=(12, 8))
    written = write_contact_sheets(x, groups, [root / r for r in rels], tmp_path / "sheets", "run",
                                   max_per_sheet=2)
    assert [p.name for p in written] == ["sheet_class_0.png", "sheet_class_1.png",
                                         "sheet_class_2.png", "sheet_outliers.png"]
    # stage 1: clusters.csv + features.npy / features_index.csv in another order
    s1 = tmp_path / "1-clusters"
    s1.mkdir()
    pd.DataFrame({"image": rels, "cluster": [0, 0, 1, 1, -1, 1, 0, 1, 0, 1, 0, -1]}).to_csv(
        s1 / "clusters.csv", index=False)
    pd.DataFrame({"image": rels[::-1], "size": 1, "mtime_ns": 1, "ok": True, "error": ""}).to_csv(
        s1 / "features_index.csv", index=False)
    np.save(s1 / "features.npy", x[::-1].astype(np.float32))
    names = [p.name for p in write_stage1_sheets(s1, root)]
    assert names == ["sheet_0.png", "sheet_1.png", "sheet_outliers.png"]


# nearest neighbours

def test_neighbours_are_cosine_nearest_without_the_query(specimens, tmp_path):
    from wingclr.evaluate.neighbours import cosine_neighbours, match_queries, pick_queries, write_neighbours

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    idx, dist = cosine_neighbours(x, [0, 4], 3)
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    for r, q in enumerate([0, 4]):
        d = 1 - z @ z[q]
        d[q] = np.inf
        assert idx[r].tolist() == np.argsort(d)[:3].tolist()
        np.testing.assert_allclose(dist[r], np.sort(d)[:3], atol=1e-9)
    pool = np.arange(12) % 2 == 0
    assert (cosine_neighbours(x, [1], 20, pool)[0] % 2 == 0).all()
    root, rels, classes = specimens
    val = np.arange(12) >= 6
    q = pick_queries(classes, 2, seed=3, prefer=val)
    assert len(q) == 6 and val[q].all() and (q == pick_queries(classes, 2, seed=3, prefer=val)).all()
    assert sorted(np.asarray(classes)[q]) == sorted(["class_0", "class_1", "class_2"] * 2)
    rows, missing = match_queries(rels, ["class_1/s04.png", "s07", "nope.png"])
    assert rows.tolist() == [4, 7] and missing == ["nope.png"]
    images = [root / r for r in rels]
    alone = write_neighbours(x, classes, images, tmp_path / "one.png", k=3, queries=[0, 1])
    both = write_neighbours(x, classes, images, tmp_path / "two.png", k=3, queries=[0, 1],
                            baseline=("frozen ImageNet", rng.normal(size=(12, 5))))
    assert Image.open(both).size[0] > Image.open(alone).size[0] * 1.5
    assert abs(Image.open(both).size[1] - Image.open(alone).size[1]) <= 32  # title wraps less


# Grad-CAM

@pytest.mark.parametrize("n_classes", [2, 3])
def test_probe_head_reproduces_the_sklearn_probe(n_classes):
    from wingclr.evaluate.gradcam import ProbeHead
    from wingclr.probe import fit_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)) * [1, 5, 0.1, 2, 1, 1] + 3
    y = np.array(["abc"[i % n_classes] for i in range(60)])
    x[:, 0] += (y == "b") * 2
    pipe = fit_probe(x, y, 1.0)
    head = ProbeHead(pipe)
    with torch.no_grad():
        logits = head(torch.from_numpy(x).float())
    assert (head.classes[logits.argmax(1).numpy()] == pipe.predict(x)).all()
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), pipe.predict_proba(x), atol=1e-4)


def test_gradcam_map_has_the_image_size_and_is_zero_off_the_specimen(tmp_path):
    from wingclr.evaluate.gradcam import ClassTarget, ProbeHead, SimilarityTarget, cam_map, target_layers
    from wingclr.probe import fit_probe

    alpha = rgba_specimen(tmp_path / "s.png", 40, 50)
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", False)
    assert target_layers(backbone)[0][0] is backbone.layer4[-1]
    rng = np.random.default_rng(0)
    head = ProbeHead(fit_probe(rng.normal(size=(20, dim)), np.array(["a", "b"] * 10), 1.0))
    for model, target in ((torch.nn.Sequential(backbone, head), ClassTarget(1)),
                          (backbone, SimilarityTarget(rng.normal(size=dim)))):
        heat, rgba, out = cam_map(model, tmp_path / "s.png", META, target)
        assert heat.shape == (40, 50) == rgba.shape[:2] and heat.dtype == np.float32
        assert heat.min() >= 0 and heat.max() <= 1 and (heat[alpha == 0] == 0).all()
    assert out.shape == (dim,)
    classifier = torch.nn.Sequential(backbone, head)
    by_default, _, logits = cam_map(classifier, tmp_path / "s.png", META, None)  # predicted class
    chosen, _, _ = cam_map(classifier, tmp_path / "s.png", META, ClassTarget(int(logits.argmax())))
    np.testing.assert_allclose(by_default, chosen, atol=1e-6)


def test_gradcam_fast_backward_equals_the_full_one_and_survives_inplace_layers(tmp_path):
    from wingclr.evaluate.gradcam import SimilarityTarget, _grad_cam, cam_map, model_input

    rgba_specimen(tmp_path / "s.png", 40, 50)
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", False)
    x, _ = model_input(tmp_path / "s.png", {**META, "input_size": 96})
    target = SimilarityTarget(np.random.default_rng(0).normal(size=dim))
    fast, out_fast = _grad_cam(backbone, [backbone.layer4[-1]], None, x, target, fast=True)
    full, out_full = _grad_cam(backbone, [backbone.layer4[-1]], None, x, target, fast=False)
    np.testing.assert_allclose(fast, full, atol=1e-5)
    assert torch.allclose(out_fast, out_full) and fast.max() > 0
    conv = torch.nn.Conv2d(3, 4, 3)
    tiny = torch.nn.Sequential(conv, torch.nn.ReLU(inplace=True), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())
    heat, _, _ = cam_map(tiny, tmp_path / "s.png", META, SimilarityTarget(np.ones(4)),
                         layers=([conv], None))
    assert heat.shape == (40, 50)


def test_target_layers_of_timm_and_torchvision_networks(tmp_path):
    from wingclr.evaluate.gradcam import SimilarityTarget, cam_map, target_layers

    lite, _ = build_backbone("timm/efficientnet_lite0", False)
    assert target_layers(lite)[0][0] is lite.conv_head
    tv, _ = build_backbone("efficientnet_b0", False)
    assert target_layers(tv)[0][0] is tv.features[-1]
    vit, dim = build_backbone("timm/vit_tiny_patch16_224", False, image_size=32)
    layers, reshape = target_layers(vit)
    assert layers[0] is vit.blocks[-1].norm1 and reshape is not None
    alpha = rgba_specimen(tmp_path / "v.png", 30, 30)
    heat, _, _ = cam_map(vit, tmp_path / "v.png", {**META, "input_size": 32},
                         SimilarityTarget(np.ones(dim)))
    assert heat.shape == (30, 30) and (heat[alpha == 0] == 0).all() and heat.max() <= 1


# stage 5 end to end: pictures and report.html

def fake_trained_run(emb_root: Path, dataset_dir: Path) -> Path:
    """A stage 4 folder whose checkpoint exists (random-init resnet18 at 32 px, really embedded)."""
    from wingclr.embed.stage import write_matrix_csv
    from wingclr.features import embed_images
    from wingclr.outputs import write_manifest

    meta = {**META, "input_size": 32, "settings": {"batch_size": 8, "epochs": 1, "temperature": 0.5}}
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18", False)
    name = "simclr_bs_8_nepochs_1_temp_0.5"
    ckpt = emb_root.parent / "3-training" / name / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    torch.save({"wingclr": meta, "state_dict": state}, ckpt)
    split = pd.read_csv(dataset_dir / "split.csv", dtype=str)[["image", "cluster", "split"]]
    feats, ok = embed_images(backbone, meta, dataset_dir / "unlabeled", split.image.tolist(),
                             num_workers=0, progress=False)
    out = emb_root / name
    out.mkdir(parents=True)
    np.save(out / "embeddings.npy", feats)
    write_matrix_csv(out / "embeddings.csv", split, feats, [f"emb_{i}" for i in range(feats.shape[1])])
    write_manifest(out, "4-embed", {"checkpoint": str(ckpt), "data": str(dataset_dir)},
                   counts={"images": len(split)}, model=meta)
    return out


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.ids, self.tags = [], set(), 0

    def handle_starttag(self, tag, attrs):
        self.tags += 1
        attrs = dict(attrs)
        self.ids.add(attrs.get("id"))
        self.refs += [attrs[a] for a in ("src", "href") if attrs.get(a)]


def check_report(page: Path) -> Links:
    """Every referenced file exists, every #anchor is on the page, nothing is fetched online."""
    from urllib.parse import unquote

    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    assert parser.tags > 20
    for ref in parser.refs:
        assert not ref.startswith(("http:", "https:", "//")), ref
        if ref.startswith("#"):
            assert unquote(ref[1:]) in {unquote(i) for i in parser.ids if i}, ref
        elif not ref.startswith("data:"):
            assert (page.parent / unquote(ref)).is_file(), ref
    return parser


@pytest.fixture(scope="module")
def trained_run(dataset_dir, tmp_path_factory) -> Path:
    return fake_trained_run(tmp_path_factory.mktemp("visuals") / "4-embeddings", dataset_dir)


def test_stage5_draws_pictures_and_a_report_page(trained_run, dataset_dir, tmp_path, capsys):
    emb = trained_run
    out = tmp_path / "5-evaluation"
    common = ("--runs", emb, "--output", out, "--baselines", "none", "--no-umap", "--num-workers",
              "0", "--neighbours", "3")
    args = (*common, "--gradcam", "2")
    run_stage(EVALUATE, *args)
    run_dir = out / emb.name
    assert (run_dir / "neighbours.png").is_file()
    classes = sorted(pd.read_csv(dataset_dir / "split.csv", dtype=str).cluster.unique())
    assert sorted(p.name for p in (run_dir / "sheets").glob("*.png")) == [f"sheet_{c}.png" for c in classes]
    assert len(list((run_dir / "gradcam").glob("*.png"))) == 2
    page = out / "report.html"
    parser = check_report(page)
    text = page.read_text(encoding="utf-8")
    assert emb.name in text and "confusion_matrix.png" in text and "<th>precision</th>" in text
    assert sum("gradcam/" in r for r in parser.refs) >= 2 and sum("sheets/" in r for r in parser.refs) >= 5
    assert "pictures in" in capsys.readouterr().out
    run_stage(EVALUATE, *args)  # same settings: pictures kept, page rewritten
    again = capsys.readouterr().out
    assert "pictures in" not in again and "report.html" in again
    run_stage(EVALUATE, *common)  # without --gradcam: the figures stay
    assert "pictures in" not in capsys.readouterr().out
    assert len(list((run_dir / "gradcam").glob("*.png"))) == 2
    run_stage(EVALUATE, *common[:-1], "0")  # --neighbours 0: neighbours.png goes, sheets redrawn
    assert "pictures in" in capsys.readouterr().out and not (run_dir / "neighbours.png").exists()
    check_report(page)


def test_neighbours_beside_frozen_imagenet_when_its_weights_are_there(trained_run, tmp_path,
                                                                    monkeypatch):
    from wingclr.thumbnails import Mosaic

    torch.manual_seed(123)
    state, _ = build_backbone("resnet18", False)
    state = state.state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    (tmp_path / "weights").mkdir()
    torch.save(state, tmp_path / "weights" / "resnet18-f37072fd.pth")
    trust_weights(tmp_path / "weights" / "resnet18-f37072fd.pth")  # a stand-in: not the published file
    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(tmp_path / "weights"))
    out = tmp_path / "5-evaluation"
    run_stage(EVALUATE, "--runs", trained_run, "--no-umap", "--num-workers", "0", "--neighbours",
              "2", "--output", out, "--baselines", "imagenet")
    width = Image.open(out / trained_run.name / "neighbours.png").size[0]
    assert width == Mosaic(1, 1 + 2 + 1 + 2, 96).canvas.shape[1]  # query, 2 + gap + 2 neighbours
    page = out / "report.html"
    check_report(page)
    assert "[baseline] ImageNet resnet18" in page.read_text(encoding="utf-8")


def test_visual_flags_refuse_negative_counts():
    parser = load_stage(EVALUATE).get_args_parser()
    assert parser.parse_args(["--gradcam", "3"]).gradcam == 3
    assert parser.parse_args([]).neighbours == 5 and parser.parse_args([]).gradcam == 0
    for flag in ("--gradcam", "--neighbours"):
        with pytest.raises(SystemExit):
            parser.parse_args([flag, "-1"])
