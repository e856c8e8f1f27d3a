"""Which rows stage 5 scores, per trait: the labels (clusters or user columns), the groups the
folds keep together, and the ``--protocol`` (stage 2's split or cross-validation)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..cli import UserError
from .baselines import SplitData
from .inputs import attach_labels, read_labels, specimen_groups
from .neighbours import match_queries
from .settings import EvalSettings


def load_split(ids: pd.DataFrame, labels_csv: Path | None, root: Path | None,
               allow_partial: bool = False) -> SplitData:
    """Stage 2's train/validation split (``--protocol split``) of the clusters or a ``label``."""
    y = attach_labels(ids, labels_csv, allow_partial).to_numpy(str)
    return make_split(ids, y, root, protocol="split")


def make_split(ids: pd.DataFrame, y: np.ndarray, root: Path | None, *, protocol: str = "split",
               folds: int = 0, groups: np.ndarray | None = None) -> SplitData:
    """The rows scored for labels ``y``: labelled train and validation images (outliers never).

    ``split``: train/ fits, validation/ scores; ``cv``: every such image is scored once, out of
    fold (``train`` = ``val`` = those rows).
    """
    y = np.asarray(y).astype(str)
    labelled = y != ""
    train = (ids["split"] == "train").to_numpy() & labelled
    val = (ids["split"] == "validation").to_numpy() & labelled
    groups = specimen_groups(ids) if groups is None else np.asarray(groups).astype(str)
    if protocol == "cv":
        train = val = train | val
    return SplitData(root, ids["image"].to_numpy(str), y, train, val, groups, protocol, folds)


def trait_splits(ids: pd.DataFrame, root: Path | None, s: EvalSettings) -> list[tuple[str, SplitData, str]]:
    """``(trait, split, where the groups come from)`` per scored trait of one run."""
    if not s.labels:
        table, groups = pd.DataFrame({"cluster": ids["cluster"].to_numpy(str)}), None
        groups_from = "group" if "group" in ids else "specimen"
    else:
        table = read_labels(ids, s.labels, columns=s.traits, id_column=s.id_column,
                            group_column=s.group_column, allow_partial=s.allow_partial_labels)
        groups = specimen_groups(ids)
        groups_from = "group" if "group" in ids else "specimen"
        if s.group_column:
            groups = np.where(table["group"].to_numpy(str) != "", table["group"].to_numpy(str), groups)
            groups_from = f"{s.labels_from}: {s.group_column}"
    out = []
    for trait in s.traits:
        split = make_split(ids, table[trait].to_numpy(str), root, protocol=s.protocol,
                           folds=s.folds, groups=groups)
        out.append((trait, split, groups_from if s.protocol == "cv" else ""))
    return out


def check_queries(ids: pd.DataFrame, queries, emb_dir: Path) -> None:
    """``--query`` names none of the embedded images: a one-line error before any work."""

    if queries and not len(match_queries(ids["image"].to_numpy(str), list(queries))[0]):
        raise UserError(f"--query: none of {', '.join(list(queries)[:3])}"
                        f"{' ...' if len(queries) > 3 else ''} is among the {len(ids)} images "
                        f"embedded in {emb_dir}; name images as in its embeddings.csv, or by file name")


def safe_name(trait: str) -> str:
    """A trait (label column) as a folder or file name part."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", str(trait)).strip("._") or "trait"
