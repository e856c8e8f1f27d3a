"""DataLoaders, samplers and model set-up for stage 3 training."""

from __future__ import annotations

import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from typing import Sequence

import numpy as np
import torch

from torch.utils.data import DataLoader, Sampler

from ..cli import UserError
from ..data import FolderDataset, ImageSet, ReadSpec, dataset_channels, scan_clusters, worker_init
from ..features import default_workers
from .augment import AugmentConfig, BatchAugment, lightly_transform
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


def cluster_weights(clusters: Sequence[str]) -> torch.Tensor:
    """Sampling weight 1 / cluster size per image: every cluster is drawn equally often."""
    counts = Counter(clusters)
    return torch.tensor([1.0 / counts[c] for c in clusters], dtype=torch.double)


class EpochBatchSampler(Sampler):
    """Yields this process's batches of an epoch; deterministic in ``(seed, epoch)``.

    The epoch's order is a permutation (or, with ``weights``, draws with replacement); with several
    processes each takes its own contiguous share, so no image is seen twice in an epoch across
    GPUs. ``skip`` batches are left out at the start of the next epoch iterated: a run stopped
    mid-epoch resumes with exactly the batches it had not trained on.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, world_size: int = 1, seed: int = 0,
                 weights: torch.Tensor | None = None, epoch_fn=None):
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        self.n, self.batch_size, self.world_size, self.seed = len(indices), batch_size, world_size, seed
        self.weights, self.epoch, self.skip, self.epoch_fn = weights, 0, 0, epoch_fn

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def __iter__(self):
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        # Lightning creates the epoch's iterator before calling set_epoch on a resumed run, so the
        # trainer's epoch counter is read here when available.
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            order = torch.randperm(self.n, generator=g)
        per_rank = len(self) * self.batch_size
        mine = order[rank * per_rank:(rank + 1) * per_rank].view(len(self), self.batch_size)
        skip, self.skip = self.skip, 0
        for batch in mine[skip:]:
            yield self.indices[batch].tolist()


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
    """``worker_init_fn`` of training loaders: stop signals are left to the main process.

    A SIGTERM or SIGUSR1 sent to the whole process group (``kill -TERM -<pgid>``, SLURM) would
    otherwise kill the workers mid-batch and the main process would die on a DataLoader
    traceback; instead it saves after the current batch and shuts them down.
    """
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    worker_init(worker_id)


def read_spec(s: TrainSettings, channels: int) -> ReadSpec:
    """How training reads an image (and the cache key of the device path)."""
    return ReadSpec(size=s.cache_size or s.input_size, channels=channels, bands=s.bands,
                    background=tuple(s.background), scale16=s.scale16)


def build_cache_only(s: TrainSettings, images: ImageSet) -> Path:
    """``--cache-only``: build (or find) the device path's uint8 cache and return its folder."""
    from ..cache import ensure_cache

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
    from ..bands import plan_views

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
        from ..cache import ensure_cache

        dataset = ensure_cache(s.cache_dir, images.root, images.images, spec, workers)
        valid = dataset.valid_indices()
    else:
        dataset = FolderDataset(images.root, images.images, spec,
                                transform=TwoViews(cfgs, plan.bands, plan.in_chans))
        valid = list(range(len(images)))
    weights = cluster_weights([images.clusters[i] for i in valid]) if s.balance == "clusters" else None
    sampler = EpochBatchSampler(valid, per_device, world, s.seed, weights,
                                epoch_fn=lambda: trainer.current_epoch)
    if on_device and s.num_workers is None:
        workers = cache_loader_workers(cuda)
    loader_kwargs = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=cuda,
                         worker_init_fn=training_worker_init)
    if on_device:  # the dataset reads whole batches: dataset[list of indices]
        loader = DataLoader(dataset, sampler=sampler, batch_size=None, **loader_kwargs)
    else:
        loader = DataLoader(dataset, batch_sampler=sampler, **loader_kwargs)
    meta.update(augment_on="device" if on_device else "workers", world_size=world,
                images=len(valid), clusters=dict(Counter(images.clusters)))
    return TrainingData(loader, sampler, plan, cfgs, on_device, meta)
