"""Checkpoints outlive the code layout: no wingclr class is pickled in them, and reading one back
(stage 4) needs no PyTorch Lightning."""

import pickletools
import subprocess
import sys
import zipfile

import torch

from conftest import REPO, TINY_TRAIN, run_stage


def pickled_modules(path) -> set[str]:
    """Module names of every global a torch zip checkpoint's pickle refers to."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    modules, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            modules.add(strings[-2])
        elif op.name == "GLOBAL":
            modules.add(arg.split()[0])
    return modules


def test_checkpoints_pickle_no_wingclr_class_so_module_moves_cannot_break_them(dataset_dir, tmp_path):
    run_stage("3-training/train.py", "--data", dataset_dir, "--output", tmp_path, "--epochs", "1",
              "--run-name", "r", "--keep-last", *TINY_TRAIN)
    final, last = tmp_path / "r" / "r.ckpt", tmp_path / "r" / "last.ckpt"
    for path in (final, last):
        modules = pickled_modules(path)
        assert modules and not any(m.split(".")[0] == "wingclr" for m in modules), (path, modules)
    meta = torch.load(final, map_location="cpu", weights_only=True)["wingclr"]
    assert meta["backbone"] == "resnet18" and meta["run_name"] == "r"


def test_stage4_reads_checkpoints_without_importing_lightning():
    code = ("import sys, wingclr.embed.stage, wingclr.train.checkpoint_files; "
            "print(sorted(m for m in sys.modules if 'lightning' in m or m.startswith('wingclr.train.')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "['wingclr.train.checkpoint_files']"  # no other stage 3 module
