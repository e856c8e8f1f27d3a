"""Stage 3: SimCLR training run with resume, finished-run skip and the checkpoint contract.

A run lives in ``<output>/<run name>/``. ``last.ckpt`` is rewritten atomically at the end of
the first epoch ``--save-every-min`` minutes after the last save, and on SIGUSR1 / SIGTERM;
re-running the same command resumes from it. When training ends, the weights go to
``<run name>.ckpt``, ``manifest.json`` is written, and ``last.ckpt`` is deleted (``--keep-last``
keeps it). SIGUSR1, SIGTERM and SIGINT (Ctrl-C) save after the
current batch and stop (SIGUSR1 requeues a SLURM job; otherwise the exit status is 128 + signal).
The lock, ``--overwrite`` beside the finished run and the settings comparison live in
:mod:`wingclr.train.run_folder`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import warnings
from dataclasses import replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .checkpoint_files import checkpoint_damage, read_checkpoint
from ..cli import (Stopped, UserError, check_gpu_request, check_input_size, check_minimum,
                   require_output_folder, stdout_is_terminal)
from ..outputs import MANIFEST, check_finished, read_manifest, remove_stale_temps, write_manifest
from .saving import EpochCheckpoint, plot_loss, save_checkpoint, start_line, trained_epochs
from .grid import fit_point_to_data, run_name
from .batchnorm import sync_batchnorm
from .loaders import RankSeeds, build_cache_only, build_data, training_images
from .memory import check_gpu_memory
from .interpolate import interpolated, start_state, state_copy
from .monitor import BEST_WEIGHTS, KnnMonitor, check_monitor, monitor_epochs, select_weights
from .run_folder import (RunLock, changed_settings, finish_replacement, is_rank_zero, run_settings,
                         staging_dir)
from .recipes import resolve
from .settings import TrainSettings
from .simclr import NonFiniteLossError, SimCLR, scaled_lr

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)  # SIGINT: Ctrl-C


def check_settings(s: TrainSettings) -> None:
    """Check the numeric and hardware flags before anything is read or created."""
    check_input_size(s.input_size)
    check_input_size(s.cache_size, "--cache-size")
    check_minimum(("--num-workers", s.num_workers, 0), ("--num-nodes", s.num_nodes, 1),
                  ("--save-every-min", s.save_every_min, 0))
    if s.run_name == "last":  # its checkpoint would be last.ckpt, the resume file removed at the end
        raise UserError("--run-name last would name the run's checkpoint last.ckpt, the file stage 3 "
                        "resumes from and removes when the run finishes; choose another --run-name")
    if s.monitor_every is not None and s.monitor_every < 0:
        raise UserError(f"--monitor-every must be >= 0 (0 = off), got {s.monitor_every}")
    check_hardware(accelerator=s.accelerator, devices=s.devices)


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


def check_hardware(*, accelerator: str, devices: str) -> None:
    """Refuse a GPU request without a GPU, more GPUs than there are, and more CPU training
    processes than CPU cores (``--devices 4`` without a GPU would start 4 DDP processes)."""
    check_gpu_request("--accelerator", accelerator)
    n = device_count(devices)
    if n is not None and n < 1:
        raise UserError(f"--devices must be at least 1 (got {devices})")
    if torch.cuda.is_available() and accelerator != "cpu":
        gpus = torch.cuda.device_count()
        if n is not None and "," not in str(devices) and n > gpus:
            raise UserError(f"--devices {devices} but torch sees {gpus} GPU(s) on this node; "
                            f"pass --devices {gpus} or fewer")
    elif n is not None and n > 1:
        cores = cpu_cores()
        if n > cores:
            raise UserError(f"--devices {devices} without a GPU would start {n} CPU training "
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


def prepare_run_dir(run_dir: Path, *, wanted: dict, overwrite: bool) -> tuple[Path, Path | None] | None:
    """Decide where this command trains and whether it resumes (nothing is created here).

    A finished run whose checkpoint is missing or damaged is rebuilt from its ``last.ckpt`` (kept
    by ``--keep-last``; no epoch is trained again); without a whole one, ``--overwrite`` is asked for.

    Args:
        wanted: this command's :func:`~wingclr.train.run_folder.run_settings`.

    Returns:
        ``(folder to train in, checkpoint to resume from or None)``; the folder is the run
        folder, or with ``--overwrite`` the replacement's folder beside it. None when the run is
        finished with these settings (the caller skips it).

    Raises:
        UserError: the folder holds a finished or started run with other settings.
    """
    if is_rank_zero():
        finish_replacement(run_dir)  # a kill in the middle of an earlier swap
    if check_finished(run_dir, wanted, overwrite, "training run", compare=changed_settings):
        manifest = read_manifest(run_dir)
        ckpt = run_dir / manifest.get("checkpoint", f"{run_dir.name}.ckpt")
        damage = checkpoint_damage(ckpt, manifest.get("checkpoint_size"))
        if not damage:
            return None
        if checkpoint_damage(run_dir / "last.ckpt"):
            raise UserError(f"{ckpt} {damage} and the run kept no whole last.ckpt to rebuild it "
                            "from; re-run this command with --overwrite to train it again")
        print(f"note: {ckpt} {damage}; rebuilding it from last.ckpt")
    work = staging_dir(run_dir) if overwrite else run_dir
    last = work / "last.ckpt"
    if not last.exists():
        return work, None
    meta = read_checkpoint(last).get("wingclr")
    old = meta.get("settings") if isinstance(meta, dict) else None
    changed = changed_settings(old if isinstance(old, dict) else {}, wanted)
    if not changed:
        return work, last
    if overwrite:
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
    remove_stale_temps(work)  # of a checkpoint write a kill -9 cut short (the run lock is ours)


def nan_message(error: Exception, s: TrainSettings, work: Path, epochs_saved: int) -> str:
    """The stop message for a non-finite loss, worded for what is on disk."""
    fix = f"lower --lr (now {s.lr:g}) or raise --temperature (now {s.temperature:g})"
    if epochs_saved and (work / "last.ckpt").exists():
        return (f"{error}: training stopped; {work / 'last.ckpt'} keeps epoch {epochs_saved}, the "
                f"last with a finite loss. To train again, {fix} and pass --overwrite")
    return f"{error}: training stopped before any epoch was saved; {fix} and re-run"


def train(s: TrainSettings) -> dict | None:
    """Run stage 3 (``TrainSettings.from_args`` of ``3-training/train.py``'s arguments).

    Every check (flags, hardware, output folder, dataset scan, lock, resume decision) comes before
    the run folder is made, so a failed start leaves nothing behind.

    Returns:
        The manifest, or None when the run was already finished, or another grid point trains
        it (skipped).

    Raises:
        Stopped: a stop signal saved ``last.ckpt`` and the run is not finished.
    """
    s, grid = resolve(s)
    check_settings(s)
    images = training_images(s.data)
    if s.cache_only:
        print(f"cache: {build_cache_only(s, images)} ({len(images)} images); grid runs read it")
        return None
    require_output_folder(s.output)
    requested = None
    if grid is not None:  # --param-i chose the batch size: fit it to the data
        batch_size = fit_point_to_data(grid, s.param_i, len(images), images.root)
        if batch_size is None:
            return None  # another grid point trains the clamped batch size
        if batch_size != s.batch_size:
            s, requested = replace(s, batch_size=batch_size), s.batch_size
    mset = check_monitor(s)
    name = s.run_name or run_name(s.batch_size, s.epochs, s.temperature)
    run_dir = Path(s.output) / name
    wanted = run_settings(s, images, batch_size_requested=requested)
    trainer, checkpointing = make_trainer(s, Path(s.output))
    lock = RunLock(run_dir) if is_rank_zero() else None

    def decide():
        if lock is not None:
            lock.acquire()
        return prepare_run_dir(run_dir, wanted=wanted, overwrite=s.overwrite)

    try:
        plan = rank_zero_decides(trainer, decide)
        if plan is None:
            pending = " (an unfinished --overwrite is in {}; pass --overwrite to go on with it)".format(
                staging_dir(run_dir)) if staging_dir(run_dir).exists() else ""
            print(f"skip: {run_dir} is finished (manifest.json); pass --overwrite to train it "
                  f"again{pending}")
            return None
        work, resume = plan
        checkpointing.run_dir = work
        return fit_run(s, trainer, checkpointing, name, run_dir, work, resume, images, wanted, mset)
    finally:
        if lock is not None:
            lock.release()


def make_trainer(s: TrainSettings, root: Path) -> tuple[pl.Trainer, EpochCheckpoint]:
    """The trainer (devices, precision) and its per-epoch checkpoint callback (its ``run_dir``
    is set once the run folder is decided). Nothing is written yet."""
    pl.seed_everything(s.seed, workers=True, verbose=False)
    cuda = torch.cuda.is_available() and s.accelerator in ("auto", "gpu", "cuda")
    precision = s.precision if s.precision != "auto" else ("bf16-mixed" if cuda else "32-true")
    distributed = s.num_nodes > 1 or (str(s.devices) not in ("1", "auto") and s.devices != 1)
    terminal = stdout_is_terminal()  # else one line per epoch instead of a progress bar
    checkpointing = EpochCheckpoint(root, s.epochs, log_epochs=not terminal and not s.quiet,
                                    save_every_s=60 * s.save_every_min, keep_last=s.keep_last)
    trainer = pl.Trainer(
        max_epochs=s.epochs, accelerator=s.accelerator, devices=s.devices,
        num_nodes=s.num_nodes, strategy="ddp" if distributed else "auto",
        precision=precision, logger=False,
        enable_checkpointing=False, enable_model_summary=False, benchmark=cuda,
        callbacks=[checkpointing, RankSeeds(s.seed)], default_root_dir=root, log_every_n_steps=10,
        num_sanity_val_steps=0, use_distributed_sampler=False, plugins=slurm_plugins(),
        enable_progress_bar=terminal and not s.quiet)
    return trainer, checkpointing


def started_together(trainer: pl.Trainer) -> bool:
    """True when SLURM, torchrun or another launcher started every process of a multi-process
    run at once. (Lightning itself starts the other processes only when ``fit`` begins.)"""
    from lightning_fabric.plugins.environments import LightningEnvironment

    env = getattr(trainer.strategy, "cluster_environment", None)
    return (trainer.world_size > 1 and env is not None and env.creates_processes_externally
            and not isinstance(env, LightningEnvironment))


def rank_zero_decides(trainer: pl.Trainer, step):
    """``step()`` on rank 0 (the lock, the folder checks), its result or refusal on every rank.

    When every process started at once, the others would otherwise go on to wait for rank 0
    at the start of training until the rendezvous times out (30 minutes) after rank 0 refused:
    the process group is started here, rank 0 broadcasts what ``step`` returned or the error it
    raised, and every process raises the same :class:`UserError`. Elsewhere (one process, or
    Lightning starting the others in ``fit``) each process runs ``step`` itself.
    """
    import torch.distributed as dist

    if not started_together(trainer):
        return step()
    trainer.strategy.setup_environment()  # the process group, as fit would start it
    outcome, failure = [None], None
    if trainer.global_rank == 0:
        try:
            outcome = [("ok", step())]
        except Exception as e:  # noqa: BLE001 (re-raised below, after the others heard of it)
            failure = e
            why = str(e) if isinstance(e, UserError) else f"rank 0 failed ({type(e).__name__}: {e})"
            outcome = [("error", why)]
    dist.broadcast_object_list(outcome, src=0)
    dist.barrier()  # rank 0 exits only after every process has its answer
    if failure is not None:
        raise failure
    kind, value = outcome[0]
    if kind == "error":
        raise UserError(value)
    return value


def fit_run(s: TrainSettings, trainer: pl.Trainer, checkpointing: EpochCheckpoint, name: str,
            run_dir: Path, work: Path, resume: Path | None, images, wanted: dict, mset=None) -> dict | None:
    """Train in ``work`` (the run folder or its replacement's), then finish the run."""
    precision = trainer.precision
    if is_rank_zero() and not s.quiet:  # at once: building the cache or the first batch is slow
        nodes = f" x {s.num_nodes} nodes" if s.num_nodes > 1 else ""
        cuda = trainer.strategy.root_device.type == "cuda"
        device = f"{'GPU' if cuda else 'CPU'} (--devices {s.devices}{nodes})"
        print(start_line(name=name, device=device, precision=precision, images=len(images),
                         clusters=len(set(images.clusters)), batch_size=s.batch_size,
                         recipe=s.recipe, epochs=s.epochs, checkpoint=run_dir / f"{name}.ckpt"),
              flush=True)

    if trainer.strategy.root_device.type == "cuda":  # before the cache is built: fail in seconds
        check_gpu_memory(backbone=s.backbone, input_size=s.input_size, precision=precision,
                         batch_per_gpu=s.batch_size // trainer.world_size,
                         device=trainer.strategy.root_device, processes=trainer.world_size)

    # ============ data: cached or decoded images, two augmented views, balanced sampler ============
    data = build_data(s, trainer, images)
    checkpointing.sampler = data.sampler  # a mid-epoch resume skips the batches already trained

    # ============ model: backbone + projection head, NT-Xent across all processes ============
    # lightly's rule: lr x sqrt(batch / 256) (--lr-scaling sqrt); the phenotype recipe uses lr as given
    lr = scaled_lr(s.optimizer, s.batch_size, s.lr) if s.lr_scaling == "sqrt" else s.lr
    sync = s.sync_batchnorm and trainer.world_size > 1  # the trainer's: --devices auto counts too
    module = SimCLR(
        backbone=s.backbone, in_chans=data.plan.in_chans, rgb_bands=data.plan.rgb[0],
        input_size=s.input_size, temperature=s.temperature, optimizer=s.optimizer, lr=lr,
        weight_decay=s.weight_decay, warmup_epochs=s.warmup_epochs,
        gather_distributed=trainer.world_size > 1,
        augment=[cfg.to_dict() for cfg in data.views] if data.on_device else None,
        view_bands=data.plan.bands if data.plan.cross_modal else None,
        channels_last=s.channels_last == "on", compile=s.compile, seed=s.seed, forward_views=s.forward,
        pretrained=resume is None and s.pretrained == "imagenet",  # a resume loads its own weights
        backbone_lr_scale=s.backbone_lr_scale if s.pretrained == "imagenet" else 1.0,
        bn_frozen=s.bn == "frozen",
        meta={**data.meta, "lr": lr, "run_name": name, "settings": wanted, "precision": precision,
              "sync_batchnorm": sync})
    if sync:  # global BN (the SimCLR paper, lightly): the same model on any number of GPUs
        module = sync_batchnorm(module, cuda=trainer.strategy.root_device.type == "cuda")
    meta = module.checkpoint_meta()
    alpha = s.interpolate if s.pretrained == "imagenet" else 1.0  # WiSE-FT: mixed with the start
    start = None
    if alpha < 1:  # a fresh module holds the pretrained weights now; a resumed one must rebuild them
        start = state_copy(module.backbone) if resume is None else start_state(
            backbone=s.backbone, in_chans=data.plan.in_chans, rgb_bands=data.plan.rgb[0],
            input_size=s.input_size)
    monitor = None
    if mset is not None:  # scores before the checkpoint callback writes the epoch's row
        monitor = KnnMonitor(mset, meta, checkpointing, monitor_epochs(s),
                             work / BEST_WEIGHTS if s.select == "best" else None, log=not s.quiet,
                             start=start, alpha=alpha)
        trainer.callbacks.insert(0, monitor)

    # ============ fit: resume mid-epoch, stop signals save after the current batch ============
    if is_rank_zero():
        start_work_dir(run_dir, work, resume)
    if resume is not None:
        print(f"resuming {name} from {resume}")
    if work != run_dir and is_rank_zero():
        print(f"training the replacement of {run_dir} in {work}; the finished run stays until it is done")
    handlers = {sig: signal.signal(sig, checkpointing.request_stop) for sig in STOP_SIGNALS}
    try:
        with warnings.catch_warnings():
            # Lightning warns that a resume from mid-epoch "can cause unreliable results" because
            # the DataLoader has no state_dict. Ours needs none: the sampler skips the batches
            # already trained (EpochBatchSampler.skip), each batch's augmentations come from its
            # own seed (SeededBatches; the device path's from the random states in last.ckpt),
            # so the resumed epoch trains the batches an uninterrupted run trains
            # (tests/test_long_names_and_signal_stops.py compares the losses).
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended "
                                    "before the epoch ended")
            # weights_only: Lightning's own read of last.ckpt runs no pickled code either
            trainer.fit(module, data.loader, ckpt_path=resume, weights_only=True)
    except SIGTERMException:  # Lightning's handler saw a SIGTERM sent before on_train_start
        checkpointing.stop_signal = checkpointing.stop_signal or signal.SIGTERM
    except BaseException as e:
        if is_rank_zero() and work.is_dir() and not any(work.iterdir()):
            work.rmdir()  # nothing was saved: no empty run folder stays behind
        if isinstance(e, NonFiniteLossError):
            raise UserError(nan_message(e, s, work, checkpointing.saved_epochs)) from None
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    # epochs finished, from the history: a stop during the last epoch also ends Lightning's last
    # epoch (current_epoch reaches --epochs) although that epoch's batches were not all trained
    finished = trained_epochs(checkpointing.history)
    if checkpointing.stop_signal is not None and finished < s.epochs:
        stop_after_signal(trainer, work, checkpointing.stop_signal)
        return None
    if trainer.interrupted or finished < s.epochs:
        print(f"stopped at epoch {finished}; re-run the same command to resume")
        return None

    # ============ save: final (or best) weights, loss plot, manifest (last), then tidy up ============
    monitored = select_weights(module, monitor, s, work)
    if start is not None:
        module.backbone.load_state_dict(interpolated(module.backbone.state_dict(), start, alpha=alpha))
        if is_rank_zero() and not s.quiet:
            print(f"--interpolate {alpha:g}: the checkpoint's backbone is {1 - alpha:g} x the ImageNet "
                  f"start + {alpha:g} x the trained weights")
    ckpt = work / f"{name}.ckpt"
    save_checkpoint(trainer, ckpt, weights_only=True)  # every rank: a barrier
    if not trainer.is_global_zero:
        return None
    plot_loss(checkpointing.history, work / "loss.png", name)
    last = checkpointing.history[-1] if checkpointing.history else {}
    manifest = write_manifest(
        work, "3-training", wanted, seed=s.seed, packages=("pytorch-lightning", "lightly", "kornia"),
        counts={"images": len(data.loader.dataset), "epochs": s.epochs,
                "final_loss": last.get("train_loss")},
        run_name=name, checkpoint=ckpt.name, checkpoint_size=ckpt.stat().st_size, model=meta,
        monitor=monitored)
    if not s.keep_last:  # the finished run needs only its weights (--keep-last keeps it)
        (work / "last.ckpt").unlink(missing_ok=True)
    (work / BEST_WEIGHTS).unlink(missing_ok=True)
    if work != run_dir:
        finish_replacement(run_dir)
        print(f"replaced {run_dir} with the newly trained run")
    print(f"checkpoint: {run_dir / ckpt.name}")
    return manifest
