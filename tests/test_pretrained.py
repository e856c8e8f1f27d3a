"""Real ImageNet weights offline (the lite0 package -> timm), timm backbones in every stage, recipes."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SHARED_DATA, TINY_TRAIN, assert_one_line_error, run_cli, run_stage

LITE0 = "timm/efficientnet_lite0"
MONARCH = SHARED_DATA / "leeds" / "images" / "0010018.jpg"


def test_converter_maps_every_key_onto_timm_lite0():
    import timm

    from wingclr.weights.lite0 import package_file, to_timm

    state = to_timm(torch.load(package_file(), map_location="cpu", weights_only=True))
    model = timm.create_model("efficientnet_lite0")
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state)  # strict: shapes fit too


@pytest.mark.skipif(not MONARCH.exists(), reason="shared sample photos not on this machine")
def test_lite0_imagenet_weights_classify_a_monarch(lite0_weights, monkeypatch):
    from wingclr.data import ReadSpec
    from wingclr.models import rgb_stats, timm_model

    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(lite0_weights))
    model = timm_model(LITE0, pretrained=True, num_classes=1000).eval()
    image = ReadSpec(size=224, channels=3).load(MONARCH)  # the pipeline's own reader, letterboxed
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in rgb_stats(LITE0))
    with torch.no_grad():
        p = model((x - mean) / std).softmax(1)[0]
    assert p.argmax().item() == 323  # ImageNet "monarch butterfly"
    assert p[323] > 0.85


def test_pretrained_timm_backbone_loads_file_from_weights_folder(lite0_weights, monkeypatch):
    from wingclr.models import build_backbone

    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(lite0_weights))
    pre, dim = build_backbone(LITE0, pretrained=True)
    torch.manual_seed(0)
    rnd, _ = build_backbone(LITE0, pretrained=False)
    assert dim == 1280
    torch.testing.assert_close(pre.conv_stem.weight, torch.load(
        lite0_weights / "timm" / "efficientnet_lite0.pth", weights_only=True)["conv_stem.weight"])
    assert not torch.equal(pre.conv_stem.weight, rnd.conv_stem.weight)
    four, _ = build_backbone(LITE0, pretrained=True, in_chans=4, rgb_bands=[0, 1, 2])
    torch.testing.assert_close(four.conv_stem.weight[:, :3], pre.conv_stem.weight)  # RGB filters kept


def test_missing_timm_weights_offline_name_the_file_and_the_way_out():
    from wingclr.cli import UserError
    from wingclr.models import build_backbone

    with pytest.raises(UserError) as e:
        build_backbone("timm/resnet18", pretrained=True)
    msg = str(e.value)
    assert "resnet18.safetensors" in msg and "weights" in msg and "huggingface.co/timm/resnet18" in msg
    assert "--pretrained none" in msg and "\n" not in msg


def test_backbone_flag_accepts_timm_models_and_rejects_unknown_ones():
    from wingclr.models import check_backbone, rgb_stats

    assert check_backbone("resnet50") == "resnet50" and check_backbone(LITE0) == LITE0
    for bad in ("timm/not_a_model", "resnet51", "timm/"):
        with pytest.raises(argparse.ArgumentTypeError):
            check_backbone(bad)
    assert rgb_stats("timm/inception_v3")[0] == (0.5, 0.5, 0.5)  # the model's own statistics
    assert rgb_stats("resnet18")[0] == (0.485, 0.456, 0.406)


def test_timm_backbone_through_stages_3_4_5_with_its_embedding_size(dataset_dir, tmp_path, lite0_weights,
                                                                    monkeypatch, capsys):
    args = [a for a in TINY_TRAIN]
    args[args.index("resnet18")] = LITE0
    run_stage("3-training/train.py", "--data", dataset_dir, "--output", tmp_path / "runs", "--epochs", "1",
              "--run-name", "lite0", *args)
    manifest = json.loads((tmp_path / "runs" / "lite0" / "manifest.json").read_text())
    assert manifest["model"]["backbone"] == LITE0 and manifest["model"]["embedding_dim"] == 1280
    run_stage("4-embed/embed.py", "--checkpoints", tmp_path / "runs" / "lite0", "--data", dataset_dir,
              "--output", tmp_path / "emb", "--quiet")
    table = pd.read_csv(tmp_path / "emb" / "lite0" / "embeddings.csv")
    assert sum(c.startswith("emb_") for c in table.columns) == 1280 and len(table) == 30
    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(lite0_weights))  # the real ImageNet baseline
    capsys.readouterr()
    run_stage("5-evaluation/evaluate.py", "--embeddings", tmp_path / "emb", "--data", dataset_dir,
              "--output", tmp_path / "eval", "--baselines", "imagenet", "--no-umap")
    row = pd.read_csv(tmp_path / "eval" / "evaluation.csv").iloc[0]
    assert 0 <= row["imagenet_accuracy"] <= 1
    assert f"frozen ImageNet: linear {row['imagenet_accuracy']:.3f}" in capsys.readouterr().out


def test_stage1_timm_features_record_their_size(demo_set, tmp_path):
    out = tmp_path / "clusters"
    run_stage("1-clustering/cluster.py", "--input", demo_set / "clusters", "--output", out,
              "--backbone", LITE0, "--pretrained", "none", "--allow-random-features", "--input-size", "32",
              "--num-workers", "0",
              "--min-cluster-size", "5", "--yes", "--no-show")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["args"]["backbone"] == LITE0 and manifest["features"]["dim"] == 1280
    assert np.load(out / "features.npy").shape == (30, 1280)
    clusters = pd.read_csv(out / "clusters.csv")
    sheets = {p.name for p in out.glob("sheet_*.png")}  # one contact sheet per cluster
    assert {f"sheet_{k}.png" for k in set(clusters.cluster) if k != "outliers"} <= sheets


# --- recipes -------------------------------------------------------------------------------------

def train_args(*argv):
    from conftest import load_stage

    from wingclr.train.recipes import resolve
    from wingclr.train.settings import TrainSettings

    args = load_stage("3-training/train.py").get_args_parser().parse_args([str(a) for a in argv])
    return resolve(TrainSettings.from_args(args))[0]


def test_phenotype_recipe_is_the_original_pipeline_and_flags_override_it():
    args = train_args("--batch-size", "64")
    assert args.recipe == "phenotype"
    assert (args.min_scale, args.cj_prob, args.blur_prob, args.vf_prob, args.rr_prob) == (0.5, 0, 0, 0.5, 0.5)
    assert (args.optimizer, args.lr, args.lr_scaling, args.warmup_epochs, args.balance) == \
        ("sgd", 0.01, "none", 0, "none")
    args = train_args("--recipe", "simclr", "--cj-prob", "0.3", "--balance", "clusters")
    assert (args.cj_prob, args.balance, args.min_scale, args.blur_prob, args.lr) == (0.3, "clusters", 0.08, 0.5, 0.06)


def test_cpu_recipe_is_the_demo_and_benchmark_recipe_defined_once():
    import re

    from conftest import REPO
    args = train_args("--recipe", "cpu", "--batch-size", "64")
    assert (args.optimizer, args.lr, args.lr_scaling, args.min_scale, args.blur_prob, args.cj_prob) == \
        ("adam", 2e-3, "sqrt", 0.3, 0.0, 0.8)
    demo = re.search(r"^demo:.*?(?=^\S)", (REPO / "Makefile").read_text(), re.S | re.M).group(0)
    assert "--recipe cpu" in demo and "--optimizer" not in demo and "--min-scale" not in demo
    bench = (REPO / "benchmarks" / "probe_common.py").read_text()
    assert '"train": "--recipe cpu"' in bench and "--min-scale" not in bench and "2e-3" not in bench


@pytest.mark.parametrize("flag,value", [("--rr-prob", "1.5"), ("--cj-prob", "-0.1"), ("--lr", "nan"),
                                        ("--warmup-epochs", "-1")])
def test_recipe_flags_out_of_range_are_refused_before_any_work(flag, value, dataset_dir, tmp_path):
    proc = run_cli("3-training/train.py", "--data", dataset_dir, "--output", tmp_path, *TINY_TRAIN, flag, value)
    assert_one_line_error(proc, flag)
    assert not any(tmp_path.iterdir())


def test_recipe_reaches_augmentation_sampler_and_learning_rate(dataset_dir, tmp_path):
    from wingclr.train.loaders import TwoViews

    common = ("--data", dataset_dir, "--output", tmp_path, "--epochs", "1", "--augment-on", "device",
              "--cache-dir", tmp_path / "cache", *TINY_TRAIN)
    run_stage("3-training/train.py", *common, "--run-name", "pheno")
    ckpt = torch.load(tmp_path / "pheno" / "pheno.ckpt", map_location="cpu", weights_only=False)
    view = ckpt["hyper_parameters"]["augment"][0]
    assert (view["cj_prob"], view["rr_prob"], view["vf_prob"], view["min_scale"]) == (0.0, 0.5, 0.5, 0.5)
    assert ckpt["hyper_parameters"]["lr"] == 0.01  # not scaled by sqrt(8 / 256)
    manifest = json.loads((tmp_path / "pheno" / "manifest.json").read_text())
    assert manifest["args"]["recipe"] == "phenotype" and manifest["args"]["balance"] == "none"
    run_stage("3-training/train.py", *common, "--run-name", "ssl", "--recipe", "simclr")
    ckpt = torch.load(tmp_path / "ssl" / "ssl.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["lr"] == pytest.approx(0.06 * (8 / 256) ** 0.5)
    assert ckpt["hyper_parameters"]["augment"][0]["cj_prob"] == 0.8
    from wingclr.train.augment import AugmentConfig

    lightly_steps = TwoViews([AugmentConfig(input_size=32, rr_prob=0.5)] * 2, [[0, 1, 2]] * 2, 3)
    steps = lightly_steps._make(lightly_steps.cfgs[0])[0].transform.transforms
    rotate = next(s for s in steps if type(s).__name__ == "RandomRotate")
    assert rotate.prob == 0.5 and rotate.angle == 90


def test_batched_rotation_turns_views_counter_clockwise_like_pil():
    from PIL import Image

    from wingclr.train.augment import AugmentConfig, BatchAugment

    img = np.random.default_rng(0).integers(0, 256, (1, 3, 16, 16), dtype=np.uint8)
    cfg = AugmentConfig(input_size=16, min_scale=1.0, hf_prob=0, cj_prob=0, gray_prob=0, blur_prob=0,
                        rr_prob=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    out = BatchAugment(cfg, 3)(torch.from_numpy(img))[0]
    pil = np.asarray(Image.fromarray(img[0].transpose(1, 2, 0)).rotate(90)).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(out.numpy(), pil, atol=1e-5)
    never = BatchAugment(AugmentConfig(input_size=16, min_scale=1.0, hf_prob=0, cj_prob=0, gray_prob=0,
                                       blur_prob=0, rr_prob=0.0, mean=(0, 0, 0), std=(1, 1, 1)), 3)
    np.testing.assert_allclose(never(torch.from_numpy(img))[0].numpy(), img[0] / 255, atol=1e-5)


def test_weights_file_that_does_not_fit_the_timm_model_is_one_line(tmp_path, monkeypatch):
    from wingclr.cli import UserError
    from wingclr.models import build_backbone

    (tmp_path / "timm").mkdir()
    torch.save({"conv_stem.weight": torch.zeros(1)}, tmp_path / "timm" / "efficientnet_lite0.pth")
    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(UserError, match="efficientnet_lite0.pth: weights do not fit"):
        build_backbone(LITE0, pretrained=True)
