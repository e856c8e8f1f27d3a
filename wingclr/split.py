"""Stage 2: cluster folders -> ``unlabeled/`` (all), ``train/`` and ``validation/`` (per cluster).

The split is drawn per cluster with a generator seeded by ``(seed, cluster name)``, so adding or
removing a cluster never reshuffles the others. Outliers go to ``unlabeled/`` only; a cluster with
one image stays in ``train/`` and is reported.
"""

from __future__ import annotations

import errno
import os
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .cli import UserError, check_minimum, progress, require_output_folder, write_error
from .data import dataset_channels, scan_clusters
from .imageio import try_read
from .stage import check_finished, write_csv, write_manifest

SUBSETS = ("unlabeled", "train", "validation")


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


def place_file(src: Path, dst: Path, link: str) -> None:
    """Copy ``src`` to ``dst`` (``link="copy"``) or link it (``"symlink"``, ``"hardlink"``).

    A full disk or read-only folder is a one-line :class:`UserError`; no half-copied file stays.
    """
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
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


def create_dataset(args) -> dict | None:
    """Run stage 2 (see ``2-create_dataset/create_dataset.py`` for the arguments).

    Returns:
        The manifest, or None when the output was already finished with the same settings.
    """
    out = Path(args.output)
    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    check_minimum(("--num-workers", args.num_workers, 0))
    require_output_folder(out)
    if check_finished(out, args, args.overwrite, "dataset"):
        print(f"skip: {out} already holds this dataset (manifest.json); pass --overwrite to redo it")
        return None
    inp = Path(args.input).resolve()
    if out.resolve() == inp or inp in out.resolve().parents:
        raise UserError(f"--output {out} lies inside --input {args.input}; choose an output "
                        "folder outside the cluster folders")
    found = scan_clusters(args.input)
    reasons = check_readable(found.root, found.images, args.num_workers)
    skipped = [(str(p), r) for p, r in found.skipped]
    skipped += [(str(p), r) for p, r in zip(found.images, reasons) if r]
    keep = [i for i, r in enumerate(reasons) if not r]
    if not keep:
        raise UserError(f"none of the {len(found.images)} images under {found.root} can be read")
    images = [found.images[i] for i in keep]
    clusters = [found.clusters[i] for i in keep]
    channels = dataset_channels(found.root, images)  # one band layout per dataset
    splits = assign_splits(clusters, args.val_fraction, args.seed, args.outliers_folder)

    (out / "manifest.json").unlink(missing_ok=True)  # from here on the output is unfinished
    for subset in SUBSETS:  # our own folders only; unfinished or --overwrite
        shutil.rmtree(out / subset, ignore_errors=True)
    for rel, split in progress(zip(images, splits), len(images), args.link, args.quiet,
                               unit="images"):
        src = found.root / rel
        place_file(src, out / "unlabeled" / rel, args.link)
        if split in ("train", "validation"):
            place_file(src, out / split / rel, args.link)

    table = pd.DataFrame({
        "image": [p.as_posix() for p in images], "cluster": clusters, "split": splits,
        "unlabeled_path": [f"unlabeled/{p.as_posix()}" for p in images],
    })
    write_csv(out / "split.csv", table)
    counts = table.groupby("cluster")["split"].value_counts().unstack(fill_value=0)
    singletons = [c for c in counts.index if c != args.outliers_folder and
                  counts.loc[c].sum() == 1]
    summary = {c: {s: int(counts.loc[c].get(s, 0)) for s in ("train", "validation", "unlabeled")}
               for c in counts.index}
    _report(summary, singletons, skipped, out)
    return write_manifest(
        out, "2-create_dataset", args, seed=args.seed,
        counts={"images": len(images), "clusters": len(summary), "skipped": len(skipped),
                "channels": channels,
                "train": int((table.split == "train").sum()),
                "validation": int((table.split == "validation").sum()),
                "per_cluster": summary},
        singleton_clusters=singletons, skipped_files=skipped, input=str(Path(args.input).resolve()))


def _report(summary: dict, singletons: list[str], skipped: list, out: Path) -> None:
    print(f"{'cluster':<24}{'train':>8}{'valid':>8}{'unlab':>8}")
    for c, n in summary.items():
        print(f"{c:<24}{n['train']:>8}{n['validation']:>8}{n['unlabeled']:>8}")
    for c in singletons:
        print(f"note: cluster {c} has 1 image; it stays in train/ (nothing to validate on)")
    for path, reason in skipped:
        print(f"skipped: {path}: {reason}")
    print(f"wrote {out}/unlabeled, train, validation and split.csv")
