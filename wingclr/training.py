"""Stage 3: SimCLR training run with resume, finished-run skip and the checkpoint contract.

A run lives in ``<output>/<run name>/``. ``last.ckpt`` is rewritten atomically after every
epoch; re-running the same command resumes from it. When training ends, the weights go to
``<run name>.ckpt`` and ``manifest.json`` is written last.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from .cli import UserError
from .grid import grid_point, run_name
from .loaders import build_training
from .recipes import apply_recipe
from .stage import MANIFEST, check_finished, settings, write_csv, write_manifest

RUN_FILES = ("last.ckpt", "metrics.csv", "loss.png", MANIFEST)


def resolve_grid_args(args) -> None:
    """Fill ``batch_size``, ``epochs``, ``temperature`` from ``--param-i`` or the defaults and the
    recipe's flags from ``--recipe``; check the numeric flags before anything is read or created."""
    explicit = [f for f in ("batch_size", "epochs", "temperature") if getattr(args, f) is not None]
    if args.param_i is not None:
        if explicit:
            raise UserError(f"--param-i sets batch size, epochs and temperature; drop "
                            f"--{explicit[0].replace('_', '-')} or --param-i")
        args.batch_size, args.epochs, args.temperature = grid_point(args.param_i)
    args.batch_size = 256 if args.batch_size is None else args.batch_size
    args.epochs = 300 if args.epochs is None else args.epochs
    args.temperature = 0.5 if args.temperature is None else args.temperature
    if args.batch_size < 2 or args.epochs < 1 or not args.temperature > 0:
        raise UserError(f"--batch-size must be >= 2, --epochs >= 1 and --temperature > 0 (got "
                        f"{args.batch_size}, {args.epochs}, {args.temperature})")
    apply_recipe(args)


