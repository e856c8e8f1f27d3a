"""Stage 2: cluster folders -> ``unlabeled/`` (all), ``train/`` and ``validation/`` (per cluster).

The split is drawn per cluster with a generator seeded by ``(seed, cluster name)``, so adding or
removing a cluster never reshuffles the others (:mod:`wingclr.dataset.draw`). Photos of one specimen
(``--group-by``, ``--groups``: :mod:`wingclr.dataset.groups`) are drawn together and never split. Outliers
go to ``unlabeled/`` only; a cluster with one image stays in ``train/`` and is reported.

A finished dataset records its input images (``inputs.csv``). A re-run whose input images changed
(new, removed, or changed size or modification time) refuses to skip; ``--update`` then keeps every
image's split, drops removed images, copies changed ones again and draws splits for the new ones
only (:func:`update_splits`), while ``--overwrite`` draws the whole split again.
"""

from __future__ import annotations

import hashlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ..cli import STAGE_DIRS, Settings, UserError, check_minimum, progress, require_output_folder, saved_so_far
from ..data import dataset_channels, scan_clusters
from ..flags import flag, run_only
from .draw import assign_splits, update_splits  # noqa: F401 (stage 2 API)
from .groups import Grouping, check_flags, photo_groups, split_across
from ..identity import (COLUMNS, GROUP, Changes, below_cluster, clusters_identity, identify,
                       input_changes, shorten, stamp_files, write_inputs)
from ..imageio import try_read
from ..outputs import (RUN_ONLY, changed_keys, check_finished, place_file, read_csv,  # noqa: F401
                       recorded_settings, write_csv, write_manifest)
from ..untrusted import check_paths

SUBSETS = ("unlabeled", "train", "validation")
# Compared by content, not by path: the input images by inputs.csv, the --groups CSV by its
# digest, so a copied or moved dataset (or work folder) is still the same dataset.
PATH_KEYS = ("input", "output", "groups")
GROUPS_DIGEST = "groups_sha256"


@dataclass(frozen=True, kw_only=True)
class DatasetSettings(Settings):
    """Every stage 2 flag, declared once (:mod:`wingclr.flags`): ``create_dataset.py``'s parser and
    ``outputs.RUN_ONLY["2-create_dataset"]`` are built from it; the field order is the manifest's."""

    input: Path = flag(STAGE_DIRS["clustering"],
                       "folder with one subfolder per cluster (stage 1 output or hand-made)")
    output: Path = flag(STAGE_DIRS["dataset"], "output folder")
    val_fraction: float = flag(0.2, "share of each cluster that goes to validation/")
    seed: int = flag(0, "random seed of the split")
    group_by: str | None = flag(
        None, "regular expression searched in each file name without extension; its first capture group "
              "(or the match) is the specimen, whose photos land on one side of the split, e.g. "
              "'^(.*?)[DV]$' drops a trailing D/V view letter (default: one photo, one group)", metavar="REGEX")
    groups: Path | None = flag(None, "CSV naming each photo's specimen group (with --group-column); rows "
                                     "match photos by specimen, source_image, image or file name", metavar="CSV")
    group_column: str | None = flag(None, "column of --groups holding the group (e.g. id)")
    group_id_column: str | None = flag(None, "column of --groups naming the photo (default: the first of "
                                             "specimen, source_image, image it has; e.g. filename)")
    link: str = flag("copy", "copy the images or link to them (saves disk for large sets)",
                     choices=["copy", "symlink", "hardlink"])
    outliers_folder: str = flag("outliers", "subfolder whose images go to unlabeled/ only")
    num_workers: int = flag(4, "threads that check the images", run_only=True)
    quiet: bool = flag(False, "no progress while copying / linking (the summary table stays)", run_only=True)
    overwrite: bool = flag(False, "replace a finished output folder", run_only=True)
    update: bool = flag(False, "after images were added, removed or changed in --input: keep every image's "
                               "split, place the new images (drawn per cluster), drop removed ones and copy "
                               "changed ones again", run_only=True)


RUN_ONLY["2-create_dataset"] = run_only(DatasetSettings)


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
    """The settings that define the output (``--update`` says how to run, not what), with the
    digest of the ``--groups`` CSV when one is given."""
    found = recorded_settings(s, "2-create_dataset")
    if s.groups is not None and Path(s.groups).is_file():
        found[GROUPS_DIGEST] = hashlib.sha256(Path(s.groups).read_bytes()).hexdigest()
    return found


def changed_settings(stored: dict, wanted: dict) -> list[str]:
    """Names of the settings that differ between a finished dataset's record and this command;
    folder paths (:data:`PATH_KEYS`) are left out."""
    return changed_keys(stored, wanted, (set(stored) | set(wanted)) - set(PATH_KEYS))


