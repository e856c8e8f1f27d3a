"""Decode-once image cache: content, reuse, invalidation, unreadable files, stale locks."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import wingclr.cache as cache_mod
from wingclr.cache import CachedImages, ensure_cache
from conftest import REPO
from wingclr.data import ReadSpec


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    rels = []
    for i in range(5):
        rel = Path("a") / f"{i}.png"
        (root / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(root / rel)
        rels.append(rel)
    return root, rels


def count_builds(monkeypatch) -> list:
    calls = []
    real = cache_mod._build
    monkeypatch.setattr(cache_mod, "_build", lambda *a, **k: (calls.append(1), real(*a, **k)))
    return calls


def test_cache_holds_letterboxed_images_and_is_reused(images, tmp_path, monkeypatch):
    root, rels = images
    spec = ReadSpec(size=16)
    builds = count_builds(monkeypatch)
    ds = ensure_cache(tmp_path / "c", root, rels, spec, progress=False)
    x, idx = ds[[3, 1]]
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.uint8 and idx.tolist() == [1, 3]
    np.testing.assert_array_equal(x[1].permute(1, 2, 0).numpy(), spec.load(root / rels[3]))
    again = ensure_cache(tmp_path / "c", root, rels, spec, progress=False)
    assert again.folder == ds.folder and len(builds) == 1
    assert ensure_cache(tmp_path / "c", root, rels, ReadSpec(size=24), build=False) is None


def test_changed_image_invalidates_the_cache(images, tmp_path):
    root, rels = images
    first = ensure_cache(tmp_path / "c", root, rels, ReadSpec(size=16), progress=False)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / rels[0])
    os.utime(root / rels[0], ns=(1, 1))  # a different mtime even on coarse clocks
    second = ensure_cache(tmp_path / "c", root, rels, ReadSpec(size=16), progress=False)
    assert second.folder != first.folder
    assert second[[0]][0].sum() == 0


def test_unreadable_images_are_listed_and_left_out(images, tmp_path):
    root, rels = images
    (root / rels[2]).write_bytes(b"broken")
    ds = ensure_cache(tmp_path / "c", root, rels, ReadSpec(size=16), progress=False)
    assert ds.index["unreadable"] == [rels[2].as_posix()]
    assert ds.valid_indices() == [0, 1, 3, 4]
    assert [CachedImages(ds)[i][2] for i in range(5)] == [True, True, False, True, True]


def test_lock_of_a_dead_process_is_removed(images, tmp_path):
    root, rels = images
    spec = ReadSpec(size=16)
    key, _ = cache_mod.cache_key(root, rels, spec)
    folder = tmp_path / "c" / f"16px-{key}"
    folder.mkdir(parents=True)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (folder / "building.lock").write_text(f"{os.uname().nodename} {dead}\n")
    ds = ensure_cache(tmp_path / "c", root, rels, spec, progress=False)
    assert len(ds) == 5 and not (folder / "building.lock").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_worker_init_returns_freed_large_buffers_to_the_os():
    """Decoding workers must not keep every freed cube: the RSS left after big frees is ~0."""
    code = textwrap.dedent("""
        import sys, numpy as np
        from wingclr.data import worker_init
        rss = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) >> 10
        if sys.argv[1] == "init":
            worker_init()
        keep, base = [], rss()
        for _ in range(20):
            cube = np.ones(20 << 20, np.uint8)  # a decoded 20 MB cube
            keep.append(np.ones(1000, np.uint8))  # small allocations outlive it
            del cube
        print(rss() - base)
    """)
    left = {mode: int(subprocess.run([sys.executable, "-c", code, mode], cwd=REPO, capture_output=True,
                                     text=True, check=True).stdout) for mode in ("plain", "init")}
    assert left["init"] <= 2 < left["plain"], left  # MB; plain glibc keeps one cube on its heap


def lock_of(images, tmp_path, text):
    root, rels = images
    spec = ReadSpec(size=16)
    key, _ = cache_mod.cache_key(root, rels, spec)
    folder = tmp_path / "c" / f"16px-{key}"
    folder.mkdir(parents=True)
    (folder / "building.lock").write_text(text)
    return folder / "building.lock", spec


def test_unrefreshed_lock_from_another_host_is_removed_at_once(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cache_mod, "LOCK_TIMEOUT_S", 5)  # without the heartbeat rule: an error, not hours
    lock, spec = lock_of(images, tmp_path, "node-killed-elsewhere 4242\n")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    ds = ensure_cache(tmp_path / "c", images[0], images[1], spec, progress=False)
    assert len(ds) == 5 and not lock.exists()
    notes = [line for line in capsys.readouterr().err.splitlines() if "stale lock" in line]
    assert len(notes) == 1 and "not refreshed for 60 min" in notes[0]


def test_lock_whose_heartbeat_stops_is_removed_even_with_a_skewed_clock(images, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "LOCK_TIMEOUT_S", 30)
    monkeypatch.setattr(cache_mod, "STALE_S", 0.5)
    lock, spec = lock_of(images, tmp_path, "other-node 4242\n")
    future = time.time() + 3600  # that host's clock is ahead: the mtime age alone says "fresh"
    os.utime(lock, (future, future))
    ds = ensure_cache(tmp_path / "c", images[0], images[1], spec, progress=False)
    assert len(ds) == 5 and not lock.exists()


def test_fresh_lock_of_another_host_is_waited_for(images, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "LOCK_TIMEOUT_S", 1.5)
    lock, spec = lock_of(images, tmp_path, "other-node 4242\n")
    with pytest.raises(cache_mod.UserError, match="has been held"):
        ensure_cache(tmp_path / "c", images[0], images[1], spec, progress=False)
    assert lock.exists()


def test_builder_refreshes_its_lock_while_building(images, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "HEARTBEAT_S", 0.01)
    refreshed, real = [], cache_mod._build

    def slow_build(folder, *a, **k):
        lock = folder / "building.lock"
        os.utime(lock, (0, 0))
        for _ in range(3000):  # up to ~30 s; returns as soon as the heartbeat touched the lock
            if lock.stat().st_mtime > 0:
                break
            time.sleep(0.01)
        refreshed.append(lock.stat().st_mtime > 0)
        return real(folder, *a, **k)

    monkeypatch.setattr(cache_mod, "_build", slow_build)
    root, rels = images
    ensure_cache(tmp_path / "c", root, rels, ReadSpec(size=16), progress=False)
    assert refreshed == [True]


def test_waiting_for_another_hosts_lock_says_once_who_holds_it_and_for_how_long(images, tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.setattr(cache_mod, "LOCK_TIMEOUT_S", 2.5)  # a few checks of the lock, one per second
    lock, spec = lock_of(images, tmp_path, "gpu-node-7 4242\n")
    with pytest.raises(cache_mod.UserError, match="has been held"):
        ensure_cache(tmp_path / "c", images[0], images[1], spec, progress=False)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("waiting for")]
    assert len(notes) == 1, notes
    assert "gpu-node-7 pid 4242" in notes[0] and str(lock) in notes[0] and "5 min" in notes[0]


def test_building_the_cache_leaves_the_random_state_as_it_was(images, tmp_path):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ensure_cache(tmp_path / "c", images[0], images[1], ReadSpec(size=16), progress=False)
    assert torch.equal(torch.rand(3), expected)  # a run that builds it starts as one that finds it
