"""Specimen groups: which photos show the same specimen (the ``group`` column), so that stage 2
puts them on the same side of the train/validation split.

A specimen photographed dorsal and ventral is two photos (two ``specimen`` identities, one per
photo) of one animal. Were one view in train and the other in validation, a probe would be scored
on the animal it was trained on. Stage 2 says which photos belong together in one of two ways:

* ``--group-by REGEX``: searched in each photo's file name without its extension (the stem of
  ``source_image``); the first capture group, or the whole match when the expression has none, is
  the group: ``'^(.*?)[DV]$'`` puts ``ACC0286D.jpg`` and ``ACC0286V.jpg`` in group ``ACC0286``.
  Photos of different folders with the same group name are one group (file names carry the
  specimen number; keeping too much together never leaks).
* ``--groups labels.csv --group-column id [--group-id-column filename]``: a CSV naming each photo
  and its group; rows are matched to photos as stage 5 matches labels
  (:func:`wingclr.labels.match_rows`: by ``specimen``, ``source_image`` or ``image``, or
  the file name).

A photo the expression does not match, or the CSV does not name (or names with an empty group),
is its own group. Without either flag the group is copied from ``clusters.csv``, where it is the
specimen: one photo, one group.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from ..cli import UserError
from ..identity import GROUP, SOURCE, SPECIMEN, posix, shorten
from ..labels import LABEL_KEYS, match_rows, read_table

EXAMPLE = "--group-by '^(.*?)[DV]$' (a trailing D/V view letter dropped)"


@dataclass
class Grouping:
    """The group of every photo and how it was found.

    Attributes:
        groups: ``(N,)`` group name per photo, in the order of the photos given.
        how: ``group-by``, ``groups`` (a CSV) or ``clusters.csv`` (copied: no grouping given).
        alone: photos (``image``) the expression or CSV left in a group of their own.
        record: settings and counts for the manifest.
    """

    groups: list[str]
    how: str
    alone: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)

    def summary(self) -> str:
        """``groups: N photos in M groups; largest group G photos (name)`` (+ who is alone)."""
        counts = self.counts()
        largest = counts["largest"]
        line = (f"groups: {counts['photos']} photos in {counts['groups']} groups; largest group "
                f"{largest} photo{'s' * (largest != 1)} ({counts['largest_group']})")
        if self.alone:
            what = "match no --group-by pattern" if self.how == "group-by" else \
                f"have no group in {self.record.get('groups')}"
            line += (f"; {len(self.alone)} photo{'s' * (len(self.alone) != 1)} {what} and form "
                     f"groups of their own: {shorten(self.alone)}")
        return line

    def counts(self) -> dict:
        """Photos, groups, the largest group (the first in name order among equals) and how many
        photos form a group of their own because nothing named their group."""
        sizes = pd.Series(self.groups, dtype=str).value_counts()
        largest = int(sizes.max()) if len(sizes) else 0
        name = min(sizes.index[sizes == largest]) if len(sizes) else ""
        return {"photos": len(self.groups), "groups": int(len(sizes)), "largest": largest,
                "largest_group": name, "own_group": len(self.alone)}


def check_flags(*, group_by: str | None, groups: Path | None, group_column: str | None,
                group_id_column: str | None) -> None:
    """Refuse grouping flags that contradict each other (one line each)."""
    if group_by is not None and groups is not None:
        raise UserError("--group-by and --groups exclude each other: --group-by reads the group "
                        "from the file name, --groups from a CSV; pass one of them")
    if groups is not None and not group_column:
        raise UserError(f"--groups {groups} needs --group-column naming its column that holds "
                        "each photo's group (e.g. --group-column id)")
    if groups is None and (group_column or group_id_column):
        raise UserError("--group-column and --group-id-column name columns of the --groups CSV; "
                        "pass --groups file.csv too (or use --group-by REGEX on the file names)")
    if group_by is not None:
        pattern(group_by)


def pattern(text: str) -> re.Pattern:
    """``--group-by``'s expression, compiled.

    Raises:
        UserError: not a regular expression.
    """
    try:
        return re.compile(text)
    except re.error as e:
        raise UserError(f"--group-by {text!r} is not a regular expression ({e}); e.g. "
                        f"{EXAMPLE}") from None


def photo_groups(ids: pd.DataFrame, *, group_by: str | None = None, groups: Path | None = None,
                 group_column: str | None = None, group_id_column: str | None = None) -> Grouping:
    """The group of every photo.

    Args:
        ids: one row per photo with ``image``, ``specimen``, ``source_image`` and ``group`` (the
            group copied from the previous stage, used when neither option is given).
        group_by: ``--group-by``'s regular expression.
        groups, group_column, group_id_column: ``--groups`` CSV, its group column and the column
            naming the photos (default: the first of specimen, source_image, image it has).

    Raises:
        UserError: an expression that matches no photo, a CSV without the columns, or one that
            gives a photo two groups.
    """
    check_flags(group_by=group_by, groups=groups, group_column=group_column,
                group_id_column=group_id_column)
    if group_by is not None:
        return _by_pattern(ids, group_by)
    if groups is not None:
        return _by_csv(ids, Path(groups), group_column, group_id_column)
    copied = [g or s for g, s in zip(ids[GROUP], ids[SPECIMEN])] if GROUP in ids \
        else ids[SPECIMEN].tolist()
    return Grouping(copied, "clusters.csv", record={"by": "clusters.csv"})


def _by_pattern(ids: pd.DataFrame, text: str) -> Grouping:
    rx = pattern(text)
    out, alone, stems = [], [], []
    for image, specimen, source in zip(ids["image"], ids[SPECIMEN], ids[SOURCE]):
        stem = PurePosixPath(posix(source)).stem
        m = rx.search(stem)
        value = (m.group(1) if rx.groups else m.group(0)) if m else None
        if value:
            out.append(value)
        else:
            out.append(specimen)
            alone.append(image)
            stems.append(stem)
    if len(alone) == len(out):
        raise UserError(f"--group-by {text!r} matches none of the {len(out)} file names (e.g. "
                        f"{stems[0]}); the expression is searched in the file name without its "
                        f"extension, e.g. {EXAMPLE}")
    return Grouping(out, "group-by", alone, {"by": "group-by", "group_by": text})


def _by_csv(ids: pd.DataFrame, path: Path, column: str, id_column: str | None) -> Grouping:
    if not path.is_file():
        raise UserError(f"--groups {path} not found; give the CSV that names each photo's group")
    column = column.strip().lower()
    id_column = id_column.strip().lower() if id_column else None
    table, _ = read_table(path, [column, *([id_column] if id_column else [])],
                          optional=LABEL_KEYS,
                          hint=" (--group-column, --group-id-column)")
    key = id_column or next((k for k in LABEL_KEYS if k in table.columns), None)
    if key is None:
        found = ", ".join(map(str, table.columns[:6])) + (" ..." if len(table.columns) > 6 else "")
        raise UserError(f"{path} has no column naming each photo (specimen, source_image or image) "
                        f"but {found}; pass --group-id-column with the one that does (e.g. "
                        "--group-id-column filename)")
    table = table[(table[column].str.strip() != "") & (table[key].str.strip() != "")]
    names = [posix(v) for v in table[key]]
    values = table[column].str.strip().tolist()
    rows, how = match_rows(ids, names, key if key in LABEL_KEYS else SPECIMEN)
    given: dict[int, tuple[str, str]] = {}
    for name, value, hits, matched in zip(names, values, rows, how):
        if matched == "ambiguous":  # a file name several specimens share names none of them
            continue
        for r in hits:
            if r in given and given[r][0] != value:
                raise UserError(f"{path} gives photo {ids['image'].iloc[r]} two groups "
                                f"({given[r][0]!r} for {given[r][1]}, {value!r} for {name}); keep "
                                "one group per photo")
            given[r] = (value, name)
    out = [given[r][0] if r in given else s for r, s in enumerate(ids[SPECIMEN])]
    alone = [ids["image"].iloc[r] for r in range(len(ids)) if r not in given]
    if not given:
        raise UserError(f"no row of {path} names a photo of this dataset (its {key} column, e.g. "
                        f"{names[0] if names else 'empty'!r}); it must hold specimen, source_image "
                        "or image as in clusters.csv, or the file names")
    nowhere = sum(1 for hits, matched in zip(rows, how) if not hits or matched == "ambiguous")
    if nowhere:
        print(f"note: {nowhere} row{'s' * (nowhere != 1)} of {path} name{'s' * (nowhere == 1)} "
              "no photo of this dataset (left out)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Grouping(out, "groups", alone, {"by": "groups", "groups": str(path),
                                            "group_column": column, "group_id_column": key,
                                            "groups_sha256": digest})


def split_across(groups: list[str], splits: list[str]) -> list[str]:
    """Groups with photos in both train and validation (sorted)."""
    sides: dict[str, set] = {}
    for g, s in zip(groups, splits):
        if s in ("train", "validation"):
            sides.setdefault(g, set()).add(s)
    return sorted(g for g, s in sides.items() if len(s) > 1)
