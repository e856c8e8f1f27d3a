"""Files from elsewhere read as data: torch files without pickled code, paths kept in their folder.

Checkpoints, weights and annotation files are exchanged between labs and downloaded from papers'
supplements, so wingclr reads them as data (README "Files you did not write"):

* :func:`load_torch` reads a torch file with ``weights_only=True``: tensors, numbers, strings,
  lists, tuples and dicts only. A pickled object that would call a function when loaded (the
  way a ``.ckpt`` runs code) is refused in one line before anything of it runs;
* :func:`path_inside` resolves a path read from a file (a COCO ``file_name``, a labelme
  ``imagePath``, a CSV's ``source_image``) below its folder and refuses an absolute path or one
  that climbs out with ``..``.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from .cli import UserError


def load_torch(path: Path | str, *, what: str = "checkpoint"):
    """``torch.load(path)`` on the CPU that runs no code from the file.

    Args:
        path: the file.
        what: what the file is, for the error message (``checkpoint``, ``weights file``).

    Returns:
        The loaded object (dicts, lists, tensors and plain values).

    Raises:
        UserError: the file pickles an object that is not plain data (one line; nothing of it
            ran). Other errors (a missing or damaged file) propagate for the caller to word.
    """
    import torch

    try:
        # explicit, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD in the environment cannot switch it off
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise
        raise UserError(refusal(path, e, what)) from None


def refusal(path: Path | str, error: Exception, what: str = "checkpoint") -> str:
    """The one-line refusal of a torch file that pickles code (``error`` from ``weights_only``)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    name = f" ({found.group(1)})" if found else ""
    return (f"{path} was refused: it pickles an object{name} that a {what} never holds, which "
            f"could run code when loaded; wingclr reads a {what} as data only (tensors, numbers, "
            "strings) and ran none of it. Use a file written by wingclr, or ask its author for one")


def path_inside(root: Path | str, value: str, *, source: Path | str, entry: str) -> Path:
    """``root / value`` for a path read from a file, refused when it leaves ``root``.

    Args:
        root: the folder the paths are relative to (e.g. ``--images``).
        value: the path as written in the file (``/`` or ``\\`` separated).
        source: the file it was read from (for the error message).
        entry: which entry of that file (e.g. ``images[3] file_name``).

    Returns:
        The path below ``root`` (symbolic links the user made inside ``root`` are followed).

    Raises:
        UserError: ``value`` is empty, absolute (``/x``, ``C:\\x``, ``\\\\server\\x``) or
            climbs out of ``root`` with ``..``.
    """
    text = str(value)
    why = ""
    if not text.strip():
        why = "is empty"
    elif (PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()
          or PureWindowsPath(text).drive or text.startswith(("\\", "/", "~"))):
        why = "is absolute"
    else:
        parts = [p for p in re.split(r"[\\/]+", text) if p not in ("", ".")]
        depth = 0
        for part in parts:
            depth += -1 if part == ".." else 1
            if depth < 0:
                why = "climbs out of it with '..'"
                break
        if not why:
            return Path(root).joinpath(*parts)
    raise UserError(f"{source}: {entry} {text!r} {why}; paths in it must be relative to {root} "
                    "and stay inside it (wingclr reads no file outside that folder): fix the entry "
                    "or move the image into the folder")


def is_inside(value: str) -> bool:
    """Whether a relative path read from a file stays inside its folder (no root, no escape)."""
    try:
        path_inside(".", value, source="", entry="")
    except UserError:
        return False
    return True
