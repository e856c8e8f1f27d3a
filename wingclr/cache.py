"""Decode-once image cache: every image letterboxed to ``(C, S, S)`` uint8 in one flat file.

Layout: ``images.u8`` holds N records of ``C * S * S`` bytes (numpy-memmap compatible,
``np.memmap(path, np.uint8, "r", shape=(N, C, S, S))``) and ``index.json`` the settings, the image
list with sizes and mtimes, and the unreadable files. A cache is shared by every run that reads
the same images the same way (same size, bands, background) and rebuilt when an image changes.

Batches are read with positional reads (``os.pread``), not by touching a memory map: mapped pages
count towards a job's RSS, so a 15 GB cache (100 000 images at 224 px) read through ``mmap`` shows
as 15 GB in ``sacct``; with ``pread`` the OS page cache holds what it can and the process keeps one
batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .cli import UserError
from .cli import progress as cli_progress
from .data import FolderDataset, ReadSpec, worker_init
from .outputs import write_text
from .processes import process_start, reused

LOCK_TIMEOUT_S = 6 * 3600
HEARTBEAT_S = 30  # the builder touches its lock this often
STALE_S = 300  # a lock not touched for this long is left by a killed job, on any host


def cache_key(root: Path, images: Sequence[Path], spec: ReadSpec) -> tuple[str, list]:
    """Hash of the read settings and of every image's path, size and mtime."""
    entries = []
    for rel in images:
        st = (Path(root) / rel).stat()
        entries.append([Path(rel).as_posix(), st.st_size, st.st_mtime_ns])
    read = {"size": spec.size, "channels": spec.channels, "bands": spec.bands,
                "background": list(spec.background), "scale16": spec.scale16}
    digest = hashlib.sha256(json.dumps([read, entries]).encode()).hexdigest()[:16]
    return digest, entries


def read_index(folder: Path) -> dict:
    """A cache's ``index.json``, checked for the shape :func:`_build` writes.

    Raises:
        UserError: unreadable or of another shape (one line: delete the cache folder, it is
            rebuilt from the images).
    """
    path = Path(folder) / "index.json"
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        index, why = None, f"{type(e).__name__}"
    else:
        why = "not the index wingclr writes"
    if isinstance(index, dict) and all(
            isinstance(index.get(k), int) and not isinstance(index[k], bool) and index[k] > 0
            for k in ("channels", "size")) and isinstance(index.get("unreadable"), list) and \
            isinstance(index.get("images"), list) and all(
                isinstance(e, list) and len(e) == 3 for e in index["images"]):
        return index
    raise UserError(f"image cache {path} is damaged ({why}); delete the folder {Path(folder)} (a "
                    "cache: it is built again from the images) and re-run")


