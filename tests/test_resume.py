"""Stage 3: a run stopped twice by SIGUSR1 and re-run ends with an uninterrupted run's history.

The stops come without timing races: a wrapper around ``EpochCheckpoint.on_train_batch_start``
sends a real SIGUSR1 to this process while batch ``N`` trains, so the run saves after exactly
``N`` optimiser steps, as it would when SLURM's warning arrives during that batch.
"""

import os
import signal

import pandas as pd
import pytest
import torch

from conftest import TINY_TRAIN, run_stage
from wingclr.train.saving import EpochCheckpoint, loss_figure
from wingclr.cli import Stopped

SCRIPT = "3-training/train.py"
STEPS_PER_EPOCH = 30 // 8  # demo set of 30 images, batch 8


@pytest.fixture
def signal_at_step(monkeypatch):
    """``signal_at_step(n)``: SIGUSR1 arrives while the run's ``n``-th batch trains."""
    for name in [k for k in os.environ if k.startswith("SLURM")]:
        monkeypatch.delenv(name)  # outside SLURM a stop raises Stopped instead of requeueing
    target = {"step": None}
    start = EpochCheckpoint.on_train_batch_start

    def send(self, trainer, module, batch, batch_idx):
        start(self, trainer, module, batch, batch_idx)
        if target["step"] is not None and trainer.global_step == target["step"] - 1:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(EpochCheckpoint, "on_train_batch_start", send)
    return lambda step: target.update(step=step)


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_two_sigusr1_stops_give_the_uninterrupted_history(dataset_dir, tmp_path, signal_at_step,
                                                          capsys):
    out = tmp_path / "runs"

    def train(name, *extra):
        return run_stage(SCRIPT, "--data", dataset_dir, "--output", out, "--epochs", "3",
                         "--run-name", name, *TINY_TRAIN, *extra)

    train("whole")
    printed = capsys.readouterr()
    whole = pd.read_csv(out / "whole" / "metrics.csv")
    # stdout is not a terminal here: one line per epoch, no progress bar, then the checkpoint
    assert [line.split()[:2] for line in printed.out.splitlines() if line.startswith("epoch ")] == [
        ["epoch", "1/3"], ["epoch", "2/3"], ["epoch", "3/3"]]
    assert "it/s" not in printed.err
    assert printed.out.splitlines()[-1] == f"checkpoint: {out / 'whole' / 'whole.ckpt'}"
    assert not (out / "whole" / "last.ckpt").exists()  # removed once the run finished

    # stop 1: mid-epoch 1 (after its 2nd batch); stop 2: during the last batch of epoch 2
    for step, saved_epochs in ((2, 0), (2 * STEPS_PER_EPOCH, 2)):
        signal_at_step(step)
        with pytest.raises(Stopped, match=f"SIGUSR1: saved .* after {step} steps"):
            train("stopped", "--keep-last")
        last = _ckpt(out / "stopped" / "last.ckpt")
        assert last["global_step"] == step
        history = next(v["history"] for v in last["callbacks"].values() if "history" in v)
        assert [h["epoch"] for h in history] == [0, *range(1, saved_epochs + 1)]  # 0: the monitor
    signal_at_step(None)
    train("stopped", "--keep-last")

    stopped = pd.read_csv(out / "stopped" / "metrics.csv")
    assert stopped.epoch.tolist() == whole.epoch.tolist() == [0, 1, 2, 3]  # 0: the monitor's start
    assert stopped.train_loss[1:].notna().all() and whole.train_loss[1:].notna().all()
    final = {n: _ckpt(out / n / f"{n}.ckpt")["global_step"] for n in ("whole", "stopped")}
    assert final == {"whole": 3 * STEPS_PER_EPOCH, "stopped": 3 * STEPS_PER_EPOCH}
    assert (out / "stopped" / "last.ckpt").is_file()  # --keep-last


def test_epoch_loss_counts_the_batches_trained_before_a_stop():
    """The epoch's loss is the mean over all its batches, across a save and a resume."""

    class Strategy:
        root_device = torch.device("cpu")

        @staticmethod
        def reduce(value, reduce_op):
            return value

    class Trainer:
        strategy = Strategy()

    before = EpochCheckpoint(None)
    for loss in (3.0, 2.0):
        before._loss_sum = before._loss_sum + torch.tensor(loss)
        before.consumed += 1
    after = EpochCheckpoint(None)
    after.load_state_dict(before.state_dict())  # what the re-run reads from last.ckpt
    after._loss_sum, after.consumed = after._loss_sum + torch.tensor(1.0), after.consumed + 1
    assert after.epoch_loss(Trainer()) == pytest.approx(2.0)


def test_loss_plot_ticks_are_whole_epochs():
    history = [{"epoch": e, "train_loss": 3.0 - e / 10} for e in (1, 2, 3)]
    ticks = loss_figure(history, "run").axes[0].get_xticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks), ticks
