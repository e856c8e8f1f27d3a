"""DataLoaders, samplers and model set-up for stage 3 training."""

from __future__ import annotations

import random
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from torch.utils.data import DataLoader, Dataset, Sampler

from ..cache import ensure_cache
from ..cli import UserError
from ..data import FolderDataset, ImageSet, ReadSpec, dataset_channels, scan_clusters, worker_init
from ..features import default_workers
from .augment import AugmentConfig, BatchAugment, batch_seed, lightly_transform
from .bands import plan_views
from .settings import TrainSettings


def cache_loader_workers(cuda: bool) -> int:
    """DataLoader workers that read uint8 batches from the cache (the device path).

    They only copy bytes, so a few suffice. On a CPU-only machine the cores belong to the model
    step and augmentation: one worker prefetches, and more only preempt the model's threads
    (measured on 2 cores: 2 workers cost ~5 % of the step rate, benchmarks/train_throughput.py).
    """
    return min(4, default_workers()) if cuda else 1


class TwoViews:
    """Picklable per-image transform for DataLoader workers: ``(S, S, C)`` uint8 -> [view0, view1].

    View ``v`` takes the bands ``bands[v]``; RGB views go through lightly's SimCLRTransform, any
    other band layout through the batched pipeline applied to a batch of one.
    """

    def __init__(self, cfgs: list[AugmentConfig], bands: list[list[int]], in_chans: int):
        self.cfgs, self.bands, self.in_chans = cfgs, bands, in_chans
        self._t = None

    def _make(self, cfg: AugmentConfig):
        if self.in_chans == 3 and list(cfg.rgb_bands) == [0, 1, 2]:
            return lightly_transform(cfg).transforms[0], True
        return BatchAugment(cfg, self.in_chans), False

    def __call__(self, arr: np.ndarray):
        if self._t is None:  # built lazily, inside the worker process
            self._t = [self._make(cfg) for cfg in self.cfgs]
        views = []
        for (t, pil), bands in zip(self._t, self.bands):
            sel = np.ascontiguousarray(arr[..., bands])
            if pil:
                from PIL import Image

                views.append(t(Image.fromarray(sel)))
            else:
                views.append(t(torch.from_numpy(sel).permute(2, 0, 1)[None])[0])
        return views


class SeededBatch(list):
    """A batch of image indices with the seed its augmentations are drawn from."""

    def __init__(self, indices: Sequence[int], seed: int):
        super().__init__(indices)
        self.seed = seed


class SeededBatches(Dataset):
    """``dataset`` read a batch at a time, each batch augmented from its own :class:`SeededBatch` seed.

    A batch's random numbers depend on (seed, epoch, process, batch number) only, not on the
    DataLoader worker that draws it or on the batches drawn before: a run resumed mid-epoch (fewer
    batches left, spread over the workers differently) augments each remaining batch exactly as the
    uninterrupted run did. The caller's random states are left as they were (with no workers the
    batches are drawn in the training process).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]

    def __getitems__(self, batch: Sequence[int]) -> list:
        seed = getattr(batch, "seed", None)
        if seed is None:
            return [self.dataset[i] for i in batch]
        states = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2 ** 32)
            try:
                return [self.dataset[i] for i in batch]
            finally:
                random.setstate(states[0])
                np.random.set_state(states[1])


BALANCE = ("none", "sqrt", "clusters")


def cluster_weights(clusters: Sequence[str], balance: str = "clusters") -> torch.Tensor | None:
    """Per-image sampling weights that balance the clusters.

    Args:
        clusters: each image's cluster.
        balance: ``clusters``: 1 / cluster size (every cluster drawn equally often); ``sqrt``:
            1 / sqrt(cluster size) (a cluster is drawn in proportion to the square root of its size);
            ``none``: uniform (returns None).
    """
    if balance == "none":
        return None
    counts = Counter(clusters)
    power = {"clusters": 1.0, "sqrt": 0.5}[balance]
    return torch.tensor([counts[c] ** -power for c in clusters], dtype=torch.double)


class EpochBatchSampler(Sampler):
    """Yields this process's batches of an epoch; deterministic in ``(seed, epoch)``.

    Without ``weights`` the epoch's order is a permutation; with several processes each takes its
    own contiguous share, so no image is seen twice in an epoch across GPUs. With ``weights``
    (balanced clusters) each global batch is drawn by weight *without replacement*: an image is
    never twice in one batch (on any GPU), so it is never its own negative, while small clusters
    still come back in later batches. ``skip`` batches are left out at the start of the next epoch
    iterated: a run stopped mid-epoch resumes with exactly the batches it had not trained on.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, world_size: int = 1, seed: int = 0,
                 weights: torch.Tensor | None = None, epoch_fn=None):
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        self.n, self.batch_size, self.world_size, self.seed = len(indices), batch_size, world_size, seed
        self.weights, self.epoch, self.skip, self.epoch_fn = weights, 0, 0, epoch_fn
        self.resume_epoch: int | None = None  # set with ``skip`` by a resume: the epoch to go on with

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def __iter__(self):
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        # Lightning creates the epoch's iterator before calling set_epoch on a resumed run, so the
        # trainer's epoch counter is read here when available. A resumed run's first iterator is
        # made (and, with workers, drawn from at once) before Lightning restores that counter,
        # so the epoch to resume comes from the checkpoint (EpochCheckpoint.load_state_dict).
        epoch, self.resume_epoch = self.resume_epoch, None
        if epoch is None:
            epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.weights is not None:
            draws = [torch.multinomial(self.weights, self.batch_size * self.world_size, replacement=False,
                                       generator=g) for _ in range(len(self))]
            batches = torch.stack(draws).view(len(self), self.world_size, self.batch_size)
            mine = batches[:, rank]
        else:
            order = torch.randperm(self.n, generator=g)
            per_rank = len(self) * self.batch_size
            mine = order[rank * per_rank:(rank + 1) * per_rank].view(len(self), self.batch_size)
        skip, self.skip = self.skip, 0
        for number in range(skip, len(mine)):  # each batch's seed: SeededBatches
            yield SeededBatch(self.indices[mine[number]].tolist(), batch_seed(self.seed, epoch, rank, number))


