"""Stage 5's inputs: a run's ``embeddings.csv`` (+ ``embeddings.npy``) and a user labels CSV.

Both are CSVs people open in spreadsheets, so they are read the way a spreadsheet may have saved
them: ``;``-separated with decimal commas, header names in another case, a UTF-8 byte-order mark.
``embeddings.csv`` is the record of which vector belongs to which image; ``embeddings.npy`` (same
rows in the same order, full float32 precision) is only used while the CSV still matches it, so a
sorted or edited CSV can never pair an image with another image's vector.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .cli import UserError

ID_COLUMNS = ["image", "cluster", "split"]
MIN_LABELLED = 0.5  # below this share of images with a user label, --labels is refused


def file_digest(path: Path) -> dict:
    """Size and SHA-256 of a file (stage 4 records it for embeddings.csv)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"size": Path(path).stat().st_size, "sha256": sha.hexdigest()}


def read_table(path: Path, required: Sequence[str], prefix: str | None = None,
               hint: str = "") -> tuple[pd.DataFrame, str]:
    """Read a CSV as strings with canonical column names.

    Args:
        required: columns that must be there; a header that differs only in case or surrounding
            spaces (``Cluster``) is accepted.
        prefix: columns starting with it (e.g. ``emb_``) are normalised the same way.
        hint: appended to the missing-columns error (what the file should look like).

    Returns:
        ``(table, decimal)``: ``decimal`` is ``","`` for a ``;``-separated spreadsheet export.

    Raises:
        UserError: missing or duplicated columns, or a file that is not a CSV.
    """
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    sep = ";" if header.count(";") > header.count(",") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable CSV ({str(e).splitlines()[0]}); save it as "
                        "CSV (UTF-8) with one header row") from None
    wanted = {c.lower() for c in required}
    names = {c: c.strip().lower() if c.strip().lower() in wanted or
             (prefix and c.strip().lower().startswith(prefix)) else c for c in table.columns}
    twice = pd.Series(list(names.values())).duplicated()
    if twice.any():
        name = list(names.values())[int(np.flatnonzero(twice)[0])]
        raise UserError(f"{path} has the column {name!r} twice (ignoring case); keep one")
    table = table.rename(columns=names)
    missing = [c for c in required if c not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns[:6])) + (" ..." if len(table.columns) > 6 else "")
        raise UserError(f"{path} needs the columns {', '.join(required)}{hint} but has {found}; "
                        "rename its header row to those names")
    return table, "," if sep == ";" else "."


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


def load_embeddings(emb_dir: Path, manifest: dict | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """``(image, cluster, split)`` table and ``(N, D)`` float32 features of a stage 4 run folder.

    The ``.npy`` is used untouched when the CSV is byte-identical to what stage 4 wrote (recorded
    in its manifest), or when the CSV's numbers equal it row by row. Otherwise (sorted, edited)
    every vector comes from its own CSV row.
    """
    emb_dir = Path(emb_dir)
    csv, npy = emb_dir / "embeddings.csv", emb_dir / "embeddings.npy"
    if not csv.exists():
        raise UserError(f"{csv} not found; run 4-embed/embed.py for this run first")
    recorded = (manifest or {}).get("embeddings_csv")
    if npy.exists() and recorded and recorded == file_digest(csv):
        ids = pd.read_csv(csv, usecols=ID_COLUMNS, dtype=str, keep_default_na=False)
        feats = np.load(npy)
        if len(feats) != len(ids):
            raise UserError(f"{npy} and {csv} disagree on the number of images; re-run 4-embed "
                            "with --overwrite")
        return ids, feats
    table, decimal = read_table(csv, ID_COLUMNS, prefix="emb_", hint=", emb_0 ... emb_{D-1}")
    columns = sorted((c for c in table.columns if c.startswith("emb_") and c[4:].isdigit()),
                     key=lambda c: int(c[4:]))
    if not columns:
        raise UserError(f"{csv} has no emb_0 ... emb_{{D-1}} columns; re-run 4-embed with --overwrite")
    twice = table["image"].duplicated()
    if twice.any():
        raise UserError(f"{csv} lists image {table['image'][twice].iloc[0]} twice; keep one row per "
                        "image")
    values = to_numbers(table, columns, decimal, csv)
    ids = table[ID_COLUMNS].reset_index(drop=True)
    if npy.exists():
        saved = np.load(npy, mmap_mode="r")
        if saved.shape == values.shape and np.allclose(saved, values, rtol=1e-5, atol=1e-6):
            return ids, np.asarray(saved)
        print(f"note: {csv} no longer matches embeddings.npy (sorted or edited); each image's "
              "vector is read from its own CSV row")
    return ids, values


def attach_labels(ids: pd.DataFrame, labels_csv: Path | None, allow_partial: bool = False) -> pd.Series:
    """Class per image: the cluster, or the ``label`` column of a user CSV keyed by ``image``.

    Prints how many images got a label and names some that did not.

    Raises:
        UserError: fewer than half the images have a label (unless ``allow_partial``), or the CSV
            gives one image two labels.
    """
    if labels_csv is None:
        return ids["cluster"]
    user, _ = read_table(labels_csv, ["image", "label"], hint=" (image as in embeddings.csv)")
    user = user[user["label"].str.strip() != ""]
    conflict = user.groupby("image")["label"].nunique() > 1
    if conflict.any():
        raise UserError(f"{labels_csv} gives image {conflict[conflict].index[0]} two different "
                        "labels; keep one row per image")
    labels = ids["image"].map(dict(zip(user["image"], user["label"]))).fillna("")
    unmatched = ids["image"][labels == ""].tolist()
    unknown = sorted(set(user["image"]) - set(ids["image"]))
    n, matched = len(ids), len(ids) - len(unmatched)
    print(f"labels: {matched} of {n} embedded images have a label in {labels_csv}"
          + (f"; without one: {_first(unmatched)}" if unmatched else "")
          + (f"; {len(unknown)} labelled images are not embedded: {_first(unknown)}" if unknown else ""))
    if matched < MIN_LABELLED * n and not allow_partial:
        raise UserError(f"only {matched} of {n} embedded images have a label in {labels_csv} "
                        f"(e.g. none for {unmatched[0]}); its image column must match "
                        "embeddings.csv's paths, or pass --allow-partial-labels to evaluate on "
                        "the labelled ones")
    return labels


def _first(items: list[str], k: int = 3) -> str:
    return ", ".join(items[:k]) + (f" (+{len(items) - k} more)" if len(items) > k else "")
