"""NT-Xent with image indexes: lightly's loss when every row is a different image, and rows of one
image never each other's negatives (a naive reference written from the SimCLR paper's eq. 1)."""

import math

import pytest
import torch

from wingclr.train.loss import IndexedNTXentLoss


def reference_loss(z0, z1, index, t):
    """Per anchor: -log softmax of the positive among every other row of another image."""
    z = torch.nn.functional.normalize(torch.cat([z0, z1]).double(), dim=1)
    ids = torch.cat([index, index]).tolist()
    n = len(z0)
    total = 0.0
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        cands = [j for j in range(2 * n) if j != a and (j == pos or ids[j] != ids[a])]
        logits = torch.stack([z[a] @ z[j] / t for j in cands])
        total += -(logits[cands.index(pos)] - torch.logsumexp(logits, 0)).item()
    return total / (2 * n)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_distinct_images_give_lightlys_loss_and_gradients(t):
    from lightly.loss import NTXentLoss

    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(12, 16, generator=g), torch.randn(12, 16, generator=g)
    a0, a1 = z0.clone().requires_grad_(True), z1.clone().requires_grad_(True)
    b0, b1 = z0.clone().requires_grad_(True), z1.clone().requires_grad_(True)
    ours = IndexedNTXentLoss(t)(a0, a1, torch.arange(12) + 100)
    theirs = NTXentLoss(temperature=t)(b0, b1)
    ours.backward(), theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert torch.allclose(a0.grad, b0.grad, atol=1e-6) and torch.allclose(a1.grad, b1.grad, atol=1e-6)


def test_an_image_twice_in_a_batch_is_never_its_own_negative():
    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    index = torch.tensor([5, 1, 2, 3, 5, 4, 6, 5])  # image 5 three times
    ours = IndexedNTXentLoss(0.5)(z0, z1, index).item()
    assert ours == pytest.approx(reference_loss(z0, z1, index, 0.5), rel=1e-6)
    unmasked = IndexedNTXentLoss(0.5)(z0, z1, torch.arange(8)).item()
    assert not math.isclose(ours, unmasked, rel_tol=1e-4)
    # the twin's similarity has no influence on the loss: move row 4 (image 5 again) onto row 0
    moved = z0.clone()
    moved[4] = z0[0] * 3
    grad_probe = moved.clone().requires_grad_(True)
    IndexedNTXentLoss(0.5)(grad_probe, z1, index).backward()
    assert torch.isfinite(grad_probe.grad).all()


def test_loss_is_float32_under_bf16_autocast():
    z0, z1 = torch.randn(6, 8).bfloat16(), torch.randn(6, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = IndexedNTXentLoss(0.1)(z0, z1, torch.arange(6))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_loss(z0.float(), z1.float(), torch.arange(6), 0.1), rel=1e-5)


def _ddp_worker(rank, port, z0, z1, index, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    n = len(z0) // 2
    a = z0[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    b = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = IndexedNTXentLoss(0.5, gather_distributed=True)(a, b, index[rank * n:(rank + 1) * n])
    loss.backward()
    out[rank] = (loss.detach(), a.grad)
    dist.destroy_process_group()


def test_two_processes_mask_an_image_drawn_on_both_and_equal_one_process():
    import torch.multiprocessing as mp

    from test_ddp import free_port

    g = torch.Generator().manual_seed(2)
    z0, z1 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    index = torch.tensor([0, 1, 2, 3, 4, 0, 6, 7])  # image 0 on rank 0 and on rank 1
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(free_port(), z0, z1, index, out), nprocs=2, join=True)
        results = dict(out)
    a = z0.clone().requires_grad_(True)
    single = IndexedNTXentLoss(0.5)(a, z1, index)
    single.backward()
    torch.testing.assert_close(torch.stack([results[r][0] for r in (0, 1)]).mean(), single.detach())
    torch.testing.assert_close(torch.cat([results[r][1] for r in (0, 1)]) / 2, a.grad)
    assert single.item() == pytest.approx(reference_loss(z0, z1, index, 0.5), rel=1e-6)
