"""Stage 2: cluster folders -> ``unlabeled/`` (all), ``train/`` and ``validation/`` (per cluster).

The split is drawn per cluster with a generator seeded by ``(seed, cluster name)``, so adding or
removing a cluster never reshuffles the others. Outliers go to ``unlabeled/`` only; a cluster with
one image stays in ``train/`` and is reported.

A finished dataset records its input images (``inputs.csv``). A re-run whose input images changed
(new, removed, or changed size or modification time) refuses to skip; ``--update`` then keeps every
image's split, drops removed images, copies changed ones again and draws splits for the new ones
only (:func:`update_splits`), while ``--overwrite`` draws the whole split again.
"""

from __future__ import annotations

import errno
import os
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .cli import (Settings, UserError, check_minimum, progress, require_output_folder, saved_so_far,
                  write_error)
from .data import dataset_channels, scan_clusters
from .identity import (COLUMNS, Changes, below_cluster, clusters_identity, identify,
                       input_changes, stamp_files, write_inputs)
from .imageio import try_read
from .outputs import check_finished, settings, write_csv, write_manifest

SUBSETS = ("unlabeled", "train", "validation")


@dataclass(frozen=True, kw_only=True)
class DatasetSettings(Settings):
    """Every stage 2 flag (see ``2-create_dataset/create_dataset.py --help`` for what each does)."""

    input: Path
    output: Path
    val_fraction: float
    seed: int
    link: str
    outliers_folder: str
    num_workers: int
    quiet: bool
    overwrite: bool
    update: bool


def assign_splits(clusters: list[str], val_fraction: float, seed: int,
                  outliers: str = "outliers") -> list[str]:
    """Split label per image: ``train``, ``validation`` or ``unlabeled`` (outliers).

    Per cluster of n images, ``round(n * val_fraction)`` go to validation, clipped so that both
    sides keep at least one image when n >= 2; a single image stays in train.
    """
    splits = ["train"] * len(clusters)
    by_cluster: dict[str, list[int]] = {}
    for i, c in enumerate(clusters):
        by_cluster.setdefault(c, []).append(i)
    for name, idx in by_cluster.items():
        if name == outliers:
            for i in idx:
                splits[i] = "unlabeled"
            continue
        n = len(idx)
        n_val = min(max(round(n * val_fraction), 1), n - 1) if n >= 2 and val_fraction > 0 else 0
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        for i in rng.permutation(idx)[:n_val]:
            splits[i] = "validation"
    return splits


def update_splits(images: list[str], clusters: list[str], old: dict[str, str], val_fraction: float,
                  seed: int, outliers: str = "outliers") -> list[str]:
    """Split labels after images were added to a finished split: every image of ``old`` keeps its.

    A cluster none of whose images is in ``old`` is split as :func:`assign_splits` splits it (the
    same images go to validation as in a fresh run). In the others the new images are drawn
    (seeded by ``seed``, the cluster and how many images it kept) so that the cluster's validation
    share comes as close to ``val_fraction`` as it can without moving a kept image.

    Args:
        images: image paths (``<cluster>/...``); ``old`` maps such paths to their split.
    """
    splits = [old.get(image, "") for image in images]
    by_cluster: dict[str, list[int]] = {}
    for i, c in enumerate(clusters):
        by_cluster.setdefault(c, []).append(i)
    for name, idx in by_cluster.items():
        new = [i for i in idx if not splits[i]]
        kept = [i for i in idx if splits[i]]
        if not new:
            continue
        if name == outliers or not kept:
            for i, split in zip(idx, assign_splits([name] * len(idx), val_fraction, seed, outliers)):
                splits[i] = split
            continue
        n = len(idx)
        target = min(max(round(n * val_fraction), 1), n - 1) if n >= 2 and val_fraction > 0 else 0
        have = sum(splits[i] == "validation" for i in kept)
        spare = 0 if any(splits[i] == "train" for i in kept) else 1  # train keeps >= 1 image
        need = max(0, min(target - have, len(new) - spare))
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), len(kept)])
        chosen = set(rng.permutation(new)[:need].tolist())
        for i in new:
            splits[i] = "validation" if i in chosen else "train"
    return splits


def place_file(src: Path, dst: Path, link: str) -> None:
    """Copy ``src`` to ``dst`` (``link="copy"``) or link it (``"symlink"``, ``"hardlink"``),
    replacing a file already at ``dst``.

    A full disk or read-only folder is a one-line :class:`UserError`; no half-copied file stays.
    """
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        if link == "symlink":
            os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)
        elif link == "hardlink":
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)
    except OSError as e:
        if link == "copy" and dst.is_file():
            dst.unlink()
        if link == "hardlink" and e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise UserError(f"cannot hard-link {src} into {dst.parent} ({e.strerror}); use "
                            "--link symlink or --link copy") from None
        error = write_error(dst, e)
        if error is None:
            raise
        raise error from None


