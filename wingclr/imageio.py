"""One image reader for every stage.

:func:`read_image` returns ``(H, W, C)`` uint8 arrays for JPEG, PNG (8/16-bit, palette, RGBA),
TIFF (multi-page and multi-sample stacks), BMP/WebP and ``.npy`` cubes, with EXIF orientation
applied. Conversion rules to uint8 (documented in README.md, "Images"):

* uint8: unchanged.
* uint16 (and other integers wider than 8 bits): the high byte, ``x // 256`` (what Pillow does), so
  brightness stays comparable between images. ``scale16="band"`` instead stretches each band
  between its 0.5th and 99.5th percentile (for 12-bit sensors and dim UV bands).
* float: ``x * 255`` when all values lie in [0, 1], otherwise each band is min-max scaled.
* RGBA / LA / palette with transparency: composited on ``background``.

The decoder is chosen by the file's content (magic bytes), not its extension, so a JPEG saved as
``.TIF`` reads like any JPEG. Unreadable files raise :class:`ImageReadError` naming the file and the
reason; callers report and skip them (see :func:`try_read`).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .outputs import atomic_path

PIL_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".gif"}
TIFF_EXTENSIONS = {".tif", ".tiff"}
NPY_EXTENSIONS = {".npy"}
IMAGE_EXTENSIONS = PIL_EXTENSIONS | TIFF_EXTENSIONS | NPY_EXTENSIONS
Image.MAX_IMAGE_PIXELS = 400_000_000  # museum scans are large; still guards against bombs


class _Drop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


_DROP = _Drop()


def quiet_decoders() -> None:
    """Keep decoders' complaints about damaged files off the terminal (idempotent, cheap).

    Pillow warns ``UserWarning: Corrupt EXIF data`` and tifffile logs ``invalid offset to first
    page`` for a damaged file that then fails anyway: the reader reports such a file once, as
    unreadable, with the reason. A filter installed for good (not ``catch_warnings``, which is not
    thread-safe: stage 0 reads in threads); Pillow's ``DecompressionBombWarning`` still shows.
    """
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    tiff_log = logging.getLogger("tifffile")
    if _DROP not in tiff_log.filters:
        tiff_log.addFilter(_DROP)


class ImageReadError(Exception):
    """A file that cannot be read as an image; ``str()`` is ``'<path>: <reason>'``."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def is_image_file(path: Path | str) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def sniff_format(path: Path) -> str:
    """``"tiff"``, ``"npy"`` or ``"pil"`` (everything else) from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return "tiff"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    return "pil"


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    if isinstance(e, (OSError, ValueError, SyntaxError)):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def to_uint8(arr: np.ndarray, scale16: str = "full") -> np.ndarray:
    """Convert an ``(H, W, C)`` array of any numeric dtype to uint8 by the module's rules."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer) and scale16 == "full":
        if arr.min() < 0:
            raise ValueError(f"signed {arr.dtype} data with negative values is not supported")
        bits = 16 if arr.max() < 65536 else 32
        return (arr.astype(np.uint32) >> (bits - 8)).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating) and scale16 == "full":
        if not np.isfinite(arr).all():
            raise ValueError("float data contains NaN or infinity")
        if arr.min() >= 0 and arr.max() <= 1:
            return np.round(arr * 255).astype(np.uint8)
        lo, hi = arr.min(axis=(0, 1)), arr.max(axis=(0, 1))
    elif np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        flat = arr.reshape(-1, arr.shape[-1]).astype(np.float32)
        lo, hi = np.percentile(flat, 0.5, axis=0), np.percentile(flat, 99.5, axis=0)
    else:
        raise ValueError(f"unsupported sample format {arr.dtype}")
    scaled = (arr.astype(np.float32) - lo) / np.maximum(hi - lo, 1e-12)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def composite(arr: np.ndarray, background: Sequence[int]) -> np.ndarray:
    """Blend ``(H, W, 2|4)`` gray/colour + alpha onto a solid background -> ``(H, W, 1|3)``."""
    colour, alpha = arr[..., :-1].astype(np.float32), arr[..., -1:].astype(np.float32) / 255.0
    bg = np.asarray(background, np.float32)[: colour.shape[-1]]
    if colour.shape[-1] == 1:
        bg = bg[:1]
    return np.round(colour * alpha + bg * (1 - alpha)).astype(np.uint8)


def _read_pil(path: Path, keep_alpha: bool, background: Sequence[int]) -> np.ndarray:
    with Image.open(path) as img:
        img.load()  # decodes now, so truncated files fail here and not later
        img = ImageOps.exif_transpose(img)
        mode = img.mode
        if mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode == "PA":
            img = img.convert("RGBA")
        elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("L" if mode == "1" else "RGB")
        arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    has_alpha = img.mode in ("RGBA", "LA")
    if has_alpha and not keep_alpha:
        arr = composite(to_uint8(arr), background)
    return arr


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError("TIFF header without any image in it")
        series = tif.series[0]
        axes, arr = series.axes, series.asarray()
    arr = np.squeeze(arr)
    if arr.ndim == 3 and not axes.endswith("S"):
        arr = np.moveaxis(arr, 0, -1)  # page/channel stack (C, H, W) -> (H, W, C)
    if arr.ndim not in (2, 3):
        raise ValueError(f"TIFF with axes {axes!r} and shape {series.shape} is not a 2-D image or stack")
    return arr


