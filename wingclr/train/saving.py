"""Stage 3's bookkeeping: ``last.ckpt``, ``metrics.csv``, the epoch lines and ``loss.png``.

A run stopped by a signal and re-run gives the history an uninterrupted run gives: the same
epochs, each with the mean loss of all its batches (the batches trained before the stop count
too), the same number of optimiser steps, and the same augmentations (each batch's come from its
own seed: ``loaders.SeededBatches`` and ``SimCLR.views``), so on a CPU the same losses and weights.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from ..cli import write_errors
from ..outputs import TEMP_PREFIX, write_csv
from ..plotting import pyplot, save_figure
from .simclr import NonFiniteLossError

CHECK_EVERY = 50  # steps between reads of the device: finite loss, and (DDP) the ranks' stop flags


def save_checkpoint(trainer: pl.Trainer, path: Path, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` to a temporary file, then rename: a kill never leaves half a
    file, and a failed write (disk full) is one line and leaves no temporary file behind."""
    # the same short name on every DDP rank (only rank 0 writes): never longer than the final name
    tmp = path.with_name(f"{TEMP_PREFIX}{hashlib.blake2b(path.name.encode(), digest_size=4).hexdigest()}.ckpt")
    try:
        with write_errors(path):
            trainer.save_checkpoint(tmp, weights_only=weights_only)
            if trainer.is_global_zero:
                os.replace(tmp, path)
    finally:
        if trainer.is_global_zero:
            tmp.unlink(missing_ok=True)


