"""Stage outputs: atomic writes, ``manifest.json`` and the finished-output guard (one per stage).

A stage writes ``manifest.json`` last; its presence means the stage finished. Re-running with the
same settings skips; different settings are refused unless ``--overwrite`` is given, so finished
work is never replaced by accident.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import __version__
from .cli import Settings, UserError, write_error, write_errors

MANIFEST = "manifest.json"
# Per stage (the manifest's "stage"), the flags that change how it runs but never what it writes.
# They are left out of manifest.json's "args" and ignored when a re-run compares its settings with a
# finished output (on both sides, so a manifest that recorded one still matches). Every other flag
# defines the output. tests/test_cli_output.py checks each name is a flag of its stage.
# Each stage adds its own from its flag declarations (run_only=True: wingclr/segment/settings.py,
# wingclr/cluster/settings.py, wingclr/dataset/__init__.py, wingclr/train/settings.py, wingclr/embed/settings.py,
# wingclr/evaluate/settings.py), so a stage's entry exists once its settings module is imported.
RUN_ONLY: dict[str, frozenset[str]] = {}


TEMP_PREFIX = ".tmp-"  # every temporary file wingclr writes beside an output starts with this
NAME_MAX = 255  # bytes in one file name on common file systems (ext4, XFS, APFS, NTFS)


def temp_suffix(path: Path) -> str:
    """``path``'s extension for its temporary file (writers such as ``np.save`` and ``savefig``
    go by it), or none when it is unusually long: a temporary name is always short."""
    return path.suffix if len(path.suffix.encode()) <= 16 else ""


def fit_name(name: str, *, limit: int = NAME_MAX) -> str:
    """``name`` when it fits in ``limit`` bytes; else its stem cut short, ``-`` and 8 hex digits of
    its hash, then its extension, so two long names that share a beginning stay apart.

    Example: a 300-character label's ``sheet_<label>.png`` becomes ``sheet_<label[:236]>-1a2b3c4d.png``.
    """
    if len(name.encode()) <= limit:
        return name
    suffix = temp_suffix(Path(name))
    tag = "-" + hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    room = limit - len(tag.encode()) - len(suffix.encode())
    stem = name[:len(name) - len(suffix)].encode()[:room].decode("utf-8", "ignore")
    return stem + tag + suffix


def remove_stale_temps(folder: Path | str) -> int:
    """Delete the temporary files a killed run left anywhere below ``folder``; returns how many.

    Only for a folder one command owns (its lock or finished-output guard already holds): a
    temporary file of a running writer would go too.
    """
    removed = 0
    for tmp in Path(folder).rglob(f"{TEMP_PREFIX}*"):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file is removed whatever happens; a full disk or read-only folder is a
    one-line :class:`UserError` naming ``path``.
    """
    path, tmp = Path(path), None
    try:
        with write_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=temp_suffix(path), dir=path.parent)
            os.close(fd)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are shared on clusters
            yield Path(tmp)
            os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def format_float(x: float) -> str:
    """A CSV cell for a float: 7 significant digits (float32 precision, ``%.7g``); values from
    10^7 up keep every digit (counts, byte sizes and time stamps are never rounded)."""
    return f"{x:.7g}" if abs(x) < 1e7 else repr(float(x))


def integers_as_integers(df):
    """``df`` with float columns whose values are all whole numbers (blanks allowed) as integers,
    so a count is written ``3``, not ``3.0``."""
    import numpy as np

    df = df.copy()
    for name in df.columns[[dtype.kind == "f" for dtype in df.dtypes]]:
        values = df[name].to_numpy(float)
        known = values[~np.isnan(values)]
        if len(known) and np.all(np.abs(known) < 2 ** 53) and np.all(known == np.round(known)):
            df[name] = df[name].astype("Int64")
    return df


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _formula_like(text: str) -> bool:
    """``=1+1``, ``@SUM(A1)``, ``-x``, ``'=x`` (already quoted): a spreadsheet could run it; numbers
    (``-0.5``, ``+3``, ``-inf``) are not."""
    bare = text.lstrip("'")
    if not bare.startswith(FORMULA_START):
        return False
    try:
        float(text)
    except ValueError:
        return True
    return False


