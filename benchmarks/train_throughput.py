"""SimCLR training throughput: reference input path vs wingclr's fast path vs the model-only ceiling.

In one process, on the same backbone, batch and input size:

  (a) reference: lightly's SimCLRTransform in a torch DataLoader with N workers reading JPEGs,
      and the plain float32 training step of lightly's examples (default memory format);
  (b) fast path: images decoded once into wingclr's uint8 cache, uint8 batches moved to the device
      and augmented there in one batch (wingclr.train.augment.BatchAugment), then stage 3's training
      step (channels_last; bf16 autocast on CUDA);
  (c) ceiling: (b)'s training step on pre-made tensors (no data loading, no augmentation).

Also (a+): the reference input path feeding (b)'s training step, which splits b/a into the gain of
the input path (b / a+) and of the training step (a+ / a). Prints images/s of each, the ratios
b/a and b/c (and peak GPU memory on CUDA).

    python benchmarks/train_throughput.py --device cpu                  # ResNet-18, 96 px, batch 64
    python benchmarks/train_throughput.py --device cuda --backbone resnet50 --input-size 224 \\
        --batch-size 256 --workers 8 --images 4096
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wingclr.train.augment import AugmentConfig, lightly_transform  # noqa: E402
from wingclr.cache import ensure_cache  # noqa: E402
from wingclr.data import ReadSpec  # noqa: E402
from wingclr.train.loaders import EpochBatchSampler, cache_loader_workers  # noqa: E402
from wingclr.train.simclr import SimCLR  # noqa: E402


class JpegViews(Dataset):
    """The reference dataset: open a JPEG, apply lightly's two-view transform."""

    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB")), i


def make_jpegs(folder: Path, n: int, size: int) -> list[Path]:
    import numpy as np

    from wingclr.demo import PHENOTYPES, make_specimen

    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(folder.glob("*.jpg"))
    if len(files) >= n:
        return files[:n]
    rng = np.random.default_rng(0)
    for i in range(n):
        spec = make_specimen(rng, PHENOTYPES[i % len(PHENOTYPES)], size)
        Image.fromarray(spec.image).save(folder / f"{i:06d}.jpg", quality=90)
    return sorted(folder.glob("*.jpg"))


class Runner:
    """One SimCLR training step: the plain reference one, or stage 3's (``tuned``)."""

    def __init__(self, args, device: torch.device, augment: bool, tuned: bool):
        cfg = AugmentConfig(input_size=args.input_size)
        self.device = device
        self.model = SimCLR(backbone=args.backbone, input_size=args.input_size,
                            augment=[cfg.to_dict()] * 2 if augment else None,
                            channels_last=tuned and args.channels_last).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.bf16 = tuned and device.type == "cuda" and args.precision == "bf16-mixed"

    def step(self, x0: torch.Tensor, x1: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.model.criterion(self.model(x0), self.model(x1))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def timed(runner: Runner, it, steps: int, batch_size: int, prepare) -> float:
    """Images/s over ``steps`` steps from iterator ``it``; ``prepare(batch) -> (x0, x1)``."""
    runner.sync()
    start = time.perf_counter()
    for _ in range(steps):
        runner.step(*prepare(next(it)))
    runner.sync()
    return steps * batch_size / (time.perf_counter() - start)


def forever(loader):
    while True:
        yield from loader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference path")
    p.add_argument("--fast-workers", type=int, default=None,
                   help="DataLoader workers of the fast path (default: stage 3's, 1 on CPU, 4 on "
                        "CUDA); they only read uint8 batches from the cache")
    p.add_argument("--images", type=int, default=512, help="JPEGs generated for the benchmark")
    p.add_argument("--jpeg-size", type=int, default=256, help="side of the generated JPEGs")
    p.add_argument("--steps", type=int, default=4, help="timed steps per path and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", default="bf16-mixed", help="bf16-mixed or 32-true (CUDA only)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--work", type=Path, default=Path("work/bench/throughput"))
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    files = make_jpegs(args.work / "jpeg" / "all", args.images, args.jpeg_size)
    root = args.work / "jpeg"
    bs, pin = args.batch_size, device.type == "cuda"
    fast_workers = cache_loader_workers(pin) if args.fast_workers is None else args.fast_workers
    print(f"{args.backbone}, {args.input_size} px, batch {bs}, {args.workers} workers (fast path {fast_workers}), {device}, "
          f"{torch.get_num_threads()} threads, channels_last={args.channels_last}")

    ref = Runner(args, device, augment=False, tuned=False)
    tuned = Runner(args, device, augment=False, tuned=True)
    fast = Runner(args, device, augment=True, tuned=True)
    transform = lightly_transform(AugmentConfig(input_size=args.input_size))
    loader_a = DataLoader(JpegViews(files, transform), batch_size=bs, shuffle=True, drop_last=True,
                          num_workers=args.workers, persistent_workers=args.workers > 0, pin_memory=pin)
    start = time.perf_counter()
    n = sum(len(v[0][0]) for v, _ in zip(loader_a, range(args.steps)))
    data_only = n / (time.perf_counter() - start)
    start = time.perf_counter()
    cache = ensure_cache(args.work / "cache", root, [f.relative_to(root) for f in files],
                         ReadSpec(size=args.input_size), workers=args.workers, progress=False)
    cache_s = time.perf_counter() - start
    loader_b = DataLoader(cache, sampler=EpochBatchSampler(range(len(cache)), bs, seed=0),
                          batch_size=None, num_workers=fast_workers,
                          persistent_workers=fast_workers > 0, pin_memory=pin)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x0 = torch.randn(bs, 3, args.input_size, args.input_size, device=device).contiguous(memory_format=fmt)
    premade = (x0, torch.randn_like(x0))

    def to_dev(views):
        return views[0].to(device, non_blocking=True), views[1].to(device, non_blocking=True)

    paths = {  # name: (runner, batch iterator, batch -> two views)
        "a": (ref, forever(loader_a), lambda batch: to_dev(batch[0])),
        "b": (fast, forever(loader_b), lambda batch: fast.model.views((batch[0].to(device, non_blocking=True), None))),
        "a+": (tuned, forever(loader_a), lambda batch: to_dev(batch[0])),
        "c": (tuned, forever([premade]), lambda views: views),
    }
    for runner, it, prepare in paths.values():  # warm-up: workers started, kernels chosen
        timed(runner, it, args.warmup, bs, prepare)
    rates = {k: [] for k in paths}
    for _ in range(args.rounds):  # interleaved, so load from other processes hits all alike
        for k, (runner, it, prepare) in paths.items():
            rates[k].append(timed(runner, it, args.steps, bs, prepare))
    a, a2, b, c = (statistics.median(rates[k]) for k in ("a", "a+", "b", "c"))
    print(f"(a)  reference, lightly + DataLoader : {a:8.1f} img/s   (data only {data_only:.0f} img/s)")
    print(f"(a+) same input, stage 3's step      : {a2:8.1f} img/s")
    print(f"(b)  fast path, cache + batched aug  : {b:8.1f} img/s   (cache built once in {cache_s:.1f} s)")
    print(f"(c)  model-only ceiling (b's step)   : {c:8.1f} img/s")
    print(f"b/a = {b / a:.2f}   b/c = {b / c:.2f}   (input path b/a+ = {b / a2:.2f}, "
          f"training step a+/a = {a2 / a:.2f})")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
