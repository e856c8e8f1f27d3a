"""The tables people write: CSVs read as a spreadsheet may have saved them, and labels matched to
photos by any identity (stage 2's ``--groups``, stage 3's kNN monitor, stage 5's ``--labels``).

A labels CSV names each image by ``specimen``, ``source_image`` or ``image`` (as in stage 4's
``embeddings.csv``), or by its file name (:func:`match_rows`); :func:`read_labels` gives one
string column per trait aligned with the images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .cli import UserError
from .identity import COLUMNS as IDENTITY
from .identity import GROUP, SPECIMEN, identify, posix, shorten
from .outputs import read_csv

ID_COLUMNS = ["image", "cluster", "split"]
LABEL_KEYS = ("specimen", "source_image", "image")  # a labels CSV's key column, preferred first
MIN_LABELLED = 0.5  # below this share of images with a user label, --labels is refused


def read_table(path: Path, required: Sequence[str], prefix: str | None = None,
               hint: str = "", optional: Sequence[str] = ()) -> tuple[pd.DataFrame, str]:
    """Read a CSV as strings with canonical column names.

    Args:
        required: columns that must be there; a header that differs only in case or surrounding
            spaces (``Cluster``) is accepted.
        optional: columns whose names are normalised the same way when they are there.
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
        table = read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable CSV ({str(e).splitlines()[0]}); save it as "
                        "CSV (UTF-8) with one header row") from None
    wanted = {c.lower() for c in (*required, *optional)}
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


def with_identity(table: pd.DataFrame) -> pd.DataFrame:
    """``image, cluster, split, specimen, source_image, group`` of an embeddings table; identities
    an older ``embeddings.csv`` lacks (or leaves blank) come from the image paths, and a missing
    ``group`` is the ``specimen`` (one photo, one group)."""
    ids = table[ID_COLUMNS].reset_index(drop=True)
    derived = identify(ids["image"].tolist(), None)
    for column in IDENTITY:
        given = (table[column].reset_index(drop=True) if column in table
                 else pd.Series("", index=ids.index))
        fallback = ids[SPECIMEN] if column == GROUP else derived[column]
        ids[column] = given.where(given.str.strip() != "", fallback)
    return ids


def label_columns(text: str | None) -> list[str]:
    """``--label-column sex,genus`` -> ``["sex", "genus"]`` (header names are matched ignoring case)."""
    names = [c.strip().lower() for c in (text or "label").split(",") if c.strip()]
    return list(dict.fromkeys(names)) or ["label"]


