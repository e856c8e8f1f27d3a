"""Stage 5's inputs: a run's ``embeddings.csv`` (+ ``embeddings.npy``) and a user labels CSV.

Both are CSVs people open in spreadsheets, so they are read the way a spreadsheet may have saved
them: ``;``-separated with decimal commas, header names in another case, a UTF-8 byte-order mark.
``embeddings.csv`` is the record of which vector belongs to which image; ``embeddings.npy`` (same
rows in the same order, full float32 precision) is only used while the CSV still matches it, so a
sorted or edited CSV can never pair an image with another image's vector.

Every image also has its ``specimen`` and ``source_image`` (:mod:`wingclr.identity`; derived from
the path for an ``embeddings.csv`` written before those columns existed), and ``--labels`` matches
a labels CSV on any of ``image``, ``specimen`` or ``source_image``, or on file names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..cli import UserError
from ..identity import COLUMNS as IDENTITY
from ..identity import GROUP, SPECIMEN, shorten
from ..labels import (ID_COLUMNS, LABEL_KEYS, MIN_LABELLED, label_columns, match_rows,  # noqa: F401
                      read_labels, read_table, with_identity)
from ..outputs import file_digest, read_csv
from ..untrusted import check_paths



def to_numbers(table: pd.DataFrame, columns: list[str], decimal: str, path: Path) -> np.ndarray:
    """``table[columns]`` as float32; a blank or non-numeric cell is a one-line error."""
    text = table[columns]
    if decimal == ",":
        text = text.apply(lambda col: col.str.replace(",", ".", regex=False))
    values = text.apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, col = bad[0]
        cell = table[columns[col]].iloc[row]
        raise UserError(f"{path}: {columns[col]} of image {table['image'].iloc[row]} (row {row + 2}) "
                        f"is {cell!r}, not a number; restore it or re-run 4-embed with --overwrite")
    return values


def specimen_groups(ids: pd.DataFrame) -> np.ndarray:
    """``(N,)`` group per image: the ``group`` column, or ``specimen`` where a table has none."""
    if GROUP in ids:
        return ids[GROUP].to_numpy(str)
    return ids[SPECIMEN].to_numpy(str)


def load_embeddings(emb_dir: Path, manifest: dict | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """``(image, cluster, split, specimen, source_image)`` table and ``(N, D)`` float32 features
    of a stage 4 run folder.

    The ``.npy`` is used untouched when the CSV is byte-identical to what stage 4 wrote (recorded
    in its manifest), or when the CSV's numbers equal it row by row. Otherwise (sorted, edited)
    every vector comes from its own CSV row. An ``embeddings.csv`` without the identity columns
    (stage 4 before they existed) gets them from its image paths.
    """
    emb_dir = Path(emb_dir)
    csv, npy = emb_dir / "embeddings.csv", emb_dir / "embeddings.npy"
    if not csv.exists():
        raise UserError(f"{csv} not found; run 4-embed/embed.py for this run first")
    recorded = (manifest or {}).get("embeddings_csv")
    if npy.exists() and recorded and recorded == file_digest(csv):
        wanted = {*ID_COLUMNS, *IDENTITY, GROUP}
        ids = with_identity(read_csv(csv, usecols=lambda c: c in wanted, dtype=str,
                                        keep_default_na=False))
        check_paths(ids, ["image", *IDENTITY], source=csv)  # figures open the images
        feats = np.load(npy)
        if len(feats) != len(ids):
            raise UserError(f"{npy} and {csv} disagree on the number of images; re-run 4-embed "
                            "with --overwrite")
        return ids, feats
    table, decimal = read_table(csv, ID_COLUMNS, prefix="emb_", hint=", emb_0 ... emb_{D-1}",
                                optional=[*IDENTITY, GROUP])
    columns = sorted((c for c in table.columns if c.startswith("emb_") and c[4:].isdigit()),
                     key=lambda c: int(c[4:]))
    if not columns:
        raise UserError(f"{csv} has no emb_0 ... emb_{{D-1}} columns; re-run 4-embed with --overwrite")
    twice = table["image"].duplicated()
    if twice.any():
        raise UserError(f"{csv} lists image {table['image'][twice].iloc[0]} twice; keep one row per "
                        "image")
    values = to_numbers(table, columns, decimal, csv)
    ids = with_identity(table)
    check_paths(ids, ["image", *IDENTITY], source=csv)
    if npy.exists():
        saved = np.load(npy, mmap_mode="r")
        if saved.shape == values.shape and np.allclose(saved, values, rtol=1e-5, atol=1e-6):
            return ids, np.asarray(saved)
        print(edited_note(csv, ids, len(saved)))
    return ids, values


def edited_note(csv: Path, ids: pd.DataFrame, embedded: int) -> str:
    """One line on an ``embeddings.csv`` that no longer matches ``embeddings.npy``: how many
    images (and which) its rows lack or add, and that each vector comes from its own row.

    Args:
        ids: the CSV's images; embedded: rows of ``embeddings.npy`` (what stage 4 embedded).
    """
    stage4 = Path(csv).parent / "embeddings_pca.csv"  # stage 4 lists every embedded image there too
    listed = None
    if stage4.is_file():
        try:
            listed = pd.read_csv(stage4, usecols=["image"], dtype=str, keep_default_na=False)["image"]
        except (ValueError, OSError, pd.errors.ParserError):
            listed = None
    gone = sorted(set(listed) - set(ids["image"])) if listed is not None else []
    if len(ids) < embedded:
        which = f": {shorten(gone)}" if gone else ""
        change = (f"lacks {embedded - len(ids)} of the {embedded} embedded images{which}; "
                  f"scored on the {len(ids)} it lists")
    elif len(ids) > embedded:
        change = f"lists {len(ids) - embedded} more images than the {embedded} embedded"
    else:
        change = "was sorted or edited"
    return (f"note: {csv} {change}; each image's vector is read from its own CSV row "
            "(re-run 4-embed with --overwrite to restore it)")


def attach_labels(ids: pd.DataFrame, labels_csv: Path | None, allow_partial: bool = False) -> pd.Series:
    """Class per image: the cluster, or the ``label`` column of a user CSV (:func:`read_labels`)."""
    if labels_csv is None:
        return ids["cluster"]
    return read_labels(ids, labels_csv, allow_partial=allow_partial)["label"]


def check_data(ids: pd.DataFrame, emb_dir: Path, manifest: dict, data: Path | None,
               root: Path | None) -> Path | None:
    """``root`` (the folder the embedded image paths are read from), once ``--data`` is known to
    hold the embedded images.

    Args:
        data: stage 5's ``--data`` (None: the embeddings' own dataset is used, nothing to check).
        root: the image folder of ``data`` (None: it is not a dataset).

    Raises:
        UserError: ``--data`` is not a dataset, or lacks images the run embedded (another dataset:
            its baselines and pictures would be drawn from other images than the run's).
    """
    if data is None:
        return root
    embedded = (manifest.get("args") or {}).get("data")
    checkpoint = (manifest.get("args") or {}).get("checkpoint") or "<checkpoint>"
    if root is None or not Path(root).is_dir():
        raise UserError(f"--data {data} is not a stage 2 dataset or a folder of cluster folders; "
                        f"drop --data to use the folder {emb_dir} was embedded from"
                        + (f" ({embedded})" if embedded else ""))
    missing = [image for image in ids["image"] if not (Path(root) / image).is_file()]
    if not missing:
        return root
    same = embedded and Path(embedded).resolve() == Path(data).resolve()
    lacks = (f"{len(missing)} of the {len(ids)} images embedded in {emb_dir} "
             f"(e.g. {missing[0]})")
    if same:
        raise UserError(f"--data {data} no longer holds {lacks}; embed it again: "
                        f"python 4-embed/embed.py --checkpoints {checkpoint} --data {data} "
                        "--overwrite")
    raise UserError(f"--data {data} lacks {lacks}: they come from {embedded or 'another dataset'}; "
                    "drop --data to evaluate on that, or embed this dataset first: python "
                    f"4-embed/embed.py --checkpoints {checkpoint} --data {data} --output <new folder>")


def identity_columns(ids: pd.DataFrame | None, rows: np.ndarray) -> dict[str, np.ndarray]:
    """``{specimen: ..., source_image: ...}`` of the selected ``rows`` (e.g. the validation images),
    the last columns of predictions.csv; ``{}`` without ``ids``."""
    if ids is None:
        return {}
    return {c: ids[c].to_numpy(str)[rows] for c in IDENTITY if c in ids}
