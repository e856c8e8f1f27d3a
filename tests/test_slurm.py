"""SLURM scripts: directives match the flags they feed, and the scripts run (with a fake srun)."""

import os
import re
import subprocess

import pytest

from conftest import REPO


def directives(path):
    return [line for line in path.read_text().splitlines() if line.startswith("#SBATCH")]


@pytest.fixture
def fake_slurm(tmp_path):
    """A PATH with an ``srun`` that prints its command and an empty venv to activate."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\necho "srun $*"\n')
    (bin_dir / "srun").chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "WINGCLR_VENV": str(venv)}


@pytest.mark.parametrize("name", ["grid.sbatch", "train_multinode.sbatch"])
def test_every_directive_is_commented_and_requeue_is_set_up(name):
    lines = directives(REPO / "3-training" / name)
    assert all("# " in line.split("#SBATCH", 1)[1] for line in lines if "job-name" not in line
               and "output" not in line), lines
    text = "\n".join(lines)
    assert re.search(r"--signal=SIGUSR1@\d+", text) and "--requeue" in text


def test_grid_array_feeds_param_i(fake_slurm):
    assert "#SBATCH --array=1-27" in "\n".join(directives(REPO / "3-training" / "grid.sbatch"))
    env = {**fake_slurm, "SLURM_ARRAY_TASK_ID": "14", "SLURM_CPUS_PER_TASK": "6"}
    out = subprocess.run(["bash", "3-training/grid.sbatch", "--backbone", "resnet18"], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "train.py --param-i 14 --devices 1 --num-nodes 1 --num-workers 6 --backbone resnet18" in out


def test_multinode_flags_follow_the_allocation(fake_slurm):
    text = "\n".join(directives(REPO / "3-training" / "train_multinode.sbatch"))
    nodes = re.search(r"--nodes=(\d+)", text).group(1)
    per_node = re.search(r"--ntasks-per-node=(\d+)", text).group(1)
    assert f"--gres=gpu:{per_node}" in text
    env = {**fake_slurm, "SLURM_JOB_NUM_NODES": nodes, "SLURM_NTASKS_PER_NODE": per_node,
           "SLURM_CPUS_PER_TASK": "8"}
    out = subprocess.run(["bash", "3-training/train_multinode.sbatch", "--param-i", "27"], cwd=REPO,
                         env=env, capture_output=True, text=True, check=True).stdout
    assert f"--num-nodes {nodes} --devices {per_node} --num-workers 8 --sync-batchnorm --param-i 27" in out