def read_labels(ids: pd.DataFrame, labels_csv: Path, *, columns: Sequence[str] = ("label",),
                id_column: str | None = None, group_column: str | None = None,
                allow_partial: bool = False) -> pd.DataFrame:
    """Labels per image from a user's spreadsheet: one column per trait (and ``group``).

    The CSV names each image in ``id_column`` (default: the first of ``specimen``,
    ``source_image`` or ``image`` it has), as any of the embeddings' ``image``, ``specimen`` or
    ``source_image``, or by file name (``x.jpg`` or ``x`` for ``drawer1/x.jpg``; case ignored; a
    file name shared by several specimens is ambiguous and matches none of them). Prints one line:
    how many images matched and how, which did not, which names match no image and which are
    ambiguous; and per trait how many rows leave it empty (left out of that trait).

    Args:
        ids: the embeddings' ``image, cluster, split, specimen, source_image`` table.
        columns: the label columns (traits), lower case.
        group_column: a column giving each image's group (specimen); its values come back as
            ``group`` ('' where an image has none).

    Returns:
        ``(N,)`` rows aligned with ``ids``: one string column per trait ('' = no label), plus
        ``group`` when ``group_column`` is given.

    Raises:
        UserError: a missing column; fewer than half the images matched (unless
            ``allow_partial``); or the CSV gives one image two labels for a trait.
    """
    index = ids.index
    ids = with_identity(ids)  # identities a table lacks come from the image paths
    columns = [c.lower() for c in columns]
    id_column = id_column.strip().lower() if id_column else None
    group_column = group_column.strip().lower() if group_column else None
    required = [*columns, *([id_column] if id_column else []), *([group_column] if group_column else [])]
    user, _ = read_table(labels_csv, required, optional=LABEL_KEYS,
                         hint=("" if id_column else
                               " and one of specimen, source_image or image (as in embeddings.csv)"))
    key = id_column or next((k for k in LABEL_KEYS if k in user.columns), None)
    if key is None:
        found = ", ".join(map(str, user.columns[:6])) + (" ..." if len(user.columns) > 6 else "")
        raise UserError(f"{labels_csv} needs a column specimen, source_image or image naming each "
                        f"image (as in embeddings.csv, or its file name) beside {columns[0]}, but has "
                        f"{found}; rename its header row or name the column with --id-column")
    user = user[user[key].str.strip() != ""]
    blank = user[columns].apply(lambda col: col.str.strip()) == ""
    empty = {c: int(blank[c].sum()) for c in columns}  # rows left out of each trait
    user = user[~blank.all(axis=1)]
    names = [posix(v) for v in user[key]]
    rows, how = match_rows(ids, names, key)
    ambiguous = sorted({f"{name} ({len(hits)} images share this name)"
                        for name, hits, h in zip(names, rows, how) if h == "ambiguous"})
    rows = [[] if h == "ambiguous" else hits for hits, h in zip(rows, how)]
    out = pd.DataFrame({c: [""] * len(ids) for c in columns}, index=index)
    matched: set[int] = set()
    for column in columns:
        given: dict[int, tuple[str, str]] = {}  # row -> (label, the name it came from)
        for name, label, hits in zip(names, user[column].str.strip(), rows):
            matched.update(hits)
            if not label:
                continue
            for r in hits:
                if r in given and given[r][0] != label:
                    what = "" if column == "label" else f"{column} "
                    raise UserError(f"{labels_csv} gives image {ids['image'][r]} two different "
                                    f"{what}labels ({given[r][0]!r} for {given[r][1]}, {label!r} "
                                    f"for {name}); keep one row per image")
                given[r] = (label, name)
        out[column] = [given[r][0] if r in given else "" for r in range(len(ids))]
    if group_column:
        group = {r: g.strip() for g, hits in zip(user[group_column], rows) for r in hits}
        out["group"] = [group.get(r, "") for r in range(len(ids))]
    shown = ids[key].tolist() if key in ids else ids["image"].tolist()
    unmatched = [shown[r] for r in range(len(ids)) if r not in matched]
    nowhere = sorted({name for name, hits, h in zip(names, rows, how) if not hits and not h})
    n = len(ids)
    order = [key, *[c for c in LABEL_KEYS if c != key], "file name"]
    by = {k: how.count(k) for k in order if how.count(k)}  # ambiguous names are listed apart
    by_text = (f"by {next(iter(by))}" if len(by) == 1 else
               ", ".join(f"by {k}: {v}" for k, v in by.items()) if by else "none")
    print(f"labels: {len(matched)} of {n} images matched ({by_text})"
          + (f"; unmatched: {shorten(unmatched)}" if unmatched else "")
          + (f"; {len(nowhere)} labelled name{'s' * (len(nowhere) != 1)} in {labels_csv} match no "
             f"image: {shorten(nowhere)}" if nowhere else "")
          + (f"; ambiguous: {shorten(ambiguous)}; use specimen or source_image" if ambiguous
             else ""))
    for column, count in empty.items():
        if count:
            print(f"labels: {count} row{'s' * (count != 1)} of {labels_csv} leave {column} "
                  f"empty: left out of {column}")
    if len(matched) < MIN_LABELLED * n and not allow_partial:
        raise UserError(f"only {len(matched)} of {n} embedded images have a label in {labels_csv} "
                        f"(e.g. none for {unmatched[0]}); its {key} column must name the embedded "
                        "images (image, specimen or source_image as in embeddings.csv, or file "
                        "names), or pass --allow-partial-labels to evaluate on the labelled ones")
    return out


def match_rows(ids: pd.DataFrame, names: list[str], key: str) -> tuple[list[list[int]], list[str]]:
    """Rows of ``ids`` each labelled name stands for, and how it matched.

    In order: the same column (``key``, when the embeddings have it), another identity column
    (image, specimen, source_image), then the file name (case ignored; with or without
    extension; ``x.jpg`` also names stage 0's ``x.png``), which must point to one specimen.

    Returns:
        ``(rows per name, how per name)``; how is ``key``, another column's name, ``file name``,
        ``ambiguous`` (a file name several specimens share: its rows are given, but it must not
        be used) or '' (no match).
    """
    columns = [c for c in dict.fromkeys([key, "specimen", "source_image", "image"]) if c in ids]
    exact = {c: _index(ids[c].map(posix)) for c in columns}
    by_file: dict[str, list[int]] = {}
    for r, values in enumerate(zip(ids["image"], ids["specimen"], ids["source_image"])):
        for alias in {a for v in values for a in _file_names(v)}:
            by_file.setdefault(alias, []).append(r)
    specimens = ids[SPECIMEN].tolist()
    rows, how = [], []
    for name in names:
        hit = next(((c, exact[c][name]) for c in columns if name in exact[c]), None)
        if hit is None:
            file = name.rsplit("/", 1)[-1].lower()
            # x.jpg also names stage 0's x.png: the photo's extension may be gone
            found = by_file.get(file) or by_file.get(file.rsplit(".", 1)[0] if "." in file[1:] else file, [])
            hit = (("file name" if len({specimens[r] for r in found}) == 1 else "ambiguous"), found) \
                if found else ("", [])
        how.append(hit[0])
        rows.append(hit[1])
    return rows, how


def _index(values: pd.Series) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for r, value in enumerate(values):
        index.setdefault(value, []).append(r)
    return index


def _file_names(path: str) -> set[str]:
    """``drawer1/X.jpg`` -> ``{x.jpg, x}``: the names a labels file may use for it."""
    name = posix(path).rsplit("/", 1)[-1].lower()
    return {name, name.rsplit(".", 1)[0]} if "." in name[1:] else {name}
