"""SLURM scripts of stages 1, 3, 4, 5: directives match the flags they feed, site placeholders,
and the scripts run (with a fake srun) with the right flags."""

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
def test_training_scripts_set_up_requeue(name):
    text = "\n".join(directives(REPO / "3-training" / name))
    assert re.search(r"--signal=SIGUSR1@\d+", text) and "--requeue" in text


def test_grid_array_feeds_param_i(fake_slurm):
    assert "#SBATCH --array=1-27" in "\n".join(directives(REPO / "3-training" / "grid.sbatch"))
    env = {**fake_slurm, "SLURM_ARRAY_TASK_ID": "14", "SLURM_CPUS_PER_TASK": "6"}
    out = subprocess.run(["bash", "3-training/grid.sbatch", "--backbone", "resnet18"], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "train.py --param-i 14 --devices 1 --num-nodes 1 --num-workers 6 --backbone resnet18" in out
    assert "srun --kill-on-bad-exit=1 python 3-training/train.py" in out  # a refusal ends every task


def test_cache_script_builds_the_cache_on_cpus_for_the_grid(fake_slurm):
    text = (REPO / "3-training" / "cache.sbatch").read_text()
    assert "--gres" not in "\n".join(directives(REPO / "3-training" / "cache.sbatch"))
    assert "sbatch --dependency=afterok:${cache} 3-training/grid.sbatch" in text
    env = {**fake_slurm, "SLURM_CPUS_PER_TASK": "6"}
    out = subprocess.run(["bash", "3-training/cache.sbatch", "--input-size", "128"], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "train.py --cache-only --accelerator cpu --num-workers 6 --input-size 128" in out


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
    assert "srun --kill-on-bad-exit=1 python 3-training/train.py" in out  # a refusal ends every rank


SBATCH_FILES = ["0-segmentation/segment.sbatch", "0-segmentation/segment_gpu.sbatch",
                "1-clustering/cluster.sbatch", "3-training/grid.sbatch", "3-training/train_multinode.sbatch",
                "3-training/cache.sbatch", "4-embed/embed.sbatch", "5-evaluation/evaluate.sbatch"]


@pytest.mark.parametrize("relpath", SBATCH_FILES)
def test_every_script_has_site_placeholders_and_commented_directives(relpath):
    text = (REPO / relpath).read_text()
    lines = directives(REPO / relpath)
    assert lines and all("# " in line.split("#SBATCH", 1)[1] for line in lines
                         if "job-name" not in line and "output" not in line), lines
    for placeholder in ("##SBATCH --account=", "##SBATCH --partition="):
        assert placeholder in text  # disabled until the user removes one '#'
    assert "source slurm_env.sh" in text and "ESTIMATED" in text
    assert "absolute" in text and re.search(r"#SBATCH --output=work/logs/", text)


@pytest.mark.parametrize("name", ["grid.sbatch", "train_multinode.sbatch"])
def test_training_scripts_say_how_sigterm_is_handled(name):
    text = (REPO / "3-training" / name).read_text()
    assert "SIGTERM is handled like SIGUSR1" in text and "PreemptMode=REQUEUE" in text


def run_sbatch(relpath, env, *argv):
    return subprocess.run(["bash", relpath, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          check=True).stdout


def test_cluster_script_runs_stage_1_without_questions(fake_slurm):
    out = run_sbatch("1-clustering/cluster.sbatch", {**fake_slurm, "SLURM_CPUS_PER_TASK": "6"},
                     "--min-cluster-size", "20")
    assert "srun python 1-clustering/cluster.py --yes --no-show --num-workers 6 --min-cluster-size 20" in out


def test_cluster_flags_in_the_script_exist():
    from conftest import load_stage

    args = load_stage("1-clustering/cluster.py").get_args_parser().parse_args(
        ["--yes", "--no-show", "--num-workers", "6"])
    assert args.yes and args.no_show and args.num_workers == 6


@pytest.fixture
def training_dir(tmp_path):
    runs = tmp_path / "runs"
    for name, finished in [("simclr_b", True), ("simclr_a", True), ("simclr_c", False), (".simclr_a.new", True)]:
        (runs / name).mkdir(parents=True)
        if finished:
            (runs / name / "manifest.json").write_text("{}")
    return runs


def test_embed_array_task_embeds_the_ith_finished_run(fake_slurm, training_dir):
    env = {**fake_slurm, "TRAINING_DIR": str(training_dir), "SLURM_CPUS_PER_TASK": "4"}
    out = run_sbatch("4-embed/embed.sbatch", {**env, "SLURM_ARRAY_TASK_ID": "2"}, "--batch-size", "32")
    assert (f"srun python 4-embed/embed.py --training-dir {training_dir} --num-workers 4 "
            f"--checkpoints {training_dir}/simclr_b --batch-size 32") in out
    out = run_sbatch("4-embed/embed.sbatch", {**env, "SLURM_ARRAY_TASK_ID": "3"})
    assert "holds 2 finished runs; nothing to do" in out and "srun" not in out
    out = run_sbatch("4-embed/embed.sbatch", env)  # no array: every finished run
    assert f"srun python 4-embed/embed.py --training-dir {training_dir} --num-workers 4\n" in out


def test_evaluate_script_runs_once_for_every_run(fake_slurm):
    text = "\n".join(directives(REPO / "5-evaluation" / "evaluate.sbatch"))
    assert "--array" not in text  # evaluation.csv is shared by the runs
    out = run_sbatch("5-evaluation/evaluate.sbatch", {**fake_slurm, "SLURM_CPUS_PER_TASK": "3"}, "--no-umap")
    assert "srun python 5-evaluation/evaluate.py --num-workers 3 --no-umap" in out


@pytest.mark.parametrize("relpath,flags", [("4-embed/embed.py", ["--training-dir", "x", "--num-workers", "2",
                                                                 "--checkpoints", "r"]),
                                           ("5-evaluation/evaluate.py", ["--num-workers", "2"])])
def test_flags_the_scripts_pass_exist(relpath, flags):
    from conftest import load_stage

    load_stage(relpath).get_args_parser().parse_args(flags)


def test_slurm_env_switches_downloads_off_unless_the_user_set_it(fake_slurm):
    env = {k: v for k, v in fake_slurm.items() if k != "WINGCLR_OFFLINE"}
    show = "source slurm_env.sh >/dev/null; echo offline=$WINGCLR_OFFLINE"
    out = subprocess.run(["bash", "-c", show], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "offline=1" in out
    out = subprocess.run(["bash", "-c", show], cwd=REPO, env={**env, "WINGCLR_OFFLINE": "0"},
                         capture_output=True, text=True, check=True).stdout
    assert "offline=0" in out


@pytest.mark.parametrize("name", ["segment.sbatch", "segment_gpu.sbatch"])
def test_segment_scripts_run_one_shard_per_array_task(fake_slurm, name):
    text = "\n".join(directives(REPO / "0-segmentation" / name))
    assert "--array=" in text and ("--gres=gpu:1" in text) == (name == "segment_gpu.sbatch")
    out = run_sbatch(f"0-segmentation/{name}", {**fake_slurm, "SLURM_CPUS_PER_TASK": "8"},
                     "--input", "photos")
    assert "srun python 0-segmentation/segment.py --quiet" in out and out.rstrip().endswith("--input photos")


def test_requests_are_sized_per_1000_photos_and_stage_1_runs_on_cpus():
    for relpath in ("0-segmentation/segment.sbatch", "1-clustering/cluster.sbatch",
                    "3-training/grid.sbatch"):
        text = (REPO / relpath).read_text()
        assert "per 1 000" in text.lower() and "sizing" in text.lower(), relpath
    assert not any("--gres" in line for line in directives(REPO / "1-clustering" / "cluster.sbatch"))
    for relpath in ("1-clustering/cluster.sbatch", "3-training/grid.sbatch"):
        hours = int(re.search(r"#SBATCH --time=(\d+):", (REPO / relpath).read_text()).group(1))
        assert hours <= 4, relpath
