"""Stage 3: SimCLR training run with resume, finished-run skip and the checkpoint contract.

A run lives in ``<output>/<run name>/``. ``last.ckpt`` is rewritten atomically after every
epoch; re-running the same command resumes from it. When training ends, the weights go to
``<run name>.ckpt``, ``manifest.json`` is written, and ``last.ckpt`` is deleted (``--keep-last``
keeps it). SIGUSR1 and SIGTERM save after the
current batch and stop (SIGUSR1 requeues a SLURM job; otherwise the exit status is 128 + signal).
The lock, ``--overwrite`` beside the finished run and the settings comparison live in
:mod:`wingclr.ssl.run_folder`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from contextlib import nullcontext
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ..checkpoints import checkpoint_damage, read_checkpoint
from ..cli import (Stopped, UserError, check_gpu_request, check_input_size, check_minimum,
                   require_output_folder, stdout_is_terminal)
from ..outputs import MANIFEST, check_finished, read_manifest, write_manifest
from .checkpointing import EpochCheckpoint, plot_loss, save_checkpoint
from .grid import DEFAULTS, GRID_FLAGS, build_grid, fit_point_to_data, grid_point, run_name
from .loaders import build_data, training_images
from .recipes import apply_recipe
from .run_folder import (RunLock, changed_settings, finish_replacement, is_rank_zero, run_settings,
                         staging_dir)
from .simclr import NonFiniteLossError, SimCLR, scaled_lr

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def resolve_grid_args(args) -> list | None:
    """Fill ``batch_size``, ``epochs``, ``temperature`` from ``--param-i`` or the defaults and the
    recipe's flags from ``--recipe``; check the numeric flags before anything is read or created.

    Returns:
        The grid (:func:`~wingclr.ssl.grid.build_grid`) when ``--param-i`` chose the batch size, which
        may then be clamped to the data (:func:`~wingclr.ssl.grid.fit_point_to_data`); else None.
    """
    listed = [f for f in GRID_FLAGS if getattr(args, f, None)]
    grid = None
    if args.param_i is not None:
        fixed_batch = args.batch_size is not None
        grid = build_grid(args)
        args.batch_size, args.epochs, args.temperature = grid_point(args.param_i, grid)
        grid = None if fixed_batch else grid
    elif listed:
        raise UserError(f"--{listed[0].replace('_', '-')} lists a grid: pick one point with "
                        "--param-i i (see --list-grid)")
    for flag, default in DEFAULTS.items():  # None: not given (a given one fixes a --param-i axis)
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    if args.batch_size < 2 or args.epochs < 1 or not args.temperature > 0:
        raise UserError(f"--batch-size must be >= 2, --epochs >= 1 and --temperature > 0 (got "
                        f"{args.batch_size}, {args.epochs}, {args.temperature})")
    check_input_size(args.input_size)
    check_input_size(args.cache_size, "--cache-size")
    check_minimum(("--num-workers", args.num_workers, 0), ("--num-nodes", args.num_nodes, 1))
    apply_recipe(args)
    check_hardware(args)
    return grid


def cpu_cores() -> int:
    """CPU cores this process may use (a SLURM or taskset limit counts, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def device_count(devices) -> int | None:
    """Processes per node that ``--devices`` asks for (None: ``auto`` / ``-1``, decided later)."""
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return None
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--devices must be auto, a number or a GPU list like 0,1 (got "
                        f"{devices})") from None


def check_hardware(args) -> None:
    """Refuse a GPU request without a GPU, more GPUs than there are, and more CPU training
    processes than CPU cores (``--devices 4`` without a GPU would start 4 DDP processes)."""
    check_gpu_request("--accelerator", args.accelerator)
    n = device_count(args.devices)
    if n is not None and n < 1:
        raise UserError(f"--devices must be at least 1 (got {args.devices})")
    if torch.cuda.is_available() and args.accelerator != "cpu":
        gpus = torch.cuda.device_count()
        if n is not None and "," not in str(args.devices) and n > gpus:
            raise UserError(f"--devices {args.devices} but torch sees {gpus} GPU(s) on this node; "
                            f"pass --devices {gpus} or fewer")
    elif n is not None and n > 1:
        cores = cpu_cores()
        if n > cores:
            raise UserError(f"--devices {args.devices} without a GPU would start {n} CPU training "
                            f"processes on {cores} CPU cores; pass --devices 1 (one process "
                            "already uses every core)")
        print(f"note: no GPU: --devices {n} trains in {n} CPU processes (DDP over gloo)")


def slurm_plugins() -> list:
    """Under SLURM, Lightning's own SIGUSR1 requeue is switched off: :class:`EpochCheckpoint` does it."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def requeue(trainer: pl.Trainer) -> bool:
    """Requeue this SLURM job (rank 0) so it resumes from ``last.ckpt``.

    Returns:
        True when the job is requeued (or, on other ranks, left to rank 0); False outside SLURM
        or when ``scontrol`` fails.
    """
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")
    if not job or not trainer.is_global_zero:
        return bool(job)
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    print(f"requeued SLURM job {job}" if result.returncode == 0 else
          f"could not requeue job {job}: {result.stderr.strip()}; re-submit it to resume")
    return result.returncode == 0


def stop_after_signal(trainer: pl.Trainer, work: Path, signum: int) -> None:
    """After a stop signal saved ``last.ckpt``: requeue (SIGUSR1 under SLURM) or raise
    :class:`Stopped` (exit 128 + signal), so ``train && embed`` never goes on with an unfinished run.

    SIGTERM never requeues: ``scancel`` sends it, and a cancelled job must stay cancelled.
    """
    saved = f"{signal.Signals(signum).name}: saved {work / 'last.ckpt'} after {trainer.global_step} steps"
    if signum == signal.SIGUSR1:
        print(saved)
        if requeue(trainer):
            return
    raise Stopped(f"{saved}; re-run the same command to resume", signum)


def prepare_run_dir(run_dir: Path, args, wanted: dict) -> tuple[Path, Path | None] | None:
    """Decide where this command trains and whether it resumes (nothing is created here).

    A finished run whose checkpoint is missing or damaged is rebuilt from its ``last.ckpt`` (kept
    by ``--keep-last``; no epoch is trained again); without a whole one, ``--overwrite`` is asked for.

    Args:
        wanted: this command's :func:`~wingclr.ssl.run_folder.run_settings`.

    Returns:
        ``(folder to train in, checkpoint to resume from or None)``; the folder is the run
        folder, or with ``--overwrite`` the replacement's folder beside it. None when the run is
        finished with these settings (the caller skips it).

    Raises:
        UserError: the folder holds a finished or started run with other settings.
    """
    if is_rank_zero():
        finish_replacement(run_dir)  # a kill in the middle of an earlier swap
    if check_finished(run_dir, wanted, args.overwrite, "training run", compare=changed_settings):
        manifest = read_manifest(run_dir)
        ckpt = run_dir / manifest.get("checkpoint", f"{run_dir.name}.ckpt")
        damage = checkpoint_damage(ckpt, manifest.get("checkpoint_size"))
        if not damage:
            return None
        if checkpoint_damage(run_dir / "last.ckpt"):
            raise UserError(f"{ckpt} {damage} and the run kept no whole last.ckpt to rebuild it "
                            "from; re-run this command with --overwrite to train it again")
        print(f"note: {ckpt} {damage}; rebuilding it from last.ckpt")
    work = staging_dir(run_dir) if args.overwrite else run_dir
    last = work / "last.ckpt"
    if not last.exists():
        return work, None
    changed = changed_settings(read_checkpoint(last).get("wingclr", {}).get("settings", {}), wanted)
    if not changed:
        return work, last
    if args.overwrite:
        return work, None  # an earlier replacement with other settings: start it again
    raise UserError(f"{last} belongs to a run with other settings ({', '.join(changed[:4])} "
                    "differ); re-run with the same flags to resume, or pass --overwrite to start again")


def start_work_dir(run_dir: Path, work: Path, resume: Path | None) -> None:
    """Make the folder the run trains in, now that every check has passed."""
    if work == run_dir:
        (run_dir / MANIFEST).unlink(missing_ok=True)  # a finished run being rebuilt is unfinished
    elif resume is None:
        shutil.rmtree(work, ignore_errors=True)  # an earlier replacement with other settings
    work.mkdir(parents=True, exist_ok=True)


def nan_message(error: Exception, args, work: Path, epochs_saved: int) -> str:
    """The stop message for a non-finite loss, worded for what is on disk."""
    fix = f"lower --lr (now {args.lr:g}) or raise --temperature (now {args.temperature:g})"
    if epochs_saved and (work / "last.ckpt").exists():
        return (f"{error}: training stopped; {work / 'last.ckpt'} keeps epoch {epochs_saved}, the "
                f"last with a finite loss. To train again, {fix} and pass --overwrite")
    return f"{error}: training stopped before any epoch was saved; {fix} and re-run"


def train(args) -> dict | None:
    """Run stage 3 (see ``3-training/train.py`` for the arguments).

    Every check (flags, hardware, output folder, dataset scan, lock, resume decision) comes before
    the run folder is made, so a failed start leaves nothing behind.

    Returns:
        The manifest, or None when the run was already finished (skipped).

    Raises:
        Stopped: a stop signal saved ``last.ckpt`` and the run is not finished.
    """
    grid = resolve_grid_args(args)
    require_output_folder(args.output)
    images = training_images(args.data)
    if grid is not None and not fit_point_to_data(args, grid, len(images), images.root):
        return None  # another grid point trains the clamped batch size
    name = args.run_name or run_name(args.batch_size, args.epochs, args.temperature)
    run_dir = Path(args.output) / name
    wanted = run_settings(args, images)
    with RunLock(run_dir) if is_rank_zero() else nullcontext():
        plan = prepare_run_dir(run_dir, args, wanted)
        if plan is None:
            pending = " (an unfinished --overwrite is in {}; pass --overwrite to go on with it)".format(
                staging_dir(run_dir)) if staging_dir(run_dir).exists() else ""
            print(f"skip: {run_dir} is finished (manifest.json); pass --overwrite to train it "
                  f"again{pending}")
            return None
        work, resume = plan
        return fit_run(args, name, run_dir, work, resume, images, wanted)


def fit_run(args, name: str, run_dir: Path, work: Path, resume: Path | None, images,
            wanted: dict) -> dict | None:
    """Train in ``work`` (the run folder or its replacement's), then finish the run."""
    # ============ trainer: devices, precision, per-epoch checkpoints ============
    pl.seed_everything(args.seed, workers=True, verbose=False)
    cuda = torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")
    precision = args.precision if args.precision != "auto" else ("bf16-mixed" if cuda else "32-true")
    distributed = args.num_nodes > 1 or (str(args.devices) not in ("1", "auto") and args.devices != 1)
    terminal = stdout_is_terminal()  # else one line per epoch instead of a progress bar
    checkpointing = EpochCheckpoint(work, args.epochs, log_epochs=not terminal and not args.quiet)
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator=args.accelerator, devices=args.devices,
        num_nodes=args.num_nodes, strategy="ddp" if distributed else "auto",
        precision=precision, sync_batchnorm=args.sync_batchnorm and distributed, logger=False,
        enable_checkpointing=False, enable_model_summary=False, benchmark=cuda,
        callbacks=[checkpointing], default_root_dir=work, log_every_n_steps=10,
        num_sanity_val_steps=0, use_distributed_sampler=False, plugins=slurm_plugins(),
        enable_progress_bar=terminal and not args.quiet)

    # ============ data: cached or decoded images, two augmented views, balanced sampler ============
    data = build_data(args, trainer, images)
    checkpointing.sampler = data.sampler  # a mid-epoch resume skips the batches already trained

    # ============ model: backbone + projection head, NT-Xent across all processes ============
    # lightly's rule: lr x sqrt(batch / 256) (--lr-scaling sqrt); the phenotype recipe uses lr as given
    lr = scaled_lr(args.optimizer, args.batch_size, args.lr) if args.lr_scaling == "sqrt" else args.lr
    module = SimCLR(
        backbone=args.backbone, in_chans=data.plan.in_chans, rgb_bands=data.plan.rgb[0],
        input_size=args.input_size, temperature=args.temperature, optimizer=args.optimizer, lr=lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        gather_distributed=trainer.world_size > 1,
        augment=[cfg.to_dict() for cfg in data.views] if data.on_device else None,
        view_bands=data.plan.bands if data.plan.cross_modal else None,
        channels_last=args.channels_last == "on", compile=args.compile,
        pretrained=resume is None and args.pretrained == "imagenet",  # a resume loads its own weights
        meta={**data.meta, "lr": lr, "run_name": name, "settings": wanted, "precision": precision})
    meta = module.checkpoint_meta()

    # ============ fit: resume mid-epoch, stop signals save after the current batch ============
    if is_rank_zero():
        start_work_dir(run_dir, work, resume)
    if resume is not None:
        print(f"resuming {name} from {resume}")
    if work != run_dir and is_rank_zero():
        print(f"training the replacement of {run_dir} in {work}; the finished run stays until it is done")
    handlers = {s: signal.signal(s, checkpointing.request_stop) for s in STOP_SIGNALS}
    try:
        trainer.fit(module, data.loader, ckpt_path=resume)
    except SIGTERMException:  # Lightning's handler saw a SIGTERM sent before on_train_start
        checkpointing.stop_signal = checkpointing.stop_signal or signal.SIGTERM
    except BaseException as e:
        if is_rank_zero() and work.is_dir() and not any(work.iterdir()):
            work.rmdir()  # nothing was saved: no empty run folder stays behind
        if isinstance(e, NonFiniteLossError):
            raise UserError(nan_message(e, args, work, len(checkpointing.history))) from None
        raise
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    if checkpointing.stop_signal is not None and trainer.current_epoch < args.epochs:
        stop_after_signal(trainer, work, checkpointing.stop_signal)
        return None
    if trainer.interrupted or trainer.current_epoch < args.epochs:
        print(f"stopped at epoch {trainer.current_epoch}; re-run the same command to resume")
        return None

    # ============ save: final weights, loss plot, manifest (last), then tidy up ============
    ckpt = work / f"{name}.ckpt"
    save_checkpoint(trainer, ckpt, weights_only=True)  # every rank: a barrier
    if not trainer.is_global_zero:
        return None
    plot_loss(checkpointing.history, work / "loss.png", name)
    last = checkpointing.history[-1] if checkpointing.history else {}
    manifest = write_manifest(
        work, "3-training", wanted, seed=args.seed, packages=("pytorch-lightning", "lightly", "kornia"),
        counts={"images": len(data.loader.dataset), "epochs": args.epochs,
                "final_loss": last.get("train_loss")},
        run_name=name, checkpoint=ckpt.name, checkpoint_size=ckpt.stat().st_size, model=meta)
    if not args.keep_last:  # the finished run needs only its weights (--keep-last keeps it)
        (work / "last.ckpt").unlink(missing_ok=True)
    if work != run_dir:
        finish_replacement(run_dir)
        print(f"replaced {run_dir} with the newly trained run")
    print(f"checkpoint: {run_dir / ckpt.name}")
    return manifest
