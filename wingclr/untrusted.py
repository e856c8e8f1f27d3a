"""Files from elsewhere read as data: torch files without pickled code, paths kept in their folder.

Checkpoints, weights and annotation files are exchanged between labs and downloaded from papers'
supplements, so wingclr reads them as data (README "Files you did not write"):

* :func:`load_torch` reads a torch file with ``weights_only=True``: tensors, numbers, strings,
  lists, tuples and dicts only. A pickled object that would call a function when loaded (the
  way a ``.ckpt`` runs code) is refused in one line before anything of it runs;
* :func:`path_inside` resolves a path read from a file (a COCO ``file_name``, a labelme
  ``imagePath``, a manifest's ``checkpoint``) below its folder and refuses an absolute path or
  one that climbs out with ``..``; :func:`check_paths` refuses such cells in a CSV's path columns
  (``image``, ``specimen``, ``source_image``) before they are copied on or opened.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable

from .cli import UserError


def load_torch(path: Path | str, *, what: str, fix: str | Callable[[], str]):
    """``torch.load(path)`` on the CPU that runs no code from the file.

    Args:
        path: the file.
        what: what the file is, for the error message (``checkpoint``, ``weights file``).
        fix: how to get a good file back (``"replace it with a fresh download"``), or a function
            that words it, called only on failure; it ends a damaged file's one-line error.

    Returns:
        The loaded object (dicts, lists, tensors and plain values).

    Raises:
        UserError: the file pickles an object that is not plain data (one line; nothing of it
            ran), or it is damaged.
        FileNotFoundError: there is no file (each caller words where it should have been).
    """
    import torch

    try:
        # explicit, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD in the environment cannot switch it off
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL " in str(e):
            raise UserError(refusal(path, e, what)) from None
        raise UserError(damaged(path, e, what, fix)) from None


def damaged(path: Path | str, error: Exception, what: str, fix: str | Callable[[], str]) -> str:
    """The one-line error for a torch file that cannot be read (truncated, not a torch file)."""
    if isinstance(error, pickle.UnpicklingError):  # torch's text here advises weights_only=False
        reason = "not a torch file, or cut short"
    else:
        reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0].split('. ')[0][:120]}"
    fix = fix() if callable(fix) else fix
    return f"{path} is not a readable {what} ({reason}); {fix}"


def refusal(path: Path | str, error: Exception, what: str = "checkpoint") -> str:
    """The one-line refusal of a torch file that pickles code (``error`` from ``weights_only``)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    name = f" ({found.group(1)})" if found else ""
    return (f"{path} was refused: it pickles an object{name} that a {what} never holds, which "
            f"could run code when loaded; wingclr reads a {what} as data only (tensors, numbers, "
            "strings) and ran none of it. Use a file written by wingclr, or ask its author for one")


def path_inside(root: Path | str, value: str, *, source: Path | str, entry: str,
                base: Path | str | None = None) -> Path:
    """``base / value`` for a path read from a file, refused when it is absolute or leaves ``root``.

    Args:
        root: the folder every path must stay in (e.g. ``--images``).
        value: the path as written in the file (``/`` or ``\\`` separated).
        source: the file it was read from (for the error message).
        entry: which entry of that file (e.g. ``images[3] file_name``).
        base: the folder ``value`` is relative to (default ``root``; a labelme ``imagePath`` is
            relative to its JSON file).

    Returns:
        The path as ``root / <relative path>`` (judged on the names: symbolic links the user
        made inside ``root`` are followed when the file is read).

    Raises:
        UserError: ``value`` is empty, absolute (``/x``, ``C:\\x``, ``\\\\server\\x``)
            or climbs out of ``root`` with ``..``.
    """
    text = str(value)
    if not text.strip():
        why = "is empty"
    elif not is_relative(text):
        why = "is absolute"
    else:
        parts = [p for p in re.split(r"[\\/]+", text) if p not in ("", ".")]
        top = os.path.abspath(root)
        target = os.path.normpath(os.path.join(os.path.abspath(base or root), *parts))
        if os.path.commonpath([top, target]) == top and target != top:
            return Path(root) / os.path.relpath(target, top)
        why = f"leads out of {root} (with '..')"
    raise UserError(f"{source}: {entry} {text!r} {why}; paths in it must be relative and stay "
                    f"inside {root} (wingclr opens no file outside it): fix the entry or move the "
                    "image into that folder")


def is_relative(value: str) -> bool:
    """Whether a path read from a file is relative on every system (not ``/x``,
    ``C:x``, ``\\\\server\\x``)."""
    text = str(value)
    return not (PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()
                or PureWindowsPath(text).drive or text.startswith(("\\", "/")))


def is_inside(value: str) -> bool:
    """Whether a path read from a file is relative and stays inside its folder (no ``..`` out)."""
    try:
        path_inside(".", value, source="", entry="")
    except UserError:
        return False
    return True


def check_paths(table, columns, *, source: Path | str) -> None:
    """Refuse a CSV whose path cells (``image``, ``source_image``, ...) are absolute or climb out
    of their folder with ``..`` (blank cells pass).

    Args:
        table: a pandas DataFrame of strings, as read.
        columns: the path columns to check (those missing from ``table`` are ignored).
        source: the CSV file (for the error message).

    Raises:
        UserError: names the file, the row (as a spreadsheet numbers it) and the cell.
    """
    for column in columns:
        if column not in table:
            continue
        for row, value in enumerate(table[column].tolist()):
            text = "" if value is None or value != value else str(value)
            if text and (".." in text or not is_relative(text)) and not is_inside(text):
                why = "is absolute" if not is_relative(text) else "climbs out of its folder with '..'"
                raise UserError(f"{source}: row {row + 2} {column} {text!r} {why}; paths in it "
                                "must be relative to their stage folder and stay inside it: fix "
                                "the row (wingclr copies and opens no path outside its folders)")