def save_checkpoint(trainer: pl.Trainer, path: Path, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` to a temporary file, then rename: a kill never leaves half a file."""
    tmp = path.with_name(f".tmp-{path.name}")
    trainer.save_checkpoint(tmp, weights_only=weights_only)
    if trainer.is_global_zero:
        os.replace(tmp, path)


class EpochCheckpoint(pl.Callback):
    """Saves ``last.ckpt`` and ``metrics.csv`` after each epoch, and mid-epoch on SIGUSR1.

    SLURM sends SIGUSR1 shortly before a time limit or preemption (``--signal=SIGUSR1@120``):
    the run saves ``last.ckpt`` after the current batch, stops, and (under SLURM) requeues itself.
    The history, the batches already trained this epoch and the loops' state travel in the
    checkpoint, so the re-run trains exactly the batches that were left.
    """

    def __init__(self, run_dir: Path):
        self.run_dir, self.history = run_dir, []
        self.sampler = None  # set by train(): the loader's EpochBatchSampler
        self.consumed = 0  # batches trained in the current epoch
        self.stop_requested = False
        self._start, self._images = 0.0, 0

    def request_stop(self, signum=None, frame=None) -> None:
        self.stop_requested = True

    def on_train_start(self, trainer, pl_module):
        self._start = time.perf_counter()  # a run resumed mid-epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer, pl_module):
        self._start, self._images, self.consumed = time.perf_counter(), 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._images += len(batch[1]) * trainer.world_size
        self.consumed += 1
        if trainer.world_size > 1:  # every rank must stop after the same batch
            self.stop_requested = trainer.strategy.reduce_boolean_decision(self.stop_requested, all=False)
        if self.stop_requested and not trainer.should_stop:
            save_checkpoint(trainer, self.run_dir / "last.ckpt")
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module):
        if self.stop_requested and trainer.should_stop:
            return  # saved mid-epoch already; the epoch is not complete
        seconds = time.perf_counter() - self._start
        loss = trainer.callback_metrics.get("train_loss")
        self.history.append({
            "epoch": trainer.current_epoch + 1,
            "train_loss": float(loss) if loss is not None else math.nan,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "images_per_s": self._images / max(seconds, 1e-9),
            "seconds": seconds,
        })
        self.consumed = 0
        save_checkpoint(trainer, self.run_dir / "last.ckpt")
        if trainer.is_global_zero:
            import pandas as pd

            write_csv(self.run_dir / "metrics.csv", pd.DataFrame(self.history))

    def state_dict(self):
        return {"history": self.history, "consumed": self.consumed}

    def load_state_dict(self, state_dict):
        self.history = list(state_dict["history"])
        self.consumed = state_dict.get("consumed", 0)
        if self.sampler is not None:
            self.sampler.skip = self.consumed


def slurm_plugins() -> list:
    """Under SLURM, Lightning's own SIGUSR1 requeue is switched off: :class:`EpochCheckpoint` does it."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def requeue(trainer: pl.Trainer, run_dir: Path) -> None:
    """After SIGUSR1: requeue the SLURM job (rank 0) so it resumes from ``last.ckpt``."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")
    print(f"SIGUSR1: saved {run_dir / 'last.ckpt'} after {trainer.global_step} steps")
    if job and trainer.is_global_zero:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        print(f"requeued SLURM job {job}" if result.returncode == 0 else
              f"could not requeue job {job}: {result.stderr.strip()}; re-submit to resume")
    elif not job:
        print("re-run the same command to resume")


def read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist; check the path (runs live in "
                        "work/3-training/<run>/)") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120]}); delete it to start that run again") from None


def prepare_run_dir(run_dir: Path, args) -> Path | None:
    """Decide between skip / resume / fresh start for ``run_dir``.

    Returns:
        The checkpoint to resume from, or None for a fresh start.

    Raises:
        UserError: the folder holds a finished or started run with other settings.
        FileExistsError: the run is finished with the same settings (caller skips).
    """
    if check_finished(run_dir, args, args.overwrite, "training run"):
        raise FileExistsError(run_dir)
    if args.overwrite:
        for name in RUN_FILES + (f"{run_dir.name}.ckpt",):
            (run_dir / name).unlink(missing_ok=True)
    last = run_dir / "last.ckpt"
    if not last.exists():
        return None
    stored = read_checkpoint(last).get("wingclr", {}).get("settings", {})
    wanted = settings(args)
    changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if changed:
        raise UserError(f"{last} belongs to a run with other settings ({', '.join(changed[:4])} "
                        "differ); re-run with the same flags to resume, or pass --overwrite to start again")
    return last


def plot_loss(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .stage import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], marker=".")
    ax.set(xlabel="epoch", ylabel="NT-Xent loss", title=title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def train(args) -> dict | None:
    """Run stage 3 (see ``3-training/train.py`` for the arguments).

    Returns:
        The manifest, or None when the run was already finished (skipped).
    """
    resolve_grid_args(args)
    name = args.run_name or run_name(args.batch_size, args.epochs, args.temperature)
    run_dir = Path(args.output) / name
    try:
        resume = prepare_run_dir(run_dir, args)
    except FileExistsError:
        print(f"skip: {run_dir} is finished (manifest.json); pass --overwrite to train it again")
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(args.seed, workers=True, verbose=False)

    cuda = torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")
    precision = args.precision if args.precision != "auto" else ("bf16-mixed" if cuda else "32-true")
    distributed = args.num_nodes > 1 or (str(args.devices) not in ("1", "auto") and args.devices != 1)
    checkpointing = EpochCheckpoint(run_dir)
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator=args.accelerator, devices=args.devices,
        num_nodes=args.num_nodes, strategy="ddp" if distributed else "auto",
        precision=precision, sync_batchnorm=args.sync_batchnorm and distributed, logger=False,
        enable_checkpointing=False, enable_model_summary=False, benchmark=cuda,
        callbacks=[checkpointing], default_root_dir=run_dir, log_every_n_steps=10,
        num_sanity_val_steps=0, use_distributed_sampler=False, plugins=slurm_plugins())
    module, loader, checkpointing.sampler, meta = build_training(args, trainer, pretrained=resume is None)
    meta = {**meta, "run_name": name, "settings": settings(args), "precision": precision}
    module.wingclr_meta = meta
    if resume is not None:
        print(f"resuming {name} from {resume}")
    from .simclr import NonFiniteLossError

    signal.signal(signal.SIGUSR1, checkpointing.request_stop)
    try:
        trainer.fit(module, loader, ckpt_path=resume)
    except NonFiniteLossError as e:
        raise UserError(f"{e}: training stopped. Lower --lr (now {module.hparams.lr:.3g}) or raise "
                        f"--temperature; {run_dir}/last.ckpt keeps the last good epoch") from None
    if checkpointing.stop_requested:
        requeue(trainer, run_dir)
        return None
    if trainer.interrupted or trainer.current_epoch < args.epochs:
        print(f"stopped at epoch {trainer.current_epoch}; re-run the same command to resume")
        return None
    save_checkpoint(trainer, run_dir / f"{name}.ckpt", weights_only=True)  # every rank: a barrier
    if not trainer.is_global_zero:
        return None
    plot_loss(checkpointing.history, run_dir / "loss.png", name)
    last = checkpointing.history[-1] if checkpointing.history else {}
    return write_manifest(
        run_dir, "3-training", args, seed=args.seed, packages=("pytorch-lightning", "lightly", "kornia"),
        counts={"images": len(loader.dataset), "epochs": args.epochs,
                "final_loss": last.get("train_loss")},
        run_name=name, checkpoint=f"{name}.ckpt", model=meta)

