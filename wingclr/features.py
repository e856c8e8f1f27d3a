"""Frozen-backbone image features, streamed in batches and cached on disk (stage 1).

Cache files, kept in the stage's output folder:

* ``features.npy``: ``(N, D)`` float32, row ``i`` belongs to row ``i`` of the index;
* ``features_index.csv``: ``image, size, mtime_ns, ok, error`` (``ok`` False: unreadable, the row
  is zeros and ``error`` says why);
* ``features.json``: the settings that made them (backbone, weights, input size, channels, ...).

A cached row is reused when the settings are the same and the image's relative path, size and
modification time are unchanged; only new or changed images go through the network. During a long
extraction the cache is saved every ``save_every`` seconds, so an interrupted run resumes.

The same streaming embeds a trained backbone's images for stages 3-5 (:func:`image_table`,
:func:`embed_images`, :func:`pca_projection`): stage 4 writes
them, stage 3's kNN monitor and stage 5's baselines use them without importing those stages.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from .cache import CachedImages, ensure_cache
from .cli import progress as cli_progress
from .data import FolderDataset, ReadSpec, read_spec, scan_clusters, worker_init
from .identity import below_cluster, clusters_identity, identify, read_identity, stamp_files
from .imageio import ImageReadError
from .models import build_backbone, channel_stats
from .outputs import atomic_path, read_csv, write_csv, write_text
from .untrusted import check_paths

FEATURES, INDEX, SETTINGS = "features.npy", "features_index.csv", "features.json"
PCA_MIN_VARIANCE = 0.005  # keep principal axes that explain more than 0.5 % of the variance


def default_workers() -> int:
    """DataLoader workers when --num-workers is not given: one per CPU core, at most 8."""
    return min(8, os.cpu_count() or 1)


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.inference_mode()
def iter_features(backbone: torch.nn.Module, dataset: Dataset, mean: Sequence[float],
                  std: Sequence[float], batch_size: int = 64, num_workers: int = 0,
                  device: str = "auto", progress: bool = True,
                  desc: str = "features") -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Run a frozen backbone over a ``flag_errors`` :class:`~wingclr.data.FolderDataset`.

    Memory is one batch of images at a time. Inputs and weights are channels_last (~25 % faster
    convolutions on a CPU, and what tensor cores want); CUDA runs use bf16 autocast.

    Yields:
        ``(index (B,) int, features (B, D) float32, ok (B,) bool)`` per batch; rows with ok False
        (unreadable images) are features of a blank image and must be ignored.
    """
    dev = pick_device(device)
    backbone = backbone.eval().to(dev, memory_format=torch.channels_last)
    mean_t = torch.tensor(list(mean), device=dev).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), device=dev).view(1, -1, 1, 1)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                        pin_memory=dev.type == "cuda", worker_init_fn=worker_init)
    for x, idx, good in cli_progress(loader, len(loader), desc, quiet=not progress, unit="batches"):
        x = ((x.to(dev, non_blocking=True).float() / 255 - mean_t) / std_t).contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            feats = backbone(x).float().cpu().numpy()
        yield idx.numpy(), feats, good.numpy().astype(bool)


@dataclass(frozen=True)
class FeatureConfig:
    """What defines the features (the cache key) and how to compute them."""

    backbone: str = "vgg16"
    pretrained: bool = True
    input_size: int = 224
    in_chans: int = 3
    background: tuple[int, int, int] = (255, 255, 255)
    seed: int = 0  # random initialisation only

    def key(self) -> dict:
        key = {"backbone": self.backbone, "pretrained": self.pretrained, "input_size": self.input_size,
               "in_chans": self.in_chans, "background": list(self.background)}
        if not self.pretrained:
            key["seed"] = self.seed  # random weights differ per seed
        return key

    def read_spec(self) -> ReadSpec:
        return ReadSpec(size=self.input_size, channels=self.in_chans, background=self.background)