class CacheDataset(Dataset):
    """Batches from an image cache: ``dataset[list of indices]`` -> ``((B, C, S, S) uint8, indices)``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        c, s = self.index["channels"], self.index["size"]
        self.shape = (c, s, s)
        self.record = c * s * s
        self._fd = None

    def __len__(self) -> int:
        return len(self.index["images"])

    def valid_indices(self) -> list[int]:
        """Indices of the images that could be read (unreadable ones are zero records)."""
        bad = set(self.index["unreadable"])
        return [i for i, (rel, _, _) in enumerate(self.index["images"]) if rel not in bad]

    def __getstate__(self):  # file descriptors do not cross into worker processes
        return {**self.__dict__, "_fd": None}

    def read(self, indices: Sequence[int]) -> np.ndarray:
        if self._fd is None:
            self._fd = os.open(self.folder / "images.u8", os.O_RDONLY)
        out = np.empty((len(indices), *self.shape), np.uint8)
        for k, i in enumerate(indices):
            n = os.preadv(self._fd, [memoryview(out[k]).cast("B")], int(i) * self.record)
            if n != self.record:
                raise UserError(f"{self.folder}/images.u8 is truncated; delete {self.folder} to rebuild it")
        return out

    def __getitem__(self, indices):
        indices = sorted(int(i) for i in np.atleast_1d(indices))  # sequential reads
        return torch.from_numpy(self.read(indices)), torch.tensor(indices)

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class CachedImages(Dataset):
    """One image at a time from a cache, as ``((C, S, S) uint8, index, readable)`` (stage 4)."""

    def __init__(self, cache: CacheDataset):
        self.cache = cache
        bad = set(cache.index["unreadable"])
        self.ok = [rel not in bad for rel, _, _ in cache.index["images"]]

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.cache.read([i])[0]), i, self.ok[i]


def _build(folder: Path, root: Path, images: Sequence[Path], spec: ReadSpec, entries: list,
           workers: int, progress: bool) -> None:
    tmp = folder / f"images.u8.tmp-{os.getpid()}"
    record = spec.channels * spec.size * spec.size
    dataset = FolderDataset(root, images, spec, flag_errors=True)
    batch = max(1, min(32, (64 << 20) // record))  # ~64 MB per batch: hyperspectral cubes are big
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, worker_init_fn=worker_init)
    failed = []
    with open(tmp, "wb") as f:
        f.truncate(record * len(images))
        for x, idx, ok in cli_progress(loader, len(loader), "caching images", quiet=not progress,
                                       unit="batches"):
            for k, i in enumerate(idx.tolist()):
                os.pwrite(f.fileno(), x[k].numpy().tobytes(), i * record)
            failed += [images[i].as_posix() for i in idx[~ok].tolist()]
    os.replace(tmp, folder / "images.u8")
    write_text(folder / "index.json", json.dumps({
        "size": spec.size, "channels": spec.channels, "bands": spec.bands, "images": entries,
        "unreadable": failed, "built": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def ensure_cache(cache_root: Path, root: Path, images: Sequence[Path], spec: ReadSpec,
                 workers: int = 0, progress: bool = True, build: bool = True) -> CacheDataset | None:
    """Open the cache for these images and settings, building it first if needed.

    Several processes (DDP ranks, grid jobs) may call this at once: one builds under a lock file,
    the others wait for ``index.json``. The builder touches the lock every ``HEARTBEAT_S``; a lock
    of a dead process on this machine, or one not touched for ``STALE_S`` (a job killed on any
    host of a shared file system), is removed with a one-line note.

    Returns:
        The cache, or None when it does not exist and ``build`` is False.
    """
    key, entries = cache_key(root, images, spec)
    folder = Path(cache_root) / f"{spec.size}px-{key}"
    lock = folder / "building.lock"
    start = time.monotonic()
    while not (folder / "index.json").exists():
        if not build:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            _wait_or_break(lock, start)
            continue
        try:
            os.write(fd, f"{os.uname().nodename} {os.getpid()} {process_start(os.getpid())}\n".encode())
            os.close(fd)
            # fork_rng: the loader draws its seed from torch's random state; a run that builds the
            # cache must start (model weights, augmentations) as one that finds it built
            with _heartbeat(lock), torch.random.fork_rng(devices=[]):
                _build(folder, Path(root), [Path(p) for p in images], spec, entries, workers, progress)
        finally:
            lock.unlink(missing_ok=True)
    return CacheDataset(folder)


class _heartbeat:
    """Context manager: a daemon thread touches ``lock`` every ``HEARTBEAT_S`` while the body runs."""

    def __init__(self, lock: Path):
        self.lock, self.done = lock, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="cache-lock-heartbeat")

    def _beat(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            try:
                os.utime(self.lock)
            except OSError:
                pass  # removed by a waiter that judged it stale: the build goes on regardless

    def __enter__(self):
        self.thread.start()

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


_seen: dict = {}  # lock path -> (mtime, monotonic time it was first seen with that mtime)
_announced: set = set()  # locks whose holder this process has named (said once)


def _wait_or_break(lock: Path, start: float) -> None:
    """Wait while another live process builds the cache; remove the lock of a dead one.

    A lock is stale when its process is gone (same host), or when its mtime is more than
    ``STALE_S`` old, or has not changed for ``STALE_S`` of this process's waiting (the builder's
    heartbeat stopped; this also covers clocks that differ between hosts).
    """
    try:
        mtime = lock.stat().st_mtime
    except FileNotFoundError:
        return  # just removed: the builder finished or failed
    first = _seen.setdefault(lock, (mtime, time.monotonic()))
    if first[0] != mtime:
        first = _seen[lock] = (mtime, time.monotonic())
    silent = max(time.time() - mtime, time.monotonic() - first[1])
    reason = f"not refreshed for {silent / 60:.0f} min" if silent > STALE_S else None
    holder = "another job"
    try:
        host, pid, *began = lock.read_text().split()  # began: absent in locks of earlier versions
        holder = f"{host} pid {pid}"
        if host == os.uname().nodename and reason is None:
            os.kill(int(pid), 0)
            if began and reused(int(pid), began[0]):
                reason = "its pid now belongs to another process"
    except ProcessLookupError:
        reason = "its process is gone"
    except (ValueError, OSError, OverflowError):
        pass  # lock being written, or another user's process
    if reason:
        print(f"removing stale lock {lock} ({reason}; the job that built the cache was killed)",
              file=sys.stderr)
        lock.unlink(missing_ok=True)
        _seen.pop(lock, None)
        return
    if lock not in _announced:
        _announced.add(lock)
        print(f"waiting for {holder} to finish building the image cache ({lock}); the wait ends "
              f"when it finishes, or once the lock goes {STALE_S // 60:.0f} min without a refresh "
              f"(then it is taken over), and after {LOCK_TIMEOUT_S / 3600:g} h at most",
              file=sys.stderr, flush=True)
    if time.monotonic() - start > LOCK_TIMEOUT_S:
        raise UserError(f"{lock} has been held for {LOCK_TIMEOUT_S // 3600} h; if no job is building "
                        "the cache, delete the lock file and re-run")
    time.sleep(1)
