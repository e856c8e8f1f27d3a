"""Shared fixtures: offline weights lookup, a tiny generated specimen set, stage runners."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "butterflies"

# Tests never download: an empty weights folder and torch hub, and downloads switched off.
_EMPTY = Path(tempfile.mkdtemp(prefix="wingclr-test-"))
os.environ["WINGCLR_OFFLINE"] = "1"
os.environ["WINGCLR_WEIGHTS_DIR"] = str(_EMPTY / "weights")
os.environ["TORCH_HOME"] = str(_EMPTY / "torch-home")
os.environ.setdefault("MPLBACKEND", "Agg")
for _name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
    os.environ.pop(_name, None)  # a test run inside an array job must not shard stage 0


def load_stage(relpath: str):
    """Import a stage script (e.g. ``3-training/train.py``) as a module."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_stage(relpath: str, *argv: str):
    """Run a stage's ``main`` in-process with command-line arguments; returns its result."""
    module = load_stage(relpath)
    args = module.get_args_parser().parse_args([str(a) for a in argv])
    return module.main(args)


def run_cli(relpath: str, *argv: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run a stage script as a user would (subprocess, no stdin)."""
    return subprocess.run([sys.executable, str(REPO / relpath), *map(str, argv)], cwd=kwargs.pop("cwd", REPO),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The process failed with exactly one ``error:`` line and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def demo_set(tmp_path_factory) -> Path:
    """30 generated specimens (5 phenotypes x 6) at 48 px, with masks and cluster folders."""
    from wingclr.demo import generate

    out = tmp_path_factory.mktemp("demo")
    generate(out, n=30, size=48, seed=3)
    return out


@pytest.fixture(scope="session")
def dataset_dir(demo_set, tmp_path_factory) -> Path:
    """Stage 2 output for :func:`demo_set`."""
    out = tmp_path_factory.mktemp("stage2") / "2-dataset"
    run_stage("2-create_dataset/create_dataset.py", "--input", demo_set / "clusters", "--output", out)
    return out


@pytest.fixture(scope="session")
def lite0_weights(tmp_path_factory) -> Path:
    """A weights folder holding the lite0 package's real ImageNet weights converted for timm."""
    from wingclr.weights.lite0 import convert

    folder = tmp_path_factory.mktemp("weights")
    convert(folder)
    return folder


TINY_TRAIN = ("--backbone", "resnet18", "--pretrained", "none", "--input-size", "32",
              "--batch-size", "8", "--num-workers", "0", "--warmup-epochs", "0")


def trust_weights(path) -> None:
    """Let a stand-in file under a published weights name pass its checksum (recorded as verified,
    the way a real file is after its first use)."""
    from wingclr.weights.checksums import published_checksum, remember
    from wingclr.segment.rembg import REMBG_CHECKSUMS

    path = Path(path)
    checksum = published_checksum(path.name) or REMBG_CHECKSUMS.get(path.stem)
    remember(path, checksum, True)


@pytest.fixture
def rembg_home(tmp_path, monkeypatch):
    """weights/ holding ``u2net.onnx``: a tiny model whose foreground is whatever is dark."""
    import torch

    class Darkness(torch.nn.Module):
        def forward(self, x):  # (N, 3, 320, 320) normalised RGB -> (N, 1, 320, 320)
            return -x.sum(1, keepdim=True)

    home = tmp_path / "weights"
    home.mkdir()
    torch.onnx.export(Darkness(), torch.zeros(1, 3, 320, 320), str(home / "u2net.onnx"),
                      dynamo=False, input_names=["input"], output_names=["mask"])
    trust_weights(home / "u2net.onnx")
    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(home))
    return home


# --- fake stage 3 / stage 4 outputs (tests of stages 4 and 5 that need no training) ---

def fake_meta(backbone="resnet18", in_chans=3):
    """A stage 3 run's model metadata (random ResNet-18 unless told, 32 px)."""
    from wingclr.models import channel_stats

    mean, std = channel_stats(in_chans, [0, 1, 2])
    return {"backbone": backbone, "in_chans": in_chans, "rgb_bands": [0, 1, 2], "bands": None,
            "input_size": 32, "mean": mean, "std": std, "background": [255, 255, 255],
            "scale16": "full", "settings": {"batch_size": 8, "epochs": 1, "temperature": 0.5}}


def fake_checkpoint(path, seed=0, meta=None, in_chans=3):
    """A stage 3 checkpoint as stage 4 reads it: ``wingclr`` metadata plus backbone weights."""
    import torch

    from wingclr.models import build_backbone

    torch.manual_seed(seed)
    backbone, _ = build_backbone("resnet18", False, in_chans)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    torch.save({"wingclr": meta or fake_meta(), "state_dict": state}, path)
    return path


def fake_embeddings(out, dataset_dir, seed=0):
    """A stage 4 folder as stage 4 wrote it before the identity columns (CSV, .npy, manifest with
    the CSV's digest): separable class centres. Returns ``(folder, {image: vector})``."""
    import numpy as np
    import pandas as pd

    from wingclr.outputs import file_digest
    from wingclr.outputs import write_manifest

    split = pd.read_csv(dataset_dir / "split.csv", dtype=str)[["image", "cluster", "split"]]
    rng = np.random.default_rng(seed)
    codes = pd.factorize(split.cluster, sort=True)[0]
    feats = (rng.normal(size=(codes.max() + 1, 8))[codes]
             + rng.normal(0, 0.05, (len(split), 8))).astype(np.float32)
    out.mkdir(parents=True)
    np.save(out / "embeddings.npy", feats)
    pd.concat([split, pd.DataFrame(feats, columns=[f"emb_{i}" for i in range(8)])],
              axis=1).to_csv(out / "embeddings.csv", index=False, float_format="%.6g")
    write_manifest(out, "4-embed", {"checkpoint": "run.ckpt", "data": str(dataset_dir)},
                   counts={"images": len(split)}, model=fake_meta(),
                   embeddings_csv=file_digest(out / "embeddings.csv"))
    return out, dict(zip(split.image, feats))