def training_images(data: Path) -> ImageSet:
    """The images SimCLR trains on: ``<data>/unlabeled/`` (all images, by cluster)."""
    data = Path(data)
    root = data / "unlabeled" if (data / "unlabeled").is_dir() else data
    return scan_clusters(root, what="training data")


def model_meta(s: TrainSettings, channels: int, plan) -> dict:
    """What stage 4 needs to rebuild the backbone and read images the same way (view 0)."""
    mean, std = plan.stats(0, s.backbone)
    embed_bands = [s.bands[b] for b in plan.bands[0]] if s.bands else plan.bands[0]
    train_bands = None if s.bands is None else list(s.bands)  # a list, as checkpoints always held
    return {"backbone": s.backbone, "in_chans": plan.in_chans, "data_channels": channels,
            "rgb_bands": plan.rgb[0], "bands": embed_bands if s.bands or plan.cross_modal else None,
            "train_bands": train_bands, "views": {"names": plan.names, "bands": plan.bands},
            "input_size": s.input_size, "cache_size": s.cache_size or s.input_size,
            "mean": mean, "std": std, "background": list(s.background), "scale16": s.scale16,
            "recipe": s.recipe}


def training_worker_init(worker_id: int | None = None) -> None:
    """``worker_init_fn`` of training loaders: stop signals are left to the main process, and
    each worker of each process draws its own augmentations.

    A SIGTERM or SIGUSR1 sent to the whole process group (``kill -TERM -<pgid>``, SLURM) would
    otherwise kill the workers mid-batch and the main process would die on a DataLoader
    traceback; instead it saves after the current batch and shuts them down. A custom
    ``worker_init_fn`` replaces Lightning's, so its seeding from (base seed, worker, global rank)
    is called here: the base seed alone is the same on every rank (each runs ``seed_everything``).
    """
    from lightning_fabric.utilities.seed import pl_worker_init_function

    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):  # Ctrl-C reaches them too
        signal.signal(signum, signal.SIG_IGN)
    if worker_id is not None:
        pl_worker_init_function(worker_id)
    worker_init(worker_id)


def seed_rank(seed: int, *, rank: int, step: int) -> None:
    """Seed torch (every device), numpy and random from ``(seed, rank, step)``."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(4, np.uint64)
    torch.manual_seed(int(state[0]))
    np.random.seed(state[1:3].view(np.uint32))
    random.seed(int(state[3]))


class RankSeeds(pl.Callback):
    """Each process of a multi-process run draws its own augmentations.

    Every rank runs ``seed_everything(seed)`` (Lightning re-seeds them alike again when the
    process group starts) and a resume restores rank 0's random states on every rank, so the
    ranks would draw the same crops, flips and jitter: on the device, and in the main process
    when there are no loader workers (workers: :func:`training_worker_init`). At the start of fit
    each rank is re-seeded from ``(seed, rank, step)``: different per rank, and the same again when
    the run resumes from the same step. A single process is left alone: its resume repeats the
    uninterrupted run's random numbers exactly (:class:`~wingclr.train.saving.EpochCheckpoint`).
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_start(self, trainer, pl_module):
        if trainer.world_size > 1:
            seed_rank(self.seed, rank=trainer.global_rank, step=trainer.global_step)
