"""Image folders as datasets: cluster-folder scanning, letterboxing and torch Datasets.

Images are letterboxed: the longer side is resized to ``size`` and the rest padded with the median
of the image's border (the specimen's plain background), so aspect ratios are kept.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .cli import UserError, require_folder
from .imageio import ImageReadError, image_channels, list_files, match_channels, read_image


def worker_init(worker_id: int | None = None) -> None:
    """``worker_init_fn`` of DataLoaders that decode images: freed large buffers go back to the OS.

    glibc raises its mmap threshold each time a large buffer is freed (up to 32 MB), so the next
    decoded photos or cubes come from the heap, which fragments and keeps growing: caching 1 000
    hyperspectral cubes (408 bands, 224 px) left each worker at 3.3 GB. A fixed 4 MB threshold keeps
    it at 0.4 GB (benchmarks/cache_memory.py). Elsewhere than glibc this does nothing.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class ImageSet:
    """Images of a cluster-folder tree: ``root/<cluster>/<rel path>``.

    Attributes:
        root: folder holding one subfolder per cluster.
        images: paths relative to ``root`` (``<cluster>/...``), sorted.
        clusters: cluster (top folder) name per image.
        skipped: ``(relative path, reason)`` of files that are not images.
    """

    root: Path
    images: list[Path]
    clusters: list[str]
    skipped: list[tuple[Path, str]]

    def __len__(self) -> int:
        return len(self.images)


def scan_clusters(root: Path | str, what: str = "input") -> ImageSet:
    """List the images of a folder of cluster subfolders.

    Raises:
        UserError: ``root`` is missing, has no cluster subfolders, or no images at all.
    """
    root = Path(root)
    require_folder(root, f"{what} folder", "run the previous stage or pass the right folder")
    images, skipped = list_files(root)
    in_folders = [p for p in images if len(p.parts) > 1]
    top_level = [p for p in images if len(p.parts) == 1]
    skipped = [(p, r) for p, r in skipped if len(p.parts) > 1]  # top-level CSV/JSON are expected
    if not (root / "manifest.json").is_file():  # in a stage's output, top-level files are its own
        skipped += [(p, "image outside a cluster folder (ignored)") for p in top_level]
    if not in_folders:
        hint = (" (it holds images at the top level: put them in one subfolder per cluster, "
                "e.g. all/ for a single group)") if top_level else ""
        raise UserError(f"no images found in cluster subfolders of {root}{hint}")
    return ImageSet(root, in_folders, [p.parts[0] for p in in_folders], skipped)


def letterbox(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(H, W, C)`` uint8 so the longer side is ``size``; pad to ``(size, size, C)``."""
    import cv2

    h, w, c = arr.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    if (nh, nw) != (h, w):
        chunks = [arr[..., i:i + 4] for i in range(0, c, 4)]  # cv2 resizes <= 4 channels fastest
        resized = [cv2.resize(np.ascontiguousarray(ch), (nw, nh), interpolation=interp) for ch in chunks]
        arr = np.concatenate([r.reshape(nh, nw, -1) for r in resized], axis=-1)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).reshape(-1, c)
    out = np.empty((size, size, c), np.uint8)
    out[:] = np.median(border, axis=0).astype(np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = arr
    return out


@dataclass(frozen=True)
class ReadSpec:
    """How a stage turns a file into a fixed-size ``(S, S, C)`` uint8 array."""

    size: int
    channels: int = 3
    bands: Sequence[int] | None = None
    background: Sequence[int] = (255, 255, 255)
    scale16: str = "full"

    def load(self, path: Path) -> np.ndarray:
        arr = read_image(path, background=self.background, scale16=self.scale16)
        if self.bands is not None:
            if max(self.bands) >= arr.shape[-1]:
                raise ImageReadError(path, f"has {arr.shape[-1]} bands; --bands asks for band "
                                           f"{max(self.bands)} (bands are numbered from 0)")
            arr = arr[..., list(self.bands)]
        return letterbox(match_channels(arr, self.channels, path), self.size)


def dataset_channels(root: Path, images: Sequence[Path], bands: Sequence[int] | None = None) -> int:
    """Channel count of a dataset after ``--bands``, checked on every file's header.

    Gray images count as RGB (they are repeated to three channels); every other file must have
    the channel count of the first one.

    Raises:
        UserError: names the first file whose channel count differs, or a band outside the range.
    """
    first = None
    for rel in images:
        try:
            c = image_channels(Path(root) / rel)
        except ImageReadError:
            continue  # unreadable files are reported where they are decoded
        c = 3 if c == 1 else c
        if first is None:
            first = (rel, c)
        elif c != first[1]:
            raise UserError(f"{Path(root) / rel} has {c} channels but {Path(root) / first[0]} has "
                            f"{first[1]}; keep one band layout per dataset (move the odd files out)")
    if first is None:
        raise UserError(f"no readable image under {root}")
    if bands is not None:
        bad = [b for b in bands if not 0 <= b < first[1]]
        if bad:
            raise UserError(f"--bands {','.join(map(str, bands))} asks for band {bad[0]} but "
                            f"{Path(root) / first[0]} has {first[1]} (numbered 0-{first[1] - 1})")
        return len(bands)
    return first[1]


class FolderDataset(Dataset):
    """Images of an :class:`ImageSet` as ``(transform(array) or (C, S, S) uint8 tensor, index)``.

    An unreadable file prints one warning and is replaced by the next readable image, so a long
    training run does not die on one bad file that appeared after stage 2 checked the folder.
    With ``flag_errors`` (embedding) items are ``(tensor, index, ok)`` and nothing is replaced.
    """

    def __init__(self, root: Path, images: Sequence[Path], spec: ReadSpec,
                 transform: Callable | None = None, flag_errors: bool = False):
        self.root, self.images, self.spec = Path(root), list(images), spec
        self.transform, self.flag_errors = transform, flag_errors

    def __len__(self) -> int:
        return len(self.images)

    def _tensor(self, arr: np.ndarray):
        if self.transform is not None:
            return self.transform(arr)
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int):
        if self.flag_errors:
            try:
                return self._tensor(self.spec.load(self.root / self.images[index])), index, True
            except ImageReadError as e:
                print(f"warning: skipping {e}", file=sys.stderr)
                c, s = self.spec.channels, self.spec.size
                return self._tensor(np.zeros((s, s, c), np.uint8)), index, False
        for offset in range(len(self.images)):
            i = (index + offset) % len(self.images)
            try:
                return self._tensor(self.spec.load(self.root / self.images[i])), index
            except ImageReadError as e:
                print(f"warning: skipping {e}", file=sys.stderr)
        raise UserError(f"no readable image in {self.root}")


def read_spec(meta: dict, size: int | None = None) -> ReadSpec:
    """How stage 3 read a run's images (from its checkpoint metadata), at ``size`` or its input size."""
    return ReadSpec(size=size or meta["input_size"], channels=meta["in_chans"], bands=meta["bands"],
                    background=tuple(meta["background"]), scale16=meta["scale16"])