def read_split_table(out: Path) -> pd.DataFrame | None:
    """``out``'s split.csv (image, cluster, split, ...), or None when missing or unreadable."""
    try:
        table = read_csv(out / "split.csv", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if not {"image", "cluster", "split"} <= set(table.columns):
        return None
    check_paths(table, ["image", *COLUMNS], source=out / "split.csv")  # --update removes by these
    return table


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
    check_flags(group_by=s.group_by, groups=s.groups, group_column=s.group_column,
                group_id_column=s.group_id_column)
    if s.groups is not None and not Path(s.groups).is_file():
        raise UserError(f"--groups {s.groups} not found; give the CSV that names each photo's "
                        "group")
    if s.update and s.overwrite:
        raise UserError("--update and --overwrite exclude each other: --update keeps every "
                        "image's split and adds the new images, --overwrite draws the whole split "
                        "again; pass one of them")
    finished = check_finished(out, dataset_settings(s), s.overwrite, "dataset",
                              compare=changed_settings)
    inp = Path(s.input).resolve()
    if out.resolve() == inp or inp in out.resolve().parents:
        raise UserError(f"--output {out} lies inside --input {s.input}; choose an output "
                        "folder outside the cluster folders")
    found = scan_clusters(s.input)
    clusters_identity(found.root)  # refuses paths in clusters.csv that leave their folder, first
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
    ids, grouping = identities(s, found.root, found.images)  # a bad grouping stops before decoding
    reasons = check_readable(found.root, found.images, s.num_workers)
    images, clusters, skipped, channels = readable_images(found, reasons)
    ids, grouping = readable_only(ids, grouping, reasons)
    splits = assign_splits(clusters, s.val_fraction, s.seed, s.outliers_folder, grouping.groups)

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
    return _finish(s, out, stamps, images, clusters, splits, skipped, channels, ids, grouping)


def identities(s: DatasetSettings, root: Path, images: list[Path]) -> tuple[pd.DataFrame, Grouping]:
    """``image`` (``<cluster>/...``), ``specimen``, ``source_image`` and ``group`` per image, and
    the grouping the split keeps together (``--group-by`` / ``--groups``, else ``clusters.csv``'s).

    Raises:
        UserError: a ``clusters.csv`` edited into ambiguity, or a grouping that cannot be used.
    """
    names = [p.as_posix() for p in images]
    known = clusters_identity(root)
    ids = identify(names, known, key=below_cluster, source="clusters.csv" if known else "")
    ids.insert(0, "image", names)
    grouping = photo_groups(ids, group_by=s.group_by, groups=s.groups, group_column=s.group_column,
                            group_id_column=s.group_id_column)
    ids[GROUP] = grouping.groups
    return ids, grouping


def readable_only(ids: pd.DataFrame, grouping: Grouping,
                  reasons: list[str]) -> tuple[pd.DataFrame, Grouping]:
    """The rows of the readable images (``reasons[i] == ''``); prints the groups' one-line
    summary when photos were grouped."""
    keep = [i for i, reason in enumerate(reasons) if not reason]
    ids = ids.iloc[keep].reset_index(drop=True)
    names = set(ids["image"])
    grouping = replace(grouping, groups=[grouping.groups[i] for i in keep],
                       alone=[a for a in grouping.alone if a in names])
    if grouping.how != "clusters.csv" or ids[GROUP].nunique() < len(ids):
        print(grouping.summary())
    return ids, grouping


def _finish(s: DatasetSettings, out: Path, stamps: pd.DataFrame, images: list[Path],
            clusters: list[str], splits: list[str], skipped: list, channels: int,
            ids: pd.DataFrame, grouping: Grouping, **extra) -> dict:
    """split.csv, the summary, ``inputs.csv`` and the manifest (last) of a placed dataset."""
    names = [p.as_posix() for p in images]
    table = pd.DataFrame({
        "image": names, "cluster": clusters, "split": splits,
        "unlabeled_path": [f"unlabeled/{name}" for name in names],
    })
    for column in COLUMNS:
        table[column] = ids[column].to_numpy()
    across = split_across(grouping.groups, splits)
    if across:  # only a dataset split before its photos were grouped, then --update'd
        print(f"note: {len(across)} groups have photos in both train and validation (split "
              f"before they were grouped; --overwrite draws the split again): {shorten(across)}")
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
                "channels": channels, "groups": int(ids[GROUP].nunique()),
                "train": int((table.split == "train").sum()),
                "validation": int((table.split == "validation").sum()),
                "per_cluster": summary},
        singleton_clusters=singletons, skipped_files=skipped,
        grouping={**grouping.record, **grouping.counts(), "split_across": len(across)},
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
    ids, grouping = readable_only(*identities(s, found.root, found.images), reasons)
    splits = update_splits(kept_names, clusters, previous, s.val_fraction, s.seed,
                           s.outliers_folder, grouping.groups)
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
    return _finish(s, out, stamps, images, clusters, splits, skipped, channels, ids, grouping,
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
        if summary[c]["validation"]:  # its group was placed in another cluster
            print(f"note: cluster {c} has 1 image; it is in validation/ with the rest of its group")
        else:
            print(f"note: cluster {c} has 1 image; it stays in train/ (nothing to validate on)")
    for path, reason in skipped:
        print(f"skipped: {path}: {reason}")
    print(f"wrote {out}/unlabeled, train, validation and split.csv")
