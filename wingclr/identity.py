"""Which image is which across the stages: the ``specimen`` / ``source_image`` / ``group`` columns,
and the record of a stage's input files.

**Identity.** Every stage renames the image (``drawer1/x.jpg`` becomes stage 0's
``images/drawer1/x.png``, stage 1's ``cluster_2/drawer1/x.png``), so every CSV also carries

* ``source_image``: the original photo's path below stage 0's ``--input`` (``drawer1/x.jpg``);
* ``specimen``: that path without its extension (``drawer1/x``), the same in every CSV: one
  identity per photo. Two photos that differ only in their extension keep it (``x.jpg``,
  ``x.tif``), as stage 0's names do;
* ``group``: the specimen (animal) the photo shows; several photos (dorsal and ventral views) share
  it. Stage 2 sets it (``--group-by`` / ``--groups``, :mod:`wingclr.dataset.groups`); until then, and
  without grouping, it equals ``specimen`` (one photo, one group).

Each stage copies all three from the previous stage's CSV (``segmentation.csv`` -> ``clusters.csv`` ->
``split.csv`` -> ``embeddings.csv`` -> ``predictions.csv``). Where there is none (folders made by
hand, or a CSV written before these columns existed), ``source_image`` is the image's path below
that stage's input folder and ``specimen`` that path without its extension; a CSV written before
``group`` existed reads as ``group = specimen``.

**Input record.** Stages 1 and 2 write ``inputs.csv`` (``image, size, mtime_ns`` of every input
image, stamped when the run started) just before their manifest, so a re-run can tell new, removed
and changed images from what the finished output was made of.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .cli import UserError
from .outputs import read_csv, read_manifest, write_csv
from .untrusted import check_paths

SPECIMEN, SOURCE, GROUP = "specimen", "source_image", "group"
COLUMNS = [SPECIMEN, SOURCE, GROUP]
INPUTS = "inputs.csv"

Identity = dict  # lookup key -> (specimen, source_image, group)


def posix(path) -> str:
    """A relative path as the CSVs write it (``/`` separators, no leading ``./``)."""
    text = str(path).strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


def without_extension(path: str) -> str:
    """``drawer1/x.jpg`` -> ``drawer1/x`` (only the file's last extension goes)."""
    p = PurePosixPath(posix(path))
    return p.with_suffix("").as_posix() if p.suffix else p.as_posix()


def from_path(rel) -> tuple[str, str, str]:
    """``(specimen, source_image, group)`` of an image known only by its path below an input
    folder (its own group)."""
    source = posix(PurePosixPath(Path(rel).as_posix()))
    return without_extension(source), source, without_extension(source)


def below_cluster(rel) -> str:
    """``cluster_2/drawer1/x.png`` -> ``drawer1/x.png`` (the path below its cluster folder)."""
    parts = PurePosixPath(posix(rel)).parts
    return PurePosixPath(*parts[1:]).as_posix() if len(parts) > 1 else posix(rel)


def _read_csv(path: Path, columns: Iterable[str]) -> pd.DataFrame | None:
    wanted = set(columns)
    try:
        return read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                           usecols=lambda c: c in wanted)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError):
        return None  # a damaged table only costs the identity: paths stand in


def read_identity(csv: Path | str, key: str = "image", check: bool = False) -> Identity | None:
    """``key`` value -> ``(specimen, source_image, group)`` from a stage CSV that has the
    ``specimen`` and ``source_image`` columns (``group`` defaults to ``specimen``).

    Args:
        check: refuse a table edited into ambiguity (:func:`check_unique`).

    Returns:
        None when the file is missing, unreadable or lacks a column (written by an older
        version); rows with a blank identity are left out.

    Raises:
        UserError: with ``check``, one image listed twice or one specimen claimed by two images.
    """
    path = Path(csv)
    if not path.is_file():
        return None
    table = _read_csv(path, [key, *COLUMNS])
    if table is None or not {key, SPECIMEN, SOURCE} <= set(table.columns):
        return None
    check_paths(table, [key, SPECIMEN, SOURCE], source=path)  # never copied on when they leave the folder
    if check:
        check_unique(table, path, key)
    groups = table[GROUP] if GROUP in table else table[SPECIMEN]
    return {k: (s, src, g or s) for k, s, src, g in
            zip(table[key], table[SPECIMEN], table[SOURCE], groups) if k and s and src}


