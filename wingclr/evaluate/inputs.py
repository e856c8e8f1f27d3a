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

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..cli import UserError
from ..identity import COLUMNS as IDENTITY
from ..identity import GROUP, SPECIMEN, identify, posix, shorten
from ..outputs import read_csv
from ..untrusted import check_paths

ID_COLUMNS = ["image", "cluster", "split"]
LABEL_KEYS = ("specimen", "source_image", "image")  # a labels CSV's key column, preferred first
MIN_LABELLED = 0.5  # below this share of images with a user label, --labels is refused


def file_digest(path: Path) -> dict:
    """Size and SHA-256 of a file (stage 4 records it for embeddings.csv)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"size": Path(path).stat().st_size, "sha256": sha.hexdigest()}


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