def escape_cell(value):
    """A CSV text cell that a spreadsheet shows as text, never runs as a formula (OWASP's CSV
    injection rule): one ``'`` before a cell starting with ``=``, ``+``, ``-``, ``@``, tab or
    carriage return (and before one that starts with quotes followed by those, so
    :func:`unescape_cell` gives back exactly what was written). Numbers and other values pass."""
    if isinstance(value, str) and value[:1] in (*FORMULA_START, "'") and _formula_like(value):
        return "'" + value
    return value


def unescape_cell(value):
    """The value :func:`escape_cell` was given (wingclr reads its own CSVs back through this)."""
    if isinstance(value, str) and value.startswith("'") and _formula_like(value[1:]):
        return value[1:]
    return value


def _is_text(column) -> bool:
    """Whether a pandas column holds text (object, str, string or category dtype)."""
    import pandas as pd

    return (column.dtype == object or pd.api.types.is_string_dtype(column.dtype)
            or isinstance(column.dtype, pd.CategoricalDtype))


def escape_formulas(df):
    """``df`` with every text cell and column name passed through :func:`escape_cell` (a copy;
    numeric columns untouched)."""
    texts = [c for c in df.columns if _is_text(df[c])]
    renamed = {c: escape_cell(c) for c in df.columns if isinstance(c, str) and escape_cell(c) != c}
    if not texts and not renamed:
        return df
    df = df.copy()
    for c in texts:
        df[c] = df[c].astype(object).map(escape_cell)
    return df.rename(columns=renamed)


def read_csv(path: Path | str, **kwargs):
    """``pandas.read_csv`` for a CSV wingclr wrote: text cells and column names as they were before
    :func:`escape_formulas` (``'=x`` reads back as ``=x``)."""
    import pandas as pd

    df = pd.read_csv(path, **kwargs)
    renamed = {c: unescape_cell(c) for c in df.columns if isinstance(c, str) and c.startswith("'")}
    for c in df.columns:
        if _is_text(df[c]) and df[c].astype(str).str.startswith("'").any():
            df[c] = df[c].map(unescape_cell).astype(df[c].dtype)
    return df.rename(columns=renamed) if renamed else df


def write_csv(path: Path | str, df) -> None:
    """Write a pandas DataFrame as UTF-8 CSV without the index, atomically: whole-number columns as
    integers, other floats by :func:`format_float`, blanks for missing values, text cells that a
    spreadsheet would run as formulas quoted (:func:`escape_formulas`)."""
    with atomic_path(path) as tmp:
        escape_formulas(integers_as_integers(df)).to_csv(tmp, index=False, encoding="utf-8",
                                                         float_format=format_float)


def jsonable(value: Any) -> Any:
    if isinstance(value, Settings):
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items() if not callable(v)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions(packages: Iterable[str] = ()) -> dict[str, str]:
    from importlib import metadata


    found = {"python": platform.python_version(), "wingclr": __version__}
    for name in ("numpy", "torch", "torchvision", *packages):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def recorded_settings(values: Settings | dict, stage: str) -> dict:
    """The settings that define ``stage``'s output (its :data:`RUN_ONLY` flags dropped), as JSON values."""
    run_only = RUN_ONLY.get(stage, ())
    return {k: v for k, v in jsonable(values).items() if k not in run_only}


# manifest fields that other code reads back, with the JSON types wingclr writes them as
MANIFEST_TYPES = {"stage": str, "args": dict, "counts": dict, "command": str, "finished": str,
                  "checkpoint": str, "skipped_files": list, "model": dict}


def read_manifest(out_dir: Path | str) -> dict | None:
    """``out_dir``'s ``manifest.json`` (None when there is none).

    Raises:
        UserError: it is not JSON, or JSON of another shape than wingclr writes (``[]``, a
            ``"args"`` that is not an object, ...): one line; nothing is deleted.
    """
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); delete it to redo the stage") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror or e}); check its permissions") from None
    wrong = manifest_shape(manifest)
    if wrong:
        raise UserError(f"{path} is not a wingclr manifest ({wrong}); restore it from a backup, or "
                        "move it away to redo the stage (the folder's other files are kept)")
    return manifest


