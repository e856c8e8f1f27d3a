"""Stage 3: grid, NT-Xent, resume after a kill, NaN stop, skip of finished runs."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import REPO, TINY_TRAIN, assert_one_line_error, load_stage, run_cli, run_stage
from wingclr.train.grid import GRID, grid_point, run_name

SCRIPT = "3-training/train.py"


def test_param_i_maps_1_to_27_onto_all_distinct_combinations():
    points = [grid_point(i) for i in range(1, 28)]
    assert len(set(points)) == 27
    assert {b for b, _, _ in points} == {64, 128, 256}
    assert {e for _, e, _ in points} == {50, 100, 300}
    assert {t for _, _, t in points} == {0.1, 0.5, 0.8}
    assert points[0] == (64, 50, 0.1) and points[-1] == (256, 300, 0.8)
    assert run_name(256, 300, 0.5) == "simclr_bs_256_nepochs_300_temp_0.5"
    assert GRID == points


@pytest.mark.parametrize("bad", ["0", "28"])
def test_param_i_out_of_range_is_a_one_line_error(bad):
    assert_one_line_error(run_cli(SCRIPT, "--param-i", bad), "--param-i must be between 1 and 27")


def test_list_grid_prints_27_rows():
    proc = run_cli(SCRIPT, "--list-grid")
    rows = [line for line in proc.stdout.splitlines() if "simclr_bs_" in line]
    assert proc.returncode == 0 and len(rows) == 27
    assert rows[13].split()[:4] == ["14", "128", "100", "0.5"]


def reference_ntxent(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """NT-Xent written out from the SimCLR paper: 2N anchors, one positive, 2N-2 negatives."""
    z = torch.nn.functional.normalize(torch.cat([z0, z1]), dim=1)
    n = len(z0)
    sim = z @ z.T / t
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        losses.append(-sim[i, j] + torch.logsumexp(sim[i, others], dim=0))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("t", [0.1, 0.5, 0.8])
def test_ntxent_matches_hand_written_reference(t):
    from wingclr.train.simclr import SimCLR

    criterion = SimCLR(backbone="resnet18", temperature=t).criterion
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    torch.testing.assert_close(criterion(z0, z1), reference_ntxent(z0, z1, t))


def test_training_writes_run_and_skips_when_finished(dataset_dir, tmp_path):
    out = tmp_path / "runs"
    run_stage(SCRIPT, "--data", dataset_dir, "--output", out, "--epochs", "2", *TINY_TRAIN)
    run = out / "simclr_bs_8_nepochs_2_temp_0.5"
    names = {p.name for p in run.iterdir()}
    assert {"simclr_bs_8_nepochs_2_temp_0.5.ckpt", "metrics.csv", "loss.png", "manifest.json"} <= names
    assert "last.ckpt" not in names  # only with --keep-last
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics.epoch.tolist() == [0, 1, 2]  # epoch 0: the monitor's score of the start
    assert metrics.train_loss.isna().tolist() == [True, False, False] and metrics.knn_accuracy.notna().all()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["backbone"] == "resnet18" and manifest["counts"]["images"] == 30
    stamp = (run / "simclr_bs_8_nepochs_2_temp_0.5.ckpt").stat().st_mtime_ns
    proc = run_cli(SCRIPT, "--data", dataset_dir, "--output", out, "--epochs", "2", *TINY_TRAIN)
    assert proc.returncode == 0 and "skip:" in proc.stdout
    assert (run / "simclr_bs_8_nepochs_2_temp_0.5.ckpt").stat().st_mtime_ns == stamp


def test_balanced_sampling_draws_clusters_equally_or_by_square_root():
    from wingclr.train.loaders import EpochBatchSampler, cluster_weights

    clusters = ["big"] * 900 + ["small"] * 100
    sampler = EpochBatchSampler(range(1000), 50, weights=cluster_weights(clusters, "clusters"))
    drawn = [clusters[i] for batch in sampler for i in batch]
    assert len(drawn) == 1000
    assert 0.45 < drawn.count("small") / len(drawn) < 0.55  # ~0.5 instead of 0.1
    sampler = EpochBatchSampler(range(1000), 50, weights=cluster_weights(clusters, "sqrt"))
    drawn = [clusters[i] for batch in sampler for i in batch]
    assert 0.2 < drawn.count("small") / len(drawn) < 0.3  # sqrt(100) / (sqrt(900) + sqrt(100)) = 0.25
    assert cluster_weights(clusters, "none") is None


def skewed_clusters() -> list[str]:
    """5 062 images in 40 clusters of very unequal size (3 to ~1 000 images): the clusters of
    ``benchmarks/sampler_repeats.py``, which measures the same sampler at more batch sizes."""
    return load_stage("benchmarks/sampler_repeats.py").skewed()


@pytest.mark.parametrize("balance", ["clusters", "sqrt"])
@pytest.mark.parametrize("batch", [64, 256, 1024])
def test_balanced_batches_never_repeat_an_image(balance, batch):
    from wingclr.train.loaders import EpochBatchSampler, cluster_weights

    clusters = skewed_clusters()
    assert len(clusters) == 5062
    sampler = EpochBatchSampler(range(len(clusters)), batch, seed=1, weights=cluster_weights(clusters, balance))
    batches = list(sampler)
    assert len(batches) == 5062 // batch
    assert all(len(set(b)) == len(b) == batch for b in batches)
    smallest = sum(1 for b in batches for i in b if clusters[i] == "c0")
    assert smallest > 0  # the 3-image cluster still comes back


def test_balanced_batches_never_repeat_an_image_across_ranks(monkeypatch):
    import torch.distributed as dist

    from wingclr.train.loaders import EpochBatchSampler, cluster_weights

    clusters = skewed_clusters()
    weights = cluster_weights(clusters, "clusters")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_rank", lambda r=rank: r)
        per_rank.append(list(EpochBatchSampler(range(len(clusters)), 128, world_size=2, seed=2, weights=weights)))
    for b0, b1 in zip(*per_rank):  # one global batch of 256 = the two ranks' batches
        assert len(set(b0) | set(b1)) == 256


def test_epoch_sampler_shards_ranks_and_skips_trained_batches(monkeypatch):
    import torch.distributed as dist

    from wingclr.train.loaders import EpochBatchSampler

    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_rank", lambda r=rank: r)
        shards.append([i for b in EpochBatchSampler(range(100), 10, world_size=2, seed=3) for i in b])
    assert len(shards[0]) == len(shards[1]) == 50 and not set(shards[0]) & set(shards[1])
    monkeypatch.undo()
    full = list(EpochBatchSampler(range(100), 10, seed=3, epoch_fn=lambda: 4))
    resumed = EpochBatchSampler(range(100), 10, seed=3, epoch_fn=lambda: 4)
    resumed.skip = 3
    assert list(resumed) == full[3:] and list(resumed) == full  # skip applies to one epoch only
    assert full != list(EpochBatchSampler(range(100), 10, seed=3, epoch_fn=lambda: 5))


def test_resume_after_kill_continues_from_last_checkpoint(dataset_dir, tmp_path):
    out = tmp_path / "runs"
    args = [sys.executable, str(REPO / SCRIPT), "--data", str(dataset_dir), "--output", str(out),
            "--epochs", "6", "--run-name", "resume", *TINY_TRAIN, "--save-every-min", "0"]
    last = out / "resume" / "last.ckpt"
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 240
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # a crash or preemption without warning
    finally:
        proc.wait(30)
    assert last.exists(), "training never wrote last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    saved_epochs = ckpt["epoch"] + 1
    saved_history = next(v["history"] for v in ckpt["callbacks"].values() if "history" in v)
    assert saved_epochs < 6 and len(saved_history) == saved_epochs + 1  # + the monitor's epoch 0
    assert not (out / "resume" / "manifest.json").exists()

    rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming resume from {last}" in rerun.stdout
    metrics = pd.read_csv(out / "resume" / "metrics.csv")
    assert metrics.epoch.tolist() == list(range(0, 7))  # history restored, no epoch repeated
    # the epochs done before the kill were not trained again: their timings are the old ones
    trained = metrics[metrics.epoch > 0]  # epoch 0: the monitor's score of the start
    assert trained.seconds[:saved_epochs].tolist() == pytest.approx(
        [h["seconds"] for h in saved_history if h["epoch"] > 0])
    assert json.loads((out / "resume" / "manifest.json").read_text())["counts"]["epochs"] == 6


def test_changed_settings_do_not_resume_a_foreign_checkpoint(dataset_dir, tmp_path):
    out = tmp_path / "runs"
    run_stage(SCRIPT, "--data", dataset_dir, "--output", out, "--epochs", "1", "--run-name", "r", "--keep-last",
              *TINY_TRAIN)
    (out / "r" / "manifest.json").unlink()  # pretend it was interrupted
    proc = run_cli(SCRIPT, "--data", dataset_dir, "--output", out, "--epochs", "1", "--run-name", "r",
                   "--seed", "5", *TINY_TRAIN)
    assert_one_line_error(proc, "last.ckpt", "seed", "--overwrite")


def test_nan_loss_stops_with_clear_message(dataset_dir, tmp_path):
    proc = run_cli(SCRIPT, "--data", dataset_dir, "--output", tmp_path, "--epochs", "3",
                   "--lr", "1e30", *TINY_TRAIN)
    assert_one_line_error(proc, "loss became", "--lr")


def test_batch_larger_than_dataset_is_a_clear_error(dataset_dir, tmp_path):
    proc = run_cli(SCRIPT, "--data", dataset_dir, "--output", tmp_path, "--epochs", "1",
                   *TINY_TRAIN, "--batch-size", "64")
    assert_one_line_error(proc, "fewer than --batch-size 64")


def test_run_name_last_is_refused_before_its_checkpoint_could_be_removed(dataset_dir, tmp_path):
    proc = run_cli(SCRIPT, "--data", dataset_dir, "--output", tmp_path, "--epochs", "1",
                   "--run-name", "last", *TINY_TRAIN)
    assert_one_line_error(proc, "--run-name last", "choose another --run-name")
    assert not (tmp_path / "last").exists()


def test_missing_imagenet_weights_name_file_and_flag(dataset_dir, tmp_path):
    proc = run_cli(SCRIPT, "--data", dataset_dir, "--output", tmp_path, "--epochs", "1",
                   *TINY_TRAIN[:2], "--pretrained", "imagenet", *TINY_TRAIN[4:])
    assert_one_line_error(proc, "resnet18-f37072fd.pth", "https://download.pytorch.org", "--pretrained none")


def test_device_path_stops_on_sigusr1_and_resumes_the_same_batches(dataset_dir, tmp_path):
    """SLURM's warning signal mid-epoch: save, stop, and the re-run trains exactly what was left."""
    out = tmp_path / "runs"
    args = [sys.executable, str(REPO / SCRIPT), "--data", str(dataset_dir), "--output", str(out),
            "--epochs", "3", "--run-name", "sig", "--augment-on", "device",
            "--cache-dir", str(tmp_path / "cache"), *TINY_TRAIN, "--save-every-min", "0"]
    last = out / "sig" / "last.ckpt"
    fake = tmp_path / "bin"  # an scontrol that records the requeue
    fake.mkdir()
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/scontrol.log\n')
    (fake / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_ID": "123",
           "SLURM_ARRAY_JOB_ID": "120", "SLURM_ARRAY_TASK_ID": "3"}
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "SIGUSR1: saved" in output and not (out / "sig" / "manifest.json").exists()
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "120_3"]
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    steps_before = ckpt["global_step"]
    hparams = ckpt["hyper_parameters"]

    rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    final = torch.load(out / "sig" / "sig.ckpt", map_location="cpu", weights_only=False)
    batches_per_epoch = 30 // 8
    assert final["global_step"] == 3 * batches_per_epoch  # nothing trained twice, nothing skipped
    assert 0 < steps_before < final["global_step"]
    assert final["hyper_parameters"] == hparams
    assert pd.read_csv(out / "sig" / "metrics.csv").epoch.tolist() == [0, 1, 2, 3]


