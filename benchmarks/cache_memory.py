"""Peak memory of the decode-once cache path: the cache stays on disk, RAM holds batches.

Two cases (run both by default):

  images100k     a cache of 100 000 RGB images at 224 px (15 GB, created as a sparse file so the
                 benchmark needs no decoding): one full training epoch of uint8 batches through
                 the DataLoader, then stage 4's embedding loop over all 100 000 images with a
                 2048-d head. Expected RSS: the process baseline + a few batches + the
                 100 000 x 2048 float32 output (0.8 GB).
  hyperspectral  1 000 cubes of 408 bands at 224 px (20 MB each as uint8) written as .npy, cached
                 by stage 3's code, then 20 batches of 8 through the device augmentation (two
                 float views each) and one ResNet-18 training step.

Prints peak RSS (this process and the largest worker) next to the budget, for each phase.

    python benchmarks/cache_memory.py                  # both cases, ~40 GB free disk needed
    python benchmarks/cache_memory.py --case images100k --work /scratch/wingclr-bench
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr.cache import CacheDataset, CachedImages, ensure_cache  # noqa: E402
from wingclr.data import ReadSpec  # noqa: E402
from wingclr.train.loaders import EpochBatchSampler  # noqa: E402

GB = 2**30


def rss_now() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GB
    return float("nan")


def peaks() -> str:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GB
    return f"peak RSS {own:.2f} GB (largest worker {kids:.2f} GB), now {rss_now():.2f} GB"


def fake_cache(folder: Path, n: int, size: int, channels: int = 3) -> CacheDataset:
    """A cache of ``n`` blank images without decoding anything (sparse file)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "images.u8", "wb") as f:
        f.truncate(n * channels * size * size)
    entries = [[f"c/{i:06d}.png", 0, 0] for i in range(n)]
    (folder / "index.json").write_text(json.dumps({"size": size, "channels": channels, "bands": None,
                                                   "images": entries, "unreadable": []}))
    return CacheDataset(folder)


def images100k(args) -> None:
    n, size, bs = args.n, 224, 64
    cache = fake_cache(args.work / "cache100k", n, size)
    print(f"cache: {n} images x 3 x {size} x {size} = {n * 3 * size * size / GB:.1f} GB on disk; "
          f"start: {peaks()}")
    loader = DataLoader(cache, sampler=EpochBatchSampler(range(n), bs, seed=0), batch_size=None,
                        num_workers=args.workers)
    start, seen = time.perf_counter(), 0
    for x, _ in loader:
        seen += len(x)
    print(f"training epoch: {seen} images in {time.perf_counter() - start:.0f} s; {peaks()}; "
          f"budget: baseline + {(args.workers * 2 + 1) * bs * 3 * size * size / GB:.2f} GB of batches")

    from wingclr.features import embed_dataset

    head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2048))
    meta = {"mean": [0.5] * 3, "std": [0.25] * 3}
    start = time.perf_counter()
    feats, ok = embed_dataset(head, meta, CachedImages(cache), 64, args.workers, "cpu", progress=False)
    print(f"embedding: {feats.shape} float32 ({feats.nbytes / GB:.2f} GB) in "
          f"{time.perf_counter() - start:.0f} s; {peaks()}")
    shutil.rmtree(args.work / "cache100k")


def hyperspectral(args) -> None:
    from wingclr.train.augment import AugmentConfig
    from wingclr.train.simclr import SimCLR

    n, size, bands, bs = args.cubes, 224, 408, 8
    root = args.work / "cubes"
    folder = root / "all"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, bands), dtype=np.uint8)
    for i in range(n):  # distinct files without the cost of rendering 1000 specimens
        path = folder / f"{i:05d}.npy"
        if not path.exists():
            np.save(path, np.roll(base, i, axis=0))
    files = sorted(p.relative_to(root) for p in folder.glob("*.npy"))[:n]
    print(f"{n} cubes of {bands} bands at {size} px ({size * size * bands / 2**20:.0f} MB each); {peaks()}")
    start = time.perf_counter()
    cache = ensure_cache(args.work / "cache-hs", root, files, ReadSpec(size=size, channels=bands),
                         workers=args.workers, progress=False)
    print(f"cache built in {time.perf_counter() - start:.0f} s; {peaks()}")
    loader = DataLoader(cache, sampler=EpochBatchSampler(range(n), bs, seed=0), batch_size=None,
                        num_workers=args.workers)
    cfg = AugmentConfig(input_size=size, rgb_bands=[], mean=[0.45] * bands, std=[0.225] * bands)
    model = SimCLR(backbone="resnet18", in_chans=bands, rgb_bands=[], input_size=size,
                   augment=[cfg.to_dict()] * 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    view = bs * bands * size * size * 4 / GB
    for _, batch in zip(range(args.batches), loader):
        x0 = x1 = None  # as in training, a batch's views are gone before the next are made
        x0, x1 = model.views(batch)
    print(f"{args.batches} augmented batches of {bs}; {peaks()}; budget: baseline + 2 float views "
          f"({2 * view:.2f} GB) + uint8 batches ({(args.workers * 2 + 1) * bs * bands * size * size / GB:.2f} GB)"
          " + one view's augmentation temporaries")
    for _ in range(args.train_steps):
        loss = model.criterion(model(x0), model(x1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    print(f"+ {args.train_steps} ResNet-18 training step(s) on the last views; {peaks()}")
    if not args.keep:
        shutil.rmtree(root)
        shutil.rmtree(args.work / "cache-hs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=["images100k", "hyperspectral", "both"], default="both")
    p.add_argument("--n", type=int, default=100_000, help="images in the images100k case")
    p.add_argument("--cubes", type=int, default=1000, help="cubes in the hyperspectral case")
    p.add_argument("--train-steps", type=int, default=1)
    p.add_argument("--batches", type=int, default=20, help="augmented hyperspectral batches")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the generated cubes and cache")
    p.add_argument("--work", type=Path, default=Path("work/bench/memory"))
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.case in ("images100k", "both"):
        images100k(args)
    if args.case in ("hyperspectral", "both"):
        hyperspectral(args)


if __name__ == "__main__":
    main()