def manifest_shape(manifest) -> str:
    """What is wrong with a manifest's JSON shape ('' when it is an object with the field types
    :data:`MANIFEST_TYPES` lists)."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for key, kind in MANIFEST_TYPES.items():
        value = manifest.get(key)
        if key not in manifest or (value is None and key not in ("stage", "args", "counts")):
            continue  # absent, or null where wingclr may write null
        if not isinstance(value, kind):
            return f"its {key!r} is a {type(manifest[key]).__name__}, not a {kind.__name__}"
    return ""


def command_line() -> str:
    """This process's command as typed (``python 3-training/train.py ...``), quoted for a shell."""
    argv = list(sys.argv)
    return shlex.join(["python", *argv] if argv and argv[0].endswith(".py") else argv)


def write_manifest(out_dir: Path | str, stage: str, values: Settings | dict, counts: dict,
                   seed: int | None = None, packages: Iterable[str] = (), **extra) -> dict:
    """Write ``manifest.json`` (the stage's last file) and return its content.

    Args:
        values: the stage's settings (or a dict of them); recorded under "args" without the
            stage's :data:`RUN_ONLY` flags.
    """
    manifest = {
        "stage": stage,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(),
        "args": recorded_settings(values, stage),
        "counts": jsonable(counts),
        "seed": seed,
        "git_sha": git_sha(),
        "versions": versions(packages),
        **jsonable(extra),
    }
    write_text(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def changed_keys(old: dict, new: dict, keys=None) -> list[str]:
    """Sorted names of the settings whose values differ (among ``keys``; default: all of both)."""
    keys = set(old) | set(new) if keys is None else keys
    return sorted(k for k in keys if old.get(k) != new.get(k))


def check_finished(out_dir: Path | str, wanted: Settings | dict, overwrite: bool, what: str,
                   compare: Callable[[dict, dict], list[str]] | None = None) -> bool:
    """Guard a stage's output folder.

    Args:
        wanted: this command's settings (or a dict of them).
        compare: ``compare(recorded, wanted)`` -> names of the settings that differ (default:
            every setting, compared as recorded).

    Returns:
        True when ``out_dir`` already holds this stage finished with the same settings (skip);
        False when the stage should run (nothing finished there, or ``overwrite``).

    Raises:
        UserError: a finished output with other settings is there and ``overwrite`` is False.
    """
    manifest = read_manifest(out_dir)
    if manifest is None or overwrite:
        return False
    stage = manifest.get("stage", "")
    old, new = recorded_settings(manifest.get("args", {}), stage), recorded_settings(wanted, stage)
    changed = (compare or changed_keys)(old, new)
    if not changed:
        return True
    raise UserError(f"{out_dir} already holds a finished {what} made with other settings "
                    f"({', '.join(changed[:4])} differ); pass --overwrite to replace it or choose "
                    "another --output")


def file_digest(path: Path) -> dict:
    """Size and SHA-256 of a file (stage 4 records it for embeddings.csv)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"size": Path(path).stat().st_size, "sha256": sha.hexdigest()}


def place_file(src: Path, dst: Path, link: str) -> None:
    """Copy ``src`` to ``dst`` (``link="copy"``) or link it (``"symlink"``, ``"hardlink"``),
    replacing a file already at ``dst``.

    A full disk or read-only folder is a one-line :class:`UserError`; no half-copied file stays.
    """
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        if link == "symlink":
            os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)
        elif link == "hardlink":
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)
    except OSError as e:
        if link == "copy" and dst.is_file():
            dst.unlink()
        if link == "hardlink" and e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise UserError(f"cannot hard-link {src} into {dst.parent} ({e.strerror}); use "
                            "--link symlink or --link copy") from None
        error = write_error(dst, e)
        if error is None:
            raise
        raise error from None