def test_crop_scale_and_blur_flags_reach_the_augmentation(dataset_dir, tmp_path):
    run_stage(SCRIPT, "--data", dataset_dir, "--output", tmp_path, "--epochs", "1", "--run-name", "aug",
              "--augment-on", "device", "--cache-dir", tmp_path / "cache", "--min-scale", "0.3",
              "--blur-prob", "0", *TINY_TRAIN)
    ckpt = torch.load(tmp_path / "aug" / "aug.ckpt", map_location="cpu", weights_only=False)
    views = ckpt["hyper_parameters"]["augment"]
    assert [(v["min_scale"], v["blur_prob"]) for v in views] == [(0.3, 0.0), (0.3, 0.0)]

    from wingclr.train.loaders import TwoViews
    from wingclr.train.augment import AugmentConfig

    views = TwoViews([AugmentConfig(input_size=32, min_scale=0.3, blur_prob=0.0)] * 2, [[0, 1, 2]] * 2, 3)
    steps = views._make(views.cfgs[0])[0].transform.transforms  # lightly's per-view Compose
    assert tuple(steps[0].scale) == (0.3, 1.0)
    blur = next(s for s in steps if type(s).__name__ == "GaussianBlur")
    assert blur.prob == 0.0

    before = sorted(tmp_path.iterdir())
    proc = run_cli(SCRIPT, "--data", dataset_dir, "--output", tmp_path, "--epochs", "1",
                   "--min-scale", "0", *TINY_TRAIN)
    assert_one_line_error(proc, "--min-scale must be in (0, 1]")
    assert sorted(tmp_path.iterdir()) == before  # refused before any run folder is made


def test_log_shows_start_line_first_and_an_epoch_estimate_without_a_terminal(dataset_dir, tmp_path,
                                                                             capsys):
    args = list(TINY_TRAIN)
    args[args.index("--batch-size") + 1] = "4"  # 30 images: 7 batches, the estimate after 1 + 5
    run_stage("3-training/train.py", "--data", dataset_dir, "--output", tmp_path, "--epochs", "2",
              *args)
    lines = capsys.readouterr().out.splitlines()
    start = lines[0]
    assert start.startswith("training simclr_bs_4_nepochs_2_temp_0.5 on CPU (--devices auto) (32-true)")
    for part in ("30 images in 5 clusters", "batch 4", "recipe ", "2 epochs",
                 str(tmp_path / "simclr_bs_4_nepochs_2_temp_0.5" / "simclr_bs_4_nepochs_2_temp_0.5.ckpt")):
        assert part in start, part
    estimates = [line for line in lines if line.startswith("estimate:")]
    assert len(estimates) == 1 and "s per epoch of 7 batches" in estimates[0]
    assert "min for 2 epochs" in estimates[0]
    assert lines.index(estimates[0]) < next(i for i, x in enumerate(lines) if x.startswith("epoch 1/2"))
