"""Stage 3's monitor: is training making the embedding better or worse than where it started?

Every ``--monitor-every`` epochs, and once before the first step (epoch 0: the starting weights,
e.g. frozen ImageNet), the backbone embeds stage 2's ``train/`` and ``validation/`` images and a
cosine kNN (k = 20, stage 5's) predicts each validation image's class from the train images. The
classes are ``--labels`` (the meaningful score) or else the stage 1 clusters (a sanity check only:
stage 1 made them from ImageNet-like features, so the start is favoured). The score goes into
``metrics.csv`` (``knn_accuracy``) and ``loss.png``, and a one-line warning says when the current
weights score below the start. ``--select best`` makes the run's checkpoint the best-scoring
epoch's weights (kept in ``.best.ckpt`` while training) instead of the last epoch's.
lightly's benchmarks monitor training the same way (their kNN callback).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl

from ..cli import UserError
from ..labels import label_columns, read_labels
from ..probe import knn_predict
from .checkpoint_files import read_checkpoint
from .interpolate import interpolated_copy

KNN_K = 20
BEST_WEIGHTS = ".best.ckpt"  # the best-scoring weights while training (--select best); never a run's name


@dataclass(frozen=True)
class MonitorSet:
    """The images the monitor embeds and their classes.

    Attributes:
        root: folder the image paths are relative to.
        images: ``train`` images first, then ``validation`` ones.
        classes: class of each image (labels or clusters).
        n_train: how many of ``images`` are the kNN's reference set.
        source: what the classes are (``labels <file> (<column>)`` or ``stage 1 clusters``).
    """

    root: Path
    images: list[str]
    classes: np.ndarray
    n_train: int
    source: str


def monitor_set(data: Path, *, labels: Path | None = None, label_column: str = "label",
                id_column: str | None = None) -> MonitorSet | None:
    """Stage 2's train and validation images with their classes; None when ``data`` is not a stage 2
    folder with both splits (nothing to monitor).

    Raises:
        UserError: ``--labels`` does not label enough of the images (stage 5's matching rules).
    """
    from ..features import image_table

    data = Path(data)
    if not (data / "split.csv").is_file():
        return None
    root, table = image_table(data)
    table = table[table["split"].isin(["train", "validation"])].reset_index(drop=True)
    if labels is not None:
        column = label_columns(label_column)[0]
        table["class"] = read_labels(table, labels, columns=(column,), id_column=id_column,
                                     allow_partial=True)[column].to_numpy()
        source = f"labels {labels} ({column})"
    else:
        table["class"] = table["cluster"]
        source = "stage 1 clusters"
    table = table[table["class"].astype(str).str.strip() != ""]
    train, val = table[table["split"] == "train"], table[table["split"] == "validation"]
    if len(train) < 2 or not len(val):
        return None
    both = pd.concat([train, val])
    return MonitorSet(root, both["image"].tolist(), both["class"].astype(str).to_numpy(), len(train), source)


def knn_score(backbone, meta: dict, mset: MonitorSet, device: str, batch_size: int = 64) -> float:
    """kNN accuracy of the validation images against the train images (cosine, k = 20)."""
    from ..features import embed_images

    x, ok = embed_images(backbone, meta, mset.root, mset.images, batch_size=batch_size, num_workers=0,
                         device=device, progress=False)
    y, n = mset.classes, mset.n_train
    tr, va = np.flatnonzero(ok[:n]), n + np.flatnonzero(ok[n:])
    if not len(tr) or not len(va):
        raise UserError(f"no readable validation or train image under {mset.root} for the monitor")
    pred = knn_predict(x[tr], y[tr], x[va], k=min(KNN_K, len(tr)))
    return float(np.mean(pred == y[va]))


class KnnMonitor(pl.Callback):
    """Scores the backbone before training and every ``every`` epochs (and at the last epoch).

    Must come before :class:`~wingclr.train.saving.EpochCheckpoint` in the trainer's
    callbacks: the score of an epoch is handed to it (``checkpointing.extra``) before it writes
    the epoch's row.

    Args:
        mset: the images and classes (:func:`monitor_set`).
        meta: how the backbone reads images (the checkpoint's ``wingclr`` meta).
        checkpointing: the run's EpochCheckpoint (its history holds the scores).
        every: epochs between scores.
        best_path: where the best-scoring weights are saved (``--select best``), or None.
        log: print a line per score.
        start, alpha: with ``--interpolate`` (:mod:`~wingclr.train.interpolate`), the weights scored
            are those the checkpoint would hold: ``alpha`` of the trained ones mixed with ``start``.
    """

    def __init__(self, mset: MonitorSet, meta: dict, checkpointing, every: int, best_path: Path | None,
                 log: bool = True, start: dict | None = None, alpha: float = 1.0):
        self.mset, self.meta, self.ckpt, self.every = mset, meta, checkpointing, max(1, every)
        self.best_path, self.log = best_path, log
        self.start, self.alpha = start, alpha
        self.best = {"epoch": None, "knn_accuracy": -1.0}

    def _score(self, trainer, pl_module) -> float:
        """Rank 0 scores; under DDP the others take its score (their BatchNorm running statistics
        may differ, and every rank must take the same --select decision)."""
        score = float("nan")
        if trainer.is_global_zero:
            was_training = pl_module.training
            try:
                backbone = interpolated_copy(pl_module.backbone, self.start, alpha=self.alpha)
                score = knn_score(backbone, self.meta, self.mset, str(pl_module.device))
            finally:
                pl_module.train(was_training)
        return float(trainer.strategy.broadcast(score, src=0)) if trainer.world_size > 1 else score

    def _record(self, trainer, epoch: int, score: float) -> None:
        from .saving import save_checkpoint

        start = next((h["knn_accuracy"] for h in self.ckpt.history if h.get("epoch") == 0), score)
        if self.log and trainer.is_global_zero:
            print(f"monitor: epoch {epoch} kNN accuracy {score:.3f} on {len(self.mset.images) - self.mset.n_train} "
                  f"validation images ({self.mset.source})", flush=True)
            if score < start:
                print(f"warning: epoch {epoch} scores below the start (kNN {score:.3f} < {start:.3f} at "
                      "epoch 0): training is making the embedding worse on these classes; consider "
                      "--select best, a lower --interpolate or a lower --lr", flush=True)
        if score > self.best["knn_accuracy"]:
            self.best = {"epoch": epoch, "knn_accuracy": score}
            if self.best_path is not None:
                save_checkpoint(trainer, self.best_path, weights_only=True)

    def on_train_start(self, trainer, pl_module):
        if any(h.get("epoch") == 0 for h in self.ckpt.history):
            return  # resumed: the start was scored before
        score = self._score(trainer, pl_module)
        self.ckpt.history.append({"epoch": 0, "knn_accuracy": score})
        self._record(trainer, 0, score)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.ckpt.stop_requested and trainer.should_stop:
            return  # stopped mid-epoch: the epoch is not finished
        epoch = trainer.current_epoch + 1
        if epoch % self.every and epoch != trainer.max_epochs:
            return
        score = self._score(trainer, pl_module)
        self.ckpt.extra = {"knn_accuracy": score}
        self._record(trainer, epoch, score)

    def state_dict(self):
        return {"best": dict(self.best)}

    def load_state_dict(self, state_dict):
        self.best = dict(state_dict.get("best", self.best))


def monitor_epochs(s) -> int:
    """Epochs between monitor scores: ``--monitor-every``, by default a tenth of the run."""
    return max(1, s.epochs // 10) if s.monitor_every is None else s.monitor_every


def check_monitor(s) -> MonitorSet | None:
    """The monitor's images and classes (:func:`~wingclr.train.monitor.monitor_set`), or None when
    it is off or ``--data`` has no stage 2 split (a note says so when it was asked for)."""
    if monitor_epochs(s) == 0:
        if s.select == "best":
            raise UserError("--select best needs the monitor's scores: drop --monitor-every 0")
        return None
    mset = monitor_set(s.data, labels=s.labels, label_column=s.label_column, id_column=s.id_column)
    if mset is None:
        why = (f"{s.data} has no stage 2 split.csv with train and validation images (the monitor scores "
               "validation images against train images)")
        if s.select == "best" or s.labels is not None:
            flag = "--select best" if s.select == "best" else "--labels"
            raise UserError(f"{flag} needs the monitor, but {why}; run stage 2 and pass its folder as --data")
        if s.monitor_every:
            print(f"note: no monitor: {why}")
    return mset


def select_weights(module, monitor: KnnMonitor | None, s, work: Path) -> dict | None:
    """Load the best-scoring epoch's weights into ``module`` for ``--select best``.

    Returns:
        What the manifest records of the monitor (classes, start, best and last scores, the epoch
        whose weights the checkpoint holds), or None when the run was not monitored.
    """
    if monitor is None:
        return None
    scores = {h["epoch"]: h["knn_accuracy"] for h in monitor.ckpt.history if "knn_accuracy" in h}
    selected = s.epochs
    if s.select == "best" and monitor.best["epoch"] != s.epochs:
        selected = monitor.best["epoch"]
        module.load_state_dict(read_checkpoint(work / BEST_WEIGHTS)["state_dict"])
        print(f"--select best: the checkpoint holds epoch {selected}'s weights (kNN "
              f"{monitor.best['knn_accuracy']:.3f}; last epoch {scores.get(s.epochs, float('nan')):.3f})")
    return {"classes": monitor.mset.source, "every": monitor.every, "start": scores.get(0),
            "last": scores.get(s.epochs), "best_epoch": monitor.best["epoch"],
            "best": monitor.best["knn_accuracy"], "selected_epoch": selected,
            "validation_images": len(monitor.mset.images) - monitor.mset.n_train}