def check_unique(table: pd.DataFrame, path: Path, key: str = "image") -> None:
    """Refuse a stage CSV that lists one image twice or gives two images one specimen (a hand
    edit): copied on, it would pair a photo with another photo's identity.

    Raises:
        UserError: naming the file, the row (the header is row 1, as a spreadsheet shows it) and
            the fix.
    """
    for column, what in ((key, "lists {column} {value} again"),
                         (SPECIMEN, "gives {column} {value} to a second image")):
        values = table[column]
        twice = values.duplicated() & (values != "")
        if twice.any():
            row = int(np.flatnonzero(twice.to_numpy())[0])
            first = int(np.flatnonzero((values == values.iloc[row]).to_numpy())[0])
            other = f" ({table[key].iloc[row]})" if column != key else ""
            said = what.format(column=column, value=values.iloc[row])
            raise UserError(f"{path} row {row + 2}{other} {said} (first at row {first + 2}); "
                            "delete or correct one of the two rows (or re-run the stage that "
                            "wrote it with --overwrite)")


def segmentation_identity(images_dir: Path | str) -> Identity | None:
    """Identity per image of stage 0's ``images/`` (or ``rejected/images/``), keyed by the path
    below that folder; from the stage 0 folder's ``segmentation.csv``.

    A ``segmentation.csv`` written before the identity columns still names each photo
    (``image``) beside its cut-out (``output``), so its identities are recovered exactly.

    Returns:
        None when ``images_dir`` is not inside a stage 0 output.
    """
    folder = Path(images_dir)
    if folder.name != "images":
        return None
    top = folder.parent.parent if folder.parent.name == "rejected" else folder.parent
    table = _read_csv(top / "segmentation.csv", ["image", "output", *COLUMNS]) \
        if (top / "segmentation.csv").is_file() else None
    if table is None or not {"image", "output"} <= set(table.columns):
        return None
    check_paths(table, ["image", "output", SPECIMEN, SOURCE],
                source=top / "segmentation.csv")
    blank = pd.Series("", index=table.index)
    spec, src = (table[c] if c in table else blank for c in (SPECIMEN, SOURCE))
    group = table[GROUP] if GROUP in table else spec
    found = {}
    for image, out, s, so, g in zip(table["image"], table["output"], spec, src, group):
        if out:
            s, so = (s, so) if s and so else (without_extension(out), posix(image))
            found[out] = (s, so, g or s)
    return found


def clusters_identity(root: Path | str) -> Identity | None:
    """Identity per image of stage 1's output, keyed by the path below the cluster folder.

    From ``clusters.csv``; one written before the identity columns is completed through stage 1's
    input (named in its manifest) when that was stage 0's ``images/``.

    Returns:
        None when ``root`` holds no ``clusters.csv`` (cluster folders made by hand).

    Raises:
        UserError: ``clusters.csv`` lists an image twice or gives two images one specimen.
    """
    root = Path(root)
    known = read_identity(root / "clusters.csv", check=True)
    if known is not None or not (root / "clusters.csv").is_file():
        return known
    try:
        source = json.loads((root / "manifest.json").read_text(encoding="utf-8")).get("input")
    except (OSError, ValueError, AttributeError):
        source = None
    found = segmentation_identity(source) if isinstance(source, str) and source else None
    return found or None