def check_readable(root: Path, images: list[Path], workers: int = 4) -> list[str]:
    """Decode every image once; returns the failure reason per image ('' when readable)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda rel: try_read(root / rel)[1], images))


def readable_images(found, reasons: list[str]) -> tuple[list[Path], list[str], list, int]:
    """The readable images of a scan (``reasons[i]`` is '' for a readable ``found.images[i]``).

    Returns:
        ``(images, their clusters, skipped (path, reason) pairs, channels of the dataset)``.

    Raises:
        UserError: no image can be read.
    """
    skipped = [(str(p), r) for p, r in found.skipped]
    skipped += [(str(p), r) for p, r in zip(found.images, reasons) if r]
    keep = [i for i, r in enumerate(reasons) if not r]
    if not keep:
        raise UserError(f"none of the {len(found.images)} images under {found.root} can be read")
    images = [found.images[i] for i in keep]
    clusters = [found.clusters[i] for i in keep]
    return images, clusters, skipped, dataset_channels(found.root, images)  # one band layout


def dataset_settings(s: DatasetSettings) -> dict:
    """The settings that define the output (``--update`` says how to run, not what)."""
    return settings(s, "2-create_dataset")


def read_split_table(out: Path) -> pd.DataFrame | None:
    """``out``'s split.csv (image, cluster, split, ...), or None when missing or unreadable."""
    try:
        table = pd.read_csv(out / "split.csv", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    return table if {"image", "cluster", "split"} <= set(table.columns) else None


def create_dataset(s: DatasetSettings) -> dict | None:
    """Run stage 2 (see ``2-create_dataset/create_dataset.py`` for the flags).

    Args:
        s: every stage 2 flag, as parsed (``DatasetSettings.from_args``).

    Returns:
        The manifest, or None when the output was already finished with the same settings and
        input images.

    Raises:
        UserError: the finished output was made from other input images and neither
            ``--update`` nor ``--overwrite`` is given (nothing is touched).
    """
    out = Path(s.output)
    if not 0 <= s.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {s.val_fraction}")
    check_minimum(("--num-workers", s.num_workers, 0))
    require_output_folder(out)
    if s.update and s.overwrite:
        raise UserError("--update and --overwrite exclude each other: --update keeps every "
                        "image's split and adds the new images, --overwrite draws the whole split "
                        "again; pass one of them")
    finished = check_finished(out, dataset_settings(s), s.overwrite, "dataset")
    inp = Path(s.input).resolve()
    if out.resolve() == inp or inp in out.resolve().parents:
        raise UserError(f"--output {out} lies inside --input {s.input}; choose an output "
                        "folder outside the cluster folders")
    found = scan_clusters(s.input)
    stamps = stamp_files(found.root, found.images)  # recorded at the end: what the dataset is made of
    changes = input_changes(out, stamps, "split.csv") if finished or s.update else None
    if finished and not changes:
        print(f"skip: {out} already holds this dataset (manifest.json); pass --overwrite to redo it")
        return None
    if finished and changes and not s.update:
        raise UserError(f"{out}: input changed since this dataset ({changes}; "
                        f"{changes.examples()}); re-run with --update to add the new images "
                        "(every other image keeps its split) or with --overwrite to draw the "
                        "whole split again")
    old = read_split_table(out) if s.update and not s.overwrite else None
    if old is not None:
        return _update(s, out, found, stamps, old, changes)
    if s.update:
        print(f"note: --update: {out} holds no split.csv yet; making the dataset")
    reasons = check_readable(found.root, found.images, s.num_workers)
    images, clusters, skipped, channels = readable_images(found, reasons)
    splits = assign_splits(clusters, s.val_fraction, s.seed, s.outliers_folder)

    (out / "manifest.json").unlink(missing_ok=True)  # from here on the output is unfinished
    saved_so_far(f"{out} is unfinished (no manifest.json; the same command copies its images again)")
    for subset in SUBSETS:  # our own folders only; unfinished or --overwrite
        shutil.rmtree(out / subset, ignore_errors=True)
    for rel, split in progress(zip(images, splits), len(images), s.link, s.quiet,
                               unit="images"):
        src = found.root / rel
        place_file(src, out / "unlabeled" / rel, s.link)
        if split in ("train", "validation"):
            place_file(src, out / split / rel, s.link)
    return _finish(s, out, found, stamps, images, clusters, splits, skipped, channels)


def _finish(s: DatasetSettings, out: Path, found, stamps: pd.DataFrame, images: list[Path],
            clusters: list[str], splits: list[str], skipped: list, channels: int, **extra) -> dict:
    """split.csv, the summary, ``inputs.csv`` and the manifest (last) of a placed dataset."""
    names = [p.as_posix() for p in images]
    table = pd.DataFrame({
        "image": names, "cluster": clusters, "split": splits,
        "unlabeled_path": [f"unlabeled/{name}" for name in names],
    })
    known = clusters_identity(found.root)
    ids = identify(names, known, key=below_cluster, source="clusters.csv" if known else "")
    for column in COLUMNS:
        table[column] = ids[column].to_numpy()
    write_csv(out / "split.csv", table)
    counts = table.groupby("cluster")["split"].value_counts().unstack(fill_value=0)
    singletons = [c for c in counts.index if c != s.outliers_folder and
                  counts.loc[c].sum() == 1]
    summary = {c: {subset: int(counts.loc[c].get(subset, 0))
                   for subset in ("train", "validation", "unlabeled")} for c in counts.index}
    _report(summary, singletons, skipped, out)
    write_inputs(out, stamps)
    return write_manifest(
        out, "2-create_dataset", dataset_settings(s), seed=s.seed,
        counts={"images": len(images), "clusters": len(summary), "skipped": len(skipped),
                "channels": channels,
                "train": int((table.split == "train").sum()),
                "validation": int((table.split == "validation").sum()),
                "per_cluster": summary},
        singleton_clusters=singletons, skipped_files=skipped,
        input=str(Path(s.input).resolve()), **extra)


def _update(s: DatasetSettings, out: Path, found, stamps: pd.DataFrame, old: pd.DataFrame,
            changes: Changes | None) -> dict:
    """``--update``: keep every image of ``old`` (split.csv) that is still there in its split.

    Images not in ``old`` (new, or unreadable before) and changed ones are decoded; removed ones
    leave unlabeled/ and their split folder; new ones get a split (:func:`update_splits`); changed
    ones are copied (linked) again. Re-running after an interruption finishes the same update.
    """
    previous = dict(zip(old["image"], old["split"]))
    changed = set(changes.changed) if changes else set()
    names = [p.as_posix() for p in found.images]
    check = [i for i, name in enumerate(names) if name not in previous or name in changed]
    reasons = [""] * len(names)
    for i, reason in zip(check, check_readable(found.root, [found.images[i] for i in check],
                                               s.num_workers)):
        reasons[i] = reason
    images, clusters, skipped, channels = readable_images(found, reasons)
    kept_names = [p.as_posix() for p in images]
    splits = update_splits(kept_names, clusters, previous, s.val_fraction, s.seed,
                           s.outliers_folder)
    present = set(kept_names)
    removed = [name for name in previous if name not in present]
    new = [i for i, name in enumerate(kept_names) if name not in previous]
    is_new = set(new)
    redo = [i for i, name in enumerate(kept_names)
            if name not in previous or name in changed or not (out / "unlabeled" / name).exists()]

    (out / "manifest.json").unlink(missing_ok=True)  # from here on the output is unfinished
    saved_so_far(f"the --update of {out} is unfinished (no manifest.json; the same command finishes it)")
    for name in removed:
        for subset in ("unlabeled", previous[name]):
            _remove(out / subset, name)
    for i in progress(redo, len(redo), s.link, s.quiet, unit="images"):
        src, rel = found.root / images[i], images[i]
        place_file(src, out / "unlabeled" / rel, s.link)
        if splits[i] in ("train", "validation"):
            place_file(src, out / splits[i] / rel, s.link)
    added = pd.Series([splits[i] for i in new], dtype=str).value_counts().to_dict()
    print(f"update: {len(new)} new images placed ({added.get('train', 0)} train, "
          f"{added.get('validation', 0)} validation, {added.get('unlabeled', 0)} unlabeled only), "
          f"{len(removed)} removed, {len(redo) - len(new)} copied again; every other image "
          "keeps its split")
    return _finish(s, out, found, stamps, images, clusters, splits, skipped, channels,
                   updated={"new": [kept_names[i] for i in new], "removed": removed,
                            "copied_again": [kept_names[i] for i in redo if i not in is_new]})


def _remove(subset: Path, name: str) -> None:
    """Delete ``subset/name`` and the folders it leaves empty (up to ``subset``)."""
    path = subset / name
    if path.is_symlink() or path.exists():
        path.unlink()
    for folder in path.parents:
        if folder == subset or subset not in folder.parents:
            break
        try:
            folder.rmdir()
        except OSError:
            break  # not empty


def _report(summary: dict, singletons: list[str], skipped: list, out: Path) -> None:
    print(f"{'cluster':<24}{'train':>8}{'valid':>8}{'unlab':>8}")
    for c, n in summary.items():
        print(f"{c:<24}{n['train']:>8}{n['validation']:>8}{n['unlabeled']:>8}")
    for c in singletons:
        print(f"note: cluster {c} has 1 image; it stays in train/ (nothing to validate on)")
    for path, reason in skipped:
        print(f"skipped: {path}: {reason}")
    print(f"wrote {out}/unlabeled, train, validation and split.csv")
