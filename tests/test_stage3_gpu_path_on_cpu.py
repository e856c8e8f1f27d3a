"""Stage 3's GPU path: no host-device syncs per step, joint forward, LARS groups, the memory check,
the cache-only mode and wall-clock saves (all checked on the CPU)."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import TINY_TRAIN, run_stage
from wingclr.cli import UserError
from wingclr.train.augment import AugmentConfig
from wingclr.train.simclr import SimCLR

SCRIPT = "3-training/train.py"


def tiny_module(**kwargs) -> SimCLR:
    cfg = AugmentConfig(input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, vf_prob=0.5, rr_prob=0.5).to_dict()
    return SimCLR(backbone="resnet18", input_size=32, augment=[cfg, cfg], channels_last=True, **kwargs)


def uint8_batches(n: int) -> list:
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (8, 3, 40, 40), dtype=torch.uint8, generator=g), torch.arange(8))
            for _ in range(n)]


def test_a_training_step_never_waits_for_the_device(tmp_path):
    """Augmentation, forward, backward, optimiser step, logging and the per-step bookkeeping issue
    no op that makes the host wait for a GPU, and neither does the loss."""
    import pytorch_lightning as pl

    from wingclr.train.saving import EpochCheckpoint
    from wingclr.train.syncs import SyncCounter, step_sync_callback

    torch.manual_seed(0)
    module = tiny_module()
    with SyncCounter() as counter:
        module.views(uint8_batches(1)[0])
    assert counter.total == 0, counter.counts  # the target: 0 from augmentation
    syncs = step_sync_callback()  # with the real loss (IndexedNTXentLoss: its masks from indexes)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[EpochCheckpoint(tmp_path), syncs])
    trainer.fit(module, DataLoader(uint8_batches(5), batch_size=None))
    assert [dict(c) for c in syncs.steps] == [{}, {}, {}]


def test_joint_forward_gives_the_separate_loss_with_batchnorm_in_eval_mode():
    torch.manual_seed(1)
    separate = tiny_module(forward_views="separate").eval()
    joint = tiny_module(forward_views="joint").eval()
    joint.load_state_dict(separate.state_dict())
    x0, x1 = torch.rand(2, 6, 3, 32, 32)
    losses = [m.criterion(*m.projections(x0, x1)) for m in (separate, joint)]
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    joint.train(), separate.train()  # in training mode BatchNorm's batch differs: so do the losses
    assert not torch.allclose(joint.criterion(*joint.projections(x0, x1)),
                              separate.criterion(*separate.projections(x0, x1)))


def test_forward_mode_is_a_recipe_value_that_a_flag_overrides(dataset_dir, tmp_path):
    from wingclr.train.recipes import RECIPES

    assert {r["forward"] for r in RECIPES.values()} == {"separate"}
    run_stage(SCRIPT, "--data", dataset_dir, "--output", tmp_path, "--epochs", "1", "--run-name", "j",
              "--forward", "joint", *TINY_TRAIN)
    ckpt = torch.load(tmp_path / "j" / "j.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["forward_views"] == "joint"
    assert ckpt["wingclr"]["settings"]["forward"] == "joint"


def test_runs_recorded_before_the_forward_and_interpolate_settings_still_match():
    from wingclr.train.run_folder import changed_settings

    old = {"epochs": 3}  # recorded before --forward and --interpolate: separate passes, raw weights
    assert changed_settings(old, {"epochs": 3, "forward": "separate", "interpolate": 1.0}) == []
    assert changed_settings(old, {"epochs": 3, "forward": "joint", "interpolate": 1.0}) == ["forward"]
    assert changed_settings(old, {"epochs": 3, "forward": "separate", "interpolate": 0.25}) == ["interpolate"]


def test_lars_leaves_batchnorm_and_biases_without_weight_decay_or_adaptation():
    from wingclr.train.simclr import lars_groups

    module = tiny_module()
    groups = {g["name"]: g for g in lars_groups(module, 1e-6)}
    decayed = {id(p) for p in groups["weights"]["params"]}
    names = {id(p): n for n, p in module.named_parameters()}
    assert groups["weights"]["weight_decay"] == 1e-6 and groups["no_weight_decay"]["weight_decay"] == 0
    assert all(names[i].endswith("weight") and "bn" not in names[i] for i in decayed)
    plain = {names[id(p)] for p in groups["no_weight_decay"]["params"]}
    assert "backbone.bn1.weight" in plain and "backbone.bn1.bias" in plain
    assert any(n.endswith("bias") and "projection_head" in n for n in plain)
    assert len(decayed) + len(plain) == len(list(module.parameters()))
    # lightly's LARS adapts only groups with weight decay: a BatchNorm weight moves by lr x grad
    from lightly.utils.lars import LARS

    bn = torch.nn.Parameter(torch.ones(4))
    bn.grad = torch.full((4,), 0.5)
    LARS([{"params": [bn], "weight_decay": 0.0}], lr=0.1, momentum=0.0).step()
    torch.testing.assert_close(bn.detach(), torch.full((4,), 0.95))


def test_memory_estimate_is_calibrated_on_resnet50_and_scales_with_the_step():
    from wingclr.train.memory import OVERHEAD_GIB, activation_gib

    def gib(**kw):
        args = dict(backbone="resnet50", input_size=224, batch_per_gpu=256, precision="bf16-mixed")
        return activation_gib(**{**args, **kw}) - OVERHEAD_GIB

    assert gib() == pytest.approx(34, abs=0.5)
    assert gib(batch_per_gpu=512) == pytest.approx(2 * gib())
    assert gib(precision="32-true") == pytest.approx(2 * gib())
    assert gib(input_size=112) == pytest.approx(gib() / 4)
    assert gib(backbone="resnet18") < gib()


def test_a_batch_too_large_for_the_gpu_is_refused_in_one_line_with_the_fix(monkeypatch):
    from wingclr.train.memory import check_gpu_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2**30, 80 * 2**30))
    step = dict(backbone="resnet50", input_size=224, precision="bf16-mixed", device="cuda:0")
    check_gpu_memory(batch_per_gpu=256, **step)  # ~36 GiB in 40 free: fits
    with pytest.raises(UserError) as err:
        check_gpu_memory(batch_per_gpu=512, processes=2, **step)
    text = str(err.value)
    assert "\n" not in text
    for words in ("~70 GiB per GPU", "resnet50, 224 px, 512 images x 2 views per GPU", "40 GiB free",
                  "--batch-size 512", "256 per GPU", "4 GPUs"):
        assert words in text, (words, text)


def test_cache_only_builds_the_cache_and_trains_nothing(dataset_dir, tmp_path, capsys):
    out, cache = tmp_path / "runs", tmp_path / "cache"
    assert run_stage(SCRIPT, "--data", dataset_dir, "--output", out, "--cache-dir", cache,
                     "--cache-only", *TINY_TRAIN) is None
    built = list(cache.glob("*/index.json"))
    assert len(built) == 1 and not out.exists()
    assert f"cache: {built[0].parent}" in capsys.readouterr().out


def test_last_ckpt_waits_for_the_save_interval(dataset_dir, tmp_path, monkeypatch):
    """Epochs of seconds: with the default 10-minute interval no epoch end writes last.ckpt."""
    from wingclr.train import saving

    saved = []
    save = saving.save_checkpoint
    # only the epoch checkpoints count (run.py may bind the patched function too when it is first
    # imported here, and then its final save of the run's checkpoint is seen as well)
    monkeypatch.setattr(saving, "save_checkpoint", lambda t, path, **kw: (
        path.name == "last.ckpt" and saved.append(path.name)) or save(t, path, **kw))
    run_stage(SCRIPT, "--data", dataset_dir, "--output", tmp_path, "--epochs", "2", "--run-name", "i",
              *TINY_TRAIN)
    assert saved == [] and (tmp_path / "i" / "i.ckpt").is_file()
    run_stage(SCRIPT, "--data", dataset_dir, "--output", tmp_path, "--epochs", "2", "--run-name", "e",
              "--save-every-min", "0", "--keep-last", *TINY_TRAIN)
    assert saved == ["last.ckpt", "last.ckpt"]  # every epoch end (the last one: --keep-last)


def fake_trainer(step: int, last: bool) -> SimpleNamespace:
    return SimpleNamespace(world_size=1, global_step=step, current_epoch=1, should_stop=False,
                           strategy=SimpleNamespace(root_device=torch.device("cpu")),
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(
                               batch_progress=SimpleNamespace(is_last_batch=last))))


def test_a_nan_loss_is_found_at_the_next_check_naming_epoch_and_step(monkeypatch):
    from wingclr.train import saving
    from wingclr.train.simclr import NonFiniteLossError

    reads = []
    agree = saving.EpochCheckpoint._agree
    monkeypatch.setattr(saving.EpochCheckpoint, "_agree",
                        lambda self, *a: reads.append(1) or agree(self, *a))
    cb = saving.EpochCheckpoint(None)
    batch = (None, torch.arange(4))
    for step, loss in enumerate([1.0, float("nan"), 2.0], 1):
        cb.on_train_batch_end(fake_trainer(step, False), None, torch.tensor(loss), batch, step)
    assert reads == []  # no read of the device between checks
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 2, step 2"):
        cb.on_train_batch_end(fake_trainer(4, True), None, torch.tensor(1.0), batch, 4)