def identify(images: Sequence[str], known: Identity | None, key: Callable[[str], str] | None = None,
             source: str = "") -> pd.DataFrame:
    """``specimen``, ``source_image`` and ``group`` per image, in order.

    Args:
        images: the images' paths below this stage's input folder.
        known: the previous stage's identities (None: there is no previous CSV).
        key: image path -> lookup key in ``known`` (default: the path itself).
        source: the previous CSV's name; images it does not list are named in one printed note.

    Images ``known`` does not hold are identified by their path (:func:`from_path`); two of them
    that differ only in their extension (``x.jpg``, ``x.tif``) keep it in ``specimen``, as stage
    0's names do, so no two images share a specimen.
    """
    rows, missing, derived = [], [], []
    for image in images:
        hit = known.get(key(image) if key else posix(image)) if known else None
        if hit is None:
            if known:
                missing.append(posix(image))
            hit = from_path(image)
            derived.append(len(rows))
        rows.append(hit)
    taken = pd.Series([r[0] for r in rows], dtype=str).value_counts()
    for i in derived:
        if taken.get(rows[i][0], 0) > 1:
            rows[i] = (rows[i][1], rows[i][1], rows[i][1])
    if missing and source:
        print(f"note: {len(missing)} image{'s' * (len(missing) != 1)} not listed in {source} "
              f"(added by hand?) are identified by their path here: {shorten(missing)}")
    return pd.DataFrame(rows, columns=COLUMNS)


def shorten(items: Sequence[str], k: int = 3) -> str:
    """``a, b, c ... (5)``: the first ``k`` items and how many there are."""
    items = list(items)
    return ", ".join(items[:k]) + (f" ... ({len(items)})" if len(items) > k else "")


# --- input record ----------------------------------------------------------------------------------

def stamp_files(root: Path | str, images: Sequence) -> pd.DataFrame:
    """``image`` (posix path below ``root``), ``size`` and ``mtime_ns`` per image (-1: not found)."""
    rows = []
    for rel in images:
        try:
            st = (Path(root) / rel).stat()
            rows.append((posix(Path(rel).as_posix()), st.st_size, st.st_mtime_ns))
        except OSError:
            rows.append((posix(Path(rel).as_posix()), -1, -1))
    return pd.DataFrame(rows, columns=["image", "size", "mtime_ns"])


def write_inputs(out: Path | str, stamps: pd.DataFrame) -> None:
    """Record the input images a finished output was made of (``inputs.csv``)."""
    write_csv(Path(out) / INPUTS, stamps)


@dataclass
class Changes:
    """Input images that differ from a finished output's record."""

    new: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # same path, other size or modification time

    def __bool__(self) -> bool:
        return bool(self.new or self.removed or self.changed)

    def __str__(self) -> str:
        return f"{len(self.new)} new, {len(self.removed)} removed, {len(self.changed)} changed images"

    def examples(self) -> str:
        """``new: a, b; removed: c`` (a few of each)."""
        return "; ".join(f"{what}: {shorten(items, 2)}" for what, items in
                         (("new", self.new), ("removed", self.removed), ("changed", self.changed))
                         if items)


def input_changes(out: Path | str, stamps: pd.DataFrame, table: str) -> Changes:
    """How the input images (``stamps`` of :func:`stamp_files`) differ from ``out``'s record.

    Args:
        table: ``out``'s own CSV with an ``image`` column (``clusters.csv``, ``split.csv``). An
            output finished before ``inputs.csv`` existed was made of the images it lists and the
            files its manifest lists as skipped (a listed image now missing counts as removed);
            changed images cannot be told from its files, so only new and removed ones count.
    """
    out = Path(out)
    now = dict(zip(stamps["image"], zip(stamps["size"], stamps["mtime_ns"])))
    listed, kept = set(), set()
    if (out / INPUTS).is_file():
        record = _read_csv(out / INPUTS, ["image", "size", "mtime_ns"])
        if record is not None and {"image", "size", "mtime_ns"} <= set(record.columns):
            before = {i: (_int(s), _int(m)) for i, s, m in
                      zip(record["image"], record["size"], record["mtime_ns"])}
            return Changes(new=sorted(set(now) - set(before)), removed=sorted(set(before) - set(now)),
                           changed=sorted(i for i in set(now) & set(before) if now[i] != before[i]))
    else:
        old = _read_csv(out / table, ["image"]) if (out / table).is_file() else None
        kept = {posix(p) for p in old["image"]} if old is not None and "image" in old else set()
        skipped = (read_manifest(out) or {}).get("skipped_files", [])
        listed = kept | {posix(str(p)) for p, *_ in skipped}
    return Changes(new=sorted(set(now) - listed), removed=sorted(kept - set(now)))


def _int(text) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return -2  # unreadable record: the image counts as changed
