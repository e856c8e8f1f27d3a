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


TINY_TRAIN = ("--backbone", "resnet18", "--pretrained", "none", "--input-size", "32",
              "--batch-size", "8", "--num-workers", "0", "--warmup-epochs", "0")


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
    monkeypatch.setenv("WINGCLR_WEIGHTS_DIR", str(home))
    return home