def read_spec(s: TrainSettings, channels: int) -> ReadSpec:
    """How training reads an image (and the cache key of the device path)."""
    return ReadSpec(size=s.cache_size or s.input_size, channels=channels, bands=s.bands,
                    background=tuple(s.background), scale16=s.scale16)


def build_cache_only(s: TrainSettings, images: ImageSet) -> Path:
    """``--cache-only``: build (or find) the device path's uint8 cache and return its folder."""

    channels = dataset_channels(images.root, images.images, s.bands)
    workers = default_workers() if s.num_workers is None else s.num_workers
    cache = ensure_cache(s.cache_dir, images.root, images.images, read_spec(s, channels), workers,
                         progress=not s.quiet)
    return cache.folder


@dataclass(frozen=True)
class TrainingData:
    """What a training run reads: the loader, its sampler and how images become two views.

    Attributes:
        loader: yields per-process batches of ``batch_size // world_size`` images, in the
            order of ``sampler``: ``([view0, view1], index)`` when workers augment, or uint8
            ``(images, index)`` to be augmented on the device (``on_device``).
        views: one augmentation config per view.
        meta: what stage 4 needs to read images the same way (:func:`model_meta`) plus the
            data facts the manifest records (augmentation path, world size, image counts).
    """

    loader: DataLoader
    sampler: EpochBatchSampler
    plan: object
    views: list[AugmentConfig]
    on_device: bool
    meta: dict


def build_data(s: TrainSettings, trainer, images: ImageSet | None = None) -> TrainingData:
    """The training images as augmented batches for this process.

    Args:
        images: the training images when already scanned (default: scan ``s.data``).
    """

    images = images or training_images(s.data)
    channels = dataset_channels(images.root, images.images, s.bands)
    plan = plan_views(channels, s.rgb_bands, s.views, s.band_group)
    meta = model_meta(s, channels, plan)
    world = trainer.world_size
    if s.batch_size % world:
        raise UserError(f"--batch-size {s.batch_size} is not divisible by the {world} processes")
    per_device = s.batch_size // world
    if len(images) < s.batch_size:
        raise UserError(f"{images.root} holds {len(images)} images, fewer than --batch-size "
                        f"{s.batch_size}; pass a smaller --batch-size")
    cfgs = [AugmentConfig(input_size=s.input_size, rgb_bands=plan.rgb[v],
                          mean=plan.stats(v, s.backbone)[0], std=plan.stats(v, s.backbone)[1],
                          min_scale=s.min_scale, cj_prob=s.cj_prob, gray_prob=s.gray_prob,
                          blur_prob=s.blur_prob, vf_prob=s.vf_prob, rr_prob=s.rr_prob)
            for v in (0, 1)]
    for name, rgb in zip(plan.names, plan.rgb):
        if not rgb:
            print(f"warning: view '{name}' has no RGB bands: colour jitter and grayscale are off for "
                  "it; its bands get per-band brightness/contrast jitter (set --rgb-bands if needed)")
    cuda = trainer.strategy.root_device.type == "cuda"
    on_device = s.augment_on == "device" or (s.augment_on == "auto" and cuda)
    spec = read_spec(s, channels)
    workers = default_workers() if s.num_workers is None else s.num_workers
    if on_device:  # decode once into the cache; uint8 batches are augmented on the device

        dataset = ensure_cache(s.cache_dir, images.root, images.images, spec, workers)
        valid = dataset.valid_indices()
    else:
        dataset = FolderDataset(images.root, images.images, spec,
                                transform=TwoViews(cfgs, plan.bands, plan.in_chans))
        valid = list(range(len(images)))
    weights = cluster_weights([images.clusters[i] for i in valid], s.balance)
    sampler = EpochBatchSampler(valid, per_device, world, s.seed, weights,
                                epoch_fn=lambda: trainer.current_epoch)
    if on_device and s.num_workers is None:
        workers = cache_loader_workers(cuda)
    loader_kwargs = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=cuda,
                         worker_init_fn=training_worker_init)
    if on_device:  # the dataset reads whole batches: dataset[list of indices]
        loader = DataLoader(dataset, sampler=sampler, batch_size=None, **loader_kwargs)
    else:
        loader = DataLoader(SeededBatches(dataset), batch_sampler=sampler, **loader_kwargs)
    meta.update(augment_on="device" if on_device else "workers", world_size=world,
                images=len(valid), clusters=dict(Counter(images.clusters)))
    return TrainingData(loader, sampler, plan, cfgs, on_device, meta)