def read_image(path: Path | str, *, background: Sequence[int] = (255, 255, 255),
               keep_alpha: bool = False, scale16: str = "full") -> np.ndarray:
    """Read any supported image as ``(H, W, C)`` uint8.

    Args:
        path: image file.
        background: RGB colour that transparent pixels are composited on.
        keep_alpha: return RGBA/LA unchanged (C = 4 or 2) instead of compositing.
        scale16: ``"full"`` or ``"band"``, how data wider than 8 bits becomes uint8.

    Returns:
        ``(H, W, C)`` uint8, C = 1 (gray), 3 (RGB) or the number of bands of a stack.

    Raises:
        ImageReadError: the file is missing, not an image, truncated or in an unsupported format.
    """
    path = Path(path)
    quiet_decoders()
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ImageReadError(path, f"not an image (extension {suffix or 'none'}); "
                                   f"supported: {', '.join(sorted(IMAGE_EXTENSIONS))}")
    try:
        arr = _decode(path, keep_alpha, background)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError("image has no pixels")
        return np.ascontiguousarray(to_uint8(arr, scale16))
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image file (corrupt or wrong extension)") from None
    except Exception as e:  # noqa: BLE001 - decoders fail on corrupt data with any exception type
        raise ImageReadError(path, f"unreadable ({_reason(e)})") from None


def _decode(path: Path, keep_alpha: bool, background: Sequence[int]) -> np.ndarray:
    fmt = sniff_format(path)
    if fmt == "npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim not in (2, 3):
            raise ValueError(f"array of shape {arr.shape}; expected (H, W) or (H, W, C)")
        return arr
    if fmt == "tiff":
        return _read_tiff(path)
    return _read_pil(path, keep_alpha, background)


def image_channels(path: Path | str) -> int:
    """Channel count :func:`read_image` will return, read from the file header only.

    Raises:
        ImageReadError: the header cannot be read.
    """
    path = Path(path)
    quiet_decoders()
    try:
        fmt = sniff_format(path)
        if fmt == "npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return 1 if len(shape) == 2 else shape[-1]
        if fmt == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape = [n for n in series.shape if n != 1]
                if len(shape) <= 2:
                    return 1
                return shape[-1] if series.axes.endswith("S") else shape[0]
        with Image.open(path) as img:
            if img.mode == "P":
                return 3
            return {"1": 1, "L": 1, "I": 1, "I;16": 1, "I;16B": 1, "F": 1, "LA": 1}.get(img.mode, 3)
    except Exception as e:  # noqa: BLE001 - as in read_image: corrupt headers raise anything
        raise ImageReadError(path, f"unreadable header ({_reason(e)})") from None


def try_read(path: Path | str, **kwargs) -> tuple[np.ndarray | None, str]:
    """:func:`read_image` that returns ``(None, reason)`` instead of raising."""
    try:
        return read_image(path, **kwargs), ""
    except ImageReadError as e:
        return None, e.reason


def walk_tree(root: Path | str) -> Iterator[tuple[Path, list[str], list[tuple[Path, str]]]]:
    """Walk ``root`` depth-first (sorted, hidden entries ignored), each real folder once.

    Linked folders are followed (photos often live on another disk), except a link whose target is
    inside ``root`` (that folder is walked under its own path) or a folder already walked: link
    loops then neither hang the walk nor list a photo many times.

    Yields:
        ``(folder relative to root, file names, skipped)`` where ``skipped`` holds
        ``(relative path, reason)`` for sub-folders that are not walked.
    """
    root = Path(root)
    real_root = os.path.realpath(root)
    seen = {_identity(root)}
    stack = [Path()]
    while stack:
        rel = stack.pop()
        files, subdirs, skipped = [], [], []
        try:
            entries = sorted(os.scandir(root / rel), key=lambda e: e.name)
        except OSError as e:
            yield rel, [], [(rel, f"folder not readable ({e.strerror or e})")]
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                files.append(entry.name)
                continue
            key = _identity(Path(entry.path))
            reason = _outside_link(Path(entry.path), real_root) if entry.is_symlink() else ""
            if not reason and key in seen:
                reason = f"folder already listed (through a link to {os.path.realpath(entry.path)})"
            if reason:
                skipped.append((rel / entry.name, reason))
            else:
                seen.add(key)
                subdirs.append(rel / entry.name)
        yield rel, files, skipped
        stack.extend(reversed(subdirs))


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _outside_link(link: Path, real_root: str) -> str:
    """'' for a linked folder outside ``real_root`` (followed), else why it is not followed."""
    target = os.path.realpath(link)
    if target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep):
        return f"link to {target}, inside the same folder tree (listed once, under its own path)"
    return ""


def list_files(root: Path | str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Walk ``root`` recursively with :func:`walk_tree`.

    Returns:
        ``(images, skipped)``: relative paths of image files, and ``(relative path, reason)`` for
        every other file and every folder not walked, so callers can report them instead of
        letting them vanish.
    """
    images, skipped = [], []
    for folder, names, not_walked in walk_tree(root):
        for name in names:
            rel = folder / name
            if is_image_file(name):
                images.append(rel)
            else:
                skipped.append((rel, f"not an image (extension {Path(name).suffix or 'none'})"))
        skipped += not_walked
    return images, skipped


def match_channels(arr: np.ndarray, channels: int, path: Path | str) -> np.ndarray:
    """Return ``arr`` with ``channels`` channels: gray is repeated to RGB; anything else must match.

    Raises:
        ImageReadError: the channel count differs in a way that cannot be reconciled.
    """
    c = arr.shape[-1]
    if c == channels:
        return arr
    if c == 1 and channels == 3:
        return np.repeat(arr, 3, axis=-1)
    if c == 3 and channels == 1:
        return np.round(arr @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None]
    raise ImageReadError(path, f"has {c} channels but the dataset has {channels}; "
                               "keep one band layout per dataset (or select bands with --bands)")


def write_png(path: Path | str, arr: np.ndarray) -> None:
    """Write ``(H, W)`` or ``(H, W, 1|3|4)`` uint8 to PNG atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")