def rng_states() -> dict:
    """This process's random number generator states (torch, CUDA, numpy, python)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # plain types: weights_only loads
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def start_line(*, name: str, device: str, precision: str, images: int, clusters: int,
               batch_size: int, recipe: str, epochs: int, checkpoint: Path) -> str:
    """The line stage 3 prints before anything slow (a log file shows at once what runs where)."""
    return (f"training {name} on {device} ({precision}): {images} images in {clusters} "
            f"cluster{'s' * (clusters != 1)}, batch {batch_size}, recipe {recipe}, {epochs} "
            f"epoch{'s' * (epochs != 1)}; checkpoint {checkpoint}")


ESTIMATE_AFTER = 5  # batches timed (after the first, which pays for warm-up) before the estimate


class EpochCheckpoint(pl.Callback):
    """Writes ``metrics.csv`` after each epoch; saves ``last.ckpt`` at the end of the first epoch
    that ends ``save_every_s`` after the last save, and mid-epoch on a stop signal.

    SLURM sends SIGUSR1 shortly before a time limit or preemption (``--signal=SIGUSR1@120``);
    ``kill``, ``scancel`` and shutdowns send SIGTERM; Ctrl-C sends SIGINT (a second Ctrl-C stops at
    once, without saving). Either way the run saves ``last.ckpt`` after
    the current batch and stops. The history, the batches already trained this epoch (with their
    summed loss, images and seconds), the random number states and the loops' state travel in the
    checkpoint, so the re-run trains exactly the batches that were left and ends the epoch with
    the row an uninterrupted run writes. A signal during an epoch's last batch ends that epoch
    normally (row and checkpoint) before stopping: Lightning would skip the end of an epoch
    resumed after its last batch.

    Nothing here waits for the device every step: the loss is summed on the device and checked
    for NaN / inf every :data:`CHECK_EVERY` steps and at the epoch's end (the error names the
    epoch and step where it first went bad); with several processes the stop flags are agreed on
    at the same steps (SLURM's warning comes 120 s early, ~50 steps are seconds).

    Args:
        run_dir: where ``last.ckpt`` and ``metrics.csv`` go.
        epochs: the run's epochs (for the epoch lines).
        log_epochs: print one line per finished epoch (when stdout is not a terminal and the
            progress bar is off), and once, after the first few batches, the estimated time per
            epoch.
        save_every_s: seconds between saves of ``last.ckpt`` at epoch ends (0: every epoch).
        keep_last: also save ``last.ckpt`` after the final epoch (``--keep-last``).
    """

    def __init__(self, run_dir: Path, epochs: int = 0, log_epochs: bool = False, *,
                 save_every_s: float = 0.0, keep_last: bool = True):
        self.run_dir, self.history, self.epochs, self.log_epochs = run_dir, [], epochs, log_epochs
        self.save_every_s, self.keep_last = save_every_s, keep_last
        self.sampler = None  # set by train(): the loader's EpochBatchSampler
        self.extra = {}  # more columns for this epoch's row (the monitor's score), set before epoch end
        self.stop_requested, self.stop_signal = False, None
        self.saved_epochs = 0  # whole epochs in the last.ckpt this run wrote or resumed from
        self._last_save = time.monotonic()
        self._reset_epoch()
        self._start = 0.0
        self._pending_rng = None  # restored before the first batch of a run resumed mid-epoch
        self._timed, self._timer = 0, 0.0  # batches of this process, for the epoch estimate

    def _reset_epoch(self) -> None:
        self.consumed = 0  # batches trained in the current epoch
        self._loss_sum, self._images, self._seconds = 0.0, 0, 0.0  # _seconds: before the last stop
        self._bad_step = None  # device tensor: the first step of the epoch whose loss was not finite

    def _save(self, trainer) -> None:
        save_checkpoint(trainer, self.run_dir / "last.ckpt")
        self.saved_epochs, self._last_save = trained_epochs(self.history), time.monotonic()

    def _agree(self, trainer, stop: bool) -> tuple[bool, int]:
        """``(any rank asked to stop, first non-finite step or -1)``: one read of the device (and
        with several processes one all-reduce)."""
        device = trainer.strategy.root_device
        bad = self._bad_step if self._bad_step is not None else torch.full((), -1, device=device)
        flags = torch.stack([torch.full((), int(stop), device=device), bad.to(device)])
        if trainer.world_size > 1:
            flags = trainer.strategy.reduce(flags, reduce_op="max")
        stop, step = flags.tolist()
        return bool(stop), int(step)

    def request_stop(self, signum=None, frame=None) -> None:
        if signum == signal.SIGINT and threading.current_thread() is threading.main_thread():
            # os.write, not print: a handler may interrupt a print to stderr (progress bar)
            os.write(2, b"\nCtrl-C: saving last.ckpt after the current batch (Ctrl-C again stops "
                        b"at once, without saving)\n")
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        self.stop_requested, self.stop_signal = True, signum

    def on_train_start(self, trainer, pl_module):
        # a run resumed mid-epoch gets no on_train_epoch_start
        self._start, self._last_save = time.perf_counter(), time.monotonic()
        # Lightning's own SIGTERM handler (installed by fit) ends the loop at the next batch
        # without saving; this one saves first, like SIGUSR1. Lightning restores ours after fit.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()
        self._reset_epoch()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._pending_rng is not None:
            if trainer.world_size == 1:  # ranks must keep their own streams; rank 0's is saved
                set_rng_states(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._images += len(batch[1]) * trainer.world_size
        self.consumed += 1
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss = loss.detach().float()
        self._loss_sum = self._loss_sum + loss  # a tensor: no GPU sync per step
        if self._bad_step is None:
            self._bad_step = torch.full((), -1, device=loss.device)
        self._bad_step = torch.where(torch.isfinite(loss) | (self._bad_step >= 0), self._bad_step,
                                     trainer.global_step)
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if self.log_epochs and trainer.is_global_zero:
            self._estimate(trainer)
        due = last_batch or self.consumed % CHECK_EVERY == 0
        # one process reads its own flag (a Python bool, free); ranks must stop after the same batch
        stop = self.stop_requested if trainer.world_size == 1 else False
        if due or stop:
            stop, bad = self._agree(trainer, self.stop_requested)
            if bad >= 0:
                raise NonFiniteLossError(f"loss became {float(self._loss_sum)} at epoch "
                                         f"{trainer.current_epoch + 1}, step {bad}")
            self.stop_requested = self.stop_requested or stop
        if stop and not trainer.should_stop and not last_batch:
            self._seconds += time.perf_counter() - self._start
            self._start = time.perf_counter()
            self._save(trainer)
            trainer.should_stop = True

    def _estimate(self, trainer) -> None:
        """Print the estimated time per epoch once, from the batches after the first."""
        self._timed += 1
        total = trainer.num_training_batches
        after = min(ESTIMATE_AFTER, int(total) - 1) if math.isfinite(total) else ESTIMATE_AFTER
        if self._timed == 1:
            self._timer = time.perf_counter()
        elif after >= 1 and self._timed == 1 + after:
            per_batch = (time.perf_counter() - self._timer) / after
            epoch = per_batch * total
            print(f"estimate: {per_batch:.2f} s per batch, ~{epoch:.0f} s per epoch of {total} "
                  f"batches, ~{epoch * self.epochs / 60:.1f} min for {self.epochs} epochs",
                  flush=True)

    def epoch_loss(self, trainer) -> float:
        """Mean loss of the epoch's batches (over every process)."""
        if not self.consumed:
            return math.nan
        mean = torch.as_tensor(self._loss_sum / self.consumed, device=trainer.strategy.root_device)
        return float(trainer.strategy.reduce(mean, reduce_op="mean"))

    def on_train_epoch_end(self, trainer, pl_module):
        if self.stop_requested and trainer.should_stop:
            return  # saved mid-epoch already; the epoch is not complete
        # one decision for this epoch end: a signal arriving after it is acted on at the next batch
        stop = self.stop_requested
        if trainer.world_size > 1:  # a signal since the last batch: every rank must agree
            stop = self.stop_requested = self._agree(trainer, stop)[0]
        seconds = self._seconds + time.perf_counter() - self._start
        row = {"epoch": trainer.current_epoch + 1, "train_loss": self.epoch_loss(trainer),
               "lr": trainer.optimizers[0].param_groups[-1]["lr"],
               "images_per_s": self._images / max(seconds, 1e-9), "seconds": seconds, **self.extra}
        self.extra = {}
        self.history.append(row)
        self._reset_epoch()
        due = time.monotonic() - self._last_save >= self.save_every_s
        if trainer.world_size > 1:  # rank 0's clock decides for all: saving is a collective
            due = trainer.strategy.broadcast(due, src=0)
        final = row["epoch"] >= trainer.max_epochs
        if stop or (due and not final) or (final and self.keep_last):
            self._save(trainer)
        if trainer.is_global_zero:
            import pandas as pd

            write_csv(self.run_dir / "metrics.csv", pd.DataFrame(self.history))
            if self.log_epochs:
                print(f"epoch {row['epoch']}/{self.epochs}  loss {row['train_loss']:.4f}  lr "
                      f"{row['lr']:.3g}  {row['images_per_s']:.1f} img/s  {seconds:.1f} s", flush=True)
        if stop:  # the signal came during the epoch's last batch
            trainer.should_stop = True

    def state_dict(self):
        return {"history": self.history, "consumed": self.consumed, "loss_sum": float(self._loss_sum),
                "images": self._images, "seconds": self._seconds, "rng": rng_states()}

    def load_state_dict(self, state_dict):
        self.history = list(state_dict["history"])
        self.saved_epochs = trained_epochs(self.history)
        self.consumed = state_dict.get("consumed", 0)
        self._loss_sum = state_dict.get("loss_sum", 0.0)
        self._images, self._seconds = state_dict.get("images", 0), state_dict.get("seconds", 0.0)
        if self.sampler is not None:  # the epoch in progress: the next after the finished ones
            self.sampler.skip, self.sampler.resume_epoch = self.consumed, trained_epochs(self.history)
        rng = state_dict.get("rng")
        if rng is not None and self.consumed:
            self._pending_rng = rng  # mid-epoch: the loader is made before the first batch
        elif rng is not None:
            set_rng_states(rng)  # epoch end: the next epoch's loader draws its seed from here


def trained_epochs(history: list[dict]) -> int:
    """Finished epochs in a history (the monitor's epoch-0 row is the start, not an epoch)."""
    return sum(1 for h in history if h.get("epoch", 0) >= 1)


def loss_figure(history: list[dict], title: str):
    """The loss curve, one tick per whole epoch (never 1.5); the monitor's kNN accuracy (epoch 0 =
    the starting weights) on a second axis when the run was monitored."""
    from matplotlib.ticker import MaxNLocator


    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    trained = [h for h in history if h.get("epoch", 0) >= 1]
    ax.plot([h["epoch"] for h in trained], [h["train_loss"] for h in trained], marker=".", label="loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="NT-Xent loss", title=title)
    ax.grid(alpha=0.3)
    scored = [h for h in history if "knn_accuracy" in h]  # the monitor adds it where it scored
    if scored:
        ax2 = ax.twinx()
        ax2.plot([h["epoch"] for h in scored], [h["knn_accuracy"] for h in scored], marker="s",
                 color="tab:orange", label="kNN accuracy (monitor)")
        if scored[0]["epoch"] == 0:
            ax2.axhline(scored[0]["knn_accuracy"], color="tab:orange", linestyle=":", linewidth=1,
                        label="kNN at the start")
        ax2.set_ylabel("monitor kNN accuracy", color="tab:orange")
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right", fontsize=8)
    return fig


def plot_loss(history: list[dict], path: Path, title: str) -> None:
    save_figure(loss_figure(history, title), path)
