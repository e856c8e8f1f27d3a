"""Multi-process training on the CPU (gloo): gathered NT-Xent and a 2-process Lightning DDP run."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TINY_TRAIN, run_cli

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, z0: torch.Tensor, z1: torch.Tensor, t: float, out: dict) -> None:
    from lightly.loss import NTXentLoss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    n = len(z0) // WORLD
    a = z0[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    b = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = NTXentLoss(temperature=t, gather_distributed=True)(a, b)
    loss.backward()
    out[rank] = (loss.detach(), a.grad, b.grad)
    dist.destroy_process_group()


def test_gathered_ntxent_equals_single_process_loss_on_concatenated_batch():
    from lightly.loss import NTXentLoss

    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(free_port(), z0, z1, 0.5, out), nprocs=WORLD, join=True)
        results = dict(out)
    a, b = z0.clone().requires_grad_(True), z1.clone().requires_grad_(True)
    single = NTXentLoss(temperature=0.5)(a, b)
    single.backward()
    mean_loss = torch.stack([results[r][0] for r in range(WORLD)]).mean()
    torch.testing.assert_close(mean_loss, single.detach())
    # DDP averages gradients over processes: rank-local gradients / WORLD = full-batch gradients
    grad0 = torch.cat([results[r][1] for r in range(WORLD)]) / WORLD
    torch.testing.assert_close(grad0, a.grad)


@pytest.mark.parametrize("augment_on", ["device"])
def test_two_process_ddp_training_on_cpu(dataset_dir, tmp_path, augment_on):
    from wingclr.train.checkpoint_files import load_backbone

    proc = run_cli("3-training/train.py", "--data", dataset_dir, "--output", tmp_path / "runs",
                   "--epochs", "1", "--run-name", "ddp", "--accelerator", "cpu", "--devices", "2",
                   "--augment-on", augment_on, "--cache-dir", tmp_path / "cache", *TINY_TRAIN,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["world_size"] == 2
    assert manifest["model"]["sync_batchnorm"] is True  # the default with several processes
    ckpt = torch.load(run / "ddp.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 30 // 8  # global batch 8 = 2 processes x 4
    backbone, meta = load_backbone(run / "ddp.ckpt")
    assert backbone(torch.rand(1, 3, 32, 32)).shape == (1, 512)
    assert len(list((tmp_path / "cache").glob("*/index.json"))) == 1  # built once for both ranks


RECORDER = '''
import hashlib, importlib.util, json, os, sys
sys.path.insert(0, {repo!r})
import torch
from wingclr import cli
from wingclr.train import loaders
from wingclr.train.augment import BatchAugment


def record(value):
    with open(os.path.join({out!r}, "rank%s.jsonl" % os.environ.get("LOCAL_RANK", "0")), "a") as f:
        f.write(json.dumps(value) + "\\n")


sample, views = BatchAugment.sample, loaders.TwoViews.__call__


def recorded_sample(self, *args, **kwargs):  # the device path: boxes and flips of each view
    p = sample(self, *args, **kwargs)
    record([p["box"].tolist(), p["hflip"].tolist()])
    return p


def recorded_views(self, arr):  # the workers path: the random state each image's views come from
    record(hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest())
    return views(self, arr)


BatchAugment.sample, loaders.TwoViews.__call__ = recorded_sample, recorded_views
spec = importlib.util.spec_from_file_location("train", {script!r})
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
cli.run(train.main, train.get_args_parser())
'''


@pytest.mark.parametrize("augment_on,workers", [("device", "0"), ("workers", "1")])
def test_each_rank_draws_its_own_augmentations(dataset_dir, tmp_path, augment_on, workers):
    from conftest import REPO

    draws = tmp_path / "draws"
    draws.mkdir()
    recorder = tmp_path / "record_train.py"  # Lightning starts rank 1 with this same script
    recorder.write_text(RECORDER.format(repo=str(REPO), out=str(draws),
                                        script=str(REPO / "3-training" / "train.py")))
    proc = subprocess.run(
        [sys.executable, str(recorder), "--data", str(dataset_dir), "--output", str(tmp_path / "runs"),
         "--epochs", "1", "--run-name", "ddp", "--accelerator", "cpu", "--devices", "2",
         "--augment-on", augment_on, "--cache-dir", str(tmp_path / "cache"), *TINY_TRAIN,
         "--num-workers", workers], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = ([json.loads(line) for line in (draws / f"rank{r}.jsonl").read_text().splitlines()]
                    for r in range(WORLD))
    assert len(rank0) == len(rank1) >= 2 * (30 // 8)  # 2 views a step (device), 4 images (workers)
    assert all(a != b for a, b in zip(rank0, rank1))  # before: identical draws on both ranks


def _bn_worker(rank: int, port: int, x0: torch.Tensor, x1: torch.Tensor, out: dict) -> None:
    from wingclr.train.batchnorm import sync_batchnorm
    from wingclr.train.simclr import SimCLR

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    n = len(x0) // WORLD
    results = {}
    for sync in (True, False):
        torch.manual_seed(0)
        model = SimCLR(backbone="resnet18", input_size=32, temperature=0.5, gather_distributed=True)
        model = sync_batchnorm(model, cuda=False) if sync else model
        loss = model.criterion(model(x0[rank * n:(rank + 1) * n]), model(x1[rank * n:(rank + 1) * n]))
        loss.backward()
        grads = [model.backbone.conv1.weight.grad, model.projection_head.layers[0].weight.grad]
        for g in grads:  # what DDP does: the mean of the processes' gradients
            dist.all_reduce(g)
            g /= WORLD
        dist.all_reduce(loss)
        results[sync] = (loss.detach() / WORLD, *grads, model.backbone.bn1.running_mean.clone())
    out[rank] = results
    dist.destroy_process_group()


def test_global_batchnorm_makes_two_processes_of_8_train_as_one_of_16():
    from wingclr.train.simclr import SimCLR

    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.rand(16, 3, 32, 32, generator=g), torch.rand(16, 3, 32, 32, generator=g)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_bn_worker, args=(free_port(), x0, x1, out), nprocs=WORLD, join=True)
        results = out[0]
    torch.manual_seed(0)
    model = SimCLR(backbone="resnet18", input_size=32, temperature=0.5)
    loss = model.criterion(model(x0), model(x1))
    loss.backward()
    single = (loss.detach(), model.backbone.conv1.weight.grad, model.projection_head.layers[0].weight.grad,
              model.backbone.bn1.running_mean)
    for got, want in zip(results[True], single):  # loss, gradients and running statistics
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert abs(float(results[False][0]) - float(single[0])) > 1e-3  # per-process BN: another loss


@pytest.mark.parametrize("cuda", [True, False])
def test_sync_batchnorm_keeps_timm_activation_and_state_keys(cuda):
    from timm.layers import BatchNormAct2d

    from wingclr.train.batchnorm import sync_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=torch.nn.ReLU),
                                torch.nn.BatchNorm2d(4)).eval()
    x = torch.randn(2, 3, 8, 8)
    want, keys = model(x), list(model.state_dict())
    converted = sync_batchnorm(model, cuda=cuda)
    assert list(converted.state_dict()) == keys  # checkpoints load into either
    torch.testing.assert_close(converted(x), want)
    assert (converted[1](converted[0](x)) >= 0).all()  # the ReLU is kept (torch's converter drops it)


def start_together(dataset_dir, out, *extra) -> list[subprocess.Popen]:
    """Both ranks of a 2-process CPU run started at once, as torchrun or srun start them."""
    from conftest import REPO

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    return [subprocess.Popen(
        [sys.executable, str(REPO / "3-training" / "train.py"), "--data", str(dataset_dir), "--output",
         str(out), "--epochs", "1", "--run-name", "ddp", "--accelerator", "cpu", "--devices", "2",
         "--augment-on", "workers", *TINY_TRAIN, *extra],
        env={**env, "TORCHELASTIC_RUN_ID": "test", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
             "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0", "RANK": str(r),
             "LOCAL_RANK": str(r)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        for r in range(WORLD)]


def finish(procs, timeouts) -> list[tuple[str, str]]:
    try:
        return [p.communicate(timeout=t) for p, t in zip(procs, timeouts)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_ranks_started_together_train_one_run(dataset_dir, tmp_path):
    procs = start_together(dataset_dir, tmp_path / "runs")
    for proc, (stdout, stderr) in zip(procs, finish(procs, (600, 60))):
        assert proc.returncode == 0, stderr[-3000:]
    manifest = json.loads((tmp_path / "runs" / "ddp" / "manifest.json").read_text())
    assert manifest["model"]["world_size"] == 2 and manifest["model"]["sync_batchnorm"] is True
    assert not (tmp_path / "runs" / ".ddp.lock").exists()


def test_a_refusal_on_rank_0_ends_every_rank(dataset_dir, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": None, "started": "now"}
    (out / ".ddp.lock").write_text(json.dumps(lock))  # another live process trains the run
    procs = start_together(dataset_dir, out)
    # rank 1 ends within a minute of rank 0 (before: it waited 30 min for rank 0's rendezvous)
    for proc, (stdout, stderr) in zip(procs, finish(procs, (300, 60))):
        assert proc.returncode == 2, stderr[-3000:]
        assert "is being trained by" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert not (out / "ddp").exists()


def test_local_rank_0_of_a_second_node_is_not_rank_zero(monkeypatch):
    from wingclr.train.run_folder import is_rank_zero

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert is_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "4")  # torchrun on node 2 of 2 x 4 GPUs: never takes the lock
    assert not is_rank_zero()