@dataclass
class Features:
    """Features of every listed image.

    Attributes:
        values: ``(N, D)`` float32 (zeros where not ok).
        ok: ``(N,)`` bool, False for unreadable images.
        errors: reason per image ('' when readable).
        computed: how many images went through the network in this call (0: all from cache).
    """

    values: np.ndarray
    ok: np.ndarray
    errors: list[str]
    computed: int


def load_cache(folder: Path, config: FeatureConfig) -> tuple[pd.DataFrame, np.ndarray] | None:
    """The cached index and a read-only memory map of the features, or None when unusable."""
    folder = Path(folder)
    try:
        saved = json.loads((folder / SETTINGS).read_text(encoding="utf-8"))
        index = read_csv(folder / INDEX, dtype={"image": str, "error": str}, keep_default_na=False)
        values = np.load(folder / FEATURES, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if saved != config.key() or len(index) != len(values) or values.ndim != 2:
        return None
    return index, values


def save_cache(folder: Path, config: FeatureConfig, index: pd.DataFrame, values: np.ndarray) -> None:
    """Write the three cache files atomically (index last: it is what makes rows valid)."""
    folder = Path(folder)
    write_text(folder / SETTINGS, json.dumps(config.key(), indent=2) + "\n")
    with atomic_path(folder / FEATURES) as tmp:
        np.save(tmp, np.ascontiguousarray(values, np.float32))
    write_csv(folder / INDEX, index)


def make_extractor(config: FeatureConfig, builder: Callable = build_backbone) -> torch.nn.Module:
    """The frozen backbone; random initialisation is seeded so cached features stay valid."""
    torch.manual_seed(config.seed)
    rgb = [b for b in (0, 1, 2) if b < config.in_chans]
    model, _ = builder(config.backbone, config.pretrained, config.in_chans, rgb, config.input_size)
    return model.eval()


def compute_features(root: Path, images: Sequence[Path], cache_dir: Path, config: FeatureConfig,
                     batch_size: int = 32, num_workers: int = 0, device: str = "auto",
                     progress: bool = True, save_every: float = 120.0,
                     builder: Callable = build_backbone) -> Features:
    """Features for ``root/<images>``, from the cache where possible.

    Args:
        root: image folder; ``images`` are relative to it.
        cache_dir: folder of the cache files (created when needed).
        config: backbone and image settings.
        save_every: seconds between cache saves during extraction (resume after interruption).
        builder: backbone factory (``wingclr.models.build_backbone``; tests wrap it).

    Returns:
        :class:`Features` in the order of ``images``; the cache holds exactly these images after.
    """
    index = stamp_files(root, images)
    index["ok"], index["error"] = False, ""
    done = np.zeros(len(index), bool)
    values = None
    cached = load_cache(cache_dir, config)
    if cached is not None:
        old_index, old_values = cached
        key = ["image", "size", "mtime_ns"]
        merged = index[key].reset_index().merge(old_index.reset_index(), on=key, suffixes=("", "_old"))
        values = np.zeros((len(index), old_values.shape[1]), np.float32)
        new_rows, old_rows = merged["index"].to_numpy(), merged["index_old"].to_numpy()
        order = np.argsort(old_rows)  # read the memory map in file order
        values[new_rows[order]] = old_values[old_rows[order]]
        index.loc[new_rows, ["ok", "error"]] = merged[["ok", "error"]].to_numpy()
        done[new_rows] = True
        del old_values
    todo = np.flatnonzero(~done)
    if len(todo):
        model = make_extractor(config, builder)
        mean, std = channel_stats(config.in_chans, [b for b in (0, 1, 2) if b < config.in_chans],
                                  config.backbone)
        dataset = FolderDataset(root, [Path(images[i]) for i in todo], config.read_spec(),
                                flag_errors=True)
        last_save = time.monotonic()
        for idx, feats, good in iter_features(model, dataset, mean, std, batch_size, num_workers,
                                              device, progress):
            rows = todo[idx]
            if values is None:
                values = np.zeros((len(index), feats.shape[1]), np.float32)
            values[rows] = feats
            index.loc[rows, "ok"] = good
            done[rows] = True
            if time.monotonic() - last_save > save_every and not done.all():
                save_cache(cache_dir, config, index[done], values[done])
                last_save = time.monotonic()
        bad = todo[~index["ok"].to_numpy()[todo]]
        index.loc[bad, "error"] = [_read_error(config.read_spec(), Path(root) / images[i]) for i in bad]
        values[bad] = 0
        save_cache(cache_dir, config, index, values)
    if values is None:  # no images at all
        values = np.zeros((0, 0), np.float32)
    return Features(values, index["ok"].to_numpy(bool), index["error"].tolist(), int(len(todo)))


def _read_error(spec: ReadSpec, path: Path) -> str:
    """Why ``path`` could not be loaded (the data loader only flags it)."""
    try:
        spec.load(path)
    except ImageReadError as e:
        return e.reason
    return "unreadable"


def image_table(data: Path) -> tuple[Path, pd.DataFrame]:
    """Image root and ``(image, cluster, split, specimen, source_image, group)`` rows: stage 2's split.csv
    or a folder scan (identities from stage 1's clusters.csv there, else from the paths)."""
    data = Path(data)
    split_csv = data / "split.csv"
    if split_csv.exists():
        table = read_csv(split_csv, dtype=str, keep_default_na=False)
        table = table[["image", "cluster", "split"]].reset_index(drop=True)
        check_paths(table, ["image"], source=split_csv)  # the images are read below unlabeled/
        ids = identify(table["image"].tolist(), read_identity(split_csv))
        return data / "unlabeled", pd.concat([table, ids], axis=1)
    found = scan_clusters(data, what="image")
    images = [p.as_posix() for p in found.images]
    known = clusters_identity(data)
    ids = identify(images, known, key=below_cluster, source="clusters.csv" if known else "")
    return data, pd.concat([pd.DataFrame({"image": images, "cluster": found.clusters, "split": ""}),
                            ids], axis=1)


def embed_images(backbone: torch.nn.Module, meta: dict, root: Path, images: list[str],
                 batch_size: int = 64, num_workers: int | None = None,
                 device: str = "auto", progress: bool = True,
                 cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embed images with a frozen backbone.

    When stage 3 left a decode-once cache of exactly these images at this size in ``cache_dir``,
    images are read from it instead of being decoded again.

    Returns:
        ``(features, ok)``: ``(N, D)`` float32 and ``(N,)`` bool (False: unreadable, row is zeros).
    """
    rels = [Path(p) for p in images]
    cache = ensure_cache(cache_dir, root, rels, read_spec(meta), build=False) if cache_dir else None
    if cache is not None:
        print(f"reading images from the cache {cache.folder}")
    dataset = CachedImages(cache) if cache else FolderDataset(root, rels, read_spec(meta), flag_errors=True)
    return embed_dataset(backbone, meta, dataset, batch_size, num_workers, device, progress)


def embed_dataset(backbone: torch.nn.Module, meta: dict, dataset, batch_size: int = 64,
                  num_workers: int | None = None, device: str = "auto",
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`embed_images` for a dataset of ``((C, S, S) uint8, index, readable)`` items."""
    workers = default_workers() if num_workers is None else num_workers
    out = np.zeros((len(dataset), 0), np.float32)
    ok = np.zeros(len(dataset), bool)
    for idx, feats, good in iter_features(backbone, dataset, meta["mean"], meta["std"], batch_size,
                                          workers, device, progress, desc="embedding"):
        if out.shape[1] == 0:
            out = np.zeros((len(dataset), feats.shape[1]), np.float32)
        out[idx] = np.where(good[:, None], feats, 0)
        ok[idx] = good
    return out, ok


def pca_projection(features: np.ndarray, min_variance: float = PCA_MIN_VARIANCE):
    """PCA keeping the axes that explain more than ``min_variance`` of the variance.

    Returns:
        ``(scores (N, k), explained_variance_ratio (all axes), k)``.
    """
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(features.shape), svd_solver="full").fit(features)
    ratio = pca.explained_variance_ratio_
    k = max(1, int((ratio > min_variance).sum()))
    return pca.transform(features)[:, :k], ratio, k
