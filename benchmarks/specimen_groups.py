"""Specimen groups on real photos: how many specimens stage 2 splits across train and validation,
without grouping and with ``--group-by`` / ``--groups``.

Data (skipped with a message when absent): ``../shared/data/papilionidae`` (688 museum photos of
345 swallowtail specimens, dorsal ``<id>D.jpg`` + ventral ``<id>V.jpg``; ``labels.csv`` names each
photo's specimen ``id``). The photos are linked into one cluster folder per genus (as stage 1 would
group them; no weights needed) and stage 2 runs through its command line three times:

* no grouping (one photo, one group): the two views of a specimen are drawn independently;
* ``--group-by '^(.*?)[DV]$'``: the view letter dropped from the file name;
* ``--groups labels.csv --group-column id --group-id-column filename``.

    python benchmarks/specimen_groups.py                   # ~1 min on 2 cores
    python benchmarks/specimen_groups.py --specimens 150   # the first 150 specimens (300 photos)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
VIEWS = r"^(.*?)[DV]$"


def shared_data() -> Path:
    """``../shared/data`` beside the checkout; from a git worktree, beside its main checkout."""
    here = REPO.parent / "shared" / "data"
    if here.is_dir():
        return here
    try:
        common = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=REPO, text=True,
                                capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return here
    return (REPO / common).resolve().parent.parent / "shared" / "data" if common else here


def link_clusters(data: Path, labels: pd.DataFrame, out: Path) -> None:
    """Symlink each photo into ``out/<genus>/<file>`` (a hand-made cluster folder per genus)."""
    for row in labels.itertuples():
        link = out / row.genus / Path(row.filename).name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink((data / row.filename).resolve(), link)


def split_specimens(data: Path, work: Path, *, specimens: int | None = None, seed: int = 0) -> dict:
    """Specimens with photos on both sides, per way of grouping.

    Returns:
        ``{"specimens": n, "photos": n, "none": k, "group-by": k, "groups": k}``.
    """
    labels = pd.read_csv(data / "labels.csv", dtype=str, keep_default_na=False)
    if specimens:
        labels = labels[labels["id"].isin(labels["id"].drop_duplicates()[:specimens])]
        labels.to_csv(work / "labels.csv", index=False)
    csv = work / "labels.csv" if specimens else data / "labels.csv"
    link_clusters(data, labels, work / "clusters")
    id_of = {Path(f).stem: i for f, i in zip(labels["filename"], labels["id"])}
    found = {"specimens": labels["id"].nunique(), "photos": len(labels)}
    for name, flags in (("none", []), ("group-by", ["--group-by", VIEWS]),
                        ("groups", ["--groups", csv, "--group-column", "id",
                                    "--group-id-column", "filename"])):
        out = work / f"2-{name}"
        proc = subprocess.run([sys.executable, str(REPO / "2-create_dataset/create_dataset.py"),
                               "--input", work / "clusters", "--output", out, "--link", "symlink",
                               "--seed", str(seed), "--quiet", *map(str, flags)],
                              cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode:
            sys.exit(f"stage 2 failed ({name}):\n{proc.stderr[-2000:]}")
        summary = next((line for line in proc.stdout.splitlines() if line.startswith("groups:")), "")
        if summary:
            print(f"  {name}: {summary}")
        split = pd.read_csv(out / "split.csv", dtype=str, keep_default_na=False)
        split["id"] = [id_of[Path(s).stem] for s in split["source_image"]]
        sides = split[split["split"].isin(["train", "validation"])].groupby("id")["split"].nunique()
        found[name] = int((sides > 1).sum())
    return found


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="papilionidae folder (default: ../shared/data/papilionidae)")
    p.add_argument("--specimens", type=int, default=None, help="only the first N specimens")
    p.add_argument("--seed", type=int, default=0, help="stage 2's --seed")
    args = p.parse_args(argv)
    data = args.data or shared_data() / "papilionidae"
    if not (data / "labels.csv").is_file():
        print(f"skipped: no {data / 'labels.csv'} (the shared specimen photos are not on this machine)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        found = split_specimens(data, Path(tmp), specimens=args.specimens, seed=args.seed)
    n = found["specimens"]
    print(f"{found['photos']} photos of {n} specimens, one cluster per genus, --val-fraction 0.2, "
          f"--seed {args.seed}: specimens with photos in both train and validation")
    for name in ("none", "group-by", "groups"):
        print(f"  {name:<9} {found[name]:>4} of {n}")


if __name__ == "__main__":
    main()
