"""Stage 2's draw: which images of each cluster go to train and which to validation.

The split is drawn per cluster with a generator seeded by ``(seed, cluster name)``, so adding or
removing a cluster never reshuffles the others. Whole groups (:mod:`wingclr.dataset.groups`: the photos of
one specimen) are drawn, so a group never has photos on both sides; with one photo per group the
draw is the one stage 2 made before groups existed.
"""

from __future__ import annotations

import zlib

import numpy as np


def assign_splits(clusters: list[str], val_fraction: float, seed: int,
                  outliers: str = "outliers", groups: list[str] | None = None) -> list[str]:
    """Split label per image: ``train``, ``validation`` or ``unlabeled`` (outliers).

    Per cluster of n images, ``round(n * val_fraction)`` go to validation, clipped so that both
    sides keep at least one image when n >= 2; a single image stays in train. With ``groups``
    (one name per image) whole groups are drawn, as close to that count as they allow, and a group
    that spans several clusters goes where its first cluster (in image order) sent it.
    """
    splits = ["train"] * len(clusters)
    side: dict[str, str] = {}  # group -> the side it was given
    for name, idx in _by_cluster(clusters).items():
        if name == outliers:
            for i in idx:
                splits[i] = "unlabeled"
            continue
        free = _follow(idx, splits, groups, side)
        have = sum(splits[i] == "validation" for i in set(idx) - set(free))
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        _draw(free, splits, groups, side, rng, goal=_target(len(idx), val_fraction), have=have,
              n=len(idx))
    return splits


def update_splits(images: list[str], clusters: list[str], old: dict[str, str], val_fraction: float,
                  seed: int, outliers: str = "outliers", groups: list[str] | None = None) -> list[str]:
    """Split labels after images were added to a finished split: every image of ``old`` keeps its.

    A cluster none of whose images is in ``old`` is split as :func:`assign_splits` splits it (the
    same images go to validation as in a fresh run). In the others the new images are drawn
    (seeded by ``seed``, the cluster and how many images it kept) so that the cluster's validation
    share comes as close to ``val_fraction`` as it can without moving a kept image. With
    ``groups``, a new photo of a group already placed joins its side.

    Args:
        images: image paths (``<cluster>/...``); ``old`` maps such paths to their split.
    """
    splits = [old.get(image, "") for image in images]
    side: dict[str, str] = {}
    for i, split in enumerate(splits):
        if groups is not None and split in ("train", "validation"):
            side.setdefault(groups[i], split)  # a legacy split group keeps its first photo's side
    for name, idx in _by_cluster(clusters).items():
        new = [i for i in idx if not splits[i]]
        if not new:
            continue
        if name == outliers:
            for i in new:
                splits[i] = "unlabeled"
            continue
        new = _follow(new, splits, groups, side)
        placed = set(new)
        kept = [i for i in idx if i not in placed]
        if not new:
            continue
        n = len(idx)
        target = _target(n, val_fraction)
        if not kept:
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            _draw(new, splits, groups, side, rng, goal=target, have=0, n=n)
            continue
        have = sum(splits[i] == "validation" for i in kept)
        spare = 0 if any(splits[i] == "train" for i in kept) else 1  # train keeps >= 1 image
        need = max(0, min(target - have, len(new) - spare))
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), len(kept)])
        _draw(new, splits, groups, side, rng, goal=have + need, have=have, n=n)
    return splits


def _by_cluster(clusters: list[str]) -> dict[str, list[int]]:
    by_cluster: dict[str, list[int]] = {}
    for i, c in enumerate(clusters):
        by_cluster.setdefault(c, []).append(i)
    return by_cluster


def _target(n: int, val_fraction: float) -> int:
    """Validation images of a cluster of ``n``: both sides keep one when n >= 2."""
    return min(max(round(n * val_fraction), 1), n - 1) if n >= 2 and val_fraction > 0 else 0


def _follow(idx: list[int], splits: list[str], groups: list[str] | None,
            side: dict[str, str]) -> list[int]:
    """Place the images of ``idx`` whose group already has a side there; returns the others."""
    if groups is None:
        return list(idx)
    free = []
    for i in idx:
        if groups[i] in side:
            splits[i] = side[groups[i]]
        else:
            free.append(i)
    return free


def _draw(free: list[int], splits: list[str], groups: list[str] | None, side: dict[str, str],
          rng: np.random.Generator, *, goal: int, have: int, n: int) -> None:
    """Split ``free`` (images of one cluster of ``n``, ``have`` of them in validation already).

    Whole groups (each image alone without ``groups``), in a seeded random order, go to
    validation while each brings the count closer to ``goal`` and leaves train an image; for
    single images that is the first ``goal - have`` of the permutation, as before groups existed.
    """
    units: dict = {}
    for i in free:
        units.setdefault(groups[i] if groups is not None else i, []).append(i)
    names = list(units)
    chosen = set()
    for j in rng.permutation(len(names)):
        size = len(units[names[j]])
        if abs(have + size - goal) < abs(have - goal) and have + size <= n - 1:
            chosen.add(j)
            have += size
    for j, unit in enumerate(names):
        split = "validation" if j in chosen else "train"
        for i in units[unit]:
            splits[i] = split
        if groups is not None:
            side[unit] = split
