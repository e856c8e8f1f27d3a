"""Multi-process training on the CPU (gloo): gathered NT-Xent and a 2-process Lightning DDP run."""

import json
import os
import socket

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
    from wingclr.checkpoints import load_backbone

    proc = run_cli("3-training/train.py", "--data", dataset_dir, "--output", tmp_path / "runs",
                   "--epochs", "1", "--run-name", "ddp", "--accelerator", "cpu", "--devices", "2",
                   "--augment-on", augment_on, "--cache-dir", tmp_path / "cache", *TINY_TRAIN,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["world_size"] == 2
    ckpt = torch.load(run / "ddp.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 30 // 8  # global batch 8 = 2 processes x 4
    backbone, meta = load_backbone(run / "ddp.ckpt")
    assert backbone(torch.rand(1, 3, 32, 32)).shape == (1, 512)
    assert len(list((tmp_path / "cache").glob("*/index.json"))) == 1  # built once for both ranks
