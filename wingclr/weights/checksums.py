"""Checksums of weights files under their published names, verified before use and remembered.

A file under a published name (``resnet50-11ad3fa6.pth``, ``u2net.onnx``) whose content is not
the published one (damaged download, another model renamed) would train silently wrong and be
recorded as ``"pretrained": "imagenet"``; the stages refuse it in one line
(:func:`require_checksum`), ``python -m wingclr.weights check`` says ``bad checksum`` and
``fetch`` exits non-zero.

Reading a 500 MB file to hash it costs seconds, so the result is remembered per file: in memory
and in a small JSON beside it (``.<name>.verified.json``; skipped when the folder is read-only),
keyed by the file's size, modification time and inode change time. The change time is set by
the system whenever the file is written or copied and cannot be set by hand, so a file replaced
or copied from elsewhere is always hashed again (a verification record copied along with it does
not match).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..cli import UserError
from ..outputs import write_text

FETCH = "python -m wingclr.weights fetch"


def fetch_advice(name: str) -> str:
    """``run `python -m wingclr.weights fetch <name>` on a machine with internet``."""
    return f"run `{FETCH} {name}` on a machine with internet"

_MEMORY: dict[tuple[str, str], tuple[list[int], bool]] = {}


def published_checksum(filename: str) -> str | None:
    """``sha256:<hex>`` of a torchvision-style name (``<name>-<first hex digits of the file's
    SHA-256>.pth``, e.g. ``resnet18-f37072fd.pth``), else None."""
    found = re.fullmatch(r".+-([0-9a-f]{8,64})\.(pth|pt)", Path(filename).name)
    return f"sha256:{found.group(1)}" if found else None


def verify(path: Path | str, checksum: str | None, *, fresh: bool = False,
           keep: bool = True) -> bool | None:
    """True / False when ``path`` matches / fails ``checksum`` (``md5:<hex>`` or ``sha256:<hex
    prefix>``); None when no checksum is known.

    Args:
        fresh: hash the file even when an earlier result is remembered.
        keep: remember the result (not for a temporary file about to be renamed).
    """
    if not checksum:
        return None
    path = Path(path)
    if not fresh:
        known = _remembered(path, checksum)
        if known is not None:
            return known
    kind, expected = checksum.split(":", 1)
    digest = hashlib.new(kind)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    ok = digest.hexdigest().startswith(expected.lower())
    if keep:
        remember(path, checksum, ok)
    return ok


def require_checksum(path: Path | str, checksum: str | None, name: str) -> Path:
    """``path`` when it matches ``checksum`` (or none is known).

    Raises:
        UserError: the file fails its checksum (one line: the file, and how to get the real one).
    """
    if verify(path, checksum) is False:
        raise UserError(f"weights file {path} fails its checksum ({checksum}): it is not the "
                        f"published {Path(path).name} (damaged, or another file renamed); delete "
                        f"it and {fetch_advice(name)}")
    return Path(path)


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _record(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified.json")


def _remembered(path: Path, checksum: str) -> bool | None:
    key, stamp = (str(path.resolve()), checksum), _stamp(path)
    if key in _MEMORY and _MEMORY[key][0] == stamp:
        return _MEMORY[key][1]
    try:
        data = json.loads(_record(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (isinstance(data, dict) and data.get("checksum") == checksum and data.get("stamp") == stamp
            and isinstance(data.get("ok"), bool)):  # anything else: hash again
        _MEMORY[key] = (stamp, data["ok"])
        return data["ok"]
    return None


def remember(path: Path | str, checksum: str, ok: bool) -> None:
    """Record the verification of ``path`` as it is now (memory, and its record when writable)."""

    path = Path(path)
    stamp = _stamp(path)
    _MEMORY[(str(path.resolve()), checksum)] = (stamp, ok)
    try:
        write_text(_record(path), json.dumps({"checksum": checksum, "stamp": stamp, "ok": ok}) + "\n")
    except (UserError, OSError):
        pass  # a read-only weights folder: remembered for this process only
